//! The injector: everything xcover does to a running process from the outside.
//!
//! It stops every thread of a target with ptrace ([`StoppedProcess`]), reads and writes its
//! memory, makes remote system calls and remote function calls in a stopped thread, and
//! loads the agent (the `agent/` shared object) into the target with its own ELF
//! loader ([`elf`]).
//!
//! # Why our own loader, and not the target's `dlopen`
//!
//! The agent is never loaded with the target's `dlopen`. A remote `dlopen` runs the dynamic
//! loader inside a hijacked thread: it takes the loader lock and calls `malloc`. If another
//! thread of the target was stopped while holding either lock (a thread inside `malloc`, or
//! inside its own `dlopen`, is a common sight in a busy process), the hijacked thread waits
//! for a lock whose holder we keep stopped: attach deadlocks. (Frida avoids this by creating
//! a fresh thread in the target and letting it run the loader while the others run; we want
//! the others stopped.)
//!
//! So the agent is a self-contained `no_std` shared object that imports nothing, has no TLS
//! and no initialisers, and needs only `R_X86_64_RELATIVE` relocations. xcover loads it by
//! itself: one remote anonymous `mmap` reserves its span, the relocated segments are written
//! through `/proc/<pid>/mem`, each segment is `mprotect`ed to its flags (never writable and
//! executable at once), and the entry points are found in `.dynsym`. Running it in a
//! stopped thread takes no lock of the target's, so it cannot deadlock on one. The bytes go
//! straight from xcover's own binary into the target's memory: no file path is involved that
//! another user could write. Unloading is one remote `munmap`.
//!
//! # Modules
//! - [`sys`]: every ptrace request, wait and memory access (the only place they happen);
//! - [`procfs`]: read-only checks of a pid before it is touched;
//! - [`proc_events`]: the kernel's process events (how a process ended, whoever reaps it);
//! - [`stop`]: the stop-the-world guard and its signal bookkeeping;
//! - `remote`: remote system calls and calls (methods of [`StoppedProcess`]);
//! - [`elf`]: the agent image;
//! - [`session`]: the `/dev/shm/xcover-<pid>` file;
//! - this file: attach and detach built from those.
#![deny(missing_docs)]

pub mod elf;
mod error;
mod park;
pub mod proc_events;
pub mod procfs;
mod remote;
pub mod session;
pub mod stop;
pub mod sys;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub use error::{Error, Result};
pub use remote::nr;
pub use session::SessionFile;
pub use stop::StoppedProcess;
use xcover_session::SessionState;

use elf::{AgentImage, PAGE};

/// Name of the agent's initialisation entry point.
pub const AGENT_INIT: &str = xcover_session::entry::INIT;
/// Name of the agent's hook entry point.
pub const AGENT_HOOK: &str = xcover_session::entry::HOOK;
/// Name of the agent's entry point that writes the patches `HOOK` planned.
pub const AGENT_COMMIT: &str = xcover_session::entry::COMMIT;
/// Name of the agent's unhook entry point.
pub const AGENT_UNHOOK: &str = xcover_session::entry::UNHOOK;
/// Name of the agent's shutdown entry point.
pub const AGENT_FINI: &str = xcover_session::entry::FINI;

