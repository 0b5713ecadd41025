//! x86-64 patch forms: which bytes of a site are replaced by what.
//!
//! The planner ([`plan`]) picks, for a function entry, the 5-byte `jmp rel32` or the 2-byte
//! `jmp rel8` hop into the function's free padding (see the module doc of
//! [`crate::x86_64`]); [`patch_bytes`] turns the plan into the bytes written. New site
//! kinds (a trap patch, a line start) get their forms here.

use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic};

use super::relocator::{Head, RefSweep, RelocError, Scan};
use crate::core::backend::Patch;
use crate::core::{HookKind, PatchBytes, Site, SkipReason};

impl RelocError {
    /// Why a site whose relocation failed this way is skipped (the session records the
    /// reason, not where it lies).
    pub(crate) fn skip_reason(self) -> SkipReason {
        match self {
            RelocError::Truncated => SkipReason::NoRoom,
            RelocError::Undecodable { .. } => SkipReason::Undecodable,
            RelocError::Unrelocatable { .. } => SkipReason::Unrelocatable,
        }
    }
}

/// `jmp rel32` at `at` to `target`, or `None` when out of reach.
fn jmp_rel32(at: u64, target: u64) -> Option<[u8; 5]> {
    let d = i32::try_from(target.wrapping_sub(at + 5) as i64).ok()?;
    let d = d.to_le_bytes();
    Some([0xe9, d[0], d[1], d[2], d[3]])
}

/// A planned entry patch.
pub(crate) struct Plan {
    pub(crate) scan: Scan,
    /// Hop slot address for the 2-byte form.
    slot: Option<u64>,
    /// The one-byte `int3` form.
    pub(crate) trap: bool,
}

impl Plan {
    /// The form this plan patches with.
    pub(crate) fn kind(&self) -> HookKind {
        match (self.trap, self.slot) {
            (true, _) => HookKind::Trap,
            (false, Some(_)) => HookKind::Jmp8,
            (false, None) => HookKind::Jmp,
        }
    }
}

fn is_padding(ins: &Instruction) -> bool {
    matches!(ins.mnemonic(), Mnemonic::Nop | Mnemonic::Int3)
}

/// Length of the free padding at the start of `pad` (whole `int3`/`nop` instructions).
pub(crate) fn free_padding(pad: &[u8], at: u64) -> usize {
    // The usual fill, one-byte `int3`s or `nop`s, needs no decoder.
    let simple = pad.iter().take_while(|&&b| b == 0xcc || b == 0x90).count();
    if simple == pad.len() {
        return simple;
    }
    let rest = pad.get(simple..).unwrap_or(&[]);
    let mut dec = Decoder::with_ip(64, rest, at + simple as u64, DecoderOptions::NONE);
    let mut ins = Instruction::default();
    let mut n = simple;
    while dec.can_decode() {
        dec.decode_out(&mut ins);
        if ins.is_invalid() || !is_padding(&ins) {
            break;
        }
        n += ins.len();
    }
    n
}

/// Plans the patch of the function `code[..size]` (free padding after it), leaving its first
/// instructions decoded in `head` for the relocation.
pub(crate) fn plan(
    f: &Site,
    code: &[u8],
    size: usize,
    head: &mut Head,
) -> Result<Plan, SkipReason> {
    let avail = code.len();
    // One decode of the entry serves both patch forms and the relocation; the sweep for
    // references into the patch goes only as far into the function as each answer needs.
    let mut refs = RefSweep::new(code.get(..size).unwrap_or(code), f.addr);
    head.decode(code, f.addr, &mut refs);
    // A branch from elsewhere into bytes 1..len of the displaced range, as for the
    // function's own branches.
    let entered = |len: usize| f.entered_at != 0 && usize::from(f.entered_at) < len;
    let first = match head.scan(5) {
        Ok(scan) => match refs.first_ref(scan.len) {
            None if entered(scan.len) => SkipReason::EnteredInside,
            None => {
                return Ok(Plan {
                    scan,
                    slot: None,
                    trap: false,
                });
            }
            Some(_) => SkipReason::BranchIntoPatch,
        },
        Err(e) => e.skip_reason(),
    };
    // The 2-byte hop into padding.
    if let Ok(scan) = head.scan(2) {
        let slot_off = scan.len.max(size);
        if slot_off + 5 <= avail
            && slot_off - 2 <= 127
            && !entered(scan.len)
            && refs.first_ref(scan.len).is_none()
        {
            return Ok(Plan {
                scan,
                slot: Some(f.addr + slot_off as u64),
                trap: false,
            });
        }
    }
    Err(first)
}

/// Plans the one-byte `int3` form for the function `code[..size]`: only its first
/// instruction is displaced (relocated into the trampoline, followed by the jump back), so no
/// branch into later bytes matters, nor the room after it.
pub(crate) fn plan_trap(
    f: &Site,
    code: &[u8],
    size: usize,
    head: &mut Head,
) -> Result<Plan, SkipReason> {
    let mut refs = RefSweep::new(code.get(..size).unwrap_or(code), f.addr);
    head.decode(code, f.addr, &mut refs);
    let scan = head.scan(1).map_err(RelocError::skip_reason)?;
    Ok(Plan {
        scan,
        slot: None,
        trap: true,
    })
}

