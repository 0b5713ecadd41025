//! Per-run directories in the temporary directory, and the sweep of earlier runs'.
//!
//! Every entry a test run makes there is named `<prefix><pid>` (a directory, or a file with
//! an extension after the pid), the pid being the test process's. A run cannot clean up
//! after itself (the test harness has no hook at its end), so each sweeps its predecessors':
//! an entry whose process is gone is removed; a run still going keeps its files.

use std::path::{Path, PathBuf};

/// The prefixes of what test runs leave in the temporary directory.
pub const RUN_PREFIXES: &[&str] = &[
    "xcover-targets-",
    "xcover-faults-",
    "xcover-go-",
    "xcover-e2e-bin-",
    "xcover-e2e-",
    "xcover-interceptor-",
    "xcover-bpf-rebuild-",
    "xcover-agent-",
    "xcover-probe-",
    "xcover-ui-test-",
    "xcover-corpus-",
];

/// Removes the entries of [`RUN_PREFIXES`] whose process is gone. Once per process.
pub fn sweep_earlier_runs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(rest) = RUN_PREFIXES.iter().find_map(|p| name.strip_prefix(p)) else {
                continue;
            };
            let digits = rest.split('.').next().unwrap_or("");
            let Ok(pid) = digits.parse::<u32>() else {
                continue;
            };
            if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            let path = e.path();
            let _ = match e.file_type() {
                Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
                _ => std::fs::remove_file(&path),
            };
        }
    });
}

/// `<tmp>/<prefix><pid>`, created, after sweeping earlier runs. `prefix` is one of
/// [`RUN_PREFIXES`], so that the next run removes it.
pub fn run_dir(prefix: &str) -> PathBuf {
    assert!(
        RUN_PREFIXES.contains(&prefix),
        "{prefix} is not in RUN_PREFIXES: the next run would not sweep it"
    );
    sweep_earlier_runs();
    let dir = std::env::temp_dir().join(format!("{prefix}{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}
