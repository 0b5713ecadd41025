//! What the entry points do: build the probe once, hook the function table, unhook it, and
//! take everything out at the end.
//!
//! # The agent's state
//!
//! The interceptor (trampolines, original bytes) and the JIT-ed probe's address live in one
//! static, [`STATE`]. Entry points never run concurrently: xcover calls them one at a time,
//! in one hijacked thread, with every thread of the target stopped; and nothing else in the
//! target ever touches the state (the probe and its helpers use only the session's maps).
//! That is what makes the unsynchronised access sound.

use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::sync::atomic::Ordering;

use xcover_bpf::ctx_use;
use xcover_bpf::env::{Env, InlineMap, MapInfo};
use xcover_bpf::helpers::{self, LogRing};
use xcover_bpf::insn::Insn;
use xcover_bpf::jit::{self, JitOptions};
use xcover_bpf::maps::ArenaMaps;
use xcover_bpf::verifier::{self, VerifierOptions};
use xcover_interceptor::{HookBatch, HookKind, HookOptions, Interceptor, IpFixup, Site};
use xcover_session::entry::IP_TRAP_STOPPED;
use xcover_session::{
    FuncStatus, GLIBC_TCB_TID_OFF, PROBE_CTX_COOKIE_OFF, PROBE_CTX_FUNC_IP_OFF,
    PROBE_SAVE_VECTOR_REGS, PROBE_TCB_TID, PROBE_TRAPS, REGION_HEAP, REGION_JIT, SkipReason,
};

use crate::heap;
use crate::memory::{self, AgentMemory};
use crate::session::{self, set_error};
use crate::trap;
use xcover_rt::mm as sys;

/// An entry point failed: the session's `agent_error` says why.
pub const E_PROBE: i64 = -10;
/// The thread table given by xcover is malformed.
pub const E_ARGS: i64 = -11;
/// Writing the entry patches failed.
pub const E_PATCH: i64 = -12;
/// No session (init did not run, or fini already did).
pub const E_NO_SESSION: i64 = xcover_session::entry::E_NO_SESSION;

/// Most threads xcover may pass in one call.
const MAX_THREADS: u64 = 1 << 20;

struct State {
    interceptor: Interceptor,
    /// The JIT-ed probe.
    jit_addr: u64,
    /// What the last `hook` planned and `commit` has not written yet: the batch and the
    /// table indices of its functions.
    planned: Option<(HookBatch, Vec<usize>)>,
}

struct Global(UnsafeCell<Option<State>>);

// SAFETY: see the module doc: entry points never run concurrently and nothing else touches
// the state, so there is never more than one access at a time.
unsafe impl Sync for Global {}

static STATE: Global = Global(UnsafeCell::new(None));

/// The agent's state.
///
/// # Safety
/// Only from an entry point (never concurrently, see the module doc), and the reference
/// must not outlive that call nor coexist with another from this function.
unsafe fn state() -> &'static mut Option<State> {
    // SAFETY: caller contract: one entry point at a time, one reference at a time.
    unsafe { &mut *STATE.0.get() }
}

/// The thread table of `HOOK`/`UNHOOK` as slices, `moves` zeroed.
///
/// # Safety
/// `ips` and `moves` must be null or valid for `n` u64s each (xcover's scratch memory),
/// not overlapping.
unsafe fn threads<'a>(
    ips: *const u64,
    moves: *mut u64,
    n: u64,
) -> Result<(&'a [u64], &'a mut [u64]), i64> {
    if n == 0 {
        return Ok((&[], &mut []));
    }
    if ips.is_null() || moves.is_null() || n > MAX_THREADS {
        set_error(format_args!("bad thread table ({n} threads)"));
        return Err(E_ARGS);
    }
    // SAFETY: caller contract.
    let (ips, moves) = unsafe {
        (
            core::slice::from_raw_parts(ips, n as usize),
            core::slice::from_raw_parts_mut(moves, n as usize),
        )
    };
    moves.fill(0);
    Ok((ips, moves))
}

fn nonzero(off: i32) -> Option<i32> {
    (off != 0).then_some(off)
}

