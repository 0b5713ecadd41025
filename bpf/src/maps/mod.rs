//! eBPF maps in a shared-memory arena: ARRAY, PERCPU_ARRAY, HASH, PERCPU_HASH and RINGBUF.
//!
//! The arena is a byte region that several processes map at different addresses (the
//! target, where the probe writes; xcover and the TUI, which read), so nothing in it is an
//! absolute pointer: every map is a [`MapHeader`] followed by its data, and the header
//! describes the data by offsets relative to itself. A helper given only the header's address
//! (what `lddw rX, map` loads) can therefore operate on the map. That layout (the header,
//! the per-type offsets, [`Arena`]) is part of the session contract and lives in
//! `xcover_session::arena`; this module holds the operations on it.
//!
//! - [`ArenaLayout`] (the builder xcover uses when it creates a session) places maps from
//!   [`MapDef`]s, reports each map's offset and writes headers and initial data.
//! - [`MapPtr`] is a validated header address; the `*` functions of this module
//!   ([`lookup`], [`update`], [`delete`], [`ringbuf_reserve`], ...) are what the helpers call.
//! - [`ArenaMaps`] (on an [`Arena`]) and [`MapView`] are the reader API for the xcover
//!   process and the TUI: array values, per-CPU sums, hash iteration, ring-buffer
//!   consumption.
//!
//! Concurrency, per map type (details and the byte layout in `docs/maps.md`):
//!
//! - ARRAY / PERCPU_ARRAY: values are updated in place; atomicity is the program's business
//!   (the coverage probe uses an atomic add). Per-CPU slots are indexed by [`sys::cpu_id`].
//! - HASH / PERCPU_HASH: writers (update, delete) serialise on a spinlock in the header whose
//!   word holds the owner's `pid << 32 | tid`. The spin is bounded; past the bound a writer
//!   checks whether the owner still exists and takes the lock over if it died, otherwise it
//!   gives up with `-EBUSY`. Every write step leaves the table consistent, so a takeover after
//!   a death is safe. Lookups never lock: chains are published with release stores and each
//!   entry carries a generation that readers re-check.
//! - RINGBUF: Linux's BPF ring-buffer protocol (8-byte record header, busy and discard bits),
//!   but multi-producer across processes without a lock: producers reserve with a CAS on the
//!   producer position; the consumer zeroes what it consumed before releasing it, so a header
//!   of zero means "reserved, not yet written". Records never wrap: a reservation that would
//!   cross the end first fills the tail with a discarded padding record. When full, a
//!   reservation fails and the map's drop counter is incremented.

mod hash;
mod mem;
mod ringbuf;

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

pub use mem::MapPtr;
pub use xcover_session::arena::{
    Arena, MAP_HEADER_SIZE, MAP_MAGIC, MapHeader, RINGBUF_BUSY_BIT, RINGBUF_DISCARD_BIT,
    RINGBUF_HDR_SZ,
};

use crate::program::{MapDef, MapType};
use xcover_rt as sys;
use xcover_session::arena::MAP_ALIGN;
/// Largest key size accepted.
pub const MAX_KEY_SIZE: u32 = 512;
/// Largest value size accepted (per CPU).
pub const MAX_VALUE_SIZE: u32 = 1 << 24;
/// Largest ring buffer accepted, in bytes.
pub const MAX_RINGBUF_SIZE: u32 = 1 << 30;
/// Smallest ring buffer accepted, in bytes.
pub const MIN_RINGBUF_SIZE: u32 = 64;

/// `BPF_ANY`: create or update.
pub const BPF_ANY: u64 = 0;
/// `BPF_NOEXIST`: create only.
pub const BPF_NOEXIST: u64 = 1;
/// `BPF_EXIST`: update only.
pub const BPF_EXIST: u64 = 2;

/// What can go wrong building or opening an arena, or with a map operation's arguments.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// A definition the runtime cannot lay out.
    #[error("map `{name}`: {reason}")]
    BadDef {
        /// The map's name.
        name: alloc::string::String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The arena is too small or misaligned for the layout.
    #[error("arena of {len} bytes at {addr:#x} cannot hold {need} bytes (8-aligned)")]
    BadArena {
        /// Address of the arena.
        addr: u64,
        /// Its length.
        len: u64,
        /// Bytes needed.
        need: u64,
    },
    /// No valid map header at that offset.
    #[error("no map at arena offset {0:#x}")]
    NoMap(u64),
    /// The operation does not apply to this map type.
    #[error("operation not supported by this map type")]
    WrongType,
}

fn round8(v: u64) -> u64 {
    (v + 7) & !7
}

