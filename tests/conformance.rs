//! The bpf_conformance suite through the built `xcover vm conformance`, in both back ends.

use std::path::PathBuf;
use std::process::Command;

/// The suite's data: `$XCOVER_CONFORMANCE_DIR`, else `../shared/bpf-conformance/tests` beside
/// the checkout. Missing data fails the test: a conformance test that cannot run has not
/// passed.
fn suite_dir() -> PathBuf {
    let dir = std::env::var_os("XCOVER_CONFORMANCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/bpf-conformance/tests")
        });
    assert!(
        dir.is_dir(),
        "the bpf_conformance data is missing: {} is not a directory (set \
         XCOVER_CONFORMANCE_DIR to the suite's tests/ directory)",
        dir.display()
    );
    dir
}

fn run_suite(mode: &str) {
    let dir = suite_dir();
    let out = Command::new(env!("CARGO_BIN_EXE_xcover"))
        .args(["vm", "conformance"])
        .arg(&dir)
        .arg(mode)
        .output()
        .expect("run xcover");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or("");
    assert_eq!(
        last,
        "313 passed, 0 failed",
        "{mode}: stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{mode}: exit status {}", out.status);
}

#[test]
fn conformance_interpreter() {
    run_suite("--interp");
}

#[test]
fn conformance_jit() {
    run_suite("--jit");
}

/// The suite's tests fail, not pass, when the data is missing: this test binary, run again
/// for one of them with the data pointed at a directory that does not exist.
#[test]
fn conformance_fails_without_its_data() {
    let missing = "/nonexistent/xcover-conformance-data";
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "conformance::conformance_jit",
            "--test-threads=1",
        ])
        .env("XCOVER_CONFORMANCE_DIR", missing)
        .output()
        .expect("run the test binary");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "conformance_jit passed without its data:\n{text}"
    );
    assert!(
        text.contains("1 failed") && text.contains(missing),
        "conformance_jit did not fail on the missing data:\n{text}"
    );
}

#[test]
fn conformance_bad_directory_exits_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_xcover"))
        .args(["vm", "conformance", "/nonexistent/xcover-conformance"])
        .output()
        .expect("run xcover");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn exec_plugin_protocol() {
    use std::io::Write;
    // mov r0, r2 (the memory length); exit
    for mode in ["--interp", "--jit"] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_xcover"))
            .args(["vm", "exec", mode, "00 01 02"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run xcover");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(b"bf20000000000000 9500000000000000\n")
            .expect("write program");
        let out = child.wait_with_output().expect("wait");
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3");
    }
}