/// Verifies and JIT-compiles the session's probe into a fresh read+exec mapping near
/// `near`, and creates the interceptor around it.
fn build(near: u64) -> Result<State, i64> {
    let v = session::view().ok_or(E_NO_SESSION)?;
    let h = v.header();
    let bytes = v.program_bytes();
    if bytes.is_empty() {
        set_error(format_args!(
            "the session has functions to hook but no probe program"
        ));
        return Err(E_PROBE);
    }
    let Some(insns) = Insn::decode_all(bytes) else {
        set_error(format_args!("probe program: truncated instruction"));
        return Err(E_PROBE);
    };
    let Some(offsets) = (0..v.maps_count())
        .map(|i| v.map_offset(i))
        .collect::<Option<Vec<u64>>>()
    else {
        set_error(format_args!(
            "probe maps: the map table lies outside the session"
        ));
        return Err(E_PROBE);
    };
    let (map_addrs, value_addrs) = if offsets.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        // The arena lies inside the session mapping, which stays mapped until fini; xcover
        // laid it out with ArenaLayout::init.
        match v.arena().env_addrs(&offsets) {
            Ok(t) => t,
            Err(e) => {
                set_error(format_args!("probe maps: {e}"));
                return Err(E_PROBE);
            }
        }
    };
    // SAFETY: every address comes from `env_addrs`, which checked it is a map header inside
    // the session's arena; the arena stays mapped until fini, long after compiling.
    let map_inline = unsafe { InlineMap::table(&map_addrs) };
    // SAFETY: as above.
    let Some(map_info) = (unsafe { MapInfo::table(&map_addrs) }) else {
        set_error(format_args!("probe maps: a map header of an unknown type"));
        return Err(E_PROBE);
    };
    let env = Env {
        helpers: helpers::standard_helpers(),
        map_addrs: &map_addrs,
        map_value_addrs: &value_addrs,
        map_inline: &map_inline,
        maps: &map_info,
        rseq_cpu_id: nonzero(h.rseq_cpu_id_off.load(Ordering::Acquire)),
        tcb_tid: (h.probe_flags & PROBE_TCB_TID != 0).then_some(GLIBC_TCB_TID_OFF as i32),
        ..Env::default()
    };
    if let Err(e) = verifier::verify(&insns, &env, &VerifierOptions::default()) {
        set_error(format_args!("probe rejected by the verifier: {e}"));
        return Err(E_PROBE);
    }
    // The probe runs here, so it may use what this CPU has.
    let opts = JitOptions {
        preserve_vector_regs: true,
        inline_ctx_helpers: true,
        rdpid: xcover_rt::cpu_id_method() == xcover_rt::CpuIdMethod::Rdpid,
        fsgsbase: xcover_rt::auxv::auxv().fsgsbase,
    };
    let code = match jit::compile(&insns, &env, &opts) {
        Ok(c) => c,
        Err(e) => {
            set_error(format_args!("probe JIT: {e}"));
            return Err(E_PROBE);
        }
    };
    // Near the functions, so trampolines reach the probe with a direct call.
    let len = sys::page_up(code.len() as u64);
    let Some(addr) = memory::map_near(near, len, REGION_JIT) else {
        set_error(format_args!("no memory for the JIT-ed probe ({len} bytes)"));
        return Err(E_PROBE);
    };
    // SAFETY: `addr` is a fresh read-write mapping of `len >= code.len()` bytes.
    unsafe { core::ptr::copy_nonoverlapping(code.as_ptr(), addr as *mut u8, code.len()) };
    // SAFETY: nothing runs in the new mapping yet; it becomes read+exec, never writable again.
    if unsafe { sys::mprotect(addr, len, sys::PROT_READ | sys::PROT_EXEC) } < 0 {
        set_error(format_args!(
            "mprotect of the JIT-ed probe at {addr:#x} failed"
        ));
        return Err(E_PROBE);
    }
    if let Some((base, size, head)) = v.log_ring() {
        // SAFETY: the ring and its counter lie inside the session mapping, which stays
        // mapped until fini removes the sink.
        helpers::set_log_sink(unsafe { LogRing::new(base, size, head) });
    }
    // The JIT-ed probe keeps the callee-saved registers (System V), so a probe that reads
    // only its cookie and function address gets the light trampoline body.
    let cookie_bits = 1u64 << (PROBE_CTX_COOKIE_OFF / 8) | 1 << (PROBE_CTX_FUNC_IP_OFF / 8);
    let light_ctx = matches!(
        ctx_use::ctx_slots_read(&insns, PROBE_CTX_COOKIE_OFF, PROBE_CTX_FUNC_IP_OFF),
        Some(slots) if slots & !cookie_bits == 0
    );
    let interceptor = Interceptor::new(
        addr,
        HookOptions {
            save_vector_regs: h.probe_flags & PROBE_SAVE_VECTOR_REGS != 0,
            flags_with_popfq: false,
            light_ctx,
            traps: h.probe_flags & PROBE_TRAPS != 0,
        },
    );
    Ok(State {
        interceptor,
        jit_addr: addr,
        planned: None,
    })
}

