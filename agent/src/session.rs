//! The session this agent serves: the shared mapping xcover gave to `xcover_agent_init`,
//! kept between entry points and used through [`SessionView`], which checks every access
//! against the mapping and never holds a reference into it but to the header (see
//! `xcover_session::view`).

use core::fmt;
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use xcover_session::Region;
use xcover_session::view::SessionView;

/// Base of the session this agent serves, null before init and after fini.
static SESSION: AtomicPtr<u8> = AtomicPtr::new(core::ptr::null_mut());
/// Size of the session's view.
static SESSION_SIZE: AtomicU64 = AtomicU64::new(0);

/// Records the session (after init accepted its header).
///
/// # Safety
/// The mapping `v` views must stay mapped until [`clear`] is called.
pub unsafe fn set(v: SessionView<'_>) {
    SESSION_SIZE.store(v.size(), Ordering::Release);
    SESSION.store(v.base(), Ordering::Release);
}

/// Forgets the session (fini).
pub fn clear() {
    SESSION.store(core::ptr::null_mut(), Ordering::Release);
}

/// The session, if init ran.
pub fn view() -> Option<SessionView<'static>> {
    let p = SESSION.load(Ordering::Acquire);
    // SAFETY: `set` stored a view's base and size, and its contract keeps the mapping alive
    // while the pointer is stored.
    (!p.is_null())
        .then(|| unsafe { SessionView::from_raw_parts(p, SESSION_SIZE.load(Ordering::Acquire)) })
}

/// Appends a region record; false when there is no session or the table is full. Never
/// allocates (the heap itself records its mappings through this).
pub fn record_region(start: u64, len: u64, kind: u32) -> bool {
    view().is_some_and(|v| {
        v.record_region(Region {
            start,
            len,
            kind,
            _pad: 0,
        })
    })
}

/// Leaves `args` in the header's `agent_error` for xcover to show.
pub fn set_error(args: fmt::Arguments<'_>) {
    if let Some(v) = view() {
        v.set_error(args);
    }
}

/// Clears the error text.
pub fn clear_error() {
    if let Some(v) = view() {
        v.clear_error();
    }
}
