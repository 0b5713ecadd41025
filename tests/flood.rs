//! Load (issue 8): a session with 100 000 functions and its ring buffer under a first-hit
//! flood. The target (`tests/targets/flood.c`, assembled with `.rept` at test time) calls
//! each of its 100 000 functions once on command: 100 000 first-hit records of 24 bytes
//! (32 with the ring's header), over ten times the 256 KiB `events` ring.
//!
//! Attached with the real `xcover` binary (`--keep`, only the `fl_*` functions, so a
//! record's cookie is in 0..100 000), each test checks that
//! - counts never get lost: the report says `hits: 1` for every one of the 100 000;
//! - drops are counted, never silent: records consumed + the ring's drop counter = 100 000;
//! - no record is torn: each consumed record is 24 bytes, its cookie is < 100 000 and new,
//!   its tid is the target's, its padding 0 and its timestamp not older than the last one;
//! - the target prints the same checksum as without xcover and exits 0.
//!
//! One test consumes nothing during the flood (so drops must happen, and `xcover attach
//! --no-tui` must show them); the other consumes the ring from the test, as the TUI does,
//! while the flood runs.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::thread;
use std::time::{Duration, Instant};

use xcover_bpf::maps::ArenaMaps;
use xcover_injector::SessionFile;

use crate::support::{self, session_path};

/// Functions in the target.
const N: usize = 100_000;
/// A first-hit record: cookie u64, timestamp u64, tid u32, padding u32.
const RECORD: usize = 24;
/// Longest wait for one line of the target or one `xcover` run.
const TIMEOUT: Duration = Duration::from_secs(60);

fn flood_exe() -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/targets/flood.c");
    support::build_once("flood", "cc", &["-O2", "-Wall", src.to_str().unwrap()])
}

/// The result line of a flood, computed as `flood.c` does (fl_i(x) = x + i).
fn expected_flood_line() -> String {
    let mut c: u64 = 0;
    for i in 0..N as u64 {
        c = c
            .wrapping_mul(1_000_003)
            .wrapping_add((i ^ (c & 0xffff)).wrapping_add(i));
    }
    format!("flood n={N} checksum={c:016x}")
}

