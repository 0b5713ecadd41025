//! The reference interpreter.
//!
//! It runs a program with `r1`/`r2` as inputs, a fresh zeroed 512-byte stack per frame and
//! bpf-to-bpf calls that save `r6`–`r9` and `r10`. It checks only what is cheap and needed to
//! stay in the program (pc range, known opcodes, known helpers and maps, call depth); memory
//! safety is the verifier's job, which is why [`run`] is `unsafe`.
//!
//! Edge semantics follow RFC 9669: division by zero gives 0, modulo by zero leaves `dst`
//! unchanged (truncated to 32 bits in the 32-bit class), `INT_MIN / -1` is `INT_MIN` and
//! `INT_MIN % -1` is 0, shift counts are masked to the operand width.

use alloc::vec;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::env::Env;
use crate::insn::*;

/// Why the interpreter stopped without a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The program counter left the program.
    #[error("insn {pc}: pc out of range (program has {len} instructions)")]
    PcOutOfRange {
        /// Index of the offending instruction (or the target).
        pc: usize,
        /// Program length.
        len: usize,
    },
    /// An opcode (or opcode/field combination) the VM does not implement.
    #[error("insn {pc}: unknown opcode {op:#04x}")]
    UnknownOpcode {
        /// Instruction index.
        pc: usize,
        /// The opcode byte.
        op: u8,
    },
    /// A call to a helper the [`Env`] does not have.
    #[error("insn {pc}: unknown helper {id}")]
    UnknownHelper {
        /// Instruction index.
        pc: usize,
        /// Helper id.
        id: u64,
    },
    /// A `lddw` map reference to a map index the [`Env`] does not have.
    #[error("insn {pc}: unknown map index {index}")]
    UnknownMap {
        /// Instruction index.
        pc: usize,
        /// Map index.
        index: u32,
    },
    /// bpf-to-bpf calls nested deeper than [`MAX_CALL_DEPTH`].
    #[error("insn {pc}: call depth exceeds {MAX_CALL_DEPTH}")]
    CallDepth {
        /// Instruction index.
        pc: usize,
    },
    /// [`run_guarded`]'s guard refused a memory access (nothing was accessed).
    #[error("insn {pc}: {len}-byte {} at {addr:#x} refused by the guard", if *.write { "write" } else { "read" })]
    Refused {
        /// Instruction index.
        pc: usize,
        /// Address.
        addr: u64,
        /// Bytes.
        len: usize,
        /// Whether it was a write (atomics are both).
        write: bool,
    },
}

/// What [`run_guarded`] asks before every load, store and atomic: address, length, and
/// whether it writes (an atomic asks for a read, then a write). `false` stops the run.
pub type Guard<'a> = &'a mut dyn FnMut(u64, usize, bool) -> bool;

struct Frame {
    ret_pc: usize,
    saved: [u64; 5],
}

/// Runs `insns` with `r1` and `r2` as inputs and returns `r0`.
///
/// # Safety
///
/// Every memory access the program makes must be valid: the program must have passed the
/// [`verifier`](crate::verifier), and the pointers it is given (`r1`, `r2` when used as
/// pointers, the map addresses in `env`) must be valid for the accesses it makes. The
/// helpers in `env` must be safe to call with the arguments the program passes.
pub unsafe fn run(insns: &[Insn], env: &Env, r1: u64, r2: u64) -> Result<u64, Error> {
    let mut stack = vec![0u64; STACK_SIZE * MAX_CALL_DEPTH / 8];
    // SAFETY: forwarded; a guard that allows everything.
    unsafe { run_guarded(insns, env, r1, r2, &mut stack, &mut |_, _, _| true) }
}