/// Fault injection for the recovery tests: when the environment variable `XCOVER_FAULT`
/// names this point, xcover SIGKILLs itself right here, as a `kill -9` landing at that
/// moment would. The points, in order: attach `opened` (agent loaded, session file open in
/// the target, not mapped), `loaded` (agent and session mapped, init not run), `inited`, `planned` (HOOK done, threads moved, COMMIT not run), `committed`
/// (patches in, target not resumed); detach `unhooked` (FINI not run) and `finished`
/// (FINI done, agent still mapped).
fn fault_point(name: &str) {
    static WANT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if WANT
        .get_or_init(|| std::env::var("XCOVER_FAULT").ok())
        .as_deref()
        == Some(name)
    {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

/// Size of the private stack remote calls run on (the agent's JIT, verifier and
/// interceptor run there; untouched pages cost nothing).
const STACK_SIZE: u64 = 1024 * 1024;

/// How many times `unload` lets the target run and stops it again while a thread is still
/// inside memory about to be unmapped (a trampoline, the probe, the agent), and how long it
/// lets it run each time.
const LEAVE_TRIES: u32 = 200;
/// How much of a thread's stack, from its `rsp` up, is searched for signal frames that
/// return into memory about to be unmapped (a signal frame with its extended state is ~3 KB).
const STACK_SCAN: u64 = 32 * 1024;

const LEAVE_PAUSE: Duration = Duration::from_millis(1);

/// Scratch memory in the target for one stop: the park (a code page, then its block, see
/// `park.rs`), a data area (the session path, the thread table of `HOOK`/`UNHOOK`), then a
/// private stack. Recorded in the session while it exists, so that an xcover killed
/// mid-stop leaves nothing behind for good: the next one takes it out
/// ([`clear_orphan_scratch`]).
struct Scratch {
    addr: u64,
    size: u64,
    data_size: u64,
}

impl Scratch {
    /// Maps scratch memory with room for the thread table of every thread of `sp`, and
    /// installs the park of thread `tid` in it.
    fn map(sp: &mut StoppedProcess, tid: i32, session: &SessionFile) -> Result<Scratch> {
        sp.enable_vdso_park(tid)?;
        let data_size = (16 * sp.tids().len() as u64 + 2 * PAGE).div_ceil(PAGE) * PAGE;
        let size = 2 * PAGE + data_size + STACK_SIZE;
        let addr = sp.syscall(
            tid,
            nr::MMAP,
            [
                0,
                size,
                (libc::PROT_READ | libc::PROT_WRITE) as u64,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                u64::MAX,
                0,
            ],
        )?;
        let h = session.header();
        h.scratch_size.store(size, Ordering::Release);
        h.scratch_addr.store(addr, Ordering::Release);
        let s = Scratch {
            addr,
            size,
            data_size,
        };
        let r = (|| {
            sp.syscall(
                tid,
                nr::MPROTECT,
                [
                    addr,
                    PAGE,
                    (libc::PROT_READ | libc::PROT_EXEC) as u64,
                    0,
                    0,
                    0,
                ],
            )?;
            // Written through /proc/<pid>/mem, which writes read-only pages too.
            sp.enable_park(tid, addr, addr + PAGE, s.stack_top())
        })();
        if let Err(e) = r {
            let _ = s.unmap(sp, tid, session);
            return Err(e);
        }
        Ok(s)
    }
    fn data(&self) -> u64 {
        self.addr + 2 * PAGE
    }
    fn stack_top(&self) -> u64 {
        self.addr + self.size
    }
    /// Remote calls return into the park; this `int3` is only their fallback.
    fn trap(&self) -> u64 {
        self.addr + park::CODE_SIZE as u64 - 1
    }
    fn unmap(&self, sp: &mut StoppedProcess, tid: i32, session: &SessionFile) -> Result<()> {
        sp.disable_park()?;
        sp.syscall(tid, nr::MUNMAP, [self.addr, self.size, 0, 0, 0, 0])?;
        let h = session.header();
        h.scratch_addr.store(0, Ordering::Release);
        h.scratch_size.store(0, Ordering::Release);
        Ok(())
    }
}

/// How many times [`clear_orphan_scratch`] stops the target to find its park empty.
const ORPHAN_TRIES: u32 = 3000;

/// Takes out the scratch memory an xcover killed in the middle of a stop left in the target
/// (recorded in the session): a thread still parked there is sent home (the way it would
/// go by itself after its wait), a thread still running a remote call there is let finish,
/// and then the memory is unmapped. Nothing to do (and no stop) when none is recorded.
fn clear_orphan_scratch(pid: i32, session: &SessionFile) -> Result<()> {
    let h = session.header();
    let addr = h.scratch_addr.load(Ordering::Acquire);
    let size = h.scratch_size.load(Ordering::Acquire);
    if addr == 0 {
        return Ok(());
    }
    if size == 0 || size > 1 << 30 || addr.checked_add(size).is_none() {
        return Err(Error::BadSession {
            path: session.path().to_string(),
            reason: format!("scratch memory {addr:#x} of {size} bytes: not ours"),
        });
    }
    let range = addr..addr + size;
    let p = park::Park {
        tid: 0,
        code: addr,
        wr: addr + PAGE,
        stack: addr + size - 64,
        sigs: 0,
    };
    for _ in 0..ORPHAN_TRIES {
        let mut sp = StoppedProcess::stop(pid)?;
        let mut busy = false;
        for tid in sp.tids() {
            let r = sp.regs(tid)?;
            match p.spot(r.rip) {
                park::Spot::Syscall | park::Spot::Waiting => {
                    sp.set_regs(tid, p.idle_regs(&r))?;
                    busy = true;
                }
                park::Spot::Going => busy = true,
                park::Spot::Outside => {
                    busy |= range.contains(&r.rip) || range.contains(&r.rsp);
                }
            }
        }
        if !busy {
            let tid = sp.worker_tid().ok_or(Error::NoSuchProcess { pid })?;
            sp.syscall(tid, nr::MUNMAP, [addr, size, 0, 0, 0, 0])?;
            h.scratch_addr.store(0, Ordering::Release);
            h.scratch_size.store(0, Ordering::Release);
            return sp.resume();
        }
        sp.resume()?;
        std::thread::sleep(LEAVE_PAUSE);
    }
    Err(Error::Unexpected {
        pid,
        tid: pid,
        what: format!(
            "a thread stays in the scratch memory at {addr:#x} a killed xcover left; run \
             `xcover detach {pid}` again later"
        ),
    })
}

/// Fills a freshly created session file before the target is stopped (function table,
/// probe, maps). An error aborts the attach with nothing left behind.
pub type Prepare<'a> = &'a dyn Fn(&SessionFile) -> std::result::Result<(), String>;

/// Options of [`attach`].
#[derive(Clone)]
pub struct AttachOptions<'a> {
    /// The session outlives this process (`--keep`): `FLAG_KEEP` is set.
    pub keep: bool,
    /// Size of the session file.
    pub session_size: u64,
    /// Called once the session file exists, before the target is stopped.
    pub prepare: Option<Prepare<'a>>,
}

impl std::fmt::Debug for AttachOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttachOptions")
            .field("keep", &self.keep)
            .field("session_size", &self.session_size)
            .field("prepare", &self.prepare.is_some())
            .finish()
    }
}

impl Default for AttachOptions<'_> {
    fn default() -> Self {
        AttachOptions {
            keep: false,
            session_size: session::DEFAULT_SESSION_SIZE,
            prepare: None,
        }
    }
}

/// Timings of one attach or detach.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    /// How long the target's threads were stopped.
    pub stopped: Duration,
    /// How long the whole operation took.
    pub total: Duration,
    /// Threads stopped.
    pub threads: usize,
    /// Time spent in the agent's hook (attach) or unhook (detach) call, inside the target.
    pub agent_call: Duration,
    /// Functions hooked (attach) or unhooked (detach).
    pub funcs: u64,
    /// Times detach let the target run again because a thread was inside xcover's code.
    pub retries: u32,
    /// Set when detach found the target gone (see [`target_gone`]): nothing was left to
    /// unload, only the session to remove.
    pub gone: Option<&'static str>,
    /// Set when the session file was kept for its counts instead of removed (the reports
    /// could not be written: see [`SessionFile::hold`]).
    pub held: bool,
}

