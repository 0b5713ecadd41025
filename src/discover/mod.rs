//! Function discovery: which functions of a running process to hook, at which addresses.
//!
//! Functions come from the ELF symbol tables of the files the target has mapped: `.symtab`,
//! or `.dynsym` when the file is stripped, or the symbols of a separate debug file found
//! through the build-id or `.gnu_debuglink` (in each `--debug-dir`, then `/usr/lib/debug`).
//! Code no symbol names is found too: Go functions from `.gopclntab` (with their real
//! names, see [`crate::pclntab`]), and every other function from its `.eh_frame` entry (see
//! [`crate::ehframe`]), named `func_<file offset in hex>`, a name stable across runs of one
//! build that `xcover symbolize` later replaces by build-id and offset. Each function says
//! where it was found ([`Source`]).
//!
//! Merging the sources: a function is one address. A symbol, a `.gopclntab` entry and an
//! FDE at the same address are one function, found by the best source (`.symtab` or the
//! debug file, then `.dynsym`, then `.gopclntab`, then `.eh_frame`). An FDE or `.gopclntab`
//! entry that starts strictly inside a better-sourced function's range (`value..value+size`)
//! is part of that function (hand-written code with several unwind regions, say) and not
//! hooked apart: its entry is no function entry. An FDE in `.plt`, `.plt.got` or `.plt.sec`
//! is no function either (lazy-binding stubs). A split part of a function that the compiler
//! placed elsewhere (GCC's `foo.cold`: its frame is already set up at its first byte) is a
//! code region of its own, hooked like a function and named `func_<offset>.cold` when no
//! symbol names it.
//!
//! A symbol's runtime address is found through the file offset it lives at and the
//! executable mapping of that offset in `/proc/<pid>/maps`, which is right for PIE and
//! non-PIE executables and shared libraries alike.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Context, Error, Result, bail};
use goblin::elf::{Elf, program_header::PT_LOAD, sym};
use regex::Regex;

use crate::BadInput;
use crate::note::Note;

mod debug;
mod symbols;

use debug::find_debug_file;
pub use debug::{build_id_path, debug_file, debug_file_by_id, read_build_id};
use symbols::module_functions;

/// A file-backed module of the target whose functions are hooked.
#[derive(Clone, Debug)]
pub struct Module {
    /// Path as the target sees it (from `/proc/<pid>/maps`, or the resolved `exe`).
    pub path: PathBuf,
    /// Build-id, when the file has one.
    pub build_id: Option<Vec<u8>>,
    /// The name the user gave it with `--module`, when that is not its file name: a soname
    /// (`libsqlite3.so.0` for the file `libsqlite3.so.0.8.6`) or a symlink's name. Reports,
    /// the listing and the TUI show the module by this name.
    pub alias: Option<String>,
    /// Whether the file has no symbol table (`.symtab`), its `.dynsym` defines no function,
    /// no separate debug file was found, and it has neither `.eh_frame` entries nor a
    /// `.gopclntab` to find functions by: nothing in it can be hooked.
    pub stripped: bool,
    /// Whether it is Go code (it has a `.go.buildinfo` or `.gopclntab` section): Go's
    /// runtime manages signals with raw system calls, so no trap hook goes into a process
    /// that has Go code (see README.md, hook kinds).
    pub go: bool,
}

impl Module {
    /// The module's name as reports show it: the user's name for it, else its file name.
    pub fn name(&self) -> String {
        self.alias.clone().unwrap_or_else(|| file_name(&self.path))
    }

