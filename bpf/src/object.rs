//! Loads `clang -target bpf` ELF objects written with libbpf conventions into
//! [`Program`]s.
//!
//! Parsing and relocation are aya-obj's: `SEC("uprobe")` / `SEC("uprobe/...")` programs,
//! BTF-defined maps in `.maps`, `.rodata`/`.data`/`.bss` globals (each an ARRAY map of one
//! value holding the section, with its initial bytes), map relocations and bpf-to-bpf calls
//! (callees appended to the caller, calls made pc-relative). Maps get indices in a
//! deterministic order (by ELF section, then symbol), and every map reference becomes a
//! `lddw` with `src = 1` (`BPF_PSEUDO_MAP_FD`, `imm` = map index) or, for globals,
//! `src = 2` (`BPF_PSEUDO_MAP_VALUE`, `imm` = map index, second `imm` = offset in the value).
//!
//! Malformed input yields an [`ObjectError`], never a panic: the ELF header and section
//! table are checked before aya-obj sees them (it trusts some sizes), and aya-obj itself
//! runs under `catch_unwind` so that a panic in it becomes [`ObjectError::ParserPanicked`]
//! (the fuzz test asserts that this variant never occurs).

use std::collections::HashSet;
use std::panic::{AssertUnwindSafe, catch_unwind};

use aya_obj::{Map, Object, ProgramSection};

use crate::insn::Insn;
use crate::maps::ArenaLayout;
use crate::program::{MapDef, MapType, Program};

