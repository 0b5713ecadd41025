//! What `/proc` says about a target: its threads, its state, its tracer, its executable, its
//! mappings.
//!
//! This is the one place host code reads `/proc/<pid>/{stat,status,task,maps,fd}`: every
//! file is parsed by the `procfs` crate, and this module turns its answers into the few
//! fields xcover uses and its errors into `io::Error`s (`NotFound` for a process or thread
//! that is gone, `PermissionDenied`, else the OS error). Everything here only reads files,
//! so it is how the injector checks a pid *before* touching it: a bad pid is refused with
//! the target untouched.
//!
//! The agent reads `/proc/self/maps` inside the target too, with raw system calls (it has
//! no `std`): that parser, in `agent/src/memory.rs`, is the only other one.

use std::io;

use ::procfs::ProcError;
use ::procfs::process::{MMPermissions, MMapPath, Process};

use crate::{Error, Result};

/// The fields of `/proc/<pid>/stat` the injector uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    /// The state letter (`R`, `S`, `Z`, ...).
    pub state: char,
    /// The kernel's `PF_*` flags.
    pub flags: u64,
    /// Start time in clock ticks after boot (field 22).
    pub start_time: u64,
    /// CPU time the process used so far, user and system, in clock ticks (fields 14 + 15).
    pub cpu_ticks: u64,
}

impl From<::procfs::process::Stat> for Stat {
    fn from(st: ::procfs::process::Stat) -> Stat {
        Stat {
            state: st.state,
            flags: u64::from(st.flags),
            start_time: st.starttime,
            cpu_ticks: st.utime + st.stime,
        }
    }
}

/// Clock ticks per second, the unit of [`Stat::cpu_ticks`].
pub fn clock_ticks() -> u64 {
    ::procfs::ticks_per_second().max(1)
}

/// `PF_KTHREAD`.
const PF_KTHREAD: u64 = 0x0020_0000;

/// `procfs`'s error as the `io::Error` it stands for.
fn io_error(e: ProcError) -> io::Error {
    match e {
        ProcError::NotFound(_) => io::ErrorKind::NotFound.into(),
        ProcError::PermissionDenied(_) => io::ErrorKind::PermissionDenied.into(),
        ProcError::Io(e, _) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
    }
}

fn process(pid: i32) -> io::Result<Process> {
    Process::new(pid).map_err(io_error)
}

/// Parses the text of a `/proc/<pid>/stat` file.
pub fn parse_stat(text: &str) -> Option<Stat> {
    use ::procfs::FromRead;
    ::procfs::process::Stat::from_read(text.as_bytes())
        .ok()
        .map(Stat::from)
}

/// Reads `/proc/<pid>/stat`.
pub fn stat(pid: i32) -> io::Result<Stat> {
    Ok(process(pid)?.stat().map_err(io_error)?.into())
}

/// The wait status of `pid` while it is a zombie its parent has not reaped yet (field 52 of
/// `/proc/<pid>/stat`, as `waitpid` would report it), if `pid` still names the process that
/// started at `start_time`. `None` for a process still running or already reaped.
pub fn zombie_status(pid: i32, start_time: u64) -> Option<i32> {
    let st = process(pid).ok()?.stat().ok()?;
    if st.starttime != start_time || st.state != 'Z' {
        return None;
    }
    st.exit_code
}

/// Reads `/proc/<pid>/task/<tid>/stat`.
pub fn task_stat(pid: i32, tid: i32) -> io::Result<Stat> {
    let task = process(pid)?.task_from_tid(tid).map_err(io_error)?;
    Ok(task.stat().map_err(io_error)?.into())
}

/// Whether thread `tid` of `pid` has exited or is exiting (a zombie, or gone from `/proc`).
pub fn thread_dead(pid: i32, tid: i32) -> bool {
    task_stat(pid, tid).map_or(true, |st| matches!(st.state, 'Z' | 'X'))
}

