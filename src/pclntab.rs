//! Functions of a Go binary from its `.gopclntab`, with their real names, stripped or not.
//!
//! The Go runtime needs its function table at run time (tracebacks, the garbage collector's
//! stack maps), so `go build -ldflags=-s` strips `.symtab` but keeps `.gopclntab`. Its
//! layout since Go 1.18, as `runtime/symtab.go` documents it: a header (magic `0xfffffff0`
//! for Go 1.18 and 1.19, `0xfffffff1` for 1.20 and later; two pad bytes; the minimum
//! instruction size; the pointer size; then pointer-sized fields: the number of functions,
//! the number of files, the text start, and the offsets from the header of the function
//! name table, the compilation-unit table, the file table, the pc tables and the function
//! table). The function table holds `nfunc + 1` pairs of 32-bit words (entry offset from the
//! text start, offset of the function's record from the function table); the last entry
//! offset is the end of the text. A function's record starts with its entry offset and the
//! offset of its NUL-terminated name in the name table.

use goblin::elf::Elf;

/// One Go function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoFunc {
    /// Its name as Go spells it (`main.main`, `runtime.mallocgc`, `fmt.(*pp).doPrintf`).
    pub name: String,
    /// Link-time address of its entry.
    pub start: u64,
    /// Bytes up to the next function's entry (or the end of the text).
    pub len: u64,
}

/// Why `.gopclntab` could not be read.
#[derive(Debug, thiserror::Error)]
#[error(".gopclntab at file offset {offset:#x}: {reason}")]
pub struct PclntabError {
    /// File offset of the field at fault.
    pub offset: u64,
    /// What is wrong.
    pub reason: String,
}

const MAGIC_118: u32 = 0xffff_fff0;
const MAGIC_120: u32 = 0xffff_fff1;

/// Every function of `.gopclntab`, by entry; none when the file has no such section.
pub fn functions(elf: &Elf, bytes: &[u8]) -> Result<Vec<GoFunc>, PclntabError> {
    let Some(sh) = elf
        .section_headers
        .iter()
        .find(|s| elf.shdr_strtab.get_at(s.sh_name) == Some(".gopclntab"))
    else {
        return Ok(vec![]);
    };
    let base = sh.sh_offset;
    let tab = usize::try_from(sh.sh_offset)
        .ok()
        .and_then(|s| bytes.get(s..s.checked_add(usize::try_from(sh.sh_size).ok()?)?))
        .ok_or(PclntabError {
            offset: base,
            reason: "section outside the file".into(),
        })?;
    let err = |at: usize, reason: String| PclntabError {
        offset: base + at as u64,
        reason,
    };
    let u32_at = |at: usize| -> Result<u32, PclntabError> {
        tab.get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
            .ok_or_else(|| err(at, "truncated".into()))
    };
    let magic = u32_at(0)?;
    if magic != MAGIC_118 && magic != MAGIC_120 {
        return Err(err(
            0,
            format!("magic {magic:#x}: not the table of Go 1.18 or later"),
        ));
    }
    let ptr = usize::from(*tab.get(7).ok_or_else(|| err(7, "truncated".into()))?);
    if ptr != 8 {
        return Err(err(7, format!("pointer size {ptr}, not 8")));
    }
    let word = |i: usize| -> Result<u64, PclntabError> {
        let at = 8 + i * ptr;
        tab.get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
            .ok_or_else(|| err(at, "truncated header".into()))
    };
    let nfunc = usize::try_from(word(0)?).map_err(|_| err(8, "function count".into()))?;
    let mut text_start = word(2)?;
    if text_start == 0 {
        // Relocated at load time in a position-independent binary: it is the start of .text.
        text_start = elf
            .section_headers
            .iter()
            .find(|s| elf.shdr_strtab.get_at(s.sh_name) == Some(".text"))
            .map_or(0, |s| s.sh_addr);
    }
    let names = usize::try_from(word(3)?).map_err(|_| err(8 + 3 * ptr, "offset".into()))?;
    let functab = usize::try_from(word(7)?).map_err(|_| err(8 + 7 * ptr, "offset".into()))?;
    if nfunc > tab.len() / 8 {
        return Err(err(
            8,
            format!("{nfunc} functions in a {} byte table", tab.len()),
        ));
    }
    let mut out = Vec::with_capacity(nfunc);
    for i in 0..nfunc {
        let at = functab + i * 8;
        let entry = u64::from(u32_at(at)?);
        let record = functab + u32_at(at + 4)? as usize;
        let next = u64::from(u32_at(at + 8)?);
        if u64::from(u32_at(record)?) != entry {
            return Err(err(
                record,
                format!("function {i}: its record's entry {entry:#x} disagrees"),
            ));
        }
        let name_off = u32_at(record + 4)? as usize;
        let name_at = names + name_off;
        let name = tab
            .get(name_at..)
            .and_then(|s| s.split(|&b| b == 0).next())
            .ok_or_else(|| err(name_at, format!("function {i}: name outside the table")))?;
        if next < entry {
            return Err(err(at, format!("function {i}: entries out of order")));
        }
        out.push(GoFunc {
            name: String::from_utf8_lossy(name).into_owned(),
            start: text_start + entry,
            len: next - entry,
        });
    }
    Ok(out)
}
