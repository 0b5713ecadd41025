//! HASH and PERCPU_HASH: chained buckets over a preallocated entry pool.
//!
//! Layout after the header: `nbuckets` u32 bucket heads (entry index + 1, 0 = empty), then
//! `max_entries` entries of `entry_size` bytes:
//!
//! ```text
//! 0   next       u32   next entry in the bucket chain (index + 1)
//! 4   gen        u32   generation: odd = live, even = free; bumped on insert and delete
//! 8   hash       u32   hash of the key
//! 12  free_next  u32   next entry in the free list (index + 1)
//! 16  key        key_stride bytes (zero-padded)
//! ..  value(s)   value_stride bytes, times ncpus for PERCPU_HASH (layout [cpu])
//! ```
//!
//! Writers serialise on the header's `lock` (bounded spin, dead-owner takeover, else
//! `-EBUSY`). Readers never lock: they follow chains published with release stores and
//! validate each candidate with the entry's generation, seqlock style. Free entries are
//! reused first-in first-out, which makes it unlikely that a reader still walking a just
//! deleted entry finds it recycled; if it does, the generation check sends it back to the
//! bucket head (a bounded number of times). A `next` link is never changed on delete, so a
//! reader standing on a deleted entry still walks into a real chain.

use core::sync::atomic::{Ordering, fence};

use super::{BPF_EXIST, BPF_NOEXIST, MAX_KEY_SIZE, MapPtr};
use xcover_rt as sys;
use xcover_session::arena::{
    HASH_ENTRY_FREE_NEXT, HASH_ENTRY_GEN, HASH_ENTRY_HASH, HASH_ENTRY_NEXT,
};

/// Bytes before the key in an entry.
pub(super) use xcover_session::arena::HASH_ENTRY_HDR as ENTRY_HDR;
const KEY_WORDS: usize = (MAX_KEY_SIZE / 8) as usize;
/// `pause` instructions between two attempts to take the lock.
const SPIN_PAUSES: u32 = 256;
/// Attempts before checking the owner and giving up: bounds a writer's wait to about 10 ms
/// (critical sections last well under a microsecond; a longer hold means a preempted or dead
/// owner).
const SPIN_ROUNDS: u32 = 1024;
/// Restarts of a lock-free lookup that met a recycled entry.
const LOOKUP_RESTARTS: u32 = 8;

fn entry_off(map: MapPtr, idx1: u32) -> u64 {
    map.hdr().hash_entry_off(idx1)
}

fn bucket_off(map: MapPtr, hash: u32) -> u64 {
    map.hdr().hash_bucket_off(hash)
}

/// Offset of value slot `cpu` of the entry at `e`.
pub(super) fn value_off(map: MapPtr, e: u64, cpu: u64) -> u64 {
    map.hdr().hash_value_off(e, cpu)
}

/// Threads every entry onto the free list (arena initialisation only).
pub(super) fn init_free_list(map: MapPtr) {
    let n = map.hdr().max_entries;
    for i in 1..=n {
        let next = if i < n { i + 1 } else { 0 };
        map.u32_at(entry_off(map, i) + HASH_ENTRY_FREE_NEXT)
            .store(next, Ordering::Relaxed);
    }
    map.hdr().free_head.store(1, Ordering::Relaxed);
    map.hdr().free_tail.store(n, Ordering::Relaxed);
}

/// A key copied into zero-padded words.
struct Key {
    words: [u64; KEY_WORDS],
    n: usize,
    hash: u32,
}

/// # Safety
/// `key` readable for the map's key_size bytes.
unsafe fn load_key(map: MapPtr, key: *const u8) -> Key {
    let h = map.hdr();
    let mut k = Key {
        words: [0; KEY_WORDS],
        n: (h.key_stride / 8) as usize,
        hash: 0,
    };
    // SAFETY: key readable for key_size <= MAX_KEY_SIZE bytes (caller); words holds 512.
    unsafe {
        core::ptr::copy_nonoverlapping(key, k.words.as_mut_ptr() as *mut u8, h.key_size as usize)
    };
    let mut x: u64 = 0x243F_6A88_85A3_08D3 ^ h.key_size as u64;
    for w in k.words.iter().take(k.n) {
        x = (x ^ w).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x ^= x >> 32;
    }
    k.hash = (x ^ (x >> 29)) as u32;
    k
}

fn key_eq(map: MapPtr, e: u64, k: &Key) -> bool {
    k.words.iter().take(k.n).enumerate().all(|(i, &w)| {
        map.u64_at(e + ENTRY_HDR + 8 * i as u64)
            .load(Ordering::Relaxed)
            == w
    })
}

