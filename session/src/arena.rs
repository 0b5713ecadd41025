//! The eBPF map arena's byte layout: where each map's bytes are, as every process that maps
//! the arena must agree (the agent and the probe in the target write; xcover and the TUI
//! read).
//!
//! The arena is the session section at `SessionHeader::arena_off`. It holds no absolute
//! pointer, since each process maps it at its own address: every map is a [`MapHeader`]
//! followed by its data, and the header describes the data by offsets relative to itself.
//! The session's map table (`SessionHeader::maps_off`) gives each map's header offset from
//! the arena, by the program's map index.
//!
//! This module is the layout only: the header, the per-type data formulas
//! ([`MapHeader::array_value_off`], the `hash_*` offsets, the ring-buffer record header) and
//! [`Arena`], a checked window onto one process's mapping. The operations on maps (lookup,
//! update, the hash table's lock, the ring buffer's producer and consumer protocols), the
//! readers' API and the builder that lays a program's maps out are `xcover-bpf`'s `maps`
//! module, which uses these definitions. `docs/maps.md` describes both.

use core::sync::atomic::{AtomicU32, AtomicU64};

/// Map types the runtime supports, with their Linux `BPF_MAP_TYPE_*` numbers (the value of
/// [`MapHeader::map_type`]).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MapType {
    /// `BPF_MAP_TYPE_HASH`.
    Hash = 1,
    /// `BPF_MAP_TYPE_ARRAY`.
    Array = 2,
    /// `BPF_MAP_TYPE_PERCPU_HASH`.
    PercpuHash = 5,
    /// `BPF_MAP_TYPE_PERCPU_ARRAY`.
    PercpuArray = 6,
    /// `BPF_MAP_TYPE_RINGBUF`.
    Ringbuf = 27,
}

impl MapType {
    /// Decodes a Linux map type number; `None` for types this runtime does not implement.
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Hash,
            2 => Self::Array,
            5 => Self::PercpuHash,
            6 => Self::PercpuArray,
            27 => Self::Ringbuf,
            _ => return None,
        })
    }

    /// Whether values exist once per CPU.
    pub fn is_percpu(self) -> bool {
        matches!(self, Self::PercpuHash | Self::PercpuArray)
    }
}

/// `"XMAP"`, the first four bytes of every map header.
pub const MAP_MAGIC: u32 = u32::from_le_bytes(*b"XMAP");
/// Size of a [`MapHeader`]; a map's data starts right after it (arrays, ring buffers) or
/// after its hash buckets.
pub const MAP_HEADER_SIZE: u64 = core::mem::size_of::<MapHeader>() as u64;
/// Maps are placed on multiples of this in the arena (which is page-aligned in the session),
/// so each header's live counters sit on their own cache lines.
pub const MAP_ALIGN: u64 = 64;

/// The header in front of every map in the arena. Fields up to `_desc_end` describe the map
/// and never change once the arena is initialised; the rest is live state, each hot counter
/// on its own 64-byte line (relative to the arena, which is page-aligned in practice),
/// written with atomics by any process.
#[repr(C)]
#[derive(Debug)]
pub struct MapHeader {
    /// [`MAP_MAGIC`].
    pub magic: u32,
    /// A [`MapType`] number.
    pub map_type: u32,
    /// Key size in bytes.
    pub key_size: u32,
    /// Value size in bytes (per CPU).
    pub value_size: u32,
    /// Entries; for RINGBUF, the data size in bytes.
    pub max_entries: u32,
    /// `BPF_F_*` flags.
    pub flags: u32,
    /// Number of per-CPU slots (1 for maps that are not per-CPU).
    pub ncpus: u32,
    /// `value_size` rounded up to 8: distance between two values.
    pub value_stride: u32,
    /// `key_size` rounded up to 8 (HASH).
    pub key_stride: u32,
    /// Size of one hash entry (HASH), 0 otherwise.
    pub entry_size: u32,
    /// Number of hash buckets, a power of two (HASH).
    pub nbuckets: u32,
    /// Reserved, zero.
    pub _reserved0: u32,
    /// Offset (from this header) of the data: array values, hash entries, ring data.
    pub data_off: u64,
    /// Size in bytes of the data.
    pub data_size: u64,
    /// Offset of the hash buckets (HASH), 0 otherwise.
    pub buckets_off: u64,
    /// Size in bytes of this map: header, buckets and data.
    pub total_size: u64,
    /// Name (NUL-padded, truncated).
    pub name: [u8; 32],
    /// Reserved, zero; ends the descriptive part at byte 128.
    pub _desc_end: [u64; 2],
    /// HASH: writer lock, `pid << 32 | tid` of the owner, 0 when free.
    pub lock: AtomicU64,
    /// HASH: live entries.
    pub count: AtomicU32,
    /// HASH: first free entry (index + 1; 0 when none).
    pub free_head: AtomicU32,
    /// HASH: last free entry (index + 1; 0 when none).
    pub free_tail: AtomicU32,
    /// Reserved, zero.
    pub _reserved1: u32,
    /// HASH: times a writer took the lock over from a dead owner.
    pub lock_steals: AtomicU64,
    /// HASH: writes that gave up with `-EBUSY`. RINGBUF: records dropped because the
    /// buffer was full.
    pub dropped: AtomicU64,
    /// Pads the writer line to 64 bytes.
    pub _pad2: [u64; 3],
    /// RINGBUF: consumer position (bytes ever consumed), on its own line.
    pub consumer_pos: AtomicU64,
    /// Pads the consumer line.
    pub _pad3: [u64; 7],
    /// RINGBUF: producer position (bytes ever reserved), on its own line.
    pub producer_pos: AtomicU64,
    /// Pads the producer line.
    pub _pad4: [u64; 7],
}

