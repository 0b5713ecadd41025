//! The x86-64 code writer.
//!
//! The writer appends machine code to a byte buffer that will *run* at another address, `pc`
//! (the code is assembled here and copied there later, possibly by another process). Every
//! relative form is computed against that run address. Jumps and calls pick the shortest form
//! that reaches: `rel8`, then `rel32`, then an absolute form through an 8-byte slot placed
//! right after the instruction.
//!
//! The writer knows nothing about hooks or relocation: it only emits instructions. It is
//! entirely safe code.

use alloc::vec::Vec;

/// A general-purpose register, numbered as in the ModRM/REX encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
#[allow(missing_docs)]
pub enum Reg {
    Rax = 0,
    Rcx = 1,
    Rdx = 2,
    Rbx = 3,
    Rsp = 4,
    Rbp = 5,
    Rsi = 6,
    Rdi = 7,
    R8 = 8,
    R9 = 9,
    R10 = 10,
    R11 = 11,
    R12 = 12,
    R13 = 13,
    R14 = 14,
    R15 = 15,
}

impl Reg {
    /// All sixteen registers in encoding order.
    pub const ALL: [Reg; 16] = [
        Reg::Rax,
        Reg::Rcx,
        Reg::Rdx,
        Reg::Rbx,
        Reg::Rsp,
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

    fn low(self) -> u8 {
        self as u8 & 7
    }

    fn ext(self) -> bool {
        self as u8 >= 8
    }
}

/// Condition codes, the low nibble of `jcc`/`setcc` opcodes.
pub type Cond = u8;

/// Whether `target` is reachable by a `rel32` from an instruction ending at `end`.
pub fn fits_rel32(end: u64, target: u64) -> bool {
    let d = target.wrapping_sub(end) as i64;
    i32::try_from(d).is_ok()
}

fn fits_rel8(end: u64, target: u64) -> bool {
    let d = target.wrapping_sub(end) as i64;
    i8::try_from(d).is_ok()
}

/// Appends x86-64 code that will run at `base_pc`.
#[derive(Clone, Debug)]
pub struct Writer {
    code: Vec<u8>,
    base_pc: u64,
}

impl Writer {
    /// A writer whose first byte will run at `pc`.
    pub fn new(pc: u64) -> Self {
        Self {
            code: Vec::with_capacity(256),
            base_pc: pc,
        }
    }

    /// A writer whose first byte will run at `pc`, writing into `buf` (cleared first): lets a
    /// caller that assembles many small pieces reuse one allocation.
    pub fn reusing(pc: u64, mut buf: Vec<u8>) -> Self {
        buf.clear();
        Self {
            code: buf,
            base_pc: pc,
        }
    }

    /// Overwrites bytes already written, from offset `off` (for filling in fields of code
    /// copied from a template). A range past the end writes nothing: callers patch only
    /// bytes they wrote.
    pub fn patch(&mut self, off: usize, bytes: &[u8]) {
        if let Some(to) = self.code.get_mut(off..off + bytes.len()) {
            to.copy_from_slice(bytes);
        }
    }

    /// Run address of the next byte to be written.
    pub fn pc(&self) -> u64 {
        self.base_pc + self.code.len() as u64
    }

    /// Run address of the first byte.
    pub fn base_pc(&self) -> u64 {
        self.base_pc
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.code.len()
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.code.is_empty()
    }

    /// The code.
    pub fn code(&self) -> &[u8] {
        &self.code
    }

    /// Consumes the writer, returning the code.
    pub fn into_code(self) -> Vec<u8> {
        self.code
    }

    /// Appends raw bytes.
    pub fn put_bytes(&mut self, b: &[u8]) {
        self.code.extend_from_slice(b);
    }

    /// Appends one byte.
    pub fn put_u8(&mut self, b: u8) {
        self.code.push(b);
    }

