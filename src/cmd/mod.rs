//! The commands, one module each: each takes its arguments, calls the library, prints what
//! it says and gives the exit code.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::Command;

pub mod attach;
pub mod demo;
pub mod detach;
pub mod dev;
pub mod diff;
pub mod export;
pub mod functions;
pub mod hook;
pub mod merge;
pub mod reach;
pub mod status;
pub mod symbolize;

/// Runs `command`.
pub fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Attach(a) => attach::run(a),
        Command::Detach(d) => detach::run(d),
        Command::Status(s) => status::run(s),
        Command::Demo(d) => demo::run(d),
        Command::Functions(f) => functions::run(f),
        Command::Merge(m) => merge::run(m),
        Command::Hook(h) => hook::run(h, true),
        Command::Unhook(h) => hook::run(h, false),
        Command::Symbolize(s) => symbolize::run(s),
        Command::Diff(d) => diff::run(d),
        Command::Reach(r) => reach::run(r),
        Command::Dev { cmd } => dev::run(cmd),
        Command::Vm { cmd } => dev::vm(cmd),
    }
}

/// Prints what the library tells, as it happens.
pub fn note(n: xcover::Note) {
    eprintln!("xcover: {n}");
}

/// The exit code of a session's end: 1 when a signal killed a target while it was watched.
pub fn exit_code(o: xcover::Outcome) -> ExitCode {
    if o.target_killed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
