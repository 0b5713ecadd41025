//! The session file's byte layout: the header, the function and module tables, the region
//! table and the agent's entry points. Every type is `#[repr(C)]`, and the sizes and key
//! offsets are pinned by compile-time asserts, so two builds that agree on
//! [`SESSION_VERSION`] agree on every byte.
//!
//! ```text
//! +-------------------+ 0
//! | SessionHeader     |
//! +-------------------+ funcs_off
//! | FuncEntry * n     |  one per hooked-or-skipped function, in table (cookie) order
//! +-------------------+ modules_off
//! | ModuleEntry * n   |  one per module, the main executable first
//! +-------------------+ strings_off
//! | names (utf-8)     |  FuncEntry::name_off/len and ModuleEntry::path_off/len point here
//! +-------------------+ prog_off
//! | probe insns       |  8 bytes each, map references rewritten to map indices
//! +-------------------+ maps_off
//! | map table         |  one u64 per map: its header's offset in the arena
//! +-------------------+ regions_off
//! | Region * cap      |  what the agent mapped in the target (it appends)
//! +-------------------+ arena_off
//! | eBPF map arena    |  the probe's maps (see `crate::arena`)
//! +-------------------+ log_off
//! | log ring          |  trace_printk and agent messages
//! +-------------------+ total_size
//! ```
//!
//! Sections are found only through the header's offsets; their order above is the one
//! xcover uses, not a rule readers may rely on.

use bytemuck::{Pod, Zeroable};
use core::sync::atomic::{AtomicI32, AtomicU32, AtomicU64};

use crate::skip::SkipReason;

/// First eight bytes of every session file.
pub const SESSION_MAGIC: [u8; 8] = *b"XCOVSESS";
/// Layout version; bumped on any incompatible change (2: [`ModuleEntry`] carries the
/// module's alias).
pub const SESSION_VERSION: u32 = 2;
/// Prefix of session files under `/dev/shm` (`/dev/shm/xcover-<pid>`).
pub const SESSION_PREFIX: &str = "xcover-";

/// Lifecycle of a session, stored in [`SessionHeader::state`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionState {
    /// xcover created the file and is loading the agent.
    Attaching = 1,
    /// The agent is loaded and (once hooks exist) counting.
    Live = 2,
    /// xcover is taking the instrumentation out.
    Detaching = 3,
    /// Everything is out of the target; the file is about to be removed.
    Detached = 4,
    /// Attach or detach failed half-way; `xcover detach` can finish the job.
    Failed = 5,
}

impl SessionState {
    /// Decodes a raw state value.
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Attaching,
            2 => Self::Live,
            3 => Self::Detaching,
            4 => Self::Detached,
            5 => Self::Failed,
            _ => return None,
        })
    }
}

