//! The verifier: rejects programs that could crash or hang the target.
//!
//! It is deliberately simple and sound rather than clever:
//!
//! 1. Every instruction is decoded: known opcode, registers `r0`..`r10`, no write to `r10`,
//!    well-formed `lddw` pairs, known helpers and map indices, stack accesses through `r10`
//!    inside `[-512, 0)`.
//! 2. Control flow: the program is split into functions at the targets of local calls;
//!    every jump stays inside its function and never lands on the second half of a `lddw`;
//!    nothing falls off the end of a function; every function has an `exit`; local calls
//!    do not recurse and nest at most [`MAX_CALL_DEPTH`] deep. Backward jumps are rejected
//!    (there is no bounded-loop analysis) unless [`VerifierOptions::allow_back_edges`].
//! 3. A dataflow pass over each function's CFG rejects reads of registers that may be
//!    uninitialised: at entry only `r1` (and `r2` with [`VerifierOptions::inputs`] = 2) and
//!    `r10` are set (a local function also gets `r1`–`r5`); calls clobber `r1`–`r5`.
//!
//! It does not track pointer types: memory reached through `r1` and helper results is
//! trusted to be what the program's environment promises.

use alloc::vec;
use alloc::vec::Vec;

use crate::env::Env;
use crate::insn::*;

/// Knobs for [`verify`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifierOptions {
    /// Accept backward jumps (loops). Only for trusted programs (e.g. test suites): nothing
    /// proves such loops terminate.
    pub allow_back_edges: bool,
    /// How many argument registers (`r1`, `r1`+`r2`, ...) hold values at entry.
    pub inputs: u8,
}

impl Default for VerifierOptions {
    fn default() -> Self {
        VerifierOptions {
            allow_back_edges: false,
            inputs: 1,
        }
    }
}

/// Why a program was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    /// The program has no instructions.
    #[error("empty program")]
    Empty,
    /// An opcode, or a combination of opcode and fields, that is not in the ISA.
    #[error("unknown opcode {0:#04x}")]
    UnknownOpcode(u8),
    /// A field that must have one of a few values has another.
    #[error("invalid {field} {value} for opcode {op:#04x}")]
    BadField {
        /// The opcode.
        op: u8,
        /// Which field (`off`, `imm`, `src`, `dst`).
        field: &'static str,
        /// Its value.
        value: i64,
    },
    /// A register number above 10.
    #[error("invalid register r{0}")]
    BadRegister(u8),
    /// A write to the read-only frame pointer.
    #[error("write to the frame pointer r10")]
    WriteToFp,
    /// A `lddw` without its second half, or with a malformed one.
    #[error("incomplete lddw")]
    IncompleteLddw,
    /// A jump target outside the program.
    #[error("jump to {target} out of range (program has {len} instructions)")]
    JumpOutOfRange {
        /// The target index.
        target: i64,
        /// Program length.
        len: usize,
    },
    /// A jump to the second half of a `lddw`.
    #[error("jump to {0} lands in the middle of a lddw")]
    JumpIntoLddw(usize),
    /// A jump from one function into another.
    #[error("jump to {0} leaves the function")]
    JumpOutOfFunction(usize),
    /// A backward jump while loops are not allowed.
    #[error("back-edge to {0} (loops are not allowed)")]
    BackEdge(usize),
    /// Execution can run past the last instruction of a function.
    #[error("falls through past the end of its function")]
    FallThrough,
    /// A function without an `exit`.
    #[error("function starting here has no exit")]
    MissingExit,
    /// A call to a helper the environment does not provide.
    #[error("call to unknown helper {0}")]
    UnknownHelper(u32),
    /// A `lddw` map reference to a map the environment does not have.
    #[error("reference to unknown map index {0}")]
    UnknownMap(u32),
    /// A stack access outside `[r10-512, r10)`.
    #[error("stack access of {size} bytes at r10{off:+} out of bounds")]
    StackOutOfBounds {
        /// Offset from `r10`.
        off: i16,
        /// Access size in bytes.
        size: usize,
    },
    /// A read of a register that may not hold a value.
    #[error("read of uninitialised register r{0}")]
    Uninit(u8),
    /// Local calls that recurse.
    #[error("recursive bpf-to-bpf call")]
    Recursion,
    /// Local calls nested too deep.
    #[error("bpf-to-bpf calls nest deeper than {MAX_CALL_DEPTH}")]
    CallTooDeep,
}

/// A rejection: the instruction index and the reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("insn {pc}: {reason}")]
pub struct VerifyError {
    /// Index of the offending instruction.
    pub pc: usize,
    /// Why it was rejected.
    pub reason: Reason,
}

fn fail<T>(pc: usize, reason: Reason) -> Result<T, VerifyError> {
    Err(VerifyError { pc, reason })
}

