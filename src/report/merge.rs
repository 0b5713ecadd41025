//! Merging reports of one build: hits add up per (module file, offset, name).
//!
//! [`merge_files`] streams: each report is read into one buffer, deserialized borrowing its
//! strings from it, and folded into a compact table keyed by (module, offset) before the next
//! is read, so memory stays at one report per thread plus the table, whatever the number of
//! reports. The files are split into contiguous runs, one per core, folded in parallel, and
//! the runs' tables are then folded in order: the result does not depend on the split.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{FuncReport, Report, SCHEMA_VERSION, display_id, now_rfc3339};
use crate::BadInput;
use crate::error::Result;

/// A report as `merge` reads it: its strings borrowed from the file's bytes.
#[derive(Deserialize)]
struct ReportIn<'a> {
    schema_version: u32,
    #[serde(borrow)]
    exe_path: Cow<'a, str>,
    #[serde(default)]
    pid: i64,
    #[serde(default)]
    pids: Vec<i64>,
    #[serde(borrow)]
    build_id: Cow<'a, str>,
    #[serde(borrow)]
    kernel: Cow<'a, str>,
    #[serde(borrow)]
    generated_at: Cow<'a, str>,
    #[serde(borrow, default)]
    observed_from: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    observed_until: Option<Cow<'a, str>>,
    #[serde(default = "super::one")]
    sessions: u64,
    #[serde(borrow)]
    functions: Vec<FuncIn<'a>>,
}

/// One function as `merge` reads it.
#[derive(Deserialize, Hash)]
struct FuncIn<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow, default)]
    demangled: Option<Cow<'a, str>>,
    offset: u64,
    hit: bool,
    #[serde(default)]
    hits: u64,
    #[serde(borrow, default)]
    module: Cow<'a, str>,
    #[serde(borrow, default)]
    module_file: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    file: Option<Cow<'a, str>>,
    #[serde(default)]
    line: Option<u32>,
    #[serde(borrow, default)]
    skipped: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    first_hit_at: Option<Cow<'a, str>>,
    #[serde(default)]
    hooked_in: Option<u64>,
    #[serde(borrow, default)]
    source: Option<Cow<'a, str>>,
    #[serde(default)]
    vaddr: Option<u64>,
    #[serde(borrow, default)]
    hook: Option<Cow<'a, str>>,
    #[serde(default)]
    hits_lower_bound: bool,
    #[serde(borrow, default)]
    unhooked: Option<Cow<'a, str>>,
    #[serde(default)]
    first_hit_ns: Option<u64>,
}

impl FuncIn<'_> {
    fn of(f: &FuncReport) -> FuncIn<'_> {
        fn b(s: &Option<String>) -> Option<Cow<'_, str>> {
            s.as_deref().map(Cow::Borrowed)
        }
        FuncIn {
            name: Cow::Borrowed(&f.name),
            demangled: b(&f.demangled),
            offset: f.offset,
            hit: f.hit,
            hits: f.hits,
            module: Cow::Borrowed(&f.module),
            module_file: b(&f.module_file),
            file: b(&f.file),
            line: f.line,
            skipped: b(&f.skipped),
            first_hit_at: b(&f.first_hit_at),
            hooked_in: f.hooked_in,
            source: b(&f.source),
            vaddr: f.vaddr,
            hook: b(&f.hook),
            hits_lower_bound: f.hits_lower_bound,
            unhooked: b(&f.unhooked),
            first_hit_ns: f.first_hit_ns,
        }
    }

    fn owned(&self) -> FuncReport {
        let o = |s: &Option<Cow<'_, str>>| s.as_deref().map(str::to_string);
        FuncReport {
            name: self.name.to_string(),
            demangled: o(&self.demangled),
            offset: self.offset,
            hit: self.hit,
            hits: self.hits,
            module: self.module.to_string(),
            module_file: o(&self.module_file),
            file: o(&self.file),
            line: self.line,
            skipped: o(&self.skipped),
            first_hit_at: o(&self.first_hit_at),
            hooked_in: self.hooked_in,
            source: o(&self.source),
            vaddr: self.vaddr,
            hook: o(&self.hook),
            hits_lower_bound: self.hits_lower_bound,
            unhooked: o(&self.unhooked),
            first_hit_ns: self.first_hit_ns,
        }
    }
}