/// [`run`] on a given stack (the frames grow down from its end; it should hold
/// `STACK_SIZE * MAX_CALL_DEPTH` bytes), asking `guard` before every memory access. A test
/// harness uses it to check that every access a verified program makes is to memory it was
/// given.
///
/// # Safety
///
/// As [`run`], for the accesses the guard allows; the helpers are called as they are.
pub unsafe fn run_guarded(
    insns: &[Insn],
    env: &Env,
    r1: u64,
    r2: u64,
    stack: &mut [u64],
    guard: Guard<'_>,
) -> Result<u64, Error> {
    let stack_top = stack.as_mut_ptr() as u64 + (stack.len() * 8) as u64;
    let mut frames: alloc::vec::Vec<Frame> = alloc::vec::Vec::with_capacity(MAX_CALL_DEPTH);
    let mut reg = [0u64; 11];
    reg[1] = r1;
    reg[2] = r2;
    reg[10] = stack_top;
    let len = insns.len();
    let mut pc = 0usize;
    loop {
        let Some(&i) = insns.get(pc) else {
            return Err(Error::PcOutOfRange { pc, len });
        };
        let cur = pc;
        pc += 1;
        let d = i.dst as usize & 0x0f;
        let s = i.src as usize & 0x0f;
        if d > 10 || s > 10 {
            return Err(Error::UnknownOpcode { pc: cur, op: i.op });
        }
        let bad = || Error::UnknownOpcode { pc: cur, op: i.op };
        match i.class() {
            BPF_ALU | BPF_ALU64 => {
                let is64 = i.class() == BPF_ALU64;
                let code = i.op & OP_MASK;
                if code == BPF_END {
                    let v = reg[d];
                    if is64 && i.op & SRC_MASK != 0 {
                        return Err(bad());
                    }
                    let swap = is64 || i.op & SRC_MASK == BPF_TO_BE;
                    reg[d] = match (swap, i.imm) {
                        (false, 16) => v as u16 as u64,
                        (false, 32) => v as u32 as u64,
                        (false, 64) => v,
                        (true, 16) => (v as u16).swap_bytes() as u64,
                        (true, 32) => (v as u32).swap_bytes() as u64,
                        (true, 64) => v.swap_bytes(),
                        _ => return Err(bad()),
                    };
                    continue;
                }
                let src = if i.op & SRC_MASK == BPF_X {
                    reg[s]
                } else {
                    i.imm as i64 as u64
                };
                reg[d] = if is64 {
                    alu64(code, i.off, reg[d], src).ok_or_else(bad)?
                } else {
                    alu32(code, i.off, reg[d] as u32, src as u32).ok_or_else(bad)? as u64
                };
            }
            BPF_LD => {
                if !i.is_lddw() {
                    return Err(bad());
                }
                let Some(next) = insns.get(pc) else {
                    return Err(Error::PcOutOfRange { pc, len });
                };
                pc += 1;
                let map = |addrs: &[u64]| {
                    addrs
                        .get(i.imm as u32 as usize)
                        .copied()
                        .ok_or(Error::UnknownMap {
                            pc: cur,
                            index: i.imm as u32,
                        })
                };
                reg[d] = match i.src {
                    PSEUDO_NONE => (i.imm as u32 as u64) | ((next.imm as u32 as u64) << 32),
                    PSEUDO_MAP_FD => map(env.map_addrs)?,
                    PSEUDO_MAP_VALUE => {
                        map(env.map_value_addrs)?.wrapping_add(next.imm as u32 as u64)
                    }
                    _ => return Err(bad()),
                };
            }
            BPF_LDX => {
                let addr = reg[s].wrapping_add(i.off as i64 as u64);
                let len = size_bytes(i.op);
                if !guard(addr, len, false) {
                    return Err(Error::Refused {
                        pc: cur,
                        addr,
                        len,
                        write: false,
                    });
                }
                // SAFETY: the caller guarantees the verified program's accesses are valid.
                reg[d] = unsafe {
                    match (i.op & MODE_MASK, i.op & SIZE_MASK) {
                        (BPF_MEM, BPF_B) => (addr as *const u8).read_unaligned() as u64,
                        (BPF_MEM, BPF_H) => (addr as *const u16).read_unaligned() as u64,
                        (BPF_MEM, BPF_W) => (addr as *const u32).read_unaligned() as u64,
                        (BPF_MEM, BPF_DW) => (addr as *const u64).read_unaligned(),
                        (BPF_MEMSX, BPF_B) => (addr as *const i8).read_unaligned() as i64 as u64,
                        (BPF_MEMSX, BPF_H) => (addr as *const i16).read_unaligned() as i64 as u64,
                        (BPF_MEMSX, BPF_W) => (addr as *const i32).read_unaligned() as i64 as u64,
                        _ => return Err(bad()),
                    }
                };
            }
            BPF_ST | BPF_STX => {
                let addr = reg[d].wrapping_add(i.off as i64 as u64);
                let mode = i.op & MODE_MASK;
                let len = size_bytes(i.op);
                let atomic_op = mode == BPF_ATOMIC && i.class() == BPF_STX;
                for write in [false, true] {
                    if (write || atomic_op) && !guard(addr, len, write) {
                        return Err(Error::Refused {
                            pc: cur,
                            addr,
                            len,
                            write,
                        });
                    }
                }
                if atomic_op {
                    // SAFETY: as above; the address is valid for the access size.
                    unsafe { atomic(i, addr, &mut reg).ok_or_else(bad)? };
                    continue;
                }
                if mode != BPF_MEM {
                    return Err(bad());
                }
                let v = if i.class() == BPF_ST {
                    i.imm as i64 as u64
                } else {
                    reg[s]
                };
                // SAFETY: the caller guarantees the verified program's accesses are valid.
                unsafe {
                    match i.op & SIZE_MASK {
                        BPF_B => (addr as *mut u8).write_unaligned(v as u8),
                        BPF_H => (addr as *mut u16).write_unaligned(v as u16),
                        BPF_W => (addr as *mut u32).write_unaligned(v as u32),
                        _ => (addr as *mut u64).write_unaligned(v),
                    }
                }
            }
            class @ (BPF_JMP | BPF_JMP32) => {
                let code = i.op & OP_MASK;
                match (class, code) {
                    (BPF_JMP, BPF_EXIT) => {
                        if i.op != op::EXIT {
                            return Err(bad());
                        }
                        match frames.pop() {
                            None => return Ok(reg[0]),
                            Some(f) => {
                                reg[6..11].copy_from_slice(&f.saved);
                                pc = f.ret_pc;
                            }
                        }
                        continue;
                    }
                    (BPF_JMP, BPF_CALL) => {
                        if i.is_local_call() {
                            if frames.len() + 1 >= MAX_CALL_DEPTH {
                                return Err(Error::CallDepth { pc: cur });
                            }
                            let mut saved = [0u64; 5];
                            saved.copy_from_slice(&reg[6..11]);
                            frames.push(Frame { ret_pc: pc, saved });
                            reg[10] -= STACK_SIZE as u64;
                            pc = (pc as i64 + i.imm as i64) as usize;
                            continue;
                        }
                        let id = match (i.op, i.src) {
                            (op::CALL, 0) => i.imm as u32 as u64,
                            (op::CALLX, _) => reg[d],
                            _ => return Err(bad()),
                        };
                        let f = u32::try_from(id)
                            .ok()
                            .and_then(|id| env.helper(id))
                            .ok_or(Error::UnknownHelper { pc: cur, id })?;
                        // SAFETY: the caller guarantees the helpers are safe to call with
                        // the program's arguments.
                        reg[0] = unsafe { f(reg[1], reg[2], reg[3], reg[4], reg[5]) };
                        if env.unwind_helper.is_some_and(|u| u as u64 == id) && reg[0] == 0 {
                            return Ok(0);
                        }
                        continue;
                    }
                    (BPF_JMP, BPF_JA) => {
                        if i.op != op::JA {
                            return Err(bad());
                        }
                        pc = (pc as i64 + i.off as i64) as usize;
                        continue;
                    }
                    (BPF_JMP32, BPF_JA) => {
                        if i.op != op::JA32 {
                            return Err(bad());
                        }
                        pc = (pc as i64 + i.imm as i64) as usize;
                        continue;
                    }
                    (_, BPF_CALL | BPF_EXIT) => return Err(bad()),
                    _ => {}
                }
                let (a, b) = if i.op & SRC_MASK == BPF_X {
                    (reg[d], reg[s])
                } else {
                    (reg[d], i.imm as i64 as u64)
                };
                let taken = if class == BPF_JMP {
                    cond64(code, a, b)
                } else {
                    cond32(code, a as u32, b as u32)
                }
                .ok_or_else(bad)?;
                if taken {
                    pc = (pc as i64 + i.off as i64) as usize;
                }
            }
            _ => return Err(bad()),
        }
    }
}

