//! The tracer: every ptrace request, wait and memory access the stop, remote and unload
//! logic makes, and the few `/proc` reads it needs in between, behind one trait.
//!
//! [`Ptrace`] is the real one: each method is one call of [`crate::sys`] (or of
//! [`crate::procfs`]). The logic ([`crate::StoppedProcess`] and what is built on it) is
//! generic over [`Tracer`], so it is compiled for `Ptrace` alone in xcover, at the cost of a
//! direct call, while its unit tests drive it with a scripted tracer that plays the kernel's
//! part: threads that exit between an interrupt and its wait, a group-stop where an
//! interrupt stop was expected, a remote system call that fails, a thread that leaves a
//! range between two stops. The end-to-end tests run the real thing.
//!
//! Every method returns the bare `io::Error` (or a bare answer); the caller names the pid,
//! thread and call in its [`crate::Error`].

use std::io;

#[cfg(test)]
pub(crate) mod script;

use crate::procfs::Mapping;
use crate::sys::{self, FpRegs, Mem, Regs, SigInfo, Wait};
use crate::{Error, Result};

/// What the stop, remote and unload logic asks of the kernel. Methods take `&self`: a
/// tracer holds no state the logic relies on (the real one holds only the open
/// `/proc/<pid>/mem`).
pub trait Tracer {
    /// `PTRACE_SEIZE` with `PTRACE_O_TRACECLONE | PTRACE_O_TRACESYSGOOD`.
    fn seize(&self, tid: i32) -> io::Result<()>;
    /// `PTRACE_INTERRUPT`.
    fn interrupt(&self, tid: i32) -> io::Result<()>;
    /// `PTRACE_CONT`, delivering `sig` (0 for none).
    fn cont(&self, tid: i32, sig: i32) -> io::Result<()>;
    /// `PTRACE_SYSCALL`: run to the next system-call stop.
    fn syscall(&self, tid: i32) -> io::Result<()>;
    /// `PTRACE_DETACH`, delivering `sig` (0 for none).
    fn detach(&self, tid: i32, sig: i32) -> io::Result<()>;
    /// `PTRACE_GETREGS`.
    fn getregs(&self, tid: i32) -> io::Result<Regs>;
    /// `PTRACE_SETREGS`.
    fn setregs(&self, tid: i32, regs: &Regs) -> io::Result<()>;
    /// `PTRACE_GETFPREGS`.
    fn getfpregs(&self, tid: i32) -> io::Result<FpRegs>;
    /// `PTRACE_SETFPREGS`.
    fn setfpregs(&self, tid: i32, fp: &FpRegs) -> io::Result<()>;
    /// `PTRACE_GETSIGMASK`.
    fn getsigmask(&self, tid: i32) -> io::Result<u64>;
    /// `PTRACE_SETSIGMASK`.
    fn setsigmask(&self, tid: i32, mask: u64) -> io::Result<()>;
    /// `PTRACE_GETSIGINFO`.
    fn getsiginfo(&self, tid: i32) -> io::Result<SigInfo>;
    /// `PTRACE_SETSIGINFO`.
    fn setsiginfo(&self, tid: i32, si: &SigInfo) -> io::Result<()>;
    /// `PTRACE_GETEVENTMSG`.
    fn geteventmsg(&self, tid: i32) -> io::Result<u64>;
    /// `PTRACE_GET_RSEQ_CONFIGURATION`: the thread's rseq area and its size, if any.
    fn rseq_area(&self, tid: i32) -> Option<(u64, u32)>;
    /// `waitpid(tid, __WALL [| WNOHANG])`.
    fn wait(&self, tid: i32, nohang: bool) -> io::Result<Wait>;
    /// Reads target memory.
    fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes target memory, read-only pages included.
    fn write(&self, addr: u64, data: &[u8]) -> io::Result<()>;
    /// The thread ids of `pid`, sorted.
    fn tasks(&self, pid: i32) -> io::Result<Vec<i32>>;
    /// Whether thread `tid` of `pid` has exited or is exiting.
    fn thread_dead(&self, pid: i32, tid: i32) -> bool;
    /// The tracer of `pid` (0: none).
    fn tracer_pid(&self, pid: i32) -> io::Result<i32>;
    /// The tracer of thread `tid` of `pid` (0: none).
    fn task_tracer_pid(&self, pid: i32, tid: i32) -> io::Result<i32>;
    /// The mappings of `pid`.
    fn mappings(&self, pid: i32) -> io::Result<Vec<Mapping>>;
    /// The id of the calling thread, as `TracerPid` names it.
    fn me(&self) -> i32;
}

