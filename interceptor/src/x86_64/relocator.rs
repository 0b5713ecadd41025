//! Moves the first instructions of a function to another address.
//!
//! The relocator decodes instructions with their *runtime* address as IP (iced-x86's
//! [`Decoder`]) and re-emits each one through a [`Writer`] so that it does the same thing at
//! the writer's `pc`:
//!
//! | original | relocated |
//! |---|---|
//! | no IP-relative part | copied byte for byte (`endbr64` included) |
//! | `[rip+X]` operand, X reachable | re-encoded with a new displacement |
//! | `lea r64, [rip+X]`, X out of reach | `mov r64, imm64` |
//! | other `[rip+X]` operand, X out of reach | `lea rsp,[rsp-128]; push s; mov s, X; op [s]; pop s; lea rsp,[rsp+128]` with a scratch `s` the instruction does not use (refused if it touches `rsp`) |
//! | `jmp`/`jcc` rel8/rel32 | `jmp`/`jcc` to the same target (rel8, rel32 or absolute) |
//! | `loop`/`loopcc`/`jrcxz`/`jecxz` | the same instruction hopping 2 bytes, `jmp short` over, `jmp target` |
//! | `call rel32` / `call r/m` | push the *original* return address, then `jmp` to the callee |
//! | `jmp [rip+X]`, X out of reach | `push rax; push rax; mov rax,X; mov rax,[rax]; mov [rsp+8],rax; pop rax; ret` |
//!
//! A relocated `call` pushes the original return address, so the callee returns straight to
//! the original code after the patch and unwinders (C++ exceptions, backtraces) see the
//! original function's frame, never the trampoline. That only works if the return address
//! lies *outside* the patched bytes, so a call must be the last displaced instruction.
//!
//! Refused (the function is skipped with a reason): undecodable bytes, `syscall`/`sysenter`/
//! `int n`/`int3` (a thread blocked in a system call is restarted by the kernel at `rip-2`,
//! which would land inside the patch), `xbegin`/`xabort`/`xend`, a `call` that is not the last
//! displaced instruction (its return address would be inside the patch), and far IP-relative
//! operands in instructions that use the stack pointer.
//!
//! After an unconditional transfer (`jmp`, `ret`, `ud2`, a call) the following bytes are not
//! reached by falling through; if more bytes are needed they are a *dead tail*: overwritten by
//! the patch but not relocated. The caller checks that nothing branches there.
//!
//! Everything here is safe code working on byte slices.
//!
//! No indexing: the offsets into `code` are sums of lengths the decoder reported for
//! instructions it decoded from that same slice, and a head never holds more than
//! `MAX_HEAD` instructions, but every access is still checked (an impossible miss is a
//! [`RelocError::Truncated`] or [`Unrelocatable::EncodeFailed`], never a panic).

use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

use iced_x86::{
    Code, ConditionCode, Decoder, DecoderError, DecoderOptions, Encoder, FlowControl, Instruction,
    InstructionInfoFactory, Register,
};

use xcover_x86::{Reg, Writer, fits_rel32};

use crate::core::{Moved, MovedList};

/// Why instructions cannot be relocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelocError {
    /// The bytes at this offset are not a valid instruction.
    Undecodable {
        /// Offset from the start of the code.
        offset: usize,
    },
    /// The code ends before enough bytes were decoded.
    Truncated,
    /// The instruction at this offset cannot be moved.
    Unrelocatable {
        /// Offset from the start of the code.
        offset: usize,
        /// What kind of instruction it is.
        kind: Unrelocatable,
    },
}

/// Instructions the relocator refuses to move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unrelocatable {
    /// `syscall`, `sysenter`, `int n`, `int3`, `into`.
    SystemCallOrInterrupt,
    /// `xbegin`, `xabort`, `xend`.
    Transactional,
    /// A `call` whose return address would lie inside the patched bytes.
    CallInsidePatch,
    /// An IP-relative operand out of `rel32` reach in an instruction that uses `rsp`.
    FarRipRelativeWithStack,
    /// The encoder could not re-encode the instruction.
    EncodeFailed,
}

impl fmt::Display for Unrelocatable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::SystemCallOrInterrupt => "system call or interrupt",
            Self::Transactional => "transactional memory instruction",
            Self::CallInsidePatch => "call whose return address is inside the patch",
            Self::FarRipRelativeWithStack => "far rip-relative operand in a stack instruction",
            Self::EncodeFailed => "instruction could not be re-encoded",
        })
    }
}

impl fmt::Display for RelocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Undecodable { offset } => write!(f, "undecodable instruction at +{offset}"),
            Self::Truncated => f.write_str("code ends before enough bytes"),
            Self::Unrelocatable { offset, kind } => write!(f, "{kind} at +{offset}"),
        }
    }
}

/// Result of [`can_relocate`]: how many bytes can be displaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scan {
    /// Bytes displaced: whole instructions, plus the dead tail if the block ended early.
    /// At least the `min_bytes` asked for.
    pub len: usize,
    /// Bytes of the instructions that run in the relocated copy.
    pub live_len: usize,
    /// The last live instruction never falls through (`jmp`, `ret`, `call`, …): no jump back.
    pub ends_block: bool,
}

fn decoder(code: &[u8], addr: u64) -> Decoder<'_> {
    Decoder::with_ip(64, code, addr, DecoderOptions::NONE)
}