impl<'a> ReportIn<'a> {
    fn of(r: &'a Report) -> ReportIn<'a> {
        ReportIn {
            schema_version: r.schema_version,
            exe_path: Cow::Borrowed(&r.exe_path),
            pid: r.pid,
            pids: r.pids.clone(),
            build_id: Cow::Borrowed(&r.build_id),
            kernel: Cow::Borrowed(&r.kernel),
            generated_at: Cow::Borrowed(&r.generated_at),
            observed_from: r.observed_from.as_deref().map(Cow::Borrowed),
            observed_until: r.observed_until.as_deref().map(Cow::Borrowed),
            sessions: r.sessions,
            functions: r.functions.iter().map(FuncIn::of).collect(),
        }
    }

    /// The processes the counts come from (see [`Report::processes`]).
    fn processes(&self) -> Vec<i64> {
        if !self.pids.is_empty() {
            self.pids.clone()
        } else if self.pid != 0 {
            vec![self.pid]
        } else {
            vec![]
        }
    }

    /// What tells one report from another (see [`Report::same_session`]): its processes,
    /// its time, and for a report that names no process, a hash of its functions.
    fn fingerprint(&self) -> Fingerprint {
        let processes = self.processes();
        let contents = if processes.is_empty() {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            self.functions.hash(&mut h);
            h.finish()
        } else {
            0
        };
        Fingerprint {
            processes,
            generated_at: self.generated_at.to_string(),
            contents,
        }
    }
}

#[derive(PartialEq, Eq)]
struct Fingerprint {
    processes: Vec<i64>,
    generated_at: String,
    contents: u64,
}

/// A function folded so far: its report entry (from the first report that had it), how many
/// observing sessions hooked it, and whether one skipped it.
struct Acc {
    f: FuncReport,
    hooked: u64,
    skipped: bool,
}

/// What the first report of a run says of the whole (kept for the merged report).
struct Head {
    exe_path: String,
    build_id: String,
    kernel: String,
    /// Index of the file (or report) it comes from, for messages.
    from: usize,
}

/// Reports folded so far.
#[derive(Default)]
struct Fold {
    head: Option<Head>,
    /// Module (its file name, else its name) → dense id.
    modules: HashMap<String, u32>,
    /// (module id, offset) → the function of that name first seen there, in `funcs`.
    index: HashMap<(u32, u64), u32>,
    /// Other names at the same (module, offset): rare (aliases of one address).
    aliases: HashMap<(u32, u64, String), u32>,
    funcs: Vec<Acc>,
    pids: Vec<i64>,
    sessions: u64,
    observed_from: Option<String>,
    observed_until: Option<String>,
    fingerprints: Vec<(usize, Fingerprint)>,
}

/// Folds a production mode's fields of another report's function into `a`: its count is a
/// lower bound when any report's was, the first live unhook's reason is kept, and the
/// earliest first hit (after its session's hooks went in) wins.
fn live_unhook(a: &mut FuncReport, lower: bool, unhooked: Option<&str>, first_hit_ns: Option<u64>) {
    a.hits_lower_bound |= lower;
    if a.unhooked.is_none() {
        a.unhooked = unhooked.map(str::to_string);
    }
    a.first_hit_ns = match (a.first_hit_ns, first_hit_ns) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    };
}

fn min_opt(a: &mut Option<String>, b: Option<&str>) {
    if let Some(b) = b
        && a.as_deref().is_none_or(|a| b < a)
    {
        *a = Some(b.to_string());
    }
}

fn max_opt(a: &mut Option<String>, b: Option<&str>) {
    if let Some(b) = b
        && a.as_deref().is_none_or(|a| b > a)
    {
        *a = Some(b.to_string());
    }
}

/// Where reports are in messages: by path, or by position for reports in memory.
trait Names {
    fn name(&self, i: usize) -> String;
}

struct Paths<'a>(&'a [PathBuf]);

impl Names for Paths<'_> {
    fn name(&self, i: usize) -> String {
        self.0[i].display().to_string()
    }
}

struct InMemory;

impl Names for InMemory {
    fn name(&self, i: usize) -> String {
        format!("report {}", i + 1)
    }
}

impl Fold {
    fn module_id(&mut self, f: &FuncIn<'_>) -> u32 {
        let key = f.module_file.as_deref().unwrap_or(&f.module);
        if let Some(&id) = self.modules.get(key) {
            return id;
        }
        let id = self.modules.len() as u32;
        self.modules.insert(key.to_string(), id);
        id
    }

    /// The function `name` at `offset` of module `m`, if folded already.
    fn find(&self, m: u32, offset: u64, name: &str) -> Option<u32> {
        match self.index.get(&(m, offset)) {
            Some(&j) if self.funcs[j as usize].f.name == name => Some(j),
            Some(_) => self.aliases.get(&(m, offset, name.to_string())).copied(),
            None => None,
        }
    }

