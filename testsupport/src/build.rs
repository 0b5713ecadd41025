//! Targets compiled at test time: `program args… -o <out>` (a C or C++ compiler, `clang
//! -target bpf`, `rustc`), each output once per test run however many tests ask.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

use crate::tools;

/// Runs `program args… -o out` and returns `Err` with its command line and stderr when it
/// fails. A program that is not installed is a panic naming it and `scripts/setup.sh`.
pub fn try_compile(program: &str, args: &[&str], out: &Path) -> Result<(), String> {
    let res = Command::new(program)
        .args(args)
        .arg("-o")
        .arg(out)
        .stdin(Stdio::null())
        .output();
    let res = match res {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("{}", tools::missing(program, tools::package_of(program)))
        }
        Err(e) => return Err(format!("run {program}: {e}")),
    };
    if !res.status.success() {
        return Err(format!(
            "{program} {} -o {}: {}\n{}",
            args.join(" "),
            out.display(),
            res.status,
            String::from_utf8_lossy(&res.stderr)
        ));
    }
    Ok(())
}

/// [`try_compile`], panicking on failure.
pub fn compile(program: &str, args: &[&str], out: &Path) {
    if let Err(e) = try_compile(program, args, out) {
        panic!("{e}");
    }
}

/// Builds `dir/name` with [`try_compile`] once per test run, and returns its path. Different
/// outputs build in parallel; callers of the same one wait for its one build, and all of them
/// fail if it failed.
pub fn build_once(dir: &Path, name: &str, program: &str, args: &[&str]) -> PathBuf {
    type Cells = Mutex<HashMap<PathBuf, Arc<OnceLock<Result<PathBuf, String>>>>>;
    static CELLS: OnceLock<Cells> = OnceLock::new();
    let out = dir.join(name);
    let cell = CELLS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(out.clone())
        .or_default()
        .clone();
    let built = cell.get_or_init(|| try_compile(program, args, &out).map(|()| out.clone()));
    match built {
        Ok(p) => p.clone(),
        Err(e) => panic!("building {name}: {e}"),
    }
}
