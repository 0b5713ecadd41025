//! xcover: live function coverage of a process that is already running.
//!
//! The binary is thin: it parses the command line (`cli.rs`), runs the command (`cmd/`,
//! one module each) with the `xcover` library, which holds the application, prints what the
//! library tells, and turns errors into exit codes: 0 success, 1 a failure at run time, 2
//! bad usage or bad input ([`xcover::Error::is_bad_input`]).
#![forbid(unsafe_code)]

mod cli;
mod cmd;

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
    match cmd::run(args.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xcover: error: {}", one_line(&e));
            if is_bad_input(&e) {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::from(EXIT_RUNTIME)
            }
        }
    }
}

/// Whether the user's input is at fault: the library's error says so, seen through any
/// context the binary added.
fn is_bad_input(e: &anyhow::Error) -> bool {
    e.downcast_ref::<xcover::Error>()
        .is_some_and(xcover::Error::is_bad_input)
        || e.downcast_ref::<xcover::BadInput>().is_some()
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