    /// Why this module gives no function, and what the user can do: for a stripped file,
    /// where its debug symbols would be looked for.
    pub fn no_symbols_reason(&self) -> String {
        let path = self.path.display();
        if !self.stripped {
            return format!("{path} defines no function symbol");
        }
        let by_id = match self.build_id.as_deref() {
            Some(id) if id.len() >= 2 => {
                let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
                format!("/usr/lib/debug/.build-id/{}/{}.debug", &hex[..2], &hex[2..])
            }
            _ => "/usr/lib/debug/<its path>".to_string(),
        };
        format!(
            "{path} has no symbol table (stripped), no .eh_frame or .gopclntab to find its \
             functions by, and no debug file was found for it; install its debug symbols (the distribution's -dbgsym/-debuginfo package, or a \
             debug file at {by_id}, or one named by its .gnu_debuglink beside it), or run \
             an unstripped build"
        )
    }
}

/// A module's name as reports and the TUI show it: its file name (the whole path when it
/// has none).
pub fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Where a function was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// The file's own `.symtab`.
    Symtab,
    /// Its `.dynsym` (exported functions only).
    Dynsym,
    /// A separate debug file's `.symtab` (by build-id or `.gnu_debuglink`).
    Debug,
    /// Go's `.gopclntab` (real names, no symbol table needed).
    Pclntab,
    /// An `.eh_frame` entry no symbol names: the name is synthetic, `func_<offset>`.
    EhFrame,
}

impl Source {
    /// Every source, by [`Source::code`].
    pub const ALL: [Source; 5] = [
        Source::Symtab,
        Source::Dynsym,
        Source::Debug,
        Source::Pclntab,
        Source::EhFrame,
    ];

    /// Its name in reports and listings: `symtab`, `dynsym`, `debug`, `pclntab`, `eh_frame`.
    pub fn name(self) -> &'static str {
        match self {
            Source::Symtab => "symtab",
            Source::Dynsym => "dynsym",
            Source::Debug => "debug",
            Source::Pclntab => "pclntab",
            Source::EhFrame => "eh_frame",
        }
    }

    /// The source named `name` ([`Source::name`]).
    pub fn from_name(name: &str) -> Option<Source> {
        Source::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Its code in the session file's function table (1..=5; 0 is unknown).
    pub fn code(self) -> u8 {
        match self {
            Source::Symtab => 1,
            Source::Dynsym => 2,
            Source::Debug => 3,
            Source::Pclntab => 4,
            Source::EhFrame => 5,
        }
    }

    /// The source of code `c` ([`Source::code`]).
    pub fn from_code(c: u8) -> Option<Source> {
        Source::ALL.into_iter().find(|s| s.code() == c)
    }

    /// Which source names a function when several find it: lower is better.
    fn rank(self) -> u8 {
        match self {
            Source::Symtab | Source::Debug => 0,
            Source::Dynsym => 1,
            Source::Pclntab => 2,
            Source::EhFrame => 3,
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The synthetic name of a function no symbol names: `func_` and its file offset in hex,
/// stable across runs of one build; `.cold` added for a split part of another function.
pub fn synthetic_name(offset: u64, part: bool) -> String {
    if part {
        format!("func_{offset:x}.cold")
    } else {
        format!("func_{offset:x}")
    }
}

/// One function to hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Function {
    /// The raw (mangled) symbol name; for aliases, the preferred one.
    pub name: String,
    /// The demangled name, when the raw one is a Rust or C++ mangled name.
    pub demangled: Option<String>,
    /// Other names at the same address.
    pub aliases: Vec<String>,
    /// Runtime address of the entry in the target.
    pub addr: u64,
    /// Size from the symbol table.
    pub size: u64,
    /// Offset of the entry in the module's file.
    pub offset: u64,
    /// Link-time address of the entry (the symbol's value), for DWARF lookups.
    pub vaddr: u64,
    /// Runtime address where the next symbol (or the section) starts: the bytes between
    /// `addr + size` and this are the function's padding.
    pub next_start: u64,
    /// Index into [`Discovery::modules`].
    pub module: usize,
    /// Another function's direct branch that lands in this one's first bytes, if any: an
    /// entry patch must not cover that byte.
    pub entered: Option<Entered>,
    /// Where it was found.
    pub source: Source,
    /// A split part of another function (`foo.cold`, its frame set up at its first byte),
    /// entered by a jump from its parent rather than called.
    pub part: bool,
    /// A part entered from code that keeps data below its stack pointer (in the x86-64
    /// red zone): a jump to a trampoline there would overwrite that data, so it is not
    /// hooked ([`xcover_session::SkipReason::RedZone`]).
    pub red_zone: bool,
}

impl Function {
    /// Why discovery already knows the function cannot be hooked, if it does.
    pub fn skip_reason(&self) -> Option<&'static str> {
        self.red_zone
            .then(|| xcover_session::SkipReason::RedZone.text())
    }
}

/// Where code outside a function branches into its first bytes (see [`crate::inbound`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entered {
    /// Offset of the lowest such target from the entry, `1..=`[`crate::inbound::SPAN`].
    pub at: u8,
    /// Where the first branch there is: `name` or `name+0x12` when it lies in a function,
    /// `module+0x1234` (file offset) otherwise.
    pub from: String,
}

