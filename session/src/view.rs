//! The session seen through raw pointers by a process that maps it: the agent inside the
//! target reads its work from it (the function table, the probe, the map table) and writes
//! its results (function statuses, regions, its error text).
//!
//! The mapping is shared with other processes (xcover, the TUI), so a [`SessionView`] never
//! hands out a Rust reference into it except to the header, whose fields are either atomics
//! or plain values xcover wrote before the agent started. Everything else it reads or writes
//! (table entries, the error text, region records) is copied with volatile loads and stores.
//! Every section access is bounds-checked against the mapping, whatever the header says; an
//! access outside it reads as absent and writes nothing.

use core::fmt;
use core::marker::PhantomData;
use core::mem::{offset_of, size_of};
use core::sync::atomic::{AtomicU64, Ordering};

use crate::arena::Arena;
use crate::layout::{
    AGENT_ERROR_SIZE, FuncEntry, FuncStatus, HookKind, Region, SESSION_MAGIC, SESSION_VERSION,
    SessionHeader,
};
use crate::skip::SkipReason;

/// Why a mapping is not a session this version can use ([`SessionView::new`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViewError {
    /// The pointer is null.
    Null,
    /// The mapping is smaller than a header.
    TooSmall,
    /// The header's magic is not [`SESSION_MAGIC`].
    Magic,
    /// The header's layout version is not [`SESSION_VERSION`].
    Version(u32),
}

impl fmt::Display for ViewError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Null => f.write_str("null session"),
            Self::TooSmall => f.write_str("smaller than a session header"),
            Self::Magic => f.write_str("not an xcover session (bad magic)"),
            Self::Version(v) => write!(f, "layout version {v} (this one is {SESSION_VERSION})"),
        }
    }
}

/// A session mapped read-write in this process at `base`, `size` bytes.
#[derive(Clone, Copy, Debug)]
pub struct SessionView<'a> {
    base: *mut u8,
    size: u64,
    _mapping: PhantomData<&'a [u8]>,
}

/// Whether `off .. off + count * elem` lies inside `size` bytes and `off` is a multiple of
/// `align`.
fn fits(off: u64, count: u64, elem: usize, align: u64, size: u64) -> bool {
    off.is_multiple_of(align)
        && count
            .checked_mul(elem as u64)
            .and_then(|len| off.checked_add(len))
            .is_some_and(|end| end <= size)
}

impl<'a> SessionView<'a> {
    /// Checks the header of the mapping at `base` (its size, magic and layout version) and
    /// returns a view of its first `min(size, total_size)` bytes.
    ///
    /// # Safety
    /// `base` must be null or point at `size` bytes, 8-aligned, that stay mapped read-write
    /// for `'a`.
    pub unsafe fn new(base: *mut u8, size: u64) -> Result<Self, ViewError> {
        if base.is_null() {
            return Err(ViewError::Null);
        }
        if size < size_of::<SessionHeader>() as u64 {
            return Err(ViewError::TooSmall);
        }
        // SAFETY: the caller guarantees `size` mapped bytes, checked to hold a header; it is
        // 8-aligned and every field is valid for any bit pattern.
        let h = unsafe { &*(base as *const SessionHeader) };
        if h.magic != SESSION_MAGIC {
            return Err(ViewError::Magic);
        }
        if h.version != SESSION_VERSION {
            return Err(ViewError::Version(h.version));
        }
        Ok(SessionView {
            base,
            size: size.min(h.total_size),
            _mapping: PhantomData,
        })
    }

    /// The view [`SessionView::new`] returned for this mapping, again (for a process that
    /// keeps the session's address in a global).
    ///
    /// # Safety
    /// `base` and `size` must be a view's [`SessionView::base`] and [`SessionView::size`],
    /// and the mapping must stay mapped for `'a`.
    pub unsafe fn from_raw_parts(base: *mut u8, size: u64) -> Self {
        SessionView {
            base,
            size,
            _mapping: PhantomData,
        }
    }

    /// Where the session is mapped in this process.
    pub fn base(&self) -> *mut u8 {
        self.base
    }

