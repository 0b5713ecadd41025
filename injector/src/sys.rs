//! Every ptrace request and every wait the injector makes, in one place.
//!
//! These are thin wrappers over `libc::ptrace`/`libc::waitpid` rather than nix's typed ones
//! because nix's `Signal` cannot carry real-time signals, and a tracer must be able to stop
//! on, hold and re-deliver any signal. Each wrapper returns `io::Error` and the caller adds
//! the pid, tid and call name (see [`crate::Error::Sys`]). Target memory is read and written
//! through `/proc/<pid>/mem` ([`Mem`]), which also writes read-only pages (the kernel uses
//! `FOLL_FORCE` for a tracer), so code pages never need to be made writable.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// The registers of a stopped thread, as `PTRACE_GETREGS` returns them.
pub type Regs = libc::user_regs_struct;
/// Signal information of a signal-delivery-stop.
pub type SigInfo = libc::siginfo_t;

/// `PTRACE_EVENT_STOP`: the stop PTRACE_INTERRUPT or a group-stop produces under SEIZE.
pub const EVENT_STOP: i32 = libc::PTRACE_EVENT_STOP;
/// `PTRACE_EVENT_CLONE`: a traced thread created a thread (which is now traced too).
pub const EVENT_CLONE: i32 = libc::PTRACE_EVENT_CLONE;

