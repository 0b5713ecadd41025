//! What the integration tests share beyond `xcover-testsupport`: the C targets of
//! `tests/targets/` (built with the system `cc` once per test run, into a temporary
//! directory) and their "ready / SIGUSR1 / result line" protocol, the `xcover` binary under
//! test and its agent, the test probes of `tests/probes/`.
#![allow(dead_code)]

use std::io::{BufReader, Read, Write};
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
    xcover_testsupport::xcover::run(Path::new(env!("CARGO_BIN_EXE_xcover")), args)
}

/// Runs `xcover` with `args`, asserting success; returns stderr then stdout.
pub fn xcover_ok(args: &[&str]) -> String {
    xcover_testsupport::xcover::ok(Path::new(env!("CARGO_BIN_EXE_xcover")), args)
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

/// The directory holding every built target (all of [`VARIANTS`], built in parallel).
pub fn targets_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/targets");
        let dir = build_dir();
        std::thread::scope(|s| {
            for (name, file, flags) in VARIANTS {
                let (src, dir) = (&src, &dir);
                s.spawn(move || {
                    let mut args = flags.to_vec();
                    let file = src.join(file);
                    args.extend(["-Wall", file.to_str().unwrap()]);
                    xcover_testsupport::build::build_once(dir, name, "cc", &args)
                });
            }
        });
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
        let (mut child, stdout) = xcover_testsupport::process::spawn_ready(
            Command::new(target_path(name))
                .args(args)
                .envs(env.iter().copied())
                .stdin(Stdio::piped())
                .stderr(Stdio::inherit()),
            name,
        );
        let stdin = child.stdin.take();
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
        xcover_testsupport::process::signal(self.pid(), sig);
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

pub use xcover_testsupport::inspect::{mapped, maps, session_path, tracer_pids};

/// Asserts that nothing of xcover is left in `pid`: no session file, no tracer, no mapping
/// of the session or at `agent_base`.
pub fn assert_clean(pid: i32, agent_base: u64) {
    xcover_testsupport::inspect::assert_no_session(pid);
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
    xcover_testsupport::tmp::run_dir("xcover-targets-")
}

/// Builds `name` in [`build_dir`] by running `program args… -o <path>` (a C or C++ compiler,
/// or `rustc`), once per test run however many tests ask, and returns its path.
pub fn build_once(name: &str, program: &str, args: &[&str]) -> PathBuf {
    xcover_testsupport::build::build_once(&build_dir(), name, program, args)
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
