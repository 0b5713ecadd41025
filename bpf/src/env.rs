//! What a program may touch: helpers by id, maps by index.

use crate::program::{BPF_F_RDONLY_PROG, MapDef, MapType};

/// A helper as both the interpreter and the JIT call it: `r1..r5` in, `r0` out, System V
/// calling convention.
pub type HelperFn = unsafe extern "C" fn(u64, u64, u64, u64, u64) -> u64;

/// The world a program runs in. Built by whoever runs the program (the agent in the target,
/// the conformance runner, tests) and given to the interpreter or the JIT.
#[derive(Clone, Copy, Debug, Default)]
pub struct Env<'a> {
    /// Helper functions by Linux helper id.
    pub helpers: &'a [(u32, HelperFn)],
    /// Per map index: the address `lddw rX, map` loads (`BPF_PSEUDO_MAP_FD`), i.e. the
    /// map's header in the arena, which helpers such as `bpf_map_lookup_elem` receive.
    pub map_addrs: &'a [u64],
    /// Per map index: address of the map's first value, for `BPF_PSEUDO_MAP_VALUE`
    /// (`.data`/`.rodata` globals); 0 when the map has none.
    pub map_value_addrs: &'a [u64],
    /// A helper id that ends the program (with `r0 = 0`) when it returns 0: the
    /// bpf_conformance "unwind" helper. `None` for real probes.
    pub unwind_helper: Option<u32>,
    /// Per map index: how to inline `bpf_map_lookup_elem` on it (ARRAY and PERCPU_ARRAY)
    /// or the ring buffer helpers (RINGBUF), or `None` to call the helper. Empty (the
    /// default) disables inlining; build it with [`InlineMap::table`].
    pub map_inline: &'a [Option<InlineMap>],
    /// `%fs`-relative offset of the kernel-maintained CPU number of the running thread (the
    /// `cpu_id` field of its registered `struct rseq`), when every thread of the process has
    /// one there. The JIT then reads the CPU of an inlined PERCPU_ARRAY lookup with one load
    /// instead of `rdpid`; a value at or above the map's slot count (the
    /// kernel's `-1`/`-2` before or without registration) falls back to `rdpid`. `None`
    /// (the default): `rdpid` only.
    pub rseq_cpu_id: Option<i32>,
    /// `%fs`-relative offset of the thread id in every thread's TCB, when each thread of
    /// the process has its own id there (glibc). The JIT then inlines
    /// `bpf_get_current_pid_tgid` as one load of it (plus the cached pid) instead of the
    /// tid cache, whose `rdfsbase` waits for earlier loads (docs/performance.md).
    /// `None` (the default): the tid cache.
    pub tcb_tid: Option<i32>,
    /// Per map index: its type and sizes, which the verifier checks every access and helper
    /// call against. A program may only reference maps that have an entry here (and in
    /// [`Env::map_addrs`]).
    pub maps: &'a [MapInfo],
    /// Prototypes of helpers that are not standard Linux helpers (test and conformance
    /// helpers), consulted before [`crate::helpers::proto`]. A helper without a prototype
    /// cannot be called.
    pub protos: &'a [(u32, HelperProto)],
}

impl Env<'_> {
    /// The helper registered for `id`.
    pub fn helper(&self, id: u32) -> Option<HelperFn> {
        self.helpers.iter().find(|(i, _)| *i == id).map(|(_, f)| *f)
    }

    /// What the verifier assumes helper `id` takes and returns: [`Env::protos`] first, then
    /// the standard table.
    pub fn proto(&self, id: u32) -> Option<HelperProto> {
        self.protos
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, p)| *p)
            .or_else(|| crate::helpers::proto(id))
    }
}

/// What the verifier knows about one map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapInfo {
    /// Its type.
    pub map_type: MapType,
    /// Key size in bytes.
    pub key_size: u32,
    /// Value size in bytes (per CPU); 0 for a ring buffer.
    pub value_size: u32,
    /// Entries; for a ring buffer, its data size in bytes.
    pub max_entries: u32,
    /// `BPF_F_RDONLY_PROG`: the program may not write its values (`.rodata`).
    pub read_only: bool,
}

