//! ModRM-level encoding: one instruction per call, in a fixed form, with registers given by
//! their hardware numbers (0-15) and forward branches patched by offset afterwards. This is
//! the JIT's side of the [`Writer`]: it translates eBPF instructions one by one and computes
//! every jump itself, so it needs exact, predictable forms rather than the shortest reach.
//!
//! Offsets (`pos`, `jcc`, `jmp`, `patch_rel32`) count from the start of the buffer: the
//! JIT's code is position-independent, so its run address never matters.

use crate::Writer;

/// `rax` (register number).
pub const RAX: u8 = 0;
/// `rcx` (register number).
pub const RCX: u8 = 1;
/// `rdx` (register number).
pub const RDX: u8 = 2;
/// `rbx` (register number).
pub const RBX: u8 = 3;
/// `rsp` (register number).
pub const RSP: u8 = 4;
/// `rbp` (register number).
pub const RBP: u8 = 5;
/// `rsi` (register number).
pub const RSI: u8 = 6;
/// `rdi` (register number).
pub const RDI: u8 = 7;
/// `r8` (register number).
pub const R8: u8 = 8;
/// `r9` (register number).
pub const R9: u8 = 9;
/// `r10` (register number).
pub const R10: u8 = 10;
/// `r11` (register number).
pub const R11: u8 = 11;
/// `r12` (register number).
pub const R12: u8 = 12;
/// `r13` (register number).
pub const R13: u8 = 13;
/// `r14` (register number).
pub const R14: u8 = 14;
/// `r15` (register number).
pub const R15: u8 = 15;

/// Condition code `b` (unsigned below): the low nibble of `0F 8x` / `7x`.
pub const CC_B: u8 = 0x2;
/// `e`/`z`.
pub const CC_E: u8 = 0x4;
/// `ne`/`nz`.
pub const CC_NE: u8 = 0x5;
/// `a` (unsigned above).
pub const CC_A: u8 = 0x7;

/// The second operand of an instruction: a register or `[base + disp32]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rm {
    /// A register (0-15).
    Reg(u8),
    /// `[base + disp]`.
    Mem(u8, i32),
}

impl Writer {
    /// Appends one byte.
    pub fn byte(&mut self, b: u8) {
        self.put_u8(b);
    }

    /// Appends bytes.
    pub fn bytes(&mut self, b: &[u8]) {
        self.put_bytes(b);
    }

    /// Appends a little-endian 32-bit immediate.
    pub fn imm32(&mut self, v: i32) {
        self.bytes(&v.to_le_bytes());
    }

    /// Offset of the next byte from the buffer's start.
    pub fn pos(&self) -> usize {
        self.len()
    }

    /// One instruction: `[prefix] [REX] opcode ModRM [SIB] [disp32]`.
    ///
    /// `byte_regs` forces a REX prefix so register numbers 4–7 mean `spl/bpl/sil/dil`.
    pub fn inst(&mut self, prefix: &[u8], w: bool, byte_regs: bool, opc: &[u8], reg: u8, rm: Rm) {
        self.bytes(prefix);
        let base = match rm {
            Rm::Reg(r) | Rm::Mem(r, _) => r,
        };
        let rex = 0x40 | (w as u8) << 3 | (reg >> 3 & 1) << 2 | (base >> 3 & 1);
        let needs_byte_rex = byte_regs && ((4..8).contains(&reg) || matches!(rm, Rm::Reg(4..=7)));
        if rex != 0x40 || needs_byte_rex {
            self.byte(rex);
        }
        self.bytes(opc);
        match rm {
            Rm::Reg(r) => self.byte(0xc0 | (reg & 7) << 3 | (r & 7)),
            Rm::Mem(b, disp) => {
                // mod 00 (no displacement) is RIP-relative for base 5 (rbp, r13), so those
                // keep a disp8 of 0.
                let short = i8::try_from(disp).ok();
                let md = match short {
                    Some(0) if b & 7 != RBP => 0x00,
                    Some(_) => 0x40,
                    None => 0x80,
                };
                self.byte(md | (reg & 7) << 3 | (b & 7));
                if b & 7 == RSP {
                    self.byte(0x24);
                }
                match md {
                    0x00 => {}
                    0x40 => self.byte(disp as u8),
                    _ => self.imm32(disp),
                }
            }
        }
    }

    /// `op rm, reg` with a one-byte opcode (add, sub, mov, cmp, test, ...).
    pub fn rr(&mut self, w: bool, opc: u8, dst: u8, src: u8) {
        self.inst(&[], w, false, &[opc], src, Rm::Reg(dst));
    }

    /// `mov dst, src` (64 or 32 bits; the 32-bit form zero-extends).
    pub fn mov(&mut self, w: bool, dst: u8, src: u8) {
        self.rr(w, 0x89, dst, src);
    }

    /// Group-1 operation with an immediate: `81 /ext imm32` or `83 /ext imm8`.
    pub fn alu_imm(&mut self, w: bool, ext: u8, dst: u8, imm: i32) {
        if let Ok(b) = i8::try_from(imm) {
            self.inst(&[], w, false, &[0x83], ext, Rm::Reg(dst));
            self.byte(b as u8);
        } else {
            self.inst(&[], w, false, &[0x81], ext, Rm::Reg(dst));
            self.imm32(imm);
        }
    }

