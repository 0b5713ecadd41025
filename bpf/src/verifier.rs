//! The verifier: rejects programs that could crash or hang the target.
//!
//! The agent runs it inside the target before compiling a probe, so it never panics and its
//! time and memory are bounded ([`MAX_PROCESSED`] instructions processed, [`MAX_PENDING`]
//! paths pending, a bounded number of states kept).
//!
//! 1. Every instruction is decoded: known opcode, registers `r0`..`r10`, no write to `r10`,
//!    well-formed `lddw` pairs, known helpers and map indices, stack accesses through `r10`
//!    inside `[-512, 0)`.
//! 2. Control flow: the program is split into functions at the targets of local calls;
//!    every jump stays inside its function and never lands on the second half of a `lddw`;
//!    nothing falls off the end of a function; every function has an `exit`; local calls
//!    do not recurse and nest at most [`MAX_CALL_DEPTH`] deep. Backward jumps are rejected
//!    unless [`VerifierOptions::allow_back_edges`].
//! 3. Every path from the first instruction is interpreted abstractly, kernel style. Each
//!    register and each 8-byte stack slot has a type: uninitialised, a number (with unsigned
//!    and signed bounds), the context (of the size [`VerifierOptions::ctx`] gives), a stack
//!    pointer, a map value (or NULL) of the map's value size, a ring-buffer record (or NULL)
//!    of its reserved size, or a map; pointers carry the range of their offset. Rejected:
//!    - a load or store through anything but a pointer to memory, or outside its object
//!      (for every offset the pointer may have);
//!    - a pointer that may be NULL used before a comparison with 0 (copies of it are
//!      checked together);
//!    - a pointer stored into a map value, a ring-buffer record or the context, or handed to
//!      a helper inside the memory it reads (that would leak an address);
//!    - pointer arithmetic other than adding or subtracting a bounded number (or subtracting
//!      two pointers into one object), or that could leave `±2^29`;
//!    - a read of stack bytes not written on that path, or of an uninitialised register;
//!    - a helper call whose arguments do not match the helper's prototype
//!      ([`crate::env::HelperProto`]): maps of the right kind, keys and values of the
//!      map's sizes, memory of the size given, the context, a held record;
//!    - a ring-buffer record neither submitted nor discarded before the program ends;
//!    - a loop whose state repeats (it may never end) or that runs past the complexity
//!      limit: loops are accepted only when every iteration was walked to the end.
//!
//! A path that reaches a jump target in a state covered by one whose every continuation
//! was already verified stops there (state pruning, with register liveness).
//!
//! What it does not guarantee: anything about memory reached through numbers (only the
//! helpers `bpf_probe_read_user*` do that, fault-safely), or the meaning of the program's
//! results.

mod bounds;
mod state;
mod walk;

use alloc::vec;
use alloc::vec::Vec;

use crate::env::Env;
use crate::insn::*;

pub use walk::{MAX_PENDING, MAX_PROCESSED};

/// Knobs for [`verify`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifierOptions {
    /// Accept backward jumps (loops); each loop must still be proven to end. Off by default
    /// for probes: a loop of many iterations on every function hit would slow the target
    /// down, even when it ends.
    pub allow_back_edges: bool,
    /// How many argument registers (`r1`, `r1`+`r2`, ...) hold values at entry: `r1` is
    /// the context pointer when there is a [`VerifierOptions::ctx`], the others numbers.
    pub inputs: u8,
    /// What `r1` points to at entry; `None`: `r1` is a number.
    pub ctx: Option<Context>,
}

/// The memory `r1` points to at entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Context {
    /// Its size in bytes.
    pub size: u32,
    /// Whether the program may write it.
    pub writable: bool,
}

impl Context {
    /// A probe's context: a read-only [`xcover_session::ProbeCtx`].
    pub const PROBE: Context = Context {
        size: core::mem::size_of::<xcover_session::ProbeCtx>() as u32,
        writable: false,
    };
}

