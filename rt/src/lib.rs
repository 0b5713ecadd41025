//! The target-side runtime: what code running inside the target needs from Linux x86-64,
//! with no libc.
//!
//! The agent that runs maps and helpers inside the target imports no symbol at all, so this
//! crate is the one place that talks to the kernel and reads the process's own runtime
//! structures: a handful of `syscall` wrappers built on inline assembly, each returning the
//! kernel's raw result (a negative errno on failure), the vDSO clock, cached process and
//! thread ids (glibc's TCB), and the CPU id. It is used by the agent and by the eBPF
//! runtime's helpers and JIT (which inlines some of these fast paths and takes their data
//! layouts from here).
//!
//! - [`syscall`]: the one `syscall` instruction ([`syscall6`]), error numbers, process and
//!   thread calls;
//! - [`mm`]: mappings and files (the agent's `mmap`/`mprotect`/`pwrite` on `/proc/self/mem`);
//! - [`auxv`]: the auxiliary vector (vDSO base, FSGSBASE);
//! - [`vdso`]: the monotonic clocks through the vDSO's `clock_gettime`;
//! - [`ids`]: the pid and tid caches (TCB), whose layout the JIT inlines;
//! - [`cpu`]: the CPU id (`rdpid`, `rdtscp`, `getcpu`).
//!
//! Everything is re-exported at the crate root.
//!
//! # Invariants
//! - Nothing here panics or allocates: it runs in hooks, on any thread of the target.
//! - Every `unsafe` is an `asm!` block, a raw pointer read of memory the kernel or the vDSO
//!   image vouches for, or a call of the vDSO; each says why.
//!
//! # Why not `rustix`
//! `rustix`'s `linux_raw` back end is `no_std` and libc-free, but it does not fit here: the
//! JIT needs the raw address of the vDSO's `clock_gettime` (and proof that it leaves the
//! vector registers alone, [`vdso_clock_gettime_without_vector_regs`]) and the layout of
//! the tid cache, which `rustix` keeps private; its vDSO and auxv set-up expects to be
//! initialised from a program's start-up or reads `/proc/self/auxv` with its own policy;
//! and its `Errno`-returning wrappers would be one more layer on the hot path for calls
//! that are a single `syscall` instruction here. The agent also links with `-z defs` and
//! must import nothing, which each new dependency has to be checked for.
#![no_std]
#![deny(missing_docs)]
#![warn(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

pub mod auxv;
pub mod cpu;
pub mod ids;
pub mod mm;
pub mod syscall;
pub mod vdso;

pub use cpu::*;
pub use ids::*;
pub use syscall::*;
pub use vdso::*;
