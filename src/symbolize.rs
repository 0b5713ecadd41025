//! `xcover symbolize`: real names, source files and lines for a report taken without
//! symbols, from a separate debug file of the same build.
//!
//! A stripped executable's functions are reported as `func_<offset>` (found in `.eh_frame`)
//! or under their exported names (`.dynsym`). Given the debug file of that build — by path,
//! or found by build-id (`<dir>/.build-id/xx/yyyy.debug`) in a debug directory — each
//! function of the main executable is looked up by its link-time address (the report's
//! `vaddr`, or its `offset` through the executable's program headers when the report has no
//! `vaddr` and the executable at `exe_path` is still that build) and gets the debug file's
//! name for it, its demangled form, file and line, and `source: "debug"`. A debug file of
//! another build is refused: its addresses mean other functions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use goblin::elf::{Elf, program_header::PT_LOAD, sym};

use crate::BadInput;
use crate::discover::{Source, file_name, read_build_id};
use crate::error::Result;
use crate::report::{LineTable, Report, hex};

/// Where the debug file comes from.
#[derive(Clone, Debug)]
pub enum DebugInfo {
    /// This file (`--debug-file`).
    File(PathBuf),
    /// Found by the report's build-id in these directories, then `/usr/lib/debug`
    /// (`--debug-dir`), or by the `.gnu_debuglink` of the executable at `exe_path`.
    Dirs(Vec<PathBuf>),
}

/// What [`symbolize`] did.
#[derive(Clone, Debug)]
pub struct Symbolized {
    /// The report with the names filled in.
    pub report: Report,
    /// The debug file used.
    pub debug_file: PathBuf,
    /// Functions of the main executable in the report.
    pub functions: usize,
    /// Of those, how many the debug file named.
    pub named: usize,
}

/// Fills in names, files and lines of the main executable's functions of `report` from the
/// debug file `debug` gives, matched by build-id and address.
pub fn symbolize(report: &Report, debug: &DebugInfo) -> Result<Symbolized> {
    if report.build_id.is_empty() {
        return Err(BadInput(format!(
            "the report of {} has no build-id: nothing tells which debug file is of its build",
            report.exe_path
        ))
        .into());
    }
    let exe = Path::new(&report.exe_path);
    let debug_file = match debug {
        DebugInfo::File(f) => f.clone(),
        DebugInfo::Dirs(dirs) => find(report, exe, dirs)?,
    };
    let bytes = std::fs::read(&debug_file)
        .map_err(|e| BadInput(format!("{}: cannot read: {e}", debug_file.display())))?;
    let elf = Elf::parse(&bytes)
        .map_err(|e| BadInput(format!("{}: not an ELF file: {e}", debug_file.display())))?;
    let id = read_build_id(&elf, &bytes).map(|b| hex(&b));
    if id.as_deref() != Some(report.build_id.as_str()) {
        return Err(BadInput(format!(
            "{}: build-id {}, but the report's is {}: a debug file of another build",
            debug_file.display(),
            id.as_deref().unwrap_or("(none)"),
            report.build_id
        ))
        .into());
    }
    let names = function_names(&elf);
    if names.is_empty() {
        return Err(BadInput(format!(
            "{}: no function symbols (not a debug file?)",
            debug_file.display()
        ))
        .into());
    }
    let lines = LineTable::of_file(&debug_file);
    // Offsets to addresses for reports without `vaddr`: the executable's own program
    // headers, when it is still the report's build.
    let loads = exe_loads(exe, &report.build_id);
    let main = file_name(exe);
    let mut out = report.clone();
    let mut functions = 0;
    let mut named = 0;
    for f in &mut out.functions {
        if f.module_file.as_ref().unwrap_or(&f.module) != &main && !f.module.is_empty() {
            continue;
        }
        functions += 1;
        let vaddr = f.vaddr.or_else(|| {
            loads
                .iter()
                .find(|l| f.offset >= l.0 && f.offset < l.0 + l.2)
                .map(|l| f.offset - l.0 + l.1)
        });
        let Some(vaddr) = vaddr else { continue };
        let Some(name) = names.get(&vaddr) else {
            continue;
        };
        f.name = name.clone();
        f.demangled = crate::discover::demangle(name).filter(|d| d != name);
        let loc = lines.locate(vaddr);
        f.file = loc.as_ref().map(|l| l.0.clone());
        f.line = loc.map(|l| l.1);
        f.source = Some(Source::Debug.name().to_string());
        f.vaddr = Some(vaddr);
        named += 1;
    }
    out.finish();
    Ok(Symbolized {
        report: out,
        debug_file,
        functions,
        named,
    })
}

