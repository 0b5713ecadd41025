//! `xcover reach`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use xcover::BadInput;
use xcover::report::{self, Report, reach};

use crate::cli::ReachArgs;

/// `xcover reach`: the table on stdout (or the JSON with `--json -`), the JSON and the
/// OpenVEX document where asked.
pub fn run(a: ReachArgs) -> Result<ExitCode> {
    let json_stdout = a.json.as_deref() == Some(Path::new("-"));
    for p in [
        a.openvex.as_deref(),
        a.json.as_deref().filter(|_| !json_stdout),
    ]
    .into_iter()
    .flatten()
    {
        report::check_writable(p)?;
    }
    let r = Report::read_json(&a.report)?;
    let text = std::fs::read_to_string(&a.functions)
        .map_err(|e| BadInput(format!("{}: {e}", a.functions.display())))?;
    let wanted = reach::parse_functions(
        &text,
        &a.functions.display().to_string(),
        a.vulnerability.as_deref(),
    )?;
    let findings = reach::reach(&r, &wanted);
    if let Some(p) = &a.openvex {
        let doc = reach::openvex(&r, &findings, &a.author, &report::now_rfc3339())?;
        let mut bytes = serde_json::to_vec_pretty(&doc)?;
        bytes.push(b'\n');
        report::write_file(p, &bytes)?;
        eprintln!("xcover: wrote {}", p.display());
    }
    let doc = serde_json::json!({
        "report": a.report.display().to_string(),
        "build_id": r.build_id,
        "observed_from": r.observed_from,
        "observed_until": r.observed_until,
        "sessions": r.sessions,
        "functions": findings,
    });
    let mut bytes = serde_json::to_vec_pretty(&doc)?;
    bytes.push(b'\n');
    match &a.json {
        Some(_) if json_stdout => std::io::Write::write_all(&mut std::io::stdout().lock(), &bytes)?,
        Some(p) => {
            report::write_file(p, &bytes)?;
            print!("{}", reach::table(&r, &findings));
        }
        None => print!("{}", reach::table(&r, &findings)),
    }
    Ok(ExitCode::SUCCESS)
}