/// Everything discovery found.
#[derive(Clone, Debug, Default)]
pub struct Discovery {
    /// Modules, the main executable first.
    pub modules: Vec<Module>,
    /// Functions, sorted by address.
    pub functions: Vec<Function>,
    /// Functions found before `--include`/`--exclude` chose among them.
    pub found: usize,
    /// The directories searched for separate debug files before `/usr/lib/debug`
    /// ([`Options::debug_dirs`]), for the reports' source lines.
    pub debug_dirs: Vec<PathBuf>,
}

/// What to look for.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Extra modules by file name or path (`--module`).
    pub modules: Vec<String>,
    /// Every file-backed executable mapping (`--all-modules`).
    pub all_modules: bool,
    /// Keep only functions whose raw or demangled name matches.
    pub include: Option<Regex>,
    /// Drop functions whose raw or demangled name matches (wins over `include`).
    pub exclude: Option<Regex>,
    /// Directories to look for separate debug files in (`--debug-dir`), before
    /// `/usr/lib/debug`: as `<dir>/.build-id/xx/yyyy.debug` and by `.gnu_debuglink`.
    pub debug_dirs: Vec<PathBuf>,
}

/// One executable mapping of a file in the target.
#[derive(Clone, Debug)]
struct ExecMap {
    start: u64,
    end: u64,
    offset: u64,
    path: PathBuf,
}

fn exec_maps(pid: i32) -> Result<Vec<ExecMap>> {
    let maps = xcover_injector::procfs::mappings(pid)
        .with_context(|| format!("pid {pid}: cannot read /proc/{pid}/maps"))?;
    Ok(maps
        .into_iter()
        .filter(|m| m.exec && m.file)
        .map(|m| ExecMap {
            start: m.start,
            end: m.end,
            offset: m.offset,
            path: PathBuf::from(m.path),
        })
        .collect())
}

/// Strips the " (deleted)" the kernel appends to the path of a replaced file.
fn clean_path(p: &Path) -> PathBuf {
    let s = p.to_string_lossy();
    PathBuf::from(s.strip_suffix(" (deleted)").unwrap_or(&s).to_string())
}

