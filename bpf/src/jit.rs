//! The x86-64 JIT.
//!
//! [`compile`] turns a verified program into position-independent machine code callable as
//! `extern "C" fn(r1: u64, r2: u64) -> u64`: jumps inside the code are pc-relative and helpers
//! are called through absolute addresses (`mov rax, imm64; call rax`), so the bytes can be
//! copied anywhere (another process included) and run there. It only emits bytes, through
//! the x86-64 encoder it shares with the interceptor's trampolines ([`xcover_x86::Writer`]);
//! [`crate::exec`] maps them locally.
//!
//! # Register and frame layout
//!
//! eBPF registers live in the registers Linux's x86 JIT uses: `r0 = rax`, `r1 = rdi`,
//! `r2 = rsi`, `r3 = rdx`, `r4 = rcx`, `r5 = r8`, `r6 = rbx`, `r7 = r13`, `r8 = r14`,
//! `r9 = r15`, `r10 = rbp`. So helper arguments are already where the System V ABI wants
//! them, and `r6`–`r10` are callee-saved across helpers. `r9`, `r10`, `r11` are scratch;
//! `r12` holds the main frame's `rsp` so the unwind helper can leave from any depth.
//!
//! The main program pushes `rbp, rbx, r13, r14, r15, r12`, reserves 520 bytes (512 of eBPF
//! stack + 8 to keep `rsp` 16-byte aligned) and points `rbp` at the end of the 512. Each
//! local function is a real x86 function: `call rel32`, push `rbx, r13, r14, r15, rbp`,
//! reserve 512 bytes, `rbp` at their end. `rsp` is a multiple of 16 everywhere in the body,
//! so helper calls need no fix-up.
//!
//! With [`JitOptions::preserve_vector_regs`], a single-function program saves `xmm0`–`xmm15`
//! at most once per run and restores them once, at exit. The main function is emitted twice:
//! the *unsaved* copy (every instruction, as without the option) and the *saved* copy (only
//! the instructions reachable after a helper call that is not inlined). In the unsaved copy
//! such a call moves `rsp` down by `save_sub` (the red-zone `call_sub` + 256), stores the 16
//! registers at `[rsp]`, calls, and jumps into the saved copy, which keeps `rsp` there: its
//! `[r10 + off]` operands are `save_sub` further from `rsp`, its helper calls save nothing,
//! and its exits (and the unwind path, `rsp = r12 - save_sub`) go through one shared epilogue
//! that reloads the registers and frees the area. So the state is in the program counter: no
//! flag, nothing added to a run that calls no helper. Programs with local functions keep the
//! per-call save and restore around every helper call.
//!
//! # Inlined helpers
//!
//! Besides array lookups ([`crate::env::InlineMap`]) and the context helpers
//! ([`JitOptions::inline_ctx_helpers`]), the JIT emits the common case of a few standard
//! helpers inline (only when the [`Env`] registers the standard function for the id), so a
//! coverage probe's first hit of a function calls no helper and saves no vector register:
//!
//! - `bpf_ringbuf_reserve` on a RINGBUF the `Env` describes and `bpf_ringbuf_submit` of its
//!   records (the protocol of [`crate::maps::ringbuf_reserve`]; a full ring, a padding
//!   record, a lost race or odd arguments call the helper, which counts drops);
//! - `bpf_get_current_pid_tgid` from the tid cache's home slot
//!   ([`xcover_rt::TidCacheLayout`]);
//! - `bpf_ktime_get_ns` / `bpf_ktime_get_coarse_ns` as a direct call of the vDSO's
//!   `clock_gettime`, which leaves the vector registers alone.
//!
//! Each inline path ends in the usual helper call for the cases it does not handle, with the
//! arguments untouched, so the result is always the helper's.
//!
//! Edge semantics (division by zero, `INT_MIN / -1`, shift masking, 32-bit
//! zero-extension) match [`crate::interp`] exactly.

use alloc::vec;
use alloc::vec::Vec;

use xcover_x86::Writer as Emitter;
use xcover_x86::modrm::*;

use crate::env::{Env, InlineKind};
use crate::insn::*;

/// Helper id of `bpf_get_func_ip`.
pub const HELPER_GET_FUNC_IP: u32 = 173;
/// Helper id of `bpf_get_attach_cookie`.
pub const HELPER_GET_ATTACH_COOKIE: u32 = 174;

/// How to compile.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JitOptions {
    /// Save and restore `xmm0`–`xmm15` around every helper call that is not inlined (the
    /// trampoline calling the probe then needs no vector save on its hot path).
    pub preserve_vector_regs: bool,
    /// Inline `bpf_get_attach_cookie` and `bpf_get_func_ip` (when the [`Env`] registers
    /// them) as loads from the [`xcover_abi::ProbeCtx`] in `r1`.
    pub inline_ctx_helpers: bool,
}

/// Why a program could not be compiled. The verifier rejects all of these first.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JitError {
    /// An opcode or field combination the JIT does not know.
    #[error("insn {pc}: unknown opcode {op:#04x}")]
    UnknownOpcode {
        /// Instruction index.
        pc: usize,
        /// Opcode.
        op: u8,
    },
    /// A register above `r10`.
    #[error("insn {pc}: invalid register")]
    BadRegister {
        /// Instruction index.
        pc: usize,
    },
    /// A call to a helper not in the [`Env`].
    #[error("insn {pc}: unknown helper {id}")]
    UnknownHelper {
        /// Instruction index.
        pc: usize,
        /// Helper id.
        id: u32,
    },
    /// A map index not in the [`Env`].
    #[error("insn {pc}: unknown map index {index}")]
    UnknownMap {
        /// Instruction index.
        pc: usize,
        /// Map index.
        index: u32,
    },
    /// A jump outside the program or into a `lddw`.
    #[error("insn {pc}: bad jump target {target}")]
    BadJump {
        /// Instruction index.
        pc: usize,
        /// Target index.
        target: i64,
    },
    /// A `lddw` missing its second half.
    #[error("insn {pc}: incomplete lddw")]
    IncompleteLddw {
        /// Instruction index.
        pc: usize,
    },
}

// ---------------------------------------------------------------------------------------------
// A small x86-64 emitter.
// ---------------------------------------------------------------------------------------------

/// eBPF register -> x86 register.
const MAP: [u8; 11] = [RAX, RDI, RSI, RDX, RCX, R8, RBX, R13, R14, R15, RBP];

// ---------------------------------------------------------------------------------------------
// The compiler.
// ---------------------------------------------------------------------------------------------

/// Bytes reserved by the main frame below its pushes (512 of stack + 8 of alignment).
const MAIN_FRAME: i32 = STACK_SIZE as i32 + 8;
/// Bytes reserved by a local function's frame.
const SUB_FRAME: i32 = STACK_SIZE as i32;

#[derive(Clone, Copy)]
enum Target {
    /// An instruction of the unsaved copy (`pc`) or of the saved copy (`len + 1 + pc`).
    Insn(usize),
    Func(usize),
    Epilogue,
    /// Reload the vector registers, free the save area, then the main epilogue.
    SavedEpilogue,
}

/// What the compiler knows about a register's value in straight-line code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Known {
    /// Nothing.
    No,
    /// The header address of map `idx` (`lddw rX, map`).
    Map(u32),
    /// `r10 + off`.
    Stack(i32),
}

/// How the main program's frame looks.
struct Frame {
    /// Callee-saved registers pushed by the main prologue, in push order.
    saved: Vec<u8>,
    /// Bytes subtracted from `rsp` after the pushes.
    size: i32,
    /// `r10` is not kept in `rbp`: every `[r10 + off]` becomes `[rsp + top + off]`.
    fp_less: bool,
    /// `rsp + top` is the eBPF `r10` in `fp_less` mode.
    top: i32,
    /// `r12` holds the main frame's `rsp` (unwind helper or `callx` present).
    r12: bool,
    /// Red-zone layout: bytes to move `rsp` down by around each helper call (0: none).
    call_sub: i32,
}

/// Code placed after the epilogue, off the hot path.
enum Cold {
    /// An out-of-range array key: `r0 = 0`, then jump to `to`.
    Null { jcc: usize, to: ColdTo },
    /// A CPU number at or above the map's slot count: `r10d %= ncpus`, then jump back.
    CpuMod { jcc: usize, back: usize, ncpus: u32 },
    /// The rseq CPU number is not a slot (the thread has no rseq registered): take `rdpid`'s
    /// when there is one, then as [`Cold::CpuMod`].
    CpuRseq { jcc: usize, back: usize, ncpus: u32 },
}

/// Where a cold stub continues.
enum ColdTo {
    Pos(usize),
    Insn(usize),
}

