//! RINGBUF: Linux's BPF ring buffer, shared by processes.
//!
//! The data area (`max_entries` bytes, a power of two) holds records, each an 8-byte header
//! then the payload, padded to 8 bytes. The header is one little-endian u64: the low u32 is
//! the payload length with [`RINGBUF_BUSY_BIT`] (reserved, not yet submitted) and
//! [`RINGBUF_DISCARD_BIT`] (skip it), as in Linux; the high u32 is the record header's
//! offset from the map header (never 0), which lets `submit` find the map from the record
//! alone, the job Linux's `pg_off` does.
//!
//! - Producers (any number, any process) reserve with a CAS on `producer_pos`, after checking
//!   `producer_pos + len - consumer_pos <= size`; if not, they count a drop and fail. A record
//!   never straddles the end: the reservation then also covers the tail, which becomes a
//!   discarded padding record.
//! - The consumer (one) walks from `consumer_pos` to `producer_pos`, stops at a header that is
//!   busy or still zero, hands out committed payloads, zeroes every consumed byte and only then
//!   publishes the new `consumer_pos`. So the space producers reserve is always zero, and a
//!   zero header reliably means "reserved, header not written yet": a consumer never reads a
//!   stale header as a fresh one, and never sees a torn record.
//!
//! A producer that dies between reserve and submit stalls the consumer at its record, as in
//! Linux; the drop counter then shows the ring filling up.

use core::sync::atomic::Ordering;

use super::{MapPtr, RINGBUF_BUSY_BIT, RINGBUF_DISCARD_BIT, RINGBUF_HDR_SZ};
use xcover_rt as sys;

const LEN_MASK: u32 = !(RINGBUF_BUSY_BIT | RINGBUF_DISCARD_BIT);

/// `BPF_RB_NO_WAKEUP | BPF_RB_FORCE_WAKEUP`: accepted and ignored (no one sleeps on us).
const WAKEUP_FLAGS: u64 = 3;

fn round8(v: u64) -> u64 {
    (v + 7) & !7
}

/// `bpf_ringbuf_reserve`: the payload address of a new busy record of `size` bytes, or 0
/// when the buffer is full (the drop counter is incremented), `size` is too large, or
/// `flags` is not 0.
pub fn reserve(map: MapPtr, size: u64, flags: u64) -> u64 {
    let h = map.hdr();
    if h.map_type != crate::program::MapType::Ringbuf as u32 || flags != 0 {
        return 0;
    }
    let cap = h.data_size;
    if size > (LEN_MASK as u64) || size + RINGBUF_HDR_SZ > cap {
        return 0;
    }
    let len = round8(size + RINGBUF_HDR_SZ);
    let mut prod = h.producer_pos.load(Ordering::Relaxed);
    let (idx, pad) = loop {
        let cons = h.consumer_pos.load(Ordering::Acquire);
        let idx = prod & (cap - 1);
        let pad = if idx + len > cap { cap - idx } else { 0 };
        if prod.wrapping_add(pad + len).wrapping_sub(cons) > cap {
            h.dropped.fetch_add(1, Ordering::Relaxed);
            return 0;
        }
        match h.producer_pos.compare_exchange_weak(
            prod,
            prod + pad + len,
            Ordering::AcqRel,
            Ordering::Relaxed,
        ) {
            Ok(_) => break (idx, pad),
            Err(p) => prod = p,
        }
    };
    if pad > 0 {
        let off = h.data_off + idx;
        let word = ((pad - RINGBUF_HDR_SZ) as u32 | RINGBUF_DISCARD_BIT) as u64 | (off << 32);
        map.u64_at(off).store(word, Ordering::Release);
    }
    let rec = if pad > 0 { 0 } else { idx };
    let off = h.data_off + rec;
    let word = (size as u32 | RINGBUF_BUSY_BIT) as u64 | (off << 32);
    map.u64_at(off).store(word, Ordering::Release);
    map.at(off + RINGBUF_HDR_SZ) as u64
}

