//! The injector against real processes: attach, check the agent ran inside, detach, and
//! check the target did not notice (same result line as a run without xcover) and nothing
//! of xcover is left in it.

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use xcover_injector::elf::AgentImage;
use xcover_injector::{AttachOptions, Error, SessionFile, StoppedProcess, nr};
use xcover_session::{FLAG_KEEP, SessionState};

use crate::support::{self, AGENT, Target};

/// The result line of a run without xcover.
fn baseline(name: &str, args: &[&str]) -> (i32, String) {
    let t = Target::start(name, args);
    std::thread::sleep(Duration::from_millis(50));
    t.stop()
}

/// Waits until the session of `pid` is Live and returns (agent_calls, agent_base).
fn wait_live(pid: i32) -> (u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(s) = SessionFile::open(pid) {
            let h = s.header();
            if h.state.load(Ordering::Acquire) == SessionState::Live as u32 {
                return (
                    h.agent_calls.load(Ordering::Acquire),
                    h.agent_base.load(Ordering::Acquire),
                );
            }
        }
        assert!(
            Instant::now() < deadline,
            "session of {pid} never became live"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `xcover attach <pid> --no-tui --duration <secs>` on a running target, checking the
/// session while attached; returns the agent's base address.
fn attach_for(pid: i32, secs: &str) -> u64 {
    let child = support::xcover()
        .args(["attach", &pid.to_string(), "--no-tui", "--duration", secs])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (calls, base) = wait_live(pid);
    assert!(calls >= 1, "agent_calls = {calls}: the agent did not run");
    assert!(
        base != 0 && support::mapped(pid, base),
        "agent not mapped while live"
    );
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "xcover attach failed: {err}");
    assert!(err.contains("detached from pid"), "{err}");
    base
}

fn roundtrip_cli(name: &str) {
    let want = baseline(name, &[]);
    assert_eq!(want.0, 0, "{name} baseline: {}", want.1);
    let mut t = Target::start(name, &[]);
    let before = support::maps(t.pid());
    let base = attach_for(t.pid(), "0.3");
    assert!(t.alive(), "{name} died");
    support::assert_clean(t.pid(), base);
    if !name.starts_with("threads") {
        assert_eq!(support::maps(t.pid()), before, "{name}: mappings changed");
    }
    assert_eq!(
        t.stop(),
        want,
        "{name}: result differs from a run without xcover"
    );
}

#[test]
fn loop_o0_pie() {
    roundtrip_cli("loop-O0-pie");
}
#[test]
fn loop_o2_pie() {
    roundtrip_cli("loop-O2-pie");
}
#[test]
fn loop_o0_nopie() {
    roundtrip_cli("loop-O0-nopie");
}
#[test]
fn loop_o2_nopie() {
    roundtrip_cli("loop-O2-nopie");
}
#[test]
fn threads_8() {
    roundtrip_cli("threads");
}
#[test]
fn threads_8_o0_nopie() {
    roundtrip_cli("threads-O0-nopie");
}

#[test]
fn blocked_read_gets_its_bytes() {
    let mut t = Target::start("pipe_read", &[]);
    std::thread::sleep(Duration::from_millis(50));
    let before = support::maps(t.pid());
    let base = attach_for(t.pid(), "0.2");
    support::assert_clean(t.pid(), base);
    assert_eq!(support::maps(t.pid()), before);
    let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
    t.write_stdin(&data);
    let (code, out) = t.finish();
    let mut sum: u64 = 0;
    for &b in &data {
        sum = sum.wrapping_mul(31).wrapping_add(b as u64);
    }
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, format!("bytes={} checksum={sum:016x}\n", data.len()));
}

