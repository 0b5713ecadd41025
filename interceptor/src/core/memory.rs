//! The operating-system access the interceptor needs, provided by its caller: the
//! [`Memory`] trait (raw system calls in the agent, libc in tests), so the crate needs no
//! libc and can be tested on the local process.

use alloc::vec::Vec;
use core::fmt;

/// Page size assumed for protection changes.
pub const PAGE_SIZE: u64 = 4096;

/// Page protections the backend asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protection {
    /// Read + execute (code at rest).
    ReadExec,
    /// Read + write + execute (while patching code other threads may be executing).
    ReadWriteExec,
}

/// A failed memory operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemError {
    /// The operation (`"read"`, `"write"`, `"protect"`).
    pub op: &'static str,
    /// The address it was about.
    pub addr: u64,
}

impl fmt::Display for MemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "memory {} at {:#x} failed", self.op, self.addr)
    }
}

/// Operating-system access the interceptor needs, provided by the caller (raw syscalls in the
/// agent, libc in tests).
pub trait Memory {
    /// Maps `size` bytes read+write, anywhere within ±2 GiB of `near` (closer is better),
    /// returning the address, page-aligned.
    fn alloc_near(&mut self, near: u64, size: usize) -> Option<u64>;
    /// Changes the protection of the pages covering `addr..addr+len` (page-aligned).
    ///
    /// Patched code pages are made read+write+exec for the write and read+exec after it
    /// (code is assumed to be read+exec at rest); arenas likewise.
    fn protect(&mut self, addr: u64, len: usize, prot: Protection) -> Result<(), MemError>;
    /// Reads `buf.len()` bytes at `addr`.
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), MemError>;
    /// Writes `bytes` at `addr`; the pages are writable (the interceptor protected them).
    fn write(&mut self, addr: u64, bytes: &[u8]) -> Result<(), MemError>;
    /// Writes entry patches (or the original bytes back) over live code, with every other
    /// thread stopped away from it. The default makes each run of pages writable, writes,
    /// and makes it read+exec again ([`write_code_protecting`]); an implementation that can
    /// write code without changing its mapping (the agent writes through `/proc/self/mem`,
    /// so the mapping is neither split nor re-protected) overrides it.
    fn write_code(&mut self, writes: &[(u64, &[u8])]) -> Result<(), MemError> {
        write_code_protecting(self, writes)
    }
}

/// Writes code by re-protecting it: every run of pages the writes touch is made writable
/// (and still executable), written, and made read+exec again. The default of
/// [`Memory::write_code`].
pub fn write_code_protecting<M: Memory + ?Sized>(
    mem: &mut M,
    writes: &[(u64, &[u8])],
) -> Result<(), MemError> {
    let mut pages: Vec<u64> = Vec::with_capacity(writes.len());
    for (a, b) in writes {
        let mut p = a & !(PAGE_SIZE - 1);
        while p < a + b.len() as u64 {
            pages.push(p);
            p += PAGE_SIZE;
        }
    }
    pages.sort_unstable();
    pages.dedup();
    let mut runs: Vec<(u64, usize)> = Vec::new();
    for p in pages {
        match runs.last_mut() {
            Some((s, n)) if *s + (*n as u64) * PAGE_SIZE == p => *n += 1,
            _ => runs.push((p, 1)),
        }
    }
    for (s, n) in &runs {
        mem.protect(*s, n * PAGE_SIZE as usize, Protection::ReadWriteExec)?;
    }
    let mut res = Ok(());
    for (a, b) in writes {
        res = res.and(mem.write(*a, b));
    }
    for (s, n) in &runs {
        res = res.and(mem.protect(*s, n * PAGE_SIZE as usize, Protection::ReadExec));
    }
    res
}
