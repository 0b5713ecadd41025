//! Frame planning: registers, the main frame, local functions' frames, the vector-save plan,
//! prologues, epilogues and helper calls.
//!
//! # Register and frame layout
//!
//! eBPF registers live in the registers Linux's x86 JIT uses: `r0 = rax`, `r1 = rdi`,
//! `r2 = rsi`, `r3 = rdx`, `r4 = rcx`, `r5 = r8`, `r6 = rbx`, `r7 = r13`, `r8 = r14`,
//! `r9 = r15`, `r10 = rbp`. So helper arguments are already where the System V ABI wants
//! them, and `r6`–`r10` are callee-saved across helpers. `r9`, `r10`, `r11` are scratch;
//! `r12` holds the main frame's `rsp` so the unwind helper can leave from any depth.
//!
//! The main program pushes `rbp, rbx, r13, r14, r15, r12`, reserves 520 bytes (512 of eBPF
//! stack + 8 to keep `rsp` 16-byte aligned) and points `rbp` at the end of the 512. Each
//! local function is a real x86 function: `call rel32`, push `rbx, r13, r14, r15, rbp`,
//! reserve 512 bytes, `rbp` at their end. `rsp` is a multiple of 16 everywhere in the body,
//! so helper calls need no fix-up.
//!
//! A single-function program saves only the callee-saved registers it uses, keeps `r10` as
//! `rsp + top` when it is only a memory base ([`Frame::fp_less`]), and when its stack stays
//! within [`RED_ZONE`] bytes below `r10` (and no stack address escapes) it keeps the stack
//! below `rsp` and moves `rsp` only around helper calls ([`Frame::call_sub`]).
//!
//! # Vector-save plan
//!
//! With [`JitOptions::preserve_vector_regs`], a single-function program saves `xmm0`–`xmm15`
//! at most once per run and restores them once, at exit. The main function is emitted twice:
//! the *unsaved* copy (every instruction, as without the option) and the *saved* copy (only
//! the instructions reachable after a helper call that is not inlined). In the unsaved copy
//! such a call moves `rsp` down by `save_sub` (the red-zone `call_sub` + 256), stores the 16
//! registers at `[rsp]`, calls, and jumps into the saved copy, which keeps `rsp` there: its
//! `[r10 + off]` operands are `save_sub` further from `rsp`, its helper calls save nothing,
//! and its exits (and the unwind path, `rsp = r12 - save_sub`) go through one shared epilogue
//! that reloads the registers and frees the area. So the state is in the program counter: no
//! flag, nothing added to a run that calls no helper. Programs with local functions keep the
//! per-call save and restore around every helper call.
//!
//! [`JitOptions::preserve_vector_regs`]: super::JitOptions::preserve_vector_regs

use alloc::vec;
use alloc::vec::Vec;

use xcover_x86::modrm::*;

use super::{Compiler, Target, flag, set};
use crate::env::Env;
use crate::insn::*;

/// Bytes reserved by the main frame below its pushes (512 of stack + 8 of alignment).
pub(super) const MAIN_FRAME: i32 = STACK_SIZE as i32 + 8;
/// Bytes reserved by a local function's frame.
pub(super) const SUB_FRAME: i32 = STACK_SIZE as i32;

/// Bytes below `rsp` a leaf may use without moving `rsp` (System V red zone: signal
/// frames are built below it).
pub(super) const RED_ZONE: i32 = 128;

/// How the main program's frame looks.
pub(super) struct Frame {
    /// Callee-saved registers pushed by the main prologue, in push order.
    pub(super) saved: Vec<u8>,
    /// Bytes subtracted from `rsp` after the pushes.
    pub(super) size: i32,
    /// `r10` is not kept in `rbp`: every `[r10 + off]` becomes `[rsp + top + off]`.
    pub(super) fp_less: bool,
    /// `rsp + top` is the eBPF `r10` in `fp_less` mode.
    pub(super) top: i32,
    /// `r12` holds the main frame's `rsp` (unwind helper or `callx` present).
    pub(super) r12: bool,
    /// Red-zone layout: bytes to move `rsp` down by around each helper call (0: none).
    pub(super) call_sub: i32,
}

