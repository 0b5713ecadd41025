//! A scripted tracer for unit tests: a small fake kernel that plays the stops a test asks
//! for, and records what the logic does to each thread.
//!
//! Each thread answers `PTRACE_INTERRUPT` with the next stop of its `on_interrupt` script
//! (the interrupt stop itself when the script is empty), and `PTRACE_SYSCALL` with the next
//! stop of its `on_resume` script, or else with the entry then the exit stop of the system
//! call its registers hold, whose result [`Script::syscall`] gives. Memory is a sparse map
//! of bytes; reading a byte never written fails as an unmapped page would.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::io;

use super::Tracer;
use crate::procfs::Mapping;
use crate::sys::{self, FpRegs, Regs, SigInfo, Wait};

/// The id the scripted tracer gives itself (`TracerPid`).
const ME: i32 = 4242;

/// One thread of the scripted target.
pub(crate) struct FakeThread {
    pub(crate) regs: Regs,
    pub(crate) fp: FpRegs,
    pub(crate) mask: u64,
    pub(crate) alive: bool,
    pub(crate) seized: bool,
    /// What each `PTRACE_INTERRUPT` produces (the interrupt stop when empty).
    pub(crate) on_interrupt: VecDeque<Wait>,
    /// Stops that come before anything else on the next resumes.
    pub(crate) on_resume: VecDeque<Wait>,
    /// The `siginfo` of its signal-delivery-stops.
    pub(crate) siginfo: SigInfo,
    stops: VecDeque<Wait>,
    in_syscall: bool,
}

impl FakeThread {
    /// A running thread at `rip`.
    pub(crate) fn new(rip: u64) -> FakeThread {
        // SAFETY: both are plain integers; all-zero is a valid value.
        let (mut regs, fp): (Regs, FpRegs) = unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
        regs.rip = rip;
        regs.rsp = 0x7ff0_0000;
        regs.orig_rax = u64::MAX;
        regs.eflags = 0x246;
        FakeThread {
            regs,
            fp,
            mask: 0x1234,
            alive: true,
            seized: false,
            on_interrupt: VecDeque::new(),
            on_resume: VecDeque::new(),
            siginfo: siginfo(0),
            stops: VecDeque::new(),
            in_syscall: false,
        }
    }
}

/// A `siginfo` of signal `sig` sent by a process (`si_code` `SI_USER`, 0).
pub(crate) fn siginfo(sig: i32) -> SigInfo {
    // SAFETY: plain integers; all-zero is a valid value.
    let mut si: SigInfo = unsafe { std::mem::zeroed() };
    si.si_signo = sig;
    si
}

/// The interrupt stop (an event-stop).
pub(crate) const INTERRUPT_STOP: Wait = Wait::Stopped {
    sig: libc::SIGTRAP,
    event: sys::EVENT_STOP,
};

/// The scripted kernel.
#[derive(Default)]
pub(crate) struct Kernel {
    pub(crate) threads: BTreeMap<i32, FakeThread>,
    /// What `/proc/<pid>/task` lists, call after call (the last one stays).
    pub(crate) listings: VecDeque<Vec<i32>>,
    pub(crate) mem: BTreeMap<u64, u8>,
    pub(crate) maps: Vec<Mapping>,
    /// Results of the remote system calls, in order (0 when none is left).
    pub(crate) results: VecDeque<i64>,
    /// Every call that changes a thread, as text (`detach 10 0`, `syscall 9`...).
    pub(crate) log: Vec<String>,
}

/// A scripted tracer over a [`Kernel`]; `&Script` is the [`Tracer`], so a test keeps the
/// script to look at after the logic is done with it.
#[derive(Default)]
pub(crate) struct Script {
    pub(crate) k: RefCell<Kernel>,
}

fn esrch() -> io::Error {
    io::Error::from_raw_os_error(libc::ESRCH)
}

impl Script {
    /// A target whose threads `tids` are running at `0x1000 + tid`.
    pub(crate) fn new(tids: &[i32]) -> Script {
        let s = Script::default();
        {
            let mut k = s.k.borrow_mut();
            for &t in tids {
                k.threads.insert(t, FakeThread::new(0x1000 + t as u64));
            }
            k.listings.push_back(tids.to_vec());
        }
        s
    }

    /// Runs `f` on thread `tid`.
    pub(crate) fn thread<R>(&self, tid: i32, f: impl FnOnce(&mut FakeThread) -> R) -> R {
        f(self.k.borrow_mut().threads.get_mut(&tid).expect("scripted"))
    }

    /// The calls logged so far that start with `what`.
    pub(crate) fn logged(&self, what: &str) -> Vec<String> {
        let k = self.k.borrow();
        k.log
            .iter()
            .filter(|l| l.starts_with(what))
            .cloned()
            .collect()
    }

    fn with<R>(&self, tid: i32, f: impl FnOnce(&mut FakeThread) -> io::Result<R>) -> io::Result<R> {
        let mut k = self.k.borrow_mut();
        match k.threads.get_mut(&tid) {
            Some(t) if t.alive => f(t),
            _ => Err(esrch()),
        }
    }

    fn log(&self, line: String) {
        self.k.borrow_mut().log.push(line);
    }
}

