//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Live function coverage of a running process, without restarting it.
#[derive(Parser, Debug)]
#[command(name = "xcover", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Instrument every function of a running process and show coverage live.
    Attach(AttachArgs),
    /// Take the instrumentation of a kept session out of a process.
    Detach(DetachArgs),
    /// List live sessions with their coverage.
    Status(StatusArgs),
    /// Start the bundled demo target and attach to it.
    Demo(DemoArgs),
    /// Run eBPF programs with xcover's VM (bpf_conformance runner and plugin).
    Vm {
        /// What to run.
        #[command(subcommand)]
        cmd: crate::vm::VmCommand,
    },
}

/// `xcover attach`.
#[derive(Args, Debug)]
pub struct AttachArgs {
    /// Process id of the running target.
    pub pid: i32,
    /// Print a one-line status every second on stderr instead of the TUI.
    #[arg(long)]
    pub no_tui: bool,
    /// Detach by itself after this many seconds.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Leave the instrumentation in place when xcover exits (see `xcover detach`).
    #[arg(long)]
    pub keep: bool,
    /// Write the JSON report here on detach.
    #[arg(long, value_name = "PATH")]
    pub report: Option<PathBuf>,
    /// Write an LCOV report here on detach.
    #[arg(long, value_name = "PATH")]
    pub lcov: Option<PathBuf>,
}

/// `xcover detach`.
#[derive(Args, Debug)]
pub struct DetachArgs {
    /// Process id of the target with a kept session.
    pub pid: i32,
    /// Write the JSON report here.
    #[arg(long, value_name = "PATH")]
    pub report: Option<PathBuf>,
    /// Write an LCOV report here.
    #[arg(long, value_name = "PATH")]
    pub lcov: Option<PathBuf>,
}

/// `xcover status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Only this process.
    pub pid: Option<i32>,
}

/// `xcover demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Print a status line every second instead of the TUI.
    #[arg(long)]
    pub no_tui: bool,
    /// Detach and stop the demo after this many seconds.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
}

/// An error caused by the user's input rather than by a failure at run time; `main` turns
/// it into exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);
