//! Coverage reports: the [`Report`] of a session (a superset of the original xcover's JSON
//! schema v1), merging, and the formats it is written in.
//!
//! The JSON keeps every field the original xcover wrote — `schema_version`, `funcs_traced`
//! and `funcs_ack` (raw names), `cov_by_func` (percent), `exe_path`, `build_id`, `kernel`,
//! `xcover_version`, `generated_at`, and per function `name`, `demangled` (only when it
//! differs), `offset`, `hit` — and adds `pid`, `pids` and per function `hits`, `module`,
//! `module_file`, `file`, `line` and `skipped`. Functions are sorted by module, offset and
//! name so that two reports diff cleanly.
//!
//! # Formats
//!
//! A format is a [`ReportFormat`]: its name, its usual file extension, and how it writes a
//! [`Report`]. Each lives in a file of its own here (`json.rs`, `lcov.rs`) and is listed
//! once in [`FORMATS`]. Where reports go, how their paths are checked before anything is
//! done and how they are written (atomically, or in place for a device or pipe) is
//! [`Outputs`], the same for every format and every command.
//!
//! Adding a format (`--cobertura`, `--drcov`) touches only its new file here (with its
//! `mod` line below), one line in [`FORMATS`], and one field in the command line's
//! `OutputArgs` (`src/cli.rs`), which gives every command that writes reports the flag.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::BadInput;
use crate::discover::Discovery;
use crate::error::Result;

pub mod diff;
mod json;
mod lcov;
mod merge;
mod output;
pub mod reach;

pub use json::Json;
pub use lcov::Lcov;
pub use merge::merge_files;
pub use output::{Output, Outputs, check_writable, write_file};

/// Every report format, by [`ReportFormat::name`]: one line each.
pub const FORMATS: &[&dyn ReportFormat] = &[&Json, &Lcov];

/// The JSON format (what the TUI's "write report" key writes).
pub const JSON: &dyn ReportFormat = &Json;

/// The format named `name` in [`FORMATS`].
pub fn format(name: &str) -> Option<&'static dyn ReportFormat> {
    FORMATS.iter().copied().find(|f| f.name() == name)
}

/// A way to write a [`Report`] down.
pub trait ReportFormat: Sync {
    /// Its name (`json`, `lcov`), as [`format()`] finds it.
    fn name(&self) -> &'static str;

    /// The usual extension of its files, without the dot.
    fn extension(&self) -> &'static str;

    /// Writes `report` to `out`.
    fn write(&self, report: &Report, out: &mut dyn std::io::Write) -> std::io::Result<()>;

    /// Writes `report` to the file at `path` as every report is written: whole, next to
    /// its destination, flushed, then renamed over it (a device or pipe is written in
    /// place). A failure names the path ("cannot write ...").
    fn write_to(&self, report: &Report, path: &Path) -> Result<()> {
        output::write_report(self, report, path)
    }
}

/// Report schema version (the original xcover's is 1; ours only adds fields).
pub const SCHEMA_VERSION: u32 = 1;

/// One function in a report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FuncReport {
    /// Raw symbol name.
    pub name: String,
    /// Demangled name, when it differs from `name`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub demangled: Option<String>,
    /// Offset of the entry in the module's file.
    pub offset: u64,
    /// Whether it ran at least once.
    pub hit: bool,
    /// How many times it ran.
    #[serde(default)]
    pub hits: u64,
    /// The module it belongs to, by the name the user gave it (`--module libsqlite3.so.0`),
    /// else by its file name.
    #[serde(default)]
    pub module: String,
    /// The module's file name, when the user named it otherwise (`libsqlite3.so.0.8.6`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub module_file: Option<String>,
    /// Source file, from DWARF.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub file: Option<String>,
    /// Line of the function's entry, from DWARF.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub line: Option<u32>,
    /// Why the function was not hooked, when it was not: its count means nothing then.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub skipped: Option<String>,
    /// Its hook was taken out while the target ran on (`xcover unhook`, `--first-hit`,
    /// `--max-overhead`, its library unloaded): `hits` is a lower bound of its calls.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub hits_lower_bound: bool,
    /// Why its hook was taken out early (`user`, `first-hit`, `overhead`, `unloaded`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub unhooked: Option<String>,
    /// When it was first hit, in nanoseconds after the hooks went in (the same probe `seen`
    /// map time as `first_hit_at`, so never lost with the events), when the probe records
    /// it. In a merged report, the earliest over the reports.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub first_hit_ns: Option<u64>,
    /// Where the function was found: `symtab`, `dynsym`, `debug`, `pclntab` or `eh_frame`
    /// (whose name is synthetic, `func_<offset>`, until `xcover symbolize` names it).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub source: Option<String>,
    /// Link-time address of the entry (the symbol's value), by which `xcover symbolize`
    /// finds the function in a separate debug file (whose program headers no longer say
    /// where `offset` was).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub vaddr: Option<u64>,
    /// When it first ran (RFC 3339 UTC, to the microsecond; the probe's clock has the
    /// kernel tick's resolution, 1-4 ms), when it ran and the probe records it. In a merged
    /// report, the earliest over the reports.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub first_hit_at: Option<String>,
    /// In a merged report, in how many of its [`Report::sessions`] the function was hooked,
    /// when not in all of them (absent: in all). A function hooked in only some sessions
    /// was not observed for the whole window.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub hooked_in: Option<u64>,
    /// How it was hooked: `jmp` (5-byte jump), `jmp8` (2-byte hop to a jump in its
    /// padding) or `trap` (one-byte `int3`, a signal delivery per hit); absent when it was
    /// not hooked.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub hook: Option<String>,
}