/// One 64-bit ALU operation; `None` for an unknown operation.
pub fn alu64(code: u8, off: i16, dst: u64, src: u64) -> Option<u64> {
    let signed = off == 1;
    if off != 0 && !(signed && matches!(code, BPF_DIV | BPF_MOD)) && code != BPF_MOV {
        return None;
    }
    Some(match code {
        BPF_ADD => dst.wrapping_add(src),
        BPF_SUB => dst.wrapping_sub(src),
        BPF_MUL => dst.wrapping_mul(src),
        BPF_DIV if signed => {
            if src == 0 {
                0
            } else {
                (dst as i64).wrapping_div(src as i64) as u64
            }
        }
        BPF_DIV => dst.checked_div(src).unwrap_or(0),
        BPF_MOD if signed => {
            if src == 0 {
                dst
            } else {
                (dst as i64).wrapping_rem(src as i64) as u64
            }
        }
        BPF_MOD => dst.checked_rem(src).unwrap_or(dst),
        BPF_OR => dst | src,
        BPF_AND => dst & src,
        BPF_XOR => dst ^ src,
        BPF_LSH => dst.wrapping_shl(src as u32 & 63),
        BPF_RSH => dst.wrapping_shr(src as u32 & 63),
        BPF_ARSH => ((dst as i64) >> (src & 63)) as u64,
        BPF_NEG => (dst as i64).wrapping_neg() as u64,
        BPF_MOV => match off {
            0 => src,
            8 => src as i8 as i64 as u64,
            16 => src as i16 as i64 as u64,
            32 => src as i32 as i64 as u64,
            _ => return None,
        },
        _ => return None,
    })
}

