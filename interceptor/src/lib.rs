//! Inline hooks keyed by patch site, run inside the target process.
//!
//! `xcover-interceptor` is a `no_std` + `alloc` library. The shared object actually loaded
//! into the target is `agent/`, a thin `cdylib` over this crate and the eBPF runtime, built
//! by xcover's `build.rs`.
//!
//! # Layout
//!
//! Dependencies point one way, as in Frida-Gum:
//!
//! - [`core`] knows no instruction set: patch sites ([`Site`], [`SiteKind`]), the planning
//!   driver, batches and their thread fix-ups, commit and unhook, retired trampolines, and
//!   the [`Memory`] trait through which all operating-system access goes (mapping,
//!   protection, reading and writing code), so the crate needs no libc.
//! - [`arena`]: near-memory arenas, where trampolines are packed within reach of their
//!   sites.
//! - [`x86_64`]: the back end: patch forms and padding rules, the relocator, the trampoline
//!   bodies, CPU feature detection. It emits code through the one x86-64 encoder,
//!   [`xcover_x86::Writer`], which the eBPF JIT shares.
//!
//! A new patch kind goes into [`SiteKind`] and the back end's planner; a new back end
//! (aarch64) is a module beside [`x86_64`] implementing the core's `Backend` trait, chosen
//! in `arch`.
//!
//! # The API the agent uses
//!
//! [`Interceptor::new`]`(probe, `[`HookOptions`]`)`, then per batch
//! [`Interceptor::prepare_hooks`]`(mem, sites)` → [`HookBatch`] (outcomes,
//! [`HookBatch::fixup`] per stopped thread) → [`Interceptor::commit_hooks`]; unhooking with
//! [`Interceptor::prepare_unhooks`] → [`UnhookBatch`] → [`Interceptor::commit_unhooks`].
//!
//! The only `unsafe` is the CPU-feature probe in the back end's `cpu` module and the
//! contracts of the two commit functions.
#![cfg_attr(not(test), no_std)]
#![deny(missing_docs)]
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
extern crate alloc;

pub mod arena;
pub mod core;
pub mod x86_64;

/// The back end of this build's instruction set.
mod arch {
    pub(crate) use crate::x86_64::X86_64 as Arch;
}

pub use crate::core::{
    HookBatch, HookKind, HookOptions, Interceptor, IpFixup, MemError, Memory, PAGE_SIZE,
    Protection, Site, SiteKind, SkipReason, TrapSite, UnhookBatch, write_code_protecting,
};
pub use arena::ARENA_SIZE;
