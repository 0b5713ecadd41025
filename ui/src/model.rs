//! What the TUI is fed: a [`Source`] hands out [`Snapshot`]s, decoupled from the shared-memory
//! layout so the UI can be driven by a live session, a saved one or a test.

use std::time::Duration;

/// Where the TUI gets its data from. The caller implements it on top of the session's shared
/// memory; tests implement it with a script.
///
/// [`run`](crate::run) calls [`snapshot`](Source::snapshot) about ten times a second on the
/// thread that called `run`, so an implementation needs neither `Send` nor locking.
pub trait Source {
    /// Reads the session as it is now.
    ///
    /// An `Err` means the session is over (for example "target exited"): the TUI shows the
    /// message, stops polling, and ends with [`Outcome::SourceEnded`](crate::Outcome) when the
    /// user leaves.
    fn snapshot(&mut self) -> Result<Snapshot, String>;

    /// Writes the JSON report now and returns where it went (shown to the user).
    fn write_report(&mut self) -> Result<String, String>;
}

/// The state of a session at one instant.
///
/// The function table only grows: each snapshot lists the functions added since the previous
/// one in [`new_functions`](Snapshot::new_functions) (all of them in the first snapshot), and
/// gives the hit count of every function known so far in [`hits`](Snapshot::hits), in table
/// order. Keeping the order stable is what lets the TUI compute rates by index, and sending
/// names only once keeps a 100 000-function update cheap.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Pid of the target.
    pub pid: u32,
    /// Path of the target's executable.
    pub exe: String,
    /// Functions with a hook in place.
    pub functions_hooked: u64,
    /// Functions left alone (their reasons arrive as [`Event::Skipped`]).
    pub functions_skipped: u64,
    /// Of the hooked functions, those hooked with a one-byte trap (see [`Function::hook`]).
    pub functions_trapped: u64,
    /// Events the probe could not record (ring buffer full).
    pub dropped_events: u64,
    /// Time since the session was attached, on the session's own clock. Rates are computed
    /// from the difference between two snapshots' `attached_for`, never from the wall clock.
    pub attached_for: Duration,
    /// Functions appended to the table since the previous snapshot. The table holds the
    /// functions that can be hit (the hooked ones); coverage is hit / table size.
    pub new_functions: Vec<Function>,
    /// Hit count of each function in table order. A shorter vector leaves the missing
    /// functions' counts as they were.
    pub hits: Vec<u64>,
    /// What happened since the previous snapshot, oldest first.
    pub events: Vec<Event>,
    /// What a production mode is doing (`--first-hit`, `--max-overhead`: the overhead
    /// estimate, functions unhooked, stop times), shown after the counts; empty otherwise.
    pub mode_line: String,
}

/// One function of the table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Function {
    /// Name to show: demangled when possible, raw otherwise.
    pub name: String,
    /// Module (executable or shared library) the function lives in, e.g. `libc.so.6`.
    /// The module column appears only when the table holds more than one.
    pub module: String,
    /// How it is hooked: `jmp`, `jmp8` or `trap` (a trap costs a signal delivery per hit);
    /// empty when not known.
    pub hook: String,
}

impl Function {
    /// A function called `name` in `module`.
    pub fn new(name: impl Into<String>, module: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            module: module.into(),
            hook: String::new(),
        }
    }

    /// The same function, hooked as `hook` says (`jmp`, `jmp8`, `trap`).
    pub fn with_hook(mut self, hook: impl Into<String>) -> Self {
        self.hook = hook.into();
        self
    }
}

/// Something that happened in the session, shown in the event log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A function was hit for the first time.
    FirstHit {
        /// Index of the function in table order.
        function: usize,
        /// When, relative to attach.
        at: Duration,
    },
    /// A function was not hooked.
    Skipped {
        /// Its name.
        name: String,
        /// Why, e.g. "shorter than 5 bytes".
        reason: String,
    },
    /// Anything else worth telling the user.
    Warning(String),
}