fn round_map(v: u64) -> u64 {
    v.div_ceil(MAP_ALIGN) * MAP_ALIGN
}

/// Where each map of a program goes in an arena.
#[derive(Clone, Debug)]
pub struct ArenaLayout {
    ncpus: u32,
    defs: Vec<MapDef>,
    headers: Vec<(u64, MapHeader)>,
    size: u64,
}

impl ArenaLayout {
    /// Lays out `defs` one after another (each on a multiple of [`MAP_ALIGN`] bytes). `ncpus` is the number of
    /// CPUs per-CPU maps have a slot for (the machine's configured CPU count).
    pub fn new(defs: &[MapDef], ncpus: u32) -> Result<Self, MapError> {
        let ncpus = ncpus.max(1);
        let mut off = 0u64;
        let mut headers = Vec::with_capacity(defs.len());
        for d in defs {
            let h = plan(d, ncpus)?;
            let size = h.total_size;
            headers.push((off, h));
            off = off
                .checked_add(round_map(size))
                .ok_or_else(|| bad(d, "arena size overflows"))?;
        }
        Ok(ArenaLayout {
            ncpus,
            defs: defs.to_vec(),
            headers,
            size: off,
        })
    }

    /// Bytes the arena needs.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Per-CPU slot count.
    pub fn ncpus(&self) -> u32 {
        self.ncpus
    }

    /// Offset of each map's header, in definition order.
    pub fn offsets(&self) -> Vec<u64> {
        self.headers.iter().map(|(o, _)| *o).collect()
    }

    /// Writes every map (headers, free lists, initial data) into the arena at `base`;
    /// everything else in `[base, base + size)` is zeroed.
    ///
    /// # Safety
    /// `base` must be writable for `len` bytes that no one else uses during the call.
    pub unsafe fn init(&self, base: *mut u8, len: u64) -> Result<(), MapError> {
        if self.size == 0 {
            // No map: nothing to write, whatever `base` is (an empty slice's is dangling).
            return Ok(());
        }
        if !(base as u64).is_multiple_of(8) || len < self.size {
            return Err(MapError::BadArena {
                addr: base as u64,
                len,
                need: self.size,
            });
        }
        for ((off, h), def) in self.headers.iter().zip(&self.defs) {
            let hdr = h.clone();
            // SAFETY: off + total_size <= self.size <= len (layout), base is 8-aligned and
            // offsets are multiples of 64; the caller gives us the range exclusively.
            let p = unsafe {
                let p = base.add(*off as usize);
                mem::write_header(p, hdr);
                MapPtr::from_addr(p as u64)
            };
            // Never None: the header was just written at an 8-aligned, non-null address.
            let Some(p) = p else {
                return Err(MapError::BadArena {
                    addr: base as u64,
                    len,
                    need: self.size,
                });
            };
            if !def.initial_data.is_empty() {
                let n = def.initial_data.len().min(h.value_size as usize);
                // SAFETY: n <= value_size <= data_size; source is a local slice.
                unsafe { p.copy_in(h.data_off, def.initial_data.as_ptr(), n) };
            }
            if h.map_type == MapType::Hash as u32 || h.map_type == MapType::PercpuHash as u32 {
                hash::init_free_list(p);
            }
        }
        Ok(())
    }

    /// Initialises an arena held in a slice (tests, single-process use).
    pub fn init_slice(&self, arena: &mut [u8]) -> Result<(), MapError> {
        // SAFETY: the slice is exclusively ours for the call and len is its length.
        unsafe { self.init(arena.as_mut_ptr(), arena.len() as u64) }
    }
}

fn bad(d: &MapDef, reason: &'static str) -> MapError {
    MapError::BadDef {
        name: d.name.clone(),
        reason,
    }
}

