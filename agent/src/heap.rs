//! The agent's heap: [`talc`] over anonymous mappings made with raw `mmap` calls.
//!
//! The heap starts empty and grows on demand: when talc runs out it asks [`MmapSource`],
//! which maps at least [`HEAP_CHUNK`] bytes more and records the mapping in the session's
//! region table (kind `REGION_HEAP`) so xcover knows of it and `xcover_agent_fini` can
//! unmap it. Without a session (or with a full region table) the heap cannot grow and an
//! allocation fails, which aborts the entry point (a `ud2` xcover reports).
//!
//! Only entry points allocate, and xcover calls them one at a time in a stopped world, so
//! the lock is never contended; it is a plain spinlock so that the allocator stays sound
//! even if that ever changed. Probe helpers, which run on the target's threads, never
//! allocate.

use core::alloc::Layout;
use core::sync::atomic::{AtomicBool, Ordering};

use talc::base::Talc;
use talc::base::binning::Binning;
use talc::lock_api::{GuardSend, RawMutex};
use talc::source::Source;
use xcover_session::REGION_HEAP;

use crate::session;
use xcover_rt::mm as sys;

/// Smallest growth step.
pub const HEAP_CHUNK: u64 = 1 << 20;

/// Set once fini unmapped the heap: nothing may allocate afterwards.
static RETIRED: AtomicBool = AtomicBool::new(false);

/// A spinlock for talc's `lock_api` mutex.
pub struct SpinLock(AtomicBool);

// SAFETY: `lock` returns only after swapping the flag from false to true (Acquire), and
// `unlock` stores false (Release): at most one holder at a time, with the holder's writes
// visible to the next one.
unsafe impl RawMutex for SpinLock {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = SpinLock(AtomicBool::new(false));
    type GuardMarker = GuardSend;

    fn lock(&self) {
        while !self.try_lock() {
            core::hint::spin_loop();
        }
    }

    fn try_lock(&self) -> bool {
        self.0
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    unsafe fn unlock(&self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Where talc gets memory: fresh anonymous mappings.
#[derive(Debug)]
pub struct MmapSource;

// SAFETY: `acquire` only claims memory it just mapped, which nothing else uses, and uses no
// allocator itself (mmap and the region record take no heap memory).
unsafe impl Source for MmapSource {
    fn acquire<B: Binning>(talc: &mut Talc<Self, B>, layout: Layout) -> Result<(), ()> {
        if RETIRED.load(Ordering::Acquire) {
            return Err(());
        }
        let want = (layout.size() as u64)
            .checked_add(layout.align() as u64 + sys::PAGE)
            .ok_or(())?;
        let len = sys::page_up(want.max(HEAP_CHUNK));
        let addr = sys::mmap_anon(0, len).ok_or(())?;
        if !session::record_region(addr, len, REGION_HEAP) {
            // SAFETY: just mapped, unused.
            unsafe { sys::munmap(addr, len) };
            return Err(());
        }
        // SAFETY: `addr..addr+len` is a fresh read-write mapping owned by the heap from now
        // on; it stays mapped until fini, after which nothing allocates (RETIRED).
        unsafe { talc.claim(addr as *mut u8, len as usize) }.ok_or(())?;
        Ok(())
    }
}

/// The global allocator.
#[global_allocator]
static HEAP: talc::TalcLock<SpinLock, MmapSource> = talc::TalcLock::new(MmapSource);

/// Marks the heap gone (fini is about to unmap it): any later growth fails.
pub fn retire() {
    RETIRED.store(true, Ordering::Release);
}