/// Why an object could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectError {
    /// Not a 64-bit little-endian eBPF relocatable ELF, or its headers are inconsistent.
    #[error("not a valid eBPF ELF object: {0}")]
    NotBpfElf(&'static str),
    /// aya-obj rejected the object; the message includes its chain of causes.
    #[error("parsing the object: {0}")]
    Parse(String),
    /// Relocating maps or calls failed.
    #[error("relocating: {0}")]
    Relocation(String),
    /// A map of a type this runtime does not implement.
    #[error("map `{name}` has unsupported type {map_type}")]
    UnsupportedMapType {
        /// The map's name.
        name: String,
        /// Its `BPF_MAP_TYPE_*` number.
        map_type: u32,
    },
    /// A map whose definition cannot be laid out.
    #[error("map `{name}`: {reason}")]
    BadMap {
        /// The map's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The object has no supported program.
    #[error("the object has no SEC(\"uprobe\") program")]
    NoProgram,
    /// No program of that name.
    #[error("no program named `{0}` in the object")]
    NoSuchProgram(String),
    /// A program of a kind this runtime cannot run.
    #[error("program `{name}`: unsupported section kind {section}")]
    UnsupportedProgram {
        /// The program's name.
        name: String,
        /// Its section, as aya-obj reports it.
        section: String,
    },
    /// A program whose map references do not resolve.
    #[error("program `{name}`: {reason}")]
    BadProgram {
        /// The program's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// aya-obj panicked on this input (a bug; reported instead of crashing).
    #[error("the ELF parser panicked: {0}")]
    ParserPanicked(String),
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Largest `.bss` (or other SHT_NOBITS) section accepted: aya-obj allocates it.
const MAX_NOBITS: u64 = 64 << 20;

fn rd16(b: &[u8], o: usize) -> u64 {
    u16::from_le_bytes([b[o], b[o + 1]]) as u64
}
fn rd32(b: &[u8], o: usize) -> u64 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes")) as u64
}
fn rd64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// Checks what aya-obj and the `object` crate take on trust.
fn precheck(b: &[u8]) -> Result<(), ObjectError> {
    use ObjectError::NotBpfElf as E;
    if b.len() < 64 || &b[..4] != b"\x7fELF" {
        return Err(E("no ELF header"));
    }
    if b[4] != 2 || b[5] != 1 {
        return Err(E("not 64-bit little-endian"));
    }
    if rd16(b, 16) != 1 {
        return Err(E("not a relocatable object"));
    }
    if rd16(b, 18) != 247 {
        return Err(E("machine is not EM_BPF"));
    }
    let shoff = rd64(b, 40);
    let shentsize = rd16(b, 58);
    let shnum = rd16(b, 60);
    if shnum == 0 || shentsize != 64 {
        return Err(E("bad section header table"));
    }
    let end = shnum
        .checked_mul(64)
        .and_then(|n| n.checked_add(shoff))
        .ok_or(E("section header table out of the file"))?;
    if end > b.len() as u64 {
        return Err(E("section header table out of the file"));
    }
    for i in 0..shnum {
        let h = (shoff + 64 * i) as usize;
        let sh_type = rd32(b, h + 4);
        let off = rd64(b, h + 24);
        let size = rd64(b, h + 32);
        if sh_type == 8 {
            if size > MAX_NOBITS {
                return Err(E("SHT_NOBITS section too large"));
            }
        } else if sh_type != 0 && off.checked_add(size).is_none_or(|e| e > b.len() as u64) {
            return Err(E("section data out of the file"));
        }
    }
    check_symbols_and_relocs(b, shoff, shnum)?;
    let strings = match section_by_name(b, shoff, shnum, ".BTF") {
        Some(btf) => check_btf(btf)?,
        None => &[][..],
    };
    if let Some(ext) = section_by_name(b, shoff, shnum, ".BTF.ext") {
        check_btf_ext(ext, strings)?;
    }
    Ok(())
}

/// Symbols must lie inside their sections and relocations inside the code they patch
/// (aya-obj slices and indexes with these values unchecked).
fn check_symbols_and_relocs(b: &[u8], shoff: u64, shnum: u64) -> Result<(), ObjectError> {
    use ObjectError::NotBpfElf as E;
    let sec = |i: u64| {
        let h = (shoff + 64 * i) as usize;
        (
            rd32(b, h + 4),
            rd64(b, h + 8),
            rd64(b, h + 24),
            rd64(b, h + 32),
            rd32(b, h + 44),
        )
    };
    let mut nsyms = 0;
    let mut symtab = 0;
    let mut sym_sec = 0;
    for i in 0..shnum {
        if rd64(b, (shoff + 64 * i) as usize + 16) != 0 {
            return Err(E("section with a load address in a relocatable object"));
        }
    }
    for i in 0..shnum {
        let (ty, _, off, size, _) = sec(i);
        if ty != 2 {
            continue;
        }
        if size % 24 != 0 {
            return Err(E("bad symbol table size"));
        }
        nsyms = size / 24;
        symtab = off;
        sym_sec = i;
        for s in 0..nsyms {
            let e = (off + 24 * s) as usize;
            let shndx = rd16(b, e + 6);
            let (value, sz) = (rd64(b, e + 8), rd64(b, e + 16));
            if shndx == 0 || shndx >= 0xff00 {
                continue;
            }
            if shndx >= shnum {
                return Err(E("symbol in a section that does not exist"));
            }
            let (_, _, _, ssize, _) = sec(shndx);
            if value.checked_add(sz).is_none_or(|end| end > ssize) {
                return Err(E("symbol out of its section"));
            }
        }
    }
    // Map symbols are matched by name: two in `.maps` with one name confuse aya-obj.
    let maps_idx = section_index_by_name(b, shoff, shnum, ".maps");
    if let Some(maps_idx) = maps_idx {
        let link = rd32(b, (shoff + 64 * sym_sec) as usize + 40);
        let (_, _, str_off, str_size, _) = sec(link.min(shnum - 1));
        let names = b
            .get(str_off as usize..(str_off + str_size) as usize)
            .unwrap_or(&[]);
        let mut seen = std::collections::HashSet::new();
        for s in 0..nsyms {
            let e = (symtab + 24 * s) as usize;
            if rd16(b, e + 6) != maps_idx {
                continue;
            }
            let n = names.get(rd32(b, e) as usize..).unwrap_or(&[]);
            let n = &n[..n.iter().position(|&c| c == 0).unwrap_or(n.len())];
            if !seen.insert(n) {
                return Err(E("two map symbols with one name"));
            }
        }
    }
    for i in 0..shnum {
        let (ty, _, off, size, info) = sec(i);
        if ty != 9 {
            continue;
        }
        if size % 16 != 0 || info >= shnum {
            return Err(E("bad relocation section"));
        }
        let (_, flags, _, target_size, _) = sec(info);
        let code = flags & 4 != 0; // SHF_EXECINSTR
        for r in 0..size / 16 {
            let e = (off + 16 * r) as usize;
            let (r_off, r_info) = (rd64(b, e), rd64(b, e + 8));
            if (r_info >> 32) >= nsyms.max(1) {
                return Err(E("relocation names a symbol that does not exist"));
            }
            if code {
                // R_BPF_64_64 (lddw) and R_BPF_64_32 (call) are all clang emits in code.
                let need = match r_info as u32 {
                    1 => 16,
                    10 => 8,
                    _ => return Err(E("unsupported relocation type in code")),
                };
                if r_off % 8 != 0 || r_off.checked_add(need).is_none_or(|end| end > target_size) {
                    return Err(E("relocation out of its code section"));
                }
                // The patched instruction's imm is an offset from the symbol: it must stay
                // inside the symbol's section (aya-obj adds it unchecked).
                let (_, _, target_off, _, _) = sec(info);
                let imm = rd32(b, (target_off + r_off + 4) as usize) as i32 as i64;
                let sym = (symtab + 24 * (r_info >> 32)) as usize;
                let (shndx, value) = (rd16(b, sym + 6), rd64(b, sym + 8));
                let rel = if need == 8 { (imm + 1) * 8 } else { imm };
                let sym_type = b[sym + 4] & 0xf;
                if Some(shndx) == maps_idx && (sym_type != 1 || imm != 0) {
                    return Err(E("relocation into .maps that is not a map symbol"));
                }
                // A call to a local function, or any reference into code, goes through a
                // function (STT_FUNC) or section (STT_SECTION) symbol; aya-obj has no error
                // path for other kinds and would panic.
                let patched = (target_off + r_off) as usize;
                let pseudo_call = b[patched] == 0x85 && b[patched + 1] >> 4 == 1;
                let into_code = shndx != 0 && shndx < shnum && sec(shndx).1 & 4 != 0; // SHF_EXECINSTR
                if (pseudo_call || into_code) && !matches!(sym_type, 2 | 3) {
                    return Err(E(
                        "call or code reference through a symbol that is not a function",
                    ));
                }
                if shndx != 0 && shndx < 0xff00 {
                    let (_, _, _, sym_sec_size, _) = sec(shndx);
                    if rel < 0
                        || value
                            .checked_add(rel as u64)
                            .is_none_or(|a| a > sym_sec_size)
                    {
                        return Err(E("relocated instruction points out of the target section"));
                    }
                }
            }
        }
    }
    Ok(())
}

/// The index of the section called `name`.
fn section_index_by_name(b: &[u8], shoff: u64, shnum: u64, name: &str) -> Option<u64> {
    let shstrndx = rd16(b, 62);
    if shstrndx >= shnum {
        return None;
    }
    let strtab = (shoff + 64 * shstrndx) as usize;
    let (str_off, str_size) = (rd64(b, strtab + 24) as usize, rd64(b, strtab + 32) as usize);
    let names = b.get(str_off..str_off.checked_add(str_size)?)?;
    (0..shnum).find(|&i| {
        let h = (shoff + 64 * i) as usize;
        let Some(n) = names.get(rd32(b, h) as usize..) else {
            return false;
        };
        n.split(|&c| c == 0).next() == Some(name.as_bytes())
    })
}

/// The data of the section called `name` (headers already bounds-checked).
fn section_by_name<'a>(b: &'a [u8], shoff: u64, shnum: u64, name: &str) -> Option<&'a [u8]> {
    let h = (shoff + 64 * section_index_by_name(b, shoff, shnum, name)?) as usize;
    if rd32(b, h + 4) == 8 {
        return None;
    }
    let (off, size) = (rd64(b, h + 24) as usize, rd64(b, h + 32) as usize);
    b.get(off..off.checked_add(size)?)
}