fn plan(d: &MapDef, ncpus: u32) -> Result<MapHeader, MapError> {
    let mut name = [0u8; 32];
    let n = d.name.len().min(31);
    for (dst, &src) in name.iter_mut().zip(d.name.as_bytes()).take(n) {
        *dst = src;
    }
    let percpu = d.map_type.is_percpu();
    let slots = if percpu { ncpus } else { 1 };
    let mut h = MapHeader {
        magic: MAP_MAGIC,
        map_type: d.map_type as u32,
        key_size: d.key_size,
        value_size: d.value_size,
        max_entries: d.max_entries,
        flags: d.flags,
        ncpus: slots,
        value_stride: 0,
        key_stride: 0,
        entry_size: 0,
        nbuckets: 0,
        _reserved0: 0,
        data_off: MAP_HEADER_SIZE,
        data_size: 0,
        buckets_off: 0,
        total_size: 0,
        name,
        _desc_end: [0; 2],
        lock: AtomicU64::new(0),
        count: AtomicU32::new(0),
        free_head: AtomicU32::new(0),
        free_tail: AtomicU32::new(0),
        _reserved1: 0,
        lock_steals: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        _pad2: [0; 3],
        consumer_pos: AtomicU64::new(0),
        _pad3: [0; 7],
        producer_pos: AtomicU64::new(0),
        _pad4: [0; 7],
    };
    if d.initial_data.len() > d.value_size as usize {
        return Err(bad(d, "initial data larger than the value"));
    }
    match d.map_type {
        MapType::Array | MapType::PercpuArray => {
            if d.key_size != 4 {
                return Err(bad(d, "array keys must be 4 bytes"));
            }
            if d.value_size == 0 || d.value_size > MAX_VALUE_SIZE {
                return Err(bad(d, "value size must be 1..=16 MiB"));
            }
            if d.max_entries == 0 {
                return Err(bad(d, "max_entries must be > 0"));
            }
            h.value_stride = round8(d.value_size as u64) as u32;
            h.data_size = (h.value_stride as u64) * (d.max_entries as u64) * (slots as u64);
        }
        MapType::Hash | MapType::PercpuHash => {
            if d.key_size == 0 || d.key_size > MAX_KEY_SIZE {
                return Err(bad(d, "hash key size must be 1..=512"));
            }
            if d.value_size == 0 || d.value_size > MAX_VALUE_SIZE {
                return Err(bad(d, "value size must be 1..=16 MiB"));
            }
            if d.max_entries == 0 || d.max_entries > (1 << 28) {
                return Err(bad(d, "max_entries must be 1..=2^28"));
            }
            h.value_stride = round8(d.value_size as u64) as u32;
            h.key_stride = round8(d.key_size as u64) as u32;
            let entry =
                hash::ENTRY_HDR + h.key_stride as u64 + (h.value_stride as u64) * (slots as u64);
            if entry > u32::MAX as u64 {
                return Err(bad(d, "hash entry too large"));
            }
            h.entry_size = entry as u32;
            h.nbuckets = d.max_entries.next_power_of_two();
            h.buckets_off = MAP_HEADER_SIZE;
            h.data_off = round8(MAP_HEADER_SIZE + 4 * h.nbuckets as u64);
            h.data_size = entry * d.max_entries as u64;
        }
        MapType::Ringbuf => {
            let n = d.max_entries;
            if !n.is_power_of_two() || !(MIN_RINGBUF_SIZE..=MAX_RINGBUF_SIZE).contains(&n) {
                return Err(bad(
                    d,
                    "ring buffer size must be a power of two, 64..=1 GiB",
                ));
            }
            if d.key_size != 0 || d.value_size != 0 {
                return Err(bad(d, "ring buffers have no key or value"));
            }
            h.data_size = n as u64;
        }
    }
    h.total_size = h
        .data_off
        .checked_add(h.data_size)
        .ok_or_else(|| bad(d, "map too large"))?;
    if h.total_size > (1 << 40) {
        return Err(bad(d, "map too large"));
    }
    Ok(h)
}

impl MapPtr {
    fn map_type(self) -> Option<MapType> {
        MapType::from_u32(self.hdr().map_type)
    }

    /// Address of the first value for `BPF_PSEUDO_MAP_VALUE` (ARRAY maps), else 0.
    pub fn first_value_addr(self) -> u64 {
        match self.map_type() {
            Some(MapType::Array) => self.at(self.hdr().data_off) as u64,
            _ => 0,
        }
    }

    fn cpu_slot(self) -> u64 {
        let n = self.hdr().ncpus.max(1);
        let cpu = sys::cpu_id();
        (if cpu < n { cpu } else { cpu % n }) as u64
    }

    /// Offset of array entry `idx` for per-CPU slot `cpu` (layout `[cpu][entry]`).
    fn array_off(self, idx: u32, cpu: u64) -> u64 {
        self.hdr().array_value_off(idx, cpu)
    }
}

