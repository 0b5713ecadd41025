//! The ELF loader on real `clang -target bpf` objects: the committed coverage probe (its
//! program, its maps, that it rebuilds byte for byte) and a test object with globals,
//! bpf-to-bpf calls and several map types; both then run through the verifier, the
//! interpreter and the JIT with the standard helpers on a real arena.

use std::path::{Path, PathBuf};
use std::process::Command;

use xcover_bpf::env::{Env, MapInfo};
use xcover_bpf::helpers::standard_helpers;
use xcover_bpf::maps::{Arena, ArenaLayout, ArenaMaps};
use xcover_bpf::object::{self, ObjectError};
use xcover_bpf::program::{MapType, Program};
use xcover_bpf::{exec, interp, jit, verifier};
use xcover_session::ProbeCtx;
use xcover_session::probe::{
    COUNTS_MAP, EVENTS_MAP, FirstHit, HIT_COUNT_MAPS, PER_FUNCTION_MAPS, SEEN_MAP,
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn cover_obj() -> Vec<u8> {
    std::fs::read(root().join("bpf/cover.bpf.o")).unwrap()
}

fn globals_obj() -> Vec<u8> {
    std::fs::read(root().join("bpf/tests/object_globals.bpf.o")).unwrap()
}

/// A program's maps laid out in an 8-aligned arena owned by the struct.
struct Loaded {
    info: Vec<MapInfo>,
    _mem: Vec<u64>,
    arena: Arena,
    offsets: Vec<u64>,
    map_addrs: Vec<u64>,
    value_addrs: Vec<u64>,
}

fn instantiate(p: &Program) -> Loaded {
    let layout = ArenaLayout::new(&p.maps, 4).unwrap();
    let mut mem = vec![0u64; (layout.size() as usize).div_ceil(8)];
    let len = (mem.len() * 8) as u64;
    // SAFETY: mem is ours, aligned and large enough.
    unsafe { layout.init(mem.as_mut_ptr() as *mut u8, len) }.unwrap();
    // SAFETY: mem lives in the returned struct as long as the arena.
    let arena = unsafe { Arena::from_raw(mem.as_mut_ptr() as *mut u8, len) };
    let offsets = layout.offsets();
    let (map_addrs, value_addrs) = arena.env_addrs(&offsets).unwrap();
    Loaded {
        info: MapInfo::table_of(&p.maps),
        _mem: mem,
        arena,
        offsets,
        map_addrs,
        value_addrs,
    }
}

impl Loaded {
    fn env(&self) -> Env<'_> {
        Env {
            helpers: standard_helpers(),
            map_addrs: &self.map_addrs,
            map_value_addrs: &self.value_addrs,
            unwind_helper: None,
            map_inline: &[],
            rseq_cpu_id: None,
            tcb_tid: None,
            maps: &self.info,
            protos: &[],
        }
    }
}

/// The coverage probe reads nothing of its context but the cookie, so trampolines may take
/// the light body for it.
#[test]
fn cover_probe_reads_only_its_cookie() {
    let p = object::load_program(&cover_obj(), None).unwrap();
    let slots = xcover_bpf::ctx_use::ctx_slots_read(
        &p.insns,
        xcover_session::PROBE_CTX_COOKIE_OFF,
        xcover_session::PROBE_CTX_FUNC_IP_OFF,
    );
    assert_eq!(slots, Some(1 << (xcover_session::PROBE_CTX_COOKIE_OFF / 8)));
}

