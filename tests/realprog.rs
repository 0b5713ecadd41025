//! Real programs under `xcover attach`: C at -O0/-O2/-O3 (and -O2 non-PIE with `endbr64` at
//! every entry), C++ with exceptions, threads and the standard library, a Rust binary (std
//! and all, thousands of functions), an 8-thread C target attached and detached while its
//! threads spin, and a C target copying memory in threads with all of glibc hooked (linked
//! statically, and with `--module libc.so.6`). Sources in `tests/targets/real/`, built at
//! test time with `-g`.
//!
//! For each target, a run without xcover gives the reference transcript; a run with the real
//! `xcover` binary attached while the target does its work must print exactly the same and
//! exit 0. Around the attachment the test also checks that the first 16 bytes of every
//! function of the executable (from its symbol table plus the load bias), the executable's
//! whole text, and the file-backed and executable mappings are the same before attach and
//! after detach.
//!
//! The runs happen with every function hooked (the "patched while attached" line in the test
//! output says how many entries changed), and the report written on detach must give the
//! functions the target certainly called hits (> 0) and those it never called none (== 0).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use crate::support;

/// Longest wait for one line or one exit before the test calls the target hung.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Where the sources are.
const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/targets/real");

// ---------------------------------------------------------------------------------------
// Building

fn src(file: &str) -> String {
    format!("{SRC}/{file}")
}

/// Whether this CPU has AVX2 (then the C target also passes `__m256` arguments).
fn has_avx2() -> bool {
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| {
        c.lines()
            .find(|l| l.starts_with("flags"))
            .is_some_and(|l| l.split_whitespace().any(|f| f == "avx2"))
    })
}

/// `cmix.c` with these extra compiler flags.
fn c_target(name: &str, flags: &[&str]) -> PathBuf {
    let file = src("cmix.c");
    let mut args = vec!["-g", "-Wall"];
    args.extend_from_slice(flags);
    if has_avx2() {
        args.push("-DHAVE_AVX2");
    }
    args.push(&file);
    support::build_once(name, "cc", &args)
}

fn c_o0() -> PathBuf {
    c_target("real-c-O0", &["-O0"])
}
fn c_o2() -> PathBuf {
    c_target("real-c-O2", &["-O2"])
}
fn c_o3() -> PathBuf {
    c_target("real-c-O3", &["-O3"])
}
fn c_o2_cet_nopie() -> PathBuf {
    c_target(
        "real-c-O2-cet-nopie",
        &["-O2", "-fcf-protection=full", "-fno-pie", "-no-pie"],
    )
}
fn cxx() -> PathBuf {
    let file = src("cxxmix.cpp");
    support::build_once(
        "real-cxx-O2",
        "c++",
        &["-O2", "-g", "-Wall", "-pthread", &file],
    )
}
fn rust() -> PathBuf {
    let file = src("rsmix.rs");
    support::build_once(
        "real-rust",
        "rustc",
        &[
            "-O",
            "-g",
            "--edition",
            "2024",
            "--crate-name",
            "rsmix",
            &file,
        ],
    )
}
/// `memwork.c`, linked as `flags` say (`-static`, or against libc.so.6).
fn memwork(name: &str, flags: &[&str]) -> PathBuf {
    let file = src("memwork.c");
    let mut args = vec!["-O2", "-g", "-Wall", "-pthread"];
    args.extend_from_slice(flags);
    args.push(&file);
    support::build_once(name, "cc", &args)
}
fn memwork_static() -> PathBuf {
    memwork("real-memwork-static", &["-static"])
}
fn memwork_dynamic() -> PathBuf {
    memwork("real-memwork", &[])
}
fn tight() -> PathBuf {
    let file = src("tight.c");
    support::build_once(
        "real-tight",
        "cc",
        &["-O2", "-g", "-Wall", "-pthread", &file],
    )
}

/// Starts building every target in the background, slowest first, so the first tests
/// (which run two at a time) do not each wait for a compiler in turn.
fn warm_up() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::thread::spawn(|| {
            rust();
        });
        std::thread::spawn(|| {
            cxx();
            tight();
            memwork_static();
            memwork_dynamic();
            c_o2_cet_nopie();
            c_o3();
        });
    });
}

// ---------------------------------------------------------------------------------------
// Running a target

/// A target with its stdout read line by line on a thread, so no read can hang the test.
struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// Everything printed after "ready".
    transcript: Vec<String>,
}

