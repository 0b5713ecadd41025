//! Instruction selection: the x86-64 code for each eBPF opcode (ALU, loads and stores,
//! atomics, jumps, calls and exits). Scratch registers are `r9`, `r10`, `r11`; an
//! instruction leaves every eBPF register but its destination as it found it.

use alloc::vec::Vec;

use xcover_x86::modrm::*;

use super::{Compiler, JitError, Known, Target, set, x86};
use crate::insn::*;

impl Compiler<'_> {
    pub(super) fn lddw(&mut self, pc: usize, i: Insn, next: Insn) -> Result<(), JitError> {
        let d = x86(i.dst);
        let idx = i.imm as u32;
        let missing = JitError::UnknownMap { pc, index: idx };
        let v = match i.src {
            PSEUDO_NONE => (i.imm as u32 as u64) | (next.imm as u32 as u64) << 32,
            PSEUDO_MAP_FD => {
                self.env.map_addrs.get(idx as usize).ok_or(missing)?;
                // Deferred: an inlined lookup never needs the address in a register.
                set(&mut self.regs.known, i.dst as usize, Known::Map(idx));
                set(&mut self.regs.pending, i.dst as usize, true);
                return Ok(());
            }
            PSEUDO_MAP_VALUE => self
                .env
                .map_value_addrs
                .get(idx as usize)
                .ok_or(missing)?
                .wrapping_add(next.imm as u32 as u64),
            _ => return Err(JitError::UnknownOpcode { pc, op: i.op }),
        };
        self.forget(i.dst);
        self.e.mov_imm64(d, v);
        Ok(())
    }

    pub(super) fn emit(&mut self, pc: usize, i: Insn, in_main: bool) -> Result<(), JitError> {
        let d = x86(i.dst);
        let s = x86(i.src);
        let bad = JitError::UnknownOpcode { pc, op: i.op };
        let x = i.op & SRC_MASK == BPF_X;
        match i.class() {
            BPF_ALU | BPF_ALU64 => self.alu(i, d, s, x).ok_or(bad)?,
            BPF_LDX => {
                let m = self.mem(i.src, i.off as i32);
                let (w, opc): (bool, &[u8]) = match (i.op & MODE_MASK, i.op & SIZE_MASK) {
                    (BPF_MEM, BPF_B) => (false, &[0x0f, 0xb6]),
                    (BPF_MEM, BPF_H) => (false, &[0x0f, 0xb7]),
                    (BPF_MEM, BPF_W) => (false, &[0x8b]),
                    (BPF_MEM, BPF_DW) => (true, &[0x8b]),
                    (BPF_MEMSX, BPF_B) => (true, &[0x0f, 0xbe]),
                    (BPF_MEMSX, BPF_H) => (true, &[0x0f, 0xbf]),
                    (BPF_MEMSX, BPF_W) => (true, &[0x63]),
                    _ => return Err(bad),
                };
                self.e.inst(&[], w, false, opc, d, m);
            }
            BPF_ST => {
                if i.op & MODE_MASK != BPF_MEM {
                    return Err(bad);
                }
                let m = self.mem(i.dst, i.off as i32);
                match i.op & SIZE_MASK {
                    BPF_B => {
                        self.e.inst(&[], false, false, &[0xc6], 0, m);
                        self.e.byte(i.imm as u8);
                    }
                    BPF_H => {
                        self.e.inst(&[0x66], false, false, &[0xc7], 0, m);
                        self.e.bytes(&(i.imm as u16).to_le_bytes());
                    }
                    BPF_W => {
                        self.e.inst(&[], false, false, &[0xc7], 0, m);
                        self.e.imm32(i.imm);
                    }
                    _ => {
                        self.e.inst(&[], true, false, &[0xc7], 0, m);
                        self.e.imm32(i.imm);
                    }
                }
            }
            BPF_STX => {
                let m = self.mem(i.dst, i.off as i32);
                match i.op & MODE_MASK {
                    BPF_MEM => match i.op & SIZE_MASK {
                        BPF_B => self.e.inst(&[], false, true, &[0x88], s, m),
                        BPF_H => self.e.inst(&[0x66], false, false, &[0x89], s, m),
                        BPF_W => self.e.inst(&[], false, false, &[0x89], s, m),
                        _ => self.e.inst(&[], true, false, &[0x89], s, m),
                    },
                    BPF_ATOMIC => self.atomic(i, m, s).ok_or(bad)?,
                    _ => return Err(bad),
                }
            }
            BPF_JMP | BPF_JMP32 => self.jmp(pc, i, d, s, x, in_main)?,
            _ => return Err(bad),
        }
        Ok(())
    }

    pub(super) fn alu(&mut self, i: Insn, d: u8, s: u8, x: bool) -> Option<()> {
        let w = i.class() == BPF_ALU64;
        let code = i.op & OP_MASK;
        let e = &mut self.e;
        match code {
            BPF_ADD | BPF_SUB | BPF_OR | BPF_AND | BPF_XOR => {
                if i.off != 0 {
                    return None;
                }
                let (opc, ext) = match code {
                    BPF_ADD => (0x01, 0),
                    BPF_OR => (0x09, 1),
                    BPF_AND => (0x21, 4),
                    BPF_SUB => (0x29, 5),
                    _ => (0x31, 6),
                };
                if x {
                    e.rr(w, opc, d, s);
                } else {
                    e.alu_imm(w, ext, d, i.imm);
                }
            }
            BPF_MOV => match (x, i.off) {
                (false, 0) => e.mov_imm(w, d, i.imm),
                (true, 0) => e.mov(w, d, s),
                (true, 8) => e.inst(&[], w, true, &[0x0f, 0xbe], d, Rm::Reg(s)),
                (true, 16) => e.inst(&[], w, false, &[0x0f, 0xbf], d, Rm::Reg(s)),
                (true, 32) if w => e.inst(&[], true, false, &[0x63], d, Rm::Reg(s)),
                _ => return None,
            },
            BPF_MUL => {
                if i.off != 0 {
                    return None;
                }
                if x {
                    e.inst(&[], w, false, &[0x0f, 0xaf], d, Rm::Reg(s));
                } else {
                    e.inst(&[], w, false, &[0x69], d, Rm::Reg(d));
                    e.imm32(i.imm);
                }
            }
            BPF_NEG => {
                if x || i.off != 0 {
                    return None;
                }
                e.inst(&[], w, false, &[0xf7], 3, Rm::Reg(d));
            }
            BPF_LSH | BPF_RSH | BPF_ARSH => {
                if i.off != 0 {
                    return None;
                }
                let ext = match code {
                    BPF_LSH => 4,
                    BPF_RSH => 5,
                    _ => 7,
                };
                if !x {
                    let n = i.imm as u32 & if w { 63 } else { 31 };
                    if n == 0 {
                        if !w {
                            e.mov(false, d, d);
                        }
                    } else {
                        e.inst(&[], w, false, &[0xc1], ext, Rm::Reg(d));
                        e.byte(n as u8);
                    }
                } else {
                    // The count must be in cl, and rcx is r4.
                    let target = if d == RCX { R9 } else { d };
                    if d == RCX {
                        e.mov(true, R9, RCX);
                    }
                    if s != RCX {
                        e.mov(true, R11, RCX);
                        e.mov(true, RCX, s);
                    }
                    e.inst(&[], w, false, &[0xd3], ext, Rm::Reg(target));
                    if s != RCX {
                        e.mov(true, RCX, R11);
                    }
                    if d == RCX {
                        e.mov(true, RCX, R9);
                    }
                    if !w {
                        // A zero count leaves the register untouched; zero-extend anyway.
                        e.mov(false, d, d);
                    }
                }
            }
            BPF_DIV | BPF_MOD => {
                if i.off != 0 && i.off != 1 {
                    return None;
                }
                self.divmod(w, i.off == 1, code == BPF_MOD, d, x.then_some(s), i.imm);
            }
            BPF_END => {
                if w && x {
                    return None;
                }
                let swap = w || x;
                match (swap, i.imm) {
                    (false, 16) => e.inst(&[], false, false, &[0x0f, 0xb7], d, Rm::Reg(d)),
                    (false, 32) => e.mov(false, d, d),
                    (false, 64) => {}
                    (true, 16) => {
                        e.inst(&[0x66], false, false, &[0xc1], 1, Rm::Reg(d)); // ror r16, 8
                        e.byte(8);
                        e.inst(&[], false, false, &[0x0f, 0xb7], d, Rm::Reg(d));
                    }
                    (true, 32 | 64) => {
                        let rex = 0x40 | ((i.imm == 64) as u8) << 3 | (d >> 3);
                        if rex != 0x40 {
                            e.byte(rex);
                        }
                        e.bytes(&[0x0f, 0xc8 + (d & 7)]);
                    }
                    _ => return None,
                }
            }
            _ => return None,
        }
        Some(())
    }

    /// Division and modulo with the eBPF edge cases. Scratch: r9, r10, r11.
    pub(super) fn divmod(
        &mut self,
        w: bool,
        signed: bool,
        is_mod: bool,
        d: u8,
        src: Option<u8>,
        imm: i32,
    ) {
        let e = &mut self.e;
        match src {
            Some(s) => e.mov(w, R11, s),
            None => e.mov_imm(w, R11, imm),
        }
        e.rr(w, 0x85, R11, R11); // test r11, r11
        let to_zero = e.jcc(CC_E);
        let mut to_done = Vec::new();
        if signed {
            e.alu_imm(w, 7, R11, -1); // cmp r11, -1
            let normal = e.jcc(CC_NE);
            if is_mod {
                e.rr(false, 0x31, d, d);
            } else {
                e.inst(&[], w, false, &[0xf7], 3, Rm::Reg(d)); // neg
            }
            to_done.push(e.jmp());
            e.patch_rel32_here(normal);
        }
        e.mov(true, R9, RAX);
        e.mov(true, R10, RDX);
        e.mov(w, RAX, d);
        if signed {
            if w {
                e.bytes(&[0x48, 0x99]); // cqo
            } else {
                e.byte(0x99); // cdq
            }
        } else {
            e.rr(false, 0x31, RDX, RDX);
        }
        e.inst(
            &[],
            w,
            false,
            &[0xf7],
            if signed { 7 } else { 6 },
            Rm::Reg(R11),
        );
        e.mov(true, R11, if is_mod { RDX } else { RAX });
        e.mov(true, RAX, R9);
        e.mov(true, RDX, R10);
        e.mov(true, d, R11);
        to_done.push(e.jmp());
        e.patch_rel32_here(to_zero);
        if !is_mod {
            e.rr(false, 0x31, d, d);
        } else if !w {
            e.mov(false, d, d);
        }
        for j in to_done {
            e.patch_rel32_here(j);
        }
    }

    pub(super) fn atomic(&mut self, i: Insn, m: Rm, s: u8) -> Option<()> {
        let w = match i.op & SIZE_MASK {
            BPF_DW => true,
            BPF_W => false,
            _ => return None,
        };
        let Rm::Mem(base, disp) = m else {
            return None;
        };
        let e = &mut self.e;
        const LOCK: &[u8] = &[0xf0];
        match i.imm {
            ATOMIC_ADD => e.inst(LOCK, w, false, &[0x01], s, m),
            ATOMIC_OR => e.inst(LOCK, w, false, &[0x09], s, m),
            ATOMIC_AND => e.inst(LOCK, w, false, &[0x21], s, m),
            ATOMIC_XOR => e.inst(LOCK, w, false, &[0x31], s, m),
            x if x == ATOMIC_ADD | ATOMIC_FETCH => e.inst(LOCK, w, false, &[0x0f, 0xc1], s, m),
            ATOMIC_XCHG => e.inst(&[], w, false, &[0x87], s, m),
            ATOMIC_CMPXCHG => {
                e.inst(LOCK, w, false, &[0x0f, 0xb1], s, m);
                if !w {
                    e.mov(false, RAX, RAX);
                }
            }
            x if matches!(x & !ATOMIC_FETCH, ATOMIC_OR | ATOMIC_AND | ATOMIC_XOR) => {
                let opc = match x & !ATOMIC_FETCH {
                    ATOMIC_OR => 0x09,
                    ATOMIC_AND => 0x21,
                    _ => 0x31,
                };
                let val = if s == RAX { R9 } else { s };
                e.mov(true, R9, RAX);
                e.lea(R10, base, disp);
                e.inst(&[], w, false, &[0x8b], RAX, Rm::Mem(R10, 0));
                let top = e.pos();
                e.mov(true, R11, RAX);
                e.rr(w, opc, R11, val);
                e.inst(LOCK, w, false, &[0x0f, 0xb1], R11, Rm::Mem(R10, 0));
                let back = e.jcc(CC_NE);
                e.patch_rel32(back, top);
                if s == RAX {
                    if !w {
                        e.mov(false, RAX, RAX);
                    }
                } else {
                    e.mov(w, s, RAX);
                    e.mov(true, RAX, R9);
                }
            }
            _ => return None,
        }
        Some(())
    }

    pub(super) fn jmp(
        &mut self,
        pc: usize,
        i: Insn,
        d: u8,
        s: u8,
        x: bool,
        in_main: bool,
    ) -> Result<(), JitError> {
        let bad = JitError::UnknownOpcode { pc, op: i.op };
        let class = i.class();
        let code = i.op & OP_MASK;
        let target = i.jump_target(pc).map(|t| t as usize);
        match (class, code) {
            (BPF_JMP, BPF_EXIT) => {
                if x {
                    return Err(bad);
                }
                if self.vsave.saved {
                    let j = self.e.jmp();
                    self.jump_to(j, Target::SavedEpilogue);
                } else if in_main && !self.multi {
                    // The lean epilogue is short: repeat it at every exit.
                    self.main_epilogue();
                } else if in_main {
                    let j = self.e.jmp();
                    self.jump_to(j, Target::Epilogue);
                } else {
                    self.sub_epilogue();
                }
            }
            (BPF_JMP, BPF_CALL) => {
                if x {
                    self.callx(d);
                    self.continue_saved(pc);
                } else if i.src == PSEUDO_CALL {
                    self.e.byte(0xe8);
                    self.e.imm32(0);
                    let at = self.e.pos() - 4;
                    self.jump_to(at, Target::Func(target.unwrap_or(0)));
                } else if i.src == 0 {
                    self.helper_call(pc, i.imm as u32)?;
                } else {
                    return Err(bad);
                }
            }
            (_, BPF_JA) => {
                if x {
                    return Err(bad);
                }
                let j = self.e.jmp();
                let t = self.insn_target(target.unwrap_or(0));
                self.jump_to(j, t);
            }
            (_, BPF_CALL | BPF_EXIT) => return Err(bad),
            _ => {
                let w = class == BPF_JMP;
                let cc = match code {
                    BPF_JEQ => CC_E,
                    BPF_JNE | BPF_JSET => CC_NE,
                    BPF_JGT => 0x7,
                    BPF_JGE => 0x3,
                    BPF_JLT => 0x2,
                    BPF_JLE => 0x6,
                    BPF_JSGT => 0xf,
                    BPF_JSGE => 0xd,
                    BPF_JSLT => 0xc,
                    BPF_JSLE => 0xe,
                    _ => return Err(bad),
                };
                let e = &mut self.e;
                if code == BPF_JSET {
                    if x {
                        e.rr(w, 0x85, d, s);
                    } else {
                        e.inst(&[], w, false, &[0xf7], 0, Rm::Reg(d));
                        e.imm32(i.imm);
                    }
                } else if x {
                    e.rr(w, 0x39, d, s);
                } else {
                    e.alu_imm(w, 7, d, i.imm);
                }
                let j = e.jcc(cc);
                let t = self.insn_target(target.unwrap_or(0));
                self.jump_to(j, t);
            }
        }
        Ok(())
    }
}
