//! What the interceptor remembers of each hook: the [`Hook`] record (where its trampoline's
//! relocated instructions went, the original and patch bytes) and [`Hooks`], every hook made
//! so far, active or retired.
//!
//! Nothing here knows an instruction set: a patch is bytes at an address (plus an optional
//! second patch in the site's padding), and relocated code is a list of offset pairs.

use alloc::vec::Vec;

/// Most instructions a back end relocates for one site.
pub const MAX_MOVED: usize = 5;

/// One relocated instruction: where it was and where its copy starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Moved {
    /// Offset of the original instruction from the function's address.
    pub orig_offset: u32,
    /// Offset of its relocated sequence from the writer's `pc` when relocation started.
    pub new_offset: u32,
}

/// Where the relocated instructions of one function went (see [`Moved`]): at most one per
/// displaced instruction, kept inline so that a hook allocates nothing for it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MovedList {
    n: u8,
    items: [Moved; MAX_MOVED],
}

impl core::ops::Deref for MovedList {
    type Target = [Moved];
    fn deref(&self) -> &[Moved] {
        self.items.get(..self.n as usize).unwrap_or(&[])
    }
}

impl MovedList {
    /// Appends `m`; a full list drops it and says so (a relocator never moves more than
    /// [`MAX_MOVED`] instructions).
    pub fn push(&mut self, m: Moved) -> bool {
        let Some(slot) = self.items.get_mut(self.n as usize) else {
            return false;
        };
        *slot = m;
        self.n += 1;
        true
    }
}

/// A second patch in a site's padding (x86-64: the `jmp rel32` a 2-byte hop lands on):
/// (address, original bytes, new bytes).
pub(crate) type SlotPatch = (u64, [u8; 5], [u8; 5]);

/// One hook: its site, its trampoline's relocated part, its patch.
#[derive(Clone, Debug)]
pub(crate) struct Hook {
    pub(crate) addr: u64,
    pub(crate) cookie: u64,
    /// Start of the relocated instructions in the trampoline.
    pub(crate) reloc_start: u64,
    /// End of the relocated instructions (and jump back).
    pub(crate) reloc_end: u64,
    pub(crate) moved: MovedList,
    pub(crate) original: PatchBytes,
    pub(crate) patch: PatchBytes,
    /// Second patch, in the site's padding: (address, original bytes, new bytes).
    pub(crate) slot: Option<SlotPatch>,
    /// How the site is patched.
    pub(crate) kind: super::HookKind,
    pub(crate) active: bool,
}

/// The bytes an entry patch covers, inline: whole instructions from the entry up to at
/// least 5 bytes, so at most 4 + 15.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PatchBytes {
    pub(crate) len: u8,
    pub(crate) bytes: [u8; 20],
}

impl PatchBytes {
    pub(crate) fn copy(from: &[u8]) -> Option<Self> {
        let mut p = Self::filled(0, from.len())?;
        p.put(0, from)?;
        Some(p)
    }

    /// Overwrites bytes from offset `at`; `None` past the end.
    pub(crate) fn put(&mut self, at: usize, b: &[u8]) -> Option<()> {
        self.bytes.get_mut(at..at + b.len())?.copy_from_slice(b);
        Some(())
    }

    pub(crate) fn filled(b: u8, len: usize) -> Option<Self> {
        (len <= 20).then_some(Self {
            len: len as u8,
            bytes: [b; 20],
        })
    }
}

impl core::ops::Deref for PatchBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.bytes.get(..self.len as usize).unwrap_or(&[])
    }
}

/// Every hook the interceptor made (active or retired), sorted by function address: a
/// sorted `Vec` rather than a map, so that the first (large) batch is moved in as it is,
/// with no copy of its `Hook`s and no new memory (a `BTreeMap` built one insert at a time
/// allocates per hook, in the target, while it is stopped; docs/performance.md, 49ab13d).
#[derive(Default)]
pub(crate) struct Hooks(pub(crate) Vec<Hook>);

impl Hooks {
    pub(crate) fn find(&self, addr: u64) -> Result<usize, usize> {
        self.0.binary_search_by_key(&addr, |h| h.addr)
    }

    pub(crate) fn get(&self, addr: &u64) -> Option<&Hook> {
        self.find(*addr).ok().and_then(|i| self.0.get(i))
    }

    pub(crate) fn get_mut(&mut self, addr: &u64) -> Option<&mut Hook> {
        self.find(*addr).ok().and_then(|i| self.0.get_mut(i))
    }

    /// Adds `new` (sorted by address, no address twice); a hook for an address already
    /// present (a retired one) is replaced.
    pub(crate) fn merge(&mut self, new: Vec<Hook>) {
        if self.0.is_empty() {
            self.0 = new;
            return;
        }
        if new.len() * 8 < self.0.len() {
            for h in new {
                match self.find(h.addr) {
                    Ok(i) => {
                        if let Some(old) = self.0.get_mut(i) {
                            *old = h;
                        }
                    }
                    Err(i) => self.0.insert(i, h),
                }
            }
            return;
        }
        let old = core::mem::take(&mut self.0);
        let mut out = Vec::with_capacity(old.len() + new.len());
        let (mut a, mut b) = (old.into_iter().peekable(), new.into_iter().peekable());
        loop {
            let take_new = match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some(x), Some(y)) => {
                    if x.addr == y.addr {
                        a.next(); // replaced by the new one
                        continue;
                    }
                    y.addr < x.addr
                }
            };
            out.extend(if take_new { b.next() } else { a.next() });
        }
        self.0 = out;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(addr: u64, cookie: u64) -> Hook {
        let p = PatchBytes::filled(0xcc, 5).unwrap();
        Hook {
            addr,
            cookie,
            reloc_start: 0,
            reloc_end: 0,
            moved: MovedList::default(),
            original: p,
            patch: p,
            slot: None,
            kind: crate::core::HookKind::Jmp,
            active: true,
        }
    }

    fn contents(h: &Hooks) -> Vec<(u64, u64)> {
        h.0.iter().map(|h| (h.addr, h.cookie)).collect()
    }

    #[test]
    fn hooks_stay_sorted_and_new_ones_replace_retired_ones() {
        let mut h = Hooks::default();
        h.merge((0..40).map(|i| hook(100 * i, 0)).collect());
        assert_eq!(h.0.len(), 40);
        // Large batch (6 * 8 >= 40): merged in one pass; 500 and 1000 replaced, four added.
        let big = [500, 550, 1000, 5000, 5100, 5200];
        h.merge(big.iter().map(|&a| hook(a, 1)).collect());
        // Small batch: inserted one by one.
        h.merge(vec![hook(0, 2), hook(1, 2)]);
        let c = contents(&h);
        assert!(
            c.windows(2).all(|w| w[0].0 < w[1].0),
            "sorted, no address twice"
        );
        assert_eq!(c.len(), 45);
        for (addr, cookie) in [
            (0, 2),
            (1, 2),
            (500, 1),
            (550, 1),
            (1000, 1),
            (5000, 1),
            (600, 0),
        ] {
            assert_eq!(h.get(&addr).map(|h| h.cookie), Some(cookie), "{addr}");
        }
        assert!(h.get(&650).is_none());
        h.get_mut(&600).unwrap().active = false;
        assert!(!h.get(&600).unwrap().active);
    }
}
