//! The x86-64 back end: patch forms (the planner), the relocator, the trampoline bodies and
//! the CPU features they depend on. It implements `crate::core::backend::Backend`; it
//! knows nothing of batches, arenas or threads.
//!
//! - `patch`: which bytes of a site are replaced by what (`patch::plan`);
//! - [`relocator`]: moves the displaced instructions into the trampoline;
//! - `trampoline`: the shared body, the per-site stubs, the inline head;
//! - `cpu`: AVX detection (the vector save's width).
//!
//! # Entry patches
//!
//! For each function `{addr, size, next, cookie}` (`next` is where the next symbol starts, so
//! `addr+size .. next` is alignment padding that belongs to nobody):
//!
//! 1. **`jmp rel32`** (5 bytes) at `addr`, when the first ≥ 5 bytes can be relocated. The
//!    displaced bytes may run into free padding (`int3`/`nop` only) after an instruction that
//!    never falls through, e.g. a 1- or 3-byte function ending in `ret`.
//! 2. **`jmp rel8` hop** (2 bytes) at `addr` to a `jmp rel32` written into the function's
//!    free padding, when only ≥ 2 bytes can be displaced (short functions, or a branch into
//!    bytes 2..5).
//! 3. **`int3`** (1 byte) at `addr`, when both are refused for a reason that does not
//!    concern the first instruction (a branch into bytes `1..`, no room, an unmovable second
//!    instruction, a `nop; call` return target) and [`HookOptions::traps`] allows it. Its
//!    trampoline is only the relocated first instruction and the jump back (no stub: the
//!    caller's SIGTRAP handler calls the probe with the context it reads from the signal
//!    frame and resumes the thread there). See [`crate::TrapSite`].
//! 4. Otherwise the function is skipped with a [`SkipReason`].
//!
//! Any branch or IP-relative reference from inside the function to bytes `1..len` of the
//! displaced range refuses that patch form. Displaced bytes not covered by the jump are filled
//! with `int3`.
//!
//! # Trampolines
//!
//! One per function, in an arena within ±2 GiB of the function (one arena per region, many
//! trampolines per arena, arenas mapped RW, written, then flipped to RX). A trampoline is a
//! 19-byte stub, the relocated instructions and the jump back:
//!
//! ```text
//! nop dword [rax+cookie]        ; data: the function's cookie
//! nop dword [rax+addr-R]        ; data: the function's address, from R
//! call body                     ; return address R = the relocated instructions
//! <relocated instructions>
//! jmp addr+displaced
//! ```
//!
//! The body is shared by every stub in reach (one copy per arena, carried by the arena's
//! first trampoline as `jmp stub; body; stub`), so a function's first hit brings one or two
//! cold cache lines in, not the four or so a whole head per function takes. The body reads
//! the cookie and address back from the stub's `nop`s and ends with a `ret` to R, which the
//! return stack predicts. A cookie or displacement that does not fit
//! 32 bits gets the whole body inline in its trampoline (with the fields as immediates and
//! no `call`/`ret`). The body, with E = rsp at the function's entry and R at [E-8]:
//!
//! ```text
//! push rax                      ; rax at [E-16]
//! lahf ; seto al                ; ah = SF ZF AF PF CF, al = OF
//! push rax                      ; raw flags at [E-24]  (all within the red zone)
//! lea rax, [rsp+24]             ; rax = E
//! and rsp, -64                  ; aligned frame, whatever the caller's alignment
//! sub rsp, FRAME                ; ProbeCtx at rsp, vector area at rsp+192
//! mov [rsp+ctx.*], every GPR; ctx.rax from [E-16]; ctx.rsp = E
//! ctx.eflags = [E-23] | [E-24] << 11 | IF   (pushfq's format, from the raw flags)
//! ctx.rip = ctx.func_ip = R + [R-9]; ctx.cookie = [R-16]; ctx.orig_rax = -1; cs = ss = 0
//! [movaps|vmovaps] xmm/ymm0..15 -> vector area        (HookOptions::save_vector_regs)
//! mov rdi, rsp ; call probe
//! [movaps|vmovaps] vector area -> xmm/ymm0..15
//! reload rcx rdx rsi rdi r8 r9 r10 r11 (rbx rbp r12-r15 are callee-saved under SysV)
//! restore flags: eax = ctx.eflags; OF via `add ah,0x80` on (OF<<7); `mov ah,al; sahf`
//!     (HookOptions::flags_with_popfq, for measurements: `pushfq` on entry instead of
//!     `lahf`/`seto`, and `popfq` of that value at the end)
//! mov rax, ctx.rax ; mov rsp, ctx.rsp  (= E) ; lea rsp, [rsp-8] ; ret
//! ```
//!
//! That is about 60 instructions on the hot path besides the probe and the relocated code
//! (no `pushfq`/`popfq`, no locked instruction, no indirect branch when the probe is within
//! 2 GiB), plus 32 vector moves when vector registers are saved. `pushfq`/`popfq` cost more
//! than `lahf`/`seto` and `sahf`, hence the `sahf` route (figures in docs/performance.md;
//! `cargo bench -p xcover-interceptor --bench hit` measures every variant).
//!
//! **The light body** ([`HookOptions::light_ctx`]), for a probe that reads nothing of its
//! context but the cookie and the function's address and keeps the callee-saved registers
//! (the JIT-ed coverage probe: the agent checks the program with
//! `xcover_bpf::ctx_use::ctx_slots_read`), does only what such a probe needs: ~35
//! instructions instead of ~60.
//!
//! ```text
//! push rax ; lahf ; seto al ; push rax      ; raw flags at [E-24]
//! mov rax, rsp ; and rsp, -16 ; sub rsp, 96 ; [rsp+80] = rax
//! [rsp+16..80] = rcx rdx rsi rdi r8 r9 r10 r11   (the registers a callee may clobber)
//! [rsp] = cookie ; [rsp+8] = function address (from the stub, as above)
//! lea rdi, [rsp-168] ; call probe             ; rdi+168 / rdi+176 = cookie / address
//! reload rcx..r11 ; mov rsp, [rsp+80]
//! pop rax ; add al, 0x7f ; sahf ; pop rax ; ret   ; OF from al, the rest from ah
//! ```
//!
//! The `sahf` route restores CF PF AF ZF SF and OF, i.e. every flag ordinary code reads; DF is
//! 0 by the ABI at a function entry and the probe keeps it so. The probe's return value is
//! ignored. Vector registers are saved as YMM when the CPU and OS enable AVX (a `__m256`
//! argument must arrive intact), as XMM otherwise; the upper halves of ZMM and ZMM16-31 are
//! not saved (no argument lives there in SysV or Go's ABI, and the JIT-ed probe never uses
//! AVX-512).
//!
//! Caveat: a relocated `call` pushes the original return address and jumps; under a user-space
//! shadow stack (CET SHSTK, not enabled by Linux for ordinary processes today) its `ret` would
//! fault.

