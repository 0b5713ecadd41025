//! The injector's error type.

use std::io;

/// Everything that can go wrong while xcover works on a target.
///
/// Each variant names the pid (and where it matters the thread, the address and the call)
/// so a one-line message is enough to understand what happened.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pid does not exist (or exited while we looked at it).
    #[error("no process with pid {pid}")]
    NoSuchProcess {
        /// The pid.
        pid: i32,
    },
    /// The target exited (or execed) while xcover was working on it.
    #[error("pid {pid} {what} during {during}")]
    Exited {
        /// The pid.
        pid: i32,
        /// What happened (see [`crate::target_gone`]).
        what: &'static str,
        /// What xcover was doing.
        during: &'static str,
    },
    /// We may not trace the target.
    #[error(
        "pid {pid}: not allowed to trace it ({call}: permission denied); run as the same user \
         with CAP_SYS_PTRACE, or check kernel.yama.ptrace_scope"
    )]
    PermissionDenied {
        /// The pid.
        pid: i32,
        /// What was refused.
        call: &'static str,
    },
    /// The target cannot be instrumented (a zombie, a kernel thread, traced, not x86-64...).
    #[error("pid {pid}: {reason}")]
    Unsupported {
        /// The pid.
        pid: i32,
        /// Why, in a few words.
        reason: String,
    },
    /// A session already exists for this pid.
    #[error("pid {pid}: already attached ({detail})")]
    AlreadyAttached {
        /// The pid.
        pid: i32,
        /// Who owns the session and what to do.
        detail: String,
    },
    /// There is no session for this pid.
    #[error("pid {pid}: no xcover session ({path} does not exist)")]
    NoSession {
        /// The pid.
        pid: i32,
        /// The session file we looked for.
        path: String,
    },
    /// A system call or ptrace request made by xcover failed.
    #[error("pid {pid} tid {tid}: {call} failed: {source}")]
    Sys {
        /// The pid.
        pid: i32,
        /// The thread the call was about (the pid when it concerns the process).
        tid: i32,
        /// The call, e.g. `PTRACE_GETREGS`.
        call: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// Reading or writing the target's memory failed.
    #[error("pid {pid}: {op} of {len} bytes at {addr:#x} failed: {source}")]
    Memory {
        /// The pid.
        pid: i32,
        /// `read` or `write`.
        op: &'static str,
        /// Target address.
        addr: u64,
        /// Length in bytes.
        len: usize,
        /// The OS error.
        source: io::Error,
    },
    /// A system call made inside the target returned an error.
    #[error("pid {pid} tid {tid}: remote {name}() failed: {source}")]
    RemoteSyscall {
        /// The pid.
        pid: i32,
        /// The thread that ran it.
        tid: i32,
        /// The system call's name.
        name: &'static str,
        /// The error it returned.
        source: io::Error,
    },
    /// A function called inside the target faulted or did not return.
    #[error("pid {pid} tid {tid}: remote call of {func:#x} {what}")]
    RemoteCall {
        /// The pid.
        pid: i32,
        /// The thread that ran it.
        tid: i32,
        /// Address of the function.
        func: u64,
        /// What happened (e.g. "faulted with SIGSEGV at 0x10").
        what: String,
    },
    /// The thread stopped in a way we did not expect.
    #[error("pid {pid} tid {tid}: {what}")]
    Unexpected {
        /// The pid.
        pid: i32,
        /// The thread.
        tid: i32,
        /// What happened.
        what: String,
    },
    /// The agent's ELF image is not one the loader accepts.
    #[error("agent image: {0}")]
    BadImage(String),
    /// An entry point of the agent failed (refused the session, rejected the probe, could
    /// not patch...).
    #[error("pid {pid}: agent {entry} failed (error {code}): {message}")]
    Agent {
        /// The pid.
        pid: i32,
        /// The entry point.
        entry: &'static str,
        /// The negative code it returned.
        code: i64,
        /// The agent's own message (the session's `agent_error`).
        message: String,
    },
    /// Creating, reading or removing the session file failed.
    #[error("session file {path}: {source}")]
    Session {
        /// The file.
        path: String,
        /// The OS error.
        source: io::Error,
    },
    /// The session file is not one this xcover understands.
    #[error("session file {path}: {reason}")]
    BadSession {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl Error {
    /// True for errors caused by the input (pid, permissions, target kind, session state)
    /// rather than a failure at run time; the CLI exits with code 2 for these.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Error::NoSuchProcess { .. }
                | Error::PermissionDenied { .. }
                | Error::Unsupported { .. }
                | Error::AlreadyAttached { .. }
                | Error::NoSession { .. }
        )
    }
}

/// The injector's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
