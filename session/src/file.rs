//! The session file `/dev/shm/xcover-<pid>` on xcover's side (feature `std`): created,
//! opened, listed, held and removed here, mapped here and (by the agent) in the target.
//!
//! It is created with `O_CREAT | O_EXCL | O_NOFOLLOW` and mode 0600 (and given to the
//! target's effective uid and gid when xcover runs as root for a process that opens files
//! as another user: another user's process, or a setuid program), so no other user
//! can read it, replace it or plant one in its place: `/dev/shm` is sticky, and an existing
//! file is never reused, only refused ("already attached") or, when it names a process that
//! no longer exists, removed as stale.
//!
//! The file is shared with the agent inside the target, which writes counters, statuses and
//! events while xcover reads. Bytes are therefore copied with volatile reads and writes,
//! never borrowed as Rust references to shared memory (except the header, whose changing
//! fields are atomics, and the map arena, read through `xcover-bpf`'s atomic protocols).

use std::fs::File;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::Ordering;

use memmap2::MmapRaw;

use crate::arena::Arena;
use crate::layout::{
    FLAG_HELD, FLAG_KEEP, FuncEntry, SESSION_MAGIC, SESSION_PREFIX, SESSION_VERSION, SessionHeader,
    SessionState,
};

/// What can go wrong with a session file. The injector turns each into its own error of the
/// same name and text.
#[derive(Debug)]
pub enum FileError {
    /// Creating, reading or removing the session file failed.
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: io::Error,
    },
    /// The session file is not one this xcover understands (or trusts).
    Bad {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A session already exists for this pid.
    AlreadyAttached {
        /// The pid.
        pid: i32,
        /// Who owns the session and what to do.
        detail: String,
    },
    /// There is no session for this pid.
    NoSession {
        /// The pid.
        pid: i32,
        /// The session file looked for.
        path: String,
    },
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io { path, source } => write!(f, "session file {path}: {source}"),
            Self::Bad { path, reason } => write!(f, "session file {path}: {reason}"),
            Self::AlreadyAttached { pid, detail } => {
                write!(f, "pid {pid}: already attached ({detail})")
            }
            Self::NoSession { pid, path } => {
                write!(f, "pid {pid}: no xcover session ({path} does not exist)")
            }
        }
    }
}

impl std::error::Error for FileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The result of session file operations.
pub type Result<T, E = FileError> = std::result::Result<T, E>;

/// The target a new session is for: what [`SessionFile::create`] records in the header and
/// whom it gives the file to.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    /// The pid (thread group id).
    pub pid: i32,
    /// Start time (clock ticks after boot, field 22 of `/proc/<pid>/stat`).
    pub start_time: u64,
    /// Filesystem uid of the target: the uid its own `open` of the file is checked against.
    pub fsuid: u32,
    /// Filesystem gid of the target.
    pub fsgid: u32,
    /// GNU build-id of the main executable (empty when none).
    pub build_id: &'a [u8],
    /// Path of the main executable.
    pub exe_path: &'a str,
}

/// Size of a session file made by this version: the header, page-rounded. (Later layouts
/// grow it with the function table, the map arena and the log ring.)
pub const DEFAULT_SESSION_SIZE: u64 = 4096;

/// Where session files are: a tmpfs every process of the machine can map.
pub const SESSION_DIR: &str = "/dev/shm";

/// The path of the session file of `pid`: `/dev/shm/xcover-<pid>`.
pub fn session_path(pid: i32) -> String {
    format!("{SESSION_DIR}/{SESSION_PREFIX}{}", pid as u32)
}

/// A session file, mapped in xcover's process.
pub struct SessionFile {
    path: String,
    file: File,
    map: MmapRaw,
}

const _: () = assert!(std::mem::size_of::<SessionHeader>() as u64 <= DEFAULT_SESSION_SIZE);

