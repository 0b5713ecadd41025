//! The x86-64 JIT.
//!
//! [`compile`] turns a verified program into position-independent machine code callable as
//! `extern "C" fn(r1: u64, r2: u64) -> u64`: jumps inside the code are pc-relative and helpers
//! are called through absolute addresses (`mov rax, imm64; call rax`), so the bytes can be
//! copied anywhere (another process included) and run there. It only emits bytes, through
//! the x86-64 encoder it shares with the interceptor's trampolines ([`xcover_x86::Writer`]);
//! [`crate::exec`] maps them locally.
//!
//! # Parts
//!
//! One [`compile`] is a state (`Compiler`, here) and three concerns that share it, each in
//! its own module with its design notes and invariants:
//!
//! - `frame`: frame planning. Which eBPF register lives in which x86 register, the main
//!   frame (callee-saved pushes, `rbp` or `rsp`-relative stack, the red-zone layout),
//!   local functions' frames, prologues and epilogues, and the vector-save plan of
//!   [`JitOptions::preserve_vector_regs`] (an *unsaved* and a *saved* copy of the main
//!   function, so `xmm0`–`xmm15` are saved at most once per run); helper calls.
//! - `pass`: the compile pass. Finds function entries and jump targets, emits each copy
//!   instruction by instruction while tracking what is known about registers (deferred
//!   map and stack addresses), and patches jumps once every offset is known; `select`
//!   holds the instruction selection per eBPF opcode.
//! - `inline`: inlined helpers. Array lookups ([`crate::env::InlineMap`]), the context
//!   helpers ([`JitOptions::inline_ctx_helpers`]) and the common case of
//!   `bpf_ringbuf_reserve`/`submit`, `bpf_get_current_pid_tgid` and `bpf_ktime_get_ns`,
//!   each falling back to the plain helper call for every case it does not handle, so
//!   the result is always the helper's.
//!
//! Edge semantics (division by zero, `INT_MIN / -1`, shift masking, 32-bit
//! zero-extension) match [`crate::interp`] exactly.

mod frame;
mod inline;
mod pass;
mod select;

use pass::compile_pass;

use frame::Frame;
use inline::Cold;

use alloc::vec::Vec;

use xcover_x86::Writer as Emitter;
use xcover_x86::modrm::*;

use crate::env::Env;
use crate::insn::*;

/// Helper id of `bpf_get_func_ip`.
pub const HELPER_GET_FUNC_IP: u32 = 173;
/// Helper id of `bpf_get_attach_cookie`.
pub const HELPER_GET_ATTACH_COOKIE: u32 = 174;

/// How to compile, and the CPU features the code may use.
///
/// `Default` asks for nothing and assumes only baseline x86-64 (no `rdpid`, no
/// `rdfsbase`): the code then runs on any x86-64 CPU, calling the helper where a faster
/// instruction would do. [`JitOptions::for_this_cpu`] fills the CPU features from the
/// machine it runs on, which is right when the code will run on that same machine (the
/// agent JIT-compiles the probe inside the target, so it fills them from `xcover_rt`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JitOptions {
    /// Save and restore `xmm0`–`xmm15` around every helper call that is not inlined (the
    /// trampoline calling the probe then needs no vector save on its hot path).
    pub preserve_vector_regs: bool,
    /// Inline `bpf_get_attach_cookie` and `bpf_get_func_ip` (when the [`Env`] registers
    /// them) as loads from the [`xcover_session::ProbeCtx`] in `r1`.
    pub inline_ctx_helpers: bool,
    /// The CPU has `rdpid` ([`xcover_rt::CpuIdMethod::Rdpid`]): PERCPU_ARRAY lookups are
    /// inlined even when the [`Env`] gives no rseq CPU number, and a thread without rseq
    /// takes `rdpid`'s. `false` never emits `rdpid`.
    pub rdpid: bool,
    /// User space may run `rdfsbase` (CPU support and the kernel's `HWCAP2_FSGSBASE`,
    /// [`xcover_rt::auxv::Auxv::fsgsbase`]): `bpf_get_current_pid_tgid` is inlined from the tid
    /// cache when the [`Env`] gives no TCB offset. `false` never emits `rdfsbase`.
    pub fsgsbase: bool,
}