/// `xcover_agent_hook`: plans hooks for every `Pending` function of the table in one batch
/// (trampolines written, nothing patched) and names the threads to move; [`commit`] writes
/// the patches.
///
/// # Safety
/// An entry point's contract: called by xcover with the world stopped, `ips`/`moves` valid
/// for `n` u64s, the session's function table naming real functions of this process.
pub unsafe fn hook(ips: *const u64, moves: *mut u64, n: u64) -> i64 {
    let Some(v) = session::view() else {
        return E_NO_SESSION;
    };
    begin_call(v.header());
    // SAFETY: caller contract.
    let (ips, moves) = match unsafe { threads(ips, moves, n) } {
        Ok(t) => t,
        Err(e) => return e,
    };
    // SAFETY: we are in an entry point; this is the only reference taken in this call.
    let st = unsafe { state() };
    // A batch a dead xcover planned and never committed: nothing of it was patched.
    if let Some(s) = st.as_mut() {
        s.planned = None;
    }
    let pending: Vec<usize> = (0..v.funcs_count())
        .filter(|&i| {
            v.func(i)
                .is_some_and(|f| f.status() == Some(FuncStatus::Pending))
        })
        .collect();
    let Some(first) = pending.first().and_then(|&i| v.func(i)) else {
        return 0;
    };
    if st.is_none() {
        match build(first.addr) {
            Ok(s) => *st = Some(s),
            Err(e) => return e,
        }
    }
    let Some(s) = st.as_mut() else {
        return E_PROBE;
    };
    let specs: Vec<Site> = pending
        .iter()
        .filter_map(|&i| {
            let f = v.func(i)?;
            Some(Site::function(f.addr, f.size, f.pad_end, i as u64).entered_at(f.entered_at()))
        })
        .collect();
    let mut mem = AgentMemory;
    let mut batch = s.interceptor.prepare_hooks(&mut mem, &specs);
    // A thread inside bytes about to be patched, with no equivalent place in the
    // trampoline, cancels that function; recompute until every thread has its answer.
    loop {
        let mut cancelled = false;
        for (mv, &ip) in moves.iter_mut().zip(ips) {
            match batch.fixup(ip) {
                IpFixup::Untouched => *mv = 0,
                IpFixup::MoveTo(to) => *mv = to,
                IpFixup::Blocked(addr) => {
                    batch.cancel(addr);
                    *mv = 0;
                    cancelled = true;
                }
            }
        }
        if !cancelled {
            break;
        }
    }
    let planned = pending.len() as i64;
    s.planned = Some((batch, pending));
    planned
}

/// `xcover_agent_commit`: writes the entry patches of the batch [`hook`] planned and records
/// each function's outcome.
///
/// # Safety
/// An entry point's contract: called by xcover right after [`hook`], with the world stopped
/// and every thread `hook` named moved.
pub unsafe fn commit() -> i64 {
    let Some(v) = session::view() else {
        return E_NO_SESSION;
    };
    let h = v.header();
    begin_call(h);
    // SAFETY: we are in an entry point; this is the only reference taken in this call.
    let Some(s) = (unsafe { state() }).as_mut() else {
        return 0;
    };
    let Some((batch, pending)) = s.planned.take() else {
        return 0;
    };
    let outcomes: Vec<Result<HookKind, SkipReason>> =
        batch.outcomes().iter().map(|(_, r)| *r).collect();
    // The SIGTRAP handler is in place before any `int3` is written (every thread is
    // stopped, so none can trap before the table below names the new sites).
    let traps = outcomes.contains(&Ok(HookKind::Trap));
    if traps && !trap::install(s.jit_addr) {
        set_error(format_args!("installing the SIGTRAP handler failed"));
        return E_PATCH;
    }
    let mut mem = AgentMemory;
    // SAFETY: the specs name the session's functions, unchanged since xcover read them;
    // every thread is stopped and those inside patched bytes were moved by xcover.
    if unsafe { s.interceptor.commit_hooks(&mut mem, batch) }.is_err() {
        set_error(format_args!("writing the entry patches failed"));
        return E_PATCH;
    }
    // The table as committed: every trap site active.
    if traps {
        trap::publish(s.interceptor.trap_sites());
    }
    let mut hooked = 0u64;
    let mut skipped = 0u64;
    for (&i, r) in pending.iter().zip(&outcomes) {
        match r {
            Ok(kind) => {
                // A function hooked again keeps the reason of its last live unhook.
                v.set_func_hooked(i, *kind);
                hooked += 1;
            }
            Err(reason) => {
                v.set_func_status(i, FuncStatus::Skipped, Some(*reason));
                skipped += 1;
            }
        }
    }
    h.funcs_hooked.fetch_add(hooked, Ordering::AcqRel);
    h.funcs_skipped.fetch_add(skipped, Ordering::AcqRel);
    h.hooked_at_ns
        .store(xcover_rt::monotonic_ns(), Ordering::Release);
    hooked as i64
}