fn check(r: libc::c_long) -> io::Result<libc::c_long> {
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Issues one ptrace request with an integer `data` argument.
fn request(req: libc::c_uint, tid: i32, addr: usize, data: usize) -> io::Result<libc::c_long> {
    // SAFETY: the requests sent through here take plain integers (options, signal numbers)
    // in `addr`/`data`, never pointers; a bad tid only yields ESRCH.
    check(unsafe {
        libc::ptrace(
            req,
            tid,
            addr as *mut libc::c_void,
            data as *mut libc::c_void,
        )
    })
}

/// `PTRACE_SEIZE` with `PTRACE_O_TRACECLONE`, so threads created later are traced too, and
/// `PTRACE_O_TRACESYSGOOD`, so system-call stops show as [`SYSCALL_STOP`].
pub fn seize(tid: i32) -> io::Result<()> {
    request(
        libc::PTRACE_SEIZE,
        tid,
        0,
        (libc::PTRACE_O_TRACECLONE | libc::PTRACE_O_TRACESYSGOOD) as usize,
    )
    .map(drop)
}

/// The stop signal of a system-call-enter or -exit stop (`SIGTRAP | 0x80`).
pub const SYSCALL_STOP: i32 = libc::SIGTRAP | 0x80;

/// `PTRACE_SYSCALL`: resume until the next system-call entry or exit (or other stop).
pub fn syscall(tid: i32) -> io::Result<()> {
    request(libc::PTRACE_SYSCALL, tid, 0, 0).map(drop)
}

/// `PTRACE_INTERRUPT`: ask a seized thread to stop (reported as [`EVENT_STOP`]).
pub fn interrupt(tid: i32) -> io::Result<()> {
    request(libc::PTRACE_INTERRUPT, tid, 0, 0).map(drop)
}

/// `PTRACE_CONT`, delivering `sig` (0 for none).
pub fn cont(tid: i32, sig: i32) -> io::Result<()> {
    request(libc::PTRACE_CONT, tid, 0, sig as usize).map(drop)
}

/// `PTRACE_DETACH`, delivering `sig` (0 for none) if the thread is in a
/// signal-delivery-stop.
pub fn detach(tid: i32, sig: i32) -> io::Result<()> {
    request(libc::PTRACE_DETACH, tid, 0, sig as usize).map(drop)
}

/// `PTRACE_GETREGS`.
pub fn getregs(tid: i32) -> io::Result<Regs> {
    let mut regs = std::mem::MaybeUninit::<Regs>::zeroed();
    // SAFETY: PTRACE_GETREGS writes exactly one `user_regs_struct` to the pointer in `data`,
    // which points at a buffer of that type.
    check(unsafe {
        libc::ptrace(
            libc::PTRACE_GETREGS,
            tid,
            std::ptr::null_mut::<libc::c_void>(),
            regs.as_mut_ptr(),
        )
    })?;
    // SAFETY: zero-initialised plain integers, then filled by the kernel.
    Ok(unsafe { regs.assume_init() })
}

/// `PTRACE_GET_RSEQ_CONFIGURATION` (Linux 5.13+): where thread `tid` registered its
/// `struct rseq` and with what size, or `None` when it has none (address 0) or the kernel
/// does not know the request.
pub fn rseq_area(tid: i32) -> Option<(u64, u32)> {
    /// `struct ptrace_rseq_configuration`.
    #[repr(C)]
    #[derive(Default)]
    struct Conf {
        rseq_abi_pointer: u64,
        rseq_abi_size: u32,
        signature: u32,
        flags: u32,
        pad: u32,
    }
    const PTRACE_GET_RSEQ_CONFIGURATION: libc::c_uint = 0x420f;
    let mut conf = Conf::default();
    // SAFETY: the request writes at most `addr` (= the struct's size) bytes to `data`, which
    // points at a struct of that size.
    let n = unsafe {
        libc::ptrace(
            PTRACE_GET_RSEQ_CONFIGURATION,
            tid,
            std::mem::size_of::<Conf>(),
            &mut conf as *mut Conf,
        )
    };
    (n >= 12 && conf.rseq_abi_pointer != 0).then_some((conf.rseq_abi_pointer, conf.rseq_abi_size))
}

/// `PTRACE_SETREGS`.
pub fn setregs(tid: i32, regs: &Regs) -> io::Result<()> {
    // SAFETY: PTRACE_SETREGS reads one `user_regs_struct` from `data`.
    check(unsafe {
        libc::ptrace(
            libc::PTRACE_SETREGS,
            tid,
            std::ptr::null_mut::<libc::c_void>(),
            regs as *const Regs,
        )
    })
    .map(drop)
}

/// The x87/SSE state of a stopped thread (`PTRACE_GETFPREGS`: x87, MXCSR, xmm0-15).
pub type FpRegs = libc::user_fpregs_struct;

/// `PTRACE_GETFPREGS`.
pub fn getfpregs(tid: i32) -> io::Result<FpRegs> {
    let mut fp = std::mem::MaybeUninit::<FpRegs>::zeroed();
    // SAFETY: PTRACE_GETFPREGS writes exactly one `user_fpregs_struct` to `data`.
    check(unsafe {
        libc::ptrace(
            libc::PTRACE_GETFPREGS,
            tid,
            std::ptr::null_mut::<libc::c_void>(),
            fp.as_mut_ptr(),
        )
    })?;
    // SAFETY: zero-initialised plain integers, then filled by the kernel.
    Ok(unsafe { fp.assume_init() })
}

/// `PTRACE_SETFPREGS`.
pub fn setfpregs(tid: i32, fp: &FpRegs) -> io::Result<()> {
    // SAFETY: PTRACE_SETFPREGS reads one `user_fpregs_struct` from `data`.
    check(unsafe {
        libc::ptrace(
            libc::PTRACE_SETFPREGS,
            tid,
            std::ptr::null_mut::<libc::c_void>(),
            fp as *const FpRegs,
        )
    })
    .map(drop)
}

/// `PTRACE_GETSIGMASK`: the thread's blocked-signal mask (64 bits on x86-64).
pub fn getsigmask(tid: i32) -> io::Result<u64> {
    let mut mask: u64 = 0;
    // SAFETY: PTRACE_GETSIGMASK writes `addr` (8) bytes to `data`, which points at a u64.
    check(unsafe {
        libc::ptrace(
            libc::PTRACE_GETSIGMASK,
            tid,
            std::mem::size_of::<u64>() as *mut libc::c_void,
            &mut mask as *mut u64,
        )
    })?;
    Ok(mask)
}

/// `PTRACE_SETSIGMASK`: sets the blocked-signal mask of a stopped thread without letting
/// it return to user mode (so nothing is dequeued on the way).
pub fn setsigmask(tid: i32, mask: u64) -> io::Result<()> {
    // SAFETY: PTRACE_SETSIGMASK reads `addr` (8) bytes from `data`, a u64.
    check(unsafe {
        libc::ptrace(
            libc::PTRACE_SETSIGMASK,
            tid,
            std::mem::size_of::<u64>() as *mut libc::c_void,
            &mask as *const u64,
        )
    })
    .map(drop)
}

/// `PTRACE_GETSIGINFO`.
pub fn getsiginfo(tid: i32) -> io::Result<SigInfo> {
    let mut si = std::mem::MaybeUninit::<SigInfo>::zeroed();
    // SAFETY: PTRACE_GETSIGINFO writes one `siginfo_t` to `data`.
    check(unsafe {
        libc::ptrace(
            libc::PTRACE_GETSIGINFO,
            tid,
            std::ptr::null_mut::<libc::c_void>(),
            si.as_mut_ptr(),
        )
    })?;
    // SAFETY: zero-initialised, then filled by the kernel.
    Ok(unsafe { si.assume_init() })
}

/// `PTRACE_SETSIGINFO`.
pub fn setsiginfo(tid: i32, si: &SigInfo) -> io::Result<()> {
    // SAFETY: PTRACE_SETSIGINFO reads one `siginfo_t` from `data`.
    check(unsafe {
        libc::ptrace(
            libc::PTRACE_SETSIGINFO,
            tid,
            std::ptr::null_mut::<libc::c_void>(),
            si as *const SigInfo,
        )
    })
    .map(drop)
}

/// `PTRACE_GETEVENTMSG` (the new thread's tid after [`EVENT_CLONE`]).
pub fn geteventmsg(tid: i32) -> io::Result<u64> {
    let mut msg: libc::c_ulong = 0;
    // SAFETY: PTRACE_GETEVENTMSG writes one `unsigned long` to `data`.
    check(unsafe {
        libc::ptrace(
            libc::PTRACE_GETEVENTMSG,
            tid,
            std::ptr::null_mut::<libc::c_void>(),
            &mut msg as *mut libc::c_ulong,
        )
    })?;
    Ok(msg)
}

/// The fault address of a SIGSEGV/SIGBUS/SIGILL/SIGFPE siginfo.
pub fn fault_addr(si: &SigInfo) -> u64 {
    // SAFETY: `si_addr` reads the union member that the kernel fills for fault signals;
    // for other signals it reads plain integer bytes, which is harmless.
    unsafe { si.si_addr() as u64 }
}

/// What `waitpid` reported for one thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Nothing yet (`WNOHANG`).
    NotYet,
    /// Stopped: `sig` is the stop signal, `event` the `PTRACE_EVENT_*` (0 for a
    /// signal-delivery-stop).
    Stopped {
        /// The signal.
        sig: i32,
        /// The ptrace event, 0 when none.
        event: i32,
    },
    /// The thread exited or was killed; it is no longer traced.
    Gone,
}