/// What [`target_gone`] says of a target that exited (or whose pid names another process).
pub const GONE_EXITED: &str = "exited";
/// What [`target_gone`] says of a target that replaced its program.
pub const GONE_EXEC: &str = "replaced its program (exec)";

/// Whether the target of `session` is gone, and how: `"exited"` (or its pid now names
/// another process), or `"replaced its program (exec)"` when it still runs but no longer
/// maps the session where the agent mapped it (an `execve` threw away the old image, the
/// agent and every hook with it). `None` while the instrumented image lives.
pub fn target_gone(pid: i32, session: &SessionFile) -> Option<&'static str> {
    let h = session.header();
    target_gone_at(
        pid,
        h.target_start_time,
        h.target_map_addr.load(Ordering::Acquire),
        session.path(),
    )
}

/// [`target_gone`] from the session's values (for a check that outlives the mapping):
/// the target's start time, where the target maps the session (0: not mapped yet) and
/// the session's path.
pub fn target_gone_at(
    pid: i32,
    start_time: u64,
    map_addr: u64,
    path: &str,
) -> Option<&'static str> {
    let zombie = match procfs::stat(pid) {
        Ok(st) if st.start_time == start_time => matches!(st.state, 'Z' | 'X'),
        _ => return Some(GONE_EXITED),
    };
    if zombie {
        // Every thread a zombie (or gone): the process has exited, whatever its mappings
        // still say while the last thread tears them down.
        let all_dead = procfs::tasks(pid).is_ok_and(|tids| {
            tids.iter().all(|&t| {
                procfs::task_stat(pid, t).map_or(true, |st| matches!(st.state, 'Z' | 'X'))
            })
        });
        if all_dead {
            return Some(GONE_EXITED);
        }
    }
    if map_addr == 0 && !zombie {
        return None;
    }
    let maps = match std::fs::read_to_string(format!("/proc/{pid}/maps")) {
        Ok(m) if !m.is_empty() => m,
        // A process that has exited has no mappings left (a leader that is a zombie while
        // other threads run still has them).
        Ok(_) => return Some(GONE_EXITED),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some(GONE_EXITED),
        // Unreadable (e.g. permissions changed): assume it still runs.
        Err(_) => return None,
    };
    if map_addr == 0 {
        return None;
    }
    let start = format!("{map_addr:08x}-");
    if maps
        .lines()
        .any(|l| l.starts_with(&start) && l.contains(path))
    {
        None
    } else {
        Some(GONE_EXEC)
    }
}

/// A target with the agent loaded and running.
pub struct Attached {
    pid: i32,
    session: SessionFile,
    /// Timings of the attach.
    pub stats: Stats,
}

/// Checks `pid`, creates its session, lets `opts.prepare` fill it, stops the target, loads
/// the agent, runs its init and hook (every function of the session's table), moves the
/// threads the agent names, and lets the target go. On error nothing is left behind.
pub fn attach(pid: i32, agent: &[u8], opts: &AttachOptions) -> Result<Attached> {
    let t0 = Instant::now();
    let image = AgentImage::parse(agent)?;
    let info = procfs::check_target(pid)?;
    let session = SessionFile::create(&info, opts.session_size, opts.keep)?;
    if let Some(prepare) = opts.prepare
        && let Err(reason) = prepare(&session)
    {
        let _ = session.remove();
        return Err(Error::BadSession {
            path: session.path().to_string(),
            reason,
        });
    }
    let r = (|| {
        let mut sp = StoppedProcess::stop(pid)?;
        let threads = sp.tids().len();
        let (funcs, agent_call) = load_and_init(&mut sp, &image, &session)?;
        let stopped_since = sp.started;
        sp.resume()?;
        Ok(Stats {
            stopped: stopped_since.elapsed(),
            total: Duration::ZERO,
            threads,
            agent_call,
            funcs: funcs as u64,
            retries: 0,
            gone: None,
            held: false,
        })
    })();
    if r.is_err()
        && let Some(what) = target_gone(pid, &session).or_else(|| {
            std::thread::sleep(Duration::from_millis(20));
            target_gone(pid, &session)
        })
    {
        let _ = session.remove();
        return Err(Error::Exited {
            pid,
            what,
            during: "attach",
        });
    }
    match r {
        Ok(stats) => Ok(Attached {
            pid,
            session,
            stats: Stats {
                total: t0.elapsed(),
                ..stats
            },
        }),
        Err(e) => {
            let _ = session.remove();
            Err(e)
        }
    }
}

/// Tells the agent, before its first hook call compiles the probe, where every thread's
/// CPU number is (see [`StoppedProcess::rseq_cpu_id_offset`]; 0 when not in every thread)
/// and whether every thread's id is in its TCB ([`StoppedProcess::tcb_tid_offset`],
/// `PROBE_TCB_TID`).
fn note_thread_layout(sp: &StoppedProcess, session: &SessionFile) -> Result<()> {
    let h = session.header();
    let cpu = sp.rseq_cpu_id_offset().unwrap_or(0);
    h.rseq_cpu_id_off.store(cpu, Ordering::Release);
    let tcb = sp.tcb_tid_offset() == i32::try_from(xcover_session::GLIBC_TCB_TID_OFF).ok();
    let flags = match tcb {
        true => h.probe_flags | xcover_session::PROBE_TCB_TID,
        false => h.probe_flags & !xcover_session::PROBE_TCB_TID,
    };
    session.write_at(
        std::mem::offset_of!(xcover_session::SessionHeader, probe_flags) as u64,
        &flags.to_le_bytes(),
    )?;
    Ok(())
}

