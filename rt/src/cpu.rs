//! "Which CPU am I on", the hot path of per-CPU maps, by the cheapest means the CPU has.

use core::arch::asm;
use core::sync::atomic::{AtomicU8, Ordering};

use crate::syscall::getcpu_syscall;

const CPU_METHOD_UNKNOWN: u8 = 0;
const CPU_METHOD_RDPID: u8 = 1;
const CPU_METHOD_RDTSCP: u8 = 2;
const CPU_METHOD_SYSCALL: u8 = 3;
static CPU_METHOD: AtomicU8 = AtomicU8::new(CPU_METHOD_UNKNOWN);

/// How [`cpu_id`] finds the CPU: the cheapest instruction the CPU has (`rdpid`, else
/// `rdtscp`; Linux keeps `node << 12 | cpu` in `IA32_TSC_AUX`), else the `getcpu` syscall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuIdMethod {
    /// `rdpid` (a few cycles).
    Rdpid,
    /// `rdtscp` (tens of cycles: it also reads the TSC and waits for prior instructions).
    Rdtscp,
    /// The `getcpu` system call.
    Syscall,
}

fn detect_cpu_method() -> u8 {
    // CPUID leaf 7 ECX bit 22: RDPID. Leaf 0x8000_0001 EDX bit 27: RDTSCP.
    let leaf0 = core::arch::x86_64::__cpuid(0);
    if leaf0.eax >= 7 {
        let l7 = core::arch::x86_64::__cpuid_count(7, 0);
        if l7.ecx & (1 << 22) != 0 {
            return CPU_METHOD_RDPID;
        }
    }
    let ext = core::arch::x86_64::__cpuid(0x8000_0000);
    if ext.eax >= 0x8000_0001 {
        let e1 = core::arch::x86_64::__cpuid(0x8000_0001);
        if e1.edx & (1 << 27) != 0 {
            return CPU_METHOD_RDTSCP;
        }
    }
    CPU_METHOD_SYSCALL
}

/// The method [`cpu_id`] uses on this machine (detected once).
pub fn cpu_id_method() -> CpuIdMethod {
    let mut m = CPU_METHOD.load(Ordering::Relaxed);
    if m == CPU_METHOD_UNKNOWN {
        m = detect_cpu_method();
        CPU_METHOD.store(m, Ordering::Relaxed);
    }
    match m {
        CPU_METHOD_RDPID => CpuIdMethod::Rdpid,
        CPU_METHOD_RDTSCP => CpuIdMethod::Rdtscp,
        _ => CpuIdMethod::Syscall,
    }
}

/// `rdpid`: `IA32_TSC_AUX` (Linux: `node << 12 | cpu`).
///
/// # Safety
/// The CPU must support `rdpid` (CPUID.7.0:ECX bit 22).
#[inline(always)]
pub unsafe fn rdpid() -> u64 {
    let aux: u64;
    // SAFETY: caller guarantees support; rdpid only writes the output register.
    unsafe { asm!("rdpid {}", out(reg) aux, options(nomem, nostack, preserves_flags)) };
    aux
}

/// `rdtscp`'s `IA32_TSC_AUX` part (Linux: `node << 12 | cpu`).
///
/// # Safety
/// The CPU must support `rdtscp` (CPUID.80000001h:EDX bit 27).
#[inline(always)]
pub unsafe fn rdtscp_aux() -> u32 {
    let aux: u32;
    // SAFETY: caller guarantees support; rdtscp writes eax, edx, ecx only (declared).
    unsafe {
        asm!("rdtscp", out("eax") _, out("edx") _, out("ecx") aux,
             options(nomem, nostack, preserves_flags))
    };
    aux
}

/// The CPU the calling thread runs on (it may move right after: per-CPU data must still use
/// atomic operations when several threads can share a slot).
#[inline]
pub fn cpu_id() -> u32 {
    match CPU_METHOD.load(Ordering::Relaxed) {
        // SAFETY: CPU_METHOD_RDPID is only stored after CPUID reported rdpid.
        CPU_METHOD_RDPID => (unsafe { rdpid() } & 0xfff) as u32,
        // SAFETY: CPU_METHOD_RDTSCP is only stored after CPUID reported rdtscp.
        CPU_METHOD_RDTSCP => (unsafe { rdtscp_aux() }) & 0xfff,
        CPU_METHOD_SYSCALL => getcpu_syscall(),
        _ => {
            cpu_id_method();
            cpu_id()
        }
    }
}

/// Reads the time-stamp counter (cheap entropy and timing).
#[inline]
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc is available on every x86-64 CPU and has no memory effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}
