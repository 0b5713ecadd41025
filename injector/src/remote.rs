//! Remote system calls and remote function calls in a stopped thread.
//!
//! # Remote system call
//! The thread's registers are saved, `rip` is pointed at a `syscall` instruction (the
//! thread's park, see `park.rs`, or before there is one, an instruction found in the
//! target's vDSO), the arguments are loaded, and the thread runs under `PTRACE_SYSCALL` to
//! the call's exit stop. `orig_rax` is set to -1 first: a thread interrupted inside a system
//! call (`read`, `nanosleep`) stopped with `rax = -ERESTARTSYS` (or
//! `-ERESTART_RESTARTBLOCK`) and `orig_rax` = its system call number, and on resuming the
//! kernel would otherwise "restart" that call by rewinding `rip` over our code. Afterwards
//! the original registers go back unchanged, so on release the kernel restarts the
//! interrupted call exactly as if we had never been there: no `EINTR`, no lost bytes, and
//! `nanosleep` resumes with its remaining time (its restart block is not touched by the
//! calls we make).
//!
//! # Remote call
//! A function of the agent runs on a private stack we mapped (never the thread's own stack,
//! whose red zone and guard page we know nothing about) and returns into the thread's park,
//! which stores the result, raises a flag we poll, and waits for us to stop it. If it faults
//! instead, the fault's signal-delivery-stop is caught, the signal suppressed, the thread
//! parked again and an error reported: the target lives on.
//!
//! Signals that the thread dequeues while it runs our code are suppressed at that moment (a
//! handler must not run on our stack with our registers) and handed back on release.

use std::time::{Duration, Instant};

use crate::park::{self, Park, Spot};
use crate::parks::read_vdso;
use crate::stop::{StopKind, StoppedProcess};
use crate::sys::{self, Regs, Wait};
use crate::tracer::Tracer;
use crate::{Error, Result};

/// How long a remote call may run before we interrupt it and report an error.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// System call numbers used remotely (x86-64).
pub mod nr {
    /// `mmap`.
    pub const MMAP: u64 = 9;
    /// `mprotect`.
    pub const MPROTECT: u64 = 10;
    /// `munmap`.
    pub const MUNMAP: u64 = 11;
    /// `close`.
    pub const CLOSE: u64 = 3;
    /// `openat`.
    pub const OPENAT: u64 = 257;
    /// `rt_tgsigqueueinfo`.
    pub const RT_TGSIGQUEUEINFO: u64 = 297;
    /// `getpid`.
    pub const GETPID: u64 = 39;
}

fn name_of(n: u64) -> &'static str {
    match n {
        nr::MMAP => "mmap",
        nr::MPROTECT => "mprotect",
        nr::MUNMAP => "munmap",
        nr::CLOSE => "close",
        nr::OPENAT => "openat",
        nr::RT_TGSIGQUEUEINFO => "rt_tgsigqueueinfo",
        nr::GETPID => "getpid",
        _ => "syscall",
    }
}

const EFLAGS_TF: u64 = 0x100;
const EFLAGS_DF: u64 = 0x400;

/// Finds a `syscall` instruction (`0f 05`) in the target's vDSO.
fn find_vdso_syscall<T: Tracer>(sp: &StoppedProcess<T>) -> Option<u64> {
    let (start, buf) = read_vdso(sp)?;
    buf.windows(2)
        .position(|w| w == [0x0f, 0x05])
        .map(|p| start + p as u64)
}

/// What ends a remote operation.
#[derive(Clone, Copy)]
enum Until {
    /// The exit stop of the system call at `syscall_at` (run under `PTRACE_SYSCALL`).
    SyscallExit { syscall_at: u64 },
    /// The `int3` at this address (a call without a park).
    Trap(u64),
    /// The return of a call into the park.
    Park(Park),
}

