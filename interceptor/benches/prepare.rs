//! Time of `prepare_hooks` (planning hooks and writing trampolines) and `commit_hooks`
//! (writing the entry patches) for many small functions in this process: most of what the
//! agent does while the target is stopped.
//!
//!     cargo bench -p xcover-interceptor --bench prepare [-- N]
use std::time::Instant;

use xcover_interceptor::{HookOptions, Interceptor, Site};

#[path = "../tests/support/mod.rs"]
mod support;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    // `push rbp; mov rbp, rsp; lea rax, [rdi+1]; pop rbp; ret`, int3 padding to 16 bytes.
    let body: [u8; 16] = [
        0x55, 0x48, 0x89, 0xe5, 0x48, 0x8d, 0x47, 0x01, 0x5d, 0xc3, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc,
        0xcc,
    ];
    let len = n * 16;
    // SAFETY: a fresh anonymous mapping, aliasing nothing.
    let code = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    } as *mut u8;
    assert_ne!(
        code as *mut libc::c_void,
        libc::MAP_FAILED,
        "mmap {len} bytes"
    );
    for i in 0..n {
        // SAFETY: 16 bytes at 16 * i < len, inside the mapping.
        unsafe { std::ptr::copy_nonoverlapping(body.as_ptr(), code.add(16 * i), 16) };
    }
    let specs: Vec<Site> = (0..n)
        .map(|i| {
            let a = code as u64 + 16 * i as u64;
            Site::function(a, 10, a + 16, i as u64)
        })
        .collect();
    // The probe address only has to be within reach of the trampolines' calls.
    let mut it = Interceptor::new(
        code as u64,
        HookOptions {
            save_vector_regs: true,
            flags_with_popfq: false,
            light_ctx: false,
            traps: false,
        },
    );
    let t = Instant::now();
    let batch = it.prepare_hooks(&mut support::LibcMemory, &specs);
    let t1 = t.elapsed();
    assert_eq!(batch.len(), n, "every function planned");
    let t = Instant::now();
    // SAFETY: no thread runs the generated functions; the specs describe them.
    let hooked = unsafe { it.commit_hooks(&mut support::LibcMemory, batch) }.expect("commit");
    let t2 = t.elapsed();
    assert_eq!(hooked, n, "every function hooked");
    for (what, d) in [("prepare", t1), ("commit", t2)] {
        println!(
            "{what} {n}: {:.2} ms ({:.0} ns/function)",
            d.as_secs_f64() * 1e3,
            d.as_nanos() as f64 / n as f64
        );
    }
}
