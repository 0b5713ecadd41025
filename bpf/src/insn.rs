//! The eBPF instruction set: one 8-byte instruction, opcode classes and fields.

/// One decoded 8-byte eBPF instruction (`lddw` spans two).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Insn {
    /// Opcode byte.
    pub op: u8,
    /// Destination register (low nibble of byte 1).
    pub dst: u8,
    /// Source register (high nibble of byte 1).
    pub src: u8,
    /// Signed 16-bit offset.
    pub off: i16,
    /// Signed 32-bit immediate.
    pub imm: i32,
}

impl Insn {
    /// Decodes one little-endian instruction.
    pub fn decode(b: [u8; 8]) -> Self {
        Insn {
            op: b[0],
            dst: b[1] & 0x0f,
            src: b[1] >> 4,
            off: i16::from_le_bytes([b[2], b[3]]),
            imm: i32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        }
    }

    /// Encodes one little-endian instruction.
    pub fn encode(&self) -> [u8; 8] {
        let o = self.off.to_le_bytes();
        let i = self.imm.to_le_bytes();
        [
            self.op,
            (self.dst & 0x0f) | (self.src << 4),
            o[0],
            o[1],
            i[0],
            i[1],
            i[2],
            i[3],
        ]
    }

    /// Decodes a whole program; `None` if the length is not a multiple of 8.
    pub fn decode_all(bytes: &[u8]) -> Option<alloc::vec::Vec<Insn>> {
        if !bytes.len().is_multiple_of(8) {
            return None;
        }
        Some(
            bytes
                .chunks_exact(8)
                .filter_map(|c| c.try_into().ok().map(Insn::decode))
                .collect(),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Opcode fields (RFC 9669 plus the Linux v4 extensions).
// ---------------------------------------------------------------------------------------------

/// Instruction class: the low three bits of the opcode.
pub const CLASS_MASK: u8 = 0x07;
/// Class: load from immediate (`lddw`).
pub const BPF_LD: u8 = 0x00;
/// Class: load from memory into a register.
pub const BPF_LDX: u8 = 0x01;
/// Class: store an immediate to memory.
pub const BPF_ST: u8 = 0x02;
/// Class: store a register to memory (and atomics).
pub const BPF_STX: u8 = 0x03;
/// Class: 32-bit arithmetic.
pub const BPF_ALU: u8 = 0x04;
/// Class: 64-bit jumps, calls, exit.
pub const BPF_JMP: u8 = 0x05;
/// Class: 32-bit compare jumps (and `ja32`).
pub const BPF_JMP32: u8 = 0x06;
/// Class: 64-bit arithmetic.
pub const BPF_ALU64: u8 = 0x07;

/// Size field of load/store opcodes.
pub const SIZE_MASK: u8 = 0x18;
/// Size: 32 bits.
pub const BPF_W: u8 = 0x00;
/// Size: 16 bits.
pub const BPF_H: u8 = 0x08;
/// Size: 8 bits.
pub const BPF_B: u8 = 0x10;
/// Size: 64 bits.
pub const BPF_DW: u8 = 0x18;

/// Mode field of load/store opcodes.
pub const MODE_MASK: u8 = 0xe0;
/// Mode: immediate (`lddw`).
pub const BPF_IMM: u8 = 0x00;
/// Mode: legacy packet access (absolute); not supported.
pub const BPF_ABS: u8 = 0x20;
/// Mode: legacy packet access (indirect); not supported.
pub const BPF_IND: u8 = 0x40;
/// Mode: regular memory access.
pub const BPF_MEM: u8 = 0x60;
/// Mode: sign-extending load (v4).
pub const BPF_MEMSX: u8 = 0x80;
/// Mode: atomic read-modify-write (the operation is in `imm`).
pub const BPF_ATOMIC: u8 = 0xc0;

/// Source bit of ALU/JMP opcodes.
pub const SRC_MASK: u8 = 0x08;
/// Source: the immediate.
pub const BPF_K: u8 = 0x00;
/// Source: the `src` register.
pub const BPF_X: u8 = 0x08;

/// Operation field of ALU/JMP opcodes.
pub const OP_MASK: u8 = 0xf0;
/// ALU: `dst += src`.
pub const BPF_ADD: u8 = 0x00;
/// ALU: `dst -= src`.
pub const BPF_SUB: u8 = 0x10;
/// ALU: `dst *= src`.
pub const BPF_MUL: u8 = 0x20;
/// ALU: `dst /= src` (signed when `off == 1`).
pub const BPF_DIV: u8 = 0x30;
/// ALU: `dst |= src`.
pub const BPF_OR: u8 = 0x40;
/// ALU: `dst &= src`.
pub const BPF_AND: u8 = 0x50;
/// ALU: `dst <<= src`.
pub const BPF_LSH: u8 = 0x60;
/// ALU: `dst >>= src` (logical).
pub const BPF_RSH: u8 = 0x70;
/// ALU: `dst = -dst`.
pub const BPF_NEG: u8 = 0x80;
/// ALU: `dst %= src` (signed when `off == 1`).
pub const BPF_MOD: u8 = 0x90;
/// ALU: `dst ^= src`.
pub const BPF_XOR: u8 = 0xa0;
/// ALU: `dst = src` (sign-extending when `off` is 8, 16 or 32).
pub const BPF_MOV: u8 = 0xb0;
/// ALU: `dst >>= src` (arithmetic).
pub const BPF_ARSH: u8 = 0xc0;
/// ALU: byte swap (`le`/`be` in class ALU, unconditional `bswap` in class ALU64).
pub const BPF_END: u8 = 0xd0;
/// `BPF_END` source bit: to little endian.
pub const BPF_TO_LE: u8 = 0x00;
/// `BPF_END` source bit: to big endian.
pub const BPF_TO_BE: u8 = 0x08;

/// JMP: unconditional jump (`off`; `imm` in class JMP32).
pub const BPF_JA: u8 = 0x00;
/// JMP: `==`.
pub const BPF_JEQ: u8 = 0x10;
/// JMP: unsigned `>`.
pub const BPF_JGT: u8 = 0x20;
/// JMP: unsigned `>=`.
pub const BPF_JGE: u8 = 0x30;
/// JMP: `dst & src != 0`.
pub const BPF_JSET: u8 = 0x40;
/// JMP: `!=`.
pub const BPF_JNE: u8 = 0x50;
/// JMP: signed `>`.
pub const BPF_JSGT: u8 = 0x60;
/// JMP: signed `>=`.
pub const BPF_JSGE: u8 = 0x70;
/// JMP: call (helper by `imm`, local with `src = 1`, register with `BPF_X`).
pub const BPF_CALL: u8 = 0x80;
/// JMP: return from the function (or the program).
pub const BPF_EXIT: u8 = 0x90;
/// JMP: unsigned `<`.
pub const BPF_JLT: u8 = 0xa0;
/// JMP: unsigned `<=`.
pub const BPF_JLE: u8 = 0xb0;
/// JMP: signed `<`.
pub const BPF_JSLT: u8 = 0xc0;
/// JMP: signed `<=`.
pub const BPF_JSLE: u8 = 0xd0;

/// `lddw` `src`: plain 64-bit immediate.
pub const PSEUDO_NONE: u8 = 0;
/// `lddw` `src`: address of map `imm` (`BPF_PSEUDO_MAP_FD`, here a map index).
pub const PSEUDO_MAP_FD: u8 = 1;
/// `lddw` `src`: address of map `imm`'s first value plus the next `imm`
/// (`BPF_PSEUDO_MAP_VALUE`).
pub const PSEUDO_MAP_VALUE: u8 = 2;
/// `call` `src`: pc-relative bpf-to-bpf call (`BPF_PSEUDO_CALL`).
pub const PSEUDO_CALL: u8 = 1;

/// Atomic `imm`: add.
pub const ATOMIC_ADD: i32 = 0x00;
/// Atomic `imm`: or.
pub const ATOMIC_OR: i32 = 0x40;
/// Atomic `imm`: and.
pub const ATOMIC_AND: i32 = 0x50;
/// Atomic `imm`: xor.
pub const ATOMIC_XOR: i32 = 0xa0;
/// Atomic `imm` flag: return the old value in `src`.
pub const ATOMIC_FETCH: i32 = 0x01;
/// Atomic `imm`: exchange (always fetches).
pub const ATOMIC_XCHG: i32 = 0xe0 | ATOMIC_FETCH;
/// Atomic `imm`: compare `r0` and exchange (always fetches into `r0`).
pub const ATOMIC_CMPXCHG: i32 = 0xf0 | ATOMIC_FETCH;

/// Bytes of stack each (bpf-to-bpf) frame gets; `r10` points just past its end.
pub const STACK_SIZE: usize = 512;
/// Deepest bpf-to-bpf call chain (frames including the main one).
pub const MAX_CALL_DEPTH: usize = 8;
/// Number of registers, `r0` to `r10`.
pub const NUM_REGS: u8 = 11;
/// The frame pointer register.
pub const FP: u8 = 10;

/// Full opcodes that are used by name in more than one back end.
pub mod op {
    use super::*;
    /// `lddw dst, imm64` (first half).
    pub const LDDW: u8 = BPF_LD | BPF_IMM | BPF_DW;
    /// `call imm` (helper or local).
    pub const CALL: u8 = BPF_JMP | BPF_CALL;
    /// `callx src`.
    pub const CALLX: u8 = BPF_JMP | BPF_CALL | BPF_X;
    /// `exit`.
    pub const EXIT: u8 = BPF_JMP | BPF_EXIT;
    /// `ja off`.
    pub const JA: u8 = BPF_JMP | BPF_JA;
    /// `ja32 imm`.
    pub const JA32: u8 = BPF_JMP32 | BPF_JA;
}

/// Width in bytes of a load/store size field.
pub fn size_bytes(op: u8) -> usize {
    match op & SIZE_MASK {
        BPF_W => 4,
        BPF_H => 2,
        BPF_B => 1,
        _ => 8,
    }
}

impl Insn {
    /// Builds an instruction from its fields.
    pub const fn new(op: u8, dst: u8, src: u8, off: i16, imm: i32) -> Self {
        Insn {
            op,
            dst,
            src,
            off,
            imm,
        }
    }

    /// The opcode class (`BPF_ALU64`, `BPF_JMP`, ...).
    pub fn class(&self) -> u8 {
        self.op & CLASS_MASK
    }

    /// Whether this is the first half of a two-slot `lddw`.
    pub fn is_lddw(&self) -> bool {
        self.op == op::LDDW
    }

    /// For a jump with a pc-relative target (`ja`, `ja32`, conditional jumps, local calls):
    /// the target index given this instruction's index `pc`. `None` for anything else.
    pub fn jump_target(&self, pc: usize) -> Option<i64> {
        let class = self.class();
        if class != BPF_JMP && class != BPF_JMP32 {
            return None;
        }
        let next = pc as i64 + 1;
        match self.op & OP_MASK {
            BPF_EXIT => None,
            BPF_CALL => {
                if class == BPF_JMP && self.op & SRC_MASK == BPF_K && self.src == PSEUDO_CALL {
                    Some(next + self.imm as i64)
                } else {
                    None
                }
            }
            BPF_JA if class == BPF_JMP32 => Some(next + self.imm as i64),
            _ => Some(next + self.off as i64),
        }
    }

    /// Whether this is a pc-relative bpf-to-bpf call.
    pub fn is_local_call(&self) -> bool {
        self.op == op::CALL && self.src == PSEUDO_CALL
    }
}
