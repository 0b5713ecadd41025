//! The monotonic clocks, through the vDSO's `clock_gettime` when the process has one.
//!
//! A system call costs far more than a vDSO call, so [`monotonic_ns`] and
//! [`monotonic_coarse_ns`] call the vDSO's `clock_gettime` (no kernel entry). The vDSO is
//! found once per process through `AT_SYSINFO_EHDR` ([`crate::auxv`]) and its dynamic
//! symbol table, read with bounds checks against what the image maps; if anything is
//! missing the system call is used.

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::auxv::auxv;
use crate::syscall::{SYS_CLOCK_GETTIME, syscall6};

/// `CLOCK_MONOTONIC`.
pub const CLOCK_MONOTONIC: usize = 1;
/// `CLOCK_MONOTONIC_COARSE`.
pub const CLOCK_MONOTONIC_COARSE: usize = 6;

/// `CLOCK_MONOTONIC` in nanoseconds through the system call.
pub fn monotonic_ns_syscall() -> u64 {
    clock_ns_syscall(CLOCK_MONOTONIC)
}

fn clock_ns_syscall(clock: usize) -> u64 {
    let mut ts = [0i64; 2];
    // SAFETY: the kernel writes one `struct timespec` (two i64) into `ts`, which we own.
    let r = unsafe {
        syscall6(
            SYS_CLOCK_GETTIME,
            [clock, ts.as_mut_ptr() as usize, 0, 0, 0, 0],
        )
    };
    if r < 0 {
        return 0;
    }
    (ts[0] as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts[1] as u64)
}

/// The vDSO's `clock_gettime`: 0 = not looked up yet, 1 = unavailable, else its address.
static VDSO_CLOCK_GETTIME: AtomicU64 = AtomicU64::new(0);

type ClockGettime = unsafe extern "C" fn(i32, *mut [i64; 2]) -> i32;

/// `clock` in nanoseconds through the vDSO's `clock_gettime` when the process has one, else
/// the system call.
#[inline]
fn clock_ns(clock: usize) -> u64 {
    let mut f = VDSO_CLOCK_GETTIME.load(Ordering::Relaxed);
    if f == 0 {
        f = vdso_clock_gettime().unwrap_or(1);
        VDSO_CLOCK_GETTIME.store(f, Ordering::Relaxed);
    }
    if f == 1 {
        return clock_ns_syscall(clock);
    }
    let mut ts = [0i64; 2];
    // SAFETY: `f` is the vDSO's `__vdso_clock_gettime`, found in this process's vDSO symbol
    // table; it writes one timespec into `ts`, which we own.
    let r = unsafe { core::mem::transmute::<u64, ClockGettime>(f)(clock as i32, &mut ts) };
    if r != 0 {
        return clock_ns_syscall(clock);
    }
    (ts[0] as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts[1] as u64)
}

/// `CLOCK_MONOTONIC` in nanoseconds (what `bpf_ktime_get_ns` returns): through the vDSO's
/// `clock_gettime` when the process has one, else the system call.
#[inline]
pub fn monotonic_ns() -> u64 {
    clock_ns(CLOCK_MONOTONIC)
}

/// `CLOCK_MONOTONIC_COARSE` in nanoseconds (what `bpf_ktime_get_coarse_ns` returns): the
/// same clock at the resolution of the kernel's tick (1-4 ms), read without `rdtsc`, so
/// cheaper than [`monotonic_ns`] (docs/performance.md).
#[inline]
pub fn monotonic_coarse_ns() -> u64 {
    clock_ns(CLOCK_MONOTONIC_COARSE)
}

