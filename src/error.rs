//! The library's errors: one [`Error`] type, which says whether the user's input is at fault
//! ([`Error::is_bad_input`]: the command line's exit code 2) or something failed at run time
//! (exit code 1).
//!
//! Every fallible function of the library returns [`Result`]. Inside the library,
//! [`Context`] adds what was being done to an error (as `anyhow`'s `Context` does), and the
//! whole chain reads as one line with [`chain`]: the library itself has no `anyhow`; the
//! binary wraps these errors in `anyhow` and asks [`Error::is_bad_input`] for the exit code.

use std::error::Error as StdError;
use std::fmt;

/// An error of the library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The user's input is at fault: no such pid, a bad regex, a malformed probe, a report
    /// path that cannot be written, nothing to hook...
    #[error("{0}")]
    BadInput(String),
    /// From the injector (attach, detach, the session file): bad input or a failure at run
    /// time, as [`xcover_injector::Error::is_bad_input`] says.
    #[error(transparent)]
    Injector(#[from] xcover_injector::Error),
    /// An I/O error.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A JSON report that could not be written.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// A session whose reports could not be written: the hooks are out, and its counts are
    /// held in its session file until `xcover detach <pid> --report <file>` writes them.
    #[error(
        "pid {pid}: a report could not be written; the counts are kept in {path} \
         (`xcover detach {pid} --report <file>` writes them and removes it)"
    )]
    Held {
        /// The target.
        pid: i32,
        /// The session file that holds the counts.
        path: String,
        /// Why the report could not be written.
        #[source]
        source: Box<Error>,
    },
    /// What was being done when `source` failed.
    #[error("{what}")]
    Context {
        /// What was being done.
        what: String,
        /// What failed.
        #[source]
        source: Box<dyn StdError + Send + Sync + 'static>,
    },
    /// A failure at run time, told by its message.
    #[error("{0}")]
    Failed(String),
}

impl Error {
    /// An error caused by the user's input (exit code 2).
    pub fn bad_input(message: impl Into<String>) -> Self {
        Error::BadInput(message.into())
    }

    /// A failure at run time with this message (exit code 1).
    pub fn msg(message: impl Into<String>) -> Self {
        Error::Failed(message.into())
    }

    /// Whether the user's input is at fault rather than something at run time: the command
    /// line exits 2 for it, 1 otherwise. Seen through any context added to it.
    pub fn is_bad_input(&self) -> bool {
        match self {
            Error::BadInput(_) => true,
            Error::Injector(e) => e.is_bad_input(),
            Error::Context { source, .. } => {
                if let Some(e) = source.downcast_ref::<Error>() {
                    e.is_bad_input()
                } else if let Some(e) = source.downcast_ref::<xcover_injector::Error>() {
                    e.is_bad_input()
                } else {
                    source.is::<BadInput>()
                }
            }
            Error::Io(_) | Error::Json(_) | Error::Held { .. } | Error::Failed(_) => false,
        }
    }
}

/// An error caused by the user's input, as a value of its own (`BadInput(msg).into()` is an
/// [`Error::BadInput`]).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

impl From<BadInput> for Error {
    fn from(e: BadInput) -> Self {
        Error::BadInput(e.0)
    }
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds what was being done to an error: `.context("reading x")?`.
pub trait Context<T> {
    /// Wraps the error with `what`.
    fn context<C: fmt::Display>(self, what: C) -> Result<T>;
    /// Wraps the error with what `f` says, computed only on error.
    fn with_context<C: fmt::Display, F: FnOnce() -> C>(self, f: F) -> Result<T>;
}

impl<T, E: StdError + Send + Sync + 'static> Context<T> for std::result::Result<T, E> {
    fn context<C: fmt::Display>(self, what: C) -> Result<T> {
        self.map_err(|e| Error::Context {
            what: what.to_string(),
            source: Box::new(e),
        })
    }

    fn with_context<C: fmt::Display, F: FnOnce() -> C>(self, f: F) -> Result<T> {
        self.map_err(|e| Error::Context {
            what: f().to_string(),
            source: Box::new(e),
        })
    }
}

impl<T> Context<T> for Option<T> {
    fn context<C: fmt::Display>(self, what: C) -> Result<T> {
        self.ok_or_else(|| Error::Failed(what.to_string()))
    }

    fn with_context<C: fmt::Display, F: FnOnce() -> C>(self, f: F) -> Result<T> {
        self.ok_or_else(|| Error::Failed(f().to_string()))
    }
}

/// Returns early with an [`Error::Failed`] of this message (`format!` arguments).
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::error::Error::Failed(format!($($arg)*)))
    };
}
pub(crate) use bail;

/// An error and its causes on one line, joined by `": "` (as `anyhow` shows `{:#}`).
pub fn chain(e: &(dyn StdError + 'static)) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        line.push_str(": ");
        line.push_str(&c.to_string());
        cause = c.source();
    }
    line
}

impl From<xcover_session::file::FileError> for Error {
    /// A session file's error is the injector's (same text, same bad-input class).
    fn from(e: xcover_session::file::FileError) -> Self {
        Error::Injector(e.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_input_is_seen_through_context() {
        let e: Result<()> = Err(BadInput("no such pid".into()).into());
        let e = e.context("attach to pid 1").unwrap_err();
        assert!(e.is_bad_input());
        assert_eq!(chain(&e), "attach to pid 1: no such pid");
        let io: std::result::Result<(), _> = Err(std::io::Error::other("disk full"));
        let e = io.context("cannot write r.json").unwrap_err();
        assert!(!e.is_bad_input());
        assert_eq!(chain(&e), "cannot write r.json: disk full");
    }
}
