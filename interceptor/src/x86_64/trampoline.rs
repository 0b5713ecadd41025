//! The x86-64 trampolines: the shared body that saves the context and calls the probe, the
//! per-site stub that calls it, and the whole head inline for sites a stub cannot describe
//! (see the module doc of [`crate::x86_64`] for the instruction sequences).

use alloc::vec::Vec;
use core::mem::offset_of;

use xcover_session::ProbeCtx;
use xcover_x86::{Reg, Writer, fits_rel32};

use super::cpu;
use super::patch::Plan;
use super::relocator::{Head, RelocError, Scan};
use crate::arena::Arenas;
use crate::core::{HookOptions, MovedList, Site, SkipReason};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum VecSave {
    None,
    Xmm,
    Ymm,
}

/// The shared body of the trampolines (see [`Trampolines::emit_body`]), assembled once and
/// copied into each arena that needs one; only the `call <probe>` displacement differs
/// between copies.
#[derive(Clone, Debug)]
struct Template {
    bytes: Vec<u8>,
    /// Offset of the `rel32` of `call <probe>`.
    call_rel: usize,
}

/// Length of a stub: `nop [rax+cookie]`, `nop [rax+func-ret]`, `call body`.
const STUB_LEN: usize = 19;
/// Offsets, from the stub's return address, of the cookie and of the function's displacement.
const STUB_COOKIE: i8 = -16;
const STUB_FUNC: i8 = -9;

/// The trampoline builder of one interceptor.
pub(super) struct Trampolines {
    probe: u64,
    opts: HookOptions,
    vec: VecSave,
    template: Option<Template>,
    /// Shared bodies written so far (an entry may be stale when its trampoline was not
    /// written after all; see [`Self::body_near`]).
    bodies: Vec<u64>,
}

// ProbeCtx field offsets.
const fn off(o: usize) -> i32 {
    o as i32
}
const CTX_RSP: i32 = off(offset_of!(ProbeCtx, rsp));
const CTX_RAX: i32 = off(offset_of!(ProbeCtx, rax));
const CTX_EFLAGS: i32 = off(offset_of!(ProbeCtx, eflags));
const CTX_RIP: i32 = off(offset_of!(ProbeCtx, rip));
const CTX_FUNC_IP: i32 = off(offset_of!(ProbeCtx, func_ip));
const CTX_COOKIE: i32 = off(offset_of!(ProbeCtx, cookie));
const CTX_ORIG_RAX: i32 = off(offset_of!(ProbeCtx, orig_rax));
const CTX_CS: i32 = off(offset_of!(ProbeCtx, cs));
const CTX_SS: i32 = off(offset_of!(ProbeCtx, ss));
/// The light body's frame: the two context fields it fills, the caller-saved registers, and
/// `rsp` after its two pushes. The probe gets `rdi` = frame - [`CTX_COOKIE`], so that the
/// cookie and the function's address are where a whole [`ProbeCtx`] has them; nothing else
/// of that "context" is valid, and the light body is only used for probes that read nothing
/// else.
const LIGHT_COOKIE: i32 = 0;
const LIGHT_FUNC_IP: i32 = LIGHT_COOKIE + (CTX_FUNC_IP - CTX_COOKIE);
const LIGHT_REGS: i32 = 16;
const LIGHT_RSP: i32 = LIGHT_REGS + 8 * RELOADED.len() as i32;
const LIGHT_FRAME: i32 = (LIGHT_RSP + 8 + 15) & !15;
const _: () = assert!(LIGHT_FUNC_IP == 8 && LIGHT_RSP < LIGHT_FRAME);
/// Vector save area, after the context, 64-byte aligned.
const VEC_AREA: i32 = 192;
const _: () = assert!(core::mem::size_of::<ProbeCtx>() <= VEC_AREA as usize);

