//! The session file `/dev/shm/xcover-<pid>`: the file itself (creating, opening, holding,
//! removing, reading) is `xcover_session::file`, re-exported here; this module gives it the
//! injector's view of a target ([`TargetInfo`]) and the injector's errors.

pub use xcover_session::file::{
    DEFAULT_SESSION_SIZE, FileError, Owner, SessionFile, Target, list_sessions, session_path,
};

use crate::Error;
use crate::procfs::TargetInfo;

impl<'a> From<&'a TargetInfo> for Target<'a> {
    fn from(t: &'a TargetInfo) -> Self {
        Target {
            pid: t.pid,
            start_time: t.start_time,
            fsuid: t.fsuid,
            fsgid: t.fsgid,
            build_id: &t.build_id,
            exe_path: &t.exe_path,
        }
    }
}

impl From<FileError> for Error {
    fn from(e: FileError) -> Self {
        match e {
            FileError::Io { path, source } => Error::Session { path, source },
            FileError::Bad { path, reason } => Error::BadSession { path, reason },
            FileError::AlreadyAttached { pid, detail } => Error::AlreadyAttached { pid, detail },
            FileError::NoSession { pid, path } => Error::NoSession { pid, path },
        }
    }
}