    /// Appends a little-endian `u32`.
    pub fn put_u32(&mut self, v: u32) {
        self.code.extend_from_slice(&v.to_le_bytes());
    }

    /// Appends a little-endian `u64`.
    pub fn put_u64(&mut self, v: u64) {
        self.code.extend_from_slice(&v.to_le_bytes());
    }

    /// Pads with `int3` until `pc` is a multiple of `align` (a power of two).
    pub fn align(&mut self, align: u64) {
        while self.pc() & (align - 1) != 0 {
            self.put_u8(0xcc);
        }
    }

    /// `jmp target`: `rel8` (2 bytes), `rel32` (5) or `jmp [rip+0]; .quad target` (14).
    pub fn put_jmp(&mut self, target: u64) {
        if fits_rel8(self.pc() + 2, target) {
            let d = target.wrapping_sub(self.pc() + 2) as u8;
            self.put_bytes(&[0xeb, d]);
        } else if !self.put_jmp_rel32(target) {
            self.put_jmp_abs(target);
        }
    }

    /// `jmp rel32`, 5 bytes; `false` (nothing written) when out of reach.
    pub fn put_jmp_rel32(&mut self, target: u64) -> bool {
        self.put_rel32(0xe9, None, target)
    }

    /// `jmp rel8`, 2 bytes; `false` (nothing written) when out of reach.
    pub fn put_jmp_rel8(&mut self, target: u64) -> bool {
        if !fits_rel8(self.pc() + 2, target) {
            return false;
        }
        let d = target.wrapping_sub(self.pc() + 2) as u8;
        self.put_bytes(&[0xeb, d]);
        true
    }

    /// `jmp qword [rip+0]` followed by the 8-byte target: reaches anywhere, 14 bytes, no
    /// register or flag touched.
    pub fn put_jmp_abs(&mut self, target: u64) {
        self.put_bytes(&[0xff, 0x25, 0, 0, 0, 0]);
        self.put_u64(target);
    }

    /// `jcc target` for condition `cc` (0..=15): `rel8`, `rel32`, or the inverted condition
    /// hopping over an absolute jump.
    pub fn put_jcc(&mut self, cc: Cond, target: u64) {
        let cc = cc & 15;
        if fits_rel8(self.pc() + 2, target) {
            let d = target.wrapping_sub(self.pc() + 2) as u8;
            self.put_bytes(&[0x70 | cc, d]);
        } else if !self.put_rel32(0x0f, Some(0x80 | cc), target) {
            // j!cc over the 14-byte absolute jump.
            self.put_bytes(&[0x70 | (cc ^ 1), 14]);
            self.put_jmp_abs(target);
        }
    }

    /// `call target`: `rel32`, or `call [rip+2]; jmp +8; .quad target` when out of reach.
    pub fn put_call(&mut self, target: u64) {
        if !self.put_rel32(0xe8, None, target) {
            self.put_bytes(&[0xff, 0x15, 2, 0, 0, 0, 0xeb, 8]);
            self.put_u64(target);
        }
    }

    fn put_rel32(&mut self, op: u8, op2: Option<u8>, target: u64) -> bool {
        let len = if op2.is_some() { 6 } else { 5 };
        let end = self.pc() + len;
        if !fits_rel32(end, target) {
            return false;
        }
        self.put_u8(op);
        if let Some(b) = op2 {
            self.put_u8(b);
        }
        self.put_u32(target.wrapping_sub(end) as u32);
        true
    }

    /// Pushes a 64-bit constant without touching registers or flags:
    /// `push imm32` (sign-extended) and, when needed, `mov dword [rsp+4], hi32`.
    pub fn put_push_u64(&mut self, v: u64) {
        self.put_u8(0x68);
        self.put_u32(v as u32);
        let sign_ext = (v as u32 as i32 as i64) as u64;
        if sign_ext != v {
            self.put_bytes(&[0xc7, 0x44, 0x24, 0x04]);
            self.put_u32((v >> 32) as u32);
        }
    }

