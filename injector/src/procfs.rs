//! What `/proc` says about a target: its threads, its state, its tracer, its executable.
//!
//! Everything here only reads files, so it is how the injector checks a pid *before*
//! touching it: a bad pid is refused with the target untouched.

use std::io;

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
}

/// `PF_KTHREAD`.
const PF_KTHREAD: u64 = 0x0020_0000;

/// Parses the text of a `/proc/<pid>/stat` file.
pub fn parse_stat(text: &str) -> Option<Stat> {
    // The comm field may hold spaces and parentheses: everything after the last ')' is
    // space-separated, starting with field 3 (state).
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: f.first()?.chars().next()?,
        flags: f.get(6)?.parse().ok()?,
        start_time: f.get(19)?.parse().ok()?,
    })
}

/// Reads `/proc/<pid>/stat`.
pub fn stat(pid: i32) -> io::Result<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&text).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad stat"))
}

/// The wait status of `pid` while it is a zombie its parent has not reaped yet (field 52 of
/// `/proc/<pid>/stat`, as `waitpid` would report it), if `pid` still names the process that
/// started at `start_time`. `None` for a process still running or already reaped.
pub fn zombie_status(pid: i32, start_time: u64) -> Option<i32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let st = parse_stat(&text)?;
    if st.start_time != start_time || st.state != 'Z' {
        return None;
    }
    let rest = &text[text.rfind(')')? + 1..];
    // Field 3 (state) is the first after the comm: field 52 is the 50th.
    rest.split_whitespace().nth(49)?.parse().ok()
}

/// Reads `/proc/<pid>/task/<tid>/stat`.
pub fn task_stat(pid: i32, tid: i32) -> io::Result<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat"))?;
    parse_stat(&text).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad stat"))
}

/// The thread ids of a process, from `/proc/<pid>/task`.
pub fn tasks(pid: i32) -> io::Result<Vec<i32>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        if let Some(tid) = e?.file_name().to_str().and_then(|s| s.parse().ok()) {
            v.push(tid);
        }
    }
    v.sort_unstable();
    Ok(v)
}

/// A `Name:\tvalue` field of `/proc/<pid>/status` (or a task's status).
pub fn status_field(path: &str, name: &str) -> io::Result<Option<String>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|r| r.strip_prefix(':'))
            .map(|v| v.trim().to_string())
    }))
}

/// The pid tracing `pid` (0 when none).
pub fn tracer_pid(pid: i32) -> io::Result<i32> {
    Ok(status_field(&format!("/proc/{pid}/status"), "TracerPid")?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

/// The pid tracing thread `tid` of `pid` (0 when none).
pub fn task_tracer_pid(pid: i32, tid: i32) -> io::Result<i32> {
    Ok(
        status_field(&format!("/proc/{pid}/task/{tid}/status"), "TracerPid")?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    )
}

/// One line of `/proc/<pid>/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Inode of the mapped file (0 for anonymous memory).
    pub inode: u64,
    /// Path of the mapped file, or a pseudo-name like `[stack]` (may end in ` (deleted)`).
    pub path: String,
}

/// The mappings of `pid`, from `/proc/<pid>/maps`.
pub fn mappings(pid: i32) -> io::Result<Vec<Mapping>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(6, ' ');
            let (a, b) = f.next()?.split_once('-')?;
            let inode = f.nth(3)?.parse().ok()?;
            Some(Mapping {
                start: u64::from_str_radix(a, 16).ok()?,
                end: u64::from_str_radix(b, 16).ok()?,
                inode,
                path: f.next().unwrap_or("").trim_start().to_string(),
            })
        })
        .collect())
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
    // A thread id that is not a thread group leader is listed in /proc too.
    let tgid = status_field(&format!("/proc/{pid}/status"), "Tgid")
        .map_err(|e| io_to_pid_error(pid, "read /proc/<pid>/status", e))?
        .and_then(|v| v.parse::<i32>().ok());
    if let Some(tgid) = tgid
        && tgid != pid
    {
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
    let tracer = tracer_pid(pid).map_err(|e| io_to_pid_error(pid, "read /proc/<pid>/status", e))?;
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
    // "Uid:\treal\teffective\tsaved\tfilesystem" (and Gid: the same).
    let status = format!("/proc/{pid}/status");
    let ids = |name: &str| -> Result<[u32; 4]> {
        let line = status_field(&status, name)
            .map_err(|e| io_to_pid_error(pid, "read /proc/<pid>/status", e))?
            .unwrap_or_default();
        let v: Vec<u32> = line
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        <[u32; 4]>::try_from(v).map_err(|_| Error::Unsupported {
            pid,
            reason: format!("/proc/{pid}/status has no readable {name}: line"),
        })
    };
    let (uids, gids) = (ids("Uid")?, ids("Gid")?);
    Ok(TargetInfo {
        pid,
        start_time: st.start_time,
        exe_path,
        build_id,
        uid: uids[0],
        gid: gids[0],
        fsuid: uids[3],
        fsgid: gids[3],
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
        let s = "42 (a) b (c)) S 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 12345 0 0";
        let st = parse_stat(s).unwrap();
        assert_eq!(st.state, 'S');
        assert_eq!(st.flags, 4194560);
        assert_eq!(st.start_time, 12345);
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