impl JitOptions {
    /// No option set, with the CPU features of the machine this runs on (from
    /// `xcover_rt`'s detection): for code that will run here.
    pub fn for_this_cpu() -> Self {
        JitOptions {
            rdpid: xcover_rt::cpu_id_method() == xcover_rt::CpuIdMethod::Rdpid,
            fsgsbase: xcover_rt::auxv::auxv().fsgsbase,
            ..JitOptions::default()
        }
    }
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

/// eBPF register -> x86 register.
const MAP: [u8; 11] = [RAX, RDI, RSI, RDX, RCX, R8, RBX, R13, R14, R15, RBP];

/// The x86 register of eBPF register `r`. Every instruction's registers are checked to be
/// at most `r10` before it is compiled ([`JitError::BadRegister`]); a larger number, never
/// passed, gives the scratch `r11`.
fn x86(r: u8) -> u8 {
    MAP.get(r as usize).copied().unwrap_or(R11)
}

/// `v[i]`, false past the end (the compile pass's per-instruction flags have a slot for
/// every instruction and one past the last).
fn flag(v: &[bool], i: usize) -> bool {
    v.get(i).copied().unwrap_or(false)
}

/// `v[i] = x`, nothing past the end (see [`flag`]).
fn set<T>(v: &mut [T], i: usize, x: T) {
    if let Some(s) = v.get_mut(i) {
        *s = x;
    }
}

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

/// The state of one compilation, shared by the `frame`, `pass`, `select` and `inline` parts.
struct Compiler<'a> {
    e: Emitter,
    env: &'a Env<'a>,
    opts: &'a JitOptions,
    /// Jumps and calls to patch once the offsets of their targets are known.
    fixups: Vec<(usize, Target)>,
    frame: Frame,
    /// Whether the program has local functions (then the classic layout is used).
    multi: bool,
    regs: Regs,
    stack: StackUse,
    vsave: VectorSave,
    /// Cold stubs of inlined lookups, emitted after the epilogue.
    cold: Vec<Cold>,
}

/// What the compiler knows about the eBPF registers in straight-line code.
struct Regs {
    known: [Known; 11],
    /// Registers whose [`Known`] value has not been written to the x86 register yet.
    pending: [bool; 11],
    /// Registers are being written for a helper call: `r1`..`r5` stack addresses are
    /// helper arguments (bounded by the verifier to `[addr, r10)`).
    for_call: bool,
}

impl Regs {
    fn new() -> Self {
        Regs {
            known: [Known::No; 11],
            pending: [false; 11],
            for_call: false,
        }
    }

    /// What is known about eBPF register `r` (nothing past `r10`).
    fn known(&self, r: u8) -> Known {
        self.known.get(r as usize).copied().unwrap_or(Known::No)
    }

    /// Whether `r` holds a known value not yet written to its x86 register.
    fn pending(&self, r: u8) -> bool {
        flag(&self.pending, r as usize)
    }
}

/// How far the program reaches into its stack: decides whether the red-zone layout fits.
#[derive(Default)]
struct StackUse {
    /// Lowest `r10` offset the program reaches directly (memory operands, helper and key
    /// pointers).
    low: i32,
    /// A stack address went somewhere the compiler cannot bound (a register kept past a
    /// helper call, a store, arithmetic, a jump).
    escapes: bool,
}

/// The vector-save plan: which copy of the main function is being emitted (see `frame`).
struct VectorSave {
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
///
/// Pure: the CPU features the code may use come from `opts` ([`JitOptions::rdpid`],
/// [`JitOptions::fsgsbase`]), never from the machine `compile` runs on.
pub fn compile(insns: &[Insn], env: &Env, opts: &JitOptions) -> Result<Vec<u8>, JitError> {
    let (code, red_zone_ok) = compile_pass(insns, env, opts, false)?;
    if !red_zone_ok {
        return Ok(code);
    }
    Ok(compile_pass(insns, env, opts, true)?.0)
}
