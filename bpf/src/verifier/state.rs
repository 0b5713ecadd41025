//! The abstract state of one path: a type and range per register, the stack's bytes, the
//! call frames and the ring-buffer records held. And when one state covers another, so
//! that a path reaching a state already verified can stop.

use alloc::vec::Vec;

use super::RegType;
use super::bounds::Range;
use crate::insn::STACK_SIZE;

/// What a register (or a spilled stack slot) holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Nothing the program may read.
    Uninit,
    /// A number.
    Scalar,
    /// The context.
    Ctx,
    /// A pointer into the stack of frame `n` (0 = the main program).
    Stack(u8),
    /// A pointer into a value of map `n`.
    MapValue(u32),
    /// Map `n` itself (its header: only helpers may use it).
    Map(u32),
    /// A ring-buffer record of this many bytes.
    Record(u32),
}

/// One register: its kind, whether it may be NULL, an id, and a range.
///
/// For a scalar the range is its value; for a pointer it is the offset from the start of
/// the object (signed bounds only). `id` links the copies of one NULL-able pointer (they are
/// checked together) and names a ring-buffer record reference; 0 = none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reg {
    pub kind: Kind,
    pub null: bool,
    pub id: u32,
    pub r: Range,
}

impl Reg {
    pub const UNINIT: Reg = Reg {
        kind: Kind::Uninit,
        null: false,
        id: 0,
        r: Range::UNKNOWN,
    };

    pub fn scalar(r: Range) -> Reg {
        Reg {
            kind: Kind::Scalar,
            r,
            ..Reg::UNINIT
        }
    }

    pub fn konst(v: u64) -> Reg {
        Reg::scalar(Range::konst(v))
    }

    pub fn ptr(kind: Kind, off: i64) -> Reg {
        Reg {
            kind,
            r: Range::konst(off as u64),
            ..Reg::UNINIT
        }
    }

    /// Whether this is a pointer of any kind.
    pub fn is_ptr(&self) -> bool {
        !matches!(self.kind, Kind::Uninit | Kind::Scalar)
    }

    /// The public name of its type.
    pub fn ty(&self) -> RegType {
        match (self.kind, self.null) {
            (Kind::Uninit, _) => RegType::Uninit,
            (Kind::Scalar, _) => RegType::Scalar,
            (Kind::Ctx, _) => RegType::Ctx,
            (Kind::Stack(_), _) => RegType::Stack,
            (Kind::MapValue(_), false) => RegType::MapValue,
            (Kind::MapValue(_), true) => RegType::MapValueOrNull,
            (Kind::Map(_), _) => RegType::Map,
            (Kind::Record(_), false) => RegType::Record,
            (Kind::Record(_), true) => RegType::RecordOrNull,
        }
    }
}

/// Eight bytes of stack: which are initialised (bit `i` = byte `i`, lowest address first),
/// and the register spilled there by an aligned 8-byte store, if that is what it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct Slot {
    pub init: u8,
    pub spill: Option<Reg>,
}

/// Slots per frame.
pub(crate) const SLOTS: usize = STACK_SIZE / 8;

/// Slot index and byte within it of stack offset `off` (in `[-512, 0)`).
pub(crate) fn locate(off: i64) -> (usize, u32) {
    let k = (-off - 1) / 8;
    (k as usize, (off + 8 * (k + 1)) as u32)
}

/// One call frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Frame {
    pub regs: [Reg; 11],
    /// Slot `k` covers `r10 - 8(k+1) .. r10 - 8k`; missing slots are uninitialised.
    pub stack: Vec<Slot>,
    /// Where the caller resumes (0 for the main frame).
    pub ret: usize,
}

impl Frame {
    pub fn new(depth: u8, ret: usize) -> Frame {
        let mut regs = [Reg::UNINIT; 11];
        if let Some(fp) = regs.get_mut(10) {
            *fp = Reg::ptr(Kind::Stack(depth), 0);
        }
        Frame {
            regs,
            stack: Vec::new(),
            ret,
        }
    }

    pub fn slot(&self, k: usize) -> Slot {
        self.stack.get(k).copied().unwrap_or_default()
    }

    pub fn slot_mut(&mut self, k: usize) -> Option<&mut Slot> {
        if k >= SLOTS {
            return None;
        }
        if self.stack.len() <= k {
            self.stack.resize(k + 1, Slot::default());
        }
        self.stack.get_mut(k)
    }
}

/// The state of one path.
#[derive(Clone, Debug)]
pub(crate) struct State {
    /// The frames of the callers, the main program first.
    pub callers: Vec<Frame>,
    /// The running frame.
    pub cur: Frame,
    /// Ring-buffer records held: reference id and the instruction that reserved it.
    pub refs: Vec<(u32, usize)>,
    /// The next id to hand out.
    pub next_id: u32,
}

impl State {
    pub fn depth(&self) -> u8 {
        self.callers.len() as u8
    }

    pub fn reg(&self, r: u8) -> Reg {
        self.cur
            .regs
            .get(r as usize)
            .copied()
            .unwrap_or(Reg::UNINIT)
    }

    pub fn set(&mut self, r: u8, v: Reg) {
        if let Some(x) = self.cur.regs.get_mut(r as usize) {
            *x = v;
        }
    }

