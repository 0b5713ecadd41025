//! Inlined helpers.
//!
//! Besides array lookups ([`crate::env::InlineMap`]) and the context helpers
//! ([`JitOptions::inline_ctx_helpers`]), the JIT emits the common case of a few standard
//! helpers inline (only when the [`Env`] registers the standard function for the id), so a
//! coverage probe's first hit of a function calls no helper and saves no vector register:
//!
//! - `bpf_ringbuf_reserve` on a RINGBUF the `Env` describes and `bpf_ringbuf_submit` of its
//!   records (the protocol of [`crate::maps::ringbuf_reserve`]; a full ring, a padding
//!   record, a lost race or odd arguments call the helper, which counts drops);
//! - `bpf_get_current_pid_tgid` from the tid cache's home slot
//!   ([`xcover_rt::TidCacheLayout`]);
//! - `bpf_ktime_get_ns` / `bpf_ktime_get_coarse_ns` as a direct call of the vDSO's
//!   `clock_gettime`, which leaves the vector registers alone.
//!
//! Each inline path ends in the usual helper call for the cases it does not handle, with the
//! arguments untouched, so the result is always the helper's.
//!
//! Array lookups put their rare cases (key out of range, a CPU number that is not a slot)
//! in cold stubs ([`Cold`]) emitted after the epilogue, off the hot path.
//!
//! [`JitOptions::inline_ctx_helpers`]: super::JitOptions::inline_ctx_helpers
//! [`Env`]: crate::env::Env

use alloc::vec;
use alloc::vec::Vec;

use xcover_x86::Writer as Emitter;
use xcover_x86::modrm::*;

use super::{Compiler, HELPER_GET_ATTACH_COOKIE, HELPER_GET_FUNC_IP, JitError, Known, Target};
use crate::env::InlineKind;
use crate::insn::*;

/// Code placed after the epilogue, off the hot path.
pub(super) enum Cold {
    /// An out-of-range array key: `r0 = 0`, then jump to `to`.
    Null { jcc: usize, to: ColdTo },
    /// A CPU number at or above the map's slot count: `r10d %= ncpus`, then jump back.
    CpuMod { jcc: usize, back: usize, ncpus: u32 },
    /// The rseq CPU number is not a slot (the thread has no rseq registered): take `rdpid`'s
    /// when there is one, then as [`Cold::CpuMod`].
    CpuRseq { jcc: usize, back: usize, ncpus: u32 },
}

/// Where a cold stub continues.
pub(super) enum ColdTo {
    Pos(usize),
    Insn(usize),
}