/// Checks the `.BTF` header's sub-sections lie in the section; returns the string table.
fn check_btf(btf: &[u8]) -> Result<&[u8], ObjectError> {
    use ObjectError::NotBpfElf as E;
    if btf.len() < 24 || rd16(btf, 0) != 0xeb9f {
        return Err(E("bad .BTF header"));
    }
    let hdr_len = rd32(btf, 4);
    let (type_off, type_len) = (rd32(btf, 8), rd32(btf, 12));
    let (str_off, str_len) = (rd32(btf, 16), rd32(btf, 20));
    let fits = |o: u64, l: u64| hdr_len + o + l <= btf.len() as u64;
    if hdr_len < 24 || !fits(type_off, type_len) || !fits(str_off, str_len) {
        return Err(E(".BTF sub-section out of the section"));
    }
    let s = (hdr_len + str_off) as usize;
    let strings = &btf[s..s + str_len as usize];
    let t = (hdr_len + type_off) as usize;
    check_btf_names(&btf[t..t + type_len as usize], str_len)?;
    Ok(strings)
}

/// Every name offset in the BTF types must be inside the string table (aya-obj slices its
/// strings with offsets checked against a larger bound).
fn check_btf_names(mut types: &[u8], str_len: u64) -> Result<(), ObjectError> {
    use ObjectError::NotBpfElf as E;
    let name_ok = |off: u64| off < str_len.max(1);
    while !types.is_empty() {
        if types.len() < 12 {
            return Err(E("truncated BTF type"));
        }
        let info = rd32(types, 4);
        let (kind, vlen) = ((info >> 24) & 0x1f, info & 0xffff);
        if !name_ok(rd32(types, 0)) {
            return Err(E("BTF name out of the string table"));
        }
        // (bytes after the 12-byte common part, stride of named members, or 0)
        let (extra, named_stride) = match kind {
            1 => (4, 0),
            2 | 7..=12 | 16 | 18 => (0, 0),
            3 => (12, 0),
            4 | 5 => (12 * vlen, 12),
            6 => (8 * vlen, 8),
            13 => (8 * vlen, 8),
            14 | 17 => (4, 0),
            15 => (12 * vlen, 0),
            19 => (12 * vlen, 12),
            _ => return Err(E("unknown BTF kind")),
        };
        let len = 12 + extra as usize;
        if types.len() < len {
            return Err(E("truncated BTF type"));
        }
        if named_stride != 0 {
            for m in 0..vlen as usize {
                if !name_ok(rd32(types, 12 + m * named_stride)) {
                    return Err(E("BTF member name out of the string table"));
                }
            }
        }
        types = &types[len..];
    }
    Ok(())
}

