//! Separate debug files: a file's build-id, and where its debug file is (by build-id under
//! each `--debug-dir` and `/usr/lib/debug`, or by `.gnu_debuglink`).

use std::path::{Path, PathBuf};

use goblin::elf::Elf;

/// The build-id of an ELF file, from its `.note.gnu.build-id`.
pub fn read_build_id(elf: &Elf, bytes: &[u8]) -> Option<Vec<u8>> {
    let notes = elf.iter_note_sections(bytes, Some(".note.gnu.build-id"))?;
    for note in notes.flatten() {
        if note.n_type == goblin::elf::note::NT_GNU_BUILD_ID {
            return Some(note.desc.to_vec());
        }
    }
    None
}

/// The separate debug file of the ELF file at `path`, when it has no DWARF of its own:
/// looked for in each of `dirs`, then in `/usr/lib/debug`.
pub fn debug_file(path: &Path, dirs: &[PathBuf]) -> Option<PathBuf> {
    let bytes = std::fs::read(path).ok()?;
    let elf = Elf::parse(&bytes).ok()?;
    let has_dwarf = elf
        .section_headers
        .iter()
        .any(|s| elf.shdr_strtab.get_at(s.sh_name) == Some(".debug_info"));
    if has_dwarf {
        return None;
    }
    find_debug_file(path, &elf, &bytes, dirs)
}

/// The debug directories searched, in order: `dirs`, then `/usr/lib/debug`.
fn debug_roots(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut roots = dirs.to_vec();
    roots.push(PathBuf::from("/usr/lib/debug"));
    roots
}

/// Where a debug file of build-id `id` is in the debug directory `root`:
/// `<root>/.build-id/xx/yyyy.debug`.
pub fn build_id_path(root: &Path, id: &[u8]) -> Option<PathBuf> {
    if id.len() < 2 {
        return None;
    }
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    Some(
        root.join(".build-id")
            .join(&hex[..2])
            .join(format!("{}.debug", &hex[2..])),
    )
}

/// The debug file of build-id `id` in one of `dirs` (then `/usr/lib/debug`), if any.
pub fn debug_file_by_id(id: &[u8], dirs: &[PathBuf]) -> Option<PathBuf> {
    debug_roots(dirs)
        .iter()
        .filter_map(|r| build_id_path(r, id))
        .find(|p| p.is_file())
}

/// Looks for a separate debug file: by build-id, then by `.gnu_debuglink` (beside the file,
/// in `.debug/` beside it, then under each debug directory).
pub(super) fn find_debug_file(
    path: &Path,
    elf: &Elf,
    bytes: &[u8],
    dirs: &[PathBuf],
) -> Option<PathBuf> {
    if let Some(id) = read_build_id(elf, bytes)
        && let Some(p) = debug_file_by_id(&id, dirs)
    {
        return Some(p);
    }
    let sh = elf
        .section_headers
        .iter()
        .find(|s| elf.shdr_strtab.get_at(s.sh_name) == Some(".gnu_debuglink"))?;
    let start = sh.sh_offset as usize;
    let data = bytes.get(start..start.checked_add(sh.sh_size as usize)?)?;
    let nul = data.iter().position(|&b| b == 0)?;
    let name = std::str::from_utf8(&data[..nul]).ok()?;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let mut candidates = vec![dir.join(name), dir.join(".debug").join(name)];
    for root in debug_roots(dirs) {
        candidates.push(root.join(name));
        candidates.push(root.join(dir.strip_prefix("/").unwrap_or(dir)).join(name));
    }
    candidates
        .into_iter()
        .find(|c| c.is_file() && c.as_path() != path)
}