/// Loads the agent, maps the session, runs init, then hooks every function of the table
/// (moving threads as the agent says). On error, undoes all of it. Returns (functions
/// hooked, time spent in the agent's hook call).
fn load_and_init(
    sp: &mut StoppedProcess,
    image: &AgentImage,
    session: &SessionFile,
) -> Result<(i64, Duration)> {
    let pid = sp.pid();
    let tid = sp.worker_tid().ok_or(Error::NoSuchProcess { pid })?;
    let init = image.export(AGENT_INIT)?;
    let hook = image.export(AGENT_HOOK)?;
    let commit = image.export(AGENT_COMMIT)?;
    let unhook = image.export(AGENT_UNHOOK)?;
    let fini = image.export(AGENT_FINI)?;
    note_thread_layout(sp, session)?;
    let scratch = Scratch::map(sp, tid, session)?;
    let h = session.header();
    let mut agent_base = 0;
    let mut map_addr = 0;
    let mut inited = false;
    let r = (|| {
        // The agent: reserve, write relocated, protect.
        agent_base = sp.syscall(
            tid,
            nr::MMAP,
            [
                0,
                image.span,
                (libc::PROT_READ | libc::PROT_WRITE) as u64,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                u64::MAX,
                0,
            ],
        )?;
        // Recorded at once, so that a recovery after a kill from here on finds it (an
        // agent whose init never ran is just unmapped).
        h.agent_size.store(image.span, Ordering::Release);
        h.agent_base.store(agent_base, Ordering::Release);
        sp.write(agent_base, &image.build(agent_base))?;
        for (off, len, prot) in image.protections() {
            sp.syscall(
                tid,
                nr::MPROTECT,
                [agent_base + off, len, prot as u64, 0, 0, 0],
            )?;
        }
        // The session: open, map shared, close, in the target (a descriptor or mapping a kill
        // leaves unrecorded in between, recovery finds by the file's inode).
        let mut path = session.path().as_bytes().to_vec();
        path.push(0);
        sp.write(scratch.data(), &path)?;
        let fd = sp.syscall(
            tid,
            nr::OPENAT,
            [
                libc::AT_FDCWD as i64 as u64,
                scratch.data(),
                (libc::O_RDWR | libc::O_CLOEXEC | libc::O_NOFOLLOW) as u64,
                0,
                0,
                0,
            ],
        )?;
        fault_point("opened");
        let size = h.total_size;
        let m = sp.syscall(
            tid,
            nr::MMAP,
            [
                0,
                size,
                (libc::PROT_READ | libc::PROT_WRITE) as u64,
                libc::MAP_SHARED as u64,
                fd,
                0,
            ],
        );
        if let Ok(m) = m {
            map_addr = m;
            h.target_map_addr.store(map_addr, Ordering::Release);
        }
        sp.syscall(tid, nr::CLOSE, [fd, 0, 0, 0, 0, 0])?;
        m?;
        fault_point("loaded");
        let rc = sp.call(
            tid,
            agent_base + init,
            [map_addr, size, 0, 0, 0, 0],
            scratch.stack_top(),
            scratch.trap(),
        )? as i64;
        if rc < 0 {
            return Err(agent_failed(pid, AGENT_INIT, rc, session));
        }
        inited = true;
        fault_point("inited");
        hook_with_threads(sp, tid, &scratch, agent_base, [hook, commit], session)
    })();
    if r.is_err() {
        if inited {
            // Nothing is patched when HOOK fails, and what COMMIT patched UNHOOK restores;
            // FINI then unmaps the agent's regions. Threads HOOK moved into trampolines
            // stay valid: they run the same instructions there and come back.
            let _ = call_with_threads(
                sp,
                tid,
                &scratch,
                agent_base + unhook,
                AGENT_UNHOOK,
                session,
            );
            let _ = sp.call(
                tid,
                agent_base + fini,
                [0; 6],
                scratch.stack_top(),
                scratch.trap(),
            );
        }
        if map_addr != 0 {
            let _ = sp.syscall(tid, nr::MUNMAP, [map_addr, h.total_size, 0, 0, 0, 0]);
            h.target_map_addr.store(0, Ordering::Release);
        }
        if agent_base != 0 {
            let _ = sp.syscall(tid, nr::MUNMAP, [agent_base, image.span, 0, 0, 0, 0]);
            h.agent_base.store(0, Ordering::Release);
        }
        h.state
            .store(SessionState::Failed as u32, Ordering::Release);
    }
    let u = scratch.unmap(sp, tid, session);
    let hooked = r?;
    u?;
    Ok(hooked)
}

/// Hooks the session's `Pending` functions: runs the agent's `HOOK` (plans, writes the
/// trampolines, names the threads to move), moves those threads, then runs `COMMIT`, which
/// writes the entry patches. Moving first means a thread never sits on changed bytes, even
/// if xcover dies between the two. `entries` are the offsets of `HOOK` and `COMMIT` from
/// `base`. Returns the number of functions hooked and the time spent in the agent.
fn hook_with_threads(
    sp: &mut StoppedProcess,
    tid: i32,
    scratch: &Scratch,
    base: u64,
    entries: [u64; 2],
    session: &SessionFile,
) -> Result<(i64, Duration)> {
    let (_, planning) =
        call_with_threads(sp, tid, scratch, base + entries[0], AGENT_HOOK, session)?;
    fault_point("planned");
    let t = Instant::now();
    let rc = sp.call(
        tid,
        base + entries[1],
        [0; 6],
        scratch.stack_top(),
        scratch.trap(),
    )? as i64;
    let took = planning + t.elapsed();
    if rc < 0 {
        return Err(agent_failed(sp.pid(), AGENT_COMMIT, rc, session));
    }
    fault_point("committed");
    Ok((rc, took))
}

