//! The probe contract: what xcover, the agent and a probe object agree on.
//!
//! - The probe's context ([`ProbeCtx`]): what `r1` points at when a hooked function's entry
//!   runs the probe. The attach cookie is the function's index in the session's function
//!   table.
//! - The built-in coverage probe's maps, by name ([`COUNTS_MAP`], [`SEEN_MAP`],
//!   [`EVENTS_MAP`]): xcover finds them in the object by these names, sizes the
//!   cookie-indexed ones ([`PER_FUNCTION_MAPS`]) for the session's functions, and records
//!   the indices of the hit counters ([`HIT_COUNT_MAPS`]) and of the first-hit ring buffer in
//!   the header (`SessionHeader::hits_map`, `SessionHeader::events_map`).
//! - The records the probe writes: [`FirstHit`], one per function on its first hit, in the
//!   events ring buffer. Its C twin is `struct first_hit` in `session/include/xcover_probe.h`,
//!   which `bpf/cover.bpf.c` includes; `session/tests/probe_header.rs` compiles that header
//!   and checks it against this struct, field by field.
//!
//! A user's probe (`--probe`) may use any of this: a map called `hits` or `counts` (an ARRAY
//! or PERCPU_ARRAY of `u64` keyed by cookie) is read as the hit counts, a ring buffer called
//! `events` as first hits. Its maps keep the sizes the object gives them.

use bytemuck::{Pod, Zeroable};

/// The built-in probe's hit counters: a PERCPU_ARRAY of `u64` keyed by cookie (`u32`), one
/// entry per function of the table. Readers sum the CPU slots.
pub const COUNTS_MAP: &str = "counts";
/// The built-in probe's first-hit flags: an ARRAY of `u32` keyed by cookie, flipped from 0 to
/// 1 (compare-and-swap) by the hit that sends the function's [`FirstHit`].
pub const SEEN_MAP: &str = "seen";
/// The ring buffer of [`FirstHit`] records.
pub const EVENTS_MAP: &str = "events";
/// Names of the map read as per-function hit counts (an ARRAY or PERCPU_ARRAY whose values
/// start with a `u64` counter, keyed by cookie): the first map of the program that has one
/// of them is recorded as `SessionHeader::hits_map`.
pub const HIT_COUNT_MAPS: [&str; 2] = ["hits", COUNTS_MAP];
/// The built-in probe's maps indexed by cookie: xcover sets their `max_entries` to the
/// number of functions in the table (the object's own value is only a default).
pub const PER_FUNCTION_MAPS: [&str; 2] = [COUNTS_MAP, SEEN_MAP];

/// One first-hit event in the [`EVENTS_MAP`] ring buffer: the built-in probe sends exactly
/// one per function, on its first hit. `struct first_hit` in `xcover_probe.h`, in the
/// target's byte order (little-endian: x86-64).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FirstHit {
    /// The function's cookie (index in the function table).
    pub cookie: u64,
    /// `CLOCK_MONOTONIC_COARSE` in the target when it was hit, in nanoseconds (compare with
    /// `SessionHeader::hooked_at_ns`, the same clock's fine version).
    pub ts_ns: u64,
    /// The thread that hit it (its tid).
    pub tid: u32,
    /// Zero.
    pub _pad: u32,
}

impl FirstHit {
    /// Size of a record.
    pub const SIZE: usize = core::mem::size_of::<FirstHit>();

    /// Decodes a ring-buffer record; `None` when it is shorter than [`FirstHit::SIZE`]
    /// (bytes past it are ignored).
    pub fn from_record(rec: &[u8]) -> Option<FirstHit> {
        rec.get(..Self::SIZE).map(bytemuck::pod_read_unaligned)
    }
}

// The record's layout is fixed: the C header and every reader agree on it.
const _: () = assert!(FirstHit::SIZE == 24);
const _: () = assert!(core::mem::offset_of!(FirstHit, cookie) == 0);
const _: () = assert!(core::mem::offset_of!(FirstHit, ts_ns) == 8);
const _: () = assert!(core::mem::offset_of!(FirstHit, tid) == 16);
const _: () = assert!(core::mem::offset_of!(FirstHit, _pad) == 20);

/// The layout the probe sees as its context (`r1`): Linux's x86-64 `struct pt_regs`
/// followed by the attach cookie and the function address, so `PT_REGS_PARM1(ctx)` and
/// friends work unchanged and `bpf_get_attach_cookie`/`bpf_get_func_ip` are plain loads.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct ProbeCtx {
    /// `r15`.
    pub r15: u64,
    /// `r14`.
    pub r14: u64,
    /// `r13`.
    pub r13: u64,
    /// `r12`.
    pub r12: u64,
    /// `rbp`.
    pub rbp: u64,
    /// `rbx`.
    pub rbx: u64,
    /// `r11`.
    pub r11: u64,
    /// `r10`.
    pub r10: u64,
    /// `r9`.
    pub r9: u64,
    /// `r8`.
    pub r8: u64,
    /// `rax`.
    pub rax: u64,
    /// `rcx`.
    pub rcx: u64,
    /// `rdx`.
    pub rdx: u64,
    /// `rsi`.
    pub rsi: u64,
    /// `rdi`.
    pub rdi: u64,
    /// `orig_rax` (always `u64::MAX` here: not in a system call).
    pub orig_rax: u64,
    /// `rip`: the hooked function's entry.
    pub rip: u64,
    /// `cs` (0 here).
    pub cs: u64,
    /// `eflags`.
    pub eflags: u64,
    /// `rsp` at the function's entry (points at the return address).
    pub rsp: u64,
    /// `ss` (0 here).
    pub ss: u64,
    /// The attach cookie: the function's index in the session's function table.
    pub cookie: u64,
    /// The function's entry address (same as `rip`).
    pub func_ip: u64,
}

/// Byte offset of [`ProbeCtx::cookie`]; the JIT inlines `bpf_get_attach_cookie` as a load.
pub const PROBE_CTX_COOKIE_OFF: usize = core::mem::offset_of!(ProbeCtx, cookie);
/// Byte offset of [`ProbeCtx::func_ip`]; the JIT inlines `bpf_get_func_ip` as a load.
pub const PROBE_CTX_FUNC_IP_OFF: usize = core::mem::offset_of!(ProbeCtx, func_ip);
/// Size of `struct pt_regs` on x86-64.
pub const PT_REGS_SIZE: usize = 21 * 8;

const _: () = assert!(core::mem::offset_of!(ProbeCtx, cookie) == PT_REGS_SIZE);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctx_layout_matches_pt_regs() {
        assert_eq!(core::mem::offset_of!(ProbeCtx, rdi), 14 * 8);
        assert_eq!(core::mem::offset_of!(ProbeCtx, rip), 16 * 8);
        assert_eq!(core::mem::offset_of!(ProbeCtx, rsp), 19 * 8);
        assert_eq!(PROBE_CTX_FUNC_IP_OFF, PT_REGS_SIZE + 8);
    }

    #[test]
    fn first_hit_decodes_records() {
        let mut rec = [0u8; 32];
        rec[..8].copy_from_slice(&7u64.to_le_bytes());
        rec[8..16].copy_from_slice(&1234u64.to_le_bytes());
        rec[16..20].copy_from_slice(&99u32.to_le_bytes());
        let e = FirstHit::from_record(&rec).unwrap();
        assert_eq!((e.cookie, e.ts_ns, e.tid), (7, 1234, 99));
        assert_eq!(FirstHit::from_record(&rec[..24]), Some(e));
        assert_eq!(FirstHit::from_record(&rec[..23]), None);
    }
}