    /// The bytes of the view: the mapping, at most the header's `total_size`.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The header.
    pub fn header(&self) -> &'a SessionHeader {
        // SAFETY: `new` checked the mapping holds a header, 8-aligned, mapped for 'a; the
        // fields read through `&` are atomics or values xcover wrote before the view existed.
        unsafe { &*(self.base as *const SessionHeader) }
    }

    /// Checks that every section the header names lies inside the view and is aligned.
    /// Returns the name of the first bad section.
    pub fn check_layout(&self) -> Result<(), &'static str> {
        let h = self.header();
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
            if count != 0 && !fits(off, count, elem, align, self.size) {
                return Err(name);
            }
        }
        if h.log_size != 0 && !fits(h.log_off, h.log_size, 1, 1, self.size) {
            return Err("log ring");
        }
        Ok(())
    }

    /// Address of element `i` of the table at `off` (elements of `elem` bytes, 8-aligned),
    /// when it lies inside the view.
    fn element(&self, off: u64, i: u64, elem: usize) -> Option<*mut u8> {
        let at = i.checked_mul(elem as u64)?.checked_add(off)?;
        // SAFETY: `at + elem <= size`: inside the mapping.
        fits(at, 1, elem, 8, self.size).then(|| unsafe { self.base.add(at as usize) })
    }

    /// Number of functions in the table.
    pub fn funcs_count(&self) -> usize {
        self.header().funcs_count as usize
    }

    fn func_ptr(&self, i: usize) -> Option<*mut FuncEntry> {
        let h = self.header();
        if i as u64 >= h.funcs_count {
            return None;
        }
        let p = self.element(h.funcs_off, i as u64, size_of::<FuncEntry>())?;
        Some(p as *mut FuncEntry)
    }

    /// A copy of function `i`'s entry (`None` past the table).
    pub fn func(&self, i: usize) -> Option<FuncEntry> {
        let p = self.func_ptr(i)?;
        // SAFETY: p points at an aligned entry inside the mapping; FuncEntry is plain data,
        // read volatile because xcover may read (never write) it concurrently.
        Some(unsafe { p.read_volatile() })
    }

    /// Sets function `i`'s status and skip reason (the reason's code for
    /// [`FuncStatus::Skipped`], else 0). Nothing happens past the table.
    pub fn set_func_status(&self, i: usize, status: FuncStatus, reason: Option<SkipReason>) {
        let code = match status {
            FuncStatus::Skipped => reason.map_or(0, SkipReason::code),
            _ => 0,
        };
        self.write_func_status(i, status, code);
    }

    /// Sets function `i`'s status and the raw code beside it: a [`SkipReason`] code for
    /// `Skipped`, else a [`FuncEntry::pack_hook`] of its [`HookKind`] and
    /// [`crate::UnhookReason`] (see [`FuncEntry::skip_reason`]). Nothing happens past the
    /// table.
    pub fn set_func_status_code(&self, i: usize, status: FuncStatus, code: u32) {
        self.write_func_status(i, status, code);
    }

    /// Marks function `i` [`FuncStatus::Hooked`], patched as `kind` says (its code goes in
    /// bits 0..8 of the field a skipped function's reason uses, see
    /// [`FuncEntry::skip_reason`]). The reason of an earlier live unhook stays: its count
    /// is a lower bound.
    pub fn set_func_hooked(&self, i: usize, kind: HookKind) {
        let reason = self.func(i).and_then(|f| f.unhook_reason());
        self.write_func_status(
            i,
            FuncStatus::Hooked,
            FuncEntry::pack_hook(Some(kind), reason),
        );
    }

    /// Marks a hooked function `i` (`Hooked` or `Unhooking`) [`FuncStatus::Pending`] again,
    /// keeping how it was hooked and why it was last unhooked live (for the reports written
    /// after detach). Nothing happens unless it is hooked.
    pub fn set_func_unhooked(&self, i: usize) {
        if let Some(f) = self.func(i).filter(FuncEntry::is_hooked) {
            self.write_func_status(i, FuncStatus::Pending, f.skip_reason);
        }
    }

    fn write_func_status(&self, i: usize, status: FuncStatus, code: u32) {
        let Some(p) = self.func_ptr(i) else {
            return;
        };
        // SAFETY: p points at entry i inside the mapping; while an entry point runs the
        // agent is the only writer of these two fields (xcover writes a request only
        // between two calls it makes, see `FuncStatus::Unhooking`).
        unsafe {
            (&raw mut (*p).status).write_volatile(status as u32);
            (&raw mut (*p).skip_reason).write_volatile(code);
        }
    }

    /// The probe's instructions, 8 bytes each (empty when they do not fit the view).
    pub fn program_bytes(&self) -> &'a [u8] {
        let h = self.header();
        if !fits(h.prog_off, h.prog_insns, 8, 8, self.size) {
            return &[];
        }
        // SAFETY: the range lies inside the mapping (checked); xcover wrote it before the
        // agent started and never changes it while the session lives.
        unsafe {
            core::slice::from_raw_parts(
                self.base.add(h.prog_off as usize),
                (h.prog_insns * 8) as usize,
            )
        }
    }

    /// Number of maps in the map table.
    pub fn maps_count(&self) -> usize {
        self.header().maps_count as usize
    }

    /// Offset of map `i`'s header from the arena (`None` past the map table).
    pub fn map_offset(&self, i: usize) -> Option<u64> {
        let h = self.header();
        if i as u64 >= h.maps_count {
            return None;
        }
        let p = self.element(h.maps_off, i as u64, 8)?;
        // SAFETY: an aligned u64 inside the mapping, written by xcover before the agent ran.
        Some(unsafe { (p as *const u64).read_volatile() })
    }

    /// The map arena (empty when it does not fit the view).
    pub fn arena(&self) -> Arena {
        let h = self.header();
        if h.arena_size == 0 || !fits(h.arena_off, h.arena_size, 1, 8, self.size) {
            // SAFETY: an empty arena designates no memory.
            return unsafe { Arena::from_raw(core::ptr::null_mut(), 0) };
        }
        // SAFETY: the arena lies inside the mapping, which stays mapped for 'a; xcover laid
        // it out before the agent ran.
        unsafe { Arena::from_raw(self.base.add(h.arena_off as usize), h.arena_size) }
    }

    /// Address and length of the log ring in this process, and its write counter.
    pub fn log_ring(&self) -> Option<(*mut u8, u64, &'a AtomicU64)> {
        let h = self.header();
        if h.log_size == 0 || !fits(h.log_off, h.log_size, 1, 1, self.size) {
            return None;
        }
        // SAFETY: the ring lies inside the mapping (checked).
        Some((
            unsafe { self.base.add(h.log_off as usize) },
            h.log_size,
            &h.log_head,
        ))
    }

    /// Appends a region record; false when the table is full. Never allocates.
    pub fn record_region(&self, r: Region) -> bool {
        let h = self.header();
        let n = h.regions_count.load(Ordering::Acquire);
        if n >= h.regions_cap {
            return false;
        }
        let Some(p) = self.element(h.regions_off, n, size_of::<Region>()) else {
            return false;
        };
        // SAFETY: an aligned record inside the mapping; entries at or above regions_count
        // are ours to write (readers only look below it).
        unsafe { (p as *mut Region).write_volatile(r) };
        h.regions_count.store(n + 1, Ordering::Release);
        true
    }

    /// Region record `i` (`None` when `i` is not below `regions_count`).
    pub fn region(&self, i: u64) -> Option<Region> {
        let h = self.header();
        if i >= h.regions_count.load(Ordering::Acquire).min(h.regions_cap) {
            return None;
        }
        let p = self.element(h.regions_off, i, size_of::<Region>())?;
        // SAFETY: an aligned, complete record inside the mapping (i < regions_count).
        Some(unsafe { (p as *const Region).read_volatile() })
    }

    /// Leaves `args` in the header's `agent_error` (truncated to its [`AGENT_ERROR_SIZE`]
    /// bytes, on a character boundary) for xcover to show. Never allocates.
    pub fn set_error(&self, args: fmt::Arguments<'_>) {
        let mut t = ErrorText::new();
        let _ = fmt::Write::write_fmt(&mut t, args);
        let h = self.header();
        h.agent_error_len.store(0, Ordering::Release);
        let dst = offset_of!(SessionHeader, agent_error);
        for (i, b) in t.as_bytes().iter().enumerate() {
            // SAFETY: dst + i is inside the header's agent_error array (the text is at most
            // AGENT_ERROR_SIZE bytes); only the agent writes it.
            unsafe { self.base.add(dst + i).write_volatile(*b) };
        }
        h.agent_error_len
            .store(t.as_bytes().len() as u32, Ordering::Release);
    }

    /// Clears the error text.
    pub fn clear_error(&self) {
        self.header().agent_error_len.store(0, Ordering::Release);
    }
}

