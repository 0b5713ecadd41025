//! The parks remote work starts and ends in (see `park.rs` for what one is): installing
//! the call park in scratch memory and the system-call park in the vDSO's unused tail,
//! keeping their blocks in step with what xcover holds of a thread, and taking them out.
//! A park left by an xcover that was killed is found again and reused (`vdso_tail`), so
//! kills do not fill the vDSO's tail up.

use crate::Result;
use crate::park::{self, Park};
use crate::stop::{StopKind, StoppedProcess};
use crate::tracer::Tracer;

/// The target's vDSO: (address, bytes).
pub(crate) fn read_vdso<T: Tracer>(sp: &StoppedProcess<T>) -> Option<(u64, Vec<u8>)> {
    let maps = sp.tracer.mappings(sp.pid).ok()?;
    let vdso = maps.iter().find(|m| m.path == "[vdso]")?;
    let (start, end) = (vdso.start, vdso.end);
    let mut buf = vec![0u8; (end - start) as usize];
    sp.tracer.read(start, &mut buf).ok()?;
    Some((start, buf))
}

/// Room for `need` bytes in the zero tail of the target's vDSO: (16-aligned address, the
/// bytes to put back there on release).
///
/// A system-call park that a killed xcover left behind (its code at a 16-byte boundary past
/// the vDSO's own bytes) is reused, and every stale park after it is wiped on release (the
/// bytes to put back are zeros up to the last non-zero byte), so kills do not fill the
/// tail up. Unless a stopped thread is still inside one of them, on its way home: then
/// they are left alone and the new park goes after them.
fn vdso_tail<T: Tracer>(sp: &StoppedProcess<T>, need: usize) -> Option<(u64, Vec<u8>)> {
    let (start, buf) = read_vdso(sp)?;
    let code = park::code();
    let end_of = |b: &[u8]| b.iter().rposition(|&x| x != 0).map_or(0, |i| i + 1);
    let all_used = end_of(&buf);
    let stale = (0..buf.len())
        .step_by(16)
        .find(|&o| buf[o..].starts_with(code))
        .filter(|&o| {
            let range = start + o as u64..start + all_used as u64;
            !sp.tids()
                .iter()
                .any(|&t| sp.regs(t).is_ok_and(|r| range.contains(&r.rip)))
        });
    let used = stale.map_or(all_used, |o| end_of(&buf[..o]));
    let at = (used + 64).next_multiple_of(16);
    let restore = need.max(all_used.saturating_sub(at));
    if at + restore > buf.len() {
        return None;
    }
    let saved = match stale {
        Some(_) => vec![0u8; restore],
        None => buf[at..at + need].to_vec(),
    };
    Some((start + at as u64, saved))
}

impl<T: Tracer> StoppedProcess<T> {
    /// Installs the call park (see `park.rs`) for thread `tid`: its code and block at
    /// `code` (already mapped; made read-only and executable by the caller afterwards), its
    /// writable fields at `wr`, the private stack below `stack_top`. From now on remote
    /// work in `tid` starts and ends there, and the thread waits there between operations,
    /// ready to go home by itself if xcover dies.
    pub(crate) fn enable_park(
        &mut self,
        tid: i32,
        code: u64,
        wr: u64,
        stack_top: u64,
    ) -> Result<()> {
        let orig = self.original_regs(tid)?;
        let p = Park {
            tid,
            code,
            wr,
            stack: (stack_top & !15) - 64,
            sigs: park::MAX_SIGS,
        };
        self.write(code, park::code())?;
        self.write(wr, &park::wait_fields())?;
        self.park = Some(p);
        self.sync_park(tid)?;
        self.set_live_regs(tid, &p.idle_regs(&orig))
    }

    /// Installs the system-call park of thread `tid` in the tail of the vDSO, if there is
    /// room (see `park.rs`); without one, system calls run at a bare `syscall` of the vDSO.
    pub(crate) fn enable_vdso_park(&mut self, tid: i32) -> Result<()> {
        if self.vpark.is_some() {
            return Ok(());
        }
        let Some((code, saved)) = vdso_tail(self, park::size_for(1)) else {
            return Ok(());
        };
        let orig = self.original_regs(tid)?;
        let p = Park {
            tid,
            code,
            wr: 0,
            // Below the red zone of the thread's own stack: the way home pushes one word.
            stack: (orig.rsp.wrapping_sub(128 + 64)) & !15,
            sigs: 1,
        };
        self.write(code, park::code())?;
        self.vpark = Some((p, saved));
        self.sync_park(tid)?;
        self.set_live_regs(tid, &p.idle_regs(&orig))
    }

