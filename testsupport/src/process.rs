//! Processes the tests start: targets that print `ready` once set up, killed and reaped
//! whatever way the test ends.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};

/// Spawns `cmd` with its stdout piped and waits for its first line, which must be `ready`.
/// Returns the child and the rest of its stdout. Stdin and stderr are as `cmd` says.
pub fn spawn_ready(cmd: &mut Command, what: &str) -> (Child, BufReader<ChildStdout>) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"));
    let mut out = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut line = String::new();
    out.read_line(&mut line)
        .unwrap_or_else(|e| panic!("read {what}'s ready line: {e}"));
    if line != "ready\n" {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert_eq!(line, "ready\n", "{what} did not say ready");
    (child, out)
}

/// Sends `sig` to `pid`, asserting it was delivered.
pub fn signal(pid: i32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
}

/// A child process killed (and reaped) when dropped, so a failing test leaves none behind
/// (a leftover holding the test's stdout pipe would also keep a `cargo test | …` waiting).
pub struct Reaper(pub Child);

impl Reaper {
    /// The pid.
    pub fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