/// Commits (or discards) a record returned by [`reserve`]; returns 0 or `-EINVAL` if the
/// pointer does not lead back to a ring buffer.
///
/// # Safety
/// `sample` must be a payload address returned by [`reserve`] in this process and not yet
/// submitted or discarded.
pub unsafe fn submit_or_discard(sample: u64, discard: bool) -> i64 {
    if sample < RINGBUF_HDR_SZ || !sample.is_multiple_of(8) {
        return -sys::EINVAL;
    }
    let hdr_addr = sample - RINGBUF_HDR_SZ;
    // SAFETY: per the caller the record header precedes `sample` in a mapped ring buffer;
    // it is 8-aligned and accessed atomically.
    let word = unsafe { &*(hdr_addr as *const core::sync::atomic::AtomicU64) };
    let w = word.load(Ordering::Relaxed);
    let back = w >> 32;
    if back == 0 || back > hdr_addr {
        return -sys::EINVAL;
    }
    // SAFETY: the map header lies `back` bytes before the record in the same mapping.
    let Some(map) = (unsafe { MapPtr::from_addr(hdr_addr - back) }) else {
        return -sys::EINVAL;
    };
    if map.hdr().map_type != crate::program::MapType::Ringbuf as u32 {
        return -sys::EINVAL;
    }
    let mut lo = (w as u32) & !RINGBUF_BUSY_BIT;
    if discard {
        lo |= RINGBUF_DISCARD_BIT;
    }
    word.store((w & !0xffff_ffff) | lo as u64, Ordering::Release);
    0
}

/// `bpf_ringbuf_submit`.
///
/// # Safety
/// As [`submit_or_discard`].
pub unsafe fn submit(sample: u64, flags: u64) -> i64 {
    if flags & !WAKEUP_FLAGS != 0 {
        return -sys::EINVAL;
    }
    // SAFETY: forwarded.
    unsafe { submit_or_discard(sample, false) }
}

/// `bpf_ringbuf_discard`.
///
/// # Safety
/// As [`submit_or_discard`].
pub unsafe fn discard(sample: u64, flags: u64) -> i64 {
    if flags & !WAKEUP_FLAGS != 0 {
        return -sys::EINVAL;
    }
    // SAFETY: forwarded.
    unsafe { submit_or_discard(sample, true) }
}

/// `bpf_ringbuf_output`: copies `size` bytes at `data` into a new record. 0, `-EAGAIN` when
/// full (counted as a drop), `-EINVAL` for bad flags or a non-ring-buffer map, `-E2BIG` if
/// the record can never fit.
///
/// # Safety
/// `data` must be readable for `size` bytes.
pub unsafe fn output(map: MapPtr, data: *const u8, size: u64, flags: u64) -> i64 {
    let h = map.hdr();
    if h.map_type != crate::program::MapType::Ringbuf as u32 || flags & !WAKEUP_FLAGS != 0 {
        return -sys::EINVAL;
    }
    if size + RINGBUF_HDR_SZ > h.data_size {
        return -sys::E2BIG;
    }
    let p = reserve(map, size, 0);
    if p == 0 {
        return -sys::EAGAIN;
    }
    // SAFETY: `p` is the payload of a record we own, `size` bytes long; data readable per
    // the caller.
    unsafe {
        core::ptr::copy_nonoverlapping(data, p as *mut u8, size as usize);
        submit_or_discard(p, false)
    }
}

/// Consumes ready records; see [`super::MapView::ringbuf_consume`].
pub fn consume(map: MapPtr, mut f: impl FnMut(&[u8])) -> usize {
    let h = map.hdr();
    let cap = h.data_size;
    let mut cons = h.consumer_pos.load(Ordering::Relaxed);
    let mut n = 0;
    loop {
        let prod = h.producer_pos.load(Ordering::Acquire);
        if cons >= prod {
            return n;
        }
        let idx = cons & (cap - 1);
        let off = h.data_off + idx;
        let w = map.u64_at(off).load(Ordering::Acquire);
        let lo = w as u32;
        if w >> 32 == 0 || lo & RINGBUF_BUSY_BIT != 0 {
            return n; // reserved, not committed yet
        }
        let len = (lo & LEN_MASK) as u64;
        let rec = round8(len + RINGBUF_HDR_SZ);
        if rec > cap - idx {
            return n; // corrupt; refuse to walk off the end
        }
        if lo & RINGBUF_DISCARD_BIT == 0 {
            // SAFETY: the record is committed and lies in [consumer_pos, producer_pos):
            // producers do not touch it until we advance consumer_pos below.
            f(unsafe { map.slice(off + RINGBUF_HDR_SZ, len as usize) });
            n += 1;
        }
        map.zero(off, rec as usize);
        cons += rec;
        h.consumer_pos.store(cons, Ordering::Release);
    }
}
