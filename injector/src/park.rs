//! The park: where a thread borrowed for remote work waits, and how it gets home on its own
//! when xcover dies.
//!
//! A borrowed thread runs our code with our registers, on our stack. If xcover is killed
//! (SIGKILL, OOM killer) while it does, the kernel detaches every thread and lets it run on:
//! without a way back, the borrowed thread would execute whatever comes after our code and
//! take the target down. So every remote operation starts and ends in a small piece of code
//! we place in the target (the *park*), followed by a *block* holding everything the thread
//! needs to become itself again: its registers (with an interrupted system call already
//! rewound for restart, as the kernel would), its x87/SSE state, its signal mask and the
//! signals we held back from it.
//!
//! ```text
//! +0   syscall                 remote system calls run here (under PTRACE_SYSCALL)
//!      jmp HOME
//! RET: result, done = 1        remote calls return here
//! WAIT: sleep up to 1 s        xcover stops the thread here with PTRACE_INTERRUPT
//! HOME: fxrstor, requeue the held signals, restore the signal mask, rflags, every general
//!      register, rsp, and jump to the thread's own rip
//! ```
//!
//! While xcover lives, a thread never reaches `HOME` by itself: xcover catches the system
//! call's exit stop, or sees `done` and stops the thread in the wait, and parks it at
//! `HOME` (stopped) between operations; on release xcover restores the same state through
//! ptrace. If xcover dies at any point in between, the thread simply runs on into `HOME`
//! (after at most the wait's one second) and resumes its own code as if it had never been
//! stopped. No single-step is ever used (a trap flag left behind by a dead tracer would
//! kill the target with SIGTRAP).
//!
//! There are two parks. The first lives in the unused tail of the target's vDSO (written
//! through `/proc/<pid>/mem`, which gives the process a private copy of that page; the
//! bytes are put back on release): it exists before we have mapped anything and after we
//! have unmapped everything, so even the first `mmap` and the last `munmap` of a stop are
//! covered. It serves system calls only, parking the thread just below its red zone. The
//! second, in the scratch memory with a private stack and the writable `done`/result
//! fields, serves remote calls. A vDSO without room for a park (none seen so far) falls
//! back to a bare `syscall` instruction of the vDSO, unprotected for that one call.

use crate::sys::{FpRegs, Regs, SigInfo};

/// Size of the park's code; its block follows at this offset.
pub(crate) const CODE_SIZE: usize = 0x140;

// The block (offsets from its start): what the thread needs to go home, read-only to it.
const WR: usize = 0x00; // address of the writable fields below
const MASK: usize = 0x08;
const NSIG: usize = 0x10;
const PID: usize = 0x18;
const TID: usize = 0x20;
const GPR: usize = 0x28; // rax rbx rcx rdx rsi rdi rbp r8 .. r15
const RSP: usize = 0xa0;
const RIP: usize = 0xa8;
const RFLAGS: usize = 0xb0;
const FX: usize = 0xc0;
const SIGINFO: usize = 0x2c0;
/// Held signals a park in its own page can hand back by itself (one in the vDSO's).
pub(crate) const MAX_SIGS: usize = 8;

// The writable fields (a separate, writable page for a call park): offsets from `WR`.
const DONE: usize = 0x00;
const RESULT: usize = 0x08;
const TIMEOUT: usize = 0x10;

/// Bytes a park needs for its code and block with room for `sigs` held signals.
pub(crate) const fn size_for(sigs: usize) -> usize {
    CODE_SIZE + SIGINFO + 128 * sigs
}

/// How long a thread waits in the park for xcover before it goes home alone.
const WAIT_SECS: u64 = 1;
/// Size of the writable fields: `done`, the result and the wait's `timeval` (the kernel
/// writes back the time left); reset before each call.
pub(crate) const WAIT_FIELDS: usize = TIMEOUT + 16;

/// The writable fields as they must be when a call starts.
pub(crate) fn wait_fields() -> [u8; WAIT_FIELDS] {
    let mut b = [0u8; WAIT_FIELDS];
    b[TIMEOUT..TIMEOUT + 8].copy_from_slice(&WAIT_SECS.to_le_bytes());
    b
}

const _: () = assert!(std::mem::size_of::<FpRegs>() == 512);
const _: () = assert!(std::mem::size_of::<SigInfo>() == 128);
const _: () = assert!(size_for(MAX_SIGS) <= 4096);
const _: () = assert!((CODE_SIZE + FX).is_multiple_of(16));

