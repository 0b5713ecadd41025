//! (being written)
use alloc::vec::Vec;
use crate::env::Env;
use crate::insn::Insn;
/// Options.
#[derive(Clone, Copy, Debug, Default)]
pub struct JitOptions {
    /// Save xmm.
    pub preserve_vector_regs: bool,
    /// Inline ctx helpers.
    pub inline_ctx_helpers: bool,
}
/// Error.
#[derive(Debug, thiserror::Error)]
#[error("jit not built")]
pub struct JitError;
/// Compile.
pub fn compile(_i: &[Insn], _e: &Env, _o: &JitOptions) -> Result<Vec<u8>, JitError> { Err(JitError) }
