//! Process trees (issue 17): a master with forked workers, bash subshells. Whichever way a
//! session was started, no process keeps any of it after a detach: every pid is checked
//! (its mappings, the code bytes of the hooked functions, the agent's image), and every
//! process still computes right.
//!
//! The server is `tests/targets/prefork.c` (a master, workers it forks, commands on stdin).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use xcover_injector::SessionFile;
use xcover_testsupport::inspect::{code_bytes, func_addrs, maps};
use xcover_testsupport::report::{hits, read_report};

use crate::faults::{LIMIT, Xcover, tmp_path, wait_live};
use crate::support;

/// The functions of `prefork.c` whose bytes are compared in every process.
const FUNCS: &[&str] = &["job", "idle_tick", "dispatch", "main"];

fn prefork_exe() -> PathBuf {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/targets/prefork.c");
    support::build_once("prefork", "cc", &["-O2", "-Wall", src.to_str().unwrap()])
}

/// A running prefork server.
struct Prefork {
    child: Child,
    stdin: ChildStdin,
    out: BufReader<ChildStdout>,
    workers: Vec<i32>,
}

impl Prefork {
    fn start(n: usize) -> Prefork {
        let mut child = Command::new(prefork_exe())
            .arg(n.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start prefork");
        let stdin = child.stdin.take().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let mut p = Prefork {
            child,
            stdin,
            out,
            workers: Vec::new(),
        };
        let pids = p.pids_after("ready");
        p.workers = pids;
        p
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.out.read_line(&mut l).unwrap();
        l.trim_end().to_string()
    }

    fn pids_after(&mut self, word: &str) -> Vec<i32> {
        let l = self.line();
        let mut it = l.split_whitespace();
        assert_eq!(it.next(), Some(word), "{l}");
        it.map(|p| p.parse().unwrap()).collect()
    }

    fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// SIGUSR1: the master forks two workers.
    fn fork_two(&mut self) -> Vec<i32> {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.pid(), libc::SIGUSR1) };
        let pids = self.pids_after("forked");
        assert_eq!(pids.len(), 2);
        self.workers.extend(&pids);
        pids
    }

    /// Every worker runs `job` k times; asserts every one computed right.
    fn jobs(&mut self, k: u32) {
        self.send(&format!("job {k}"));
        let n = self.workers.len();
        assert_eq!(self.line(), format!("jobs {n}/{n}"));
    }

    /// Ends the server; asserts every worker exited 0 (every result it computed was right).
    fn quit(mut self) {
        let n = self.workers.len();
        self.send("quit");
        assert_eq!(self.line(), format!("exit {n}/{n}"));
        assert!(self.child.wait().unwrap().success());
    }

    fn all(&self) -> Vec<i32> {
        std::iter::once(self.pid())
            .chain(self.workers.iter().copied())
            .collect()
    }
}

/// Asserts that `pid` holds nothing of any session: no session mapped, no thread traced,
/// no agent at `agent_base`, and the code of [`FUNCS`] as it was (`code`).
fn assert_untouched(pid: i32, agent_base: u64, addrs: &[u64], code: &[Vec<u8>]) {
    assert!(
        !maps(pid).iter().any(|l| is_session(l)),
        "pid {pid} still maps a session: {:?}",
        maps(pid)
    );
    support::assert_clean(pid, agent_base);
    assert_eq!(
        code_bytes(pid, addrs),
        code,
        "pid {pid}: code bytes restored"
    );
}

/// The agent's base in the session of `pid` (live).
fn agent_base(pid: i32) -> u64 {
    SessionFile::open(pid)
        .expect("session")
        .header()
        .agent_base
        .load(Ordering::Acquire)
}

/// Workers forked while the master is attached (without `--tree`) inherit its hooks and
/// count into its session; the detach takes everything out of each of them too, and a
/// direct attach to one is refused (it would stack a second set of hooks).
#[test]
fn detach_cleans_every_child_forked_while_attached() {
    let mut s = Prefork::start(3);
    let pid = s.pid();
    let exe = prefork_exe();
    let addrs = func_addrs(pid, &exe, FUNCS);
    let code = code_bytes(pid, &addrs);
    let report = tmp_path("prefork.json");
    let x = Xcover::spawn(&[
        "attach",
        &pid.to_string(),
        "--no-tui",
        "--duration",
        "1.5",
        "--report",
        report.to_str().unwrap(),
    ]);
    assert!(wait_live(pid, LIMIT), "{}", x.stderr());
    let base = agent_base(pid);
    let forked = s.fork_two();
    for &w in &forked {
        assert!(
            maps(w).iter().any(|l| is_session(l)),
            "a worker forked while attached carries the session"
        );
    }
    s.jobs(10);
    let out = support::run_xcover(&["attach", &forked[0].to_string(), "--no-tui"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("carries the hooks of pid {pid}")),
        "{err}"
    );
    let (code_rc, err) = x.wait(LIMIT);
    assert_eq!(code_rc, 0, "{err}");
    assert!(
        err.contains("2 processes forked from it carried its hooks"),
        "{err}"
    );
    for p in s.all() {
        assert_untouched(p, base, &addrs, &code);
    }
    let r = read_report(&report);
    // Only the two workers forked while attached ran hooked code: 2 × 10 calls.
    assert_eq!(hits(&r, "job").0, 20, "job");
    assert_eq!(hits(&r, "dispatch").0, 1, "dispatch");
    // Everyone still computes right, with nothing of xcover left.
    s.jobs(50);
    s.fork_two();
    s.jobs(5);
    s.quit();
}