/// The fixed header at offset 0 of a session file.
///
/// Fields written once by xcover before the agent starts are plain; fields that change while
/// readers watch are atomics.
#[repr(C)]
pub struct SessionHeader {
    /// [`SESSION_MAGIC`].
    pub magic: [u8; 8],
    /// [`SESSION_VERSION`].
    pub version: u32,
    /// `size_of::<SessionHeader>()` as written, for sanity checks.
    pub header_size: u32,
    /// Size of the whole file in bytes.
    pub total_size: u64,
    /// A [`SessionState`] value.
    pub state: AtomicU32,
    /// Pid of the target (its tgid).
    pub target_pid: u32,
    /// Start time of the target (field 22 of `/proc/<pid>/stat`), so a recycled pid is
    /// never mistaken for the session's target.
    pub target_start_time: u64,
    /// Pid of the xcover process that owns the session now (0 when none, e.g. `--keep`).
    pub owner_pid: AtomicU32,
    /// Flags, see the `FLAG_*` constants.
    pub flags: u32,
    /// Wall-clock time the session was created, nanoseconds since the Unix epoch.
    pub created_unix_ns: u64,
    /// Address in the target where the agent is loaded (0 when not loaded).
    pub agent_base: AtomicU64,
    /// Size in bytes of the agent's mapping in the target.
    pub agent_size: AtomicU64,
    /// Address in the target of this file's mapping (0 when not mapped there).
    pub target_map_addr: AtomicU64,
    /// Incremented by the agent each time it runs an entry point; proves it ran.
    pub agent_calls: AtomicU64,
    /// Offset of the function table ([`FuncEntry`] array).
    pub funcs_off: u64,
    /// Number of [`FuncEntry`] records.
    pub funcs_count: u64,
    /// Offset of the name bytes.
    pub strings_off: u64,
    /// Size of the name bytes.
    pub strings_size: u64,
    /// Offset of the eBPF map arena.
    pub arena_off: u64,
    /// Size of the eBPF map arena.
    pub arena_size: u64,
    /// Offset of the log ring.
    pub log_off: u64,
    /// Size of the log ring (a power of two).
    pub log_size: u64,
    /// Bytes ever written to the log ring (the write cursor, modulo `log_size`).
    pub log_head: AtomicU64,
    /// Functions hooked.
    pub funcs_hooked: AtomicU64,
    /// Functions skipped (see [`FuncEntry::status`]).
    pub funcs_skipped: AtomicU64,
    /// Events the probe could not record (ring buffer full).
    pub events_dropped: AtomicU64,
    /// Build-id of the main executable (first `build_id_len` bytes).
    pub build_id: [u8; 32],
    /// Valid bytes in `build_id`.
    pub build_id_len: u32,
    /// Valid bytes in `exe_path`.
    pub exe_path_len: u32,
    /// Path of the target's main executable (first `exe_path_len` bytes, utf-8).
    pub exe_path: [u8; 512],
    /// Offset of the probe's eBPF instructions (8 bytes each, map references already
    /// rewritten to `lddw src=1/2, imm = map index`), written by xcover.
    pub prog_off: u64,
    /// Number of probe instructions.
    pub prog_insns: u64,
    /// Offset of the map table: `maps_count` little-endian `u64`s, the offset of each map's
    /// header from `arena_off`, indexed by the program's map index.
    pub maps_off: u64,
    /// Number of maps.
    pub maps_count: u64,
    /// Map index of the per-function hit counters (a PERCPU_ARRAY or ARRAY of `u64` keyed by
    /// cookie, named as [`crate::probe::HIT_COUNT_MAPS`] says), or `u64::MAX`.
    pub hits_map: u64,
    /// Map index of the first-hit ring buffer ([`crate::probe::EVENTS_MAP`], records of
    /// [`crate::probe::FirstHit`]), or `u64::MAX`.
    pub events_map: u64,
    /// Possible CPUs the per-CPU maps were laid out for.
    pub ncpus: u32,
    /// `PROBE_*` flags.
    pub probe_flags: u32,
    /// Offset of the region table: [`Region`]s the agent mapped in the target, so xcover can
    /// tell whether a stopped thread is inside memory that is about to be unmapped.
    pub regions_off: u64,
    /// Capacity of the region table.
    pub regions_cap: u64,
    /// Regions in use (the agent appends; entries below this count are complete).
    pub regions_count: AtomicU64,
    /// Nanoseconds (CLOCK_MONOTONIC, the target's clock) when hooking finished.
    pub hooked_at_ns: AtomicU64,
    /// Valid bytes in `agent_error`.
    pub agent_error_len: AtomicU32,
    /// `%fs`-relative offset of the rseq `cpu_id` that the kernel keeps up to date in every
    /// thread of the target, 0 when they do not all have one at the same offset (then the
    /// JIT-ed probe takes the CPU number from `rdpid`). Written by xcover while the target
    /// is stopped, before the agent compiles the probe.
    pub rseq_cpu_id_off: AtomicI32,
    /// The agent's last error, utf-8, for xcover to show when an entry point fails.
    pub agent_error: [u8; AGENT_ERROR_SIZE],
    /// Offset of the module table ([`ModuleEntry`] array).
    pub modules_off: u64,
    /// Number of modules (0 is the main executable).
    pub modules_count: u64,
    /// Scratch memory xcover mapped in the target for the stop in progress (its park, data
    /// and private stack), 0 when none: if xcover dies, the next one takes it out.
    pub scratch_addr: AtomicU64,
    /// Size of that scratch memory.
    pub scratch_size: AtomicU64,
}

