//! xcover: live function coverage of a process that is already running.
//!
//! `xcover attach <pid>` stops the target with ptrace, loads the agent into it, hooks every
//! function with an inline trampoline that runs a JIT-compiled eBPF probe, and shows the hit
//! counts live; `xcover detach <pid>` takes it all out again.
#![forbid(unsafe_code)]

mod attach;
mod cli;
mod demo;
mod discover;
mod ending;
mod inbound;
mod live;
mod report;
mod session;
mod vm;

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;

/// Exit code for a failure at run time.
const EXIT_RUNTIME: u8 = 1;
/// Exit code for bad usage or bad input (no such pid, not traceable, bad regex, ...).
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let args = match cli::Cli::try_parse() {
        Ok(a) => a,
        Err(e) => return usage_error(e),
    };
    let result = match args.command {
        cli::Command::Attach(a) => attach::attach(a),
        cli::Command::Detach(d) => attach::detach(d),
        cli::Command::Status(s) => attach::status(s),
        cli::Command::Demo(d) => demo::demo(d),
        cli::Command::Functions(f) => discover::list(f),
        cli::Command::Merge(m) => report::merge_command(m),
        cli::Command::Vm { cmd } => vm::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xcover: error: {}", one_line(&e));
            if e.downcast_ref::<cli::BadInput>().is_some() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::from(EXIT_RUNTIME)
            }
        }
    }
}

/// An error on one line: the outermost context first, then each cause, leaving out a cause
/// whose text the line already ends with (an error that prints its source, then that source).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.is_empty() {
            line = text;
        } else if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

/// `--help` and `--version` print as usual; any other command-line error becomes one line
/// (the tool's promise for bad input) and exit code 2.
fn usage_error(e: clap::Error) -> ExitCode {
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return if e.use_stderr() {
            ExitCode::from(EXIT_USAGE)
        } else {
            ExitCode::SUCCESS
        };
    }
    let text = e.render().to_string();
    let first = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("bad command line")
        .trim_start_matches("error: ");
    eprintln!("xcover: error: {first} (try --help)");
    ExitCode::from(EXIT_USAGE)
}