/// bash forks a subshell per iteration, each running a loop of builtins: those running at
/// the detach carry the hooks and are cleaned; every subshell's result is right.
#[test]
fn bash_subshells_keep_no_hooks_after_detach() {
    let bash = xcover_testsupport::tools::require("bash", "bash");
    let out = tmp_path("subshells.txt");
    let script = format!(
        "while :; do ( i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo $i ) >> {} & \
         wait; done",
        out.display()
    );
    let mut b = Command::new(bash).arg("-c").arg(&script).spawn().unwrap();
    let pid = b.id() as i32;
    std::thread::sleep(Duration::from_millis(200));
    let x = Xcover::spawn(&["attach", &pid.to_string(), "--no-tui", "--duration", "1"]);
    assert!(wait_live(pid, LIMIT), "{}", x.stderr());
    let base = agent_base(pid);
    let (rc, err) = x.wait(LIMIT);
    assert_eq!(rc, 0, "{err}");
    assert!(err.contains("forked from it carried its hooks"), "{err}");
    let mut pids = vec![pid];
    pids.extend(
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap()
            .split_whitespace()
            .map(|p| p.parse::<i32>().unwrap()),
    );
    for p in pids {
        assert_nothing_left(p, base);
    }
    std::thread::sleep(Duration::from_millis(500));
    b.kill().unwrap();
    b.wait().unwrap();
    let results = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<&str> = results.lines().collect();
    assert!(lines.len() >= 5, "{results}");
    assert!(lines.iter().all(|l| *l == "20000"), "{results}");
}

/// For a process that may exit any moment: if it still runs, it maps no session and has no
/// agent at `base`.
fn assert_nothing_left(pid: i32, base: u64) {
    let Ok(m) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return;
    };
    assert!(
        !m.lines().any(is_session),
        "pid {pid} still maps a session: {m}"
    );
    let id = xcover_injector::elf::AgentImage::parse(support::AGENT)
        .unwrap()
        .identity()
        .to_vec();
    let mut buf = vec![0u8; id.len()];
    let same = std::fs::File::open(format!("/proc/{pid}/mem")).is_ok_and(|f| {
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, base).is_ok() && buf == id
    });
    assert!(!same, "pid {pid}: agent still at {base:#x}");
}

/// Whether a line of `/proc/<pid>/maps` maps a session.
fn is_session(line: &str) -> bool {
    line.contains("/dev/shm/xcover-") || line.contains("memfd:xcover")
}

/// The target exits while a child it forked while hooked runs on: the end of the session
/// takes the hooks out of the child too, and the child's result is right.
#[test]
fn target_exit_leaves_no_hooks_in_its_children() {
    let bash = xcover_testsupport::tools::require("bash", "bash");
    let out = tmp_path("orphan.txt");
    let script = format!(
        "read go; ( i=0; while [ $i -lt 60000 ]; do i=$((i+1)); done; echo $i > {} ) & \
         echo $!; exit 0",
        out.display()
    );
    let mut b = Command::new(bash)
        .arg("-c")
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = b.id() as i32;
    let x = Xcover::spawn(&["attach", &pid.to_string(), "--no-tui", "--duration", "20"]);
    assert!(wait_live(pid, LIMIT), "{}", x.stderr());
    let base = agent_base(pid);
    writeln!(b.stdin.as_mut().unwrap(), "go").unwrap();
    let mut l = String::new();
    BufReader::new(b.stdout.take().unwrap())
        .read_line(&mut l)
        .unwrap();
    let child: i32 = l.trim().parse().unwrap();
    assert!(b.wait().unwrap().success());
    let (rc, err) = x.wait(LIMIT);
    assert_eq!(rc, 0, "{err}");
    assert!(
        err.contains(&format!(
            "pid {pid}: 1 process forked from it carried its hooks"
        )),
        "{err}"
    );
    // The child is still running its loop (it takes far longer than the detach).
    assert!(
        std::fs::read_to_string(format!("/proc/{child}/maps")).is_ok(),
        "the child runs on"
    );
    assert_nothing_left(child, base);
    let deadline = std::time::Instant::now() + LIMIT;
    while std::fs::read_to_string(&out).map_or(true, |s| s.is_empty()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the child never finished"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "60000\n");
}