std::arch::global_asm!(
    ".pushsection .rodata.xcover_park,\"a\",@progbits",
    ".balign 64",
    ".globl xcover_park_code",
    ".hidden xcover_park_code",
    "xcover_park_code:",
    ".Lxpk_base:",
    "syscall",
    // After a remote system call: only reached when xcover is gone.
    "jmp .Lxpk_home",
    ".Lxpk_ret:",
    "mov r11, qword ptr [rip + .Lxpk_base + {blk} + {wr}]",
    "mov qword ptr [r11 + {result}], rax",
    "mov dword ptr [r11 + {done}], 1",
    ".Lxpk_wait:",
    // select(0, 0, 0, 0, &timeout): a plain timed sleep. Not a futex or nanosleep: those
    // keep their restart state in the thread's restart block, where the system call the
    // thread was stopped in (a nanosleep) may have its own.
    "xor edi, edi",
    "xor esi, esi",
    "xor edx, edx",
    "xor r10d, r10d",
    "lea r8, [r11 + {timeout}]",
    "mov eax, 23", // select
    "syscall",
    // A thread stopped inside the wait has its rip here, still short of HOME.
    "nop",
    ".Lxpk_home:",
    "fxrstor64 [rip + .Lxpk_base + {blk} + {fx}]",
    "lea rbx, [rip + .Lxpk_base + {blk} + {siginfo}]",
    "mov r12, qword ptr [rip + .Lxpk_base + {blk} + {nsig}]",
    ".Lxpk_sig:",
    "test r12, r12",
    "jz .Lxpk_mask",
    "mov rdi, qword ptr [rip + .Lxpk_base + {blk} + {pid}]",
    "mov rsi, qword ptr [rip + .Lxpk_base + {blk} + {tid}]",
    "mov edx, dword ptr [rbx]",
    "mov r10, rbx",
    "mov eax, 297", // rt_tgsigqueueinfo, to itself: the original siginfo is kept
    "syscall",
    "add rbx, 128",
    "dec r12",
    "jmp .Lxpk_sig",
    ".Lxpk_mask:",
    "mov edi, 2", // SIG_SETMASK
    "lea rsi, [rip + .Lxpk_base + {blk} + {mask}]",
    "xor edx, edx",
    "mov r10d, 8",
    "mov eax, 14", // rt_sigprocmask
    "syscall",
    "push qword ptr [rip + .Lxpk_base + {blk} + {rflags}]",
    "popfq",
    "mov rax, qword ptr [rip + .Lxpk_base + {blk} + {gpr} + 0]",
    "mov rbx, qword ptr [rip + .Lxpk_base + {blk} + {gpr} + 8]",
    "mov rcx, qword ptr [rip + .Lxpk_base + {blk} + {gpr} + 16]",
    "mov rdx, qword ptr [rip + .Lxpk_base + {blk} + {gpr} + 24]",
    "mov rsi, qword ptr [rip + .Lxpk_base + {blk} + {gpr} + 32]",
    "mov rdi, qword ptr [rip + .Lxpk_base + {blk} + {gpr} + 40]",
    "mov rbp, qword ptr [rip + .Lxpk_base + {blk} + {gpr} + 48]",
    "mov r8, qword ptr [rip + .Lxpk_base + {blk} + {gpr} + 56]",
    "mov r9, qword ptr [rip + .Lxpk_base + {blk} + {gpr} + 64]",
    "mov r10, qword ptr [rip + .Lxpk_base + {blk} + {gpr} + 72]",
    "mov r11, qword ptr [rip + .Lxpk_base + {blk} + {gpr} + 80]",
    "mov r12, qword ptr [rip + .Lxpk_base + {blk} + {gpr} + 88]",
    "mov r13, qword ptr [rip + .Lxpk_base + {blk} + {gpr} + 96]",
    "mov r14, qword ptr [rip + .Lxpk_base + {blk} + {gpr} + 104]",
    "mov r15, qword ptr [rip + .Lxpk_base + {blk} + {gpr} + 112]",
    "mov rsp, qword ptr [rip + .Lxpk_base + {blk} + {rsp}]",
    "jmp qword ptr [rip + .Lxpk_base + {blk} + {rip}]",
    ".Lxpk_end:",
    ".org .Lxpk_base + {blk}, 0xcc",
    ".balign 8",
    ".globl xcover_park_offsets",
    ".hidden xcover_park_offsets",
    "xcover_park_offsets:",
    ".quad .Lxpk_ret - .Lxpk_base",
    ".quad .Lxpk_wait - .Lxpk_base",
    ".quad .Lxpk_home - .Lxpk_base",
    ".quad .Lxpk_end - .Lxpk_base",
    ".popsection",
    blk = const CODE_SIZE,
    wr = const WR,
    done = const DONE,
    result = const RESULT,
    timeout = const TIMEOUT,
    mask = const MASK,
    nsig = const NSIG,
    pid = const PID,
    tid = const TID,
    gpr = const GPR,
    rsp = const RSP,
    rip = const RIP,
    rflags = const RFLAGS,
    fx = const FX,
    siginfo = const SIGINFO,
);

// SAFETY: both symbols are defined by the `global_asm!` above, in a read-only section, with
// exactly these sizes (`.org` pads the code to CODE_SIZE bytes and fails the build if it
// is longer); nothing ever writes them.
unsafe extern "C" {
    safe static xcover_park_code: [u8; CODE_SIZE];
    safe static xcover_park_offsets: [u64; 4];
}

/// The park's machine code, to be copied to the start of a page of the target.
pub(crate) fn code() -> &'static [u8; CODE_SIZE] {
    &xcover_park_code
}