struct Compiler<'a> {
    e: Emitter,
    env: &'a Env<'a>,
    opts: &'a JitOptions,
    fixups: Vec<(usize, Target)>,
    frame: Frame,
    /// Whether the program has local functions (then the classic layout is used).
    multi: bool,
    known: [Known; 11],
    /// Registers whose [`Known`] value has not been written to the x86 register yet.
    pending: [bool; 11],
    cold: Vec<Cold>,
    /// `rdpid` is available, so PERCPU_ARRAY lookups can be inlined.
    rdpid: bool,
    /// Lowest `r10` offset the program reaches directly (memory operands, helper and key
    /// pointers).
    low_stack: i32,
    /// A stack address went somewhere the compiler cannot bound (a register kept past a
    /// helper call, a store, arithmetic, a jump).
    stack_escapes: bool,
    /// Registers are being written for a helper call: `r1`..`r5` stack addresses are
    /// helper arguments (bounded by the verifier to `[addr, r10)`).
    for_call: bool,
    /// Save the vector registers once per run (single-function programs with
    /// [`JitOptions::preserve_vector_regs`]).
    split: bool,
    /// Emitting the saved copy.
    saved: bool,
    /// Index of the current copy's first instruction in `insn_off` (0 or `len + 1`).
    base: usize,
    /// Instructions of the unsaved copy that saved the vector registers and called a helper.
    transitions: Vec<bool>,
}

/// Compiles a verified program for any load address.
pub fn compile(insns: &[Insn], env: &Env, opts: &JitOptions) -> Result<Vec<u8>, JitError> {
    let rdpid =
        !env.map_inline.is_empty() && xcover_rt::cpu_id_method() == xcover_rt::CpuIdMethod::Rdpid;
    compile_with(insns, env, opts, rdpid)
}

/// [`compile`], with `rdpid` availability given instead of detected (`false` never inlines
/// PERCPU_ARRAY lookups: the helper picks the CPU its own way).
#[doc(hidden)]
pub fn compile_with(
    insns: &[Insn],
    env: &Env,
    opts: &JitOptions,
    rdpid: bool,
) -> Result<Vec<u8>, JitError> {
    let (code, red_zone_ok) = compile_pass(insns, env, opts, rdpid, false)?;
    if !red_zone_ok {
        return Ok(code);
    }
    Ok(compile_pass(insns, env, opts, rdpid, true)?.0)
}

/// Bytes below `rsp` a leaf may use without moving `rsp` (System V red zone: signal
/// frames are built below it).
const RED_ZONE: i32 = 128;

/// One compilation. With `red_zone`, a single-function program whose stack accesses stay
/// within [`RED_ZONE`] bytes below `r10` keeps its stack below `rsp` and only moves `rsp`
/// around helper calls. Also returns whether that layout applies to this program.
fn compile_pass(
    insns: &[Insn],
    env: &Env,
    opts: &JitOptions,
    rdpid: bool,
    red_zone: bool,
) -> Result<(Vec<u8>, bool), JitError> {
    let len = insns.len();
    // Function entries: 0 and every local-call target; lddw second halves.
    let mut entry = vec![false; len + 1];
    let mut tail = vec![false; len + 1];
    entry[0] = true;
    let mut pc = 0;
    while pc < len {
        let i = insns[pc];
        if i.is_lddw() {
            if pc + 1 >= len {
                return Err(JitError::IncompleteLddw { pc });
            }
            tail[pc + 1] = true;
            pc += 2;
            continue;
        }
        if i.is_local_call() {
            let t = i.jump_target(pc).unwrap_or(-1);
            if t < 0 || t >= len as i64 {
                return Err(JitError::BadJump { pc, target: t });
            }
            entry[t as usize] = true;
        }
        pc += 1;
    }
    let mut is_target = vec![false; len + 1];
    for (pc, i) in insns.iter().enumerate() {
        if tail[pc] {
            continue;
        }
        if let Some(t) = i.jump_target(pc) {
            if t < 0 || t >= len as i64 || tail[t as usize] {
                return Err(JitError::BadJump { pc, target: t });
            }
            is_target[t as usize] = true;
        }
    }
    let multi = entry[1..].iter().any(|&e| e);
    let frame = plan_frame(insns, &tail, env, multi, red_zone);

    let mut c = Compiler {
        e: Emitter::reusing(0, Vec::with_capacity(len * 8 + 64)),
        env,
        opts,
        fixups: Vec::new(),
        frame,
        multi,
        known: [Known::No; 11],
        pending: [false; 11],
        cold: Vec::new(),
        rdpid,
        low_stack: 0,
        stack_escapes: false,
        for_call: false,
        split: opts.preserve_vector_regs && !multi,
        saved: false,
        base: 0,
        transitions: vec![false; len + 1],
    };
    let mut insn_off = vec![0usize; 2 * (len + 1)];
    let mut func_off = vec![0usize; len + 1];
    c.main_prologue();
    let mut in_main = true;
    let mut pc = 0;
    while pc < len {
        if is_target[pc] || entry[pc] {
            c.flush_all();
            c.forget_all();
        }
        if entry[pc] && pc != 0 {
            in_main = false;
            func_off[pc] = c.e.pos();
            c.sub_prologue();
        }
        insn_off[pc] = c.e.pos();
        let i = insns[pc];
        if i.dst > 10 || i.src > 10 {
            return Err(JitError::BadRegister { pc });
        }
        if i.is_lddw() {
            c.lddw(pc, i, insns[pc + 1])?;
            insn_off[pc + 1] = c.e.pos();
            pc += 2;
            continue;
        }
        if c.try_fused_add(insns, pc, &is_target) {
            insn_off[pc + 1] = c.e.pos();
            insn_off[pc + 2] = c.e.pos();
            pc += 3;
            continue;
        }
        // A `jeq r0, 0, L` right after an inlined lookup folds into the lookup's range check.
        let next = insns
            .get(pc + 1)
            .filter(|n| !is_target[pc + 1] && n.op == BPF_JMP | BPF_JEQ | BPF_K)
            .filter(|n| n.dst == 0 && n.imm == 0)
            .and_then(|n| n.jump_target(pc + 1))
            .map(|t| t as usize);
        if i.op == BPF_JMP | BPF_CALL && i.src == 0 && c.try_inline_lookup(pc, i, next)? {
            if next.is_some() {
                insn_off[pc + 1] = c.e.pos();
                pc += 1;
            }
            pc += 1;
            continue;
        }
        c.insn(pc, i, in_main)?;
        pc += 1;
    }
    c.flush_all();
    let mut saved_epilogue = 0;
    if c.split {
        c.forget_all();
        c.emit_saved_copy(insns, &tail, &is_target, &mut insn_off)?;
        c.flush_all();
    }
    let epilogue = c.e.pos();
    c.main_epilogue();
    if c.split {
        saved_epilogue = c.e.pos();
        c.saved_epilogue();
    }
    c.emit_cold();
    for &(at, t) in &c.fixups {
        let to = match t {
            Target::Insn(pc) => insn_off[pc],
            Target::Func(pc) => func_off[pc],
            Target::Epilogue => epilogue,
            Target::SavedEpilogue => saved_epilogue,
        };
        c.e.patch_rel32(at, to);
    }
    let fits = c.frame.fp_less && !multi && !c.stack_escapes && -c.low_stack <= RED_ZONE;
    Ok((c.e.into_code(), fits))
}

/// Decides the main frame: the registers to save and whether `r10` needs `rbp`.
fn plan_frame(insns: &[Insn], tail: &[bool], env: &Env, multi: bool, red_zone: bool) -> Frame {
    let mut used = [false; 11];
    let mut calls = false;
    let mut r12 = false;
    // r10 may live as `rsp + top` when it is only a memory base or copied by `mov64`.
    let mut r10_simple = true;
    for (pc, i) in insns.iter().enumerate() {
        if tail[pc] {
            continue;
        }
        used[i.dst.min(10) as usize] = true;
        if !i.is_lddw() && i.op != BPF_JMP | BPF_CALL {
            used[i.src.min(10) as usize] = true;
        }
        let class = i.class();
        if i.op == BPF_JMP | BPF_CALL {
            calls = true;
            let x = i.op & SRC_MASK == BPF_X;
            if x || (i.src == 0 && env.unwind_helper == Some(i.imm as u32)) {
                r12 = true;
            }
        }
        if i.op == BPF_JMP | BPF_CALL | BPF_X {
            calls = true;
            r12 = true;
        }
        let src_ok = match class {
            BPF_LDX => true,
            BPF_ALU64 => i.op == BPF_ALU64 | BPF_MOV | BPF_X && i.off == 0,
            _ => false,
        };
        let dst_ok = matches!(class, BPF_ST | BPF_STX);
        let src_is_reg = !i.is_lddw() && i.op != BPF_JMP | BPF_CALL;
        if (i.dst == 10 && !dst_ok) || (src_is_reg && i.src == 10 && !src_ok) {
            r10_simple = false;
        }
    }
    if multi {
        return Frame {
            saved: vec![RBP, RBX, R13, R14, R15, R12],
            size: MAIN_FRAME,
            fp_less: false,
            top: 0,
            r12: true,
            call_sub: 0,
        };
    }
    let mut saved = Vec::new();
    for (b, x) in [(6, RBX), (7, R13), (8, R14), (9, R15)] {
        if used[b] {
            saved.push(x);
        }
    }
    let stack = used[10];
    let fp_less = !stack || r10_simple;
    if stack && !fp_less {
        saved.push(RBP);
    }
    if r12 {
        saved.push(R12);
    }
    // On entry rsp = 8 (mod 16); calls need it to be 0 (mod 16).
    let align = |n: i32| n + (8 + 8 * saved.len() as i32 + n) % 16;
    if red_zone && fp_less && stack {
        return Frame {
            size: 0,
            fp_less,
            top: 0,
            r12,
            call_sub: align(RED_ZONE),
            saved,
        };
    }
    let mut size = if stack { STACK_SIZE as i32 } else { 0 };
    if calls {
        size = align(size);
    }
    Frame {
        saved,
        size,
        fp_less,
        top: STACK_SIZE as i32,
        r12,
        call_sub: 0,
    }
}

