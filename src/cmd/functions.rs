//! `xcover functions`.

use std::process::ExitCode;

use anyhow::Result;
use xcover::{discover, report};

use crate::cli::FunctionsArgs;

/// `xcover functions <pid>`: prints what `attach` would hook, and writes it as a report
/// with no hits when asked.
pub fn run(a: FunctionsArgs) -> Result<ExitCode> {
    let opts = a.select.options()?;
    let mut outputs = a.output.outputs();
    outputs.set_debug_dirs(a.select.debug_dirs.clone());
    outputs.check()?;
    let d = discover::functions(a.pid, &opts)?;
    for n in discover::stripped_warnings(a.pid, &d) {
        super::note(n);
    }
    let mut out = String::new();
    for f in &d.functions {
        let module = if d.modules.len() > 1 {
            format!("{}!", d.modules[f.module].name())
        } else {
            String::new()
        };
        // A function other code enters inside its first bytes cannot take every patch.
        let entered = f
            .entered
            .as_ref()
            .map(|e| format!("  (entered at +{} from {})", e.at, e.from))
            .unwrap_or_default();
        let red_zone = f
            .skip_reason()
            .map(|why| format!("  (not hooked: {why})"))
            .unwrap_or_default();
        out.push_str(&format!(
            "{:#014x} {:6} {:8} {module}{}{entered}{red_zone}\n",
            f.addr,
            f.size,
            f.source.name(),
            f.demangled.as_deref().unwrap_or(&f.name)
        ));
    }
    print!("{out}");
    if !outputs.is_empty() {
        let r = report::from_discovery(&d, &[], a.pid.into());
        outputs.write(&r, &mut |_| {})?;
    }
    let mut by_source: Vec<(discover::Source, usize)> = Vec::new();
    for f in &d.functions {
        match by_source.iter_mut().find(|(s, _)| *s == f.source) {
            Some((_, n)) => *n += 1,
            None => by_source.push((f.source, 1)),
        }
    }
    by_source.sort_by_key(|&(s, _)| s.code());
    let sources: Vec<String> = by_source.iter().map(|(s, n)| format!("{n} {s}")).collect();
    eprintln!(
        "{} functions in {} module(s) of pid {} ({})",
        d.functions.len(),
        d.modules.len(),
        a.pid,
        sources.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}
