//! Benchmarks of the probe's hot path: the CPU-id methods per-CPU maps can use, map
//! operations through the helper ABI, ring-buffer reserve/submit, and the committed coverage
//! probe run by the JIT (a seen function, and a first hit that emits an event) and by the
//! interpreter.
//!
//! `cargo bench -p xcover-bpf --bench probe`

// criterion_group! generates an undocumented function.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use xcover_bpf::env::Env;
use xcover_bpf::helpers::{self, standard_helpers};
use xcover_bpf::maps::{Arena, ArenaLayout, ArenaMaps};
use xcover_bpf::program::{MapDef, MapType};
use xcover_bpf::{exec, interp, jit, object, verifier};
use xcover_rt as sys;
use xcover_session::ProbeCtx;

/// Calls a helper. Every call site passes live maps of a bench arena (which outlives the
/// benchmark) and keys, values and records of the map's sizes.
fn call(f: xcover_bpf::env::HelperFn, a: u64, b: u64, c: u64, d: u64) -> u64 {
    // SAFETY: see above: the arguments satisfy the helper's contract.
    unsafe { f(a, b, c, d, 0) }
}

struct Mem {
    _buf: Vec<u64>,
    arena: Arena,
    offsets: Vec<u64>,
}

fn arena(defs: &[MapDef]) -> Mem {
    let ncpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let layout = ArenaLayout::new(defs, ncpus).unwrap();
    let mut buf = vec![0u64; (layout.size() as usize).div_ceil(8)];
    let len = (buf.len() * 8) as u64;
    // SAFETY: buf is ours, aligned and large enough.
    unsafe { layout.init(buf.as_mut_ptr() as *mut u8, len) }.unwrap();
    // SAFETY: buf lives in the returned struct.
    let arena = unsafe { Arena::from_raw(buf.as_mut_ptr() as *mut u8, len) };
    Mem {
        _buf: buf,
        arena,
        offsets: layout.offsets(),
    }
}

fn cpu_id(c: &mut Criterion) {
    let mut g = c.benchmark_group("cpu_id");
    eprintln!("cpu_id method in use: {:?}", sys::cpu_id_method());
    if sys::cpu_id_method() == sys::CpuIdMethod::Rdpid {
        // SAFETY: CPUID reported rdpid.
        // SAFETY: CPUID reported rdpid.
        g.bench_function("rdpid", |b| b.iter(|| black_box(unsafe { sys::rdpid() })));
    }
    if sys::cpu_id_method() != sys::CpuIdMethod::Syscall {
        // SAFETY: rdpid implies rdtscp on every x86-64 CPU we run on; the method says one of
        // them exists and rdtscp predates rdpid.
        g.bench_function("rdtscp", |b| {
            // SAFETY: as above.
            b.iter(|| black_box(unsafe { sys::rdtscp_aux() }))
        });
    }
    g.bench_function("getcpu_syscall", |b| {
        b.iter(|| black_box(sys::getcpu_syscall()))
    });
    g.bench_function("cpu_id", |b| b.iter(|| black_box(sys::cpu_id())));
    g.finish();
}