/// Runs the agent's `HOOK` or `UNHOOK` entry point at `func` in thread `tid`: writes every
/// stopped thread's instruction pointer into the scratch data area, calls it, reads back
/// where each thread must move and moves those threads (at once: see
/// [`StoppedProcess::set_ip`]). Returns the entry point's result and how long the call took.
fn call_with_threads(
    sp: &mut StoppedProcess,
    tid: i32,
    scratch: &Scratch,
    func: u64,
    entry: &'static str,
    session: &SessionFile,
) -> Result<(i64, Duration)> {
    let pid = sp.pid();
    let tids = sp.tids();
    let mut ips = Vec::with_capacity(tids.len());
    for &t in &tids {
        ips.push(sp.regs(t)?.rip);
    }
    let n = ips.len() as u64;
    if 16 * n > scratch.data_size {
        return Err(Error::Unexpected {
            pid,
            tid,
            what: format!("{n} threads do not fit the scratch area"),
        });
    }
    let ips_addr = scratch.data();
    let moves_addr = ips_addr + 8 * n;
    let bytes: Vec<u8> = ips.iter().flat_map(|ip| ip.to_le_bytes()).collect();
    sp.write(ips_addr, &bytes)?;
    let t = Instant::now();
    let rc = sp.call(
        tid,
        func,
        [ips_addr, moves_addr, n, 0, 0, 0],
        scratch.stack_top(),
        scratch.trap(),
    )? as i64;
    let took = t.elapsed();
    if rc < 0 {
        return Err(agent_failed(pid, entry, rc, session));
    }
    let mut moves = vec![0u8; 8 * n as usize];
    sp.read(moves_addr, &mut moves)?;
    for (&t, mv) in tids.iter().zip(moves.chunks_exact(8)) {
        let to = u64::from_le_bytes(mv.try_into().expect("8 bytes"));
        if to != 0 {
            sp.set_ip(t, to)?;
        }
    }
    Ok((rc, took))
}

/// The error for an entry point that returned `code < 0`, with the agent's own message.
fn agent_failed(pid: i32, entry: &'static str, code: i64, session: &SessionFile) -> Error {
    let h = session.header();
    let len = (h.agent_error_len.load(Ordering::Acquire) as usize).min(h.agent_error.len());
    let mut buf = vec![0u8; len];
    let off = std::mem::offset_of!(xcover_session::SessionHeader, agent_error) as u64;
    let mut message = match session.read_at(off, &mut buf) {
        Ok(()) => String::from_utf8_lossy(&buf).into_owned(),
        Err(_) => String::new(),
    };
    if message.is_empty() {
        message = match code {
            -1 => "null session".into(),
            -2 => "session smaller than its header".into(),
            -3 => "bad session magic".into(),
            -4 => "session layout version unknown to the agent".into(),
            -5 => "no session (init did not run)".into(),
            _ => "no message".into(),
        };
    }
    Error::Agent {
        pid,
        entry,
        code,
        message,
    }
}

/// The target's mappings of the session file and its descriptors open on it, found by the
/// file's inode (and name): normally none once the recorded mapping is gone, but a killed
/// xcover may have left one between creating it and recording it.
fn session_leftovers(pid: i32, session: &SessionFile) -> (Vec<(u64, u64)>, Vec<i32>) {
    let inode = session.inode();
    if inode == 0 {
        return (Vec::new(), Vec::new());
    }
    let maps = procfs::mappings(pid)
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.inode == inode && m.path.starts_with(session.path()))
        .map(|m| (m.start, m.end))
        .collect();
    let fds = procfs::fds_on_inode(pid, inode).unwrap_or_default();
    (maps, fds)
}

/// Address ranges in the target that go away at detach and that no thread may be in: the
/// agent image and every region the agent recorded in the session (heap, JIT code,
/// trampolines).
fn doomed_ranges(
    session: &SessionFile,
    base: u64,
    size: u64,
) -> Result<Vec<(u64, u64, &'static str)>> {
    let mut v = Vec::new();
    if base != 0 {
        v.push((base, base + size, "the agent"));
    }
    let h = session.header();
    let rsize = std::mem::size_of::<xcover_session::Region>();
    // Bounded by the file, whatever the (shared, writable) header says.
    let n = h
        .regions_count
        .load(Ordering::Acquire)
        .min(h.regions_cap)
        .min(session.len() / rsize as u64);
    let mut raw = vec![0u8; n as usize * rsize];
    session.read_at(h.regions_off, &mut raw)?;
    for c in raw.chunks_exact(rsize) {
        let r: xcover_session::Region = bytemuck::pod_read_unaligned(c);
        let what = match r.kind {
            xcover_session::REGION_HEAP => HEAP_RANGE,
            xcover_session::REGION_JIT => JIT_RANGE,
            xcover_session::REGION_TRAMPOLINES => "a trampoline arena",
            _ => "an agent region",
        };
        v.push((r.start, r.start.saturating_add(r.len), what));
    }
    Ok(v)
}

/// How [`doomed_ranges`] names the agent's heap.
const HEAP_RANGE: &str = "the agent's heap";
/// How [`doomed_ranges`] names the JIT-ed probe.
const JIT_RANGE: &str = "the JIT-ed probe";
/// Stack words above `rsp` searched for the probe's return address when a thread is in the
/// vDSO (its `clock_gettime` keeps 5 words, a nested call a few more).
const VDSO_FRAME_WORDS: usize = 32;

