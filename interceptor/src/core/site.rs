//! Patch sites: the places the interceptor can patch, and how.
//!
//! A [`Site`] is an address plus a [`SiteKind`]. Today every site is a function entry; the
//! kind is where other kinds of site go (a line or block start): the planner of the back
//! end dispatches on it, and the core (batches, commit, thread fix-ups, retiring) does not
//! depend on it. How a site ends up patched (a jump, a hop, a one-byte trap) is its
//! [`HookKind`](crate::HookKind), chosen by the planner; a trap-hooked site is served by
//! the caller through its [`TrapSite`].

/// What kind of place a [`Site`] is, which decides how it may be patched.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SiteKind {
    /// A function's entry, patched with a jump (see the back end's patch forms).
    #[default]
    FunctionEntry,
}

/// A site hooked with [`HookKind::Trap`](crate::HookKind::Trap), as the trap handler needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrapSite {
    /// The address of the `int3` (the site's address); a trap there reports `addr + 1`.
    pub addr: u64,
    /// Where the thread resumes after the probe: the relocated copy of the first
    /// instruction, followed by a jump back to the second.
    pub resume: u64,
    /// The site's cookie.
    pub cookie: u64,
    /// Whether the `int3` is in place now (false once unhooked: a trap still being delivered
    /// then re-runs the restored original instruction).
    pub active: bool,
}

/// One place to hook, as the caller knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Site {
    /// Runtime address of the patch site (for [`SiteKind::FunctionEntry`], the entry).
    pub addr: u64,
    /// Size of the code the site starts (a function's size, from its symbol).
    pub size: u64,
    /// Start of the next symbol (or section end): `addr+size .. next` may be padding (only
    /// its leading `int3`/`nop` bytes are used). Values below `addr+size` mean "no padding".
    /// Up to 256 bytes of it are read, so `addr .. min(next, addr+size+256)` must be mapped.
    pub next: u64,
    /// The attach cookie put into [`xcover_session::ProbeCtx::cookie`].
    pub cookie: u64,
    /// How the site may be patched.
    pub kind: SiteKind,
    /// The lowest offset from `addr` (1..) that code outside the function branches to, 0
    /// when none is known: the caller finds these (xcover decodes the whole module), the
    /// planner only sees the function's own bytes. No patch displaces that byte.
    pub entered_at: u8,
}

impl Site {
    /// A function entry at `addr`, `size` bytes long, the next symbol at `next`.
    pub fn function(addr: u64, size: u64, next: u64, cookie: u64) -> Self {
        Self {
            addr,
            size,
            next,
            cookie,
            kind: SiteKind::FunctionEntry,
            entered_at: 0,
        }
    }

    /// The same site, entered by other code at `offset` from its address (see
    /// [`Site::entered_at`]; 0 for none).
    pub fn entered_at(mut self, offset: u8) -> Self {
        self.entered_at = offset;
        self
    }
}