/// One remote operation in progress.
struct Run {
    tid: i32,
    /// Where it started (named in errors).
    func: u64,
    until: Until,
    /// When it is interrupted as too slow.
    deadline: Instant,
    /// It was interrupted for being too slow.
    interrupted: bool,
    /// A park call's `done` flag was seen set (and the thread interrupted).
    done_seen: bool,
    /// The entry stop of the system call was seen.
    in_syscall: bool,
}

/// How an operation ended.
#[allow(clippy::large_enum_variant)] // one per remote operation, never stored
enum Ended {
    /// Stopped where expected, with these registers.
    Done(Regs),
    /// A park call whose thread went home by itself before we stopped it (we were slow):
    /// it runs its own code again; the call's result is in the block.
    WentHome,
}

impl<T: Tracer> StoppedProcess<T> {
    /// Saves the thread's registers the first time we use it, and returns them.
    ///
    /// The first time a thread is borrowed for remote work, its x87/SSE state and signal
    /// mask are saved too (the agent's code uses SSE registers; `release` puts both back).
    /// Its signals are blocked later, by [`block_signals`](Self::block_signals), just before
    /// the first operation runs: a thread parked first is then never left with its own
    /// registers and every signal blocked, should xcover die in between.
    pub(crate) fn original_regs(&mut self, tid: i32) -> Result<Regs> {
        let pid = self.pid;
        if !self.borrowed.contains_key(&tid) && self.threads.contains_key(&tid) {
            let fp = self.tracer.getfpregs(tid).map_err(|source| Error::Sys {
                pid,
                tid,
                call: "PTRACE_GETFPREGS",
                source,
            })?;
            let mask = self.tracer.getsigmask(tid).map_err(|source| Error::Sys {
                pid,
                tid,
                call: "PTRACE_GETSIGMASK",
                source,
            })?;
            self.borrowed.insert(tid, (fp, mask, false));
        }
        let t = self.threads.get_mut(&tid).ok_or(Error::Unexpected {
            pid,
            tid,
            what: "thread is not stopped".into(),
        })?;
        if let Some(r) = t.saved {
            return Ok(r);
        }
        let r = self.tracer.getregs(tid).map_err(|source| Error::Sys {
            pid,
            tid,
            call: "PTRACE_GETREGS",
            source,
        })?;
        t.saved = Some(r);
        self.sync_park(tid)?;
        Ok(r)
    }

