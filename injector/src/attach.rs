//! Attach: check the target, create its session, stop it, load the agent, run its init and
//! hook, let it go; and hooking the pending functions of a live session again.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use xcover_session::SessionState;

use crate::agent::{agent_failed, call_with_threads, check_identity, hook_with_threads};
use crate::elf::AgentImage;
use crate::faults::fault_point;
use crate::liveness::target_gone;
use crate::remote::nr;
use crate::scratch::{Scratch, clear_orphan_scratch};
use crate::session::SessionFile;
use crate::stop::StoppedProcess;
use crate::{
    AGENT_COMMIT, AGENT_FINI, AGENT_HOOK, AGENT_INIT, AGENT_UNHOOK, AGENT_UNHOOK_SOME,
    AttachOptions, Attached, Error, Result, Stats, procfs,
};

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
            forks: 0,
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

impl Attached {
    /// The target's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The session, as xcover sees it.
    pub fn session(&self) -> &SessionFile {
        &self.session
    }

    /// Leaves the agent in the target for a later [`detach`](crate::detach()): the session
    /// has no owner from now on.
    pub fn leave(self) {
        let flags = self.session.header().flags | xcover_session::FLAG_KEEP;
        let _ = self.session.write_at(
            std::mem::offset_of!(xcover_session::SessionHeader, flags) as u64,
            &flags.to_le_bytes(),
        );
        self.session.header().owner_pid.store(0, Ordering::Release);
    }
}

/// Hooks the `Pending` functions of a live session again (e.g. on a re-attach to a kept
/// session after new functions were added to its table): stops the target, runs `HOOK`,
/// moves threads, runs `COMMIT`, resumes. Functions already hooked are left alone by the agent.
pub fn hook_pending(pid: i32, agent: &[u8], session: &SessionFile) -> Result<Stats> {
    let image = AgentImage::parse(agent)?;
    let entries = [image.export(AGENT_HOOK)?, image.export(AGENT_COMMIT)?];
    with_loaded_agent(pid, &image, session, true, |sp, tid, scratch, base| {
        hook_with_threads(sp, tid, scratch, base, entries, session)
    })
}

/// Takes out the hooks of the functions marked `Unhooking` in a live session (see
/// `xcover_session::FuncStatus::Unhooking`), the rest running on: stops the target, runs
/// the agent's `UNHOOK_SOME` (threads on restored bytes are moved back to the original
/// code), resumes. The same stop as [`hook_pending`]; the trampolines are retired, not
/// freed, so a thread still inside one is safe. `Stats::stopped` is how long the target
/// was stopped.
pub fn unhook_marked(pid: i32, agent: &[u8], session: &SessionFile) -> Result<Stats> {
    let image = AgentImage::parse(agent)?;
    let entry = image.export(AGENT_UNHOOK_SOME)?;
    with_loaded_agent(pid, &image, session, false, |sp, tid, scratch, base| {
        call_with_threads(sp, tid, scratch, base + entry, AGENT_UNHOOK_SOME, session)
    })
}

/// Stops `pid`, checks that its agent is this xcover's, maps scratch memory, runs `work`
/// (with the worker thread, the scratch and the agent's base), takes the scratch out and
/// lets the target go.
fn with_loaded_agent(
    pid: i32,
    image: &AgentImage,
    session: &SessionFile,
    layout: bool,
    work: impl FnOnce(&mut StoppedProcess, i32, &Scratch, u64) -> Result<(i64, Duration)>,
) -> Result<Stats> {
    let t0 = Instant::now();
    let h = session.header();
    let base = h.agent_base.load(Ordering::Acquire);
    if base == 0 {
        return Err(Error::BadSession {
            path: session.path().to_string(),
            reason: format!("no agent is loaded in pid {pid}"),
        });
    }
    clear_orphan_scratch(pid, session)?;
    let mut sp = StoppedProcess::stop(pid)?;
    let threads = sp.tids().len();
    let tid = sp.worker_tid().ok_or(Error::NoSuchProcess { pid })?;
    if layout {
        note_thread_layout(&sp, session)?;
    }
    let scratch = Scratch::map(&mut sp, tid, session)?;
    let r =
        check_identity(&sp, image, session, base).and_then(|()| work(&mut sp, tid, &scratch, base));
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
        forks: 0,
        held: false,
    })
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

/// The offsets of the agent's entry points from its base.
struct Entries {
    init: u64,
    hook: u64,
    commit: u64,
    unhook: u64,
    fini: u64,
}

impl Entries {
    fn of(image: &AgentImage) -> Result<Entries> {
        Ok(Entries {
            init: image.export(AGENT_INIT)?,
            hook: image.export(AGENT_HOOK)?,
            commit: image.export(AGENT_COMMIT)?,
            unhook: image.export(AGENT_UNHOOK)?,
            fini: image.export(AGENT_FINI)?,
        })
    }
}