const fn gpr_slot(r: Reg) -> i32 {
    off(match r {
        Reg::Rax => offset_of!(ProbeCtx, rax),
        Reg::Rcx => offset_of!(ProbeCtx, rcx),
        Reg::Rdx => offset_of!(ProbeCtx, rdx),
        Reg::Rbx => offset_of!(ProbeCtx, rbx),
        Reg::Rsp => offset_of!(ProbeCtx, rsp),
        Reg::Rbp => offset_of!(ProbeCtx, rbp),
        Reg::Rsi => offset_of!(ProbeCtx, rsi),
        Reg::Rdi => offset_of!(ProbeCtx, rdi),
        Reg::R8 => offset_of!(ProbeCtx, r8),
        Reg::R9 => offset_of!(ProbeCtx, r9),
        Reg::R10 => offset_of!(ProbeCtx, r10),
        Reg::R11 => offset_of!(ProbeCtx, r11),
        Reg::R12 => offset_of!(ProbeCtx, r12),
        Reg::R13 => offset_of!(ProbeCtx, r13),
        Reg::R14 => offset_of!(ProbeCtx, r14),
        Reg::R15 => offset_of!(ProbeCtx, r15),
    })
}

/// Saved as-is at entry (rax and rcx are handled apart).
const SAVED: [Reg; 13] = [
    Reg::Rdx,
    Reg::Rbx,
    Reg::Rbp,
    Reg::Rsi,
    Reg::Rdi,
    Reg::R8,
    Reg::R9,
    Reg::R10,
    Reg::R11,
    Reg::R12,
    Reg::R13,
    Reg::R14,
    Reg::R15,
];
/// Caller-saved under SysV besides rax: reloaded after the probe.
const RELOADED: [Reg; 8] = [
    Reg::Rcx,
    Reg::Rdx,
    Reg::Rsi,
    Reg::Rdi,
    Reg::R8,
    Reg::R9,
    Reg::R10,
    Reg::R11,
];

impl Trampolines {
    /// Trampolines that call `probe`, an `extern "C" fn(*mut ProbeCtx) -> u64` at that
    /// address.
    pub(super) fn new(probe: u64, opts: HookOptions) -> Self {
        let vec = if !opts.save_vector_regs {
            VecSave::None
        } else if cpu::avx_enabled() {
            VecSave::Ymm
        } else {
            VecSave::Xmm
        };
        Self {
            probe,
            opts,
            vec,
            template: None,
            bodies: Vec::new(),
        }
    }

    /// Assembles the shared body's template, once.
    pub(super) fn prepare(&mut self) {
        if self.template.is_none() {
            self.template = self.build_template();
        }
    }

    /// Assembles the [`Template`] of this interceptor's shared body.
    fn build_template(&self) -> Option<Template> {
        // Assembled as if it ran at the probe, so the call takes its rel32 form.
        let mut w = Writer::new(self.probe);
        let call_rel = self.emit_body(&mut w)?;
        Some(Template {
            call_rel,
            bytes: w.into_code(),
        })
    }

    /// rax = E (`rsp + push_len`), aligns `rsp` and reserves the frame; saves ctx.rsp = E
    /// and rcx.
    fn emit_save(&self, w: &mut Writer, frame: i32, push_len: i32) {
        w.put_lea(Reg::Rax, Reg::Rsp, push_len);
        w.put_align_rsp(64);
        w.put_sub_rsp(frame);
        w.put_store(Reg::Rsp, CTX_RSP, Reg::Rax);
        w.put_store(Reg::Rsp, gpr_slot(Reg::Rcx), Reg::Rcx);
    }

    fn frame(&self) -> i32 {
        let vec_bytes = match self.vec {
            VecSave::None => 0,
            VecSave::Xmm => 16 * 16,
            VecSave::Ymm => 16 * 32,
        };
        VEC_AREA + vec_bytes
    }

    /// Saves the vector registers, calls the probe with the context, reloads the vector
    /// and caller-saved registers. Returns the offset of the call's rel32 (from `start`)
    /// when it took that form.
    fn emit_call_probe(&self, w: &mut Writer, start: usize) -> Option<usize> {
        for i in 0..16u8 {
            match self.vec {
                VecSave::None => {}
                VecSave::Xmm => w.put_movaps_store(VEC_AREA + 16 * i as i32, i),
                VecSave::Ymm => w.put_vmovaps_store(VEC_AREA + 32 * i as i32, i),
            }
        }
        w.put_mov(Reg::Rdi, Reg::Rsp);
        let call_at = w.len();
        w.put_call(self.probe);
        let call_rel = (w.len() - call_at == 5).then(|| w.len() - 4 - start);
        for i in 0..16u8 {
            match self.vec {
                VecSave::None => {}
                VecSave::Xmm => w.put_movaps_load(i, VEC_AREA + 16 * i as i32),
                VecSave::Ymm => w.put_vmovaps_load(i, VEC_AREA + 32 * i as i32),
            }
        }
        for r in RELOADED {
            w.put_load(r, Reg::Rsp, gpr_slot(r));
        }
        call_rel
    }