/// A coverage report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Raw names of every function traced.
    pub funcs_traced: Vec<String>,
    /// Raw names of the functions that ran.
    pub funcs_ack: Vec<String>,
    /// `funcs_ack / funcs_traced * 100`.
    pub cov_by_func: f64,
    /// Path of the main executable.
    pub exe_path: String,
    /// Pid of the target; 0 in a merged report of several processes (see `pids`), and in
    /// a report of the original xcover, which has none.
    #[serde(default)]
    pub pid: i64,
    /// Pid of every process the counts come from, ascending: `[pid]` for one session, all
    /// of them for a merged report.
    #[serde(default)]
    pub pids: Vec<i64>,
    /// Build-id of the main executable, hex.
    pub build_id: String,
    /// Kernel release.
    pub kernel: String,
    /// Version of xcover that wrote the report.
    pub xcover_version: String,
    /// RFC 3339 UTC time the report was written (to the microsecond; the original
    /// xcover's are to the second).
    pub generated_at: String,
    /// When the observation began: the hooks were all in (RFC 3339 UTC). Absent when the
    /// report observed nothing (`xcover functions --report`, a probe without a hit map, the
    /// original xcover's). In a merged report, the earliest.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub observed_from: Option<String>,
    /// When the observation ended: the counts were read (after the hooks were out for a
    /// final report; the snapshot's time for one of a session that stays kept). In a merged
    /// report, the latest.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub observed_until: Option<String>,
    /// How many sessions' reports were summed into this one (1 for a session's own).
    #[serde(default = "one")]
    pub sessions: u64,
    /// Every function traced.
    pub functions: Vec<FuncReport>,
}

fn one() -> u64 {
    1
}

impl Report {
    /// Builds a report from its functions, filling the derived fields and sorting.
    pub fn new(
        exe_path: String,
        pid: i64,
        build_id: String,
        mut functions: Vec<FuncReport>,
    ) -> Self {
        for f in &mut functions {
            f.hit = f.hits > 0;
            if f.demangled.as_deref() == Some(f.name.as_str()) {
                f.demangled = None;
            }
        }
        let mut r = Report {
            schema_version: SCHEMA_VERSION,
            funcs_traced: vec![],
            funcs_ack: vec![],
            cov_by_func: 0.0,
            exe_path,
            pid,
            pids: if pid != 0 { vec![pid] } else { vec![] },
            build_id,
            kernel: kernel_release(),
            xcover_version: env!("CARGO_PKG_VERSION").to_string(),
            generated_at: now_rfc3339(),
            observed_from: None,
            observed_until: None,
            sessions: 1,
            functions,
        };
        r.finish();
        r
    }

    /// Sorts and recomputes `funcs_traced`, `funcs_ack` and `cov_by_func` from `functions`.
    pub(crate) fn finish(&mut self) {
        self.functions
            .sort_by(|a, b| (&a.module, a.offset, &a.name).cmp(&(&b.module, b.offset, &b.name)));
        self.funcs_traced = self.functions.iter().map(|f| f.name.clone()).collect();
        self.funcs_ack = self
            .functions
            .iter()
            .filter(|f| f.hit)
            .map(|f| f.name.clone())
            .collect();
        self.cov_by_func = if self.funcs_traced.is_empty() {
            0.0
        } else {
            self.funcs_ack.len() as f64 * 100.0 / self.funcs_traced.len() as f64
        };
    }