    /// Puts the vDSO's bytes back where its park was (on release).
    pub(crate) fn remove_vdso_park(&mut self) -> Result<()> {
        match self.vpark.take() {
            Some((p, saved)) => self.write(p.code, &saved),
            None => Ok(()),
        }
    }

    /// Takes the call park out of use (before its memory is unmapped): the thread waits in
    /// its system-call park, or gets its own registers back.
    pub(crate) fn disable_park(&mut self) -> Result<()> {
        let Some(p) = self.park.take() else {
            return Ok(());
        };
        match self.threads.get(&p.tid).and_then(|t| t.saved) {
            Some(orig) => {
                let back = match self.idle_park(p.tid) {
                    Some(v) => v.idle_regs(&orig),
                    None => orig,
                };
                self.set_live_regs(p.tid, &back)
            }
            None => Ok(()),
        }
    }

    /// The park thread `tid` waits in between operations: the call park, else the
    /// system-call park.
    pub(crate) fn idle_park(&self, tid: i32) -> Option<Park> {
        self.park.filter(|p| p.tid == tid).or(self
            .vpark
            .as_ref()
            .map(|v| v.0)
            .filter(|p| p.tid == tid))
    }

    /// Writes the blocks of thread `tid`'s parks from what we hold of it (registers to
    /// return to, x87/SSE state, signal mask, signals held back).
    pub(crate) fn sync_park(&mut self, tid: i32) -> Result<()> {
        let parks: Vec<Park> = [self.park, self.vpark.as_ref().map(|v| v.0)]
            .into_iter()
            .flatten()
            .filter(|p| p.tid == tid)
            .collect();
        if parks.is_empty() {
            return Ok(());
        }
        let Some(t) = self.threads.get(&tid) else {
            return Ok(());
        };
        let (Some(regs), Some((fp, mask, _))) = (t.saved, self.borrowed.get(&tid)) else {
            return Ok(());
        };
        let mut sigs = Vec::with_capacity(t.stashed.len() + 1);
        if let StopKind::Signal(si) = t.kind {
            sigs.push(si);
        }
        sigs.extend_from_slice(&t.stashed);
        for p in parks {
            let b = p.block_bytes(self.pid, &regs, fp, *mask, &sigs);
            self.write(p.block(), &b)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::nr;

    /// Parks a killed xcover left in the vDSO are reused and wiped, not piled up.
    #[test]
    fn stale_vdso_parks_are_reused_and_wiped() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id() as i32;
        std::thread::sleep(std::time::Duration::from_millis(50));
        let need = park::size_for(1);
        let (start, clean) = read_vdso(&StoppedProcess::stop(pid).unwrap()).unwrap();
        // Two stale parks, as two killed runs would leave them (code, then a block).
        let first = {
            let sp = StoppedProcess::stop(pid).unwrap();
            let (at, saved) = vdso_tail(&sp, need).unwrap();
            assert!(saved.iter().all(|&b| b == 0));
            let mut stale = park::code().to_vec();
            stale.resize(need, 0x5a);
            sp.write(at, &stale).unwrap();
            let second = (at + need as u64 + 64).next_multiple_of(16);
            sp.write(second, &stale).unwrap();
            at
        };
        // A new stop puts its park where the first stale one is, and a system call works.
        {
            let mut sp = StoppedProcess::stop(pid).unwrap();
            let tid = sp.worker_tid().unwrap();
            assert_eq!(vdso_tail(&sp, need).unwrap().0, first);
            sp.enable_vdso_park(tid).unwrap();
            assert_eq!(sp.vpark.as_ref().unwrap().0.code, first);
            assert_eq!(sp.syscall(tid, nr::GETPID, [0; 6]).unwrap(), pid as u64);
            sp.resume().unwrap();
        }
        // On release every stale byte is gone: the vDSO is as the kernel made it.
        let (again, after) = read_vdso(&StoppedProcess::stop(pid).unwrap()).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(again, start);
        assert!(
            after == clean,
            "the vDSO still differs from its original bytes"
        );
    }
}
