//! The code that runs inside the target process.
//!
//! `xcover-payload` is a `no_std` + `alloc` library: the x86-64 interceptor (writer, relocator,
//! trampoline builder) and the agent's runtime. The shared object actually loaded into the
//! target is `payload/agent`, a thin `cdylib` over this crate, built by xcover's `build.rs`.
#![cfg_attr(not(test), no_std)]
#![deny(missing_docs)]
extern crate alloc;