fn map_ops(c: &mut Criterion) {
    let m = arena(&[
        MapDef::new("a", MapType::Array, 4, 8, 1024),
        MapDef::new("p", MapType::PercpuArray, 4, 8, 1024),
        MapDef::new("h", MapType::Hash, 8, 8, 1024),
        MapDef::new("rb", MapType::Ringbuf, 0, 0, 1 << 16),
    ]);
    let addr = |i: usize| m.arena.map(m.offsets[i]).unwrap().ptr().addr();
    let (a, p, h, rb) = (addr(0), addr(1), addr(2), addr(3));
    for k in 0..512u64 {
        call(
            helpers::map_update_elem,
            h,
            &k as *const _ as u64,
            &k as *const _ as u64,
            0,
        );
    }
    let mut g = c.benchmark_group("maps");
    let k = 77u32;
    let kp = &k as *const u32 as u64;
    g.bench_function("array_lookup", |b| {
        b.iter(|| call(helpers::map_lookup_elem, black_box(a), kp, 0, 0))
    });
    g.bench_function("percpu_array_lookup", |b| {
        b.iter(|| call(helpers::map_lookup_elem, black_box(p), kp, 0, 0))
    });
    let hk = 300u64;
    let hkp = &hk as *const u64 as u64;
    g.bench_function("hash_lookup", |b| {
        b.iter(|| call(helpers::map_lookup_elem, black_box(h), hkp, 0, 0))
    });
    g.bench_function("hash_update_existing", |b| {
        b.iter(|| call(helpers::map_update_elem, black_box(h), hkp, hkp, 0))
    });
    let rbv = m.arena.map(m.offsets[3]).unwrap();
    g.bench_function("ringbuf_reserve_submit_24B", |b| {
        b.iter(|| {
            let mut r = call(helpers::ringbuf_reserve, rb, 24, 0, 0);
            if r == 0 {
                rbv.ringbuf_consume(|x| {
                    black_box(x);
                });
                r = call(helpers::ringbuf_reserve, rb, 24, 0, 0);
            }
            call(helpers::ringbuf_submit, r, 0, 0, 0)
        })
    });
    g.bench_function("ktime_get_ns", |b| {
        b.iter(|| call(helpers::ktime_get_ns, 0, 0, 0, 0))
    });
    g.bench_function("get_current_pid_tgid", |b| {
        b.iter(|| call(helpers::get_current_pid_tgid, 0, 0, 0, 0))
    });
    g.finish();
}

fn cover_probe(c: &mut Criterion) {
    let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/cover.bpf.o")).unwrap();
    let prog = object::load_program(&bytes, None).unwrap();
    let m = arena(&prog.maps);
    let (addrs, vals) = m.arena.env_addrs(&m.offsets).unwrap();
    let env = Env {
        helpers: standard_helpers(),
        map_addrs: &addrs,
        map_value_addrs: &vals,
        maps: &xcover_bpf::env::MapInfo::table_of(&prog.maps),
        ..Env::default()
    };
    verifier::verify(&prog.insns, &env, &Default::default()).unwrap();
    let opts = jit::JitOptions {
        inline_ctx_helpers: true,
        preserve_vector_regs: false,
        ..jit::JitOptions::for_this_cpu()
    };
    let code = exec::JitCode::new(&jit::compile(&prog.insns, &env, &opts).unwrap()).unwrap();
    let counts = m
        .arena
        .map(m.offsets[prog.map_index("counts").unwrap()])
        .unwrap();
    let events = m
        .arena
        .map(m.offsets[prog.map_index("events").unwrap()])
        .unwrap();
    let seen = ProbeCtx {
        cookie: 5,
        ..Default::default()
    };
    let seen_p = &seen as *const ProbeCtx as u64;
    let mut g = c.benchmark_group("cover_probe");
    g.bench_function("jit_hit", |b| {
        // SAFETY: JIT code from a verified program with this env, whose maps and helpers
        // outlive the calls; the ctx is a ProbeCtx.
        b.iter(|| unsafe { code.call(black_box(seen_p), 0) })
    });
    // First hit: reset the function's `seen` flag (a plain store through the map) each
    // time, so every call takes the event path; drain the ring when it fills.
    let first = ProbeCtx {
        cookie: 6,
        ..Default::default()
    };
    let first_p = &first as *const ProbeCtx as u64;
    let k = 6u32;
    let seen_map = prog.map_index("seen").unwrap();
    let slot = call(
        helpers::map_lookup_elem,
        addrs[seen_map],
        &k as *const u32 as u64,
        0,
        0,
    );
    assert_ne!(slot, 0);
    let mut n = 0u32;
    g.bench_function("jit_first_hit", |b| {
        // SAFETY: slot is seen[6] (4 bytes, live); the call is as in jit_hit.
        b.iter(|| unsafe {
            (slot as *mut u32).write_volatile(0);
            n += 1;
            if n.is_multiple_of(4096) {
                events.ringbuf_consume(|x| {
                    black_box(x);
                });
            }
            code.call(black_box(first_p), 0)
        })
    });
    g.bench_function("interp_hit", |b| {
        // SAFETY: a verified program, live maps, a ProbeCtx.
        b.iter(|| unsafe { interp::run(&prog.insns, &env, black_box(seen_p), 0) })
    });
    g.finish();
    black_box(counts.array_u64(5));
}

criterion_group!(benches, cpu_id, map_ops, cover_probe);
criterion_main!(benches);
