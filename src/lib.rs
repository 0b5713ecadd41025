//! xcover: live function coverage of a process that is already running.
//!
//! This library is the application; the `xcover` binary (`src/main.rs`, `src/cli.rs`,
//! `src/cmd/`) only parses the command line, calls it, prints what it says and turns its
//! errors into exit codes. Nothing here depends on the binary.
//!
//! A [`Session`] covers a [`ProcessSet`]: [`Session::prepare`] checks the targets and
//! prepares everything before any is touched, [`Prepared::start`] stops each target with
//! ptrace, loads the agent into it and hooks every function with an inline trampoline that
//! runs a JIT-compiled eBPF probe; [`Session::watch_step`] and [`Session::live`] follow it
//! while it runs; [`Session::end`] takes it all out again (or leaves it in) and writes the
//! reports.
//!
//! # Where things are
//!
//! | what | where |
//! |---|---|
//! | attach, watch, detach, status: the [`Session`] | [`control`] |
//! | which processes a session covers, per-process state, counts over them | [`process_set`] |
//! | which functions to hook, at which addresses | [`discover`] (and [`inbound`]); without symbols from [`ehframe`] and [`pclntab`] |
//! | names, files and lines for a report taken without symbols | [`symbolize`] |
//! | the session file's contents: laid out before the agent runs, read back while it runs | [`session`] |
//! | reading a live session for the TUI and the status line | [`live`] |
//! | production modes: `--first-hit`, `--max-overhead` | [`govern`] |
//! | changing the hook set of a live session (`xcover hook`/`unhook`) | [`hookset`] |
//! | how a target ended while watched | [`ending`] |
//! | reports, their formats (one file each, one registry) and where they are written; merge, diff, reachability and OpenVEX | [`report`] |
//! | Prometheus metrics and the OTLP push of a live session | [`export`] |
//! | what the library tells while it works | [`note`] |
//! | errors: bad input or a failure at run time | [`error`] |
#![forbid(unsafe_code)]

pub mod control;
pub mod discover;
pub mod ehframe;
pub mod ending;
pub mod error;
pub mod export;
pub mod govern;
pub mod hookset;
pub mod inbound;
pub mod live;
pub mod note;
pub mod pclntab;
pub mod process_set;
pub mod report;
pub mod session;
pub mod symbolize;

pub use control::{Ended, Outcome, Plan, Prepared, Session, Step};
pub use error::{BadInput, Error, Result};
pub use note::Note;
pub use process_set::{Counts, Member, ProcessSet};
