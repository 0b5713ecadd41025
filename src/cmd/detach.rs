//! `xcover detach`.

use std::process::ExitCode;

use anyhow::Result;
use xcover::ProcessSet;

use crate::cli::DetachArgs;

/// `xcover detach`: ends a kept session (or one an xcover left, or one held for its
/// counts), writing the reports asked for.
pub fn run(a: DetachArgs) -> Result<ExitCode> {
    let mut outputs = a.output.outputs();
    outputs.set_debug_dirs(a.debug_dirs.clone());
    outputs.check()?;
    let outcome = xcover::control::detach(&ProcessSet::pid(a.pid), &outputs, &mut super::note)?;
    Ok(super::exit_code(outcome))
}
