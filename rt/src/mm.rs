//! Mappings and files: the system calls the agent itself needs (mmap, mprotect, munmap,
//! `/proc/self` files), through the runtime's one `syscall` instruction,
//! [`crate::syscall6`].

/// `PROT_READ`.
pub const PROT_READ: u64 = 1;
/// `PROT_WRITE`.
pub const PROT_WRITE: u64 = 2;
/// `PROT_EXEC`.
pub const PROT_EXEC: u64 = 4;
const MAP_PRIVATE: u64 = 0x02;
const MAP_ANONYMOUS: u64 = 0x20;
const MAP_NORESERVE: u64 = 0x4000;
/// Linux 4.17+: map exactly at the hint or fail with `EEXIST`; older kernels treat the hint
/// as a hint, which [`mmap_anon`] detects.
const MAP_FIXED_NOREPLACE: u64 = 0x10_0000;

const SYS_READ: u64 = 0;
const SYS_CLOSE: u64 = 3;
const SYS_PWRITE64: u64 = 18;
const SYS_OPENAT: u64 = 257;
const AT_FDCWD: i64 = -100;
const O_RDWR: u64 = 2;
const O_CLOEXEC: u64 = 0o2000000;
const SYS_MMAP: u64 = 9;
const SYS_MPROTECT: u64 = 10;
const SYS_MUNMAP: u64 = 11;

/// Page size.
pub const PAGE: u64 = 4096;

/// Rounds up to a page multiple.
pub fn page_up(v: u64) -> u64 {
    (v + PAGE - 1) & !(PAGE - 1)
}

/// One system call; returns `rax` (a negative errno on failure).
///
/// # Safety
/// As [`crate::syscall6`]: the arguments must be valid for system call `nr`; any
/// memory the call changes (a mapping removed or re-protected) must not be in use in a way
/// the change would break.
unsafe fn syscall6(nr: u64, a: [u64; 6]) -> i64 {
    let a = a.map(|v| v as usize);
    // SAFETY: forwarded caller contract.
    unsafe { crate::syscall::syscall6(nr as usize, a) }
}

/// Maps `len` bytes of fresh anonymous read+write memory. With `at != 0` the mapping must
/// start exactly there (without replacing anything: `None` when the range is taken); with
/// `at == 0` the kernel picks. Returns the address.
pub fn mmap_anon(at: u64, len: u64) -> Option<u64> {
    let flags =
        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | if at != 0 { MAP_FIXED_NOREPLACE } else { 0 };
    // SAFETY: a new anonymous mapping never replaces an existing one (no MAP_FIXED), so no
    // memory in use changes.
    let r = unsafe {
        syscall6(
            SYS_MMAP,
            [at, len, PROT_READ | PROT_WRITE, flags, u64::MAX, 0],
        )
    };
    if r < 0 {
        return None;
    }
    let addr = r as u64;
    if at != 0 && addr != at {
        // A kernel that ignores MAP_FIXED_NOREPLACE placed it elsewhere.
        // SAFETY: we just created this mapping and nothing refers to it.
        unsafe { munmap(addr, len) };
        return None;
    }
    Some(addr)
}

/// Changes the protection of `addr..addr+len`; returns 0 or a negative errno.
///
/// # Safety
/// No code may rely on the old protection of those pages while the new one is in force
/// (e.g. no thread writes pages made read-only).
pub unsafe fn mprotect(addr: u64, len: u64, prot: u64) -> i64 {
    // SAFETY: caller contract.
    unsafe { syscall6(SYS_MPROTECT, [addr, len, prot, 0, 0, 0]) }
}

/// Unmaps `addr..addr+len`; returns 0 or a negative errno.
///
/// # Safety
/// Nothing may use the range afterwards: no reference into it, no thread executing in it.
pub unsafe fn munmap(addr: u64, len: u64) -> i64 {
    // SAFETY: caller contract.
    unsafe { syscall6(SYS_MUNMAP, [addr, len, 0, 0, 0, 0]) }
}

/// Opens `path` (NUL-terminated) read-write; returns the descriptor or a negative errno.
pub fn open_rdwr(path: &[u8]) -> i64 {
    open(path, O_RDWR)
}

/// Opens `path` (NUL-terminated) read-only; returns the descriptor or a negative errno.
pub fn open_rdonly(path: &[u8]) -> i64 {
    open(path, 0)
}

fn open(path: &[u8], mode: u64) -> i64 {
    if path.last() != Some(&0) {
        return -22; // EINVAL
    }
    // SAFETY: `path` is a NUL-terminated string that outlives the call; opening changes no
    // memory of ours.
    unsafe {
        syscall6(
            SYS_OPENAT,
            [
                AT_FDCWD as u64,
                path.as_ptr() as u64,
                mode | O_CLOEXEC,
                0,
                0,
                0,
            ],
        )
    }
}

/// Reads into `buf` from `fd`; returns the count read or a negative errno.
pub fn read(fd: i64, buf: &mut [u8]) -> i64 {
    // SAFETY: `buf` is writable for its length and ours for the call.
    unsafe {
        syscall6(
            SYS_READ,
            [
                fd as u64,
                buf.as_mut_ptr() as u64,
                buf.len() as u64,
                0,
                0,
                0,
            ],
        )
    }
}

/// Writes `bytes` to `fd` at `offset`; returns the count written or a negative errno.
///
/// # Safety
/// When `fd` is `/proc/self/mem`, the bytes land in this process's memory at `offset`:
/// nothing may be executing or reading there in a way the write would break.
pub unsafe fn pwrite(fd: i64, bytes: &[u8], offset: u64) -> i64 {
    // SAFETY: `bytes` is readable for its length; the effect on memory is the caller's
    // contract.
    unsafe {
        syscall6(
            SYS_PWRITE64,
            [
                fd as u64,
                bytes.as_ptr() as u64,
                bytes.len() as u64,
                offset,
                0,
                0,
            ],
        )
    }
}

/// Closes `fd`.
pub fn close(fd: i64) {
    // SAFETY: closing a descriptor changes no memory.
    unsafe { syscall6(SYS_CLOSE, [fd as u64, 0, 0, 0, 0, 0]) };
}
