//! The compile pass: function entries and jump targets, the emission of each copy of the
//! program instruction by instruction, what is known about registers in straight-line code,
//! and the fix-ups of jumps once every offset is known.
//!
//! Invariants:
//! - `insn_off` has one slot per instruction of each copy (`pc` in the unsaved copy,
//!   `len + 1 + pc` in the saved one) and every jump goes through [`Target`], patched at the
//!   end, so code can be emitted in any order (cold stubs after the epilogue).
//! - A map or stack address loaded into a register is only *known* ([`super::Known`]) and
//!   written to the x86 register when something reads it (`flush`); everything known is
//!   written out and forgotten at jump targets, function entries and jumps, so the
//!   tracking never crosses a control-flow join.
//! - The red-zone layout is only kept when the first pass proved it fits (see
//!   [`compile_pass`]).

use alloc::vec;
use alloc::vec::Vec;

use xcover_x86::Writer as Emitter;
use xcover_x86::modrm::*;

use super::frame::{RED_ZONE, plan_frame};
use super::{
    Compiler, JitError, JitOptions, Known, Regs, StackUse, Target, VectorSave, flag, set, x86,
};
use crate::env::Env;
use crate::insn::*;

/// One compilation. With `red_zone`, a single-function program whose stack accesses stay
/// within [`RED_ZONE`] bytes below `r10` keeps its stack below `rsp` and only moves `rsp`
/// around helper calls. Also returns whether that layout applies to this program.
pub(super) fn compile_pass(
    insns: &[Insn],
    env: &Env,
    opts: &JitOptions,
    red_zone: bool,
) -> Result<(Vec<u8>, bool), JitError> {
    let len = insns.len();
    // Function entries: 0 and every local-call target; lddw second halves.
    let mut entry = vec![false; len + 1];
    let mut tail = vec![false; len + 1];
    set(&mut entry, 0, true);
    let mut pc = 0;
    while pc < len {
        let Some(&i) = insns.get(pc) else { break };
        if i.is_lddw() {
            if pc + 1 >= len {
                return Err(JitError::IncompleteLddw { pc });
            }
            set(&mut tail, pc + 1, true);
            pc += 2;
            continue;
        }
        if i.is_local_call() {
            let t = i.jump_target(pc).unwrap_or(-1);
            if t < 0 || t >= len as i64 {
                return Err(JitError::BadJump { pc, target: t });
            }
            set(&mut entry, t as usize, true);
        }
        pc += 1;
    }
    let mut is_target = vec![false; len + 1];
    for (pc, i) in insns.iter().enumerate() {
        if flag(&tail, pc) {
            continue;
        }
        if let Some(t) = i.jump_target(pc) {
            if t < 0 || t >= len as i64 || flag(&tail, t as usize) {
                return Err(JitError::BadJump { pc, target: t });
            }
            set(&mut is_target, t as usize, true);
        }
    }
    let multi = entry.iter().skip(1).any(|&e| e);
    let frame = plan_frame(insns, &tail, env, multi, red_zone);

    let mut c = Compiler {
        e: Emitter::reusing(0, Vec::with_capacity(len * 8 + 64)),
        env,
        opts,
        fixups: Vec::new(),
        frame,
        multi,
        regs: Regs::new(),
        stack: StackUse::default(),
        vsave: VectorSave {
            split: opts.preserve_vector_regs && !multi,
            saved: false,
            base: 0,
            transitions: vec![false; len + 1],
        },
        cold: Vec::new(),
    };
    let mut insn_off = vec![0usize; 2 * (len + 1)];
    let mut func_off = vec![0usize; len + 1];
    c.main_prologue();
    let mut in_main = true;
    let mut pc = 0;
    while pc < len {
        if flag(&is_target, pc) || flag(&entry, pc) {
            c.flush_all();
            c.forget_all();
        }
        if flag(&entry, pc) && pc != 0 {
            in_main = false;
            set(&mut func_off, pc, c.e.pos());
            c.sub_prologue();
        }
        set(&mut insn_off, pc, c.e.pos());
        let Some(&i) = insns.get(pc) else { break };
        if i.dst > 10 || i.src > 10 {
            return Err(JitError::BadRegister { pc });
        }
        if i.is_lddw() {
            c.lddw(pc, i, lddw_tail(insns, pc)?)?;
            set(&mut insn_off, pc + 1, c.e.pos());
            pc += 2;
            continue;
        }
        if c.try_fused_add(insns, pc, &is_target) {
            set(&mut insn_off, pc + 1, c.e.pos());
            set(&mut insn_off, pc + 2, c.e.pos());
            pc += 3;
            continue;
        }
        // A `jeq r0, 0, L` right after an inlined lookup folds into the lookup's range check.
        let next = insns
            .get(pc + 1)
            .filter(|n| !flag(&is_target, pc + 1) && n.op == BPF_JMP | BPF_JEQ | BPF_K)
            .filter(|n| n.dst == 0 && n.imm == 0)
            .and_then(|n| n.jump_target(pc + 1))
            .map(|t| t as usize);
        if i.op == BPF_JMP | BPF_CALL && i.src == 0 && c.try_inline_lookup(pc, i, next)? {
            if next.is_some() {
                set(&mut insn_off, pc + 1, c.e.pos());
                pc += 1;
            }
            pc += 1;
            continue;
        }
        c.insn(pc, i, in_main)?;
        pc += 1;
    }
    c.flush_all();
    let mut saved_epilogue = 0;
    if c.vsave.split {
        c.forget_all();
        c.emit_saved_copy(insns, &tail, &is_target, &mut insn_off)?;
        c.flush_all();
    }
    let epilogue = c.e.pos();
    c.main_epilogue();
    if c.vsave.split {
        saved_epilogue = c.e.pos();
        c.saved_epilogue();
    }
    c.emit_cold();
    for &(at, t) in &c.fixups {
        let to = match t {
            Target::Insn(pc) => insn_off.get(pc).copied(),
            Target::Func(pc) => func_off.get(pc).copied(),
            Target::Epilogue => Some(epilogue),
            Target::SavedEpilogue => Some(saved_epilogue),
        };
        // Every target was checked against the program's length above.
        let Some(to) = to else {
            return Err(JitError::BadJump { pc: 0, target: -1 });
        };
        c.e.patch_rel32(at, to);
    }
    let fits = c.frame.fp_less && !multi && !c.stack.escapes && -c.stack.low <= RED_ZONE;
    Ok((c.e.into_code(), fits))
}

