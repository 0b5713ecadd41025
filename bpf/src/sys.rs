//! Raw Linux x86-64 system calls and CPU-id instructions, with no libc.
//!
//! The agent that runs maps and helpers inside the target imports no symbol at all, so this is
//! the one module of the crate that talks to the kernel: a handful of `syscall` wrappers built
//! on inline assembly, each returning the kernel's raw result (a negative errno on failure),
//! plus [`cpu_id`], the hot-path "which CPU am I on" used to index per-CPU maps.
//!
//! Every function here is safe to call: the ones taking pointers are `unsafe` and say what
//! they need. A bad user pointer given to the kernel yields `-EFAULT`, never a crash.
//!
//! # Fast paths of the first-hit helpers
//!
//! A probe's first hit of a function asks for the time and the thread id. Each system call
//! costs 100-200 ns on these VMs, so:
//!
//! - [`monotonic_ns`] calls the vDSO's `clock_gettime` (a few tens of ns, no kernel entry).
//!   The vDSO is found once per process through `AT_SYSINFO_EHDR` in `/proc/self/auxv`
//!   (read with raw syscalls: the agent imports nothing) and its dynamic symbol table; if
//!   anything is missing the system call is used.
//! - [`getpid_cached`] reads the pid once.
//! - [`gettid_cached`] keeps the tid per thread in a small lock-free table keyed by the
//!   thread's `%fs` base, read with `rdfsbase` (one instruction that never faults, whatever
//!   the thread's TLS convention) when the kernel enables it for user space (`AT_HWCAP2`,
//!   Linux 5.9+), and trusts an entry only while glibc's TCB holds the same tid: glibc
//!   recycles a dead thread's stack and TCB for a new thread, so the `%fs` base alone would
//!   name the wrong thread. Threads without a glibc TCB, or without FSGSBASE, take the
//!   system call every time.
//!
//! [`getpid`] and [`gettid`] stay plain system calls: code that acts on ids (signals, lock
//! owners) must not trust a cache. Caveats of the caches: after `fork`, the child inherits them (its memory is a copy), so its
//! first-hit events carry the parent's pid (the tid is right: glibc's `fork` writes the
//! child's tid into the forking thread's TCB). The child also inherits the hooks and the
//! shared session, so its hits are counted with the parent's anyway. This only affects the
//! informational pid of events, never the counts; [`forget_ids`] clears the caches.

use core::arch::asm;
use core::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

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

const SYS_READ: usize = 0;
const SYS_OPEN: usize = 2;
const SYS_CLOSE: usize = 3;
const SYS_GETPID: usize = 39;
const SYS_KILL: usize = 62;
const SYS_PRCTL: usize = 157;
const SYS_GETTID: usize = 186;
const SYS_CLOCK_GETTIME: usize = 228;
const SYS_TGKILL: usize = 234;
const SYS_GETCPU: usize = 309;
const SYS_PROCESS_VM_READV: usize = 310;

/// `CLOCK_MONOTONIC`.
pub const CLOCK_MONOTONIC: usize = 1;
/// `CLOCK_MONOTONIC_COARSE`.
pub const CLOCK_MONOTONIC_COARSE: usize = 6;
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

/// `getpid()`: the thread group id (a system call every time; see [`getpid_cached`]).
pub fn getpid() -> u32 {
    // SAFETY: getpid takes no argument and touches no memory.
    unsafe { syscall6(SYS_GETPID, [0; 6]) as u32 }
}

/// `gettid()`: the calling thread's id (a system call every time; see [`gettid_cached`]).
pub fn gettid() -> u32 {
    // SAFETY: gettid takes no argument and touches no memory.
    unsafe { syscall6(SYS_GETTID, [0; 6]) as u32 }
}

static PID: AtomicU32 = AtomicU32::new(0);

/// [`getpid`], cached after the first call. For informational uses only (see the module
/// doc's fork caveat); anything that acts on the pid must use [`getpid`].
#[inline]
pub fn getpid_cached() -> u32 {
    let p = PID.load(Ordering::Relaxed);
    if p != 0 {
        return p;
    }
    let p = getpid();
    PID.store(p, Ordering::Relaxed);
    p
}

