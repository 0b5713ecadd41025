//! What a program may touch: helpers by id, maps by index.

/// A helper as both the interpreter and the JIT call it: `r1..r5` in, `r0` out, System V
/// calling convention.
pub type HelperFn = unsafe extern "C" fn(u64, u64, u64, u64, u64) -> u64;