/// `bpf_map_lookup_elem`: the address of the value for `key` (this CPU's slot for per-CPU
/// maps), or 0.
///
/// # Safety
/// `key` must be readable for the map's `key_size` bytes.
pub unsafe fn lookup(map: MapPtr, key: *const u8) -> u64 {
    match map.map_type() {
        Some(MapType::Array) => {
            // SAFETY: key is readable for key_size == 4 bytes (caller).
            let idx = unsafe { (key as *const u32).read_unaligned() };
            if idx >= map.hdr().max_entries {
                return 0;
            }
            map.at(map.array_off(idx, 0)) as u64
        }
        Some(MapType::PercpuArray) => {
            // SAFETY: as above.
            let idx = unsafe { (key as *const u32).read_unaligned() };
            if idx >= map.hdr().max_entries {
                return 0;
            }
            map.at(map.array_off(idx, map.cpu_slot())) as u64
        }
        Some(MapType::Hash) => {
            // SAFETY: forwarded caller contract.
            let e = unsafe { hash::find(map, key) };
            e.map_or(0, |off| map.at(hash::value_off(map, off, 0)) as u64)
        }
        Some(MapType::PercpuHash) => {
            // SAFETY: forwarded caller contract.
            let e = unsafe { hash::find(map, key) };
            e.map_or(0, |off| {
                map.at(hash::value_off(map, off, map.cpu_slot())) as u64
            })
        }
        _ => 0,
    }
}

/// `bpf_map_update_elem` from a program: 0 or a negative errno.
///
/// # Safety
/// `key` and `value` must be readable for the map's key and value sizes.
pub unsafe fn update(map: MapPtr, key: *const u8, value: *const u8, flags: u64) -> i64 {
    if flags > BPF_EXIST {
        return -sys::EINVAL;
    }
    let h = map.hdr();
    match map.map_type() {
        Some(t @ (MapType::Array | MapType::PercpuArray)) => {
            // SAFETY: key readable for 4 bytes (caller).
            let idx = unsafe { (key as *const u32).read_unaligned() };
            if idx >= h.max_entries {
                return -sys::E2BIG;
            }
            if flags == BPF_NOEXIST {
                return -sys::EEXIST;
            }
            let cpu = if t == MapType::PercpuArray {
                map.cpu_slot()
            } else {
                0
            };
            // SAFETY: value readable for value_size bytes (caller); the slot is in the map.
            unsafe { map.copy_in(map.array_off(idx, cpu), value, h.value_size as usize) };
            0
        }
        // SAFETY: forwarded caller contract.
        Some(MapType::Hash | MapType::PercpuHash) => unsafe {
            hash::update(map, key, value, flags)
        },
        _ => -sys::EINVAL,
    }
}

/// `bpf_map_delete_elem`: 0 or a negative errno (`-EINVAL` for arrays, like Linux).
///
/// # Safety
/// `key` must be readable for the map's key size.
pub unsafe fn delete(map: MapPtr, key: *const u8) -> i64 {
    match map.map_type() {
        // SAFETY: forwarded caller contract.
        Some(MapType::Hash | MapType::PercpuHash) => unsafe { hash::delete(map, key) },
        _ => -sys::EINVAL,
    }
}

pub use ringbuf::{consume as ringbuf_consume, output as ringbuf_output};
pub use ringbuf::{discard as ringbuf_discard, reserve as ringbuf_reserve};
pub use ringbuf::{submit as ringbuf_submit, submit_or_discard as ringbuf_commit};

/// The reader API of an [`Arena`] (a session's map arena, mapped in this process): its maps
/// by offset, checked, and the `Env` tables of a mapping.
pub trait ArenaMaps {
    /// The map whose header is at `off`, after checking its header (see
    /// [`Arena::header`]).
    fn map(&self, off: u64) -> Result<MapView<'_>, MapError>;

    /// `Env` address tables for maps at `offsets` in this mapping: header addresses
    /// (`map_addrs`) and first-value addresses (`map_value_addrs`).
    fn env_addrs(&self, offsets: &[u64]) -> Result<(Vec<u64>, Vec<u64>), MapError>;
}

impl ArenaMaps for Arena {
    fn map(&self, off: u64) -> Result<MapView<'_>, MapError> {
        let h = self.header(off).ok_or(MapError::NoMap(off))?;
        // SAFETY: `header` checked that a map header with the magic lies at this 8-aligned
        // address inside the arena, with its `total_size` bytes inside it too; `Arena`'s
        // contract keeps them mapped while the view (which borrows the arena) is used.
        let p = unsafe { MapPtr::from_addr(h as *const MapHeader as u64) }
            .ok_or(MapError::NoMap(off))?;
        Ok(MapView {
            map: p,
            _arena: core::marker::PhantomData,
        })
    }

    fn env_addrs(&self, offsets: &[u64]) -> Result<(Vec<u64>, Vec<u64>), MapError> {
        let mut a = Vec::with_capacity(offsets.len());
        let mut v = Vec::with_capacity(offsets.len());
        for &o in offsets {
            let m = self.map(o)?;
            a.push(m.map.addr());
            v.push(m.map.first_value_addr());
        }
        Ok((a, v))
    }
}