/// Checks `insns` against `env`.
pub fn verify(insns: &[Insn], env: &Env, opts: &VerifierOptions) -> Result<(), VerifyError> {
    let len = insns.len();
    if len == 0 {
        return fail(0, Reason::Empty);
    }
    // Pass 1: per-instruction checks; mark lddw second halves.
    let mut tail = vec![false; len];
    let mut pc = 0;
    while pc < len {
        let Some(&i) = insns.get(pc) else { break };
        check_insn(pc, i, env).map_err(|reason| VerifyError { pc, reason })?;
        if i.is_lddw() {
            let Some(next) = insns.get(pc + 1) else {
                return fail(pc, Reason::IncompleteLddw);
            };
            if next.op != 0 || next.dst != 0 || next.src != 0 || next.off != 0 {
                return fail(pc, Reason::IncompleteLddw);
            }
            if let Some(t) = tail.get_mut(pc + 1) {
                *t = true;
            }
            pc += 2;
        } else {
            pc += 1;
        }
    }
    // Function entries: 0 and every local-call target.
    let mut entries: Vec<usize> = vec![0];
    for (pc, i) in insns.iter().enumerate() {
        if flag(&tail, pc) {
            continue;
        }
        if let Some(t) = i.jump_target(pc) {
            if t < 0 || t >= len as i64 {
                return fail(pc, Reason::JumpOutOfRange { target: t, len });
            }
            if flag(&tail, t as usize) {
                return fail(pc, Reason::JumpIntoLddw(t as usize));
            }
            if i.is_local_call() {
                entries.push(t as usize);
            }
        }
    }
    entries.sort_unstable();
    entries.dedup();
    let func_of = |pc: usize| entries.partition_point(|&e| e <= pc) - 1;
    let func_end = |f: usize| entries.get(f + 1).copied().unwrap_or(len);

    // Pass 2: control flow inside each function.
    let mut callees: Vec<Vec<(usize, usize)>> = vec![Vec::new(); entries.len()];
    for (f, &start) in entries.iter().enumerate() {
        let end = func_end(f);
        let mut has_exit = false;
        let mut pc = start;
        while pc < end {
            let Some(&i) = insns.get(pc) else { break };
            let width = if i.is_lddw() { 2 } else { 1 };
            if i.op == op::EXIT {
                has_exit = true;
            } else if i.is_local_call() {
                let t = i.jump_target(pc).unwrap_or(0) as usize;
                if let Some(c) = callees.get_mut(f) {
                    c.push((func_of(t), pc));
                }
            } else if let Some(t) = i.jump_target(pc) {
                let t = t as usize;
                if t < start || t >= end {
                    return fail(pc, Reason::JumpOutOfFunction(t));
                }
                if t <= pc && !opts.allow_back_edges {
                    return fail(pc, Reason::BackEdge(t));
                }
            }
            let falls = !matches!(i.op, op::EXIT | op::JA | op::JA32);
            if falls && pc + width >= end {
                return fail(pc, Reason::FallThrough);
            }
            pc += width;
        }
        if !has_exit {
            return fail(start, Reason::MissingExit);
        }
    }
    check_call_graph(&entries, &callees)?;

    // Pass 3: initialised registers, per function.
    for (f, &start) in entries.iter().enumerate() {
        let mut entry_mask: u16 = 1 << FP;
        if f == 0 {
            for r in 1..=opts.inputs.min(5) {
                entry_mask |= 1 << r;
            }
        } else {
            entry_mask |= 0b11_1110;
        }
        dataflow(insns, &tail, start, func_end(f), entry_mask)?;
    }
    Ok(())
}

fn check_call_graph(entries: &[usize], callees: &[Vec<(usize, usize)>]) -> Result<(), VerifyError> {
    // Depth-first search; colour 1 = on the current path, 2 = done (with its depth).
    let n = entries.len();
    let mut colour = vec![0u8; n];
    let mut depth = vec![0usize; n];
    fn visit(
        f: usize,
        callees: &[Vec<(usize, usize)>],
        colour: &mut [u8],
        depth: &mut [usize],
    ) -> Result<usize, VerifyError> {
        if let Some(c) = colour.get_mut(f) {
            *c = 1;
        }
        let mut d = 1;
        for &(c, call_pc) in callees.get(f).into_iter().flatten() {
            let cd = match colour.get(c) {
                Some(1) => return fail(call_pc, Reason::Recursion),
                Some(2) => depth.get(c).copied().unwrap_or(0),
                _ => visit(c, callees, colour, depth)?,
            };
            if 1 + cd > MAX_CALL_DEPTH {
                return fail(call_pc, Reason::CallTooDeep);
            }
            d = d.max(1 + cd);
        }
        if let Some(c) = colour.get_mut(f) {
            *c = 2;
        }
        if let Some(x) = depth.get_mut(f) {
            *x = d;
        }
        Ok(d)
    }
    for f in 0..n {
        if colour.get(f) == Some(&0) {
            visit(f, callees, &mut colour, &mut depth)?;
        }
    }
    Ok(())
}

