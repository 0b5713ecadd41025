//! Helpers shared by the integration tests: building the C targets in `tests/targets/`
//! with the system `cc` (once per test run, into a temporary directory), running them with
//! their "ready / SIGUSR1 / result line" protocol, and running the `xcover` binary.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::sync::OnceLock;

/// The agent, as embedded in `xcover`.
pub static AGENT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/xcover_agent.so"));

/// The `xcover` binary under test.
pub fn xcover() -> Command {
    Command::new(env!("CARGO_BIN_EXE_xcover"))
}

/// Runs `xcover` with `args` and returns its output.
pub fn run_xcover(args: &[&str]) -> Output {
    xcover()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run xcover")
}

/// Each target variant: (name, source, cc flags).
const VARIANTS: &[(&str, &str, &[&str])] = &[
    ("loop-O0-pie", "loop.c", &["-O0", "-fPIE", "-pie"]),
    ("loop-O2-pie", "loop.c", &["-O2", "-fPIE", "-pie"]),
    ("loop-O0-nopie", "loop.c", &["-O0", "-fno-pie", "-no-pie"]),
    ("loop-O2-nopie", "loop.c", &["-O2", "-fno-pie", "-no-pie"]),
    ("threads", "threads.c", &["-O2", "-pthread"]),
    (
        "threads-O0-nopie",
        "threads.c",
        &["-O0", "-pthread", "-fno-pie", "-no-pie"],
    ),
    ("pipe_read", "pipe_read.c", &["-O2"]),
    ("sleeper", "sleeper.c", &["-O2"]),
    (
        "malloc_dlopen",
        "malloc_dlopen.c",
        &["-O2", "-pthread", "-ldl"],
    ),
    ("libdso.so", "dso.c", &["-O2", "-shared", "-fPIC"]),
];

/// Per-run entries the tests make in the temporary directory, `<prefix><pid>` (directories,
/// or report files named after a target's pid).
const RUN_PREFIXES: &[&str] = &[
    "xcover-targets-",
    "xcover-faults-",
    "xcover-go-",
    "xcover-e2e-bin-",
    "xcover-e2e-",
    "xcover-interceptor-",
    "xcover-bpf-rebuild-",
    "xcover-agent-",
];

/// Removes what earlier test runs left in the temporary directory: entries named
/// `<prefix><pid>` (plus an extension) whose process is gone. A run cannot clean up after
/// itself (the test harness has no hook at its end), so each run sweeps its predecessors';
/// a run still going keeps its files. Once per run.
pub fn sweep_earlier_runs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(rest) = RUN_PREFIXES.iter().find_map(|p| name.strip_prefix(p)) else {
                continue;
            };
            let digits = rest.split('.').next().unwrap_or("");
            let Ok(pid) = digits.parse::<u32>() else {
                continue;
            };
            if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            let path = e.path();
            let _ = match e.file_type() {
                Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
                _ => std::fs::remove_file(&path),
            };
        }
    });
}

/// The directory holding every built target.
pub fn targets_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        sweep_earlier_runs();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/targets");
        let dir = std::env::temp_dir().join(format!("xcover-targets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create targets dir");
        let builds: Vec<_> = VARIANTS
            .iter()
            .map(|(name, file, flags)| {
                let child = Command::new("cc")
                    .args(*flags)
                    .arg("-Wall")
                    .arg("-o")
                    .arg(dir.join(name))
                    .arg(src.join(file))
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("run cc");
                (name, child)
            })
            .collect();
        for (name, child) in builds {
            let out = child.wait_with_output().expect("wait cc");
            assert!(
                out.status.success(),
                "cc {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        dir
    })
}

/// Path of a built target.
pub fn target_path(name: &str) -> PathBuf {
    targets_dir().join(name)
}

