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
        if bytes.len() % 8 != 0 {
            return None;
        }
        Some(
            bytes
                .chunks_exact(8)
                .map(|c| Insn::decode(c.try_into().expect("chunk of 8")))
                .collect(),
        )
    }
}
