//! The interceptor's [`Memory`] inside the target: raw `mmap`/`mprotect` and plain pointer
//! copies in the agent's own address space, and code patches written through
//! `/proc/self/mem`.
//!
//! How patches are written without leaving a trace in the target's mappings: making some
//! pages of a code mapping writable with `mprotect` splits the mapping into pieces the
//! kernel does not merge back after the protection is restored (a Rust binary's text went
//! from 1 mapping to 11). So the agent re-protects each code mapping it patches *whole*
//! (found in `/proc/self/maps` while the world is stopped): a change to a whole mapping
//! never splits it, and it costs two system calls per mapping, whatever the number of
//! patches. When that is not possible (no `/proc`, a patch across two mappings, a refused
//! `mprotect`), the patches go through `/proc/self/mem`, the kernel's forced-write path,
//! one system call each (docs/performance.md gives what that costs).

use alloc::vec::Vec;

use xcover_interceptor::{MemError, Memory, Protection, write_code_protecting};

use crate::session;
use xcover_rt::mm as sys;

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
        map_near(near, size as u64, xcover_session::REGION_TRAMPOLINES)
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
        if write_code_whole_mappings(writes) {
            return Ok(());
        }
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

/// One executable mapping of `/proc/self/maps`: start, end, protection.
#[derive(Clone, Copy, PartialEq, Eq)]
struct CodeMapping {
    start: u64,
    end: u64,
    prot: u64,
}

/// The executable mappings of this process, sorted, or `None` when `/proc/self/maps`
/// cannot be read.
fn code_mappings() -> Option<Vec<CodeMapping>> {
    let fd = sys::open_rdonly(b"/proc/self/maps\0");
    if fd < 0 {
        return None;
    }
    let mut text: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = sys::read(fd, &mut chunk);
        if n <= 0 {
            sys::close(fd);
            if n < 0 {
                return None;
            }
            break;
        }
        text.extend_from_slice(chunk.get(..n as usize).unwrap_or(&[]));
    }
    let mut out = Vec::new();
    for line in text.split(|&b| b == b'\n') {
        // "start-end perms offset dev inode path"
        let mut fields = line.split(|&b| b == b' ');
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        let [r, w, x, ..] = *perms else {
            continue;
        };
        if x != b'x' {
            continue;
        }
        let mut ends = range.split(|&b| b == b'-');
        let (Some(a), Some(b)) = (ends.next().and_then(hex), ends.next().and_then(hex)) else {
            continue;
        };
        let mut prot = sys::PROT_EXEC;
        if r == b'r' {
            prot |= sys::PROT_READ;
        }
        if w == b'w' {
            prot |= sys::PROT_WRITE;
        }
        out.push(CodeMapping {
            start: a,
            end: b,
            prot,
        });
    }
    Some(out)
}

fn hex(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    s.iter().try_fold(0u64, |v, &c| {
        let d = (c as char).to_digit(16)?;
        Some(v << 4 | d as u64)
    })
}

/// Writes `writes` by making each executable mapping they fall in writable as a whole,
/// copying, and restoring its protection. Returns false, having changed nothing, when a
/// write is not inside one executable mapping or a mapping cannot be made writable.
fn write_code_whole_mappings(writes: &[(u64, &[u8])]) -> bool {
    let Some(maps) = code_mappings() else {
        return false;
    };
    let mut touched: Vec<CodeMapping> = Vec::new();
    for (addr, bytes) in writes {
        let end = addr + bytes.len() as u64;
        let i = maps.partition_point(|m| m.end <= *addr);
        match maps.get(i) {
            Some(m) if m.start <= *addr && end <= m.end => {
                if !touched.contains(m) {
                    touched.push(*m);
                }
            }
            _ => return false,
        }
    }
    for (k, m) in touched.iter().enumerate() {
        // SAFETY: the mapping stays executable and gains write access while every other
        // thread is stopped; nothing relies on it being read-only meanwhile.
        let r = unsafe { sys::mprotect(m.start, m.end - m.start, m.prot | sys::PROT_WRITE) };
        if r < 0 {
            for m in touched.iter().take(k) {
                // SAFETY: back to the protection it had a moment ago.
                unsafe { sys::mprotect(m.start, m.end - m.start, m.prot) };
            }
            return false;
        }
    }
    for (addr, bytes) in writes {
        // SAFETY: the bytes lie inside a mapping made writable above; no other thread runs,
        // and none is stopped inside them (the interceptor's thread fix-ups).
        unsafe {
            core::ptr::copy_nonoverlapping(bytes.as_ptr(), *addr as *mut u8, bytes.len());
        }
    }
    for m in &touched {
        // SAFETY: restores the protection the whole mapping had before.
        unsafe { sys::mprotect(m.start, m.end - m.start, m.prot) };
    }
    true
}