/// The bytes of the planned patch of `f` (code `code`) that jumps to its trampoline at `pc`:
/// the original bytes, the patch (the jump, the rest `int3`), and the hop's slot.
pub(crate) fn patch_bytes(f: &Site, code: &[u8], p: &Plan, pc: u64) -> Result<Patch, SkipReason> {
    if p.trap {
        let original = code
            .get(..1)
            .and_then(PatchBytes::copy)
            .ok_or(SkipReason::NoRoom)?;
        let patch = PatchBytes::filled(0xcc, 1).ok_or(SkipReason::NoRoom)?;
        return Ok(Patch {
            original,
            patch,
            slot: None,
        });
    }
    let len = p.scan.len;
    let original = code
        .get(..len)
        .and_then(PatchBytes::copy)
        .ok_or(SkipReason::NoRoom)?;
    let mut patch = PatchBytes::filled(0xcc, len).ok_or(SkipReason::NoRoom)?;
    let slot = match p.slot {
        None => {
            let jmp = jmp_rel32(f.addr, pc).ok_or(SkipReason::NoNearMemory)?;
            patch.put(0, &jmp).ok_or(SkipReason::NoRoom)?;
            None
        }
        Some(s) => {
            let hop = s.wrapping_sub(f.addr + 2) as i64;
            let new5 = jmp_rel32(s, pc).ok_or(SkipReason::NoNearMemory)?;
            if !(-128..=127).contains(&hop) {
                return Err(SkipReason::NoNearMemory);
            }
            patch.put(0, &[0xeb, hop as u8]).ok_or(SkipReason::NoRoom)?;
            let so = (s - f.addr) as usize;
            let orig5: [u8; 5] = code
                .get(so..so + 5)
                .and_then(|b| b.try_into().ok())
                .ok_or(SkipReason::NoRoom)?;
            Some((s, orig5, new5))
        }
    };
    Ok(Patch {
        original,
        patch,
        slot,
    })
}

/// Whether the function's code is entered at its second byte by design: a one-byte `nop`
/// followed by a `call` is how a top frame marks the address that others return to without
/// having called it (Go's `runtime.goexit` is `nop; call goexit1`, and every goroutine is
/// started with `goexit+1` as its return address). No branch in the function shows that
/// entry, so the shape itself is the signal; patching it would send those returns into the
/// middle of the entry jump.
pub(crate) fn entered_after_first_byte(code: &[u8]) -> bool {
    matches!(code, [0x90, 0xe8, ..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Interceptor;

    #[test]
    fn a_branch_from_elsewhere_refuses_the_forms_that_displace_its_target() {
        // mov rax, rdi ; mov rcx, rdx ; ret ; 8 bytes of int3 padding.
        let code = [
            0x48, 0x89, 0xf8, 0x48, 0x89, 0xd1, 0xc3, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc,
            0xcc,
        ];
        let addr = 0x40_1000;
        let try_plan = |entered_at: u8| {
            let f = Site::function(addr, 7, addr + code.len() as u64, 0).entered_at(entered_at);
            plan(&f, &code, 7, &mut Head::default()).map(|p| (p.scan.len, p.slot))
        };
        // Nothing enters inside, or the target is past the 6 bytes the 5-byte jump displaces.
        for at in [0, 6, 7, 20] {
            assert_eq!(try_plan(at), Ok((6, None)), "entered at +{at}");
        }
        // +3 to +5 are inside the jump's 6 bytes, not inside the hop's 3 (the first `mov`).
        for at in [3, 4, 5] {
            assert_eq!(try_plan(at), Ok((3, Some(addr + 7))), "entered at +{at}");
        }
        // +1 and +2 are inside every form.
        for at in [1, 2] {
            assert_eq!(
                try_plan(at),
                Err(SkipReason::EnteredInside),
                "entered at +{at}"
            );
        }
        assert_eq!(SkipReason::EnteredInside.code(), 11);
        assert!(Interceptor::trap_may_replace(SkipReason::EnteredInside));
    }

    #[test]
    fn a_trap_displaces_the_first_instruction_alone() {
        // mov rax, rdi ; mov rcx, rdx ; ret, entered at +1 by someone: no jump fits, an
        // `int3` over the first byte does, its trampoline holding the 3-byte `mov`.
        let code = [0x48, 0x89, 0xf8, 0x48, 0x89, 0xd1, 0xc3];
        let addr = 0x40_1000;
        let f = Site::function(addr, 7, addr + 7, 0).entered_at(1);
        let mut head = Head::default();
        let p = plan_trap(&f, &code, 7, &mut head).unwrap();
        assert_eq!(
            (p.scan.len, p.scan.live_len, p.kind()),
            (3, 3, HookKind::Trap)
        );
        let bytes = patch_bytes(&f, &code, &p, addr + 0x1000).unwrap();
        assert_eq!(
            (&*bytes.original, &*bytes.patch),
            (&[0x48][..], &[0xcc][..])
        );
        assert!(bytes.slot.is_none());
        // A first instruction that cannot move refuses the trap too (the session's reason
        // has no offset: the relocator's error says it is the first instruction).
        let syscall = [0x0f, 0x05, 0xc3];
        let f = Site::function(addr, 3, addr + 3, 0);
        assert_eq!(
            plan_trap(&f, &syscall, 3, &mut head).map(|p| p.kind()),
            Err(SkipReason::Unrelocatable)
        );
        assert!(matches!(
            head.scan(1),
            Err(RelocError::Unrelocatable { offset: 0, .. })
        ));
    }
}