/// The thread ids of a process, from `/proc/<pid>/task`, sorted. A thread that exits while
/// they are listed may or may not be in the list.
pub fn tasks(pid: i32) -> io::Result<Vec<i32>> {
    let mut v = Vec::new();
    for t in process(pid)?.tasks().map_err(io_error)? {
        v.push(t.map_err(io_error)?.tid);
    }
    v.sort_unstable();
    Ok(v)
}

/// The pid tracing `pid` (0 when none).
pub fn tracer_pid(pid: i32) -> io::Result<i32> {
    Ok(process(pid)?.status().map_err(io_error)?.tracerpid)
}

/// The pid tracing thread `tid` of `pid` (0 when none).
pub fn task_tracer_pid(pid: i32, tid: i32) -> io::Result<i32> {
    let task = process(pid)?.task_from_tid(tid).map_err(io_error)?;
    Ok(task.status().map_err(io_error)?.tracerpid)
}

/// A thread's signal sets, from `/proc/<pid>/task/<tid>/status` (bit `n - 1` is signal `n`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskSignals {
    /// Pending for the thread (`SigPnd`).
    pub pending: u64,
    /// Pending for the whole process (`ShdPnd`).
    pub shared_pending: u64,
    /// Blocked by the thread (`SigBlk`).
    pub blocked: u64,
}

/// The signal sets of thread `tid` of `pid`.
pub fn task_signals(pid: i32, tid: i32) -> io::Result<TaskSignals> {
    let task = process(pid)?.task_from_tid(tid).map_err(io_error)?;
    let st = task.status().map_err(io_error)?;
    Ok(TaskSignals {
        pending: st.sigpnd,
        shared_pending: st.shdpnd,
        blocked: st.sigblk,
    })
}

/// Every pid in `/proc` now, ascending.
pub fn pids() -> Vec<i32> {
    let mut v: Vec<i32> = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

/// One line of `/proc/<pid>/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Offset in the mapped file.
    pub offset: u64,
    /// Mapped executable.
    pub exec: bool,
    /// Inode of the mapped file (0 for anonymous memory).
    pub inode: u64,
    /// Whether this maps a file (by path), rather than anonymous memory or a pseudo-name.
    pub file: bool,
    /// Path of the mapped file, or a pseudo-name like `[stack]` (may end in ` (deleted)`),
    /// as the file shows it; empty for anonymous memory.
    pub path: String,
}

impl From<::procfs::process::MemoryMap> for Mapping {
    fn from(m: ::procfs::process::MemoryMap) -> Mapping {
        let (file, path) = match m.pathname {
            MMapPath::Path(p) => (true, p.to_string_lossy().into_owned()),
            MMapPath::Heap => (false, "[heap]".into()),
            MMapPath::Stack => (false, "[stack]".into()),
            MMapPath::TStack(tid) => (false, format!("[stack:{tid}]")),
            MMapPath::Vdso => (false, "[vdso]".into()),
            MMapPath::Vvar => (false, "[vvar]".into()),
            MMapPath::Vsyscall => (false, "[vsyscall]".into()),
            MMapPath::Rollup => (false, "[rollup]".into()),
            MMapPath::Anonymous => (false, String::new()),
            MMapPath::Vsys(key) => (false, format!("/SYSV{:08x}", key as u32)),
            MMapPath::Other(name) => (false, format!("[{name}]")),
        };
        Mapping {
            start: m.address.0,
            end: m.address.1,
            offset: m.offset,
            exec: m.perms.contains(MMPermissions::EXECUTE),
            inode: m.inode,
            file,
            path,
        }
    }
}

/// The mappings of `pid`, from `/proc/<pid>/maps` (empty once the process has exited).
pub fn mappings(pid: i32) -> io::Result<Vec<Mapping>> {
    let maps = process(pid)?.maps().map_err(io_error)?;
    Ok(maps.into_iter().map(Mapping::from).collect())
}

/// The mappings of the calling process.
pub fn own_mappings() -> io::Result<Vec<Mapping>> {
    mappings(std::process::id() as i32)
}

/// Whether `addr` lies in a mapping of `pid`.
pub fn is_mapped(pid: i32, addr: u64) -> io::Result<bool> {
    Ok(mappings(pid)?
        .iter()
        .any(|m| (m.start..m.end).contains(&addr)))
}