    /// Indexes the function about to be pushed to `funcs`.
    fn place(&mut self, m: u32, offset: u64, name: &str) {
        let j = self.funcs.len() as u32;
        match self.index.entry((m, offset)) {
            std::collections::hash_map::Entry::Occupied(_) => {
                self.aliases.insert((m, offset, name.to_string()), j);
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(j);
            }
        }
    }

    /// Folds the report number `i` in.
    fn add(&mut self, i: usize, r: &ReportIn<'_>, names: &dyn Names) -> Result<()> {
        match &self.head {
            None => {
                self.head = Some(Head {
                    exe_path: r.exe_path.to_string(),
                    build_id: r.build_id.to_string(),
                    kernel: r.kernel.to_string(),
                    from: i,
                })
            }
            Some(h) if h.build_id != r.build_id => {
                return Err(different_builds(h, i, &r.build_id, names));
            }
            Some(_) => {}
        }
        self.fingerprints.push((i, r.fingerprint()));
        self.pids.extend(r.processes());
        // A report that recorded no observation (an inventory, the original xcover's) adds
        // its hits, never a claim that a function was watched.
        let observed = r.observed_from.is_some() && r.observed_until.is_some();
        let sessions = if observed { r.sessions } else { 0 };
        self.sessions += sessions;
        min_opt(&mut self.observed_from, r.observed_from.as_deref());
        max_opt(&mut self.observed_until, r.observed_until.as_deref());
        for f in &r.functions {
            let hooked = if f.skipped.is_some() {
                0
            } else {
                f.hooked_in.unwrap_or(sessions).min(sessions)
            };
            let hits = f.hits.max(u64::from(f.hit));
            let m = self.module_id(f);
            let slot = self.find(m, f.offset, &f.name);
            match slot {
                Some(j) => {
                    let a = &mut self.funcs[j as usize];
                    a.f.hits += hits;
                    a.hooked += hooked;
                    a.skipped |= f.skipped.is_some();
                    min_opt(&mut a.f.first_hit_at, f.first_hit_at.as_deref());
                    let (lower, unhooked) = (f.hits_lower_bound, f.unhooked.as_deref());
                    live_unhook(&mut a.f, lower, unhooked, f.first_hit_ns);
                }
                None => {
                    self.place(m, f.offset, &f.name);
                    let mut owned = f.owned();
                    owned.hits = hits;
                    self.funcs.push(Acc {
                        f: owned,
                        hooked,
                        skipped: f.skipped.is_some(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Folds `later` (a run of reports after this one's) in.
    fn append(&mut self, later: Fold, names: &dyn Names) -> Result<()> {
        let Some(head) = later.head else {
            return Ok(());
        };
        match &self.head {
            None => {
                *self = Fold {
                    head: Some(head),
                    ..later
                };
                return Ok(());
            }
            Some(h) if h.build_id != head.build_id => {
                return Err(different_builds(h, head.from, &head.build_id, names));
            }
            Some(_) => {}
        }
        self.fingerprints.extend(later.fingerprints);
        self.pids.extend(later.pids);
        self.sessions += later.sessions;
        min_opt(&mut self.observed_from, later.observed_from.as_deref());
        max_opt(&mut self.observed_until, later.observed_until.as_deref());
        for a in later.funcs {
            let f = FuncIn::of(&a.f);
            let m = self.module_id(&f);
            let slot = self.find(m, f.offset, &f.name);
            match slot {
                Some(j) => {
                    let b = &mut self.funcs[j as usize];
                    b.f.hits += a.f.hits;
                    b.hooked += a.hooked;
                    b.skipped |= a.skipped;
                    min_opt(&mut b.f.first_hit_at, a.f.first_hit_at.as_deref());
                    let (lower, unhooked) = (a.f.hits_lower_bound, a.f.unhooked.as_deref());
                    live_unhook(&mut b.f, lower, unhooked, a.f.first_hit_ns);
                }
                None => {
                    self.place(m, f.offset, &f.name);
                    self.funcs.push(a);
                }
            }
        }
        Ok(())
    }

    /// The same report twice (see [`Report::same_session`]): the first such pair.
    fn check_twice(&self, names: &dyn Names) -> Result<()> {
        let mut seen: HashMap<(&[i64], &str, u64), usize> = HashMap::new();
        let mut twice: Option<(usize, usize)> = None;
        for (j, fp) in &self.fingerprints {
            let key = (&fp.processes[..], fp.generated_at.as_str(), fp.contents);
            match seen.get(&key) {
                Some(&i) => {
                    if twice.is_none_or(|(_, b)| *j < b) {
                        twice = Some((i, *j));
                    }
                }
                None => {
                    seen.insert(key, *j);
                }
            }
        }
        let Some((i, j)) = twice else {
            return Ok(());
        };
        let fp = &self
            .fingerprints
            .iter()
            .find(|(k, _)| *k == j)
            .expect("found")
            .1;
        let who = match fp.processes[..] {
            [] => "no pid".to_string(),
            [one] => format!("pid {one}"),
            ref many => format!("pids {many:?}"),
        };
        Err(BadInput(format!(
            "{} (argument {}) and {} (argument {}) are the same report ({who}, \
             generated_at {}): merging would count its hits twice",
            names.name(i),
            i + 1,
            names.name(j),
            j + 1,
            fp.generated_at
        ))
        .into())
    }

    /// The merged report.
    fn finish(self) -> Result<Report> {
        let Some(head) = self.head else {
            return Err(BadInput("merge needs at least one report".into()).into());
        };
        let sessions = self.sessions;
        let functions = self
            .funcs
            .into_iter()
            .map(|a| {
                let mut f = a.f;
                f.hit = f.hits > 0;
                f.hooked_in = (a.hooked != sessions).then_some(a.hooked);
                // Skipped only where no session hooked it.
                if a.hooked > 0 || !a.skipped {
                    f.skipped = None;
                }
                f
            })
            .collect();
        let mut pids = self.pids;
        pids.sort_unstable();
        pids.dedup();
        let mut r = Report {
            schema_version: SCHEMA_VERSION,
            funcs_traced: vec![],
            funcs_ack: vec![],
            cov_by_func: 0.0,
            exe_path: head.exe_path,
            pid: match pids[..] {
                [one] => one,
                _ => 0,
            },
            pids,
            build_id: head.build_id,
            kernel: head.kernel,
            xcover_version: env!("CARGO_PKG_VERSION").to_string(),
            generated_at: now_rfc3339(),
            observed_from: self.observed_from,
            observed_until: self.observed_until,
            sessions,
            functions,
        };
        r.finish();
        Ok(r)
    }
}

fn different_builds(h: &Head, i: usize, other: &str, names: &dyn Names) -> crate::Error {
    BadInput(format!(
        "cannot merge reports of different builds ({} and {}: {} and {})",
        display_id(&h.build_id),
        display_id(other),
        names.name(h.from),
        names.name(i),
    ))
    .into()
}

/// Sums reports of the same build in memory (see [`merge_files`]).
pub fn merge(reports: &[Report]) -> Result<Report> {
    let mut fold = Fold::default();
    for (i, r) in reports.iter().enumerate() {
        fold.add(i, &ReportIn::of(r), &InMemory)?;
    }
    fold.finish()
}

/// Reads the report at `path` and folds it in as number `i`.
fn fold_file(fold: &mut Fold, i: usize, paths: &[PathBuf], buf: &mut Vec<u8>) -> Result<()> {
    let path: &Path = &paths[i];
    buf.clear();
    std::io::Read::read_to_end(
        &mut std::fs::File::open(path)
            .map_err(|e| BadInput(format!("{}: cannot read report: {e}", path.display())))?,
        buf,
    )
    .map_err(|e| BadInput(format!("{}: cannot read report: {e}", path.display())))?;
    let r: ReportIn<'_> = match serde_json::from_slice(buf) {
        Ok(r) => r,
        Err(e) => return Err(super::json_error(path, buf, e)),
    };
    if r.schema_version != SCHEMA_VERSION {
        return Err(super::json_error(
            path,
            buf,
            serde::de::Error::custom("schema"),
        ));
    }
    fold.add(i, &r, &Paths(paths))
}

/// `xcover merge`: reads the JSON reports at `paths` and sums them: hits add up per (module
/// file, offset, name); `pids` lists every input's processes (`pid` is theirs when there is
/// one, else 0); the observation window spans the inputs'; a function hooked in only some
/// of the observing sessions says in how many (`hooked_in`). The same session's report
/// given twice (under one name or two) is refused: its counts would be added twice.
pub fn merge_files(paths: &[PathBuf]) -> Result<Report> {
    if paths.is_empty() {
        return Err(BadInput("merge needs at least one report".into()).into());
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(paths.len());
    let per = paths.len().div_ceil(threads);
    let folds: Vec<Result<Fold>> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..paths.len())
            .step_by(per)
            .map(|start| {
                s.spawn(move || {
                    let mut fold = Fold::default();
                    let mut buf = Vec::new();
                    for i in start..(start + per).min(paths.len()) {
                        fold_file(&mut fold, i, paths, &mut buf)?;
                    }
                    Ok(fold)
                })
            })
            .collect();
        runs.into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut all = Fold::default();
    for f in folds {
        all.append(f?, &Paths(paths))?;
    }
    all.check_twice(&Paths(paths))?;
    all.finish()
}
