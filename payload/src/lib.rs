//! The code that runs inside the target process.
//!
//! `xcover-payload` is a `no_std` + `alloc` library: the x86-64 interceptor (writer, relocator,
//! trampoline builder) and the agent's runtime. The shared object actually loaded into the
//! target is `payload/agent`, a thin `cdylib` over this crate, built by xcover's `build.rs`.
//!
//! # The interceptor
//!
//! Dependencies point one way, as in Frida-Gum:
//!
//! - [`writer`] emits x86-64 instructions for a run address (`pc`) that differs from where the
//!   bytes are assembled; it picks `rel8`/`rel32`/absolute forms by distance.
//! - [`relocator`] decodes a function's first instructions (iced-x86) and re-emits them
//!   through a writer at another address; [`relocator::can_relocate`] is the dry run.
//! - [`backend`] knows both: it plans the entry patch of every function, builds the
//!   trampolines (save registers into an [`xcover_abi::ProbeCtx`], call the probe, restore,
//!   run the relocated instructions, jump back) in arenas within ±2 GiB of their functions,
//!   and writes/unwrites the patches in batches. All operating-system access (mapping,
//!   protection, reading and writing code) goes through the caller's [`backend::Memory`]
//!   trait, so the crate needs no libc.
//!
//! `writer` and `relocator` are safe code; the only `unsafe` is the CPU-feature probe in
//! `backend::cpu`.
#![cfg_attr(not(test), no_std)]
#![deny(missing_docs)]
extern crate alloc;

pub mod backend;
pub mod relocator;
pub mod writer;
