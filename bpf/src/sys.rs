//! Raw Linux x86-64 system calls and CPU-id instructions, with no libc.
//!
//! The agent that runs maps and helpers inside the target imports no symbol at all, so this is
//! the one module of the crate that talks to the kernel: a handful of `syscall` wrappers built
//! on inline assembly, each returning the kernel's raw result (a negative errno on failure),
//! plus [`cpu_id`], the hot-path "which CPU am I on" used to index per-CPU maps.
//!
//! Every function here is safe to call: the ones taking pointers are `unsafe` and say what
//! they need. A bad user pointer given to the kernel yields `-EFAULT`, never a crash.

use core::arch::asm;
use core::sync::atomic::{AtomicU8, Ordering};

/// `EPERM`.
pub const EPERM: i64 = 1;
/// `ENOENT`.
pub const ENOENT: i64 = 2;
/// `ESRCH`.
pub const ESRCH: i64 = 3;
/// `E2BIG`.
pub const E2BIG: i64 = 7;
/// `EAGAIN`.
pub const EAGAIN: i64 = 11;
/// `ENOMEM`.
pub const ENOMEM: i64 = 12;
/// `EFAULT`.
pub const EFAULT: i64 = 14;
/// `EBUSY`.
pub const EBUSY: i64 = 16;
/// `EEXIST`.
pub const EEXIST: i64 = 17;
/// `EINVAL`.
pub const EINVAL: i64 = 22;
/// `ENOSPC`.
pub const ENOSPC: i64 = 28;
/// `ENOSYS`.
pub const ENOSYS: i64 = 38;
/// `ENOTSUPP` (kernel-internal, what BPF helpers return for unsupported flags).
pub const ENOTSUPP: i64 = 524;

const SYS_GETPID: usize = 39;
const SYS_KILL: usize = 62;
const SYS_PRCTL: usize = 157;
const SYS_GETTID: usize = 186;
const SYS_CLOCK_GETTIME: usize = 228;
const SYS_TGKILL: usize = 234;
const SYS_GETCPU: usize = 309;
const SYS_PROCESS_VM_READV: usize = 310;

const CLOCK_MONOTONIC: usize = 1;
const PR_GET_NAME: usize = 16;

/// One syscall with up to six arguments; returns `rax` (negative errno on failure).
///
/// # Safety
/// The arguments must be valid for syscall `nr`: any pointer the kernel writes through must
/// point to memory the caller owns (pointers the kernel only reads may be bad: it returns
/// `-EFAULT`).
#[inline(always)]
unsafe fn syscall6(nr: usize, a: [usize; 6]) -> i64 {
    let ret: isize;
    // SAFETY: the `syscall` instruction clobbers rcx and r11 only (declared); memory effects
    // are the caller's contract above.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") nr as isize => ret,
            in("rdi") a[0],
            in("rsi") a[1],
            in("rdx") a[2],
            in("r10") a[3],
            in("r8") a[4],
            in("r9") a[5],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
    }
    ret as i64
}

/// `getpid()`: the thread group id.
pub fn getpid() -> u32 {
    // SAFETY: getpid takes no argument and touches no memory.
    unsafe { syscall6(SYS_GETPID, [0; 6]) as u32 }
}

/// `gettid()`: the calling thread's id.
pub fn gettid() -> u32 {
    // SAFETY: gettid takes no argument and touches no memory.
    unsafe { syscall6(SYS_GETTID, [0; 6]) as u32 }
}

/// Whether thread `tid` of process `pid` exists (`tgkill(pid, tid, 0)` does not fail with
/// `ESRCH`). A thread we may not signal counts as alive.
pub fn thread_alive(pid: u32, tid: u32) -> bool {
    if pid == 0 || tid == 0 {
        return false;
    }
    // SAFETY: signal 0 only checks existence and permission; no memory is touched.
    let r = unsafe { syscall6(SYS_TGKILL, [pid as usize, tid as usize, 0, 0, 0, 0]) };
    r != -ESRCH
}

/// Whether process `pid` exists (`kill(pid, 0)` does not fail with `ESRCH`).
pub fn process_alive(pid: u32) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    // SAFETY: signal 0 only checks existence and permission; no memory is touched.
    let r = unsafe { syscall6(SYS_KILL, [pid as usize, 0, 0, 0, 0, 0]) };
    r != -ESRCH
}

/// `CLOCK_MONOTONIC` in nanoseconds (what `bpf_ktime_get_ns` returns), via the system call.
pub fn monotonic_ns() -> u64 {
    let mut ts = [0i64; 2];
    // SAFETY: the kernel writes one `struct timespec` (two i64) into `ts`, which we own.
    let r = unsafe {
        syscall6(
            SYS_CLOCK_GETTIME,
            [CLOCK_MONOTONIC, ts.as_mut_ptr() as usize, 0, 0, 0, 0],
        )
    };
    if r < 0 {
        return 0;
    }
    (ts[0] as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts[1] as u64)
}

/// The calling thread's name (`prctl(PR_GET_NAME)`), NUL-padded.
pub fn thread_name() -> [u8; 16] {
    let mut buf = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes into `buf`, which we own.
    unsafe {
        syscall6(
            SYS_PRCTL,
            [PR_GET_NAME, buf.as_mut_ptr() as usize, 0, 0, 0, 0],
        )
    };
    buf
}