/// What an attach has put into the target so far, for [`undo_load`].
#[derive(Default)]
struct Loaded {
    /// Where the agent is mapped (0: not yet).
    agent_base: u64,
    /// Where the target maps the session (0: not yet).
    map_addr: u64,
    /// The agent's init has run.
    inited: bool,
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
    let entries = Entries::of(image)?;
    note_thread_layout(sp, session)?;
    let scratch = Scratch::map(sp, tid, session)?;
    let mut loaded = Loaded::default();
    let r = (|| {
        load_agent(sp, tid, image, session, &mut loaded)?;
        map_session(sp, tid, &scratch, session, &mut loaded)?;
        fault_point("loaded");
        run_init(sp, tid, &scratch, session, &entries, &mut loaded)?;
        fault_point("inited");
        let hook = [entries.hook, entries.commit];
        hook_with_threads(sp, tid, &scratch, loaded.agent_base, hook, session)
    })();
    if r.is_err() {
        undo_load(sp, tid, &scratch, image, session, &entries, &loaded);
    }
    let u = scratch.unmap(sp, tid, session);
    let hooked = r?;
    u?;
    Ok(hooked)
}

/// Maps the agent in the target: reserve its span, write it relocated, protect each
/// segment. Its place is recorded in the session at once, so that a recovery after a kill
/// from here on finds it (an agent whose init never ran is just unmapped).
fn load_agent(
    sp: &mut StoppedProcess,
    tid: i32,
    image: &AgentImage,
    session: &SessionFile,
    loaded: &mut Loaded,
) -> Result<()> {
    let h = session.header();
    let base = sp.syscall(
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
    loaded.agent_base = base;
    h.agent_size.store(image.span, Ordering::Release);
    h.agent_base.store(base, Ordering::Release);
    sp.write(base, &image.build(base))?;
    for (off, len, prot) in image.protections() {
        sp.syscall(tid, nr::MPROTECT, [base + off, len, prot as u64, 0, 0, 0])?;
    }
    Ok(())
}

/// Maps the session file shared in the target: open, map, close, in the target (a
/// descriptor or mapping a kill leaves unrecorded in between, recovery finds by the file's
/// inode).
fn map_session(
    sp: &mut StoppedProcess,
    tid: i32,
    scratch: &Scratch,
    session: &SessionFile,
    loaded: &mut Loaded,
) -> Result<()> {
    let h = session.header();
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
    let m = sp.syscall(
        tid,
        nr::MMAP,
        [
            0,
            h.total_size,
            (libc::PROT_READ | libc::PROT_WRITE) as u64,
            libc::MAP_SHARED as u64,
            fd,
            0,
        ],
    );
    if let Ok(m) = m {
        loaded.map_addr = m;
        h.target_map_addr.store(m, Ordering::Release);
    }
    sp.syscall(tid, nr::CLOSE, [fd, 0, 0, 0, 0, 0])?;
    m.map(drop)
}

/// Runs the agent's init on the session mapped at `loaded.map_addr`.
fn run_init(
    sp: &mut StoppedProcess,
    tid: i32,
    scratch: &Scratch,
    session: &SessionFile,
    entries: &Entries,
    loaded: &mut Loaded,
) -> Result<()> {
    let rc = sp.call(
        tid,
        loaded.agent_base + entries.init,
        [loaded.map_addr, session.header().total_size, 0, 0, 0, 0],
        scratch.stack_top(),
        scratch.trap(),
    )? as i64;
    if rc < 0 {
        return Err(agent_failed(sp.pid(), AGENT_INIT, rc, session));
    }
    loaded.inited = true;
    Ok(())
}

/// Takes out what a failed attach put in (best effort: the error that made it fail is the
/// one reported), and marks the session Failed.
fn undo_load(
    sp: &mut StoppedProcess,
    tid: i32,
    scratch: &Scratch,
    image: &AgentImage,
    session: &SessionFile,
    entries: &Entries,
    loaded: &Loaded,
) {
    let h = session.header();
    let base = loaded.agent_base;
    if loaded.inited {
        // Nothing is patched when HOOK fails, and what COMMIT patched UNHOOK restores;
        // FINI then unmaps the agent's regions. Threads HOOK moved into trampolines
        // stay valid: they run the same instructions there and come back.
        let unhook = base + entries.unhook;
        let _ = call_with_threads(sp, tid, scratch, unhook, AGENT_UNHOOK, session);
        let _ = sp.call(
            tid,
            base + entries.fini,
            [0; 6],
            scratch.stack_top(),
            scratch.trap(),
        );
    }
    if loaded.map_addr != 0 {
        let _ = sp.syscall(tid, nr::MUNMAP, [loaded.map_addr, h.total_size, 0, 0, 0, 0]);
        h.target_map_addr.store(0, Ordering::Release);
    }
    if base != 0 {
        let _ = sp.syscall(tid, nr::MUNMAP, [base, image.span, 0, 0, 0, 0]);
        h.agent_base.store(0, Ordering::Release);
    }
    h.state
        .store(SessionState::Failed as u32, Ordering::Release);
}
