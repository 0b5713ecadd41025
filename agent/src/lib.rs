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
//! Called by xcover in a stopped thread of the target, on a private stack, one at a time
//! with every thread of the target stopped (see `xcover_session::entry`):
//! - [`xcover_agent_init`]`(session, size)`: checks the session header and its layout,
//!   records it, counts the call, sets the state to Live; returns 0 or a negative error.
//! - [`xcover_agent_hook`]`(ips, moves, n)`: on the first call verifies and JIT-compiles the
//!   session's probe and creates the interceptor; then plans hooks for every `Pending`
//!   function in one batch (trampolines written, nothing patched) and tells xcover where
//!   each stopped thread must move.
//! - [`xcover_agent_commit`]`()`: once xcover has moved them, writes the entry patches.
//! - [`xcover_agent_unhook`]`(ips, moves, n)`: restores every hooked function.
//! - [`xcover_agent_unhook_some`]`(ips, moves, n)`: restores the functions xcover marked
//!   `Unhooking` (a live unhook: `xcover unhook`, `--first-hit`, `--max-overhead`).
//! - [`xcover_agent_fini`]`()`: unmaps every region the agent mapped (heap, JIT code,
//!   trampolines), marks the session Detached. xcover unmaps the agent itself afterwards.
//!
//! A failing entry point returns a negative code and leaves a message in the header's
//! `agent_error`.
//!
//! # Modules
//! - `heap`: the global allocator (talc over recorded mmap regions);
//! - `session`: access to the shared session mapping;
//! - `memory`: the interceptor's `Memory` (mappings near functions, code writes);
//! - `hook`: the work of the entry points and the agent's state;
//! - `trap`: the SIGTRAP handler serving one-byte trap hooks, chained to the target's own.
#![no_std]
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
// A panic here is a SIGILL in the user's process: no unwrap, expect, panic or unchecked
// indexing.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

extern crate alloc;

mod heap;
mod hook;
mod memory;
mod session;
mod trap;

use core::sync::atomic::Ordering;

use xcover_session::SessionState;
use xcover_session::view::{SessionView, ViewError};

/// `xcover_agent_init`: the session pointer is null.
pub const E_NULL: i64 = -1;
/// `xcover_agent_init`: the session is smaller than its header.
pub const E_SIZE: i64 = -2;
/// `xcover_agent_init`: bad magic.
pub const E_MAGIC: i64 = -3;
/// `xcover_agent_init`: layout version this agent does not know.
pub const E_VERSION: i64 = -4;
/// An entry point other than init ran without a session.
pub const E_NO_SESSION: i64 = hook::E_NO_SESSION;
/// `xcover_agent_init`: a section lies outside the session.
pub const E_LAYOUT: i64 = -6;

/// Starts the agent on the session mapped at `session` (`size` bytes).
///
/// # Safety
/// `session` must be null or point at a mapping of at least `size` bytes that stays mapped
/// until [`xcover_agent_fini`] returns.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xcover_agent_init(session: *mut u8, size: u64) -> i64 {
    // SAFETY: the caller guarantees `size` mapped bytes (page-aligned) until fini.
    let v = match unsafe { SessionView::new(session, size) } {
        Ok(v) => v,
        Err(ViewError::Null) => return E_NULL,
        Err(ViewError::TooSmall) => return E_SIZE,
        Err(ViewError::Magic) => return E_MAGIC,
        Err(ViewError::Version(_)) => return E_VERSION,
    };
    let layout = v.check_layout();
    // SAFETY: caller contract: the mapping lives until fini.
    unsafe { session::set(v) };
    if let Err(what) = layout {
        session::set_error(format_args!(
            "the session's {what} lies outside its {} bytes",
            v.size()
        ));
        session::clear();
        return E_LAYOUT;
    }
    let h = v.header();
    session::clear_error();
    h.agent_calls.fetch_add(1, Ordering::AcqRel);
    h.state.store(SessionState::Live as u32, Ordering::Release);
    0
}

/// Plans the hooks of every `Pending` function of the session's table (see
/// `xcover_session::entry::HOOK`). Returns the number of functions planned, or a negative error.
///
/// # Safety
/// Called by xcover only, after init, with every thread of the process stopped; `ips` and
/// `moves` valid for `n` u64s each.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xcover_agent_hook(ips: *const u64, moves: *mut u64, n: u64) -> i64 {
    // SAFETY: caller contract.
    unsafe { hook::hook(ips, moves, n) }
}