impl MapInfo {
    /// The shape of a map definition.
    pub fn of(def: &MapDef) -> Self {
        MapInfo {
            map_type: def.map_type,
            key_size: def.key_size,
            value_size: def.value_size,
            max_entries: def.max_entries,
            read_only: def.flags & BPF_F_RDONLY_PROG != 0,
        }
    }

    /// The shape of every map of a program, in index order.
    pub fn table_of(defs: &[MapDef]) -> alloc::vec::Vec<Self> {
        defs.iter().map(Self::of).collect()
    }

    /// The shape a map header in an arena describes; `None` for an unknown type.
    pub fn of_header(map: crate::maps::MapPtr) -> Option<Self> {
        let h = map.hdr();
        Some(MapInfo {
            map_type: MapType::from_u32(h.map_type)?,
            key_size: h.key_size,
            value_size: h.value_size,
            max_entries: h.max_entries,
            read_only: h.flags & BPF_F_RDONLY_PROG != 0,
        })
    }

    /// [`Env::maps`] for maps whose headers are at `map_addrs`: `None` if one of them is not
    /// a map header of a known type.
    ///
    /// # Safety
    /// As [`InlineMap::table`].
    pub unsafe fn table(map_addrs: &[u64]) -> Option<alloc::vec::Vec<Self>> {
        map_addrs
            .iter()
            // SAFETY: caller contract.
            .map(|&a| unsafe { crate::maps::MapPtr::from_addr(a) }.and_then(Self::of_header))
            .collect()
    }
}

/// What a helper expects in one argument register (the verifier's view of its prototype).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arg {
    /// Not an argument: not checked.
    None,
    /// Any initialised value, pointer or number (the helper never dereferences it, or only
    /// fault-safely).
    Anything,
    /// A number.
    Scalar,
    /// A map with keys: ARRAY, PERCPU_ARRAY, HASH or PERCPU_HASH.
    Map,
    /// A RINGBUF map.
    Ringbuf,
    /// A pointer to the key size of the map in `r1`, initialised, holding no pointer.
    Key,
    /// A pointer to the value size of the map in `r1`, initialised, holding no pointer.
    Value,
    /// A pointer to as many readable, initialised bytes as the next argument says, holding no
    /// pointer.
    MemIn,
    /// A pointer to as many writable bytes as the next argument says (uninitialised stack
    /// is fine: the helper writes it).
    MemOut,
    /// The size of the previous argument: a number with a known upper bound.
    Size,
    /// A number known exactly when verifying (a ring-buffer record size).
    ConstSize,
    /// The context pointer, unmoved; the context must be a whole `xcover_session::ProbeCtx`.
    Ctx,
    /// A ring-buffer record from `bpf_ringbuf_reserve`, checked non-NULL and unmoved; the
    /// call releases it.
    Record,
}

/// What a helper returns in `r0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ret {
    /// A number.
    Scalar,
    /// A number below 2^32.
    U32,
    /// A pointer to a value of the map in `r1`, or NULL.
    MapValueOrNull,
    /// A ring-buffer record of the size in `r2`, or NULL; it must be submitted or discarded.
    RecordOrNull,
}

/// A helper's prototype: arguments `r1..r5` and result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HelperProto {
    /// `r1..r5`.
    pub args: [Arg; 5],
    /// `r0`.
    pub ret: Ret,
}

impl HelperProto {
    /// A prototype with the given leading arguments (the rest [`Arg::None`]).
    pub const fn new(lead: &[Arg], ret: Ret) -> Self {
        let mut args = [Arg::None; 5];
        let mut i = 0;
        while i < lead.len() && i < 5 {
            // The loop bound keeps both indices in range; const fn has no `get` here.
            #[allow(clippy::indexing_slicing)]
            {
                args[i] = lead[i];
            }
            i += 1;
        }
        HelperProto { args, ret }
    }
}

