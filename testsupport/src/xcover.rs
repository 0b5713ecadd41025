//! Running the `xcover` binary. Cargo sets `CARGO_BIN_EXE_xcover` only for the root
//! package's tests, so the caller passes its path.

use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Runs `bin args…` with stdin closed and returns its output.
pub fn run(bin: &Path, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()))
}

/// [`run`], asserting success; returns stderr then stdout.
pub fn ok(bin: &Path, args: &[&str]) -> String {
    let o = run(bin, args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "xcover {args:?} failed: {err}");
    err + &String::from_utf8_lossy(&o.stdout)
}