/// The file descriptors of `pid` open on the file whose inode is `inode`.
pub fn fds_on_inode(pid: i32, inode: u64) -> io::Result<Vec<i32>> {
    use std::os::unix::fs::MetadataExt;
    let mut fds = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))?.flatten() {
        let Some(fd) = e.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        // Follows the link to the open file itself.
        if std::fs::metadata(e.path()).is_ok_and(|m| m.ino() == inode) {
            fds.push(fd);
        }
    }
    Ok(fds)
}

/// What the injector knows about a target it has accepted.
#[derive(Debug, Clone)]
pub struct TargetInfo {
    /// The pid (thread group id).
    pub pid: i32,
    /// Start time (clock ticks after boot), to detect pid reuse.
    pub start_time: u64,
    /// Path of the main executable.
    pub exe_path: String,
    /// GNU build-id of the main executable, when it has one.
    pub build_id: Vec<u8>,
    /// Real uid of the target.
    pub uid: u32,
    /// Real gid of the target.
    pub gid: u32,
    /// Filesystem uid of the target: the one the kernel checks the target's `open` against
    /// (its effective uid, unless it called `setfsuid`; uid 1000 for a program that is
    /// setuid to uid 1000, whoever runs it).
    pub fsuid: u32,
    /// Filesystem gid of the target (its effective gid, as [`TargetInfo::fsuid`]).
    pub fsgid: u32,
}

/// Checks an ELF header: only 64-bit little-endian x86-64 objects are accepted.
pub fn check_elf_header(head: &[u8]) -> std::result::Result<(), String> {
    if head.len() < 20 || &head[..4] != b"\x7fELF" {
        return Err("not an ELF executable".into());
    }
    let machine = u16::from_le_bytes([head[18], head[19]]);
    if head[4] != 2 || head[5] != 1 || machine != 62 {
        let what = match machine {
            3 => "i386",
            40 => "arm",
            183 => "aarch64",
            243 => "riscv",
            62 => "x86-64 but not 64-bit little-endian",
            _ => "another architecture",
        };
        return Err(format!(
            "not an x86-64 executable (ELF machine {machine}: {what})"
        ));
    }
    Ok(())
}

fn io_to_pid_error(pid: i32, what: &'static str, e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::NotFound => Error::NoSuchProcess { pid },
        io::ErrorKind::PermissionDenied => Error::PermissionDenied { pid, call: what },
        _ => Error::Sys {
            pid,
            tid: pid,
            call: what,
            source: e,
        },
    }
}

/// Checks that `pid` is a process xcover may instrument, without touching it.
pub fn check_target(pid: i32) -> Result<TargetInfo> {
    if pid <= 0 {
        return Err(Error::NoSuchProcess { pid });
    }
    if pid as u32 == std::process::id() {
        return Err(Error::Unsupported {
            pid,
            reason: "that is xcover itself".into(),
        });
    }
    let st = stat(pid).map_err(|e| io_to_pid_error(pid, "read /proc/<pid>/stat", e))?;
    let status = process(pid)
        .and_then(|p| p.status().map_err(io_error))
        .map_err(|e| io_to_pid_error(pid, "read /proc/<pid>/status", e))?;
    // A thread id that is not a thread group leader is listed in /proc too.
    if status.tgid != pid {
        let tgid = status.tgid;
        return Err(Error::Unsupported {
            pid,
            reason: format!("is a thread of process {tgid}, not a process"),
        });
    }
    if st.flags & PF_KTHREAD != 0 {
        return Err(Error::Unsupported {
            pid,
            reason: "is a kernel thread".into(),
        });
    }
    if st.state == 'Z' || st.state == 'X' {
        return Err(Error::Unsupported {
            pid,
            reason: "is a zombie (it has exited)".into(),
        });
    }
    let tracer = status.tracerpid;
    if tracer != 0 {
        let comm = std::fs::read_to_string(format!("/proc/{tracer}/comm")).unwrap_or_default();
        return Err(Error::Unsupported {
            pid,
            reason: format!(
                "is already traced by pid {tracer} ({}); a process can have only one tracer",
                comm.trim()
            ),
        });
    }
    let exe_link = format!("/proc/{pid}/exe");
    let exe_path = std::fs::read_link(&exe_link)
        .map_err(|e| io_to_pid_error(pid, "readlink /proc/<pid>/exe", e))?
        .to_string_lossy()
        .into_owned();
    let bytes =
        std::fs::read(&exe_link).map_err(|e| io_to_pid_error(pid, "read /proc/<pid>/exe", e))?;
    check_elf_header(&bytes).map_err(|reason| Error::Unsupported { pid, reason })?;
    let build_id = build_id(&bytes).unwrap_or_default();
    Ok(TargetInfo {
        pid,
        start_time: st.start_time,
        exe_path,
        build_id,
        uid: status.ruid,
        gid: status.rgid,
        fsuid: status.fuid,
        fsgid: status.fgid,
    })
}

