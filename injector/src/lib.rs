//! The injector: everything xcover does to a running process from the outside.
//!
//! It stops every thread of a target with ptrace ([`StoppedProcess`]), reads and writes its
//! memory, makes remote system calls and remote function calls in a stopped thread, and
//! loads the agent (the `agent/` shared object) into the target with its own ELF
//! loader ([`elf`]).
//!
//! # Why our own loader, and not the target's `dlopen`
//!
//! The agent is never loaded with the target's `dlopen`. A remote `dlopen` runs the dynamic
//! loader inside a hijacked thread: it takes the loader lock and calls `malloc`. If another
//! thread of the target was stopped while holding either lock (a thread inside `malloc`, or
//! inside its own `dlopen`, is a common sight in a busy process), the hijacked thread waits
//! for a lock whose holder we keep stopped: attach deadlocks. (Frida avoids this by creating
//! a fresh thread in the target and letting it run the loader while the others run; we want
//! the others stopped.)
//!
//! So the agent is a self-contained `no_std` shared object that imports nothing, has no TLS
//! and no initialisers, and needs only `R_X86_64_RELATIVE` relocations. xcover loads it by
//! itself: one remote anonymous `mmap` reserves its span, the relocated segments are written
//! through `/proc/<pid>/mem`, each segment is `mprotect`ed to its flags (never writable and
//! executable at once), and the entry points are found in `.dynsym`. Running it in a
//! stopped thread takes no lock of the target's, so it cannot deadlock on one. The bytes go
//! straight from xcover's own binary into the target's memory: no file path is involved that
//! another user could write. Unloading is one remote `munmap`.
//!
//! # Invariants
//!
//! - **Every operation starts and ends in a park.** A thread borrowed for remote work waits
//!   between operations in a small piece of code placed in the target (`park.rs`): first
//!   in the tail of the vDSO (so even the first `mmap` and the last `munmap` of a stop are
//!   covered), then in the scratch memory. Its block holds everything the thread needs to
//!   become itself again (registers, x87/SSE state, signal mask, held signals). No
//!   single-step is ever used.
//! - **What is restored if xcover dies.** The kernel detaches every thread of a dead
//!   tracer and lets it run: a parked thread goes home by itself from its park, with its
//!   own state and its held signals; the other threads were only stopped. What a killed
//!   xcover leaves in the target is recorded in the session (the agent's base, the
//!   session's mapping, the scratch memory) and taken out by the next xcover
//!   (`scratch.rs` recovers orphan scratch memory; detach finds the rest,
//!   even a mapping or descriptor made but not recorded). The recovery tests kill xcover
//!   at each fault point (`faults.rs`) and check both.
//! - **The stop guard.** [`StoppedProcess`] holds every thread stopped; its `Drop`
//!   restores registers, x87/SSE state and signal masks, hands back every signal it held,
//!   and detaches, so an early return or a panic never leaves the target frozen or
//!   traced. Every attach and detach is "stop, work, let go"; a detach that finds a thread
//!   inside what it would unmap lets the target run and stops it again, and never unmaps
//!   under a thread.
//! - **One way to the kernel.** Every ptrace request, wait and memory access of the stop,
//!   remote and unload logic goes through [`tracer::Tracer`] ([`tracer::Ptrace`] is the
//!   real one, over [`sys`]); every `/proc` file is read by [`procfs`].
//!
//! # Modules
//! - [`attach`](crate::attach()) and `attach.rs`: check, create the session, stop, load the agent,
//!   init, hook, let go; [`hook_pending`] and [`unhook_marked`] (changing the hook set of a
//!   live session);
//! - `detach.rs`: [`detach`](crate::detach()) and the unload (stop, take the hooks out,
//!   wait threads out of the doomed ranges, fini, unmap, let go);
//! - `agent.rs`: running the agent's entry points with the thread table;
//! - `doomed.rs`: what detach unmaps, and whether a thread is (or returns) inside it;
//! - `scratch.rs`: scratch memory for one stop, and the recovery of an orphan one;
//! - [`forks`]: processes that carry a session they were not attached to (forked while
//!   the hooks were in): found by the session's inode, cleaned at every detach;
//! - `liveness.rs`: [`target_gone`] (exited, killed, execed, zombie);
//! - `faults.rs`: the fault-injection points of the recovery tests;
//! - [`stop`]: the stop-the-world guard and its signal bookkeeping;
//! - `remote.rs`: remote system calls and calls (methods of [`StoppedProcess`]);
//! - `park.rs`: the park's code and block;
//! - `parks.rs`: installing, syncing and taking out the parks (the call park in scratch
//!   memory, the system-call park in the vDSO's tail);
//! - [`tracer`]: the [`tracer::Tracer`] trait and its real implementation;
//! - [`sys`]: every ptrace request, wait and memory access (the only place they happen);
//! - [`procfs`]: everything read from `/proc` (the only parser of it in host code);
//! - [`proc_events`]: the kernel's process events (how a process ended, whoever reaps it);
//! - [`elf`]: the agent image;
//! - [`session`]: the `/dev/shm/xcover-<pid>` file (over `xcover_session::file`);
//! - this file: the public types and re-exports.
#![deny(missing_docs)]