// The header's layout is fixed for a SESSION_VERSION: its size and the offsets of fields
// that separate groups, so that a moved or resized field fails to compile.
const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<SessionHeader>() == 1120);
    assert!(offset_of!(SessionHeader, state) == 24);
    assert!(offset_of!(SessionHeader, owner_pid) == 40);
    assert!(offset_of!(SessionHeader, funcs_off) == 88);
    assert!(offset_of!(SessionHeader, build_id) == 184);
    assert!(offset_of!(SessionHeader, exe_path) == 224);
    assert!(offset_of!(SessionHeader, prog_off) == 736);
    assert!(offset_of!(SessionHeader, hits_map) == 768);
    assert!(offset_of!(SessionHeader, regions_off) == 792);
    assert!(offset_of!(SessionHeader, rseq_cpu_id_off) == 828);
    assert!(offset_of!(SessionHeader, agent_error) == 832);
    assert!(offset_of!(SessionHeader, modules_off) == 1088);
    assert!(offset_of!(SessionHeader, scratch_size) == 1112);
};

/// Size of [`SessionHeader::agent_error`].
pub const AGENT_ERROR_SIZE: usize = 256;

/// Offset of glibc's `struct pthread::tid` from the thread pointer on x86-64 (the same in
/// every glibc release since NPTL's TCB layout settled). The kernel writes it when the
/// thread is created (`CLONE_PARENT_SETTID`) and zeroes it when the thread exits.
pub const GLIBC_TCB_TID_OFF: u32 = 0x2d0;

/// One module (a mapped ELF file) whose functions are in the table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct ModuleEntry {
    /// Offset of the module's path in the string section.
    pub path_off: u32,
    /// Length of the path.
    pub path_len: u32,
    /// Offset of the name the user gave the module (`--module libsqlite3.so.0` for the file
    /// `libsqlite3.so.0.8.6`) in the string section.
    pub alias_off: u32,
    /// Length of that name; 0 when the module goes by its file name.
    pub alias_len: u32,
}

const _: () = assert!(core::mem::size_of::<ModuleEntry>() == 16);

/// [`SessionHeader::probe_flags`]: save vector registers in trampolines (for probes that
/// are not JIT-ed by xcover, which preserves them itself).
pub const PROBE_SAVE_VECTOR_REGS: u32 = 1;
/// [`SessionHeader::probe_flags`]: every thread's own id is at `%fs` +
/// [`GLIBC_TCB_TID_OFF`] (xcover checked each stopped thread at attach), so the probe's
/// `bpf_get_current_pid_tgid` may read it there instead of going through the agent's tid
/// cache. Set by xcover while the target is stopped, before the agent compiles the probe.
pub const PROBE_TCB_TID: u32 = 2;
/// [`SessionHeader::probe_flags`]: functions no jump can hook may be hooked with a one-byte
/// `int3` trap, which the agent's SIGTRAP handler serves. Set by xcover unless the target
/// manages its own signals in ways the agent cannot follow (Go's runtime).
pub const PROBE_TRAPS: u32 = 4;

/// One mapping the agent made in the target.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Region {
    /// Start address.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// A `REGION_*` kind.
    pub kind: u32,
    /// Reserved, zero.
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<Region>() == 24);

/// [`Region::kind`]: the agent's heap.
pub const REGION_HEAP: u32 = 1;
/// [`Region::kind`]: JIT-compiled probe code.
pub const REGION_JIT: u32 = 2;
/// [`Region::kind`]: a trampoline arena.
pub const REGION_TRAMPOLINES: u32 = 3;

