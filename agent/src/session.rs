//! The session as the agent sees it: the header, the function table, the region table and
//! the error message, all in the shared mapping xcover gave to `xcover_agent_init`.
//!
//! The mapping is shared with other processes (xcover, the TUI), so the agent never holds a
//! long-lived Rust reference into it except to the header, whose fields are either atomics
//! or plain values xcover wrote before the agent started. Everything the agent writes that is
//! not an atomic (function statuses, the error text, region records) goes through raw
//! pointers with volatile stores.

use core::fmt;
use core::mem::{offset_of, size_of};
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use xcover_session::{FuncEntry, Region, SessionHeader};

/// The session this agent serves, null before init and after fini.
static SESSION: AtomicPtr<SessionHeader> = AtomicPtr::new(core::ptr::null_mut());
/// Size of the session mapping.
static SESSION_SIZE: AtomicU64 = AtomicU64::new(0);

/// Records the session (after [`check_layout`] accepted it).
///
/// # Safety
/// `p` must point at a mapping of `size` bytes holding a session header that stays mapped
/// until [`clear`] is called.
pub unsafe fn set(p: *mut SessionHeader, size: u64) {
    SESSION_SIZE.store(size, Ordering::Release);
    SESSION.store(p, Ordering::Release);
}

/// Forgets the session (fini).
pub fn clear() {
    SESSION.store(core::ptr::null_mut(), Ordering::Release);
}

/// The session header, if init ran.
pub fn header() -> Option<&'static SessionHeader> {
    let p = SESSION.load(Ordering::Acquire);
    // SAFETY: `set`'s contract keeps the mapping alive while the pointer is stored; the
    // fields read through `&` are atomics or values xcover wrote before init.
    (!p.is_null()).then(|| unsafe { &*p })
}

fn base() -> *mut u8 {
    SESSION.load(Ordering::Acquire) as *mut u8
}

/// Whether `off .. off + count * elem` lies inside a session of `size` bytes.
fn fits(off: u64, count: u64, elem: usize, size: u64) -> bool {
    count
        .checked_mul(elem as u64)
        .and_then(|len| off.checked_add(len))
        .is_some_and(|end| end <= size)
}

/// Checks that every section the header names lies inside the mapping and is aligned.
/// Returns the name of the first bad section.
pub fn check_layout(h: &SessionHeader, size: u64) -> Result<(), &'static str> {
    let sections: [(&'static str, u64, u64, usize, u64); 6] = [
        (
            "function table",
            h.funcs_off,
            h.funcs_count,
            size_of::<FuncEntry>(),
            8,
        ),
        ("string section", h.strings_off, h.strings_size, 1, 1),
        ("map arena", h.arena_off, h.arena_size, 1, 8),
        ("program", h.prog_off, h.prog_insns, 8, 8),
        ("map table", h.maps_off, h.maps_count, 8, 8),
        (
            "region table",
            h.regions_off,
            h.regions_cap,
            size_of::<Region>(),
            8,
        ),
    ];
    for (name, off, count, elem, align) in sections {
        if count != 0 && (!fits(off, count, elem, size) || off % align != 0) {
            return Err(name);
        }
    }
    if h.log_size != 0 && !fits(h.log_off, h.log_size, 1, size) {
        return Err("log ring");
    }
    Ok(())
}

/// Number of functions in the table.
pub fn funcs_count() -> usize {
    header().map_or(0, |h| h.funcs_count as usize)
}

/// Entry `i` of the function table; `None` without a session or when `i` is past its end.
fn func_ptr(i: usize) -> Option<*mut FuncEntry> {
    let h = header()?;
    if i >= h.funcs_count as usize {
        return None;
    }
    // SAFETY: check_layout proved the table fits the mapping; i < funcs_count.
    Some(unsafe { base().add(h.funcs_off as usize + i * size_of::<FuncEntry>()) as *mut FuncEntry })
}

/// A copy of function `i`'s entry (`None` when `i` is not below [`funcs_count`]).
pub fn func(i: usize) -> Option<FuncEntry> {
    let p = func_ptr(i)?;
    // SAFETY: p points inside the table; FuncEntry is plain data, read unaligned-safe and
    // volatile because xcover may read (never write) it concurrently.
    Some(unsafe { p.read_volatile() })
}

/// Sets function `i`'s status and skip reason (nothing when `i` is not below
/// [`funcs_count`]).
pub fn set_func_status(i: usize, status: u32, reason: u32) {
    let Some(p) = func_ptr(i) else {
        return;
    };
    // SAFETY: p points at entry i inside the mapping; the agent is the only writer of these
    // two fields once the session is live.
    unsafe {
        (&raw mut (*p).status).write_volatile(status);
        (&raw mut (*p).skip_reason).write_volatile(reason);
    }
}

