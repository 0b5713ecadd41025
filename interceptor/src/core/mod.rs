//! The arch-neutral core of the interceptor: patch sites, the planning driver, batches,
//! commit, thread fix-ups and retired trampolines, over a `backend::Backend`.
//!
//! # Batches and threads
//!
//! [`Interceptor::prepare_hooks`] plans every hook and writes the trampolines, which no code
//! reaches yet, so it is safe while threads run. [`HookBatch::fixup`] tells, for a stopped
//! thread's instruction pointer, whether it must move into a trampoline's relocated copy.
//! [`Interceptor::commit_hooks`] then writes every patch in one pass, two `protect`
//! calls per run of pages. Unhooking mirrors that with [`Interceptor::prepare_unhooks`],
//! [`UnhookBatch::fixup`] and [`Interceptor::commit_unhooks`], which restores the original
//! bytes exactly.
//!
//! Trampolines are **retired, never freed**, until the session ends: a thread stopped inside
//! the probe returns into its trampoline, and one in the register-restore part runs to the
//! jump back, which lands on original code again once unhooked. A later hook of the same
//! site with the same cookie reuses its retired trampoline, so repeated attach/detach
//! cycles do not grow memory.
//!
//! # Where things go
//! - a new kind of patch site (a line start): [`SiteKind`], then the back end's planner
//!   (`plan`) and patch bytes;
//! - a new patch form (like the one-byte trap): [`HookKind`] (in the session crate), the
//!   back end's planner (`plan_trap` for the trap) and patch bytes, and when to fall back
//!   to it ([`Interceptor::trap_may_replace`]);
//! - a new instruction set: a module beside `crate::x86_64` implementing
//!   `backend::Backend`, chosen in `crate::arch`.

pub(crate) mod backend;
mod batch;
mod hooks;
mod interceptor;
mod memory;
mod site;

pub use batch::{HookBatch, IpFixup, UnhookBatch};
pub(crate) use hooks::PatchBytes;
pub use hooks::{MAX_MOVED, Moved, MovedList};
pub use interceptor::{HookOptions, Interceptor};
pub use memory::{MemError, Memory, PAGE_SIZE, Protection, write_code_protecting};
pub use site::{Site, SiteKind, TrapSite};
/// How a hooked site is patched: the session's kinds, whose stable codes the agent records
/// per function.
pub use xcover_session::HookKind;
/// Why a site was not hooked: the session's reasons, whose stable codes the agent records
/// per function.
pub use xcover_session::SkipReason;