/// The built-in probe has the maps the probe contract (`xcover_session::probe`) names, of
/// the types and sizes xcover reads them with.
#[test]
fn cover_object_has_the_probe_and_its_maps() {
    let p = object::load_program(&cover_obj(), None).unwrap();
    assert_eq!(p.name, "xcover_cover");
    assert_eq!(p.maps.len(), 3);
    let counts = &p.maps[p.map_index(COUNTS_MAP).unwrap()];
    assert_eq!(
        (
            counts.map_type,
            counts.key_size,
            counts.value_size,
            counts.max_entries
        ),
        (MapType::PercpuArray, 4, 8, 65536)
    );
    assert!(HIT_COUNT_MAPS.contains(&COUNTS_MAP));
    assert_eq!(PER_FUNCTION_MAPS, [COUNTS_MAP, SEEN_MAP]);
    // seen[] holds each function's first-hit time (a u64), for the reports.
    let seen = &p.maps[p.map_index(SEEN_MAP).unwrap()];
    assert_eq!(
        (seen.map_type, seen.key_size, seen.value_size),
        (MapType::Array, 4, 8)
    );
    let events = &p.maps[p.map_index(EVENTS_MAP).unwrap()];
    assert_eq!(
        (events.map_type, events.max_entries),
        (MapType::Ringbuf, 256 * 1024)
    );
    // Both map references became `lddw src=1` with the map's index.
    let refs: Vec<(u8, i32)> = p
        .insns
        .iter()
        .filter(|i| i.op == 0x18 && i.src != 0)
        .map(|i| (i.src, i.imm))
        .collect();
    assert_eq!(
        refs,
        vec![
            (1, p.map_index(COUNTS_MAP).unwrap() as i32),
            (1, p.map_index(SEEN_MAP).unwrap() as i32),
            (1, p.map_index(EVENTS_MAP).unwrap() as i32)
        ]
    );
    assert_eq!(
        object::load_program(&cover_obj(), Some("nope")),
        Err(ObjectError::NoSuchProgram("nope".into()))
    );
}

fn producer_of(obj: &[u8]) -> Option<String> {
    let s = String::from_utf8_lossy(obj);
    let at = s.find("clang version")?;
    let start = s[..at].rfind('\0').map_or(0, |i| i + 1);
    let end = at + s[at..].find('\0')?;
    Some(s[start..end].to_string())
}

#[test]
fn committed_objects_rebuild_byte_identical() {
    let clang = xcover_testsupport::tools::require("clang", "clang");
    let out = Command::new(clang).arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    let committed = producer_of(&cover_obj()).unwrap_or_default();
    assert!(
        version.contains(committed.trim()) || committed.contains(version.trim()),
        "bpf/cover.bpf.o was built by `{committed}` but clang here is `{version}`: install \
         the clang scripts/setup.sh installs, or rebuild the objects with scripts/build-bpf.sh \
         and commit them"
    );
    let dir = xcover_testsupport::tmp::run_dir("xcover-bpf-rebuild-");
    let st = Command::new("bash")
        .arg(root().join("scripts/build-bpf.sh"))
        .arg(&dir)
        .status()
        .unwrap();
    assert!(st.success());
    let fresh = std::fs::read(dir.join("cover.bpf.o")).unwrap();
    let fresh_g = std::fs::read(dir.join("object_globals.bpf.o")).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        fresh == cover_obj(),
        "bpf/cover.bpf.o is stale: run scripts/build-bpf.sh"
    );
    assert!(
        fresh_g == globals_obj(),
        "object_globals.bpf.o is stale: run scripts/build-bpf.sh"
    );
    assert!(!String::from_utf8_lossy(&fresh).contains(root().to_str().unwrap()));
}

fn run_interp(l: &Loaded, p: &Program, ctx: &ProbeCtx) -> u64 {
    // SAFETY: the program passed the verifier (checked by callers), ctx is a ProbeCtx and
    // the maps are live in `l`.
    unsafe { interp::run(&p.insns, &l.env(), ctx as *const _ as u64, 0) }.unwrap()
}

#[test]
fn cover_probe_counts_and_reports_first_hits_in_the_interpreter() {
    let p = object::load_program(&cover_obj(), None).unwrap();
    let l = instantiate(&p);
    verifier::verify(&p.insns, &l.env(), &Default::default()).unwrap();
    let counts = l
        .arena
        .map(l.offsets[p.map_index(COUNTS_MAP).unwrap()])
        .unwrap();
    let events = l
        .arena
        .map(l.offsets[p.map_index(EVENTS_MAP).unwrap()])
        .unwrap();
    for (cookie, times) in [(7u64, 3), (0, 1), (65535, 2), (65536, 1)] {
        let ctx = ProbeCtx {
            cookie,
            ..Default::default()
        };
        for _ in 0..times {
            assert_eq!(run_interp(&l, &p, &ctx), 0);
        }
    }
    assert_eq!(counts.array_u64(7), Some(3));
    assert_eq!(counts.array_u64(0), Some(1));
    assert_eq!(counts.array_u64(65535), Some(2));
    let mut evs = Vec::new();
    events.ringbuf_consume(|r| {
        // The probe's `sizeof(struct first_hit)` is the contract's record size.
        assert_eq!(r.len(), FirstHit::SIZE);
        let e = FirstHit::from_record(r).unwrap();
        assert_eq!(e._pad, 0);
        evs.push((e.cookie, e.ts_ns, e.tid));
    });
    // SAFETY: no preconditions.
    let me = unsafe { libc::gettid() } as u32;
    assert_eq!(
        evs.iter().map(|e| e.0).collect::<Vec<_>>(),
        vec![7, 0, 65535]
    );
    assert!(evs.iter().all(|e| e.1 > 0 && e.2 == me));
    assert!(evs.windows(2).all(|w| w[0].1 <= w[1].1));
}