/// Exported entry points of the agent, called by xcover in a stopped thread on a private
/// stack. Every one returns a negative value on failure and then leaves a message in
/// [`SessionHeader::agent_error`].
pub mod entry {
    /// `xcover_agent_init(session: *mut u8, size: u64) -> i64`: checks and records the
    /// session, sets it Live.
    pub const INIT: &str = "xcover_agent_init";
    /// `xcover_agent_hook(ips: *const u64, moves: *mut u64, n: u64) -> i64`: JIT-compiles
    /// the session's probe (once) and plans the hooks of every `Pending` function of the
    /// table: writes their trampolines, patches nothing yet. `ips` are the instruction
    /// pointers of the stopped threads; for each, `moves[i]` receives the address the thread
    /// must move to (an equivalent place in a trampoline, valid from now on), or 0 to leave
    /// it. xcover moves those threads, then calls `COMMIT`. Returns the number of functions
    /// planned.
    pub const HOOK: &str = "xcover_agent_hook";
    /// `xcover_agent_commit() -> i64`: writes the entry patches of what the last `HOOK`
    /// planned, marks each function `Hooked` or `Skipped` with its reason. Returns the number
    /// of functions hooked. Splitting the two lets xcover move the threads before any byte
    /// they sit on changes: if xcover dies in between, nothing is patched and every moved
    /// thread runs on through its trampoline's copy of the same instructions.
    pub const COMMIT: &str = "xcover_agent_commit";
    /// `xcover_agent_unhook(ips: *const u64, moves: *mut u64, n: u64) -> i64`: restores the
    /// original bytes of every hooked function (marking them `Pending` again; `Unhooked`
    /// ones stay so) and fills `moves` like `HOOK`. Returns the number of functions unhooked.
    pub const UNHOOK: &str = "xcover_agent_unhook";
    /// `xcover_agent_unhook_some(ips: *const u64, moves: *mut u64, n: u64) -> i64`: as
    /// `UNHOOK`, for the functions xcover marked `Unhooking` only; they become `Unhooked`
    /// (their reason kept), the others are left alone. Their trampolines are retired, not
    /// freed: a thread still inside one (in the probe, or about to return into it) runs on
    /// safely, and hooking the function again reuses it. Returns the number unhooked.
    pub const UNHOOK_SOME: &str = "xcover_agent_unhook_some";
    /// Set in an `ips` entry given to `UNHOOK`: that thread is held in a
    /// signal-delivery-stop of a SIGTRAP raised by a trap instruction (`si_code ==
    /// SI_KERNEL`) just before the address the rest of the entry gives. When that trap was
    /// one of the agent's trap hooks, `moves` sends the thread back to the function's entry
    /// (its original byte restored) and xcover drops the signal: after detach no handler
    /// would serve it.
    pub const IP_TRAP_STOPPED: u64 = 1 << 63;
    /// `xcover_agent_fini() -> i64`: unmaps every region the agent made (after `UNHOOK`, and
    /// only once no thread is inside one), marks the session Detached.
    pub const FINI: &str = "xcover_agent_fini";
    /// What `HOOK`, `COMMIT`, `UNHOOK` and `FINI` return when `INIT` never ran (or failed):
    /// the agent holds no session, so it has hooked and mapped nothing.
    pub const E_NO_SESSION: i64 = -5;
}

/// [`SessionHeader::flags`]: the session outlives the xcover process (`--keep`).
pub const FLAG_KEEP: u32 = 1;
/// [`SessionHeader::flags`]: the target holds nothing of this session any more (its agent
/// was unloaded, or it is gone), and the file is kept only for its counts, because a report
/// asked for could not be written: `xcover detach <pid> --report …` writes them and removes
/// the file. Such a file is never removed as stale.
pub const FLAG_HELD: u32 = 2;

/// Status of one function in the table.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FuncStatus {
    /// Not processed yet.
    Pending = 0,
    /// Trampoline installed.
    Hooked = 1,
    /// Left alone; `skip_reason` says why.
    Skipped = 2,
    /// Hooked, and xcover asks for its hook to be taken out while the session goes on
    /// (`xcover unhook`, `--first-hit`, `--max-overhead`): `skip_reason` holds an
    /// [`UnhookReason`] code in bits 8..16 beside its [`HookKind`] (see
    /// [`FuncEntry::skip_reason`]). It counts as hooked until the agent's `UNHOOK_SOME` runs.
    /// xcover writes this status (and `Pending` over `Unhooked`, to hook again) only between
    /// two entry-point calls it makes itself, so the agent never sees a half-written entry.
    Unhooking = 3,
    /// Was hooked, and its hook was taken out while the session went on: its count stopped
    /// there, so it is a lower bound of the calls since attach. `skip_reason` holds the
    /// [`UnhookReason`] code in bits 8..16 and how it was hooked in bits 0..8 (both kept
    /// when it is hooked again: see
    /// [`FuncEntry::unhook_reason`]). A full `UNHOOK` (detach) leaves it so.
    Unhooked = 4,
}

