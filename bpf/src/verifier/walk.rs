//! Abstract interpretation of every path, depth first, with states pruned at jump targets.

use alloc::vec;
use alloc::vec::Vec;

use super::bounds::{Range, alu32_range, alu64_range, decide, end_range, refine};
use super::state::{Frame, Kind, Reg, SLOTS, State, covers, locate};
use super::{Access, Reason, RegType, Stats, VerifierOptions, VerifyError};
use crate::env::{Arg, Env, MapInfo, Ret};
use crate::insn::*;
use crate::program::MapType;

/// Instructions processed over all paths before the program is called too complex (the
/// kernel's limit).
pub const MAX_PROCESSED: usize = 1_000_000;
/// Paths waiting to be explored at once.
pub const MAX_PENDING: usize = 8192;
/// States kept for pruning at one instruction, and in all.
const MAX_STATES_PER_PC: usize = 64;
const MAX_STATES: usize = 32_768;
/// Largest offset a pointer may be moved by, and largest helper memory size (the kernel's
/// `BPF_MAX_VAR_OFF`).
const MAX_OFF: i64 = 1 << 29;

fn fail<T>(pc: usize, reason: Reason) -> Result<T, VerifyError> {
    Err(VerifyError { pc, reason })
}

/// What one instruction does to the path.
enum Flow {
    /// Go on at this instruction.
    Next(usize),
    /// Go on at the fall-through (already in place); the other path starts at this
    /// instruction with this state.
    Fork(usize, alloc::boxed::Box<State>),
    /// The path ended at the program's exit.
    Done,
}

enum Visit {
    Pruned,
    Loop,
    Go(Option<usize>),
}

struct Node {
    state: State,
    parent: Option<usize>,
    /// Paths and child nodes below this node still being explored.
    branches: u32,
}

struct Walk<'a> {
    insns: &'a [Insn],
    env: &'a Env<'a>,
    opts: &'a VerifierOptions,
    live: Vec<u16>,
    prune: Vec<bool>,
    nodes: Vec<Node>,
    by_pc: Vec<Vec<usize>>,
    processed: usize,
}

/// Walks every path of `insns` from instruction 0. `prune` marks the instructions where
/// states are compared (jump targets, function entries, return points).
pub(super) fn run(
    insns: &[Insn],
    env: &Env,
    opts: &VerifierOptions,
    prune: Vec<bool>,
) -> Result<Stats, VerifyError> {
    let mut w = Walk {
        insns,
        env,
        opts,
        live: liveness(insns, env),
        prune,
        nodes: Vec::new(),
        by_pc: vec![Vec::new(); insns.len()],
        processed: 0,
    };
    let mut main = Frame::new(0, 0);
    for r in 1..=opts.inputs.min(5) {
        if let Some(x) = main.regs.get_mut(r as usize) {
            *x = if r == 1 && opts.ctx.is_some() {
                Reg::ptr(Kind::Ctx, 0)
            } else {
                Reg::scalar(Range::UNKNOWN)
            };
        }
    }
    let init = State {
        callers: Vec::new(),
        cur: main,
        refs: Vec::new(),
        next_id: 0,
    };
    let mut work: Vec<(usize, State, Option<usize>)> = vec![(0, init, None)];
    while let Some((mut pc, mut st, mut cp)) = work.pop() {
        loop {
            w.processed += 1;
            if w.processed > MAX_PROCESSED {
                return fail(pc, Reason::TooComplex(MAX_PROCESSED));
            }
            if w.prune.get(pc).copied().unwrap_or(false) {
                match w.visit(pc, &st, cp) {
                    Visit::Pruned => {
                        w.finish(cp);
                        break;
                    }
                    Visit::Loop => return fail(pc, Reason::InfiniteLoop),
                    Visit::Go(n) => cp = n,
                }
            }
            let Some(&i) = insns.get(pc) else {
                return fail(pc, Reason::FallThrough);
            };
            match w.step(pc, i, &mut st)? {
                Flow::Next(n) => pc = n,
                Flow::Fork(t, other) => {
                    if work.len() >= MAX_PENDING {
                        return fail(pc, Reason::TooManyBranches(MAX_PENDING));
                    }
                    if let Some(n) = cp.and_then(|c| w.nodes.get_mut(c)) {
                        n.branches += 1;
                    }
                    work.push((t, *other, cp));
                    pc += 1;
                }
                Flow::Done => {
                    w.finish(cp);
                    break;
                }
            }
        }
    }
    Ok(Stats {
        processed: w.processed,
        states: w.nodes.len(),
    })
}

