//! The harness xcover's test crates share; a dev-dependency only, never published.
//!
//! - [`tools`]: a tool the tests need and do not find is a failure that names the tool and
//!   `scripts/setup.sh`, never a skipped test.
//! - [`tmp`]: one directory per test run in the temporary directory, `xcover-…-<pid>`, and
//!   the sweep of what earlier runs left there.
//! - [`build`]: compiling targets at test time (`cc`, `clang`, `go`, …), once per run.
//! - [`process`]: starting a target that says `ready`, and killing it whatever happens.
//! - [`inspect`]: a process seen from outside (`/proc/<pid>/maps`, tracers, code bytes,
//!   function addresses), to check it is as it was.
//! - [`xcover`]: running the `xcover` binary, whose path the caller gives (Cargo tells only
//!   the root package's tests where it is).
//! - [`report`]: reading a JSON report.
//! - [`tmux`]: a private tmux server, to drive a TUI in a real terminal.
//!
//! Every helper panics with a message that says what failed: these are test assertions.

pub mod build;
pub mod inspect;
pub mod process;
pub mod report;
pub mod tmp;
pub mod tmux;
pub mod tools;
pub mod xcover;