fn reg_ok(r: u8) -> Result<(), Reason> {
    if r > 10 {
        Err(Reason::BadRegister(r))
    } else {
        Ok(())
    }
}

fn bad(i: Insn, field: &'static str, value: i64) -> Reason {
    Reason::BadField {
        op: i.op,
        field,
        value,
    }
}

fn stack_ok(base: u8, off: i16, size: usize) -> Result<(), Reason> {
    if base == FP {
        let o = off as i64;
        if o < -(STACK_SIZE as i64) || o + size as i64 > 0 {
            return Err(Reason::StackOutOfBounds { off, size });
        }
    }
    Ok(())
}

fn check_insn(_pc: usize, i: Insn, env: &Env) -> Result<(), Reason> {
    reg_ok(i.dst)?;
    reg_ok(i.src)?;
    let unknown = Reason::UnknownOpcode(i.op);
    match i.class() {
        BPF_ALU | BPF_ALU64 => {
            let is64 = i.class() == BPF_ALU64;
            let code = i.op & OP_MASK;
            let x = i.op & SRC_MASK == BPF_X;
            if i.dst == FP {
                return Err(Reason::WriteToFp);
            }
            match code {
                BPF_END => {
                    if is64 && x {
                        return Err(unknown);
                    }
                    if !matches!(i.imm, 16 | 32 | 64) {
                        return Err(bad(i, "imm", i.imm as i64));
                    }
                    if i.off != 0 {
                        return Err(bad(i, "off", i.off as i64));
                    }
                }
                BPF_NEG => {
                    if x {
                        return Err(unknown);
                    }
                    if i.off != 0 {
                        return Err(bad(i, "off", i.off as i64));
                    }
                }
                BPF_DIV | BPF_MOD => {
                    if i.off != 0 && i.off != 1 {
                        return Err(bad(i, "off", i.off as i64));
                    }
                }
                BPF_MOV => {
                    let ok = match (x, i.off) {
                        (_, 0) => true,
                        (true, 8 | 16) => true,
                        (true, 32) => is64,
                        _ => false,
                    };
                    if !ok {
                        return Err(bad(i, "off", i.off as i64));
                    }
                }
                BPF_ADD | BPF_SUB | BPF_MUL | BPF_OR | BPF_AND | BPF_LSH | BPF_RSH | BPF_XOR
                | BPF_ARSH => {
                    if i.off != 0 {
                        return Err(bad(i, "off", i.off as i64));
                    }
                }
                _ => return Err(unknown),
            }
        }
        BPF_LD => {
            if !i.is_lddw() {
                return Err(unknown);
            }
            if i.dst == FP {
                return Err(Reason::WriteToFp);
            }
            let idx = i.imm as u32;
            match i.src {
                PSEUDO_NONE => {}
                PSEUDO_MAP_FD => {
                    if idx as usize >= env.map_addrs.len() {
                        return Err(Reason::UnknownMap(idx));
                    }
                }
                PSEUDO_MAP_VALUE => {
                    if idx as usize >= env.map_value_addrs.len() {
                        return Err(Reason::UnknownMap(idx));
                    }
                }
                s => return Err(bad(i, "src", s as i64)),
            }
        }
        BPF_LDX => {
            match (i.op & MODE_MASK, i.op & SIZE_MASK) {
                (BPF_MEM, _) | (BPF_MEMSX, BPF_B | BPF_H | BPF_W) => {}
                _ => return Err(unknown),
            }
            if i.dst == FP {
                return Err(Reason::WriteToFp);
            }
            stack_ok(i.src, i.off, size_bytes(i.op))?;
        }
        BPF_ST => {
            if i.op & MODE_MASK != BPF_MEM {
                return Err(unknown);
            }
            stack_ok(i.dst, i.off, size_bytes(i.op))?;
        }
        BPF_STX => {
            match i.op & MODE_MASK {
                BPF_MEM => {}
                BPF_ATOMIC => {
                    if !matches!(i.op & SIZE_MASK, BPF_W | BPF_DW) {
                        return Err(unknown);
                    }
                    let ok = matches!(i.imm, ATOMIC_XCHG | ATOMIC_CMPXCHG)
                        || matches!(
                            i.imm & !ATOMIC_FETCH,
                            ATOMIC_ADD | ATOMIC_OR | ATOMIC_AND | ATOMIC_XOR
                        );
                    if !ok {
                        return Err(bad(i, "imm", i.imm as i64));
                    }
                    if i.imm & ATOMIC_FETCH != 0 && i.imm != ATOMIC_CMPXCHG && i.src == FP {
                        return Err(Reason::WriteToFp);
                    }
                }
                _ => return Err(unknown),
            }
            stack_ok(i.dst, i.off, size_bytes(i.op))?;
        }
        class @ (BPF_JMP | BPF_JMP32) => {
            let code = i.op & OP_MASK;
            let x = i.op & SRC_MASK == BPF_X;
            match code {
                BPF_JA => {
                    if x {
                        return Err(unknown);
                    }
                }
                BPF_CALL => {
                    if class == BPF_JMP32 {
                        return Err(unknown);
                    }
                    if !x {
                        match i.src {
                            0 => {
                                let id = i.imm as u32;
                                if env.helper(id).is_none() {
                                    return Err(Reason::UnknownHelper(id));
                                }
                            }
                            PSEUDO_CALL => {}
                            s => return Err(bad(i, "src", s as i64)),
                        }
                    }
                }
                BPF_EXIT => {
                    if class == BPF_JMP32 || x {
                        return Err(unknown);
                    }
                }
                BPF_JEQ | BPF_JGT | BPF_JGE | BPF_JSET | BPF_JNE | BPF_JSGT | BPF_JSGE
                | BPF_JLT | BPF_JLE | BPF_JSLT | BPF_JSLE => {}
                _ => return Err(unknown),
            }
        }
        _ => return Err(unknown),
    }
    Ok(())
}