    /// The `sahf` flag restore from `ctx.eflags` (clobbers rax, reloaded after).
    fn emit_sahf_restore(w: &mut Writer) {
        w.put_load32(Reg::Rax, Reg::Rsp, CTX_EFLAGS);
        w.put_bytes(&[
            0x80, 0xe4, 0x08, // and ah, 8         ; OF (bit 11) alone
            0xc0, 0xe4, 0x04, // shl ah, 4         ; -> 0x80 or 0
            0x80, 0xc4, 0x80, // add ah, 0x80      ; OF = saved OF
            0x88, 0xc4, //       mov ah, al        ; SF ZF AF PF CF
            0x9e, //             sahf
        ]);
    }

    /// ctx.eflags in pushfq's format from the `lahf; seto al` pair stored at `[rax+disp]`
    /// (`al` at `disp`, `ah` at `disp+1`): low byte | OF << 11 | IF (always set in user
    /// mode). rcx and rdx are saved already.
    fn emit_flags_from_lahf(w: &mut Writer, disp: i8) {
        w.put_bytes(&[0x0f, 0xb6, 0x48, (disp + 1) as u8]); // movzx ecx, byte [rax+disp+1]
        w.put_bytes(&[0x0f, 0xb6, 0x50, disp as u8]); //       movzx edx, byte [rax+disp]
        w.put_bytes(&[
            0xc1, 0xe2, 0x0b, //             shl edx, 11
            0x09, 0xd1, //                   or ecx, edx
            0x81, 0xc9, 0x00, 0x02, 0, 0, // or ecx, 0x200
        ]);
        w.put_store(Reg::Rsp, CTX_EFLAGS, Reg::Rcx);
    }

    /// Captures the flags and rax, finds the entry `rsp` E (`above` bytes higher than where
    /// the capture starts pushing: 8 under a stub's `call`, 0 inline), aligns `rsp`, reserves
    /// the frame and stores every general register and the flags into the [`ProbeCtx`].
    /// Leaves rax = E.
    fn emit_capture(&self, w: &mut Writer, above: i32) {
        let frame = self.frame();
        if self.opts.flags_with_popfq {
            // [E-above-8] = pushfq'd flags (popped again at the end), [E-above-16] = rax.
            w.put_pushfq();
            w.put_push(Reg::Rax);
            self.emit_save(w, frame, above + 16);
            w.put_load(Reg::Rcx, Reg::Rax, -above - 16);
            w.put_store(Reg::Rsp, CTX_RAX, Reg::Rcx);
            w.put_load(Reg::Rcx, Reg::Rax, -above - 8);
            w.put_store(Reg::Rsp, CTX_EFLAGS, Reg::Rcx);
            for r in SAVED {
                w.put_store(Reg::Rsp, gpr_slot(r), r);
            }
        } else {
            // [E-above-8] = rax, [E-above-16] = ax after `lahf; seto al`: SF ZF AF PF CF in
            // its high byte, OF in its low one (pushfq is microcoded, and slower).
            w.put_push(Reg::Rax);
            w.put_bytes(&[
                0x9f, //             lahf
                0x0f, 0x90, 0xc0, // seto al
            ]);
            w.put_push(Reg::Rax);
            self.emit_save(w, frame, above + 16);
            w.put_load(Reg::Rcx, Reg::Rax, -above - 8);
            w.put_store(Reg::Rsp, CTX_RAX, Reg::Rcx);
            for r in SAVED {
                w.put_store(Reg::Rsp, gpr_slot(r), r);
            }
            Self::emit_flags_from_lahf(w, (-above - 16) as i8);
        }
    }