/// Why a function's hook was taken out while the session went on ([`FuncStatus::Unhooked`]),
/// stored in bits 8..16 of [`FuncEntry::skip_reason`] (see there).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnhookReason {
    /// `xcover unhook`, or a key in the TUI.
    User = 1,
    /// `--first-hit`: it was hit once, which is all coverage needs.
    FirstHit = 2,
    /// `--max-overhead`: it was among the hottest when the estimated overhead went over the
    /// budget.
    Overhead = 3,
    /// Its library was unloaded (`dlclose`).
    Unloaded = 4,
}

impl UnhookReason {
    /// Decodes a code.
    pub fn from_code(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::User,
            2 => Self::FirstHit,
            3 => Self::Overhead,
            4 => Self::Unloaded,
            _ => return None,
        })
    }

    /// A short name, as the reports give it.
    pub fn name(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::FirstHit => "first-hit",
            Self::Overhead => "overhead",
            Self::Unloaded => "unloaded",
        }
    }
}

impl FuncStatus {
    /// Decodes a raw status value.
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::Pending,
            1 => Self::Hooked,
            2 => Self::Skipped,
            3 => Self::Unhooking,
            4 => Self::Unhooked,
            _ => return None,
        })
    }
}

/// One function of the target.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct FuncEntry {
    /// Runtime address of the function's entry in the target.
    pub addr: u64,
    /// Size of the function in bytes (from its symbol).
    pub size: u64,
    /// Offset of the function from the start of its module's file mapping (the report's
    /// `offset`).
    pub offset: u64,
    /// Offset of the name in the string section.
    pub name_off: u32,
    /// Length of the name.
    pub name_len: u32,
    /// Index of the module (0 is the main executable) in bits 0..24; bits 24..32 say where
    /// the function was found (xcover's discovery source code, 0 when unknown, as in
    /// sessions written before it was recorded). See [`FuncEntry::module_index`] and
    /// [`FuncEntry::source_code`].
    pub module: u32,
    /// A [`FuncStatus`] value.
    pub status: u32,
    /// One field, two encodings, chosen by `status`:
    ///
    /// - `Skipped`: a [`SkipReason`] code alone ([`FuncEntry::skip_reason`]).
    /// - any other status (`Pending`, `Hooked`, `Unhooking`, `Unhooked`): bits 0..8 hold
    ///   how the function is (or was last) hooked, a [`HookKind`] code (0 when never hooked,
    ///   and in sessions written before hook kinds were recorded), and bits 8..16 why its
    ///   hook was last taken out while the session went on, an [`UnhookReason`] code (0:
    ///   never). Bits 16..32 are zero. Both are kept across unhook, re-hook and detach; see
    ///   [`FuncEntry::hook_kind`], [`FuncEntry::unhook_reason`] and
    ///   [`FuncEntry::pack_hook`].
    pub skip_reason: u32,
    /// Whether code outside the function branches into its first bytes, as xcover found by
    /// decoding the module: 0 when not (and in sessions written before this field was
    /// used: it was reserved, zero). Otherwise bits 0..8 hold the lowest such offset from the
    /// entry, which no entry patch may displace, and bits 8..32 the length of a text naming
    /// the first branch there, stored in the string section right after the name. See
    /// [`FuncEntry::entered_at`] and [`FuncEntry::entered_from_len`].
    pub entered: u32,
    /// Where the next symbol (or the section) starts: `addr + size .. pad_end` is padding
    /// the interceptor may use for a short function's jump.
    pub pad_end: u64,
    /// Link-time address of the entry (the symbol's value), for DWARF line lookups.
    pub vaddr: u64,
}