const _: () = assert!(core::mem::size_of::<MapHeader>() == 320);
const _: () = assert!(core::mem::offset_of!(MapHeader, data_off) == 48);
const _: () = assert!(core::mem::offset_of!(MapHeader, name) == 80);
const _: () = assert!(core::mem::offset_of!(MapHeader, lock) == 128);
const _: () = assert!(core::mem::offset_of!(MapHeader, dropped) == 160);
const _: () = assert!(core::mem::offset_of!(MapHeader, consumer_pos) == 192);
const _: () = assert!(core::mem::offset_of!(MapHeader, producer_pos) == 256);

/// HASH entries: bytes before the key. An entry is `next u32 | gen u32 | hash u32 |
/// free_next u32 | key (key_stride) | value(s) (value_stride, times ncpus)`.
pub const HASH_ENTRY_HDR: u64 = 16;
/// HASH entry field: the next entry in the bucket chain (index + 1, 0 ends it).
pub const HASH_ENTRY_NEXT: u64 = 0;
/// HASH entry field: the generation, odd while the entry is live.
pub const HASH_ENTRY_GEN: u64 = 4;
/// HASH entry field: the key's hash.
pub const HASH_ENTRY_HASH: u64 = 8;
/// HASH entry field: the next entry in the free list (index + 1, 0 ends it).
pub const HASH_ENTRY_FREE_NEXT: u64 = 12;

/// RINGBUF: size of a record header, one u64 in front of each record (records are padded to
/// 8 bytes): the low u32 is the payload length with [`RINGBUF_BUSY_BIT`] and
/// [`RINGBUF_DISCARD_BIT`], as in Linux; the high u32 is the record header's offset from the
/// map header (never 0).
pub const RINGBUF_HDR_SZ: u64 = 8;
/// Record header bit: reserved, not yet submitted.
pub const RINGBUF_BUSY_BIT: u32 = 1 << 31;
/// Record header bit: discarded, the consumer skips it.
pub const RINGBUF_DISCARD_BIT: u32 = 1 << 30;

/// A copy of the header's description with the live state (lock, counters, ring positions)
/// zeroed: the header of the same map, freshly initialised.
impl Clone for MapHeader {
    fn clone(&self) -> Self {
        MapHeader {
            lock: AtomicU64::new(0),
            count: AtomicU32::new(0),
            free_head: AtomicU32::new(0),
            free_tail: AtomicU32::new(0),
            lock_steals: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            consumer_pos: AtomicU64::new(0),
            producer_pos: AtomicU64::new(0),
            ..*self
        }
    }
}

impl MapHeader {
    /// The map's type, `None` for a number this version does not implement.
    pub fn map_type(&self) -> Option<MapType> {
        MapType::from_u32(self.map_type)
    }

    /// The map's name (up to its first NUL; empty when it is not utf-8).
    pub fn name(&self) -> &str {
        let name = self.name.split(|&b| b == 0).next().unwrap_or(&[]);
        core::str::from_utf8(name).unwrap_or("")
    }

    /// ARRAY / PERCPU_ARRAY: offset from the header of entry `idx`'s value in CPU slot
    /// `cpu` (layout `[cpu][entry]`: one CPU's values are contiguous).
    #[inline(always)]
    pub fn array_value_off(&self, idx: u32, cpu: u64) -> u64 {
        self.data_off + (cpu * self.max_entries as u64 + idx as u64) * self.value_stride as u64
    }