fn find_key(map: MapPtr, k: &Key) -> Option<u64> {
    let max = map.hdr().max_entries;
    'restart: for _ in 0..LOOKUP_RESTARTS {
        let mut cur = map.u32_at(bucket_off(map, k.hash)).load(Ordering::Acquire);
        let mut steps = 0u32;
        while cur != 0 {
            if cur > max || steps > max {
                return None; // corrupted or cycling: give up rather than hang
            }
            let e = entry_off(map, cur);
            let g1 = map.u32_at(e + HASH_ENTRY_GEN).load(Ordering::Acquire);
            if g1 & 1 == 0 {
                continue 'restart; // deleted under our feet
            }
            if map.u32_at(e + HASH_ENTRY_HASH).load(Ordering::Relaxed) == k.hash
                && key_eq(map, e, k)
            {
                fence(Ordering::Acquire);
                if map.u32_at(e + HASH_ENTRY_GEN).load(Ordering::Relaxed) == g1 {
                    return Some(e);
                }
                continue 'restart;
            }
            cur = map.u32_at(e + HASH_ENTRY_NEXT).load(Ordering::Acquire);
            steps += 1;
        }
        return None;
    }
    None
}

/// Lock-free lookup: the offset of the live entry holding `key`.
///
/// # Safety
/// `key` readable for the map's key_size bytes.
pub(super) unsafe fn find(map: MapPtr, key: *const u8) -> Option<u64> {
    // SAFETY: forwarded.
    let k = unsafe { load_key(map, key) };
    find_key(map, &k)
}

/// Holds the writer lock; releases it on drop.
struct Locked(MapPtr);

impl Drop for Locked {
    fn drop(&mut self) {
        self.0.hdr().lock.store(0, Ordering::Release);
    }
}