/// The real tracer: ptrace, `waitpid` and `/proc/<pid>/mem` of one target.
#[derive(Debug)]
pub struct Ptrace {
    mem: Mem,
}

impl Ptrace {
    /// Opens the memory of `pid` (needs ptrace access to it).
    ///
    /// Errors: [`Error::NoSuchProcess`], [`Error::PermissionDenied`], or the failed open.
    pub fn open(pid: i32) -> Result<Ptrace> {
        let mem = Mem::open(pid).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::NoSuchProcess { pid },
            io::ErrorKind::PermissionDenied => Error::PermissionDenied {
                pid,
                call: "open /proc/<pid>/mem",
            },
            _ => Error::Sys {
                pid,
                tid: pid,
                call: "open /proc/<pid>/mem",
                source: e,
            },
        })?;
        Ok(Ptrace { mem })
    }
}

impl Tracer for Ptrace {
    fn seize(&self, tid: i32) -> io::Result<()> {
        sys::seize(tid)
    }
    fn interrupt(&self, tid: i32) -> io::Result<()> {
        sys::interrupt(tid)
    }
    fn cont(&self, tid: i32, sig: i32) -> io::Result<()> {
        sys::cont(tid, sig)
    }
    fn syscall(&self, tid: i32) -> io::Result<()> {
        sys::syscall(tid)
    }
    fn detach(&self, tid: i32, sig: i32) -> io::Result<()> {
        sys::detach(tid, sig)
    }
    fn getregs(&self, tid: i32) -> io::Result<Regs> {
        sys::getregs(tid)
    }
    fn setregs(&self, tid: i32, regs: &Regs) -> io::Result<()> {
        sys::setregs(tid, regs)
    }
    fn getfpregs(&self, tid: i32) -> io::Result<FpRegs> {
        sys::getfpregs(tid)
    }
    fn setfpregs(&self, tid: i32, fp: &FpRegs) -> io::Result<()> {
        sys::setfpregs(tid, fp)
    }
    fn getsigmask(&self, tid: i32) -> io::Result<u64> {
        sys::getsigmask(tid)
    }
    fn setsigmask(&self, tid: i32, mask: u64) -> io::Result<()> {
        sys::setsigmask(tid, mask)
    }
    fn getsiginfo(&self, tid: i32) -> io::Result<SigInfo> {
        sys::getsiginfo(tid)
    }
    fn setsiginfo(&self, tid: i32, si: &SigInfo) -> io::Result<()> {
        sys::setsiginfo(tid, si)
    }
    fn geteventmsg(&self, tid: i32) -> io::Result<u64> {
        sys::geteventmsg(tid)
    }
    fn rseq_area(&self, tid: i32) -> Option<(u64, u32)> {
        sys::rseq_area(tid)
    }
    fn wait(&self, tid: i32, nohang: bool) -> io::Result<Wait> {
        sys::wait_tid(tid, nohang)
    }
    fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        self.mem.read(addr, buf)
    }
    fn write(&self, addr: u64, data: &[u8]) -> io::Result<()> {
        self.mem.write(addr, data)
    }
    fn tasks(&self, pid: i32) -> io::Result<Vec<i32>> {
        crate::procfs::tasks(pid)
    }
    fn thread_dead(&self, pid: i32, tid: i32) -> bool {
        crate::procfs::thread_dead(pid, tid)
    }
    fn tracer_pid(&self, pid: i32) -> io::Result<i32> {
        crate::procfs::tracer_pid(pid)
    }
    fn task_tracer_pid(&self, pid: i32, tid: i32) -> io::Result<i32> {
        crate::procfs::task_tracer_pid(pid, tid)
    }
    fn mappings(&self, pid: i32) -> io::Result<Vec<Mapping>> {
        crate::procfs::mappings(pid)
    }
    fn me(&self) -> i32 {
        nix::unistd::gettid().as_raw()
    }
}