    /// `mov reg, imm64` (10 bytes).
    pub fn put_mov_imm64(&mut self, reg: Reg, v: u64) {
        self.put_u8(0x48 | reg.ext() as u8);
        self.put_u8(0xb8 + reg.low());
        self.put_u64(v);
    }

    /// `lea reg, [rip+disp]` pointing at `target` (7 bytes); `false` when out of reach.
    pub fn put_lea_rip(&mut self, reg: Reg, target: u64) -> bool {
        let end = self.pc() + 7;
        if !fits_rel32(end, target) {
            return false;
        }
        self.put_u8(0x48 | ((reg.ext() as u8) << 2));
        self.put_u8(0x8d);
        self.put_u8(0x05 | (reg.low() << 3));
        self.put_u32(target.wrapping_sub(end) as u32);
        true
    }

    /// ModRM (+SIB, +displacement) for `[base+disp]` with `field` in the reg slot.
    fn put_modrm_mem(&mut self, field: u8, base: Reg, disp: i32) {
        let rm = base.low();
        let (md, disp_bytes) = if disp == 0 && rm != 5 {
            (0u8, 0)
        } else if i8::try_from(disp).is_ok() {
            (1, 1)
        } else {
            (2, 4)
        };
        self.put_u8((md << 6) | ((field & 7) << 3) | rm);
        if rm == 4 {
            self.put_u8(0x24);
        }
        match disp_bytes {
            1 => self.put_u8(disp as i8 as u8),
            4 => self.put_u32(disp as u32),
            _ => {}
        }
    }

    fn rex_w(&mut self, reg_ext: bool, base_ext: bool) {
        self.put_u8(0x48 | ((reg_ext as u8) << 2) | base_ext as u8);
    }

    /// `mov qword [base+disp], src`.
    pub fn put_store(&mut self, base: Reg, disp: i32, src: Reg) {
        self.rex_w(src.ext(), base.ext());
        self.put_u8(0x89);
        self.put_modrm_mem(src as u8, base, disp);
    }

    /// `mov dst, qword [base+disp]`.
    pub fn put_load(&mut self, dst: Reg, base: Reg, disp: i32) {
        self.rex_w(dst.ext(), base.ext());
        self.put_u8(0x8b);
        self.put_modrm_mem(dst as u8, base, disp);
    }

    /// `mov dst32, dword [base+disp]` (zero-extends into the full register).
    pub fn put_load32(&mut self, dst: Reg, base: Reg, disp: i32) {
        if dst.ext() || base.ext() {
            self.put_u8(0x40 | ((dst.ext() as u8) << 2) | base.ext() as u8);
        }
        self.put_u8(0x8b);
        self.put_modrm_mem(dst as u8, base, disp);
    }

    /// `mov qword [base+disp], simm32` (sign-extended).
    pub fn put_store_imm(&mut self, base: Reg, disp: i32, imm: i32) {
        self.rex_w(false, base.ext());
        self.put_u8(0xc7);
        self.put_modrm_mem(0, base, disp);
        self.put_u32(imm as u32);
    }

    /// `lea dst, [base+disp]` (flags untouched).
    pub fn put_lea(&mut self, dst: Reg, base: Reg, disp: i32) {
        self.rex_w(dst.ext(), base.ext());
        self.put_u8(0x8d);
        self.put_modrm_mem(dst as u8, base, disp);
    }

    /// `mov dst, src` (64-bit).
    pub fn put_mov(&mut self, dst: Reg, src: Reg) {
        self.rex_w(src.ext(), dst.ext());
        self.put_u8(0x89);
        self.put_u8(0xc0 | (src.low() << 3) | dst.low());
    }

    /// `and rsp, -align` (`align` ≤ 128, a power of two). Clobbers the flags.
    pub fn put_align_rsp(&mut self, align: u8) {
        self.put_bytes(&[0x48, 0x83, 0xe4, (align as i8).wrapping_neg() as u8]);
    }

