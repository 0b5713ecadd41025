//! The typed verifier accepts every program of the bpf_conformance suite (they are the
//! kernel's kind of program), and they still give their expected results.

use std::path::PathBuf;

use xcover_bpf::conformance::{self, Backend};

fn data_dir() -> PathBuf {
    let dir = std::env::var_os("XCOVER_CONFORMANCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/bpf-conformance/tests")
        });
    assert!(
        dir.is_dir(),
        "the bpf_conformance data is missing: {} (set XCOVER_CONFORMANCE_DIR)",
        dir.display()
    );
    dir
}

#[test]
fn every_conformance_program_verifies_and_runs() {
    let dir = data_dir();
    let files = conformance::data_files(&dir).unwrap();
    assert!(
        files.len() >= 313,
        "only {} files in {}",
        files.len(),
        dir.display()
    );
    let summary = conformance::run_dir(&dir, Backend::Interp, |_, _| {}).unwrap();
    let failed: Vec<String> = summary
        .failed
        .iter()
        .map(|(p, e)| format!("{}: {e}", p.display()))
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    assert_eq!(summary.passed, files.len());
}
