//! The one `syscall` instruction of the runtime ([`syscall6`]), the error numbers, and the
//! small system calls on processes and threads that helpers need (ids, liveness, names,
//! reading our own memory without faulting).
//!
//! Every function here is safe to call: the ones taking pointers are `unsafe` and say what
//! they need. A bad user pointer given to the kernel yields `-EFAULT`, never a crash.

use core::arch::asm;

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

pub(crate) const SYS_READ: usize = 0;
pub(crate) const SYS_OPEN: usize = 2;
pub(crate) const SYS_CLOSE: usize = 3;
pub(crate) const SYS_GETPID: usize = 39;
pub(crate) const SYS_KILL: usize = 62;
pub(crate) const SYS_PRCTL: usize = 157;
pub(crate) const SYS_GETTID: usize = 186;
pub(crate) const SYS_CLOCK_GETTIME: usize = 228;
pub(crate) const SYS_TGKILL: usize = 234;
pub(crate) const SYS_GETCPU: usize = 309;
pub(crate) const SYS_PROCESS_VM_READV: usize = 310;
const PR_GET_NAME: usize = 16;

/// One syscall with up to six arguments; returns `rax` (negative errno on failure). The one
/// `syscall` instruction of the runtime, used by the agent too (it imports nothing).
///
/// # Safety
/// The arguments must be valid for syscall `nr`: any pointer the kernel writes through must
/// point to memory the caller owns (pointers the kernel only reads may be bad: it returns
/// `-EFAULT`), and any mapping the call changes must not be in use in a way the change
/// would break.
#[inline(always)]
pub unsafe fn syscall6(nr: usize, a: [usize; 6]) -> i64 {
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

/// `getpid()`: the thread group id (a system call every time; see [`crate::getpid_cached`]).
pub fn getpid() -> u32 {
    // SAFETY: getpid takes no argument and touches no memory.
    unsafe { syscall6(SYS_GETPID, [0; 6]) as u32 }
}

/// `gettid()`: the calling thread's id (a system call every time; see [`crate::gettid_cached`]).
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
