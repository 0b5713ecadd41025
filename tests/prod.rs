//! Production modes: changing the hook set of a live session (`xcover hook`/`unhook`),
//! `--first-hit` and `--max-overhead`, with exact counts before and after and a clean
//! detach.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStderr, Stdio};
use std::time::{Duration, Instant};

use xcover_testsupport::inspect::{code_bytes, exec_maps, func_addrs};
use xcover_testsupport::report::{function, hits, read_report};

use crate::e2e::{Counts, counts_exe, tmp};
use crate::support::{run_xcover, session_path, tracer_pids, xcover, xcover_ok as ok};

#[test]
fn unhook_and_hook_a_live_kept_session_keep_exact_counts() {
    let exe = counts_exe();
    let mut t = Counts::start();
    let pid = t.pid();
    let ps = pid.to_string();
    let addrs = func_addrs(pid, &exe, &["f1", "f2", "f3"]);
    let before = code_bytes(pid, &addrs);
    let maps_before = exec_maps(pid);
    ok(&["attach", &ps, "--no-tui", "--keep"]);
    t.round();

    // f1 out: its bytes are the original ones again, f3 stays patched.
    let err = ok(&["unhook", &ps, "--include", "^f1$"]);
    assert!(err.contains("unhooked 1 of 1"), "{err}");
    let now = code_bytes(pid, &addrs);
    assert_eq!(now[0], before[0], "f1 still patched after unhook");
    assert_ne!(now[2], before[2], "f3 unpatched by an unhook of f1");
    t.round();
    // Unhooking what is already out changes nothing and stops nothing.
    let err = ok(&["unhook", &ps, "--include", "^f1$"]);
    assert!(err.contains("unhooked 0 of 1"), "{err}");

    let mid = tmp("prod-mid.json");
    let status = ok(&["status", &ps]);
    assert!(status.contains("kept"), "{status}");
    // A snapshot of the kept session: re-watch it briefly.
    ok(&[
        "attach",
        &ps,
        "--no-tui",
        "--duration",
        "0",
        "--report",
        mid.to_str().unwrap(),
    ]);
    let r = read_report(&mid);
    assert_eq!(hits(&r, "f1"), (1000, true), "f1 counted after its unhook");
    assert_eq!(hits(&r, "f3"), (14, true));
    assert_eq!(function(&r, "f1")["hits_lower_bound"], true);
    assert_eq!(function(&r, "f1")["unhooked"], "user");
    assert!(function(&r, "f3").get("hits_lower_bound").is_none());

    // f1 back in: counting resumes from where it stopped.
    let err = ok(&["hook", &ps, "--include", "^f1$"]);
    assert!(err.contains("hooked 1 of 1"), "{err}");
    assert_ne!(
        code_bytes(pid, &addrs)[0],
        before[0],
        "f1 not patched again"
    );
    t.round();

    // A module name the session does not have selects nothing: bad input, nothing changed.
    let bad = run_xcover(&["unhook", &ps, "--module", "libnothing.so"]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");

    let json = tmp("prod-end.json");
    ok(&["detach", &ps, "--report", json.to_str().unwrap()]);
    let r = read_report(&json);
    assert_eq!(hits(&r, "f1"), (2000, true), "f1: 1000 + (unhooked) + 1000");
    assert_eq!(hits(&r, "f3"), (21, true));
    assert_eq!(hits(&r, "f2"), (0, false));
    // Hooked again, but it missed a round: still a lower bound.
    assert_eq!(function(&r, "f1")["hits_lower_bound"], true);
    assert!(function(&r, "f3").get("hits_lower_bound").is_none());
    assert_eq!(code_bytes(pid, &addrs), before, "code bytes not restored");
    assert_eq!(exec_maps(pid), maps_before, "executable mappings changed");
    assert!(!session_path(pid).exists());
    assert!(tracer_pids(pid).iter().all(|&t| t == 0));
    let (_, code) = t.finish();
    assert_eq!(code, 0);
}

#[test]
fn hook_and_unhook_need_a_live_session() {
    let t = Counts::start();
    let out = run_xcover(&["unhook", &t.pid().to_string()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no xcover session"), "{err}");
    let out = run_xcover(&["hook", &t.pid().to_string(), "--include", "("]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// `xcover attach <pid> --no-tui <extra>` with a JSON report, its stderr read until it has
/// attached.
fn attach_watching(pid: i32, extra: &[&str], json: &std::path::Path) -> Watching {
    let mut x = xcover()
        .args(["attach", &pid.to_string(), "--no-tui", "--duration", "60"])
        .args(extra)
        .arg("--report")
        .arg(json)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(x.stderr.take().unwrap());
    let mut l = String::new();
    while !l.contains("attached") {
        l.clear();
        assert!(
            err.read_line(&mut l).unwrap() > 0,
            "xcover ended before attaching"
        );
    }
    Watching { x, err }
}

struct Watching {
    x: Child,
    err: BufReader<ChildStderr>,
}

impl Watching {
    /// Reads status lines until one contains `want`.
    fn wait_line(&mut self, want: &str) -> String {
        let mut l = String::new();
        while !l.contains(want) {
            l.clear();
            assert!(
                self.err.read_line(&mut l).unwrap() > 0,
                "xcover ended before saying {want:?}"
            );
        }
        l
    }

    /// Ends the watch (SIGINT: detach and write the report); returns its stderr.
    fn end(mut self) -> String {
        xcover_testsupport::process::signal(self.x.id() as i32, libc::SIGINT);
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut self.err, &mut rest).unwrap();
        assert!(self.x.wait().unwrap().success(), "{rest}");
        rest
    }
}

/// Waits (up to a minute: a deadline, not a speed check) until `cond` holds.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < Duration::from_secs(60), "never: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn first_hit_unhooks_every_hit_function_and_keeps_lower_bounds() {
    let exe = counts_exe();
    let mut t = Counts::start();
    let pid = t.pid();
    let addrs = func_addrs(pid, &exe, &["f1", "f2", "f3"]);
    let before = code_bytes(pid, &addrs);
    let json = tmp("first-hit.json");
    let w = attach_watching(pid, &["--first-hit"], &json);
    assert_ne!(code_bytes(pid, &addrs)[0], before[0], "f1 not hooked");
    t.round();
    // Steady state: every function that was hit has its original bytes back; f2, never
    // hit, is still hooked.
    wait_until("f1 and f3 unhooked after their first hits", || {
        let now = code_bytes(pid, &addrs);
        now[0] == before[0] && now[2] == before[2]
    });
    assert_ne!(code_bytes(pid, &addrs)[1], before[1], "f2 unhooked unhit");
    let mut w = w;
    let status = w.wait_line("first-hit: ");
    assert!(status.contains(" ms"), "no stop time: {status}");
    t.round();
    w.end();
    let r = read_report(&json);
    let (f1, hit1) = hits(&r, "f1");
    let (f3, hit3) = hits(&r, "f3");
    assert!(hit1 && (1..=1000).contains(&f1), "f1 {f1}");
    assert!(hit3 && (1..=7).contains(&f3), "f3 {f3}");
    assert_eq!(hits(&r, "f2"), (0, false));
    for f in ["f1", "f3"] {
        assert_eq!(function(&r, f)["hits_lower_bound"], true, "{f}");
        assert_eq!(function(&r, f)["unhooked"], "first-hit", "{f}");
        assert!(
            function(&r, f)["first_hit_ns"].is_u64(),
            "{f}: no first_hit_ns"
        );
    }
    assert!(function(&r, "f2").get("hits_lower_bound").is_none());
    // The exact hit set: f1, f3 and the signal handler that starts a round (main does not
    // run again: it is in its loop).
    let mut acked: Vec<&str> = r["funcs_ack"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    acked.sort_unstable();
    assert_eq!(acked, ["f1", "f3", "on_usr2"], "{acked:?}");
    assert_eq!(code_bytes(pid, &addrs), before, "code bytes not restored");
    assert!(!session_path(pid).exists());
    assert!(tracer_pids(pid).iter().all(|&t| t == 0));
    let (_, code) = t.finish();
    assert_eq!(code, 0);
}

#[test]
fn max_overhead_unhooks_the_hottest_and_keeps_the_rest_exact() {
    let exe = counts_exe();
    let mut t = Counts::start();
    let pid = t.pid();
    let addrs = func_addrs(pid, &exe, &["f1", "f2", "f3"]);
    let before = code_bytes(pid, &addrs);
    let json = tmp("max-overhead.json");
    // A round is 1007 hits in well under a millisecond of CPU: f1's 1000 hits at 8 ns are
    // at least 0.08 % of the CPU a second's interval can have used (a tick at least, and far
    // less than 800 ms), f3's 7 at most 0.0006 %: a budget of 0.001 % keeps only f3.
    let w = attach_watching(pid, &["--max-overhead", "0.001"], &json);
    t.round();
    wait_until("f1 unhooked for the budget", || {
        code_bytes(pid, &addrs)[0] == before[0]
    });
    let now = code_bytes(pid, &addrs);
    assert_ne!(now[2], before[2], "f3 unhooked under the budget");
    let mut w = w;
    let status = w.wait_line("overhead ~");
    assert!(status.contains("budget 0.001%"), "{status}");
    t.round();
    w.end();
    let r = read_report(&json);
    assert_eq!(hits(&r, "f1"), (1000, true), "f1 counted after its unhook");
    assert_eq!(function(&r, "f1")["hits_lower_bound"], true);
    assert_eq!(function(&r, "f1")["unhooked"], "overhead");
    assert_eq!(hits(&r, "f3"), (14, true), "f3 kept hooked, exact");
    assert!(function(&r, "f3").get("hits_lower_bound").is_none());
    assert_eq!(code_bytes(pid, &addrs), before, "code bytes not restored");
    let (_, code) = t.finish();
    assert_eq!(code, 0);
}
