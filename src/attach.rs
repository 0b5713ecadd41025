//! `xcover attach`, `detach`, `status` and `demo` (being written).

use std::process::ExitCode;

use anyhow::{Result, bail};

use crate::cli::{AttachArgs, DemoArgs, DetachArgs, StatusArgs};

/// `xcover attach`.
pub fn attach(_a: AttachArgs) -> Result<ExitCode> {
    bail!("attach is not built yet")
}
/// `xcover detach`.
pub fn detach(_a: DetachArgs) -> Result<ExitCode> {
    bail!("detach is not built yet")
}
/// `xcover status`.
pub fn status(_a: StatusArgs) -> Result<ExitCode> {
    bail!("status is not built yet")
}
/// `xcover demo`.
pub fn demo(_a: DemoArgs) -> Result<ExitCode> {
    bail!("demo is not built yet")
}