/// Counts an entry-point call and clears the last error.
fn begin_call(h: &xcover_session::SessionHeader) {
    h.agent_calls.fetch_add(1, Ordering::AcqRel);
    session::clear_error();
}

/// `xcover_agent_unhook`: restores every hooked function; their entries become `Pending`.
///
/// # Safety
/// As [`hook`].
pub unsafe fn unhook(ips: *const u64, moves: *mut u64, n: u64) -> i64 {
    let Some(v) = session::view() else {
        return E_NO_SESSION;
    };
    let h = v.header();
    begin_call(h);
    // SAFETY: caller contract.
    let (ips, moves) = match unsafe { threads(ips, moves, n) } {
        Ok(t) => t,
        Err(e) => return e,
    };
    // SAFETY: we are in an entry point; this is the only reference taken in this call.
    let Some(s) = (unsafe { state() }).as_mut() else {
        return 0;
    };
    // An uncommitted plan patched nothing; its trampolines go with their arenas at fini.
    s.planned = None;
    let addrs = s.interceptor.hooked();
    let batch = s.interceptor.prepare_unhooks(&addrs);
    let traps = s.interceptor.trap_sites();
    for (mv, &ip) in moves.iter_mut().zip(ips) {
        // Held with the SIGTRAP of an `int3`: when it is one of ours, the thread goes back
        // to the entry, whose original byte is restored (xcover drops the signal).
        if ip & IP_TRAP_STOPPED != 0 {
            let at = (ip & !IP_TRAP_STOPPED).wrapping_sub(1);
            if traps.iter().any(|t| t.active && t.addr == at) {
                *mv = at;
                continue;
            }
        }
        *mv = match batch.fixup(ip & !IP_TRAP_STOPPED) {
            IpFixup::MoveTo(to) => to,
            IpFixup::Untouched | IpFixup::Blocked(_) => 0,
        };
    }
    // SAFETY: as `commit_unhooks` requires, see `unhook`'s contract.
    let n = match unsafe { commit_unhooks(s, batch, moves) } {
        Ok(n) => n,
        Err(code) => return code,
    };
    // Pending again, keeping how each was hooked (for the reports written after detach).
    for i in 0..v.funcs_count() {
        // `Hooked` and `Unhooking` ones; the reason of an earlier live unhook stays: the
        // count is a lower bound.
        v.set_func_unhooked(i);
    }
    h.funcs_hooked.store(0, Ordering::Release);
    n as i64
}

/// Writes the original bytes of `batch` back (the last step of `unhook` and `unhook_some`),
/// then republishes the trap sites: a trap still being delivered finds its site retired and
/// re-runs the restored entry. On failure `moves` is cleared (no thread is moved) and the
/// error is recorded in the session.
///
/// # Safety
/// Every thread is stopped, those on bytes that go away are moved by xcover as `moves` says,
/// and nobody else changed the hooked code.
unsafe fn commit_unhooks(
    s: &mut State,
    batch: xcover_interceptor::UnhookBatch,
    moves: &mut [u64],
) -> Result<usize, i64> {
    let mut mem = AgentMemory;
    // SAFETY: the caller's contract, which is `commit_unhooks`'s.
    let n = match unsafe { s.interceptor.commit_unhooks(&mut mem, batch) } {
        Ok(n) => n,
        Err(e) => {
            moves.fill(0);
            set_error(format_args!("restoring the original code failed: {e}"));
            return Err(E_PATCH);
        }
    };
    let sites = s.interceptor.trap_sites();
    if !sites.is_empty() {
        trap::publish(sites);
    }
    Ok(n)
}