/// Where in the park a thread is, from its instruction pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Spot {
    /// Not in the park.
    Outside,
    /// Returned from a remote call and waiting for xcover (`RET` up to `HOME`).
    Waiting,
    /// On its way home (`HOME` and after): xcover was too slow or is gone.
    Going,
    /// At the park's `syscall` (before `RET`).
    Syscall,
}

/// A park placed in the target.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Park {
    /// The thread it serves.
    pub(crate) tid: i32,
    /// Address of the park's code (16-byte aligned); its block follows the code.
    pub(crate) code: u64,
    /// Where the writable fields are (0 for a park that serves system calls only).
    pub(crate) wr: u64,
    /// The stack the thread is parked on (16-byte aligned; the way home pushes one word).
    pub(crate) stack: u64,
    /// Held signals its block has room for.
    pub(crate) sigs: usize,
}

impl Park {
    /// Address of the park's `syscall` instruction.
    pub(crate) fn syscall_at(&self) -> u64 {
        self.code
    }
    /// Address remote calls return to.
    pub(crate) fn ret_at(&self) -> u64 {
        self.code + xcover_park_offsets[0]
    }
    /// Address of the way home.
    pub(crate) fn home_at(&self) -> u64 {
        self.code + xcover_park_offsets[2]
    }
    /// Address of the block.
    pub(crate) fn block(&self) -> u64 {
        self.code + CODE_SIZE as u64
    }
    /// Address of the `done` word.
    pub(crate) fn done_at(&self) -> u64 {
        self.wr + DONE as u64
    }
    /// Address of the result of the last remote call.
    pub(crate) fn result_at(&self) -> u64 {
        self.wr + RESULT as u64
    }

    /// Where `rip` is in the park.
    pub(crate) fn spot(&self, rip: u64) -> Spot {
        let off = match rip.checked_sub(self.code) {
            Some(o) if o < xcover_park_offsets[3] => o,
            _ => return Spot::Outside,
        };
        if off < xcover_park_offsets[0] {
            Spot::Syscall
        } else if off < xcover_park_offsets[2] {
            Spot::Waiting
        } else {
            Spot::Going
        }
    }

    /// The registers a thread is parked with between remote operations: at `HOME`, on the
    /// park's stack, so that if xcover dies now the thread goes straight home.
    pub(crate) fn idle_regs(&self, orig: &Regs) -> Regs {
        let mut r = *orig;
        r.rip = self.home_at();
        r.rsp = self.stack;
        r.orig_rax = u64::MAX;
        r.eflags &= !0x100; // TF
        r
    }

    /// The block for the thread, stopped in `pid` with registers `regs`, x87/SSE state
    /// `fp`, signal mask `mask` and held signals `sigs` (as many as it has room for).
    pub(crate) fn block_bytes(
        &self,
        pid: i32,
        regs: &Regs,
        fp: &FpRegs,
        mask: u64,
        sigs: &[SigInfo],
    ) -> Vec<u8> {
        let n = sigs.len().min(self.sigs);
        let mut b = vec![0u8; SIGINFO + 128 * n];
        let mut put = |off: usize, v: u64| b[off..off + 8].copy_from_slice(&v.to_le_bytes());
        let r = resume_regs(regs);
        put(WR, self.wr);
        put(MASK, mask);
        put(NSIG, n as u64);
        put(PID, pid as u64);
        put(TID, self.tid as u64);
        let gprs = [
            r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.r8, r.r9, r.r10, r.r11, r.r12,
            r.r13, r.r14, r.r15,
        ];
        for (i, v) in gprs.into_iter().enumerate() {
            put(GPR + 8 * i, v);
        }
        put(RSP, r.rsp);
        put(RIP, r.rip);
        put(RFLAGS, r.eflags);
        b[FX..FX + 512].copy_from_slice(fp_bytes(fp));
        for (i, si) in sigs.iter().take(n).enumerate() {
            let at = SIGINFO + 128 * i;
            b[at..at + 128].copy_from_slice(si_bytes(si));
        }
        b
    }
}

/// The registers a thread resumes with on its own, from the ones it was stopped with: a
/// system call it was interrupted in is rewound to run again, as the kernel does on
/// release when no handler runs (`-ERESTART_RESTARTBLOCK` becomes `restart_syscall`).
fn resume_regs(r: &Regs) -> Regs {
    let mut r = *r;
    if (r.orig_rax as i64) >= 0 {
        match r.rax as i64 {
            -514..=-512 => {
                r.rax = r.orig_rax;
                r.rip -= 2;
            }
            -516 => {
                r.rax = 219;
                r.rip -= 2;
            }
            _ => {}
        }
    }
    r
}

fn fp_bytes(fp: &FpRegs) -> &[u8] {
    // SAFETY: user_fpregs_struct is plain integers (the FXSAVE image), 512 bytes, no padding.
    unsafe { std::slice::from_raw_parts(fp as *const FpRegs as *const u8, 512) }
}

fn si_bytes(si: &SigInfo) -> &[u8] {
    // SAFETY: siginfo_t is plain old data, 128 bytes; viewing it as bytes is sound.
    unsafe { std::slice::from_raw_parts(si as *const SigInfo as *const u8, 128) }
}
