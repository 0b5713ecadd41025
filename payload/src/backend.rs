//! The x86-64 hook builder: plans entry patches, builds trampolines, patches in batches.
//!
//! # Entry patches
//!
//! For each function `{addr, size, next, cookie}` (`next` is where the next symbol starts, so
//! `addr+size .. next` is alignment padding that belongs to nobody):
//!
//! 1. **`jmp rel32`** (5 bytes) at `addr`, when the first ≥ 5 bytes can be relocated. The
//!    displaced bytes may run into free padding (`int3`/`nop` only) after an instruction that
//!    never falls through, e.g. a 1- or 3-byte function ending in `ret`.
//! 2. **`jmp rel8` hop** (2 bytes) at `addr` to a `jmp rel32` written into the function's
//!    free padding, when only ≥ 2 bytes can be displaced (short functions, or a branch into
//!    bytes 2..5).
//! 3. Otherwise the function is skipped with a [`SkipReason`].
//!
//! Any branch or IP-relative reference from inside the function to bytes `1..len` of the
//! displaced range refuses that patch form, and so does a branch from other code of the
//! module ([`FuncSpec::entered_at`], which the caller finds). Displaced bytes not covered by
//! the jump are filled with `int3`.
//!
//! # Trampolines
//!
//! One per function, in an arena within ±2 GiB of the function (one arena per region, many
//! trampolines per arena, arenas mapped RW, written, then flipped to RX). A trampoline is a
//! 19-byte stub, the relocated instructions and the jump back:
//!
//! ```text
//! nop dword [rax+cookie]        ; data: the function's cookie
//! nop dword [rax+addr-R]        ; data: the function's address, from R
//! call body                     ; return address R = the relocated instructions
//! <relocated instructions>
//! jmp addr+displaced
//! ```
//!
//! The body is shared by every stub in reach (one copy per arena, carried by the arena's
//! first trampoline as `jmp stub; body; stub`), so a function's first hit brings one or two
//! cold cache lines in, not the ~4 a whole head per function took (~40 ns less per first
//! hit). The body reads the cookie and address back from the stub's `nop`s and ends with a
//! `ret` to R, which the return stack predicts. A cookie or displacement that does not fit
//! 32 bits gets the whole body inline in its trampoline (with the fields as immediates and
//! no `call`/`ret`). The body, with E = rsp at the function's entry and R at [E-8]:
//!
//! ```text
//! push rax                      ; rax at [E-16]
//! lahf ; seto al                ; ah = SF ZF AF PF CF, al = OF
//! push rax                      ; raw flags at [E-24]  (all within the red zone)
//! lea rax, [rsp+24]             ; rax = E
//! and rsp, -64                  ; aligned frame, whatever the caller's alignment
//! sub rsp, FRAME                ; ProbeCtx at rsp, vector area at rsp+192
//! mov [rsp+ctx.*], every GPR; ctx.rax from [E-16]; ctx.rsp = E
//! ctx.eflags = [E-23] | [E-24] << 11 | IF   (pushfq's format, from the raw flags)
//! ctx.rip = ctx.func_ip = R + [R-9]; ctx.cookie = [R-16]; ctx.orig_rax = -1; cs = ss = 0
//! [movaps|vmovaps] xmm/ymm0..15 -> vector area        (HookOptions::save_vector_regs)
//! mov rdi, rsp ; call probe
//! [movaps|vmovaps] vector area -> xmm/ymm0..15
//! reload rcx rdx rsi rdi r8 r9 r10 r11 (rbx rbp r12-r15 are callee-saved under SysV)
//! restore flags: eax = ctx.eflags; OF via `add ah,0x80` on (OF<<7); `mov ah,al; sahf`
//!     (HookOptions::flags_with_popfq, for measurements: `pushfq` on entry instead of
//!     `lahf`/`seto`, and `popfq` of that value at the end)
//! mov rax, ctx.rax ; mov rsp, ctx.rsp  (= E) ; lea rsp, [rsp-8] ; ret
//! ```
//!
//! That is about 60 instructions on the hot path besides the probe and the relocated code
//! (no `pushfq`/`popfq`, no locked instruction, no indirect branch when the probe is within
//! 2 GiB), plus 32 vector moves when vector registers are saved. Measured added cost per hit
//! with an empty probe (`cargo test --release -p xcover-payload --test hooks bench --
//! --nocapture`, best of 5 runs of 2 M calls, 2 shared cores, noisy): ~4.5 ns without vector
//! save, ~7.5 ns with the YMM save; capturing the flags with `pushfq` instead of
//! `lahf`/`seto` cost ~2 ns more, and `popfq` another ~6-7 ns (hence the `sahf` route).
//!
//! **The light body** ([`HookOptions::light_ctx`]), for a probe that reads nothing of its
//! context but the cookie and the function's address and keeps the callee-saved registers
//! (the JIT-ed coverage probe: the agent checks the program with
//! `xcover_bpf::ctx_use::ctx_slots_read`), does only what such a probe needs: ~35
//! instructions instead of ~60.
//!
//! ```text
//! push rax ; lahf ; seto al ; push rax      ; raw flags at [E-24]
//! mov rax, rsp ; and rsp, -16 ; sub rsp, 96 ; [rsp+80] = rax
//! [rsp+16..80] = rcx rdx rsi rdi r8 r9 r10 r11   (the registers a callee may clobber)
//! [rsp] = cookie ; [rsp+8] = function address (from the stub, as above)
//! lea rdi, [rsp-168] ; call probe             ; rdi+168 / rdi+176 = cookie / address
//! reload rcx..r11 ; mov rsp, [rsp+80]
//! pop rax ; add al, 0x7f ; sahf ; pop rax ; ret   ; OF from al, the rest from ah
//! ```
//!
//! Measured with an empty probe (the same test as above, no vector save): +3.6-5.0 ns per
//! hit against +6.4-8.3 ns for the full body, three runs on a busy machine.
//!
//! The `sahf` route restores CF PF AF ZF SF and OF, i.e. every flag ordinary code reads; DF is
//! 0 by the ABI at a function entry and the probe keeps it so. The probe's return value is
//! ignored. Vector registers are saved as YMM when the CPU and OS enable AVX (a `__m256`
//! argument must arrive intact), as XMM otherwise; the upper halves of ZMM and ZMM16-31 are
//! not saved (no argument lives there in SysV or Go's ABI, and the JIT-ed probe never uses
//! AVX-512).
//!
//! # Batches and threads
//!
//! [`Interceptor::prepare_hooks`] plans every hook and writes the trampolines, which no code
//! reaches yet, so it is safe while threads run. [`HookBatch::fixup`] tells, for a stopped
//! thread's instruction pointer, whether it must move into a trampoline's relocated copy.
//! [`Interceptor::commit_hooks`] then writes every entry patch in one pass, two `protect`
//! calls per run of pages. Unhooking mirrors that with [`Interceptor::prepare_unhooks`],
//! [`UnhookBatch::fixup`] and [`Interceptor::commit_unhooks`], which restores the original
//! bytes exactly.
//!
//! Trampolines are **retired, never freed**, until the session ends: a thread stopped inside
//! the probe returns into its trampoline, and one in the register-restore part runs to the
//! jump back, which lands on original code again once unhooked. A later hook of the same
//! function with the same cookie reuses its retired trampoline, so repeated attach/detach
//! cycles do not grow memory.
//!
//! Caveat: a relocated `call` pushes the original return address and jumps; under a user-space
//! shadow stack (CET SHSTK, not enabled by Linux for ordinary processes today) its `ret` would
//! fault.

