//! Stopping every thread of a process, and letting it go again exactly as it was.
//!
//! [`StoppedProcess::stop`] seizes every thread (`PTRACE_SEIZE` with `PTRACE_O_TRACECLONE`,
//! then `PTRACE_INTERRUPT`) and waits until each one is stopped. It re-reads
//! `/proc/<pid>/task` until a pass finds no new thread, so a thread created during the attach
//! is either seen there or auto-attached through its creator's `PTRACE_EVENT_CLONE` stop; a
//! thread that exits meanwhile just drops out. A thread that reports a clone event is never
//! held there (it is inside `clone()`, whose result is not in its registers yet): it is let
//! finish the call and held at its next stop, on the way back to user mode.
//!
//! # Signals
//!
//! Under `PTRACE_SEIZE` a thread can be held in one of two kinds of stop:
//! - an event-stop (our interrupt, a clone event, or a group-stop caused by SIGSTOP & co.):
//!   nothing is pending; detaching with signal 0 resumes it (and a group-stop stays in force,
//!   as the kernel re-applies it on detach);
//! - a signal-delivery-stop: the signal has been dequeued and will be lost unless the tracer
//!   hands it back when resuming. We keep its `siginfo` and pass the signal to
//!   `PTRACE_DETACH`, so it is delivered exactly once, with its original `siginfo`.
//!
//! A thread used for remote work also dequeues signals that arrive while it runs our code;
//! those are suppressed at the time (a handler must not run on our private stack) and
//! stashed, and handed back when the thread is released (see `remote.rs`).
//!
//! The guard's `Drop` restores registers and detaches every thread, so an early return or a
//! panic can never leave the target frozen or traced.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::sys::{self, Regs, SigInfo, Wait};
use crate::tracer::{Ptrace, Tracer};
use crate::{Error, Result};

/// How long we wait for a thread to report a stop before giving up on it.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// The kind of stop a thread is held in.
#[derive(Clone, Copy)]
pub(crate) enum StopKind {
    /// An event-stop or group-stop: nothing to deliver on release.
    Event,
    /// A signal-delivery-stop of the target's own signal, to be delivered on release.
    Signal(SigInfo),
    /// A signal-delivery-stop of our own making (the trap ending a remote operation, or a
    /// fault in it): to be suppressed on release.
    Ours,
}

/// One stopped thread.
pub(crate) struct Thread {
    pub(crate) kind: StopKind,
    /// The thread's registers before we changed them, restored on release.
    pub(crate) saved: Option<Regs>,
    /// Signals dequeued while the thread ran our code, to hand back on release.
    pub(crate) stashed: Vec<SigInfo>,
}

/// Every thread of a process, stopped under ptrace. Dropping it lets them all go.
pub struct StoppedProcess<T: Tracer = Ptrace> {
    pub(crate) pid: i32,
    pub(crate) threads: BTreeMap<i32, Thread>,
    /// Every call to the kernel goes through it.
    pub(crate) tracer: T,
    pub(crate) started: Instant,
    /// Address of a `syscall` instruction in the target (found lazily).
    pub(crate) syscall_gadget: Option<u64>,
    /// Threads borrowed for remote work: their x87/SSE state and signal mask, given back on
    /// release, and whether we have blocked every signal yet (see `remote.rs`).
    pub(crate) borrowed: BTreeMap<i32, (sys::FpRegs, u64, bool)>,
    /// The park remote work in one thread starts and ends in (see `park.rs`).
    pub(crate) park: Option<crate::park::Park>,
    /// The system-call park in the vDSO, and the bytes it covers (see `park.rs`).
    pub(crate) vpark: Option<(crate::park::Park, Vec<u8>)>,
    released: bool,
}

fn sys_err(pid: i32, tid: i32, call: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Sys {
        pid,
        tid,
        call,
        source,
    }
}

impl StoppedProcess<Ptrace> {
    /// Stops every thread of `pid`.
    ///
    /// Errors: [`Error::NoSuchProcess`], [`Error::PermissionDenied`] (for `PTRACE_SEIZE`), or
    /// a failed call. On error every thread already seized is released.
    pub fn stop(pid: i32) -> Result<StoppedProcess> {
        let started = Instant::now();
        let tracer = Ptrace::open(pid)?;
        StoppedProcess::stop_at(tracer, pid, started)
    }
}

