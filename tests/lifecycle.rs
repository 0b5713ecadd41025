//! The session's lifecycle tells the truth and never loses counts (issue 14): how a target
//! that died while watched ended (signal, fault address and function) with its reports
//! written from the session's counts; a report that cannot be written keeps the counts in a
//! held session; a re-watch of a kept session leaves it kept; `status` tells an exec'd
//! target and a gone owner from a live session.
//!
//! The target is `tests/targets/chaos.c` (modes `crash`, `exec`, `work`).

use std::sync::atomic::Ordering;
use std::time::Duration;

use xcover_injector::SessionFile;
use xcover_session::{FLAG_HELD, FLAG_KEEP, SessionState};

use crate::faults::{Chaos, Xcover, chaos_exe, tmp_path, wait_live, xcover_run};
use crate::support::{self, session_path, tracer_pids};
use xcover_testsupport::inspect::{code_bytes, func_addrs};
use xcover_testsupport::report::{hits, read_report};

const LIMIT: Duration = Duration::from_secs(30);

/// The functions of `chaos` whose code bytes are compared before and after.
const CHECKED: &[&str] = &["one_round", "g0", "g3", "g15", "crash_store", "child_only"];

/// Sum of every function's hits in a JSON report.
fn total_hits(r: &serde_json::Value) -> u64 {
    r["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["hits"].as_u64().unwrap())
        .sum()
}

/// `xcover status <pid>`'s line.
fn status(pid: i32) -> String {
    let o = support::run_xcover(&["status", &pid.to_string()]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(
        o.status.code(),
        Some(0),
        "status: {out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// Waits until `xcover status` counts at least one function of `pid` hit.
fn wait_some_hit(pid: i32) {
    let end = std::time::Instant::now() + LIMIT;
    loop {
        let line = status(pid);
        if !line.contains(" 0 hit (") {
            return;
        }
        assert!(
            std::time::Instant::now() < end,
            "no hit while attached: {line}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A file's line that matches, for the messages.
fn line_with<'a>(text: &'a str, what: &str) -> &'a str {
    text.lines()
        .find(|l| l.contains(what))
        .unwrap_or_else(|| panic!("no line with {what:?} in:\n{text}"))
}

/// The fault's place in xcover's message: the `ip` it gives, checked to be `func`'s address
/// (`addr`) plus the offset it gives; returns the offset.
fn fault_offset(said: &str, func: &str, addr: u64) -> u64 {
    let hex_after = |tag: &str| {
        said.split(tag)
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .unwrap_or_else(|| panic!("no {tag:?} in: {said}"))
    };
    let ip = hex_after(" at ip 0x");
    let off = hex_after(&format!(" in {func}+0x"));
    assert_eq!(ip, addr + off, "{func} is at {addr:#x}: {said}");
    off
}

/// A target that dies while xcover watches it: of SIGSEGV inside a hooked function, of
/// SIGILL inside another, of `kill -9`, or by `exit(3)`. xcover says how (the signal, and
/// for a fault the address and the function + offset it is in), writes the reports from
/// the session's counts, removes the session, and exits 1 for a signal, 0 for an exit.
#[test]
fn a_dead_target_is_told_and_its_reports_are_written() {
    let exe = chaos_exe();
    for case in ["segv", "ill", "kill9", "exit3"] {
        let mut t = Chaos::start(&["crash"]);
        let pid = t.pid();
        let ps = pid.to_string();
        let addrs = func_addrs(pid, &exe, &["crash_store", "crash_ill"]);
        let report = tmp_path(&format!("dead-{case}.json"));
        let lcov = tmp_path(&format!("dead-{case}.info"));
        let x = Xcover::spawn(&[
            "attach",
            &ps,
            "--no-tui",
            "--duration",
            "30",
            "--report",
            report.to_str().unwrap(),
            "--lcov",
            lcov.to_str().unwrap(),
        ]);
        assert!(wait_live(pid, LIMIT), "{case}: never live: {}", x.stderr());
        std::thread::sleep(Duration::from_millis(200));
        match case {
            "kill9" => t.signal(libc::SIGKILL),
            _ => t.send(case),
        }
        let (code, err) = x.wait(LIMIT);
        let (tcode, _) = t.wait();
        let said = line_with(&err, "session removed");
        match case {
            "segv" => {
                assert_eq!(tcode, 128 + libc::SIGSEGV, "the target's own end");
                assert!(said.contains("was killed by SIGSEGV"), "{said}");
                // The kernel's own record of the fault, placed in the function's bytes.
                let off = fault_offset(said, "crash_store", addrs[0]);
                assert!(
                    off > 4 && off < 64,
                    "the store is in crash_store's own bytes, past its first instruction: {said}"
                );
                assert!(said.contains(": segfault at ip 0x"), "{said}");
                assert!(
                    said.contains(&format!("crash_store+{off:#x} (hooked)")),
                    "{said}"
                );
                assert!(said.contains("accessing 0x0"), "{said}");
                assert_eq!(code, 1, "a signal killed the target: {err}");
            }
            "ill" => {
                assert_eq!(tcode, 128 + libc::SIGILL);
                assert!(said.contains("was killed by SIGILL"), "{said}");
                let off = fault_offset(said, "crash_ill", addrs[1]);
                assert!(said.contains(": trap invalid opcode at ip 0x"), "{said}");
                assert!(
                    said.contains(&format!("crash_ill+{off:#x} (hooked)")),
                    "{said}"
                );
                assert!(off > 4, "{said}");
                assert_eq!(code, 1, "{err}");
            }
            "kill9" => {
                assert_eq!(tcode, 128 + libc::SIGKILL);
                assert!(said.contains("was killed by SIGKILL"), "{said}");
                assert!(!said.contains(" ip "), "a kill is no fault: {said}");
                assert_eq!(code, 1, "{err}");
            }
            _ => {
                assert_eq!(tcode, 3);
                assert!(
                    said.contains(&format!("pid {pid} exited with status 3; session removed")),
                    "{said}"
                );
                assert_eq!(code, 0, "the target exited by itself: {err}");
            }
        }
        assert!(said.ends_with("session removed"), "{said}");
        assert!(!session_path(pid).exists(), "{case}: session left");
        let r = read_report(&report);
        assert!(hits(&r, "one_round").0 > 0, "{case}: counts in the report");
        assert!(hits(&r, "g3").0 > 0, "{case}");
        if case == "segv" {
            assert_eq!(hits(&r, "crash_store"), (1, true), "its one call counted");
        }
        let info = std::fs::read_to_string(&lcov).unwrap();
        assert!(
            info.lines()
                .any(|l| l.starts_with("FNDA:") && !l.starts_with("FNDA:0,")),
            "{case}: lcov with hits"
        );
    }
}

/// Without the kernel's process events (xcover without CAP_NET_ADMIN): a target its parent
/// has not reaped yet tells its end itself (the zombie's wait status, and the kernel log the
/// fault); one reaped at once leaves xcover saying it does not know, never claiming an end
/// it did not see. The reports are written either way.
#[test]
fn without_process_events_the_zombie_tells_or_xcover_says_it_does_not_know() {
    let no_net_admin = ["setpriv", "--bounding-set", "-net_admin", "--"];
    let exe = chaos_exe();

    let mut t = Chaos::start(&["crash"]);
    let pid = t.pid();
    let ps = pid.to_string();
    let at = func_addrs(pid, &exe, &["crash_store"])[0];
    let report = tmp_path("zombie.json");
    let x = Xcover::spawn_wrapped(
        &no_net_admin,
        &[
            "attach",
            &ps,
            "--no-tui",
            "--duration",
            "30",
            "--report",
            report.to_str().unwrap(),
        ],
    );
    assert!(wait_live(pid, LIMIT), "{}", x.stderr());
    // A few hooked rounds before the crash, however busy the machine is.
    wait_some_hit(pid);
    t.send("segv");
    let (code, err) = x.wait(LIMIT);
    let said = line_with(&err, "session removed");
    assert!(said.contains("was killed by SIGSEGV"), "{said}");
    assert!(fault_offset(said, "crash_store", at) > 4, "{said}");
    assert_eq!(code, 1, "{err}");
    assert!(hits(&read_report(&report), "one_round").0 > 0);
    assert_eq!(t.wait().0, 128 + libc::SIGSEGV);

    let t = Chaos::start(&["crash"]);
    let pid = t.pid();
    let ps = pid.to_string();
    let report = tmp_path("reaped.json");
    let x = Xcover::spawn_wrapped(
        &no_net_admin,
        &[
            "attach",
            &ps,
            "--no-tui",
            "--duration",
            "30",
            "--report",
            report.to_str().unwrap(),
        ],
    );
    assert!(wait_live(pid, LIMIT), "{}", x.stderr());
    // Its parent reaps it the moment it dies.
    let reaper = std::thread::spawn(move || {
        let mut t = t;
        t.child.wait().unwrap()
    });
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: kill has no memory-safety preconditions; the reaper has not reaped it yet.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    reaper.join().unwrap();
    let (code, err) = x.wait(LIMIT);
    let said = line_with(&err, "session removed");
    let unknown = format!(
        "pid {pid} exited; how is unknown (no process events: joining the kernel's process \
         events was refused"
    );
    match code {
        0 => assert!(said.contains(&unknown), "{said}"),
        // xcover looked before the parent reaped it.
        1 => assert!(said.contains("was killed by SIGKILL"), "{said}"),
        _ => panic!("{err}"),
    }
    eprintln!("a target reaped at once, without process events: {said}");
    assert!(hits(&read_report(&report), "one_round").0 > 0);
}

/// Where a report is refused before anything is done: a directory, a missing directory.
/// `detach` leaves the kept session live and instrumented, `attach` leaves the target alone.
#[test]
fn report_paths_are_checked_before_the_target_is_touched() {
    let t = Chaos::start(&["work"]);
    let pid = t.pid();
    let ps = pid.to_string();
    let dir = tmp_path("a-dir");
    std::fs::create_dir_all(&dir).unwrap();
    let before = support::maps(pid);
    let missing = dir.join("no/such/dir/r.json");
    for bad in [&dir, &missing] {
        let (code, err) = xcover_run(
            &[
                "attach",
                &ps,
                "--no-tui",
                "--duration",
                "5",
                "--report",
                bad.to_str().unwrap(),
            ],
            LIMIT,
        );
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(bad.to_str().unwrap()), "{err}");
        assert!(!session_path(pid).exists());
        assert_eq!(support::maps(pid), before, "the target was touched");
    }
    let (code, err) = xcover_run(&["attach", &ps, "--no-tui", "--keep"], LIMIT);
    assert_eq!(code, 0, "{err}");
    let base = SessionFile::open(pid)
        .unwrap()
        .header()
        .agent_base
        .load(Ordering::Acquire);
    for bad in [&dir, &missing] {
        let (code, err) = xcover_run(&["detach", &ps, "--lcov", bad.to_str().unwrap()], LIMIT);
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains("is a directory") || err.contains("does not exist"),
            "{err}"
        );
        let s = SessionFile::open(pid).expect("the session is still there");
        assert_eq!(
            s.header().state.load(Ordering::Acquire),
            SessionState::Live as u32
        );
        assert!(support::mapped(pid, base), "the agent is still in");
    }
    let (code, err) = xcover_run(&["detach", &ps], LIMIT);
    assert_eq!(code, 0, "{err}");
    support::assert_clean(pid, base);
    assert_eq!(t.stop(), (0, "work ok\n".to_string()));
}

/// Checks that a held session left `pid` clean (no session mapping, no agent, no tracer,
/// mappings and code as before the attach) and holds counts; then `status` shows it, and
/// `xcover detach --report` writes them and removes it.
fn held_then_recovered(pid: i32, before: &[String], code: &[Vec<u8>], addrs: &[u64], err: &str) {
    let path = session_path(pid);
    assert!(
        err.contains(&format!("the counts are kept in {}", path.display())),
        "where the counts are: {err}"
    );
    assert!(
        err.contains(&format!("xcover detach {pid} --report")),
        "{err}"
    );
    {
        let s = SessionFile::open(pid).expect("the session is held");
        let h = s.header();
        assert_ne!(h.flags & FLAG_HELD, 0);
        assert_eq!(
            h.state.load(Ordering::Acquire),
            SessionState::Detached as u32
        );
        assert_eq!(h.owner_pid.load(Ordering::Acquire), 0);
    }
    assert!(tracer_pids(pid).iter().all(|&p| p == 0));
    assert_eq!(support::maps(pid), before, "maps line for line");
    assert_eq!(code_bytes(pid, addrs), code, "code bytes restored");
    let st = status(pid);
    assert!(st.contains("counts held"), "{st}");
    // A new attach does not throw the counts away.
    let (c, e) = xcover_run(
        &["attach", &pid.to_string(), "--no-tui", "--duration", "0"],
        LIMIT,
    );
    assert_eq!(c, 2, "{e}");
    assert!(e.contains("holds the counts"), "{e}");
    let good = tmp_path("good.json");
    let (c, e) = xcover_run(
        &[
            "detach",
            &pid.to_string(),
            "--report",
            good.to_str().unwrap(),
        ],
        LIMIT,
    );
    assert_eq!(c, 0, "{e}");
    assert!(e.contains("session removed"), "{e}");
    let r = read_report(&good);
    assert!(hits(&r, "one_round").0 > 0, "the held counts: {e}");
    assert!(!path.exists());
    support::assert_clean(pid, 0);
}

/// A private `full` device (`/dev/full`: every write fails with ENOSPC) in the test's
/// directory, so that no mistake can replace the system's.
fn full_device() -> std::path::PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let p = tmp_path("full");
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: mknod reads a NUL-terminated path that lives across the call.
    let r = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 7)) };
    assert_eq!(
        r,
        0,
        "mknod {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
    p
}