/// Successors of instruction `pc` of a single-function program.
fn successors(i: Insn, pc: usize) -> [Option<usize>; 2] {
    let next = Some(pc + if i.is_lddw() { 2 } else { 1 });
    let class = i.class();
    if class != BPF_JMP && class != BPF_JMP32 {
        return [next, None];
    }
    let target = i.jump_target(pc).map(|t| t as usize);
    match i.op & OP_MASK {
        BPF_EXIT => [None, None],
        BPF_CALL => [next, None],
        BPF_JA => [target, None],
        _ => [next, target],
    }
}

/// Whether straight-line code from `pc` writes `reg` before anything reads it (so its value
/// at `pc` is dead). Conservative: a branch, call or exit, or more than 8 instructions,
/// count as a use.
fn overwritten_before_use(insns: &[Insn], pc: usize, reg: u8) -> bool {
    for i in insns.iter().skip(pc).take(8) {
        let class = i.class();
        let x = i.op & SRC_MASK == BPF_X;
        let reads = match class {
            BPF_ALU | BPF_ALU64 => {
                (x && i.src == reg) || (i.dst == reg && i.op & OP_MASK != BPF_MOV)
            }
            BPF_LDX => i.src == reg,
            BPF_ST => i.dst == reg,
            BPF_STX => i.dst == reg || i.src == reg,
            BPF_LD => !i.is_lddw(),
            _ => return false,
        };
        if reads {
            return false;
        }
        if i.dst == reg && matches!(class, BPF_ALU | BPF_ALU64 | BPF_LDX | BPF_LD) {
            return true;
        }
    }
    false
}

