//! CPU feature detection for the trampolines (the back end's only `unsafe`).

/// Whether AVX is usable: the CPU has it and the OS saves YMM state (XCR0 bits 1-2).
pub fn avx_enabled() -> bool {
    let l1 = core::arch::x86_64::__cpuid(1);
    let osxsave = l1.ecx & (1 << 27) != 0;
    let avx = l1.ecx & (1 << 28) != 0;
    if !(osxsave && avx) {
        return false;
    }
    let xcr0: u32;
    // SAFETY: CPUID.1:ECX.OSXSAVE is set, so the OS enabled XGETBV; reading XCR0 has no
    // side effects.
    unsafe {
        core::arch::asm!(
            "xgetbv",
            in("ecx") 0u32,
            out("eax") xcr0,
            out("edx") _,
            options(nomem, nostack, preserves_flags)
        );
    }
    xcr0 & 6 == 6
}