/// One map of an [`Arena`], for readers in any process.
#[derive(Clone, Copy, Debug)]
pub struct MapView<'a> {
    map: MapPtr,
    _arena: core::marker::PhantomData<&'a Arena>,
}

impl MapView<'_> {
    /// The validated header address (what helpers take).
    pub fn ptr(&self) -> MapPtr {
        self.map
    }

    /// The header.
    pub fn header(&self) -> &MapHeader {
        self.map.hdr()
    }

    /// The map's type.
    pub fn map_type(&self) -> MapType {
        // Checked by ArenaMaps::map.
        MapType::from_u32(self.map.hdr().map_type).unwrap_or(MapType::Array)
    }

    /// The map's name.
    pub fn name(&self) -> &str {
        self.map.hdr().name()
    }

    /// Copies value `idx` of an ARRAY (or slot `cpu` of a PERCPU_ARRAY) into `out` (at most
    /// `value_size` bytes). Returns false when out of range or not an array.
    pub fn read_array(&self, idx: u32, cpu: u32, out: &mut [u8]) -> bool {
        let h = self.map.hdr();
        let ok = matches!(self.map_type(), MapType::Array | MapType::PercpuArray)
            && idx < h.max_entries
            && cpu < h.ncpus;
        if !ok {
            return false;
        }
        let n = out.len().min(h.value_size as usize);
        let Some(out) = out.get_mut(..n) else {
            return false;
        };
        self.map.copy_out(self.map.array_off(idx, cpu as u64), out);
        true
    }

    /// The u64 at the start of array value `idx`, read atomically (a counter), summed over
    /// every CPU slot for a PERCPU_ARRAY. `None` when out of range, not an array, or values
    /// are smaller than 8 bytes.
    pub fn array_u64(&self, idx: u32) -> Option<u64> {
        let h = self.map.hdr();
        if !matches!(self.map_type(), MapType::Array | MapType::PercpuArray)
            || idx >= h.max_entries
            || h.value_size < 8
        {
            return None;
        }
        let mut sum = 0u64;
        for cpu in 0..h.ncpus as u64 {
            let v = self
                .map
                .u64_at(self.map.array_off(idx, cpu))
                .load(Ordering::Relaxed);
            sum = sum.wrapping_add(v);
        }
        Some(sum)
    }

    /// Every entry's counter ([`Self::array_u64`]) for entries `0..max_entries`.
    pub fn array_u64_all(&self) -> Vec<u64> {
        let n = self.map.hdr().max_entries;
        (0..n).map_while(|i| self.array_u64(i)).collect()
    }

    /// Calls `f(key, values)` for every live entry of a HASH or PERCPU_HASH (values holds
    /// `ncpus` values of `value_stride` bytes each for per-CPU maps). Entries are copied out
    /// and re-validated, so a concurrent writer never yields a torn key. Returns the number
    /// of entries visited.
    pub fn hash_for_each(&self, f: impl FnMut(&[u8], &[u8])) -> usize {
        if !matches!(self.map_type(), MapType::Hash | MapType::PercpuHash) {
            return 0;
        }
        hash::for_each(self.map, f)
    }

    /// Looks up `key` in a HASH from the reader side and copies its value(s) out.
    pub fn hash_get(&self, key: &[u8]) -> Option<Vec<u8>> {
        let h = self.map.hdr();
        if !matches!(self.map_type(), MapType::Hash | MapType::PercpuHash)
            || key.len() != h.key_size as usize
        {
            return None;
        }
        // SAFETY: key is readable for key_size bytes (checked).
        let e = unsafe { hash::find(self.map, key.as_ptr()) }?;
        let mut out = alloc::vec![0u8; (h.value_stride * h.ncpus) as usize];
        self.map.copy_out(hash::value_off(self.map, e, 0), &mut out);
        Some(out)
    }

    /// Consumes every ready ring-buffer record, calling `f` with each payload; returns the
    /// number of records delivered. One consumer at a time.
    pub fn ringbuf_consume(&self, f: impl FnMut(&[u8])) -> usize {
        if self.map_type() != MapType::Ringbuf {
            return 0;
        }
        ringbuf::consume(self.map, f)
    }

    /// Records dropped (RINGBUF full) or writes given up (HASH lock busy).
    pub fn dropped(&self) -> u64 {
        self.map.hdr().dropped.load(Ordering::Relaxed)
    }

    /// Live entries of a HASH.
    pub fn len(&self) -> u64 {
        self.map.hdr().count.load(Ordering::Relaxed) as u64
    }

    /// Whether a HASH has no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