/// Dry run: can at least `min_bytes` of `code` (running at `addr`) be moved?
///
/// `code` must hold every byte that may be overwritten (the function and any free padding
/// after it); bytes after an unconditional transfer count as a dead tail, which the caller
/// must check nothing branches into.
pub fn can_relocate(code: &[u8], addr: u64, min_bytes: usize) -> Result<Scan, RelocError> {
    let mut dec = decoder(code, addr);
    let mut ins = Instruction::default();
    let mut off = 0usize;
    let mut ends_block = false;
    while off < min_bytes {
        if !dec.can_decode() {
            return Err(RelocError::Truncated);
        }
        dec.decode_out(&mut ins);
        if ins.is_invalid() {
            return Err(match dec.last_error() {
                DecoderError::NoMoreBytes => RelocError::Truncated,
                _ => RelocError::Undecodable { offset: off },
            });
        }
        ends_block = classify(&ins, off, min_bytes)?;
        off += ins.len();
        if ends_block {
            break;
        }
    }
    finish_scan(off, ends_block, min_bytes, code.len())
}

/// Whether a decoded instruction at `off` may be displaced when `min_bytes` are: `Ok(true)`
/// when it ends the block (nothing after it runs).
fn classify(ins: &Instruction, off: usize, min_bytes: usize) -> Result<bool, RelocError> {
    let unreloc = |kind| RelocError::Unrelocatable { offset: off, kind };
    if matches!(
        ins.code(),
        Code::Syscall | Code::Sysenter | Code::Int_imm8 | Code::Int3 | Code::Into
    ) {
        return Err(unreloc(Unrelocatable::SystemCallOrInterrupt));
    }
    match ins.flow_control() {
        FlowControl::Interrupt => Err(unreloc(Unrelocatable::SystemCallOrInterrupt)),
        FlowControl::XbeginXabortXend => Err(unreloc(Unrelocatable::Transactional)),
        FlowControl::Call | FlowControl::IndirectCall => {
            if off + ins.len() < min_bytes {
                return Err(unreloc(Unrelocatable::CallInsidePatch));
            }
            Ok(true)
        }
        FlowControl::UnconditionalBranch
        | FlowControl::IndirectBranch
        | FlowControl::Return
        | FlowControl::Exception => Ok(true),
        FlowControl::Next | FlowControl::ConditionalBranch => Ok(false),
    }
}

/// The [`Scan`] once the live instructions end at `live_len`.
fn finish_scan(
    live_len: usize,
    ends_block: bool,
    min_bytes: usize,
    code_len: usize,
) -> Result<Scan, RelocError> {
    let len = live_len.max(min_bytes);
    if len > code_len {
        return Err(RelocError::Truncated);
    }
    Ok(Scan {
        len,
        live_len,
        ends_block,
    })
}

/// Re-emits the live instructions found by [`can_relocate`] at `w.pc()`.
///
/// Does not emit the jump back to `addr + scan.live_len`: the caller does when
/// `!scan.ends_block`. Returns where each instruction went (for moving threads).
pub fn relocate(
    code: &[u8],
    addr: u64,
    scan: &Scan,
    w: &mut Writer,
) -> Result<Vec<Moved>, RelocError> {
    let live = code.get(..scan.live_len).ok_or(RelocError::Truncated)?;
    let mut dec = decoder(live, addr);
    let mut ins = Instruction::default();
    let mut moved = Vec::with_capacity(scan.live_len.min(8));
    let start = w.pc();
    while dec.can_decode() {
        let off = dec.position();
        dec.decode_out(&mut ins);
        if ins.is_invalid() {
            return Err(RelocError::Undecodable { offset: off });
        }
        moved.push(Moved {
            orig_offset: off as u32,
            new_offset: (w.pc() - start) as u32,
        });
        let bytes = live
            .get(off..off + ins.len())
            .ok_or(RelocError::Truncated)?;
        relocate_one(&ins, bytes, w)
            .map_err(|kind| RelocError::Unrelocatable { offset: off, kind })?;
    }
    Ok(moved)
}

/// Bytes an entry patch displaces at most before the instruction that crosses them: the
/// head [`Head::decode`] keeps covers every [`Head::scan`] with `min_bytes` up to this.
pub const HEAD_BYTES: usize = 5;
/// Most instructions in a head: each starts below [`HEAD_BYTES`].
const MAX_HEAD: usize = HEAD_BYTES;
/// Offsets from the entry that [`RefSweep`] keeps track of: a displaced range ends before
/// the last head instruction's end, at most `HEAD_BYTES - 1 + 15`.
const REF_SPAN: usize = HEAD_BYTES + 15;
const _: () = assert!(REF_SPAN < 32, "RefSweep::seen is a u32");
const _: () = assert!(
    MAX_HEAD <= crate::core::MAX_MOVED,
    "a MovedList holds a head"
);

/// The first instructions of a function, decoded once for every use the planner has:
/// [`Head::scan`] (the dry run, for each patch size tried) and [`Head::relocate`] give the
/// same results as [`can_relocate`] and [`relocate`] on the same bytes, which decode again
/// each time.
///
/// Decoding starts with the decoder of the function's [`RefSweep`] (over the function's own
/// bytes), so the instructions are decoded once for both; an instruction that does not fit
/// in the function (which the sweep sees as undecodable) is decoded again over the padding.
#[derive(Clone, Debug)]
pub struct Head {
    ins: [Instruction; MAX_HEAD],
    n: usize,
    /// Why decoding stopped, for a scan that needs bytes after the last instruction.
    stop: RelocError,
    /// Bytes that may be displaced: the function and its free padding.
    code_len: usize,
}

impl Default for Head {
    fn default() -> Self {
        Self {
            ins: [Instruction::default(); MAX_HEAD],
            n: 0,
            stop: RelocError::Truncated,
            code_len: 0,
        }
    }
}