impl Compiler<'_> {
    /// The jump target for instruction `pc` of the copy being emitted.
    pub(super) fn insn_target(&self, pc: usize) -> Target {
        Target::Insn(self.vsave.base + pc)
    }

    pub(super) fn jump_to(&mut self, at: usize, t: Target) {
        self.fixups.push((at, t));
    }

    /// Emits the saved copy: the instructions reachable after a transition of the unsaved
    /// copy, in program order, each region entered with nothing known about registers.
    pub(super) fn emit_saved_copy(
        &mut self,
        insns: &[Insn],
        tail: &[bool],
        is_target: &[bool],
        insn_off: &mut [usize],
    ) -> Result<(), JitError> {
        let len = insns.len();
        let mut reach = vec![false; len + 1];
        let mut work: Vec<usize> = (0..len)
            .filter(|&pc| flag(&self.vsave.transitions, pc))
            .map(|pc| pc + 1)
            .collect();
        while let Some(pc) = work.pop() {
            if pc >= len || flag(&reach, pc) || flag(tail, pc) {
                continue;
            }
            set(&mut reach, pc, true);
            if let Some(&i) = insns.get(pc) {
                work.extend(successors(i, pc).into_iter().flatten());
            }
        }
        self.vsave.saved = true;
        self.vsave.base = len + 1;
        let mut pc = 0;
        let mut prev_emitted = false;
        while pc < len {
            if !flag(&reach, pc) {
                prev_emitted = false;
                pc += 1;
                continue;
            }
            if flag(is_target, pc)
                || !prev_emitted
                || flag(&self.vsave.transitions, pc.saturating_sub(1))
            {
                self.flush_all();
                self.forget_all();
            }
            prev_emitted = true;
            set(insn_off, self.vsave.base + pc, self.e.pos());
            let Some(&i) = insns.get(pc) else { break };
            if i.is_lddw() {
                self.lddw(pc, i, lddw_tail(insns, pc)?)?;
                set(insn_off, self.vsave.base + pc + 1, self.e.pos());
                pc += 2;
                continue;
            }
            if reach.get(pc + 2).copied().unwrap_or(false)
                && self.try_fused_add(insns, pc, is_target)
            {
                set(insn_off, self.vsave.base + pc + 1, self.e.pos());
                set(insn_off, self.vsave.base + pc + 2, self.e.pos());
                pc += 3;
                continue;
            }
            // Never fold a `jeq` the unsaved copy enters (after its own call at `pc`).
            let next = insns
                .get(pc + 1)
                .filter(|n| !flag(is_target, pc + 1) && n.op == BPF_JMP | BPF_JEQ | BPF_K)
                .filter(|n| n.dst == 0 && n.imm == 0 && !flag(&self.vsave.transitions, pc))
                .and_then(|n| n.jump_target(pc + 1))
                .map(|t| t as usize);
            if i.op == BPF_JMP | BPF_CALL && i.src == 0 && self.try_inline_lookup(pc, i, next)? {
                if next.is_some() {
                    set(insn_off, self.vsave.base + pc + 1, self.e.pos());
                    pc += 1;
                }
                pc += 1;
                continue;
            }
            self.insn(pc, i, true)?;
            pc += 1;
        }
        Ok(())
    }

    pub(super) fn insn(&mut self, pc: usize, i: Insn, in_main: bool) -> Result<(), JitError> {
        // Straight-line tracking of stack addresses: `mov rX, r10` and `add/sub rX, imm` on
        // a deferred one only update what the compiler knows.
        let dr = i.dst as usize;
        if i.op == BPF_ALU64 | BPF_MOV | BPF_X && i.off == 0 && i.src == 10 && i.dst != 10 {
            set(&mut self.regs.known, dr, Known::Stack(0));
            set(&mut self.regs.pending, dr, true);
            return Ok(());
        }
        if (i.op == BPF_ALU64 | BPF_ADD | BPF_K || i.op == BPF_ALU64 | BPF_SUB | BPF_K)
            && i.off == 0
            && self.regs.pending(i.dst)
            && let Known::Stack(o) = self.regs.known(i.dst)
        {
            let delta = if i.op & OP_MASK == BPF_ADD {
                Some(i.imm)
            } else {
                i.imm.checked_neg()
            };
            if let Some(n) = delta.and_then(|d| o.checked_add(d)) {
                set(&mut self.regs.known, dr, Known::Stack(n));
                return Ok(());
            }
        }
        let class = i.class();
        if matches!(class, BPF_JMP | BPF_JMP32) {
            self.regs.for_call = i.op == BPF_JMP | BPF_CALL && i.src == 0;
            self.flush_all();
            self.regs.for_call = false;
        } else {
            self.flush(i.dst);
            self.flush(i.src);
            if class == BPF_STX && i.op & MODE_MASK == BPF_ATOMIC {
                self.flush(0);
            }
        }
        self.emit(pc, i, in_main)?;
        match class {
            BPF_JMP | BPF_JMP32 => match i.op & OP_MASK {
                BPF_CALL => {
                    for r in 0..=5 {
                        self.forget(r);
                    }
                }
                BPF_JA | BPF_EXIT => self.forget_all(),
                _ => {}
            },
            _ => {
                self.forget(i.dst);
                self.forget(i.src);
                if class == BPF_STX && i.op & MODE_MASK == BPF_ATOMIC {
                    self.forget(0);
                }
            }
        }
        Ok(())
    }

    /// Emits `r = *(u64 *)(p + o); r += k; *(u64 *)(p + o) = r`, which is how clang compiles
    /// `*counter += k`, as one `add qword [p + o], k` and a reload of `r`. Preemption cannot
    /// split one instruction, so a thread preempted between the load and the store no longer
    /// writes back a stale count over the increments other threads of its CPU made meanwhile
    /// (the coverage probe lost counts that way under busy threads: docs/performance.md).
    /// Not when anything jumps to the second or third instruction.
    pub(super) fn try_fused_add(&mut self, insns: &[Insn], pc: usize, is_target: &[bool]) -> bool {
        let (Some(l), Some(a), Some(st)) = (insns.get(pc), insns.get(pc + 1), insns.get(pc + 2))
        else {
            return false;
        };
        let fits = l.op == BPF_LDX | BPF_MEM | BPF_DW
            && a.op == BPF_ALU64 | BPF_ADD | BPF_K
            && a.off == 0
            && a.dst == l.dst
            && st.op == BPF_STX | BPF_MEM | BPF_DW
            && st.src == l.dst
            && st.dst == l.src
            && st.off == l.off
            && l.dst != l.src
            && l.dst < 10
            && l.src <= 10
            && !is_target.get(pc + 1).copied().unwrap_or(true)
            && !is_target.get(pc + 2).copied().unwrap_or(true);
        if !fits {
            return false;
        }
        self.flush(l.dst);
        self.flush(l.src);
        let m = self.mem(l.src, l.off as i32);
        self.e.inst(&[], true, false, &[0x81], 0, m); // add qword [m], imm32
        self.e.imm32(a.imm);
        // The register gets the new value, unless the code overwrites it first.
        if !overwritten_before_use(insns, pc + 3, l.dst) {
            let m = self.mem(l.src, l.off as i32);
            self.e.inst(&[], true, false, &[0x8b], x86(l.dst), m);
        }
        self.forget(l.dst);
        true
    }

    /// The memory operand `[reg + off]` for an eBPF base register.
    pub(super) fn mem(&mut self, reg: u8, off: i32) -> Rm {
        if reg == 10 {
            self.stack.low = self.stack.low.min(off);
        }
        if reg == 10 && self.frame.fp_less {
            let moved = if self.vsave.saved { self.save_sub() } else { 0 };
            Rm::Mem(RSP, moved + self.frame.top + off)
        } else {
            Rm::Mem(x86(reg), off)
        }
    }

    /// Writes a deferred known value into its register.
    pub(super) fn flush(&mut self, r: u8) {
        let Some(pending) = self.regs.pending.get_mut(r as usize) else {
            return;
        };
        if !*pending {
            return;
        }
        *pending = false;
        match self.regs.known(r) {
            Known::Map(idx) => {
                let v = self.env.map_addrs.get(idx as usize).copied().unwrap_or(0);
                self.e.mov_imm64(x86(r), v);
            }
            Known::Stack(off) => {
                if !(self.regs.for_call && (1..=5).contains(&r)) {
                    self.stack.escapes = true;
                }
                if let Rm::Mem(b, d) = self.mem(10, off) {
                    self.e.lea(x86(r), b, d);
                }
            }
            Known::No => {}
        }
    }

    pub(super) fn flush_all(&mut self) {
        for r in 0..11 {
            self.flush(r);
        }
    }

    pub(super) fn forget_all(&mut self) {
        self.regs.known = [Known::No; 11];
        self.regs.pending = [false; 11];
    }

    /// Forgets what `r` held (it was just written); any deferred value is dropped.
    pub(super) fn forget(&mut self, r: u8) {
        set(&mut self.regs.known, r as usize, Known::No);
        set(&mut self.regs.pending, r as usize, false);
    }
}

/// The second half of the `lddw` at `pc` (the first pass checked it is there).
fn lddw_tail(insns: &[Insn], pc: usize) -> Result<Insn, JitError> {
    insns
        .get(pc + 1)
        .copied()
        .ok_or(JitError::IncompleteLddw { pc })
}
