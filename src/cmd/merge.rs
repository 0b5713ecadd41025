//! `xcover merge`.

use std::process::ExitCode;

use anyhow::Result;
use xcover::report;

use crate::cli::MergeArgs;

/// `xcover merge`: sums reports of one build; the JSON goes to `-o`/`--report`, else to
/// stdout.
pub fn run(a: MergeArgs) -> Result<ExitCode> {
    let mut out = a.out.clone();
    if a.output.is_some() {
        out.report = a.output.clone();
    }
    let outputs = out.outputs();
    outputs.check()?;
    let merged = report::merge_files(&a.reports)?;
    if outputs.path_of(report::JSON.name()).is_none() {
        let mut stdout = std::io::stdout().lock();
        report::JSON.write(&merged, &mut stdout)?;
    }
    outputs.write(&merged, &mut |_| {})?;
    eprintln!(
        "merged {} reports of {} process(es): {} of {} functions hit ({:.1}%)",
        a.reports.len(),
        merged.pids.len(),
        merged.funcs_ack.len(),
        merged.funcs_traced.len(),
        merged.cov_by_func
    );
    Ok(ExitCode::SUCCESS)
}
