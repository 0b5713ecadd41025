//! The session: the one contract across the process boundary between xcover, the agent it
//! loads into the target, and the probe the agent runs there.
//!
//! # What crosses the boundary
//!
//! - **The session file**, `/dev/shm/xcover-<pid>`: one per target, mapped by xcover (which
//!   creates it, watches it and writes the reports from it) and by the agent inside the
//!   target. Its byte layout is [`layout`] (the header, the function and module tables, the
//!   region table) and [`arena`] (the probe's eBPF maps, inside the file). Nothing in it is
//!   an absolute pointer except the fields documented as "address in the target".
//! - **The agent's entry points** ([`entry`]): called by xcover in a stopped thread of the
//!   target, with the session's address; they answer with a return code and the header's
//!   `agent_error`.
//! - **The probe contract** ([`probe`]): the context a probe sees, the names of the maps
//!   xcover looks for and sizes, and the records the built-in probe writes ([`FirstHit`],
//!   whose C twin is `session/include/xcover_probe.h`, included by `bpf/cover.bpf.c`).
//! - **Why a function was skipped** ([`SkipReason`]), **and how a hooked one is patched**
//!   ([`HookKind`]): decided by the interceptor in the target, stored as a stable code in
//!   the function table (the same field, told apart by the function's status; beside the
//!   hook kind, a function's [`UnhookReason`] when a live unhook took its hook out: see
//!   [`FuncEntry::skip_reason`]), shown by every reader.
//!
//! [`view`] is the `no_std` access the agent uses on its mapping; [`file`](mod@file) (feature `std`)
//! is xcover's side: creating, opening, listing, holding and removing session files.
//!
//! # Who writes what
//!
//! | writer | when | what |
//! |---|---|---|
//! | xcover | creating the file, before anyone else maps it | the header's plain fields, every table and section, the arena's maps (initialised) |
//! | xcover | while the target is stopped, before the agent uses them | `probe_flags`, `rseq_cpu_id_off`, `agent_base`/`agent_size`, `target_map_addr`, `scratch_addr`/`scratch_size` |
//! | xcover | its lifecycle | `state`, `owner_pid`, `flags` ([`FLAG_KEEP`], [`FLAG_HELD`]) |
//! | agent | in an entry point, every thread of the target stopped | each function's `status` and `skip_reason`, `funcs_hooked`/`funcs_skipped`, `hooked_at_ns`, the region table, `agent_error`, `agent_calls`, `state` (Live, Detaching, Detached) |
//! | probe | any thread of the target, any time while hooked | its maps in the arena (hit counters, first-hit flags, ring-buffer records), the log ring |
//! | readers (xcover, its TUI) | any time | the ring buffer's consumer position (one consumer: the xcover that watches) |
//!
//! # Invariants
//!
//! - **Atomics.** A header field that changes while another process may read it is an
//!   atomic; the other header fields are written before the file is shared or while the
//!   target is stopped, and never change afterwards. Table entries and records are not
//!   atomics: a writer changes a naturally aligned field with one volatile store, and readers
//!   copy entries out with volatile loads, never holding a reference into the shared bytes.
//!   Counters that tell readers something changed (`funcs_hooked`, `funcs_skipped`,
//!   `regions_count`) are published with release stores after what they announce. The log
//!   ring is best effort: writers reserve with a `fetch_add` on `log_head`, readers skip
//!   what was overwritten. Maps have their own protocols, per type (`docs/maps.md`).
//! - **Versioning.** Every reader checks [`SESSION_MAGIC`], [`SESSION_VERSION`], the
//!   header's size and the file's size before trusting anything else; every layout's size
//!   and key offsets are pinned by compile-time asserts. Any incompatible change bumps
//!   [`SESSION_VERSION`]. The agent is embedded in the xcover binary, so the two always
//!   agree; the version guards against a session left by another xcover (`--keep`, a killed
//!   one). [`SkipReason`] codes are stable across versions.
//! - **Bounds.** Offsets and counts in the header are data from a file other processes can
//!   write: every access is checked against the mapping ([`view`] on each access, [`file`](mod@file) on
//!   each read), whatever the header says.
//! - **Ownership.** The file is mode 0600 and belongs to the user who attached (or, when root
//!   attaches to a process that opens files as another user, to that user); it is created
//!   `O_EXCL | O_NOFOLLOW` under a private name and published with `link(2)` once its header
//!   is complete, and opened only if it is a regular file nobody else may write. Its owner
//!   is the xcover whose pid `owner_pid` holds, trusted as alive only while that process
//!   holds the file open. A kept session ([`FLAG_KEEP`]) needs no owner; a held one
//!   ([`FLAG_HELD`]) only keeps counts whose report could not be written, and is never
//!   removed as stale.
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(missing_docs)]
// Everything but `file` runs inside the target too (the agent's view of the session, the map
// arena's layout): a panic there is a SIGILL in the user's process.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

pub mod arena;
#[cfg(feature = "std")]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "runs only in xcover, never in the target"
)]
pub mod file;
pub mod layout;
pub mod probe;
pub mod skip;
pub mod view;

pub use layout::*;
pub use probe::{FirstHit, PROBE_CTX_COOKIE_OFF, PROBE_CTX_FUNC_IP_OFF, PT_REGS_SIZE, ProbeCtx};
pub use skip::SkipReason;