    pub fn frame_mut(&mut self, f: u8) -> Option<&mut Frame> {
        if f as usize == self.callers.len() {
            Some(&mut self.cur)
        } else {
            self.callers.get_mut(f as usize)
        }
    }

    pub fn new_id(&mut self) -> u32 {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.next_id
    }

    /// Applies `f` to every register and spilled register of every frame.
    pub fn for_each_reg(&mut self, mut f: impl FnMut(&mut Reg)) {
        for fr in self
            .callers
            .iter_mut()
            .chain(core::iter::once(&mut self.cur))
        {
            fr.regs.iter_mut().for_each(&mut f);
            for s in fr.stack.iter_mut() {
                if let Some(r) = s.spill.as_mut() {
                    f(r);
                }
            }
        }
    }

    /// The pointers with `id` are NULL on this path: they become the number 0, and a
    /// ring-buffer record that was never reserved is no longer held.
    pub fn mark_null(&mut self, id: u32) {
        if id == 0 {
            return;
        }
        self.for_each_reg(|r| {
            if r.id == id && r.null {
                *r = Reg::konst(0);
            }
        });
        self.refs.retain(|&(i, _)| i != id);
    }

    /// The pointers with `id` are not NULL on this path.
    pub fn mark_nonnull(&mut self, id: u32) {
        if id == 0 {
            return;
        }
        self.for_each_reg(|r| {
            if r.id == id && r.null {
                r.null = false;
                if let Kind::MapValue(_) = r.kind {
                    r.id = 0;
                }
            }
        });
    }

    /// Record `id` was submitted or discarded: every copy of it becomes unusable.
    pub fn release(&mut self, id: u32) {
        self.refs.retain(|&(i, _)| i != id);
        for fr in self
            .callers
            .iter_mut()
            .chain(core::iter::once(&mut self.cur))
        {
            for r in fr.regs.iter_mut() {
                if r.id == id && matches!(r.kind, Kind::Record(_)) {
                    *r = Reg::UNINIT;
                }
            }
            for s in fr.stack.iter_mut() {
                if s.spill
                    .is_some_and(|r| r.id == id && matches!(r.kind, Kind::Record(_)))
                {
                    s.spill = None;
                }
            }
        }
    }
}

/// Old-to-current id pairs seen while comparing two states: ids must correspond one to one.
struct IdMap(Vec<(u32, u32)>);

impl IdMap {
    fn same(&mut self, old: u32, cur: u32) -> bool {
        if old == 0 || cur == 0 {
            return old == cur;
        }
        for &(o, c) in &self.0 {
            if o == old {
                return c == cur;
            }
            if c == cur {
                return false;
            }
        }
        self.0.push((old, cur));
        true
    }
}

fn reg_covers(o: &Reg, c: &Reg, m: &mut IdMap) -> bool {
    match (o.kind, c.kind) {
        // The old path never read it before writing it (or it would have been rejected).
        (Kind::Uninit, _) => true,
        (_, Kind::Uninit) => false,
        (Kind::Scalar, Kind::Scalar) => o.r.contains(&c.r),
        (ok, ck) if ok == ck => {
            o.null == c.null && o.r.smin <= c.r.smin && o.r.smax >= c.r.smax && m.same(o.id, c.id)
        }
        _ => false,
    }
}

fn slot_covers(o: &Slot, c: &Slot, m: &mut IdMap) -> bool {
    if o.init & !c.init != 0 {
        return false;
    }
    match (&o.spill, &c.spill) {
        (Some(os), Some(cs)) => reg_covers(os, cs, m),
        // Plain bytes read back as an unknown number.
        (Some(os), None) => os.kind == Kind::Scalar && os.r == Range::UNKNOWN,
        (None, Some(cs)) => !cs.is_ptr(),
        (None, None) => true,
    }
}

fn frame_covers(o: &Frame, c: &Frame, live: u16, m: &mut IdMap) -> bool {
    if o.ret != c.ret {
        return false;
    }
    for (r, (or, cr)) in o.regs.iter().zip(c.regs.iter()).enumerate() {
        if live & (1 << r) != 0 && !reg_covers(or, cr, m) {
            return false;
        }
    }
    let n = o.stack.len().max(c.stack.len());
    (0..n).all(|k| slot_covers(&o.slot(k), &c.slot(k), m))
}

/// Whether everything that can happen from `cur` can happen from `old` (so a path at `cur`
/// is safe if every path from `old` was). `live` = registers of the running frame that may
/// be read before being written from here.
pub(crate) fn covers(old: &State, cur: &State, live: u16) -> bool {
    if old.callers.len() != cur.callers.len() || old.refs.len() != cur.refs.len() {
        return false;
    }
    let mut m = IdMap(Vec::new());
    // After a return, callers see r0 (set by the return) and r6-r10 (r1-r5 are clobbered).
    const CALLEE_SAVED: u16 = 0b111_1100_0000;
    for (of, cf) in old.callers.iter().zip(cur.callers.iter()) {
        if !frame_covers(of, cf, CALLEE_SAVED, &mut m) {
            return false;
        }
    }
    frame_covers(&old.cur, &cur.cur, live | 1 << 10, &mut m)
        && old
            .refs
            .iter()
            .zip(cur.refs.iter())
            .all(|(&(o, _), &(c, _))| m.same(o, c))
}
