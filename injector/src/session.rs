//! The session file `/dev/shm/xcover-<pid>`: created here, mapped here and in the target.
//!
//! It is created with `O_CREAT | O_EXCL | O_NOFOLLOW` and mode 0600 (and given to the
//! target's effective uid and gid when xcover runs as root for a process that opens files
//! as another user: another user's process, or a setuid program), so no other user
//! can read it, replace it or plant one in its place: `/dev/shm` is sticky, and an existing
//! file is never reused, only refused ("already attached") or, when it names a process that
//! no longer exists, removed as stale.

use std::fs::File;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::Ordering;

use memmap2::MmapRaw;
use xcover_session::{
    FLAG_HELD, FLAG_KEEP, SESSION_MAGIC, SESSION_PREFIX, SESSION_VERSION, SessionHeader,
    SessionState, session_file_name,
};

use crate::procfs::{self, TargetInfo};
use crate::{Error, Result};

/// Size of a session file made by this version: the header, page-rounded. (Later layouts
/// grow it with the function table, the map arena and the log ring.)
pub const DEFAULT_SESSION_SIZE: u64 = 4096;

/// The path of the session file of `pid`.
pub fn session_path(pid: i32) -> String {
    let mut buf = [0u8; 64];
    session_file_name(pid as u32, &mut buf).to_string()
}

/// A session file, mapped in xcover's process.
pub struct SessionFile {
    path: String,
    file: File,
    pub(crate) map: MmapRaw,
}

const _: () = assert!(std::mem::size_of::<SessionHeader>() as u64 <= DEFAULT_SESSION_SIZE);

