//! Why a site was not hooked: [`SkipReason`], with stable numeric codes the session
//! records per function.

use core::fmt;

use crate::arch::Unrelocatable;

/// Why a site was not hooked. The arch-neutral reasons plus the back end's
/// ([`Unrelocatable`] is its list of instructions it cannot move).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// Size 0.
    TooSmall,
    /// Not enough bytes for a 5-byte patch nor room in the padding for the 2-byte hop.
    NoRoom,
    /// An instruction of the function (at `from`) branches or refers into the patched bytes.
    BranchIntoPatch {
        /// Address of the offending instruction.
        from: u64,
    },
    /// The entry does not decode.
    Undecodable {
        /// Offset of the bad bytes.
        offset: u32,
    },
    /// An instruction in the displaced bytes cannot be moved.
    Unrelocatable {
        /// Offset of the instruction.
        offset: u32,
        /// Its kind.
        kind: Unrelocatable,
    },
    /// Already hooked by this interceptor.
    AlreadyHooked,
    /// No memory could be mapped within ±2 GiB.
    NoNearMemory,
    /// The function's bytes could not be read.
    Unreadable,
    /// A stopped thread sits inside the displaced bytes at a point with no equivalent.
    ThreadInPatch,
    /// The code is entered at its second byte by design (`nop; call`: a top frame whose
    /// call others return to, like Go's `runtime.goexit`).
    ReturnTarget,
    /// Code outside the function branches into the bytes every patch form would displace
    /// ([`crate::Site::entered_at`]).
    EnteredInside {
        /// Offset of the branch target from the entry.
        at: u8,
    },
}

impl SkipReason {
    /// Whether a one-byte trap may hook a site every jump form refused for this reason: the
    /// trap displaces only the first instruction, so branches into later bytes, a lack of
    /// room, or an instruction after the first that cannot be moved do not matter.
    pub fn trap_may_replace(&self) -> bool {
        match self {
            Self::NoRoom
            | Self::BranchIntoPatch { .. }
            | Self::ReturnTarget
            | Self::EnteredInside { .. } => true,
            Self::Undecodable { offset } | Self::Unrelocatable { offset, .. } => *offset > 0,
            Self::TooSmall
            | Self::AlreadyHooked
            | Self::NoNearMemory
            | Self::Unreadable
            | Self::ThreadInPatch => false,
        }
    }

    /// Stable numeric code, for `FuncEntry::skip_reason`.
    pub fn code(&self) -> u32 {
        match self {
            Self::TooSmall => 1,
            Self::NoRoom => 2,
            Self::BranchIntoPatch { .. } => 3,
            Self::Undecodable { .. } => 4,
            Self::Unrelocatable { .. } => 5,
            Self::AlreadyHooked => 6,
            Self::NoNearMemory => 7,
            Self::Unreadable => 8,
            Self::ThreadInPatch => 9,
            Self::ReturnTarget => 10,
            Self::EnteredInside { .. } => xcover_abi::SKIP_ENTERED_INSIDE,
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooSmall => f.write_str("function too small"),
            Self::NoRoom => f.write_str("no room for a patch (no free padding)"),
            Self::BranchIntoPatch { from } => {
                write!(f, "branch into the patched bytes from {from:#x}")
            }
            Self::Undecodable { offset } => write!(f, "undecodable instruction at +{offset}"),
            Self::Unrelocatable { offset, kind } => {
                write!(f, "unrelocatable instruction at +{offset}: {kind}")
            }
            Self::AlreadyHooked => f.write_str("already hooked"),
            Self::NoNearMemory => f.write_str("no memory within 2 GiB for a trampoline"),
            Self::Unreadable => f.write_str("code not readable"),
            Self::ThreadInPatch => f.write_str("a thread is stopped inside the patched bytes"),
            Self::ReturnTarget => f.write_str("entered at its second byte (a top frame's call)"),
            Self::EnteredInside { at } => {
                write!(f, "entered at +{at} by another function's branch")
            }
        }
    }
}