impl Walk<'_> {
    fn visit(&mut self, pc: usize, st: &State, cp: Option<usize>) -> Visit {
        let live = self.live.get(pc).copied().unwrap_or(0x7ff);
        let Some(here) = self.by_pc.get(pc) else {
            return Visit::Go(cp);
        };
        for &n in here {
            let Some(node) = self.nodes.get(n) else {
                continue;
            };
            if covers(&node.state, st, live) {
                if node.branches == 0 {
                    return Visit::Pruned;
                }
                // Back at a state of this very path, unchanged: walking on would repeat it
                // forever. (A state that is only covered may still shrink to an exit.)
                if covers(st, &node.state, live) && self.is_ancestor(n, cp) {
                    return Visit::Loop;
                }
            }
        }
        if here.len() >= MAX_STATES_PER_PC || self.nodes.len() >= MAX_STATES {
            return Visit::Go(cp);
        }
        let n = self.nodes.len();
        self.nodes.push(Node {
            state: st.clone(),
            parent: cp,
            branches: 1,
        });
        if let Some(h) = self.by_pc.get_mut(pc) {
            h.push(n);
        }
        Visit::Go(Some(n))
    }

    fn is_ancestor(&self, n: usize, mut at: Option<usize>) -> bool {
        while let Some(a) = at {
            if a == n {
                return true;
            }
            at = self.nodes.get(a).and_then(|x| x.parent);
        }
        false
    }

    /// A path below `cp` ended.
    fn finish(&mut self, mut cp: Option<usize>) {
        while let Some(n) = cp.and_then(|c| self.nodes.get_mut(c)) {
            n.branches = n.branches.saturating_sub(1);
            if n.branches > 0 {
                break;
            }
            cp = n.parent;
        }
    }

    fn read(&self, pc: usize, st: &State, r: u8) -> Result<Reg, VerifyError> {
        let v = st.reg(r);
        if v.kind == Kind::Uninit {
            return fail(pc, Reason::Uninit(r));
        }
        Ok(v)
    }

    fn map(&self, pc: usize, m: u32) -> Result<MapInfo, VerifyError> {
        match self.env.maps.get(m as usize) {
            Some(&info) => Ok(info),
            None => fail(pc, Reason::UnknownMap(m)),
        }
    }

    fn step(&mut self, pc: usize, i: Insn, st: &mut State) -> Result<Flow, VerifyError> {
        match i.class() {
            BPF_ALU | BPF_ALU64 => {
                self.alu(pc, i, st)?;
                Ok(Flow::Next(pc + 1))
            }
            BPF_LD => {
                let next = self.insns.get(pc + 1).copied().unwrap_or_default();
                let idx = i.imm as u32;
                let v = match i.src {
                    PSEUDO_MAP_FD => {
                        self.map(pc, idx)?;
                        Reg::ptr(Kind::Map(idx), 0)
                    }
                    PSEUDO_MAP_VALUE => {
                        let info = self.map(pc, idx)?;
                        let has = self.env.map_value_addrs.get(idx as usize).copied();
                        if info.value_size == 0 || has.unwrap_or(0) == 0 {
                            return fail(pc, Reason::UnknownMap(idx));
                        }
                        Reg::ptr(Kind::MapValue(idx), next.imm as u32 as i64)
                    }
                    _ => Reg::konst((i.imm as u32 as u64) | (next.imm as u32 as u64) << 32),
                };
                st.set(i.dst, v);
                Ok(Flow::Next(pc + 2))
            }
            BPF_LDX => {
                let base = self.read(pc, st, i.src)?;
                let size = size_bytes(i.op) as u64;
                let v = self.mem(pc, st, i.src, base, i.off as i64, size, Access::Load, None)?;
                let v = if i.op & MODE_MASK == BPF_MEMSX {
                    Reg::scalar(Range::sbits(8 * size as u32))
                } else {
                    v
                };
                st.set(i.dst, v);
                Ok(Flow::Next(pc + 1))
            }
            BPF_ST => {
                let base = self.read(pc, st, i.dst)?;
                let size = size_bytes(i.op) as u64;
                let v = Reg::konst(i.imm as i64 as u64);
                let v = if size == 8 {
                    v
                } else {
                    Reg::scalar(Range::bits(8 * size as u32))
                };
                self.mem(
                    pc,
                    st,
                    i.dst,
                    base,
                    i.off as i64,
                    size,
                    Access::Store,
                    Some((v, i.dst)),
                )?;
                Ok(Flow::Next(pc + 1))
            }
            BPF_STX => {
                let base = self.read(pc, st, i.dst)?;
                let val = self.read(pc, st, i.src)?;
                let size = size_bytes(i.op) as u64;
                if i.op & MODE_MASK == BPF_ATOMIC {
                    if val.is_ptr() {
                        return fail(
                            pc,
                            Reason::PointerLeak {
                                reg: i.src,
                                ty: val.ty(),
                                into: base.ty(),
                            },
                        );
                    }
                    if i.imm == ATOMIC_CMPXCHG {
                        let r0 = self.read(pc, st, 0)?;
                        if r0.is_ptr() {
                            return fail(
                                pc,
                                Reason::PointerLeak {
                                    reg: 0,
                                    ty: r0.ty(),
                                    into: base.ty(),
                                },
                            );
                        }
                    }
                    self.mem(
                        pc,
                        st,
                        i.dst,
                        base,
                        i.off as i64,
                        size,
                        Access::Atomic,
                        None,
                    )?;
                    let old = Reg::scalar(Range::bits(8 * size as u32));
                    if i.imm == ATOMIC_CMPXCHG {
                        st.set(0, old);
                    } else if i.imm & ATOMIC_FETCH != 0 {
                        st.set(i.src, old);
                    }
                } else {
                    let v = if size == 8 || val.is_ptr() {
                        val
                    } else {
                        Reg::scalar(alu64_range(BPF_AND, 0, val.r, Range::bits(8 * size as u32)))
                    };
                    let v = (v, i.src);
                    self.mem(
                        pc,
                        st,
                        i.dst,
                        base,
                        i.off as i64,
                        size,
                        Access::Store,
                        Some(v),
                    )?;
                }
                Ok(Flow::Next(pc + 1))
            }
            _ => self.jmp(pc, i, st),
        }
    }

    fn alu(&self, pc: usize, i: Insn, st: &mut State) -> Result<(), VerifyError> {
        let is64 = i.class() == BPF_ALU64;
        let code = i.op & OP_MASK;
        let x = i.op & SRC_MASK == BPF_X;
        let ptr_err = |reg: u8, v: Reg, why: &'static str| {
            fail(
                pc,
                Reason::PointerArith {
                    reg,
                    ty: v.ty(),
                    why,
                },
            )
        };
        if code == BPF_END {
            let a = self.read(pc, st, i.dst)?;
            if a.is_ptr() {
                return ptr_err(i.dst, a, "a pointer cannot be byte-swapped");
            }
            let swap = is64 || i.op & SRC_MASK == BPF_TO_BE;
            st.set(i.dst, Reg::scalar(end_range(swap, i.imm, a.r)));
            return Ok(());
        }
        let src = if x {
            self.read(pc, st, i.src)?
        } else if is64 {
            Reg::konst(i.imm as i64 as u64)
        } else {
            Reg::konst(i.imm as u32 as u64)
        };
        if code == BPF_MOV {
            if is64 && i.off == 0 {
                st.set(i.dst, src);
            } else if src.is_ptr() {
                return ptr_err(i.src, src, "a pointer cannot be truncated or sign-extended");
            } else if is64 {
                st.set(
                    i.dst,
                    Reg::scalar(alu64_range(code, i.off, Range::UNKNOWN, src.r)),
                );
            } else {
                st.set(
                    i.dst,
                    Reg::scalar(alu32_range(code, i.off, Range::UNKNOWN, src.r)),
                );
            }
            return Ok(());
        }
        let dst = self.read(pc, st, i.dst)?;
        let uses_src = code != BPF_NEG;
        if dst.is_ptr() || (uses_src && src.is_ptr()) {
            let (preg, p) = if dst.is_ptr() {
                (i.dst, dst)
            } else {
                (i.src, src)
            };
            if !is64 {
                return ptr_err(preg, p, "32-bit arithmetic on a pointer is prohibited");
            }
            let v = match code {
                BPF_ADD if dst.is_ptr() && src.is_ptr() => {
                    return ptr_err(i.dst, dst, "two pointers cannot be added");
                }
                BPF_ADD if dst.is_ptr() => self.ptr_add(pc, i.dst, dst, i.src, src.r, false)?,
                BPF_ADD => self.ptr_add(pc, i.src, src, i.dst, dst.r, false)?,
                BPF_SUB if dst.is_ptr() && src.is_ptr() => {
                    if dst.kind != src.kind || dst.null || src.null {
                        return ptr_err(
                            i.dst,
                            dst,
                            "only pointers into the same object can be subtracted",
                        );
                    }
                    Reg::scalar(Range::UNKNOWN)
                }
                BPF_SUB if dst.is_ptr() => self.ptr_add(pc, i.dst, dst, i.src, src.r, true)?,
                BPF_SUB => {
                    return ptr_err(i.src, src, "a pointer cannot be subtracted from a number");
                }
                _ => {
                    return ptr_err(
                        preg,
                        p,
                        "only adding and subtracting are allowed on a pointer",
                    );
                }
            };
            st.set(i.dst, v);
            return Ok(());
        }
        let r = if is64 {
            alu64_range(code, i.off, dst.r, src.r)
        } else {
            alu32_range(code, i.off, dst.r, src.r)
        };
        st.set(i.dst, Reg::scalar(r));
        Ok(())
    }

    /// `p ± s` for pointer `p` (in `preg`) and a scalar in `s` (in `sreg`).
    fn ptr_add(
        &self,
        pc: usize,
        preg: u8,
        p: Reg,
        sreg: u8,
        s: Range,
        neg: bool,
    ) -> Result<Reg, VerifyError> {
        let err = |reg: u8, ty: RegType, why: &'static str| {
            fail(pc, Reason::PointerArith { reg, ty, why })
        };
        if p.null {
            return err(
                preg,
                p.ty(),
                "arithmetic on a pointer that may be NULL (compare it with 0 first)",
            );
        }
        if let Kind::Map(_) = p.kind {
            return err(preg, p.ty(), "a map pointer cannot be moved");
        }
        if s.smin < -MAX_OFF || s.smax > MAX_OFF {
            return err(
                sreg,
                RegType::Scalar,
                "it has no bounds: added to a pointer it could point anywhere",
            );
        }
        let (lo, hi) = if neg {
            (p.r.smin - s.smax, p.r.smax - s.smin)
        } else {
            (p.r.smin + s.smin, p.r.smax + s.smax)
        };
        if lo < -MAX_OFF || hi > MAX_OFF {
            return err(preg, p.ty(), "its offset would leave any object");
        }
        Ok(Reg {
            r: Range::signed(lo, hi),
            ..p
        })
    }

    /// Checks an access of `size` bytes (up to `size_max` for helpers) at `base + off`
    /// through register `breg`, and performs it on the abstract state: a load returns what
    /// it reads, a store writes `value` (with the register it came from).
    #[allow(clippy::too_many_arguments)]
    fn mem(
        &self,
        pc: usize,
        st: &mut State,
        breg: u8,
        base: Reg,
        off: i64,
        size: u64,
        acc: Access,
        value: Option<(Reg, u8)>,
    ) -> Result<Reg, VerifyError> {
        self.mem_range(pc, st, breg, base, off, size, size, acc, value)
    }

    #[allow(clippy::too_many_arguments)]
    fn mem_range(
        &self,
        pc: usize,
        st: &mut State,
        breg: u8,
        base: Reg,
        off: i64,
        size: u64,
        size_max: u64,
        acc: Access,
        value: Option<(Reg, u8)>,
    ) -> Result<Reg, VerifyError> {
        let ty = base.ty();
        let (start, end, writable) = match base.kind {
            Kind::Uninit => return fail(pc, Reason::Uninit(breg)),
            Kind::Scalar | Kind::Map(_) => {
                return fail(
                    pc,
                    Reason::NotAPointer {
                        reg: breg,
                        ty,
                        access: acc,
                    },
                );
            }
            _ if base.null => {
                return fail(
                    pc,
                    Reason::MaybeNull {
                        reg: breg,
                        ty,
                        access: acc,
                    },
                );
            }
            Kind::Ctx => match self.opts.ctx {
                Some(c) => (0, c.size as i64, c.writable),
                None => (0, 0, false),
            },
            Kind::MapValue(m) => {
                let info = self.map(pc, m)?;
                (0, info.value_size as i64, !info.read_only)
            }
            Kind::Record(n) => (0, n as i64, true),
            Kind::Stack(_) => (-(STACK_SIZE as i64), 0, true),
        };
        let lo = base.r.smin + off;
        let hi = base.r.smax + off + size_max as i64;
        if lo < start || hi > end {
            return fail(
                pc,
                Reason::OutOfBounds {
                    reg: breg,
                    ty,
                    lo,
                    hi,
                    start,
                    end,
                },
            );
        }
        let writes = matches!(acc, Access::Store | Access::Atomic | Access::HelperWrite);
        if writes && !writable {
            return fail(pc, Reason::ReadOnly { reg: breg, ty });
        }
        if acc == Access::Atomic && (base.r.smin != base.r.smax || lo.rem_euclid(size as i64) != 0)
        {
            return fail(
                pc,
                Reason::Misaligned {
                    reg: breg,
                    ty,
                    off: lo,
                    size,
                },
            );
        }
        if let Some((v, vreg)) = value
            && v.is_ptr()
            && !matches!(base.kind, Kind::Stack(_))
        {
            return fail(
                pc,
                Reason::PointerLeak {
                    reg: vreg,
                    ty: v.ty(),
                    into: ty,
                },
            );
        }
        let loaded = Reg::scalar(Range::bits(8 * size.min(8) as u32));
        let Kind::Stack(f) = base.kind else {
            return Ok(loaded);
        };
        let fixed = base.r.smin == base.r.smax;
        let Some(frame) = st.frame_mut(f) else {
            return fail(pc, Reason::Uninit(breg));
        };
        let bytes = lo..hi;
        let each_slot = |r: core::ops::Range<i64>| {
            let first = locate(r.end - 1).0;
            let last = locate(r.start).0;
            first..=last.min(SLOTS - 1)
        };
        let reads = matches!(acc, Access::Load | Access::Atomic | Access::HelperRead);
        let whole = fixed && size == 8 && lo.rem_euclid(8) == 0;
        if reads {
            if acc == Access::Load
                && whole
                && let Some(sp) = frame.slot(locate(lo).0).spill
            {
                return Ok(sp);
            }
            for o in bytes.clone() {
                let (k, b) = locate(o);
                if frame.slot(k).init & (1 << b) == 0 {
                    return fail(pc, Reason::UninitStack { reg: breg, off: o });
                }
            }
            // A spilled pointer only comes back whole: its bytes as numbers would leak it.
            for k in each_slot(bytes.clone()) {
                if let Some(sp) = frame.slot(k).spill
                    && sp.is_ptr()
                {
                    let reason = if acc == Access::HelperRead {
                        Reason::PointerLeak {
                            reg: breg,
                            ty: sp.ty(),
                            into: RegType::Helper,
                        }
                    } else {
                        Reason::PartialPointer {
                            reg: breg,
                            off: -8 * (k as i64 + 1),
                        }
                    };
                    return fail(pc, reason);
                }
            }
        }
        if writes {
            if let Some((v, vreg)) = value
                && v.is_ptr()
                && !whole
            {
                return fail(
                    pc,
                    Reason::PartialSpill {
                        reg: vreg,
                        ty: v.ty(),
                    },
                );
            }
            if acc == Access::Store && whole {
                if let (Some(s), Some((v, _))) = (frame.slot_mut(locate(lo).0), value) {
                    s.init = 0xff;
                    s.spill = Some(v);
                }
            } else {
                for k in each_slot(bytes.clone()) {
                    if let Some(s) = frame.slot_mut(k) {
                        // What is left of a pointer partly overwritten is not readable.
                        if s.spill.is_some_and(|r| r.is_ptr()) {
                            s.init = 0;
                        }
                        s.spill = None;
                    }
                }
                // Bytes certainly written (all of them for a fixed offset; for a helper,
                // as many as its smallest size).
                if fixed {
                    for o in lo..lo + size as i64 {
                        let (k, b) = locate(o);
                        if let Some(s) = frame.slot_mut(k) {
                            s.init |= 1 << b;
                        }
                    }
                }
            }
        }
        Ok(loaded)
    }

    fn jmp(&mut self, pc: usize, i: Insn, st: &mut State) -> Result<Flow, VerifyError> {
        let is32 = i.class() == BPF_JMP32;
        let code = i.op & OP_MASK;
        let x = i.op & SRC_MASK == BPF_X;
        let target = |pc: usize| i.jump_target(pc).unwrap_or(0) as usize;
        match i.op {
            op::EXIT => return self.exit(pc, st),
            op::JA | op::JA32 => return Ok(Flow::Next(target(pc))),
            op::CALL if i.is_local_call() => {
                if st.callers.len() + 1 >= MAX_CALL_DEPTH {
                    return fail(pc, Reason::CallTooDeep);
                }
                let mut callee = Frame::new(st.depth() + 1, pc + 1);
                for r in 1..=5usize {
                    if let (Some(d), Some(s)) = (callee.regs.get_mut(r), st.cur.regs.get(r)) {
                        *d = *s;
                    }
                }
                let caller = core::mem::replace(&mut st.cur, callee);
                st.callers.push(caller);
                return Ok(Flow::Next(target(pc)));
            }
            op::CALL => {
                self.call(pc, i.imm as u32, st)?;
                return Ok(Flow::Next(pc + 1));
            }
            op::CALLX => {
                let r = self.read(pc, st, i.dst)?;
                let id = match r.r.exact() {
                    Some(id) if r.kind == Kind::Scalar && id <= u32::MAX as u64 => id as u32,
                    _ => return fail(pc, Reason::BadCallTarget { reg: i.dst }),
                };
                if self.env.helper(id).is_none() {
                    return fail(pc, Reason::UnknownHelper(id));
                }
                self.call(pc, id, st)?;
                return Ok(Flow::Next(pc + 1));
            }
            _ => {}
        }
        let a = self.read(pc, st, i.dst)?;
        let b = if x {
            self.read(pc, st, i.src)?
        } else if is32 {
            Reg::konst(i.imm as u32 as u64)
        } else {
            Reg::konst(i.imm as i64 as u64)
        };
        let t = target(pc);
        // A NULL check of a pointer that may be NULL.
        if a.is_ptr()
            && a.null
            && b.kind == Kind::Scalar
            && b.r.exact() == Some(0)
            && !is32
            && matches!(code, BPF_JEQ | BPF_JNE)
        {
            let mut other = st.clone();
            if code == BPF_JEQ {
                other.mark_null(a.id);
                st.mark_nonnull(a.id);
            } else {
                other.mark_nonnull(a.id);
                st.mark_null(a.id);
            }
            return Ok(Flow::Fork(t, alloc::boxed::Box::new(other)));
        }
        if a.is_ptr() || b.is_ptr() {
            return Ok(Flow::Fork(t, alloc::boxed::Box::new(st.clone())));
        }
        match decide(code, is32, a.r, b.r) {
            Some(true) => return Ok(Flow::Next(t)),
            Some(false) => return Ok(Flow::Next(pc + 1)),
            None => {}
        }
        let refinable = !is32 || (a.r.umax <= i32::MAX as u64 && b.r.umax <= i32::MAX as u64);
        if !refinable {
            return Ok(Flow::Fork(t, alloc::boxed::Box::new(st.clone())));
        }
        let taken = refine(code, true, a.r, b.r);
        let fall = refine(code, false, a.r, b.r);
        let apply = |s: &mut State, (ra, rb): (Range, Range)| {
            s.set(i.dst, Reg::scalar(ra));
            if x {
                s.set(i.src, Reg::scalar(rb));
            }
        };
        match (taken, fall) {
            (Some(tk), Some(fl)) => {
                let mut other = st.clone();
                apply(&mut other, tk);
                apply(st, fl);
                Ok(Flow::Fork(t, alloc::boxed::Box::new(other)))
            }
            (Some(tk), None) => {
                apply(st, tk);
                Ok(Flow::Next(t))
            }
            (None, Some(fl)) => {
                apply(st, fl);
                Ok(Flow::Next(pc + 1))
            }
            // Neither outcome is possible: this path cannot run.
            (None, None) => Ok(Flow::Done),
        }
    }

    fn exit(&mut self, pc: usize, st: &mut State) -> Result<Flow, VerifyError> {
        let r0 = self.read(pc, st, 0)?;
        let Some(caller) = st.callers.pop() else {
            if let Some(&(_, at)) = st.refs.first() {
                return fail(pc, Reason::Unreleased(at));
            }
            return Ok(Flow::Done);
        };
        // The returning frame's number (the caller is off the list, not yet running).
        let depth = st.depth() + 1;
        if r0.kind == Kind::Stack(depth) {
            return fail(pc, Reason::DanglingStack { reg: 0 });
        }
        let callee = core::mem::replace(&mut st.cur, caller);
        st.set(0, r0);
        for r in 1..=5 {
            st.set(r, Reg::UNINIT);
        }
        // Pointers into the returning frame's stack that the callee left in its callers'
        // stacks are now stale numbers.
        for fr in st.callers.iter_mut().chain(core::iter::once(&mut st.cur)) {
            for s in fr.stack.iter_mut() {
                if s.spill.is_some_and(|r| r.kind == Kind::Stack(depth)) {
                    s.spill = None;
                    s.init = 0;
                }
            }
        }
        Ok(Flow::Next(callee.ret))
    }

    fn call(&self, pc: usize, id: u32, st: &mut State) -> Result<(), VerifyError> {
        let Some(proto) = self.env.proto(id) else {
            return fail(pc, Reason::NoPrototype(id));
        };
        if self.env.unwind_helper == Some(id)
            && let Some(&(_, at)) = st.refs.first()
        {
            return fail(pc, Reason::Unreleased(at));
        }
        let bad = |reg: u8, expected: &'static str, got: Reg| {
            fail(
                pc,
                Reason::HelperArg {
                    helper: id,
                    reg,
                    expected,
                    got: got.ty(),
                },
            )
        };
        let mut map: Option<(u32, MapInfo)> = None;
        let mut rec_size = 0u32;
        let mut release = None;
        for (k, &arg) in proto.args.iter().enumerate() {
            let r = k as u8 + 1;
            if arg == Arg::None {
                continue;
            }
            let v = self.read(pc, st, r)?;
            match arg {
                Arg::None | Arg::Anything | Arg::Size => {}
                Arg::Scalar => {
                    if v.kind != Kind::Scalar {
                        return bad(r, "a number", v);
                    }
                }
                Arg::Map | Arg::Ringbuf => {
                    let want_ring = arg == Arg::Ringbuf;
                    let expected = if want_ring {
                        "a ring-buffer map"
                    } else {
                        "a map with keys (array or hash)"
                    };
                    let Kind::Map(m) = v.kind else {
                        return bad(r, expected, v);
                    };
                    let info = self.map(pc, m)?;
                    if (info.map_type == MapType::Ringbuf) != want_ring {
                        return bad(r, expected, v);
                    }
                    map = Some((m, info));
                }
                Arg::Key | Arg::Value => {
                    let Some((_, info)) = map else {
                        return bad(1, "a map", st.reg(1));
                    };
                    let n = if arg == Arg::Key {
                        info.key_size
                    } else {
                        info.value_size
                    } as u64;
                    if !v.is_ptr() {
                        let what = if arg == Arg::Key {
                            "a pointer to the map's key"
                        } else {
                            "a pointer to a value of the map"
                        };
                        return bad(r, what, v);
                    }
                    self.mem_range(pc, st, r, v, 0, n, n, Access::HelperRead, None)?;
                }
                Arg::MemIn | Arg::MemOut => {
                    let sreg = r + 1;
                    let s = self.read(pc, st, sreg)?;
                    if s.kind != Kind::Scalar {
                        return bad(sreg, "a size (a number)", s);
                    }
                    if s.r.umax > MAX_OFF as u64 {
                        return fail(
                            pc,
                            Reason::UnboundedSize {
                                helper: id,
                                reg: sreg,
                            },
                        );
                    }
                    if s.r.umax > 0 {
                        if !v.is_ptr() {
                            return bad(r, "a pointer to memory", v);
                        }
                        let acc = if arg == Arg::MemIn {
                            Access::HelperRead
                        } else {
                            Access::HelperWrite
                        };
                        self.mem_range(pc, st, r, v, 0, s.r.umin, s.r.umax, acc, None)?;
                    }
                }
                Arg::ConstSize => match v.r.exact() {
                    Some(n) if v.kind == Kind::Scalar && n > 0 && n <= MAX_OFF as u64 => {
                        rec_size = n as u32;
                    }
                    _ => return bad(r, "a constant size between 1 and 2^29", v),
                },
                Arg::Ctx => {
                    if v.kind != Kind::Ctx || v.r.exact() != Some(0) {
                        return bad(r, "the context pointer", v);
                    }
                    let size = self.opts.ctx.map_or(0, |c| c.size as usize);
                    if size < core::mem::size_of::<xcover_session::ProbeCtx>() {
                        return bad(r, "a probe context (this context is smaller)", v);
                    }
                }
                Arg::Record => {
                    let held = st.refs.iter().any(|&(i, _)| i == v.id);
                    if !matches!(v.kind, Kind::Record(_))
                        || v.null
                        || v.r.exact() != Some(0)
                        || !held
                    {
                        return bad(
                            r,
                            "a reserved ring-buffer record, checked against NULL and unmoved",
                            v,
                        );
                    }
                    release = Some(v.id);
                }
            }
        }
        if let Some(rid) = release {
            st.release(rid);
        }
        for r in 1..=5 {
            st.set(r, Reg::UNINIT);
        }
        let r0 = match proto.ret {
            Ret::Scalar => Reg::scalar(Range::UNKNOWN),
            Ret::U32 => Reg::scalar(Range::bits(32)),
            Ret::MapValueOrNull => {
                let Some((m, _)) = map else {
                    return fail(pc, Reason::NoPrototype(id));
                };
                Reg {
                    null: true,
                    id: st.new_id(),
                    ..Reg::ptr(Kind::MapValue(m), 0)
                }
            }
            Ret::RecordOrNull => {
                let rid = st.new_id();
                st.refs.push((rid, pc));
                Reg {
                    null: true,
                    id: rid,
                    ..Reg::ptr(Kind::Record(rec_size), 0)
                }
            }
        };
        st.set(0, r0);
        Ok(())
    }
}

