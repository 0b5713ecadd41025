//! What the library tells while it works: a [`Note`] for each thing a user should know, in
//! the order it happens. The library prints nothing; a front end shows them (the command
//! line prints each as `xcover: <note>` on stderr).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::ending::Ending;

/// Something to tell the user.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Note {
    /// A module gives no function because it is stripped (others still give some).
    Stripped {
        /// The target.
        pid: i32,
        /// Why, and where its debug symbols would be looked for.
        reason: String,
    },
    /// `--traps` is ignored for a target with Go code (its runtime owns its signals): only
    /// jumps hook it.
    TrapsIgnored {
        /// The target.
        pid: i32,
    },
    /// A report was written.
    Wrote {
        /// Where.
        path: PathBuf,
        /// Taken while the session stays live and keeps counting.
        snapshot: bool,
    },
    /// A fresh session is live.
    Attached {
        /// The target.
        pid: i32,
        /// Functions hooked.
        hooked: u64,
        /// Functions skipped.
        skipped: u64,
        /// Threads stopped.
        threads: usize,
        /// Time spent finding the functions.
        discovered: Duration,
        /// Time spent loading the probe and preparing the session's contents.
        prepared: Duration,
        /// How long the target was stopped.
        stopped: Duration,
        /// Of which the agent's hook call.
        agent_call: Duration,
        /// The whole attach.
        total: Duration,
    },
    /// `--keep`: the hooks stay in the target, and xcover leaves.
    Kept {
        /// The target.
        pid: i32,
        /// Reports were asked for: the `detach` that ends the session writes them.
        reports_asked: bool,
    },
    /// A session that was already there is watched again.
    Watching {
        /// The target.
        pid: i32,
        /// Whose it was.
        origin: Origin,
    },
    /// A watch ended and left the session kept (hooks in, counting, no owner).
    LeftKept {
        /// The target.
        pid: i32,
        /// What ended the watch ("time is up: ", "signal received: ", or nothing).
        why: &'static str,
    },
    /// The target ended while watched (or before its kept session was detached).
    TargetEnded {
        /// The target.
        pid: i32,
        /// How.
        ending: Ending,
        /// The session was removed (else it is held for its counts).
        removed: bool,
    },
    /// A signal ended the watch of a session this xcover attached: it detaches.
    Signalled,
    /// Processes forked from a target while its hooks were in carried its session: their
    /// hooks, agent and session mapping were taken out too.
    ForksCleaned {
        /// The target.
        pid: i32,
        /// How many processes.
        count: usize,
    },
    /// A detach is done.
    Detached {
        /// The target.
        pid: i32,
        /// How it went.
        how: Detached,
        /// The session was removed because its target was gone (a live target's session
        /// goes with its hooks, and is not mentioned).
        removed: bool,
    },
}

/// Whose a session was when an `attach` found it there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Kept (`--keep`, or `K` in the TUI): it stays kept when the watch ends.
    Kept,
    /// Its xcover (this pid) is gone; it is detached when the watch ends, as that xcover
    /// would have.
    Left(u32),
    /// Nobody's, not kept.
    Unowned,
}

/// How a detach went.
#[derive(Debug, Clone)]
pub enum Detached {
    /// The hooks are out; the target was stopped this long.
    Out {
        /// How long the target was stopped.
        stopped: Duration,
    },
    /// The target was found gone (what the injector said of it): only the session was left.
    Gone(&'static str),
    /// The target ended during the detach, and this is how.
    Ended(Ending),
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Note::Stripped { pid, reason } => {
                write!(
                    f,
                    "warning: pid {pid}: none of its functions hooked: {reason}"
                )
            }
            Note::TrapsIgnored { pid } => write!(
                f,
                "pid {pid}: --traps ignored: the target has Go code, whose runtime owns its \
                 signals"
            ),
            Note::Wrote { path, snapshot } => write!(
                f,
                "wrote {}{}",
                path.display(),
                if *snapshot {
                    " (a snapshot: the session stays live and keeps counting)"
                } else {
                    ""
                }
            ),
            Note::Attached {
                pid,
                hooked,
                skipped,
                threads,
                discovered,
                prepared,
                stopped,
                agent_call,
                total,
            } => write!(
                f,
                "attached to pid {pid}: {hooked} functions hooked, {skipped} skipped ({threads} \
                 threads; discovery {:.1} ms, probe and session {:.1} ms, target stopped {:.2} \
                 ms of which the agent's hook call {:.2} ms, attach {:.1} ms)",
                ms(*discovered),
                ms(*prepared),
                ms(*stopped),
                ms(*agent_call),
                ms(*total)
            ),
            Note::Kept { pid, reports_asked } => write!(
                f,
                "the hooks stay in pid {pid}; `xcover attach {pid}` watches them again, \
                 `xcover detach {pid}` takes them out{}",
                if *reports_asked {
                    " (and writes the reports: give it --report/--lcov)"
                } else {
                    ""
                }
            ),
            Note::Watching { pid, origin } => match origin {
                Origin::Kept => write!(
                    f,
                    "pid {pid}: watching the kept session (it stays kept at the end: `q` in \
                     the TUI or `xcover detach {pid}` takes the hooks out)"
                ),
                Origin::Left(owner) => write!(
                    f,
                    "pid {pid}: watching the session xcover pid {owner} left (it is gone)"
                ),
                Origin::Unowned => write!(f, "pid {pid}: watching its session"),
            },
            Note::Signalled => f.write_str("signal received: detaching"),
            Note::ForksCleaned { pid, count } => write!(
                f,
                "pid {pid}: {count} process{} forked from it carried its hooks: taken out too",
                if *count == 1 { "" } else { "es" }
            ),
            Note::LeftKept { pid, why } => write!(
                f,
                "{why}the hooks stay in pid {pid} (a kept session); `xcover detach {pid}` \
                 takes them out"
            ),
            Note::TargetEnded {
                pid,
                ending,
                removed,
            } => {
                f.write_str(&ending.message(*pid))?;
                if *removed {
                    f.write_str("; session removed")?;
                }
                Ok(())
            }
            Note::Detached { pid, how, removed } => {
                match how {
                    Detached::Ended(end) => f.write_str(&end.message(*pid))?,
                    Detached::Gone(what) => write!(f, "pid {pid} {what}")?,
                    Detached::Out { stopped } => write!(
                        f,
                        "detached from pid {pid} (target stopped {:.2} ms)",
                        ms(*stopped)
                    )?,
                }
                if *removed {
                    f.write_str("; session removed")?;
                }
                Ok(())
            }
        }
    }
}