/// Writes the entry patches [`xcover_agent_hook`] planned (see `xcover_session::entry::COMMIT`).
/// Returns the number of functions hooked, or a negative error.
///
/// # Safety
/// Called by xcover only, right after [`xcover_agent_hook`], with every thread of the
/// process stopped and those it named moved.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xcover_agent_commit() -> i64 {
    // SAFETY: caller contract.
    unsafe { hook::commit() }
}

/// Unhooks every hooked function (see `xcover_session::entry::UNHOOK`). Returns the number of
/// functions unhooked, or a negative error.
///
/// # Safety
/// As [`xcover_agent_hook`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xcover_agent_unhook(ips: *const u64, moves: *mut u64, n: u64) -> i64 {
    // SAFETY: caller contract.
    unsafe { hook::unhook(ips, moves, n) }
}

/// Unhooks the functions xcover marked `Unhooking` (see
/// `xcover_session::entry::UNHOOK_SOME`). Returns the number unhooked, or a negative error.
///
/// # Safety
/// As [`xcover_agent_hook`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xcover_agent_unhook_some(ips: *const u64, moves: *mut u64, n: u64) -> i64 {
    // SAFETY: caller contract.
    unsafe { hook::unhook_some(ips, moves, n) }
}

/// Stops the agent: unmaps what it mapped, marks the session Detached; xcover unmaps the
/// agent and the session next.
///
/// # Safety
/// Called by xcover only, after a successful [`xcover_agent_init`] and after
/// [`xcover_agent_unhook`], with the session still mapped and no thread inside any region of
/// the session's region table.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xcover_agent_fini() -> i64 {
    // SAFETY: caller contract.
    unsafe { hook::fini() }
}

/// `memcpy`, for code the compiler generates.
///
/// # Safety
/// As C's `memcpy`: `dst` and `src` valid for `n` bytes and not overlapping.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // Small copies (most of the interceptor's: instructions, hook records, code bytes) as
    // two overlapping loads and stores: `rep movsb` costs tens of cycles to start. Straight
    // code, no loop, so the compiler cannot turn it back into a call to `memcpy`.
    if n <= 32 {
        // SAFETY: the caller guarantees `n` bytes at both; every access below stays inside
        // them (the pairs overlap when `n` is not a multiple of the width), and unaligned
        // reads and writes are allowed on x86-64. All loads happen before the stores.
        unsafe {
            match n {
                0 => {}
                1..=3 => {
                    let (a, b, c) = (*src, *src.add(n / 2), *src.add(n - 1));
                    *dst = a;
                    *dst.add(n / 2) = b;
                    *dst.add(n - 1) = c;
                }
                4..=7 => {
                    let a = (src as *const u32).read_unaligned();
                    let b = (src.add(n - 4) as *const u32).read_unaligned();
                    (dst as *mut u32).write_unaligned(a);
                    (dst.add(n - 4) as *mut u32).write_unaligned(b);
                }
                8..=16 => {
                    let a = (src as *const u64).read_unaligned();
                    let b = (src.add(n - 8) as *const u64).read_unaligned();
                    (dst as *mut u64).write_unaligned(a);
                    (dst.add(n - 8) as *mut u64).write_unaligned(b);
                }
                _ => {
                    let a = (src as *const u128).read_unaligned();
                    let b = (src.add(n - 16) as *const u128).read_unaligned();
                    (dst as *mut u128).write_unaligned(a);
                    (dst.add(n - 16) as *mut u128).write_unaligned(b);
                }
            }
        }
        return dst;
    }
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

/// The precompiled `alloc` library is built for unwinding, so its cleanup paths name the
/// unwinder's resume function; the agent is built with `panic = "abort"` and nothing ever
/// unwinds, so this is never called. It stops the thread like a panic would.
#[unsafe(no_mangle)]
pub extern "C" fn _Unwind_Resume() -> ! {
    // SAFETY: `ud2` only raises #UD; it touches no memory.
    unsafe { core::arch::asm!("ud2", options(noreturn, nomem, nostack)) }
}

/// The personality routine the precompiled `alloc` library's unwind tables name; never
/// called, as nothing unwinds in the agent (`panic = "abort"`).
#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {
    // SAFETY: `ud2` only raises #UD; it touches no memory.
    unsafe { core::arch::asm!("ud2", options(noreturn, nomem, nostack)) }
}

/// A panic stops the call with `ud2`; xcover sees the SIGILL, restores the thread and
/// reports an error instead of letting the target die.
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    // SAFETY: `ud2` only raises #UD; it touches no memory.
    unsafe { core::arch::asm!("ud2", options(noreturn, nomem, nostack)) }
}