/// A running flood target; its stdout lines arrive through a channel, so no read blocks
/// forever.
struct Target {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Target {
    fn start() -> Target {
        let mut child = Command::new(flood_exe())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the flood target");
        let stdin = child.stdin.take();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = channel();
        thread::spawn(move || {
            for l in out.lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut t = Target {
            child,
            stdin,
            lines,
        };
        assert_eq!(t.line(), "ready");
        t
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn line(&mut self) -> String {
        match self.lines.recv_timeout(TIMEOUT) {
            Ok(l) => l,
            Err(RecvTimeoutError::Timeout) => panic!("flood target: no line in {TIMEOUT:?}"),
            Err(RecvTimeoutError::Disconnected) => {
                panic!("flood target: stdout closed ({:?})", self.child.try_wait())
            }
        }
    }

    /// Runs the flood; returns its result line and how long it took.
    fn flood(&mut self) -> (String, Duration) {
        let t0 = Instant::now();
        let s = self.stdin.as_mut().unwrap();
        s.write_all(b"flood\n").unwrap();
        s.flush().unwrap();
        let l = self.line();
        (l, t0.elapsed())
    }

    /// Closes stdin: the target says "bye" and exits; returns its exit code.
    fn finish(mut self) -> i32 {
        drop(self.stdin.take());
        assert_eq!(self.line(), "bye");
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "flood target did not exit");
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A test that failed with the hooks kept leaves the session of a dead process.
        let _ = std::fs::remove_file(session_path(self.pid()));
    }
}

/// Runs `xcover args…`, killing it after [`TIMEOUT`].
fn xcover(args: &[&str]) -> Output {
    let mut child = support::xcover()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run xcover");
    let deadline = Instant::now() + TIMEOUT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("xcover {args:?} still running after {TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

fn assert_ok(what: &str, out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{what}: {}\n{err}", out.status);
    err
}

/// `xcover attach <pid> --no-tui --keep`, hooking the 100 000 `fl_*` functions only (so
/// their cookies are 0..N); returns how long it took.
fn attach_kept(pid: i32) -> Duration {
    let t0 = Instant::now();
    let out = xcover(&[
        "attach",
        &pid.to_string(),
        "--no-tui",
        "--keep",
        "--include",
        "^fl_[0-9]+$",
    ]);
    let took = t0.elapsed();
    let err = assert_ok("xcover attach --keep", &out);
    assert!(
        err.contains(&format!("{N} functions hooked, 0 skipped")),
        "xcover attach: {err}"
    );
    took
}

/// Checks every consumed record, in ring order.
struct Records {
    pid: u32,
    seen: Vec<bool>,
    consumed: usize,
    last_ts: u64,
    torn: Vec<String>,
}

impl Records {
    fn new(pid: i32) -> Records {
        Records {
            pid: pid as u32,
            seen: vec![false; N],
            consumed: 0,
            last_ts: 0,
            torn: Vec::new(),
        }
    }

    fn check(&mut self, rec: &[u8]) {
        self.consumed += 1;
        if self.torn.len() >= 10 {
            return;
        }
        if rec.len() != RECORD {
            self.torn.push(format!("record of {} bytes", rec.len()));
            return;
        }
        let u64_at = |o: usize| u64::from_le_bytes(rec[o..o + 8].try_into().unwrap());
        let u32_at = |o: usize| u32::from_le_bytes(rec[o..o + 4].try_into().unwrap());
        let (cookie, ts, tid, pad) = (u64_at(0), u64_at(8), u32_at(16), u32_at(20));
        if cookie >= N as u64 {
            self.torn.push(format!("cookie {cookie} out of range"));
        } else if std::mem::replace(&mut self.seen[cookie as usize], true) {
            self.torn.push(format!("cookie {cookie} twice"));
        }
        if tid != self.pid || pad != 0 {
            self.torn.push(format!(
                "cookie {cookie}: tid {tid} (want {}), pad {pad}",
                self.pid
            ));
        }
        // One thread produces, in order: timestamps never go back.
        if ts < self.last_ts {
            self.torn.push(format!(
                "cookie {cookie}: ts {ts} < previous {}",
                self.last_ts
            ));
        }
        self.last_ts = ts;
    }
}

/// Offset of the `events` ring buffer in the session's arena.
fn events_map(s: &SessionFile) -> u64 {
    let h = s.header();
    assert!(h.events_map < h.maps_count, "the probe has no events map");
    s.read_u64(h.maps_off + h.events_map * 8).unwrap()
}

/// Consumes every ready record; returns how many.
fn drain(s: &SessionFile, off: u64, recs: &mut Records) -> usize {
    s.with_arena(|a| a.map(off).map(|m| m.ringbuf_consume(|r| recs.check(r))))
        .unwrap()
        .expect("session has an arena")
        .expect("events map")
}

/// (drop counter, capacity in bytes) of the ring.
fn ring_state(s: &SessionFile, off: u64) -> (u64, u64) {
    s.with_arena(|a| a.map(off).map(|m| (m.dropped(), m.header().data_size)))
        .unwrap()
        .unwrap()
        .unwrap()
}

/// Checks a JSON report written on detach: every `fl_*` function hooked and hit exactly
/// once.
fn assert_report(report: &Path) {
    let text = std::fs::read_to_string(report).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let funcs = v["functions"].as_array().unwrap();
    assert_eq!(funcs.len(), N, "functions in the report");
    let mut names = vec![false; N];
    let mut wrong = Vec::new();
    for f in funcs {
        let name = f["name"].as_str().unwrap();
        let i: usize = name.strip_prefix("fl_").unwrap().parse().unwrap();
        assert!(!std::mem::replace(&mut names[i], true), "{name} twice");
        if f["hits"] != 1 || f["hit"] != true || !f["skipped"].is_null() {
            wrong.push(format!(
                "{name}: hits {} skipped {}",
                f["hits"], f["skipped"]
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} functions not counted exactly once, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    assert_eq!(v["funcs_ack"].as_array().unwrap().len(), N);
}

fn tmp_report(tag: &str, pid: i32) -> PathBuf {
    let d = support::build_dir();
    d.join(format!("flood-{tag}-{pid}.json"))
}

/// Nobody consumes during the flood: the ring fills, the rest is dropped and counted.
/// Afterwards the records the ring holds plus the drop counter make 100 000, and
/// `xcover attach --no-tui` on the kept session shows the same drop count.
#[test]
fn flood_without_reader_counts_every_drop() {
    let want = expected_flood_line();
    let mut t = Target::start();
    let pid = t.pid();
    let attach = attach_kept(pid);
    let (line, flood_took) = t.flood();
    assert_eq!(line, want, "the target's result changed under xcover");

    let s = SessionFile::open(pid).expect("kept session");
    let off = events_map(&s);
    let (dropped, cap) = ring_state(&s, off);
    let mut recs = Records::new(pid);
    drain(&s, off, &mut recs);
    assert!(recs.torn.is_empty(), "torn records: {:?}", recs.torn);
    assert!(
        dropped > 0,
        "a {cap}-byte ring took {N} first hits: no drop counted"
    );
    assert_eq!(
        recs.consumed as u64 + dropped,
        N as u64,
        "records in the ring ({}) + dropped ({dropped}) != {N}",
        recs.consumed
    );
    // Nothing consumed until now: the ring holds exactly what fits.
    assert_eq!(recs.consumed as u64, cap / (RECORD as u64 + 8));
    drop(s);

    // The real binary reports the drops: reopen the kept session for a status line (it
    // stays kept when the time is up), then detach and write the report.
    let report = tmp_report("noreader", pid);
    let out = xcover(&["attach", &pid.to_string(), "--no-tui", "--duration", "2.5"]);
    let err = assert_ok("xcover attach (reopen) --duration", &out);
    assert!(
        session_path(pid).exists(),
        "a kept session stays kept: {err}"
    );
    let out = xcover(&[
        "detach",
        &pid.to_string(),
        "--report",
        report.to_str().unwrap(),
    ]);
    assert_ok("xcover detach --report", &out);
    let status = err
        .lines()
        .rfind(|l| l.ends_with(" dropped"))
        .unwrap_or_else(|| panic!("no status line: {err}"));
    assert!(
        status.contains(&format!("{N} hooked, 0 skipped, {N} hit (100.0%)"))
            && status.ends_with(&format!(", {dropped} dropped")),
        "status line {status:?}, want {N} hit and {dropped} dropped"
    );
    assert!(!session_path(pid).exists(), "session left after detach");
    assert_report(&report);
    let _ = std::fs::remove_file(&report);
    assert_eq!(t.finish(), 0);
    eprintln!(
        "flood without reader: attach {attach:?}, flood {flood_took:?}, ring {cap} bytes, \
         {} records in the ring, {dropped} dropped",
        recs.consumed
    );
}

/// A reader consumes the ring (from another process, as the TUI does) while the flood
/// runs: every record it gets is whole and new, and what it got plus what was dropped is
/// every function.
#[test]
fn flood_with_reader_accounts_for_every_event() {
    let want = expected_flood_line();
    let mut t = Target::start();
    let pid = t.pid();
    let attach = attach_kept(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, started) = (stop.clone(), started.clone());
        thread::spawn(move || {
            let s = SessionFile::open(pid).expect("kept session");
            let off = events_map(&s);
            let mut recs = Records::new(pid);
            started.store(true, Ordering::Release);
            while !stop.load(Ordering::Acquire) {
                if drain(&s, off, &mut recs) == 0 {
                    thread::yield_now();
                }
            }
            let during = recs.consumed;
            // The flood is over (its result line came): take what is left.
            drain(&s, off, &mut recs);
            let (dropped, cap) = ring_state(&s, off);
            (recs, during, dropped, cap)
        })
    };
    while !started.load(Ordering::Acquire) {
        thread::sleep(Duration::from_millis(1));
    }
    let (line, flood_took) = t.flood();
    stop.store(true, Ordering::Release);
    let (recs, during, dropped, cap) = reader.join().expect("reader panicked");
    assert_eq!(line, want, "the target's result changed under xcover");
    assert!(recs.torn.is_empty(), "torn records: {:?}", recs.torn);
    assert_eq!(
        recs.consumed as u64 + dropped,
        N as u64,
        "consumed ({}) + dropped ({dropped}) != {N}",
        recs.consumed
    );

    let report = tmp_report("reader", pid);
    let out = xcover(&[
        "detach",
        &pid.to_string(),
        "--report",
        report.to_str().unwrap(),
    ]);
    assert_ok("xcover detach --report", &out);
    assert!(!session_path(pid).exists(), "session left after detach");
    assert_report(&report);
    let _ = std::fs::remove_file(&report);
    assert_eq!(t.finish(), 0);
    eprintln!(
        "flood with reader: attach {attach:?}, flood {flood_took:?}, ring {cap} bytes, \
         {} consumed ({during} during the flood), {dropped} dropped",
        recs.consumed
    );
}
