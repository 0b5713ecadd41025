//! A module's functions: its symbols (`.symtab`, `.dynsym`, a debug file's), its
//! `.gopclntab` entries and its `.eh_frame` entries, merged by address as the parent
//! module's doc says, placed at their runtime addresses, and the branches from other code
//! into their first bytes (see [`crate::inbound`]).

use super::*;

/// A function symbol (or table entry) before it is placed in the target.
pub(super) struct RawSym {
    name: String,
    value: u64,
    size: u64,
    bind: u8,
    shndx: usize,
    source: Source,
    /// No symbol names it: its name is to be made from its file offset.
    synthetic: Option<Synthetic>,
}

/// How a function no symbol names is named.
#[derive(Clone, Copy)]
pub(super) struct Synthetic {
    part: bool,
}

/// The function symbols of `elf` (its `.symtab`, else its `.dynsym`, found as `source`
/// says, or as `.dynsym` when it has no `.symtab`) and every symbol start with its section.
pub(super) fn function_syms(elf: &Elf, source: Source) -> (Vec<RawSym>, Vec<(u64, usize)>) {
    let mut funcs = Vec::new();
    let mut starts = Vec::new();
    let tables = [(&elf.syms, &elf.strtab), (&elf.dynsyms, &elf.dynstrtab)];
    // .symtab when present, otherwise .dynsym.
    let (use_tables, source) = if elf.syms.is_empty() {
        (&tables[1..], Source::Dynsym)
    } else {
        (&tables[..1], source)
    };
    for (syms, strtab) in use_tables {
        for s in syms.iter() {
            if s.st_shndx == 0 || s.st_shndx >= 0xff00 {
                continue;
            }
            if s.st_value != 0 {
                starts.push((s.st_value, s.st_shndx));
            }
            let ty = sym::st_type(s.st_info);
            if ty != sym::STT_FUNC && ty != sym::STT_GNU_IFUNC {
                continue;
            }
            if s.st_size == 0 || s.st_value == 0 {
                continue;
            }
            let Some(name) = strtab.get_at(s.st_name) else {
                continue;
            };
            if name.is_empty() {
                continue;
            }
            funcs.push(RawSym {
                name: name.to_string(),
                value: s.st_value,
                size: s.st_size,
                bind: sym::st_bind(s.st_info),
                shndx: s.st_shndx,
                source,
                synthetic: None,
            });
        }
    }
    (funcs, starts)
}

