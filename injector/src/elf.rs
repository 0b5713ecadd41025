//! The agent's ELF image: checked, laid out and relocated here, in xcover's own process.
//!
//! The agent is a self-contained shared object (see the crate doc): no `DT_NEEDED`, no
//! undefined symbol, no TLS, no initialisers, only `R_X86_64_RELATIVE` relocations. This
//! module refuses anything else, naming what it found, and turns the file into the exact
//! bytes its span must hold once loaded at a given base address, so that loading is one
//! remote `mmap`, one write and a few `mprotect`s.

use std::collections::BTreeMap;

use goblin::elf::{Elf, program_header as ph, reloc};

use crate::{Error, Result};

/// Page size of x86-64 Linux.
pub const PAGE: u64 = 4096;

fn page_down(x: u64) -> u64 {
    x & !(PAGE - 1)
}
fn page_up(x: u64) -> u64 {
    (x + PAGE - 1) & !(PAGE - 1)
}

/// One `PT_LOAD` segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Offset of the segment from the load base.
    pub vaddr: u64,
    /// Size in memory.
    pub memsz: u64,
    /// Offset in the file.
    pub offset: u64,
    /// Bytes taken from the file (the rest is zero).
    pub filesz: u64,
    /// `PROT_*` bits the pages get once loaded.
    pub prot: i32,
}

/// A parsed, checked agent image.
#[derive(Debug)]
pub struct AgentImage<'a> {
    bytes: &'a [u8],
    /// The `PT_LOAD` segments, by address.
    pub segments: Vec<Segment>,
    /// Bytes to reserve (the whole span of the segments, page-rounded).
    pub span: u64,
    /// `R_X86_64_RELATIVE` relocations: (offset from base, addend).
    pub relative: Vec<(u64, i64)>,
    /// `PT_GNU_RELRO` range (offset, size), made read-only after relocation.
    pub relro: Option<(u64, u64)>,
    /// Exported functions and objects: name → offset from base.
    pub exports: BTreeMap<String, u64>,
}

fn bad(msg: impl Into<String>) -> Error {
    Error::BadImage(msg.into())
}