/// Address of [`getpid_cached`]'s pid (a u32, 0 until known), for the JIT.
pub fn pid_cache_addr() -> u64 {
    PID.as_ptr() as u64
}

/// Slots of the tid cache (a power of two).
const TID_SLOTS: usize = 256;
/// Slots probed from a key's home slot.
const TID_PROBES: usize = 8;

#[repr(C)]
struct TidSlot {
    /// The thread's `%fs` base, 0 when free.
    key: AtomicU64,
    /// The thread's id, 0 until written.
    tid: AtomicU32,
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE_SLOT: TidSlot = TidSlot {
    key: AtomicU64::new(0),
    tid: AtomicU32::new(0),
};
static TIDS: [TidSlot; TID_SLOTS] = [FREE_SLOT; TID_SLOTS];

/// The shifts of the tid cache's hash (also emitted by the JIT, see [`TidCacheLayout`]).
const TID_HASH_SHIFTS: [u8; 3] = [6, 18, 30];

fn tid_home(key: u64) -> usize {
    let [a, b, c] = TID_HASH_SHIFTS;
    (((key >> a) ^ (key >> b) ^ (key >> c)) as usize) & (TID_SLOTS - 1)
}

/// Where [`gettid_cached`]'s table and [`getpid_cached`]'s value live in this process, for
/// the JIT's inline copy of their fast path (`bpf_get_current_pid_tgid`): with `k` the
/// `%fs` base (`rdfsbase`), the home slot is at `slots + slot_size * (((k >> s0) ^ (k >>
/// s1) ^ (k >> s2)) & (nslots - 1))`; a hit needs `k != 0`, the slot's u64 at `key_off`
/// equal to `k`, its u32 at `tid_off` non-zero and equal to the u32 at `k + tcb_tid_off`,
/// and the u32 at `pid` non-zero. Anything else must go to the helper (other probe
/// slots, first entry, no pid yet).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TidCacheLayout {
    /// Address of slot 0.
    pub slots: u64,
    /// Number of slots (a power of two).
    pub nslots: u32,
    /// Bytes per slot.
    pub slot_size: u32,
    /// Offset of the slot's key (u64).
    pub key_off: u32,
    /// Offset of the slot's tid (u32).
    pub tid_off: u32,
    /// The hash's three right shifts.
    pub shifts: [u8; 3],
    /// Offset of glibc's tid from the thread pointer.
    pub tcb_tid_off: u32,
    /// Address of the cached pid (u32, 0 until known).
    pub pid: u64,
}

/// The tid cache's layout, or `None` when the cache is never used (no FSGSBASE for user
/// space: `rdfsbase` would fault).
pub fn tid_cache_layout() -> Option<TidCacheLayout> {
    if !auxv().fsgsbase {
        return None;
    }
    Some(TidCacheLayout {
        slots: TIDS.as_ptr() as u64,
        nslots: TID_SLOTS as u32,
        slot_size: core::mem::size_of::<TidSlot>() as u32,
        key_off: core::mem::offset_of!(TidSlot, key) as u32,
        tid_off: core::mem::offset_of!(TidSlot, tid) as u32,
        shifts: TID_HASH_SHIFTS,
        tcb_tid_off: GLIBC_TID_OFF as u32,
        pid: PID.as_ptr() as u64,
    })
}

