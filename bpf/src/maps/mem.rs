//! The map memory accessors: the only place in [`crate::maps`] that dereferences raw
//! pointers into the shared arena.
//!
//! A [`MapPtr`] is the address of a [`MapHeader`] in some process's mapping of the arena.
//! Its invariant, established by its `unsafe` constructor and relied on by every accessor:
//! the header was written by [`crate::maps::ArenaLayout::init`] and the `total_size` bytes
//! from it stay mapped read-write for as long as the `MapPtr` is used. Accessors take offsets
//! relative to the header and check them against `total_size` in debug builds; callers
//! compute offsets from the header's own (immutable) fields.
//!
//! Memory here is shared with other processes, so everything that other parties may write
//! concurrently is read and written through atomics; bulk copies of values (which the
//! protocol leaves to the program, as the kernel does for array values) use plain copies.

use core::sync::atomic::{AtomicU32, AtomicU64};

use super::{MAP_MAGIC, MapHeader};

/// A validated pointer to a map header. See the module documentation for the invariant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapPtr(*mut MapHeader);

// SAFETY: the memory a MapPtr designates is shared memory accessed through atomics or under
// the documented protocols; the pointer itself may move between threads.
unsafe impl Send for MapPtr {}
// SAFETY: as above; no accessor hands out `&mut` to shared data.
unsafe impl Sync for MapPtr {}

impl MapPtr {
    /// Wraps the address of a map header; `None` if it is null, misaligned or its magic is
    /// wrong.
    ///
    /// # Safety
    /// If `addr` is non-null and 8-aligned it must point to at least
    /// `size_of::<MapHeader>()` readable bytes, and if those hold [`MAP_MAGIC`], to a header
    /// written by [`crate::maps::ArenaLayout::init`] whose `total_size` bytes stay mapped
    /// read-write while the returned value is used.
    pub unsafe fn from_addr(addr: u64) -> Option<Self> {
        if addr == 0 || !addr.is_multiple_of(8) {
            return None;
        }
        let p = addr as *mut MapHeader;
        // SAFETY: caller guarantees the header bytes are readable; magic is a plain u32
        // written once before the arena is shared.
        let magic = unsafe { core::ptr::addr_of!((*p).magic).read_volatile() };
        (magic == MAP_MAGIC).then_some(MapPtr(p))
    }

    /// The header's address.
    pub fn addr(self) -> u64 {
        self.0 as u64
    }

    /// The header (its descriptive fields never change after init).
    pub fn hdr<'a>(self) -> &'a MapHeader {
        // SAFETY: MapPtr invariant: a valid, initialised header that stays mapped.
        unsafe { &*self.0 }
    }

    #[inline(always)]
    fn check(self, off: u64, len: u64) {
        debug_assert!(
            off.checked_add(len)
                .is_some_and(|e| e <= self.hdr().total_size)
        );
    }

    /// Raw address of byte `off` of the map.
    #[inline(always)]
    pub fn at(self, off: u64) -> *mut u8 {
        self.check(off, 0);
        // SAFETY: off is within the map (checked in debug, computed from header fields).
        unsafe { (self.0 as *mut u8).add(off as usize) }
    }

    /// The 8-aligned u64 at `off`, as an atomic.
    #[inline(always)]
    pub fn u64_at<'a>(self, off: u64) -> &'a AtomicU64 {
        self.check(off, 8);
        debug_assert!(off.is_multiple_of(8));
        // SAFETY: within the map, 8-aligned (map offsets are multiples of 8 and the header
        // is 8-aligned), and AtomicU64 may alias memory others access atomically.
        unsafe { &*(self.at(off) as *const AtomicU64) }
    }

    /// The 4-aligned u32 at `off`, as an atomic.
    #[inline(always)]
    pub fn u32_at<'a>(self, off: u64) -> &'a AtomicU32 {
        self.check(off, 4);
        debug_assert!(off.is_multiple_of(4));
        // SAFETY: within the map and 4-aligned; see `u64_at`.
        unsafe { &*(self.at(off) as *const AtomicU32) }
    }

    /// Copies `len` bytes from `src` to byte `off` of the map.
    ///
    /// # Safety
    /// `src` must be readable for `len` bytes and not overlap the destination.
    #[inline(always)]
    pub unsafe fn copy_in(self, off: u64, src: *const u8, len: usize) {
        self.check(off, len as u64);
        // SAFETY: destination within the map; source per caller.
        unsafe { core::ptr::copy_nonoverlapping(src, self.at(off), len) }
    }

    /// Copies bytes from byte `off` of the map into `dst`.
    #[inline(always)]
    pub fn copy_out(self, off: u64, dst: &mut [u8]) {
        self.check(off, dst.len() as u64);
        // SAFETY: source within the map; dst is an exclusive local slice.
        unsafe { core::ptr::copy_nonoverlapping(self.at(off), dst.as_mut_ptr(), dst.len()) }
    }

    /// Borrows `len` bytes from byte `off` of the map.
    ///
    /// # Safety
    /// No one may write those bytes while the slice lives (the ring-buffer protocol
    /// guarantees it for a committed record until the consumer releases it).
    #[inline(always)]
    pub unsafe fn slice<'a>(self, off: u64, len: usize) -> &'a [u8] {
        self.check(off, len as u64);
        // SAFETY: within the map; immutability per the caller.
        unsafe { core::slice::from_raw_parts(self.at(off), len) }
    }

    /// Zeroes `len` bytes from byte `off` of the map.
    #[inline(always)]
    pub fn zero(self, off: u64, len: usize) {
        self.check(off, len as u64);
        // SAFETY: the range is within the map; callers only zero bytes no one else may be
        // writing under the map's protocol (a consumed ring-buffer record, a free entry).
        unsafe { core::ptr::write_bytes(self.at(off), 0, len) }
    }
}

/// Writes a header and zeroes the rest of a map.
///
/// # Safety
/// `base` must be 8-aligned and writable for `hdr.total_size` bytes that nothing else uses
/// yet.
pub unsafe fn write_header(base: *mut u8, hdr: MapHeader) {
    // SAFETY: per the caller, the whole range is ours and aligned.
    unsafe {
        core::ptr::write_bytes(base, 0, hdr.total_size as usize);
        (base as *mut MapHeader).write(hdr);
    }
}