pub(crate) mod cpu;
pub(crate) mod patch;
pub mod relocator;
mod trampoline;

use alloc::vec::Vec;

use xcover_x86::Writer;

use crate::arena::Arenas;
use crate::core::backend::{Backend, Patch};
use crate::core::{HookKind, HookOptions, MovedList, Site, SkipReason};

use relocator::Head;
pub use relocator::Unrelocatable;
use trampoline::Trampolines;

/// The x86-64 back end: the trampoline builder's state (the probe, the shared body's
/// template and copies).
pub(crate) struct X86_64 {
    tramp: Trampolines,
}

impl Backend for X86_64 {
    type Head = Head;
    type Plan = patch::Plan;
    /// ±2 GiB (`rel32`) less a margin.
    const REACH: u64 = (1 << 31) - (16 << 20);

    fn new(probe: u64, opts: HookOptions) -> Self {
        Self {
            tramp: Trampolines::new(probe, opts),
        }
    }

    fn prepare(&mut self) {
        self.tramp.prepare();
    }

    fn free_padding(pad: &[u8], at: u64) -> usize {
        patch::free_padding(pad, at)
    }

    fn check_site(_site: &Site, code: &[u8]) -> Result<(), SkipReason> {
        if patch::entered_after_first_byte(code) {
            return Err(SkipReason::ReturnTarget);
        }
        Ok(())
    }

    fn plan(
        site: &Site,
        code: &[u8],
        size: usize,
        head: &mut Head,
    ) -> Result<patch::Plan, SkipReason> {
        patch::plan(site, code, size, head)
    }

    fn plan_trap(
        site: &Site,
        code: &[u8],
        size: usize,
        head: &mut Head,
    ) -> Result<patch::Plan, SkipReason> {
        patch::plan_trap(site, code, size, head)
    }

    fn kind(plan: &patch::Plan) -> HookKind {
        plan.kind()
    }

    fn build_trampoline(
        &mut self,
        arenas: &Arenas,
        pc: u64,
        site: &Site,
        code: &[u8],
        head: &Head,
        plan: &patch::Plan,
        buf: &mut Vec<u8>,
    ) -> (u64, Result<(u64, MovedList), SkipReason>) {
        let mut w = Writer::reusing(pc, core::mem::take(buf));
        let emitted = self
            .tramp
            .emit_trampoline(arenas, &mut w, site, code, head, plan);
        let end = w.pc();
        *buf = w.into_code();
        (end, emitted)
    }

    fn patch(
        site: &Site,
        code: &[u8],
        plan: &patch::Plan,
        tramp: u64,
    ) -> Result<Patch, SkipReason> {
        patch::patch_bytes(site, code, plan, tramp)
    }
}
