//! Remote system calls and remote function calls in a stopped thread.
//!
//! # Remote system call
//! The thread's registers are saved, `rip` is pointed at a `syscall` instruction found in the
//! target's vDSO (so nothing is written into the target for it), the arguments are loaded,
//! and the thread single-steps over that one instruction. `orig_rax` is set to -1 first: a
//! thread interrupted inside a system call (`read`, `nanosleep`) stopped with
//! `rax = -ERESTARTSYS` (or `-ERESTART_RESTARTBLOCK`) and `orig_rax` = its system call
//! number, and on resuming the kernel would otherwise "restart" that call by rewinding `rip`
//! over our code. Afterwards the original registers go back unchanged, so on release the
//! kernel restarts the interrupted call exactly as if we had never been there: no `EINTR`,
//! no lost bytes, and `nanosleep` resumes with its remaining time (its restart block is not
//! touched by the calls we make).
//!
//! # Remote call
//! A function of the agent runs on a private stack we mapped (never the thread's own stack,
//! whose red zone and guard page we know nothing about) and returns to an `int3` we placed
//! in a scratch page. If it faults instead, the fault's signal-delivery-stop is caught, the
//! signal suppressed, the registers restored and an error reported: the target lives on.
//!
//! Signals that the thread dequeues while it runs our code are suppressed at that moment (a
//! handler must not run on our stack with our registers) and handed back on release.

use std::time::{Duration, Instant};

use crate::stop::{StopKind, StoppedProcess};
use crate::sys::{self, Regs, Wait};
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

/// Whether thread `tid` of `pid` has exited or is exiting (a zombie, or gone from /proc).
fn thread_dead(pid: i32, tid: i32) -> bool {
    match crate::procfs::task_stat(pid, tid) {
        Ok(st) => matches!(st.state, 'Z' | 'X'),
        Err(_) => true,
    }
}

/// Finds a `syscall` instruction (`0f 05`) in the target's vDSO.
fn find_vdso_syscall(sp: &StoppedProcess) -> Option<u64> {
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", sp.pid)).ok()?;
    let line = maps.lines().find(|l| l.ends_with("[vdso]"))?;
    let range = line.split_whitespace().next()?;
    let (a, b) = range.split_once('-')?;
    let (start, end) = (
        u64::from_str_radix(a, 16).ok()?,
        u64::from_str_radix(b, 16).ok()?,
    );
    let mut buf = vec![0u8; (end - start) as usize];
    sp.mem.read(start, &mut buf).ok()?;
    buf.windows(2)
        .position(|w| w == [0x0f, 0x05])
        .map(|p| start + p as u64)
}

impl StoppedProcess {
    /// Saves the thread's registers the first time we use it, and returns them.
    ///
    /// The first time a thread is borrowed for remote work, its x87/SSE state is saved
    /// too (the agent's code uses SSE registers; `release` puts it back) and every signal
    /// is blocked with `PTRACE_SETSIGMASK`, which changes the mask without a return to user
    /// mode: signals arriving meanwhile stay pending in the kernel instead of being
    /// dequeued by our code (faults and our traps are forced signals, which blocking does
    /// not hold back). The mask is restored on release, and pending signals are then
    /// delivered as usual. Without this, a signal requeued to the thread by
    /// `requeue_extra_signals` was dequeued again by the very next remote step and lost.
    fn original_regs(&mut self, tid: i32) -> Result<Regs> {
        let pid = self.pid;
        if !self.borrowed.contains_key(&tid) && self.threads.contains_key(&tid) {
            let fp = sys::getfpregs(tid).map_err(|source| Error::Sys {
                pid,
                tid,
                call: "PTRACE_GETFPREGS",
                source,
            })?;
            let mask = sys::getsigmask(tid).map_err(|source| Error::Sys {
                pid,
                tid,
                call: "PTRACE_GETSIGMASK",
                source,
            })?;
            sys::setsigmask(tid, u64::MAX).map_err(|source| Error::Sys {
                pid,
                tid,
                call: "PTRACE_SETSIGMASK",
                source,
            })?;
            self.borrowed.insert(tid, (fp, mask));
        }
        let t = self.threads.get_mut(&tid).ok_or(Error::Unexpected {
            pid,
            tid,
            what: "thread is not stopped".into(),
        })?;
        if let Some(r) = t.saved {
            return Ok(r);
        }
        let r = sys::getregs(tid).map_err(|source| Error::Sys {
            pid,
            tid,
            call: "PTRACE_GETREGS",
            source,
        })?;
        t.saved = Some(r);
        Ok(r)
    }

