//! Security (issue 8): session files are 0600 and the caller's; xcover refuses session
//! files it does not own, that others may write, or that are symlinks; the agent is never
//! loaded from a file; another user can neither detach nor read a session.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::time::Duration;

use crate::faults::{Chaos, xcover_run};
use crate::support::{self, session_path};

const LIMIT: Duration = Duration::from_secs(30);

fn keep(t: &Chaos) {
    let (code, err) = xcover_run(
        &["attach", &t.pid().to_string(), "--no-tui", "--keep"],
        LIMIT,
    );
    assert_eq!(code, 0, "{err}");
}

fn detach_ok(t: &Chaos) {
    let (code, err) = xcover_run(&["detach", &t.pid().to_string()], LIMIT);
    assert_eq!(code, 0, "{err}");
    support::assert_clean(t.pid(), 0);
}

#[test]
fn session_file_is_0600_and_the_callers() {
    let t = Chaos::start(&["work"]);
    keep(&t);
    let m = std::fs::symlink_metadata(session_path(t.pid())).unwrap();
    assert!(m.file_type().is_file());
    assert_eq!(m.mode() & 0o7777, 0o600);
    // SAFETY: geteuid has no preconditions.
    assert_eq!(m.uid(), unsafe { libc::geteuid() });
    detach_ok(&t);
    assert_eq!(t.stop(), (0, "work ok\n".to_string()));
}

#[test]
fn writable_by_others_foreign_or_symlinked_sessions_are_refused() {
    let t = Chaos::start(&["work"]);
    let ps = t.pid().to_string();
    let path = session_path(t.pid());
    keep(&t);
    // Group- or world-writable: refused by detach and status.
    for mode in [0o620, 0o602, 0o666] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let (code, err) = xcover_run(&["detach", &ps], LIMIT);
        assert_ne!(code, 0, "mode {mode:o}: {err}");
        assert!(err.contains("writable by other users"), "{err}");
        let (_, out) = xcover_run(&["status", &ps], LIMIT);
        assert!(
            !out.contains("hooked"),
            "status trusted a writable session: {out}"
        );
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Owned by another user (needs root to give it away).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        // Root may act on any user's session (it attaches to their processes too); check
        // the refusal as that other user instead, below, in `other_users_cannot_...`.
    }
    // A symlink in place of the session: refused (O_NOFOLLOW), the real file untouched.
    let real = path.with_file_name(format!("xcover-moved-{}", t.pid()));
    std::fs::rename(&path, &real).unwrap();
    std::os::unix::fs::symlink(&real, &path).unwrap();
    let (code, err) = xcover_run(&["detach", &ps], LIMIT);
    assert_ne!(code, 0, "a symlinked session was followed: {err}");
    assert!(support::mapped(t.pid(), {
        let s = std::fs::read(&real).unwrap();
        let off = std::mem::offset_of!(xcover_session::SessionHeader, agent_base);
        u64::from_le_bytes(s[off..off + 8].try_into().unwrap())
    }));
    std::fs::remove_file(&path).unwrap();
    std::fs::rename(&real, &path).unwrap();
    detach_ok(&t);
    assert_eq!(t.stop(), (0, "work ok\n".to_string()));
}

