//! Near-memory arenas: where trampolines live.
//!
//! A trampoline must be within the back end's reach of the site it serves (x86-64: ±2 GiB,
//! for the `rel32` entry jump and the trampoline's jump back), so trampolines are packed
//! into arenas of [`ARENA_SIZE`] bytes mapped near their sites ([`Memory::alloc_near`]):
//! one arena per region of code, many trampolines per arena.
//!
//! # Invariants
//! - An arena is read+exec at rest. While a batch writes trampolines it is read+write+exec
//!   (`dirty`), and `Arenas::seal` makes every dirty arena read+exec again before any
//!   patch can reach it.
//! - Bytes below an arena's cursor are written trampolines and are never rewritten: a
//!   thread may be inside any of them. Arenas are never unmapped until the session ends.
//! - Each trampoline starts 16-byte aligned.

use alloc::vec::Vec;

use crate::core::{MemError, Memory, Protection, SkipReason};

/// Size of one trampoline arena.
pub const ARENA_SIZE: usize = 256 * 1024;

/// One mapping of trampolines.
struct Arena {
    base: u64,
    used: usize,
    dirty: bool,
}

/// Every arena mapped so far.
#[derive(Default)]
pub(crate) struct Arenas(Vec<Arena>);

impl Arenas {
    /// Number of arenas mapped so far.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// An arena within `reach` of `addr` with room left (the newest such), or a fresh one
    /// when `fresh` is set or none has room; `NoNearMemory` when none can be mapped there.
    pub(crate) fn for_site<M: Memory>(
        &mut self,
        mem: &mut M,
        addr: u64,
        reach: u64,
        fresh: bool,
    ) -> Result<usize, SkipReason> {
        let near = |base: u64| {
            base.abs_diff(addr) < reach && (base + ARENA_SIZE as u64).abs_diff(addr) < reach
        };
        if !fresh
            && let Some(i) = self
                .0
                .iter()
                .rposition(|a| near(a.base) && a.used + 1024 < ARENA_SIZE)
        {
            return Ok(i);
        }
        let base = mem
            .alloc_near(addr, ARENA_SIZE)
            .ok_or(SkipReason::NoNearMemory)?;
        if !near(base) {
            return Err(SkipReason::NoNearMemory);
        }
        self.0.push(Arena {
            base,
            used: 0,
            dirty: true,
        });
        Ok(self.0.len() - 1)
    }

    /// Where the next trampoline of arena `i` starts (its cursor, 16-byte aligned).
    pub(crate) fn cursor(&self, i: usize) -> Option<u64> {
        self.0.get(i).map(|a| align16(a.base + a.used as u64))
    }

    /// Writes `bytes` (a trampoline that runs from `pc` to `end`) into arena `i` and moves
    /// its cursor to `end`. `Err(None)`: it does not fit (try a fresh arena);
    /// `Err(Some(_))`: the arena could not be made writable or written.
    pub(crate) fn write<M: Memory>(
        &mut self,
        mem: &mut M,
        i: usize,
        pc: u64,
        end: u64,
        bytes: &[u8],
    ) -> Result<(), Option<SkipReason>> {
        let arena = self.0.get_mut(i).ok_or(Some(SkipReason::NoNearMemory))?;
        if end > arena.base + ARENA_SIZE as u64 {
            return Err(None);
        }
        if !arena.dirty
            && mem
                .protect(arena.base, ARENA_SIZE, Protection::ReadWriteExec)
                .is_err()
        {
            return Err(Some(SkipReason::NoNearMemory));
        }
        arena.dirty = true;
        mem.write(pc, bytes)
            .map_err(|_| Some(SkipReason::NoNearMemory))?;
        arena.used = (end - arena.base) as usize;
        Ok(())
    }

    /// Makes every arena written since the last call read+exec again.
    pub(crate) fn seal<M: Memory>(&mut self, mem: &mut M) -> Result<(), MemError> {
        let mut res = Ok(());
        for a in &mut self.0 {
            if a.dirty {
                a.dirty = false;
                res = res.and(mem.protect(a.base, ARENA_SIZE, Protection::ReadExec));
            }
        }
        res
    }

    /// Whether `addr` lies in the written part of an arena (below its cursor).
    pub(crate) fn is_written(&self, addr: u64) -> bool {
        self.0
            .iter()
            .any(|a| addr >= a.base && addr < a.base + a.used as u64)
    }
}

fn align16(v: u64) -> u64 {
    (v + 15) & !15
}