    /// Reads a JSON report (ours or the original xcover's).
    pub fn read_json(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path)
            .map_err(|e| BadInput(format!("{}: cannot read report: {e}", path.display())))?;
        match serde_json::from_slice::<Report>(&bytes) {
            Ok(r) if r.schema_version == SCHEMA_VERSION => Ok(r),
            Ok(_) => Err(json_error(path, &bytes, serde::de::Error::custom("schema"))),
            Err(e) => Err(json_error(path, &bytes, e)),
        }
    }

    /// The processes the counts come from: `pids`, or `[pid]` for a report that has only
    /// `pid` (none for the original xcover's, which has neither).
    pub fn processes(&self) -> Vec<i64> {
        if !self.pids.is_empty() {
            self.pids.clone()
        } else if self.pid != 0 {
            vec![self.pid]
        } else {
            vec![]
        }
    }

    /// Whether `self` and `other` are the same report of one session: same processes,
    /// same `generated_at` (and, for reports that name no process, the same functions and
    /// counts). Summing them would count the session twice.
    pub fn same_session(&self, other: &Report) -> bool {
        let p = self.processes();
        p == other.processes()
            && self.generated_at == other.generated_at
            && (!p.is_empty() || self.functions == other.functions)
    }

    /// Sums reports of the same build (see [`merge_files`]).
    pub fn merge(reports: Vec<Report>) -> Result<Report> {
        merge::merge(&reports)
    }
}

/// Why `bytes` (the file at `path`) is not a report we read, `e` being what the parser
/// said: not JSON, another schema version, or a malformed report.
pub(crate) fn json_error(path: &Path, bytes: &[u8], e: serde_json::Error) -> crate::Error {
    #[derive(Deserialize)]
    struct Version {
        schema_version: Option<serde_json::Value>,
    }
    let what = match serde_json::from_slice::<Version>(bytes) {
        Err(e) => format!("not a JSON report: {e}"),
        Ok(Version {
            schema_version: Some(v),
        }) if v.as_u64() == Some(u64::from(SCHEMA_VERSION)) => format!("malformed report: {e}"),
        Ok(Version { schema_version }) => format!(
            "unsupported report schema_version {:?} (expected 1)",
            schema_version.and_then(|v| v.as_u64())
        ),
    };
    BadInput(format!("{}: {what}", path.display())).into()
}

pub(crate) fn display_id(id: &str) -> &str {
    if id.is_empty() { "no build-id" } else { id }
}

/// The kernel release (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The current time as RFC 3339 UTC, to the microsecond: with the pid, it tells one
/// report from another (`merge` refuses the same one twice), even two written in the same
/// second.
pub fn now_rfc3339() -> String {
    rfc3339_ns(unix_now_ns())
}

/// Nanoseconds since the Unix epoch, now.
pub fn unix_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// `unix_ns` (nanoseconds since the Unix epoch) as RFC 3339 UTC, to the microsecond.
pub fn rfc3339_ns(unix_ns: u64) -> String {
    let secs = rfc3339(unix_ns / 1_000_000_000);
    let whole = secs.strip_suffix('Z').unwrap_or(&secs);
    format!("{whole}.{:06}Z", unix_ns % 1_000_000_000 / 1000)
}

/// A time of the machine's `CLOCK_MONOTONIC` (what the probe and the agent stamp, in
/// nanoseconds) as nanoseconds since the Unix epoch, by the clocks' offset now; `None` for 0
/// (never stamped).
pub fn monotonic_to_unix_ns(mono_ns: u64) -> Option<u64> {
    if mono_ns == 0 {
        return None;
    }
    let now_mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).ok()?;
    let now_mono = u64::try_from(now_mono.tv_sec()).ok()? * 1_000_000_000
        + u64::try_from(now_mono.tv_nsec()).ok()?;
    let back = now_mono.saturating_sub(mono_ns);
    Some(unix_now_ns().saturating_sub(back))
}

fn rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from the day count: shift the epoch to 0000-03-01 so leap days end a year.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// One module as reports show it: its name (the one the user gave, else its file name), its
/// file name when that differs, and the source lines of its DWARF.
pub struct ModuleLines {
    name: String,
    file: Option<String>,
    lines: LineTable,
}