use alloc::vec::Vec;
use core::fmt;
use core::mem::offset_of;

use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic};
use xcover_abi::ProbeCtx;

use crate::relocator::{Head, MovedList, RefSweep, RelocError, Scan, Unrelocatable};
use crate::writer::{Reg, Writer, fits_rel32};

/// Page size assumed for protection changes.
pub const PAGE_SIZE: u64 = 4096;
/// Size of one trampoline arena.
pub const ARENA_SIZE: usize = 256 * 1024;
/// How far (bytes) an arena may be from a function: ±2 GiB less a margin.
const REACH: u64 = (1 << 31) - (16 << 20);
/// Biggest function body read for the branch scan (longer ones are scanned up to here).
const MAX_SCAN: u64 = 1 << 20;

/// Page protections the backend asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protection {
    /// Read + execute (code at rest).
    ReadExec,
    /// Read + write + execute (while patching code other threads may be executing).
    ReadWriteExec,
}

/// A failed memory operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemError {
    /// The operation (`"read"`, `"write"`, `"protect"`).
    pub op: &'static str,
    /// The address it was about.
    pub addr: u64,
}

impl fmt::Display for MemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "memory {} at {:#x} failed", self.op, self.addr)
    }
}

/// Operating-system access the backend needs, provided by the caller (raw syscalls in the
/// agent, libc in tests).
pub trait Memory {
    /// Maps `size` bytes read+write, anywhere within ±2 GiB of `near` (closer is better),
    /// returning the address, page-aligned.
    fn alloc_near(&mut self, near: u64, size: usize) -> Option<u64>;
    /// Changes the protection of the pages covering `addr..addr+len` (page-aligned).
    ///
    /// Patched code pages are made read+write+exec for the write and read+exec after it
    /// (code is assumed to be read+exec at rest); arenas likewise.
    fn protect(&mut self, addr: u64, len: usize, prot: Protection) -> Result<(), MemError>;
    /// Reads `buf.len()` bytes at `addr`.
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), MemError>;
    /// Writes `bytes` at `addr`; the pages are writable (the backend protected them).
    fn write(&mut self, addr: u64, bytes: &[u8]) -> Result<(), MemError>;
    /// Writes entry patches (or the original bytes back) over live code, with every other
    /// thread stopped away from it. The default makes each run of pages writable, writes,
    /// and makes it read+exec again ([`write_code_protecting`]); an implementation that can
    /// write code without changing its mapping (the agent writes through `/proc/self/mem`,
    /// so the mapping is neither split nor re-protected) overrides it.
    fn write_code(&mut self, writes: &[(u64, &[u8])]) -> Result<(), MemError> {
        write_code_protecting(self, writes)
    }
}

/// What the caller knows about one function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FuncSpec {
    /// Runtime address of the entry.
    pub addr: u64,
    /// Size from the symbol.
    pub size: u64,
    /// Start of the next symbol (or section end): `addr+size .. next` may be padding (only
    /// its leading `int3`/`nop` bytes are used). Values below `addr+size` mean "no padding".
    /// Up to 256 bytes of it are read, so `addr .. min(next, addr+size+256)` must be mapped.
    pub next: u64,
    /// The attach cookie put into [`ProbeCtx::cookie`].
    pub cookie: u64,
    /// The lowest offset from `addr` (1..) that code outside the function branches to, 0
    /// when none is known: the caller finds these (xcover decodes the whole module), the
    /// planner only sees the function's own bytes. No patch displaces that byte.
    pub entered_at: u8,
}

/// Why a function was not hooked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// Size 0.
    TooSmall,
    /// Not enough bytes for a 5-byte patch nor room in the padding for the 2-byte hop.
    NoRoom,
    /// An instruction of the function (at `from`) branches or refers into the patched bytes.
    BranchIntoPatch {
        /// Address of the offending instruction.
        from: u64,
    },
    /// The entry does not decode.
    Undecodable {
        /// Offset of the bad bytes.
        offset: u32,
    },
    /// An instruction in the displaced bytes cannot be moved.
    Unrelocatable {
        /// Offset of the instruction.
        offset: u32,
        /// Its kind.
        kind: Unrelocatable,
    },
    /// Already hooked by this interceptor.
    AlreadyHooked,
    /// No memory could be mapped within ±2 GiB.
    NoNearMemory,
    /// The function's bytes could not be read.
    Unreadable,
    /// A stopped thread sits inside the displaced bytes at a point with no equivalent.
    ThreadInPatch,
    /// The code is entered at its second byte by design (`nop; call`: a top frame whose
    /// call others return to, like Go's `runtime.goexit`).
    ReturnTarget,
    /// Code outside the function branches into the bytes every patch form would displace
    /// ([`FuncSpec::entered_at`]).
    EnteredInside {
        /// Offset of the branch target from the entry.
        at: u8,
    },
}

impl SkipReason {
    /// Stable numeric code, for `FuncEntry::skip_reason`.
    pub fn code(&self) -> u32 {
        match self {
            Self::TooSmall => 1,
            Self::NoRoom => 2,
            Self::BranchIntoPatch { .. } => 3,
            Self::Undecodable { .. } => 4,
            Self::Unrelocatable { .. } => 5,
            Self::AlreadyHooked => 6,
            Self::NoNearMemory => 7,
            Self::Unreadable => 8,
            Self::ThreadInPatch => 9,
            Self::ReturnTarget => 10,
            Self::EnteredInside { .. } => xcover_abi::SKIP_ENTERED_INSIDE,
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooSmall => f.write_str("function too small"),
            Self::NoRoom => f.write_str("no room for a patch (no free padding)"),
            Self::BranchIntoPatch { from } => {
                write!(f, "branch into the patched bytes from {from:#x}")
            }
            Self::Undecodable { offset } => write!(f, "undecodable instruction at +{offset}"),
            Self::Unrelocatable { offset, kind } => {
                write!(f, "unrelocatable instruction at +{offset}: {kind}")
            }
            Self::AlreadyHooked => f.write_str("already hooked"),
            Self::NoNearMemory => f.write_str("no memory within 2 GiB for a trampoline"),
            Self::Unreadable => f.write_str("code not readable"),
            Self::ThreadInPatch => f.write_str("a thread is stopped inside the patched bytes"),
            Self::ReturnTarget => f.write_str("entered at its second byte (a top frame's call)"),
            Self::EnteredInside { at } => {
                write!(f, "entered at +{at} by another function's branch")
            }
        }
    }
}

impl From<RelocError> for SkipReason {
    fn from(e: RelocError) -> Self {
        match e {
            RelocError::Truncated => Self::NoRoom,
            RelocError::Undecodable { offset } => Self::Undecodable {
                offset: offset as u32,
            },
            RelocError::Unrelocatable { offset, kind } => Self::Unrelocatable {
                offset: offset as u32,
                kind,
            },
        }
    }
}