/// `waitpid(tid, __WALL [| WNOHANG])`. Only ever waits for one specific thread, so it
/// never steals the status of an unrelated child of the calling process.
pub fn wait_tid(tid: i32, nohang: bool) -> io::Result<Wait> {
    let mut status = 0;
    let flags = libc::__WALL | if nohang { libc::WNOHANG } else { 0 };
    loop {
        // SAFETY: `status` is a valid out-pointer for one int.
        let r = unsafe { libc::waitpid(tid, &mut status, flags) };
        if r == -1 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Ok(Wait::NotYet);
        }
        break;
    }
    if libc::WIFSTOPPED(status) {
        Ok(Wait::Stopped {
            sig: libc::WSTOPSIG(status),
            event: (status >> 16) & 0xff,
        })
    } else {
        Ok(Wait::Gone)
    }
}

/// The target's memory, through `/proc/<pid>/mem`.
#[derive(Debug)]
pub struct Mem {
    file: File,
}

impl Mem {
    /// Opens `/proc/<pid>/mem` for reading and writing (needs ptrace access to `pid`).
    pub fn open(pid: i32) -> io::Result<Mem> {
        let file = File::options()
            .read(true)
            .write(true)
            .open(format!("/proc/{pid}/mem"))?;
        Ok(Mem { file })
    }

    /// Reads `buf.len()` bytes at `addr`.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, addr)
    }

    /// Writes `data` at `addr`, also into pages that are not writable.
    pub fn write(&self, addr: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, addr)
    }
}
