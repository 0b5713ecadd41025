//! Value ranges of scalars: unsigned and signed bounds kept consistent with each other.
//!
//! Every operation over-approximates: the result range contains every value the operation
//! can produce from values in the operand ranges (with the interpreter's semantics, which
//! both back ends share). When in doubt a result is [`Range::UNKNOWN`].

use crate::insn::*;
use crate::interp::{alu32, alu64};

/// The values a scalar may hold: `umin..=umax` as unsigned and `smin..=smax` as signed,
/// both at once (the set is their intersection).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Range {
    pub umin: u64,
    pub umax: u64,
    pub smin: i64,
    pub smax: i64,
}

impl Range {
    /// Any 64-bit value.
    pub const UNKNOWN: Range = Range {
        umin: 0,
        umax: u64::MAX,
        smin: i64::MIN,
        smax: i64::MAX,
    };

    /// Exactly `v`.
    pub fn konst(v: u64) -> Range {
        Range {
            umin: v,
            umax: v,
            smin: v as i64,
            smax: v as i64,
        }
    }

    /// `lo..=hi`, unsigned.
    pub fn unsigned(lo: u64, hi: u64) -> Range {
        Range {
            umin: lo,
            umax: hi,
            ..Range::UNKNOWN
        }
        .sync()
        .unwrap_or(Range::UNKNOWN)
    }

    /// `lo..=hi`, signed.
    pub fn signed(lo: i64, hi: i64) -> Range {
        Range {
            smin: lo,
            smax: hi,
            ..Range::UNKNOWN
        }
        .sync()
        .unwrap_or(Range::UNKNOWN)
    }

    /// Values below 2^bits (zero-extended loads and 32-bit results).
    pub fn bits(bits: u32) -> Range {
        if bits >= 64 {
            Range::UNKNOWN
        } else {
            Range::unsigned(0, (1u64 << bits) - 1)
        }
    }

    /// Sign-extended values of `bits` bits.
    pub fn sbits(bits: u32) -> Range {
        if bits >= 64 || bits == 0 {
            Range::UNKNOWN
        } else {
            let h = 1i64 << (bits - 1);
            Range::signed(-h, h - 1)
        }
    }

    /// The value, when there is only one.
    pub fn exact(&self) -> Option<u64> {
        (self.umin == self.umax).then_some(self.umin)
    }

    /// Whether every value of `other` is in `self`.
    pub fn contains(&self, other: &Range) -> bool {
        self.umin <= other.umin
            && self.umax >= other.umax
            && self.smin <= other.smin
            && self.smax >= other.smax
    }

    /// Tightens each pair of bounds with what the other pair says; `None` when no value is
    /// left (a branch that cannot be taken).
    pub fn sync(mut self) -> Option<Range> {
        for _ in 0..2 {
            // A signed range that does not cross zero is a contiguous unsigned range.
            if (self.smin >= 0) == (self.smax >= 0) {
                self.umin = self.umin.max(self.smin as u64);
                self.umax = self.umax.min(self.smax as u64);
            }
            // An unsigned range within one half is a contiguous signed range.
            if (self.umin as i64 >= 0) == (self.umax as i64 >= 0) {
                self.smin = self.smin.max(self.umin as i64);
                self.smax = self.smax.min(self.umax as i64);
            }
            if self.umin > self.umax || self.smin > self.smax {
                return None;
            }
        }
        Some(self)
    }

    /// The range of the low 32 bits, as a 64-bit value.
    pub fn low32(&self) -> Range {
        if self.umax <= u32::MAX as u64 {
            *self
        } else if self.umax - self.umin <= u32::MAX as u64
            && (self.umin as u32) <= (self.umax as u32)
        {
            Range::unsigned(self.umin as u32 as u64, self.umax as u32 as u64)
        } else {
            Range::bits(32)
        }
    }
}

fn hi_mask(v: u64) -> u64 {
    if v == 0 {
        0
    } else {
        u64::MAX >> v.leading_zeros()
    }
}

