//! The one x86-64 encoder of xcover, shared by the interceptor's trampolines (and its
//! relocator) and the eBPF JIT.
//!
//! [`Writer`] appends machine code to a byte buffer that will *run* at another address, its
//! `pc`: code is assembled in one place and copied to another (another process, a mapping
//! made later), so every relative form is computed against the run address. Two families of
//! methods share the buffer:
//!
//! - the `put_*` methods ([`writer`]) take [`Reg`]s and pick the shortest form that
//!   reaches (`rel8`, `rel32`, an absolute form): what trampolines and relocated code need;
//! - the ModRM-level methods ([`modrm`]) take hardware register numbers (0-15) and emit one
//!   instruction each in a fixed form, with forward branches patched later by offset: what
//!   the JIT needs to translate eBPF instructions one by one.
//!
//! # Invariants
//! - Emitting never fails and never panics: the buffer grows; a branch that cannot reach is
//!   the caller's to check ([`fits_rel32`]) before choosing a form.
//! - The encoder knows nothing of hooks, relocation or eBPF, and is entirely safe code.
//! - The bytes are part of the contract: tests in the interceptor and the JIT compare them
//!   exactly, so a change of encoding shows up there.
#![no_std]
#![deny(missing_docs)]
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
extern crate alloc;

pub mod modrm;

pub mod writer;

pub use writer::{Cond, Reg, Writer, fits_rel32};
