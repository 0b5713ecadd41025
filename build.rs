//! Build script: builds the agent (`agent/`) and embeds it in the `xcover` binary.
//!
//! The agent is a `no_std` `cdylib` that must be built with `panic = "abort"` and its own
//! link flags, which a workspace member cannot have under `cargo test`; so it has its own
//! workspace and is built here with a nested `cargo build --release`. Its target directory
//! is `<target>/agent` (derived from `OUT_DIR`), shared by debug and release builds of
//! xcover. The `.so` is copied to `OUT_DIR/xcover_agent.so`, which the library embeds with
//! `include_bytes!` (`src/control.rs`): `cargo install --path .` gives one self-contained
//! binary, and the agent's bytes go from that binary straight into the target's memory.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());

    for p in [
        "agent/src",
        "agent/Cargo.toml",
        "agent/Cargo.lock",
        "agent/build.rs",
        "interceptor/src",
        "interceptor/Cargo.toml",
        "x86/src",
        "x86/Cargo.toml",
        "rt/src",
        "rt/Cargo.toml",
        "session/src",
        "session/Cargo.toml",
        "bpf/src",
        "bpf/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={p}");
    }

    // OUT_DIR is <target>[/<triple>]/<profile>/build/xcover-<hash>/out.
    let target_dir = out
        .ancestors()
        .nth(4)
        .map(|t| t.join("agent"))
        .unwrap_or_else(|| out.join("agent"));

    let mut cmd = Command::new(&cargo);
    cmd.args(["build", "--release", "--manifest-path"])
        .arg(root.join("agent/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(root.join("agent"));
    // Nothing of the outer build may leak into the nested one: its flags, its target dir,
    // its jobserver, its wrappers (clippy-driver under `cargo clippy`).
    for (k, _) in env::vars_os() {
        let Some(k) = k.to_str() else { continue };
        let keep = k == "CARGO_HOME"
            || k.starts_with("CARGO_NET_")
            || k.starts_with("CARGO_HTTP_")
            || k.starts_with("CARGO_REGISTR")
            || k.starts_with("CARGO_SOURCE_");
        let leak = (k.starts_with("CARGO_") && !keep)
            || matches!(
                k,
                "RUSTFLAGS"
                    | "RUSTDOCFLAGS"
                    | "RUSTC_WRAPPER"
                    | "RUSTC_WORKSPACE_WRAPPER"
                    | "CLIPPY_ARGS"
                    | "CLIPPY_CONF_DIR"
                    | "MAKEFLAGS"
                    | "MFLAGS"
                    | "OUT_DIR"
                    | "TARGET"
                    | "HOST"
                    | "PROFILE"
                    | "OPT_LEVEL"
                    | "DEBUG"
                    | "NUM_JOBS"
                    | "RUSTC_LINKER"
            );
        if leak {
            cmd.env_remove(k);
        }
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cargo} to build the agent: {e}"));
    assert!(status.success(), "building agent failed ({status})");

    let so = target_dir.join("release/libxcover_agent.so");
    copy(&so, &out.join("xcover_agent.so"));

    build_demo(&root, &out);
}

/// Compiles the demo target (`src/demo/target.c`) with the C compiler Rust links with, so
/// `xcover demo` needs nothing installed at run time. Built with `-g` so its report has
/// source lines.
fn build_demo(root: &Path, out: &Path) {
    println!("cargo:rerun-if-changed=src/demo/target.c");
    println!("cargo:rerun-if-env-changed=CC");
    let cc = env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args(["-O2", "-g", "-fno-omit-frame-pointer", "-o"])
        .arg(out.join("xcover_demo"))
        .arg(root.join("src/demo/target.c"))
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cc} to build the demo target: {e}"));
    assert!(
        status.success(),
        "building the demo target failed ({status})"
    );
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
}