impl Proc {
    /// Starts `path` and waits for its "ready".
    fn start(path: &Path) -> Proc {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let mut child = Command::new(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        let stdin = child.stdin.take();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for l in out.lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut p = Proc {
            name,
            child,
            stdin,
            lines,
            transcript: Vec::new(),
        };
        let first = p.line();
        assert_eq!(first, "ready", "{} did not say ready", p.name);
        p.transcript.clear();
        p
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The next line (recorded in the transcript).
    fn line(&mut self) -> String {
        match self.lines.recv_timeout(TIMEOUT) {
            Ok(l) => {
                self.transcript.push(l.clone());
                l
            }
            Err(RecvTimeoutError::Timeout) => panic!(
                "{}: no output for {TIMEOUT:?}; so far:\n{}",
                self.name,
                self.transcript.join("\n")
            ),
            Err(RecvTimeoutError::Disconnected) => {
                let st = self.child.wait().unwrap();
                panic!(
                    "{}: stdout closed ({st}) before the expected line; so far:\n{}",
                    self.name,
                    self.transcript.join("\n")
                )
            }
        }
    }

    fn send(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Asks for round `n` and reads its transcript.
    fn round(&mut self, n: u32) {
        self.send("go\n");
        let end = format!("round {n} end");
        while self.line() != end {}
    }

    /// Waits for a line equal to `want`.
    fn expect(&mut self, want: &str) {
        let got = self.line();
        assert_eq!(got, want, "{}: unexpected line", self.name);
    }

    /// Closes stdin, reads the rest and waits for the exit.
    fn finish(mut self) -> (ExitStatus, Vec<String>) {
        drop(self.stdin.take());
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(l) => self.transcript.push(l),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!(
                    "{}: did not finish within {TIMEOUT:?}; so far:\n{}",
                    self.name,
                    self.transcript.join("\n")
                ),
            }
        }
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return (st, std::mem::take(&mut self.transcript));
            }
            assert!(Instant::now() < deadline, "{}: did not exit", self.name);
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts two transcripts are equal, showing the first difference.
fn assert_same_transcript(name: &str, want: &[String], got: &[String]) {
    if want == got {
        return;
    }
    let i = want
        .iter()
        .zip(got)
        .position(|(a, b)| a != b)
        .unwrap_or(want.len().min(got.len()));
    panic!(
        "{name}: output with xcover differs from the run without it, first at line {}:\n  \
         without: {:?}\n  with:    {:?}\n--- without ({} lines) ---\n{}\n--- with ({} lines) ---\n{}",
        i + 1,
        want.get(i),
        got.get(i),
        want.len(),
        want.join("\n"),
        got.len(),
        got.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// xcover

/// How an `xcover attach` ends.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Detach {
    /// `--duration <secs>`, detaching by itself after the work.
    Timer(f64),
    /// A long `--duration`, then SIGINT once the work is done (the Ctrl-C path).
    Interrupt,
    /// `--keep`, then `xcover detach <pid>`.
    Keep,
}

/// A running `xcover attach`.
struct Attached {
    pid: i32,
    how: Detach,
    child: Option<Child>,
    stderr: Receiver<String>,
    log: Vec<String>,
    report: PathBuf,
    /// Where the agent was loaded, from the session file.
    agent_base: u64,
}

impl Attached {
    /// Runs `xcover attach <pid> --no-tui …` and waits until it says it attached.
    fn start(pid: i32, how: Detach, report: &Path) -> Attached {
        Self::start_with(pid, how, report, &[])
    }

    /// [`Attached::start`] with more arguments for `attach` (`--module …`).
    fn start_with(pid: i32, how: Detach, report: &Path, extra: &[&str]) -> Attached {
        let _ = std::fs::remove_file(report);
        let mut cmd = support::xcover();
        cmd.args(["attach", &pid.to_string(), "--no-tui"]);
        cmd.args(extra);
        match how {
            Detach::Timer(secs) => cmd.args(["--duration", &secs.to_string()]),
            Detach::Interrupt => cmd.args(["--duration", "120"]),
            Detach::Keep => cmd.arg("--keep"),
        };
        if how != Detach::Keep {
            cmd.arg("--report").arg(report);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run xcover");
        let err = BufReader::new(child.stderr.take().unwrap());
        let (tx, stderr) = channel();
        std::thread::spawn(move || {
            for l in err.lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut a = Attached {
            pid,
            how,
            child: Some(child),
            stderr,
            log: Vec::new(),
            report: report.to_path_buf(),
            agent_base: 0,
        };
        loop {
            match a.stderr.recv_timeout(TIMEOUT) {
                Ok(l) => {
                    let done = l.contains("attached to pid");
                    a.log.push(l);
                    if done {
                        break;
                    }
                }
                Err(_) => {
                    let st = a.child.as_mut().unwrap().wait().unwrap();
                    panic!(
                        "xcover attach {pid} ({st}) never said it attached:\n{}",
                        a.text()
                    );
                }
            }
        }
        if how == Detach::Keep {
            let st = a.wait_exit();
            assert!(
                st.success(),
                "xcover attach --keep {pid}: {st}\n{}",
                a.text()
            );
        }
        let s = xcover_injector::SessionFile::open(pid).expect("session file while attached");
        a.agent_base = s.header().agent_base.load(Ordering::Acquire);
        a
    }

    fn text(&self) -> String {
        self.log.join("\n")
    }

    /// Waits for the attach process to exit, collecting its stderr.
    fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + TIMEOUT;
        let st = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            assert!(
                Instant::now() < deadline,
                "xcover did not exit:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        while let Ok(l) = self.stderr.recv_timeout(Duration::from_secs(5)) {
            self.log.push(l);
        }
        st
    }

    /// Whether `xcover attach` is still running (so the target is still instrumented).
    fn running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// Detaches the way this session was set up to, and checks xcover said so and left
    /// nothing behind.
    fn detach(mut self) {
        let pid = self.pid;
        match self.how {
            Detach::Timer(secs) => {
                assert!(
                    self.running(),
                    "the work outlasted --duration {secs}: it did not all run attached\n{}",
                    self.text()
                );
                let st = self.wait_exit();
                assert!(st.success(), "xcover attach {pid}: {st}\n{}", self.text());
            }
            Detach::Interrupt => {
                assert!(self.running(), "xcover exited early:\n{}", self.text());
                let xpid = self.child.as_ref().unwrap().id() as i32;
                // SAFETY: kill has no memory-safety preconditions; xpid is our child.
                assert_eq!(unsafe { libc::kill(xpid, libc::SIGINT) }, 0);
                let st = self.wait_exit();
                assert!(st.success(), "xcover attach {pid}: {st}\n{}", self.text());
            }
            Detach::Keep => {
                let out = support::xcover()
                    .args(["detach", &pid.to_string(), "--report"])
                    .arg(&self.report)
                    .stdin(Stdio::null())
                    .output()
                    .expect("run xcover detach");
                let err = String::from_utf8_lossy(&out.stderr);
                self.log.extend(err.lines().map(str::to_string));
                assert!(out.status.success(), "xcover detach {pid}: {err}");
            }
        }
        assert!(
            self.log.iter().any(|l| l.contains("detached from pid")),
            "xcover did not say it detached:\n{}",
            self.text()
        );
        support::assert_clean(pid, self.agent_base);
    }
}

// ---------------------------------------------------------------------------------------
// What must not change

/// Every function symbol of an executable: address (link time) → name.
fn functions(exe: &Path) -> (BTreeMap<u64, String>, u64) {
    let bytes = std::fs::read(exe).unwrap();
    let elf = goblin::elf::Elf::parse(&bytes).unwrap();
    let mut funcs = BTreeMap::new();
    for sym in elf.syms.iter() {
        if sym.is_function() && sym.st_shndx != 0 && sym.st_value != 0 {
            let name = elf.strtab.get_at(sym.st_name).unwrap_or("?");
            funcs
                .entry(sym.st_value)
                .or_insert_with(|| name.to_string());
        }
    }
    let first_load = elf
        .program_headers
        .iter()
        .filter(|p| p.p_type == goblin::elf::program_header::PT_LOAD)
        .map(|p| p.p_vaddr & !0xfff)
        .min()
        .unwrap();
    (funcs, first_load)
}

/// One parsed line of `/proc/<pid>/maps`.
struct MapLine {
    start: u64,
    end: u64,
    perms: String,
    offset: u64,
    /// Device and inode.
    file: String,
    path: String,
}

fn parse_maps(pid: i32) -> Vec<MapLine> {
    support::maps(pid)
        .into_iter()
        .map(|line| {
            let f: Vec<&str> = line.splitn(6, ' ').collect();
            let (a, b) = f[0].split_once('-').unwrap();
            MapLine {
                start: u64::from_str_radix(a, 16).unwrap(),
                end: u64::from_str_radix(b, 16).unwrap(),
                perms: f[1].to_string(),
                offset: u64::from_str_radix(f[2], 16).unwrap(),
                file: format!("{} {}", f[3], f[4].trim()),
                path: f.get(5).map_or("", |p| p.trim()).to_string(),
            }
        })
        .collect()
}

/// Mapping lines as the process sees its address space: adjacent pieces of one file mapping
/// with the same protection and contiguous file offsets are one line. Patching code splits
/// the kernel's VMA of a text mapping (the written pages become private copies, which the
/// kernel does not merge back with untouched pages) even when bytes and protections are
/// restored exactly; every address still maps the same file offset with the same
/// protection, so that split alone is not a change the target can notice.
fn coalesce<'a>(lines: impl Iterator<Item = &'a MapLine>) -> Vec<String> {
    let mut out: Vec<(u64, u64, &str, u64, &str, &str)> = Vec::new();
    for m in lines {
        if let Some(last) = out.last_mut()
            && m.path.starts_with('/')
            && last.1 == m.start
            && last.2 == m.perms
            && last.4 == m.file
            && last.5 == m.path
            && last.3 + (last.1 - last.0) == m.offset
        {
            last.1 = m.end;
            continue;
        }
        out.push((m.start, m.end, &m.perms, m.offset, &m.file, &m.path));
    }
    out.iter()
        .map(|(a, b, perms, off, file, path)| {
            format!("{a:x}-{b:x} {perms} {off:08x} {file} {path}")
        })
        .collect()
}

/// Lines of `/proc/<pid>/maps` for the executable's code, and kB of it that are private
/// (anonymous) copies rather than page-cache pages, from smaps: for the test log.
fn exe_vmas(pid: i32) -> (usize, u64) {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    let exe = exe.to_string_lossy().into_owned();
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let (mut lines, mut anon, mut in_exe) = (0, 0, false);
    for l in smaps.lines() {
        if l.split_whitespace()
            .next()
            .is_some_and(|f| f.contains('-') && !f.ends_with(':'))
        {
            in_exe = l.ends_with(exe.as_str())
                && l.split_whitespace().nth(1).is_some_and(|p| p.contains('x'));
            lines += usize::from(in_exe);
        } else if in_exe && let Some(kb) = l.strip_prefix("Anonymous:") {
            anon += kb
                .trim()
                .trim_end_matches(" kB")
                .trim()
                .parse::<u64>()
                .unwrap_or(0);
        }
    }
    (lines, anon)
}

/// What of a process must be the same before attach and after detach.
struct Snapshot {
    /// File-backed mappings, executable anonymous mappings and the vDSO. Heap, stacks,
    /// [vvar] and anonymous data (malloc arenas, thread stacks) change as the target works
    /// and are left out.
    maps: Vec<String>,
    /// First 16 bytes of every function of the executable, by runtime address.
    entries: BTreeMap<u64, (String, [u8; 16])>,
    /// The executable's executable mappings, whole.
    text: Vec<(u64, Vec<u8>)>,
    /// [`exe_vmas`].
    vmas: (usize, u64),
}

fn snapshot(pid: i32, exe: &Path) -> Snapshot {
    let exe_link = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    let exe_link = exe_link.to_string_lossy();
    let all = parse_maps(pid);
    let maps = coalesce(all.iter().filter(|m| {
        m.path.starts_with('/')
            || m.path == "[vdso]"
            || m.path == "[vsyscall]"
            || (m.perms.contains('x') && !m.path.starts_with('['))
    }));
    let (funcs, first_load) = functions(exe);
    let base = all
        .iter()
        .filter(|m| m.path == exe_link && m.offset == 0)
        .map(|m| m.start)
        .min()
        .expect("executable mapped");
    let bias = base - first_load;
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let entries = funcs
        .into_iter()
        .map(|(addr, name)| {
            let mut b = [0u8; 16];
            mem.read_exact_at(&mut b, addr + bias)
                .unwrap_or_else(|e| panic!("read {name} at {:#x}: {e}", addr + bias));
            (addr + bias, (name, b))
        })
        .collect();
    let text = all
        .iter()
        .filter(|m| m.path == exe_link && m.perms.contains('x'))
        .map(|m| {
            let mut b = vec![0u8; (m.end - m.start) as usize];
            mem.read_exact_at(&mut b, m.start).unwrap();
            (m.start, b)
        })
        .collect();
    Snapshot {
        maps,
        entries,
        text,
        vmas: exe_vmas(pid),
    }
}

/// Function entries that differ between two snapshots.
fn changed_entries(a: &Snapshot, b: &Snapshot) -> Vec<String> {
    a.entries
        .iter()
        .filter(|(addr, (_, bytes))| b.entries.get(addr).map(|e| &e.1) != Some(bytes))
        .map(|(addr, (name, _))| format!("{name}@{addr:#x}"))
        .collect()
}

/// Entry bytes read while attached: logs how many functions are patched and returns the
/// names of those that are not.
fn report_patched(name: &str, before: &Snapshot, pid: i32, exe: &Path) -> Vec<String> {
    let during = snapshot(pid, exe);
    let n = changed_entries(before, &during).len();
    let same: Vec<String> = before
        .entries
        .iter()
        .filter(|(addr, (_, b))| during.entries.get(addr).map(|e| &e.1) == Some(b))
        .map(|(_, (name, _))| name.clone())
        .collect();
    eprintln!(
        "{name}: {n} of {} function entries patched while attached; not patched: {:?}",
        before.entries.len(),
        &same[..same.len().min(12)]
    );
    same
}

fn assert_unchanged(name: &str, before: &Snapshot, after: &Snapshot) {
    // The agent writes patches through /proc/self/mem, so the code mapping is never split;
    // the patched pages stay private copies (same bytes as the file), which is noted.
    assert_eq!(
        before.vmas.0, after.vmas.0,
        "{name}: the executable's code mapping was split"
    );
    if before.vmas.1 != after.vmas.1 {
        eprintln!(
            "{name}: note: {} kB of the executable's code are private copies after detach \
             (were {} kB)",
            after.vmas.1, before.vmas.1
        );
    }
    if before.maps != after.maps {
        let gone: Vec<_> = before
            .maps
            .iter()
            .filter(|l| !after.maps.contains(l))
            .collect();
        let new: Vec<_> = after
            .maps
            .iter()
            .filter(|l| !before.maps.contains(l))
            .collect();
        panic!("{name}: mappings differ after detach\n  gone: {gone:#?}\n  new: {new:#?}");
    }
    let changed = changed_entries(before, after);
    assert!(
        changed.is_empty(),
        "{name}: {} function entries differ after detach: {:?}",
        changed.len(),
        &changed[..changed.len().min(20)]
    );
    let flat = |t: &[(u64, Vec<u8>)]| -> Vec<(u64, u8)> {
        t.iter()
            .flat_map(|(a, b)| b.iter().enumerate().map(move |(i, &x)| (a + i as u64, x)))
            .collect()
    };
    let (t0, t1) = (flat(&before.text), flat(&after.text));
    assert_eq!(t0.len(), t1.len(), "{name}: text size changed");
    if let Some(((addr, x), (_, y))) = t0.iter().zip(&t1).find(|(a, b)| a != b) {
        panic!("{name}: text differs after detach at {addr:#x}: {x:#04x} → {y:#04x}");
    }
}

// ---------------------------------------------------------------------------------------
// The report

/// A function name as the tests write it: raw symbol, or demangled without parameters or
/// Rust's hash.
fn name_matches(f: &serde_json::Value, want: &str) -> bool {
    if f["name"].as_str() == Some(want) {
        return true;
    }
    let Some(d) = f["demangled"].as_str() else {
        return false;
    };
    let d = d.split('(').next().unwrap_or(d);
    let d = match d.rsplit_once("::h") {
        Some((head, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            head
        }
        _ => d,
    };
    d == want
}

/// Checks the hit counts in the JSON report xcover wrote on detach.
fn check_report(name: &str, report: &Path, called: &[&str], never: &[&str], unpatched: &[String]) {
    let text = std::fs::read_to_string(report)
        .unwrap_or_else(|e| panic!("{name}: no report at {}: {e}", report.display()));
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: report is not JSON: {e}"));
    let funcs = v["functions"]
        .as_array()
        .unwrap_or_else(|| panic!("{name}: report without functions[]"));
    let hits = |f: &serde_json::Value| {
        f["hits"]
            .as_u64()
            .unwrap_or(u64::from(f["hit"].as_bool() == Some(true)))
    };
    // Compilers split functions (`f.cold`, `f.part.0`, `[clone .cold]`): a name may match
    // several entries; one of them must have hits, and none of a never-called one.
    for want in called {
        let found: Vec<_> = funcs.iter().filter(|f| name_matches(f, want)).collect();
        assert!(
            !found.is_empty(),
            "{name}: {want} is not in the report (skipped by the interceptor?)"
        );
        assert!(
            found.iter().any(|f| hits(f) > 0),
            "{name}: {want} was called but has no hits: {found:?}"
        );
    }
    for want in never {
        // A function left out of the report has no hits either.
        for f in funcs.iter().filter(|f| name_matches(f, want)) {
            assert_eq!(hits(f), 0, "{name}: {want} was never called: {f}");
            assert_ne!(f["hit"].as_bool(), Some(true), "{name}: {want}: {f}");
        }
    }
    // "Never a silent miss": a function the report lists but whose entry was not patched
    // while attached must say why, in `skipped`.
    for f in funcs {
        let raw = f["name"].as_str().unwrap_or("");
        if unpatched.iter().any(|u| u == raw) {
            assert!(
                f["skipped"].as_str().is_some_and(|r| !r.is_empty()),
                "{name}: {raw} was not hooked but is not marked skipped: {f}"
            );
        }
    }
    eprintln!("{name}: report checked ({} functions listed)", funcs.len());
}

fn report_path(name: &str) -> PathBuf {
    support::build_dir().join(format!("{name}.report.json"))
}

// ---------------------------------------------------------------------------------------
// The scenarios

/// Rounds: 1 before attach (so whatever the work sets up once exists in both snapshots),
/// 2 and 3 attached, 4 after detach.
const ROUNDS: u32 = 4;

fn reference(exe: &Path) -> Vec<String> {
    let mut p = Proc::start(exe);
    for n in 1..=ROUNDS {
        p.round(n);
    }
    let (st, out) = p.finish();
    assert!(st.success(), "{}: run without xcover: {st}", exe.display());
    assert_eq!(out.last().map(String::as_str), Some("bye rounds=4"));
    out
}

/// The round protocol under `xcover attach` ending as `how`.
fn rounds_attached(exe: PathBuf, how: Detach, called: &[&str], never: &[&str]) {
    let name = exe.file_name().unwrap().to_string_lossy().into_owned();
    let want = reference(&exe);

    let mut p = Proc::start(&exe);
    let pid = p.pid();
    p.round(1);
    let before = snapshot(pid, &exe);
    let report = report_path(&name);
    let att = Attached::start(pid, how, &report);
    let unpatched = report_patched(&name, &before, pid, &exe);
    p.round(2);
    p.round(3);
    att.detach();
    let after = snapshot(pid, &exe);
    assert_unchanged(&name, &before, &after);
    p.round(4);
    let (st, got) = p.finish();
    assert!(
        st.success(),
        "{name}: exit with xcover: {st}\n{}",
        got.join("\n")
    );
    assert_same_transcript(&name, &want, &got);
    check_report(&name, &report, called, never, &unpatched);
}

/// Functions of `cmix.c` that every round calls: one only a signal handler calls, the
/// handler itself, one a `longjmp` leaves, a variadic one, one with nine float arguments,
/// one reached only by a tail jump at -O2, a static-inline one, and tiny ones (1 to 4 bytes
/// at -O2: hooked through the alignment padding after them).
const C_CALLED: &[&str] = &[
    "jump_table",
    "in_handler",
    "on_usr2",
    "dive",
    "va_mix",
    "fdot8",
    "vsum8",
    "vrot",
    "ack",
    "tail_b",
    "sq_helper",
    "small_17",
    "op_add",
    "tiny_zero",
    "tiny_empty",
];

/// [`C_CALLED`], plus the functions with `__m256` arguments when the CPU has AVX2.
fn c_called() -> Vec<&'static str> {
    let mut v = C_CALLED.to_vec();
    if has_avx2() {
        v.extend(["avx_comb", "avx_ints"]);
    }
    v
}

#[test]
fn c_o0_timer() {
    warm_up();
    rounds_attached(c_o0(), Detach::Timer(3.0), &c_called(), &["never_called"]);
}

#[test]
fn c_o2_interrupt() {
    warm_up();
    rounds_attached(c_o2(), Detach::Interrupt, &c_called(), &["never_called"]);
}

#[test]
fn c_o3_keep() {
    warm_up();
    rounds_attached(c_o3(), Detach::Keep, &c_called(), &["never_called"]);
}

#[test]
fn c_o2_cet_nopie_interrupt() {
    warm_up();
    rounds_attached(
        c_o2_cet_nopie(),
        Detach::Interrupt,
        &c_called(),
        &["never_called"],
    );
}

#[test]
fn cxx_exceptions_threads() {
    warm_up();
    rounds_attached(
        cxx(),
        Detach::Keep,
        &[
            "cpp_called",
            "catcher",
            "thrower",
            "Circle::area",
            "item_less",
            "task_work",
        ],
        &["cpp_never_called"],
    );
}

#[test]
fn rust_panics_threads() {
    warm_up();
    rounds_attached(
        rust(),
        Detach::Interrupt,
        &["rs_called", "rsmix::deep", "rsmix::catch", "rsmix::worker"],
        &["rs_never_called"],
    );
}

/// 8 threads in tight loops the whole time while xcover attaches and detaches three times,
/// once for each way a session ends.
#[test]
fn tight_8_threads_attach_detach_while_running() {
    warm_up();
    let exe = tight();
    let name = "real-tight";
    let want = {
        let mut p = Proc::start(&exe);
        p.send("go\n");
        p.expect("started");
        std::thread::sleep(Duration::from_millis(100));
        let (st, out) = p.finish();
        assert!(st.success(), "tight without xcover: {st}");
        out
    };
    assert!(
        want.iter()
            .all(|l| !l.contains("mismatches=") || l.ends_with("mismatches=0"))
    );

    let mut p = Proc::start(&exe);
    let pid = p.pid();
    p.send("go\n");
    p.expect("started");
    std::thread::sleep(Duration::from_millis(50));
    let before = snapshot(pid, &exe);
    for (i, how) in [Detach::Timer(0.5), Detach::Keep, Detach::Interrupt]
        .into_iter()
        .enumerate()
    {
        let report = report_path(&format!("{name}-{i}"));
        let att = Attached::start(pid, how, &report);
        let unpatched = report_patched(name, &before, pid, &exe);
        std::thread::sleep(Duration::from_millis(150));
        att.detach();
        check_report(
            name,
            &report,
            &["t_mix", "t_rot", "t_tiny", "t_fp", "t_leaf", "batch"],
            &[],
            &unpatched,
        );
        let after = snapshot(pid, &exe);
        assert_unchanged(&format!("{name} cycle {i}"), &before, &after);
    }
    let (st, got) = p.finish();
    assert!(
        st.success(),
        "{name}: exit with xcover: {st}\n{}",
        got.join("\n")
    );
    assert_same_transcript(name, &want, &got);
}

// ---------------------------------------------------------------------------------------
// All of libc, entered from elsewhere

/// Entry bytes of glibc's copy functions (`__mempcpy_*`, `__memcpy_*`, `__memmove_*`) in
/// `pid`, by name: runtime address and first 16 bytes, where `xcover functions` finds them
/// (in `module`, when given, else in the executable).
fn copy_entries(pid: i32, module: Option<&str>) -> BTreeMap<String, (u64, [u8; 16])> {
    let ps = pid.to_string();
    let mut args = vec!["functions", &ps, "--include", "^__mem(p?cpy|move)_"];
    if let Some(m) = module {
        args.extend(["--module", m]);
    }
    let out = support::run_xcover(&args);
    assert!(
        out.status.success(),
        "xcover functions {pid}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut entries = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut f = line.split_whitespace();
        let (Some(addr), Some(_size), Some(_source), Some(name)) =
            (f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let addr = u64::from_str_radix(addr.trim_start_matches("0x"), 16).unwrap();
        let name = name.rsplit('!').next().unwrap().to_string();
        let mut b = [0u8; 16];
        mem.read_exact_at(&mut b, addr)
            .unwrap_or_else(|e| panic!("read {name} at {addr:#x}: {e}"));
        entries.insert(name, (addr, b));
    }
    entries
}

/// Pairs `(__mempcpy_X, __memcpy_X, k)` where `__mempcpy_X` is glibc's
/// `mov %rdi,%rax; add %rdx,%rax; jmp __memcpy_X+k` (k > 0), read from the code itself.
fn mempcpy_jumps(entries: &BTreeMap<String, (u64, [u8; 16])>) -> Vec<(String, String, u64)> {
    let mut pairs = Vec::new();
    for (name, (addr, b)) in entries {
        let Some(x) = name.strip_prefix("__mempcpy_") else {
            continue;
        };
        if b[..6] != [0x48, 0x89, 0xf8, 0x48, 0x01, 0xd0] {
            continue;
        }
        let target = match b[6] {
            0xeb => (addr + 8).wrapping_add(b[7] as i8 as u64),
            0xe9 => {
                (addr + 11).wrapping_add(i32::from_le_bytes(b[7..11].try_into().unwrap()) as u64)
            }
            _ => continue,
        };
        let memcpy = format!("__memcpy_{x}");
        if let Some((m, _)) = entries.get(&memcpy)
            && target > *m
            && target < m + 14
        {
            pairs.push((name.clone(), memcpy, target - m));
        }
    }
    pairs
}

/// Every function of the executable and (with `module`) of libc.so.6 hooked, while 4
/// threads copy with `mempcpy`/`memcpy`/`memmove` and format with `snprintf`/`fprintf` in
/// rounds 2 and 3: the output is the unattached run's, the process exits 0, every
/// `__memcpy_X` that its `__mempcpy_X` enters at `+k` keeps bytes `k..k+2` while attached
/// (skipped, with the reason naming the `__mempcpy_X`, or hooked by a patch that stops
/// before them), and the `__mempcpy_*` this CPU uses was hit while hooked.
///
/// With `traps` (`attach --traps`), no `__memcpy_X` is skipped for that entry any more: each
/// is hooked (by a trap, or a 2-byte hop that stops before `+k`) and at least one by a trap.
fn memwork_all_of_libc(exe: PathBuf, how: Detach, module: Option<&str>, traps: bool) {
    let name = exe.file_name().unwrap().to_string_lossy().into_owned();
    let want = reference(&exe);

    let mut p = Proc::start(&exe);
    let pid = p.pid();
    p.round(1);
    let before = snapshot(pid, &exe);
    let copies_before = copy_entries(pid, module);
    let pairs = mempcpy_jumps(&copies_before);
    assert!(
        pairs.len() >= 2,
        "{name}: glibc's __mempcpy_* -> __memcpy_*+k jumps are found (libc6-dbg installed?): \
         {:?}",
        copies_before.keys().collect::<Vec<_>>()
    );
    // Its own report per variant: the tests run in parallel.
    let report = report_path(&format!("{name}{}", if traps { "-traps" } else { "" }));
    let mut extra: Vec<&str> = module.map(|m| vec!["--module", m]).unwrap_or_default();
    if traps {
        extra.push("--traps");
    }
    let att = Attached::start_with(pid, how, &report, &extra);
    let unpatched = report_patched(&name, &before, pid, &exe);
    let copies_during = copy_entries(pid, module);
    for (mempcpy, memcpy, k) in &pairs {
        let k = *k as usize;
        let (was, now) = (&copies_before[memcpy].1, &copies_during[memcpy].1);
        assert_eq!(
            was[k..k + 2],
            now[k..k + 2],
            "{name}: {memcpy} patched over its +{k}, where {mempcpy} jumps in"
        );
    }
    p.round(2);
    p.round(3);
    att.detach();
    let after = snapshot(pid, &exe);
    assert_unchanged(&name, &before, &after);
    assert_eq!(
        copy_entries(pid, module),
        copies_before,
        "{name}: copy functions restored"
    );
    p.round(4);
    let (st, got) = p.finish();
    assert!(
        st.success(),
        "{name}: exit with xcover: {st}\n{}",
        got.join("\n")
    );
    assert_same_transcript(&name, &want, &got);
    check_report(&name, &report, &["work", "thread"], &[], &unpatched);

    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let funcs = v["functions"].as_array().unwrap();
    let find = |n: &str| funcs.iter().find(|f| f["name"].as_str() == Some(n));
    let mut used = Vec::new();
    for (mempcpy, memcpy, k) in &pairs {
        let f = find(memcpy).unwrap_or_else(|| panic!("{name}: {memcpy} not in the report"));
        // Skipped: for being entered from outside (or a reason of its own); hooked: by a
        // patch that stops before +k (checked above).
        if let Some(why) = f["skipped"].as_str()
            && why.starts_with("entered at")
        {
            assert_eq!(
                why,
                format!("entered at +{k} from {mempcpy}+0x6"),
                "{name}: {memcpy}"
            );
        }
        let hits = find(mempcpy).and_then(|f| f["hits"].as_u64()).unwrap_or(0);
        if hits > 0 {
            used.push(mempcpy.clone());
        }
    }
    assert!(
        !used.is_empty(),
        "{name}: none of the checked __mempcpy_* was hit while hooked: {pairs:?}"
    );
    let entered: Vec<_> = funcs
        .iter()
        .filter(|f| {
            f["skipped"]
                .as_str()
                .is_some_and(|s| s.starts_with("entered at +3 from __mempcpy_"))
        })
        .collect();
    if traps {
        assert!(
            entered.is_empty(),
            "{name}: skipped for a branch from __mempcpy_* despite --traps: {entered:?}"
        );
        let trapped: Vec<_> = pairs
            .iter()
            .filter(|(_, memcpy, _)| find(memcpy).is_some_and(|f| f["hook"] == "trap"))
            .map(|(_, memcpy, _)| memcpy.clone())
            .collect();
        assert!(
            !trapped.is_empty(),
            "{name}: no __memcpy_* hooked by a trap"
        );
        for (_, memcpy, _) in &pairs {
            let f = find(memcpy).unwrap();
            assert!(f["skipped"].is_null(), "{name}: {memcpy} skipped: {f}");
        }
        let trap_hits: u64 = trapped
            .iter()
            .filter_map(|m| find(m).and_then(|f| f["hits"].as_u64()))
            .sum();
        eprintln!("{name}: hooked by trap: {trapped:?}, {trap_hits} hits between them");
    } else {
        assert!(
            !entered.is_empty(),
            "{name}: no __memcpy_* skipped for a branch from its __mempcpy_*"
        );
    }
    eprintln!(
        "{name}: {} functions reported, {} skipped for an entry from __mempcpy_*; this CPU's \
         mempcpy: {used:?}",
        funcs.len(),
        entered.len()
    );
}

/// `gcc -static`: its own libc is in the main executable, so a plain attach hooks it all.
#[test]
fn memwork_static_libc_in_the_executable() {
    warm_up();
    memwork_all_of_libc(memwork_static(), Detach::Keep, None, false);
}

/// The same with `--traps`: the `__memcpy_*` entered from their `__mempcpy_*` are hooked by
/// a trap; output, bytes and exit unchanged.
#[test]
fn memwork_static_with_traps() {
    warm_up();
    memwork_all_of_libc(memwork_static(), Detach::Keep, None, true);
}

/// Against libc.so.6, attached with `--module libc.so.6`: every function of both.
#[test]
fn memwork_dynamic_with_module_libc() {
    warm_up();
    memwork_all_of_libc(
        memwork_dynamic(),
        Detach::Interrupt,
        Some("libc.so.6"),
        false,
    );
}

/// Against libc.so.6 with `--module libc.so.6 --traps`.
#[test]
fn memwork_dynamic_with_module_libc_and_traps() {
    warm_up();
    memwork_all_of_libc(
        memwork_dynamic(),
        Detach::Interrupt,
        Some("libc.so.6"),
        true,
    );
}
