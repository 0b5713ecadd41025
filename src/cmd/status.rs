//! `xcover status`.

use std::process::ExitCode;

use anyhow::{Context, Result};
use xcover::control;

use crate::cli::StatusArgs;

/// `xcover status`: one line per session on stdout.
pub fn run(a: StatusArgs) -> Result<ExitCode> {
    let pids = control::sessions(a.pid);
    if pids.is_empty() {
        if let Some(p) = a.pid {
            return Err(xcover::Error::bad_input(format!("pid {p}: no xcover session")).into());
        }
        println!("no sessions");
        return Ok(ExitCode::SUCCESS);
    }
    for pid in pids {
        match control::status(pid) {
            Ok(line) => println!("{line}"),
            // The error names the file already.
            Err(e) if a.pid.is_some() => {
                return Err(e).with_context(|| format!("status of pid {pid}"));
            }
            Err(e) => println!("pid {pid}: {e}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}