/// A running target process.
pub struct Target {
    /// The process.
    pub child: Child,
    /// Its stdin (a pipe), until [`Target::finish`] closes it.
    pub stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Target {
    /// Starts a target and waits for its "ready" line.
    pub fn start(name: &str, args: &[&str]) -> Target {
        Self::start_env(name, args, &[])
    }

    /// [`Target::start`] with extra environment variables.
    pub fn start_env(name: &str, args: &[&str], env: &[(&str, &str)]) -> Target {
        let mut child = Command::new(target_path(name))
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read ready");
        assert_eq!(line, "ready\n", "{name} did not say ready");
        Target {
            child,
            stdin,
            stdout,
        }
    }

    /// The pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends a signal.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill has no memory-safety preconditions.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }

    /// Writes to its stdin.
    pub fn write_stdin(&mut self, data: &[u8]) {
        self.stdin.as_mut().unwrap().write_all(data).unwrap();
    }

    /// Closes stdin, waits for the exit and returns (exit code, rest of stdout).
    pub fn finish(mut self) -> (i32, String) {
        drop(self.stdin.take());
        let mut out = String::new();
        self.stdout.read_to_string(&mut out).unwrap();
        let st = self.child.wait().unwrap();
        (st.code().unwrap_or(-1), out)
    }

    /// Sends SIGUSR1 and finishes.
    pub fn stop(self) -> (i32, String) {
        self.signal(libc::SIGUSR1);
        self.finish()
    }

    /// Whether it is still running (not exited, not a zombie).
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `/proc/<pid>/maps`, one line per mapping.
pub fn maps(pid: i32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Whether any mapping of `pid` contains `addr`.
pub fn mapped(pid: i32, addr: u64) -> bool {
    maps(pid).iter().any(|l| {
        let r = l.split_whitespace().next().unwrap();
        let (a, b) = r.split_once('-').unwrap();
        let (a, b) = (
            u64::from_str_radix(a, 16).unwrap(),
            u64::from_str_radix(b, 16).unwrap(),
        );
        (a..b).contains(&addr)
    })
}

/// TracerPid of every thread of `pid`.
pub fn tracer_pids(pid: i32) -> Vec<i32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let s = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
        if let Some(l) = s.lines().find(|l| l.starts_with("TracerPid:")) {
            v.push(l[10..].trim().parse().unwrap());
        }
    }
    v
}

/// The session file path of `pid`.
pub fn session_path(pid: i32) -> PathBuf {
    PathBuf::from(format!("/dev/shm/xcover-{pid}"))
}

/// Asserts that nothing of xcover is left in `pid`: no session file, no tracer, no mapping
/// of the session or at `agent_base`.
pub fn assert_clean(pid: i32, agent_base: u64) {
    assert!(!session_path(pid).exists(), "session file left for {pid}");
    assert!(
        tracer_pids(pid).iter().all(|&t| t == 0),
        "pid {pid} still traced: {:?}",
        tracer_pids(pid)
    );
    let m = maps(pid);
    assert!(
        !m.iter().any(|l| l.contains("/dev/shm/xcover-")),
        "session still mapped in {pid}"
    );
    if agent_base != 0 && mapped(pid, agent_base) {
        // The range may have been reused since (the malloc/dlopen target maps libraries all
        // the time): it must not hold the agent any more.
        let img = xcover_injector::elf::AgentImage::parse(AGENT).unwrap();
        let id = img.identity();
        let mut buf = vec![0u8; id.len()];
        let f = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
        let same = std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, agent_base).is_ok()
            && buf == id;
        assert!(!same, "agent still mapped at {agent_base:#x}");
    }
}

/// The per-run directory [`targets_dir`] builds into, created but without building anything
/// in it: for targets built on demand by [`build_once`].
pub fn build_dir() -> PathBuf {
    sweep_earlier_runs();
    let dir = std::env::temp_dir().join(format!("xcover-targets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create targets dir");
    dir
}

/// Builds `name` in [`build_dir`] by running `program args… -o <path>` (a C or C++ compiler,
/// or `rustc`), once per test run however many tests ask, and returns its path. Different
/// names build in parallel; callers of the same name wait for the one build.
pub fn build_once(name: &str, program: &str, args: &[&str]) -> PathBuf {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    type Cells = Mutex<HashMap<String, Arc<OnceLock<Result<PathBuf, String>>>>>;
    static CELLS: OnceLock<Cells> = OnceLock::new();
    let cell = CELLS
        .get_or_init(Default::default)
        .lock()
        .unwrap()
        .entry(name.to_string())
        .or_default()
        .clone();
    let built = cell.get_or_init(|| {
        let out = build_dir().join(name);
        let res = Command::new(program)
            .args(args)
            .arg("-o")
            .arg(&out)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run {program}: {e}"))?;
        if !res.status.success() {
            return Err(format!(
                "{program} {}: {}\n{}",
                args.join(" "),
                res.status,
                String::from_utf8_lossy(&res.stderr)
            ));
        }
        Ok(out)
    });
    match built {
        Ok(p) => p.clone(),
        Err(e) => panic!("building {name}: {e}"),
    }
}

/// Compiles the test probe `tests/probes/<src>` with clang (`-target bpf`) into `<out>`,
/// once per test run, with the extra arguments `extra` (`-DNAME=value`).
pub fn build_probe(src: &str, out: &str, extra: &[&str]) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/probes")
        .join(src);
    let mut args = vec![
        "-O2", "-g", "-target", "bpf", "-mcpu=v3", "-Wall", "-Werror",
    ];
    args.extend_from_slice(extra);
    args.extend(["-c", src.to_str().unwrap()]);
    build_once(out, "clang", &args)
}