/// Which kind of array an [`InlineMap`] describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InlineKind {
    /// `BPF_MAP_TYPE_ARRAY`: one value per key.
    Array,
    /// `BPF_MAP_TYPE_PERCPU_ARRAY`: one value per key and CPU slot.
    PerCpuArray,
    /// `BPF_MAP_TYPE_RINGBUF`: not a lookup target; the JIT inlines the fast path of
    /// `bpf_ringbuf_reserve` / `bpf_ringbuf_submit` on it (`values_addr` is the data area,
    /// `ring_size` its size).
    Ringbuf,
}

/// What the JIT needs to inline `bpf_map_lookup_elem` on an array map (or the ring buffer
/// helpers on a RINGBUF, see [`InlineKind::Ringbuf`]): the lookup becomes
/// `key < max_entries ? values_addr + cpu_slot * cpu_stride + key * value_stride : 0`,
/// the same address [`crate::maps::lookup`] computes (layout `[cpu][entry]`, CPU slot
/// `cpu < ncpus ? cpu : cpu % ncpus` with `cpu` from [`xcover_rt::cpu_id`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InlineMap {
    /// Array or per-CPU array.
    pub kind: InlineKind,
    /// Address of the first value (entry 0, CPU slot 0) in the running process.
    pub values_addr: u64,
    /// Distance between two consecutive values (the map's `value_stride`).
    pub value_stride: u32,
    /// Number of entries; keys at or above it look up to 0.
    pub max_entries: u32,
    /// Distance between two CPU slots (`max_entries * value_stride`); 0 for ARRAY.
    pub cpu_stride: u64,
    /// Number of CPU slots (1 for ARRAY and RINGBUF).
    pub ncpus: u32,
    /// RINGBUF: size of the data area (a power of two); 0 for arrays.
    pub ring_size: u64,
}

impl InlineMap {
    /// The inline description of an ARRAY, PERCPU_ARRAY or RINGBUF map, `None` for other
    /// types.
    pub fn of(map: crate::maps::MapPtr) -> Option<Self> {
        use crate::program::MapType;
        let h = map.hdr();
        let kind = match MapType::from_u32(h.map_type)? {
            MapType::Array => InlineKind::Array,
            MapType::PercpuArray => InlineKind::PerCpuArray,
            MapType::Ringbuf => {
                return Some(InlineMap {
                    kind: InlineKind::Ringbuf,
                    values_addr: map.addr().checked_add(h.data_off)?,
                    value_stride: 0,
                    max_entries: 0,
                    cpu_stride: 0,
                    ncpus: 1,
                    ring_size: h.data_size,
                });
            }
            _ => return None,
        };
        let ncpus = if kind == InlineKind::Array {
            1
        } else {
            h.ncpus.max(1)
        };
        Some(InlineMap {
            kind,
            values_addr: map.addr().checked_add(h.data_off)?,
            value_stride: h.value_stride,
            max_entries: h.max_entries,
            cpu_stride: if kind == InlineKind::Array {
                0
            } else {
                h.max_entries as u64 * h.value_stride as u64
            },
            ncpus,
            ring_size: 0,
        })
    }

    /// [`Env::map_inline`] for maps whose headers are at `map_addrs` (the same table as
    /// [`Env::map_addrs`]): `Some` for every ARRAY / PERCPU_ARRAY / RINGBUF, `None`
    /// otherwise.
    ///
    /// # Safety
    /// Every address must be 0 or a map header written by
    /// [`crate::maps::ArenaLayout::init`] that stays mapped while the result is used.
    pub unsafe fn table(map_addrs: &[u64]) -> alloc::vec::Vec<Option<Self>> {
        map_addrs
            .iter()
            // SAFETY: caller contract.
            .map(|&a| unsafe { crate::maps::MapPtr::from_addr(a) }.and_then(Self::of))
            .collect()
    }
}