#[test]
fn cover_probe_runs_jitted() {
    let p = object::load_program(&cover_obj(), None).unwrap();
    let l = instantiate(&p);
    let env = l.env();
    verifier::verify(&p.insns, &env, &Default::default()).unwrap();
    let opts = jit::JitOptions {
        inline_ctx_helpers: true,
        ..jit::JitOptions::for_this_cpu()
    };
    let code = exec::JitCode::new(&jit::compile(&p.insns, &env, &opts).unwrap()).unwrap();
    let counts = l
        .arena
        .map(l.offsets[p.map_index(COUNTS_MAP).unwrap()])
        .unwrap();
    let events = l
        .arena
        .map(l.offsets[p.map_index(EVENTS_MAP).unwrap()])
        .unwrap();
    for cookie in [3u64, 3, 3, 9] {
        let ctx = ProbeCtx {
            cookie,
            ..Default::default()
        };
        // SAFETY: compiled from a verified program with this env, whose maps are live.
        assert_eq!(unsafe { code.call(&ctx as *const _ as u64, 0) }, 0);
    }
    assert_eq!(counts.array_u64(3), Some(3));
    assert_eq!(counts.array_u64(9), Some(1));
    let mut cookies = Vec::new();
    events.ringbuf_consume(|r| cookies.push(FirstHit::from_record(r).unwrap().cookie));
    assert_eq!(cookies, vec![3, 9]);
}

#[test]
fn globals_calls_and_map_types_load_and_run() {
    let progs = object::load(&globals_obj()).unwrap();
    assert_eq!(progs.len(), 1);
    let p = &progs[0];
    assert_eq!(p.name, "globals_prog");
    let names: Vec<&str> = p.maps.iter().map(|m| m.name.as_str()).collect();
    for n in ["seen", "hits", ".data", ".rodata", ".bss"] {
        assert!(names.contains(&n), "{names:?}");
    }
    let data = &p.maps[p.map_index(".data").unwrap()];
    assert_eq!(
        (data.map_type, data.value_size, data.max_entries),
        (MapType::Array, 8, 1)
    );
    assert_eq!(data.initial_data, 3u64.to_le_bytes());
    let ro = &p.maps[p.map_index(".rodata").unwrap()];
    assert_eq!(ro.initial_data, 100u64.to_le_bytes());
    assert!(p.maps[p.map_index(".bss").unwrap()].initial_data.is_empty());
    assert_eq!(p.maps[p.map_index("seen").unwrap()].map_type, MapType::Hash);
    assert_eq!(
        p.maps[p.map_index("hits").unwrap()].map_type,
        MapType::PercpuArray
    );
    // Globals are `lddw src=2`; the callee was appended and the call made pc-relative.
    assert!(p.insns.iter().any(|i| i.op == 0x18 && i.src == 2));
    assert!(
        p.insns
            .iter()
            .any(|i| i.op == 0x85 && i.src == 1 && i.imm > 0)
    );

    let l = instantiate(p);
    verifier::verify(&p.insns, &l.env(), &Default::default()).unwrap();
    for cookie in [5u64, 6, 5] {
        let ctx = ProbeCtx {
            cookie,
            ..Default::default()
        };
        assert_eq!(run_interp(&l, p, &ctx), cookie * 3 + 100);
    }
    let m = |n: &str| l.arena.map(l.offsets[p.map_index(n).unwrap()]).unwrap();
    assert_eq!(m(".bss").array_u64(0), Some(3));
    assert_eq!(m("hits").array_u64(1), Some(3));
    assert_eq!(m("seen").len(), 2);
    assert_eq!(
        m("seen").hash_get(&5u64.to_le_bytes()).unwrap(),
        115u64.to_le_bytes()
    );
    assert_eq!(
        m("seen").hash_get(&6u64.to_le_bytes()).unwrap(),
        118u64.to_le_bytes()
    );
}