/// The first stopped thread that is inside code in one of `ranges`, or will return there;
/// with the address.
///
/// Besides `rip`, a signal handler that interrupted a trampoline or the probe returns to the
/// `rip` saved in its signal frame. Signal frames are found on the live stack by their shape
/// (`rip`, then `eflags` with its always-one bit and IF set, then `cs` = 0x33), not by any
/// word that happens to look like an address: stale return addresses and plain integers in
/// live frames would otherwise hold a detach up for ever (seen with Go and C targets).
///
/// The JIT-ed probe calls the vDSO's `clock_gettime` itself: a thread in the vDSO whose
/// innermost [`VDSO_FRAME_WORDS`] stack words hold an address in the probe's code may
/// return there, and counts as inside it. A stale address there only costs a retry (and,
/// should it stay, a detach that fails safe with the agent left in place).
fn thread_inside(
    sp: &StoppedProcess,
    ranges: &[(u64, u64, &'static str)],
) -> Result<Option<(i32, u64, &'static str)>> {
    let inside = |v: u64| ranges.iter().find(|r| (r.0..r.1).contains(&v));
    // Code only: a thread returns into code, never into the heap.
    let code: Vec<_> = ranges.iter().filter(|r| r.2 != HEAP_RANGE).collect();
    let returns_into = |v: u64| code.iter().find(|r| (r.0..r.1).contains(&v)).copied();
    let jit: Vec<_> = code.iter().filter(|r| r.2 == JIT_RANGE).copied().collect();
    let maps = procfs::mappings(sp.pid()).unwrap_or_default();
    let vdso = maps
        .iter()
        .find(|m| m.path == "[vdso]")
        .map(|m| m.start..m.end);
    for tid in sp.tids() {
        let regs = sp.regs(tid)?;
        if let Some(r) = inside(regs.rip) {
            return Ok(Some((tid, regs.rip, r.2)));
        }
        let top = regs.rsp & !7;
        if vdso.as_ref().is_some_and(|v| v.contains(&regs.rip)) && !jit.is_empty() {
            let mut frame = [0u8; 8 * VDSO_FRAME_WORDS];
            if sp.read(top, &mut frame).is_ok()
                && let Some((ret, r)) = frame
                    .chunks_exact(8)
                    .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
                    .find_map(|w| jit.iter().find(|r| (r.0..r.1).contains(&w)).map(|r| (w, r)))
            {
                return Ok(Some((tid, ret, r.2)));
            }
        }
        let Some(m) = maps.iter().find(|m| (m.start..m.end).contains(&top)) else {
            continue;
        };
        let len = (m.end - top).min(STACK_SCAN) as usize;
        let mut stack = vec![0u8; len];
        if sp.read(top, &mut stack).is_err() {
            continue;
        }
        let words: Vec<u64> = stack
            .chunks_exact(8)
            .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
            .collect();
        // In a signal frame the saved rip is word 16 of the registers, which follow the
        // ucontext's flags, link and stack_t (ss_sp, ss_flags, ss_size): 19 words before it.
        for k in 19..words.len().saturating_sub(2) {
            let (rip, eflags, cs) = (words[k], words[k + 1], words[k + 2]);
            if eflags & 0x202 != 0x202 || eflags >> 22 != 0 || cs & 0xffff != 0x33 {
                continue;
            }
            let Some(r) = returns_into(rip) else {
                continue;
            };
            // A frame on the alternate signal stack is live only while the thread runs
            // there; one seen from another stack is left over (Go keeps its signal stacks
            // next to its other stacks).
            let (ss_sp, ss_size) = (words[k - 19], words[k - 17]);
            let alt = ss_sp..ss_sp.saturating_add(ss_size);
            if ss_size != 0 && alt.contains(&(top + 8 * k as u64)) && !alt.contains(&regs.rsp) {
                continue;
            }
            return Ok(Some((tid, rip, r.2)));
        }
    }
    Ok(None)
}

/// Checks that the agent loaded at `base` is this xcover's.
fn check_identity(
    sp: &StoppedProcess,
    image: &AgentImage,
    session: &SessionFile,
    base: u64,
) -> Result<()> {
    let pid = sp.pid();
    let id = image.identity();
    let mut loaded = vec![0u8; id.len()];
    sp.read(base, &mut loaded)?;
    if loaded != id {
        return Err(Error::BadSession {
            path: session.path().to_string(),
            reason: format!(
                "the agent at {base:#x} in pid {pid} is not this xcover's agent; \
                 detach with the xcover that attached"
            ),
        });
    }
    Ok(())
}

/// Stops the target and takes everything out of it: `UNHOOK` (threads on restored bytes
/// moved), then, once no thread is inside the agent or any region it mapped (the target is
/// let run for a moment and stopped again while one is, up to [`LEAVE_TRIES`] times),
/// `FINI`, and finally unmaps the session and the agent.
///
/// If the hooks cannot be taken out, or a thread stays inside xcover's code, the agent is
/// left in place (never unmapped under a thread), the session is marked Failed and the
/// error says so; `xcover detach` can try again later.
///
/// A target that is gone before or during the unload (it exited, was killed, or execed:
/// [`target_gone`]) is not an error: there is nothing left to take out. The session is
/// marked Detached and [`Stats::gone`] says what happened.
fn unload(pid: i32, image: &AgentImage, session: &SessionFile) -> Result<Stats> {
    let gone = |what| {
        session
            .header()
            .state
            .store(SessionState::Detached as u32, Ordering::Release);
        Ok(Stats {
            gone: Some(what),
            ..Stats::default()
        })
    };
    if let Some(what) = target_gone(pid, session) {
        return gone(what);
    }
    match unload_live(pid, image, session) {
        Err(e) => {
            // A process being killed takes a moment to show it: look twice.
            let what = target_gone(pid, session).or_else(|| {
                std::thread::sleep(Duration::from_millis(20));
                target_gone(pid, session)
            });
            match what {
                Some(what) => gone(what),
                None => Err(e),
            }
        }
        ok => ok,
    }
}

fn unload_live(pid: i32, image: &AgentImage, session: &SessionFile) -> Result<Stats> {
    let t0 = Instant::now();
    let h = session.header();
    h.state
        .store(SessionState::Detaching as u32, Ordering::Release);
    let fail = |e: Error| {
        h.state
            .store(SessionState::Failed as u32, Ordering::Release);
        e
    };
    clear_orphan_scratch(pid, session).map_err(fail)?;
    let mut sp = StoppedProcess::stop(pid).map_err(fail)?;
    let threads = sp.tids().len();
    let mut tid = sp.worker_tid().ok_or(Error::NoSuchProcess { pid })?;
    let mut scratch = Scratch::map(&mut sp, tid, session).map_err(fail)?;
    let mut base = h.agent_base.load(Ordering::Acquire);
    let size = h.agent_size.load(Ordering::Acquire);
    let map_addr = h.target_map_addr.load(Ordering::Acquire);
    let mut stopped = Duration::ZERO;
    let mut retries = 0;
    let mut unhooked = (0, Duration::ZERO);
    // What a killed xcover may have left half-done: an agent it unmapped but did not forget
    // (gone already), or one it loaded whose init never ran (nothing to unhook or finish).
    if base != 0 && !procfs::is_mapped(pid, base).unwrap_or(true) {
        base = 0;
        h.agent_base.store(0, Ordering::Release);
    }
    let mut inited = h.agent_calls.load(Ordering::Acquire) != 0;
    // Take the hooks out.
    if base != 0 && inited {
        let r = check_identity(&sp, image, session, base).and_then(|()| {
            let unhook = image.export(AGENT_UNHOOK)?;
            call_with_threads(&mut sp, tid, &scratch, base + unhook, AGENT_UNHOOK, session)
        });
        match r {
            Ok(u) => unhooked = u,
            // An xcover killed between loading the agent and its init: nothing is hooked and
            // the agent mapped nothing; only the agent and the session mapping go.
            Err(Error::Agent {
                code: xcover_session::entry::E_NO_SESSION,
                ..
            }) => inited = false,
            Err(e) => {
                let _ = scratch.unmap(&mut sp, tid, session);
                let _ = sp.resume();
                return Err(fail(e));
            }
        }
    }
    if base != 0 {
        // Wait until no thread is inside what is about to be unmapped.
        loop {
            let ranges = doomed_ranges(session, base, size);
            let inside = ranges.and_then(|r| thread_inside(&sp, &r));
            let (t, rip, what) = match inside {
                Ok(None) => break,
                Ok(Some(x)) => x,
                Err(e) => {
                    let _ = scratch.unmap(&mut sp, tid, session);
                    let _ = sp.resume();
                    return Err(fail(e));
                }
            };
            let u = scratch.unmap(&mut sp, tid, session);
            stopped += sp.started.elapsed();
            let resumed = sp.resume();
            if let Err(e) = u.and(resumed) {
                return Err(fail(e));
            }
            retries += 1;
            if retries >= LEAVE_TRIES {
                return Err(fail(Error::Unexpected {
                    pid,
                    tid: t,
                    what: format!(
                        "stays inside {what}, or returns there ({rip:#x}), after {LEAVE_TRIES} tries; the \
                         functions are unhooked but the agent is left loaded: run \
                         `xcover detach {pid}` again later"
                    ),
                }));
            }
            std::thread::sleep(LEAVE_PAUSE);
            // A target dying meanwhile: stopping its exiting threads would take seconds each
            // time round.
            if target_gone(pid, session).is_some() {
                return Err(fail(Error::NoSuchProcess { pid }));
            }
            sp = StoppedProcess::stop(pid).map_err(fail)?;
            tid = sp.worker_tid().ok_or(Error::NoSuchProcess { pid })?;
            scratch = Scratch::map(&mut sp, tid, session).map_err(fail)?;
        }
    }
    fault_point("unhooked");
    let r = (|| {
        if base != 0 && inited {
            let fini = image.export(AGENT_FINI)?;
            let rc = sp.call(
                tid,
                base + fini,
                [0; 6],
                scratch.stack_top(),
                scratch.trap(),
            )? as i64;
            if rc < 0 {
                return Err(agent_failed(pid, AGENT_FINI, rc, session));
            }
            fault_point("finished");
        }
        Ok(())
    })();
    // Unmap even if fini failed: the hooks are out and no thread is inside, so the agent
    // must not stay behind half-dead.
    let mut unmap = Ok(());
    if map_addr != 0 {
        unmap = unmap.and(
            sp.syscall(tid, nr::MUNMAP, [map_addr, h.total_size, 0, 0, 0, 0])
                .map(drop),
        );
        h.target_map_addr.store(0, Ordering::Release);
    }
    // A mapping or descriptor of the session a killed xcover made but never recorded.
    let (maps, fds) = session_leftovers(pid, session);
    for (start, end) in maps {
        unmap = unmap.and(
            sp.syscall(tid, nr::MUNMAP, [start, end - start, 0, 0, 0, 0])
                .map(drop),
        );
    }
    for fd in fds {
        unmap = unmap.and(
            sp.syscall(tid, nr::CLOSE, [fd as u64, 0, 0, 0, 0, 0])
                .map(drop),
        );
    }
    if base != 0 {
        unmap = unmap.and(
            sp.syscall(tid, nr::MUNMAP, [base, size, 0, 0, 0, 0])
                .map(drop),
        );
        h.agent_base.store(0, Ordering::Release);
    }
    let u = scratch.unmap(&mut sp, tid, session);
    let started = sp.started;
    let resumed = sp.resume();
    stopped += started.elapsed();
    r.map_err(fail)?;
    unmap.map_err(fail)?;
    u.map_err(fail)?;
    resumed.map_err(fail)?;
    h.state
        .store(SessionState::Detached as u32, Ordering::Release);
    Ok(Stats {
        stopped,
        total: t0.elapsed(),
        threads,
        agent_call: unhooked.1,
        funcs: unhooked.0 as u64,
        retries,
        gone: None,
        held: false,
    })
}

/// Hooks the `Pending` functions of a live session again (e.g. on a re-attach to a kept
/// session after new functions were added to its table): stops the target, runs `HOOK`,
/// moves threads, runs `COMMIT`, resumes. Functions already hooked are left alone by the agent.
pub fn hook_pending(pid: i32, agent: &[u8], session: &SessionFile) -> Result<Stats> {
    let t0 = Instant::now();
    let image = AgentImage::parse(agent)?;
    let h = session.header();
    let base = h.agent_base.load(Ordering::Acquire);
    if base == 0 {
        return Err(Error::BadSession {
            path: session.path().to_string(),
            reason: format!("no agent is loaded in pid {pid}"),
        });
    }
    let entries = [image.export(AGENT_HOOK)?, image.export(AGENT_COMMIT)?];
    clear_orphan_scratch(pid, session)?;
    let mut sp = StoppedProcess::stop(pid)?;
    let threads = sp.tids().len();
    let tid = sp.worker_tid().ok_or(Error::NoSuchProcess { pid })?;
    note_thread_layout(&sp, session)?;
    let scratch = Scratch::map(&mut sp, tid, session)?;
    let r = check_identity(&sp, &image, session, base)
        .and_then(|()| hook_with_threads(&mut sp, tid, &scratch, base, entries, session));
    let u = scratch.unmap(&mut sp, tid, session);
    let started = sp.started;
    let resumed = sp.resume();
    let stopped = started.elapsed();
    let (funcs, agent_call) = r?;
    u?;
    resumed?;
    Ok(Stats {
        stopped,
        total: t0.elapsed(),
        threads,
        agent_call,
        funcs: funcs as u64,
        retries: 0,
        gone: None,
        held: false,
    })
}

impl Attached {
    /// The target's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The session, as xcover sees it.
    pub fn session(&self) -> &SessionFile {
        &self.session
    }

    /// Unloads the agent and removes the session.
    pub fn detach(self, agent: &[u8]) -> Result<Stats> {
        self.detach_with(agent, |_| true)
    }

    /// Unloads the agent, lets `last_read` read the session one last time (every hook is out,
    /// so its counts are final), then removes the session, unless `last_read` returns false
    /// (its reports could not be written): then the session is held for its counts
    /// ([`SessionFile::hold`]) and [`Stats::held`] is set.
    pub fn detach_with(
        self,
        agent: &[u8],
        last_read: impl FnOnce(&SessionFile) -> bool,
    ) -> Result<Stats> {
        let image = AgentImage::parse(agent)?;
        let stats = unload(self.pid, &image, &self.session)?;
        finish(&self.session, stats, last_read)
    }

    /// Leaves the agent in the target for a later [`detach`]: the session has no owner
    /// from now on.
    pub fn leave(self) {
        let flags = self.session.header().flags | xcover_session::FLAG_KEEP;
        let _ = self.session.write_at(
            std::mem::offset_of!(xcover_session::SessionHeader, flags) as u64,
            &flags.to_le_bytes(),
        );
        self.session.header().owner_pid.store(0, Ordering::Release);
    }
}

/// Detaches a session left by `attach --keep` (or by an xcover that died): unloads the
/// agent and removes the session file. A session whose target is gone, or one held for its
/// counts ([`SessionFile::hold`]), is only read (for the reports) and removed; [`Stats::gone`]
/// says so.
pub fn detach(pid: i32, agent: &[u8]) -> Result<Stats> {
    detach_with(pid, agent, |_| true)
}

/// [`detach`], letting `last_read` read the session after the agent is out and before the
/// file is removed; when it returns false (its reports could not be written) the file is
/// held for its counts instead ([`SessionFile::hold`], [`Stats::held`]).
pub fn detach_with(
    pid: i32,
    agent: &[u8],
    last_read: impl FnOnce(&SessionFile) -> bool,
) -> Result<Stats> {
    let image = AgentImage::parse(agent)?;
    let session = SessionFile::open(pid)?;
    let h = session.header();
    if let session::Owner::Alive(owner) = session.owner()
        && owner != std::process::id()
    {
        return Err(Error::AlreadyAttached {
            pid,
            detail: format!("xcover pid {owner} owns the session; stop it instead"),
        });
    }
    if session.is_held() {
        // Nothing of it is left in any process: only the counts, to write and remove.
        let stats = Stats {
            gone: Some(HELD),
            ..Stats::default()
        };
        return finish(&session, stats, last_read);
    }
    match procfs::stat(pid) {
        Ok(st) if st.start_time == h.target_start_time => {}
        _ => {
            // The target is gone: nothing to unload, only the stale file to remove.
            let stats = Stats {
                gone: Some("was already gone"),
                ..Stats::default()
            };
            return finish(&session, stats, last_read);
        }
    }
    procfs::check_target(pid)?;
    h.owner_pid.store(std::process::id(), Ordering::Release);
    let stats = unload(pid, &image, &session)?;
    finish(&session, stats, last_read)
}

/// What [`Stats::gone`] says of a session that was held for its counts: its agent was
/// already out of the target.
pub const HELD: &str = "was already detached (its counts were held)";

/// The end of a detach, once the target holds nothing of the session: the last reading,
/// then the file removed, or held if `last_read` says its reports could not be written.
fn finish(
    session: &SessionFile,
    mut stats: Stats,
    last_read: impl FnOnce(&SessionFile) -> bool,
) -> Result<Stats> {
    if last_read(session) {
        session.remove()?;
    } else {
        session.hold()?;
        stats.held = true;
    }
    Ok(stats)
}