/// Successors of instruction `pc` of a single-function program.
fn successors(i: Insn, pc: usize) -> [Option<usize>; 2] {
    let next = Some(pc + if i.is_lddw() { 2 } else { 1 });
    let class = i.class();
    if class != BPF_JMP && class != BPF_JMP32 {
        return [next, None];
    }
    let target = i.jump_target(pc).map(|t| t as usize);
    match i.op & OP_MASK {
        BPF_EXIT => [None, None],
        BPF_CALL => [next, None],
        BPF_JA => [target, None],
        _ => [next, target],
    }
}

impl Compiler<'_> {
    /// Bytes the first saving helper call moves `rsp` down by (the saved copy keeps it so).
    fn save_sub(&self) -> i32 {
        self.frame.call_sub + 256
    }

    /// The jump target for instruction `pc` of the copy being emitted.
    fn insn_target(&self, pc: usize) -> Target {
        Target::Insn(self.base + pc)
    }

    /// Emits the saved copy: the instructions reachable after a transition of the unsaved
    /// copy, in program order, each region entered with nothing known about registers.
    fn emit_saved_copy(
        &mut self,
        insns: &[Insn],
        tail: &[bool],
        is_target: &[bool],
        insn_off: &mut [usize],
    ) -> Result<(), JitError> {
        let len = insns.len();
        let mut reach = vec![false; len + 1];
        let mut work: Vec<usize> = (0..len)
            .filter(|&pc| self.transitions[pc])
            .map(|pc| pc + 1)
            .collect();
        while let Some(pc) = work.pop() {
            if pc >= len || reach[pc] || tail[pc] {
                continue;
            }
            reach[pc] = true;
            work.extend(successors(insns[pc], pc).into_iter().flatten());
        }
        self.saved = true;
        self.base = len + 1;
        let mut pc = 0;
        let mut prev_emitted = false;
        while pc < len {
            if !reach[pc] {
                prev_emitted = false;
                pc += 1;
                continue;
            }
            if is_target[pc] || !prev_emitted || self.transitions[pc.saturating_sub(1)] {
                self.flush_all();
                self.forget_all();
            }
            prev_emitted = true;
            insn_off[self.base + pc] = self.e.pos();
            let i = insns[pc];
            if i.is_lddw() {
                self.lddw(pc, i, insns[pc + 1])?;
                insn_off[self.base + pc + 1] = self.e.pos();
                pc += 2;
                continue;
            }
            if reach.get(pc + 2).copied().unwrap_or(false)
                && self.try_fused_add(insns, pc, is_target)
            {
                insn_off[self.base + pc + 1] = self.e.pos();
                insn_off[self.base + pc + 2] = self.e.pos();
                pc += 3;
                continue;
            }
            // Never fold a `jeq` the unsaved copy enters (after its own call at `pc`).
            let next = insns
                .get(pc + 1)
                .filter(|n| !is_target[pc + 1] && n.op == BPF_JMP | BPF_JEQ | BPF_K)
                .filter(|n| n.dst == 0 && n.imm == 0 && !self.transitions[pc])
                .and_then(|n| n.jump_target(pc + 1))
                .map(|t| t as usize);
            if i.op == BPF_JMP | BPF_CALL && i.src == 0 && self.try_inline_lookup(pc, i, next)? {
                if next.is_some() {
                    insn_off[self.base + pc + 1] = self.e.pos();
                    pc += 1;
                }
                pc += 1;
                continue;
            }
            self.insn(pc, i, true)?;
            pc += 1;
        }
        Ok(())
    }

    /// The shared exit of the saved copy: reload `xmm0`–`xmm15`, free the area, return.
    fn saved_epilogue(&mut self) {
        for x in 0..16u8 {
            let m = Rm::Mem(RSP, x as i32 * 16);
            self.e.inst(&[0xf3], false, false, &[0x0f, 0x6f], x, m); // movdqu xmm, [rsp+16x]
        }
        let sub = self.save_sub();
        self.e.alu_imm(true, 0, RSP, sub);
        self.main_epilogue();
    }

    /// Leaves the program from any depth with `r0` set; `saved`: the vector registers are
    /// in the save area (single-function programs only).
    fn leave_from_anywhere(&mut self, saved: bool) {
        if saved {
            let d = -self.save_sub();
            self.e.lea(RSP, R12, d);
            let j = self.e.jmp();
            self.fixups.push((j, Target::SavedEpilogue));
        } else {
            self.e.mov(true, RSP, R12);
            let j = self.e.jmp();
            self.fixups.push((j, Target::Epilogue));
        }
    }

    fn main_prologue(&mut self) {
        for i in 0..self.frame.saved.len() {
            self.e.push(self.frame.saved[i]);
        }
        if self.frame.size != 0 {
            self.e.alu_imm(true, 5, RSP, self.frame.size); // sub rsp, size
        }
        if !self.frame.fp_less {
            self.e.lea(RBP, RSP, STACK_SIZE as i32);
        }
        if self.frame.r12 {
            self.e.mov(true, R12, RSP);
        }
    }

    fn main_epilogue(&mut self) {
        if self.frame.size != 0 {
            self.e.alu_imm(true, 0, RSP, self.frame.size); // add rsp, size
        }
        for i in (0..self.frame.saved.len()).rev() {
            self.e.pop(self.frame.saved[i]);
        }
        self.e.byte(0xc3);
    }

    fn sub_prologue(&mut self) {
        for r in [RBX, R13, R14, R15, RBP] {
            self.e.push(r);
        }
        self.e.alu_imm(true, 5, RSP, SUB_FRAME);
        self.e.lea(RBP, RSP, STACK_SIZE as i32);
    }

    fn sub_epilogue(&mut self) {
        self.e.alu_imm(true, 0, RSP, SUB_FRAME);
        for r in [RBP, R15, R14, R13, RBX] {
            self.e.pop(r);
        }
        self.e.byte(0xc3);
    }

    fn jump_to(&mut self, at: usize, t: Target) {
        self.fixups.push((at, t));
    }

    /// The memory operand `[reg + off]` for an eBPF base register.
    /// `r = *(u64 *)(p + o); r += k; *(u64 *)(p + o) = r`, which is how clang compiles
    /// `*counter += k`, as one `add qword [p + o], k` and a reload of `r`. Preemption cannot
    /// split one instruction, so a thread preempted between the load and the store no longer
    /// writes back a stale count over the increments other threads of its CPU made meanwhile
    /// (the coverage probe lost ~1 % of its counts that way with 16 busy threads on 2 CPUs).
    /// Not when anything jumps to the second or third instruction.
    fn try_fused_add(&mut self, insns: &[Insn], pc: usize, is_target: &[bool]) -> bool {
        let (Some(l), Some(a), Some(st)) = (insns.get(pc), insns.get(pc + 1), insns.get(pc + 2))
        else {
            return false;
        };
        let fits = l.op == BPF_LDX | BPF_MEM | BPF_DW
            && a.op == BPF_ALU64 | BPF_ADD | BPF_K
            && a.off == 0
            && a.dst == l.dst
            && st.op == BPF_STX | BPF_MEM | BPF_DW
            && st.src == l.dst
            && st.dst == l.src
            && st.off == l.off
            && l.dst != l.src
            && l.dst < 10
            && l.src <= 10
            && !is_target.get(pc + 1).copied().unwrap_or(true)
            && !is_target.get(pc + 2).copied().unwrap_or(true);
        if !fits {
            return false;
        }
        self.flush(l.dst);
        self.flush(l.src);
        let m = self.mem(l.src, l.off as i32);
        self.e.inst(&[], true, false, &[0x81], 0, m); // add qword [m], imm32
        self.e.imm32(a.imm);
        // The register gets the new value, unless the code overwrites it first.
        if !overwritten_before_use(insns, pc + 3, l.dst) {
            let m = self.mem(l.src, l.off as i32);
            self.e
                .inst(&[], true, false, &[0x8b], MAP[l.dst as usize], m);
        }
        self.forget(l.dst);
        true
    }

    fn mem(&mut self, reg: u8, off: i32) -> Rm {
        if reg == 10 {
            self.low_stack = self.low_stack.min(off);
        }
        if reg == 10 && self.frame.fp_less {
            let moved = if self.saved { self.save_sub() } else { 0 };
            Rm::Mem(RSP, moved + self.frame.top + off)
        } else {
            Rm::Mem(MAP[reg as usize], off)
        }
    }

    /// Writes a deferred known value into its register.
    fn flush(&mut self, r: u8) {
        let r = r as usize;
        if !self.pending[r] {
            return;
        }
        self.pending[r] = false;
        match self.known[r] {
            Known::Map(idx) => {
                let v = self.env.map_addrs.get(idx as usize).copied().unwrap_or(0);
                self.e.mov_imm64(MAP[r], v);
            }
            Known::Stack(off) => {
                if !(self.for_call && (1..=5).contains(&r)) {
                    self.stack_escapes = true;
                }
                if let Rm::Mem(b, d) = self.mem(10, off) {
                    self.e.lea(MAP[r], b, d);
                }
            }
            Known::No => {}
        }
    }

    fn flush_all(&mut self) {
        for r in 0..11 {
            self.flush(r);
        }
    }

    fn forget_all(&mut self) {
        self.known = [Known::No; 11];
        self.pending = [false; 11];
    }

    /// Forgets what `r` held (it was just written); any deferred value is dropped.
    fn forget(&mut self, r: u8) {
        self.known[r as usize] = Known::No;
        self.pending[r as usize] = false;
    }

    /// Inlines `call 1` (`bpf_map_lookup_elem`) when `r1` is a known inlinable array map and
    /// `r2` a known stack address. `null_to`: the target of a `jeq r0, 0` that follows and is
    /// folded in. Returns false (emitting nothing) when it does not apply.
    fn try_inline_lookup(
        &mut self,
        pc: usize,
        i: Insn,
        null_to: Option<usize>,
    ) -> Result<bool, JitError> {
        if i.imm != crate::helpers::MAP_LOOKUP_ELEM as i32 {
            return Ok(false);
        }
        let (Known::Map(idx), Known::Stack(koff)) = (self.known[1], self.known[2]) else {
            return Ok(false);
        };
        let Some(Some(m)) = self.env.map_inline.get(idx as usize).copied() else {
            return Ok(false);
        };
        let rseq = self.env.rseq_cpu_id;
        if m.kind == InlineKind::Ringbuf
            || (m.kind == InlineKind::PerCpuArray && !self.rdpid && rseq.is_none())
        {
            return Ok(false);
        }
        let id = i.imm as u32;
        if self.env.helper(id).is_none() {
            return Err(JitError::UnknownHelper { pc, id });
        }
        // r1..r5 die at a call and r0 is overwritten; anything else deferred must be in place
        // before the folded branch.
        for r in 0..=5 {
            self.forget(r);
        }
        self.flush_all();
        let key = self.mem(10, koff);
        let e = &mut self.e;
        e.inst(&[], false, false, &[0x8b], R11, key); // mov r11d, [key]
        e.alu_imm(false, 7, R11, m.max_entries as i32); // cmp r11d, max_entries
        let jcc = e.jcc(0x3); // jae -> r0 = 0
        let percpu = m.kind == InlineKind::PerCpuArray;
        if percpu {
            match rseq {
                Some(off) => e.load32_fs(R10, off), // mov r10d, fs:[cpu_id]
                None => {
                    e.rdpid(R10);
                    e.alu_imm(false, 4, R10, 0xfff); // and r10d, 0xfff
                }
            }
            let mut cold = None;
            if rseq.is_some() || m.ncpus < 0x1000 {
                let ncpus = m.ncpus.max(1);
                e.alu_imm(false, 7, R10, ncpus as i32); // cmp r10d, ncpus
                let jcc = e.jcc(0x3);
                let back = e.pos();
                cold = Some(match rseq {
                    Some(_) => Cold::CpuRseq { jcc, back, ncpus },
                    None => Cold::CpuMod { jcc, back, ncpus },
                });
            }
            match i32::try_from(m.cpu_stride) {
                Ok(st) => {
                    e.inst(&[], true, false, &[0x69], R10, Rm::Reg(R10)); // imul r10, r10, st
                    e.imm32(st);
                }
                Err(_) => {
                    e.mov_imm64(R9, m.cpu_stride);
                    e.inst(&[], true, false, &[0x0f, 0xaf], R10, Rm::Reg(R9));
                }
            }
            self.cold.extend(cold);
        }
        let e = &mut self.e;
        e.mov_imm64(RAX, m.values_addr);
        if percpu {
            e.rr(true, 0x01, RAX, R10); // add rax, r10
        }
        match m.value_stride {
            s @ (1 | 2 | 4 | 8) => e.lea_sib(RAX, RAX, R11, s as u8),
            s => {
                e.inst(&[], true, false, &[0x69], R11, Rm::Reg(R11)); // imul r11, r11, s
                e.imm32(s as i32);
                e.rr(true, 0x01, RAX, R11);
            }
        }
        let to = match null_to {
            Some(t) => ColdTo::Insn(self.base + t),
            None => ColdTo::Pos(self.e.pos()),
        };
        self.cold.push(Cold::Null { jcc, to });
        self.forget(0);
        Ok(true)
    }

    /// Emits the cold stubs collected while compiling.
    fn emit_cold(&mut self) {
        for c in core::mem::take(&mut self.cold) {
            match c {
                Cold::Null { jcc, to } => {
                    self.e.patch_rel32_here(jcc);
                    self.e.rr(false, 0x31, RAX, RAX);
                    let j = self.e.jmp();
                    match to {
                        ColdTo::Pos(p) => self.e.patch_rel32(j, p),
                        ColdTo::Insn(pc) => self.jump_to(j, Target::Insn(pc)),
                    }
                }
                Cold::CpuRseq { jcc, back, ncpus } => {
                    let e = &mut self.e;
                    e.patch_rel32_here(jcc);
                    if self.rdpid {
                        e.rdpid(R10);
                        e.alu_imm(false, 4, R10, 0xfff); // and r10d, 0xfff
                        e.alu_imm(false, 7, R10, ncpus as i32); // cmp r10d, ncpus
                        let j = e.jcc(0x2); // jb back
                        e.patch_rel32(j, back);
                    }
                    // rax (r0) is being computed and rdx (r3) dies at the call.
                    Self::cpu_mod(e, ncpus, back);
                }
                Cold::CpuMod { jcc, back, ncpus } => {
                    self.e.patch_rel32_here(jcc);
                    Self::cpu_mod(&mut self.e, ncpus, back);
                }
            }
        }
    }

    /// `r10d %= ncpus`, then `jmp back`. Clobbers rax (r0, being computed) and rdx (r3,
    /// dead at the call being inlined).
    fn cpu_mod(e: &mut Emitter, ncpus: u32, back: usize) {
        e.mov(false, RAX, R10);
        e.rr(false, 0x31, RDX, RDX);
        e.mov_imm(false, R10, ncpus as i32);
        e.inst(&[], false, false, &[0xf7], 6, Rm::Reg(R10)); // div r10d
        e.mov(false, R10, RDX);
        let j = e.jmp();
        e.patch_rel32(j, back);
    }

    fn lddw(&mut self, pc: usize, i: Insn, next: Insn) -> Result<(), JitError> {
        let d = MAP[i.dst as usize];
        let idx = i.imm as u32;
        let missing = JitError::UnknownMap { pc, index: idx };
        let v = match i.src {
            PSEUDO_NONE => (i.imm as u32 as u64) | (next.imm as u32 as u64) << 32,
            PSEUDO_MAP_FD => {
                self.env.map_addrs.get(idx as usize).ok_or(missing)?;
                // Deferred: an inlined lookup never needs the address in a register.
                self.known[i.dst as usize] = Known::Map(idx);
                self.pending[i.dst as usize] = true;
                return Ok(());
            }
            PSEUDO_MAP_VALUE => self
                .env
                .map_value_addrs
                .get(idx as usize)
                .ok_or(missing)?
                .wrapping_add(next.imm as u32 as u64),
            _ => return Err(JitError::UnknownOpcode { pc, op: i.op }),
        };
        self.forget(i.dst);
        self.e.mov_imm64(d, v);
        Ok(())
    }

    fn insn(&mut self, pc: usize, i: Insn, in_main: bool) -> Result<(), JitError> {
        // Straight-line tracking of stack addresses: `mov rX, r10` and `add/sub rX, imm` on
        // a deferred one only update what the compiler knows.
        let dr = i.dst as usize;
        if i.op == BPF_ALU64 | BPF_MOV | BPF_X && i.off == 0 && i.src == 10 && i.dst != 10 {
            self.known[dr] = Known::Stack(0);
            self.pending[dr] = true;
            return Ok(());
        }
        if (i.op == BPF_ALU64 | BPF_ADD | BPF_K || i.op == BPF_ALU64 | BPF_SUB | BPF_K)
            && i.off == 0
            && self.pending[dr]
            && let Known::Stack(o) = self.known[dr]
        {
            let delta = if i.op & OP_MASK == BPF_ADD {
                Some(i.imm)
            } else {
                i.imm.checked_neg()
            };
            if let Some(n) = delta.and_then(|d| o.checked_add(d)) {
                self.known[dr] = Known::Stack(n);
                return Ok(());
            }
        }
        let class = i.class();
        if matches!(class, BPF_JMP | BPF_JMP32) {
            self.for_call = i.op == BPF_JMP | BPF_CALL && i.src == 0;
            self.flush_all();
            self.for_call = false;
        } else {
            self.flush(i.dst);
            self.flush(i.src);
            if class == BPF_STX && i.op & MODE_MASK == BPF_ATOMIC {
                self.flush(0);
            }
        }
        self.emit(pc, i, in_main)?;
        match class {
            BPF_JMP | BPF_JMP32 => match i.op & OP_MASK {
                BPF_CALL => {
                    for r in 0..=5 {
                        self.forget(r);
                    }
                }
                BPF_JA | BPF_EXIT => self.forget_all(),
                _ => {}
            },
            _ => {
                self.forget(i.dst);
                self.forget(i.src);
                if class == BPF_STX && i.op & MODE_MASK == BPF_ATOMIC {
                    self.forget(0);
                }
            }
        }
        Ok(())
    }

    fn emit(&mut self, pc: usize, i: Insn, in_main: bool) -> Result<(), JitError> {
        let d = MAP[i.dst as usize];
        let s = MAP[i.src as usize];
        let bad = JitError::UnknownOpcode { pc, op: i.op };
        let x = i.op & SRC_MASK == BPF_X;
        match i.class() {
            BPF_ALU | BPF_ALU64 => self.alu(i, d, s, x).ok_or(bad)?,
            BPF_LDX => {
                let m = self.mem(i.src, i.off as i32);
                let (w, opc): (bool, &[u8]) = match (i.op & MODE_MASK, i.op & SIZE_MASK) {
                    (BPF_MEM, BPF_B) => (false, &[0x0f, 0xb6]),
                    (BPF_MEM, BPF_H) => (false, &[0x0f, 0xb7]),
                    (BPF_MEM, BPF_W) => (false, &[0x8b]),
                    (BPF_MEM, BPF_DW) => (true, &[0x8b]),
                    (BPF_MEMSX, BPF_B) => (true, &[0x0f, 0xbe]),
                    (BPF_MEMSX, BPF_H) => (true, &[0x0f, 0xbf]),
                    (BPF_MEMSX, BPF_W) => (true, &[0x63]),
                    _ => return Err(bad),
                };
                self.e.inst(&[], w, false, opc, d, m);
            }
            BPF_ST => {
                if i.op & MODE_MASK != BPF_MEM {
                    return Err(bad);
                }
                let m = self.mem(i.dst, i.off as i32);
                match i.op & SIZE_MASK {
                    BPF_B => {
                        self.e.inst(&[], false, false, &[0xc6], 0, m);
                        self.e.byte(i.imm as u8);
                    }
                    BPF_H => {
                        self.e.inst(&[0x66], false, false, &[0xc7], 0, m);
                        self.e.bytes(&(i.imm as u16).to_le_bytes());
                    }
                    BPF_W => {
                        self.e.inst(&[], false, false, &[0xc7], 0, m);
                        self.e.imm32(i.imm);
                    }
                    _ => {
                        self.e.inst(&[], true, false, &[0xc7], 0, m);
                        self.e.imm32(i.imm);
                    }
                }
            }
            BPF_STX => {
                let m = self.mem(i.dst, i.off as i32);
                match i.op & MODE_MASK {
                    BPF_MEM => match i.op & SIZE_MASK {
                        BPF_B => self.e.inst(&[], false, true, &[0x88], s, m),
                        BPF_H => self.e.inst(&[0x66], false, false, &[0x89], s, m),
                        BPF_W => self.e.inst(&[], false, false, &[0x89], s, m),
                        _ => self.e.inst(&[], true, false, &[0x89], s, m),
                    },
                    BPF_ATOMIC => self.atomic(i, m, s).ok_or(bad)?,
                    _ => return Err(bad),
                }
            }
            BPF_JMP | BPF_JMP32 => self.jmp(pc, i, d, s, x, in_main)?,
            _ => return Err(bad),
        }
        Ok(())
    }

    fn alu(&mut self, i: Insn, d: u8, s: u8, x: bool) -> Option<()> {
        let w = i.class() == BPF_ALU64;
        let code = i.op & OP_MASK;
        let e = &mut self.e;
        match code {
            BPF_ADD | BPF_SUB | BPF_OR | BPF_AND | BPF_XOR => {
                if i.off != 0 {
                    return None;
                }
                let (opc, ext) = match code {
                    BPF_ADD => (0x01, 0),
                    BPF_OR => (0x09, 1),
                    BPF_AND => (0x21, 4),
                    BPF_SUB => (0x29, 5),
                    _ => (0x31, 6),
                };
                if x {
                    e.rr(w, opc, d, s);
                } else {
                    e.alu_imm(w, ext, d, i.imm);
                }
            }
            BPF_MOV => match (x, i.off) {
                (false, 0) => e.mov_imm(w, d, i.imm),
                (true, 0) => e.mov(w, d, s),
                (true, 8) => e.inst(&[], w, true, &[0x0f, 0xbe], d, Rm::Reg(s)),
                (true, 16) => e.inst(&[], w, false, &[0x0f, 0xbf], d, Rm::Reg(s)),
                (true, 32) if w => e.inst(&[], true, false, &[0x63], d, Rm::Reg(s)),
                _ => return None,
            },
            BPF_MUL => {
                if i.off != 0 {
                    return None;
                }
                if x {
                    e.inst(&[], w, false, &[0x0f, 0xaf], d, Rm::Reg(s));
                } else {
                    e.inst(&[], w, false, &[0x69], d, Rm::Reg(d));
                    e.imm32(i.imm);
                }
            }
            BPF_NEG => {
                if x || i.off != 0 {
                    return None;
                }
                e.inst(&[], w, false, &[0xf7], 3, Rm::Reg(d));
            }
            BPF_LSH | BPF_RSH | BPF_ARSH => {
                if i.off != 0 {
                    return None;
                }
                let ext = match code {
                    BPF_LSH => 4,
                    BPF_RSH => 5,
                    _ => 7,
                };
                if !x {
                    let n = i.imm as u32 & if w { 63 } else { 31 };
                    if n == 0 {
                        if !w {
                            e.mov(false, d, d);
                        }
                    } else {
                        e.inst(&[], w, false, &[0xc1], ext, Rm::Reg(d));
                        e.byte(n as u8);
                    }
                } else {
                    // The count must be in cl, and rcx is r4.
                    let target = if d == RCX { R9 } else { d };
                    if d == RCX {
                        e.mov(true, R9, RCX);
                    }
                    if s != RCX {
                        e.mov(true, R11, RCX);
                        e.mov(true, RCX, s);
                    }
                    e.inst(&[], w, false, &[0xd3], ext, Rm::Reg(target));
                    if s != RCX {
                        e.mov(true, RCX, R11);
                    }
                    if d == RCX {
                        e.mov(true, RCX, R9);
                    }
                    if !w {
                        // A zero count leaves the register untouched; zero-extend anyway.
                        e.mov(false, d, d);
                    }
                }
            }
            BPF_DIV | BPF_MOD => {
                if i.off != 0 && i.off != 1 {
                    return None;
                }
                self.divmod(w, i.off == 1, code == BPF_MOD, d, x.then_some(s), i.imm);
            }
            BPF_END => {
                if w && x {
                    return None;
                }
                let swap = w || x;
                match (swap, i.imm) {
                    (false, 16) => e.inst(&[], false, false, &[0x0f, 0xb7], d, Rm::Reg(d)),
                    (false, 32) => e.mov(false, d, d),
                    (false, 64) => {}
                    (true, 16) => {
                        e.inst(&[0x66], false, false, &[0xc1], 1, Rm::Reg(d)); // ror r16, 8
                        e.byte(8);
                        e.inst(&[], false, false, &[0x0f, 0xb7], d, Rm::Reg(d));
                    }
                    (true, 32 | 64) => {
                        let rex = 0x40 | ((i.imm == 64) as u8) << 3 | (d >> 3);
                        if rex != 0x40 {
                            e.byte(rex);
                        }
                        e.bytes(&[0x0f, 0xc8 + (d & 7)]);
                    }
                    _ => return None,
                }
            }
            _ => return None,
        }
        Some(())
    }

    /// Division and modulo with the eBPF edge cases. Scratch: r9, r10, r11.
    fn divmod(&mut self, w: bool, signed: bool, is_mod: bool, d: u8, src: Option<u8>, imm: i32) {
        let e = &mut self.e;
        match src {
            Some(s) => e.mov(w, R11, s),
            None => e.mov_imm(w, R11, imm),
        }
        e.rr(w, 0x85, R11, R11); // test r11, r11
        let to_zero = e.jcc(CC_E);
        let mut to_done = Vec::new();
        if signed {
            e.alu_imm(w, 7, R11, -1); // cmp r11, -1
            let normal = e.jcc(CC_NE);
            if is_mod {
                e.rr(false, 0x31, d, d);
            } else {
                e.inst(&[], w, false, &[0xf7], 3, Rm::Reg(d)); // neg
            }
            to_done.push(e.jmp());
            e.patch_rel32_here(normal);
        }
        e.mov(true, R9, RAX);
        e.mov(true, R10, RDX);
        e.mov(w, RAX, d);
        if signed {
            if w {
                e.bytes(&[0x48, 0x99]); // cqo
            } else {
                e.byte(0x99); // cdq
            }
        } else {
            e.rr(false, 0x31, RDX, RDX);
        }
        e.inst(
            &[],
            w,
            false,
            &[0xf7],
            if signed { 7 } else { 6 },
            Rm::Reg(R11),
        );
        e.mov(true, R11, if is_mod { RDX } else { RAX });
        e.mov(true, RAX, R9);
        e.mov(true, RDX, R10);
        e.mov(true, d, R11);
        to_done.push(e.jmp());
        e.patch_rel32_here(to_zero);
        if !is_mod {
            e.rr(false, 0x31, d, d);
        } else if !w {
            e.mov(false, d, d);
        }
        for j in to_done {
            e.patch_rel32_here(j);
        }
    }

    fn atomic(&mut self, i: Insn, m: Rm, s: u8) -> Option<()> {
        let w = match i.op & SIZE_MASK {
            BPF_DW => true,
            BPF_W => false,
            _ => return None,
        };
        let Rm::Mem(base, disp) = m else {
            return None;
        };
        let e = &mut self.e;
        const LOCK: &[u8] = &[0xf0];
        match i.imm {
            ATOMIC_ADD => e.inst(LOCK, w, false, &[0x01], s, m),
            ATOMIC_OR => e.inst(LOCK, w, false, &[0x09], s, m),
            ATOMIC_AND => e.inst(LOCK, w, false, &[0x21], s, m),
            ATOMIC_XOR => e.inst(LOCK, w, false, &[0x31], s, m),
            x if x == ATOMIC_ADD | ATOMIC_FETCH => e.inst(LOCK, w, false, &[0x0f, 0xc1], s, m),
            ATOMIC_XCHG => e.inst(&[], w, false, &[0x87], s, m),
            ATOMIC_CMPXCHG => {
                e.inst(LOCK, w, false, &[0x0f, 0xb1], s, m);
                if !w {
                    e.mov(false, RAX, RAX);
                }
            }
            x if matches!(x & !ATOMIC_FETCH, ATOMIC_OR | ATOMIC_AND | ATOMIC_XOR) => {
                let opc = match x & !ATOMIC_FETCH {
                    ATOMIC_OR => 0x09,
                    ATOMIC_AND => 0x21,
                    _ => 0x31,
                };
                let val = if s == RAX { R9 } else { s };
                e.mov(true, R9, RAX);
                e.lea(R10, base, disp);
                e.inst(&[], w, false, &[0x8b], RAX, Rm::Mem(R10, 0));
                let top = e.pos();
                e.mov(true, R11, RAX);
                e.rr(w, opc, R11, val);
                e.inst(LOCK, w, false, &[0x0f, 0xb1], R11, Rm::Mem(R10, 0));
                let back = e.jcc(CC_NE);
                e.patch_rel32(back, top);
                if s == RAX {
                    if !w {
                        e.mov(false, RAX, RAX);
                    }
                } else {
                    e.mov(w, s, RAX);
                    e.mov(true, RAX, R9);
                }
            }
            _ => return None,
        }
        Some(())
    }

    /// Calls a helper at an absolute address, saving vector registers when asked.
    fn call_abs(&mut self, addr: u64) {
        if self.split {
            // Once per run: the unsaved copy saves and its caller continues in the saved
            // copy, which calls with everything already in place.
            if !self.saved {
                let sub = self.save_sub();
                self.e.alu_imm(true, 5, RSP, sub);
                for x in 0..16u8 {
                    let m = Rm::Mem(RSP, x as i32 * 16);
                    self.e.inst(&[0xf3], false, false, &[0x0f, 0x7f], x, m); // movdqu
                }
            }
            self.e.mov_imm64(RAX, addr);
            self.e.bytes(&[0xff, 0xd0]); // call rax
            return;
        }
        let e = &mut self.e;
        let save = self.opts.preserve_vector_regs;
        let sub = self.frame.call_sub;
        if sub != 0 {
            // Red-zone layout: move rsp below the program's stack before anything is
            // saved or called.
            e.alu_imm(true, 5, RSP, sub);
        }
        if save {
            e.alu_imm(true, 5, RSP, 256);
            for x in 0..16u8 {
                e.inst(
                    &[0xf3],
                    false,
                    false,
                    &[0x0f, 0x7f],
                    x,
                    Rm::Mem(RSP, x as i32 * 16),
                );
            }
        }
        e.mov_imm64(RAX, addr);
        e.bytes(&[0xff, 0xd0]); // call rax
        if save {
            for x in 0..16u8 {
                e.inst(
                    &[0xf3],
                    false,
                    false,
                    &[0x0f, 0x6f],
                    x,
                    Rm::Mem(RSP, x as i32 * 16),
                );
            }
            e.alu_imm(true, 0, RSP, 256);
        }
        if sub != 0 {
            e.alu_imm(true, 0, RSP, sub);
        }
    }

    /// After the unwind helper returned: leave the whole program when `r0 == 0`.
    fn unwind_check(&mut self) {
        let e = &mut self.e;
        e.rr(true, 0x85, RAX, RAX);
        let cont = e.jcc(CC_NE);
        // In the split layout, any helper call leaves the registers saved.
        self.leave_from_anywhere(self.split);
        self.e.patch_rel32_here(cont);
    }

    /// After a helper call of the unsaved copy at `pc`: the vector registers are saved, so
    /// the run goes on in the saved copy.
    fn continue_saved(&mut self, pc: usize) {
        if self.split && !self.saved {
            self.transitions[pc] = true;
            let j = self.e.jmp();
            self.fixups
                .push((j, Target::Insn(self.transitions.len() + pc + 1)));
        }
    }

    fn call_helper(&mut self, id: u32, f: u64) {
        self.call_abs(f);
        if self.env.unwind_helper == Some(id) {
            self.unwind_check();
        }
    }

    fn jmp(
        &mut self,
        pc: usize,
        i: Insn,
        d: u8,
        s: u8,
        x: bool,
        in_main: bool,
    ) -> Result<(), JitError> {
        let bad = JitError::UnknownOpcode { pc, op: i.op };
        let class = i.class();
        let code = i.op & OP_MASK;
        let target = i.jump_target(pc).map(|t| t as usize);
        match (class, code) {
            (BPF_JMP, BPF_EXIT) => {
                if x {
                    return Err(bad);
                }
                if self.saved {
                    let j = self.e.jmp();
                    self.jump_to(j, Target::SavedEpilogue);
                } else if in_main && !self.multi {
                    // The lean epilogue is short: repeat it at every exit.
                    self.main_epilogue();
                } else if in_main {
                    let j = self.e.jmp();
                    self.jump_to(j, Target::Epilogue);
                } else {
                    self.sub_epilogue();
                }
            }
            (BPF_JMP, BPF_CALL) => {
                if x {
                    self.callx(d);
                    self.continue_saved(pc);
                } else if i.src == PSEUDO_CALL {
                    self.e.byte(0xe8);
                    self.e.imm32(0);
                    let at = self.e.pos() - 4;
                    self.jump_to(at, Target::Func(target.unwrap_or(0)));
                } else if i.src == 0 {
                    let id = i.imm as u32;
                    let f = self
                        .env
                        .helper(id)
                        .ok_or(JitError::UnknownHelper { pc, id })?;
                    let inline_off = match id {
                        HELPER_GET_ATTACH_COOKIE => Some(xcover_abi::PROBE_CTX_COOKIE_OFF),
                        HELPER_GET_FUNC_IP => Some(xcover_abi::PROBE_CTX_FUNC_IP_OFF),
                        _ => None,
                    };
                    match inline_off {
                        Some(off) if self.opts.inline_ctx_helpers => {
                            self.e
                                .inst(&[], true, false, &[0x8b], RAX, Rm::Mem(RDI, off as i32));
                        }
                        _ => {
                            // An inlined fast path falls through with r0 set; its slow
                            // cases jump to the plain helper call below.
                            let slow = if self.env.unwind_helper == Some(id) {
                                None
                            } else {
                                self.inline_helper_fast(id, f)
                            };
                            let done = slow.as_ref().map(|_| self.e.jmp());
                            for &j in slow.iter().flatten() {
                                self.e.patch_rel32_here(j);
                            }
                            self.call_helper(id, f as usize as u64);
                            self.continue_saved(pc);
                            if let Some(d) = done {
                                self.e.patch_rel32_here(d);
                            }
                        }
                    }
                } else {
                    return Err(bad);
                }
            }
            (_, BPF_JA) => {
                if x {
                    return Err(bad);
                }
                let j = self.e.jmp();
                let t = self.insn_target(target.unwrap_or(0));
                self.jump_to(j, t);
            }
            (_, BPF_CALL | BPF_EXIT) => return Err(bad),
            _ => {
                let w = class == BPF_JMP;
                let cc = match code {
                    BPF_JEQ => CC_E,
                    BPF_JNE | BPF_JSET => CC_NE,
                    BPF_JGT => 0x7,
                    BPF_JGE => 0x3,
                    BPF_JLT => 0x2,
                    BPF_JLE => 0x6,
                    BPF_JSGT => 0xf,
                    BPF_JSGE => 0xd,
                    BPF_JSLT => 0xc,
                    BPF_JSLE => 0xe,
                    _ => return Err(bad),
                };
                let e = &mut self.e;
                if code == BPF_JSET {
                    if x {
                        e.rr(w, 0x85, d, s);
                    } else {
                        e.inst(&[], w, false, &[0xf7], 0, Rm::Reg(d));
                        e.imm32(i.imm);
                    }
                } else if x {
                    e.rr(w, 0x39, d, s);
                } else {
                    e.alu_imm(w, 7, d, i.imm);
                }
                let j = e.jcc(cc);
                let t = self.insn_target(target.unwrap_or(0));
                self.jump_to(j, t);
            }
        }
        Ok(())
    }

    /// Emits the inline fast path of helper `id` when it is the standard helper and the
    /// arguments allow it, leaving `r0` in `rax`, and returns the `jcc`s to patch to the
    /// helper call that handles every other case (with the arguments `r1`..`r3` untouched:
    /// the fast path only writes `rax`, `rcx`, `r8`..`r11` before its last branch). `None`
    /// (nothing emitted) when the helper is called as usual.
    fn inline_helper_fast(&mut self, id: u32, f: crate::env::HelperFn) -> Option<Vec<usize>> {
        use crate::env::HelperFn;
        use crate::helpers as h;
        let is = |g: HelperFn| core::ptr::fn_addr_eq(f, g);
        match id {
            h::RINGBUF_RESERVE if is(h::ringbuf_reserve) => self.inline_ringbuf_reserve(),
            h::RINGBUF_SUBMIT if is(h::ringbuf_submit) => self.inline_ringbuf_submit(),
            h::GET_CURRENT_PID_TGID if is(h::get_current_pid_tgid) => self.inline_pid_tgid(),
            h::KTIME_GET_NS if is(h::ktime_get_ns) => {
                self.inline_vdso_clock(xcover_rt::CLOCK_MONOTONIC)
            }
            h::KTIME_GET_COARSE_NS if is(h::ktime_get_coarse_ns) => {
                self.inline_vdso_clock(xcover_rt::CLOCK_MONOTONIC_COARSE)
            }
            _ => None,
        }
    }

    /// `bpf_ringbuf_reserve(map, size, flags)` on a known RINGBUF, the common case of
    /// [`crate::maps::ringbuf_reserve`]: `flags == 0`, the record fits before the end of
    /// the data area (no padding record), the buffer has room, and the compare-and-swap of
    /// `producer_pos` wins. Then the busy header is stored and `r0` is the payload. A full
    /// buffer, padding, a lost race or bad arguments go to the helper (which counts drops).
    fn inline_ringbuf_reserve(&mut self) -> Option<Vec<usize>> {
        use crate::maps::{MapHeader, RINGBUF_BUSY_BIT, RINGBUF_HDR_SZ};
        let Known::Map(idx) = self.known[1] else {
            return None;
        };
        let m = self.env.map_inline.get(idx as usize).copied().flatten()?;
        let hdr = *self.env.map_addrs.get(idx as usize)?;
        let cap = m.ring_size;
        if m.kind != InlineKind::Ringbuf || !cap.is_power_of_two() || !(16..=1 << 30).contains(&cap)
        {
            return None;
        }
        let data_off = i32::try_from(m.values_addr.checked_sub(hdr)?).ok()?;
        let prod = core::mem::offset_of!(MapHeader, producer_pos) as i32;
        let cons = core::mem::offset_of!(MapHeader, consumer_pos) as i32;
        let e = &mut self.e;
        let mut slow = Vec::new();
        // rdi = map header, rsi = size, rdx = flags.
        e.rr(true, 0x85, RDX, RDX); // test rdx, rdx
        slow.push(e.jcc(CC_NE));
        e.alu_imm(true, 7, RSI, (cap - RINGBUF_HDR_SZ) as i32); // cmp rsi, cap - 8
        slow.push(e.jcc(CC_A));
        e.lea(R11, RSI, RINGBUF_HDR_SZ as i32 + 7);
        e.alu_imm(true, 4, R11, -8); // r11 = len = round8(size + 8)
        e.load(true, RAX, RDI, prod); // rax = producer_pos
        e.load(true, R10, RDI, cons); // r10 = consumer_pos
        e.mov(true, R9, RAX);
        e.alu_imm(true, 4, R9, (cap - 1) as i32); // r9 = idx
        e.lea_sib(RCX, R9, R11, 1);
        e.alu_imm(true, 7, RCX, cap as i32); // idx + len > cap: needs a padding record
        slow.push(e.jcc(CC_A));
        e.lea_sib(RCX, RAX, R11, 1);
        e.rr(true, 0x29, RCX, R10); // sub rcx, r10
        e.alu_imm(true, 7, RCX, cap as i32); // prod + len - cons > cap: full
        slow.push(e.jcc(CC_A));
        e.lea_sib(RCX, RAX, R11, 1);
        e.inst(&[0xf0], true, false, &[0x0f, 0xb1], RCX, Rm::Mem(RDI, prod)); // lock cmpxchg
        slow.push(e.jcc(CC_NE));
        e.lea(R9, R9, data_off); // r9 = record header's offset from the map header
        e.mov(true, RCX, R9);
        e.shift_imm(4, RCX, 32);
        e.mov(false, RAX, RSI);
        e.alu_imm(false, 1, RAX, RINGBUF_BUSY_BIT as i32); // or eax, BUSY (zero-extends)
        e.rr(true, 0x09, RAX, RCX); // rax = (off << 32) | BUSY | size
        e.lea_sib(RCX, RDI, R9, 1);
        e.store(RCX, 0, RAX); // a plain store is a release store on x86
        e.lea(RAX, RCX, RINGBUF_HDR_SZ as i32);
        Some(slow)
    }

    /// `bpf_ringbuf_submit(data, flags)` for a record of one of the program's inlinable
    /// ring buffers, the common case of [`crate::maps::ringbuf_commit`]: wakeup flags only,
    /// an aligned pointer whose header leads back to one of those maps. Clears the busy bit
    /// with a release store and sets `r0 = 0`; anything else goes to the helper.
    fn inline_ringbuf_submit(&mut self) -> Option<Vec<usize>> {
        use crate::maps::{RINGBUF_BUSY_BIT, RINGBUF_HDR_SZ};
        let rings: Vec<u64> = self
            .env
            .map_inline
            .iter()
            .zip(self.env.map_addrs)
            .filter(|(m, _)| m.is_some_and(|m| m.kind == InlineKind::Ringbuf))
            .map(|(_, &a)| a)
            .collect();
        if rings.is_empty() || rings.len() > 4 {
            return None;
        }
        let e = &mut self.e;
        let mut slow = Vec::new();
        // rdi = data, rsi = flags.
        e.inst(&[], true, false, &[0xf7], 0, Rm::Reg(RSI)); // test rsi, !3
        e.imm32(!3);
        slow.push(e.jcc(CC_NE));
        e.inst(&[], false, false, &[0xf7], 0, Rm::Reg(RDI)); // test edi, 7
        e.imm32(7);
        slow.push(e.jcc(CC_NE));
        e.alu_imm(true, 7, RDI, RINGBUF_HDR_SZ as i32); // cmp rdi, 8
        slow.push(e.jcc(CC_B));
        let h = -(RINGBUF_HDR_SZ as i32);
        e.load(true, R9, RDI, h); // r9 = header word
        e.mov(true, R10, R9);
        e.shift_imm(5, R10, 32); // r10 = back
        e.rr(true, 0x85, R10, R10);
        slow.push(e.jcc(CC_E));
        e.lea(R11, RDI, h);
        e.rr(true, 0x29, R11, R10); // r11 = the map header it names (wraps if bogus)
        let mut found = Vec::new();
        for (n, &a) in rings.iter().enumerate() {
            e.mov_imm64(RAX, a);
            e.rr(true, 0x39, R11, RAX); // cmp r11, rax
            if n + 1 == rings.len() {
                slow.push(e.jcc(CC_NE));
            } else {
                found.push(e.jcc(CC_E));
            }
        }
        for j in found {
            e.patch_rel32_here(j);
        }
        let busy = RINGBUF_BUSY_BIT.trailing_zeros() as u8;
        e.inst(&[], true, false, &[0x0f, 0xba], 6, Rm::Reg(R9)); // btr r9, busy
        e.byte(busy);
        e.store(RDI, h, R9); // release store
        e.rr(false, 0x31, RAX, RAX);
        Some(slow)
    }

    /// `bpf_ktime_get_ns` / `bpf_ktime_get_coarse_ns`: a direct call of the vDSO's
    /// `clock_gettime(clock)`, which leaves the vector registers alone (checked by
    /// [`xcover_rt::vdso_clock_gettime_without_vector_regs`]), so neither the save of
    /// `xmm0`-`xmm15` nor the helper's wrapper is needed; the helper (which falls back to the
    /// system call) only runs if the vDSO call fails.
    fn inline_vdso_clock(&mut self, clock: usize) -> Option<Vec<usize>> {
        let f = xcover_rt::vdso_clock_gettime_without_vector_regs(clock as u32)?;
        // Below the red-zone stack (as any call), plus a timespec; rsp stays 16-aligned.
        let sub = if self.saved { 0 } else { self.frame.call_sub } + 16;
        let e = &mut self.e;
        e.lea(RSP, RSP, -sub);
        e.mov_imm(false, RDI, clock as i32);
        e.mov(true, RSI, RSP);
        e.mov_imm64(RAX, f);
        e.bytes(&[0xff, 0xd0]); // call rax
        e.load(true, RCX, RSP, 0); // tv_sec
        e.load(true, RDX, RSP, 8); // tv_nsec
        e.lea(RSP, RSP, sub);
        e.rr(false, 0x85, RAX, RAX);
        let slow = vec![e.jcc(CC_NE)];
        e.inst(&[], true, false, &[0x69], RAX, Rm::Reg(RCX)); // imul rax, rcx, 1e9
        e.imm32(1_000_000_000);
        e.rr(true, 0x01, RAX, RDX); // add rax, rdx
        Some(slow)
    }

    /// `bpf_get_current_pid_tgid()`: the tid from the TCB at [`Env::tcb_tid`] when set,
    /// else from the cache of [`xcover_rt::gettid_cached`] (see
    /// [`xcover_rt::TidCacheLayout`]; the home slot only), and the pid from
    /// [`xcover_rt::getpid_cached`]'s. A tid of 0, a miss, a stale entry or no pid yet goes
    /// to the helper.
    fn inline_pid_tgid(&mut self) -> Option<Vec<usize>> {
        if let Some(off) = self.env.tcb_tid {
            let e = &mut self.e;
            let mut slow = Vec::new();
            e.load32_fs(RAX, off); // eax = the TCB's tid
            e.rr(false, 0x85, RAX, RAX);
            slow.push(e.jcc(CC_E));
            e.mov_imm64(R11, xcover_rt::pid_cache_addr());
            e.load(false, R11, R11, 0); // r11d = cached pid
            e.rr(false, 0x85, R11, R11);
            slow.push(e.jcc(CC_E));
            e.shift_imm(4, R11, 32);
            e.rr(true, 0x09, RAX, R11); // rax = pid << 32 | tid
            return Some(slow);
        }
        let l = xcover_rt::tid_cache_layout()?;
        if !l.nslots.is_power_of_two() || l.slots == 0 || l.pid == 0 {
            return None;
        }
        let e = &mut self.e;
        let mut slow = Vec::new();
        e.rdfsbase(R9);
        e.rr(true, 0x85, R9, R9);
        slow.push(e.jcc(CC_E));
        let [s0, s1, s2] = l.shifts;
        e.mov(true, R10, R9);
        e.shift_imm(5, R10, s0);
        for s in [s1, s2] {
            e.mov(true, R11, R9);
            e.shift_imm(5, R11, s);
            e.rr(true, 0x31, R10, R11); // xor r10, r11
        }
        e.alu_imm(false, 4, R10, (l.nslots - 1) as i32); // and r10d, nslots - 1
        e.inst(&[], true, false, &[0x69], R10, Rm::Reg(R10)); // imul r10, r10, slot_size
        e.imm32(l.slot_size as i32);
        e.mov_imm64(R11, l.slots);
        e.rr(true, 0x01, R10, R11); // r10 = home slot
        e.inst(
            &[],
            true,
            false,
            &[0x3b],
            R9,
            Rm::Mem(R10, l.key_off as i32),
        ); // cmp r9, key
        slow.push(e.jcc(CC_NE));
        e.load(false, RAX, R10, l.tid_off as i32); // eax = cached tid
        e.rr(false, 0x85, RAX, RAX);
        slow.push(e.jcc(CC_E));
        // The entry is trusted only while glibc's TCB holds the same tid.
        e.inst(
            &[],
            false,
            false,
            &[0x3b],
            RAX,
            Rm::Mem(R9, l.tcb_tid_off as i32),
        );
        slow.push(e.jcc(CC_NE));
        e.mov_imm64(R11, l.pid);
        e.load(false, R11, R11, 0); // r11d = cached pid
        e.rr(false, 0x85, R11, R11);
        slow.push(e.jcc(CC_E));
        e.shift_imm(4, R11, 32);
        e.rr(true, 0x09, RAX, R11); // rax = pid << 32 | tid
        Some(slow)
    }

    /// `callx`: the register holds a helper id; dispatch over the [`Env`]'s helpers. An id
    /// the `Env` does not have ends the program with `r0 = 0`.
    fn callx(&mut self, d: u8) {
        let mut done = Vec::new();
        for &(id, f) in self.env.helpers {
            // cmp d, id  (ids are small; compare the full 64 bits)
            if id > i32::MAX as u32 {
                continue;
            }
            self.e.alu_imm(true, 7, d, id as i32);
            let next = self.e.jcc(CC_NE);
            self.call_helper(id, f as usize as u64);
            done.push(self.e.jmp());
            self.e.patch_rel32_here(next);
        }
        self.e.rr(false, 0x31, RAX, RAX);
        self.leave_from_anywhere(self.split && self.saved);
        for j in done {
            self.e.patch_rel32_here(j);
        }
    }
}

/// Whether straight-line code from `pc` writes `reg` before anything reads it (so its value
/// at `pc` is dead). Conservative: a branch, call or exit, or more than 8 instructions,
/// count as a use.
fn overwritten_before_use(insns: &[Insn], pc: usize, reg: u8) -> bool {
    for i in insns.iter().skip(pc).take(8) {
        let class = i.class();
        let x = i.op & SRC_MASK == BPF_X;
        let reads = match class {
            BPF_ALU | BPF_ALU64 => {
                (x && i.src == reg) || (i.dst == reg && i.op & OP_MASK != BPF_MOV)
            }
            BPF_LDX => i.src == reg,
            BPF_ST => i.dst == reg,
            BPF_STX => i.dst == reg || i.src == reg,
            BPF_LD => !i.is_lddw(),
            _ => return false,
        };
        if reads {
            return false;
        }
        if i.dst == reg && matches!(class, BPF_ALU | BPF_ALU64 | BPF_LDX | BPF_LD) {
            return true;
        }
    }
    false
}