/// Finds the functions of `pid` to hook.
pub fn discover(pid: i32, opts: &Options) -> Result<Discovery> {
    let maps = exec_maps(pid)?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .with_context(|| format!("pid {pid}: cannot resolve /proc/{pid}/exe"))?;
    let exe = clean_path(&exe);

    // Modules in order: the main executable, then the requested ones by first mapping, each
    // with the name the user gave it.
    let mut wanted: Vec<(PathBuf, Option<String>)> = vec![(exe.clone(), None)];
    let mut seen_paths: Vec<PathBuf> = maps.iter().map(|m| clean_path(&m.path)).collect();
    seen_paths.dedup();
    for spec in &opts.modules {
        let Some(p) = find_module(pid, &seen_paths, spec) else {
            return Err(BadInput(format!(
                "pid {pid}: no executable mapping of a module named {spec:?}"
            ))
            .into());
        };
        if wanted.iter().any(|(w, _)| *w == p) {
            continue;
        }
        // A path names the module by its last component (a symlink's name, say).
        let given = Path::new(spec)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| spec.clone());
        let alias = (given != file_name(&p)).then_some(given);
        wanted.push((p, alias));
    }
    if opts.all_modules {
        for p in &seen_paths {
            if !wanted.iter().any(|(w, _)| w == p) {
                wanted.push((p.clone(), None));
            }
        }
    }

    let mut out = Discovery {
        debug_dirs: opts.debug_dirs.clone(),
        ..Discovery::default()
    };
    for (path, alias) in wanted {
        let is_main = out.modules.is_empty();
        // Read through /proc/<pid>/exe or /proc/<pid>/root so a replaced file or another
        // mount namespace still gives the bytes the target runs.
        let read_from = if is_main {
            PathBuf::from(format!("/proc/{pid}/exe"))
        } else {
            let rel = path.strip_prefix("/").unwrap_or(&path);
            PathBuf::from(format!("/proc/{pid}/root")).join(rel)
        };
        let bytes = std::fs::read(&read_from)
            .with_context(|| format!("pid {pid}: cannot read {}", read_from.display()))?;
        let module_maps: Vec<&ExecMap> = maps
            .iter()
            .filter(|m| clean_path(&m.path) == path)
            .collect();
        let index = out.modules.len();
        let (mut module, funcs) =
            module_functions(&path, &bytes, &module_maps, index, &opts.debug_dirs)
                .with_context(|| format!("pid {pid}: {}", path.display()))?;
        module.alias = alias;
        out.modules.push(module);
        out.functions.extend(funcs);
    }

    out.found = out.functions.len();
    out.functions.retain(|f| keep(f, opts));
    out.functions.sort_by_key(|f| f.addr);
    out.functions.dedup_by_key(|f| f.addr);
    Ok(out)
}

/// The mapped file `spec` names (`--module`): its path, its file name, its file name less
/// a version suffix (`libc.so` for `libc.so.6`, `libsqlite3.so.0` for
/// `libsqlite3.so.0.8.6`), or a path that resolves to it (a symlink such as
/// `/usr/lib/x86_64-linux-gnu/libsqlite3.so.0`, read in the target's file system).
fn find_module(pid: i32, seen: &[PathBuf], spec: &str) -> Option<PathBuf> {
    let found = seen.iter().find(|p| {
        *p == Path::new(spec)
            || p.file_name().is_some_and(|n| n.to_string_lossy() == *spec)
            || p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{spec}.")))
    });
    if let Some(p) = found {
        return Some(p.clone());
    }
    if !spec.starts_with('/') {
        return None;
    }
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let real = std::fs::canonicalize(root.join(spec.trim_start_matches('/'))).ok()?;
    // The target's root is "/" in our namespace or a path under it: strip that prefix.
    let target_root = std::fs::canonicalize(&root).ok()?;
    let real = Path::new("/").join(real.strip_prefix(&target_root).ok()?);
    seen.iter().find(|p| **p == real).cloned()
}

/// The error for a discovery that found no function to hook: says the filters left none, or
/// names each module and why it gave none (a stripped file: where its debug symbols would be
/// looked for). `attach` and `functions` both refuse so (exit 2).
pub fn nothing_to_hook(pid: i32, d: &Discovery) -> Error {
    let why = if d.found > 0 {
        format!(
            "--include/--exclude left none of the {} functions found",
            d.found
        )
    } else {
        let reasons: Vec<String> = d.modules.iter().map(Module::no_symbols_reason).collect();
        reasons.join("; ")
    };
    BadInput(format!("pid {pid}: no function to hook: {why}")).into()
}

