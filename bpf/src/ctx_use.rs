//! What a program reads of its context, so that a trampoline can fill only that.
//!
//! The context pointer reaches a program only in `r1` at entry. [`ctx_slots_read`] follows
//! its copies through the straight-line code at the start of the program, until none is
//! left: every later instruction then runs without any way to reach the context. Anything
//! it cannot follow exactly — a copy of the pointer kept across a branch or a jump target,
//! stored to memory, used in arithmetic, handed to a helper other than
//! `bpf_get_attach_cookie`/`bpf_get_func_ip` or to a local function — answers `None`
//! ("may read anything"). Coverage-style probes, which take their cookie first thing,
//! answer at their first instruction.

use crate::helpers::{GET_ATTACH_COOKIE, GET_FUNC_IP};
use crate::insn::*;

/// The 8-byte slots of the context (bit `i` = bytes `8i..8i+8`) the program may read, or
/// `None` when that cannot be bounded. `bpf_get_attach_cookie(ctx)` and
/// `bpf_get_func_ip(ctx)` count as reads of `cookie_off` and `func_ip_off` (byte offsets
/// of those fields in the context).
pub fn ctx_slots_read(insns: &[Insn], cookie_off: usize, func_ip_off: usize) -> Option<u64> {
    let mut is_target = alloc::vec![false; insns.len() + 1];
    for (pc, i) in insns.iter().enumerate() {
        if let Some(t) = i.jump_target(pc)
            && let Some(slot) = usize::try_from(t).ok().and_then(|t| is_target.get_mut(t))
        {
            *slot = true;
        }
    }
    let slot_bits = |off: i64, len: i64| -> Option<u64> {
        if off < 0 || off + len > 64 * 8 {
            return None;
        }
        let (a, b) = (off / 8, (off + len - 1) / 8);
        Some((a..=b).fold(0u64, |m, k| m | 1 << k))
    };
    // Registers holding the context pointer.
    let mut held: u16 = 1 << 1;
    let mut slots = 0u64;
    let mut pc = 0;
    while held != 0 {
        let i = *insns.get(pc)?;
        if is_target.get(pc).copied().unwrap_or(false) {
            return None;
        }
        let has = |r: u8| r < 16 && held & (1 << r) != 0;
        let dst_bit = 1u16 << (i.dst & 15);
        match i.class() {
            BPF_LD if i.is_lddw() => {
                held &= !dst_bit;
                pc += 2;
                continue;
            }
            BPF_ALU | BPF_ALU64 if i.op & 0xf0 == BPF_MOV => {
                let from_src = i.op & BPF_X != 0 && has(i.src);
                if !from_src {
                    held &= !dst_bit;
                } else if i.op == BPF_ALU64 | BPF_MOV | BPF_X && i.off == 0 {
                    held |= dst_bit;
                } else {
                    return None; // a truncated or sign-extended copy
                }
            }
            BPF_ALU | BPF_ALU64 => {
                let src_used = i.op & BPF_X != 0 && (i.op & 0xf0) != BPF_END;
                if has(i.dst) || (src_used && has(i.src)) {
                    return None;
                }
            }
            BPF_LDX => {
                if has(i.src) {
                    let len = size_bytes(i.op) as i64;
                    slots |= slot_bits(i.off as i64, len)?;
                }
                held &= !dst_bit;
            }
            BPF_ST | BPF_STX => {
                if has(i.dst) || (i.class() == BPF_STX && has(i.src)) {
                    return None;
                }
                // Atomics with fetch write `src` (or r0 for cmpxchg): not the context.
                held &= !(1 << (i.src & 15) | 1);
            }
            BPF_JMP if i.op == op::CALL && i.src == 0 => {
                let id = i.imm as u32;
                let args = (held >> 1) & 0x1f;
                if args != 0 {
                    let field = match id {
                        GET_ATTACH_COOKIE => cookie_off,
                        GET_FUNC_IP => func_ip_off,
                        _ => return None,
                    };
                    if args != 1 {
                        return None;
                    }
                    slots |= slot_bits(field as i64, 8)?;
                }
                held &= !0x3f; // r0..r5 do not survive a call
            }
            BPF_JMP if i.op == op::EXIT => {
                return (!has(0)).then_some(slots);
            }
            // Branches, local and indirect calls: not followed.
            _ => return None,
        }
        pc += 1;
    }
    Some(slots)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::asm::assemble;

    const COOKIE: usize = 168;
    const FUNC_IP: usize = 176;

    fn reads(text: &str) -> Option<u64> {
        ctx_slots_read(&assemble(text).unwrap(), COOKIE, FUNC_IP)
    }

    #[test]
    fn cookie_and_func_ip_helpers_and_plain_loads() {
        assert_eq!(reads("call 174\nexit"), Some(1 << 21));
        assert_eq!(
            reads("mov %r6, %r1\ncall 174\nmov %r1, %r6\ncall 173\nexit"),
            Some(3 << 21)
        );
        // PT_REGS_PARM1 (rdi, slot 14) and a 4-byte read across nothing else.
        assert_eq!(
            reads("ldxdw %r2, [%r1+112]\nldxw %r3, [%r1+4]\nmov %r1, 0\nexit"),
            Some(1 << 14 | 1)
        );
        // The pointer is dead once r1 is overwritten: what follows is not followed.
        assert_eq!(
            reads("mov %r1, 0\njeq %r1, 0, out\nmov %r0, 1\nout:\nexit"),
            Some(0)
        );
    }

    #[test]
    fn anything_not_followed_is_unbounded() {
        for text in [
            // kept across a branch
            "jeq %r2, 0, out\nmov %r0, 1\nout:\nexit",
            // stored to the stack
            "stxdw [%r10-8], %r1\nmov %r1, 0\nexit",
            // arithmetic on the pointer
            "add %r1, 8\nldxdw %r0, [%r1]\nexit",
            // passed to another helper
            "call 1\nexit",
            // a local call with it in r1
            "call local f\nexit\nf:\nmov %r0, 0\nexit",
            // returned
            "mov %r0, %r1\nexit",
            // a negative offset
            "ldxdw %r0, [%r1-8]\nmov %r0, 0\nexit",
            // the first instruction is a jump target
            "top:\nldxdw %r2, [%r1]\nja top",
        ] {
            assert_eq!(reads(text), None, "{text}");
        }
    }
}
