//! Scratch memory in the target for one stop, and the recovery of the scratch memory a
//! killed xcover left behind.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::elf::PAGE;
use crate::park;
use crate::remote::nr;
use crate::session::SessionFile;
use crate::stop::StoppedProcess;
use crate::tracer::Tracer;
use crate::{Error, Result};

/// Size of the private stack remote calls run on (the agent's JIT, verifier and
/// interceptor run there; untouched pages cost nothing).
pub(crate) const STACK_SIZE: u64 = 1024 * 1024;

/// How long the target is let run between two stops that wait for a thread to leave
/// xcover's memory.
pub(crate) const LEAVE_PAUSE: Duration = Duration::from_millis(1);

/// Scratch memory in the target for one stop: the park (a code page, then its block, see
/// `park.rs`), a data area (the session path, the thread table of `HOOK`/`UNHOOK`), then a
/// private stack. Recorded in the session while it exists, so that an xcover killed
/// mid-stop leaves nothing behind for good: the next one takes it out
/// ([`clear_orphan_scratch`]).
pub(crate) struct Scratch {
    pub(crate) addr: u64,
    pub(crate) size: u64,
    pub(crate) data_size: u64,
}

impl Scratch {
    /// Maps scratch memory with room for the thread table of every thread of `sp`, and
    /// installs the park of thread `tid` in it.
    pub(crate) fn map<T: Tracer>(
        sp: &mut StoppedProcess<T>,
        tid: i32,
        session: &SessionFile,
    ) -> Result<Scratch> {
        Self::map_in(sp, tid, Some(session))
    }

    /// [`Scratch::map`] in a process that is not the session's target (a process forked from
    /// it): nothing is recorded in the session, whose scratch record names the target's.
    pub(crate) fn map_unrecorded<T: Tracer>(
        sp: &mut StoppedProcess<T>,
        tid: i32,
    ) -> Result<Scratch> {
        Self::map_in(sp, tid, None)
    }

    fn map_in<T: Tracer>(
        sp: &mut StoppedProcess<T>,
        tid: i32,
        session: Option<&SessionFile>,
    ) -> Result<Scratch> {
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
        if let Some(session) = session {
            let h = session.header();
            h.scratch_size.store(size, Ordering::Release);
            h.scratch_addr.store(addr, Ordering::Release);
        }
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
            let _ = s.unmap_in(sp, tid, session);
            return Err(e);
        }
        Ok(s)
    }
    pub(crate) fn data(&self) -> u64 {
        self.addr + 2 * PAGE
    }
    pub(crate) fn stack_top(&self) -> u64 {
        self.addr + self.size
    }
    /// Remote calls return into the park; this `int3` is only their fallback.
    pub(crate) fn trap(&self) -> u64 {
        self.addr + park::CODE_SIZE as u64 - 1
    }
    pub(crate) fn unmap<T: Tracer>(
        &self,
        sp: &mut StoppedProcess<T>,
        tid: i32,
        session: &SessionFile,
    ) -> Result<()> {
        self.unmap_in(sp, tid, Some(session))
    }

    /// Unmaps scratch memory [`Scratch::map_unrecorded`] mapped.
    pub(crate) fn unmap_unrecorded<T: Tracer>(
        &self,
        sp: &mut StoppedProcess<T>,
        tid: i32,
    ) -> Result<()> {
        self.unmap_in(sp, tid, None)
    }

    fn unmap_in<T: Tracer>(
        &self,
        sp: &mut StoppedProcess<T>,
        tid: i32,
        session: Option<&SessionFile>,
    ) -> Result<()> {
        sp.disable_park()?;
        sp.syscall(tid, nr::MUNMAP, [self.addr, self.size, 0, 0, 0, 0])?;
        if let Some(session) = session {
            let h = session.header();
            h.scratch_addr.store(0, Ordering::Release);
            h.scratch_size.store(0, Ordering::Release);
        }
        Ok(())
    }
}

/// How many times [`clear_orphan_scratch`] stops the target to find its park empty.
const ORPHAN_TRIES: u32 = 3000;

/// Takes out the scratch memory an xcover killed in the middle of a stop left in the target
/// (recorded in the session): a thread still parked there is sent home (the way it would
/// go by itself after its wait), a thread still running a remote call there is let finish,
/// and then the memory is unmapped. Nothing to do (and no stop) when none is recorded.
pub(crate) fn clear_orphan_scratch(pid: i32, session: &SessionFile) -> Result<()> {
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