impl ModuleLines {
    /// Opens the module at `path` (and its DWARF, or its separate debug file's, looked for
    /// in `debug_dirs` then `/usr/lib/debug`), shown as `alias` when the user named it so.
    pub fn open(path: &Path, alias: Option<&str>, debug_dirs: &[std::path::PathBuf]) -> Self {
        let file = crate::discover::file_name(path);
        let (name, file) = match alias {
            Some(a) if a != file => (a.to_string(), Some(file)),
            _ => (file, None),
        };
        ModuleLines {
            name,
            file,
            lines: LineTable::open(path, debug_dirs),
        }
    }

    /// The report entry of the function `name` of this module at file offset `offset` and
    /// link-time address `vaddr`.
    pub fn func(&self, name: &str, offset: u64, vaddr: u64, hits: u64) -> FuncReport {
        let loc = self.lines.locate(vaddr);
        FuncReport {
            demangled: crate::discover::demangle(name),
            name: name.to_string(),
            offset,
            hit: hits > 0,
            hits,
            module: self.name.clone(),
            module_file: self.file.clone(),
            file: loc.as_ref().map(|l| l.0.clone()),
            line: loc.map(|l| l.1),
            skipped: None,
            hits_lower_bound: false,
            unhooked: None,
            first_hit_ns: None,
            source: None,
            vaddr: Some(vaddr),
            first_hit_at: None,
            hooked_in: None,
            hook: None,
        }
    }
}

/// Lowercase hex, as reports write build-ids.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The report of what discovery found, with `hits[i]` for `d.functions[i]` (missing counts
/// are 0: `xcover functions --report` writes the inventory with none).
pub fn from_discovery(d: &Discovery, hits: &[u64], pid: i64) -> Report {
    let modules: Vec<ModuleLines> = d
        .modules
        .iter()
        .map(|m| ModuleLines::open(&m.path, m.alias.as_deref(), &d.debug_dirs))
        .collect();
    let functions = d
        .functions
        .iter()
        .zip(hits.iter().copied().chain(std::iter::repeat(0)))
        .map(|(f, hits)| {
            let mut r = modules[f.module].func(&f.name, f.offset, f.vaddr, hits);
            r.source = Some(f.source.name().to_string());
            r
        })
        .collect();
    let main = d.modules.first();
    let mut r = Report::new(
        main.map(|m| m.path.display().to_string())
            .unwrap_or_default(),
        pid,
        main.and_then(|m| m.build_id.as_deref())
            .map(hex)
            .unwrap_or_default(),
        functions,
    );
    // An inventory: nothing was observed.
    r.sessions = 0;
    r
}

/// Source locations of function entries, from a module's DWARF (or its debug file).
pub struct LineTable {
    loader: Option<addr2line::Loader>,
}

impl LineTable {
    /// Opens the DWARF of `path`, or of its separate debug file (build-id or
    /// `.gnu_debuglink`, in `debug_dirs` then `/usr/lib/debug`) when it has none; without
    /// DWARF every lookup gives `None`.
    pub fn open(path: &Path, debug_dirs: &[std::path::PathBuf]) -> Self {
        let dwarf =
            crate::discover::debug_file(path, debug_dirs).unwrap_or_else(|| path.to_path_buf());
        Self::of_file(&dwarf)
    }

    /// Opens the DWARF of the file at `path` itself.
    pub fn of_file(path: &Path) -> Self {
        LineTable {
            loader: addr2line::Loader::new(path).ok(),
        }
    }

    /// File and line of the code at link-time address `vaddr`.
    pub fn locate(&self, vaddr: u64) -> Option<(String, u32)> {
        let loc = self.loader.as_ref()?.find_location(vaddr).ok()??;
        Some((loc.file?.to_string(), loc.line?))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(super) fn f(name: &str, offset: u64, hits: u64) -> FuncReport {
        FuncReport {
            name: name.into(),
            demangled: None,
            offset,
            hit: hits > 0,
            hits,
            module: "app".into(),
            module_file: None,
            file: None,
            line: None,
            skipped: None,
            hits_lower_bound: false,
            unhooked: None,
            first_hit_ns: None,
            source: None,
            vaddr: None,
            first_hit_at: None,
            hooked_in: None,
            hook: None,
        }
    }

    #[test]
    fn derived_fields_and_sorting() {
        let r = Report::new(
            "/bin/app".into(),
            42,
            "abcd".into(),
            vec![f("b", 0x20, 0), f("a", 0x10, 3), f("c", 0x30, 1)],
        );
        assert_eq!(r.funcs_traced, ["a", "b", "c"]);
        assert_eq!(r.funcs_ack, ["a", "c"]);
        assert!((r.cov_by_func - 200.0 / 3.0).abs() < 1e-9);
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["schema_version"], 1);
        assert_eq!(v["functions"][0]["hit"], true);
        assert_eq!(v["functions"][0]["hits"], 3);
        assert!(v["functions"][0].get("demangled").is_none());
    }

