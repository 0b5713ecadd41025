//! The xcover agent: the shared object xcover loads into the target process.
//!
//! It is loaded by xcover's own ELF loader (see the `xcover-injector` crate doc for why the
//! target's `dlopen` is never used), so it must be entirely self-contained:
//! - `#![no_std]`, `panic = "abort"`, linked with `-nostartfiles -nodefaultlibs`: no libc, no
//!   `DT_NEEDED`, no imported symbol (the link uses `-z defs` to fail on any), no TLS, no
//!   initialisers. Only `R_X86_64_RELATIVE` relocations remain, which xcover applies.
//! - It provides its own `memcpy`, `memmove`, `memset`, `memcmp` and `bcmp`, which the
//!   compiler may call, written with `rep movsb`/`rep stosb` or plain loops the optimiser
//!   cannot turn back into calls to themselves.
//! - It takes no lock and calls nothing of the target's, so it can run in a thread hijacked
//!   while other threads hold the target's malloc or loader lock.
//!
//! # Entry points
//! Called by xcover in a stopped thread of the target, on a private stack:
//! - [`xcover_agent_init`]`(session, size)`: checks the session header, records it, counts
//!   the call, sets the state to Live; returns 0 or a negative error.
//! - [`xcover_agent_fini`]`()`: marks the session Detaching then Detached, counts the call.
#![no_std]
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

use core::sync::atomic::{AtomicPtr, Ordering};

use xcover_abi::{SESSION_MAGIC, SESSION_VERSION, SessionHeader, SessionState};

/// `xcover_agent_init`: the session pointer is null.
pub const E_NULL: i64 = -1;
/// `xcover_agent_init`: the session is smaller than its header.
pub const E_SIZE: i64 = -2;
/// `xcover_agent_init`: bad magic.
pub const E_MAGIC: i64 = -3;
/// `xcover_agent_init`: layout version this agent does not know.
pub const E_VERSION: i64 = -4;
/// `xcover_agent_fini`: no session.
pub const E_NO_SESSION: i64 = -5;

/// The session this agent serves (its mapping in the target).
static SESSION: AtomicPtr<SessionHeader> = AtomicPtr::new(core::ptr::null_mut());

/// Starts the agent on the session mapped at `session` (`size` bytes).
///
/// # Safety
/// `session` must be null or point at a mapping of at least `size` bytes that stays mapped
/// until [`xcover_agent_fini`] returns.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xcover_agent_init(session: *mut u8, size: u64) -> i64 {
    if session.is_null() {
        return E_NULL;
    }
    if size < core::mem::size_of::<SessionHeader>() as u64 {
        return E_SIZE;
    }
    // SAFETY: the caller guarantees `size` mapped bytes, checked to hold a header; it is
    // page-aligned and every field is valid for any bit pattern.
    let h = unsafe { &*(session as *const SessionHeader) };
    if h.magic != SESSION_MAGIC {
        return E_MAGIC;
    }
    if h.version != SESSION_VERSION {
        return E_VERSION;
    }
    SESSION.store(session as *mut SessionHeader, Ordering::Release);
    h.agent_calls.fetch_add(1, Ordering::AcqRel);
    h.state.store(SessionState::Live as u32, Ordering::Release);
    0
}

/// Stops the agent: the session is marked Detached; xcover unmaps everything next.
///
/// # Safety
/// Called by xcover only, after a successful [`xcover_agent_init`], with the session still
/// mapped.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xcover_agent_fini() -> i64 {
    let p = SESSION.swap(core::ptr::null_mut(), Ordering::AcqRel);
    if p.is_null() {
        return E_NO_SESSION;
    }
    // SAFETY: `p` was checked by init and xcover keeps the mapping until fini returns.
    let h = unsafe { &*p };
    h.state
        .store(SessionState::Detaching as u32, Ordering::Release);
    h.agent_calls.fetch_add(1, Ordering::AcqRel);
    h.state
        .store(SessionState::Detached as u32, Ordering::Release);
    0
}

/// `memcpy`, for code the compiler generates.
///
/// # Safety
/// As C's `memcpy`: `dst` and `src` valid for `n` bytes and not overlapping.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges; `rep movsb` copies forwards (DF is clear
    // per the ABI) exactly `n` bytes.
    unsafe {
        core::arch::asm!(
            "rep movsb",
            inout("rcx") n => _,
            inout("rdi") dst => _,
            inout("rsi") src => _,
            options(nostack, preserves_flags)
        );
    }
    dst
}

/// `memmove`, for code the compiler generates.
///
/// # Safety
/// As C's `memmove`: both ranges valid for `n` bytes (they may overlap).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize).wrapping_sub(src as usize) >= n {
        // No harmful overlap for a forward copy.
        // SAFETY: as above; a forward copy is correct when dst is below src or past its end.
        return unsafe { memcpy(dst, src, n) };
    }
    // SAFETY: copy backwards with DF set, restoring DF afterwards as the ABI requires.
    unsafe {
        core::arch::asm!(
            "std",
            "rep movsb",
            "cld",
            inout("rcx") n => _,
            inout("rdi") dst.add(n).wrapping_sub(1) => _,
            inout("rsi") src.add(n).wrapping_sub(1) => _,
            options(nostack)
        );
    }
    dst
}

/// `memset`, for code the compiler generates.
///
/// # Safety
/// As C's `memset`: `dst` valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the range; `rep stosb` stores `al` `n` times forwards.
    unsafe {
        core::arch::asm!(
            "rep stosb",
            inout("rcx") n => _,
            inout("rdi") dst => _,
            in("al") c as u8,
            options(nostack, preserves_flags)
        );
    }
    dst
}

/// `memcmp`, for code the compiler generates.
///
/// # Safety
/// As C's `memcmp`: both ranges valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: `i < n` and the caller guarantees `n` readable bytes on both sides;
        // volatile reads keep the optimiser from turning this loop into a call to memcmp.
        let (x, y) = unsafe { (a.add(i).read_volatile(), b.add(i).read_volatile()) };
        if x != y {
            return x as i32 - y as i32;
        }
        i += 1;
    }
    0
}

/// `bcmp`, for code the compiler generates.
///
/// # Safety
/// As C's `bcmp`: both ranges valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}

/// A panic stops the call with `ud2`; xcover sees the SIGILL, restores the thread and
/// reports an error instead of letting the target die.
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    // SAFETY: `ud2` only raises #UD; it touches no memory.
    unsafe { core::arch::asm!("ud2", options(noreturn, nomem, nostack)) }
}