/// A `fmt::Write` into a fixed buffer the size of `SessionHeader::agent_error`, truncating on
/// a character boundary (never allocates).
pub struct ErrorText {
    buf: [u8; AGENT_ERROR_SIZE],
    len: usize,
}

impl ErrorText {
    /// An empty text.
    pub const fn new() -> Self {
        ErrorText {
            buf: [0; AGENT_ERROR_SIZE],
            len: 0,
        }
    }

    /// The text so far.
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }
}

impl Default for ErrorText {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Write for ErrorText {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::SESSION_VERSION;

    /// An 8-aligned buffer of 8 KiB.
    struct Buf([u64; 1024]);

    /// A session of 8 KiB: a header, then a function table of 2 entries and a region table
    /// of 2 records.
    fn session() -> Buf {
        let mut b = Buf([0; 1024]);
        // SAFETY: the buffer is 8-aligned, larger than a header and ours.
        let h = unsafe { &mut *(b.0.as_mut_ptr() as *mut SessionHeader) };
        h.magic = SESSION_MAGIC;
        h.version = SESSION_VERSION;
        h.total_size = 8192;
        let hdr = size_of::<SessionHeader>() as u64;
        h.funcs_off = hdr;
        h.funcs_count = 2;
        h.regions_off = hdr + 2 * size_of::<FuncEntry>() as u64;
        h.regions_cap = 2;
        b
    }