fn is_char_device(p: &std::path::Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(p).is_ok_and(|m| m.file_type().is_char_device())
}

/// `xcover detach --report <a full device>` (ENOSPC at the end, after the hooks are out):
/// the session is held, not removed, and the error says where the counts are. The device
/// is written in place, never replaced by a file.
#[test]
fn detach_whose_report_fails_holds_the_counts() {
    let exe = chaos_exe();
    let t = Chaos::start(&["work"]);
    let pid = t.pid();
    let ps = pid.to_string();
    let addrs = func_addrs(pid, &exe, CHECKED);
    let before = support::maps(pid);
    let code = code_bytes(pid, &addrs);
    let (c, err) = xcover_run(&["attach", &ps, "--no-tui", "--keep"], LIMIT);
    assert_eq!(c, 0, "{err}");
    assert_ne!(code_bytes(pid, &addrs), code, "hooked");
    std::thread::sleep(Duration::from_millis(200));
    let full = full_device();
    let (c, err) = xcover_run(&["detach", &ps, "--report", full.to_str().unwrap()], LIMIT);
    assert!(is_char_device(&full), "the device was replaced: {err}");
    assert_eq!(c, 1, "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    held_then_recovered(pid, &before, &code, &addrs, &err);
    assert_eq!(t.stop(), (0, "work ok\n".to_string()));
}

/// `xcover attach --duration N --report <dir>/r.json` whose directory is replaced by a file
/// while it watches: the write fails at the end, the session is held.
#[test]
fn attach_whose_report_fails_at_the_end_holds_the_counts() {
    let exe = chaos_exe();
    let t = Chaos::start(&["work"]);
    let pid = t.pid();
    let ps = pid.to_string();
    let addrs = func_addrs(pid, &exe, CHECKED);
    let before = support::maps(pid);
    let code = code_bytes(pid, &addrs);
    let dir = tmp_path("goes-away");
    std::fs::create_dir_all(&dir).unwrap();
    let report = dir.join("r.json");
    let x = Xcover::spawn(&[
        "attach",
        &ps,
        "--no-tui",
        "--duration",
        "1",
        "--report",
        report.to_str().unwrap(),
    ]);
    assert!(wait_live(pid, LIMIT), "{}", x.stderr());
    std::fs::remove_dir(&dir).unwrap();
    std::fs::write(&dir, b"now a file").unwrap();
    let (c, err) = x.wait(LIMIT);
    assert_eq!(c, 1, "{err}");
    assert!(err.contains("cannot write"), "{err}");
    held_then_recovered(pid, &before, &code, &addrs, &err);
    assert_eq!(t.stop(), (0, "work ok\n".to_string()));
}

/// `attach --keep`, then `attach --duration 1` (the documented way to watch it again) and a
/// SIGTERM to another re-watch: each leaves the session kept, writing the reports asked for
/// as a snapshot; the later `detach --report` has every count.
#[test]
fn a_rewatched_kept_session_stays_kept() {
    let t = Chaos::start(&["work"]);
    let pid = t.pid();
    let ps = pid.to_string();
    let (c, err) = xcover_run(&["attach", &ps, "--no-tui", "--keep"], LIMIT);
    assert_eq!(c, 0, "{err}");
    let base = SessionFile::open(pid)
        .unwrap()
        .header()
        .agent_base
        .load(Ordering::Acquire);
    let snap = tmp_path("snapshot.json");
    let (c, err) = xcover_run(
        &[
            "attach",
            &ps,
            "--no-tui",
            "--duration",
            "1",
            "--report",
            snap.to_str().unwrap(),
        ],
        LIMIT,
    );
    assert_eq!(c, 0, "{err}");
    assert!(err.contains("watching the kept session"), "{err}");
    assert!(
        err.contains("a snapshot"),
        "the report says what it is: {err}"
    );
    let kept = |when: &str| {
        let s = SessionFile::open(pid).unwrap_or_else(|e| panic!("{when}: no session: {e}"));
        let h = s.header();
        assert_eq!(
            h.state.load(Ordering::Acquire),
            SessionState::Live as u32,
            "{when}"
        );
        assert_ne!(h.flags & FLAG_KEEP, 0, "{when}");
        assert_eq!(h.owner_pid.load(Ordering::Acquire), 0, "{when}");
        assert!(support::mapped(pid, base), "{when}: the agent is still in");
    };
    kept("after --duration");
    let snapped = total_hits(&read_report(&snap));
    assert!(snapped > 0);

    let x = Xcover::spawn(&["attach", &ps, "--no-tui"]);
    let deadline = std::time::Instant::now() + LIMIT;
    while SessionFile::open(pid).map_or(0, |s| s.header().owner_pid.load(Ordering::Acquire))
        != x.pid() as u32
    {
        assert!(std::time::Instant::now() < deadline, "{}", x.stderr());
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: kill has no memory-safety preconditions; x is our child.
    unsafe { libc::kill(x.pid(), libc::SIGTERM) };
    let (c, err) = x.wait(LIMIT);
    assert_eq!(c, 0, "{err}");
    kept("after SIGTERM");

    let last = tmp_path("final.json");
    let (c, err) = xcover_run(&["detach", &ps, "--report", last.to_str().unwrap()], LIMIT);
    assert_eq!(c, 0, "{err}");
    assert!(err.contains("detached from pid"), "{err}");
    let r = read_report(&last);
    assert!(
        total_hits(&r) > snapped,
        "the final report has the counts of the whole session"
    );
    support::assert_clean(pid, base);
    assert_eq!(t.stop(), (0, "work ok\n".to_string()));
}

/// `status` after the target of a kept session exec'd: stale, not live.
#[test]
fn status_tells_an_execd_target() {
    let mut t = Chaos::start(&["exec"]);
    let pid = t.pid();
    let ps = pid.to_string();
    let (c, err) = xcover_run(&["attach", &ps, "--no-tui", "--keep"], LIMIT);
    assert_eq!(c, 0, "{err}");
    assert!(status(pid).contains("live kept"));
    t.send("exec");
    assert_eq!(t.line(), "execd\n");
    let st = status(pid);
    assert!(st.contains("stale: the target exec'd"), "{st}");
    assert!(!st.contains("live"), "{st}");
    let (c, err) = xcover_run(&["detach", &ps], LIMIT);
    assert_eq!(c, 0, "{err}");
    assert!(err.contains("exec"), "{err}");
    support::assert_clean(pid, 0);
    assert_eq!(t.stop(), (0, "execd ok\n".to_string()));
}

/// `status` after the attaching xcover was killed: the owner is gone and the session is
/// recoverable; `xcover detach` recovers it and leaves nothing behind. The same when the
/// recorded owner's pid names a live process that is no xcover of this session.
#[test]
fn status_tells_a_gone_owner_and_detach_recovers() {
    let exe = chaos_exe();
    let t = Chaos::start(&["work"]);
    let pid = t.pid();
    let ps = pid.to_string();
    let addrs = func_addrs(pid, &exe, CHECKED);
    let before = support::maps(pid);
    let code = code_bytes(pid, &addrs);

    let mut x = Xcover::spawn(&["attach", &ps, "--no-tui"]);
    assert!(wait_live(pid, LIMIT), "{}", x.stderr());
    let owner = x.pid();
    assert!(
        status(pid).contains(&format!("owner {owner},")),
        "a live owner"
    );
    x.kill9();
    let st = status(pid);
    assert!(st.contains(&format!("owner {owner} gone")), "{st}");
    assert!(
        st.contains(&format!(
            "recoverable with `xcover detach {pid}` or `xcover attach {pid}`"
        )),
        "{st}"
    );
    let (c, err) = xcover_run(&["detach", &ps], LIMIT);
    assert_eq!(c, 0, "{err}");
    assert!(err.contains("detached from pid"), "{err}");
    support::assert_clean(pid, 0);
    assert_eq!(support::maps(pid), before, "maps line for line");
    assert_eq!(code_bytes(pid, &addrs), code, "code bytes restored");

    // An owner pid that now names another process (here: a sleeper that never opened it).
    let (c, err) = xcover_run(&["attach", &ps, "--no-tui", "--keep"], LIMIT);
    assert_eq!(c, 0, "{err}");
    let mut other = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    SessionFile::open(pid)
        .unwrap()
        .header()
        .owner_pid
        .store(other.id(), Ordering::Release);
    let st = status(pid);
    assert!(st.contains(&format!("owner {} gone", other.id())), "{st}");
    let (c, err) = xcover_run(&["detach", &ps], LIMIT);
    let _ = other.kill();
    let _ = other.wait();
    assert_eq!(c, 0, "{err}");
    support::assert_clean(pid, 0);
    assert_eq!(support::maps(pid), before);
    assert_eq!(code_bytes(pid, &addrs), code);
    assert_eq!(t.stop(), (0, "work ok\n".to_string()));
}
