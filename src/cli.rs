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
    /// List the functions `attach` would hook, with their runtime addresses.
    Functions(FunctionsArgs),
    /// Sum JSON reports of the same build into one.
    Merge(MergeArgs),
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
    /// Hook functions no jump can patch with a one-byte `int3` trap, served by the agent's
    /// SIGTRAP handler (a signal delivery per hit); see README.md for what the target must
    /// not do meanwhile (block SIGTRAP, replace its handler). Never in Go programs.
    #[arg(long)]
    pub traps: bool,
    /// Run this eBPF object (`clang -target bpf`) as the probe instead of the built-in
    /// coverage probe; it is loaded and verified before the target is touched.
    #[arg(long, value_name = "FILE.bpf.o")]
    pub probe: Option<PathBuf>,
    /// Which functions to hook.
    #[command(flatten)]
    pub select: SelectArgs,
}

/// Which functions to hook (shared by `attach` and `functions`).
#[derive(Args, Debug, Clone, Default)]
pub struct SelectArgs {
    /// Only functions whose raw or demangled name matches this regex.
    #[arg(long, value_name = "REGEX")]
    pub include: Option<String>,
    /// Leave out functions whose raw or demangled name matches this regex (wins over
    /// --include).
    #[arg(long, value_name = "REGEX")]
    pub exclude: Option<String>,
    /// Also hook a loaded shared library, by file name (`libc.so.6`) or path. Repeatable.
    #[arg(long = "module", value_name = "NAME-OR-PATH")]
    pub modules: Vec<String>,
    /// Also hook every file-backed executable mapping.
    #[arg(long)]
    pub all_modules: bool,
}

/// `xcover functions`.
#[derive(Args, Debug)]
pub struct FunctionsArgs {
    /// Process id of the running target.
    pub pid: i32,
    /// Which functions.
    #[command(flatten)]
    pub select: SelectArgs,
    /// Also write them as a JSON report with no hits (an inventory to merge others into).
    #[arg(long, value_name = "PATH")]
    pub report: Option<PathBuf>,
    /// Also write them as an LCOV report with no hits.
    #[arg(long, value_name = "PATH")]
    pub lcov: Option<PathBuf>,
}

/// `xcover merge`.
#[derive(Args, Debug)]
pub struct MergeArgs {
    /// JSON reports (ours or the original xcover's schema v1), all of one build-id.
    #[arg(required = true, value_name = "REPORT.json")]
    pub reports: Vec<PathBuf>,
    /// Write the merged JSON here instead of stdout.
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Also write the merged coverage as LCOV.
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
    /// Write the JSON report here on detach.
    #[arg(long, value_name = "PATH")]
    pub report: Option<PathBuf>,
    /// Write an LCOV report here on detach.
    #[arg(long, value_name = "PATH")]
    pub lcov: Option<PathBuf>,
}

/// An error caused by the user's input rather than by a failure at run time; `main` turns
/// it into exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);