// The table's layout is fixed: sessions written by earlier versions stay readable.
const _: () = assert!(core::mem::size_of::<FuncEntry>() == 64);
const _: () = assert!(core::mem::offset_of!(FuncEntry, entered) == 44);

/// How a hooked function is patched: stored as [`HookKind::code`] in bits 0..8 of
/// [`FuncEntry::skip_reason`] while it is hooked (and kept when it is unhooked, its status
/// `Pending` or `Unhooked` again). Decided by the interceptor in the target, which uses this enum itself;
/// shown by every reader. Codes are stable, like [`SkipReason`]'s.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HookKind {
    /// A jump to the trampoline over the entry (x86-64: a 5-byte `jmp rel32`).
    Jmp = 1,
    /// A short jump to a jump in the function's padding (x86-64: a 2-byte `jmp rel8`).
    Jmp8 = 2,
    /// A one-byte trap (`int3`) served by the agent's SIGTRAP handler, which runs the probe
    /// and resumes at the relocated copy of the first instruction. Costs a signal delivery
    /// per hit; used only where no jump can go, when the session allows it
    /// ([`PROBE_TRAPS`]).
    Trap = 3,
}

impl HookKind {
    /// Every kind, in code order.
    pub const ALL: [HookKind; 3] = [Self::Jmp, Self::Jmp8, Self::Trap];

    /// The stable code stored in bits 0..8 of `FuncEntry::skip_reason` of a hooked function
    /// (never 0).
    pub const fn code(self) -> u32 {
        self as u32
    }

    /// Decodes a stored code; `None` for 0 (a session that did not record it) and for codes
    /// this version does not know.
    pub const fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            1 => Self::Jmp,
            2 => Self::Jmp8,
            3 => Self::Trap,
            _ => return None,
        })
    }

    /// Its name as reports, the TUI and the status line show it: `jmp`, `jmp8`, `trap`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Jmp => "jmp",
            Self::Jmp8 => "jmp8",
            Self::Trap => "trap",
        }
    }
}

impl core::fmt::Display for HookKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

impl FuncEntry {
    /// The entry's [`FuncStatus`] (`None` for a value this version does not know).
    pub fn status(&self) -> Option<FuncStatus> {
        FuncStatus::from_u32(self.status)
    }

    /// Why its hook was last taken out while the session went on: `None` when it never
    /// was. For a function that is not `Skipped`, `skip_reason` holds that
    /// [`UnhookReason`] code (0: never), and keeps it when the function is hooked again and
    /// when detach unhooks it, so a report says its count is a lower bound.
    pub fn unhook_reason(&self) -> Option<UnhookReason> {
        match self.status() {
            Some(FuncStatus::Skipped) | None => None,
            _ => UnhookReason::from_code(self.skip_reason >> 8 & 0xff),
        }
    }

    /// Packs [`FuncEntry::skip_reason`] of a function that is not `Skipped`: its
    /// [`HookKind`] code (bits 0..8) and its [`UnhookReason`] code (bits 8..16), 0 for
    /// `None`.
    pub const fn pack_hook(kind: Option<HookKind>, reason: Option<UnhookReason>) -> u32 {
        let k = match kind {
            Some(k) => k.code(),
            None => 0,
        };
        let r = match reason {
            Some(r) => r as u32,
            None => 0,
        };
        k & 0xff | (r & 0xff) << 8
    }

    /// Whether its hook is in (or was until the session ended): hooked, or asked to be
    /// unhooked and not yet.
    pub fn is_hooked(&self) -> bool {
        matches!(
            self.status(),
            Some(FuncStatus::Hooked | FuncStatus::Unhooking)
        )
    }

    /// Whether its count is a lower bound: its hook was taken out while the target ran on
    /// (even if it was put back later).
    pub fn hits_lower_bound(&self) -> bool {
        self.unhook_reason().is_some()
    }