impl<T: Tracer> StoppedProcess<T> {
    /// [`stop`](StoppedProcess::stop) through `tracer`.
    pub fn stop_with(tracer: T, pid: i32) -> Result<StoppedProcess<T>> {
        StoppedProcess::stop_at(tracer, pid, Instant::now())
    }

    fn stop_at(tracer: T, pid: i32, started: Instant) -> Result<StoppedProcess<T>> {
        let mut sp = StoppedProcess {
            pid,
            threads: BTreeMap::new(),
            tracer,
            started,
            syscall_gadget: None,
            borrowed: BTreeMap::new(),
            park: None,
            vpark: None,
            released: false,
        };
        sp.seize_all()?;
        Ok(sp)
    }

    fn seize_all(&mut self) -> Result<()> {
        let pid = self.pid;
        // TracerPid names the tracing thread, which need not be the main one.
        let me = self.tracer.me();
        // Threads seized (or auto-attached) whose stop we have not seen yet.
        let mut pending: Vec<i32> = Vec::new();
        let mut first = true;
        loop {
            let tids = self.tracer.tasks(pid).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Error::NoSuchProcess { pid }
                } else {
                    sys_err(pid, pid, "read /proc/<pid>/task")(e)
                }
            })?;
            let mut new = false;
            for tid in tids {
                if self.threads.contains_key(&tid) || pending.contains(&tid) {
                    continue;
                }
                match self.tracer.seize(tid) {
                    Ok(()) => {
                        self.tracer.interrupt(tid).map_err(sys_err(
                            pid,
                            tid,
                            "PTRACE_INTERRUPT",
                        ))?;
                        pending.push(tid);
                        new = true;
                    }
                    // Exited since we listed it.
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                        // Auto-attached by PTRACE_O_TRACECLONE before we saw its creator's
                        // clone event: it is ours already.
                        if !first && self.tracer.task_tracer_pid(pid, tid).unwrap_or(0) == me {
                            pending.push(tid);
                            new = true;
                        } else if (!first || tid != pid) && self.tracer.thread_dead(pid, tid) {
                            // Exiting (since we listed it, or already in the first listing:
                            // a thread storm always has some): the kernel refuses to attach
                            // to a thread whose exit has begun with EPERM, not ESRCH. The
                            // main thread is not excused in the first listing: a zombie
                            // leader there is the target's own state to report.
                        } else if self.tracer.tracer_pid(pid).unwrap_or(0) != 0 && first {
                            return Err(Error::Unsupported {
                                pid,
                                reason: "is already traced by another process".into(),
                            });
                        } else {
                            return Err(Error::PermissionDenied {
                                pid,
                                call: "PTRACE_SEIZE",
                            });
                        }
                    }
                    Err(e) => return Err(sys_err(pid, tid, "PTRACE_SEIZE")(e)),
                }
                first = false;
            }
            if first {
                // /proc/<pid>/task was empty or every thread vanished.
                return Err(Error::NoSuchProcess { pid });
            }
            if !new && pending.is_empty() {
                return Ok(());
            }
            self.wait_for_stops(&mut pending)?;
        }
    }

    /// Waits until every thread in `pending` is stopped (or gone).
    fn wait_for_stops(&mut self, pending: &mut Vec<i32>) -> Result<()> {
        let pid = self.pid;
        let deadline = Instant::now() + STOP_TIMEOUT;
        let mut idle_passes = 0u32;
        while !pending.is_empty() {
            let mut progressed = false;
            let mut i = 0;
            while i < pending.len() {
                let tid = pending[i];
                match self.tracer.wait(tid, true) {
                    Ok(Wait::NotYet) => {
                        if Instant::now() > deadline {
                            // A zombie thread (e.g. an exited leader whose other threads
                            // live on) never reports a stop: leave it out.
                            if self.tracer.thread_dead(pid, tid) {
                                pending.swap_remove(i);
                                continue;
                            }
                            return Err(Error::Unexpected {
                                pid,
                                tid,
                                what: format!("did not stop within {STOP_TIMEOUT:?}"),
                            });
                        }
                        i += 1;
                    }
                    Ok(Wait::Gone) => {
                        pending.swap_remove(i);
                        progressed = true;
                    }
                    Err(e) if e.raw_os_error() == Some(libc::ECHILD) => {
                        pending.swap_remove(i);
                        progressed = true;
                    }
                    Err(e) => return Err(sys_err(pid, tid, "waitpid")(e)),
                    Ok(Wait::Stopped { sig, event }) => {
                        if event == sys::EVENT_CLONE {
                            let child = self.tracer.geteventmsg(tid).map_err(sys_err(
                                pid,
                                tid,
                                "PTRACE_GETEVENTMSG",
                            ))? as i32;
                            if !self.threads.contains_key(&child) && !pending.contains(&child) {
                                pending.push(child);
                            }
                            // The creator is still inside clone(): its `rax` is the
                            // -ENOSYS of syscall entry, not the child's tid yet. Holding it
                            // here is unsafe: running remote work in it finishes the clone
                            // under our registers, and restoring the saved ones afterwards
                            // makes clone() return -ENOSYS to a thread that does exist
                            // (glibc then creates it a second time with clone()). So let
                            // it finish the call and stop again on the way back to user
                            // mode, with the interrupt we queue now (the clone stop
                            // consumed the first one).
                            let r = self
                                .tracer
                                .interrupt(tid)
                                .map_err(|e| ("PTRACE_INTERRUPT", e))
                                .and_then(|()| {
                                    self.tracer.cont(tid, 0).map_err(|e| ("PTRACE_CONT", e))
                                });
                            match r {
                                Ok(()) => {}
                                // Killed meanwhile: its exit is reaped on the next pass.
                                Err((_, e)) if e.raw_os_error() == Some(libc::ESRCH) => {}
                                Err((call, e)) => return Err(sys_err(pid, tid, call)(e)),
                            }
                            progressed = true;
                            i += 1;
                            continue;
                        }
                        let kind = if event != 0 {
                            StopKind::Event
                        } else {
                            let _ = sig;
                            let si = self.tracer.getsiginfo(tid).map_err(sys_err(
                                pid,
                                tid,
                                "PTRACE_GETSIGINFO",
                            ))?;
                            StopKind::Signal(si)
                        };
                        self.threads.insert(
                            tid,
                            Thread {
                                kind,
                                saved: None,
                                stashed: Vec::new(),
                            },
                        );
                        pending.swap_remove(i);
                        progressed = true;
                    }
                }
            }
            if !progressed && !pending.is_empty() {
                // Sleep rather than spin: the threads we wait for need the CPU to reach
                // their stop, and on a small machine a spinning tracer delays them.
                idle_passes += 1;
                std::thread::sleep(Duration::from_micros(if idle_passes < 50 {
                    10
                } else {
                    100
                }));
            }
        }
        Ok(())
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The stopped threads.
    pub fn tids(&self) -> Vec<i32> {
        self.threads.keys().copied().collect()
    }

    /// How long ago the stop began.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Reads target memory.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        self.tracer.read(addr, buf).map_err(|source| Error::Memory {
            pid: self.pid,
            op: "read",
            addr,
            len: buf.len(),
            source,
        })
    }

    /// Writes target memory, read-only pages included.
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<()> {
        self.tracer
            .write(addr, data)
            .map_err(|source| Error::Memory {
                pid: self.pid,
                op: "write",
                addr,
                len: data.len(),
                source,
            })
    }

    /// Registers of a stopped thread (as the thread will see them when resumed).
    pub fn regs(&self, tid: i32) -> Result<Regs> {
        match self.threads.get(&tid).and_then(|t| t.saved) {
            Some(r) => Ok(r),
            None => self
                .tracer
                .getregs(tid)
                .map_err(sys_err(self.pid, tid, "PTRACE_GETREGS")),
        }
    }

    /// Sets the instruction pointer thread `tid` resumes at when the world is let go.
    ///
    /// Used to move a thread out of bytes that are about to be patched or restored, to the
    /// equivalent instruction the agent names. It takes effect at once (the thread's
    /// registers, or its park's block, are written now), so that a thread released early,
    /// by a dying xcover, resumes at the new place too.
    pub fn set_ip(&mut self, tid: i32, ip: u64) -> Result<()> {
        let mut regs = self.regs(tid)?;
        regs.rip = ip;
        self.set_regs(tid, regs)
    }

    /// Sets the registers thread `tid` resumes with, at once (as [`set_ip`](Self::set_ip)).
    pub(crate) fn set_regs(&mut self, tid: i32, regs: Regs) -> Result<()> {
        let pid = self.pid;
        let t = self.threads.get_mut(&tid).ok_or(Error::Unexpected {
            pid,
            tid,
            what: "is not one of the stopped threads".into(),
        })?;
        t.saved = Some(regs);
        if self.idle_park(tid).is_some() {
            self.sync_park(tid)
        } else {
            self.tracer
                .setregs(tid, &regs)
                .map_err(sys_err(pid, tid, "PTRACE_SETREGS"))
        }
    }

    /// The `%fs`-relative offset of the kernel-maintained `cpu_id` of the rseq area, when
    /// every stopped thread registered one at the same distance from its `%fs` base (as
    /// glibc 2.35+ does for each thread it creates); `None` otherwise. Asks each thread
    /// with `PTRACE_GET_RSEQ_CONFIGURATION`, so it must run before any thread is parked.
    pub fn rseq_cpu_id_offset(&self) -> Option<i32> {
        /// `offsetof(struct rseq, cpu_id)`.
        const CPU_ID: i64 = 4;
        /// `sizeof` the original `struct rseq`, which has `cpu_id`.
        const RSEQ_MIN: u32 = 32;
        let mut off = None;
        for &tid in self.threads.keys() {
            let (area, size) = self.tracer.rseq_area(tid)?;
            if size < RSEQ_MIN {
                return None;
            }
            let fs = self.regs(tid).ok()?.fs_base;
            let o = i32::try_from((area.wrapping_sub(fs) as i64).checked_add(CPU_ID)?).ok()?;
            if o == 0 || off.is_some_and(|p| p != o) {
                return None;
            }
            off = Some(o);
        }
        off
    }

    /// The `%fs`-relative offset of the thread id in the TCB
    /// ([`xcover_session::GLIBC_TCB_TID_OFF`]), when every stopped thread has its own id there
    /// (glibc); `None` otherwise.
    pub fn tcb_tid_offset(&self) -> Option<i32> {
        let off = xcover_session::GLIBC_TCB_TID_OFF;
        for &tid in self.threads.keys() {
            let fs = self.regs(tid).ok()?.fs_base;
            let mut b = [0u8; 4];
            self.read(fs.checked_add(off as u64)?, &mut b).ok()?;
            if fs == 0 || i32::from_le_bytes(b) != tid {
                return None;
            }
        }
        i32::try_from(off).ok()
    }

    /// The thread to run remote work in: the leader when it is stopped, else the first.
    pub fn worker_tid(&self) -> Option<i32> {
        if self.threads.contains_key(&self.pid) {
            Some(self.pid)
        } else {
            self.threads.keys().next().copied()
        }
    }

    /// Whether thread `tid` is held in the signal-delivery-stop of a SIGTRAP raised by a
    /// trap instruction (`si_code == SI_KERNEL`: an `int3`).
    pub(crate) fn held_int3_trap(&self, tid: i32) -> bool {
        matches!(
            self.threads.get(&tid).map(|t| t.kind),
            Some(StopKind::Signal(si)) if si.si_signo == libc::SIGTRAP && si.si_code == libc::SI_KERNEL
        )
    }

    /// Forgets the signal thread `tid` is held with: it is not delivered on release.
    pub(crate) fn drop_held_signal(&mut self, tid: i32) {
        if let Some(t) = self.threads.get_mut(&tid)
            && matches!(t.kind, StopKind::Signal(_))
        {
            t.kind = StopKind::Event;
        }
    }

    /// Lets every thread go: registers restored, held signals delivered, ptrace detached.
    /// Returns the first error met (every thread is still released).
    pub fn resume(mut self) -> Result<()> {
        self.release()
    }

    fn release(&mut self) -> Result<()> {
        if self.released {
            return Ok(());
        }
        self.released = true;
        let pid = self.pid;
        let mut first_err = None;
        // Signals beyond the first one a thread stashed are queued back from inside it.
        let extra: Vec<i32> = self
            .threads
            .iter()
            .filter(|(_, t)| t.stashed.len() > 1)
            .map(|(&tid, _)| tid)
            .collect();
        for tid in extra {
            if let Err(e) = self.requeue_extra_signals(tid) {
                first_err.get_or_insert(e);
            }
        }
        self.park = None;
        // The vDSO park's code goes back while every thread is still stopped: once one
        // thread runs, the process may die (a fault it was about to take) and its memory
        // can no longer be written.
        if let Err(e) = self.remove_vdso_park() {
            first_err.get_or_insert(e);
        }
        let threads = std::mem::take(&mut self.threads);
        let borrowed = std::mem::take(&mut self.borrowed);
        for (tid, t) in threads {
            // The FP/SSE state our code may have changed, and the signal mask we set.
            if let Some((fp, mask, _)) = borrowed.get(&tid) {
                for (call, r) in [
                    ("PTRACE_SETFPREGS", self.tracer.setfpregs(tid, fp)),
                    ("PTRACE_SETSIGMASK", self.tracer.setsigmask(tid, *mask)),
                ] {
                    if let Err(e) = r
                        && e.raw_os_error() != Some(libc::ESRCH)
                    {
                        first_err.get_or_insert(sys_err(pid, tid, call)(e));
                    }
                }
            }
            if let Some(regs) = t.saved
                && let Err(e) = self.tracer.setregs(tid, &regs)
                && e.raw_os_error() != Some(libc::ESRCH)
            {
                first_err.get_or_insert(sys_err(pid, tid, "PTRACE_SETREGS")(e));
            }
            let sig = match t.kind {
                StopKind::Event => 0,
                StopKind::Signal(si) => si.si_signo,
                StopKind::Ours => match t.stashed.first() {
                    Some(si) => {
                        let _ = self.tracer.setsiginfo(tid, si);
                        si.si_signo
                    }
                    None => 0,
                },
            };
            if let Err(e) = self.tracer.detach(tid, sig)
                && e.raw_os_error() != Some(libc::ESRCH)
            {
                first_err.get_or_insert(sys_err(pid, tid, "PTRACE_DETACH")(e));
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl<T: Tracer> Drop for StoppedProcess<T> {
    fn drop(&mut self) {
        let _ = self.release();
    }
}

/// The stop logic driven by a scripted tracer: the races the end-to-end tests cannot make
/// happen on purpose.
#[cfg(test)]
mod scripted {
    use super::*;
    use crate::tracer::script::{self, Script};

    #[test]
    fn a_thread_that_exits_between_interrupt_and_wait_drops_out() {
        let s = Script::new(&[10, 11]);
        s.thread(11, |t| t.on_interrupt.push_back(Wait::Gone));
        let sp = StoppedProcess::stop_with(&s, 10).unwrap();
        assert_eq!(sp.tids(), [10]);
        sp.resume().unwrap();
        assert_eq!(s.logged("detach"), ["detach 10 0"]);
    }

    #[test]
    fn a_thread_listed_but_gone_before_its_seize_is_left_out() {
        let s = Script::new(&[10, 11]);
        s.thread(11, |t| t.alive = false);
        let sp = StoppedProcess::stop_with(&s, 10).unwrap();
        assert_eq!(sp.tids(), [10]);
    }

    #[test]
    fn a_thread_that_appears_during_the_stop_is_stopped_too() {
        let s = Script::new(&[10]);
        s.k.borrow_mut().listings.push_back(vec![10, 12]);
        s.k.borrow_mut().threads.insert(
            12,
            Script::new(&[12])
                .k
                .into_inner()
                .threads
                .remove(&12)
                .unwrap(),
        );
        let sp = StoppedProcess::stop_with(&s, 10).unwrap();
        assert_eq!(sp.tids(), [10, 12]);
    }

    #[test]
    fn a_group_stop_instead_of_the_interrupt_stop_is_held_and_a_signal_stop_given_back() {
        let s = Script::new(&[10, 11]);
        let group_stop = Wait::Stopped {
            sig: libc::SIGSTOP,
            event: sys::EVENT_STOP,
        };
        s.thread(10, |t| t.on_interrupt.push_back(group_stop));
        s.thread(11, |t| {
            t.on_interrupt.push_back(Wait::Stopped {
                sig: libc::SIGUSR1,
                event: 0,
            });
            t.siginfo = script::siginfo(libc::SIGUSR1);
        });
        let sp = StoppedProcess::stop_with(&s, 10).unwrap();
        assert_eq!(sp.tids(), [10, 11]);
        sp.resume().unwrap();
        // The group-stop is re-applied by the kernel on detach: nothing to deliver. The
        // dequeued signal is handed back, once.
        let usr1 = format!("detach 11 {}", libc::SIGUSR1);
        assert_eq!(s.logged("detach"), ["detach 10 0", usr1.as_str()]);
    }

    #[test]
    fn no_thread_left_is_no_such_process() {
        let s = Script::new(&[]);
        assert!(matches!(
            StoppedProcess::stop_with(&s, 10),
            Err(Error::NoSuchProcess { pid: 10 })
        ));
    }
}
