//! `xcover symbolize`.

use std::process::ExitCode;

use anyhow::Result;
use xcover::report::{self, Report};
use xcover::symbolize::{DebugInfo, symbolize};

use crate::cli::SymbolizeArgs;

/// `xcover symbolize <report.json> --debug-file F | --debug-dir D [-o out]`: the report with
/// its functions named from the debug file, to `-o` or stdout.
pub fn run(a: SymbolizeArgs) -> Result<ExitCode> {
    if let Some(out) = &a.output {
        report::check_writable(out)?;
    }
    let r = Report::read_json(&a.report)?;
    let debug = match a.debug_file {
        Some(f) => DebugInfo::File(f),
        None => DebugInfo::Dirs(a.debug_dirs),
    };
    let s = symbolize(&r, &debug)?;
    match &a.output {
        Some(out) => report::JSON.write_to(&s.report, out)?,
        None => report::JSON.write(&s.report, &mut std::io::stdout().lock())?,
    }
    eprintln!(
        "named {} of {} functions of {} from {}",
        s.named,
        s.functions,
        s.report.exe_path,
        s.debug_file.display()
    );
    Ok(ExitCode::SUCCESS)
}
