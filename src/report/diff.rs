//! Comparing two reports: which functions are newly hit, which are no longer hit, and
//! whose counts changed most ([`diff`]), as JSON ([`Diff`] serialized) or a table
//! ([`Diff::table`]).
//!
//! Functions are matched by (module file, offset, name) within one build; across builds
//! (`--force`) offsets mean nothing, so by (module file, name). A function hooked in only one
//! of the reports (or skipped in one) is counted as such and listed nowhere else: it was not
//! watched in both, so it neither became hit nor stopped being hit.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::{FuncReport, Report, display_id};
use crate::BadInput;
use crate::error::Result;

/// One report's side of a diff.
#[derive(Clone, Debug, Serialize)]
pub struct Side {
    /// Where it was read from.
    pub path: String,
    /// Its build-id.
    pub build_id: String,
    /// When it was written.
    pub generated_at: String,
    /// Its processes.
    pub pids: Vec<i64>,
    /// Its observation window, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_from: Option<String>,
    /// The window's end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_until: Option<String>,
    /// Functions hooked in it.
    pub functions: usize,
    /// Of them, hit.
    pub hit: usize,
}

/// How the two reports' functions compare, in numbers.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Totals {
    /// Functions hooked in both.
    pub in_both: usize,
    /// Hooked only in the first.
    pub only_in_a: usize,
    /// Hooked only in the second.
    pub only_in_b: usize,
    /// Hooked in both, hit in the second only.
    pub newly_hit: usize,
    /// Hooked in both, hit in the first only.
    pub no_longer_hit: usize,
    /// Hit in both, with different counts.
    pub changed: usize,
}

/// One function that differs.
#[derive(Clone, Debug, Serialize)]
pub struct Change {
    /// Its module.
    pub module: String,
    /// Its raw name.
    pub name: String,
    /// Its demangled name, when it differs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub demangled: Option<String>,
    /// Its offset in the second report (the first's when only there).
    pub offset: u64,
    /// Its source file, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Its line, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    /// Hits in the first report.
    pub hits_a: u64,
    /// Hits in the second.
    pub hits_b: u64,
    /// `hits_b - hits_a`.
    pub delta: i128,
}

/// What changed from one report to another.
#[derive(Clone, Debug, Serialize)]
pub struct Diff {
    /// The first report ("before").
    pub a: Side,
    /// The second ("after").
    pub b: Side,
    /// The numbers.
    pub totals: Totals,
    /// Hooked in both, hit only in the second: every one, most hits first.
    pub newly_hit: Vec<Change>,
    /// Hooked in both, hit only in the first: every one, most hits (before) first.
    pub no_longer_hit: Vec<Change>,
    /// Hit in both with different counts: the `top` largest changes, largest first.
    pub changed: Vec<Change>,
}

fn watched(f: &FuncReport) -> bool {
    f.skipped.is_none() && f.hooked_in.is_none()
}

fn side(path: &str, r: &Report) -> Side {
    let hooked = r.functions.iter().filter(|f| watched(f));
    Side {
        path: path.to_string(),
        build_id: r.build_id.clone(),
        generated_at: r.generated_at.clone(),
        pids: r.processes(),
        observed_from: r.observed_from.clone(),
        observed_until: r.observed_until.clone(),
        functions: hooked.clone().count(),
        hit: hooked.filter(|f| f.hits > 0).count(),
    }
}

fn change(a: &FuncReport, b: &FuncReport) -> Change {
    Change {
        module: b.module.clone(),
        name: b.name.clone(),
        demangled: b.demangled.clone(),
        offset: b.offset,
        file: b.file.clone().or_else(|| a.file.clone()),
        line: b.line.or(a.line),
        hits_a: a.hits,
        hits_b: b.hits,
        delta: i128::from(b.hits) - i128::from(a.hits),
    }
}

/// Compares `a` (read from `path_a`) with `b`: reports of different builds are refused
/// (bad input) unless `force`; `top` bounds the list of changed counts.
pub fn diff(
    (path_a, a): (&str, &Report),
    (path_b, b): (&str, &Report),
    top: usize,
    force: bool,
) -> Result<Diff> {
    let same_build = a.build_id == b.build_id;
    if !same_build && !force {
        return Err(BadInput(format!(
            "{path_a} and {path_b} are reports of different builds ({} and {}): their offsets \
             do not match; --force compares them by function name",
            display_id(&a.build_id),
            display_id(&b.build_id)
        ))
        .into());
    }
    let key = |f: &FuncReport| {
        let module = f.module_file.clone().unwrap_or_else(|| f.module.clone());
        (
            module,
            if same_build { f.offset } else { 0 },
            f.name.clone(),
        )
    };
    let mut in_a: HashMap<_, &FuncReport> = HashMap::new();
    for f in a.functions.iter().filter(|f| watched(f)) {
        in_a.entry(key(f)).or_insert(f);
    }
    let mut totals = Totals::default();
    let (mut newly_hit, mut no_longer_hit, mut changed) = (vec![], vec![], vec![]);
    let mut matched = 0;
    let mut seen_b = std::collections::HashSet::new();
    for g in b.functions.iter().filter(|f| watched(f)) {
        let k = key(g);
        if !seen_b.insert(k.clone()) {
            continue;
        }
        let Some(f) = in_a.get(&k) else {
            totals.only_in_b += 1;
            continue;
        };
        matched += 1;
        match (f.hits > 0, g.hits > 0) {
            (false, true) => newly_hit.push(change(f, g)),
            (true, false) => no_longer_hit.push(change(f, g)),
            (true, true) if f.hits != g.hits => changed.push(change(f, g)),
            _ => {}
        }
    }
    totals.in_both = matched;
    totals.only_in_a = in_a.len() - matched;
    totals.newly_hit = newly_hit.len();
    totals.no_longer_hit = no_longer_hit.len();
    totals.changed = changed.len();
    let by_name = |c: &Change| (c.module.clone(), c.name.clone());
    newly_hit.sort_by(|x, y| y.hits_b.cmp(&x.hits_b).then(by_name(x).cmp(&by_name(y))));
    no_longer_hit.sort_by(|x, y| y.hits_a.cmp(&x.hits_a).then(by_name(x).cmp(&by_name(y))));
    changed.sort_by(|x, y| {
        y.delta
            .unsigned_abs()
            .cmp(&x.delta.unsigned_abs())
            .then(by_name(x).cmp(&by_name(y)))
    });
    changed.truncate(top);
    Ok(Diff {
        a: side(path_a, a),
        b: side(path_b, b),
        totals,
        newly_hit,
        no_longer_hit,
        changed,
    })
}

