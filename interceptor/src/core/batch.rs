//! Batches: hooks planned (trampolines written, nothing patched) and hooks selected for
//! removal, with the thread fix-ups each needs before it is committed.

use alloc::vec::Vec;

use super::hooks::{Hook, MovedList};
use super::{HookKind, SkipReason};

/// What a stopped thread must do before patches are written or removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpFixup {
    /// Leave it.
    Untouched,
    /// Set its instruction pointer to this address.
    MoveTo(u64),
    /// It is inside the patched bytes of the function at this address, with no equivalent
    /// place: cancel that function ([`HookBatch::cancel`]) or stop again later.
    Blocked(u64),
}

/// Hooks planned and trampolines written, entry patches not yet.
pub struct HookBatch {
    pub(super) planned: Vec<Hook>,
    pub(super) outcomes: Vec<(u64, Result<HookKind, SkipReason>)>,
}

impl HookBatch {
    /// Per function of the request, in order: hooked (once committed), and how, or skipped.
    pub fn outcomes(&self) -> &[(u64, Result<HookKind, SkipReason>)] {
        &self.outcomes
    }

    /// Number of functions that will be patched.
    pub fn len(&self) -> usize {
        self.planned.len()
    }

    /// Whether nothing will be patched.
    pub fn is_empty(&self) -> bool {
        self.planned.is_empty()
    }

    /// Where a stopped thread at `ip` must go before the patches are written.
    pub fn fixup(&self, ip: u64) -> IpFixup {
        let i = self.planned.partition_point(|h| h.addr <= ip);
        if let Some(h) = i.checked_sub(1).and_then(|i| self.planned.get(i))
            && let Some(f) = hook_fixup(h, ip)
        {
            return f;
        }
        for h in &self.planned {
            if let Some((s, _, _)) = h.slot
                && (s..s + 5).contains(&ip)
            {
                return IpFixup::Blocked(h.addr);
            }
        }
        IpFixup::Untouched
    }

    /// Drops the function at `addr` from the batch (reported as [`SkipReason::ThreadInPatch`]).
    pub fn cancel(&mut self, addr: u64) {
        self.planned.retain(|h| h.addr != addr);
        for o in &mut self.outcomes {
            if o.0 == addr {
                o.1 = Err(SkipReason::ThreadInPatch);
            }
        }
    }
}

fn hook_fixup(h: &Hook, ip: u64) -> Option<IpFixup> {
    let off = ip.checked_sub(h.addr)?;
    if off == 0 || off >= h.original.len() as u64 {
        return None;
    }
    Some(match h.moved.iter().find(|m| m.orig_offset as u64 == off) {
        Some(m) => IpFixup::MoveTo(h.reloc_start + m.new_offset as u64),
        None => IpFixup::Blocked(h.addr),
    })
}

/// Hooks selected for removal.
pub struct UnhookBatch {
    /// (reloc_start, reloc_end, addr, moved) of each hook.
    pub(super) ranges: Vec<(u64, u64, u64, MovedList)>,
    /// (slot, addr) of each hop slot: a thread on the slot's jump has only taken the hop.
    pub(super) slots: Vec<(u64, u64)>,
}

impl UnhookBatch {
    /// Where a stopped thread at `ip` should go before the original bytes come back.
    ///
    /// A thread at the start of a relocated instruction moves to the original one; anywhere
    /// else in a trampoline it may stay: trampolines stay mapped and jump back to original
    /// code. A thread on a hop slot's jump (padding that becomes `int3` again) moves back to
    /// the function's entry: it has only taken the 2-byte hop.
    pub fn fixup(&self, ip: u64) -> IpFixup {
        for (slot, addr) in &self.slots {
            if (*slot..*slot + 5).contains(&ip) {
                return IpFixup::MoveTo(*addr);
            }
        }
        for (start, end, addr, moved) in &self.ranges {
            if (*start..*end).contains(&ip) {
                let off = ip - start;
                if let Some(m) = moved.iter().find(|m| m.new_offset as u64 == off) {
                    return IpFixup::MoveTo(addr + m.orig_offset as u64);
                }
            }
        }
        IpFixup::Untouched
    }

    /// Number of functions to unhook.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// Whether nothing is to be unhooked.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}