/// A warning for each module that gives no function because it is stripped, when others
/// still give some.
pub fn stripped_warnings(pid: i32, d: &Discovery) -> Vec<Note> {
    d.modules
        .iter()
        .filter(|m| m.stripped)
        .map(|m| Note::Stripped {
            pid,
            reason: m.no_symbols_reason(),
        })
        .collect()
}

impl Options {
    /// Options from the command line's `--include`, `--exclude`, `--module` and
    /// `--all-modules`; a bad regex is bad input.
    pub fn new(
        include: Option<&str>,
        exclude: Option<&str>,
        modules: Vec<String>,
        all_modules: bool,
    ) -> Result<Self> {
        let re = |flag: &str, s: Option<&str>| -> Result<Option<Regex>> {
            s.map(|s| {
                Regex::new(s).map_err(|e| {
                    // The parser's message spans lines (it draws a caret); keep the last.
                    let why = e.to_string();
                    let why = why.lines().last().unwrap_or_default();
                    let why = why.trim_start_matches("error: ");
                    BadInput(format!("{flag} {s:?}: bad regex: {why}")).into()
                })
            })
            .transpose()
        };
        Ok(Options {
            modules,
            all_modules,
            include: re("--include", include)?,
            exclude: re("--exclude", exclude)?,
            debug_dirs: Vec::new(),
        })
    }
}

/// The functions `attach` would hook in `pid` (`xcover functions`): refused as `attach`
/// refuses, a pid that is not there and a discovery with nothing to hook alike.
pub fn functions(pid: i32, opts: &Options) -> Result<Discovery> {
    if pid <= 0 || !Path::new(&format!("/proc/{pid}")).exists() {
        return Err(BadInput(format!("pid {pid}: no such process")).into());
    }
    let d = discover(pid, opts)?;
    if d.functions.is_empty() {
        return Err(nothing_to_hook(pid, &d));
    }
    Ok(d)
}

fn keep(f: &Function, opts: &Options) -> bool {
    let matches = |re: &Regex| {
        re.is_match(&f.name)
            || f.demangled.as_deref().is_some_and(|d| re.is_match(d))
            || f.aliases.iter().any(|a| re.is_match(a))
    };
    if opts.exclude.as_ref().is_some_and(matches) {
        return false;
    }
    opts.include.as_ref().is_none_or(matches)
}

