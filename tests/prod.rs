//! Production modes: changing the hook set of a live session (`xcover hook`/`unhook`),
//! `--first-hit` and `--max-overhead`, with exact counts before and after and a clean
//! detach.

use xcover_testsupport::inspect::{code_bytes, exec_maps, func_addrs};
use xcover_testsupport::report::{function, hits, read_report};

use crate::e2e::{Counts, counts_exe, tmp};
use crate::support::{run_xcover, session_path, tracer_pids, xcover_ok as ok};

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
