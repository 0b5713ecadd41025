//! Cached process and thread ids for the first-hit helpers.
//!
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
//! owners) must not trust a cache. Caveats of the caches: after `fork`, the child inherits
//! them (its memory is a copy), so its first-hit events carry the parent's pid (the tid is
//! right: glibc's `fork` writes the child's tid into the forking thread's TCB). The child
//! also inherits the hooks and the shared session, so its hits are counted with the
//! parent's anyway. This only affects the informational pid of events, never the counts;
//! [`forget_ids`] clears the caches.
//!
//! The JIT inlines the fast path of [`gettid_cached`]: [`TidCacheLayout`] is the contract
//! between the two, so the table's layout and hash change only together with it.

use core::arch::asm;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::auxv::auxv;
use crate::syscall::{getpid, gettid, read_self};

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
/// ([`xcover_session::GLIBC_TCB_TID_OFF`]). The kernel zeroes it when the thread exits
/// (`CLONE_CHILD_CLEARTID`) and sets it when glibc creates a thread, so it tells a cached
/// entry's thread from a later thread that got the same TCB back from glibc's stack cache.
const GLIBC_TID_OFF: u64 = xcover_session::GLIBC_TCB_TID_OFF as u64;

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
/// trusted while glibc's TCB still holds the same tid (see [`xcover_session::GLIBC_TCB_TID_OFF`]): a thread that
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
                let Some(s) = TIDS.get((home + i) & (TID_SLOTS - 1)) else {
                    break;
                };
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
        let Some(s) = TIDS.get((home + i) & (TID_SLOTS - 1)) else {
            return false;
        };
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
        let Some(s) = TIDS.get((home + i) & (TID_SLOTS - 1)) else {
            break;
        };
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