pub(super) fn module_functions(
    path: &Path,
    bytes: &[u8],
    maps: &[&ExecMap],
    index: usize,
    debug_dirs: &[PathBuf],
) -> Result<(Module, Vec<Function>)> {
    let elf = match Elf::parse(bytes) {
        Ok(e) => e,
        Err(e) => return Err(BadInput(format!("not an ELF file: {e}")).into()),
    };
    if elf.header.e_machine != goblin::elf::header::EM_X86_64 || !elf.is_64 {
        return Err(BadInput(format!(
            "not an x86-64 ELF file (e_machine {})",
            elf.header.e_machine
        ))
        .into());
    }
    let build_id = read_build_id(&elf, bytes);
    let go = elf.section_headers.iter().any(|sh| {
        matches!(
            elf.shdr_strtab.get_at(sh.sh_name),
            Some(".go.buildinfo" | ".gopclntab")
        )
    });

    let (mut raw, mut starts) = function_syms(&elf, Source::Symtab);
    if elf.syms.is_empty()
        && let Some(dbg) = find_debug_file(path, &elf, bytes, debug_dirs)
        && let Ok(dbytes) = std::fs::read(&dbg)
        && let Ok(delf) = Elf::parse(&dbytes)
        && !delf.syms.is_empty()
    {
        let (draw, dstarts) = function_syms(&delf, Source::Debug);
        if !draw.is_empty() {
            raw = draw;
            starts = dstarts;
        }
    }
    let fdes = crate::ehframe::fdes(&elf, bytes)
        .map_err(|e| BadInput(format!("cannot read its call-frame information: {e}")))?;
    let parts: std::collections::HashSet<u64> =
        fdes.iter().filter(|f| f.part).map(|f| f.start).collect();
    let unnamed = unnamed_functions(&elf, bytes, &raw, &fdes)?;
    for u in &unnamed {
        starts.push((u.value, u.shndx));
    }
    raw.extend(unnamed);
    let stripped = raw.is_empty();

    // Section ends bound the padding of a section's last function.
    let section_end = |shndx: usize| -> u64 {
        elf.section_headers
            .get(shndx)
            .map(|s| s.sh_addr + s.sh_size)
            .unwrap_or(0)
    };
    starts.sort_unstable();
    starts.dedup();

    // Group aliases: one hook per address; the preferred name is global before weak before
    // local, then the shortest, then the first in alphabetical order.
    let mut by_addr: BTreeMap<u64, Vec<RawSym>> = BTreeMap::new();
    for s in raw {
        by_addr.entry(s.value).or_default().push(s);
    }
    let loads: Vec<_> = elf
        .program_headers
        .iter()
        .filter(|p| p.p_type == PT_LOAD)
        .collect();

    let mut funcs = Vec::new();
    // Link-time end of each function's padding, for the branch scan.
    let mut next_vaddrs = Vec::new();
    for (vaddr, mut group) in by_addr {
        group.sort_by(|a, b| {
            let rank = |s: &RawSym| match s.bind {
                sym::STB_GLOBAL => 0,
                sym::STB_WEAK => 1,
                _ => 2,
            };
            (a.source.rank(), rank(a), a.name.len(), &a.name).cmp(&(
                b.source.rank(),
                rank(b),
                b.name.len(),
                &b.name,
            ))
        });
        let Some(ph) = loads
            .iter()
            .find(|p| vaddr >= p.p_vaddr && vaddr < p.p_vaddr + p.p_filesz)
        else {
            continue;
        };
        let file_off = vaddr - ph.p_vaddr + ph.p_offset;
        let Some(map) = maps
            .iter()
            .find(|m| file_off >= m.offset && file_off < m.offset + (m.end - m.start))
        else {
            continue; // not mapped executable in the target
        };
        let runtime = map.start + (file_off - map.offset);
        let primary = &group[0];
        let size = group.iter().map(|s| s.size).max().unwrap_or(primary.size);
        // Sections do not overlap, so the next symbol of this section is the first start
        // above `vaddr` unless the section ends first.
        let i = starts.partition_point(|&(a, _)| a <= vaddr);
        let end = section_end(primary.shndx);
        let next_vaddr = starts
            .get(i)
            .map_or(end, |&(a, _)| a.min(end))
            .max(vaddr + size);
        // Never let padding run past the end of the mapping.
        let next_start = (runtime + (next_vaddr - vaddr)).min(map.end);
        let mut aliases: Vec<String> = group[1..].iter().map(|s| s.name.clone()).collect();
        aliases.dedup();
        let name = match primary.synthetic {
            Some(Synthetic { part }) => synthetic_name(file_off, part),
            None => primary.name.clone(),
        };
        funcs.push(Function {
            demangled: demangle(&name),
            name,
            source: primary.source,
            part: parts.contains(&vaddr),
            red_zone: false,
            aliases,
            addr: runtime,
            size,
            offset: file_off,
            vaddr,
            next_start,
            module: index,
            entered: None,
        });
        next_vaddrs.push(vaddr + (next_start - runtime));
    }
    find_inbound(path, &elf, bytes, &starts, &mut funcs, &next_vaddrs);
    if funcs.iter().any(|f| f.part) {
        let code = crate::inbound::code_ranges(&elf, bytes);
        let spans: Vec<(u64, u64)> = funcs.iter().map(|f| (f.vaddr, f.size)).collect();
        let parts: Vec<bool> = funcs.iter().map(|f| f.part).collect();
        for (f, risky) in funcs
            .iter_mut()
            .zip(crate::inbound::red_zone_parts(&code, &spans, &parts))
        {
            f.red_zone = risky;
        }
    }
    if funcs.is_empty() && index == 0 && maps.is_empty() {
        bail!("no executable mapping of the main executable");
    }
    Ok((
        Module {
            path: path.to_path_buf(),
            build_id,
            alias: None,
            stripped,
            go,
        },
        funcs,
    ))
}

/// The functions of `elf` that none of the symbols `named` gives: Go functions from
/// `.gopclntab`, then `.eh_frame` regions, merged as the module documentation says (one
/// function per address, the best source first; nothing that starts strictly inside a
/// better-sourced function; nothing in the PLT; only code in executable sections).
pub(super) fn unnamed_functions(
    elf: &Elf,
    bytes: &[u8],
    named: &[RawSym],
    fdes: &[crate::ehframe::Fde],
) -> Result<Vec<RawSym>> {
    // Executable sections: (start, end, index, is a PLT).
    let mut exec: Vec<(u64, u64, usize, bool)> = elf
        .section_headers
        .iter()
        .enumerate()
        .filter(|(_, s)| {
            s.sh_flags & u64::from(goblin::elf::section_header::SHF_EXECINSTR) != 0
                && s.sh_flags & u64::from(goblin::elf::section_header::SHF_ALLOC) != 0
                && s.sh_size > 0
        })
        .map(|(i, s)| {
            let name = elf.shdr_strtab.get_at(s.sh_name).unwrap_or("");
            let plt = matches!(name, ".plt" | ".plt.got" | ".plt.sec" | ".iplt");
            (s.sh_addr, s.sh_addr + s.sh_size, i, plt)
        })
        .collect();
    exec.sort_unstable();
    // A file without section headers: its executable segments, index 0 (no section end).
    let no_sections = exec.is_empty();
    if no_sections {
        exec = elf
            .program_headers
            .iter()
            .filter(|p| p.p_type == PT_LOAD && p.p_flags & goblin::elf::program_header::PF_X != 0)
            .map(|p| (p.p_vaddr, p.p_vaddr + p.p_memsz, 0, false))
            .collect();
        exec.sort_unstable();
    }
    let section_of = |addr: u64| -> Option<(usize, bool)> {
        let i = exec.partition_point(|e| e.0 <= addr);
        let e = exec.get(i.checked_sub(1)?)?;
        (addr < e.1).then_some((e.2, e.3))
    };

    let mut known = Ranges::new(named.iter().map(|s| (s.value, s.size)));
    let mut out = Vec::new();
    let add = |known: &Ranges, start: u64, len: u64, source, name: String, part| {
        if len == 0 || known.has_start(start) || known.inside(start) {
            return None;
        }
        let (shndx, plt) = section_of(start)?;
        if plt {
            return None;
        }
        Some(RawSym {
            name,
            value: start,
            size: len,
            bind: sym::STB_LOCAL,
            shndx,
            source,
            synthetic: (source == Source::EhFrame).then_some(Synthetic { part }),
        })
    };

    let go = crate::pclntab::functions(elf, bytes)
        .map_err(|e| BadInput(format!("cannot read its Go function table: {e}")))?;
    let mut found = Vec::new();
    for g in go {
        if let Some(r) = add(&known, g.start, g.len, Source::Pclntab, g.name, false) {
            found.push(r);
        }
    }
    if !found.is_empty() {
        known = Ranges::new(named.iter().chain(&found).map(|s| (s.value, s.size)));
    }
    out.extend(found);
    let mut seen = std::collections::HashSet::new();
    for f in fdes {
        if !seen.insert(f.start) {
            continue;
        }
        if let Some(r) = add(
            &known,
            f.start,
            f.len,
            Source::EhFrame,
            String::new(),
            f.part,
        ) {
            out.push(r);
        }
    }
    Ok(out)
}