/// `rdfsbase`: the calling thread's `%fs` base (0 when it has none).
///
/// # Safety
/// The CPU must support it and the kernel enable it (`AT_HWCAP2` bit `HWCAP2_FSGSBASE`).
#[inline(always)]
unsafe fn rdfsbase() -> u64 {
    let v: u64;
    // SAFETY: caller contract; rdfsbase only writes its output register.
    unsafe { asm!("rdfsbase {}", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Offset of glibc's `struct pthread::tid` from the thread pointer
/// ([`xcover_abi::GLIBC_TCB_TID_OFF`]). The kernel zeroes it when the thread exits
/// (`CLONE_CHILD_CLEARTID`) and sets it when glibc creates a thread, so it tells a cached
/// entry's thread from a later thread that got the same TCB back from glibc's stack cache.
const GLIBC_TID_OFF: u64 = xcover_abi::GLIBC_TCB_TID_OFF as u64;

/// The tid glibc keeps in the TCB at `fs`.
///
/// # Safety
/// `fs` must be the `%fs` base of a thread whose TCB was checked readable at
/// `fs + GLIBC_TID_OFF` when it was entered in the table (a glibc or glibc-like TCB, which
/// lives as long as the thread that has this `%fs` base).
#[inline(always)]
unsafe fn tcb_tid(fs: u64) -> u32 {
    // SAFETY: caller contract.
    unsafe { core::ptr::read_volatile((fs + GLIBC_TID_OFF) as *const u32) }
}

/// [`gettid`], cached per thread in a lock-free table keyed by the thread's `%fs` base
/// (read with `rdfsbase`, which never faults, when the kernel allows it). An entry is only
/// trusted while glibc's TCB still holds the same tid (see [`xcover_abi::GLIBC_TCB_TID_OFF`]): a thread that
/// got a dead thread's TCB back refreshes it, and a thread without a glibc TCB (Go without
/// cgo, musl) is never entered and takes the system call every time. For informational uses
/// only (see the module doc's fork caveat); code that acts on the tid must use [`gettid`].
#[inline]
pub fn gettid_cached() -> u32 {
    if auxv().fsgsbase {
        // SAFETY: the kernel enables FSGSBASE for user space (AT_HWCAP2).
        let key = unsafe { rdfsbase() };
        if key != 0 {
            let home = tid_home(key);
            for i in 0..TID_PROBES {
                let s = &TIDS[(home + i) & (TID_SLOTS - 1)];
                let k = s.key.load(Ordering::Acquire);
                if k == key {
                    let t = s.tid.load(Ordering::Acquire);
                    // SAFETY: `key` is in the table, so its TCB field was checked readable;
                    // it is this thread's %fs base, so the TCB is alive.
                    if t != 0 && unsafe { tcb_tid(key) } == t {
                        return t;
                    }
                    break;
                }
                if k == 0 {
                    break;
                }
            }
            return gettid_enter(key);
        }
    }
    gettid()
}

/// Whether the calling thread's id comes from the cache now (for tests and benchmarks).
pub fn gettid_is_cached() -> bool {
    if !auxv().fsgsbase {
        return false;
    }
    // SAFETY: FSGSBASE is enabled (checked above).
    let key = unsafe { rdfsbase() };
    let home = tid_home(key);
    (0..TID_PROBES).any(|i| {
        let s = &TIDS[(home + i) & (TID_SLOTS - 1)];
        key != 0
            && s.key.load(Ordering::Acquire) == key
            // SAFETY: as in gettid_cached.
            && unsafe { tcb_tid(key) } == s.tid.load(Ordering::Acquire)
            && s.tid.load(Ordering::Acquire) != 0
    })
}

#[cold]
fn gettid_enter(key: u64) -> u32 {
    let tid = gettid();
    // Only a glibc TCB holding this very tid goes in; read through the kernel, which cannot
    // fault, since nothing is known yet about the memory at `key`.
    let mut field = 0u32;
    // SAFETY: `field` is ours and 4 bytes long; the source address may be anything.
    let r = unsafe { read_self(&mut field as *mut u32 as *mut u8, key + GLIBC_TID_OFF, 4) };
    if r != 4 || field != tid {
        return tid;
    }
    let home = tid_home(key);
    for i in 0..TID_PROBES {
        let s = &TIDS[(home + i) & (TID_SLOTS - 1)];
        match s
            .key
            .compare_exchange(0, key, Ordering::AcqRel, Ordering::Acquire)
        {
            // Ours (a new entry), or a dead thread's that had our TCB: only the thread with
            // this %fs base ever writes the slot's tid.
            Ok(_) => {
                s.tid.store(tid, Ordering::Release);
                return tid;
            }
            Err(k) if k == key => {
                s.tid.store(tid, Ordering::Release);
                return tid;
            }
            Err(_) => {}
        }
    }
    tid
}

/// Clears the pid and tid caches (e.g. in a child after `fork`).
pub fn forget_ids() {
    PID.store(0, Ordering::Relaxed);
    for s in &TIDS {
        s.tid.store(0, Ordering::Relaxed);
        s.key.store(0, Ordering::Relaxed);
    }
}

/// What the process's auxiliary vector told us.
#[derive(Clone, Copy)]
struct Auxv {
    vdso: u64,
    fsgsbase: bool,
}

/// 0 = not read yet; else bit 0 set, bit 1 = FSGSBASE. The vDSO base is in [`AUXV_VDSO`].
static AUXV_STATE: AtomicU64 = AtomicU64::new(0);
static AUXV_VDSO: AtomicU64 = AtomicU64::new(0);

#[inline]
fn auxv() -> Auxv {
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

/// `CLOCK_MONOTONIC` in nanoseconds through the system call.
pub fn monotonic_ns_syscall() -> u64 {
    clock_ns_syscall(CLOCK_MONOTONIC)
}

fn clock_ns_syscall(clock: usize) -> u64 {
    let mut ts = [0i64; 2];
    // SAFETY: the kernel writes one `struct timespec` (two i64) into `ts`, which we own.
    let r = unsafe {
        syscall6(
            SYS_CLOCK_GETTIME,
            [clock, ts.as_mut_ptr() as usize, 0, 0, 0, 0],
        )
    };
    if r < 0 {
        return 0;
    }
    (ts[0] as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts[1] as u64)
}

/// The vDSO's `clock_gettime`: 0 = not looked up yet, 1 = unavailable, else its address.
static VDSO_CLOCK_GETTIME: AtomicU64 = AtomicU64::new(0);

type ClockGettime = unsafe extern "C" fn(i32, *mut [i64; 2]) -> i32;

/// `clock` in nanoseconds through the vDSO's `clock_gettime` when the process has one, else
/// the system call.
#[inline]
fn clock_ns(clock: usize) -> u64 {
    let mut f = VDSO_CLOCK_GETTIME.load(Ordering::Relaxed);
    if f == 0 {
        f = vdso_clock_gettime().unwrap_or(1);
        VDSO_CLOCK_GETTIME.store(f, Ordering::Relaxed);
    }
    if f == 1 {
        return clock_ns_syscall(clock);
    }
    let mut ts = [0i64; 2];
    // SAFETY: `f` is the vDSO's `__vdso_clock_gettime`, found in this process's vDSO symbol
    // table; it writes one timespec into `ts`, which we own.
    let r = unsafe { core::mem::transmute::<u64, ClockGettime>(f)(clock as i32, &mut ts) };
    if r != 0 {
        return clock_ns_syscall(clock);
    }
    (ts[0] as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts[1] as u64)
}

/// `CLOCK_MONOTONIC` in nanoseconds (what `bpf_ktime_get_ns` returns): through the vDSO's
/// `clock_gettime` when the process has one, else the system call.
#[inline]
pub fn monotonic_ns() -> u64 {
    clock_ns(CLOCK_MONOTONIC)
}

/// `CLOCK_MONOTONIC_COARSE` in nanoseconds (what `bpf_ktime_get_coarse_ns` returns): the
/// same clock at the resolution of the kernel's tick (1-4 ms), read without `rdtsc`: ~8 ns
/// through the vDSO here against ~40 ns for [`monotonic_ns`].
#[inline]
pub fn monotonic_coarse_ns() -> u64 {
    clock_ns(CLOCK_MONOTONIC_COARSE)
}

/// The vDSO's `clock_gettime`, for code that calls it directly for `clock` (the JIT's
/// inline `bpf_ktime_get_ns` / `bpf_ktime_get_coarse_ns`, which call it without saving the
/// vector registers), or `None` when the process has no vDSO or the call failed or did not
/// leave `xmm0`-`xmm15` as they were. The kernel builds the vDSO's C code with
/// `-mno-sse -mno-mmx -mno-sse2 -mno-avx` (only `getrandom`'s hand-written ChaCha uses
/// vector registers), so it never should; this checks it once on the path `clock` takes.
pub fn vdso_clock_gettime_without_vector_regs(clock: u32) -> Option<u64> {
    let mut f = VDSO_CLOCK_GETTIME.load(Ordering::Relaxed);
    if f == 0 {
        f = vdso_clock_gettime().unwrap_or(1);
        VDSO_CLOCK_GETTIME.store(f, Ordering::Relaxed);
    }
    if f == 1 {
        return None;
    }
    let pattern: [[u8; 16]; 16] = core::array::from_fn(|i| {
        core::array::from_fn(|j| (0x5a ^ (i * 16 + j) as u8).wrapping_mul(0x3b))
    });
    let mut out = [[0u8; 16]; 16];
    let mut ts = [0i64; 2];
    let r: i64;
    // SAFETY: `f` is the vDSO's clock_gettime (found in this process's vDSO symbol table),
    // called per the System V ABI (`clobber_abi("C")` covers what it may clobber; r12-r14
    // are callee-saved) with a timespec we own; the stack is aligned for a call at the start
    // of an asm block without `nostack`. The loads and stores stay within `pattern`/`out`.
    unsafe {
        asm!(
            "movdqu xmm0, [r12]",
            "movdqu xmm1, [r12 + 16]",
            "movdqu xmm2, [r12 + 32]",
            "movdqu xmm3, [r12 + 48]",
            "movdqu xmm4, [r12 + 64]",
            "movdqu xmm5, [r12 + 80]",
            "movdqu xmm6, [r12 + 96]",
            "movdqu xmm7, [r12 + 112]",
            "movdqu xmm8, [r12 + 128]",
            "movdqu xmm9, [r12 + 144]",
            "movdqu xmm10, [r12 + 160]",
            "movdqu xmm11, [r12 + 176]",
            "movdqu xmm12, [r12 + 192]",
            "movdqu xmm13, [r12 + 208]",
            "movdqu xmm14, [r12 + 224]",
            "movdqu xmm15, [r12 + 240]",
            "call r13",
            "movdqu [r14], xmm0",
            "movdqu [r14 + 16], xmm1",
            "movdqu [r14 + 32], xmm2",
            "movdqu [r14 + 48], xmm3",
            "movdqu [r14 + 64], xmm4",
            "movdqu [r14 + 80], xmm5",
            "movdqu [r14 + 96], xmm6",
            "movdqu [r14 + 112], xmm7",
            "movdqu [r14 + 128], xmm8",
            "movdqu [r14 + 144], xmm9",
            "movdqu [r14 + 160], xmm10",
            "movdqu [r14 + 176], xmm11",
            "movdqu [r14 + 192], xmm12",
            "movdqu [r14 + 208], xmm13",
            "movdqu [r14 + 224], xmm14",
            "movdqu [r14 + 240], xmm15",
            in("r12") pattern.as_ptr(),
            in("r13") f,
            in("r14") out.as_mut_ptr(),
            inlateout("rdi") clock as u64 => _,
            inlateout("rsi") ts.as_mut_ptr() => _,
            lateout("rax") r,
            clobber_abi("C"),
        );
    }
    (r as i32 == 0 && out == pattern).then_some(f)
}

/// Whether [`monotonic_ns`] goes through the vDSO in this process.
pub fn monotonic_ns_uses_vdso() -> bool {
    monotonic_ns();
    VDSO_CLOCK_GETTIME.load(Ordering::Relaxed) > 1
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
        for &w in &buf[..n as usize / 8] {
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

/// The vDSO image as mapped, read with bounds checks.
struct Image {
    base: u64,
    /// Bytes known to be mapped from `base`.
    len: u64,
}

impl Image {
    /// Reads a `T` at offset `off`, or `None` past the known-mapped length.
    fn rd<T: Copy>(&self, off: u64) -> Option<T> {
        let end = off.checked_add(core::mem::size_of::<T>() as u64)?;
        if end > self.len {
            return None;
        }
        // SAFETY: `base .. base + len` is mapped readable (see `vdso_lookup`), and the read
        // lies within it; unaligned reads are fine on x86-64.
        Some(unsafe { ((self.base + off) as *const T).read_unaligned() })
    }
}

/// Finds `__vdso_clock_gettime` in the vDSO's dynamic symbol table.
fn vdso_clock_gettime() -> Option<u64> {
    let base = auxv().vdso;
    if base == 0 {
        return None;
    }
    vdso_lookup(base, b"__vdso_clock_gettime")
}

/// Looks a symbol up in the ELF image mapped at `base` (the vDSO: a small shared object
/// whose file is mapped whole), through `PT_DYNAMIC`'s `DT_SYMTAB`/`DT_STRTAB` and the symbol
/// count of `DT_HASH` (or of the section headers' `SHT_DYNSYM`). Returns the symbol's address.
///
/// Reads stay within the first page until the first `PT_LOAD` tells how far the image goes
/// (its end, rounded up to a page: mappings are page-granular).
fn vdso_lookup(base: u64, name: &[u8]) -> Option<u64> {
    const PAGE_SIZE: u64 = 4096;
    let mut img = Image {
        base,
        len: PAGE_SIZE,
    };
    if img.rd::<[u8; 4]>(0)? != *b"\x7fELF" || img.rd::<u8>(4)? != 2 {
        return None;
    }
    let phoff: u64 = img.rd(0x20)?;
    let shoff: u64 = img.rd(0x28)?;
    let phentsize = img.rd::<u16>(0x36)? as u64;
    let phnum = img.rd::<u16>(0x38)? as u64;
    let shentsize = img.rd::<u16>(0x3a)? as u64;
    let shnum = img.rd::<u16>(0x3c)? as u64;
    if phentsize < 56 {
        return None;
    }
    // Load bias: the first PT_LOAD maps file offset p_offset at base + p_offset.
    let mut bias = None;
    let mut mapped = PAGE_SIZE;
    let mut dynamic = None;
    for i in 0..phnum {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        let p_type: u32 = img.rd(ph)?;
        let p_offset: u64 = img.rd(ph + 8)?;
        let p_vaddr: u64 = img.rd(ph + 16)?;
        let p_memsz: u64 = img.rd(ph + 40)?;
        match p_type {
            1 if bias.is_none() => {
                bias = Some(base.wrapping_sub(p_vaddr.wrapping_sub(p_offset)));
                mapped = p_offset.checked_add(p_memsz)?.div_ceil(PAGE_SIZE) * PAGE_SIZE;
            }
            2 => dynamic = Some((p_offset, img.rd::<u64>(ph + 32)?)),
            _ => {}
        }
    }
    let (bias, (dyn_off, dyn_size)) = (bias?, dynamic?);
    img.len = mapped.max(PAGE_SIZE);
    let (mut symtab, mut strtab, mut strsz, mut hash) = (0u64, 0u64, 0u64, 0u64);
    for i in 0..dyn_size / 16 {
        let d = dyn_off + i * 16;
        let val: u64 = img.rd(d + 8)?;
        match img.rd::<u64>(d)? {
            0 => break,
            4 => hash = val,
            5 => strtab = val,
            6 => symtab = val,
            10 => strsz = val,
            _ => {}
        }
    }
    if symtab == 0 || strtab == 0 {
        return None;
    }
    // d_ptr values are link-time addresses: turn them into offsets from `base`.
    let to_off = |v: u64| bias.wrapping_add(v).wrapping_sub(base);
    let (symtab, strtab) = (to_off(symtab), to_off(strtab));
    let mut count = 0u64;
    if hash != 0 {
        count = img.rd::<u32>(to_off(hash) + 4)? as u64; // nchain
    } else if shentsize >= 64 {
        for i in 0..shnum {
            let sh = shoff + i * shentsize;
            if img.rd::<u32>(sh + 4)? == 11 {
                // SHT_DYNSYM: sh_size / sh_entsize
                let size: u64 = img.rd(sh + 32)?;
                let ent: u64 = img.rd(sh + 56)?;
                count = size.checked_div(ent).unwrap_or(0);
            }
        }
    }
    for i in 0..count.min(4096) {
        let sym = symtab + i * 24;
        let st_name = img.rd::<u32>(sym)? as u64;
        let st_info: u8 = img.rd(sym + 4)?;
        let st_shndx: u16 = img.rd(sym + 6)?;
        let st_value: u64 = img.rd(sym + 8)?;
        // Defined functions (STT_FUNC) only.
        if st_info & 0xf != 2 || st_shndx == 0 || st_name + name.len() as u64 >= strsz {
            continue;
        }
        let at = strtab + st_name;
        let same = (0..name.len() as u64).all(|j| img.rd::<u8>(at + j) == Some(name[j as usize]));
        if same && img.rd::<u8>(at + name.len() as u64) == Some(0) {
            return Some(bias.wrapping_add(st_value));
        }
    }
    None
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
