//! `xcover vm`: the bpf_conformance runner and plugin (being written).

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Subcommand;

/// `xcover vm` subcommands.
#[derive(Subcommand, Debug)]
pub enum VmCommand {
    /// Run every `.data` file of a bpf_conformance directory.
    Conformance {
        /// Directory of `.data` files.
        dir: std::path::PathBuf,
    },
}

/// Runs a `vm` subcommand.
pub fn run(_cmd: VmCommand) -> Result<ExitCode> {
    bail!("vm is not built yet")
}