/// Decides the main frame: the registers to save and whether `r10` needs `rbp`.
pub(super) fn plan_frame(
    insns: &[Insn],
    tail: &[bool],
    env: &Env,
    multi: bool,
    red_zone: bool,
) -> Frame {
    let mut used = [false; 11];
    let mut calls = false;
    let mut r12 = false;
    // r10 may live as `rsp + top` when it is only a memory base or copied by `mov64`.
    let mut r10_simple = true;
    for (pc, i) in insns.iter().enumerate() {
        if flag(tail, pc) {
            continue;
        }
        set(&mut used, i.dst.min(10) as usize, true);
        if !i.is_lddw() && i.op != BPF_JMP | BPF_CALL {
            set(&mut used, i.src.min(10) as usize, true);
        }
        let class = i.class();
        if i.op == BPF_JMP | BPF_CALL {
            calls = true;
            let x = i.op & SRC_MASK == BPF_X;
            if x || (i.src == 0 && env.unwind_helper == Some(i.imm as u32)) {
                r12 = true;
            }
        }
        if i.op == BPF_JMP | BPF_CALL | BPF_X {
            calls = true;
            r12 = true;
        }
        let src_ok = match class {
            BPF_LDX => true,
            BPF_ALU64 => i.op == BPF_ALU64 | BPF_MOV | BPF_X && i.off == 0,
            _ => false,
        };
        let dst_ok = matches!(class, BPF_ST | BPF_STX);
        let src_is_reg = !i.is_lddw() && i.op != BPF_JMP | BPF_CALL;
        if (i.dst == 10 && !dst_ok) || (src_is_reg && i.src == 10 && !src_ok) {
            r10_simple = false;
        }
    }
    if multi {
        return Frame {
            saved: vec![RBP, RBX, R13, R14, R15, R12],
            size: MAIN_FRAME,
            fp_less: false,
            top: 0,
            r12: true,
            call_sub: 0,
        };
    }
    let mut saved = Vec::new();
    for (b, x) in [(6, RBX), (7, R13), (8, R14), (9, R15)] {
        if flag(&used, b) {
            saved.push(x);
        }
    }
    let stack = flag(&used, 10);
    let fp_less = !stack || r10_simple;
    if stack && !fp_less {
        saved.push(RBP);
    }
    if r12 {
        saved.push(R12);
    }
    // On entry rsp = 8 (mod 16); calls need it to be 0 (mod 16).
    let align = |n: i32| n + (8 + 8 * saved.len() as i32 + n) % 16;
    if red_zone && fp_less && stack {
        return Frame {
            size: 0,
            fp_less,
            top: 0,
            r12,
            call_sub: align(RED_ZONE),
            saved,
        };
    }
    let mut size = if stack { STACK_SIZE as i32 } else { 0 };
    if calls {
        size = align(size);
    }
    Frame {
        saved,
        size,
        fp_less,
        top: STACK_SIZE as i32,
        r12,
        call_sub: 0,
    }
}

