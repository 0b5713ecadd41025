//! The process's auxiliary vector (`AT_SYSINFO_EHDR`, `AT_HWCAP2`), read once from
//! `/proc/self/auxv` with raw system calls: the agent has no `main` and no libc to ask.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::syscall::{SYS_CLOSE, SYS_OPEN, SYS_READ, syscall6};

/// What the process's auxiliary vector told us.
#[derive(Clone, Copy, Debug)]
pub struct Auxv {
    /// `AT_SYSINFO_EHDR`: where the vDSO is mapped, 0 when the process has none.
    pub vdso: u64,
    /// `AT_HWCAP2` bit `HWCAP2_FSGSBASE`: the kernel lets user space run `rdfsbase`.
    pub fsgsbase: bool,
}

/// 0 = not read yet; else bit 0 set, bit 1 = FSGSBASE. The vDSO base is in [`AUXV_VDSO`].
static AUXV_STATE: AtomicU64 = AtomicU64::new(0);
static AUXV_VDSO: AtomicU64 = AtomicU64::new(0);

/// The auxiliary vector's entries we use, read on the first call.
#[inline]
pub fn auxv() -> Auxv {
    let st = AUXV_STATE.load(Ordering::Acquire);
    if st != 0 {
        return Auxv {
            vdso: AUXV_VDSO.load(Ordering::Relaxed),
            fsgsbase: st & 2 != 0,
        };
    }
    let a = read_auxv();
    AUXV_VDSO.store(a.vdso, Ordering::Relaxed);
    AUXV_STATE.store(1 | if a.fsgsbase { 2 } else { 0 }, Ordering::Release);
    a
}

/// `AT_SYSINFO_EHDR` and `AT_HWCAP2` from `/proc/self/auxv`, read with raw system calls.
#[cold]
fn read_auxv() -> Auxv {
    const AT_HWCAP2: u64 = 26;
    const AT_SYSINFO_EHDR: u64 = 33;
    const HWCAP2_FSGSBASE: u64 = 1 << 1;
    let mut a = Auxv {
        vdso: 0,
        fsgsbase: false,
    };
    let path = b"/proc/self/auxv\0";
    // SAFETY: the path is NUL-terminated and only read by the kernel.
    let fd = unsafe { syscall6(SYS_OPEN, [path.as_ptr() as usize, 0, 0, 0, 0, 0]) };
    if fd < 0 {
        return a;
    }
    let mut buf = [0u64; 128];
    let mut tag: Option<u64> = None;
    'read: loop {
        // SAFETY: the kernel writes at most size_of_val(&buf) bytes into `buf`, which we own.
        let n = unsafe {
            syscall6(
                SYS_READ,
                [
                    fd as usize,
                    buf.as_mut_ptr() as usize,
                    core::mem::size_of_val(&buf),
                    0,
                    0,
                    0,
                ],
            )
        };
        if n <= 0 {
            break;
        }
        // Pairs of (tag, value); keep the pairing right across reads.
        for &w in buf.iter().take(n as usize / 8) {
            match tag.take() {
                None => tag = Some(w),
                Some(0) => break 'read,
                Some(AT_SYSINFO_EHDR) => a.vdso = w,
                Some(AT_HWCAP2) => a.fsgsbase = w & HWCAP2_FSGSBASE != 0,
                Some(_) => {}
            }
        }
    }
    // SAFETY: closing the descriptor we opened.
    unsafe { syscall6(SYS_CLOSE, [fd as usize, 0, 0, 0, 0, 0]) };
    a
}