    /// `sub rsp, imm32`. Clobbers the flags.
    pub fn put_sub_rsp(&mut self, imm: i32) {
        if let Ok(b) = i8::try_from(imm) {
            self.put_bytes(&[0x48, 0x83, 0xec, b as u8]);
        } else {
            self.put_bytes(&[0x48, 0x81, 0xec]);
            self.put_u32(imm as u32);
        }
    }

    /// `push reg`.
    pub fn put_push(&mut self, reg: Reg) {
        if reg.ext() {
            self.put_u8(0x41);
        }
        self.put_u8(0x50 + reg.low());
    }

    /// `pop reg`.
    pub fn put_pop(&mut self, reg: Reg) {
        if reg.ext() {
            self.put_u8(0x41);
        }
        self.put_u8(0x58 + reg.low());
    }

    /// `pushfq`.
    pub fn put_pushfq(&mut self) {
        self.put_u8(0x9c);
    }

    /// `popfq`.
    pub fn put_popfq(&mut self) {
        self.put_u8(0x9d);
    }

    /// `call reg`.
    pub fn put_call_reg(&mut self, reg: Reg) {
        if reg.ext() {
            self.put_u8(0x41);
        }
        self.put_bytes(&[0xff, 0xd0 | reg.low()]);
    }

    /// `ret`.
    pub fn put_ret(&mut self) {
        self.put_u8(0xc3);
    }

    /// `movaps [rsp+disp], xmmN` (legacy SSE: leaves the upper YMM bits alone).
    pub fn put_movaps_store(&mut self, disp: i32, xmm: u8) {
        if xmm >= 8 {
            self.put_u8(0x44);
        }
        self.put_bytes(&[0x0f, 0x29]);
        self.put_modrm_mem(xmm, Reg::Rsp, disp);
    }

    /// `movaps xmmN, [rsp+disp]`.
    pub fn put_movaps_load(&mut self, xmm: u8, disp: i32) {
        if xmm >= 8 {
            self.put_u8(0x44);
        }
        self.put_bytes(&[0x0f, 0x28]);
        self.put_modrm_mem(xmm, Reg::Rsp, disp);
    }

    /// `vmovaps [rsp+disp], ymmN` (VEX.256; `[rsp+disp]` must be 32-byte aligned).
    pub fn put_vmovaps_store(&mut self, disp: i32, ymm: u8) {
        self.put_vex256(ymm, 0x29);
        self.put_modrm_mem(ymm, Reg::Rsp, disp);
    }

    /// `vmovaps ymmN, [rsp+disp]`.
    pub fn put_vmovaps_load(&mut self, ymm: u8, disp: i32) {
        self.put_vex256(ymm, 0x28);
        self.put_modrm_mem(ymm, Reg::Rsp, disp);
    }