    /// Undoes [`Self::emit_capture`] after the probe: flags and rax back, `rsp` back to
    /// `above` bytes below E.
    fn emit_restore(&self, w: &mut Writer, above: i32) {
        if self.opts.flags_with_popfq {
            w.put_load(Reg::Rax, Reg::Rsp, CTX_RAX);
            w.put_load(Reg::Rsp, Reg::Rsp, CTX_RSP);
            w.put_lea(Reg::Rsp, Reg::Rsp, -above - 8);
            w.put_popfq(); // the pushfq'd value, untouched since
        } else {
            Self::emit_sahf_restore(w);
            w.put_load(Reg::Rax, Reg::Rsp, CTX_RAX);
            w.put_load(Reg::Rsp, Reg::Rsp, CTX_RSP);
            if above != 0 {
                w.put_lea(Reg::Rsp, Reg::Rsp, -above);
            }
        }
    }

    /// Whether trampolines take the light body (see [`HookOptions::light_ctx`]).
    fn light(&self) -> bool {
        self.opts.light_ctx && !self.opts.flags_with_popfq && matches!(self.vec, VecSave::None)
    }

    /// The light body's capture: rax and the `lahf`/`seto` flags pushed, `rsp` aligned, the
    /// frame reserved, the caller-saved registers stored. Leaves rax = `rsp` after the pushes.
    fn emit_light_capture(w: &mut Writer) {
        w.put_push(Reg::Rax);
        w.put_bytes(&[
            0x9f, //             lahf
            0x0f, 0x90, 0xc0, // seto al
        ]);
        w.put_push(Reg::Rax);
        w.put_mov(Reg::Rax, Reg::Rsp);
        w.put_align_rsp(16);
        w.put_sub_rsp(LIGHT_FRAME);
        w.put_store(Reg::Rsp, LIGHT_RSP, Reg::Rax);
        for (k, r) in RELOADED.into_iter().enumerate() {
            w.put_store(Reg::Rsp, LIGHT_REGS + 8 * k as i32, r);
        }
    }

    /// Calls the probe with the light "context"; then undoes [`Self::emit_light_capture`]
    /// (registers, `rsp`, flags, rax). Returns the offset of the call's rel32 (from
    /// `start`) when it took that form.
    fn emit_light_call_restore(&self, w: &mut Writer, start: usize) -> Option<usize> {
        w.put_lea(Reg::Rdi, Reg::Rsp, LIGHT_COOKIE - CTX_COOKIE);
        let call_at = w.len();
        w.put_call(self.probe);
        let call_rel = (w.len() - call_at == 5).then(|| w.len() - 4 - start);
        for (k, r) in RELOADED.into_iter().enumerate() {
            w.put_load(r, Reg::Rsp, LIGHT_REGS + 8 * k as i32);
        }
        w.put_load(Reg::Rsp, Reg::Rsp, LIGHT_RSP);
        w.put_pop(Reg::Rax);
        w.put_bytes(&[
            0x04, 0x7f, // add al, 0x7f     ; OF = (al == 1), the saved OF
            0x9e, //       sahf             ; SF ZF AF PF CF from ah
        ]);
        w.put_pop(Reg::Rax);
        call_rel
    }

    /// [`Self::emit_body`] for probes that read only the cookie and the function's address.
    fn emit_light_body(&self, w: &mut Writer) -> Option<usize> {
        let start = w.len();
        Self::emit_light_capture(w);
        w.put_load(Reg::Rax, Reg::Rax, 16); // R, above the two pushes
        w.put_bytes(&[0x48, 0x63, 0x48, STUB_COOKIE as u8]); // movsxd rcx, [rax-16]
        w.put_store(Reg::Rsp, LIGHT_COOKIE, Reg::Rcx);
        w.put_bytes(&[0x48, 0x63, 0x48, STUB_FUNC as u8]); // movsxd rcx, [rax-9]
        w.put_bytes(&[0x48, 0x01, 0xc8]); // add rax, rcx
        w.put_store(Reg::Rsp, LIGHT_FUNC_IP, Reg::Rax);
        let call_rel = self.emit_light_call_restore(w, start);
        w.put_ret();
        call_rel
    }