impl Compiler<'_> {
    /// Inlines `call 1` (`bpf_map_lookup_elem`) when `r1` is a known inlinable array map and
    /// `r2` a known stack address. `null_to`: the target of a `jeq r0, 0` that follows and is
    /// folded in. Returns false (emitting nothing) when it does not apply.
    pub(super) fn try_inline_lookup(
        &mut self,
        pc: usize,
        i: Insn,
        null_to: Option<usize>,
    ) -> Result<bool, JitError> {
        if i.imm != crate::helpers::MAP_LOOKUP_ELEM as i32 {
            return Ok(false);
        }
        let (Known::Map(idx), Known::Stack(koff)) = (self.regs.known[1], self.regs.known[2]) else {
            return Ok(false);
        };
        let Some(Some(m)) = self.env.map_inline.get(idx as usize).copied() else {
            return Ok(false);
        };
        let rseq = self.env.rseq_cpu_id;
        if m.kind == InlineKind::Ringbuf
            || (m.kind == InlineKind::PerCpuArray && !self.opts.rdpid && rseq.is_none())
        {
            return Ok(false);
        }
        let id = i.imm as u32;
        if self.env.helper(id).is_none() {
            return Err(JitError::UnknownHelper { pc, id });
        }
        // r1..r5 die at a call and r0 is overwritten; anything else deferred must be in place
        // before the folded branch.
        for r in 0..=5 {
            self.forget(r);
        }
        self.flush_all();
        let key = self.mem(10, koff);
        let e = &mut self.e;
        e.inst(&[], false, false, &[0x8b], R11, key); // mov r11d, [key]
        e.alu_imm(false, 7, R11, m.max_entries as i32); // cmp r11d, max_entries
        let jcc = e.jcc(0x3); // jae -> r0 = 0
        let percpu = m.kind == InlineKind::PerCpuArray;
        if percpu {
            match rseq {
                Some(off) => e.load32_fs(R10, off), // mov r10d, fs:[cpu_id]
                None => {
                    e.rdpid(R10);
                    e.alu_imm(false, 4, R10, 0xfff); // and r10d, 0xfff
                }
            }
            let mut cold = None;
            if rseq.is_some() || m.ncpus < 0x1000 {
                let ncpus = m.ncpus.max(1);
                e.alu_imm(false, 7, R10, ncpus as i32); // cmp r10d, ncpus
                let jcc = e.jcc(0x3);
                let back = e.pos();
                cold = Some(match rseq {
                    Some(_) => Cold::CpuRseq { jcc, back, ncpus },
                    None => Cold::CpuMod { jcc, back, ncpus },
                });
            }
            match i32::try_from(m.cpu_stride) {
                Ok(st) => {
                    e.inst(&[], true, false, &[0x69], R10, Rm::Reg(R10)); // imul r10, r10, st
                    e.imm32(st);
                }
                Err(_) => {
                    e.mov_imm64(R9, m.cpu_stride);
                    e.inst(&[], true, false, &[0x0f, 0xaf], R10, Rm::Reg(R9));
                }
            }
            self.cold.extend(cold);
        }
        let e = &mut self.e;
        e.mov_imm64(RAX, m.values_addr);
        if percpu {
            e.rr(true, 0x01, RAX, R10); // add rax, r10
        }
        match m.value_stride {
            s @ (1 | 2 | 4 | 8) => e.lea_sib(RAX, RAX, R11, s as u8),
            s => {
                e.inst(&[], true, false, &[0x69], R11, Rm::Reg(R11)); // imul r11, r11, s
                e.imm32(s as i32);
                e.rr(true, 0x01, RAX, R11);
            }
        }
        let to = match null_to {
            Some(t) => ColdTo::Insn(self.vsave.base + t),
            None => ColdTo::Pos(self.e.pos()),
        };
        self.cold.push(Cold::Null { jcc, to });
        self.forget(0);
        Ok(true)
    }

    /// Emits the cold stubs collected while compiling.
    pub(super) fn emit_cold(&mut self) {
        for c in core::mem::take(&mut self.cold) {
            match c {
                Cold::Null { jcc, to } => {
                    self.e.patch_rel32_here(jcc);
                    self.e.rr(false, 0x31, RAX, RAX);
                    let j = self.e.jmp();
                    match to {
                        ColdTo::Pos(p) => self.e.patch_rel32(j, p),
                        ColdTo::Insn(pc) => self.jump_to(j, Target::Insn(pc)),
                    }
                }
                Cold::CpuRseq { jcc, back, ncpus } => {
                    let e = &mut self.e;
                    e.patch_rel32_here(jcc);
                    if self.opts.rdpid {
                        e.rdpid(R10);
                        e.alu_imm(false, 4, R10, 0xfff); // and r10d, 0xfff
                        e.alu_imm(false, 7, R10, ncpus as i32); // cmp r10d, ncpus
                        let j = e.jcc(0x2); // jb back
                        e.patch_rel32(j, back);
                    }
                    // rax (r0) is being computed and rdx (r3) dies at the call.
                    Self::cpu_mod(e, ncpus, back);
                }
                Cold::CpuMod { jcc, back, ncpus } => {
                    self.e.patch_rel32_here(jcc);
                    Self::cpu_mod(&mut self.e, ncpus, back);
                }
            }
        }
    }

    /// `r10d %= ncpus`, then `jmp back`. Clobbers rax (r0, being computed) and rdx (r3,
    /// dead at the call being inlined).
    pub(super) fn cpu_mod(e: &mut Emitter, ncpus: u32, back: usize) {
        e.mov(false, RAX, R10);
        e.rr(false, 0x31, RDX, RDX);
        e.mov_imm(false, R10, ncpus as i32);
        e.inst(&[], false, false, &[0xf7], 6, Rm::Reg(R10)); // div r10d
        e.mov(false, R10, RDX);
        let j = e.jmp();
        e.patch_rel32(j, back);
    }

    /// A call of helper `id` (instruction `pc`): the context helpers as loads from the
    /// [`xcover_session::ProbeCtx`] in `r1` (with `inline_ctx_helpers`), else the helper's
    /// inline fast path when it has one, ahead of the plain helper call.
    pub(super) fn helper_call(&mut self, pc: usize, id: u32) -> Result<(), JitError> {
        let f = self
            .env
            .helper(id)
            .ok_or(JitError::UnknownHelper { pc, id })?;
        let inline_off = match id {
            HELPER_GET_ATTACH_COOKIE => Some(xcover_session::PROBE_CTX_COOKIE_OFF),
            HELPER_GET_FUNC_IP => Some(xcover_session::PROBE_CTX_FUNC_IP_OFF),
            _ => None,
        };
        match inline_off {
            Some(off) if self.opts.inline_ctx_helpers => {
                self.e
                    .inst(&[], true, false, &[0x8b], RAX, Rm::Mem(RDI, off as i32));
            }
            _ => {
                // An inlined fast path falls through with r0 set; its slow
                // cases jump to the plain helper call below.
                let slow = if self.env.unwind_helper == Some(id) {
                    None
                } else {
                    self.inline_helper_fast(id, f)
                };
                let done = slow.as_ref().map(|_| self.e.jmp());
                for &j in slow.iter().flatten() {
                    self.e.patch_rel32_here(j);
                }
                self.call_helper(id, f as usize as u64);
                self.continue_saved(pc);
                if let Some(d) = done {
                    self.e.patch_rel32_here(d);
                }
            }
        }
        Ok(())
    }

    /// Emits the inline fast path of helper `id` when it is the standard helper and the
    /// arguments allow it, leaving `r0` in `rax`, and returns the `jcc`s to patch to the
    /// helper call that handles every other case (with the arguments `r1`..`r3` untouched:
    /// the fast path only writes `rax`, `rcx`, `r8`..`r11` before its last branch). `None`
    /// (nothing emitted) when the helper is called as usual.
    pub(super) fn inline_helper_fast(
        &mut self,
        id: u32,
        f: crate::env::HelperFn,
    ) -> Option<Vec<usize>> {
        use crate::env::HelperFn;
        use crate::helpers as h;
        let is = |g: HelperFn| core::ptr::fn_addr_eq(f, g);
        match id {
            h::RINGBUF_RESERVE if is(h::ringbuf_reserve) => self.inline_ringbuf_reserve(),
            h::RINGBUF_SUBMIT if is(h::ringbuf_submit) => self.inline_ringbuf_submit(),
            h::GET_CURRENT_PID_TGID if is(h::get_current_pid_tgid) => self.inline_pid_tgid(),
            h::KTIME_GET_NS if is(h::ktime_get_ns) => {
                self.inline_vdso_clock(xcover_rt::CLOCK_MONOTONIC)
            }
            h::KTIME_GET_COARSE_NS if is(h::ktime_get_coarse_ns) => {
                self.inline_vdso_clock(xcover_rt::CLOCK_MONOTONIC_COARSE)
            }
            _ => None,
        }
    }

    /// `bpf_ringbuf_reserve(map, size, flags)` on a known RINGBUF, the common case of
    /// [`crate::maps::ringbuf_reserve`]: `flags == 0`, the record fits before the end of
    /// the data area (no padding record), the buffer has room, and the compare-and-swap of
    /// `producer_pos` wins. Then the busy header is stored and `r0` is the payload. A full
    /// buffer, padding, a lost race or bad arguments go to the helper (which counts drops).
    pub(super) fn inline_ringbuf_reserve(&mut self) -> Option<Vec<usize>> {
        use crate::maps::{MapHeader, RINGBUF_BUSY_BIT, RINGBUF_HDR_SZ};
        let Known::Map(idx) = self.regs.known[1] else {
            return None;
        };
        let m = self.env.map_inline.get(idx as usize).copied().flatten()?;
        let hdr = *self.env.map_addrs.get(idx as usize)?;
        let cap = m.ring_size;
        if m.kind != InlineKind::Ringbuf || !cap.is_power_of_two() || !(16..=1 << 30).contains(&cap)
        {
            return None;
        }
        let data_off = i32::try_from(m.values_addr.checked_sub(hdr)?).ok()?;
        let prod = core::mem::offset_of!(MapHeader, producer_pos) as i32;
        let cons = core::mem::offset_of!(MapHeader, consumer_pos) as i32;
        let e = &mut self.e;
        let mut slow = Vec::new();
        // rdi = map header, rsi = size, rdx = flags.
        e.rr(true, 0x85, RDX, RDX); // test rdx, rdx
        slow.push(e.jcc(CC_NE));
        e.alu_imm(true, 7, RSI, (cap - RINGBUF_HDR_SZ) as i32); // cmp rsi, cap - 8
        slow.push(e.jcc(CC_A));
        e.lea(R11, RSI, RINGBUF_HDR_SZ as i32 + 7);
        e.alu_imm(true, 4, R11, -8); // r11 = len = round8(size + 8)
        e.load(true, RAX, RDI, prod); // rax = producer_pos
        e.load(true, R10, RDI, cons); // r10 = consumer_pos
        e.mov(true, R9, RAX);
        e.alu_imm(true, 4, R9, (cap - 1) as i32); // r9 = idx
        e.lea_sib(RCX, R9, R11, 1);
        e.alu_imm(true, 7, RCX, cap as i32); // idx + len > cap: needs a padding record
        slow.push(e.jcc(CC_A));
        e.lea_sib(RCX, RAX, R11, 1);
        e.rr(true, 0x29, RCX, R10); // sub rcx, r10
        e.alu_imm(true, 7, RCX, cap as i32); // prod + len - cons > cap: full
        slow.push(e.jcc(CC_A));
        e.lea_sib(RCX, RAX, R11, 1);
        e.inst(&[0xf0], true, false, &[0x0f, 0xb1], RCX, Rm::Mem(RDI, prod)); // lock cmpxchg
        slow.push(e.jcc(CC_NE));
        e.lea(R9, R9, data_off); // r9 = record header's offset from the map header
        e.mov(true, RCX, R9);
        e.shift_imm(4, RCX, 32);
        e.mov(false, RAX, RSI);
        e.alu_imm(false, 1, RAX, RINGBUF_BUSY_BIT as i32); // or eax, BUSY (zero-extends)
        e.rr(true, 0x09, RAX, RCX); // rax = (off << 32) | BUSY | size
        e.lea_sib(RCX, RDI, R9, 1);
        e.store(RCX, 0, RAX); // a plain store is a release store on x86
        e.lea(RAX, RCX, RINGBUF_HDR_SZ as i32);
        Some(slow)
    }

    /// `bpf_ringbuf_submit(data, flags)` for a record of one of the program's inlinable
    /// ring buffers, the common case of [`crate::maps::ringbuf_commit`]: wakeup flags only,
    /// an aligned pointer whose header leads back to one of those maps. Clears the busy bit
    /// with a release store and sets `r0 = 0`; anything else goes to the helper.
    pub(super) fn inline_ringbuf_submit(&mut self) -> Option<Vec<usize>> {
        use crate::maps::{RINGBUF_BUSY_BIT, RINGBUF_HDR_SZ};
        let rings: Vec<u64> = self
            .env
            .map_inline
            .iter()
            .zip(self.env.map_addrs)
            .filter(|(m, _)| m.is_some_and(|m| m.kind == InlineKind::Ringbuf))
            .map(|(_, &a)| a)
            .collect();
        if rings.is_empty() || rings.len() > 4 {
            return None;
        }
        let e = &mut self.e;
        let mut slow = Vec::new();
        // rdi = data, rsi = flags.
        e.inst(&[], true, false, &[0xf7], 0, Rm::Reg(RSI)); // test rsi, !3
        e.imm32(!3);
        slow.push(e.jcc(CC_NE));
        e.inst(&[], false, false, &[0xf7], 0, Rm::Reg(RDI)); // test edi, 7
        e.imm32(7);
        slow.push(e.jcc(CC_NE));
        e.alu_imm(true, 7, RDI, RINGBUF_HDR_SZ as i32); // cmp rdi, 8
        slow.push(e.jcc(CC_B));
        let h = -(RINGBUF_HDR_SZ as i32);
        e.load(true, R9, RDI, h); // r9 = header word
        e.mov(true, R10, R9);
        e.shift_imm(5, R10, 32); // r10 = back
        e.rr(true, 0x85, R10, R10);
        slow.push(e.jcc(CC_E));
        e.lea(R11, RDI, h);
        e.rr(true, 0x29, R11, R10); // r11 = the map header it names (wraps if bogus)
        let mut found = Vec::new();
        for (n, &a) in rings.iter().enumerate() {
            e.mov_imm64(RAX, a);
            e.rr(true, 0x39, R11, RAX); // cmp r11, rax
            if n + 1 == rings.len() {
                slow.push(e.jcc(CC_NE));
            } else {
                found.push(e.jcc(CC_E));
            }
        }
        for j in found {
            e.patch_rel32_here(j);
        }
        let busy = RINGBUF_BUSY_BIT.trailing_zeros() as u8;
        e.inst(&[], true, false, &[0x0f, 0xba], 6, Rm::Reg(R9)); // btr r9, busy
        e.byte(busy);
        e.store(RDI, h, R9); // release store
        e.rr(false, 0x31, RAX, RAX);
        Some(slow)
    }

    /// `bpf_ktime_get_ns` / `bpf_ktime_get_coarse_ns`: a direct call of the vDSO's
    /// `clock_gettime(clock)`, which leaves the vector registers alone (checked by
    /// [`xcover_rt::vdso_clock_gettime_without_vector_regs`]), so neither the save of
    /// `xmm0`-`xmm15` nor the helper's wrapper is needed; the helper (which falls back to the
    /// system call) only runs if the vDSO call fails.
    pub(super) fn inline_vdso_clock(&mut self, clock: usize) -> Option<Vec<usize>> {
        let f = xcover_rt::vdso_clock_gettime_without_vector_regs(clock as u32)?;
        // Below the red-zone stack (as any call), plus a timespec; rsp stays 16-aligned.
        let sub = if self.vsave.saved {
            0
        } else {
            self.frame.call_sub
        } + 16;
        let e = &mut self.e;
        e.lea(RSP, RSP, -sub);
        e.mov_imm(false, RDI, clock as i32);
        e.mov(true, RSI, RSP);
        e.mov_imm64(RAX, f);
        e.bytes(&[0xff, 0xd0]); // call rax
        e.load(true, RCX, RSP, 0); // tv_sec
        e.load(true, RDX, RSP, 8); // tv_nsec
        e.lea(RSP, RSP, sub);
        e.rr(false, 0x85, RAX, RAX);
        let slow = vec![e.jcc(CC_NE)];
        e.inst(&[], true, false, &[0x69], RAX, Rm::Reg(RCX)); // imul rax, rcx, 1e9
        e.imm32(1_000_000_000);
        e.rr(true, 0x01, RAX, RDX); // add rax, rdx
        Some(slow)
    }

    /// `bpf_get_current_pid_tgid()`: the tid from the TCB at `Env::tcb_tid` when set,
    /// else from the cache of [`xcover_rt::gettid_cached`] (see
    /// [`xcover_rt::TidCacheLayout`]; the home slot only), and the pid from
    /// [`xcover_rt::getpid_cached`]'s. A tid of 0, a miss, a stale entry or no pid yet goes
    /// to the helper.
    pub(super) fn inline_pid_tgid(&mut self) -> Option<Vec<usize>> {
        if let Some(off) = self.env.tcb_tid {
            let e = &mut self.e;
            let mut slow = Vec::new();
            e.load32_fs(RAX, off); // eax = the TCB's tid
            e.rr(false, 0x85, RAX, RAX);
            slow.push(e.jcc(CC_E));
            e.mov_imm64(R11, xcover_rt::pid_cache_addr());
            e.load(false, R11, R11, 0); // r11d = cached pid
            e.rr(false, 0x85, R11, R11);
            slow.push(e.jcc(CC_E));
            e.shift_imm(4, R11, 32);
            e.rr(true, 0x09, RAX, R11); // rax = pid << 32 | tid
            return Some(slow);
        }
        if !self.opts.fsgsbase {
            return None;
        }
        let l = xcover_rt::tid_cache_layout()?;
        if !l.nslots.is_power_of_two() || l.slots == 0 || l.pid == 0 {
            return None;
        }
        let e = &mut self.e;
        let mut slow = Vec::new();
        e.rdfsbase(R9);
        e.rr(true, 0x85, R9, R9);
        slow.push(e.jcc(CC_E));
        let [s0, s1, s2] = l.shifts;
        e.mov(true, R10, R9);
        e.shift_imm(5, R10, s0);
        for s in [s1, s2] {
            e.mov(true, R11, R9);
            e.shift_imm(5, R11, s);
            e.rr(true, 0x31, R10, R11); // xor r10, r11
        }
        e.alu_imm(false, 4, R10, (l.nslots - 1) as i32); // and r10d, nslots - 1
        e.inst(&[], true, false, &[0x69], R10, Rm::Reg(R10)); // imul r10, r10, slot_size
        e.imm32(l.slot_size as i32);
        e.mov_imm64(R11, l.slots);
        e.rr(true, 0x01, R10, R11); // r10 = home slot
        e.inst(
            &[],
            true,
            false,
            &[0x3b],
            R9,
            Rm::Mem(R10, l.key_off as i32),
        ); // cmp r9, key
        slow.push(e.jcc(CC_NE));
        e.load(false, RAX, R10, l.tid_off as i32); // eax = cached tid
        e.rr(false, 0x85, RAX, RAX);
        slow.push(e.jcc(CC_E));
        // The entry is trusted only while glibc's TCB holds the same tid.
        e.inst(
            &[],
            false,
            false,
            &[0x3b],
            RAX,
            Rm::Mem(R9, l.tcb_tid_off as i32),
        );
        slow.push(e.jcc(CC_NE));
        e.mov_imm64(R11, l.pid);
        e.load(false, R11, R11, 0); // r11d = cached pid
        e.rr(false, 0x85, R11, R11);
        slow.push(e.jcc(CC_E));
        e.shift_imm(4, R11, 32);
        e.rr(true, 0x09, RAX, R11); // rax = pid << 32 | tid
        Some(slow)
    }
}