fn add(a: Range, b: Range) -> Range {
    let mut r = Range::UNKNOWN;
    if let (Some(lo), Some(hi)) = (a.umin.checked_add(b.umin), a.umax.checked_add(b.umax)) {
        r.umin = lo;
        r.umax = hi;
    }
    if let (Some(lo), Some(hi)) = (a.smin.checked_add(b.smin), a.smax.checked_add(b.smax)) {
        r.smin = lo;
        r.smax = hi;
    }
    r.sync().unwrap_or(Range::UNKNOWN)
}

fn sub(a: Range, b: Range) -> Range {
    let mut r = Range::UNKNOWN;
    if a.umin >= b.umax {
        r.umin = a.umin - b.umax;
        r.umax = a.umax - b.umin;
    }
    if let (Some(lo), Some(hi)) = (a.smin.checked_sub(b.smax), a.smax.checked_sub(b.smin)) {
        r.smin = lo;
        r.smax = hi;
    }
    r.sync().unwrap_or(Range::UNKNOWN)
}

/// 64-bit ALU operation `code` (with the instruction's `off`) on ranges.
pub(crate) fn alu64_range(code: u8, off: i16, a: Range, b: Range) -> Range {
    if let (Some(x), Some(y)) = (a.exact(), b.exact())
        && let Some(v) = alu64(code, off, x, y)
    {
        return Range::konst(v);
    }
    let signed = off != 0;
    match code {
        BPF_ADD => add(a, b),
        BPF_SUB => sub(a, b),
        BPF_MUL => match (a.umax.checked_mul(b.umax), a.umin.checked_mul(b.umin)) {
            (Some(hi), Some(lo)) => Range::unsigned(lo, hi),
            _ => Range::UNKNOWN,
        },
        BPF_DIV if !signed => match b.exact() {
            Some(0) => Range::konst(0),
            Some(c) => Range::unsigned(a.umin / c, a.umax / c),
            None => Range::unsigned(0, a.umax),
        },
        BPF_MOD if !signed => match b.exact() {
            Some(0) => a,
            Some(c) if a.umax < c => a,
            Some(c) => Range::unsigned(0, c - 1),
            None => Range::unsigned(0, a.umax),
        },
        BPF_AND => {
            let r = Range::unsigned(0, a.umax.min(b.umax));
            match (a.exact(), b.exact()) {
                (_, Some(m)) | (Some(m), _) => Range::unsigned(0, r.umax.min(m)),
                _ => r,
            }
        }
        BPF_OR => Range::unsigned(a.umin.max(b.umin), hi_mask(a.umax | b.umax)),
        BPF_XOR => Range::unsigned(0, hi_mask(a.umax | b.umax)),
        BPF_LSH => match b.exact() {
            Some(k) => {
                let k = (k & 63) as u32;
                if a.umax.leading_zeros() >= k {
                    Range::unsigned(a.umin << k, a.umax << k)
                } else {
                    Range::UNKNOWN
                }
            }
            None => Range::UNKNOWN,
        },
        BPF_RSH => match b.exact() {
            Some(k) => {
                let k = (k & 63) as u32;
                Range::unsigned(a.umin >> k, a.umax >> k)
            }
            None => Range::unsigned(0, a.umax),
        },
        BPF_ARSH => match b.exact() {
            Some(k) => {
                let k = (k & 63) as u32;
                Range::signed(a.smin >> k, a.smax >> k)
            }
            None => Range::signed(a.smin.min(0), a.smax.max(0)),
        },
        BPF_NEG => {
            if a.smin != i64::MIN {
                Range::signed(-a.smax, -a.smin)
            } else {
                Range::UNKNOWN
            }
        }
        BPF_MOV => match off {
            0 => b,
            8 | 16 | 32 => {
                let bits = off as u32;
                let h = 1u64 << (bits - 1);
                if b.umax < h { b } else { Range::sbits(bits) }
            }
            _ => Range::UNKNOWN,
        },
        _ => Range::UNKNOWN,
    }
}