fn sleeper(mode: &str) {
    let t = Target::start("sleeper", &["1200", mode]);
    let base = attach_for(t.pid(), "0.3");
    support::assert_clean(t.pid(), base);
    let (code, out) = t.finish();
    assert_eq!(code, 0);
    assert!(out.starts_with("rc=0 err=0 slept_ms="), "{out}");
    let slept: f64 = out.trim().rsplit('=').next().unwrap().parse().unwrap();
    assert!(
        (1199.0..2200.0).contains(&slept),
        "slept {slept} ms instead of 1200"
    );
}

#[test]
fn nanosleep_wakes_on_time() {
    sleeper("nano");
}
#[test]
fn clock_nanosleep_wakes_on_time() {
    sleeper("clock");
}

#[test]
fn malloc_dlopen_roundtrip_and_50_cycles() {
    let lib = support::target_path("libdso.so");
    let lib = lib.to_str().unwrap();
    let mut t = Target::start("malloc_dlopen", &[lib]);
    std::thread::sleep(Duration::from_millis(50));
    let base = attach_for(t.pid(), "0.2");
    support::assert_clean(t.pid(), base);
    let mut worst = Duration::ZERO;
    for i in 0..50 {
        let a = xcover_injector::attach(t.pid(), AGENT, &AttachOptions::default())
            .unwrap_or_else(|e| panic!("cycle {i}: attach: {e}"));
        let h = a.session().header();
        assert_eq!(h.state.load(Ordering::Acquire), SessionState::Live as u32);
        assert!(h.agent_calls.load(Ordering::Acquire) >= 1);
        let base = h.agent_base.load(Ordering::Acquire);
        worst = worst.max(a.stats.stopped);
        let st = a
            .detach(AGENT)
            .unwrap_or_else(|e| panic!("cycle {i}: detach: {e}"));
        worst = worst.max(st.stopped);
        support::assert_clean(t.pid(), base);
        assert!(t.alive(), "target died in cycle {i}");
    }
    eprintln!(
        "50 cycles: longest stop {:.2} ms",
        worst.as_secs_f64() * 1e3
    );
    assert_eq!(t.stop(), (0, "malloc_dlopen ok\n".to_string()));
}