    /// `mov dst, imm` sign-extended (64) or `mov dst32, imm32` (32).
    pub fn mov_imm(&mut self, w: bool, dst: u8, imm: i32) {
        if imm == 0 {
            self.rr(false, 0x31, dst, dst); // xor r32, r32
        } else if w && imm < 0 {
            self.inst(&[], true, false, &[0xc7], 0, Rm::Reg(dst));
            self.imm32(imm);
        } else {
            // mov r32, imm32 (B8+r) zero-extends, which equals sign extension for imm >= 0.
            if dst >= 8 {
                self.byte(0x41);
            }
            self.byte(0xb8 + (dst & 7));
            self.imm32(imm);
        }
    }

    /// `mov dst, imm64`.
    pub fn mov_imm64(&mut self, dst: u8, imm: u64) {
        self.byte(0x48 | (dst >> 3 & 1));
        self.byte(0xb8 + (dst & 7));
        self.bytes(&imm.to_le_bytes());
    }

    /// `push r64`.
    pub fn push(&mut self, r: u8) {
        if r >= 8 {
            self.byte(0x41);
        }
        self.byte(0x50 + (r & 7));
    }

    /// `pop r64`.
    pub fn pop(&mut self, r: u8) {
        if r >= 8 {
            self.byte(0x41);
        }
        self.byte(0x58 + (r & 7));
    }

    /// `lea dst, [base + disp]`.
    pub fn lea(&mut self, dst: u8, base: u8, disp: i32) {
        self.inst(&[], true, false, &[0x8d], dst, Rm::Mem(base, disp));
    }

    /// `lea dst, [base + index * scale]` (64-bit; `scale` is 1, 2, 4 or 8; `index` is not
    /// `rsp`).
    pub fn lea_sib(&mut self, dst: u8, base: u8, index: u8, scale: u8) {
        let ss = match scale {
            1 => 0,
            2 => 1,
            4 => 2,
            _ => 3,
        };
        self.byte(0x48 | (dst >> 3 & 1) << 2 | (index >> 3 & 1) << 1 | (base >> 3 & 1));
        self.byte(0x8d);
        // Base 5 (rbp, r13) needs mod 01 with a zero disp8.
        let md = if base & 7 == RBP { 0x40 } else { 0x00 };
        self.byte(md | (dst & 7) << 3 | 0b100);
        self.byte(ss << 6 | (index & 7) << 3 | (base & 7));
        if md == 0x40 {
            self.byte(0);
        }
    }

    /// `mov dst32, fs:[disp]` (absolute `%fs`-relative 32-bit load).
    pub fn load32_fs(&mut self, dst: u8, disp: i32) {
        self.byte(0x64);
        if dst >= 8 {
            self.byte(0x44);
        }
        // mod 00, rm 100 (SIB); SIB: no index, base 101 = disp32 only.
        self.bytes(&[0x8b, (dst & 7) << 3 | 0b100, 0x25]);
        self.imm32(disp);
    }

    /// `rdpid r64`: `IA32_TSC_AUX` (Linux: `node << 12 | cpu`).
    pub fn rdpid(&mut self, dst: u8) {
        self.byte(0xf3);
        if dst >= 8 {
            self.byte(0x41);
        }
        self.bytes(&[0x0f, 0xc7, 0xf8 | (dst & 7)]);
    }

    /// `shl`/`shr dst, imm8` (64-bit; `ext` 4 = shl, 5 = shr).
    pub fn shift_imm(&mut self, ext: u8, dst: u8, imm: u8) {
        self.inst(&[], true, false, &[0xc1], ext, Rm::Reg(dst));
        self.byte(imm);
    }

    /// `mov dst, [base + disp]` (64 or 32 bits).
    pub fn load(&mut self, w: bool, dst: u8, base: u8, disp: i32) {
        self.inst(&[], w, false, &[0x8b], dst, Rm::Mem(base, disp));
    }

    /// `mov [base + disp], src` (64 bits).
    pub fn store(&mut self, base: u8, disp: i32, src: u8) {
        self.inst(&[], true, false, &[0x89], src, Rm::Mem(base, disp));
    }

    /// `rdfsbase r64`.
    pub fn rdfsbase(&mut self, dst: u8) {
        self.inst(&[0xf3], true, false, &[0x0f, 0xae], 0, Rm::Reg(dst));
    }

    /// `jcc rel32` with the target patched later; returns the position of the rel32.
    pub fn jcc(&mut self, cc: u8) -> usize {
        self.bytes(&[0x0f, 0x80 | cc]);
        self.imm32(0);
        self.pos() - 4
    }

    /// `jmp rel32` with the target patched later; returns the position of the rel32.
    pub fn jmp(&mut self) -> usize {
        self.byte(0xe9);
        self.imm32(0);
        self.pos() - 4
    }

    /// Points the rel32 at offset `at` to offset `target` (both from the buffer's start).
    pub fn patch_rel32(&mut self, at: usize, target: usize) {
        let rel = target as i64 - (at as i64 + 4);
        self.patch(at, &(rel as i32).to_le_bytes());
    }

    /// Points the rel32 at offset `at` to the current position.
    pub fn patch_rel32_here(&mut self, at: usize) {
        let here = self.pos();
        self.patch_rel32(at, here);
    }
}