    /// Why the function was skipped: `None` unless its status is
    /// [`FuncStatus::Skipped`] with a code this version knows.
    pub fn skip_reason(&self) -> Option<SkipReason> {
        match self.status() {
            Some(FuncStatus::Skipped) => SkipReason::from_code(self.skip_reason),
            _ => None,
        }
    }

    /// Packs [`FuncEntry::module`]: the module's index (below 2^24) and the source code.
    pub fn pack_module(index: u32, source: u8) -> u32 {
        index & 0xff_ffff | u32::from(source) << 24
    }

    /// Index of the function's module (0 is the main executable).
    pub fn module_index(&self) -> u32 {
        self.module & 0xff_ffff
    }

    /// Where xcover found the function (its discovery source code; 0 when unknown).
    pub fn source_code(&self) -> u8 {
        (self.module >> 24) as u8
    }

    /// How a hooked function is patched; for a function unhooked since (its status
    /// `Pending`, `Unhooking` or `Unhooked`), how it was. `None` when it was never hooked,
    /// or the session did not record it (or with a code this version does not know).
    pub fn hook_kind(&self) -> Option<HookKind> {
        match self.status() {
            Some(FuncStatus::Skipped) | None => None,
            _ => HookKind::from_code(self.skip_reason & 0xff),
        }
    }

    /// Packs [`FuncEntry::entered`]: the lowest offset `at` (1..=255) that another
    /// function's branch enters, and the length of the text naming it (below 2^24).
    pub fn pack_entered(at: u8, from_len: u32) -> u32 {
        u32::from(at) | from_len.min(0xff_ffff) << 8
    }

    /// The lowest offset from the entry that code outside the function branches to, 0 when
    /// none is known.
    pub fn entered_at(&self) -> u8 {
        self.entered as u8
    }

    /// Length of the text (after the name in the string section) that names the first
    /// branch at [`FuncEntry::entered_at`]; 0 when there is none.
    pub fn entered_from_len(&self) -> u32 {
        if self.entered_at() == 0 {
            0
        } else {
            self.entered >> 8
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_roundtrip() {
        for s in [
            SessionState::Attaching,
            SessionState::Live,
            SessionState::Detaching,
            SessionState::Detached,
            SessionState::Failed,
        ] {
            assert_eq!(SessionState::from_u32(s as u32), Some(s));
        }
        assert_eq!(SessionState::from_u32(0), None);
    }

    #[test]
    fn hook_kinds_round_trip_and_share_the_field_with_skip_reasons() {
        for (i, k) in HookKind::ALL.iter().enumerate() {
            assert_eq!(k.code(), i as u32 + 1, "{k:?}");
            assert_eq!(HookKind::from_code(k.code()), Some(*k));
        }
        assert_eq!(HookKind::from_code(0), None);
        assert_eq!(HookKind::Trap.name(), "trap");
        let mut f = FuncEntry {
            status: FuncStatus::Hooked as u32,
            skip_reason: HookKind::Trap.code(),
            ..FuncEntry::default()
        };
        assert_eq!(
            (f.hook_kind(), f.skip_reason()),
            (Some(HookKind::Trap), None)
        );
        f.status = FuncStatus::Pending as u32;
        assert_eq!(f.hook_kind(), Some(HookKind::Trap));
        assert_eq!(f.unhook_reason(), None);
        f.skip_reason = FuncEntry::pack_hook(Some(HookKind::Jmp8), Some(UnhookReason::FirstHit));
        for s in [
            FuncStatus::Pending,
            FuncStatus::Hooked,
            FuncStatus::Unhooking,
            FuncStatus::Unhooked,
        ] {
            f.status = s as u32;
            assert_eq!(f.hook_kind(), Some(HookKind::Jmp8), "{s:?}");
            assert_eq!(f.unhook_reason(), Some(UnhookReason::FirstHit), "{s:?}");
            assert_eq!(f.skip_reason(), None);
        }
        f.skip_reason = HookKind::Trap.code();
        f.status = FuncStatus::Skipped as u32;
        assert_eq!(f.hook_kind(), None);
        assert_eq!(
            f.skip_reason(),
            SkipReason::from_code(HookKind::Trap.code())
        );
    }
}
