//! LCOV (`genhtml`'s input): the [`Lcov`] report format.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{FuncReport, Report, ReportFormat};

/// LCOV tracefile: `FN`/`FNDA`/`FNF`/`FNH` per source file (or per module without DWARF),
/// with line data where there are source lines.
#[derive(Debug, Clone, Copy)]
pub struct Lcov;

impl ReportFormat for Lcov {
    fn name(&self) -> &'static str {
        "lcov"
    }

    fn extension(&self) -> &'static str {
        "info"
    }

    fn write(&self, report: &Report, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        out.write_all(text(report).as_bytes())
    }
}

/// LCOV text: one record per source file when DWARF gave files, otherwise per module.
///
/// Records with source lines also carry line data: each function's entry line ran as
/// often as the function was entered (summed when several functions start on one line,
/// as macro-generated ones do). genhtml needs line data to accept a file; module records
/// have no source to show, so they carry function data only.
pub fn text(report: &Report) -> String {
    let mut by_file: BTreeMap<&str, Vec<&FuncReport>> = BTreeMap::new();
    // A skipped function was not measured: LCOV has no way to say so, and a zero would
    // read as "never called", so it is left out (the JSON keeps it, with its reason).
    for f in report.functions.iter().filter(|f| f.skipped.is_none()) {
        let key = f.file.as_deref().unwrap_or(&f.module);
        by_file.entry(key).or_default().push(f);
    }
    let mut out = String::new();
    let _ = writeln!(out, "TN:xcover");
    for (file, funcs) in by_file {
        let _ = writeln!(out, "SF:{file}");
        // LCOV names must be unique within a file; aliases were merged by discovery.
        for f in &funcs {
            let _ = writeln!(out, "FN:{},{}", f.line.unwrap_or(0), lcov_name(f));
        }
        for f in &funcs {
            let _ = writeln!(out, "FNDA:{},{}", f.hits, lcov_name(f));
        }
        let _ = writeln!(out, "FNF:{}", funcs.len());
        let _ = writeln!(out, "FNH:{}", funcs.iter().filter(|f| f.hit).count());
        let mut lines: BTreeMap<u32, u64> = BTreeMap::new();
        for f in funcs.iter().filter(|f| f.file.is_some()) {
            if let Some(l) = f.line.filter(|&l| l > 0) {
                *lines.entry(l).or_default() += f.hits;
            }
        }
        if !lines.is_empty() {
            for (l, n) in &lines {
                let _ = writeln!(out, "DA:{l},{n}");
            }
            let _ = writeln!(out, "LF:{}", lines.len());
            let _ = writeln!(out, "LH:{}", lines.values().filter(|&&n| n > 0).count());
        }
        let _ = writeln!(out, "end_of_record");
    }
    out
}

fn lcov_name(f: &FuncReport) -> String {
    // LCOV separates fields with commas; demangled C++ names contain them.
    f.demangled.as_deref().unwrap_or(&f.name).replace(',', ";")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lcov_records() {
        let mut a = super::super::tests::f("_Z3fooii", 0x10, 7);
        a.demangled = Some("foo(int, int)".into());
        a.file = Some("/src/a.c".into());
        a.line = Some(12);
        let r = Report::new(
            "/bin/app".into(),
            1,
            String::new(),
            vec![a, super::super::tests::f("bar", 0x20, 0)],
        );
        let l = text(&r);
        assert!(l.contains(
            "SF:/src/a.c\nFN:12,foo(int; int)\nFNDA:7,foo(int; int)\nFNF:1\nFNH:1\nDA:12,7\nLF:1\nLH:1\nend_of_record\n"
        ));
        assert!(l.contains("SF:app\nFN:0,bar\nFNDA:0,bar\nFNF:1\nFNH:0\nend_of_record\n"));
    }
}