fn where_(c: &Change) -> String {
    let name = c.demangled.as_deref().unwrap_or(&c.name);
    let mut s = format!("{name}  [{}]", c.module);
    if let Some(file) = &c.file {
        let _ = write!(s, "  {file}");
        if let Some(line) = c.line {
            let _ = write!(s, ":{line}");
        }
    }
    s
}

impl Diff {
    /// A readable table: the two reports, the numbers, then each list (at most `top` rows
    /// each, saying how many more there are).
    pub fn table(&self, top: usize) -> String {
        let mut t = String::new();
        for (label, s) in [("a", &self.a), ("b", &self.b)] {
            let _ = writeln!(
                t,
                "{label}: {}  build {}  pids {:?}  {} of {} functions hit  ({})",
                s.path,
                display_id(&s.build_id),
                s.pids,
                s.hit,
                s.functions,
                match (&s.observed_from, &s.observed_until) {
                    (Some(f), Some(u)) => format!("observed {f} .. {u}"),
                    _ => format!("written {}", s.generated_at),
                }
            );
        }
        let n = &self.totals;
        let _ = writeln!(
            t,
            "functions: {} in both, {} only in a, {} only in b; {} newly hit, {} no longer \
             hit, {} with other counts",
            n.in_both, n.only_in_a, n.only_in_b, n.newly_hit, n.no_longer_hit, n.changed
        );
        let mut list =
            |title: &str, rows: &[Change], total: usize, col: &dyn Fn(&Change) -> String| {
                let _ = writeln!(t, "\n{title} ({total}):");
                if rows.is_empty() {
                    let _ = writeln!(t, "  none");
                }
                for c in rows.iter().take(top) {
                    let _ = writeln!(t, "  {}  {}", col(c), where_(c));
                }
                let shown = rows.len().min(top);
                if total > shown {
                    let _ = writeln!(t, "  … and {} more", total - shown);
                }
            };
        list("newly hit", &self.newly_hit, n.newly_hit, &|c| {
            format!("{:>12} hits", c.hits_b)
        });
        list(
            "no longer hit",
            &self.no_longer_hit,
            n.no_longer_hit,
            &|c| format!("{:>12} hits before", c.hits_a),
        );
        list("counts changed most", &self.changed, n.changed, &|c| {
            format!("{:>12} -> {:<12} {:>+13}", c.hits_a, c.hits_b, c.delta)
        });
        t
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::f;
    use super::*;

    #[test]
    fn newly_hit_no_longer_hit_and_changed() {
        let a = Report::new(
            "/bin/app".into(),
            1,
            "ab".into(),
            vec![
                f("x", 0x10, 5),
                f("y", 0x20, 0),
                f("z", 0x30, 3),
                f("w", 0x40, 9),
                {
                    let mut s = f("s", 0x50, 0);
                    s.skipped = Some("too short".into());
                    s
                },
            ],
        );
        let b = Report::new(
            "/bin/app".into(),
            2,
            "ab".into(),
            vec![
                f("x", 0x10, 105),
                f("y", 0x20, 2),
                f("z", 0x30, 0),
                f("w", 0x40, 8),
                f("s", 0x50, 4),
                f("n", 0x60, 1),
            ],
        );
        let d = diff(("a", &a), ("b", &b), 1, false).unwrap();
        let names = |v: &[Change]| v.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&d.newly_hit), ["y"]);
        assert_eq!(names(&d.no_longer_hit), ["z"]);
        assert_eq!(names(&d.changed), ["x"], "top 1 of x (+100) and w (-1)");
        assert_eq!(d.changed[0].delta, 100);
        assert_eq!(
            (
                d.totals.in_both,
                d.totals.only_in_a,
                d.totals.only_in_b,
                d.totals.changed
            ),
            (4, 0, 2, 2)
        );
        let t = d.table(10);
        assert!(t.contains("newly hit (1):") && t.contains("+100"), "{t}");

        let mut other = b.clone();
        other.build_id = "cd".into();
        let e = diff(("a", &a), ("b", &other), 1, false).unwrap_err();
        assert!(
            e.is_bad_input() && e.to_string().contains("different builds"),
            "{e}"
        );
        // Across builds, by name.
        for g in &mut other.functions {
            g.offset += 0x1000;
        }
        let d = diff(("a", &a), ("b", &other), 5, true).unwrap();
        assert_eq!(names(&d.newly_hit), ["y"]);
    }
}