impl Default for VerifierOptions {
    /// A probe: `r1` points to a read-only [`xcover_session::ProbeCtx`].
    fn default() -> Self {
        VerifierOptions {
            allow_back_edges: false,
            inputs: 1,
            ctx: Some(Context::PROBE),
        }
    }
}

/// What a register holds, as rejections name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegType {
    /// Nothing yet.
    Uninit,
    /// A number.
    Scalar,
    /// The context pointer.
    Ctx,
    /// A pointer into the stack.
    Stack,
    /// A pointer into a map value.
    MapValue,
    /// A map value pointer not yet compared with 0.
    MapValueOrNull,
    /// A ring-buffer record.
    Record,
    /// A ring-buffer record not yet compared with 0.
    RecordOrNull,
    /// A map (for helpers only).
    Map,
    /// Memory a helper reads (in [`Reason::PointerLeak`]).
    Helper,
}

impl core::fmt::Display for RegType {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            RegType::Uninit => "uninitialised",
            RegType::Scalar => "a scalar",
            RegType::Ctx => "the context",
            RegType::Stack => "a stack pointer",
            RegType::MapValue => "a map value",
            RegType::MapValueOrNull => "a map value or NULL",
            RegType::Record => "a ring-buffer record",
            RegType::RecordOrNull => "a ring-buffer record or NULL",
            RegType::Map => "a map",
            RegType::Helper => "memory a helper reads",
        })
    }
}

/// What an instruction does with memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// A load.
    Load,
    /// A store.
    Store,
    /// An atomic read-modify-write.
    Atomic,
    /// A helper argument the helper reads.
    HelperRead,
    /// A helper argument the helper writes.
    HelperWrite,
}

impl core::fmt::Display for Access {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Access::Load => "load through it",
            Access::Store => "store through it",
            Access::Atomic => "update memory through it atomically",
            Access::HelperRead => "pass it as memory a helper reads",
            Access::HelperWrite => "pass it as memory a helper writes",
        })
    }
}