impl<'a> AgentImage<'a> {
    /// Parses and checks an agent shared object.
    pub fn parse(bytes: &'a [u8]) -> Result<AgentImage<'a>> {
        let elf = Elf::parse(bytes).map_err(|e| bad(format!("not a valid ELF file: {e}")))?;
        if !elf.is_64
            || !elf.little_endian
            || elf.header.e_machine != goblin::elf::header::EM_X86_64
        {
            return Err(bad("not a 64-bit little-endian x86-64 object"));
        }
        if elf.header.e_type != goblin::elf::header::ET_DYN {
            return Err(bad("not a shared object (ET_DYN)"));
        }
        if let Some(lib) = elf.libraries.first() {
            return Err(bad(format!(
                "needs shared library {lib} (DT_NEEDED): the agent must import nothing"
            )));
        }
        let mut segments = Vec::new();
        let mut relro = None;
        for p in &elf.program_headers {
            match p.p_type {
                ph::PT_LOAD => {
                    if p.p_filesz > p.p_memsz
                        || p.p_offset
                            .checked_add(p.p_filesz)
                            .is_none_or(|e| e > bytes.len() as u64)
                    {
                        return Err(bad(format!(
                            "PT_LOAD at {:#x} lies outside the file",
                            p.p_vaddr
                        )));
                    }
                    if p.p_vaddr % PAGE != p.p_offset % PAGE {
                        return Err(bad(format!("PT_LOAD at {:#x} is misaligned", p.p_vaddr)));
                    }
                    let mut prot = 0;
                    if p.p_flags & ph::PF_R != 0 {
                        prot |= libc::PROT_READ;
                    }
                    if p.p_flags & ph::PF_W != 0 {
                        prot |= libc::PROT_WRITE;
                    }
                    if p.p_flags & ph::PF_X != 0 {
                        prot |= libc::PROT_EXEC;
                    }
                    if prot & libc::PROT_WRITE != 0 && prot & libc::PROT_EXEC != 0 {
                        return Err(bad(format!(
                            "PT_LOAD at {:#x} is writable and executable",
                            p.p_vaddr
                        )));
                    }
                    segments.push(Segment {
                        vaddr: p.p_vaddr,
                        memsz: p.p_memsz,
                        offset: p.p_offset,
                        filesz: p.p_filesz,
                        prot,
                    });
                }
                ph::PT_TLS => return Err(bad("has thread-local storage (PT_TLS)")),
                ph::PT_INTERP => return Err(bad("has an interpreter (PT_INTERP)")),
                ph::PT_GNU_RELRO => relro = Some((p.p_vaddr, p.p_memsz)),
                _ => {}
            }
        }
        segments.sort_by_key(|s| s.vaddr);
        let first = segments.first().ok_or_else(|| bad("no PT_LOAD segment"))?;
        if first.vaddr != 0 {
            return Err(bad("first PT_LOAD does not start at address 0"));
        }
        for w in segments.windows(2) {
            if page_up(w[0].vaddr + w[0].memsz) > page_down(w[1].vaddr) {
                return Err(bad("PT_LOAD segments share a page"));
            }
        }
        let span = segments
            .iter()
            .map(|s| page_up(s.vaddr + s.memsz))
            .max()
            .unwrap_or(0);
        if let Some(d) = &elf.dynamic
            && (d.info.init != 0 || d.info.init_arraysz != 0)
        {
            return Err(bad(
                "has initialisers (DT_INIT/DT_INIT_ARRAY); nothing would run them",
            ));
        }
        if !elf.dynrels.is_empty() {
            return Err(bad("has REL relocations; x86-64 uses RELA"));
        }
        let mut relative = Vec::new();
        for r in elf.dynrelas.iter().chain(elf.pltrelocs.iter()) {
            match r.r_type {
                reloc::R_X86_64_RELATIVE => {
                    let addend = r.r_addend.unwrap_or(0);
                    if r.r_offset.checked_add(8).is_none_or(|e| e > span) {
                        return Err(bad(format!(
                            "relocation at {:#x} outside the image",
                            r.r_offset
                        )));
                    }
                    relative.push((r.r_offset, addend));
                }
                reloc::R_X86_64_NONE => {}
                t => {
                    let sym = elf
                        .dynsyms
                        .get(r.r_sym)
                        .and_then(|s| elf.dynstrtab.get_at(s.st_name))
                        .unwrap_or("");
                    return Err(bad(format!(
                        "unsupported relocation {} (type {t}) at {:#x}{}{}: the agent must be \
                         self-contained (only R_X86_64_RELATIVE)",
                        reloc::r_to_str(t, goblin::elf::header::EM_X86_64),
                        r.r_offset,
                        if sym.is_empty() { "" } else { " against " },
                        sym
                    )));
                }
            }
        }
        let mut exports = BTreeMap::new();
        for s in elf.dynsyms.iter() {
            let name = elf.dynstrtab.get_at(s.st_name).unwrap_or("");
            if s.st_shndx == goblin::elf::section_header::SHN_UNDEF as usize {
                if !name.is_empty() && s.st_bind() != goblin::elf::sym::STB_WEAK {
                    return Err(bad(format!(
                        "imports symbol {name}: the agent must import nothing"
                    )));
                }
                continue;
            }
            if !name.is_empty() && s.st_value != 0 {
                exports.insert(name.to_string(), s.st_value);
            }
        }
        Ok(AgentImage {
            bytes,
            segments,
            span,
            relative,
            relro,
            exports,
        })
    }

    /// Offset of an exported symbol.
    pub fn export(&self, name: &str) -> Result<u64> {
        self.exports
            .get(name)
            .copied()
            .ok_or_else(|| bad(format!("does not export {name}")))
    }

    /// The bytes of the whole span once loaded and relocated at `base`.
    pub fn build(&self, base: u64) -> Vec<u8> {
        let mut img = vec![0u8; self.span as usize];
        for s in &self.segments {
            let src = &self.bytes[s.offset as usize..(s.offset + s.filesz) as usize];
            img[s.vaddr as usize..s.vaddr as usize + src.len()].copy_from_slice(src);
        }
        for &(off, addend) in &self.relative {
            let v = base.wrapping_add_signed(addend);
            img[off as usize..off as usize + 8].copy_from_slice(&v.to_le_bytes());
        }
        img
    }

    /// The protections to apply after writing, as page-aligned (offset, len, prot) ranges
    /// covering the whole span: segments get their flags, `PT_GNU_RELRO` becomes read-only,
    /// gaps become inaccessible. No range is ever writable and executable.
    pub fn protections(&self) -> Vec<(u64, u64, i32)> {
        let mut out = Vec::new();
        let mut cursor = 0;
        for s in &self.segments {
            let start = page_down(s.vaddr);
            let end = page_up(s.vaddr + s.memsz);
            if start > cursor {
                out.push((cursor, start - cursor, libc::PROT_NONE));
            }
            out.push((start, end - start, s.prot));
            cursor = end;
        }
        if let Some((off, len)) = self.relro {
            let (rs, re) = (page_down(off), page_down(off + len));
            if re > rs {
                out.push((rs, re - rs, libc::PROT_READ));
            }
        }
        out
    }

    /// The first segment's file bytes (ELF header, dynamic symbols): identical in every
    /// loaded copy of this exact agent, so comparing them tells whether a loaded agent is
    /// this one.
    pub fn identity(&self) -> &[u8] {
        let s = &self.segments[0];
        &self.bytes[s.offset as usize..(s.offset + s.filesz) as usize]
    }
}