/// The vDSO's `clock_gettime`, for code that calls it directly for `clock` (the JIT's
/// inline `bpf_ktime_get_ns` / `bpf_ktime_get_coarse_ns`, which call it without saving the
/// vector registers), or `None` when the process has no vDSO or the call failed or did not
/// leave `xmm0`-`xmm15` as they were. The kernel builds the vDSO's C code with
/// `-mno-sse -mno-mmx -mno-sse2 -mno-avx` (only `getrandom`'s hand-written ChaCha uses
/// vector registers), so it never should; this checks it once on the path `clock` takes.
pub fn vdso_clock_gettime_without_vector_regs(clock: u32) -> Option<u64> {
    let mut f = VDSO_CLOCK_GETTIME.load(Ordering::Relaxed);
    if f == 0 {
        f = vdso_clock_gettime().unwrap_or(1);
        VDSO_CLOCK_GETTIME.store(f, Ordering::Relaxed);
    }
    if f == 1 {
        return None;
    }
    let pattern: [[u8; 16]; 16] = core::array::from_fn(|i| {
        core::array::from_fn(|j| (0x5a ^ (i * 16 + j) as u8).wrapping_mul(0x3b))
    });
    let mut out = [[0u8; 16]; 16];
    let mut ts = [0i64; 2];
    let r: i64;
    // SAFETY: `f` is the vDSO's clock_gettime (found in this process's vDSO symbol table),
    // called per the System V ABI (`clobber_abi("C")` covers what it may clobber; r12-r14
    // are callee-saved) with a timespec we own; the stack is aligned for a call at the start
    // of an asm block without `nostack`. The loads and stores stay within `pattern`/`out`.
    unsafe {
        asm!(
            "movdqu xmm0, [r12]",
            "movdqu xmm1, [r12 + 16]",
            "movdqu xmm2, [r12 + 32]",
            "movdqu xmm3, [r12 + 48]",
            "movdqu xmm4, [r12 + 64]",
            "movdqu xmm5, [r12 + 80]",
            "movdqu xmm6, [r12 + 96]",
            "movdqu xmm7, [r12 + 112]",
            "movdqu xmm8, [r12 + 128]",
            "movdqu xmm9, [r12 + 144]",
            "movdqu xmm10, [r12 + 160]",
            "movdqu xmm11, [r12 + 176]",
            "movdqu xmm12, [r12 + 192]",
            "movdqu xmm13, [r12 + 208]",
            "movdqu xmm14, [r12 + 224]",
            "movdqu xmm15, [r12 + 240]",
            "call r13",
            "movdqu [r14], xmm0",
            "movdqu [r14 + 16], xmm1",
            "movdqu [r14 + 32], xmm2",
            "movdqu [r14 + 48], xmm3",
            "movdqu [r14 + 64], xmm4",
            "movdqu [r14 + 80], xmm5",
            "movdqu [r14 + 96], xmm6",
            "movdqu [r14 + 112], xmm7",
            "movdqu [r14 + 128], xmm8",
            "movdqu [r14 + 144], xmm9",
            "movdqu [r14 + 160], xmm10",
            "movdqu [r14 + 176], xmm11",
            "movdqu [r14 + 192], xmm12",
            "movdqu [r14 + 208], xmm13",
            "movdqu [r14 + 224], xmm14",
            "movdqu [r14 + 240], xmm15",
            in("r12") pattern.as_ptr(),
            in("r13") f,
            in("r14") out.as_mut_ptr(),
            inlateout("rdi") clock as u64 => _,
            inlateout("rsi") ts.as_mut_ptr() => _,
            lateout("rax") r,
            clobber_abi("C"),
        );
    }
    (r as i32 == 0 && out == pattern).then_some(f)
}

/// Whether [`monotonic_ns`] goes through the vDSO in this process.
pub fn monotonic_ns_uses_vdso() -> bool {
    monotonic_ns();
    VDSO_CLOCK_GETTIME.load(Ordering::Relaxed) > 1
}

/// The vDSO image as mapped, read with bounds checks.
struct Image {
    base: u64,
    /// Bytes known to be mapped from `base`.
    len: u64,
}

impl Image {
    /// Reads a `T` at offset `off`, or `None` past the known-mapped length.
    fn rd<T: Copy>(&self, off: u64) -> Option<T> {
        let end = off.checked_add(core::mem::size_of::<T>() as u64)?;
        if end > self.len {
            return None;
        }
        // SAFETY: `base .. base + len` is mapped readable (see `vdso_lookup`), and the read
        // lies within it; unaligned reads are fine on x86-64.
        Some(unsafe { ((self.base + off) as *const T).read_unaligned() })
    }
}

/// Finds `__vdso_clock_gettime` in the vDSO's dynamic symbol table.
fn vdso_clock_gettime() -> Option<u64> {
    let base = auxv().vdso;
    if base == 0 {
        return None;
    }
    vdso_lookup(base, b"__vdso_clock_gettime")
}