/// One 32-bit ALU operation; `None` for an unknown operation.
pub fn alu32(code: u8, off: i16, dst: u32, src: u32) -> Option<u32> {
    let signed = off == 1;
    if off != 0 && !(signed && matches!(code, BPF_DIV | BPF_MOD)) && code != BPF_MOV {
        return None;
    }
    Some(match code {
        BPF_ADD => dst.wrapping_add(src),
        BPF_SUB => dst.wrapping_sub(src),
        BPF_MUL => dst.wrapping_mul(src),
        BPF_DIV if signed => {
            if src == 0 {
                0
            } else {
                (dst as i32).wrapping_div(src as i32) as u32
            }
        }
        BPF_DIV => dst.checked_div(src).unwrap_or(0),
        BPF_MOD if signed => {
            if src == 0 {
                dst
            } else {
                (dst as i32).wrapping_rem(src as i32) as u32
            }
        }
        BPF_MOD => dst.checked_rem(src).unwrap_or(dst),
        BPF_OR => dst | src,
        BPF_AND => dst & src,
        BPF_XOR => dst ^ src,
        BPF_LSH => dst.wrapping_shl(src & 31),
        BPF_RSH => dst.wrapping_shr(src & 31),
        BPF_ARSH => ((dst as i32) >> (src & 31)) as u32,
        BPF_NEG => (dst as i32).wrapping_neg() as u32,
        BPF_MOV => match off {
            0 => src,
            8 => src as i8 as i32 as u32,
            16 => src as i16 as i32 as u32,
            _ => return None,
        },
        _ => return None,
    })
}

fn cond64(code: u8, a: u64, b: u64) -> Option<bool> {
    Some(match code {
        BPF_JEQ => a == b,
        BPF_JNE => a != b,
        BPF_JGT => a > b,
        BPF_JGE => a >= b,
        BPF_JLT => a < b,
        BPF_JLE => a <= b,
        BPF_JSET => a & b != 0,
        BPF_JSGT => (a as i64) > (b as i64),
        BPF_JSGE => (a as i64) >= (b as i64),
        BPF_JSLT => (a as i64) < (b as i64),
        BPF_JSLE => (a as i64) <= (b as i64),
        _ => return None,
    })
}

fn cond32(code: u8, a: u32, b: u32) -> Option<bool> {
    Some(match code {
        BPF_JEQ => a == b,
        BPF_JNE => a != b,
        BPF_JGT => a > b,
        BPF_JGE => a >= b,
        BPF_JLT => a < b,
        BPF_JLE => a <= b,
        BPF_JSET => a & b != 0,
        BPF_JSGT => (a as i32) > (b as i32),
        BPF_JSGE => (a as i32) >= (b as i32),
        BPF_JSLT => (a as i32) < (b as i32),
        BPF_JSLE => (a as i32) <= (b as i32),
        _ => return None,
    })
}

