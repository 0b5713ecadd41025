//! `xcover hook <pid>` and `xcover unhook <pid>`: change the hook set of a live session
//! without detaching.

use std::process::ExitCode;

use anyhow::Result;
use xcover::hookset::{self, Selector};

use crate::cli::HookArgs;

/// `xcover hook` (`on`) or `xcover unhook`.
pub fn run(a: HookArgs, on: bool) -> Result<ExitCode> {
    let sel = Selector::new(a.include.as_deref(), a.exclude.as_deref(), a.modules)?;
    let (c, selected) = hookset::change(a.pid, on, &sel)?;
    eprintln!(
        "xcover: pid {}: {} {} of {selected} selected function(s) ({} thread(s) stopped {:.2} ms)",
        a.pid,
        if on { "hooked" } else { "unhooked" },
        c.funcs,
        c.threads,
        c.stopped.as_secs_f64() * 1e3
    );
    Ok(ExitCode::SUCCESS)
}