    /// Blocks every signal of borrowed thread `tid` with `PTRACE_SETSIGMASK`, once. It
    /// changes the mask without a return to user mode: signals arriving meanwhile stay
    /// pending in the kernel instead of being dequeued by our code (faults and our traps
    /// are forced signals, which blocking does not hold back). The mask is restored on
    /// release (or by the park), and pending signals are then delivered as usual. Without
    /// this, a signal requeued to the thread by `requeue_extra_signals` was dequeued again
    /// by the very next remote step and lost.
    fn block_signals(&mut self, tid: i32) -> Result<()> {
        match self.borrowed.get_mut(&tid) {
            Some((_, _, blocked)) if !*blocked => {
                self.tracer
                    .setsigmask(tid, u64::MAX)
                    .map_err(|source| Error::Sys {
                        pid: self.pid,
                        tid,
                        call: "PTRACE_SETSIGMASK",
                        source,
                    })?;
                *blocked = true;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    pub(crate) fn set_live_regs(&self, tid: i32, regs: &Regs) -> Result<()> {
        self.tracer.setregs(tid, regs).map_err(|source| Error::Sys {
            pid: self.pid,
            tid,
            call: "PTRACE_SETREGS",
            source,
        })
    }

    /// Runs the thread with `regs` until `until`, and returns how it ended. Always leaves
    /// the thread stopped: with its original registers back, or parked.
    ///
    /// The steps: [`borrow`](Self::borrow) the thread, then [`go`](Self::go) and
    /// [`next_stop`](Self::next_stop) until [`on_stop`](Self::on_stop) says the operation
    /// ended, then [`give_back`](Self::give_back).
    fn run_to(&mut self, tid: i32, regs: &Regs, until: Until) -> Result<Ended> {
        let orig = self.borrow(tid, regs)?;
        let mut run = Run {
            tid,
            func: regs.rip,
            until,
            deadline: Instant::now() + CALL_TIMEOUT,
            interrupted: false,
            done_seen: false,
            in_syscall: false,
        };
        let result = loop {
            self.go(&run)?;
            let w = self.next_stop(&mut run)?;
            if let Some(end) = self.on_stop(&mut run, w)? {
                break end;
            }
        };
        self.give_back(tid, &orig, result)
    }

    /// Takes thread `tid` for a remote operation: its own state saved, a signal it was
    /// stopped for kept for release (after our work), every signal blocked, `regs` loaded.
    /// Returns its original registers.
    fn borrow(&mut self, tid: i32, regs: &Regs) -> Result<Regs> {
        let orig = self.original_regs(tid)?;
        let t = self
            .threads
            .get_mut(&tid)
            .expect("checked by original_regs");
        if let StopKind::Signal(si) = t.kind {
            t.stashed.insert(0, si);
        }
        t.kind = StopKind::Ours;
        self.block_signals(tid)?;
        self.tracer
            .setregs(tid, regs)
            .map_err(self.sys_err(tid, "PTRACE_SETREGS"))?;
        Ok(orig)
    }

    /// Lets the borrowed thread run: to its next system-call stop for a system call, else
    /// until it stops.
    fn go(&self, run: &Run) -> Result<()> {
        let tid = run.tid;
        match run.until {
            Until::SyscallExit { .. } => self
                .tracer
                .syscall(tid)
                .map_err(self.sys_err(tid, "PTRACE_SYSCALL")),
            _ => self
                .tracer
                .cont(tid, 0)
                .map_err(self.sys_err(tid, "PTRACE_CONT")),
        }
    }

    /// Waits for the borrowed thread's next stop (or its end). Meanwhile it watches a park
    /// call's `done` flag (and interrupts the thread once it is set), the deadline (and
    /// interrupts the thread once it is past), and whether the thread was killed (a traced
    /// group leader killed while it runs our code may never report).
    fn next_stop(&self, run: &mut Run) -> Result<Wait> {
        let (pid, tid) = (self.pid, run.tid);
        let mut polls = 0u32;
        loop {
            match self
                .tracer
                .wait(tid, true)
                .map_err(self.sys_err(tid, "waitpid"))?
            {
                Wait::NotYet => {}
                w => return Ok(w),
            }
            if let Until::Park(p) = run.until
                && !run.done_seen
            {
                let mut d = [0u8; 4];
                if self.read(p.done_at(), &mut d).is_ok() && d == [1, 0, 0, 0] {
                    run.done_seen = true;
                    self.interrupt(tid)?;
                }
            }
            if !run.interrupted && !run.done_seen && Instant::now() > run.deadline {
                self.interrupt(tid)?;
                run.interrupted = true;
            }
            // A thread killed while it runs our code (SIGKILL to the process, another
            // thread's exit_group) may never report: a traced group leader stays an
            // unreported zombie until every other thread is reaped. Look at its state now
            // and then instead of waiting forever.
            polls += 1;
            if polls.is_multiple_of(64) && self.tracer.thread_dead(pid, tid) {
                return Ok(Wait::Gone);
            }
            if run.interrupted && Instant::now() > run.deadline + CALL_TIMEOUT {
                return Err(Error::RemoteCall {
                    pid,
                    tid,
                    func: run.func,
                    what: format!("neither returned nor stopped within {:?}", 2 * CALL_TIMEOUT),
                });
            }
            std::thread::yield_now();
        }
    }

    fn interrupt(&self, tid: i32) -> Result<()> {
        self.tracer
            .interrupt(tid)
            .map_err(self.sys_err(tid, "PTRACE_INTERRUPT"))
    }

    /// What a stop of the borrowed thread means: the end of the operation
    /// (`Some(result)`), or `None` to let it run on.
    fn on_stop(&mut self, run: &mut Run, w: Wait) -> Result<Option<Result<Ended>>> {
        match w {
            Wait::NotYet => unreachable!("next_stop waits for a stop"),
            Wait::Gone => Err(self.lost(run.tid)),
            Wait::Stopped { sig, event: 0 } if sig == sys::SYSCALL_STOP => {
                self.on_syscall_stop(run)
            }
            Wait::Stopped { event, .. } if event != 0 => self.on_event_stop(run, event),
            Wait::Stopped { sig, .. } => self.on_signal_stop(run, sig),
        }
    }

    /// Forgets a thread that exited during a remote operation, and says so.
    fn lost(&mut self, tid: i32) -> Error {
        self.threads.remove(&tid);
        self.borrowed.remove(&tid);
        if self.park.is_some_and(|p| p.tid == tid) {
            self.park = None;
        }
        if self.vpark.as_ref().is_some_and(|v| v.0.tid == tid) {
            let _ = self.remove_vdso_park();
        }
        Error::Unexpected {
            pid: self.pid,
            tid,
            what: "thread exited during a remote operation".into(),
        }
    }

    /// A system-call stop: the entry of ours, then its exit, which ends a system call.
    fn on_syscall_stop(&mut self, run: &mut Run) -> Result<Option<Result<Ended>>> {
        let Until::SyscallExit { syscall_at } = run.until else {
            return Ok(None);
        };
        if !run.in_syscall {
            run.in_syscall = true;
            return Ok(None);
        }
        let now = self.live_regs(run.tid)?;
        if now.rip == syscall_at + 2 {
            return Ok(Some(Ok(Ended::Done(now))));
        }
        Ok(Some(Err(Error::RemoteCall {
            pid: self.pid,
            tid: run.tid,
            func: run.func,
            what: format!("system call ended at rip {:#x}", now.rip),
        })))
    }

    /// An event-stop: a clone (whose new thread is kept stopped), our interrupt once a park
    /// call is done or late, or a group-stop (let run on).
    fn on_event_stop(&mut self, run: &mut Run, event: i32) -> Result<Option<Result<Ended>>> {
        let tid = run.tid;
        if event == sys::EVENT_CLONE {
            // Our code does not create threads; keep any such thread stopped.
            if let Ok(child) = self.tracer.geteventmsg(tid) {
                let _ = self.tracer.wait(child as i32, false);
                self.threads.insert(
                    child as i32,
                    crate::stop::Thread {
                        kind: StopKind::Event,
                        saved: None,
                        stashed: Vec::new(),
                    },
                );
            }
        }
        if run.done_seen && event == sys::EVENT_STOP {
            let Until::Park(p) = run.until else {
                unreachable!("done is only polled for park calls")
            };
            let now = self.live_regs(tid)?;
            match p.spot(now.rip) {
                Spot::Waiting => return Ok(Some(Ok(Ended::Done(now)))),
                // Too late: it restored itself and ran on.
                Spot::Going | Spot::Outside => return Ok(Some(Ok(Ended::WentHome))),
                Spot::Syscall => {}
            }
        }
        if run.interrupted {
            return Ok(Some(Err(Error::RemoteCall {
                pid: self.pid,
                tid,
                func: run.func,
                what: format!("did not return within {CALL_TIMEOUT:?}"),
            })));
        }
        // A pending PTRACE_INTERRUPT or a group-stop: go on.
        Ok(None)
    }

    /// A signal-delivery-stop: the trap that ends a call without a park, a fault of our
    /// code (the operation fails, the target lives on), or the target's own signal, held
    /// for release.
    fn on_signal_stop(&mut self, run: &mut Run, sig: i32) -> Result<Option<Result<Ended>>> {
        let tid = run.tid;
        let si = self
            .tracer
            .getsiginfo(tid)
            .map_err(self.sys_err(tid, "PTRACE_GETSIGINFO"))?;
        let now = self.live_regs(tid)?;
        let kernel_sent = si.si_code > 0;
        if let Until::Trap(at) = run.until
            && sig == libc::SIGTRAP
            && kernel_sent
            && now.rip == at + 1
        {
            return Ok(Some(Ok(Ended::Done(now))));
        }
        if kernel_sent
            && matches!(
                sig,
                libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE | libc::SIGTRAP
            )
        {
            return Ok(Some(Err(Error::RemoteCall {
                pid: self.pid,
                tid,
                func: run.func,
                what: format!(
                    "faulted with signal {sig} at rip {:#x} (fault address {:#x})",
                    now.rip,
                    sys::fault_addr(&si)
                ),
            })));
        }
        // The target's own signal: hold it for release (and for the park).
        self.threads
            .get_mut(&tid)
            .expect("still stopped")
            .stashed
            .push(si);
        self.sync_park(tid)?;
        Ok(None)
    }

    /// Ends a remote operation: the thread parked (or given its original registers `orig`
    /// back), or, if it went home by itself, made a thread like any other stopped one.
    fn give_back(&mut self, tid: i32, orig: &Regs, result: Result<Ended>) -> Result<Ended> {
        if let Ok(Ended::WentHome) = result {
            // Its registers, x87/SSE state and mask are its own again and the park handed
            // its held signals back: it is a thread like any other stopped one now.
            let t = self.threads.get_mut(&tid).expect("still stopped");
            t.saved = None;
            t.stashed.clear();
            t.kind = StopKind::Event;
            self.borrowed.remove(&tid);
            return result;
        }
        let back = match self.idle_park(tid) {
            Some(p) => p.idle_regs(orig),
            None => *orig,
        };
        self.tracer
            .setregs(tid, &back)
            .map_err(self.sys_err(tid, "PTRACE_SETREGS"))?;
        result
    }

    /// The registers thread `tid` is stopped with now (not the ones it resumes with).
    fn live_regs(&self, tid: i32) -> Result<Regs> {
        self.tracer
            .getregs(tid)
            .map_err(self.sys_err(tid, "PTRACE_GETREGS"))
    }

    fn sys_err(&self, tid: i32, call: &'static str) -> impl FnOnce(std::io::Error) -> Error {
        let pid = self.pid;
        move |source| Error::Sys {
            pid,
            tid,
            call,
            source,
        }
    }

    fn gadget(&mut self, tid: i32) -> Result<u64> {
        if let Some(g) = self.syscall_gadget {
            return Ok(g);
        }
        let g = find_vdso_syscall(self).ok_or(Error::Unexpected {
            pid: self.pid,
            tid,
            what: "no syscall instruction found in the vDSO".into(),
        })?;
        self.syscall_gadget = Some(g);
        Ok(g)
    }

    /// Makes system call `nr` with `args` in thread `tid`; returns its raw result
    /// (a negative errno on failure). It runs at the park's `syscall` when `tid` has one,
    /// else at one in the vDSO.
    pub fn syscall_raw(&mut self, tid: i32, nr: u64, args: [u64; 6]) -> Result<i64> {
        let mut regs = self.original_regs(tid)?;
        let at = match self.idle_park(tid) {
            Some(p) => {
                // Where the way home may push, should xcover die now.
                regs.rsp = p.stack;
                p.syscall_at()
            }
            None => self.gadget(tid)?,
        };
        regs.rip = at;
        regs.rax = nr;
        regs.orig_rax = u64::MAX;
        regs.rdi = args[0];
        regs.rsi = args[1];
        regs.rdx = args[2];
        regs.r10 = args[3];
        regs.r8 = args[4];
        regs.r9 = args[5];
        regs.eflags &= !EFLAGS_TF;
        match self.run_to(tid, &regs, Until::SyscallExit { syscall_at: at })? {
            Ended::Done(after) => Ok(after.rax as i64),
            Ended::WentHome => unreachable!("only park calls go home"),
        }
    }

    /// Like [`syscall_raw`](Self::syscall_raw), turning `-errno` into an error.
    pub fn syscall(&mut self, tid: i32, nr: u64, args: [u64; 6]) -> Result<u64> {
        let r = self.syscall_raw(tid, nr, args)?;
        if (-4095..0).contains(&r) {
            return Err(Error::RemoteSyscall {
                pid: self.pid,
                tid,
                name: name_of(nr),
                source: std::io::Error::from_raw_os_error(-r as i32),
            });
        }
        Ok(r as u64)
    }

    /// Calls the function at `func` in thread `tid` with up to six integer arguments, on the
    /// stack whose (16-byte aligned) top is `stack_top`, and returns `rax`. The function
    /// returns into the thread's park when it has one; otherwise to the `int3` at
    /// `trap_addr`.
    pub fn call(
        &mut self,
        tid: i32,
        func: u64,
        args: [u64; 6],
        stack_top: u64,
        trap_addr: u64,
    ) -> Result<u64> {
        let parked = self.park.filter(|p| p.tid == tid);
        let mut regs = self.original_regs(tid)?;
        let rsp = (stack_top & !15) - 8;
        let ret = match parked {
            Some(p) => {
                self.write(p.wr, &park::wait_fields())?;
                p.ret_at()
            }
            None => trap_addr,
        };
        self.write(rsp, &ret.to_le_bytes())?;
        regs.rsp = rsp;
        regs.rip = func;
        regs.rax = 0;
        regs.orig_rax = u64::MAX;
        regs.rdi = args[0];
        regs.rsi = args[1];
        regs.rdx = args[2];
        regs.rcx = args[3];
        regs.r8 = args[4];
        regs.r9 = args[5];
        regs.eflags &= !(EFLAGS_TF | EFLAGS_DF);
        let until = match parked {
            Some(p) => Until::Park(p),
            None => Until::Trap(trap_addr),
        };
        match (self.run_to(tid, &regs, until)?, parked) {
            (Ended::Done(_), Some(p)) | (Ended::WentHome, Some(p)) => {
                let mut r = [0u8; 8];
                self.read(p.result_at(), &mut r)?;
                Ok(u64::from_le_bytes(r))
            }
            (Ended::Done(after), None) => Ok(after.rax),
            (Ended::WentHome, None) => unreachable!("only park calls go home"),
        }
    }

    /// Queues the signals beyond the first that thread `tid` dequeued while running our code
    /// back onto it, from inside it (`rt_tgsigqueueinfo` to itself keeps the original
    /// `siginfo`, which the kernel refuses from another process). The first one is delivered
    /// by `PTRACE_DETACH`.
    pub(crate) fn requeue_extra_signals(&mut self, tid: i32) -> Result<()> {
        let extra: Vec<sys::SigInfo> = match self.threads.get_mut(&tid) {
            Some(t) if t.stashed.len() > 1 => t.stashed.drain(1..).collect(),
            _ => return Ok(()),
        };
        let orig = self.original_regs(tid)?;
        // Below the thread's red zone: free stack space it is not using while stopped.
        let buf = (orig.rsp - 128 - 256) & !15;
        for si in extra {
            // SAFETY: siginfo_t is plain old data; viewing it as bytes is sound.
            let bytes = unsafe {
                std::slice::from_raw_parts(
                    &si as *const sys::SigInfo as *const u8,
                    std::mem::size_of::<sys::SigInfo>(),
                )
            };
            self.write(buf, bytes)?;
            self.syscall(
                tid,
                nr::RT_TGSIGQUEUEINFO,
                [self.pid as u64, tid as u64, si.si_signo as u64, buf, 0, 0],
            )?;
        }
        Ok(())
    }
}

/// Remote system calls driven by a scripted tracer.
#[cfg(test)]
mod scripted {
    use super::*;
    use crate::tracer::script::{self, Script};

    /// A target of one thread, stopped, with a `syscall` instruction at 0x7000.
    fn stopped(s: &Script) -> StoppedProcess<&Script> {
        let mut sp = StoppedProcess::stop_with(s, 10).unwrap();
        sp.syscall_gadget = Some(0x7000);
        sp
    }

    fn same(a: &Regs, b: &Regs) -> bool {
        (a.rip, a.rsp, a.rax, a.orig_rax, a.rdi, a.eflags)
            == (b.rip, b.rsp, b.rax, b.orig_rax, b.rdi, b.eflags)
    }

    #[test]
    fn a_remote_syscall_returning_eintr_fails_and_the_thread_gets_its_state_back() {
        let s = Script::new(&[10]);
        s.k.borrow_mut().results.push_back(-i64::from(libc::EINTR));
        let before = s.thread(10, |t| t.regs);
        let mut sp = stopped(&s);
        let e = sp.syscall(10, nr::GETPID, [0; 6]).unwrap_err();
        assert!(
            matches!(&e, Error::RemoteSyscall { name: "getpid", source, .. }
                if source.raw_os_error() == Some(libc::EINTR)),
            "{e}"
        );
        assert_eq!(s.logged("syscall"), [format!("syscall {}", nr::GETPID)]);
        assert!(same(&s.thread(10, |t| t.regs), &before));
        // Every signal blocked while borrowed; its own mask back on release.
        assert_eq!(s.thread(10, |t| t.mask), u64::MAX);
        sp.resume().unwrap();
        assert_eq!(s.thread(10, |t| t.mask), 0x1234);
        assert!(same(&s.thread(10, |t| t.regs), &before));
        assert_eq!(s.logged("detach"), ["detach 10 0"]);
    }

    #[test]
    fn a_signal_during_a_remote_syscall_is_held_and_delivered_on_release() {
        let s = Script::new(&[10]);
        s.k.borrow_mut().results.push_back(42);
        s.thread(10, |t| {
            t.on_resume.push_back(Wait::Stopped {
                sig: libc::SIGUSR2,
                event: 0,
            });
            t.siginfo = script::siginfo(libc::SIGUSR2);
        });
        let mut sp = stopped(&s);
        assert_eq!(sp.syscall(10, nr::GETPID, [0; 6]).unwrap(), 42);
        sp.resume().unwrap();
        let usr2 = format!("detach 10 {}", libc::SIGUSR2);
        assert_eq!(s.logged("detach"), [usr2]);
    }

    #[test]
    fn a_group_stop_during_a_remote_syscall_is_let_run_on() {
        let s = Script::new(&[10]);
        s.k.borrow_mut().results.push_back(7);
        s.thread(10, |t| {
            t.on_resume.push_back(Wait::Stopped {
                sig: libc::SIGSTOP,
                event: sys::EVENT_STOP,
            })
        });
        let mut sp = stopped(&s);
        assert_eq!(sp.syscall(10, nr::GETPID, [0; 6]).unwrap(), 7);
        sp.resume().unwrap();
        assert_eq!(s.logged("detach"), ["detach 10 0"]);
    }

    #[test]
    fn a_thread_that_exits_during_a_remote_syscall_is_forgotten() {
        let s = Script::new(&[10, 11]);
        s.thread(10, |t| t.on_resume.push_back(Wait::Gone));
        let mut sp = stopped(&s);
        let e = sp.syscall(10, nr::GETPID, [0; 6]).unwrap_err();
        assert!(matches!(e, Error::Unexpected { tid: 10, .. }), "{e}");
        assert_eq!(sp.tids(), [11]);
        sp.resume().unwrap();
        assert_eq!(s.logged("detach"), ["detach 11 0"]);
    }
}