/// The probe's instructions, 8 bytes each, at `prog_off`.
pub fn program_bytes() -> &'static [u8] {
    let Some(h) = header() else { return &[] };
    // SAFETY: check_layout proved the range fits; xcover wrote it before init and never
    // changes it while the session lives.
    unsafe {
        core::slice::from_raw_parts(base().add(h.prog_off as usize), (h.prog_insns * 8) as usize)
    }
}

/// Offset of each map header from the arena, by map index.
pub fn map_offsets() -> alloc::vec::Vec<u64> {
    let Some(h) = header() else {
        return alloc::vec::Vec::new();
    };
    (0..h.maps_count as usize)
        .map(|i| {
            // SAFETY: check_layout proved maps_count u64s fit at maps_off (8-aligned).
            unsafe { (base().add(h.maps_off as usize + 8 * i) as *const u64).read_volatile() }
        })
        .collect()
}

/// Address and length of the map arena in this process.
pub fn arena() -> (*mut u8, u64) {
    match header() {
        // SAFETY: check_layout proved the arena fits the mapping.
        Some(h) => (unsafe { base().add(h.arena_off as usize) }, h.arena_size),
        None => (core::ptr::null_mut(), 0),
    }
}

/// Address and length of the log ring in this process, and its write counter.
pub fn log_ring() -> Option<(*mut u8, u64, *const AtomicU64)> {
    let h = header()?;
    if h.log_size == 0 {
        return None;
    }
    // SAFETY: check_layout proved the ring fits the mapping.
    Some((
        unsafe { base().add(h.log_off as usize) },
        h.log_size,
        &h.log_head,
    ))
}

/// Appends a region record; false when there is no session or the table is full. Never
/// allocates (the heap itself records its mappings through this).
pub fn record_region(start: u64, len: u64, kind: u32) -> bool {
    let Some(h) = header() else { return false };
    let n = h.regions_count.load(Ordering::Acquire);
    if n >= h.regions_cap {
        return false;
    }
    let r = Region {
        start,
        len,
        kind,
        _pad: 0,
    };
    // SAFETY: n < regions_cap and check_layout proved the table fits; entries at or above
    // regions_count are ours to write (readers only look below it).
    unsafe {
        (base().add(h.regions_off as usize + n as usize * size_of::<Region>()) as *mut Region)
            .write_volatile(r);
    }
    h.regions_count.store(n + 1, Ordering::Release);
    true
}

/// Region record `i` (`None` without a session or when `i` is not below `regions_count`).
pub fn region(i: u64) -> Option<Region> {
    let h = header()?;
    if i >= h.regions_count.load(Ordering::Acquire) {
        return None;
    }
    // SAFETY: i < regions_count <= regions_cap, inside the table.
    Some(unsafe {
        (base().add(h.regions_off as usize + i as usize * size_of::<Region>()) as *const Region)
            .read_volatile()
    })
}

/// A `fmt::Write` into a fixed buffer, truncating (never allocates).
pub struct ErrText {
    buf: [u8; 256],
    len: usize,
}

impl ErrText {
    /// An empty text.
    pub const fn new() -> Self {
        ErrText {
            buf: [0; 256],
            len: 0,
        }
    }
}

impl fmt::Write for ErrText {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.buf.len().saturating_sub(self.len);
        let mut n = s.len().min(room);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        let (Some(dst), Some(src)) = (self.buf.get_mut(self.len..self.len + n), s.get(..n)) else {
            return Ok(());
        };
        dst.copy_from_slice(src.as_bytes());
        self.len += n;
        Ok(())
    }
}

/// Leaves `args` in the header's `agent_error` for xcover to show.
pub fn set_error(args: fmt::Arguments<'_>) {
    let mut t = ErrText::new();
    let _ = fmt::Write::write_fmt(&mut t, args);
    let p = base();
    if p.is_null() {
        return;
    }
    let Some(h) = header() else {
        return;
    };
    h.agent_error_len.store(0, Ordering::Release);
    let dst = offset_of!(SessionHeader, agent_error);
    for (i, b) in t.buf.iter().take(t.len).enumerate() {
        // SAFETY: dst + i is inside the header's 256-byte agent_error array (t.len <= 256);
        // only the agent writes it.
        unsafe { p.add(dst + i).write_volatile(*b) };
    }
    h.agent_error_len.store(t.len as u32, Ordering::Release);
}

/// Clears the error text.
pub fn clear_error() {
    if let Some(h) = header() {
        h.agent_error_len.store(0, Ordering::Release);
    }
}
