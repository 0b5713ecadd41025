//! Functions of a stripped file from its call-frame information (`.eh_frame`).
//!
//! Every function a C, C++ or Rust compiler emits with unwind tables (the default on
//! x86-64) has a frame description entry (FDE) that gives its start and length exactly, and
//! `.eh_frame` is never stripped: it is needed at run time to unwind. So a stripped file
//! still tells where each of its functions is, only not what it is called.
//!
//! An FDE also tells how the frame looks at its first byte. A function entered by a `call`
//! starts with the canonical frame address at `rsp+8` (the return address just pushed); a
//! region whose frame is already set up at its first byte is a *part* of a function that
//! the compiler placed elsewhere — GCC's `foo.cold`, the never-executed paths of `foo`
//! moved out of the hot text — and is reached by a jump from its parent, never called.
//! [`Fde::part`] says which is which.
//!
//! The section is found by its name, or, in a file without section headers, through
//! `PT_GNU_EH_FRAME` (`.eh_frame_hdr`, whose first field points at `.eh_frame`).

use gimli::{
    BaseAddresses, CfaRule, EhFrame, EhFrameHdr, LittleEndian, UnwindContext, UnwindSection, X86_64,
};
use goblin::elf::{Elf, program_header::PT_GNU_EH_FRAME, program_header::PT_LOAD};

type Reader<'a> = gimli::EndianSlice<'a, LittleEndian>;

/// One FDE: a region of code with its own unwind information.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fde {
    /// Link-time address of its first byte.
    pub start: u64,
    /// Its length in bytes.
    pub len: u64,
    /// Whether its frame is already set up at its first byte (the canonical frame address
    /// is not `rsp+8`): a split part of another function (`.cold`), entered by a jump.
    pub part: bool,
}

/// Why the call-frame information of a file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EhFrameError {
    /// An entry of `.eh_frame` is malformed.
    #[error(".eh_frame at file offset {offset:#x}: {reason}")]
    Malformed {
        /// File offset of the entry (or of the section when the entry is unknown).
        offset: u64,
        /// What is wrong.
        reason: gimli::Error,
    },
    /// `.eh_frame_hdr` is malformed or points outside the file.
    #[error(".eh_frame_hdr at file offset {offset:#x}: {reason}")]
    BadHeader {
        /// File offset of `.eh_frame_hdr`.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
}

/// Where `.eh_frame` is: its link-time address and its bytes in the file.
struct Section<'a> {
    vaddr: u64,
    offset: u64,
    bytes: &'a [u8],
}

fn slice(bytes: &[u8], off: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(off).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    bytes.get(start..end)
}

fn section_by_name<'a>(elf: &Elf, bytes: &'a [u8], name: &str) -> Option<Section<'a>> {
    let sh = elf.section_headers.iter().find(|s| {
        elf.shdr_strtab.get_at(s.sh_name) == Some(name)
            && s.sh_type != goblin::elf::section_header::SHT_NOBITS
    })?;
    Some(Section {
        vaddr: sh.sh_addr,
        offset: sh.sh_offset,
        bytes: slice(bytes, sh.sh_offset, sh.sh_size)?,
    })
}

/// `.eh_frame` through `PT_GNU_EH_FRAME`, for a file without section headers: from the
/// address `.eh_frame_hdr` gives to the end of the segment that holds it.
fn section_by_header<'a>(elf: &Elf, bytes: &'a [u8]) -> Result<Option<Section<'a>>, EhFrameError> {
    let Some(ph) = elf
        .program_headers
        .iter()
        .find(|p| p.p_type == PT_GNU_EH_FRAME && p.p_filesz > 0)
    else {
        return Ok(None);
    };
    let bad = |reason: String| EhFrameError::BadHeader {
        offset: ph.p_offset,
        reason,
    };
    let hdr_bytes = slice(bytes, ph.p_offset, ph.p_filesz)
        .ok_or_else(|| bad("outside the file".to_string()))?;
    let bases = BaseAddresses::default().set_eh_frame_hdr(ph.p_vaddr);
    let hdr = EhFrameHdr::new(hdr_bytes, LittleEndian)
        .parse(&bases, 8)
        .map_err(|e| bad(e.to_string()))?;
    let vaddr = match hdr.eh_frame_ptr() {
        gimli::Pointer::Direct(a) => a,
        gimli::Pointer::Indirect(_) => {
            return Err(bad("indirect .eh_frame pointer".to_string()));
        }
    };
    let Some(load) = elf
        .program_headers
        .iter()
        .find(|p| p.p_type == PT_LOAD && vaddr >= p.p_vaddr && vaddr < p.p_vaddr + p.p_filesz)
    else {
        return Err(bad(format!(".eh_frame at {vaddr:#x} is in no segment")));
    };
    let offset = vaddr - load.p_vaddr + load.p_offset;
    let len = load.p_vaddr + load.p_filesz - vaddr;
    let bytes = slice(bytes, offset, len).ok_or_else(|| bad("outside the file".to_string()))?;
    Ok(Some(Section {
        vaddr,
        offset,
        bytes,
    }))
}

