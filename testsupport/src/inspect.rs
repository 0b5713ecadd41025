//! A process seen from outside, to check that xcover left it as it was: its mappings line
//! for line, its code bytes, its tracers; and where its functions are.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::tools;

/// `/proc/<pid>/maps`, one line per mapping.
pub fn maps(pid: i32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/maps: {e}"))
        .lines()
        .map(str::to_string)
        .collect()
}

/// The executable mappings of `pid` (what hooking could change), line for line.
pub fn exec_maps(pid: i32) -> Vec<String> {
    maps(pid)
        .into_iter()
        .filter(|l| l.split_whitespace().nth(1).is_some_and(|p| p.contains('x')))
        .collect()
}

/// Whether any mapping of `pid` contains `addr`.
pub fn mapped(pid: i32, addr: u64) -> bool {
    maps(pid).iter().any(|l| {
        let r = l.split_whitespace().next().unwrap();
        let (a, b) = r.split_once('-').unwrap();
        let (a, b) = (
            u64::from_str_radix(a, 16).unwrap(),
            u64::from_str_radix(b, 16).unwrap(),
        );
        (a..b).contains(&addr)
    })
}

/// The TracerPid of every thread of `pid`.
pub fn tracer_pids(pid: i32) -> Vec<i32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/task: {e}"))
        .flatten()
    {
        let s = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
        if let Some(l) = s.lines().find(|l| l.starts_with("TracerPid:")) {
            v.push(l[10..].trim().parse().unwrap());
        }
    }
    v
}

/// The session file xcover keeps for `pid`.
pub fn session_path(pid: i32) -> PathBuf {
    PathBuf::from(format!("/dev/shm/xcover-{pid}"))
}

/// Asserts that no xcover session is left for `pid`: no session file, no thread traced,
/// no mapping of a session file.
pub fn assert_no_session(pid: i32) {
    assert!(!session_path(pid).exists(), "session file left for {pid}");
    assert!(
        tracer_pids(pid).iter().all(|&t| t == 0),
        "pid {pid} still traced: {:?}",
        tracer_pids(pid)
    );
    assert!(
        !maps(pid).iter().any(|l| l.contains("/dev/shm/xcover-")),
        "session still mapped in {pid}"
    );
}

/// The first 16 bytes at each of `addrs` in `pid`'s memory.
pub fn code_bytes(pid: i32, addrs: &[u64]) -> Vec<Vec<u8>> {
    let f = std::fs::File::open(format!("/proc/{pid}/mem"))
        .unwrap_or_else(|e| panic!("open /proc/{pid}/mem: {e}"));
    addrs
        .iter()
        .map(|&a| {
            let mut b = vec![0u8; 16];
            f.read_exact_at(&mut b, a)
                .unwrap_or_else(|e| panic!("read {a:#x} of {pid}: {e}"));
            b
        })
        .collect()
}

/// The `nm` values of the named symbols defined in `exe` (file addresses: runtime ones for
/// a non-PIE executable).
pub fn nm_addrs(exe: &Path, names: &[&str]) -> Vec<u64> {
    let nm = Command::new(tools::require("nm", "binutils"))
        .arg("--defined-only")
        .arg(exe)
        .output()
        .expect("run nm");
    let nm = String::from_utf8_lossy(&nm.stdout);
    names
        .iter()
        .map(|n| {
            let line = nm
                .lines()
                .find(|l| l.split_whitespace().nth(2) == Some(*n))
                .unwrap_or_else(|| panic!("{n} not in nm output"));
            u64::from_str_radix(line.split_whitespace().next().unwrap(), 16).unwrap()
        })
        .collect()
}

/// Runtime addresses of the named functions of `exe` running as `pid`: `nm` values plus the
/// load bias of the executable (its mapping at file offset 0).
pub fn func_addrs(pid: i32, exe: &Path, names: &[&str]) -> Vec<u64> {
    let exe_name = exe.to_str().unwrap();
    let base = maps(pid)
        .iter()
        .find(|l| l.ends_with(exe_name) && l.split_whitespace().nth(2) == Some("00000000"))
        .map(|l| u64::from_str_radix(l.split('-').next().unwrap(), 16).unwrap())
        .expect("base mapping of the executable");
    nm_addrs(exe, names).into_iter().map(|a| base + a).collect()
}
