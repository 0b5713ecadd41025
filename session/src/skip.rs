//! Why a function was not hooked: [`SkipReason`], one enum for the interceptor that decides
//! (inside the target) and every reader that reports it (xcover, the TUI, the reports).
//!
//! The agent stores [`SkipReason::code`] in [`FuncEntry::skip_reason`](crate::FuncEntry)
//! next to [`FuncStatus::Skipped`](crate::FuncStatus); readers decode it with
//! [`SkipReason::from_code`] (or [`FuncEntry::skip_reason`](crate::FuncEntry::skip_reason)).
//! Codes are stable: a code is never reused for another reason, new reasons take new codes,
//! and a reader meets codes it does not know (a newer agent) as `None`.

use core::fmt;

/// Why a patch site was not hooked.
///
/// Only the reason crosses the process boundary, not its details (which instruction, which
/// branch): the session records one code per function. The one detail a reader can show is
/// kept in the function table by xcover itself: for [`SkipReason::EnteredInside`], where the
/// function is entered and from what ([`FuncEntry::entered_at`](crate::FuncEntry::entered_at)
/// and the text after its name).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// Size 0.
    TooSmall = 1,
    /// Not enough bytes for a 5-byte patch nor room in the padding for the 2-byte hop.
    NoRoom = 2,
    /// An instruction of the function branches or refers into the patched bytes.
    BranchIntoPatch = 3,
    /// The entry does not decode.
    Undecodable = 4,
    /// An instruction in the displaced bytes cannot be moved.
    Unrelocatable = 5,
    /// Already hooked by this interceptor.
    AlreadyHooked = 6,
    /// No memory could be mapped within ±2 GiB.
    NoNearMemory = 7,
    /// The function's bytes could not be read.
    Unreadable = 8,
    /// A stopped thread sits inside the displaced bytes at a point with no equivalent.
    ThreadInPatch = 9,
    /// The code is entered at its second byte by design (`nop; call`: a top frame whose
    /// call others return to, like Go's `runtime.goexit`).
    ReturnTarget = 10,
    /// Code outside the function branches into the bytes every patch form would displace
    /// (the function table's [`FuncEntry::entered_at`](crate::FuncEntry::entered_at)).
    EnteredInside = 11,
    /// Set by xcover before the agent runs: a split part (`.cold`) of a function, entered
    /// from code that keeps data below its stack pointer (the red zone), which a jump to a
    /// trampoline would overwrite.
    RedZone = 12,
}

impl SkipReason {
    /// Every reason, in code order.
    pub const ALL: [SkipReason; 12] = [
        Self::TooSmall,
        Self::NoRoom,
        Self::BranchIntoPatch,
        Self::Undecodable,
        Self::Unrelocatable,
        Self::AlreadyHooked,
        Self::NoNearMemory,
        Self::Unreadable,
        Self::ThreadInPatch,
        Self::ReturnTarget,
        Self::EnteredInside,
        Self::RedZone,
    ];

    /// The stable code stored in `FuncEntry::skip_reason` (never 0).
    pub const fn code(self) -> u32 {
        self as u32
    }

    /// Decodes a stored code; `None` for 0 and for codes this version does not know.
    pub const fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            1 => Self::TooSmall,
            2 => Self::NoRoom,
            3 => Self::BranchIntoPatch,
            4 => Self::Undecodable,
            5 => Self::Unrelocatable,
            6 => Self::AlreadyHooked,
            7 => Self::NoNearMemory,
            8 => Self::Unreadable,
            9 => Self::ThreadInPatch,
            10 => Self::ReturnTarget,
            11 => Self::EnteredInside,
            12 => Self::RedZone,
            _ => return None,
        })
    }

    /// What reports and the TUI say.
    pub const fn text(self) -> &'static str {
        match self {
            Self::TooSmall => "function too small",
            Self::NoRoom => "no room for a patch (no free padding)",
            Self::BranchIntoPatch => "branch into the patched bytes",
            Self::Undecodable => "undecodable instruction",
            Self::Unrelocatable => "unrelocatable instruction",
            Self::AlreadyHooked => "already hooked",
            Self::NoNearMemory => "no memory within 2 GiB for a trampoline",
            Self::Unreadable => "code not readable",
            Self::ThreadInPatch => "a thread is stopped inside the patched bytes",
            Self::ReturnTarget => "entered at its second byte (a top frame's call)",
            Self::EnteredInside => "entered inside the patched bytes by another function's branch",
            Self::RedZone => {
                "a split part (.cold) of a function that keeps data below its stack pointer \
                 (red zone), which a jump to a trampoline would overwrite"
            }
        }
    }

    /// The text for a stored code, `"unknown reason"` for one this version does not know.
    pub fn text_of(code: u32) -> &'static str {
        Self::from_code(code).map_or("unknown reason", Self::text)
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable_and_round_trip() {
        for (i, r) in SkipReason::ALL.iter().enumerate() {
            assert_eq!(r.code(), i as u32 + 1, "{r:?}");
            assert_eq!(SkipReason::from_code(r.code()), Some(*r));
        }
        assert_eq!(SkipReason::from_code(0), None);
        assert_eq!(SkipReason::from_code(13), None);
        assert_eq!(SkipReason::EnteredInside.code(), 11);
        assert_eq!(SkipReason::text_of(99), "unknown reason");
        assert_eq!(SkipReason::text_of(1), "function too small");
    }
}