/// `getcpu()` through the system call (the slow, always-available way).
pub fn getcpu_syscall() -> u32 {
    let mut cpu = 0u32;
    // SAFETY: the kernel writes one u32 into `cpu`; the node and cache pointers are NULL.
    let r = unsafe { syscall6(SYS_GETCPU, [&mut cpu as *mut u32 as usize, 0, 0, 0, 0, 0]) };
    if r < 0 { 0 } else { cpu }
}

/// Copies `len` bytes at address `src` of the calling process into `dst`, without ever
/// faulting: the kernel reads through `process_vm_readv` on our own pid. Returns the number
/// of bytes copied (possibly short, when a page is unmapped part way) or a negative errno.
///
/// # Safety
/// `dst` must be valid for writes of `len` bytes. `src` may be any address.
pub unsafe fn read_self(dst: *mut u8, src: u64, len: usize) -> i64 {
    if len == 0 {
        return 0;
    }
    let local = [dst as usize, len];
    let remote = [src as usize, len];
    // SAFETY: the kernel writes at most `len` bytes at `dst` (caller's contract) and reads the
    // remote range with fault handling: a bad `src` yields -EFAULT.
    unsafe {
        syscall6(
            SYS_PROCESS_VM_READV,
            [
                getpid() as usize,
                local.as_ptr() as usize,
                1,
                remote.as_ptr() as usize,
                1,
                0,
            ],
        )
    }
}

const CPU_METHOD_UNKNOWN: u8 = 0;
const CPU_METHOD_RDPID: u8 = 1;
const CPU_METHOD_RDTSCP: u8 = 2;
const CPU_METHOD_SYSCALL: u8 = 3;
static CPU_METHOD: AtomicU8 = AtomicU8::new(CPU_METHOD_UNKNOWN);

/// How [`cpu_id`] finds the CPU: the cheapest instruction the CPU has (`rdpid`, else
/// `rdtscp`; Linux keeps `node << 12 | cpu` in `IA32_TSC_AUX`), else the `getcpu` syscall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuIdMethod {
    /// `rdpid` (a few cycles).
    Rdpid,
    /// `rdtscp` (tens of cycles: it also reads the TSC and waits for prior instructions).
    Rdtscp,
    /// The `getcpu` system call.
    Syscall,
}

fn detect_cpu_method() -> u8 {
    // CPUID leaf 7 ECX bit 22: RDPID. Leaf 0x8000_0001 EDX bit 27: RDTSCP.
    let leaf0 = core::arch::x86_64::__cpuid(0);
    if leaf0.eax >= 7 {
        let l7 = core::arch::x86_64::__cpuid_count(7, 0);
        if l7.ecx & (1 << 22) != 0 {
            return CPU_METHOD_RDPID;
        }
    }
    let ext = core::arch::x86_64::__cpuid(0x8000_0000);
    if ext.eax >= 0x8000_0001 {
        let e1 = core::arch::x86_64::__cpuid(0x8000_0001);
        if e1.edx & (1 << 27) != 0 {
            return CPU_METHOD_RDTSCP;
        }
    }
    CPU_METHOD_SYSCALL
}

/// The method [`cpu_id`] uses on this machine (detected once).
pub fn cpu_id_method() -> CpuIdMethod {
    let mut m = CPU_METHOD.load(Ordering::Relaxed);
    if m == CPU_METHOD_UNKNOWN {
        m = detect_cpu_method();
        CPU_METHOD.store(m, Ordering::Relaxed);
    }
    match m {
        CPU_METHOD_RDPID => CpuIdMethod::Rdpid,
        CPU_METHOD_RDTSCP => CpuIdMethod::Rdtscp,
        _ => CpuIdMethod::Syscall,
    }
}

/// `rdpid`: `IA32_TSC_AUX` (Linux: `node << 12 | cpu`).
///
/// # Safety
/// The CPU must support `rdpid` (CPUID.7.0:ECX bit 22).
#[inline(always)]
pub unsafe fn rdpid() -> u64 {
    let aux: u64;
    // SAFETY: caller guarantees support; rdpid only writes the output register.
    unsafe { asm!("rdpid {}", out(reg) aux, options(nomem, nostack, preserves_flags)) };
    aux
}

/// `rdtscp`'s `IA32_TSC_AUX` part (Linux: `node << 12 | cpu`).
///
/// # Safety
/// The CPU must support `rdtscp` (CPUID.80000001h:EDX bit 27).
#[inline(always)]
pub unsafe fn rdtscp_aux() -> u32 {
    let aux: u32;
    // SAFETY: caller guarantees support; rdtscp writes eax, edx, ecx only (declared).
    unsafe {
        asm!("rdtscp", out("eax") _, out("edx") _, out("ecx") aux,
             options(nomem, nostack, preserves_flags))
    };
    aux
}

/// The CPU the calling thread runs on (it may move right after: per-CPU data must still use
/// atomic operations when several threads can share a slot).
#[inline]
pub fn cpu_id() -> u32 {
    match CPU_METHOD.load(Ordering::Relaxed) {
        // SAFETY: CPU_METHOD_RDPID is only stored after CPUID reported rdpid.
        CPU_METHOD_RDPID => (unsafe { rdpid() } & 0xfff) as u32,
        // SAFETY: CPU_METHOD_RDTSCP is only stored after CPUID reported rdtscp.
        CPU_METHOD_RDTSCP => (unsafe { rdtscp_aux() }) & 0xfff,
        CPU_METHOD_SYSCALL => getcpu_syscall(),
        _ => {
            cpu_id_method();
            cpu_id()
        }
    }
}

/// Reads the time-stamp counter (cheap entropy and timing).
#[inline]
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc is available on every x86-64 CPU and has no memory effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}