/// Registers each instruction may read before they are written, from it on (bit `r`).
fn liveness(insns: &[Insn], env: &Env) -> Vec<u16> {
    let n = insns.len();
    let mut uses = vec![0u16; n];
    let mut kills = vec![0u16; n];
    let mut succ: Vec<[Option<usize>; 2]> = vec![[None, None]; n];
    let args = |id: u32| -> u16 {
        match env.proto(id) {
            Some(p) => p
                .args
                .iter()
                .enumerate()
                .filter(|(_, a)| **a != Arg::None)
                .fold(0, |m, (k, _)| m | 1 << (k + 1)),
            None => 0b11_1110,
        }
    };
    let mut pc = 0;
    while pc < n {
        let Some(&i) = insns.get(pc) else { break };
        let d = 1u16 << (i.dst & 15);
        let s = 1u16 << (i.src & 15);
        let x = i.op & SRC_MASK == BPF_X;
        let width = if i.is_lddw() { 2 } else { 1 };
        let (u, k) = match i.class() {
            BPF_ALU | BPF_ALU64 => match i.op & OP_MASK {
                BPF_MOV => (if x { s } else { 0 }, d),
                BPF_END | BPF_NEG => (d, d),
                _ => (d | if x { s } else { 0 }, d),
            },
            BPF_LD => (0, d),
            BPF_LDX => (s, d),
            BPF_ST => (d, 0),
            BPF_STX if i.op & MODE_MASK == BPF_ATOMIC => {
                if i.imm == ATOMIC_CMPXCHG {
                    (d | s | 1, 1)
                } else if i.imm & ATOMIC_FETCH != 0 {
                    (d | s, s)
                } else {
                    (d | s, 0)
                }
            }
            BPF_STX => (d | s, 0),
            _ => match i.op {
                op::EXIT => (1, 0),
                op::CALL if i.is_local_call() => (0b11_1110, 0b11_1111),
                op::CALL => (args(i.imm as u32), 0b11_1111),
                op::CALLX => (d | 0b11_1110, 0b11_1111),
                op::JA | op::JA32 => (0, 0),
                _ => (d | if x { s } else { 0 }, 0),
            },
        };
        if let (Some(us), Some(ks)) = (uses.get_mut(pc), kills.get_mut(pc)) {
            *us = u;
            *ks = k;
        }
        let mut next = [None, None];
        if i.op != op::EXIT {
            if !matches!(i.op, op::JA | op::JA32) {
                next[0] = Some(pc + width);
            }
            if !i.is_local_call()
                && let Some(t) = i.jump_target(pc)
            {
                next[1] = usize::try_from(t).ok();
            }
        }
        if let Some(sx) = succ.get_mut(pc) {
            *sx = next;
        }
        pc += width;
    }
    let mut preds: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (p, nx) in succ.iter().enumerate() {
        for t in nx.iter().flatten() {
            if let Some(v) = preds.get_mut(*t) {
                v.push(p);
            }
        }
    }
    let mut live = vec![0u16; n];
    let mut work: Vec<usize> = (0..n).collect();
    let mut queued = vec![true; n];
    while let Some(p) = work.pop() {
        if let Some(q) = queued.get_mut(p) {
            *q = false;
        }
        let out = succ
            .get(p)
            .into_iter()
            .flatten()
            .flatten()
            .fold(0u16, |m, &t| m | live.get(t).copied().unwrap_or(0));
        let u = uses.get(p).copied().unwrap_or(0);
        let k = kills.get(p).copied().unwrap_or(0);
        let new = u | (out & !k);
        if live.get(p).copied() != Some(new) {
            if let Some(l) = live.get_mut(p) {
                *l = new;
            }
            for &q in preds.get(p).into_iter().flatten() {
                if let Some(f) = queued.get_mut(q)
                    && !*f
                {
                    *f = true;
                    work.push(q);
                }
            }
        }
    }
    live
}