/// Every FDE of the file, in the order of `.eh_frame`; none when it has no `.eh_frame`.
pub fn fdes(elf: &Elf, bytes: &[u8]) -> Result<Vec<Fde>, EhFrameError> {
    let section = match section_by_name(elf, bytes, ".eh_frame") {
        Some(s) => s,
        None => match section_by_header(elf, bytes)? {
            Some(s) => s,
            None => return Ok(vec![]),
        },
    };
    let mut bases = BaseAddresses::default().set_eh_frame(section.vaddr);
    if let Some(s) = section_by_name(elf, bytes, ".text") {
        bases = bases.set_text(s.vaddr);
    }
    if let Some(s) = section_by_name(elf, bytes, ".got") {
        bases = bases.set_got(s.vaddr);
    }
    if let Some(s) = section_by_name(elf, bytes, ".eh_frame_hdr") {
        bases = bases.set_eh_frame_hdr(s.vaddr);
    }
    let eh = EhFrame::new(section.bytes, LittleEndian);
    let malformed = |at: u64, reason| EhFrameError::Malformed {
        offset: section.offset + at,
        reason,
    };
    let mut ctx: Box<UnwindContext<usize>> = Box::new(UnwindContext::new());
    let mut out = Vec::new();
    let mut entries = eh.entries(&bases);
    loop {
        let entry = match entries.next() {
            Ok(Some(e)) => e,
            Ok(None) => break,
            Err(e) => return Err(malformed(0, e)),
        };
        let gimli::CieOrFde::Fde(partial) = entry else {
            continue;
        };
        let at = partial.offset() as u64;
        let fde = partial
            .parse(EhFrame::cie_from_offset)
            .map_err(|e| malformed(at, e))?;
        if fde.len() == 0 {
            continue;
        }
        let part = !entered_by_call(&eh, &bases, &mut ctx, &fde);
        out.push(Fde {
            start: fde.initial_address(),
            len: fde.len(),
            part,
        });
    }
    Ok(out)
}

/// Whether the frame at the FDE's first byte is the one a `call` makes: canonical frame
/// address `rsp+8`. Unreadable instructions count as such (the region is then treated as a
/// function of its own, as most are).
fn entered_by_call(
    eh: &EhFrame<Reader<'_>>,
    bases: &BaseAddresses,
    ctx: &mut UnwindContext<usize>,
    fde: &gimli::FrameDescriptionEntry<Reader<'_>>,
) -> bool {
    match fde.unwind_info_for_address(eh, bases, ctx, fde.initial_address()) {
        Ok(row) => matches!(
            row.cfa(),
            CfaRule::RegisterAndOffset { register, offset: 8 } if *register == X86_64::RSP
        ),
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_executable_fdes_cover_main_functions() {
        let bytes = std::fs::read("/proc/self/exe").unwrap();
        let elf = Elf::parse(&bytes).unwrap();
        let fdes = fdes(&elf, &bytes).unwrap();
        assert!(fdes.len() > 1000, "{} FDEs", fdes.len());
        // Every FDE lies in an executable segment.
        let exec: Vec<_> = elf
            .program_headers
            .iter()
            .filter(|p| p.p_type == PT_LOAD && p.p_flags & goblin::elf::program_header::PF_X != 0)
            .collect();
        for f in &fdes {
            assert!(
                exec.iter()
                    .any(|p| f.start >= p.p_vaddr && f.start + f.len <= p.p_vaddr + p.p_memsz),
                "{f:?}"
            );
        }
        // This function has one, starting at its symbol.
        let me = elf
            .syms
            .iter()
            .find(|s| {
                elf.strtab.get_at(s.st_name).is_some_and(|n| {
                    n.contains("own_executable_fdes_cover_main_functions") && !n.contains("closure")
                })
            })
            .expect("the test's own symbol");
        let f = fdes
            .iter()
            .find(|f| f.start == me.st_value)
            .expect("an FDE at this function's entry");
        assert_eq!(f.len, me.st_size);
        assert!(!f.part);
    }
}