impl SessionFile {
    /// Creates the session file for `target` and writes its header (state Attaching).
    pub fn create<'a>(target: impl Into<Target<'a>>, size: u64, keep: bool) -> Result<SessionFile> {
        let target: Target<'a> = target.into();
        let pid = target.pid;
        let path = session_path(pid);
        let serr = |source: io::Error| FileError::Io {
            path: path.clone(),
            source,
        };
        // Written under a private name and published whole with link(2), so that an xcover
        // killed half-way never leaves a session file without its header. A private file
        // left by an xcover killed before publishing is removed here.
        remove_unpublished(pid);
        let tmp = format!(
            "{SESSION_DIR}/.{SESSION_PREFIX}tmp-{pid}-{}",
            std::process::id()
        );
        let _ = std::fs::remove_file(&tmp);
        let file = Self::create_excl(&tmp).map_err(serr)?;
        let fail = |e: FileError| {
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
            return Err(fail(FileError::Bad {
                path: path.clone(),
                reason: "too small".into(),
            }));
        }
        // SAFETY: the mapping is at least size_of::<SessionHeader>() bytes (checked above),
        // page-aligned, and nobody else maps the file yet.
        unsafe { std::ptr::write(map.as_mut_ptr() as *mut SessionHeader, h) };
        let published = match std::fs::hard_link(&tmp, &path) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Self::check_existing(&target, &path).map_err(fail)?;
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
    fn check_existing(target: &Target<'_>, path: &str) -> Result<()> {
        let pid = target.pid;
        let Ok(old) = Self::open_path(pid, path) else {
            // Unreadable or malformed: treat as stale.
            return Ok(());
        };
        let h = old.header();
        if old.is_held() {
            return Err(FileError::AlreadyAttached {
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
        Err(FileError::AlreadyAttached { pid, detail })
    }

    /// Opens the existing session of `pid`.
    pub fn open(pid: i32) -> Result<SessionFile> {
        let path = session_path(pid);
        match std::fs::symlink_metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(FileError::NoSession { pid, path });
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
        let serr = |source: io::Error| FileError::Io {
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
        let bad = |reason: &str| FileError::Bad {
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
        std::fs::remove_file(&self.path).map_err(|source| FileError::Io {
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
        let alive = proc_state(pid as i32).is_some_and(|st| !matches!(st, 'Z' | 'X'));
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

impl SessionFile {
    /// Size of the mapped file.
    pub fn len(&self) -> u64 {
        self.map.len() as u64
    }

    /// Whether the file is empty (never true for a valid session).
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    fn check(&self, off: u64, len: usize) -> Result<()> {
        match off.checked_add(len as u64) {
            Some(end) if end <= self.len() => Ok(()),
            _ => Err(FileError::Bad {
                path: self.path().to_string(),
                reason: format!(
                    "section {off:#x}+{len:#x} lies outside the {:#x}-byte file",
                    self.len()
                ),
            }),
        }
    }

    /// Copies `buf.len()` bytes from offset `off`.
    pub fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        self.check(off, buf.len())?;
        // SAFETY: off < len (checked above): the pointer is inside the live mapping.
        let src = unsafe { self.map.as_ptr().add(off as usize) };
        // Bytes up to the first 8-byte boundary, then whole words, then the tail: the
        // function table of 100 000 functions is 6.4 MB, read every time it changes.
        let head = src.align_offset(8).min(buf.len());
        let words = (buf.len() - head) / 8;
        for (i, b) in buf[..head].iter_mut().enumerate() {
            // SAFETY: i < head <= buf.len(): inside the checked range.
            *b = unsafe { src.add(i).read_volatile() };
        }
        for w in 0..words {
            let at = head + 8 * w;
            // SAFETY: at + 8 <= buf.len(), inside the checked range, and 8-byte aligned.
            let v = unsafe { (src.add(at) as *const u64).read_volatile() };
            buf[at..at + 8].copy_from_slice(&v.to_ne_bytes());
        }
        let tail = head + 8 * words;
        for (i, b) in buf.iter_mut().enumerate().skip(tail) {
            // SAFETY: i < buf.len(): inside the checked range.
            *b = unsafe { src.add(i).read_volatile() };
        }
        Ok(())
    }

    /// Writes `data` at offset `off`. Only for sections no other process writes yet (the
    /// layout, before the agent runs) or owns (see "Who writes what" in the crate doc).
    pub fn write_at(&self, off: u64, data: &[u8]) -> Result<()> {
        self.check(off, data.len())?;
        let base = self.map.as_mut_ptr();
        for (i, b) in data.iter().enumerate() {
            // SAFETY: off + i < len (checked above), inside the live read-write mapping.
            unsafe { base.add(off as usize + i).write_volatile(*b) };
        }
        Ok(())
    }

    /// Reads a little-endian `u64` at `off`.
    pub fn read_u64(&self, off: u64) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read_at(off, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// The function table, copied out (statuses change while the target runs).
    pub fn funcs(&self) -> Result<Vec<FuncEntry>> {
        let h = self.header();
        let n = usize::try_from(h.funcs_count).unwrap_or(usize::MAX);
        let bytes = n.saturating_mul(size_of::<FuncEntry>());
        self.check(h.funcs_off, bytes)?;
        let mut raw = vec![0u8; bytes];
        self.read_at(h.funcs_off, &mut raw)?;
        let out = raw
            .chunks_exact(size_of::<FuncEntry>())
            .map(bytemuck::pod_read_unaligned::<FuncEntry>)
            .collect();
        Ok(out)
    }

    /// The arena offset of map `index`'s header (an index of the map table, such as
    /// `SessionHeader::hits_map`); `None` when the session has no such map (`u64::MAX`, or
    /// past the table).
    pub fn map_offset(&self, index: u64) -> Result<Option<u64>> {
        let h = self.header();
        if index >= h.maps_count {
            return Ok(None);
        }
        let at = index
            .checked_mul(8)
            .and_then(|o| h.maps_off.checked_add(o))
            .unwrap_or(u64::MAX);
        self.read_u64(at).map(Some)
    }

    /// Runs `f` with the session's eBPF map arena, if the session has one.
    pub fn with_arena<R>(&self, f: impl FnOnce(&Arena) -> R) -> Result<Option<R>> {
        let h: &SessionHeader = self.header();
        if h.arena_size == 0 {
            return Ok(None);
        }
        let len = usize::try_from(h.arena_size).unwrap_or(usize::MAX);
        self.check(h.arena_off, len)?;
        // SAFETY: the arena lies inside this mapping (checked), which outlives the call of
        // `f`; the `Arena` is not given out beyond it.
        let arena = unsafe {
            Arena::from_raw(
                self.map.as_mut_ptr().add(h.arena_off as usize),
                h.arena_size,
            )
        };
        Ok(Some(f(&arena)))
    }

    /// The state word, for readers that poll it.
    pub fn state(&self) -> u32 {
        self.header().state.load(Ordering::Acquire)
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
    let Ok(rd) = std::fs::read_dir(SESSION_DIR) else {
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
        if proc_state(creator).is_none() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The sessions that exist now: (pid, path).
pub fn list_sessions() -> Vec<(i32, String)> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir(SESSION_DIR) {
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(pid) = name
                .strip_prefix(SESSION_PREFIX)
                .and_then(|p| p.parse::<i32>().ok())
            {
                v.push((pid, format!("{SESSION_DIR}/{name}")));
            }
        }
    }
    v.sort();
    v
}

/// State letter of `/proc/<pid>/stat` (`R`, `S`, `Z`, ...), `None` when there is no such
/// process (or its stat cannot be read).
fn proc_state(pid: i32) -> Option<char> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The comm field may hold spaces and parentheses: the state follows the last ')'.
    text[text.rfind(')')? + 1..]
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_paths() {
        assert_eq!(session_path(4242), "/dev/shm/xcover-4242");
        assert_eq!(session_path(0), "/dev/shm/xcover-0");
        assert_eq!(session_path(-1), "/dev/shm/xcover-4294967295");
    }

    #[test]
    fn proc_state_reads_the_letter_after_the_comm() {
        assert!(matches!(
            proc_state(std::process::id() as i32),
            Some('R' | 'S')
        ));
        assert_eq!(proc_state(-1), None);
    }
}
