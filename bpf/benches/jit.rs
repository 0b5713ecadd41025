//! The JIT-ed coverage probe's hit path (a function already seen): one run per iteration,
//! with `bpf_map_lookup_elem` inlined and through the helper. And its first-hit path (the
//! `seen` flag is cleared before every run), with vector registers preserved: the test
//! probe (one `bpf_ringbuf_output`) and the C probe's shape (`bpf/cover.bpf.c`: reserve,
//! `ktime_get_coarse_ns`, `get_current_pid_tgid`, submit).
//!
//! Each also as the agent compiles it in a glibc target (`_rseq`, `_glibc`: the CPU from the
//! thread's rseq area, the tid from its TCB).
//!
//! `cargo bench -p xcover-bpf --bench jit`

// criterion_group! generates an undocumented function.
#![allow(missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use xcover_bpf::env::{Env, InlineMap};
use xcover_bpf::exec::JitCode;
use xcover_bpf::helpers::standard_helpers;
use xcover_bpf::insn::{Insn, PSEUDO_MAP_FD};
use xcover_bpf::jit::{self, JitOptions};
use xcover_bpf::maps::{Arena, ArenaLayout, ArenaMaps};
use xcover_bpf::program::{MapDef, MapType};
use xcover_bpf::verifier::{VerifierOptions, verify};

/// The coverage probe (maps: 0 hits PERCPU_ARRAY, 1 seen ARRAY, 2 events RINGBUF); `lddw`
/// markers `0x7700 + n` become map `n`.
const PROBE: &str = "
    call 174
    stxw [%r10-4], %r0
    lddw %r1, 0x7700
    mov %r2, %r10
    add %r2, -4
    call 1
    jeq %r0, 0, +3
    ldxdw %r1, [%r0]
    add %r1, 1
    stxdw [%r0], %r1
    lddw %r1, 0x7701
    mov %r2, %r10
    add %r2, -4
    call 1
    jeq %r0, 0, out
    ldxw %r1, [%r0]
    jne %r1, 0, out
    mov %r3, %r0
    mov %r0, 0
    mov %r1, 1
    lock cmpxchg32 [%r3], %r1
    jne %r0, 0, out
    ldxw %r1, [%r10-4]
    stxdw [%r10-16], %r1
    lddw %r1, 0x7702
    mov %r2, %r10
    add %r2, -16
    mov %r3, 8
    mov %r4, 0
    call 130
out:
    mov %r0, 0
    exit
";

/// `bpf/cover.bpf.c`'s first-hit path: four helper calls.
const C_PROBE: &str = "
    call 174
    stxw [%r10-4], %r0
    lddw %r1, 0x7700
    mov %r2, %r10
    add %r2, -4
    call 1
    jeq %r0, 0, out
    ldxdw %r1, [%r0]
    add %r1, 1
    stxdw [%r0], %r1
    lddw %r1, 0x7701
    mov %r2, %r10
    add %r2, -4
    call 1
    jeq %r0, 0, out
    ldxw %r1, [%r0]
    jne %r1, 0, out
    mov %r3, %r0
    mov %r0, 0
    mov %r1, 1
    lock cmpxchg32 [%r3], %r1
    jne %r0, 0, out
    lddw %r1, 0x7702
    mov %r2, 24
    mov %r3, 0
    call 131
    jeq %r0, 0, out
    mov %r6, %r0
    ldxw %r1, [%r10-4]
    stxdw [%r6], %r1
    call 160
    stxdw [%r6+8], %r0
    call 14
    stxw [%r6+16], %r0
    stw [%r6+20], 0
    mov %r1, %r6
    mov %r2, 0
    call 132
out:
    mov %r0, 0
    exit
";

fn program() -> Vec<Insn> {
    assemble(PROBE)
}

fn assemble(text: &str) -> Vec<Insn> {
    let mut p = xcover_bpf::asm::assemble(text).expect("probe assembles");
    for i in p.iter_mut() {
        if i.is_lddw() && (0x7700..0x7703).contains(&i.imm) {
            i.src = PSEUDO_MAP_FD;
            i.imm -= 0x7700;
        }
    }
    p
}