impl Compiler<'_> {
    /// Bytes the first saving helper call moves `rsp` down by (the saved copy keeps it so).
    pub(super) fn save_sub(&self) -> i32 {
        self.frame.call_sub + 256
    }

    pub(super) fn main_prologue(&mut self) {
        for &r in &self.frame.saved {
            self.e.push(r);
        }
        if self.frame.size != 0 {
            self.e.alu_imm(true, 5, RSP, self.frame.size); // sub rsp, size
        }
        if !self.frame.fp_less {
            self.e.lea(RBP, RSP, STACK_SIZE as i32);
        }
        if self.frame.r12 {
            self.e.mov(true, R12, RSP);
        }
    }

    pub(super) fn main_epilogue(&mut self) {
        if self.frame.size != 0 {
            self.e.alu_imm(true, 0, RSP, self.frame.size); // add rsp, size
        }
        for &r in self.frame.saved.iter().rev() {
            self.e.pop(r);
        }
        self.e.byte(0xc3);
    }

    pub(super) fn sub_prologue(&mut self) {
        for r in [RBX, R13, R14, R15, RBP] {
            self.e.push(r);
        }
        self.e.alu_imm(true, 5, RSP, SUB_FRAME);
        self.e.lea(RBP, RSP, STACK_SIZE as i32);
    }

    pub(super) fn sub_epilogue(&mut self) {
        self.e.alu_imm(true, 0, RSP, SUB_FRAME);
        for r in [RBP, R15, R14, R13, RBX] {
            self.e.pop(r);
        }
        self.e.byte(0xc3);
    }

    /// The shared exit of the saved copy: reload `xmm0`–`xmm15`, free the area, return.
    pub(super) fn saved_epilogue(&mut self) {
        for x in 0..16u8 {
            let m = Rm::Mem(RSP, x as i32 * 16);
            self.e.inst(&[0xf3], false, false, &[0x0f, 0x6f], x, m); // movdqu xmm, [rsp+16x]
        }
        let sub = self.save_sub();
        self.e.alu_imm(true, 0, RSP, sub);
        self.main_epilogue();
    }

    /// Leaves the program from any depth with `r0` set; `saved`: the vector registers are
    /// in the save area (single-function programs only).
    pub(super) fn leave_from_anywhere(&mut self, saved: bool) {
        if saved {
            let d = -self.save_sub();
            self.e.lea(RSP, R12, d);
            let j = self.e.jmp();
            self.fixups.push((j, Target::SavedEpilogue));
        } else {
            self.e.mov(true, RSP, R12);
            let j = self.e.jmp();
            self.fixups.push((j, Target::Epilogue));
        }
    }

    /// Calls a helper at an absolute address, saving vector registers when asked.
    pub(super) fn call_abs(&mut self, addr: u64) {
        if self.vsave.split {
            // Once per run: the unsaved copy saves and its caller continues in the saved
            // copy, which calls with everything already in place.
            if !self.vsave.saved {
                let sub = self.save_sub();
                self.e.alu_imm(true, 5, RSP, sub);
                for x in 0..16u8 {
                    let m = Rm::Mem(RSP, x as i32 * 16);
                    self.e.inst(&[0xf3], false, false, &[0x0f, 0x7f], x, m); // movdqu
                }
            }
            self.e.mov_imm64(RAX, addr);
            self.e.bytes(&[0xff, 0xd0]); // call rax
            return;
        }
        let e = &mut self.e;
        let save = self.opts.preserve_vector_regs;
        let sub = self.frame.call_sub;
        if sub != 0 {
            // Red-zone layout: move rsp below the program's stack before anything is
            // saved or called.
            e.alu_imm(true, 5, RSP, sub);
        }
        if save {
            e.alu_imm(true, 5, RSP, 256);
            for x in 0..16u8 {
                e.inst(
                    &[0xf3],
                    false,
                    false,
                    &[0x0f, 0x7f],
                    x,
                    Rm::Mem(RSP, x as i32 * 16),
                );
            }
        }
        e.mov_imm64(RAX, addr);
        e.bytes(&[0xff, 0xd0]); // call rax
        if save {
            for x in 0..16u8 {
                e.inst(
                    &[0xf3],
                    false,
                    false,
                    &[0x0f, 0x6f],
                    x,
                    Rm::Mem(RSP, x as i32 * 16),
                );
            }
            e.alu_imm(true, 0, RSP, 256);
        }
        if sub != 0 {
            e.alu_imm(true, 0, RSP, sub);
        }
    }

    pub(super) fn call_helper(&mut self, id: u32, f: u64) {
        self.call_abs(f);
        if self.env.unwind_helper == Some(id) {
            self.unwind_check();
        }
    }

    /// After the unwind helper returned: leave the whole program when `r0 == 0`.
    pub(super) fn unwind_check(&mut self) {
        let e = &mut self.e;
        e.rr(true, 0x85, RAX, RAX);
        let cont = e.jcc(CC_NE);
        // In the split layout, any helper call leaves the registers saved.
        self.leave_from_anywhere(self.vsave.split);
        self.e.patch_rel32_here(cont);
    }

    /// After a helper call of the unsaved copy at `pc`: the vector registers are saved, so
    /// the run goes on in the saved copy.
    pub(super) fn continue_saved(&mut self, pc: usize) {
        if self.vsave.split && !self.vsave.saved {
            set(&mut self.vsave.transitions, pc, true);
            let j = self.e.jmp();
            self.fixups
                .push((j, Target::Insn(self.vsave.transitions.len() + pc + 1)));
        }
    }

    /// `callx`: the register holds a helper id; dispatch over the `Env`'s helpers. An id
    /// the `Env` does not have ends the program with `r0 = 0`.
    pub(super) fn callx(&mut self, d: u8) {
        let mut done = Vec::new();
        for &(id, f) in self.env.helpers {
            // cmp d, id  (ids are small; compare the full 64 bits)
            if id > i32::MAX as u32 {
                continue;
            }
            self.e.alu_imm(true, 7, d, id as i32);
            let next = self.e.jcc(CC_NE);
            self.call_helper(id, f as usize as u64);
            done.push(self.e.jmp());
            self.e.patch_rel32_here(next);
        }
        self.e.rr(false, 0x31, RAX, RAX);
        self.leave_from_anywhere(self.vsave.split && self.vsave.saved);
        for j in done {
            self.e.patch_rel32_here(j);
        }
    }
}