    #[test]
    fn reads_original_xcover_reports_and_merges() {
        let dir = std::env::temp_dir().join(format!("xcover-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let orig = dir.join("orig.json");
        std::fs::write(
            &orig,
            r#"{"schema_version":1,"xcover_version":"v1","generated_at":"2026-01-02T03:04:05Z",
            "kernel":"6.1","exe_path":"/bin/app","build_id":"abcd","funcs_traced":["a","b"],
            "funcs_ack":["a"],"cov_by_func":50,
            "functions":[{"name":"a","offset":16,"hit":true},{"name":"b","offset":32,"hit":false}]}"#,
        )
        .unwrap();
        let a = Report::read_json(&orig).unwrap();
        let mut ours = Report::new("/bin/app".into(), 1, "abcd".into(), vec![f("b", 32, 5)]);
        ours.functions[0].module = String::new();
        let m = Report::merge(vec![a, ours]).unwrap();
        let hits: Vec<_> = m
            .functions
            .iter()
            .map(|f| (f.name.as_str(), f.hits))
            .collect();
        assert_eq!(hits, [("a", 1), ("b", 5)]);
        assert_eq!(m.cov_by_func, 100.0);

        let other = Report::new("/bin/app".into(), 1, "ffff".into(), vec![]);
        let err = Report::merge(vec![m, other]).unwrap_err();
        assert!(err.to_string().contains("different builds"));
        std::fs::write(&orig, r#"{"schema_version":2}"#).unwrap();
        assert!(Report::read_json(&orig).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn report_of_own_process_has_dwarf_lines() {
        let pid = std::process::id() as i32;
        let d = crate::discover::discover(pid, &Default::default()).unwrap();
        let me = report_of_own_process_has_dwarf_lines as *const () as u64;
        let i = d.functions.iter().position(|f| f.addr == me).unwrap();
        let mut hits = vec![0; d.functions.len()];
        hits[i] = 3;
        let r = from_discovery(&d, &hits, pid.into());
        assert_eq!(r.funcs_ack.len(), 1);
        let f = r.functions.iter().find(|f| f.hits == 3).unwrap();
        assert!(
            f.file.as_deref().unwrap().ends_with("src/report/mod.rs"),
            "{f:?}"
        );
        assert!(f.line.unwrap() > 0);
        assert!(lcov::text(&r).contains(&format!("FNDA:3,{}", f.demangled.as_ref().unwrap())));
        assert_eq!(r.build_id.len() % 2, 0);
    }

    #[test]
    fn merged_pids_and_same_session() {
        let a = Report::new("/bin/app".into(), 7, "ab".into(), vec![f("x", 0x10, 1)]);
        let b = Report::new("/bin/app".into(), 9, "ab".into(), vec![f("x", 0x10, 2)]);
        assert_eq!(a.pids, [7]);
        assert!(a.same_session(&a.clone()));
        assert!(!a.same_session(&b));
        let mut later = a.clone();
        later.generated_at = "2030-01-01T00:00:00.000000Z".into();
        assert!(!a.same_session(&later), "another report of the same pid");
        let m = Report::merge(vec![b.clone(), a.clone()]).unwrap();
        assert_eq!((m.pid, m.pids.clone()), (0, vec![7, 9]));
        assert_eq!(m.functions[0].hits, 3);
        let one = Report::merge(vec![a.clone(), later]).unwrap();
        assert_eq!((one.pid, one.pids.clone()), (7, vec![7]));
        // Reports that name no process (the original xcover's) are the same only if
        // their contents are too.
        let mut o1 = a.clone();
        o1.pid = 0;
        o1.pids.clear();
        let mut o2 = o1.clone();
        assert!(o1.same_session(&o2));
        o2.functions[0].hits = 5;
        assert!(!o1.same_session(&o2));
        // Microseconds tell two reports of one second apart.
        let t = now_rfc3339();
        assert_eq!(t.len(), "2026-01-02T03:04:05.123456Z".len(), "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[19] == b'.', "{t}");
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_219_200 + 3661), "2026-11-21T01:01:01Z");
    }
}