/// How much work a successful verification took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stats {
    /// Instructions processed over all paths.
    pub processed: usize,
    /// States kept for pruning.
    pub states: usize,
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
    /// A memory access through a register that holds no pointer to memory.
    #[error("r{reg} is {ty}, not a pointer to memory: cannot {access}")]
    NotAPointer {
        /// The register.
        reg: u8,
        /// What it holds.
        ty: RegType,
        /// What the instruction does.
        access: Access,
    },
    /// A memory access through a pointer that may be NULL.
    #[error("r{reg} is {ty}: compare it with 0 before you {access}")]
    MaybeNull {
        /// The register.
        reg: u8,
        /// What it holds.
        ty: RegType,
        /// What the instruction does.
        access: Access,
    },
    /// An access outside the object a pointer points into.
    #[error("r{reg} is {ty}: access to bytes [{lo}, {hi}) is outside [{start}, {end})")]
    OutOfBounds {
        /// The register.
        reg: u8,
        /// What it points to.
        ty: RegType,
        /// Lowest byte offset the access may touch.
        lo: i64,
        /// One past the highest.
        hi: i64,
        /// Start of the object.
        start: i64,
        /// End of the object.
        end: i64,
    },
    /// A write to memory the program may only read.
    #[error("r{reg} is {ty}, which is read-only")]
    ReadOnly {
        /// The register.
        reg: u8,
        /// What it points to.
        ty: RegType,
    },
    /// A read of stack bytes not written before.
    #[error("r{reg}: reads stack byte at r10{off:+}, which is not initialised")]
    UninitStack {
        /// The pointer register.
        reg: u8,
        /// The first uninitialised byte, from the frame's `r10`.
        off: i64,
    },
    /// A pointer written where the program or the outside world reads numbers.
    #[error("r{reg} is {ty}: writing it to {into} would leak an address")]
    PointerLeak {
        /// The register holding (or pointing to) the pointer.
        reg: u8,
        /// What the pointer is.
        ty: RegType,
        /// Where it would go.
        into: RegType,
    },
    /// A pointer stored to the stack other than whole (8 bytes at an 8-aligned fixed offset).
    #[error(
        "r{reg} is {ty}: a pointer is only spilled whole, 8 bytes at an 8-aligned fixed stack offset"
    )]
    PartialSpill {
        /// The register.
        reg: u8,
        /// What it holds.
        ty: RegType,
    },
    /// A read of part of a spilled pointer (or an atomic update of it).
    #[error("r{reg}: reads part of a pointer spilled at r10{off:+}")]
    PartialPointer {
        /// The pointer register.
        reg: u8,
        /// The slot's offset from its frame's `r10`.
        off: i64,
    },
    /// Arithmetic on a pointer that is not allowed.
    #[error("r{reg} is {ty}: {why}")]
    PointerArith {
        /// The register.
        reg: u8,
        /// What it holds.
        ty: RegType,
        /// Why not.
        why: &'static str,
    },
    /// An atomic access at a variable or unaligned offset.
    #[error("r{reg} is {ty}: atomic access at offset {off} is not {size}-byte aligned")]
    Misaligned {
        /// The register.
        reg: u8,
        /// What it points to.
        ty: RegType,
        /// The offset.
        off: i64,
        /// The access size.
        size: u64,
    },
    /// A helper argument of the wrong type.
    #[error("r{reg}: helper {helper} needs {expected} here, not {got}")]
    HelperArg {
        /// The helper id.
        helper: u32,
        /// The argument register.
        reg: u8,
        /// What the helper needs.
        expected: &'static str,
        /// What the register holds.
        got: RegType,
    },
    /// A helper size argument without a small enough upper bound.
    #[error("r{reg}: size given to helper {helper} has no upper bound below 2^29")]
    UnboundedSize {
        /// The helper id.
        helper: u32,
        /// The size register.
        reg: u8,
    },
    /// A helper the verifier knows no prototype of.
    #[error("helper {0} has no prototype: cannot check its arguments")]
    NoPrototype(u32),
    /// A path ends holding a ring-buffer record.
    #[error(
        "the ring-buffer record reserved at insn {0} is neither submitted nor discarded on this path"
    )]
    Unreleased(usize),
    /// A function returns a pointer into its own stack.
    #[error("r{reg} points into the stack of the function that returns it")]
    DanglingStack {
        /// The register (r0).
        reg: u8,
    },
    /// An indirect call through a register whose value is not known.
    #[error("r{reg}: indirect call target is not a known helper id")]
    BadCallTarget {
        /// The register.
        reg: u8,
    },
    /// A loop that comes back to a state it was in: it may never end.
    #[error("infinite loop: this instruction is reached again in a state no closer to the end")]
    InfiniteLoop,
    /// Too many instructions processed over all paths.
    #[error("program too complex: over {0} instructions processed (a loop without a bound?)")]
    TooComplex(usize),
    /// Too many paths pending at once.
    #[error("program too complex: over {0} branches pending")]
    TooManyBranches(usize),
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
    verify_stats(insns, env, opts).map(|_| ())
}

/// [`verify`], reporting how much work it took.
pub fn verify_stats(
    insns: &[Insn],
    env: &Env,
    opts: &VerifierOptions,
) -> Result<Stats, VerifyError> {
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

    // Pass 3: every path, abstractly. States are compared at jump targets, function
    // entries and return points.
    let mut prune = vec![false; len];
    for (pc, i) in insns.iter().enumerate() {
        if flag(&tail, pc) {
            continue;
        }
        if let Some(t) = i.jump_target(pc)
            && let Some(p) = usize::try_from(t).ok().and_then(|t| prune.get_mut(t))
        {
            *p = true;
        }
        if i.is_local_call()
            && let Some(p) = prune.get_mut(pc + 1)
        {
            *p = true;
        }
    }
    walk::run(insns, env, opts, prune)
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

/// `v[i]`, false past the end (the per-instruction flags have a slot per instruction).
fn flag(v: &[bool], i: usize) -> bool {
    v.get(i).copied().unwrap_or(false)
}