/// The GNU build-id note of an ELF file.
pub fn build_id(bytes: &[u8]) -> Option<Vec<u8>> {
    let elf = goblin::elf::Elf::parse(bytes).ok()?;
    let notes = elf.iter_note_headers(bytes)?;
    for note in notes.flatten() {
        if note.n_type == goblin::elf::note::NT_GNU_BUILD_ID && note.name == "GNU" {
            return Some(note.desc.to_vec());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_maps_and_fds_are_read() {
        let me = std::process::id() as i32;
        let maps = mappings(me).unwrap();
        assert!(maps.iter().any(|m| m.path == "[stack]" && m.inode == 0));
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        assert!(
            maps.iter()
                .any(|m| m.inode != 0 && m.path == exe.to_str().unwrap())
        );
        let f = std::fs::File::open(&exe).unwrap();
        use std::os::unix::fs::MetadataExt;
        use std::os::unix::io::AsRawFd;
        let fds = fds_on_inode(me, f.metadata().unwrap().ino()).unwrap();
        assert!(fds.contains(&f.as_raw_fd()), "{fds:?}");
        assert!(is_mapped(me, maps[0].start).unwrap());
        assert!(!is_mapped(me, 0).unwrap());
    }

    #[test]
    fn stat_with_odd_comm() {
        // A whole line as a 6.x kernel writes it (52 fields).
        let s = "42 (a) b (c)) S 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 12345 0 0 \
                 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 0 0 0 0 0 0 0 9";
        let st = parse_stat(s).unwrap();
        assert_eq!(st.state, 'S');
        assert_eq!(st.flags, 4194560);
        assert_eq!(st.start_time, 12345);
        assert_eq!(parse_stat("42 (a) S 1"), None);
    }

    /// A real zombie, not yet reaped, shows its wait status; a reaped one shows nothing.
    #[test]
    fn zombie_status_of_a_real_process() {
        let mut c = std::process::Command::new("sh")
            .args(["-c", "kill -ILL $$"])
            .spawn()
            .unwrap();
        let pid = c.id() as i32;
        let start = stat(pid).map(|s| s.start_time);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut seen = None;
        while seen.is_none() && std::time::Instant::now() < deadline {
            seen = start.as_ref().ok().and_then(|&s| zombie_status(pid, s));
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(seen.map(|s| s & 0x7f), Some(libc::SIGILL));
        c.wait().unwrap();
        assert_eq!(zombie_status(pid, *start.as_ref().unwrap()), None);
    }

    #[test]
    fn elf_header_checks() {
        let mut h = [0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2;
        h[5] = 1;
        h[18] = 62;
        assert!(check_elf_header(&h).is_ok());
        h[18] = 183;
        assert!(check_elf_header(&h).unwrap_err().contains("aarch64"));
        assert!(
            check_elf_header(b"#!/bin/sh\n")
                .unwrap_err()
                .contains("not an ELF")
        );
    }

    #[test]
    fn self_is_refused_and_kthread_detected() {
        let me = std::process::id() as i32;
        assert!(matches!(check_target(me), Err(Error::Unsupported { .. })));
        assert!(matches!(check_target(-5), Err(Error::NoSuchProcess { .. })));
    }
}