/// Runs xcover, which must succeed.
fn xcover_ok(args: &[&str]) -> std::process::Output {
    let out = support::run_xcover(args);
    assert!(
        out.status.success(),
        "xcover {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// glibc's `__rseq_offset` in this process (the same libc as the targets), when it
/// registers rseq for its threads.
fn glibc_rseq_offset() -> Option<i32> {
    // SAFETY: dlsym with RTLD_DEFAULT and NUL-terminated names; the symbols, when present,
    // are glibc's `const ptrdiff_t __rseq_offset` and `const unsigned int __rseq_size`.
    unsafe {
        let off = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_offset".as_ptr()) as *const isize;
        let size = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_size".as_ptr()) as *const u32;
        if off.is_null() || size.is_null() || *size == 0 {
            return None;
        }
        i32::try_from(*off).ok()
    }
}

/// Attaches (kept), returns the rseq `cpu_id` and TCB tid offsets xcover gave the agent,
/// detaches.
fn thread_layout_seen(t: &Target) -> (i32, i32) {
    // A worker that has not run yet has no rseq area (glibc registers it when the thread
    // starts), and then xcover rightly finds none.
    std::thread::sleep(Duration::from_millis(100));
    let pid = t.pid().to_string();
    xcover_ok(&["attach", &pid, "--no-tui", "--keep"]);
    let (off, tid_off, base) = {
        let s = SessionFile::open(t.pid()).unwrap();
        let h = s.header();
        (
            h.rseq_cpu_id_off.load(Ordering::Acquire),
            match h.probe_flags & xcover_session::PROBE_TCB_TID {
                0 => 0,
                _ => xcover_session::GLIBC_TCB_TID_OFF as i32,
            },
            h.agent_base.load(Ordering::Acquire),
        )
    };
    // Let the workers hit their hooks for a while.
    std::thread::sleep(Duration::from_millis(200));
    let report = std::env::temp_dir().join(format!("xcover-rseq-{}.json", t.pid()));
    xcover_ok(&["detach", &pid, "--report", report.to_str().unwrap()]);
    support::assert_clean(t.pid(), base);
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let _ = std::fs::remove_file(&report);
    let mix = r["functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "mix")
        .expect("mix in the report");
    assert!(mix["hits"].as_u64().unwrap() > 0, "no hit of mix counted");
    (off, tid_off)
}

/// The JIT-ed probe takes each thread's CPU number from its rseq area and its id from its
/// TCB: xcover finds the rseq area at the same distance from `%fs` in every thread of a
/// glibc target (glibc's own `__rseq_offset`, plus 4 for `cpu_id`) and none when glibc is
/// told not to register rseq (then `rdpid` is used), and each thread's own id at glibc's
/// TCB offset; both count hits and leave the target as it was.
#[test]
fn rseq_cpu_id_and_tcb_tid_are_found_in_every_thread() {
    let want = baseline("threads", &[]);
    let glibc = glibc_rseq_offset().expect(
        "this glibc registers no rseq for its threads (glibc 2.35 or later does): the half of \
         this test that finds it cannot run",
    );
    let t = Target::start("threads", &[]);
    let tcb = xcover_session::GLIBC_TCB_TID_OFF as i32;
    assert_eq!(thread_layout_seen(&t), (glibc + 4, tcb));
    assert_eq!(t.stop(), want);

    let t = Target::start_env(
        "threads",
        &[],
        &[("GLIBC_TUNABLES", "glibc.pthread.rseq=0")],
    );
    assert_eq!(thread_layout_seen(&t), (0, tcb), "no thread has rseq");
    assert_eq!(t.stop(), want);
}

/// A kept session whose target died (SIGKILL) is shown as stale, and `xcover detach` turns
/// it into a report of what was counted before and removes it: nothing left in /dev/shm.
#[test]
fn stale_session_of_a_dead_target_is_reported_and_removed() {
    let mut t = Target::start("loop-O2-pie", &[]);
    let pid = t.pid();
    let ps = pid.to_string();
    xcover_ok(&["attach", &ps, "--no-tui", "--keep"]);
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: kill has no memory-safety preconditions; pid is our child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let _ = t.child.wait();
    let st = xcover_ok(&["status", &ps]);
    let st = String::from_utf8_lossy(&st.stdout);
    assert!(st.contains("stale: the target exited"), "{st}");
    let report = std::env::temp_dir().join(format!("xcover-stale-{pid}.json"));
    let out = xcover_ok(&["detach", &ps, "--report", report.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("exited; how is unknown (xcover was not watching it); session removed"),
        "{err}"
    );
    assert!(!support::session_path(pid).exists());
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let _ = std::fs::remove_file(&report);
    let hits: u64 = r["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["hits"].as_u64().unwrap())
        .sum();
    assert!(
        hits > 0,
        "the hits counted before the kill are in the report"
    );
    let again = support::run_xcover(&["status", &ps]);
    assert_eq!(again.status.code(), Some(2), "no session any more");
}

#[test]
fn keep_then_detach() {
    let want = baseline("loop-O2-pie", &[]);
    let t = Target::start("loop-O2-pie", &[]);
    let pid = t.pid().to_string();
    xcover_ok(&["attach", &pid, "--no-tui", "--keep"]);
    let base;
    {
        let s = SessionFile::open(t.pid()).unwrap();
        let h = s.header();
        assert_eq!(h.state.load(Ordering::Acquire), SessionState::Live as u32);
        assert_eq!(h.owner_pid.load(Ordering::Acquire), 0);
        assert_ne!(h.flags & FLAG_KEEP, 0);
        base = h.agent_base.load(Ordering::Acquire);
        assert!(support::mapped(t.pid(), base));
    }
    assert!(support::tracer_pids(t.pid()).iter().all(|&x| x == 0));
    let st = support::run_xcover(&["status", &pid]);
    let st = String::from_utf8_lossy(&st.stdout);
    assert!(st.contains("live kept"), "{st}");
    // A second attach re-opens the kept session (never instruments twice): it watches it
    // and, when its time is up, leaves it kept.
    let again = support::run_xcover(&["attach", &pid, "--no-tui", "--duration", "0.1"]);
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{err}");
    assert!(err.contains("watching the kept session"), "{err}");
    assert!(
        !err.contains("functions hooked"),
        "instrumented twice: {err}"
    );
    assert!(support::mapped(t.pid(), base), "still kept");

    // Ended by `xcover detach`.
    let out = support::run_xcover(&["detach", &pid]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    support::assert_clean(t.pid(), base);
    assert_eq!(t.stop(), want);
}

#[test]
fn signals_sent_while_stopped_are_delivered_once() {
    let want_line = |n: i32| {
        let (_, w) = baseline("loop-O2-nopie", &[]);
        w.replace("usr2=0", &format!("usr2={n}"))
    };
    let t = Target::start("loop-O2-nopie", &[]);
    let pid = t.pid();
    {
        let mut sp = StoppedProcess::stop(pid).unwrap();
        t.signal(libc::SIGUSR2);
        std::thread::sleep(Duration::from_millis(20));
        let tid = sp.worker_tid().unwrap();
        // Remote work after the signal arrived: the thread dequeues it meanwhile.
        assert_eq!(sp.syscall(tid, nr::GETPID, [0; 6]).unwrap(), pid as u64);
        assert_eq!(sp.syscall(tid, nr::GETPID, [0; 6]).unwrap(), pid as u64);
    }
    std::thread::sleep(Duration::from_millis(50));
    {
        // And a thread left idle in its stop.
        let _sp = StoppedProcess::stop(pid).unwrap();
        t.signal(libc::SIGUSR2);
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(50));
    assert!(support::tracer_pids(pid).iter().all(|&x| x == 0));
    assert_eq!(t.stop(), (0, want_line(2)));
}

#[test]
fn faulting_remote_call_is_reported_and_target_survives() {
    let want = baseline("loop-O2-pie", &[]);
    let t = Target::start("loop-O2-pie", &[]);
    {
        let mut sp = StoppedProcess::stop(t.pid()).unwrap();
        let tid = sp.worker_tid().unwrap();
        let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        let mem = sp
            .syscall(tid, nr::MMAP, [0, 0x10000, rw, flags, u64::MAX, 0])
            .unwrap();
        sp.write(mem, &[0xcc]).unwrap();
        let e = sp
            .call(tid, 0x10, [0; 6], mem + 0x10000, mem)
            .expect_err("a call of address 0x10 must fault");
        assert!(matches!(e, Error::RemoteCall { .. }), "{e}");
        assert!(e.to_string().contains("faulted with signal 11"), "{e}");
        sp.syscall(tid, nr::MUNMAP, [mem, 0x10000, 0, 0, 0, 0])
            .unwrap();
    }
    assert_eq!(t.stop(), want);
}

#[test]
fn elf_loader_on_the_real_agent() {
    let img = AgentImage::parse(AGENT).unwrap();
    assert!(img.export("xcover_agent_init").unwrap() > 0);
    assert!(img.export("xcover_agent_fini").unwrap() > 0);
    assert!(img.span >= 4096 && img.span.is_multiple_of(4096));
    for (off, len, prot) in img.protections() {
        assert_eq!(off % 4096, 0);
        assert_eq!(len % 4096, 0);
        assert!(
            prot & libc::PROT_WRITE == 0 || prot & libc::PROT_EXEC == 0,
            "W+X range at {off:#x}"
        );
    }
    let base = 0x7f00_0000_0000;
    let bytes = img.build(base);
    assert_eq!(bytes.len() as u64, img.span);
    for &(off, addend) in &img.relative {
        let v = u64::from_le_bytes(bytes[off as usize..off as usize + 8].try_into().unwrap());
        assert_eq!(v, base.wrapping_add_signed(addend));
    }
    assert_eq!(&bytes[..4], b"\x7fELF");
    assert_eq!(img.identity(), &AGENT[..img.identity().len()]);
    // Nothing imported, no NEEDED, no TLS, per readelf too.
    let out = Command::new(xcover_testsupport::tools::require("readelf", "binutils"))
        .args(["-dW"])
        .arg(agent_file())
        .output()
        .unwrap();
    assert!(out.status.success(), "readelf: {out:?}");
    let d = String::from_utf8_lossy(&out.stdout);
    assert!(!d.contains("NEEDED"), "{d}");
}

fn agent_file() -> std::path::PathBuf {
    let p = support::build_dir().join("xcover-agent.so");
    std::fs::write(&p, AGENT).unwrap();
    p
}

#[test]
fn elf_loader_rejects_what_it_cannot_load() {
    let lib = std::fs::read(support::target_path("libdso.so")).unwrap();
    let e = AgentImage::parse(&lib).unwrap_err().to_string();
    assert!(
        e.contains("DT_NEEDED") || e.contains("relocation") || e.contains("initialisers"),
        "{e}"
    );
    let exe = std::fs::read(support::target_path("loop-O2-pie")).unwrap();
    let e = AgentImage::parse(&exe).unwrap_err().to_string();
    assert!(
        e.contains("needs shared library") || e.contains("PT_INTERP"),
        "{e}"
    );
    assert!(AgentImage::parse(b"not an elf").is_err());
    // An agent whose text is truncated away.
    assert!(AgentImage::parse(&AGENT[..200]).is_err());
}

fn bad_input(args: &[&str], reason: &str) {
    let out = support::run_xcover(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert!(err.contains(reason), "{args:?}: {err:?} lacks {reason:?}");
    assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");
}

#[test]
fn bad_input_no_such_pid() {
    // A reaped child's pid is free.
    let mut c = Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    bad_input(&["attach", &pid.to_string(), "--no-tui"], "no process");
    bad_input(&["detach", &pid.to_string()], "no xcover session");
}

#[test]
fn bad_input_zombie() {
    let c = Command::new("true").spawn().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    bad_input(&["attach", &c.id().to_string(), "--no-tui"], "zombie");
    let mut c = c;
    c.wait().unwrap();
}

#[test]
fn bad_input_kernel_thread() {
    let stat = std::fs::read_to_string("/proc/2/stat").unwrap_or_default();
    assert!(
        stat.contains("(kthreadd)"),
        "no kthreadd visible as pid 2 (a pid namespace?): run the tests in the host's pid \
         namespace; /proc/2/stat: {stat:?}"
    );
    bad_input(&["attach", "2", "--no-tui"], "kernel thread");
}

#[test]
fn bad_input_already_traced() {
    let t = Target::start("pipe_read", &[]);
    let pid = t.pid();
    // SAFETY: plain ptrace request on a child we own; released below by the same thread.
    let r = unsafe { libc::ptrace(libc::PTRACE_SEIZE, pid, 0, 0) };
    assert_eq!(r, 0);
    bad_input(&["attach", &pid.to_string(), "--no-tui"], "already traced");
    // SAFETY: as above.
    unsafe { libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0) };
    assert!(!support::session_path(pid).exists());
}

#[test]
fn bad_input_not_permitted() {
    let setpriv = xcover_testsupport::tools::require("setpriv", "util-linux");
    let t = Target::start("pipe_read", &[]);
    let out = Command::new(setpriv)
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_xcover"))
        .args(["attach", &t.pid().to_string(), "--no-tui"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("not allowed to trace"), "{err}");
    assert!(err.contains("ptrace_scope"), "{err}");
    assert!(!support::session_path(t.pid()).exists());
}

#[test]
fn bad_input_self_and_nonsense() {
    bad_input(&["attach", "0", "--no-tui"], "no process");
    bad_input(&["status", "999999999"], "no xcover session");
}
