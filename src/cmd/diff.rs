//! `xcover diff`.

use std::process::ExitCode;

use anyhow::Result;
use xcover::report::{self, Report};

use crate::cli::DiffArgs;

/// `xcover diff`: the table on stdout; the JSON where `--json` says (stdout for `-`,
/// instead of the table).
pub fn run(a: DiffArgs) -> Result<ExitCode> {
    let to_stdout = a.json.as_deref() == Some(std::path::Path::new("-"));
    if let Some(p) = a.json.as_deref().filter(|_| !to_stdout) {
        report::check_writable(p)?;
    }
    let ra = Report::read_json(&a.a)?;
    let rb = Report::read_json(&a.b)?;
    let (pa, pb) = (a.a.display().to_string(), a.b.display().to_string());
    let d = report::diff::diff((&pa, &ra), (&pb, &rb), a.top, a.force)?;
    let mut json = serde_json::to_vec_pretty(&d)?;
    json.push(b'\n');
    match &a.json {
        Some(_) if to_stdout => {
            std::io::Write::write_all(&mut std::io::stdout().lock(), &json)?;
        }
        Some(p) => {
            report::write_file(p, &json)?;
            print!("{}", d.table(a.top));
        }
        None => print!("{}", d.table(a.top)),
    }
    Ok(ExitCode::SUCCESS)
}