/// Registers read and written by one instruction: `(uses, defs, clobbers)`.
fn use_def(i: Insn) -> (u16, u16, u16) {
    let d = 1u16 << i.dst;
    let s = 1u16 << i.src;
    let x = i.op & SRC_MASK == BPF_X;
    match i.class() {
        BPF_ALU | BPF_ALU64 => {
            let code = i.op & OP_MASK;
            match code {
                BPF_MOV => (if x { s } else { 0 }, d, 0),
                BPF_END | BPF_NEG => (d, d, 0),
                _ => (d | if x { s } else { 0 }, d, 0),
            }
        }
        BPF_LD => (0, d, 0),
        BPF_LDX => (s, d, 0),
        BPF_ST => (d, 0, 0),
        BPF_STX => {
            if i.op & MODE_MASK == BPF_ATOMIC {
                if i.imm == ATOMIC_CMPXCHG {
                    (d | s | 1, 1, 0)
                } else if i.imm & ATOMIC_FETCH != 0 {
                    (d | s, s, 0)
                } else {
                    (d | s, 0, 0)
                }
            } else {
                (d | s, 0, 0)
            }
        }
        _ => match i.op {
            op::EXIT => (1, 0, 0),
            op::CALL => (0, 1, 0b11_1110),
            op::CALLX => (d, 1, 0b11_1110),
            op::JA | op::JA32 => (0, 0, 0),
            _ => (d | if x { s } else { 0 }, 0, 0),
        },
    }
}

fn dataflow(
    insns: &[Insn],
    tail: &[bool],
    start: usize,
    end: usize,
    entry: u16,
) -> Result<(), VerifyError> {
    // state[pc] = registers certainly initialised before pc; None = not reached yet.
    let mut state: Vec<Option<u16>> = vec![None; end - start];
    let mut work: Vec<usize> = vec![start];
    if let Some(s) = state.first_mut() {
        *s = Some(entry);
    }
    while let Some(pc) = work.pop() {
        let Some(&i) = insns.get(pc) else { continue };
        let Some(init) = pc
            .checked_sub(start)
            .and_then(|k| state.get(k))
            .copied()
            .flatten()
        else {
            continue;
        };
        let (uses, defs, clobbers) = use_def(i);
        let missing = uses & !init;
        if missing != 0 {
            return fail(pc, Reason::Uninit(missing.trailing_zeros() as u8));
        }
        let out = (init & !clobbers) | defs;
        let width = if i.is_lddw() { 2 } else { 1 };
        let mut succ = [None, None];
        if i.op != op::EXIT {
            if !matches!(i.op, op::JA | op::JA32) {
                succ[0] = Some(pc + width);
            }
            if !i.is_local_call()
                && let Some(t) = i.jump_target(pc)
            {
                succ[1] = Some(t as usize);
            }
        }
        for t in succ.into_iter().flatten() {
            // Pass 2 proved every successor lies inside [start, end) and is no lddw tail.
            debug_assert!(t >= start && t < end && !flag(tail, t));
            let Some(slot) = t.checked_sub(start).and_then(|k| state.get_mut(k)) else {
                continue;
            };
            let new = match *slot {
                None => out,
                Some(old) => old & out,
            };
            if *slot != Some(new) {
                *slot = Some(new);
                work.push(t);
            }
        }
    }
    Ok(())
}

/// `v[i]`, false past the end (the per-instruction flags have a slot per instruction).
fn flag(v: &[bool], i: usize) -> bool {
    v.get(i).copied().unwrap_or(false)
}
