//! The bpf_conformance suite through the built `xcover vm conformance`, in both back ends.

use std::path::PathBuf;
use std::process::Command;

fn suite_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/bpf-conformance/tests");
    if dir.is_dir() {
        Some(dir)
    } else {
        println!("note: {} does not exist; skipping", dir.display());
        None
    }
}

fn run_suite(mode: &str) {
    let Some(dir) = suite_dir() else { return };
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