impl SessionFile {
    /// Creates the session file for `target` and writes its header (state Attaching).
    pub fn create(target: &TargetInfo, size: u64, keep: bool) -> Result<SessionFile> {
        let pid = target.pid;
        let path = session_path(pid);
        let serr = |source: io::Error| Error::Session {
            path: path.clone(),
            source,
        };
        // Written under a private name and published whole with link(2), so that an xcover
        // killed half-way never leaves a session file without its header. A private file
        // left by an xcover killed before publishing is removed here.
        remove_unpublished(pid);
        let tmp = format!(
            "/dev/shm/.{}tmp-{pid}-{}",
            SESSION_PREFIX,
            std::process::id()
        );
        let _ = std::fs::remove_file(&tmp);
        let file = Self::create_excl(&tmp).map_err(serr)?;
        let fail = |e: Error| {
            let _ = std::fs::remove_file(&tmp);
            e
        };
        file.set_len(size).map_err(serr).map_err(fail)?;
        // The target opens it from inside (a remote openat) with its own filesystem
        // credentials: its effective uid, which for a setuid program is not the uid of
        // whoever ran it. Root (the only one who may trace a process of another user, or a
        // setuid one) gives the file to that uid; it stays 0600, so one user can open it,
        // and root keeps reading it through its capabilities.
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        if euid == 0 && (target.fsuid, target.fsgid) != (0, 0) {
            std::os::unix::fs::fchown(&file, Some(target.fsuid), Some(target.fsgid))
                .map_err(serr)
                .map_err(fail)?;
        }
        let map = MmapRaw::map_raw(&file).map_err(serr).map_err(fail)?;
        // SAFETY: every field of SessionHeader is an integer, an integer array or an
        // integer atomic: all-zero bytes are a valid value.
        let mut h: SessionHeader = unsafe { std::mem::zeroed() };
        h.magic = SESSION_MAGIC;
        h.version = SESSION_VERSION;
        h.header_size = std::mem::size_of::<SessionHeader>() as u32;
        h.total_size = size;
        *h.state.get_mut() = SessionState::Attaching as u32;
        h.target_pid = pid as u32;
        h.target_start_time = target.start_time;
        *h.owner_pid.get_mut() = std::process::id();
        h.flags = if keep { FLAG_KEEP } else { 0 };
        h.created_unix_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let n = target.build_id.len().min(h.build_id.len());
        h.build_id[..n].copy_from_slice(&target.build_id[..n]);
        h.build_id_len = n as u32;
        let exe = target.exe_path.as_bytes();
        let n = exe.len().min(h.exe_path.len());
        h.exe_path[..n].copy_from_slice(&exe[..n]);
        h.exe_path_len = n as u32;
        if (map.len() as u64) < std::mem::size_of::<SessionHeader>() as u64 {
            return Err(fail(Error::BadSession {
                path: path.clone(),
                reason: "too small".into(),
            }));
        }
        // SAFETY: the mapping is at least size_of::<SessionHeader>() bytes (checked above),
        // page-aligned, and nobody else maps the file yet.
        unsafe { std::ptr::write(map.as_mut_ptr() as *mut SessionHeader, h) };
        let published = match std::fs::hard_link(&tmp, &path) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Self::check_existing(target, &path).map_err(fail)?;
                // Stale: it names a process that is gone.
                std::fs::remove_file(&path).map_err(serr).map_err(fail)?;
                std::fs::hard_link(&tmp, &path)
            }
            r => r,
        };
        let _ = std::fs::remove_file(&tmp);
        published.map_err(serr)?;
        Ok(SessionFile { path, file, map })
    }

    fn create_excl(path: &str) -> io::Result<File> {
        File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
    }

    /// Refuses when an existing session file belongs to the live target, or holds counts
    /// not yet written (whatever process it names: see [`SessionFile::hold`]).
    fn check_existing(target: &TargetInfo, path: &str) -> Result<()> {
        let pid = target.pid;
        let Ok(old) = Self::open_path(pid, path) else {
            // Unreadable or malformed: treat as stale.
            return Ok(());
        };
        let h = old.header();
        if old.is_held() {
            return Err(Error::AlreadyAttached {
                pid,
                detail: format!(
                    "{path} holds the counts of an earlier session whose report could not be \
                     written; `xcover detach {pid} --report <file>` writes them and removes it"
                ),
            });
        }
        if h.target_pid != pid as u32 || h.target_start_time != target.start_time {
            return Ok(());
        }
        let detail = match old.owner() {
            Owner::Alive(owner) => format!("xcover pid {owner} owns the session {path}"),
            _ if h.flags & FLAG_KEEP != 0 => {
                format!("a kept session exists ({path}); run `xcover detach {pid}` first")
            }
            _ => format!(
                "a session left by an xcover that died exists ({path}); run `xcover detach {pid}`"
            ),
        };
        Err(Error::AlreadyAttached { pid, detail })
    }

    /// Opens the existing session of `pid`.
    pub fn open(pid: i32) -> Result<SessionFile> {
        let path = session_path(pid);
        match std::fs::symlink_metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::NoSession { pid, path });
            }
            _ => {}
        }
        Self::open_path(pid, &path)
    }

    /// The session file's inode, to find it among the target's mappings and descriptors.
    pub fn inode(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        self.file.metadata().map_or(0, |m| m.ino())
    }

    fn open_path(pid: i32, path: &str) -> Result<SessionFile> {
        let serr = |source: io::Error| Error::Session {
            path: path.to_string(),
            source,
        };
        let file = File::options()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(serr)?;
        let meta = file.metadata().map_err(serr)?;
        let len = meta.len();
        let bad = |reason: &str| Error::BadSession {
            path: path.to_string(),
            reason: reason.to_string(),
        };
        // Trust only a regular file of ours that nobody else may write: another user could
        // otherwise plant or edit a "session" whose addresses xcover would act on.
        {
            use std::os::unix::fs::MetadataExt;
            // SAFETY: geteuid has no preconditions.
            let euid = unsafe { libc::geteuid() };
            if !meta.file_type().is_file() {
                return Err(bad("not a regular file"));
            }
            if meta.uid() != euid && euid != 0 {
                return Err(bad(&format!(
                    "owned by uid {}, not by this user (uid {euid}): refused",
                    meta.uid()
                )));
            }
            if meta.mode() & 0o022 != 0 {
                return Err(bad(&format!(
                    "writable by other users (mode {:o}): refused",
                    meta.mode() & 0o7777
                )));
            }
        }
        if len < std::mem::size_of::<SessionHeader>() as u64 {
            return Err(bad("too small for a session header"));
        }
        let map = MmapRaw::map_raw(&file).map_err(serr)?;
        let s = SessionFile {
            path: path.to_string(),
            file,
            map,
        };
        let h = s.header();
        if h.magic != SESSION_MAGIC {
            return Err(bad("not an xcover session (bad magic)"));
        }
        if h.version != SESSION_VERSION {
            return Err(bad(&format!(
                "layout version {} (this xcover reads {SESSION_VERSION})",
                h.version
            )));
        }
        if h.target_pid != pid as u32 {
            return Err(bad("names another pid"));
        }
        if h.header_size as usize != std::mem::size_of::<SessionHeader>() {
            return Err(bad(&format!(
                "header size {} is not this layout's",
                h.header_size
            )));
        }
        if h.total_size != len {
            return Err(bad(&format!(
                "the header says {} bytes, the file has {len}",
                h.total_size
            )));
        }
        Ok(s)
    }

    /// The header, shared with the agent in the target.
    pub fn header(&self) -> &SessionHeader {
        // SAFETY: the mapping is page-aligned, at least size_of::<SessionHeader>() bytes long
        // (checked when created or opened) and lives as long as `self`; every field is valid
        // for any bit pattern, and the fields others change concurrently are atomics.
        unsafe { &*(self.map.as_ptr() as *const SessionHeader) }
    }

    /// The file's path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Removes the file (the mapping stays valid until `self` is dropped).
    pub fn remove(&self) -> Result<()> {
        std::fs::remove_file(&self.path).map_err(|source| Error::Session {
            path: self.path.clone(),
            source,
        })
    }

    /// Keeps the file for its counts once the target holds nothing of the session any more
    /// (its agent unloaded, or the target gone) but a report could not be written: marks it
    /// Detached, held ([`FLAG_HELD`]) and without owner. It is never removed as stale; a later
    /// `xcover detach` writes the reports from it and removes it.
    pub fn hold(&self) -> Result<()> {
        let h = self.header();
        let flags = h.flags | FLAG_HELD;
        self.write_at(
            std::mem::offset_of!(SessionHeader, flags) as u64,
            &flags.to_le_bytes(),
        )?;
        h.state
            .store(SessionState::Detached as u32, Ordering::Release);
        h.owner_pid.store(0, Ordering::Release);
        Ok(())
    }

    /// Whether the file is only kept for its counts ([`SessionFile::hold`]).
    pub fn is_held(&self) -> bool {
        self.header().flags & FLAG_HELD != 0
    }

    /// The xcover process that owns the session, as far as can be told.
    ///
    /// An owner keeps the session file open for as long as it owns it, so a recorded owner
    /// that has exited, or whose pid now names a process without the file open (a reused
    /// pid), is [`Owner::Gone`]: its session is for the taking.
    pub fn owner(&self) -> Owner {
        use std::os::unix::fs::MetadataExt;
        let pid = self.header().owner_pid.load(Ordering::Acquire);
        if pid == 0 {
            return Owner::None;
        }
        if pid == std::process::id() {
            return Owner::Alive(pid);
        }
        let Ok(me) = self.file.metadata() else {
            return Owner::Alive(pid);
        };
        let alive = procfs::stat(pid as i32).is_ok_and(|st| !matches!(st.state, 'Z' | 'X'));
        if !alive {
            return Owner::Gone(pid);
        }
        match std::fs::read_dir(format!("/proc/{pid}/fd")) {
            Ok(rd) => {
                let holds = rd.flatten().any(|e| {
                    // Follows the link to the open file itself.
                    std::fs::metadata(e.path())
                        .is_ok_and(|m| m.ino() == me.ino() && m.dev() == me.dev())
                });
                if holds {
                    Owner::Alive(pid)
                } else {
                    Owner::Gone(pid)
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Owner::Gone(pid),
            // Not ours to look at (another user's process): assume it is the owner.
            Err(_) => Owner::Alive(pid),
        }
    }
}

/// Who owns a session ([`SessionFile::owner`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// Nobody: a kept session, or one whose owner gave it up.
    None,
    /// This xcover process watches it.
    Alive(u32),
    /// The recorded owner exited (or its pid was reused): the session can be recovered
    /// with `xcover detach` or `xcover attach`.
    Gone(u32),
}

/// Removes the private files of sessions for `pid` that an xcover killed before it published
/// them left behind (their creator is gone).
fn remove_unpublished(pid: i32) {
    let prefix = format!(".{}tmp-{pid}-", SESSION_PREFIX);
    let Ok(rd) = std::fs::read_dir("/dev/shm") else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(creator) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|c| c.parse::<i32>().ok())
        else {
            continue;
        };
        if crate::procfs::stat(creator).is_err() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The sessions that exist now: (pid, path).
pub fn list_sessions() -> Vec<(i32, String)> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/dev/shm") {
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(pid) = name
                .strip_prefix(xcover_session::SESSION_PREFIX)
                .and_then(|p| p.parse::<i32>().ok())
            {
                v.push((pid, format!("/dev/shm/{name}")));
            }
        }
    }
    v.sort();
    v
}
