//! Added cost per hit of an empty probe, for each trampoline variant: the function
//! `f_three` of the assembly test library (`tests/asm/prologues.S`) called 2 M times, best
//! of 5 runs, plain and then hooked each way. Prints one line; a measurement, not a check.
//!
//!     cargo bench -p xcover-interceptor --bench hit
use std::hint::black_box;
use std::time::Instant;

use xcover_interceptor::{HookOptions, Interceptor};
use xcover_session::ProbeCtx;

#[path = "../tests/support/mod.rs"]
mod support;

use support::{Lib, LibcMemory};

type F1 = extern "C" fn(u64) -> u64;

extern "C" fn empty_probe(_ctx: *mut ProbeCtx) -> u64 {
    0
}

/// The best of 5 runs of `n` calls, in ns per call.
fn ns_per_call(f: F1, n: u64) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        for i in 0..n {
            black_box(f(black_box(i)));
        }
        best = best.min(t.elapsed().as_nanos() as f64 / n as f64);
    }
    best
}

fn main() {
    let lib = Lib::build("bench");
    let table = lib.table();
    let three = table.iter().find(|(n, _)| n == "f_three").unwrap().1;
    // SAFETY: the assembly defines f_three(u64) -> u64.
    let f = unsafe { std::mem::transmute::<u64, F1>(lib.sym("f_three")) };
    let n = 2_000_000;
    let base = ns_per_call(f, n);
    let mut mem = LibcMemory;
    let mut line = format!("bench: plain call {base:.2} ns");
    for (name, vec, popf, light) in [
        ("vector save + sahf", true, false, false),
        ("no vector save + sahf", false, false, false),
        ("light body", false, false, true),
        ("vector save + popfq", true, true, false),
        ("no vector save + popfq", false, true, false),
    ] {
        let mut ic = Interceptor::new(
            empty_probe as *const () as u64,
            HookOptions {
                save_vector_regs: vec,
                flags_with_popfq: popf,
                light_ctx: light,
                traps: false,
            },
        );
        let b = ic.prepare_hooks(&mut mem, &[three]);
        // SAFETY: this process has one thread calling this library copy, this one.
        unsafe { ic.commit_hooks(&mut mem, b) }.unwrap();
        let t = ns_per_call(f, n);
        line += &format!(" | {name}: +{:.2} ns", t - base);
        let ub = ic.prepare_unhooks(&ic.hooked());
        // SAFETY: as above.
        unsafe { ic.commit_unhooks(&mut mem, ub) }.unwrap();
    }
    println!("{line}");
}