    fn put_vex256(&mut self, reg: u8, op: u8) {
        // Two-byte VEX: C5, [R̄ vvvv̄=1111 L=1 pp=00], opcode (map 0F implied).
        let r_bar = if reg >= 8 { 0 } else { 0x80 };
        self.put_bytes(&[0xc5, r_bar | 0x78 | 0x04, op]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumps_pick_the_short_form() {
        let mut w = Writer::new(0x1000);
        w.put_jmp(0x1010); // jmp 0x1010          (rel8)
        w.put_jmp(0x2000); // jmp 0x2000          (rel32)
        w.put_jmp(0x1_0000_1000); // jmp [rip+0]; .quad 0x100001000
        assert_eq!(
            w.code(),
            &[
                0xeb, 0x0e, // jmp short 0x1010
                0xe9, 0xf9, 0x0f, 0, 0, // jmp 0x2000
                0xff, 0x25, 0, 0, 0, 0, // jmp [rip+0]
                0x00, 0x10, 0x00, 0x00, 0x01, 0, 0, 0, // .quad 0x1_0000_1000
            ]
        );
    }

    #[test]
    fn jcc_and_call_forms() {
        let mut w = Writer::new(0x1000);
        w.put_jcc(0x4, 0x1000); // je 0x1000 (rel8 -2)
        w.put_jcc(0x5, 0x5000); // jne 0x5000 (rel32)
        w.put_jcc(0x4, 0x7_0000_0000); // jne +14; jmp [rip+0]; .quad
        w.put_call(0x1000);
        let c = w.code();
        assert_eq!(&c[..2], &[0x74, 0xfe]);
        assert_eq!(&c[2..8], &[0x0f, 0x85, 0xf8, 0x3f, 0, 0]);
        assert_eq!(&c[8..10], &[0x75, 14]);
        assert_eq!(&c[10..16], &[0xff, 0x25, 0, 0, 0, 0]);
        assert_eq!(&c[16..24], &0x7_0000_0000u64.to_le_bytes());
        // call 0x1000 from 0x1018: e8 rel32 = 0x1000 - 0x101d
        assert_eq!(&c[24..29], &[0xe8, 0xe3, 0xff, 0xff, 0xff]);
    }

    #[test]
    fn moves_and_pushes() {
        let mut w = Writer::new(0);
        w.put_store(Reg::Rsp, 0x98, Reg::Rax); // mov [rsp+0x98], rax
        w.put_store(Reg::Rsp, 0, Reg::R15); // mov [rsp], r15
        w.put_load(Reg::R11, Reg::Rsp, 0x30); // mov r11, [rsp+0x30]
        w.put_load(Reg::Rcx, Reg::Rax, -16); // mov rcx, [rax-16]
        w.put_push_u64(0x7fff_1234_5678); // push 0x12345678; mov dword [rsp+4], 0x7fff
        w.put_store_imm(Reg::Rsp, 0x78, -1); // mov qword [rsp+0x78], -1
        w.put_mov(Reg::Rdi, Reg::Rsp); // mov rdi, rsp
        assert_eq!(
            w.code(),
            &[
                0x48, 0x89, 0x84, 0x24, 0x98, 0, 0, 0, // mov [rsp+0x98], rax
                0x4c, 0x89, 0x3c, 0x24, // mov [rsp], r15
                0x4c, 0x8b, 0x5c, 0x24, 0x30, // mov r11, [rsp+0x30]
                0x48, 0x8b, 0x48, 0xf0, // mov rcx, [rax-16]
                0x68, 0x78, 0x56, 0x34, 0x12, // push 0x12345678
                0xc7, 0x44, 0x24, 0x04, 0xff, 0x7f, 0, 0, // mov dword [rsp+4], 0x7fff
                0x48, 0xc7, 0x44, 0x24, 0x78, 0xff, 0xff, 0xff,
                0xff, // mov qword [rsp+0x78], -1
                0x48, 0x89, 0xe7, // mov rdi, rsp
            ]
        );
    }

    #[test]
    fn vector_moves() {
        let mut w = Writer::new(0);
        w.put_movaps_store(0xc0, 9); // movaps [rsp+0xc0], xmm9
        w.put_vmovaps_store(0xc0, 3); // vmovaps [rsp+0xc0], ymm3
        w.put_vmovaps_load(12, 0x40); // vmovaps ymm12, [rsp+0x40]
        assert_eq!(
            w.code(),
            &[
                0x44, 0x0f, 0x29, 0x8c, 0x24, 0xc0, 0, 0, 0, // movaps [rsp+0xc0], xmm9
                0xc5, 0xfc, 0x29, 0x9c, 0x24, 0xc0, 0, 0, 0, // vmovaps [rsp+0xc0], ymm3
                0xc5, 0x7c, 0x28, 0x64, 0x24, 0x40, // vmovaps ymm12, [rsp+0x40]
            ]
        );
    }
}
