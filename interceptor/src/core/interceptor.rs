//! The interceptor: the arch-neutral driver of planning, trampolines, commit and unhook.
//!
//! [`Interceptor::prepare_hooks`] reads each site's code, lets the back end plan its patch
//! and build its trampoline at the cursor of a near-memory arena ([`crate::arena`]), and
//! records a [`Hook`]; [`Interceptor::commit_hooks`] writes the patches in one pass.
//! Unhooking mirrors it. Everything instruction-set specific goes through [`Backend`].

use alloc::vec::Vec;

use super::backend::Backend;
use super::batch::{HookBatch, UnhookBatch};
use super::hooks::{Hook, Hooks};
use super::memory::{MemError, Memory};
use super::site::{Site, TrapSite};
use super::{HookKind, SkipReason};
use crate::arch::Arch;
use crate::arena::Arenas;

/// Biggest function body read for the branch scan (longer ones are scanned up to here).
const MAX_SCAN: u64 = 1 << 20;

/// Knobs of the trampolines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HookOptions {
    /// Save and restore xmm0-15 (ymm0-15 with AVX) around the probe. The agent turns this
    /// off for JIT-ed probes that never touch vector registers.
    pub save_vector_regs: bool,
    /// Restore the flags with `popfq` instead of the cheaper `sahf` sequence (for
    /// measurements).
    pub flags_with_popfq: bool,
    /// The probe reads nothing of its context but [`xcover_session::ProbeCtx::cookie`] and
    /// [`xcover_session::ProbeCtx::func_ip`], and keeps the callee-saved registers (System V): trampolines
    /// then take the light body, which saves only the registers a callee may clobber and
    /// fills only those two fields (about half the instructions). Ignored with
    /// `save_vector_regs` or `flags_with_popfq`.
    pub light_ctx: bool,
    /// Hook a site that no jump form can patch (a branch from elsewhere into its first
    /// bytes, no room, an unmovable second instruction, …) with a one-byte trap
    /// ([`HookKind::Trap`]), when its first instruction can be moved. The caller must serve
    /// the traps (see [`Interceptor::trap_sites`]); off by default.
    pub traps: bool,
}

impl Default for HookOptions {
    fn default() -> Self {
        Self {
            save_vector_regs: true,
            flags_with_popfq: false,
            light_ctx: false,
            traps: false,
        }
    }
}

/// Scratch buffers kept by the interceptor between hooks.
#[derive(Default)]
struct Buffers {
    /// A function's bytes and its free padding.
    code: Vec<u8>,
    /// A trampoline being assembled.
    tramp: Vec<u8>,
}

/// The interceptor: owns the trampolines of one session.
pub struct Interceptor {
    /// The back end: patch forms and trampoline bodies.
    arch: Arch,
    /// Near-memory arenas holding the trampolines.
    arenas: Arenas,
    hooks: Hooks,
    buf: Buffers,
    traps: bool,
}

impl Interceptor {
    /// An interceptor whose trampolines call `probe`, an
    /// `extern "C" fn(*mut ProbeCtx) -> u64` at that address.
    pub fn new(probe: u64, opts: HookOptions) -> Self {
        Self {
            arch: Arch::new(probe, opts),
            arenas: Arenas::default(),
            hooks: Hooks::default(),
            buf: Buffers::default(),
            traps: opts.traps,
        }
    }

    /// Whether the function at `addr` is hooked now.
    pub fn is_hooked(&self, addr: u64) -> bool {
        self.hooks.get(&addr).is_some_and(|h| h.active)
    }

    /// Addresses of every hooked function.
    pub fn hooked(&self) -> Vec<u64> {
        self.hooks
            .0
            .iter()
            .filter(|h| h.active)
            .map(|h| h.addr)
            .collect()
    }

    /// How the function at `addr` is hooked now, `None` when it is not.
    pub fn hook_kind(&self, addr: u64) -> Option<HookKind> {
        self.hooks.get(&addr).filter(|h| h.active).map(|h| h.kind)
    }

    /// Every site ever hooked with a trap (active or retired), sorted by address: what a
    /// trap handler looks a trapping address up in.
    pub fn trap_sites(&self) -> Vec<TrapSite> {
        self.hooks
            .0
            .iter()
            .filter(|h| h.kind == HookKind::Trap)
            .map(|h| TrapSite {
                addr: h.addr,
                resume: h.reloc_start,
                cookie: h.cookie,
                active: h.active,
            })
            .collect()
    }