mod agent;
mod attach;
mod detach;
mod doomed;
pub mod elf;
mod error;
mod faults;
pub mod forks;
mod liveness;
mod park;
mod parks;
pub mod proc_events;
pub mod procfs;
mod remote;
mod scratch;
pub mod session;
pub mod stop;
pub mod sys;
pub mod tracer;

use std::time::Duration;

pub use attach::{attach, hook_pending, unhook_marked};
pub use detach::{HELD, detach, detach_with};
pub use error::{Error, Result};
pub use liveness::{GONE_EXEC, GONE_EXITED, target_gone, target_gone_at};
pub use remote::nr;
pub use session::SessionFile;
pub use stop::StoppedProcess;

/// Name of the agent's initialisation entry point.
pub const AGENT_INIT: &str = xcover_session::entry::INIT;
/// Name of the agent's hook entry point.
pub const AGENT_HOOK: &str = xcover_session::entry::HOOK;
/// Name of the agent's entry point that writes the patches `HOOK` planned.
pub const AGENT_COMMIT: &str = xcover_session::entry::COMMIT;
/// Name of the agent's unhook entry point.
pub const AGENT_UNHOOK: &str = xcover_session::entry::UNHOOK;
/// Name of the agent's entry point that unhooks the functions marked `Unhooking`.
pub const AGENT_UNHOOK_SOME: &str = xcover_session::entry::UNHOOK_SOME;
/// Name of the agent's shutdown entry point.
pub const AGENT_FINI: &str = xcover_session::entry::FINI;

/// Fills a freshly created session file before the target is stopped (function table,
/// probe, maps). An error aborts the attach with nothing left behind.
pub type Prepare<'a> = &'a dyn Fn(&SessionFile) -> std::result::Result<(), String>;

/// Options of [`attach`].
#[derive(Clone)]
pub struct AttachOptions<'a> {
    /// The session outlives this process (`--keep`): `FLAG_KEEP` is set.
    pub keep: bool,
    /// Size of the session file.
    pub session_size: u64,
    /// Called once the session file exists, before the target is stopped.
    pub prepare: Option<Prepare<'a>>,
}

impl std::fmt::Debug for AttachOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttachOptions")
            .field("keep", &self.keep)
            .field("session_size", &self.session_size)
            .field("prepare", &self.prepare.is_some())
            .finish()
    }
}

impl Default for AttachOptions<'_> {
    fn default() -> Self {
        AttachOptions {
            keep: false,
            session_size: session::DEFAULT_SESSION_SIZE,
            prepare: None,
        }
    }
}

/// Timings of one attach or detach.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    /// How long the target's threads were stopped.
    pub stopped: Duration,
    /// How long the whole operation took.
    pub total: Duration,
    /// Threads stopped.
    pub threads: usize,
    /// Time spent in the agent's hook (attach) or unhook (detach) call, inside the target.
    pub agent_call: Duration,
    /// Functions hooked (attach) or unhooked (detach).
    pub funcs: u64,
    /// Times detach let the target run again because a thread was inside xcover's code.
    pub retries: u32,
    /// Set when detach found the target gone (see [`target_gone`]): nothing was left to
    /// unload, only the session to remove.
    pub gone: Option<&'static str>,
    /// Processes other than the target that carried the session (children forked while the
    /// hooks were in) and were cleaned at detach (see [`forks`]).
    pub forks: usize,
    /// Set when the session file was kept for its counts instead of removed (the reports
    /// could not be written: see [`SessionFile::hold`]).
    pub held: bool,
}

/// A target with the agent loaded and running.
pub struct Attached {
    pid: i32,
    session: SessionFile,
    /// Timings of the attach.
    pub stats: Stats,
}