/// Address ranges of known functions, to tell whether an address starts one or lies
/// strictly inside one.
pub(super) struct Ranges {
    /// (start, the highest end of any range starting at or before it), by start.
    starts: Vec<(u64, u64)>,
}

impl Ranges {
    fn new(ranges: impl Iterator<Item = (u64, u64)>) -> Self {
        let mut v: Vec<(u64, u64)> = ranges.map(|(s, len)| (s, s + len)).collect();
        v.sort_unstable();
        let mut max = 0;
        for r in &mut v {
            max = max.max(r.1);
            r.1 = max;
        }
        Ranges { starts: v }
    }

    fn has_start(&self, addr: u64) -> bool {
        self.starts.binary_search_by_key(&addr, |r| r.0).is_ok()
    }

    fn inside(&self, addr: u64) -> bool {
        let i = self.starts.partition_point(|r| r.0 <= addr);
        i > 0 && self.starts[i - 1].1 > addr
    }
}

/// Scans the module's code for branches from outside a function into its first bytes and
/// records the first one in [`Function::entered`]. `funcs` are sorted by address, with
/// `next_vaddrs[i]` the link-time end of `funcs[i]`'s padding.
pub(super) fn find_inbound(
    path: &Path,
    elf: &Elf,
    bytes: &[u8],
    starts: &[(u64, usize)],
    funcs: &mut [Function],
    next_vaddrs: &[u64],
) {
    let code = crate::inbound::code_ranges(elf, bytes);
    let resync: Vec<u64> = starts.iter().map(|s| s.0).collect();
    let scan_funcs: Vec<crate::inbound::Func> = funcs
        .iter()
        .zip(next_vaddrs)
        .map(|(f, &next)| crate::inbound::Func {
            start: f.vaddr,
            // The planner sweeps a function's own branches over its first MiB only: past
            // that, they count as coming from elsewhere.
            size: f.size.min(1 << 20),
            next,
        })
        .collect();
    let found = crate::inbound::scan(&code, &resync, &scan_funcs);
    let loads: Vec<_> = elf
        .program_headers
        .iter()
        .filter(|p| p.p_type == PT_LOAD)
        .collect();
    for i in 0..funcs.len() {
        let Some(hit) = found[i] else { continue };
        let from = source_name(funcs, hit.from).unwrap_or_else(|| {
            // Not in any function: name it by its file offset in the module.
            let off = loads
                .iter()
                .find(|p| hit.from >= p.p_vaddr && hit.from < p.p_vaddr + p.p_filesz)
                .map_or(hit.from, |p| hit.from - p.p_vaddr + p.p_offset);
            format!("{}+{off:#x}", file_name(path))
        });
        funcs[i].entered = Some(Entered { at: hit.at, from });
    }
}

/// `name` or `name+0x12` of the innermost function of `funcs` (sorted by address) that
/// holds the link-time address `addr`.
pub(super) fn source_name(funcs: &[Function], addr: u64) -> Option<String> {
    let i = funcs.partition_point(|f| f.vaddr <= addr);
    // Nested symbols: the closest start that still holds `addr` is the innermost one.
    let f = funcs[..i]
        .iter()
        .rev()
        .take(64)
        .find(|f| addr < f.vaddr + f.size)?;
    let name = f.demangled.as_deref().unwrap_or(&f.name);
    Some(match addr - f.vaddr {
        0 => name.to_string(),
        d => format!("{name}+{d:#x}"),
    })
}
