//! A Go program with every function hooked, the runtime included: Go's register ABI (the
//! goroutine in R14), goroutine stacks that grow and move, and the garbage collector, while
//! counting exactly.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, ChildStdout, Command, Stdio};
use std::sync::OnceLock;

use xcover_testsupport::inspect;
use xcover_testsupport::process::{Reaper, spawn_ready};

use crate::support::{run_xcover, session_path, tracer_pids};

/// Builds `tests/targets/go/gotarget.go` once per test run; fails the test when Go is not
/// installed.
fn go_target() -> PathBuf {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| go_build(&[])).clone()
}

/// The same, linked with `-ldflags=-s`: no `.symtab`, only `.gopclntab` names functions.
fn go_target_stripped() -> PathBuf {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| go_build(&["-ldflags=-s"])).clone()
}

fn go_build(flags: &[&str]) -> PathBuf {
    {
        let go = xcover_testsupport::tools::require("go", "golang-go");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/targets/go/gotarget.go");
        let dir = xcover_testsupport::tmp::run_dir("xcover-go-");
        let exe = dir.join(if flags.is_empty() {
            "gotarget"
        } else {
            "gotarget-stripped"
        });
        let out = Command::new(go)
            .arg("build")
            .args(flags)
            .arg("-o")
            .arg(&exe)
            .arg(&src)
            .env("GOCACHE", dir.join("cache"))
            .env("GOPATH", dir.join("gopath"))
            .env("GO111MODULE", "off")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "go build: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        exe
    }
}

struct GoTarget {
    child: Reaper,
    stdin: ChildStdin,
    out: BufReader<ChildStdout>,
}

impl GoTarget {
    fn start(exe: &Path) -> GoTarget {
        let (mut child, out) = spawn_ready(Command::new(exe).stdin(Stdio::piped()), "gotarget");
        let stdin = child.stdin.take().unwrap();
        GoTarget {
            child: Reaper(child),
            stdin,
            out,
        }
    }

    fn cmd(&mut self, c: &str) -> String {
        writeln!(self.stdin, "{c}").unwrap();
        let mut l = String::new();
        self.out.read_line(&mut l).unwrap();
        l
    }
}

/// The first bytes of the named functions (Go executables are not PIE here: nm values are
/// runtime addresses).
fn code_bytes(pid: i32, exe: &Path, names: &[&str]) -> Vec<Vec<u8>> {
    inspect::code_bytes(pid, &inspect::nm_addrs(exe, names))
}

#[test]
fn go_program_with_every_function_hooked() {
    every_function_hooked(&go_target(), false);
}

/// The same program stripped (`go build -ldflags=-s`): every function is found in
/// `.gopclntab` under its Go name, the same ones at the same addresses as with symbols.
#[test]
fn stripped_go_program_with_every_function_hooked() {
    let exe = go_target_stripped();
    let listing = |exe: &Path| {
        let mut t = GoTarget::start(exe);
        let o = run_xcover(&["functions", &t.child.pid().to_string()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        writeln!(t.stdin, "quit").unwrap();
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f[0].to_string(), f[2].to_string())
            })
            .collect::<Vec<_>>()
    };
    let with = listing(&go_target());
    let without = listing(&exe);
    assert!(with.iter().all(|(_, s)| s == "symtab"));
    let other: Vec<_> = without
        .iter()
        .filter(|(_, s)| s != "pclntab")
        .take(5)
        .collect();
    assert!(other.is_empty(), "not from .gopclntab: {other:?}");
    let addrs = |l: &[(String, String)]| l.iter().map(|(a, _)| a.clone()).collect::<Vec<_>>();
    assert_eq!(
        addrs(&with),
        addrs(&without),
        "other functions without .symtab"
    );
    every_function_hooked(&exe, true);
}

/// Runs the Go target under xcover with every function hooked and checks its output, the
/// counts and the restored code. `stripped`: `exe` has no `.symtab` (names from
/// `.gopclntab`, code addresses from the unstripped build, whose layout is the same).
fn every_function_hooked(exe: &Path, stripped: bool) {
    let exe = exe.to_path_buf();
    let nm_exe = go_target();
    let mut reference = GoTarget::start(&exe);
    let want: Vec<String> = ["run", "par", "par", "run"]
        .iter()
        .map(|c| reference.cmd(c))
        .collect();

    let mut t = GoTarget::start(&exe);
    let pid = t.child.pid();
    let ps = pid.to_string();
    let probe = ["main.f1", "main.f3", "runtime.mallocgc", "runtime.newstack"];
    let before = code_bytes(pid, &nm_exe, &probe);
    let o = run_xcover(&["attach", &ps, "--no-tui", "--keep"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let mut got = vec![t.cmd("run"), t.cmd("par"), t.cmd("par")];
    let json = std::env::temp_dir().join(format!("xcover-go-{pid}.json"));
    let o = run_xcover(&["detach", &ps, "--report", json.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    got.push(t.cmd("run"));
    assert_eq!(got, want, "the Go program's output changed under xcover");
    assert_eq!(
        code_bytes(pid, &nm_exe, &probe),
        before,
        "code bytes not restored"
    );
    assert!(!session_path(pid).exists());
    assert!(tracer_pids(pid).iter().all(|&p| p == 0));

    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let f = |name: &str| {
        r["functions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing"))
            .clone()
    };
    // run: f1 × 1000, f3 × 7; each par: 16 goroutines × (2000 + 200) f1 calls. The per-CPU
    // counts take no lock: a thread that migrates between reading its CPU number and its add
    // can, racing another thread on the old CPU, lose one count (bpf/cover.bpf.c). Never
    // more hits than calls. (Before the JIT made the increment one instruction, preemption
    // between its load and store lost ~1 % here.)
    let f1 = f("main.f1")["hits"].as_u64().unwrap();
    let calls = 1000 + 2 * 16 * 2200;
    assert!(
        f1 <= calls && f1 >= calls - calls / 1000,
        "main.f1: {f1} hits for {calls} calls"
    );
    assert_eq!(f("main.f3")["hits"], 7);
    // Entries, not calls: after a stack growth Go's morestack re-runs a function from its
    // entry, so deep() is entered at least as often as it is called.
    assert!(f("main.deep")["hits"].as_u64().unwrap() >= 2 * 16 * 201);
    assert!(f("runtime.mallocgc")["hits"].as_u64().unwrap() > 0);
    assert!(
        f("runtime.newstack")["hits"].as_u64().unwrap() > 0,
        "no stack grew"
    );
    // Goroutines return into goexit+1: hooking it would break every goroutine's exit.
    if stripped {
        assert_eq!(f("main.f1")["source"], "pclntab");
    }
    // .gopclntab names it without the ABI suffix .symtab gives it.
    let goexit = if stripped {
        "runtime.goexit"
    } else {
        "runtime.goexit.abi0"
    };
    assert_eq!(
        f(goexit)["skipped"],
        "entered at its second byte (a top frame's call)"
    );
    let hooked = r["functions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f.get("skipped").is_none())
        .count();
    assert!(hooked > 1000, "only {hooked} functions hooked");
    writeln!(t.stdin, "quit").unwrap();
}