/// Demangles a Rust (legacy or v0) or C++ symbol name; `None` when it is not mangled.
pub fn demangle(name: &str) -> Option<String> {
    if let Ok(d) = rustc_demangle::try_demangle(name) {
        // `{:#}` drops the hash suffix of legacy Rust names.
        return Some(format!("{d:#}"));
    }
    if name.starts_with("_Z")
        && let Ok(sym) = cpp_demangle::Symbol::new(name)
        && let Ok(s) = sym.demangle(&cpp_demangle::DemangleOptions::default())
    {
        return Some(s);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demangles_rust_and_cpp() {
        assert_eq!(
            demangle("_ZN4core3fmt5write17h0123456789abcdefE").as_deref(),
            Some("core::fmt::write")
        );
        assert_eq!(demangle("_Z3fooi").as_deref(), Some("foo(int)"));
        assert_eq!(demangle("main"), None);
    }

    #[test]
    fn filters_match_raw_and_demangled_and_exclude_wins() {
        let f = Function {
            name: "_Z3fooi".into(),
            demangled: Some("foo(int)".into()),
            aliases: vec![],
            addr: 0x1000,
            size: 10,
            offset: 0x1000,
            vaddr: 0x1000,
            next_start: 0x1010,
            module: 0,
            entered: None,
            source: Source::Symtab,
            part: false,
            red_zone: false,
        };
        let o = |inc: Option<&str>, exc: Option<&str>| Options {
            include: inc.map(|s| Regex::new(s).unwrap()),
            exclude: exc.map(|s| Regex::new(s).unwrap()),
            ..Default::default()
        };
        assert!(keep(&f, &o(None, None)));
        assert!(keep(&f, &o(Some(r"^foo\("), None)));
        assert!(keep(&f, &o(Some("_Z3foo"), None)));
        assert!(!keep(&f, &o(Some("bar"), None)));
        assert!(!keep(&f, &o(Some("foo"), Some("int"))));
    }

    #[test]
    fn discovers_own_functions() {
        // This test binary is a real PIE process: find one of its own functions.
        let pid = std::process::id() as i32;
        let d = discover(pid, &Options::default()).unwrap();
        assert!(!d.functions.is_empty());
        let me = discovers_own_functions as *const () as u64;
        let f = d
            .functions
            .iter()
            .find(|f| f.addr == me)
            .expect("this function is discovered at its runtime address");
        assert!(
            f.demangled
                .as_deref()
                .unwrap()
                .ends_with("discovers_own_functions")
        );
        assert!(f.next_start >= f.addr + f.size);
        // Sorted and unique.
        assert!(d.functions.windows(2).all(|w| w[0].addr < w[1].addr));
    }

    #[test]
    fn modules_by_name() {
        let pid = std::process::id() as i32;
        let d = discover(
            pid,
            &Options {
                modules: vec!["libc.so.6".into()],
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(d.modules.len(), 2);
        let malloc = d.functions.iter().find(|f| {
            f.module == 1 && (f.name == "malloc" || f.aliases.iter().any(|a| a == "malloc"))
        });
        assert!(malloc.is_some(), "libc's malloc is found");
        let err = discover(
            pid,
            &Options {
                modules: vec!["libnosuch.so".into()],
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(matches!(err, Error::BadInput(_)), "{err}");
    }

    #[test]
    fn libc_memcpy_is_entered_at_3_by_mempcpy() {
        // glibc's __mempcpy_*_unaligned_erms end in `jmp __memcpy_*_unaligned_erms+3`. Its
        // local symbols come from the separate debug file (libc6-dbg, which
        // scripts/setup.sh installs).
        let pid = std::process::id() as i32;
        let t = std::time::Instant::now();
        let d = discover(
            pid,
            &Options {
                modules: vec!["libc.so.6".into()],
                ..Default::default()
            },
        )
        .unwrap();
        let took = t.elapsed();
        let libc: Vec<&Function> = d.functions.iter().filter(|f| f.module == 1).collect();
        let entered: Vec<_> = libc.iter().filter(|f| f.entered.is_some()).collect();
        eprintln!(
            "libc: {} functions, {} entered inside their first bytes from elsewhere \
             (discovery {took:?})",
            libc.len(),
            entered.len()
        );
        for f in &entered {
            let e = f.entered.as_ref().unwrap();
            eprintln!("  {} entered at +{} from {}", f.name, e.at, e.from);
        }
        let memcpy: Vec<_> = libc
            .iter()
            .filter(|f| {
                let memcpy = |n: &str| {
                    n.starts_with("__memcpy_")
                        && !n.starts_with("__memcpy_chk")
                        && (n.ends_with("_unaligned_erms") || n.ends_with("_unaligned_erms_rtm"))
                };
                memcpy(&f.name) || f.aliases.iter().any(|a| memcpy(a))
            })
            .collect();
        assert!(
            memcpy.len() >= 2,
            "libc's __memcpy_*_unaligned_erms are discovered (is libc6-dbg installed?)"
        );
        for f in memcpy {
            let e = f
                .entered
                .as_ref()
                .unwrap_or_else(|| panic!("{} not flagged", f.name));
            assert_eq!(e.at, 3, "{}", f.name);
            assert!(
                e.from.starts_with("__mempcpy_") && e.from.ends_with("+0x6"),
                "{} entered from {}",
                f.name,
                e.from
            );
        }
    }
}