/// 32-bit ALU operation on ranges; the result is zero-extended.
pub(crate) fn alu32_range(code: u8, off: i16, a: Range, b: Range) -> Range {
    let (a, b) = (a.low32(), b.low32());
    if let (Some(x), Some(y)) = (a.exact(), b.exact())
        && let Some(v) = alu32(code, off, x as u32, y as u32)
    {
        return Range::konst(v as u64);
    }
    let r = match code {
        // Operations whose 32-bit result equals the 64-bit one on values below 2^32, when
        // that stays below 2^32.
        BPF_ADD | BPF_SUB | BPF_MUL | BPF_OR | BPF_AND | BPF_XOR | BPF_RSH if off == 0 => {
            let b = if code == BPF_RSH {
                b.exact().map_or(Range::UNKNOWN, |k| Range::konst(k & 31))
            } else {
                b
            };
            alu64_range(code, 0, a, b)
        }
        BPF_DIV | BPF_MOD if off == 0 => alu64_range(code, 0, a, b),
        BPF_LSH => match b.exact() {
            Some(k) => alu64_range(code, 0, a, Range::konst(k & 31)),
            None => Range::UNKNOWN,
        },
        BPF_MOV if off == 0 => b,
        _ => Range::UNKNOWN,
    };
    if r.umax <= u32::MAX as u64 {
        r
    } else {
        Range::bits(32)
    }
}

/// Byte swaps and truncations (`le`/`be`/`bswap`) of `width` bits.
pub(crate) fn end_range(swap: bool, width: i32, a: Range) -> Range {
    if let Some(v) = a.exact() {
        return Range::konst(match (swap, width) {
            (false, 16) => v as u16 as u64,
            (false, 32) => v as u32 as u64,
            (true, 16) => (v as u16).swap_bytes() as u64,
            (true, 32) => (v as u32).swap_bytes() as u64,
            (true, _) => v.swap_bytes(),
            _ => v,
        });
    }
    match (swap, width) {
        (false, 64) => a,
        (false, 16 | 32) if a.umax < 1u64 << width => a,
        (_, 16 | 32) => Range::bits(width as u32),
        _ => Range::UNKNOWN,
    }
}