impl Tracer for &Script {
    fn seize(&self, tid: i32) -> io::Result<()> {
        self.with(tid, |t| {
            t.seized = true;
            Ok(())
        })
    }
    fn interrupt(&self, tid: i32) -> io::Result<()> {
        self.with(tid, |t| {
            let w = t.on_interrupt.pop_front().unwrap_or(INTERRUPT_STOP);
            t.stops.push_back(w);
            Ok(())
        })
    }
    fn cont(&self, tid: i32, sig: i32) -> io::Result<()> {
        self.log(format!("cont {tid} {sig}"));
        self.with(tid, |t| {
            if let Some(w) = t.on_resume.pop_front() {
                t.stops.push_back(w);
            }
            Ok(())
        })
    }
    fn syscall(&self, tid: i32) -> io::Result<()> {
        let mut k = self.k.borrow_mut();
        let result = k.results.front().copied().unwrap_or(0);
        let t = match k.threads.get_mut(&tid) {
            Some(t) if t.alive => t,
            _ => return Err(esrch()),
        };
        if let Some(w) = t.on_resume.pop_front() {
            t.stops.push_back(w);
            return Ok(());
        }
        let stop = Wait::Stopped {
            sig: sys::SYSCALL_STOP,
            event: 0,
        };
        if !t.in_syscall {
            t.in_syscall = true;
            t.stops.push_back(stop);
            let line = format!("syscall {}", t.regs.rax);
            k.log.push(line);
            return Ok(());
        }
        t.in_syscall = false;
        t.regs.rax = result as u64;
        t.regs.rip += 2;
        t.stops.push_back(stop);
        k.results.pop_front();
        Ok(())
    }
    fn detach(&self, tid: i32, sig: i32) -> io::Result<()> {
        self.log(format!("detach {tid} {sig}"));
        self.with(tid, |t| {
            t.seized = false;
            Ok(())
        })
    }
    fn getregs(&self, tid: i32) -> io::Result<Regs> {
        self.with(tid, |t| Ok(t.regs))
    }
    fn setregs(&self, tid: i32, regs: &Regs) -> io::Result<()> {
        self.with(tid, |t| {
            t.regs = *regs;
            Ok(())
        })
    }
    fn getfpregs(&self, tid: i32) -> io::Result<FpRegs> {
        self.with(tid, |t| Ok(t.fp))
    }
    fn setfpregs(&self, tid: i32, fp: &FpRegs) -> io::Result<()> {
        self.with(tid, |t| {
            t.fp = *fp;
            Ok(())
        })
    }
    fn getsigmask(&self, tid: i32) -> io::Result<u64> {
        self.with(tid, |t| Ok(t.mask))
    }
    fn setsigmask(&self, tid: i32, mask: u64) -> io::Result<()> {
        self.with(tid, |t| {
            t.mask = mask;
            Ok(())
        })
    }
    fn getsiginfo(&self, tid: i32) -> io::Result<SigInfo> {
        self.with(tid, |t| Ok(t.siginfo))
    }
    fn setsiginfo(&self, tid: i32, si: &SigInfo) -> io::Result<()> {
        self.with(tid, |t| {
            t.siginfo = *si;
            Ok(())
        })
    }
    fn geteventmsg(&self, _tid: i32) -> io::Result<u64> {
        Err(io::Error::from_raw_os_error(libc::EINVAL))
    }
    fn rseq_area(&self, _tid: i32) -> Option<(u64, u32)> {
        None
    }
    fn wait(&self, tid: i32, _nohang: bool) -> io::Result<Wait> {
        let mut k = self.k.borrow_mut();
        let Some(t) = k.threads.get_mut(&tid) else {
            return Err(io::Error::from_raw_os_error(libc::ECHILD));
        };
        match t.stops.pop_front() {
            Some(Wait::Gone) => {
                t.alive = false;
                Ok(Wait::Gone)
            }
            Some(w) => Ok(w),
            None => Ok(Wait::NotYet),
        }
    }
    fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        let k = self.k.borrow();
        for (i, b) in buf.iter_mut().enumerate() {
            *b = *k
                .mem
                .get(&(addr + i as u64))
                .ok_or_else(|| io::Error::from_raw_os_error(libc::EIO))?;
        }
        Ok(())
    }
    fn write(&self, addr: u64, data: &[u8]) -> io::Result<()> {
        let mut k = self.k.borrow_mut();
        for (i, &b) in data.iter().enumerate() {
            k.mem.insert(addr + i as u64, b);
        }
        Ok(())
    }
    fn tasks(&self, _pid: i32) -> io::Result<Vec<i32>> {
        let mut k = self.k.borrow_mut();
        let v = match k.listings.len() {
            0 => Vec::new(),
            1 => k.listings[0].clone(),
            _ => k.listings.pop_front().expect("not empty"),
        };
        Ok(v)
    }
    fn thread_dead(&self, _pid: i32, tid: i32) -> bool {
        self.k.borrow().threads.get(&tid).is_none_or(|t| !t.alive)
    }
    fn tracer_pid(&self, _pid: i32) -> io::Result<i32> {
        Ok(0)
    }
    fn task_tracer_pid(&self, _pid: i32, tid: i32) -> io::Result<i32> {
        let seized = self.k.borrow().threads.get(&tid).is_some_and(|t| t.seized);
        Ok(if seized { ME } else { 0 })
    }
    fn mappings(&self, _pid: i32) -> io::Result<Vec<Mapping>> {
        Ok(self.k.borrow().maps.clone())
    }
    fn me(&self) -> i32 {
        ME
    }
}