fn lock(map: MapPtr) -> Result<Locked, i64> {
    let me = ((sys::getpid() as u64) << 32) | sys::gettid() as u64;
    let word = &map.hdr().lock;
    for round in 0..SPIN_ROUNDS {
        match word.compare_exchange_weak(0, me, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => return Ok(Locked(map)),
            Err(cur) if cur == me => return Err(-sys::EBUSY), // re-entered (signal handler)
            Err(_) => {}
        }
        let pauses = if round < 4 { 16 } else { SPIN_PAUSES };
        for _ in 0..pauses {
            core::hint::spin_loop();
        }
    }
    // Still held: take it over only if its owner is gone.
    let cur = word.load(Ordering::Relaxed);
    if cur != 0
        && !sys::thread_alive((cur >> 32) as u32, cur as u32)
        && word
            .compare_exchange(cur, me, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    {
        map.hdr().lock_steals.fetch_add(1, Ordering::Relaxed);
        return Ok(Locked(map));
    }
    map.hdr().dropped.fetch_add(1, Ordering::Relaxed);
    Err(-sys::EBUSY)
}

fn pop_free(map: MapPtr) -> Option<u32> {
    let h = map.hdr();
    let e = h.free_head.load(Ordering::Relaxed);
    if e == 0 || e > h.max_entries {
        return None;
    }
    let next = map
        .u32_at(entry_off(map, e) + HASH_ENTRY_FREE_NEXT)
        .load(Ordering::Relaxed);
    h.free_head.store(next, Ordering::Relaxed);
    if next == 0 {
        h.free_tail.store(0, Ordering::Relaxed);
    }
    Some(e)
}

fn push_free(map: MapPtr, e: u32) {
    let h = map.hdr();
    map.u32_at(entry_off(map, e) + HASH_ENTRY_FREE_NEXT)
        .store(0, Ordering::Relaxed);
    let tail = h.free_tail.load(Ordering::Relaxed);
    if tail == 0 || tail > h.max_entries {
        h.free_head.store(e, Ordering::Relaxed);
    } else {
        map.u32_at(entry_off(map, tail) + HASH_ENTRY_FREE_NEXT)
            .store(e, Ordering::Relaxed);
    }
    h.free_tail.store(e, Ordering::Relaxed);
}

/// Update from a program: per-CPU maps write this CPU's slot (a new entry's other slots are
/// zeroed), like Linux.
///
/// # Safety
/// `key` and `value` readable for key_size and value_size bytes.
pub(super) unsafe fn update(map: MapPtr, key: *const u8, value: *const u8, flags: u64) -> i64 {
    // SAFETY: forwarded.
    let k = unsafe { load_key(map, key) };
    let h = map.hdr();
    let percpu = h.map_type == crate::program::MapType::PercpuHash as u32;
    let cpu = if percpu { map.cpu_slot() } else { 0 };
    let _guard = match lock(map) {
        Ok(g) => g,
        Err(e) => return e,
    };
    if let Some(e) = find_key(map, &k) {
        if flags == BPF_NOEXIST {
            return -sys::EEXIST;
        }
        // SAFETY: value readable for value_size (caller); slot within the entry.
        unsafe { map.copy_in(value_off(map, e, cpu), value, h.value_size as usize) };
        return 0;
    }
    if flags == BPF_EXIST {
        return -sys::ENOENT;
    }
    let Some(idx1) = pop_free(map) else {
        return -sys::E2BIG;
    };
    let e = entry_off(map, idx1);
    // Order the key stores after the delete that freed this entry (see find_key's fence).
    fence(Ordering::Release);
    map.u32_at(e + HASH_ENTRY_HASH)
        .store(k.hash, Ordering::Relaxed);
    for (i, &w) in k.words.iter().take(k.n).enumerate() {
        map.u64_at(e + ENTRY_HDR + 8 * i as u64)
            .store(w, Ordering::Relaxed);
    }
    map.zero(value_off(map, e, 0), (h.value_stride * h.ncpus) as usize);
    // SAFETY: as above.
    unsafe { map.copy_in(value_off(map, e, cpu), value, h.value_size as usize) };
    let g = map.u32_at(e + HASH_ENTRY_GEN).load(Ordering::Relaxed);
    map.u32_at(e + HASH_ENTRY_GEN)
        .store(g | 1, Ordering::Release);
    let b = map.u32_at(bucket_off(map, k.hash));
    map.u32_at(e + HASH_ENTRY_NEXT)
        .store(b.load(Ordering::Relaxed), Ordering::Relaxed);
    b.store(idx1, Ordering::Release);
    h.count.fetch_add(1, Ordering::Relaxed);
    0
}

/// # Safety
/// `key` readable for key_size bytes.
pub(super) unsafe fn delete(map: MapPtr, key: *const u8) -> i64 {
    // SAFETY: forwarded.
    let k = unsafe { load_key(map, key) };
    let h = map.hdr();
    let _guard = match lock(map) {
        Ok(g) => g,
        Err(e) => return e,
    };
    let mut link = bucket_off(map, k.hash);
    let mut cur = map.u32_at(link).load(Ordering::Relaxed);
    let mut steps = 0;
    while cur != 0 && cur <= h.max_entries && steps <= h.max_entries {
        let e = entry_off(map, cur);
        if map.u32_at(e + HASH_ENTRY_HASH).load(Ordering::Relaxed) == k.hash && key_eq(map, e, &k) {
            let next = map.u32_at(e + HASH_ENTRY_NEXT).load(Ordering::Relaxed);
            map.u32_at(link).store(next, Ordering::Release);
            let g = map.u32_at(e + HASH_ENTRY_GEN).load(Ordering::Relaxed);
            map.u32_at(e + HASH_ENTRY_GEN)
                .store(g.wrapping_add(1), Ordering::Release);
            push_free(map, cur);
            h.count.fetch_sub(1, Ordering::Relaxed);
            return 0;
        }
        link = e;
        cur = map.u32_at(e + HASH_ENTRY_NEXT).load(Ordering::Relaxed);
        steps += 1;
    }
    -sys::ENOENT
}

/// Reader-side iteration over live entries; see [`super::MapView::hash_for_each`].
pub(super) fn for_each(map: MapPtr, mut f: impl FnMut(&[u8], &[u8])) -> usize {
    let h = map.hdr();
    let mut key = alloc::vec![0u8; h.key_size as usize];
    let mut val = alloc::vec![0u8; (h.value_stride * h.ncpus) as usize];
    let mut n = 0;
    for i in 1..=h.max_entries {
        let e = entry_off(map, i);
        let g1 = map.u32_at(e + HASH_ENTRY_GEN).load(Ordering::Acquire);
        if g1 & 1 == 0 {
            continue;
        }
        for (j, b) in key.iter_mut().enumerate() {
            let w = map
                .u64_at(e + ENTRY_HDR + 8 * (j / 8) as u64)
                .load(Ordering::Relaxed);
            *b = (w >> (8 * (j % 8))) as u8;
        }
        map.copy_out(value_off(map, e, 0), &mut val);
        fence(Ordering::Acquire);
        if map.u32_at(e + HASH_ENTRY_GEN).load(Ordering::Relaxed) != g1 {
            continue;
        }
        f(&key, &val);
        n += 1;
    }
    n
}