/// Knobs of the trampolines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HookOptions {
    /// Save and restore xmm0-15 (ymm0-15 with AVX) around the probe. The agent turns this
    /// off for JIT-ed probes that never touch vector registers.
    pub save_vector_regs: bool,
    /// Restore the flags with `popfq` instead of the cheaper `sahf` sequence (for
    /// measurements).
    pub flags_with_popfq: bool,
    /// The probe reads nothing of its context but [`ProbeCtx::cookie`] and
    /// [`ProbeCtx::func_ip`], and keeps the callee-saved registers (System V): trampolines
    /// then take the light body, which saves only the registers a callee may clobber and
    /// fills only those two fields (about half the instructions). Ignored with
    /// `save_vector_regs` or `flags_with_popfq`.
    pub light_ctx: bool,
}

impl Default for HookOptions {
    fn default() -> Self {
        Self {
            save_vector_regs: true,
            flags_with_popfq: false,
            light_ctx: false,
        }
    }
}

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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum VecSave {
    None,
    Xmm,
    Ymm,
}

#[derive(Clone, Debug)]
struct Hook {
    addr: u64,
    cookie: u64,
    /// Start of the relocated instructions in the trampoline.
    reloc_start: u64,
    /// End of the relocated instructions (and jump back).
    reloc_end: u64,
    moved: MovedList,
    original: PatchBytes,
    patch: PatchBytes,
    /// Padding slot for the `jmp rel8` hop: (address, original bytes, new bytes).
    slot: Option<(u64, [u8; 5], [u8; 5])>,
    active: bool,
}

/// The bytes an entry patch covers, inline: whole instructions from the entry up to at
/// least 5 bytes, so at most 4 + 15.
#[derive(Clone, Copy, Debug)]
struct PatchBytes {
    len: u8,
    bytes: [u8; 20],
}

impl PatchBytes {
    fn copy(from: &[u8]) -> Option<Self> {
        let mut p = Self::filled(0, from.len())?;
        p.bytes[..from.len()].copy_from_slice(from);
        Some(p)
    }

    fn filled(b: u8, len: usize) -> Option<Self> {
        (len <= 20).then_some(Self {
            len: len as u8,
            bytes: [b; 20],
        })
    }
}

impl core::ops::Deref for PatchBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

/// `jmp rel32` at `at` to `target`, or `None` when out of reach.
fn jmp_rel32(at: u64, target: u64) -> Option<[u8; 5]> {
    let d = i32::try_from(target.wrapping_sub(at + 5) as i64).ok()?;
    let d = d.to_le_bytes();
    Some([0xe9, d[0], d[1], d[2], d[3]])
}

/// Scratch buffers kept by the interceptor between hooks.
#[derive(Default)]
struct Buffers {
    /// A function's bytes and its free padding.
    code: Vec<u8>,
    /// A trampoline being assembled.
    tramp: Vec<u8>,
}

struct Arena {
    base: u64,
    used: usize,
    dirty: bool,
}

/// Hooks planned and trampolines written, entry patches not yet.
pub struct HookBatch {
    planned: Vec<Hook>,
    outcomes: Vec<(u64, Result<(), SkipReason>)>,
}