    /// [`Self::emit_head`] for probes that read only the cookie and the function's address.
    fn emit_light_head(&self, w: &mut Writer, addr: u64, cookie: u64) {
        let start = w.len();
        Self::emit_light_capture(w);
        if !w.put_lea_rip(Reg::Rax, addr) {
            w.put_mov_imm64(Reg::Rax, addr);
        }
        w.put_store(Reg::Rsp, LIGHT_FUNC_IP, Reg::Rax);
        match i32::try_from(cookie as i64) {
            Ok(c) => w.put_store_imm(Reg::Rsp, LIGHT_COOKIE, c),
            Err(_) => {
                w.put_mov_imm64(Reg::Rax, cookie);
                w.put_store(Reg::Rsp, LIGHT_COOKIE, Reg::Rax);
            }
        }
        self.emit_light_call_restore(w, start);
    }

    /// The body every stub calls (one copy per arena that needs one). Entered by the stub's
    /// `call`, so `[rsp]` is the stub's return address R (where its relocated instructions
    /// start) and the entry `rsp` E is `rsp + 8`; the cookie and the function's displacement
    /// from R sit in the stub's two `nop`s, read back as data. Returns with `ret` (predicted:
    /// it pairs with the stub's `call`) and `rsp` = E. Returns the offset of the call's
    /// rel32 when it took that form.
    fn emit_body(&self, w: &mut Writer) -> Option<usize> {
        if self.light() {
            return self.emit_light_body(w);
        }
        let start = w.len();
        // The stub's return address R sits above what the capture pushes.
        self.emit_capture(w, 8);
        w.put_load(Reg::Rax, Reg::Rax, -8); // R
        w.put_bytes(&[0x48, 0x63, 0x48, STUB_COOKIE as u8]); // movsxd rcx, [rax-16]
        w.put_store(Reg::Rsp, CTX_COOKIE, Reg::Rcx);
        w.put_bytes(&[0x48, 0x63, 0x48, STUB_FUNC as u8]); // movsxd rcx, [rax-9]
        w.put_bytes(&[0x48, 0x01, 0xc8]); // add rax, rcx
        w.put_store(Reg::Rsp, CTX_RIP, Reg::Rax);
        w.put_store(Reg::Rsp, CTX_FUNC_IP, Reg::Rax);
        w.put_store_imm(Reg::Rsp, CTX_ORIG_RAX, -1);
        w.put_store_imm(Reg::Rsp, CTX_CS, 0);
        w.put_store_imm(Reg::Rsp, CTX_SS, 0);
        let call_rel = self.emit_call_probe(w, start);
        self.emit_restore(w, 8);
        w.put_ret();
        call_rel
    }

    /// The whole head inline, for a function whose cookie or address a stub cannot carry:
    /// saves the registers into a [`ProbeCtx`], calls the probe, restores them.
    fn emit_head(&self, w: &mut Writer, addr: u64, cookie: u64) {
        if self.light() {
            return self.emit_light_head(w, addr, cookie);
        }
        let start = w.len();
        self.emit_capture(w, 0);
        if !w.put_lea_rip(Reg::Rax, addr) {
            w.put_mov_imm64(Reg::Rax, addr);
        }
        w.put_store(Reg::Rsp, CTX_RIP, Reg::Rax);
        w.put_store(Reg::Rsp, CTX_FUNC_IP, Reg::Rax);
        match i32::try_from(cookie as i64) {
            Ok(c) => w.put_store_imm(Reg::Rsp, CTX_COOKIE, c),
            Err(_) => {
                w.put_mov_imm64(Reg::Rax, cookie);
                w.put_store(Reg::Rsp, CTX_COOKIE, Reg::Rax);
            }
        }
        w.put_store_imm(Reg::Rsp, CTX_ORIG_RAX, -1);
        w.put_store_imm(Reg::Rsp, CTX_CS, 0);
        w.put_store_imm(Reg::Rsp, CTX_SS, 0);
        self.emit_call_probe(w, start);
        self.emit_restore(w, 0);
    }