impl Head {
    /// Decodes the first instructions of `code` (running at `addr`; the function is
    /// `refs`'s bytes, a prefix of `code`, the rest free padding), up to [`HEAD_BYTES`] or an
    /// instruction that ends the block or cannot be displaced. Overwrites what `self` held
    /// (heads are big enough that the planner keeps one and decodes into it in place).
    pub fn decode(&mut self, code: &[u8], addr: u64, refs: &mut RefSweep<'_>) {
        let head = self;
        let sweep = refs;
        debug_assert!(sweep.dec.position() == 0 && sweep.addr == addr);
        head.n = 0;
        head.stop = RelocError::Truncated;
        head.code_len = code.len();
        let mut off = 0;
        // The sweep's decoder sees the same instruction as one over all of `code` when it
        // decodes one (every byte it read lies in the function); anything else is decoded
        // again by `own`, over the padding too.
        let mut own: Option<Decoder<'_>> = None;
        while off < HEAD_BYTES {
            let Some(ins) = head.ins.get_mut(head.n) else {
                break; // never: each instruction takes a byte of the HEAD_BYTES
            };
            let shared = own.is_none() && sweep.dec.can_decode() && {
                sweep.dec.decode_out(ins);
                !ins.is_invalid()
            };
            if shared {
                sweep.note(ins);
            } else {
                let dec = own.get_or_insert_with(|| {
                    decoder(code.get(off..).unwrap_or(&[]), addr + off as u64)
                });
                if !dec.can_decode() {
                    head.stop = RelocError::Truncated;
                    break;
                }
                dec.decode_out(ins);
                if ins.is_invalid() {
                    head.stop = match dec.last_error() {
                        DecoderError::NoMoreBytes => RelocError::Truncated,
                        _ => RelocError::Undecodable { offset: off },
                    };
                    break;
                }
            }
            let ins: &Instruction = ins;
            head.n += 1;
            off += ins.len();
            // Nothing after a transfer or a refused instruction is displaced by any scan.
            if !matches!(
                ins.flow_control(),
                FlowControl::Next | FlowControl::ConditionalBranch
            ) || matches!(
                ins.code(),
                Code::Syscall | Code::Sysenter | Code::Int_imm8 | Code::Int3 | Code::Into
            ) {
                break;
            }
        }
    }

    /// Dry run: can at least `min_bytes` (at most [`HEAD_BYTES`]) be moved? The same answer
    /// as [`can_relocate`] on the bytes given to [`Head::decode`].
    pub fn scan(&self, min_bytes: usize) -> Result<Scan, RelocError> {
        debug_assert!(min_bytes <= HEAD_BYTES);
        let mut off = 0usize;
        let mut ends_block = false;
        let mut decoded = self.ins.iter().take(self.n);
        while off < min_bytes {
            let Some(ins) = decoded.next() else {
                return Err(self.stop);
            };
            ends_block = classify(ins, off, min_bytes)?;
            off += ins.len();
            if ends_block {
                break;
            }
        }
        finish_scan(off, ends_block, min_bytes, self.code_len)
    }

    /// Re-emits the live instructions found by [`Head::scan`] at `w.pc()`, as [`relocate`]
    /// does; `code` holds the bytes given to [`Head::decode`].
    pub fn relocate(
        &self,
        code: &[u8],
        scan: &Scan,
        w: &mut Writer,
    ) -> Result<MovedList, RelocError> {
        let mut moved = MovedList::default();
        let start = w.pc();
        let mut off = 0usize;
        for ins in self.ins.iter().take(self.n) {
            if off >= scan.live_len {
                break;
            }
            moved.push(Moved {
                orig_offset: off as u32,
                new_offset: (w.pc() - start) as u32,
            });
            let end = off + ins.len();
            let bytes = code.get(off..end).ok_or(RelocError::Truncated)?;
            relocate_one(ins, bytes, w)
                .map_err(|kind| RelocError::Unrelocatable { offset: off, kind })?;
            off = end;
        }
        Ok(moved)
    }
}

/// The linear sweep of [`find_reference_into`] over a function, decoded once and asked
/// about several ranges `addr+1 .. addr+len` (one per patch size tried), going only as far
/// into the function as each answer needs. [`Head::decode`] decodes the first instructions
/// with it.
pub struct RefSweep<'a> {
    dec: Decoder<'a>,
    addr: u64,
    /// Bit `k`: an instruction swept so far refers to `addr+k`.
    seen: u32,
    /// `first[k]`: address of the first instruction swept so far that refers to `addr+k`
    /// (when bit `k` of `seen` is set).
    first: [u64; REF_SPAN],
    /// The whole function was swept.
    done: bool,
}

impl<'a> RefSweep<'a> {
    /// A sweep of the function `code` running at `addr`, nothing decoded yet.
    #[inline]
    pub fn new(code: &'a [u8], addr: u64) -> Self {
        Self {
            dec: decoder(code, addr),
            addr,
            seen: 0,
            first: [0; REF_SPAN],
            done: false,
        }
    }

    /// Records where a swept (valid) instruction refers, when within the tracked span;
    /// returns the offset.
    fn note(&mut self, ins: &Instruction) -> Option<usize> {
        let k = reference_target(ins)?.wrapping_sub(self.addr);
        if k == 0 || k >= REF_SPAN as u64 {
            return None;
        }
        let k = k as usize;
        if self.seen & (1 << k) == 0
            && let Some(first) = self.first.get_mut(k)
        {
            self.seen |= 1 << k;
            *first = ins.ip();
        }
        Some(k)
    }