    fn view(b: &mut Buf, size: u64) -> Result<SessionView<'_>, ViewError> {
        // SAFETY: the buffer outlives the view and holds at least `size` bytes.
        unsafe { SessionView::new(b.0.as_mut_ptr() as *mut u8, size) }
    }

    #[test]
    fn headers_are_checked() {
        let mut b = session();
        assert_eq!(view(&mut b, 8).err(), Some(ViewError::TooSmall));
        b.0[0] = 0;
        assert_eq!(view(&mut b, 8192).err(), Some(ViewError::Magic));
        let mut b = session();
        // SAFETY: the buffer holds a header.
        unsafe { (*(b.0.as_mut_ptr() as *mut SessionHeader)).version = 1 };
        assert_eq!(view(&mut b, 8192).err(), Some(ViewError::Version(1)));
        // SAFETY: a null pointer is refused before it is read.
        let null = unsafe { SessionView::new(core::ptr::null_mut(), 8192) };
        assert_eq!(null.err(), Some(ViewError::Null));
    }

    #[test]
    fn sections_stay_inside_the_mapping() {
        let mut b = session();
        let v = view(&mut b, 8192).unwrap();
        assert_eq!(v.check_layout(), Ok(()));
        v.set_func_status(1, FuncStatus::Skipped, Some(SkipReason::EnteredInside));
        let f = v.func(1).unwrap();
        assert_eq!(f.status(), Some(FuncStatus::Skipped));
        assert_eq!(f.skip_reason(), Some(SkipReason::EnteredInside));
        v.set_func_status(1, FuncStatus::Hooked, Some(SkipReason::NoRoom));
        assert_eq!(v.func(1).unwrap().skip_reason, 0);
        v.set_func_hooked(1, HookKind::Trap);
        assert_eq!(v.func(1).unwrap().hook_kind(), Some(HookKind::Trap));
        v.set_func_unhooked(1);
        let f = v.func(1).unwrap();
        assert_eq!(f.status(), Some(FuncStatus::Pending));
        assert_eq!(f.hook_kind(), Some(HookKind::Trap));
        // A live unhook's reason survives hooking again and detach.
        let code = FuncEntry::pack_hook(Some(HookKind::Trap), Some(crate::UnhookReason::User));
        v.set_func_status_code(1, FuncStatus::Unhooked, code);
        v.set_func_hooked(1, HookKind::Jmp);
        v.set_func_unhooked(1);
        let f = v.func(1).unwrap();
        assert_eq!(f.status(), Some(FuncStatus::Pending));
        assert_eq!(f.hook_kind(), Some(HookKind::Jmp));
        assert_eq!(f.unhook_reason(), Some(crate::UnhookReason::User));
        v.set_func_hooked(2, HookKind::Jmp);
        assert!(v.func(2).is_none());
        let r = |start| Region {
            start,
            len: 4096,
            kind: crate::REGION_HEAP,
            _pad: 0,
        };
        assert!(v.record_region(r(1)) && v.record_region(r(2)));
        assert!(!v.record_region(r(3)), "the table holds 2");
        assert_eq!(v.region(1), Some(r(2)));
        assert_eq!(v.region(2), None);
        assert!(v.arena().is_empty());
        assert!(v.program_bytes().is_empty());
        assert_eq!(v.map_offset(0), None);

        // A function table past the mapping: refused by check_layout, absent to readers.
        let small = size_of::<SessionHeader>() as u64 + 64;
        let mut b = session();
        let v = view(&mut b, small).unwrap();
        assert_eq!(v.check_layout(), Err("function table"));
        assert!(v.func(0).is_some());
        assert!(v.func(1).is_none());
    }

    #[test]
    fn error_text_is_truncated_on_a_char_boundary() {
        let mut b = session();
        let v = view(&mut b, 8192).unwrap();
        /// 200 two-byte characters.
        struct Long;
        impl fmt::Display for Long {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                (0..200).try_for_each(|_| f.write_str("é"))
            }
        }
        v.set_error(format_args!("x{Long}"));
        let h = v.header();
        let n = h.agent_error_len.load(Ordering::Acquire) as usize;
        assert_eq!(n, 255, "1 + 127 two-byte characters");
        assert!(core::str::from_utf8(&h.agent_error[..n]).is_ok());
        v.clear_error();
        assert_eq!(h.agent_error_len.load(Ordering::Acquire), 0);
    }
}
