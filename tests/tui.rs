//! The TUI in a real terminal: `xcover demo` inside a private tmux server, driven with
//! send-keys and read with capture-pane. The table fills, counts rise, `/` filters, `q`
//! detaches, and the demo target exits cleanly with nothing left behind.

use std::time::{Duration, Instant};

use xcover_testsupport::tmux::Tmux;

use crate::support::session_path;

/// The hit count in the first table row (the table is sorted by hits).
fn first_row_hits(screen: &str) -> Option<u64> {
    let mut lines = screen
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("function "));
    lines.next()?;
    let row = lines.next()?;
    row.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn demo_in_tmux_fills_filters_and_detaches_cleanly() {
    let tmux = Tmux::new("test");
    let cmd = format!(
        "{} demo --duration 120; echo XCOVER_EXIT=$?; sleep 60",
        env!("CARGO_BIN_EXE_xcover")
    );
    tmux.start(100, 30, &["sh", "-c", &cmd]);

    // The table fills and counts rise.
    let s = tmux.wait_for(30, "the function table", |s| {
        s.contains("hooked") && first_row_hits(s).is_some_and(|h| h > 0)
    });
    let pid: i32 = s
        .split_whitespace()
        .skip_while(|w| *w != "pid")
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("pid in the header");
    let first = first_row_hits(&s).unwrap();
    tmux.wait_for(10, "rising counts", |s| {
        first_row_hits(s).is_some_and(|h| h > first)
    });
    assert!(session_path(pid).exists(), "no session while the TUI runs");

    // `/` filters as you type.
    tmux.keys(&["/"]);
    tmux.keys(&["storage"]);
    let s = tmux.wait_for(10, "the filter", |s| s.contains("/storage"));
    let rows: Vec<&str> = s
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("function "))
        .skip(1)
        .take_while(|l| !l.contains("events"))
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(!rows.is_empty(), "filter shows nothing:\n{s}");
    assert!(
        rows.iter().all(|r| r.contains("storage")),
        "filter lets other rows through:\n{s}"
    );
    tmux.keys(&["Enter"]);

    // `q` detaches; the demo target ends cleanly and nothing is left.
    tmux.keys(&["q"]);
    let end = Instant::now() + Duration::from_secs(30);
    let h = loop {
        let h = tmux.history();
        if h.contains("XCOVER_EXIT=") {
            break h;
        }
        assert!(Instant::now() < end, "xcover did not exit after q:\n{h}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(h.contains("XCOVER_EXIT=0"), "{h}");
    assert!(h.contains("detached from pid"), "{h}");
    assert!(h.contains("demo target exited cleanly"), "{h}");
    assert!(!session_path(pid).exists(), "session file left behind");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z")),
        "demo target still running"
    );
}

/// Runs `xcover attach <pid>` (the TUI) in a fresh tmux session `t`, waits for the table,
/// presses `key`, and returns what the pane showed once xcover exited.
/// `xcover attach <pid>` in a tmux server of its own (a fresh one each time: killing the
/// last session of a server and starting another races with that server's exit), then
/// `key`; returns the pane's history once xcover has exited.
fn tui_attach_then(pid: i32, key: &str) -> String {
    let tmux = Tmux::new("test");
    let cmd = format!(
        "{} attach {pid}; echo XCOVER_EXIT=$?; sleep 60",
        env!("CARGO_BIN_EXE_xcover")
    );
    tmux.start(100, 30, &["sh", "-c", &cmd]);
    tmux.wait_for(30, "the function table", |s| {
        s.contains("hooked") && s.contains(" f3 ")
    });
    tmux.keys(&[key]);
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let h = tmux.history();
        if h.contains("XCOVER_EXIT=") {
            return h;
        }
        assert!(
            Instant::now() < end,
            "xcover did not exit after {key}:\n{h}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The TUI on a kept session: Ctrl-C (like SIGINT) and `K` leave it kept, `q` detaches.
#[test]
fn tui_on_a_kept_session_keeps_it_unless_q() {
    let t = crate::support::Target::start("loop-O2-pie", &[]);
    let pid = t.pid();
    let out = crate::support::run_xcover(&["attach", &pid.to_string(), "--no-tui", "--keep"]);
    assert!(out.status.success(), "{out:?}");
    for key in ["C-c", "K"] {
        let h = tui_attach_then(pid, key);
        assert!(h.contains("XCOVER_EXIT=0"), "{key}: {h}");
        assert!(
            h.contains(&format!("the hooks stay in pid {pid}")),
            "{key}: {h}"
        );
        let s = xcover_injector::SessionFile::open(pid).expect("still kept");
        let base = s
            .header()
            .agent_base
            .load(std::sync::atomic::Ordering::Acquire);
        assert!(crate::support::mapped(pid, base), "{key}: the agent is out");
    }
    let h = tui_attach_then(pid, "q");
    assert!(h.contains("XCOVER_EXIT=0"), "{h}");
    assert!(h.contains(&format!("detached from pid {pid}")), "{h}");
    crate::support::assert_clean(pid, 0);
    let (code, _) = t.stop();
    assert_eq!(code, 0);
}
