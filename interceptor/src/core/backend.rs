//! The interface between the arch-neutral core and an instruction-set back end.

use alloc::vec::Vec;

use super::HookKind;
use super::SkipReason;
use super::hooks::{MovedList, PatchBytes, SlotPatch};
use super::interceptor::HookOptions;
use super::site::Site;
use crate::arena::Arenas;

/// The patch a back end planned for a site, as bytes.
pub(crate) struct Patch {
    /// The site's bytes the patch covers, as they are now.
    pub original: PatchBytes,
    /// What replaces them.
    pub patch: PatchBytes,
    /// A second patch in the site's padding, if the form needs one.
    pub slot: Option<SlotPatch>,
}

/// What the core asks of an instruction-set back end (`crate::x86_64` today; an aarch64
/// back end implements the same). The core reads the site's code and its padding, owns the
/// arenas, the hooks and the batches; the back end decides how a site is patched and what
/// a trampoline contains.
pub(crate) trait Backend: Sized {
    /// What planning decodes once and building the trampoline reuses (x86-64: the site's
    /// first instructions). Kept by the caller between sites, so it is decoded in place.
    type Head: Default;
    /// A planned patch form.
    type Plan;
    /// How far (bytes) a trampoline may be from the site it serves.
    const REACH: u64;

    /// A back end whose trampolines call `probe` (an `extern "C" fn(*mut ProbeCtx) -> u64`).
    fn new(probe: u64, opts: HookOptions) -> Self;
    /// Called once per batch, before the first trampoline is built.
    fn prepare(&mut self);
    /// Length of the free padding (filler instructions nobody runs) at the start of `pad`,
    /// which runs at `at`.
    fn free_padding(pad: &[u8], at: u64) -> usize;
    /// Refuses sites whose shape forbids patching them at all (`code` is the site's code
    /// and free padding).
    fn check_site(site: &Site, code: &[u8]) -> Result<(), SkipReason>;
    /// Plans the patch of `site` whose code is `code[..size]` (free padding after it),
    /// leaving what it decoded in `head`.
    fn plan(
        site: &Site,
        code: &[u8],
        size: usize,
        head: &mut Self::Head,
    ) -> Result<Self::Plan, SkipReason>;
    /// Plans a one-byte trap at `site` (for a site every jump form refused): the trampoline
    /// holds only the relocated first instruction and the jump back.
    fn plan_trap(
        site: &Site,
        code: &[u8],
        size: usize,
        head: &mut Self::Head,
    ) -> Result<Self::Plan, SkipReason>;
    /// The form a plan patches with.
    fn kind(plan: &Self::Plan) -> HookKind;
    /// Builds the trampoline of a planned site into `buf` (cleared first), to run at `pc`
    /// in one of `arenas`. Returns the address after its last byte, and the address of its
    /// relocated instructions with where each went (or why it cannot be built).
    #[allow(clippy::too_many_arguments)]
    fn build_trampoline(
        &mut self,
        arenas: &Arenas,
        pc: u64,
        site: &Site,
        code: &[u8],
        head: &Self::Head,
        plan: &Self::Plan,
        buf: &mut Vec<u8>,
    ) -> (u64, Result<(u64, MovedList), SkipReason>);
    /// The patch bytes that send `site` to its trampoline at `tramp`.
    fn patch(site: &Site, code: &[u8], plan: &Self::Plan, tramp: u64) -> Result<Patch, SkipReason>;
}
