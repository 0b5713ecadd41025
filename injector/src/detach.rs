//! Detach: take everything out of the target and remove the session.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use xcover_session::SessionState;

use crate::agent::{agent_failed, call_with_threads, check_identity};
use crate::doomed::{Doomed, doomed_ranges, thread_inside, trap_pending};
use crate::elf::AgentImage;
use crate::faults::fault_point;
use crate::forks;
use crate::liveness::target_gone;
use crate::remote::nr;
use crate::scratch::{LEAVE_PAUSE, Scratch, clear_orphan_scratch};
use crate::session::{self, SessionFile};
use crate::stop::StoppedProcess;
use crate::tracer::{Ptrace, Tracer};
use crate::{AGENT_FINI, AGENT_UNHOOK, Attached, Error, Result, Stats, procfs};

/// How many times `unload` lets the target run and stops it again while a thread is still
/// inside memory about to be unmapped (a trampoline, the probe, the agent), and how long it
/// lets it run each time.
const LEAVE_TRIES: u32 = 200;

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
            // The target is gone: nothing to unload in it, only in the processes it forked
            // (if any), and the stale file to remove.
            let stats = Stats {
                gone: Some("was already gone"),
                forks: sweep(pid, &image, &session)?,
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

impl Attached {
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
///
/// Every other process that carries the session (forked from the target while its hooks
/// were in, see [`forks`]) is cleaned too: those there before the target is stopped, then,
/// once the target holds nothing of the session any more, those forked meanwhile, until a
/// scan of `/proc` finds none. The first error of a carrier is returned after the target's
/// own unload (the session stays, for a later `xcover detach`).
fn unload(pid: i32, image: &AgentImage, session: &SessionFile) -> Result<Stats> {
    let carried = forks::Carried::read(session)?;
    let mut done = BTreeSet::new();
    let before = forks::clean_all(pid, image, session, &carried, &mut done);
    let mut stats = unload_target(pid, image, session)?;
    let after = forks::clean_all(pid, image, session, &carried, &mut done);
    stats.forks = before? + after?;
    Ok(stats)
}

/// Cleans every process that carries the session of `pid` (see [`forks`]).
fn sweep(pid: i32, image: &AgentImage, session: &SessionFile) -> Result<usize> {
    let carried = forks::Carried::read(session)?;
    forks::clean_all(pid, image, session, &carried, &mut BTreeSet::new())
}

/// [`unload`] of the target alone.
fn unload_target(pid: i32, image: &AgentImage, session: &SessionFile) -> Result<Stats> {
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

/// [`unload`] of a target that was alive when it began, in named steps: [`Round::begin`]
/// (stop), [`take_hooks_out`], [`wait_out`] (no thread in the doomed ranges), [`run_fini`],
/// [`unmap_all`], [`Round::end`] (resume).
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
    let mut round = Round::begin(pid, session, &fail)?;
    let threads = round.sp.tids().len();
    let base = loaded_agent(pid, session);
    let size = h.agent_size.load(Ordering::Acquire);
    let map_addr = h.target_map_addr.load(Ordering::Acquire);
    let mut inited = h.agent_calls.load(Ordering::Acquire) != 0;
    let mut unhooked = (0, Duration::ZERO);
    if base != 0 && inited {
        match take_hooks_out(&mut round, image, session, base) {
            Ok(u) => unhooked = u,
            // An xcover killed between loading the agent and its init: nothing is hooked and
            // the agent mapped nothing; only the agent and the session mapping go.
            Err(Error::Agent {
                code: xcover_session::entry::E_NO_SESSION,
                ..
            }) => inited = false,
            Err(e) => {
                round.abandon(session);
                return Err(fail(e));
            }
        }
    }
    let mut waited = Waited::default();
    if base != 0 {
        let ranges = || doomed_ranges(session, base, size);
        let again = || {
            std::thread::sleep(LEAVE_PAUSE);
            // A target dying meanwhile: stopping its exiting threads would take seconds each
            // time round.
            if target_gone(pid, session).is_some() {
                return Err(fail(Error::NoSuchProcess { pid }));
            }
            Round::begin(pid, session, &fail)
        };
        round = wait_out(round, session, ranges, again, &fail, &mut waited)?;
    }
    fault_point("unhooked");
    let r = match base != 0 && inited {
        true => run_fini(&mut round, image, session, base),
        false => Ok(()),
    };
    // Unmap even if fini failed: the hooks are out and no thread is inside, so the agent
    // must not stay behind half-dead.
    let unmap = unmap_all(&mut round, session, base, size, map_addr);
    let (u, resumed, stopped) = round.end(session);
    waited.stopped += stopped;
    r.map_err(fail)?;
    unmap.map_err(fail)?;
    u.map_err(fail)?;
    resumed.map_err(fail)?;
    h.state
        .store(SessionState::Detached as u32, Ordering::Release);
    Ok(Stats {
        stopped: waited.stopped,
        total: t0.elapsed(),
        threads,
        agent_call: unhooked.1,
        funcs: unhooked.0 as u64,
        retries: waited.retries,
        gone: None,
        forks: 0,
        held: false,
    })
}

/// One stop of the target during a detach: the stopped process, the thread remote work
/// runs in, and its scratch memory.
pub(crate) struct Round<T: Tracer = Ptrace> {
    pub(crate) sp: StoppedProcess<T>,
    pub(crate) tid: i32,
    pub(crate) scratch: Scratch,
}

impl Round {
    /// Stops the target and maps scratch memory in it. `fail` marks the session Failed
    /// (errors of the stop and of the scratch memory).
    fn begin(pid: i32, session: &SessionFile, fail: &dyn Fn(Error) -> Error) -> Result<Round> {
        let mut sp = StoppedProcess::stop(pid).map_err(fail)?;
        let tid = sp.worker_tid().ok_or(Error::NoSuchProcess { pid })?;
        let scratch = Scratch::map(&mut sp, tid, session).map_err(fail)?;
        Ok(Round { sp, tid, scratch })
    }
}

impl<T: Tracer> Round<T> {
    /// Lets the target go after an error (the error that ended the round is the one
    /// reported).
    fn abandon(mut self, session: &SessionFile) {
        let _ = self.scratch.unmap(&mut self.sp, self.tid, session);
        let _ = self.sp.resume();
    }

    /// Lets the target go: the results of unmapping the scratch memory and of resuming, and
    /// how long the target was stopped.
    fn end(mut self, session: &SessionFile) -> (Result<()>, Result<()>, Duration) {
        let u = self.scratch.unmap(&mut self.sp, self.tid, session);
        let started = self.sp.started;
        let resumed = self.sp.resume();
        (u, resumed, started.elapsed())
    }
}

/// Times the target was let run and stopped again while a thread was inside xcover's
/// memory, and how long it was stopped in those rounds.
#[derive(Debug, Default)]
struct Waited {
    stopped: Duration,
    retries: u32,
}

/// The agent's base as recorded in the session, or 0 when there is none or it is no longer
/// mapped (a killed xcover unmapped it but did not forget it: gone already).
fn loaded_agent(pid: i32, session: &SessionFile) -> u64 {
    let h = session.header();
    let base = h.agent_base.load(Ordering::Acquire);
    if base != 0 && !procfs::is_mapped(pid, base).unwrap_or(true) {
        h.agent_base.store(0, Ordering::Release);
        return 0;
    }
    base
}

/// Runs the agent's `UNHOOK` (threads on restored bytes moved), after checking that the
/// agent at `base` is this xcover's.
fn take_hooks_out<T: Tracer>(
    round: &mut Round<T>,
    image: &AgentImage,
    session: &SessionFile,
    base: u64,
) -> Result<(i64, Duration)> {
    check_identity(&round.sp, image, session, base)?;
    let unhook = image.export(AGENT_UNHOOK)?;
    let (sp, tid, scratch) = (&mut round.sp, round.tid, &round.scratch);
    call_with_threads(sp, tid, scratch, base + unhook, AGENT_UNHOOK, session)
}

/// Waits until no stopped thread is inside `ranges` (or returns there): while one is, the
/// round ends (the target runs) and `again` starts a new one, up to [`LEAVE_TRIES`] times.
/// Returns the round in which no thread is inside. `fail` marks the session Failed (its
/// own errors; `again` marks its own).
fn wait_out<T: Tracer>(
    mut round: Round<T>,
    session: &SessionFile,
    ranges: impl Fn() -> Result<Vec<Doomed>>,
    mut again: impl FnMut() -> Result<Round<T>>,
    fail: &dyn Fn(Error) -> Error,
    waited: &mut Waited,
) -> Result<Round<T>> {
    // With trap hooks, a thread may hold the SIGTRAP of one of them not yet delivered (it
    // was stopped between the `int3` and the delivery): only the agent's handler, still in
    // place, can resume it right, so the target runs until none is left.
    let traps = session.header().probe_flags & xcover_session::PROBE_TRAPS != 0;
    loop {
        let inside = ranges()
            .and_then(|r| thread_inside(&round.sp, &r))
            .map(|i| i.or_else(|| traps.then(|| trap_pending(&round.sp)).flatten()));
        let (t, rip, what) = match inside {
            Ok(None) => return Ok(round),
            Ok(Some(x)) => x,
            Err(e) => {
                round.abandon(session);
                return Err(fail(e));
            }
        };
        let pid = round.sp.pid();
        let (u, resumed, stopped) = round.end(session);
        waited.stopped += stopped;
        u.and(resumed).map_err(fail)?;
        waited.retries += 1;
        if waited.retries >= LEAVE_TRIES {
            return Err(fail(Error::Unexpected {
                pid,
                tid: t,
                what: format!(
                    "stays inside {what}, or returns there ({rip:#x}), after {LEAVE_TRIES} tries; \
                     the functions are unhooked but the agent is left loaded: run \
                     `xcover detach {pid}` again later"
                ),
            }));
        }
        round = again()?;
    }
}

/// Runs the agent's `FINI` (it unmaps the regions the agent mapped).
fn run_fini<T: Tracer>(
    round: &mut Round<T>,
    image: &AgentImage,
    session: &SessionFile,
    base: u64,
) -> Result<()> {
    let fini = image.export(AGENT_FINI)?;
    let rc = round.sp.call(
        round.tid,
        base + fini,
        [0; 6],
        round.scratch.stack_top(),
        round.scratch.trap(),
    )? as i64;
    if rc < 0 {
        return Err(agent_failed(round.sp.pid(), AGENT_FINI, rc, session));
    }
    fault_point("finished");
    Ok(())
}

/// Unmaps the session (where it was recorded, and any mapping or descriptor of it a killed
/// xcover made but never recorded) and the agent, forgetting each in the session. Goes on
/// after an error; returns the first.
fn unmap_all<T: Tracer>(
    round: &mut Round<T>,
    session: &SessionFile,
    base: u64,
    size: u64,
    map_addr: u64,
) -> Result<()> {
    let h = session.header();
    let (sp, tid) = (&mut round.sp, round.tid);
    let mut unmap = Ok(());
    if map_addr != 0 {
        unmap = unmap.and(
            sp.syscall(tid, nr::MUNMAP, [map_addr, h.total_size, 0, 0, 0, 0])
                .map(drop),
        );
        h.target_map_addr.store(0, Ordering::Release);
    }
    let (maps, fds) = session_leftovers(sp.pid(), session);
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
    unmap
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

/// Waiting threads out of the doomed ranges, driven by a scripted tracer.
#[cfg(test)]
mod scripted {
    use super::*;
    use crate::procfs::TargetInfo;
    use crate::tracer::script::Script;

    const AGENT: Doomed = (0x50_0000, 0x51_0000, "the agent");

    /// A session file for a pid no process can have (above the kernel's `pid_max`).
    fn session(pid: i32) -> SessionFile {
        let info = TargetInfo {
            pid,
            start_time: 1,
            exe_path: String::new(),
            build_id: Vec::new(),
            uid: 0,
            gid: 0,
            fsuid: 0,
            fsgid: 0,
        };
        SessionFile::create(&info, session::DEFAULT_SESSION_SIZE, false).unwrap()
    }

    /// One stop of the scripted target (thread 10), with scratch memory.
    fn round(s: &Script) -> Result<Round<&Script>> {
        let mut sp = StoppedProcess::stop_with(s, 10)?;
        sp.syscall_gadget = Some(0x7000);
        let scratch = Scratch {
            addr: 0x60_0000,
            size: 0x1000,
            data_size: 0,
        };
        Ok(Round {
            sp,
            tid: 10,
            scratch,
        })
    }

    #[test]
    fn a_thread_inside_at_the_first_check_and_out_at_the_second_is_waited_out() {
        let s = Script::new(&[10]);
        let session = session(2_000_000_001);
        s.thread(10, |t| t.regs.rip = AGENT.0 + 0x100);
        let mut waited = Waited::default();
        let again = || {
            // The target ran, and the thread left the agent.
            s.thread(10, |t| t.regs.rip = 0x1234);
            round(&s)
        };
        let first = round(&s).unwrap();
        let r = wait_out(
            first,
            &session,
            || Ok(vec![AGENT]),
            again,
            &|e| e,
            &mut waited,
        );
        let last = r.unwrap();
        assert_eq!(waited.retries, 1);
        // The first round's scratch memory was unmapped before the target ran.
        assert_eq!(s.logged("syscall"), [format!("syscall {}", nr::MUNMAP)]);
        assert_eq!(s.logged("detach"), ["detach 10 0"]);
        let (u, resumed, _) = last.end(&session);
        u.and(resumed).unwrap();
        session.remove().unwrap();
    }

    #[test]
    fn a_thread_that_stays_inside_fails_safe_after_the_last_try() {
        let s = Script::new(&[10]);
        let session = session(2_000_000_002);
        s.thread(10, |t| t.regs.rip = AGENT.0);
        let mut waited = Waited::default();
        let first = round(&s).unwrap();
        let r = wait_out(
            first,
            &session,
            || Ok(vec![AGENT]),
            || round(&s),
            &|e| e,
            &mut waited,
        );
        let e = r.err().expect("fails");
        assert!(e.to_string().contains("stays inside the agent"), "{e}");
        assert_eq!(waited.retries, LEAVE_TRIES);
        // Every round let the target go.
        assert_eq!(s.logged("detach").len(), LEAVE_TRIES as usize);
        session.remove().unwrap();
    }
}