    /// HASH: offset from the header of the bucket head (a u32, entry index + 1) for `hash`.
    #[inline(always)]
    pub fn hash_bucket_off(&self, hash: u32) -> u64 {
        self.buckets_off + 4 * (hash & (self.nbuckets - 1)) as u64
    }

    /// HASH: offset from the header of entry `idx1` (an index + 1, as links hold them).
    #[inline(always)]
    pub fn hash_entry_off(&self, idx1: u32) -> u64 {
        self.data_off + (idx1 as u64 - 1) * self.entry_size as u64
    }

    /// HASH: offset of the key of the entry at `entry` (an offset from the header).
    #[inline(always)]
    pub fn hash_key_off(&self, entry: u64) -> u64 {
        entry + HASH_ENTRY_HDR
    }

    /// HASH: offset of CPU slot `cpu`'s value of the entry at `entry`.
    #[inline(always)]
    pub fn hash_value_off(&self, entry: u64, cpu: u64) -> u64 {
        entry + HASH_ENTRY_HDR + self.key_stride as u64 + cpu * self.value_stride as u64
    }
}

/// A mapped arena, seen from one process: the window `[base, base + len)` that maps of a
/// session live in, with their headers found by offset and checked before use.
#[derive(Debug)]
pub struct Arena {
    base: *mut u8,
    len: u64,
}

// SAFETY: an Arena only designates shared memory, which is accessed through the maps'
// atomic protocols (`xcover-bpf`'s `maps`).
unsafe impl Send for Arena {}
// SAFETY: as above.
unsafe impl Sync for Arena {}

impl Arena {
    /// Wraps a mapped arena.
    ///
    /// # Safety
    /// `base` must stay mapped read-write for `len` bytes while the `Arena` (and anything
    /// obtained from it) is used, and hold maps laid out as this module describes (possibly
    /// by another process), or zeroes.
    pub unsafe fn from_raw(base: *mut u8, len: u64) -> Self {
        Arena { base, len }
    }

    /// Base address of this process's mapping.
    pub fn base(&self) -> u64 {
        self.base as u64
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the arena is empty (a probe without maps).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The header of the map at `off`, when a plausible one is there: it lies inside the
    /// arena, 8-aligned, with the magic, a known type and data inside its `total_size`, which
    /// fits in the arena. `None` otherwise.
    pub fn header(&self, off: u64) -> Option<&MapHeader> {
        let fits = off
            .checked_add(MAP_HEADER_SIZE)
            .is_some_and(|e| e <= self.len);
        if !fits || !off.is_multiple_of(8) || !(self.base as u64).is_multiple_of(8) {
            return None;
        }
        // SAFETY: the header lies within the arena (checked), which is mapped (from_raw), and
        // is 8-aligned; every field is valid for any bit pattern, and the fields other
        // processes change are atomics.
        let h = unsafe { &*(self.base.add(off as usize) as *const MapHeader) };
        // SAFETY: `magic` is a plain u32 written once before the arena is shared; read
        // volatile all the same, as it is shared memory.
        let magic = unsafe { (&raw const h.magic).read_volatile() };
        let ok = magic == MAP_MAGIC
            && h.map_type().is_some()
            && h.total_size <= self.len - off
            && h.data_off
                .checked_add(h.data_size)
                .is_some_and(|e| e <= h.total_size);
        ok.then_some(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An arena over `buf`.
    fn arena(buf: &mut [u64]) -> Arena {
        // SAFETY: every test keeps `buf` alive and untouched while it uses the arena.
        unsafe { Arena::from_raw(buf.as_mut_ptr() as *mut u8, (buf.len() * 8) as u64) }
    }

    #[test]
    fn headers_are_checked() {
        let mut buf = [0u64; 128];
        let len = (buf.len() * 8) as u64;
        let a = arena(&mut buf);
        assert!(a.header(0).is_none(), "zeroes are no map");
        assert!(a.header(3).is_none());
        assert!(a.header(len).is_none());
        buf[0] = u64::from(MAP_MAGIC) | (MapType::Array as u64) << 32;
        buf[6] = MAP_HEADER_SIZE; // data_off
        buf[7] = 64; // data_size
        buf[9] = MAP_HEADER_SIZE + 64; // total_size
        let a = arena(&mut buf);
        let h = a.header(0).expect("a map");
        assert_eq!(h.map_type(), Some(MapType::Array));
        assert_eq!(h.array_value_off(0, 0), MAP_HEADER_SIZE);
        buf[9] = len + 8; // past the arena
        assert!(arena(&mut buf).header(0).is_none());
        buf[9] = MAP_HEADER_SIZE + 64;
        buf[0] = u64::from(MAP_MAGIC) | 99 << 32; // unknown type
        assert!(arena(&mut buf).header(0).is_none());
    }
}