fn bench(c: &mut Criterion) {
    let ncpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let defs = [
        MapDef::new("hits", MapType::PercpuArray, 4, 8, 1024),
        MapDef::new("seen", MapType::Array, 4, 4, 1024),
        MapDef::new("events", MapType::Ringbuf, 0, 0, 1 << 16),
    ];
    let layout = ArenaLayout::new(&defs, ncpus).expect("layout");
    let info = xcover_bpf::env::MapInfo::table_of(&defs);
    let mut mem = vec![0u64; (layout.size() as usize).div_ceil(8)];
    // SAFETY: mem is ours, 8-aligned and large enough.
    unsafe { layout.init(mem.as_mut_ptr() as *mut u8, (mem.len() * 8) as u64) }.expect("init");
    // SAFETY: mem outlives the arena and every run below.
    let arena = unsafe { Arena::from_raw(mem.as_mut_ptr() as *mut u8, (mem.len() * 8) as u64) };
    let (addrs, values) = arena.env_addrs(&layout.offsets()).expect("addrs");
    // SAFETY: the headers were just written and stay mapped in `mem`.
    let inline = unsafe { InlineMap::table(&addrs) };
    let p = program();
    let opts = JitOptions {
        preserve_vector_regs: true,
        inline_ctx_helpers: true,
        ..JitOptions::for_this_cpu()
    };
    let ctx = xcover_session::ProbeCtx {
        cookie: 17,
        ..Default::default()
    };
    let ctx_addr = &ctx as *const _ as u64;
    let rseq = glibc_rseq_cpu_id();
    let mut g = c.benchmark_group("coverage_probe_hit");
    for (name, table, rseq_cpu_id) in [
        ("inline", &inline[..], None),
        ("inline_rseq", &inline[..], rseq),
        ("helper", &[][..], None),
    ] {
        if name == "inline_rseq" && rseq.is_none() {
            continue;
        }
        let env = Env {
            helpers: standard_helpers(),
            map_addrs: &addrs,
            map_value_addrs: &values,
            unwind_helper: None,
            map_inline: table,
            rseq_cpu_id,
            tcb_tid: None,
            maps: &info,
            protos: &[],
        };
        verify(&p, &env, &VerifierOptions::default()).expect("verifies");
        let code = JitCode::new(&jit::compile(&p, &env, &opts).expect("jit")).expect("map");
        // The first run takes the miss path (claims `seen`, sends the event); every
        // measured run is a hit.
        // SAFETY: verified program; ctx and the arena outlive the runs.
        unsafe { code.call(ctx_addr, 0) };
        g.bench_function(name, |b| {
            // SAFETY: as above.
            b.iter(|| unsafe { code.call(black_box(ctx_addr), 0) })
        });
    }
    g.finish();
    let hits = arena.map(layout.offsets()[0]).expect("hits").array_u64(17);
    assert!(hits.is_some_and(|h| h > 1));

    // First hits: clear `seen[17]` before every run; drain the ring buffer between
    // batches (outside the timing) so every reservation succeeds.
    let env = Env {
        helpers: standard_helpers(),
        map_addrs: &addrs,
        map_value_addrs: &values,
        unwind_helper: None,
        map_inline: &inline,
        rseq_cpu_id: None,
        tcb_tid: None,
        maps: &info,
        protos: &[],
    };
    // As the agent compiles it in a glibc target: CPU from rseq, tid from the TCB.
    let glibc_env = Env {
        rseq_cpu_id: rseq,
        tcb_tid: Some(xcover_session::GLIBC_TCB_TID_OFF as i32),
        ..env
    };
    let seen_map = inline[1].expect("seen inlines");
    let seen = (seen_map.values_addr + 17 * seen_map.value_stride as u64) as *mut u32;
    let events = arena.map(layout.offsets()[2]).expect("events");
    let mut g = c.benchmark_group("coverage_probe_first_hit");
    for (name, text, env) in [
        ("output", PROBE, &env),
        ("reserve_submit", C_PROBE, &env),
        ("reserve_submit_glibc", C_PROBE, &glibc_env),
    ] {
        let p = assemble(text);
        verify(&p, env, &VerifierOptions::default()).expect("verifies");
        let code = JitCode::new(&jit::compile(&p, env, &opts).expect("jit")).expect("map");
        events.ringbuf_consume(|_| {});
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = std::time::Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(1000);
                    let t = std::time::Instant::now();
                    for _ in 0..n {
                        // SAFETY: `seen` is a live, aligned value of the arena; the program
                        // is verified and ctx and the arena outlive the run.
                        unsafe {
                            seen.write_volatile(0);
                            code.call(black_box(ctx_addr), 0);
                        }
                    }
                    total += t.elapsed();
                    let mut got = 0;
                    events.ringbuf_consume(|_| got += 1);
                    assert_eq!(got, n, "one event per run");
                    left -= n;
                }
                total
            })
        });
    }
    g.finish();
}

/// glibc's rseq `cpu_id` offset from `%fs` in this process, when it registers rseq.
fn glibc_rseq_cpu_id() -> Option<i32> {
    // SAFETY: dlsym with RTLD_DEFAULT and NUL-terminated names; the symbols, when present,
    // are glibc's `const ptrdiff_t __rseq_offset` and `const unsigned int __rseq_size`.
    unsafe {
        let off = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_offset".as_ptr()) as *const isize;
        let size = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_size".as_ptr()) as *const u32;
        if off.is_null() || size.is_null() || *size == 0 {
            return None;
        }
        i32::try_from(*off + 4).ok()
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
