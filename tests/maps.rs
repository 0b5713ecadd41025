//! The coverage probe and its maps across processes, the way a session uses them: this
//! process creates the arena in a `/dev/shm` file from the committed `cover.bpf.o`, a child
//! process (this test binary, re-run) maps it at its own address, JIT-compiles the probe and
//! runs it, and this process reads per-function counts and first-hit events.

use std::process::Command;

use xcover_bpf::env::Env;
use xcover_bpf::helpers::standard_helpers;
use xcover_bpf::maps::{Arena, ArenaLayout, ArenaMaps};
use xcover_bpf::{exec, jit, object, verifier};

const FUNCS: u64 = 100;

fn probe() -> xcover_bpf::program::Program {
    let obj = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/bpf/cover.bpf.o")).unwrap();
    object::load_program(&obj, None).unwrap()
}

fn map_file(path: &str, len: usize) -> *mut u8 {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    // SAFETY: a fresh shared mapping of a file we opened; checked below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&f),
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    p as *mut u8
}

/// Child side: runs the JIT-ed probe `i + 1` times for function `i`. Ignored in a normal
/// run (it has nothing to do there); its parent runs it with `--ignored`.
#[test]
#[ignore = "the child side of probe_counts_and_first_hits_cross_process, run by it"]
fn maps_child_runs_probe() {
    let path = std::env::var("XCOVER_TEST_ARENA").expect("XCOVER_TEST_ARENA: run by its parent");
    let len: usize = std::env::var("XCOVER_TEST_ARENA_LEN")
        .unwrap()
        .parse()
        .unwrap();
    let prog = probe();
    let layout = ArenaLayout::new(&prog.maps, 1).unwrap();
    // SAFETY: the parent keeps the file alive until we exit; we never unmap.
    let arena = unsafe { Arena::from_raw(map_file(&path, len), len as u64) };
    let (addrs, vals) = arena.env_addrs(&layout.offsets()).unwrap();
    let env = Env {
        helpers: standard_helpers(),
        map_addrs: &addrs,
        map_value_addrs: &vals,
        maps: &xcover_bpf::env::MapInfo::table_of(&prog.maps),
        ..Env::default()
    };
    verifier::verify(&prog.insns, &env, &Default::default()).unwrap();
    let code = jit::compile(&prog.insns, &env, &jit::JitOptions::for_this_cpu()).unwrap();
    let code = exec::JitCode::new(&code).unwrap();
    for f in 0..FUNCS {
        let ctx = xcover_session::ProbeCtx {
            cookie: f,
            ..Default::default()
        };
        for _ in 0..=f {
            // SAFETY: verified program, live maps, a ProbeCtx.
            assert_eq!(unsafe { code.call(&ctx as *const _ as u64, 0) }, 0);
        }
    }
}

#[test]
fn probe_counts_and_first_hits_cross_process() {
    let prog = probe();
    let layout = ArenaLayout::new(&prog.maps, 1).unwrap();
    let len = layout.size() as usize;
    let path = format!("/dev/shm/xcover-test-probe-{}", std::process::id());
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(len as u64).unwrap();
    let base = map_file(&path, len);
    // SAFETY: the mapping is ours and the child has not started.
    unsafe { layout.init(base, len as u64) }.unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "maps::maps_child_runs_probe",
            "--ignored",
            "--test-threads=1",
        ])
        .env("XCOVER_TEST_ARENA", &path)
        .env("XCOVER_TEST_ARENA_LEN", len.to_string())
        .output()
        .unwrap();
    std::fs::remove_file(&path).ok();
    assert!(out.status.success(), "{out:?}");
    // SAFETY: still mapped (unlinking keeps the mapping); not unmapped before the end.
    let arena = unsafe { Arena::from_raw(base, len as u64) };
    let offs = layout.offsets();
    let counts = arena.map(offs[prog.map_index("counts").unwrap()]).unwrap();
    let events = arena.map(offs[prog.map_index("events").unwrap()]).unwrap();
    for f in 0..FUNCS {
        assert_eq!(counts.array_u64(f as u32), Some(f + 1));
    }
    assert_eq!(counts.array_u64(FUNCS as u32), Some(0));
    let mut firsts = Vec::new();
    events.ringbuf_consume(|r| firsts.push(u64::from_le_bytes(r[..8].try_into().unwrap())));
    assert_eq!(firsts, (0..FUNCS).collect::<Vec<_>>());
    assert_eq!(events.dropped(), 0);
    // SAFETY: our own mapping, no longer used.
    unsafe { libc::munmap(base as *mut _, len) };
}