/// Looks a symbol up in the ELF image mapped at `base` (the vDSO: a small shared object
/// whose file is mapped whole), through `PT_DYNAMIC`'s `DT_SYMTAB`/`DT_STRTAB` and the symbol
/// count of `DT_HASH` (or of the section headers' `SHT_DYNSYM`). Returns the symbol's address.
///
/// Reads stay within the first page until the first `PT_LOAD` tells how far the image goes
/// (its end, rounded up to a page: mappings are page-granular).
fn vdso_lookup(base: u64, name: &[u8]) -> Option<u64> {
    const PAGE_SIZE: u64 = 4096;
    let mut img = Image {
        base,
        len: PAGE_SIZE,
    };
    if img.rd::<[u8; 4]>(0)? != *b"\x7fELF" || img.rd::<u8>(4)? != 2 {
        return None;
    }
    let phoff: u64 = img.rd(0x20)?;
    let shoff: u64 = img.rd(0x28)?;
    let phentsize = img.rd::<u16>(0x36)? as u64;
    let phnum = img.rd::<u16>(0x38)? as u64;
    let shentsize = img.rd::<u16>(0x3a)? as u64;
    let shnum = img.rd::<u16>(0x3c)? as u64;
    if phentsize < 56 {
        return None;
    }
    // Load bias: the first PT_LOAD maps file offset p_offset at base + p_offset.
    let mut bias = None;
    let mut mapped = PAGE_SIZE;
    let mut dynamic = None;
    for i in 0..phnum {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        let p_type: u32 = img.rd(ph)?;
        let p_offset: u64 = img.rd(ph + 8)?;
        let p_vaddr: u64 = img.rd(ph + 16)?;
        let p_memsz: u64 = img.rd(ph + 40)?;
        match p_type {
            1 if bias.is_none() => {
                bias = Some(base.wrapping_sub(p_vaddr.wrapping_sub(p_offset)));
                mapped = p_offset.checked_add(p_memsz)?.div_ceil(PAGE_SIZE) * PAGE_SIZE;
            }
            2 => dynamic = Some((p_offset, img.rd::<u64>(ph + 32)?)),
            _ => {}
        }
    }
    let (bias, (dyn_off, dyn_size)) = (bias?, dynamic?);
    img.len = mapped.max(PAGE_SIZE);
    let (mut symtab, mut strtab, mut strsz, mut hash) = (0u64, 0u64, 0u64, 0u64);
    for i in 0..dyn_size / 16 {
        let d = dyn_off + i * 16;
        let val: u64 = img.rd(d + 8)?;
        match img.rd::<u64>(d)? {
            0 => break,
            4 => hash = val,
            5 => strtab = val,
            6 => symtab = val,
            10 => strsz = val,
            _ => {}
        }
    }
    if symtab == 0 || strtab == 0 {
        return None;
    }
    // d_ptr values are link-time addresses: turn them into offsets from `base`.
    let to_off = |v: u64| bias.wrapping_add(v).wrapping_sub(base);
    let (symtab, strtab) = (to_off(symtab), to_off(strtab));
    let mut count = 0u64;
    if hash != 0 {
        count = img.rd::<u32>(to_off(hash) + 4)? as u64; // nchain
    } else if shentsize >= 64 {
        for i in 0..shnum {
            let sh = shoff + i * shentsize;
            if img.rd::<u32>(sh + 4)? == 11 {
                // SHT_DYNSYM: sh_size / sh_entsize
                let size: u64 = img.rd(sh + 32)?;
                let ent: u64 = img.rd(sh + 56)?;
                count = size.checked_div(ent).unwrap_or(0);
            }
        }
    }
    for i in 0..count.min(4096) {
        let sym = symtab + i * 24;
        let st_name = img.rd::<u32>(sym)? as u64;
        let st_info: u8 = img.rd(sym + 4)?;
        let st_shndx: u16 = img.rd(sym + 6)?;
        let st_value: u64 = img.rd(sym + 8)?;
        // Defined functions (STT_FUNC) only.
        if st_info & 0xf != 2 || st_shndx == 0 || st_name + name.len() as u64 >= strsz {
            continue;
        }
        let at = strtab + st_name;
        let same = (0..)
            .zip(name)
            .all(|(j, &c)| img.rd::<u8>(at + j) == Some(c));
        if same && img.rd::<u8>(at + name.len() as u64) == Some(0) {
            return Some(bias.wrapping_add(st_value));
        }
    }
    None
}