    /// Whether a one-byte trap may hook a site every jump form refused for `reason` (with
    /// [`HookOptions::traps`]): the trap displaces only the first instruction, so branches
    /// into later bytes, a lack of room, or an instruction after the first that cannot be
    /// decoded or moved do not matter. The reason does not say which instruction could not
    /// be decoded or moved: for those the trap is tried, and its planner refuses it when the
    /// first instruction is the one (the jump forms' reason is kept then).
    pub fn trap_may_replace(reason: SkipReason) -> bool {
        match reason {
            SkipReason::NoRoom
            | SkipReason::BranchIntoPatch
            | SkipReason::ReturnTarget
            | SkipReason::EnteredInside
            | SkipReason::Undecodable
            | SkipReason::Unrelocatable => true,
            SkipReason::TooSmall
            | SkipReason::AlreadyHooked
            | SkipReason::NoNearMemory
            | SkipReason::Unreadable
            | SkipReason::ThreadInPatch => false,
            // Decided by xcover before the agent plans anything: such a site never reaches
            // the planner (a trap would be safe there, the kernel's signal delivery skips the
            // red zone, but xcover skips the site first).
            SkipReason::RedZone => false,
        }
    }

    /// Number of trampoline arenas mapped so far (they live until the session ends).
    pub fn arenas(&self) -> usize {
        self.arenas.len()
    }

    /// Plans hooks for `funcs` and writes their trampolines (not reachable yet, so threads
    /// may run). The entry patches are written by [`Self::commit_hooks`].
    pub fn prepare_hooks<M: Memory>(&mut self, mem: &mut M, sites: &[Site]) -> HookBatch {
        self.arch.prepare();
        let mut planned = Vec::with_capacity(sites.len());
        let mut outcomes = Vec::with_capacity(sites.len());
        // Addresses named more than once: only their first entry is hooked.
        let mut sorted: Vec<u64> = sites.iter().map(|f| f.addr).collect();
        sorted.sort_unstable();
        let mut twice: Vec<u64> = sorted
            .windows(2)
            .filter_map(|w| match *w {
                [a, b] if a == b => Some(a),
                _ => None,
            })
            .collect();
        twice.dedup();
        drop(sorted);
        let mut twice_seen = alloc::vec![false; twice.len()];
        let mut buf = core::mem::take(&mut self.buf);
        for f in sites {
            let first = match twice.binary_search(&f.addr) {
                Ok(i) => twice_seen
                    .get_mut(i)
                    .is_some_and(|seen| !core::mem::replace(seen, true)),
                Err(_) => true,
            };
            let r = if first {
                self.prepare_one(mem, f, &mut buf).map(|h| {
                    let kind = h.kind;
                    planned.push(h);
                    kind
                })
            } else {
                Err(SkipReason::AlreadyHooked)
            };
            outcomes.push((f.addr, r));
        }
        self.buf = buf;
        if self.arenas.seal(mem).is_err() {
            // Trampolines may not be executable: patch nothing.
            for o in &mut outcomes {
                if o.1.is_ok() {
                    o.1 = Err(SkipReason::NoNearMemory);
                }
            }
            planned.clear();
        }
        planned.sort_by_key(|h| h.addr);
        HookBatch { planned, outcomes }
    }

    /// Plans one hook and writes its trampoline; `buf` is scratch space kept between calls
    /// (a function's bytes, then its trampoline), so that a batch allocates little.
    fn prepare_one<M: Memory>(
        &mut self,
        mem: &mut M,
        f: &Site,
        buf: &mut Buffers,
    ) -> Result<Hook, SkipReason> {
        if f.size == 0 {
            return Err(SkipReason::TooSmall);
        }
        if let Some(h) = self.hooks.get(&f.addr) {
            if h.active {
                return Err(SkipReason::AlreadyHooked);
            }
            // A retired trampoline for the same code and cookie is reused as is.
            if h.cookie == f.cookie && self.still_original(mem, h) {
                return Ok(h.clone());
            }
        }
        let size = f.size.min(MAX_SCAN) as usize;
        let pad_len = if f.next > f.addr + f.size {
            (f.next - f.addr - f.size).min(256) as usize
        } else {
            0
        };
        let code = &mut buf.code;
        code.clear();
        code.resize(size + pad_len, 0);
        mem.read(f.addr, code).map_err(|_| SkipReason::Unreadable)?;
        let free = code
            .get(size..)
            .map_or(0, |pad| Arch::free_padding(pad, f.addr + size as u64));
        code.truncate(size + free);
        let code = &buf.code[..];
        let mut head = <Arch as Backend>::Head::default();
        let p = match Arch::check_site(f, code).and_then(|()| Arch::plan(f, code, size, &mut head))
        {
            Ok(p) => p,
            // Every jump form refused: a trap, when one can hook the site (and otherwise
            // the jump forms' reason, which says more).
            Err(e) if self.traps && Self::trap_may_replace(e) => {
                Arch::plan_trap(f, code, size, &mut head).map_err(|_| e)?
            }
            Err(e) => return Err(e),
        };

        // Build at the arena cursor; retry once in a fresh arena if it does not fit.
        let mut fresh = false;
        loop {
            let ai = self.arenas.for_site(mem, f.addr, Arch::REACH, fresh)?;
            let pc = self.arenas.cursor(ai).ok_or(SkipReason::NoNearMemory)?;
            let (end, emitted) =
                self.arch
                    .build_trampoline(&self.arenas, pc, f, code, &head, &p, &mut buf.tramp);
            let (reloc_start, moved) = emitted?;
            let written = match self.arenas.write(mem, ai, pc, end, &buf.tramp) {
                Ok(()) => Ok(()),
                Err(None) if !fresh => {
                    fresh = true;
                    continue;
                }
                Err(e) => Err(e.unwrap_or(SkipReason::NoNearMemory)),
            };
            written?;

            let patch = Arch::patch(f, code, &p, pc)?;
            return Ok(Hook {
                addr: f.addr,
                cookie: f.cookie,
                reloc_start,
                reloc_end: end,
                moved,
                original: patch.original,
                patch: patch.patch,
                slot: patch.slot,
                kind: Arch::kind(&p),
                active: false,
            });
        }
    }

