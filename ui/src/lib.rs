//! The live coverage TUI of `xcover attach`: a ratatui + crossterm screen in the spirit of
//! `top`, fed by snapshots of a session.
//!
//! # Using it
//!
//! Implement [`Source`] on top of the session (it hands out a [`Snapshot`] about ten times a
//! second and can write the JSON report on demand), then call [`run`]:
//!
//! ```no_run
//! use std::sync::{Arc, atomic::AtomicBool};
//! # struct Session;
//! # impl xcover_ui::Source for Session {
//! #     fn snapshot(&mut self) -> Result<xcover_ui::Snapshot, String> { Err("gone".into()) }
//! #     fn write_report(&mut self) -> Result<String, String> { Err("no".into()) }
//! # }
//! # let session = Session;
//! let stop = Arc::new(AtomicBool::new(false)); // set it from a SIGTERM handler, say
//! let opts = xcover_ui::Options { stop: stop.clone(), ..xcover_ui::Options::default() };
//! match xcover_ui::run(session, opts)? {
//!     xcover_ui::Outcome::Detach => { /* take the hooks out */ }
//!     xcover_ui::Outcome::KeepLive => { /* leave them, mark the session kept */ }
//!     xcover_ui::Outcome::Stopped => { /* the caller set `stop`, or Ctrl-C */ }
//!     xcover_ui::Outcome::SourceEnded(why) => eprintln!("{why}"),
//! }
//! # Ok::<(), xcover_ui::Error>(())
//! ```
//!
//! [`run`] owns the terminal until it returns: raw mode and the alternate screen are given
//! back on every way out, a panic included (a panic hook restores the terminal before the
//! previous hook prints the message).
//!
//! # Design
//!
//! - `model`: what a [`Source`] provides. Names travel once ([`Snapshot::new_functions`]),
//!   counts every time ([`Snapshot::hits`], in a stable table order), so the UI never sees the
//!   shared-memory layout and an update of 100 000 functions is a few vector passes.
//! - `state`: [`App`], everything shown. Rates are hits over the last second, computed from
//!   the snapshots' own clock ([`Snapshot::attached_for`]), so tests are deterministic. The
//!   table keeps a sort order over all functions between updates and re-sorts it with a stable
//!   adaptive sort (nearly sorted input costs about one comparison per row); the text filter
//!   is cached per function and, while the user types more characters, only the current
//!   matches are re-checked.
//! - `input`: keys change the state ([`App::handle_key`]) and return a [`Command`] for the
//!   loop (quit, write the report).
//! - `draw`: [`App::draw`] takes `&self`; only the rows on screen become widgets.
//! - `terminal`: the event loop, one `select!` over a crossbeam channel fed by an input thread
//!   and a ticker; the terminal guard and panic hook.
//!
//! `examples/fake_session.rs` runs the TUI on a synthetic session; `README.md` beside this
//! crate has a screenshot and the keys.
//!
//! Colours are off when `NO_COLOR` is set to anything non-empty ([`Options::default`]);
//! without colour the screen uses only bold and reverse video.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod draw;
mod format;
mod input;
mod model;
mod state;
mod terminal;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

pub use input::Command;
pub use model::{Event, Function, Snapshot, Source};
pub use state::{App, Mode, Show, SortKey};

/// How [`run`] behaves.
#[derive(Clone, Debug)]
pub struct Options {
    /// Use colours. [`Options::default`] turns them off when `NO_COLOR` is set and non-empty.
    pub color: bool,
    /// Time between two snapshots (and screen refreshes); 100 ms by default.
    pub tick: Duration,
    /// Set to `true` from anywhere (a signal handler, another thread) to make [`run`] return
    /// [`Outcome::Stopped`] within one tick.
    pub stop: Arc<AtomicBool>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            color: color_wanted(std::env::var_os("NO_COLOR").as_deref()),
            tick: Duration::from_millis(100),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// `NO_COLOR` turns colours off when present and not empty (<https://no-color.org>).
fn color_wanted(no_color: Option<&std::ffi::OsStr>) -> bool {
    no_color.is_none_or(|v| v.is_empty())
}

/// How the TUI ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The user pressed `q`: detach, removing the instrumentation.
    Detach,
    /// The user pressed `K`: leave the session live for a later attach or detach.
    KeepLive,
    /// [`Options::stop`] was set, or the user pressed Ctrl-C (what SIGINT would do outside
    /// the TUI's raw mode): the caller decides, as for a signal.
    Stopped,
    /// The source failed (for example the target exited); the message it gave. The user saw
    /// it and then left.
    SourceEnded(String),
}

/// What can go wrong with the terminal. Source failures are not errors but an
/// [`Outcome::SourceEnded`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Entering raw mode or the alternate screen failed (is stdout a terminal?).
    #[error("cannot set up the terminal")]
    Setup(#[source] std::io::Error),
    /// Writing a frame failed.
    #[error("cannot draw to the terminal")]
    Draw(#[source] std::io::Error),
    /// Reading keyboard input failed.
    #[error("cannot read keyboard input")]
    Input(#[source] std::io::Error),
    /// Leaving raw mode or the alternate screen failed.
    #[error("cannot restore the terminal")]
    Restore(#[source] std::io::Error),
}

/// Runs the TUI on the current terminal until the user quits, [`Options::stop`] is set, or
/// the user leaves after the source has ended. Polls `source` every [`Options::tick`].
pub fn run(source: impl Source, opts: Options) -> Result<Outcome, Error> {
    terminal::run(source, opts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn no_color_convention() {
        assert!(color_wanted(None));
        assert!(color_wanted(Some(OsStr::new(""))));
        assert!(!color_wanted(Some(OsStr::new("1"))));
    }
}
