//! Trap hooks (`attach --traps`): a function no jump can patch (`tr_entered`, entered at +1
//! by `tr_via`) hooked with a one-byte `int3` and counted exactly wherever it runs (a
//! signal handler, an alternate signal stack, a forked child, threads in a loop while
//! xcover detaches); the target's own SIGTRAPs reach its own handler as without xcover, or
//! kill it as without xcover; detach leaves every byte, the SIGTRAP disposition and every
//! thread's signal masks as they were.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use xcover_testsupport::inspect::{code_bytes, func_addrs};
use xcover_testsupport::process::spawn_ready;
use xcover_testsupport::report::read_report;

use crate::e2e::tmp;
use crate::support::{session_path, xcover_ok as ok};

fn traps_exe() -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/targets/traps.c");
    crate::support::build_once(
        "traps",
        "cc",
        &["-O2", "-g", "-pthread", "-Wall", src.to_str().unwrap()],
    )
}

/// The traps target, driven line by line.
struct Traps {
    child: Child,
    stdin: Option<ChildStdin>,
    out: BufReader<ChildStdout>,
    transcript: Vec<String>,
}

impl Traps {
    fn start(args: &[&str]) -> Traps {
        let mut cmd = Command::new(traps_exe());
        cmd.args(args).stdin(Stdio::piped());
        let (mut child, out) = spawn_ready(&mut cmd, "traps");
        let stdin = child.stdin.take();
        Traps {
            child,
            stdin,
            out,
            transcript: vec![],
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `cmd`, returns the line it answers.
    fn cmd(&mut self, cmd: &str) -> String {
        let w = self.stdin.as_mut().unwrap();
        writeln!(w, "{cmd}").unwrap();
        w.flush().unwrap();
        let mut l = String::new();
        self.out.read_line(&mut l).unwrap();
        assert!(!l.is_empty(), "the target ended at {cmd:?}");
        self.transcript.push(l.clone());
        l
    }

    /// Ends the input; returns the transcript and how it ended.
    fn finish(mut self) -> (Vec<String>, std::process::ExitStatus) {
        drop(self.stdin.take());
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut self.out, &mut rest).unwrap();
        self.transcript
            .extend(rest.lines().map(|l| format!("{l}\n")));
        let st = self.child.wait().unwrap();
        (std::mem::take(&mut self.transcript), st)
    }
}

impl Drop for Traps {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `SigBlk`, `SigIgn`, `SigCgt` of every thread of `pid`, by tid.
fn signal_state(pid: i32) -> Vec<(String, Vec<String>)> {
    let mut out = vec![];
    let mut tids: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    tids.sort();
    for t in tids {
        let st = std::fs::read_to_string(format!("/proc/{pid}/task/{t}/status")).unwrap();
        let lines = st
            .lines()
            .filter(|l| {
                ["SigBlk:", "SigIgn:", "SigCgt:"]
                    .iter()
                    .any(|k| l.starts_with(k))
            })
            .map(str::to_string)
            .collect();
        out.push((t, lines));
    }
    out
}

/// The commands of one session, and what they add to `tr_entered`'s count: `calls 10`
/// (10: `tr_via` enters past the `int3`), `insig` and `alt` (100 each, in signal handlers,
/// the second on an alternate stack), `fork` (100 in the child), `own` (none: the target's
/// own `int3` and `raise(SIGTRAP)` go to its own handler).
const SESSION: &[&str] = &["calls 10", "own", "insig", "alt", "fork", "own", "calls 3"];
const SESSION_HITS: u64 = 10 + 100 + 100 + 100 + 3;

#[test]
fn a_function_entered_inside_is_trapped_and_counted_exactly_everywhere() {
    let reference = {
        let mut t = Traps::start(&[]);
        t.cmd("sig");
        for c in SESSION {
            t.cmd(c);
        }
        t.cmd("sig");
        let (lines, st) = t.finish();
        assert!(st.success());
        lines
    };
    assert!(
        reference
            .iter()
            .any(|l| l.starts_with("own hits=2 late=0 int3_code=128")),
        "{reference:?}"
    );

    let exe = traps_exe();
    let mut t = Traps::start(&[]);
    let pid = t.pid();
    let ps = pid.to_string();
    t.cmd("sig");
    let addrs = func_addrs(pid, &exe, &["tr_entered", "tr_via"]);
    let before = code_bytes(pid, &addrs);
    let signals_before = signal_state(pid);

    let err = ok(&["attach", &ps, "--no-tui", "--keep", "--traps"]);
    assert!(err.contains("functions hooked, 0 skipped"), "{err}");
    assert_eq!(
        code_bytes(pid, &addrs)[0][0],
        0xcc,
        "tr_entered starts with int3"
    );
    for c in SESSION {
        t.cmd(c);
    }
    let status = ok(&["status", &ps]);
    assert!(status.contains("kept"), "{status}");
    let json = tmp("traps.json");
    ok(&["detach", &ps, "--report", json.to_str().unwrap()]);
    t.cmd("sig");

    assert_eq!(code_bytes(pid, &addrs), before, "code bytes restored");
    assert_eq!(
        signal_state(pid),
        signals_before,
        "SIGTRAP disposition and masks restored"
    );
    assert!(!session_path(pid).exists());
    let r = read_report(&json);
    let f = |n: &str| {
        r["functions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == n)
            .unwrap_or_else(|| panic!("{n} not in the report"))
            .clone()
    };
    assert_eq!(f("tr_entered")["hook"], "trap", "{}", f("tr_entered"));
    assert_eq!(f("tr_entered")["hits"], SESSION_HITS);
    assert!(f("tr_entered")["skipped"].is_null());
    assert_eq!(f("tr_via")["hits"], 13);
    assert!(f("main")["hook"] == "jmp" || f("main")["hook"] == "jmp8");

    let (lines, st) = t.finish();
    assert!(st.success(), "{st}");
    assert_eq!(lines, reference, "the target's output changed under xcover");
}

/// Without `--traps` the same function is skipped, as before trap hooks existed.
#[test]
fn without_traps_the_function_is_skipped() {
    let mut t = Traps::start(&[]);
    let ps = t.pid().to_string();
    ok(&["attach", &ps, "--no-tui", "--keep"]);
    t.cmd("calls 5");
    let json = tmp("notraps.json");
    ok(&["detach", &ps, "--report", json.to_str().unwrap()]);
    let r = read_report(&json);
    let f = r["functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "tr_entered")
        .unwrap()
        .clone();
    assert!(f["hook"].is_null(), "{f}");
    assert!(
        f["skipped"]
            .as_str()
            .unwrap()
            .starts_with("entered at +1 from tr_via"),
        "{f}"
    );
}

/// With no SIGTRAP handler of its own, the target's own `int3` kills it by SIGTRAP, with
/// xcover as without.
#[test]
fn the_targets_own_int3_still_kills_it_by_default() {
    use std::os::unix::process::ExitStatusExt;
    let mut t = Traps::start(&["nohandler"]);
    t.cmd("calls 2");
    t.stdin.as_mut().unwrap().write_all(b"die\n").unwrap();
    let (_, st) = t.finish();
    assert_eq!(st.signal(), Some(libc::SIGTRAP), "reference: {st}");

    let mut t = Traps::start(&["nohandler"]);
    let ps = t.pid().to_string();
    ok(&["attach", &ps, "--no-tui", "--keep", "--traps"]);
    t.cmd("calls 2");
    t.stdin.as_mut().unwrap().write_all(b"die\n").unwrap();
    let (lines, st) = t.finish();
    assert_eq!(
        st.signal(),
        Some(libc::SIGTRAP),
        "with xcover: {st} {lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("survived")),
        "{lines:?}"
    );
    // The session of a dead target is cleaned up by the next command.
    let _ = crate::support::run_xcover(&["detach", &ps]);
}

/// Four threads call the trapped function in a loop while xcover detaches (traps caught
/// mid-delivery go back to the restored entry); then again attached and detached twice.
#[test]
fn detach_while_threads_hit_traps_in_a_loop() {
    let exe = traps_exe();
    let mut t = Traps::start(&[]);
    let pid = t.pid();
    let ps = pid.to_string();
    let addrs = func_addrs(pid, &exe, &["tr_entered"]);
    let before = code_bytes(pid, &addrs);
    assert_eq!(t.cmd("spin"), "spinning\n");
    // After the first pthread_create (glibc installs its own handlers then), and once the
    // new threads are past their start-up (which runs with every signal blocked).
    std::thread::sleep(std::time::Duration::from_millis(100));
    let signals_before = signal_state(pid);
    for round in 0..3 {
        ok(&["attach", &ps, "--no-tui", "--keep", "--traps"]);
        std::thread::sleep(std::time::Duration::from_millis(200));
        let json = tmp(&format!("spin{round}.json"));
        ok(&["detach", &ps, "--report", json.to_str().unwrap()]);
        let r = read_report(&json);
        let f = r["functions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == "tr_entered")
            .unwrap()
            .clone();
        assert_eq!(f["hook"], "trap");
        assert!(f["hits"].as_u64().unwrap() > 1000, "round {round}: {f}");
        assert_eq!(code_bytes(pid, &addrs), before, "round {round}");
    }
    assert_eq!(
        signal_state(pid),
        signals_before,
        "every thread's signal state"
    );
    assert_eq!(t.cmd("stop"), "stopped\n");
    let (_, st) = t.finish();
    assert!(st.success(), "{st}");
}
