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
//! # How programs meet the world
//!
//! A program reaches helpers and maps only through an [`env::Env`]: helper addresses by id
//! (each a [`env::HelperFn`]) and, per map index, the address of the map's header and of its
//! first value. A `lddw` with `src = 1` (`BPF_PSEUDO_MAP_FD`) and `imm = map index` loads the
//! map's address; with `src = 2` (`BPF_PSEUDO_MAP_VALUE`), the address of its first value plus
//! the offset in the second instruction's `imm`.
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(missing_docs)]
extern crate alloc;

#[cfg(feature = "std")]
pub mod asm;
#[cfg(feature = "std")]
pub mod conformance;
pub mod ctx_use;
pub mod env;
#[cfg(feature = "std")]
pub mod exec;
pub mod helpers;
pub mod insn;
pub mod interp;
pub mod jit;
pub mod maps;
#[cfg(feature = "std")]
pub mod object;
pub mod program;
pub mod verifier;
