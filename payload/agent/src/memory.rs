//! The interceptor's [`Memory`] inside the target: raw `mmap`/`mprotect` and plain pointer
//! copies in the agent's own address space, and code patches written through
//! `/proc/self/mem`.
//!
//! Why patches go through `/proc/self/mem`: making a page of the target's code writable
//! with `mprotect` splits the code mapping into pieces the kernel does not merge back after
//! the protection is restored (a Rust binary's text went from 1 mapping to 11), so the
//! target's maps would show xcover was there. A write through `/proc/self/mem` uses the
//! kernel's forced-write path, as a debugger's does: the page becomes a private copy inside
//! the same mapping, whose protection never changes.

use xcover_payload::backend::{MemError, Memory, Protection, write_code_protecting};

use crate::{session, sys};

/// How far from the function a mapping may start or end: ±2 GiB less a margin (the
/// interceptor itself accepts up to 2 GiB − 16 MiB).
const REACH_LIMIT: u64 = (2 << 30) - (64 << 20);
/// Search steps: 1 MiB apart for the first 64 MiB, then 32 MiB apart.
const FINE_STEP: u64 = 1 << 20;
const FINE_SPAN: u64 = 64 << 20;
const COARSE_STEP: u64 = 32 << 20;
/// Lowest address tried (the usual `vm.mmap_min_addr`).
const MIN_ADDR: u64 = 0x1_0000;

/// Maps `size` bytes read+write within reach of `near`, searching outward from it below and
/// above in steps with `MAP_FIXED_NOREPLACE`, and records it as a region of `kind`.
pub fn map_near(near: u64, size: u64, kind: u32) -> Option<u64> {
    let size = sys::page_up(size);
    let anchor = near & !(sys::PAGE - 1);
    let mut d = FINE_STEP;
    while d + size <= REACH_LIMIT {
        // Below: the mapping ends `d` below the function; above: starts `d` above it.
        let below = anchor.checked_sub(d + size).filter(|&a| a >= MIN_ADDR);
        let above = anchor
            .checked_add(d)
            .filter(|a| a.checked_add(size).is_some());
        for at in [below, above].into_iter().flatten() {
            if let Some(addr) = sys::mmap_anon(at, size) {
                if session::record_region(addr, size, kind) {
                    return Some(addr);
                }
                // SAFETY: just mapped, unused.
                unsafe { sys::munmap(addr, size) };
                return None;
            }
        }
        d += if d < FINE_SPAN {
            FINE_STEP
        } else {
            COARSE_STEP
        };
    }
    None
}

/// [`Memory`] for the interceptor: the agent's own process.
pub struct AgentMemory;

impl Memory for AgentMemory {
    fn alloc_near(&mut self, near: u64, size: usize) -> Option<u64> {
        map_near(near, size as u64, xcover_abi::REGION_TRAMPOLINES)
    }

    fn protect(&mut self, addr: u64, len: usize, prot: Protection) -> Result<(), MemError> {
        let p = match prot {
            Protection::ReadExec => sys::PROT_READ | sys::PROT_EXEC,
            Protection::ReadWriteExec => sys::PROT_READ | sys::PROT_WRITE | sys::PROT_EXEC,
        };
        // SAFETY: the interceptor only re-protects code pages it is about to patch and its
        // own arenas, and always makes them executable: code running there keeps running.
        let r = unsafe { sys::mprotect(addr, len as u64, p) };
        if r < 0 {
            return Err(MemError {
                op: "protect",
                addr,
            });
        }
        Ok(())
    }

    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        if addr == 0 {
            return Err(MemError { op: "read", addr });
        }
        // SAFETY: the interceptor reads functions named by the session's function table
        // (xcover found them in the target's mapped, executable ELF segments) and its own
        // arenas; `buf` is ours and cannot overlap code.
        unsafe {
            core::ptr::copy_nonoverlapping(addr as *const u8, buf.as_mut_ptr(), buf.len());
        }
        Ok(())
    }

    fn write_code(&mut self, writes: &[(u64, &[u8])]) -> Result<(), MemError> {
        let fd = sys::open_rdwr(b"/proc/self/mem\0");
        if fd < 0 {
            // No /proc (a chroot, say): fall back to re-protecting the pages.
            return write_code_protecting(self, writes);
        }
        let mut res = Ok(());
        for (addr, bytes) in writes {
            // SAFETY: every other thread is stopped away from these bytes (the injector's
            // stop-the-world and the interceptor's thread fix-ups), and this thread runs the
            // agent, not the patched functions.
            let n = unsafe { sys::pwrite(fd, bytes, *addr) };
            if n != bytes.len() as i64 && res.is_ok() {
                res = Err(MemError {
                    op: "write code",
                    addr: *addr,
                });
            }
        }
        sys::close(fd);
        res
    }

    fn write(&mut self, addr: u64, bytes: &[u8]) -> Result<(), MemError> {
        if addr == 0 {
            return Err(MemError { op: "write", addr });
        }
        // SAFETY: the interceptor writes only trampolines into its arenas and entry patches
        // over functions of the table, after making those pages writable, with every other
        // thread stopped away from the bytes (see `commit_hooks`).
        unsafe {
            core::ptr::copy_nonoverlapping(bytes.as_ptr(), addr as *mut u8, bytes.len());
        }
        Ok(())
    }
}