    /// The address of the first instruction of the function that branches or refers into
    /// `addr+1 .. addr+len` (`len` at most [`HEAD_BYTES`] + 14): what [`find_reference_into`]
    /// answers for that range.
    pub fn first_ref(&mut self, len: usize) -> Option<u64> {
        debug_assert!(len <= REF_SPAN);
        let len = len.min(REF_SPAN);
        if len <= 1 {
            return None; // an empty range
        }
        // Everything before a recorded instruction was swept: the earliest one is the first.
        let mut hits = self.seen & ((1u32 << len) - 2);
        if hits != 0 {
            let mut ip = u64::MAX;
            while hits != 0 {
                let first = self.first.get(hits.trailing_zeros() as usize);
                ip = ip.min(first.copied().unwrap_or(u64::MAX));
                hits &= hits - 1;
            }
            return Some(ip);
        }
        if self.done {
            return None;
        }
        let mut ins = Instruction::default();
        while self.dec.can_decode() {
            self.dec.decode_out(&mut ins);
            if ins.is_invalid() {
                continue;
            }
            if self.note(&ins).is_some_and(|k| k < len) {
                return Some(ins.ip());
            }
        }
        self.done = true;
        None
    }
}

fn cc_nibble(cc: ConditionCode) -> u8 {
    (cc as u8).wrapping_sub(1) & 15
}

fn relocate_one(ins: &Instruction, bytes: &[u8], w: &mut Writer) -> Result<(), Unrelocatable> {
    // The common case first: no branch (every form handled below transfers control) and
    // nothing IP-relative, so the bytes work anywhere.
    if copies_as_is(ins) {
        w.put_bytes(bytes);
        return Ok(());
    }
    relocate_other(ins, bytes, w)
}

/// Whether an instruction needs no change to run elsewhere, as [`relocate_other`] would
/// find after testing for every form it rewrites, all of which transfer control or are
/// IP-relative.
fn copies_as_is(ins: &Instruction) -> bool {
    ins.flow_control() == FlowControl::Next && !ins.is_ip_rel_memory_operand()
}

fn relocate_other(ins: &Instruction, bytes: &[u8], w: &mut Writer) -> Result<(), Unrelocatable> {
    let code = ins.code();
    if code.is_jmp_short_or_near() {
        w.put_jmp(ins.near_branch_target());
        return Ok(());
    }
    if code.is_jcc_short_or_near() {
        w.put_jcc(cc_nibble(ins.condition_code()), ins.near_branch_target());
        return Ok(());
    }
    if code.is_loop() || code.is_loopcc() || code.is_jcx_short() {
        // loop +2 ; jmp short +n ; jmp target   — keeps the prefixes and the counter size.
        let target = ins.near_branch_target();
        let Some((_, head)) = bytes.split_last() else {
            return Err(Unrelocatable::EncodeFailed);
        };
        w.put_bytes(head);
        w.put_u8(2);
        let after_hop = w.pc() + 2;
        let far_len = if fits_rel32(after_hop + 5, target) {
            5
        } else {
            14
        };
        w.put_bytes(&[0xeb, far_len]);
        if !w.put_jmp_rel32(target) {
            w.put_jmp_abs(target);
        }
        return Ok(());
    }
    if code.is_call_near() {
        w.put_push_u64(ins.next_ip());
        let target = ins.near_branch_target();
        if !w.put_jmp_rel32(target) {
            w.put_jmp_abs(target);
        }
        return Ok(());
    }
    if code.is_call_near_indirect() {
        // push the original return address, then the same operand as a `jmp`.
        let mut j = *ins;
        j.set_code(match code {
            Code::Call_rm64 => Code::Jmp_rm64,
            _ => return Err(Unrelocatable::EncodeFailed),
        });
        if j.memory_base() == Register::RSP {
            j.set_memory_displacement64(j.memory_displacement64().wrapping_add(8));
        }
        if j.memory_index() == Register::RSP || j.memory_index() == Register::ESP {
            return Err(Unrelocatable::FarRipRelativeWithStack);
        }
        w.put_push_u64(ins.next_ip());
        return emit_maybe_rip(&j, w);
    }
    if ins.is_ip_rel_memory_operand() {
        return emit_maybe_rip(ins, w);
    }
    match code {
        Code::Xbegin_rel16 | Code::Xbegin_rel32 => Err(Unrelocatable::Transactional),
        _ => {
            w.put_bytes(bytes);
            Ok(())
        }
    }
}

