//! What detach unmaps, and whether a stopped thread is inside it (or will return there).

use std::sync::atomic::Ordering;

use crate::session::SessionFile;
use crate::stop::StoppedProcess;
use crate::tracer::Tracer;
use crate::{Result, procfs};

/// A range of the target detach unmaps: start, end, and what it is.
pub(crate) type Doomed = (u64, u64, &'static str);

/// How much of a thread's stack, from its `rsp` up, is searched for signal frames that
/// return into memory about to be unmapped (a signal frame with its extended state is ~3 KB).
const STACK_SCAN: u64 = 32 * 1024;

/// Address ranges in the target that go away at detach and that no thread may be in: the
/// agent image and every region the agent recorded in the session (heap, JIT code,
/// trampolines).
pub(crate) fn doomed_ranges(
    session: &SessionFile,
    base: u64,
    size: u64,
) -> Result<Vec<(u64, u64, &'static str)>> {
    let mut v = Vec::new();
    if base != 0 {
        v.push((base, base + size, "the agent"));
    }
    let h = session.header();
    let rsize = std::mem::size_of::<xcover_session::Region>();
    // Bounded by the file, whatever the (shared, writable) header says.
    let n = h
        .regions_count
        .load(Ordering::Acquire)
        .min(h.regions_cap)
        .min(session.len() / rsize as u64);
    let mut raw = vec![0u8; n as usize * rsize];
    session.read_at(h.regions_off, &mut raw)?;
    for c in raw.chunks_exact(rsize) {
        let r: xcover_session::Region = bytemuck::pod_read_unaligned(c);
        let what = match r.kind {
            xcover_session::REGION_HEAP => HEAP_RANGE,
            xcover_session::REGION_JIT => JIT_RANGE,
            xcover_session::REGION_TRAMPOLINES => "a trampoline arena",
            _ => "an agent region",
        };
        v.push((r.start, r.start.saturating_add(r.len), what));
    }
    Ok(v)
}

/// How [`doomed_ranges`] names the agent's heap.
const HEAP_RANGE: &str = "the agent's heap";
/// How [`doomed_ranges`] names the JIT-ed probe.
const JIT_RANGE: &str = "the JIT-ed probe";
/// Stack words above `rsp` searched for the probe's return address when a thread is in the
/// vDSO (its `clock_gettime` keeps 5 words, a nested call a few more).
const VDSO_FRAME_WORDS: usize = 32;

/// The first stopped thread that is inside code in one of `ranges`, or will return there;
/// with the address.
///
/// Besides `rip`, a signal handler that interrupted a trampoline or the probe returns to the
/// `rip` saved in its signal frame. Signal frames are found on the live stack by their shape
/// (`rip`, then `eflags` with its always-one bit and IF set, then `cs` = 0x33), not by any
/// word that happens to look like an address: stale return addresses and plain integers in
/// live frames would otherwise hold a detach up for ever (seen with Go and C targets).
///
/// The JIT-ed probe calls the vDSO's `clock_gettime` itself: a thread in the vDSO whose
/// innermost [`VDSO_FRAME_WORDS`] stack words hold an address in the probe's code may
/// return there, and counts as inside it. A stale address there only costs a retry (and,
/// should it stay, a detach that fails safe with the agent left in place).
pub(crate) fn thread_inside<T: Tracer>(
    sp: &StoppedProcess<T>,
    ranges: &[(u64, u64, &'static str)],
) -> Result<Option<(i32, u64, &'static str)>> {
    let inside = |v: u64| ranges.iter().find(|r| (r.0..r.1).contains(&v));
    // Code only: a thread returns into code, never into the heap.
    let code: Vec<_> = ranges.iter().filter(|r| r.2 != HEAP_RANGE).collect();
    let returns_into = |v: u64| code.iter().find(|r| (r.0..r.1).contains(&v)).copied();
    let jit: Vec<_> = code.iter().filter(|r| r.2 == JIT_RANGE).copied().collect();
    let maps = sp.tracer.mappings(sp.pid()).unwrap_or_default();
    let vdso = maps
        .iter()
        .find(|m| m.path == "[vdso]")
        .map(|m| m.start..m.end);
    for tid in sp.tids() {
        let regs = sp.regs(tid)?;
        if let Some(r) = inside(regs.rip) {
            return Ok(Some((tid, regs.rip, r.2)));
        }
        let top = regs.rsp & !7;
        if vdso.as_ref().is_some_and(|v| v.contains(&regs.rip)) && !jit.is_empty() {
            let mut frame = [0u8; 8 * VDSO_FRAME_WORDS];
            if sp.read(top, &mut frame).is_ok()
                && let Some((ret, r)) = frame
                    .chunks_exact(8)
                    .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
                    .find_map(|w| jit.iter().find(|r| (r.0..r.1).contains(&w)).map(|r| (w, r)))
            {
                return Ok(Some((tid, ret, r.2)));
            }
        }
        let Some(m) = maps.iter().find(|m| (m.start..m.end).contains(&top)) else {
            continue;
        };
        let len = (m.end - top).min(STACK_SCAN) as usize;
        let mut stack = vec![0u8; len];
        if sp.read(top, &mut stack).is_err() {
            continue;
        }
        let words: Vec<u64> = stack
            .chunks_exact(8)
            .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
            .collect();
        // In a signal frame the saved rip is word 16 of the registers, which follow the
        // ucontext's flags, link and stack_t (ss_sp, ss_flags, ss_size): 19 words before it.
        for k in 19..words.len().saturating_sub(2) {
            let (rip, eflags, cs) = (words[k], words[k + 1], words[k + 2]);
            if eflags & 0x202 != 0x202 || eflags >> 22 != 0 || cs & 0xffff != 0x33 {
                continue;
            }
            let Some(r) = returns_into(rip) else {
                continue;
            };
            // A frame on the alternate signal stack is live only while the thread runs
            // there; one seen from another stack is left over (Go keeps its signal stacks
            // next to its other stacks).
            let (ss_sp, ss_size) = (words[k - 19], words[k - 17]);
            let alt = ss_sp..ss_sp.saturating_add(ss_size);
            if ss_size != 0 && alt.contains(&(top + 8 * k as u64)) && !alt.contains(&regs.rsp) {
                continue;
            }
            return Ok(Some((tid, rip, r.2)));
        }
    }
    Ok(None)
}

/// The first stopped thread with a SIGTRAP pending that it does not block (it is delivered
/// as soon as the thread runs), with its `rip`: a trap hook's `int3` whose signal the agent's
/// handler has yet to take. Read from `/proc/<pid>/task/<tid>/status` (`SigPnd`, `ShdPnd`,
/// `SigBlk`, through [`procfs::task_signals`]); a thread whose status cannot be read is
/// passed over.
pub(crate) fn trap_pending<T: Tracer>(sp: &StoppedProcess<T>) -> Option<(i32, u64, &'static str)> {
    const TRAP: u64 = 1 << (libc::SIGTRAP - 1);
    let pid = sp.pid();
    for tid in sp.tids() {
        let Ok(s) = procfs::task_signals(pid, tid) else {
            continue;
        };
        if (s.pending | s.shared_pending) & TRAP != 0 && s.blocked & TRAP == 0 {
            let rip = sp.regs(tid).map(|r| r.rip).unwrap_or(0);
            return Some((tid, rip, "a trap hook's pending SIGTRAP"));
        }
    }
    None
}