impl HookBatch {
    /// Per function of the request, in order: hooked (once committed) or skipped.
    pub fn outcomes(&self) -> &[(u64, Result<(), SkipReason>)] {
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
        if i > 0 {
            let h = &self.planned[i - 1];
            if let Some(f) = hook_fixup(h, ip) {
                return f;
            }
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

/// Every hook the interceptor made (active or retired), sorted by function address: a
/// sorted `Vec` rather than a map, so that the first (large) batch is moved in as it is,
/// with no copy of its `Hook`s and no new memory (a `BTreeMap` built from 10 000 hooks cost
/// ~0.5 µs per hook in the target, page faults included).
#[derive(Default)]
struct Hooks(Vec<Hook>);

impl Hooks {
    fn find(&self, addr: u64) -> Result<usize, usize> {
        self.0.binary_search_by_key(&addr, |h| h.addr)
    }

    fn get(&self, addr: &u64) -> Option<&Hook> {
        self.find(*addr).ok().map(|i| &self.0[i])
    }

    fn get_mut(&mut self, addr: &u64) -> Option<&mut Hook> {
        self.find(*addr).ok().map(|i| &mut self.0[i])
    }

    /// Adds `new` (sorted by address, no address twice); a hook for an address already
    /// present (a retired one) is replaced.
    fn merge(&mut self, new: Vec<Hook>) {
        if self.0.is_empty() {
            self.0 = new;
            return;
        }
        if new.len() * 8 < self.0.len() {
            for h in new {
                match self.find(h.addr) {
                    Ok(i) => self.0[i] = h,
                    Err(i) => self.0.insert(i, h),
                }
            }
            return;
        }
        let old = core::mem::take(&mut self.0);
        let mut out = Vec::with_capacity(old.len() + new.len());
        let (mut a, mut b) = (old.into_iter().peekable(), new.into_iter().peekable());
        loop {
            let take_new = match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some(x), Some(y)) => {
                    if x.addr == y.addr {
                        a.next(); // replaced by the new one
                        continue;
                    }
                    y.addr < x.addr
                }
            };
            out.extend(if take_new { b.next() } else { a.next() });
        }
        self.0 = out;
    }
}

/// Hooks selected for removal.
pub struct UnhookBatch {
    /// (reloc_start, reloc_end, addr, moved) of each hook.
    ranges: Vec<(u64, u64, u64, MovedList)>,
    /// (slot, addr) of each hop slot: a thread on the slot's jump has only taken the hop.
    slots: Vec<(u64, u64)>,
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

/// The shared body of the trampolines (see [`Interceptor::emit_body`]), assembled once and
/// copied into each arena that needs one; only the `call <probe>` displacement differs
/// between copies.
#[derive(Clone, Debug)]
struct Template {
    bytes: Vec<u8>,
    /// Offset of the `rel32` of `call <probe>`.
    call_rel: usize,
}

/// Length of a stub: `nop [rax+cookie]`, `nop [rax+func-ret]`, `call body`.
const STUB_LEN: usize = 19;
/// Offsets, from the stub's return address, of the cookie and of the function's displacement.
const STUB_COOKIE: i8 = -16;
const STUB_FUNC: i8 = -9;

/// The interceptor: owns the trampolines of one session.
pub struct Interceptor {
    probe: u64,
    opts: HookOptions,
    vec: VecSave,
    arenas: Vec<Arena>,
    hooks: Hooks,
    template: Option<Template>,
    /// Shared bodies written so far (an entry may be stale when its trampoline was not
    /// written after all; see [`Self::body_near`]).
    bodies: Vec<u64>,
    buf: Buffers,
}

// ProbeCtx field offsets.
const fn off(o: usize) -> i32 {
    o as i32
}
const CTX_RSP: i32 = off(offset_of!(ProbeCtx, rsp));
const CTX_RAX: i32 = off(offset_of!(ProbeCtx, rax));
const CTX_EFLAGS: i32 = off(offset_of!(ProbeCtx, eflags));
const CTX_RIP: i32 = off(offset_of!(ProbeCtx, rip));
const CTX_FUNC_IP: i32 = off(offset_of!(ProbeCtx, func_ip));
const CTX_COOKIE: i32 = off(offset_of!(ProbeCtx, cookie));
const CTX_ORIG_RAX: i32 = off(offset_of!(ProbeCtx, orig_rax));
const CTX_CS: i32 = off(offset_of!(ProbeCtx, cs));
const CTX_SS: i32 = off(offset_of!(ProbeCtx, ss));
/// The light body's frame: the two context fields it fills, the caller-saved registers, and
/// `rsp` after its two pushes. The probe gets `rdi` = frame - [`CTX_COOKIE`], so that the
/// cookie and the function's address are where a whole [`ProbeCtx`] has them; nothing else
/// of that "context" is valid, and the light body is only used for probes that read nothing
/// else.
const LIGHT_COOKIE: i32 = 0;
const LIGHT_FUNC_IP: i32 = LIGHT_COOKIE + (CTX_FUNC_IP - CTX_COOKIE);
const LIGHT_REGS: i32 = 16;
const LIGHT_RSP: i32 = LIGHT_REGS + 8 * RELOADED.len() as i32;
const LIGHT_FRAME: i32 = (LIGHT_RSP + 8 + 15) & !15;
const _: () = assert!(LIGHT_FUNC_IP == 8 && LIGHT_RSP < LIGHT_FRAME);
/// Vector save area, after the context, 64-byte aligned.
const VEC_AREA: i32 = 192;
const _: () = assert!(core::mem::size_of::<ProbeCtx>() <= VEC_AREA as usize);

const fn gpr_slot(r: Reg) -> i32 {
    off(match r {
        Reg::Rax => offset_of!(ProbeCtx, rax),
        Reg::Rcx => offset_of!(ProbeCtx, rcx),
        Reg::Rdx => offset_of!(ProbeCtx, rdx),
        Reg::Rbx => offset_of!(ProbeCtx, rbx),
        Reg::Rsp => offset_of!(ProbeCtx, rsp),
        Reg::Rbp => offset_of!(ProbeCtx, rbp),
        Reg::Rsi => offset_of!(ProbeCtx, rsi),
        Reg::Rdi => offset_of!(ProbeCtx, rdi),
        Reg::R8 => offset_of!(ProbeCtx, r8),
        Reg::R9 => offset_of!(ProbeCtx, r9),
        Reg::R10 => offset_of!(ProbeCtx, r10),
        Reg::R11 => offset_of!(ProbeCtx, r11),
        Reg::R12 => offset_of!(ProbeCtx, r12),
        Reg::R13 => offset_of!(ProbeCtx, r13),
        Reg::R14 => offset_of!(ProbeCtx, r14),
        Reg::R15 => offset_of!(ProbeCtx, r15),
    })
}

/// Saved as-is at entry (rax and rcx are handled apart).
const SAVED: [Reg; 13] = [
    Reg::Rdx,
    Reg::Rbx,
    Reg::Rbp,
    Reg::Rsi,
    Reg::Rdi,
    Reg::R8,
    Reg::R9,
    Reg::R10,
    Reg::R11,
    Reg::R12,
    Reg::R13,
    Reg::R14,
    Reg::R15,
];
/// Caller-saved under SysV besides rax: reloaded after the probe.
const RELOADED: [Reg; 8] = [
    Reg::Rcx,
    Reg::Rdx,
    Reg::Rsi,
    Reg::Rdi,
    Reg::R8,
    Reg::R9,
    Reg::R10,
    Reg::R11,
];

/// A planned entry patch.
struct Plan {
    scan: Scan,
    /// Hop slot address for the 2-byte form.
    slot: Option<u64>,
}

fn is_padding(ins: &Instruction) -> bool {
    matches!(ins.mnemonic(), Mnemonic::Nop | Mnemonic::Int3)
}

/// Length of the free padding at the start of `pad` (whole `int3`/`nop` instructions).
fn free_padding(pad: &[u8], at: u64) -> usize {
    // The usual fill, one-byte `int3`s or `nop`s, needs no decoder.
    let simple = pad.iter().take_while(|&&b| b == 0xcc || b == 0x90).count();
    if simple == pad.len() {
        return simple;
    }
    let mut dec = Decoder::with_ip(64, &pad[simple..], at + simple as u64, DecoderOptions::NONE);
    let mut ins = Instruction::default();
    let mut n = simple;
    while dec.can_decode() {
        dec.decode_out(&mut ins);
        if ins.is_invalid() || !is_padding(&ins) {
            break;
        }
        n += ins.len();
    }
    n
}

/// Plans the patch of the function `code[..size]` (free padding after it), leaving its first
/// instructions decoded in `head` for the relocation.
fn plan(f: &FuncSpec, code: &[u8], size: usize, head: &mut Head) -> Result<Plan, SkipReason> {
    let avail = code.len();
    // One decode of the entry serves both patch forms and the relocation; the sweep for
    // references into the patch goes only as far into the function as each answer needs.
    let mut refs = RefSweep::new(&code[..size], f.addr);
    head.decode(code, f.addr, &mut refs);
    // A branch from elsewhere into bytes 1..len of the displaced range, as for the
    // function's own branches.
    let entered = |len: usize| f.entered_at != 0 && usize::from(f.entered_at) < len;
    let first = match head.scan(5) {
        Ok(scan) => match refs.first_ref(scan.len) {
            None if entered(scan.len) => SkipReason::EnteredInside { at: f.entered_at },
            None => return Ok(Plan { scan, slot: None }),
            Some(from) => SkipReason::BranchIntoPatch { from },
        },
        Err(e) => e.into(),
    };
    // The 2-byte hop into padding.
    if let Ok(scan) = head.scan(2) {
        let slot_off = scan.len.max(size);
        if slot_off + 5 <= avail
            && slot_off - 2 <= 127
            && !entered(scan.len)
            && refs.first_ref(scan.len).is_none()
        {
            return Ok(Plan {
                scan,
                slot: Some(f.addr + slot_off as u64),
            });
        }
    }
    Err(first)
}

impl Interceptor {
    /// An interceptor whose trampolines call `probe`, an
    /// `extern "C" fn(*mut ProbeCtx) -> u64` at that address.
    pub fn new(probe: u64, opts: HookOptions) -> Self {
        let vec = if !opts.save_vector_regs {
            VecSave::None
        } else if cpu::avx_enabled() {
            VecSave::Ymm
        } else {
            VecSave::Xmm
        };
        Self {
            probe,
            opts,
            vec,
            arenas: Vec::new(),
            template: None,
            hooks: Hooks::default(),
            bodies: Vec::new(),
            buf: Buffers::default(),
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

    /// Number of trampoline arenas mapped so far (they live until the session ends).
    pub fn arenas(&self) -> usize {
        self.arenas.len()
    }

    /// Plans hooks for `funcs` and writes their trampolines (not reachable yet, so threads
    /// may run). The entry patches are written by [`Self::commit_hooks`].
    pub fn prepare_hooks<M: Memory>(&mut self, mem: &mut M, funcs: &[FuncSpec]) -> HookBatch {
        if self.template.is_none() {
            self.template = self.build_template();
        }
        let mut planned = Vec::with_capacity(funcs.len());
        let mut outcomes = Vec::with_capacity(funcs.len());
        // Addresses named more than once: only their first entry is hooked.
        let mut sorted: Vec<u64> = funcs.iter().map(|f| f.addr).collect();
        sorted.sort_unstable();
        let mut twice: Vec<u64> = sorted
            .windows(2)
            .filter(|w| w[0] == w[1])
            .map(|w| w[0])
            .collect();
        twice.dedup();
        drop(sorted);
        let mut twice_seen = alloc::vec![false; twice.len()];
        let mut buf = core::mem::take(&mut self.buf);
        for f in funcs {
            let first = match twice.binary_search(&f.addr) {
                Ok(i) => !core::mem::replace(&mut twice_seen[i], true),
                Err(_) => true,
            };
            let r = if first {
                self.prepare_one(mem, f, &mut buf).map(|h| planned.push(h))
            } else {
                Err(SkipReason::AlreadyHooked)
            };
            outcomes.push((f.addr, r));
        }
        self.buf = buf;
        let mut res = Ok(());
        for a in &mut self.arenas {
            if a.dirty {
                a.dirty = false;
                res = res.and(mem.protect(a.base, ARENA_SIZE, Protection::ReadExec));
            }
        }
        if res.is_err() {
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
        f: &FuncSpec,
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
        let free = free_padding(&code[size..], f.addr + size as u64);
        code.truncate(size + free);
        let code = &buf.code[..];
        if entered_after_first_byte(code) {
            return Err(SkipReason::ReturnTarget);
        }
        let mut head = Head::default();
        let p = plan(f, code, size, &mut head)?;

        // Build at the arena cursor; retry once in a fresh arena if it does not fit.
        let mut fresh = false;
        loop {
            let ai = self.arena_for(mem, f.addr, fresh)?;
            let pc = align16(self.arenas[ai].base + self.arenas[ai].used as u64);
            let mut w = Writer::reusing(pc, core::mem::take(&mut buf.tramp));
            let emitted = self.emit_trampoline(&mut w, f, code, &head, &p.scan);
            let end = w.pc();
            let tramp = w.into_code();
            let (reloc_start, moved) = match emitted {
                Ok(r) => r,
                Err(e) => {
                    buf.tramp = tramp;
                    return Err(e);
                }
            };
            let arena = &mut self.arenas[ai];
            let written = if end > arena.base + ARENA_SIZE as u64 {
                Err(None)
            } else if !arena.dirty
                && mem
                    .protect(arena.base, ARENA_SIZE, Protection::ReadWriteExec)
                    .is_err()
            {
                Err(Some(SkipReason::NoNearMemory))
            } else {
                arena.dirty = true;
                mem.write(pc, &tramp)
                    .map_err(|_| Some(SkipReason::NoNearMemory))
            };
            buf.tramp = tramp;
            match written {
                Ok(()) => {}
                Err(None) if !fresh => {
                    fresh = true;
                    continue;
                }
                Err(e) => return Err(e.unwrap_or(SkipReason::NoNearMemory)),
            }
            arena.used = (end - arena.base) as usize;

            let len = p.scan.len;
            let original = PatchBytes::copy(&code[..len]).ok_or(SkipReason::NoRoom)?;
            let mut patch = PatchBytes::filled(0xcc, len).ok_or(SkipReason::NoRoom)?;
            let slot = match p.slot {
                None => {
                    let jmp = jmp_rel32(f.addr, pc).ok_or(SkipReason::NoNearMemory)?;
                    patch.bytes[..5].copy_from_slice(&jmp);
                    None
                }
                Some(s) => {
                    let hop = s.wrapping_sub(f.addr + 2) as i64;
                    let new5 = jmp_rel32(s, pc).ok_or(SkipReason::NoNearMemory)?;
                    if !(-128..=127).contains(&hop) {
                        return Err(SkipReason::NoNearMemory);
                    }
                    patch.bytes[..2].copy_from_slice(&[0xeb, hop as u8]);
                    let so = (s - f.addr) as usize;
                    let mut orig5 = [0u8; 5];
                    orig5.copy_from_slice(&code[so..so + 5]);
                    Some((s, orig5, new5))
                }
            };
            return Ok(Hook {
                addr: f.addr,
                cookie: f.cookie,
                reloc_start,
                reloc_end: end,
                moved,
                original,
                patch,
                slot,
                active: false,
            });
        }
    }

    fn still_original<M: Memory>(&self, mem: &mut M, h: &Hook) -> bool {
        let mut now = [0u8; 20];
        let now = &mut now[..h.original.len()];
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

    fn arena_for<M: Memory>(
        &mut self,
        mem: &mut M,
        addr: u64,
        fresh: bool,
    ) -> Result<usize, SkipReason> {
        let near = |base: u64| {
            base.abs_diff(addr) < REACH && (base + ARENA_SIZE as u64).abs_diff(addr) < REACH
        };
        if !fresh
            && let Some(i) = self
                .arenas
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
        self.arenas.push(Arena {
            base,
            used: 0,
            dirty: true,
        });
        Ok(self.arenas.len() - 1)
    }

    /// Assembles the [`Template`] of this interceptor's shared body.
    fn build_template(&self) -> Option<Template> {
        // Assembled as if it ran at the probe, so the call takes its rel32 form.
        let mut w = Writer::new(self.probe);
        let call_rel = self.emit_body(&mut w)?;
        Some(Template {
            call_rel,
            bytes: w.into_code(),
        })
    }

    /// rax = E (`rsp + push_len`), aligns `rsp` and reserves the frame; saves ctx.rsp = E
    /// and rcx.
    fn emit_save(&self, w: &mut Writer, frame: i32, push_len: i32) {
        w.put_lea(Reg::Rax, Reg::Rsp, push_len);
        w.put_align_rsp(64);
        w.put_sub_rsp(frame);
        w.put_store(Reg::Rsp, CTX_RSP, Reg::Rax);
        w.put_store(Reg::Rsp, gpr_slot(Reg::Rcx), Reg::Rcx);
    }

    fn frame(&self) -> i32 {
        let vec_bytes = match self.vec {
            VecSave::None => 0,
            VecSave::Xmm => 16 * 16,
            VecSave::Ymm => 16 * 32,
        };
        VEC_AREA + vec_bytes
    }

    /// Saves the vector registers, calls the probe with the context, reloads the vector
    /// and caller-saved registers. Returns the offset of the call's rel32 (from `start`)
    /// when it took that form.
    fn emit_call_probe(&self, w: &mut Writer, start: usize) -> Option<usize> {
        for i in 0..16u8 {
            match self.vec {
                VecSave::None => {}
                VecSave::Xmm => w.put_movaps_store(VEC_AREA + 16 * i as i32, i),
                VecSave::Ymm => w.put_vmovaps_store(VEC_AREA + 32 * i as i32, i),
            }
        }
        w.put_mov(Reg::Rdi, Reg::Rsp);
        let call_at = w.len();
        w.put_call(self.probe);
        let call_rel = (w.len() - call_at == 5).then(|| w.len() - 4 - start);
        for i in 0..16u8 {
            match self.vec {
                VecSave::None => {}
                VecSave::Xmm => w.put_movaps_load(i, VEC_AREA + 16 * i as i32),
                VecSave::Ymm => w.put_vmovaps_load(i, VEC_AREA + 32 * i as i32),
            }
        }
        for r in RELOADED {
            w.put_load(r, Reg::Rsp, gpr_slot(r));
        }
        call_rel
    }

    /// The `sahf` flag restore from `ctx.eflags` (clobbers rax, reloaded after).
    fn emit_sahf_restore(w: &mut Writer) {
        w.put_load32(Reg::Rax, Reg::Rsp, CTX_EFLAGS);
        w.put_bytes(&[
            0x80, 0xe4, 0x08, // and ah, 8         ; OF (bit 11) alone
            0xc0, 0xe4, 0x04, // shl ah, 4         ; -> 0x80 or 0
            0x80, 0xc4, 0x80, // add ah, 0x80      ; OF = saved OF
            0x88, 0xc4, //       mov ah, al        ; SF ZF AF PF CF
            0x9e, //             sahf
        ]);
    }

    /// ctx.eflags in pushfq's format from the `lahf; seto al` pair stored at `[rax+disp]`
    /// (`al` at `disp`, `ah` at `disp+1`): low byte | OF << 11 | IF (always set in user
    /// mode). rcx and rdx are saved already.
    fn emit_flags_from_lahf(w: &mut Writer, disp: i8) {
        w.put_bytes(&[0x0f, 0xb6, 0x48, (disp + 1) as u8]); // movzx ecx, byte [rax+disp+1]
        w.put_bytes(&[0x0f, 0xb6, 0x50, disp as u8]); //       movzx edx, byte [rax+disp]
        w.put_bytes(&[
            0xc1, 0xe2, 0x0b, //             shl edx, 11
            0x09, 0xd1, //                   or ecx, edx
            0x81, 0xc9, 0x00, 0x02, 0, 0, // or ecx, 0x200
        ]);
        w.put_store(Reg::Rsp, CTX_EFLAGS, Reg::Rcx);
    }

    /// Captures the flags and rax, finds the entry `rsp` E (`above` bytes higher than where
    /// the capture starts pushing: 8 under a stub's `call`, 0 inline), aligns `rsp`, reserves
    /// the frame and stores every general register and the flags into the [`ProbeCtx`].
    /// Leaves rax = E.
    fn emit_capture(&self, w: &mut Writer, above: i32) {
        let frame = self.frame();
        if self.opts.flags_with_popfq {
            // [E-above-8] = pushfq'd flags (popped again at the end), [E-above-16] = rax.
            w.put_pushfq();
            w.put_push(Reg::Rax);
            self.emit_save(w, frame, above + 16);
            w.put_load(Reg::Rcx, Reg::Rax, -above - 16);
            w.put_store(Reg::Rsp, CTX_RAX, Reg::Rcx);
            w.put_load(Reg::Rcx, Reg::Rax, -above - 8);
            w.put_store(Reg::Rsp, CTX_EFLAGS, Reg::Rcx);
            for r in SAVED {
                w.put_store(Reg::Rsp, gpr_slot(r), r);
            }
        } else {
            // [E-above-8] = rax, [E-above-16] = ax after `lahf; seto al`: SF ZF AF PF CF in
            // its high byte, OF in its low one (pushfq is microcoded: ~3x the cost of these).
            w.put_push(Reg::Rax);
            w.put_bytes(&[
                0x9f, //             lahf
                0x0f, 0x90, 0xc0, // seto al
            ]);
            w.put_push(Reg::Rax);
            self.emit_save(w, frame, above + 16);
            w.put_load(Reg::Rcx, Reg::Rax, -above - 8);
            w.put_store(Reg::Rsp, CTX_RAX, Reg::Rcx);
            for r in SAVED {
                w.put_store(Reg::Rsp, gpr_slot(r), r);
            }
            Self::emit_flags_from_lahf(w, (-above - 16) as i8);
        }
    }

    /// Undoes [`Self::emit_capture`] after the probe: flags and rax back, `rsp` back to
    /// `above` bytes below E.
    fn emit_restore(&self, w: &mut Writer, above: i32) {
        if self.opts.flags_with_popfq {
            w.put_load(Reg::Rax, Reg::Rsp, CTX_RAX);
            w.put_load(Reg::Rsp, Reg::Rsp, CTX_RSP);
            w.put_lea(Reg::Rsp, Reg::Rsp, -above - 8);
            w.put_popfq(); // the pushfq'd value, untouched since
        } else {
            Self::emit_sahf_restore(w);
            w.put_load(Reg::Rax, Reg::Rsp, CTX_RAX);
            w.put_load(Reg::Rsp, Reg::Rsp, CTX_RSP);
            if above != 0 {
                w.put_lea(Reg::Rsp, Reg::Rsp, -above);
            }
        }
    }

    /// Whether trampolines take the light body (see [`HookOptions::light_ctx`]).
    fn light(&self) -> bool {
        self.opts.light_ctx && !self.opts.flags_with_popfq && matches!(self.vec, VecSave::None)
    }

    /// The light body's capture: rax and the `lahf`/`seto` flags pushed, `rsp` aligned, the
    /// frame reserved, the caller-saved registers stored. Leaves rax = `rsp` after the pushes.
    fn emit_light_capture(w: &mut Writer) {
        w.put_push(Reg::Rax);
        w.put_bytes(&[
            0x9f, //             lahf
            0x0f, 0x90, 0xc0, // seto al
        ]);
        w.put_push(Reg::Rax);
        w.put_mov(Reg::Rax, Reg::Rsp);
        w.put_align_rsp(16);
        w.put_sub_rsp(LIGHT_FRAME);
        w.put_store(Reg::Rsp, LIGHT_RSP, Reg::Rax);
        for (k, r) in RELOADED.into_iter().enumerate() {
            w.put_store(Reg::Rsp, LIGHT_REGS + 8 * k as i32, r);
        }
    }

    /// Calls the probe with the light "context"; then undoes [`Self::emit_light_capture`]
    /// (registers, `rsp`, flags, rax). Returns the offset of the call's rel32 (from
    /// `start`) when it took that form.
    fn emit_light_call_restore(&self, w: &mut Writer, start: usize) -> Option<usize> {
        w.put_lea(Reg::Rdi, Reg::Rsp, LIGHT_COOKIE - CTX_COOKIE);
        let call_at = w.len();
        w.put_call(self.probe);
        let call_rel = (w.len() - call_at == 5).then(|| w.len() - 4 - start);
        for (k, r) in RELOADED.into_iter().enumerate() {
            w.put_load(r, Reg::Rsp, LIGHT_REGS + 8 * k as i32);
        }
        w.put_load(Reg::Rsp, Reg::Rsp, LIGHT_RSP);
        w.put_pop(Reg::Rax);
        w.put_bytes(&[
            0x04, 0x7f, // add al, 0x7f     ; OF = (al == 1), the saved OF
            0x9e, //       sahf             ; SF ZF AF PF CF from ah
        ]);
        w.put_pop(Reg::Rax);
        call_rel
    }

    /// [`Self::emit_body`] for probes that read only the cookie and the function's address.
    fn emit_light_body(&self, w: &mut Writer) -> Option<usize> {
        let start = w.len();
        Self::emit_light_capture(w);
        w.put_load(Reg::Rax, Reg::Rax, 16); // R, above the two pushes
        w.put_bytes(&[0x48, 0x63, 0x48, STUB_COOKIE as u8]); // movsxd rcx, [rax-16]
        w.put_store(Reg::Rsp, LIGHT_COOKIE, Reg::Rcx);
        w.put_bytes(&[0x48, 0x63, 0x48, STUB_FUNC as u8]); // movsxd rcx, [rax-9]
        w.put_bytes(&[0x48, 0x01, 0xc8]); // add rax, rcx
        w.put_store(Reg::Rsp, LIGHT_FUNC_IP, Reg::Rax);
        let call_rel = self.emit_light_call_restore(w, start);
        w.put_ret();
        call_rel
    }

    /// [`Self::emit_head`] for probes that read only the cookie and the function's address.
    fn emit_light_head(&self, w: &mut Writer, addr: u64, cookie: u64) {
        let start = w.len();
        Self::emit_light_capture(w);
        if !w.put_lea_rip(Reg::Rax, addr) {
            w.put_mov_imm64(Reg::Rax, addr);
        }
        w.put_store(Reg::Rsp, LIGHT_FUNC_IP, Reg::Rax);
        match i32::try_from(cookie as i64) {
            Ok(c) => w.put_store_imm(Reg::Rsp, LIGHT_COOKIE, c),
            Err(_) => {
                w.put_mov_imm64(Reg::Rax, cookie);
                w.put_store(Reg::Rsp, LIGHT_COOKIE, Reg::Rax);
            }
        }
        self.emit_light_call_restore(w, start);
    }

    /// The body every stub calls (one copy per arena that needs one). Entered by the stub's
    /// `call`, so `[rsp]` is the stub's return address R (where its relocated instructions
    /// start) and the entry `rsp` E is `rsp + 8`; the cookie and the function's displacement
    /// from R sit in the stub's two `nop`s, read back as data. Returns with `ret` (predicted:
    /// it pairs with the stub's `call`) and `rsp` = E. Returns the offset of the call's
    /// rel32 when it took that form.
    fn emit_body(&self, w: &mut Writer) -> Option<usize> {
        if self.light() {
            return self.emit_light_body(w);
        }
        let start = w.len();
        // The stub's return address R sits above what the capture pushes.
        self.emit_capture(w, 8);
        w.put_load(Reg::Rax, Reg::Rax, -8); // R
        w.put_bytes(&[0x48, 0x63, 0x48, STUB_COOKIE as u8]); // movsxd rcx, [rax-16]
        w.put_store(Reg::Rsp, CTX_COOKIE, Reg::Rcx);
        w.put_bytes(&[0x48, 0x63, 0x48, STUB_FUNC as u8]); // movsxd rcx, [rax-9]
        w.put_bytes(&[0x48, 0x01, 0xc8]); // add rax, rcx
        w.put_store(Reg::Rsp, CTX_RIP, Reg::Rax);
        w.put_store(Reg::Rsp, CTX_FUNC_IP, Reg::Rax);
        w.put_store_imm(Reg::Rsp, CTX_ORIG_RAX, -1);
        w.put_store_imm(Reg::Rsp, CTX_CS, 0);
        w.put_store_imm(Reg::Rsp, CTX_SS, 0);
        let call_rel = self.emit_call_probe(w, start);
        self.emit_restore(w, 8);
        w.put_ret();
        call_rel
    }

    /// The whole head inline, for a function whose cookie or address a stub cannot carry:
    /// saves the registers into a [`ProbeCtx`], calls the probe, restores them.
    fn emit_head(&self, w: &mut Writer, addr: u64, cookie: u64) {
        if self.light() {
            return self.emit_light_head(w, addr, cookie);
        }
        let start = w.len();
        self.emit_capture(w, 0);
        if !w.put_lea_rip(Reg::Rax, addr) {
            w.put_mov_imm64(Reg::Rax, addr);
        }
        w.put_store(Reg::Rsp, CTX_RIP, Reg::Rax);
        w.put_store(Reg::Rsp, CTX_FUNC_IP, Reg::Rax);
        match i32::try_from(cookie as i64) {
            Ok(c) => w.put_store_imm(Reg::Rsp, CTX_COOKIE, c),
            Err(_) => {
                w.put_mov_imm64(Reg::Rax, cookie);
                w.put_store(Reg::Rsp, CTX_COOKIE, Reg::Rax);
            }
        }
        w.put_store_imm(Reg::Rsp, CTX_ORIG_RAX, -1);
        w.put_store_imm(Reg::Rsp, CTX_CS, 0);
        w.put_store_imm(Reg::Rsp, CTX_SS, 0);
        self.emit_call_probe(w, start);
        self.emit_restore(w, 0);
    }

    /// A written body a stub ending at `call_end` can call with a rel32, forgetting bodies
    /// whose trampoline was not written after all (past its arena's cursor).
    fn body_near(&mut self, call_end: u64) -> Option<u64> {
        let arenas = &self.arenas;
        self.bodies.retain(|&b| {
            arenas
                .iter()
                .any(|a| b >= a.base && b < a.base + a.used as u64)
        });
        self.bodies
            .iter()
            .rev()
            .copied()
            .find(|&b| fits_rel32(call_end, b))
    }

    /// Writes a copy of the shared body at the writer's position; returns its address.
    fn put_body(&self, w: &mut Writer) -> u64 {
        let at = w.pc();
        let start = w.len();
        match self.template.as_ref() {
            Some(t) if fits_rel32(at + (t.call_rel + 4) as u64, self.probe) => {
                w.put_bytes(&t.bytes);
                let call_end = at + (t.call_rel + 4) as u64;
                w.patch(
                    start + t.call_rel,
                    &(self.probe.wrapping_sub(call_end) as u32).to_le_bytes(),
                );
            }
            _ => {
                self.emit_body(w);
            }
        }
        at
    }

    /// Emits the trampoline; returns the address of the relocated part and the moves.
    ///
    /// Usually a 19-byte stub before the relocated instructions (`nop [rax+cookie]`,
    /// `nop [rax+func-R]`, `call body`, R being its return address), so that a function's
    /// first hit touches one or two cold cache lines, not the ~4 of a whole head: the body
    /// is shared and stays hot. The first trampoline of an arena (or one out of reach of
    /// every body) carries a body: `jmp stub; body; stub`. A cookie or displacement that
    /// does not fit 32 bits gets the whole head inline instead.
    fn emit_trampoline(
        &mut self,
        w: &mut Writer,
        f: &FuncSpec,
        code: &[u8],
        head: &Head,
        scan: &Scan,
    ) -> Result<(u64, MovedList), SkipReason> {
        let cookie = i32::try_from(f.cookie as i64).ok();
        // The displacement is from R, at most a body's length further than here.
        let disp_ok = |r: u64| i32::try_from(f.addr.wrapping_sub(r) as i64).is_ok();
        let far = w.pc() + STUB_LEN as u64 + 2048;
        match cookie {
            Some(c) if disp_ok(w.pc() + STUB_LEN as u64) && disp_ok(far) => {
                let body = match self.body_near(w.pc() + STUB_LEN as u64) {
                    Some(b) => b,
                    None => {
                        let jmp_at = w.len();
                        w.put_bytes(&[0xe9, 0, 0, 0, 0]);
                        let b = self.put_body(w);
                        let rel = (w.len() - jmp_at - 5) as u32;
                        w.patch(jmp_at + 1, &rel.to_le_bytes());
                        self.bodies.push(b);
                        b
                    }
                };
                let r = w.pc() + STUB_LEN as u64;
                w.put_bytes(&[0x0f, 0x1f, 0x80]);
                w.put_u32(c as u32);
                w.put_bytes(&[0x0f, 0x1f, 0x80]);
                w.put_u32(f.addr.wrapping_sub(r) as u32);
                let call_at = w.len();
                w.put_call(body);
                debug_assert_eq!(w.len() - call_at, 5);
                debug_assert_eq!(w.pc(), r);
            }
            _ => self.emit_head(w, f.addr, f.cookie),
        }
        let reloc_start = w.pc();
        let moved = head.relocate(code, scan, w)?;
        if !scan.ends_block {
            w.put_jmp(f.addr + scan.live_len as u64);
        }
        debug_assert!(fits_rel32(f.addr + 5, w.base_pc()));
        Ok((reloc_start, moved))
    }

    /// Writes the entry patches of `batch` in one pass.
    ///
    /// # Safety
    ///
    /// Every [`FuncSpec`] given to [`Self::prepare_hooks`] must describe real code of this
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

fn align16(v: u64) -> u64 {
    (v + 15) & !15
}

/// Writes all `(addr, bytes)` with two protection changes per run of adjacent pages.
fn write_batch<M: Memory>(mem: &mut M, writes: &[(u64, &[u8])]) -> Result<(), MemError> {
    mem.write_code(writes)
}

/// Writes code by re-protecting it: every run of pages the writes touch is made writable
/// (and still executable), written, and made read+exec again. The default of
/// [`Memory::write_code`].
pub fn write_code_protecting<M: Memory + ?Sized>(
    mem: &mut M,
    writes: &[(u64, &[u8])],
) -> Result<(), MemError> {
    let mut pages: Vec<u64> = Vec::with_capacity(writes.len());
    for (a, b) in writes {
        let mut p = a & !(PAGE_SIZE - 1);
        while p < a + b.len() as u64 {
            pages.push(p);
            p += PAGE_SIZE;
        }
    }
    pages.sort_unstable();
    pages.dedup();
    let mut runs: Vec<(u64, usize)> = Vec::new();
    for p in pages {
        match runs.last_mut() {
            Some((s, n)) if *s + (*n as u64) * PAGE_SIZE == p => *n += 1,
            _ => runs.push((p, 1)),
        }
    }
    for (s, n) in &runs {
        mem.protect(*s, n * PAGE_SIZE as usize, Protection::ReadWriteExec)?;
    }
    let mut res = Ok(());
    for (a, b) in writes {
        res = res.and(mem.write(*a, b));
    }
    for (s, n) in &runs {
        res = res.and(mem.protect(*s, n * PAGE_SIZE as usize, Protection::ReadExec));
    }
    res
}

/// Whether the function's code is entered at its second byte by design: a one-byte `nop`
/// followed by a `call` is how a top frame marks the address that others return to without
/// having called it (Go's `runtime.goexit` is `nop; call goexit1`, and every goroutine is
/// started with `goexit+1` as its return address). No branch in the function shows that
/// entry, so the shape itself is the signal; patching it would send those returns into the
/// middle of the entry jump.
fn entered_after_first_byte(code: &[u8]) -> bool {
    matches!(code, [0x90, 0xe8, ..])
}

/// CPU feature detection (the crate's only `unsafe`).
mod cpu {
    /// Whether AVX is usable: the CPU has it and the OS saves YMM state (XCR0 bits 1-2).
    pub fn avx_enabled() -> bool {
        let l1 = core::arch::x86_64::__cpuid(1);
        let osxsave = l1.ecx & (1 << 27) != 0;
        let avx = l1.ecx & (1 << 28) != 0;
        if !(osxsave && avx) {
            return false;
        }
        let xcr0: u32;
        // SAFETY: CPUID.1:ECX.OSXSAVE is set, so the OS enabled XGETBV; reading XCR0 has no
        // side effects.
        unsafe {
            core::arch::asm!(
                "xgetbv",
                in("ecx") 0u32,
                out("eax") xcr0,
                out("edx") _,
                options(nomem, nostack, preserves_flags)
            );
        }
        xcr0 & 6 == 6
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(addr: u64, cookie: u64) -> Hook {
        let p = PatchBytes::filled(0xcc, 5).unwrap();
        Hook {
            addr,
            cookie,
            reloc_start: 0,
            reloc_end: 0,
            moved: MovedList::default(),
            original: p,
            patch: p,
            slot: None,
            active: true,
        }
    }

    fn contents(h: &Hooks) -> Vec<(u64, u64)> {
        h.0.iter().map(|h| (h.addr, h.cookie)).collect()
    }

    #[test]
    fn hooks_stay_sorted_and_new_ones_replace_retired_ones() {
        let mut h = Hooks::default();
        h.merge((0..40).map(|i| hook(100 * i, 0)).collect());
        assert_eq!(h.0.len(), 40);
        // Large batch (6 * 8 >= 40): merged in one pass; 500 and 1000 replaced, four added.
        let big = [500, 550, 1000, 5000, 5100, 5200];
        h.merge(big.iter().map(|&a| hook(a, 1)).collect());
        // Small batch: inserted one by one.
        h.merge(vec![hook(0, 2), hook(1, 2)]);
        let c = contents(&h);
        assert!(
            c.windows(2).all(|w| w[0].0 < w[1].0),
            "sorted, no address twice"
        );
        assert_eq!(c.len(), 45);
        for (addr, cookie) in [
            (0, 2),
            (1, 2),
            (500, 1),
            (550, 1),
            (1000, 1),
            (5000, 1),
            (600, 0),
        ] {
            assert_eq!(h.get(&addr).map(|h| h.cookie), Some(cookie), "{addr}");
        }
        assert!(h.get(&650).is_none());
        h.get_mut(&600).unwrap().active = false;
        assert!(!h.get(&600).unwrap().active);
    }

    #[test]
    fn a_branch_from_elsewhere_refuses_the_forms_that_displace_its_target() {
        // mov rax, rdi ; mov rcx, rdx ; ret ; 8 bytes of int3 padding.
        let code = [
            0x48, 0x89, 0xf8, 0x48, 0x89, 0xd1, 0xc3, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc,
            0xcc,
        ];
        let addr = 0x40_1000;
        let try_plan = |entered_at: u8| {
            let f = FuncSpec {
                addr,
                size: 7,
                next: addr + code.len() as u64,
                cookie: 0,
                entered_at,
            };
            plan(&f, &code, 7, &mut Head::default()).map(|p| (p.scan.len, p.slot))
        };
        // Nothing enters inside, or the target is past the 6 bytes the 5-byte jump displaces.
        for at in [0, 6, 7, 20] {
            assert_eq!(try_plan(at), Ok((6, None)), "entered at +{at}");
        }
        // +3 to +5 are inside the jump's 6 bytes, not inside the hop's 3 (the first `mov`).
        for at in [3, 4, 5] {
            assert_eq!(try_plan(at), Ok((3, Some(addr + 7))), "entered at +{at}");
        }
        // +1 and +2 are inside every form.
        for at in [1, 2] {
            assert_eq!(
                try_plan(at),
                Err(SkipReason::EnteredInside { at }),
                "entered at +{at}"
            );
        }
        assert_eq!(SkipReason::EnteredInside { at: 3 }.code(), 11);
    }
}
