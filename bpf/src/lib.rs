//! The eBPF runtime that runs xcover's probes.
//!
//! Parse, check and run are separate modules around one shared definition of the
//! instruction set ([`insn`]):
//!
//! - [`object`] (std): loads `clang -target bpf` ELF objects (libbpf conventions) into a
//!   [`program::Program`]: instructions with map references resolved to map indices, plus the
//!   map definitions.
//! - [`verifier`]: rejects programs that could crash or hang the target.
//! - [`interp`]: the reference interpreter.
//! - [`jit`]: the x86-64 JIT. It only emits bytes for a given load address, so code can be
//!   assembled in one place and run in another; [`exec`] (std) maps it read+exec locally.
//! - [`maps`]: map layouts and operations on a shared-memory arena (ARRAY, PERCPU_ARRAY,
//!   HASH, PERCPU_HASH, RINGBUF), usable from several processes at once.
//! - [`helpers`]: the helper functions programs call, by Linux helper id.
//! - [`asm`] and [`conformance`] (std): the bpf_conformance text format and its runner.
//!
//! Everything but `object`, `exec`, `asm` and `conformance` is `no_std` + `alloc`, because
//! the agent inside the target JIT-compiles the probe and runs the helpers there.
//!
//! # Where each module runs
//!
//! The agent verifies and JIT-compiles the probe inside the target and runs the helpers and
//! map operations there, so [`insn`], [`program`], [`env`](mod@env), [`ctx_use`], [`verifier`],
//! [`jit`], [`maps`] and [`helpers`] run in the user's process, where a panic is a SIGILL.
//! The crate denies `clippy::unwrap_used`, `expect_used`, `panic` and `indexing_slicing`;
//! only the modules that never run in the target are exempt, each by an `allow` on its
//! `mod` line: [`object`], [`asm`], [`conformance`], [`exec`] (xcover and tests only) and
//! [`interp`] (the reference interpreter, which the agent does not use).
//!
//! # How programs meet the world
//!
//! A program reaches helpers and maps only through an [`env::Env`]: helper addresses by id
//! (each a [`env::HelperFn`]) and, per map index, the address of the map's header and of its
//! first value. A `lddw` with `src = 1` (`BPF_PSEUDO_MAP_FD`) and `imm = map index` loads the
//! map's address; with `src = 2` (`BPF_PSEUDO_MAP_VALUE`), the address of its first value plus
//! the offset in the second instruction's `imm`.
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(missing_docs)]
// Code that runs inside the target (see "Where each module runs" above): a panic there is a
// SIGILL in the user's process.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
extern crate alloc;

#[cfg(feature = "std")]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "runs only in xcover, never in the target"
)]
pub mod asm;
#[cfg(feature = "std")]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "runs only in xcover, never in the target"
)]
pub mod conformance;
pub mod ctx_use;
pub mod env;
#[cfg(feature = "std")]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "runs only in xcover, never in the target"
)]
pub mod exec;
pub mod helpers;
pub mod insn;
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "the reference interpreter: run by xcover and the tests, not by the agent"
)]
pub mod interp;
pub mod jit;
pub mod maps;
#[cfg(feature = "std")]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "runs only in xcover, never in the target"
)]
pub mod object;
pub mod program;
pub mod verifier;
