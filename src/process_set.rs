//! Which processes a session covers: a [`ProcessSet`] names them, a [`Member`] is one of
//! them once it is instrumented (or its session taken over), with its own state, and
//! [`Counts`] add the members' coverage up.
//!
//! One process today (`xcover attach <pid>`). A process tree or every process of an
//! executable is a new variant of [`ProcessSet`], resolved to pids by
//! [`ProcessSet::pids`]; the [`crate::Session`] then holds one [`Member`] per process, and
//! what reads or ends a session goes over its members (see [`crate::control`]).

use std::sync::atomic::Ordering;

use xcover_injector::{self as injector, SessionFile};
use xcover_session::FLAG_KEEP;

use crate::ending::Watch;
use crate::error::Result;
use crate::note::Origin;
use crate::session;

/// The processes a session covers.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProcessSet {
    /// One process.
    Pid(i32),
}

impl ProcessSet {
    /// The one process `pid`.
    pub fn pid(pid: i32) -> Self {
        ProcessSet::Pid(pid)
    }

    /// The pids of the set now.
    pub fn pids(&self) -> Vec<i32> {
        match self {
            ProcessSet::Pid(pid) => vec![*pid],
        }
    }
}

/// How this xcover holds a member's session.
pub(crate) enum Hold {
    /// It instrumented the target itself.
    Attached(injector::Attached),
    /// It took over a session that was there (kept, or left by an xcover that is gone).
    Opened(SessionFile),
}

/// One process of a live session: its pid, its session, how this xcover came to hold it, and
/// the watch for its end.
pub struct Member {
    pub(crate) pid: i32,
    pub(crate) hold: Hold,
    /// Started before the target was touched, so that however it ends is seen; none for a
    /// session that is only left in place (`--keep`).
    pub(crate) watch: Option<Watch>,
    /// Whose the session was before this xcover took it over; `None` when this xcover
    /// attached it.
    pub(crate) origin: Option<Origin>,
}

impl Member {
    /// The process.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Its session file.
    pub fn session(&self) -> &SessionFile {
        match &self.hold {
            Hold::Attached(a) => a.session(),
            Hold::Opened(s) => s,
        }
    }

    /// Whose the session was before this xcover took it over (`None`: this xcover attached
    /// it).
    pub fn origin(&self) -> Option<Origin> {
        self.origin
    }

    /// Whether the session is kept (`--keep`): a watch that ends leaves it in place.
    pub fn kept(&self) -> bool {
        self.session().header().flags & FLAG_KEEP != 0
    }

    /// Whether the instrumented image is gone, and how (see [`injector::target_gone`]).
    pub fn gone(&self) -> Option<&'static str> {
        injector::target_gone(self.pid, self.session())
    }

    /// Its coverage so far.
    pub fn counts(&self) -> Result<Counts> {
        let v = session::view(self.session())?;
        Ok(Counts {
            members: 1,
            hooked: v.hooked,
            skipped: v.skipped,
            hit: v.hit_funcs() as u64,
            hits: v.total_hits(),
            dropped: v.dropped,
        })
    }

    /// Gives the session up without ending it (its owner is cleared): for a watch that
    /// failed on a session this xcover took over.
    pub(crate) fn give_up(&self) {
        if let Hold::Opened(s) = &self.hold {
            s.header().owner_pid.store(0, Ordering::Release);
        }
    }
}

/// Coverage added up over members.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Members counted.
    pub members: usize,
    /// Functions hooked.
    pub hooked: u64,
    /// Functions skipped.
    pub skipped: u64,
    /// Functions hit at least once (per member: a function hit in two processes counts
    /// twice).
    pub hit: u64,
    /// Hits.
    pub hits: u64,
    /// Events dropped.
    pub dropped: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, o: Counts) {
        self.members += o.members;
        self.hooked += o.hooked;
        self.skipped += o.skipped;
        self.hit += o.hit;
        self.hits += o.hits;
        self.dropped += o.dropped;
    }
}