    fn still_original<M: Memory>(&self, mem: &mut M, h: &Hook) -> bool {
        let mut now = [0u8; 20];
        let Some(now) = now.get_mut(..h.original.len()) else {
            return false;
        };
        if mem.read(h.addr, now).is_err() || *now != *h.original {
            return false;
        }
        match h.slot {
            None => true,
            Some((s, orig, _)) => {
                let mut b = [0u8; 5];
                mem.read(s, &mut b).is_ok() && b == orig
            }
        }
    }

    /// Writes the entry patches of `batch` in one pass.
    ///
    /// # Safety
    ///
    /// Every [`Site`] given to [`Self::prepare_hooks`] must describe real code of this
    /// process (or of the process `mem` writes to) whose bytes have not changed since, and
    /// no thread may execute the patched bytes while this runs: all threads are stopped,
    /// and any thread whose instruction pointer [`HookBatch::fixup`] names was moved.
    pub unsafe fn commit_hooks<M: Memory>(
        &mut self,
        mem: &mut M,
        batch: HookBatch,
    ) -> Result<usize, MemError> {
        let mut writes: Vec<(u64, &[u8])> = Vec::new();
        for h in &batch.planned {
            if let Some((s, _, new)) = &h.slot {
                writes.push((*s, new));
            }
            writes.push((h.addr, &h.patch));
        }
        write_batch(mem, &writes)?;
        let n = batch.planned.len();
        let mut planned = batch.planned;
        for h in &mut planned {
            h.active = true;
        }
        self.hooks.merge(planned);
        Ok(n)
    }

    /// Selects hooked functions among `addrs` for removal.
    pub fn prepare_unhooks(&self, addrs: &[u64]) -> UnhookBatch {
        let hooks = || {
            addrs
                .iter()
                .filter_map(|a| self.hooks.get(a))
                .filter(|h| h.active)
        };
        let ranges = hooks()
            .map(|h| (h.reloc_start, h.reloc_end, h.addr, h.moved))
            .collect();
        let slots = hooks()
            .filter_map(|h| h.slot.map(|(s, _, _)| (s, h.addr)))
            .collect();
        UnhookBatch { ranges, slots }
    }

    /// Restores the original bytes of every function in `batch`. Trampolines are retired,
    /// not freed.
    ///
    /// # Safety
    ///
    /// No thread may execute the patched bytes while this runs (all threads stopped), and
    /// the hooked code must not have been changed by anyone else since it was hooked.
    pub unsafe fn commit_unhooks<M: Memory>(
        &mut self,
        mem: &mut M,
        batch: UnhookBatch,
    ) -> Result<usize, MemError> {
        let mut writes: Vec<(u64, &[u8])> = Vec::new();
        for (_, _, addr, _) in &batch.ranges {
            if let Some(h) = self.hooks.get(addr) {
                writes.push((h.addr, &h.original));
                if let Some((s, orig, _)) = &h.slot {
                    writes.push((*s, orig));
                }
            }
        }
        write_batch(mem, &writes)?;
        for (_, _, addr, _) in &batch.ranges {
            if let Some(h) = self.hooks.get_mut(addr) {
                h.active = false;
            }
        }
        Ok(batch.ranges.len())
    }
}

/// Writes all `(addr, bytes)` with two protection changes per run of adjacent pages.
fn write_batch<M: Memory>(mem: &mut M, writes: &[(u64, &[u8])]) -> Result<(), MemError> {
    mem.write_code(writes)
}