/// Walks `.BTF.ext`'s func_info / line_info / CO-RE record blocks: aya-obj indexes them
/// without bounds checks.
fn check_btf_ext(ext: &[u8], strings: &[u8]) -> Result<(), ObjectError> {
    use ObjectError::NotBpfElf as E;
    if ext.len() < 24 || rd16(ext, 0) != 0xeb9f {
        return Err(E("bad .BTF.ext header"));
    }
    let hdr_len = rd32(ext, 4) as usize;
    if hdr_len < 24 || hdr_len > ext.len() {
        return Err(E("bad .BTF.ext header length"));
    }
    let mut blocks = vec![
        (rd32(ext, 8), rd32(ext, 12)),
        (rd32(ext, 16), rd32(ext, 20)),
    ];
    if hdr_len >= 32 {
        blocks.push((rd32(ext, 24), rd32(ext, 28)));
    }
    for (off, len) in blocks {
        if len == 0 {
            continue;
        }
        let start = hdr_len as u64 + off;
        let end = start + len;
        if end > ext.len() as u64 || len < 4 {
            return Err(E(".BTF.ext block out of the section"));
        }
        let blk = &ext[start as usize..end as usize];
        let rec = rd32(blk, 0);
        if rec == 0 || rec > 1024 {
            return Err(E("bad .BTF.ext record size"));
        }
        let mut p = 4u64;
        while p + 8 <= blk.len() as u64 {
            let name = rd32(blk, p as usize) as usize;
            if !strings.get(name..).is_some_and(|t| t.contains(&0)) {
                return Err(E(".BTF.ext names a string that does not exist"));
            }
            let n = rd32(blk, p as usize + 4);
            p += 8 + rec * n;
        }
        if p != blk.len() as u64 {
            return Err(E(".BTF.ext records overrun their block"));
        }
    }
    Ok(())
}

fn map_def(name: &str, m: &Map) -> Result<MapDef, ObjectError> {
    let map_type =
        MapType::from_u32(m.map_type()).ok_or_else(|| ObjectError::UnsupportedMapType {
            name: name.to_string(),
            map_type: m.map_type(),
        })?;
    let def = MapDef {
        name: name.to_string(),
        map_type,
        key_size: m.key_size(),
        value_size: m.value_size(),
        max_entries: m.max_entries(),
        flags: m.map_flags(),
        initial_data: if m.data().iter().any(|&b| b != 0) {
            m.data().to_vec()
        } else {
            Vec::new()
        },
    };
    ArenaLayout::new(core::slice::from_ref(&def), 1).map_err(|e| ObjectError::BadMap {
        name: name.to_string(),
        // The layout's own error names the map too: keep its reason only.
        reason: match e {
            crate::maps::MapError::BadDef { reason, .. } => reason.to_string(),
            e => e.to_string(),
        },
    })?;
    Ok(def)
}

fn to_insns(f: &aya_obj::Function) -> Vec<Insn> {
    f.instructions
        .iter()
        .map(|i| Insn {
            op: i.code,
            dst: i.dst_reg(),
            src: i.src_reg(),
            off: i.off,
            imm: i.imm,
        })
        .collect()
}