/// Runs one `BPF_STX | BPF_ATOMIC` instruction; `None` for an unknown operation.
///
/// # Safety
///
/// `addr` must be valid for reads and writes of the access size.
unsafe fn atomic(i: Insn, addr: u64, reg: &mut [u64; 11]) -> Option<()> {
    let s = i.src as usize;
    let fetch = i.imm & ATOMIC_FETCH != 0;
    let sc = Ordering::SeqCst;
    match i.op & SIZE_MASK {
        BPF_DW => {
            if !addr.is_multiple_of(8) {
                // SAFETY: the caller guarantees addr is valid; unaligned, so not shared
                // atomically (the verifier could reject this; we do the plain operation).
                return unsafe { atomic_plain64(i, addr, reg) };
            }
            // SAFETY: addr is valid and 8-byte aligned; all accesses to it from eBPF are
            // atomic or plain loads/stores of the same width.
            let a = unsafe { AtomicU64::from_ptr(addr as *mut u64) };
            let v = reg[s];
            let old = match i.imm {
                ATOMIC_CMPXCHG => match a.compare_exchange(reg[0], v, sc, sc) {
                    Ok(o) | Err(o) => {
                        reg[0] = o;
                        return Some(());
                    }
                },
                ATOMIC_XCHG => a.swap(v, sc),
                x => match x & !ATOMIC_FETCH {
                    ATOMIC_ADD => a.fetch_add(v, sc),
                    ATOMIC_OR => a.fetch_or(v, sc),
                    ATOMIC_AND => a.fetch_and(v, sc),
                    ATOMIC_XOR => a.fetch_xor(v, sc),
                    _ => return None,
                },
            };
            if fetch {
                reg[s] = old;
            }
        }
        BPF_W => {
            if !addr.is_multiple_of(4) {
                // SAFETY: as above.
                return unsafe { atomic_plain32(i, addr, reg) };
            }
            // SAFETY: addr is valid and 4-byte aligned.
            let a = unsafe { AtomicU32::from_ptr(addr as *mut u32) };
            let v = reg[s] as u32;
            let old = match i.imm {
                ATOMIC_CMPXCHG => match a.compare_exchange(reg[0] as u32, v, sc, sc) {
                    Ok(o) | Err(o) => {
                        reg[0] = o as u64;
                        return Some(());
                    }
                },
                ATOMIC_XCHG => a.swap(v, sc),
                x => match x & !ATOMIC_FETCH {
                    ATOMIC_ADD => a.fetch_add(v, sc),
                    ATOMIC_OR => a.fetch_or(v, sc),
                    ATOMIC_AND => a.fetch_and(v, sc),
                    ATOMIC_XOR => a.fetch_xor(v, sc),
                    _ => return None,
                },
            };
            if fetch {
                reg[s] = old as u64;
            }
        }
        _ => return None,
    }
    Some(())
}

fn rmw(imm: i32, old: u64, v: u64) -> Option<u64> {
    Some(match imm & !ATOMIC_FETCH {
        ATOMIC_ADD => old.wrapping_add(v),
        ATOMIC_OR => old | v,
        ATOMIC_AND => old & v,
        ATOMIC_XOR => old ^ v,
        _ => return None,
    })
}

/// # Safety
///
/// `addr` must be valid for 8-byte reads and writes.
unsafe fn atomic_plain64(i: Insn, addr: u64, reg: &mut [u64; 11]) -> Option<()> {
    let p = addr as *mut u64;
    // SAFETY: the caller guarantees p is valid.
    let old = unsafe { p.read_unaligned() };
    let s = i.src as usize;
    let new = match i.imm {
        ATOMIC_CMPXCHG => {
            let r0 = reg[0];
            reg[0] = old;
            if old != r0 {
                return Some(());
            }
            reg[s]
        }
        ATOMIC_XCHG => reg[s],
        x => rmw(x, old, reg[s])?,
    };
    // SAFETY: as above.
    unsafe { p.write_unaligned(new) };
    if i.imm & ATOMIC_FETCH != 0 && i.imm != ATOMIC_CMPXCHG {
        reg[s] = old;
    }
    Some(())
}

/// # Safety
///
/// `addr` must be valid for 4-byte reads and writes.
unsafe fn atomic_plain32(i: Insn, addr: u64, reg: &mut [u64; 11]) -> Option<()> {
    let p = addr as *mut u32;
    // SAFETY: the caller guarantees p is valid.
    let old = unsafe { p.read_unaligned() };
    let s = i.src as usize;
    let new = match i.imm {
        ATOMIC_CMPXCHG => {
            let r0 = reg[0] as u32;
            reg[0] = old as u64;
            if old != r0 {
                return Some(());
            }
            reg[s] as u32
        }
        ATOMIC_XCHG => reg[s] as u32,
        x => rmw(x, old as u64, reg[s])? as u32,
    };
    // SAFETY: as above.
    unsafe { p.write_unaligned(new) };
    if i.imm & ATOMIC_FETCH != 0 && i.imm != ATOMIC_CMPXCHG {
        reg[s] = old as u64;
    }
    Some(())
}