/// The debug file of the report's build in `dirs` (then `/usr/lib/debug`), or by the
/// `.gnu_debuglink` of the executable when it is still that build.
fn find(report: &Report, exe: &Path, dirs: &[PathBuf]) -> Result<PathBuf> {
    let id = unhex(&report.build_id).ok_or_else(|| {
        BadInput(format!(
            "the report's build-id {:?} is not hex",
            report.build_id
        ))
    })?;
    if let Some(p) = crate::discover::debug_file_by_id(&id, dirs) {
        return Ok(p);
    }
    if let Ok(bytes) = std::fs::read(exe)
        && let Ok(elf) = Elf::parse(&bytes)
        && read_build_id(&elf, &bytes).as_deref() == Some(&id[..])
        && let Some(p) = crate::discover::debug_file(exe, dirs)
    {
        return Ok(p);
    }
    let mut looked: Vec<String> = dirs
        .iter()
        .chain(std::iter::once(&PathBuf::from("/usr/lib/debug")))
        .filter_map(|d| crate::discover::build_id_path(d, &id))
        .map(|p| p.display().to_string())
        .collect();
    looked.push(format!("the .gnu_debuglink of {}", exe.display()));
    Err(BadInput(format!(
        "no debug file of build-id {} (looked at {})",
        report.build_id,
        looked.join(", ")
    ))
    .into())
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// (file offset, link-time address, file size) of each `PT_LOAD` of the executable at
/// `exe`, when its build-id is `build_id`.
fn exe_loads(exe: &Path, build_id: &str) -> Vec<(u64, u64, u64)> {
    let Ok(bytes) = std::fs::read(exe) else {
        return vec![];
    };
    let Ok(elf) = Elf::parse(&bytes) else {
        return vec![];
    };
    if read_build_id(&elf, &bytes).map(|b| hex(&b)).as_deref() != Some(build_id) {
        return vec![];
    }
    elf.program_headers
        .iter()
        .filter(|p| p.p_type == PT_LOAD)
        .map(|p| (p.p_offset, p.p_vaddr, p.p_filesz))
        .collect()
}

/// The preferred name of each function address of `elf`'s `.symtab`: global before weak
/// before local, then the shortest, then the first alphabetically (as discovery prefers).
fn function_names(elf: &Elf) -> BTreeMap<u64, String> {
    let mut best: BTreeMap<u64, (u8, String)> = BTreeMap::new();
    for s in elf.syms.iter() {
        let ty = sym::st_type(s.st_info);
        if (ty != sym::STT_FUNC && ty != sym::STT_GNU_IFUNC) || s.st_value == 0 {
            continue;
        }
        let Some(name) = elf.strtab.get_at(s.st_name).filter(|n| !n.is_empty()) else {
            continue;
        };
        let rank = match sym::st_bind(s.st_info) {
            sym::STB_GLOBAL => 0,
            sym::STB_WEAK => 1,
            _ => 2,
        };
        let better = |(r, n): &(u8, String)| (rank, name.len(), name) < (*r, n.len(), n.as_str());
        match best.get(&s.st_value) {
            Some(cur) if !better(cur) => {}
            _ => {
                best.insert(s.st_value, (rank, name.to_string()));
            }
        }
    }
    best.into_iter().map(|(a, (_, n))| (a, n)).collect()
}