/// The agent goes from xcover's memory into an anonymous mapping: no file is opened for it
/// (strace), and the target maps no file for it.
#[test]
fn agent_is_never_loaded_from_a_file() {
    let t = Chaos::start(&["work"]);
    let ps = t.pid().to_string();
    let strace = xcover_testsupport::tools::require("strace", "strace");
    let log = crate::faults::tmp_path("strace");
    let out = Command::new(strace)
        .args([
            "-f",
            "-qq",
            "-e",
            "trace=open,openat,openat2,memfd_create",
            "-o",
        ])
        .arg(&log)
        .arg(env!("CARGO_BIN_EXE_xcover"))
        .args(["attach", &ps, "--no-tui", "--keep"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let trace = std::fs::read_to_string(&log).unwrap();
    for l in trace.lines() {
        assert!(!l.contains("memfd_create"), "{l}");
        if l.contains("= -1") {
            continue;
        }
        // Successful opens: xcover's own libraries, /proc, the session, the target's
        // executable (for its symbols); never an agent file.
        assert!(!l.contains("agent"), "{l}");
        let so = (l.contains(".so\"") || l.contains(".so.")) && !l.contains("ld.so.cache");
        assert!(
            !so || l.contains("\"/lib") || l.contains("\"/usr/lib"),
            "opened a shared object: {l}"
        );
    }
    let s = xcover_injector::SessionFile::open(t.pid()).unwrap();
    let base = s
        .header()
        .agent_base
        .load(std::sync::atomic::Ordering::Acquire);
    drop(s);
    let start = format!("{base:08x}-");
    let line = support::maps(t.pid())
        .into_iter()
        .find(|l| l.starts_with(&start))
        .expect("agent mapping");
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert!(fields.len() == 5, "the agent is file-backed: {line}");
    detach_ok(&t);
    assert_eq!(t.stop(), (0, "work ok\n".to_string()));
}

/// Another user (nobody) can neither detach a session nor read it: not when it is 0600, and
/// not when it is readable by all (0644) either: xcover trusts only a session it can open
/// for writing, which for a file of another user's means one it should refuse anyway.
#[test]
fn other_users_cannot_detach_or_read_a_session() {
    let setpriv = xcover_testsupport::tools::require("setpriv", "util-linux");
    let t = Chaos::start(&["work"]);
    let ps = t.pid().to_string();
    let path = session_path(t.pid());
    keep(&t);
    let before = std::fs::read(&path).unwrap();
    for mode in [0o600, 0o644] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        for args in [
            vec!["detach", &ps],
            vec!["status", &ps],
            vec!["attach", &ps, "--no-tui"],
        ] {
            let out = Command::new(&setpriv)
                .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(env!("CARGO_BIN_EXE_xcover"))
                .args(&args)
                .output()
                .unwrap();
            let so = String::from_utf8_lossy(&out.stdout);
            let se = String::from_utf8_lossy(&out.stderr);
            assert!(
                !so.contains("hooked"),
                "mode {mode:o}: nobody read the session: {so}"
            );
            if args[0] != "status" {
                assert_ne!(
                    out.status.code(),
                    Some(0),
                    "mode {mode:o}: nobody could {args:?}: {se}"
                );
                assert!(
                    se.lines().count() == 1 && se.contains(&ps),
                    "mode {mode:o}: {args:?} should fail in one line naming the pid: {se}"
                );
            }
            assert!(path.exists());
        }
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let after = std::fs::read(&path).unwrap();
    let off = std::mem::offset_of!(xcover_session::SessionHeader, state);
    assert_eq!(
        before[off..off + 4],
        after[off..off + 4],
        "nobody changed the state"
    );
    detach_ok(&t);
    assert_eq!(t.stop(), (0, "work ok\n".to_string()));
}

/// A directory for setuid test binaries: the per-run build directory unless its file system
/// ignores setuid bits (`nosuid`), then cargo's temporary directory for integration tests.
fn suid_dir() -> std::path::PathBuf {
    let ok = |d: &std::path::Path| {
        let c = std::ffi::CString::new(d.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: statvfs writes into the zeroed struct we pass; c is NUL-terminated.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let r = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
        r == 0 && st.f_flag & libc::ST_NOSUID == 0
    };
    let candidates = [
        support::build_dir(),
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
    ];
    let d = candidates
        .iter()
        .find(|d| ok(d))
        .unwrap_or_else(|| panic!("no directory without nosuid among {candidates:?}"));
    let d = d.join(format!("xcover-suid-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    // nobody must reach the binaries.
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// (real, effective, saved, filesystem) uids of `pid`.
fn uids(pid: i32) -> Vec<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let l = s.lines().find(|l| l.starts_with("Uid:")).unwrap();
    l[4..]
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect()
}

/// A setuid program run by nobody (uid 65534), attached by root: setuid root, and setuid to
/// uid 1000 (not root, not the runner). The target opens the session file with its effective
/// uid, so the file is that uid's (0600); before, it was given to the real uid (nobody) and
/// the setuid-to-1000 target's open failed with "Permission denied". Counts arrive, detach
/// leaves nothing.
#[test]
fn setuid_targets_run_by_nobody_are_attached_and_counted() {
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "this test runs as root (scripts/test.sh)");
    let dir = suid_dir();
    for owner in [0u32, 1000] {
        let exe = dir.join(format!("counts-setuid-{owner}"));
        std::fs::copy(crate::e2e::counts_exe(), &exe).unwrap();
        // chown clears the setuid bit: set it afterwards.
        std::os::unix::fs::chown(&exe, Some(owner), Some(owner)).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o4755)).unwrap();
        let mut cmd = Command::new(&exe);
        cmd.uid(65534).gid(65534);
        let mut t = crate::e2e::Counts::spawn(cmd);
        let pid = t.pid();
        let ps = pid.to_string();
        assert_eq!(
            uids(pid),
            vec![65534, owner, owner, owner],
            "setuid-{owner}: the target does not run as nobody with euid {owner}"
        );
        let (code, err) = xcover_run(
            &["attach", &ps, "--no-tui", "--keep", "--include", "^f[0-9]$"],
            LIMIT,
        );
        assert_eq!(code, 0, "setuid-{owner}: {err}");
        let m = std::fs::symlink_metadata(session_path(pid)).unwrap();
        assert_eq!(
            (m.uid(), m.mode() & 0o7777),
            (owner, 0o600),
            "setuid-{owner}: session file owner and mode"
        );
        t.round();
        let report = crate::e2e::tmp(&format!("setuid-{owner}.json"));
        crate::support::xcover_ok(&["detach", &ps, "--report", report.to_str().unwrap()]);
        let r = xcover_testsupport::report::read_report(&report);
        assert_eq!(
            xcover_testsupport::report::hits(&r, "f1"),
            (1000, true),
            "setuid-{owner}"
        );
        assert_eq!(
            xcover_testsupport::report::hits(&r, "f3"),
            (7, true),
            "setuid-{owner}"
        );
        assert_eq!(
            xcover_testsupport::report::hits(&r, "f2"),
            (0, false),
            "setuid-{owner}"
        );
        support::assert_clean(pid, 0);
        let (lines, code) = t.finish();
        assert_eq!(code, 0, "setuid-{owner}: {lines:?}");
        assert_eq!(lines.last().map(String::as_str), Some("bye\n"));
    }
}

/// SECURITY.md's table of the helpers a probe is granted is the verifier's table: the same
/// ids, no more, no fewer. (It used to say that no `probe_read` helper was granted while
/// four were.)
#[test]
fn security_md_lists_the_granted_helpers() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/SECURITY.md")).unwrap();
    let mut listed: Vec<u32> = doc
        .lines()
        .filter(|l| l.starts_with("| `bpf_"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            cells[2]
                .parse()
                .unwrap_or_else(|_| panic!("no helper id in {l:?}"))
        })
        .collect();
    listed.sort_unstable();
    let mut granted: Vec<u32> = xcover_bpf::helpers::standard_helpers()
        .iter()
        .map(|(id, _)| *id)
        .collect();
    granted.sort_unstable();
    assert_eq!(listed, granted, "SECURITY.md's helper table");
    for id in [
        xcover_bpf::helpers::PROBE_READ,
        xcover_bpf::helpers::PROBE_READ_USER,
    ] {
        assert!(granted.contains(&id));
    }
    assert!(
        !doc.contains("no `probe_read` helper is granted"),
        "SECURITY.md still denies the probe_read helpers"
    );
}

/// What SECURITY.md says of `bpf_probe_read_user`: a probe reads target memory with it (the
/// hooked function's first bytes, as patched, equal to what /proc/<pid>/mem shows), and a
/// bad address gives -EFAULT with the destination zeroed while the target runs on unharmed.
#[test]
fn probe_read_user_reads_target_memory_and_survives_a_bad_address() {
    use std::os::unix::fs::FileExt;
    let probe = support::build_probe("read_user.bpf.c", "read_user.bpf.o", &[]);
    let mut t = crate::e2e::Counts::start();
    let pid = t.pid();
    let ps = pid.to_string();
    crate::support::xcover_ok(&[
        "attach",
        &ps,
        "--no-tui",
        "--keep",
        "--include",
        "^f1$",
        "--probe",
        probe.to_str().unwrap(),
    ]);
    t.round();
    let s = xcover_injector::SessionFile::open(pid).unwrap();
    assert_eq!(crate::e2e::cookie_names(&s), ["f1"]);
    let f1 = s.funcs().unwrap()[0].addr;
    let (_, out) = crate::e2e::array_map(&s, "out");
    drop(s);
    let mut code = [0u8; 8];
    std::fs::File::open(format!("/proc/{pid}/mem"))
        .unwrap()
        .read_exact_at(&mut code, f1)
        .unwrap();
    assert_eq!(
        out[0],
        u64::from_le_bytes(code),
        "the probe read f1's entry"
    );
    assert_eq!(out[1], 0, "bpf_probe_read_user of f1's entry failed");
    assert_eq!(out[2] as i64, -14, "reading address 8 did not give -EFAULT");
    assert_eq!(
        out[3], 0,
        "the destination of the failed read was not zeroed"
    );
    crate::support::xcover_ok(&["detach", &ps]);
    support::assert_clean(pid, 0);
    let (lines, code) = t.finish();
    assert_eq!(code, 0);
    assert_eq!(lines.last().map(String::as_str), Some("bye\n"));
}

/// What SECURITY.md says of a direct load: the verifier tracks pointer types, so a probe
/// that loads from address 8 (a number, not a pointer) is refused at attach — exit 2, a
/// message naming the instruction and the register — and the target runs on untouched.
#[test]
fn a_direct_load_from_a_bad_address_is_rejected_at_attach() {
    let probe = support::build_probe("bad_load.bpf.c", "bad_load.bpf.o", &[]);
    let mut t = crate::e2e::Counts::start();
    let pid = t.pid();
    let ps = pid.to_string();
    let (code, err) = xcover_run(
        &[
            "attach",
            &ps,
            "--no-tui",
            "--keep",
            "--include",
            "^f1$",
            "--probe",
            probe.to_str().unwrap(),
        ],
        LIMIT,
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("rejected by the verifier"), "{err}");
    // "insn N: rM is a scalar, not a pointer to memory: cannot load through it"
    let named = err.split("insn ").skip(1).any(|rest| {
        let Some((n, why)) = rest.split_once(": r") else {
            return false;
        };
        n.parse::<usize>().is_ok()
            && why.split_once(' ').is_some_and(|(r, tail)| {
                r.parse::<u8>().is_ok()
                    && tail.starts_with("is a scalar, not a pointer to memory: cannot load")
            })
    });
    assert!(
        named,
        "the rejection does not name the instruction and register: {err}"
    );
    assert!(!session_path(pid).exists(), "a session was left behind");
    t.round();
    let (lines, code) = t.finish();
    assert_eq!(code, 0, "{lines:?}");
    assert_eq!(lines.last().map(String::as_str), Some("bye\n"));
}