/// Emits an instruction that may have a `[rip+X]` operand (or any operand: then it is just
/// re-encoded).
fn emit_maybe_rip(ins: &Instruction, w: &mut Writer) -> Result<(), Unrelocatable> {
    let mut enc = Encoder::new(64);
    if enc.encode(ins, w.pc()).is_ok() {
        w.put_bytes(&enc.take_buffer());
        return Ok(());
    }
    if !ins.is_ip_rel_memory_operand() {
        return Err(Unrelocatable::EncodeFailed);
    }
    let target = ins.ip_rel_memory_address();
    match ins.code() {
        Code::Lea_r64_m => {
            w.put_mov_imm64(
                gpr(ins.op0_register()).ok_or(Unrelocatable::EncodeFailed)?,
                target,
            );
            return Ok(());
        }
        Code::Jmp_rm64 => {
            // push rax; push rax; mov rax, X; mov rax, [rax]; mov [rsp+8], rax; pop rax; ret
            w.put_push(Reg::Rax);
            w.put_push(Reg::Rax);
            w.put_mov_imm64(Reg::Rax, target);
            w.put_load(Reg::Rax, Reg::Rax, 0);
            w.put_store(Reg::Rsp, 8, Reg::Rax);
            w.put_pop(Reg::Rax);
            w.put_ret();
            return Ok(());
        }
        _ => {}
    }
    let mut info = InstructionInfoFactory::new();
    let used = info.info(ins).used_registers();
    let mut uses = [false; 16];
    for u in used {
        match u.register().full_register() {
            Register::RSP => return Err(Unrelocatable::FarRipRelativeWithStack),
            r => {
                if let Some(u) = gpr(r).and_then(|g| uses.get_mut(g as usize)) {
                    *u = true;
                }
            }
        }
    }
    if ins.is_stack_instruction() {
        return Err(Unrelocatable::FarRipRelativeWithStack);
    }
    let scratch = Reg::ALL
        .into_iter()
        .find(|r| *r != Reg::Rsp && uses.get(*r as usize) == Some(&false))
        .ok_or(Unrelocatable::EncodeFailed)?;
    let mut m = *ins;
    let base = REGS64.get(scratch as usize).copied();
    m.set_memory_base(base.ok_or(Unrelocatable::EncodeFailed)?);
    m.set_memory_displacement64(0);
    m.set_memory_displ_size(0);
    let mut enc = Encoder::new(64);
    // The new pc doesn't matter: the operand is no longer IP-relative.
    enc.encode(&m, 0).map_err(|_| Unrelocatable::EncodeFailed)?;
    let body = enc.take_buffer();
    w.put_lea(Reg::Rsp, Reg::Rsp, -128);
    w.put_push(scratch);
    w.put_mov_imm64(scratch, target);
    w.put_bytes(&body);
    w.put_pop(scratch);
    w.put_lea(Reg::Rsp, Reg::Rsp, 128);
    Ok(())
}

const REGS64: [Register; 16] = [
    Register::RAX,
    Register::RCX,
    Register::RDX,
    Register::RBX,
    Register::RSP,
    Register::RBP,
    Register::RSI,
    Register::RDI,
    Register::R8,
    Register::R9,
    Register::R10,
    Register::R11,
    Register::R12,
    Register::R13,
    Register::R14,
    Register::R15,
];

fn gpr(r: Register) -> Option<Reg> {
    let i = REGS64.iter().position(|x| *x == r)?;
    Reg::ALL.get(i).copied()
}

/// Linear sweep of a whole function: the address of the first instruction whose branch
/// target or IP-relative operand lies in `range` (typically `addr+1 .. addr+patch_len`),
/// meaning code would land in the middle of the patch. `None` when nothing does.
pub fn find_reference_into(code: &[u8], addr: u64, range: Range<u64>) -> Option<u64> {
    let mut dec = decoder(code, addr);
    let mut ins = Instruction::default();
    while dec.can_decode() {
        dec.decode_out(&mut ins);
        if ins.is_invalid() {
            continue;
        }
        if let Some(t) = reference_target(&ins)
            && range.contains(&t)
        {
            return Some(ins.ip());
        }
    }
    None
}