    /// Runs the thread with `regs` until it stops with a trap at `expect_rip`, and returns the
    /// registers there. Always leaves the thread stopped with its original registers back.
    fn run_to(
        &mut self,
        tid: i32,
        regs: &Regs,
        single_step: bool,
        expect_rip: u64,
    ) -> Result<Regs> {
        let pid = self.pid;
        let orig = self.original_regs(tid)?;
        let sys_err = |call: &'static str| {
            move |source| Error::Sys {
                pid,
                tid,
                call,
                source,
            }
        };
        // A signal this thread was stopped for is delivered on release, after our work.
        {
            let t = self
                .threads
                .get_mut(&tid)
                .expect("checked by original_regs");
            if let StopKind::Signal(si) = t.kind {
                t.stashed.insert(0, si);
            }
            t.kind = StopKind::Ours;
        }
        sys::setregs(tid, regs).map_err(sys_err("PTRACE_SETREGS"))?;
        let deadline = Instant::now() + CALL_TIMEOUT;
        let mut interrupted = false;
        let result = loop {
            let r = if single_step {
                sys::step(tid, 0)
            } else {
                sys::cont(tid, 0)
            };
            r.map_err(sys_err(if single_step {
                "PTRACE_SINGLESTEP"
            } else {
                "PTRACE_CONT"
            }))?;
            let mut polls = 0u32;
            let w = loop {
                match sys::wait_tid(tid, true).map_err(sys_err("waitpid"))? {
                    Wait::NotYet => {
                        if !interrupted && Instant::now() > deadline {
                            sys::interrupt(tid).map_err(sys_err("PTRACE_INTERRUPT"))?;
                            interrupted = true;
                        }
                        // A thread killed while it runs our code (SIGKILL to the process,
                        // another thread's exit_group) may never report: a traced group
                        // leader stays an unreported zombie until every other thread is
                        // reaped. Look at its state now and then instead of waiting
                        // forever.
                        polls += 1;
                        if polls.is_multiple_of(64) && thread_dead(pid, tid) {
                            break Wait::Gone;
                        }
                        if interrupted && Instant::now() > deadline + CALL_TIMEOUT {
                            return Err(Error::RemoteCall {
                                pid,
                                tid,
                                func: regs.rip,
                                what: format!(
                                    "neither returned nor stopped within {:?}",
                                    2 * CALL_TIMEOUT
                                ),
                            });
                        }
                        std::thread::yield_now();
                    }
                    w => break w,
                }
            };
            match w {
                Wait::NotYet => unreachable!(),
                Wait::Gone => {
                    self.threads.remove(&tid);
                    return Err(Error::Unexpected {
                        pid,
                        tid,
                        what: "thread exited during a remote operation".into(),
                    });
                }
                Wait::Stopped { event, .. } if event != 0 => {
                    if event == sys::EVENT_CLONE {
                        // Our code does not create threads; keep any such thread stopped.
                        if let Ok(child) = sys::geteventmsg(tid) {
                            let _ = sys::wait_tid(child as i32, false);
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
                    if interrupted {
                        break Err(Error::RemoteCall {
                            pid,
                            tid,
                            func: regs.rip,
                            what: format!("did not return within {CALL_TIMEOUT:?}"),
                        });
                    }
                    // A pending PTRACE_INTERRUPT or a group-stop: go on.
                }
                Wait::Stopped { sig, .. } => {
                    let si = sys::getsiginfo(tid).map_err(sys_err("PTRACE_GETSIGINFO"))?;
                    let now = sys::getregs(tid).map_err(sys_err("PTRACE_GETREGS"))?;
                    let kernel_sent = si.si_code > 0;
                    if sig == libc::SIGTRAP && kernel_sent && now.rip == expect_rip {
                        break Ok(now);
                    }
                    if kernel_sent
                        && matches!(
                            sig,
                            libc::SIGSEGV
                                | libc::SIGBUS
                                | libc::SIGILL
                                | libc::SIGFPE
                                | libc::SIGTRAP
                        )
                    {
                        break Err(Error::RemoteCall {
                            pid,
                            tid,
                            func: regs.rip,
                            what: format!(
                                "faulted with signal {sig} at rip {:#x} (fault address {:#x})",
                                now.rip,
                                sys::fault_addr(&si)
                            ),
                        });
                    }
                    // The target's own signal: hold it for release.
                    self.threads
                        .get_mut(&tid)
                        .expect("still stopped")
                        .stashed
                        .push(si);
                }
            }
        };
        sys::setregs(tid, &orig).map_err(sys_err("PTRACE_SETREGS"))?;
        result
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
    /// (a negative errno on failure).
    pub fn syscall_raw(&mut self, tid: i32, nr: u64, args: [u64; 6]) -> Result<i64> {
        let gadget = self.gadget(tid)?;
        let mut regs = self.original_regs(tid)?;
        regs.rip = gadget;
        regs.rax = nr;
        regs.orig_rax = u64::MAX;
        regs.rdi = args[0];
        regs.rsi = args[1];
        regs.rdx = args[2];
        regs.r10 = args[3];
        regs.r8 = args[4];
        regs.r9 = args[5];
        regs.eflags &= !EFLAGS_TF;
        let after = self.run_to(tid, &regs, true, gadget + 2)?;
        Ok(after.rax as i64)
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
    /// stack whose (16-byte aligned) top is `stack_top`, returning to the `int3` at
    /// `trap_addr`. Returns `rax`.
    pub fn call(
        &mut self,
        tid: i32,
        func: u64,
        args: [u64; 6],
        stack_top: u64,
        trap_addr: u64,
    ) -> Result<u64> {
        let mut regs = self.original_regs(tid)?;
        let rsp = (stack_top & !15) - 8;
        self.write(rsp, &trap_addr.to_le_bytes())?;
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
        let after = self.run_to(tid, &regs, false, trap_addr + 1)?;
        Ok(after.rax)
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
