//! Runs JIT output in this process: maps the bytes into fresh memory, writable first, then
//! flipped to read+exec (the mapping is never writable and executable at once).

use memmap2::{Mmap, MmapMut};

/// Compiled code mapped read+exec, callable as `extern "C" fn(r1, r2) -> r0`.
#[derive(Debug)]
pub struct JitCode {
    map: Mmap,
}

impl JitCode {
    /// Copies `code` into a fresh anonymous mapping and makes it read+exec.
    pub fn new(code: &[u8]) -> std::io::Result<Self> {
        let mut map = MmapMut::map_anon(code.len().max(1))?;
        map[..code.len()].copy_from_slice(code);
        let map = map.make_exec()?;
        Ok(JitCode { map })
    }

    /// Address of the first instruction.
    pub fn as_ptr(&self) -> *const u8 {
        self.map.as_ptr()
    }

    /// Size of the mapped code.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the mapping is empty (never: at least one byte is mapped).
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Calls the code with `r1` and `r2` and returns `r0`.
    ///
    /// # Safety
    ///
    /// The bytes must be the output of [`crate::jit::compile`] for a program that passed the
    /// [`verifier`](crate::verifier) with the same [`Env`](crate::env::Env), and everything
    /// the program may touch must be valid: the memory `r1`/`r2` point to (when used as
    /// pointers), the maps and the helpers of that `Env` (which must outlive the call).
    pub unsafe fn call(&self, r1: u64, r2: u64) -> u64 {
        // SAFETY: the mapping is read+exec and holds a complete function following the
        // System V ABI (the caller guarantees it came from the JIT); it lives as long as self.
        let f: extern "C" fn(u64, u64) -> u64 = unsafe { core::mem::transmute(self.map.as_ptr()) };
        f(r1, r2)
    }
}