/// `xcover_agent_unhook_some`: restores the functions xcover marked `Unhooking` and marks
/// them `Unhooked` (their reason kept); every other function is left as it is. Their
/// trampolines are retired by the interceptor, not freed, so a thread still running in one
/// (in the probe, or returning into it) is safe.
///
/// # Safety
/// As [`hook`].
pub unsafe fn unhook_some(ips: *const u64, moves: *mut u64, n: u64) -> i64 {
    let Some(v) = session::view() else {
        return E_NO_SESSION;
    };
    let h = v.header();
    begin_call(h);
    // SAFETY: caller contract.
    let (ips, moves) = match unsafe { threads(ips, moves, n) } {
        Ok(t) => t,
        Err(e) => return e,
    };
    // SAFETY: we are in an entry point; this is the only reference taken in this call.
    let st = unsafe { state() };
    let marked: Vec<(usize, u64, u32)> = (0..v.funcs_count())
        .filter_map(|i| {
            let f = v.func(i)?;
            (f.status() == Some(FuncStatus::Unhooking)).then_some((i, f.addr, f.skip_reason))
        })
        .collect();
    let Some(s) = st.as_mut() else {
        // Nothing was ever hooked: nothing to restore.
        for &(i, _, code) in &marked {
            v.set_func_status_code(i, FuncStatus::Unhooked, code);
        }
        return 0;
    };
    // An uncommitted plan patched nothing; its trampolines stay in their arenas.
    s.planned = None;
    let addrs: Vec<u64> = marked
        .iter()
        .map(|&(_, a, _)| a)
        .filter(|&a| s.interceptor.is_hooked(a))
        .collect();
    let batch = s.interceptor.prepare_unhooks(&addrs);
    for (mv, &ip) in moves.iter_mut().zip(ips) {
        *mv = match batch.fixup(ip) {
            IpFixup::MoveTo(to) => to,
            IpFixup::Untouched | IpFixup::Blocked(_) => 0,
        };
    }
    // SAFETY: as `commit_unhooks` requires, see `unhook_some`'s contract.
    let done = match unsafe { commit_unhooks(s, batch, moves) } {
        Ok(n) => n,
        Err(code) => return code,
    };
    // The code xcover wrote with `Unhooking` holds the hook kind and the reason: both stay.
    for &(i, _, code) in &marked {
        v.set_func_status_code(i, FuncStatus::Unhooked, code);
    }
    let _ = h
        .funcs_hooked
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |x| {
            Some(x.saturating_sub(done as u64))
        });
    done as i64
}

/// `xcover_agent_fini`: drops the state, unmaps every region the agent made (JIT code and
/// trampolines, then the heap last), marks the session Detached.
///
/// # Safety
/// Called by xcover after `unhook`, with no thread inside any recorded region.
pub unsafe fn fini() -> i64 {
    let Some(v) = session::view() else {
        return E_NO_SESSION;
    };
    let h = v.header();
    h.state.store(
        xcover_session::SessionState::Detaching as u32,
        Ordering::Release,
    );
    h.agent_calls.fetch_add(1, Ordering::AcqRel);
    helpers::set_log_sink(None);
    // The target's SIGTRAP disposition back, before the handler's code goes.
    trap::uninstall();
    // SAFETY: we are in an entry point; this is the only reference taken in this call.
    let st = unsafe { state() };
    if let Some(s) = st.take() {
        let _ = s.jit_addr;
        // Frees into the heap, which is still mapped.
        drop(s);
    }
    // From here on nothing may allocate: the heap goes away.
    heap::retire();
    let n = h.regions_count.load(Ordering::Acquire);
    let mut failed = 0u64;
    for heap_pass in [false, true] {
        for i in 0..n {
            let Some(r) = v.region(i) else {
                continue;
            };
            if (r.kind == REGION_HEAP) != heap_pass || r.len == 0 {
                continue;
            }
            // SAFETY: the region is ours (recorded when mapped); the state that referred to
            // it is dropped, and xcover checked that no thread is inside it.
            if unsafe { sys::munmap(r.start, r.len) } < 0 {
                failed += 1;
            }
        }
    }
    h.regions_count.store(0, Ordering::Release);
    if failed != 0 {
        set_error(format_args!(
            "{failed} of {n} regions could not be unmapped"
        ));
    }
    h.state.store(
        xcover_session::SessionState::Detached as u32,
        Ordering::Release,
    );
    session::clear();
    if failed != 0 { E_PATCH } else { 0 }
}
