//! Safe access to the sections of a mapped session file: raw bytes at offsets, the function
//! table, and the eBPF map arena.
//!
//! The file is shared with the agent inside the target, which writes counters, statuses and
//! events while xcover reads. Bytes are therefore copied with volatile reads and writes,
//! never borrowed as Rust references to shared memory (except through the map reader of
//! `xcover-bpf`, which uses atomics for everything that changes).

use std::mem::size_of;
use std::sync::atomic::Ordering;

use xcover_bpf::maps::Arena;
use xcover_session::{FuncEntry, SessionHeader};

use crate::session::SessionFile;
use crate::{Error, Result};

impl SessionFile {
    /// Size of the mapped file.
    pub fn len(&self) -> u64 {
        self.map.len() as u64
    }

    /// Whether the file is empty (never true for a valid session).
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    fn check(&self, off: u64, len: usize) -> Result<()> {
        match off.checked_add(len as u64) {
            Some(end) if end <= self.len() => Ok(()),
            _ => Err(Error::BadSession {
                path: self.path().to_string(),
                reason: format!(
                    "section {off:#x}+{len:#x} lies outside the {:#x}-byte file",
                    self.len()
                ),
            }),
        }
    }

    /// Copies `buf.len()` bytes from offset `off`.
    pub fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        self.check(off, buf.len())?;
        // SAFETY: off < len (checked above): the pointer is inside the live mapping.
        let src = unsafe { self.map.as_ptr().add(off as usize) };
        // Bytes up to the first 8-byte boundary, then whole words, then the tail: the
        // function table of 100 000 functions is 6.4 MB, read every time it changes.
        let head = src.align_offset(8).min(buf.len());
        let words = (buf.len() - head) / 8;
        for (i, b) in buf[..head].iter_mut().enumerate() {
            // SAFETY: i < head <= buf.len(): inside the checked range.
            *b = unsafe { src.add(i).read_volatile() };
        }
        for w in 0..words {
            let at = head + 8 * w;
            // SAFETY: at + 8 <= buf.len(), inside the checked range, and 8-byte aligned.
            let v = unsafe { (src.add(at) as *const u64).read_volatile() };
            buf[at..at + 8].copy_from_slice(&v.to_ne_bytes());
        }
        let tail = head + 8 * words;
        for (i, b) in buf.iter_mut().enumerate().skip(tail) {
            // SAFETY: i < buf.len(): inside the checked range.
            *b = unsafe { src.add(i).read_volatile() };
        }
        Ok(())
    }

    /// Writes `data` at offset `off`. Only for sections no other process writes yet (the
    /// layout, before the agent runs) or owns (see the layout doc in `xcover-session`).
    pub fn write_at(&self, off: u64, data: &[u8]) -> Result<()> {
        self.check(off, data.len())?;
        let base = self.map.as_mut_ptr();
        for (i, b) in data.iter().enumerate() {
            // SAFETY: off + i < len (checked above), inside the live read-write mapping.
            unsafe { base.add(off as usize + i).write_volatile(*b) };
        }
        Ok(())
    }

    /// Reads a little-endian `u64` at `off`.
    pub fn read_u64(&self, off: u64) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read_at(off, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// The function table, copied out (statuses change while the target runs).
    pub fn funcs(&self) -> Result<Vec<FuncEntry>> {
        let h = self.header();
        let n = usize::try_from(h.funcs_count).unwrap_or(usize::MAX);
        let bytes = n.saturating_mul(size_of::<FuncEntry>());
        self.check(h.funcs_off, bytes)?;
        let mut raw = vec![0u8; bytes];
        self.read_at(h.funcs_off, &mut raw)?;
        let out = raw
            .chunks_exact(size_of::<FuncEntry>())
            .map(bytemuck::pod_read_unaligned::<FuncEntry>)
            .collect();
        Ok(out)
    }

    /// Runs `f` with the session's eBPF map arena, if the session has one.
    pub fn with_arena<R>(&self, f: impl FnOnce(&Arena) -> R) -> Result<Option<R>> {
        let h: &SessionHeader = self.header();
        if h.arena_size == 0 {
            return Ok(None);
        }
        let len = usize::try_from(h.arena_size).unwrap_or(usize::MAX);
        self.check(h.arena_off, len)?;
        // SAFETY: the arena lies inside this mapping (checked), which outlives the call of
        // `f`; the `Arena` is not given out beyond it.
        let arena = unsafe {
            Arena::from_raw(
                self.map.as_mut_ptr().add(h.arena_off as usize),
                h.arena_size,
            )
        };
        Ok(Some(f(&arena)))
    }

    /// The state word, for readers that poll it.
    pub fn state(&self) -> u32 {
        self.header().state.load(Ordering::Acquire)
    }
}