/// Whether the 64-bit (or, with `is32`, 32-bit) comparison `code` of a value in `a` with a
/// value in `b` is always true (`Some(true)`), always false, or either.
pub(crate) fn decide(code: u8, is32: bool, a: Range, b: Range) -> Option<bool> {
    let (a, b) = if is32 {
        let (a, b) = (a.low32(), b.low32());
        // Signed 32-bit comparisons agree with unsigned ones below 2^31.
        if matches!(code, BPF_JSGT | BPF_JSGE | BPF_JSLT | BPF_JSLE)
            && (a.umax > i32::MAX as u64 || b.umax > i32::MAX as u64)
        {
            return None;
        }
        (a, b)
    } else {
        (a, b)
    };
    let always = |t: bool, f: bool| {
        if t {
            Some(true)
        } else if f {
            Some(false)
        } else {
            None
        }
    };
    match code {
        BPF_JEQ | BPF_JNE => {
            let eq = match (a.exact(), b.exact()) {
                (Some(x), Some(y)) => Some(x == y),
                _ if a.umax < b.umin || b.umax < a.umin || a.smax < b.smin || b.smax < a.smin => {
                    Some(false)
                }
                _ => None,
            };
            eq.map(|e| e == (code == BPF_JEQ))
        }
        BPF_JGT => always(a.umin > b.umax, a.umax <= b.umin),
        BPF_JGE => always(a.umin >= b.umax, a.umax < b.umin),
        BPF_JLT => always(a.umax < b.umin, a.umin >= b.umax),
        BPF_JLE => always(a.umax <= b.umin, a.umin > b.umax),
        BPF_JSGT => always(a.smin > b.smax, a.smax <= b.smin),
        BPF_JSGE => always(a.smin >= b.smax, a.smax < b.smin),
        BPF_JSLT => always(a.smax < b.smin, a.smin >= b.smax),
        BPF_JSLE => always(a.smax <= b.smin, a.smin > b.smax),
        BPF_JSET => match (a.exact(), b.exact()) {
            (Some(x), Some(y)) => Some(x & y != 0),
            _ if a.umax == 0 || b.umax == 0 => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// `x` without the value of `y` when `y` is a constant at one end of `x`; `None` if
/// nothing is left.
fn cut(mut x: Range, y: Range) -> Option<Range> {
    let Some(c) = y.exact() else { return Some(x) };
    if x.exact() == Some(c) {
        return None;
    }
    if x.umin == c {
        x.umin = x.umin.saturating_add(1);
    }
    if x.umax == c {
        x.umax = x.umax.saturating_sub(1);
    }
    if x.smin == c as i64 {
        x.smin = x.smin.saturating_add(1);
    }
    if x.smax == c as i64 {
        x.smax = x.smax.saturating_sub(1);
    }
    x.sync()
}

/// The ranges of `a` and `b` given that the 64-bit comparison `code` came out `taken`;
/// `None` when it cannot.
pub(crate) fn refine(code: u8, taken: bool, a: Range, b: Range) -> Option<(Range, Range)> {
    // Normalise to a comparison that holds.
    let code = if taken {
        code
    } else {
        match code {
            BPF_JEQ => BPF_JNE,
            BPF_JNE => BPF_JEQ,
            BPF_JGT => BPF_JLE,
            BPF_JGE => BPF_JLT,
            BPF_JLT => BPF_JGE,
            BPF_JLE => BPF_JGT,
            BPF_JSGT => BPF_JSLE,
            BPF_JSGE => BPF_JSLT,
            BPF_JSLT => BPF_JSGE,
            BPF_JSLE => BPF_JSGT,
            // Nothing learnt from a false `jset`, except that it can be false.
            _ => return Some((a, b)),
        }
    };
    let (mut a, mut b) = (a, b);
    match code {
        BPF_JEQ => {
            let both = Range {
                umin: a.umin.max(b.umin),
                umax: a.umax.min(b.umax),
                smin: a.smin.max(b.smin),
                smax: a.smax.min(b.smax),
            };
            a = both;
            b = both;
        }
        BPF_JNE => {
            // Only a constant at one end of the other range can be cut off.
            let (a0, b0) = (a, b);
            a = cut(a0, b0)?;
            b = cut(b0, a0)?;
        }
        BPF_JGT | BPF_JGE | BPF_JLT | BPF_JLE => {
            // Make it `lo < hi` or `lo <= hi`.
            let strict = matches!(code, BPF_JGT | BPF_JLT);
            let (lo, hi) = if matches!(code, BPF_JGT | BPF_JGE) {
                (&mut b, &mut a)
            } else {
                (&mut a, &mut b)
            };
            let d = strict as u64;
            hi.umin = hi.umin.max(lo.umin.checked_add(d)?);
            lo.umax = lo.umax.min(hi.umax.checked_sub(d)?);
        }
        BPF_JSGT | BPF_JSGE | BPF_JSLT | BPF_JSLE => {
            let strict = matches!(code, BPF_JSGT | BPF_JSLT);
            let (lo, hi) = if matches!(code, BPF_JSGT | BPF_JSGE) {
                (&mut b, &mut a)
            } else {
                (&mut a, &mut b)
            };
            let d = strict as i64;
            hi.smin = hi.smin.max(lo.smin.checked_add(d)?);
            lo.smax = lo.smax.min(hi.smax.checked_sub(d)?);
        }
        _ => {}
    }
    Some((a.sync()?, b.sync()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_and_basic_ops() {
        assert_eq!(Range::unsigned(0, 8).smax, 8);
        assert_eq!(Range::signed(-1, 1).umax, u64::MAX);
        let r = alu64_range(BPF_AND, 0, Range::UNKNOWN, Range::konst(7));
        assert_eq!((r.umin, r.umax), (0, 7));
        let r = alu64_range(BPF_LSH, 0, r, Range::konst(3));
        assert_eq!((r.umin, r.umax), (0, 56));
        let r = alu32_range(BPF_ADD, 0, Range::konst(u32::MAX as u64), Range::konst(1));
        assert_eq!(r.exact(), Some(0));
        assert_eq!(
            decide(BPF_JGT, false, Range::unsigned(0, 5), Range::konst(5)),
            Some(false)
        );
        let (a, _) = refine(BPF_JGT, false, Range::UNKNOWN, Range::konst(10)).unwrap();
        assert_eq!(a.umax, 10);
        assert!(refine(BPF_JEQ, true, Range::konst(1), Range::konst(2)).is_none());
    }
}
