//! The probes clang makes from the libbpf-style C in `tests/probes` (and the committed
//! coverage probe) pass the verifier, as xcover and the agent check them; the one that loads
//! from a wild address is rejected, naming the instruction and register.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use xcover_bpf::env::{Env, MapInfo};
use xcover_bpf::helpers::standard_helpers;
use xcover_bpf::object;
use xcover_bpf::program::Program;
use xcover_bpf::verifier::{
    Access, Reason, RegType, Stats, VerifierOptions, VerifyError, verify_stats,
};

fn probes_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/probes")
}

/// Compiles `tests/probes/<name>.bpf.c` as tests/support.rs does.
fn compile(name: &str) -> Vec<u8> {
    let src = probes_dir().join(format!("{name}.bpf.c"));
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("verifier-{name}.bpf.o"));
    let st = Command::new("clang")
        .args([
            "-O2", "-g", "-target", "bpf", "-mcpu=v3", "-Wall", "-Werror", "-c",
        ])
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .status()
        .expect("clang runs (the probes are compiled at test time)");
    assert!(st.success(), "clang failed on {}", src.display());
    std::fs::read(&out).unwrap()
}

/// Verifies as `xcover attach` does before injecting (fake map addresses, real shapes), but
/// with loops allowed (`rich` has two), and times the best of a few runs.
fn verify_probe(prog: &Program) -> (Result<Stats, VerifyError>, Duration) {
    let opts = VerifierOptions {
        allow_back_edges: true,
        ..VerifierOptions::default()
    };
    verify_probe_with(prog, &opts)
}

fn verify_probe_with(
    prog: &Program,
    opts: &VerifierOptions,
) -> (Result<Stats, VerifyError>, Duration) {
    let fake: Vec<u64> = (0..prog.maps.len() as u64)
        .map(|i| 0x1000 * (i + 1))
        .collect();
    let info = MapInfo::table_of(&prog.maps);
    let env = Env {
        helpers: standard_helpers(),
        map_addrs: &fake,
        map_value_addrs: &fake,
        maps: &info,
        ..Env::default()
    };
    let mut best = Duration::MAX;
    let mut result = None;
    for _ in 0..5 {
        let t = Instant::now();
        let r = verify_stats(&prog.insns, &env, opts);
        best = best.min(t.elapsed());
        result = Some(r);
    }
    (result.unwrap(), best)
}

#[test]
fn every_test_probe_verifies_but_the_wild_load() {
    let mut names: Vec<String> = std::fs::read_dir(probes_dir())
        .unwrap()
        .filter_map(|e| {
            let n = e.ok()?.file_name().into_string().ok()?;
            n.strip_suffix(".bpf.c").map(str::to_string)
        })
        .collect();
    names.sort();
    assert!(names.len() >= 6, "{names:?}");
    for name in &names {
        let prog = object::load_program(&compile(name), None).unwrap();
        let (r, t) = verify_probe(&prog);
        eprintln!(
            "{name}: {} insns, {:?} in {t:?}",
            prog.insns.len(),
            r.as_ref().map_err(|e| e.to_string())
        );
        if name == "bad_load" {
            let e = r.unwrap_err();
            assert!(
                matches!(
                    e.reason,
                    Reason::NotAPointer {
                        ty: RegType::Scalar,
                        access: Access::Load,
                        ..
                    }
                ),
                "{e}"
            );
            assert!(e.to_string().contains("is a scalar, not a pointer"), "{e}");
        } else {
            r.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(t < Duration::from_secs(1), "{name} took {t:?}");
        }
        if name == "rich" {
            // Probes get no loops by default (a loop on every hit costs the target).
            let (r, _) = verify_probe_with(&prog, &VerifierOptions::default());
            assert!(
                matches!(
                    r,
                    Err(VerifyError {
                        reason: Reason::BackEdge(_),
                        ..
                    })
                ),
                "{r:?}"
            );
        }
    }
}

#[test]
fn the_coverage_probe_verifies_fast() {
    let bytes = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("cover.bpf.o")).unwrap();
    let prog = object::load_program(&bytes, None).unwrap();
    let (r, t) = verify_probe(&prog);
    let stats = r.unwrap();
    eprintln!("cover: {} insns, {stats:?} in {t:?}", prog.insns.len());
    assert!(stats.processed < 10 * prog.insns.len(), "{stats:?}");
    assert!(t < Duration::from_millis(100), "{t:?}");
}