/// Checks that every map reference points at a map and every `lddw` is complete.
fn check_refs(name: &str, insns: &[Insn], nmaps: usize) -> Result<(), ObjectError> {
    let bad = |reason: String| ObjectError::BadProgram {
        name: name.to_string(),
        reason,
    };
    let mut pc = 0;
    while pc < insns.len() {
        let i = insns[pc];
        if i.op == 0x18 {
            if pc + 1 >= insns.len() {
                return Err(bad(format!("lddw at {pc} has no second half")));
            }
            match i.src {
                // clang only emits `lddw` for constants that need 64 bits or for
                // relocations; a zero left in both halves is a relocation that did not apply.
                0 if i.imm == 0 && insns[pc + 1].imm == 0 => {
                    return Err(bad(format!("lddw at {pc} is an unresolved relocation")));
                }
                0 => {}
                1 | 2 if (i.imm as u32 as usize) < nmaps => {}
                1 | 2 => return Err(bad(format!("lddw at {pc} names map {}", i.imm))),
                s => return Err(bad(format!("lddw at {pc} has unsupported src {s}"))),
            }
            pc += 2;
        } else {
            pc += 1;
        }
    }
    Ok(())
}

/// Loads every uprobe program of the object, sorted by name. Each [`Program`] carries all
/// the object's maps, with the same indices.
pub fn load(bytes: &[u8]) -> Result<Vec<Program>, ObjectError> {
    precheck(bytes)?;
    match catch_unwind(AssertUnwindSafe(|| load_unchecked(bytes))) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(ObjectError::ParserPanicked(msg))
        }
    }
}

/// Loads one program: the one called `name`, or when `name` is `None` the object's only
/// uprobe program (the first by name if there are several).
pub fn load_program(bytes: &[u8], name: Option<&str>) -> Result<Program, ObjectError> {
    let progs = load(bytes)?;
    match name {
        Some(n) => progs
            .into_iter()
            .find(|p| p.name == n)
            .ok_or_else(|| ObjectError::NoSuchProgram(n.to_string())),
        None => progs.into_iter().next().ok_or(ObjectError::NoProgram),
    }
}

fn load_unchecked(bytes: &[u8]) -> Result<Vec<Program>, ObjectError> {
    let mut obj = Object::parse(bytes).map_err(|e| ObjectError::Parse(chain(&e)))?;

    let mut maps: Vec<(String, Map)> = obj
        .maps
        .iter()
        .map(|(n, m)| (n.clone(), m.clone()))
        .collect();
    maps.sort_by(|(an, a), (bn, b)| {
        (a.section_index(), a.symbol_index(), an).cmp(&(b.section_index(), b.symbol_index(), bn))
    });
    if maps.len() > i32::MAX as usize {
        return Err(ObjectError::Parse("too many maps".into()));
    }
    let defs = maps
        .iter()
        .map(|(n, m)| map_def(n, m))
        .collect::<Result<Vec<_>, _>>()?;

    let text_sections: HashSet<usize> = obj.functions.keys().map(|(s, _)| *s).collect();
    obj.relocate_maps(
        maps.iter()
            .enumerate()
            .map(|(i, (n, m))| (n.as_str(), i as i32, m)),
        &text_sections,
    )
    .map_err(|e| ObjectError::Relocation(chain(&e)))?;
    obj.relocate_calls(&text_sections)
        .map_err(|e| ObjectError::Relocation(chain(&e)))?;

    let mut progs = Vec::new();
    let mut names: Vec<&String> = obj.programs.keys().collect();
    names.sort();
    for name in names {
        let p = &obj.programs[name];
        if !matches!(p.section, ProgramSection::UProbe { .. }) {
            return Err(ObjectError::UnsupportedProgram {
                name: name.clone(),
                section: format!("{:?}", p.section),
            });
        }
        let f = obj
            .functions
            .get(&p.function_key())
            .ok_or_else(|| ObjectError::BadProgram {
                name: name.clone(),
                reason: "its function is missing".into(),
            })?;
        let insns = to_insns(f);
        if insns.is_empty() {
            return Err(ObjectError::BadProgram {
                name: name.clone(),
                reason: "no instructions".into(),
            });
        }
        check_refs(name, &insns, defs.len())?;
        progs.push(Program {
            name: name.clone(),
            insns,
            maps: defs.clone(),
        });
    }
    if progs.is_empty() {
        return Err(ObjectError::NoProgram);
    }
    Ok(progs)
}