    /// A written body a stub ending at `call_end` can call with a rel32, forgetting bodies
    /// whose trampoline was not written after all (past its arena's cursor).
    fn body_near(&mut self, arenas: &Arenas, call_end: u64) -> Option<u64> {
        self.bodies.retain(|&b| arenas.is_written(b));
        self.bodies
            .iter()
            .rev()
            .copied()
            .find(|&b| fits_rel32(call_end, b))
    }

    /// Writes a copy of the shared body at the writer's position; returns its address.
    fn put_body(&self, w: &mut Writer) -> u64 {
        let at = w.pc();
        let start = w.len();
        match self.template.as_ref() {
            Some(t) if fits_rel32(at + (t.call_rel + 4) as u64, self.probe) => {
                w.put_bytes(&t.bytes);
                let call_end = at + (t.call_rel + 4) as u64;
                w.patch(
                    start + t.call_rel,
                    &(self.probe.wrapping_sub(call_end) as u32).to_le_bytes(),
                );
            }
            _ => {
                self.emit_body(w);
            }
        }
        at
    }

    /// Emits the trampoline; returns the address of the relocated part and the moves.
    ///
    /// Usually a 19-byte stub before the relocated instructions (`nop [rax+cookie]`,
    /// `nop [rax+func-R]`, `call body`, R being its return address), so that a function's
    /// first hit touches one or two cold cache lines, not the ~4 of a whole head: the body
    /// is shared and stays hot. The first trampoline of an arena (or one out of reach of
    /// every body) carries a body: `jmp stub; body; stub`. A cookie or displacement that
    /// does not fit 32 bits gets the whole head inline instead.
    pub(super) fn emit_trampoline(
        &mut self,
        arenas: &Arenas,
        w: &mut Writer,
        f: &Site,
        code: &[u8],
        head: &Head,
        plan: &Plan,
    ) -> Result<(u64, MovedList), SkipReason> {
        let scan = &plan.scan;
        if plan.trap {
            // The trap handler calls the probe: only the relocated first instruction and
            // the jump back.
            return Self::emit_relocated(w, f, code, head, scan);
        }
        let cookie = i32::try_from(f.cookie as i64).ok();
        // The displacement is from R, at most a body's length further than here.
        let disp_ok = |r: u64| i32::try_from(f.addr.wrapping_sub(r) as i64).is_ok();
        let far = w.pc() + STUB_LEN as u64 + 2048;
        match cookie {
            Some(c) if disp_ok(w.pc() + STUB_LEN as u64) && disp_ok(far) => {
                let body = match self.body_near(arenas, w.pc() + STUB_LEN as u64) {
                    Some(b) => b,
                    None => {
                        let jmp_at = w.len();
                        w.put_bytes(&[0xe9, 0, 0, 0, 0]);
                        let b = self.put_body(w);
                        let rel = (w.len() - jmp_at - 5) as u32;
                        w.patch(jmp_at + 1, &rel.to_le_bytes());
                        self.bodies.push(b);
                        b
                    }
                };
                let r = w.pc() + STUB_LEN as u64;
                w.put_bytes(&[0x0f, 0x1f, 0x80]);
                w.put_u32(c as u32);
                w.put_bytes(&[0x0f, 0x1f, 0x80]);
                w.put_u32(f.addr.wrapping_sub(r) as u32);
                let call_at = w.len();
                w.put_call(body);
                debug_assert_eq!(w.len() - call_at, 5);
                debug_assert_eq!(w.pc(), r);
            }
            _ => self.emit_head(w, f.addr, f.cookie),
        }
        Self::emit_relocated(w, f, code, head, scan)
    }

    /// The relocated instructions and the jump back to the first one not displaced.
    fn emit_relocated(
        w: &mut Writer,
        f: &Site,
        code: &[u8],
        head: &Head,
        scan: &Scan,
    ) -> Result<(u64, MovedList), SkipReason> {
        let reloc_start = w.pc();
        let moved = head
            .relocate(code, scan, w)
            .map_err(RelocError::skip_reason)?;
        if !scan.ends_block {
            w.put_jmp(f.addr + scan.live_len as u64);
        }
        debug_assert!(fits_rel32(f.addr + 5, w.base_pc()));
        Ok((reloc_start, moved))
    }
}