/// Where a valid instruction branches or refers to: its `[rip+X]` operand or its direct
/// branch target (`jmp`, `jcc`, `call`, `loop`, `xbegin`).
fn reference_target(ins: &Instruction) -> Option<u64> {
    if ins.is_ip_rel_memory_operand() {
        Some(ins.ip_rel_memory_address())
    } else if matches!(
        ins.flow_control(),
        FlowControl::UnconditionalBranch
            | FlowControl::ConditionalBranch
            | FlowControl::Call
            | FlowControl::XbeginXabortXend
    ) && ins.op_count() > 0
        && matches!(
            ins.op0_kind(),
            iced_x86::OpKind::NearBranch64
                | iced_x86::OpKind::NearBranch32
                | iced_x86::OpKind::NearBranch16
        )
    {
        Some(ins.near_branch_target())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FUNC: u64 = 0x7f00_0000_1000;
    const TRAMP: u64 = 0x7f00_1000_0000;

    fn reloc(code: &[u8], min: usize, at: u64) -> (Scan, Vec<u8>) {
        let scan = can_relocate(code, FUNC, min).unwrap();
        let mut w = Writer::new(at);
        relocate(code, FUNC, &scan, &mut w).unwrap();
        (scan, w.into_code())
    }

    #[test]
    fn plain_prologue_is_copied() {
        // push rbp; mov rbp, rsp; sub rsp, 0x10
        let code = [0x55, 0x48, 0x89, 0xe5, 0x48, 0x83, 0xec, 0x10, 0xc3];
        let (scan, out) = reloc(&code, 5, TRAMP);
        assert_eq!(
            scan,
            Scan {
                len: 8,
                live_len: 8,
                ends_block: false
            }
        );
        assert_eq!(out, &code[..8]);
    }

    #[test]
    fn endbr64_is_copied() {
        // endbr64; push rbp
        let code = [0xf3, 0x0f, 0x1e, 0xfa, 0x55, 0xc3];
        let (scan, out) = reloc(&code, 5, TRAMP);
        assert_eq!(scan.len, 5);
        assert_eq!(out, &code[..5]);
    }

    #[test]
    fn rip_relative_near_is_reencoded() {
        // mov eax, [rip+0x100]     ; target FUNC+6+0x100
        let code = [0x8b, 0x05, 0x00, 0x01, 0x00, 0x00, 0xc3];
        let target = FUNC + 6 + 0x100;
        let (_, out) = reloc(&code, 5, TRAMP);
        let disp = target.wrapping_sub(TRAMP + 6) as u32;
        let mut want = vec![0x8b, 0x05]; // mov eax, [rip+disp']
        want.extend_from_slice(&disp.to_le_bytes());
        assert_eq!(out, want);
    }

    #[test]
    fn rip_relative_far_goes_through_a_scratch_register() {
        // mov eax, [rip+0x100]     ; trampoline 3 GiB away
        let code = [0x8b, 0x05, 0x00, 0x01, 0x00, 0x00, 0xc3];
        let target = FUNC + 6 + 0x100;
        let far = FUNC + (3 << 30);
        let (_, out) = reloc(&code, 5, far);
        let mut want = vec![
            0x48, 0x8d, 0x64, 0x24, 0x80, // lea rsp, [rsp-128]
            0x51, // push rcx        (rax is the destination, rcx the first free)
            0x48, 0xb9, // mov rcx, imm64
        ];
        want.extend_from_slice(&target.to_le_bytes());
        want.extend_from_slice(&[
            0x8b, 0x01, // mov eax, [rcx]
            0x59, // pop rcx
            0x48, 0x8d, 0xa4, 0x24, 0x80, 0, 0, 0, // lea rsp, [rsp+128]
        ]);
        assert_eq!(out, want);
    }

    #[test]
    fn lea_rip_far_becomes_mov_imm64() {
        // lea rdi, [rip-0x20]; (trampoline 3 GiB below)
        let code = [0x48, 0x8d, 0x3d, 0xe0, 0xff, 0xff, 0xff, 0xc3];
        let target = FUNC + 7 - 0x20;
        let (_, out) = reloc(&code, 5, FUNC - (3 << 30));
        let mut want = vec![0x48, 0xbf]; // mov rdi, imm64
        want.extend_from_slice(&target.to_le_bytes());
        assert_eq!(out, want);
    }

    #[test]
    fn far_indirect_jmp_and_call_through_rip() {
        // jmp [rip+0x10]    ; a PLT-style tail call, trampoline 3 GiB away
        let code = [0xff, 0x25, 0x10, 0, 0, 0];
        let slot = FUNC + 6 + 0x10;
        let (scan, out) = reloc(&code, 5, FUNC + (3 << 30));
        assert!(scan.ends_block);
        let mut want = vec![
            0x50, // push rax         ; becomes the return slot
            0x50, // push rax         ; saves rax
            0x48, 0xb8, // mov rax, imm64 (the slot address)
        ];
        want.extend_from_slice(&slot.to_le_bytes());
        want.extend_from_slice(&[
            0x48, 0x8b, 0x00, // mov rax, [rax]
            0x48, 0x89, 0x44, 0x24, 0x08, // mov [rsp+8], rax
            0x58, // pop rax
            0xc3, // ret              ; to the loaded target, rsp as at entry
        ]);
        assert_eq!(out, want);

        // call [rip+0x10]: push the original return address, then the same far jmp.
        let code = [0xff, 0x15, 0x10, 0, 0, 0];
        let (_, out) = reloc(&code, 5, FUNC + (3 << 30));
        let ret = FUNC + 6;
        let mut want = vec![0x68]; // push lo32(ret)
        want.extend_from_slice(&(ret as u32).to_le_bytes());
        want.extend_from_slice(&[0xc7, 0x44, 0x24, 0x04]); // mov dword [rsp+4], hi32(ret)
        want.extend_from_slice(&((ret >> 32) as u32).to_le_bytes());
        want.extend_from_slice(&[0x50, 0x50, 0x48, 0xb8]);
        want.extend_from_slice(&slot.to_le_bytes());
        want.extend_from_slice(&[0x48, 0x8b, 0x00, 0x48, 0x89, 0x44, 0x24, 0x08, 0x58, 0xc3]);
        assert_eq!(out, want);
    }

    #[test]
    fn jmp_rel8_first_leaves_a_dead_tail() {
        // jmp short +4 ; int3 x4 ; mov eax,1 ; ret
        let code = [0xeb, 0x04, 0xcc, 0xcc, 0xcc, 0xcc, 0xb8, 1, 0, 0, 0, 0xc3];
        let (scan, out) = reloc(&code, 5, TRAMP);
        assert_eq!(
            scan,
            Scan {
                len: 5,
                live_len: 2,
                ends_block: true
            }
        );
        // jmp FUNC+6 (rel32 from the trampoline)
        let mut want = vec![0xe9];
        want.extend_from_slice(&((FUNC + 6).wrapping_sub(TRAMP + 5) as u32).to_le_bytes());
        assert_eq!(out, want);
    }

    #[test]
    fn jcc_rel8_becomes_jcc_rel32() {
        // test edi, edi ; je +5 ; mov eax, 1 ; ret
        let code = [0x85, 0xff, 0x74, 0x06, 0xb8, 1, 0, 0, 0, 0xc3];
        let (scan, out) = reloc(&code, 5, TRAMP);
        assert_eq!(scan.live_len, 9);
        let je_target = FUNC + 4 + 6;
        let mut want = vec![0x85, 0xff, 0x0f, 0x84]; // test edi,edi ; je rel32
        want.extend_from_slice(&je_target.wrapping_sub(TRAMP + 8).to_le_bytes()[..4]);
        want.extend_from_slice(&[0xb8, 1, 0, 0, 0]); // mov eax, 1
        assert_eq!(out, want);
    }

    #[test]
    fn loop_and_jrcxz_hop_over_a_long_jump() {
        // mov ecx, edi ; loop +6 ; mov eax, 1 ; ret
        let code = [0x89, 0xf9, 0xe2, 0x06, 0xb8, 1, 0, 0, 0, 0xc3];
        let (_, out) = reloc(&code, 5, TRAMP);
        let target = FUNC + 4 + 6;
        let mut want = vec![
            0x89, 0xf9, // mov ecx, edi
            0xe2, 0x02, // loop +2        -> the jmp rel32 below
            0xeb, 0x05, // jmp short +5   (not taken: fall through)
            0xe9, // jmp target
        ];
        want.extend_from_slice(&target.wrapping_sub(TRAMP + 11).to_le_bytes()[..4]);
        want.extend_from_slice(&[0xb8, 1, 0, 0, 0]);
        assert_eq!(out, want);

        // jrcxz with a target out of rel32 reach: the hop skips a 14-byte absolute jump.
        let code = [0x48, 0x89, 0xf9, 0xe3, 0x02, 0xc3, 0xcc, 0xc3];
        let far = FUNC + (3 << 30);
        let (_, out) = reloc(&code, 5, far);
        let target = FUNC + 5 + 2;
        let mut want = vec![
            0x48, 0x89, 0xf9, // mov rcx, rdi
            0xe3, 0x02, // jrcxz +2
            0xeb, 0x0e, // jmp short +14
            0xff, 0x25, 0, 0, 0, 0, // jmp [rip+0]
        ];
        want.extend_from_slice(&target.to_le_bytes());
        assert_eq!(out, want);
    }

    #[test]
    fn call_pushes_the_original_return_address() {
        // call rel32 (to FUNC+0x50)
        let code = [0xe8, 0x4b, 0, 0, 0, 0xc3];
        let (scan, out) = reloc(&code, 5, TRAMP);
        assert!(scan.ends_block);
        let ret = FUNC + 5;
        let mut want = vec![0x68]; // push lo32(ret)
        want.extend_from_slice(&(ret as u32).to_le_bytes());
        want.extend_from_slice(&[0xc7, 0x44, 0x24, 0x04]); // mov dword [rsp+4], hi32(ret)
        want.extend_from_slice(&((ret >> 32) as u32).to_le_bytes());
        want.push(0xe9); // jmp FUNC+0x50
        let jmp_end = TRAMP + want.len() as u64 + 4;
        want.extend_from_slice(&(FUNC + 0x50).wrapping_sub(jmp_end).to_le_bytes()[..4]);
        assert_eq!(out, want);
    }

    #[test]
    fn indirect_call_relative_to_rsp_is_adjusted() {
        // call [rsp+8] ; nop ; nop (patch of 3 bytes for the test)
        let code = [0xff, 0x54, 0x24, 0x08, 0x90];
        let (_, out) = reloc(&code, 4, TRAMP);
        let ret = FUNC + 4;
        let mut want = vec![0x68];
        want.extend_from_slice(&(ret as u32).to_le_bytes());
        want.extend_from_slice(&[0xc7, 0x44, 0x24, 0x04]);
        want.extend_from_slice(&((ret >> 32) as u32).to_le_bytes());
        want.extend_from_slice(&[0xff, 0x64, 0x24, 0x10]); // jmp [rsp+16]
        assert_eq!(out, want);
    }

    #[test]
    fn refusals() {
        // call rax ; nop x3  — return address inside a 5-byte patch
        assert_eq!(
            can_relocate(&[0xff, 0xd0, 0x90, 0x90, 0x90], FUNC, 5),
            Err(RelocError::Unrelocatable {
                offset: 0,
                kind: Unrelocatable::CallInsidePatch
            })
        );
        // mov eax, 60 ; syscall  (only if the syscall is displaced)
        let code = [0xb8, 0x3c, 0, 0, 0, 0x0f, 0x05];
        assert!(can_relocate(&code, FUNC, 5).is_ok());
        assert_eq!(
            can_relocate(&code, FUNC, 6),
            Err(RelocError::Unrelocatable {
                offset: 5,
                kind: Unrelocatable::SystemCallOrInterrupt
            })
        );
        // ret: ends the block, but 4 more bytes are not there
        assert_eq!(can_relocate(&[0xc3], FUNC, 5), Err(RelocError::Truncated));
        // undecodable
        assert_eq!(
            can_relocate(&[0x06, 0, 0, 0, 0, 0], FUNC, 5),
            Err(RelocError::Undecodable { offset: 0 })
        );
    }

    /// A tiny xorshift generator: the same sequences on every run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Function bytes built from instructions that entries often start with, branches and
    /// IP-relative operands aimed at the first bytes, refused instructions, invalid and cut
    /// encodings, and random bytes.
    fn random_code(rng: &mut Rng) -> Vec<u8> {
        const PIECES: &[&[u8]] = &[
            &[0x55],                                        // push rbp
            &[0x48, 0x89, 0xe5],                            // mov rbp, rsp
            &[0xf3, 0x0f, 0x1e, 0xfa],                      // endbr64
            &[0x41, 0x57],                                  // push r15
            &[0x48, 0x83, 0xec, 0x18],                      // sub rsp, 0x18
            &[0x31, 0xc0],                                  // xor eax, eax
            &[0xc3],                                        // ret
            &[0x90],                                        // nop
            &[0xcc],                                        // int3
            &[0x0f, 0x05],                                  // syscall
            &[0x0f, 0x0b],                                  // ud2
            &[0x06],                                        // invalid in 64-bit mode
            &[0x48],                                        // a lone REX prefix
            &[0x48, 0x8b, 0x05, 0x10, 0, 0, 0],             // mov rax, [rip+0x10]
            &[0x48, 0x8d, 0x3d, 0xf0, 0xff, 0xff, 0xff],    // lea rdi, [rip-0x10]
            &[0x8b, 0x05, 0xf8, 0xff, 0xff, 0xff],          // mov eax, [rip-8]
            &[0xff, 0x25, 0, 0, 0, 0],                      // jmp [rip]
            &[0xff, 0x15, 0x20, 0, 0, 0],                   // call [rip+0x20]
            &[0xe8, 0x10, 0, 0, 0],                         // call +0x10
            &[0xff, 0xd0],                                  // call rax
            &[0xff, 0x54, 0x24, 0x08],                      // call [rsp+8]
            &[0xe9, 0x00, 0x01, 0, 0],                      // jmp +0x100
            &[0xc7, 0xf8, 0x10, 0, 0, 0],                   // xbegin +0x10
            &[0x64, 0x48, 0x8b, 0x04, 0x25, 0x28, 0, 0, 0], // mov rax, fs:[0x28]
            &[0x0f, 0x1f, 0x44, 0, 0],                      // nop dword [rax+rax]
        ];
        let mut code = Vec::new();
        for _ in 0..rng.below(12) + 1 {
            match rng.below(8) {
                // A short branch, back or forward by a little (often into the first bytes).
                0 => {
                    let op = [0xeb, 0x74, 0x75, 0xe2, 0xe3][rng.below(5)];
                    code.extend_from_slice(&[op, (rng.below(40) as u8).wrapping_sub(24)]);
                }
                // A near branch or rip-relative load aimed at one of the first 24 bytes.
                1 => {
                    let (ins, len): (&[u8], usize) = match rng.below(3) {
                        0 => (&[0x0f, 0x85], 6),
                        1 => (&[0xe9], 5),
                        _ => (&[0x8b, 0x05], 6),
                    };
                    let end = (code.len() + len) as i32;
                    let disp = rng.below(24) as i32 - end;
                    code.extend_from_slice(ins);
                    code.extend_from_slice(&disp.to_le_bytes());
                }
                2 => code.push(rng.next() as u8),
                _ => code.extend_from_slice(PIECES[rng.below(PIECES.len())]),
            }
        }
        code
    }

    /// What the planner asks of a [`Head`] and its [`RefSweep`], against the one-shot
    /// functions, which decode on their own.
    fn check_head_matches(code: &[u8], size: usize, lens: &[usize]) {
        let mut refs = RefSweep::new(&code[..size], FUNC);
        let mut head = Head::default();
        head.decode(code, FUNC, &mut refs);
        let ctx = || format!("code {code:02x?} size {size}");
        for min in 1..=HEAD_BYTES {
            let scan = head.scan(min);
            assert_eq!(scan, can_relocate(code, FUNC, min), "scan {min}: {}", ctx());
            let Ok(scan) = scan else { continue };
            for at in [TRAMP, FUNC + (3 << 30)] {
                let (mut w1, mut w2) = (Writer::new(at), Writer::new(at));
                let got = head.relocate(code, &scan, &mut w1);
                let want = relocate(code, FUNC, &scan, &mut w2);
                assert_eq!(got.map(|m| m.to_vec()), want, "relocate {min}: {}", ctx());
                assert_eq!(w1.code(), w2.code(), "relocated {min}: {}", ctx());
            }
        }
        for &len in lens {
            let want = find_reference_into(&code[..size], FUNC, FUNC + 1..FUNC + len as u64);
            assert_eq!(
                refs.first_ref(len),
                want,
                "refs {len} of {lens:?}: {}",
                ctx()
            );
        }
    }

    #[test]
    fn head_and_sweep_match_the_one_shot_functions() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let mut code = random_code(&mut rng);
            let size = rng.below(code.len()) + 1;
            // Free padding after the function, or bytes the head must not run into.
            for _ in 0..rng.below(8) {
                code.push([0xcc, 0x90, 0x0f, 0x48][rng.below(4)]);
            }
            let mut lens: Vec<usize> = (0..rng.below(4)).map(|_| rng.below(REF_SPAN) + 1).collect();
            lens.extend([5, 2, 19, 1, 0]);
            check_head_matches(&code, size, &lens);
        }
    }

    #[test]
    fn instructions_copied_as_is_are_what_the_general_path_copies() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let mut copied = 0;
        for _ in 0..20_000 {
            let code = random_code(&mut rng);
            let mut dec = decoder(&code, FUNC);
            let mut ins = Instruction::default();
            while dec.can_decode() {
                let off = dec.position();
                dec.decode_out(&mut ins);
                if ins.is_invalid() || !copies_as_is(&ins) {
                    continue;
                }
                let bytes = &code[off..off + ins.len()];
                let mut w = Writer::new(TRAMP);
                assert_eq!(relocate_other(&ins, bytes, &mut w), Ok(()), "{bytes:02x?}");
                assert_eq!(w.code(), bytes);
                copied += 1;
            }
        }
        assert!(copied > 10_000, "only {copied} instructions tried");
    }

    #[test]
    fn references_into_the_patch_are_found() {
        // nop ; L: dec edi ; jnz L ; ret
        let code = [0x90, 0xff, 0xcf, 0x75, 0xfc, 0xc3];
        assert_eq!(
            find_reference_into(&code, FUNC, FUNC + 1..FUNC + 5),
            Some(FUNC + 3)
        );
        assert_eq!(find_reference_into(&code, FUNC, FUNC + 2..FUNC + 5), None);
    }
}
