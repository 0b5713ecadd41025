//! The JIT's fast path: inlined ARRAY / PERCPU_ARRAY lookups against the helper path (the
//! interpreter), per-CPU slots under pinned threads, vector registers around helper calls,
//! and the coverage probe's shape.

use xcover_bpf::env::{Env, HelperFn, HelperProto, InlineKind, InlineMap, MapInfo, Ret};
use xcover_bpf::exec::JitCode;
use xcover_bpf::helpers::{self, standard_helpers};
use xcover_bpf::insn::*;
use xcover_bpf::jit::{self, JitOptions};
use xcover_bpf::maps::{Arena, ArenaLayout, ArenaMaps};
use xcover_bpf::program::{MapDef, MapType};
use xcover_bpf::verifier::{VerifierOptions, verify};
use xcover_bpf::{asm, interp};
use xcover_rt as sys;

/// Prototypes of this file's test helpers: no argument checked, a number returned.
static TEST_PROTOS: [(u32, HelperProto); 4] = [
    (1000, HelperProto::new(&[], Ret::Scalar)),
    (1001, HelperProto::new(&[], Ret::Scalar)),
    (1002, HelperProto::new(&[], Ret::Scalar)),
    (1003, HelperProto::new(&[], Ret::Scalar)),
];

/// An 8-aligned arena in a `Vec<u64>`, with the `Env` tables for its maps.
struct Maps {
    info: Vec<MapInfo>,
    mem: Vec<u64>,
    addrs: Vec<u64>,
    values: Vec<u64>,
    inline: Vec<Option<InlineMap>>,
    offsets: Vec<u64>,
}

impl Maps {
    fn new(defs: &[MapDef], ncpus: u32) -> Self {
        let layout = ArenaLayout::new(defs, ncpus).expect("layout");
        let mut mem = vec![0u64; (layout.size() as usize).div_ceil(8)];
        // SAFETY: mem is ours, 8-aligned and large enough.
        unsafe { layout.init(mem.as_mut_ptr() as *mut u8, (mem.len() * 8) as u64) }.unwrap();
        let mut m = Maps {
            info: MapInfo::table_of(defs),
            mem,
            addrs: Vec::new(),
            values: Vec::new(),
            inline: Vec::new(),
            offsets: layout.offsets(),
        };
        let (a, v) = m.arena().env_addrs(&m.offsets).unwrap();
        // SAFETY: the addresses are headers of the arena just initialised, which lives in
        // `m.mem` as long as `m`.
        m.inline = unsafe { InlineMap::table(&a) };
        m.addrs = a;
        m.values = v;
        m
    }

    /// The arena, read-only use.
    fn clone_arena(&self) -> Arena {
        // SAFETY: the Vec outlives every use in a test; readers only.
        unsafe { Arena::from_raw(self.mem.as_ptr() as *mut u8, (self.mem.len() * 8) as u64) }
    }

    fn arena(&mut self) -> Arena {
        // SAFETY: the Vec outlives every use in a test.
        unsafe {
            Arena::from_raw(
                self.mem.as_mut_ptr() as *mut u8,
                (self.mem.len() * 8) as u64,
            )
        }
    }

    /// The environment, with or without lookup inlining.
    fn env(&self, inline: bool) -> Env<'_> {
        Env {
            helpers: standard_helpers(),
            map_addrs: &self.addrs,
            map_value_addrs: &self.values,
            unwind_helper: None,
            map_inline: if inline { &self.inline } else { &[] },
            rseq_cpu_id: None,
            tcb_tid: None,
            maps: &self.info,
            protos: &[],
        }
    }
}

/// Assembles `text`, turning `lddw %rN, mapK` pseudo-lines into `lddw src=1, imm=K`.
fn assemble(text: &str) -> Vec<Insn> {
    let mut lines = Vec::new();
    let mut maps = Vec::new();
    for l in text.lines() {
        let t = l.trim();
        if let Some(rest) = t.strip_prefix("lddw ")
            && let Some((reg, m)) = rest.split_once(", map")
        {
            maps.push((lines.len(), m.trim().parse::<i32>().unwrap()));
            lines.push(format!("lddw {reg}, 0x7777777777"));
        } else {
            lines.push(t.to_string());
        }
    }
    let mut p = asm::assemble(&lines.join("\n")).unwrap();
    for (k, (_, idx)) in maps.iter().enumerate() {
        // Find the k-th marker lddw.
        let at = p
            .iter()
            .enumerate()
            .find(|(_, i)| i.is_lddw() && i.imm == 0x77777777)
            .map(|(j, _)| j)
            .unwrap_or_else(|| panic!("marker {k}"));
        p[at].src = PSEUDO_MAP_FD;
        p[at].imm = *idx;
        p[at + 1].imm = 0;
    }
    p
}

fn opts() -> JitOptions {
    JitOptions {
        preserve_vector_regs: false,
        inline_ctx_helpers: true,
        ..JitOptions::for_this_cpu()
    }
}

fn jit(p: &[Insn], env: &Env) -> JitCode {
    JitCode::new(&jit::compile(p, env, &opts()).unwrap()).unwrap()
}

/// Pins the calling thread to `cpu`; false when the machine does not allow it.
fn pin(cpu: usize) -> bool {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = core::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

fn online_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Whether the JIT code contains a call to the lookup helper's address.
fn calls_lookup(code: &[u8]) -> bool {
    let f = helpers::map_lookup_elem as HelperFn as usize as u64;
    code.windows(8).any(|w| w == f.to_le_bytes())
}

/// Lookup programs: key on the stack, the result returned as is and through a folded
/// `jeq r0, 0`, and a key pointer that is not a stack address (never inlined).
fn lookup_programs(map: u32, key: u32) -> Vec<(&'static str, Vec<Insn>)> {
    let k = key as i32;
    vec![
        (
            "plain",
            assemble(&format!(
                "stw [%r10-4], {k}\nlddw %r1, map{map}\nmov %r2, %r10\nadd %r2, -4\ncall 1\nexit"
            )),
        ),
        (
            "folded",
            assemble(&format!(
                "stw [%r10-8], {k}\nlddw %r1, map{map}\nmov %r2, %r10\nsub %r2, 8\ncall 1\n\
                 jeq %r0, 0, null\nldxdw %r1, [%r0]\nadd %r1, 1\nstxdw [%r0], %r1\nexit\n\
                 null:\nmov %r0, 7\nexit"
            )),
        ),
        (
            "materialised",
            // r1 and r2 are read before the call, so the deferred values must be in place.
            assemble(&format!(
                "stw [%r10-4], {k}\nlddw %r1, map{map}\nmov %r2, %r10\nadd %r2, -4\n\
                 mov %r6, %r2\nmov %r7, %r1\nmov %r1, %r7\nmov %r2, %r6\ncall 1\nexit"
            )),
        ),
    ]
}

#[test]
fn inline_lookups_match_the_helper_path() {
    let cpus = online_cpus();
    // ncpus 1 forces the modulo path on CPU 1 and above; ncpus = cpus the common one.
    for ncpus in [cpus as u32, 1, 3] {
        let mut m = Maps::new(
            &[
                MapDef::new("arr", MapType::Array, 4, 8, 16),
                MapDef::new("pc", MapType::PercpuArray, 4, 8, 16),
                MapDef::new("odd", MapType::Array, 4, 12, 5),
                MapDef::new("pcodd", MapType::PercpuArray, 4, 20, 3),
                MapDef::new("hash", MapType::Hash, 4, 8, 4),
            ],
            ncpus,
        );
        let arena_lo = m.mem.as_ptr() as u64;
        let arena_hi = arena_lo + m.mem.len() as u64 * 8;
        for cpu in 0..cpus {
            if !pin(cpu) {
                continue;
            }
            for map in 0..5u32 {
                for key in [
                    0u32,
                    1,
                    2,
                    4,
                    5,
                    15,
                    16,
                    17,
                    1000,
                    i32::MAX as u32,
                    u32::MAX,
                ] {
                    for (name, p) in lookup_programs(map, key) {
                        let env_i = m.env(true);
                        let env_h = m.env(false);
                        verify(&p, &env_i, &VerifierOptions::default()).unwrap();
                        let bytes = jit::compile(&p, &env_i, &opts()).unwrap();
                        let inlinable = map < 4 && name != "materialised";
                        assert_eq!(calls_lookup(&bytes), !inlinable, "{name} map {map}");
                        let code = JitCode::new(&bytes).unwrap();
                        let helper_code = jit(&p, &env_h);
                        // SAFETY: verified programs touching their stack and the arena.
                        let (a, b, c) = unsafe {
                            let a = code.call(0, 0);
                            let b = helper_code.call(0, 0);
                            let c = interp::run(&p, &env_h, 0, 0).unwrap();
                            (a, b, c)
                        };
                        let ctx = format!("{name} map {map} key {key} cpu {cpu} ncpus {ncpus}");
                        assert_eq!(a, c, "{ctx}");
                        assert_eq!(b, c, "{ctx}");
                        if name == "plain" {
                            assert!(c == 0 || (arena_lo..arena_hi).contains(&c), "{ctx}");
                        }
                    }
                }
            }
        }
        let _ = m.arena();
    }
    pin_all();
}

fn pin_all() {
    // SAFETY: as in `pin`.
    unsafe {
        let mut set: libc::cpu_set_t = core::mem::zeroed();
        for c in 0..online_cpus() {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

#[test]
fn inline_map_describes_the_layout() {
    let m = Maps::new(
        &[
            MapDef::new("arr", MapType::Array, 4, 12, 16),
            MapDef::new("pc", MapType::PercpuArray, 4, 8, 10),
            MapDef::new("rb", MapType::Ringbuf, 0, 0, 4096),
        ],
        4,
    );
    let a = m.inline[0].unwrap();
    assert_eq!(a.kind, InlineKind::Array);
    assert_eq!(
        (a.value_stride, a.max_entries, a.ncpus, a.cpu_stride),
        (16, 16, 1, 0)
    );
    assert_eq!(a.values_addr, m.values[0]);
    let p = m.inline[1].unwrap();
    assert_eq!(p.kind, InlineKind::PerCpuArray);
    assert_eq!(
        (p.value_stride, p.max_entries, p.ncpus, p.cpu_stride),
        (8, 10, 4, 80)
    );
    let r = m.inline[2].unwrap();
    assert_eq!(r.kind, InlineKind::Ringbuf);
    let data_off = m.clone_arena().map(m.offsets[2]).unwrap().header().data_off;
    assert_eq!((r.ring_size, r.values_addr), (4096, m.addrs[2] + data_off));
}

#[test]
fn percpu_slots_are_distinct_across_pinned_threads() {
    if sys::cpu_id_method() != sys::CpuIdMethod::Rdpid {
        eprintln!("no rdpid: PERCPU_ARRAY lookups are not inlined here");
    }
    let cpus = online_cpus();
    let mut m = Maps::new(
        &[MapDef::new("hits", MapType::PercpuArray, 4, 8, 8)],
        cpus as u32,
    );
    // Count hits of key 3 with a plain (non-atomic) add: only correct if every thread has
    // its own slot.
    let p = assemble(
        "stw [%r10-4], 3\nlddw %r1, map0\nmov %r2, %r10\nadd %r2, -4\ncall 1\n\
         jeq %r0, 0, out\nldxdw %r1, [%r0]\nadd %r1, 1\nstxdw [%r0], %r1\nout:\nexit",
    );
    let env = m.env(true);
    verify(&p, &env, &VerifierOptions::default()).unwrap();
    let code = jit(&p, &env);
    const N: u64 = 2_000_000;
    let mut pinned = Vec::new();
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..cpus)
            .map(|cpu| {
                let code = &code;
                s.spawn(move || {
                    if !pin(cpu) {
                        return (cpu, false, 0);
                    }
                    let mut addr = 0;
                    for _ in 0..N {
                        // SAFETY: verified program; the arena outlives the threads.
                        addr = unsafe { code.call(0, 0) };
                    }
                    (cpu, true, addr)
                })
            })
            .collect();
        for h in hs {
            pinned.push(h.join().unwrap());
        }
    });
    let arena = m.arena();
    let view = arena.map(m.offsets[0]).unwrap();
    let mut addrs = std::collections::HashSet::new();
    let mut total = 0;
    for &(cpu, ok, addr) in &pinned {
        if !ok {
            continue;
        }
        let mut b = [0u8; 8];
        assert!(view.read_array(3, cpu as u32, &mut b));
        assert_eq!(u64::from_le_bytes(b), N, "slot of cpu {cpu}");
        assert!(addrs.insert(addr), "cpu {cpu} shares a slot");
        total += N;
    }
    assert_eq!(view.array_u64(3), Some(total));
    pin_all();
}

thread_local! {
    /// Stands in for the kernel's rseq `cpu_id` in `percpu_slot_comes_from_the_rseq_cpu_id`.
    static FAKE_CPU_ID: core::cell::Cell<u32> = const { core::cell::Cell::new(0) };
}

/// `%fs`-relative offset of this thread's `FAKE_CPU_ID` (the same in every thread: the test
/// binary's TLS is static).
fn fake_cpu_id_offset() -> i32 {
    let mut fs: u64 = 0;
    // SAFETY: ARCH_GET_FS writes the fs base to the given u64.
    let r = unsafe { libc::syscall(libc::SYS_arch_prctl, 0x1003, &mut fs as *mut u64) };
    assert_eq!(r, 0, "arch_prctl(ARCH_GET_FS)");
    let var = FAKE_CPU_ID.with(|c| c.as_ptr() as u64);
    i32::try_from(var.wrapping_sub(fs) as i64).expect("TLS variable within 2 GiB of fs")
}

/// `mov r10d, fs:[off]`, the rseq CPU read.
fn reads_cpu_at(code: &[u8], off: i32) -> bool {
    let mut pat = vec![0x64, 0x44, 0x8b, 0x14, 0x25];
    pat.extend_from_slice(&off.to_le_bytes());
    code.windows(pat.len()).any(|w| w == pat)
}

#[test]
fn percpu_slot_comes_from_the_rseq_cpu_id() {
    const SLOTS: u32 = 4;
    let mut m = Maps::new(&[MapDef::new("hits", MapType::PercpuArray, 4, 8, 8)], SLOTS);
    let p = assemble(
        "stw [%r10-4], 5\nlddw %r1, map0\nmov %r2, %r10\nadd %r2, -4\ncall 1\n\
         jeq %r0, 0, out\nldxdw %r1, [%r0]\nadd %r1, 1\nstxdw [%r0], %r1\nout:\nexit",
    );
    let off = fake_cpu_id_offset();
    let mut env = m.env(true);
    env.rseq_cpu_id = Some(off);
    verify(&p, &env, &VerifierOptions::default()).unwrap();
    let bytes = jit::compile(&p, &env, &opts()).unwrap();
    assert!(
        reads_cpu_at(&bytes, off),
        "the CPU is read from fs:[{off:#x}]"
    );
    assert!(!calls_lookup(&bytes));
    let code = JitCode::new(&bytes).unwrap();
    let rdpid = sys::cpu_id_method() == sys::CpuIdMethod::Rdpid;
    let pinned = pin(0);
    let run = |cpu: u32, n: u64| {
        FAKE_CPU_ID.with(|c| c.set(cpu));
        for _ in 0..n {
            // SAFETY: verified program; the arena outlives the call.
            unsafe { code.call(0, 0) };
        }
    };
    run(2, 10);
    run(3, 20);
    run(1, 30);
    // Not a slot (the kernel's "not registered"): rdpid's CPU (0, pinned), or the value
    // modulo the slot count without rdpid.
    run(u32::MAX, 40);
    // Another thread reads its own copy (0).
    std::thread::scope(|s| {
        s.spawn(|| run(0, 50));
    });
    pin_all();
    let arena = m.arena();
    let view = arena.map(m.offsets[0]).unwrap();
    let slot = |cpu: u32| {
        let mut b = [0u8; 8];
        assert!(view.read_array(5, cpu, &mut b));
        u64::from_le_bytes(b)
    };
    let fallback = if rdpid && pinned { 0 } else { u32::MAX % SLOTS };
    let mut want = [0u64; SLOTS as usize];
    want[2] += 10;
    want[3] += 20;
    want[1] += 30;
    want[0] += 50;
    if rdpid && !pinned {
        // The fallback slot is whatever CPU the thread ran on: only the total is known.
        assert_eq!(view.array_u64(5), Some(150));
        return;
    }
    want[fallback as usize] += 40;
    let got: Vec<u64> = (0..SLOTS).map(slot).collect();
    assert_eq!(got, want);
}

// ---------------------------------------------------------------------------------------
// Vector registers.

/// Sets xmm0..xmm15 to all-ones (and declares it).
unsafe extern "C" fn clobber_xmm(_: u64, _: u64, _: u64, _: u64, _: u64) -> u64 {
    // SAFETY: only writes vector registers, declared as clobbered.
    unsafe {
        core::arch::asm!(
            "pcmpeqd xmm0, xmm0", "pcmpeqd xmm1, xmm1", "pcmpeqd xmm2, xmm2",
            "pcmpeqd xmm3, xmm3", "pcmpeqd xmm4, xmm4", "pcmpeqd xmm5, xmm5",
            "pcmpeqd xmm6, xmm6", "pcmpeqd xmm7, xmm7", "pcmpeqd xmm8, xmm8",
            "pcmpeqd xmm9, xmm9", "pcmpeqd xmm10, xmm10", "pcmpeqd xmm11, xmm11",
            "pcmpeqd xmm12, xmm12", "pcmpeqd xmm13, xmm13", "pcmpeqd xmm14, xmm14",
            "pcmpeqd xmm15, xmm15",
            out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _,
            out("xmm4") _, out("xmm5") _, out("xmm6") _, out("xmm7") _,
            out("xmm8") _, out("xmm9") _, out("xmm10") _, out("xmm11") _,
            out("xmm12") _, out("xmm13") _, out("xmm14") _, out("xmm15") _,
            options(nomem, nostack),
        );
    }
    5
}

/// Zeroes xmm0..xmm14 and sets xmm15 to a non-zero value (Go's ABI wants it zero).
unsafe extern "C" fn dirty_xmm15(_: u64, _: u64, _: u64, _: u64, _: u64) -> u64 {
    // SAFETY: only writes vector registers, declared as clobbered.
    unsafe {
        core::arch::asm!(
            "pxor xmm0, xmm0", "pxor xmm1, xmm1", "pxor xmm2, xmm2", "pxor xmm3, xmm3",
            "pxor xmm4, xmm4", "pxor xmm5, xmm5", "pxor xmm6, xmm6", "pxor xmm7, xmm7",
            "pxor xmm8, xmm8", "pxor xmm9, xmm9", "pxor xmm10, xmm10", "pxor xmm11, xmm11",
            "pxor xmm12, xmm12", "pxor xmm13, xmm13", "pxor xmm14, xmm14",
            "pcmpeqd xmm15, xmm15", "psrldq xmm15, 7",
            out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _,
            out("xmm4") _, out("xmm5") _, out("xmm6") _, out("xmm7") _,
            out("xmm8") _, out("xmm9") _, out("xmm10") _, out("xmm11") _,
            out("xmm12") _, out("xmm13") _, out("xmm14") _, out("xmm15") _,
            options(nomem, nostack),
        );
    }
    3
}

/// An unwind helper that also clobbers every vector register: returns its first argument.
unsafe extern "C" fn clobbering_unwind(a: u64, _: u64, _: u64, _: u64, _: u64) -> u64 {
    // SAFETY: as for `clobber_xmm`.
    unsafe { clobber_xmm(0, 0, 0, 0, 0) };
    a
}

/// Loads `input` into xmm0..15, calls `f(0, 0)`, stores xmm0..15 into the result.
fn call_with_xmm(f: *const u8, input: &[[u8; 16]; 16]) -> ([[u8; 16]; 16], u64) {
    call_with_xmm_r1(f, input, 0)
}

/// [`call_with_xmm`] with `r1` given.
fn call_with_xmm_r1(f: *const u8, input: &[[u8; 16]; 16], r1: u64) -> ([[u8; 16]; 16], u64) {
    let mut out = [[0u8; 16]; 16];
    let r0: u64;
    // SAFETY: `f` is JIT code following the System V ABI (called with r1 = r2 = 0); the
    // asm saves nothing it does not declare: clobber_abi("C") covers every caller-saved
    // register, and the xmm values are moved in and out inside the block. The stack is
    // 16-byte aligned at the call because the block may use the stack (no `nostack`).
    unsafe {
        core::arch::asm!(
            "movdqu xmm0, [{i} + 0]", "movdqu xmm1, [{i} + 16]", "movdqu xmm2, [{i} + 32]",
            "movdqu xmm3, [{i} + 48]", "movdqu xmm4, [{i} + 64]", "movdqu xmm5, [{i} + 80]",
            "movdqu xmm6, [{i} + 96]", "movdqu xmm7, [{i} + 112]", "movdqu xmm8, [{i} + 128]",
            "movdqu xmm9, [{i} + 144]", "movdqu xmm10, [{i} + 160]",
            "movdqu xmm11, [{i} + 176]", "movdqu xmm12, [{i} + 192]",
            "movdqu xmm13, [{i} + 208]", "movdqu xmm14, [{i} + 224]",
            "movdqu xmm15, [{i} + 240]",
            "push {o}",
            "sub rsp, 8",
            "mov rdi, {a}",
            "xor esi, esi",
            "call r11",
            "add rsp, 8",
            "pop {o}",
            "movdqu [{o} + 0], xmm0", "movdqu [{o} + 16], xmm1", "movdqu [{o} + 32], xmm2",
            "movdqu [{o} + 48], xmm3", "movdqu [{o} + 64], xmm4", "movdqu [{o} + 80], xmm5",
            "movdqu [{o} + 96], xmm6", "movdqu [{o} + 112], xmm7", "movdqu [{o} + 128], xmm8",
            "movdqu [{o} + 144], xmm9", "movdqu [{o} + 160], xmm10",
            "movdqu [{o} + 176], xmm11", "movdqu [{o} + 192], xmm12",
            "movdqu [{o} + 208], xmm13", "movdqu [{o} + 224], xmm14",
            "movdqu [{o} + 240], xmm15",
            i = in(reg) input.as_ptr(),
            o = in(reg) out.as_mut_ptr(),
            a = in(reg) r1,
            in("r11") f,
            out("rax") r0,
            clobber_abi("C"),
        );
    }
    (out, r0)
}

#[test]
fn vector_registers_survive_helper_calls() {
    static XMM_HELPERS: [(u32, HelperFn); 1] = [(1000, clobber_xmm)];
    let env = Env {
        helpers: &XMM_HELPERS,
        protos: &TEST_PROTOS,
        ..Env::default()
    };
    let p = asm::assemble("call 1000\nadd %r0, 1\nexit").unwrap();
    verify(&p, &env, &VerifierOptions::default()).unwrap();
    let mut input = [[0u8; 16]; 16];
    for (k, x) in input.iter_mut().enumerate() {
        for (j, b) in x.iter_mut().enumerate() {
            *b = (k * 16 + j) as u8 ^ 0x5a;
        }
    }
    for preserve in [true, false] {
        let o = JitOptions {
            preserve_vector_regs: preserve,
            inline_ctx_helpers: true,
            ..JitOptions::for_this_cpu()
        };
        let code = JitCode::new(&jit::compile(&p, &env, &o).unwrap()).unwrap();
        let (out, r0) = call_with_xmm(code.as_ptr(), &input);
        assert_eq!(r0, 6);
        if preserve {
            assert_eq!(out, input, "xmm registers changed across the probe");
        } else {
            // The negative control: without preservation the helper's writes show.
            assert_eq!(out, [[0xff; 16]; 16]);
        }
    }
}

/// Programs calling several clobbering helpers per run, in every frame layout and on every
/// exit path, with the probe's options: the caller's vector registers are intact after
/// every run, and `r0` matches the interpreter.
#[test]
fn vector_registers_survive_many_helper_calls_per_run() {
    static HELPERS: [(u32, HelperFn); 3] = [
        (1000, clobber_xmm),
        (1002, dirty_xmm15),
        (1003, clobbering_unwind),
    ];
    let env = Env {
        helpers: &HELPERS,
        unwind_helper: Some(1003),
        protos: &TEST_PROTOS,
        ..Env::default()
    };
    let programs: &[(&str, &[u64])] = &[
        // Straight line, no stack.
        (
            "mov %r6, %r1\ncall 1000\nmov %r7, %r0\ncall 1002\nadd %r7, %r0\ncall 1000\n\
             add %r0, %r7\nadd %r0, %r6\nexit",
            &[0, 9],
        ),
        // Red-zone stack (8 and 128 deep) and a full frame (136 deep).
        (
            "stdw [%r10-8], 11\nstdw [%r10-128], 5\ncall 1000\ncall 1002\n\
             ldxdw %r0, [%r10-8]\nldxdw %r1, [%r10-128]\nadd %r0, %r1\nexit",
            &[0],
        ),
        (
            "stdw [%r10-8], 11\nstdw [%r10-136], 5\ncall 1000\nmov %r2, %r10\n\
             add %r2, -136\nldxdw %r6, [%r2]\ncall 1002\nldxdw %r0, [%r10-8]\n\
             add %r0, %r6\nexit",
            &[0],
        ),
        // A stack pointer kept across calls (rbp frame).
        (
            "stdw [%r10-8], 11\nmov %r6, %r10\ncall 1000\ncall 1002\nldxdw %r0, [%r6-8]\n\
             exit",
            &[0],
        ),
        // The no-helper path (r1 = 0) and the helper path, separate exits.
        (
            "jeq %r1, 0, +4\ncall 1000\ncall 1002\nadd %r0, 1\nexit\nmov %r0, 7\nexit",
            &[0, 1],
        ),
        // The same exit reached with and without the registers saved.
        (
            "stdw [%r10-8], 4\nmov %r0, 7\njeq %r1, 0, out\ncall 1000\ncall 1002\n\
             jeq %r0, 0, out\ncall 1000\nout:\nldxdw %r1, [%r10-8]\nadd %r0, %r1\nexit",
            &[0, 1],
        ),
        // A loop of helper calls (back edge inside the saved copy), bounded so that the
        // verifier can walk it to its end: r6 = (r1 & 3) + 1.
        (
            "mov %r6, %r1\nand %r6, 3\nadd %r6, 1\nloop:\ncall 1000\ncall 1002\nsub %r6, 1\njne %r6, 0, loop\n\
             mov %r0, %r6\nexit",
            &[1, 3],
        ),
        // Unwinding: as the first call, after other calls, or not at all.
        (
            "stdw [%r10-8], 4\nmov %r6, %r1\nmov %r1, %r6\nand %r1, 1\ncall 1003\n\
             call 1000\nmov %r1, %r6\nand %r1, 2\ncall 1003\nldxdw %r0, [%r10-8]\nexit",
            &[0, 1, 3],
        ),
        // callx: a clobbering helper, then another one or the unwind helper (r1 = 1).
        (
            // (The target is a constant on each path: the verifier wants a known helper.)
            "mov %r6, %r1\nmov %r2, 1000\ncall %r2\nmov %r2, 1002\njeq %r6, 0, +1\n\
             mov %r2, 1003\nmov %r1, 0\ncall %r2\nadd %r0, 1\nexit",
            &[0, 1],
        ),
        // Local functions (the per-call save): a callee calling helpers, twice.
        (
            "call local f\ncall local f\nadd %r0, 1\nexit\nf:\ncall 1000\ncall 1002\nexit",
            &[0],
        ),
    ];
    let mut input = [[0u8; 16]; 16];
    for (k, x) in input.iter_mut().enumerate() {
        for (j, b) in x.iter_mut().enumerate() {
            *b = (k * 16 + j) as u8 ^ 0xa5;
        }
    }
    // Go's ABI: X15 is zero.
    input[15] = [0; 16];
    // r1 is a number here (0, 1, 3), not a context.
    let vopts = VerifierOptions {
        allow_back_edges: true,
        ctx: None,
        ..VerifierOptions::default()
    };
    for &(text, r1s) in programs {
        let p = asm::assemble(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        verify(&p, &env, &vopts).unwrap_or_else(|e| panic!("{text}: {e}"));
        let o = JitOptions {
            preserve_vector_regs: true,
            inline_ctx_helpers: true,
            ..JitOptions::for_this_cpu()
        };
        let code = JitCode::new(&jit::compile(&p, &env, &o).unwrap()).unwrap();
        for &r1 in r1s {
            // SAFETY: verified; the helpers only touch vector registers.
            let want = unsafe { interp::run(&p, &env, r1, 0) }.unwrap();
            let (out, r0) = call_with_xmm_r1(code.as_ptr(), &input, r1);
            assert_eq!(r0, want, "{text} r1={r1}");
            assert_eq!(out, input, "xmm registers changed: {text} r1={r1}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// The coverage probe.

/// The coverage probe, as the C probe does it: count every hit in a per-CPU array (plain
/// add), and on the first hit of a function claim its `seen` flag with a cmpxchg and send
/// the cookie to the ring buffer. Maps: 0 = hits (PERCPU_ARRAY u64), 1 = seen (ARRAY u32),
/// 2 = events (RINGBUF).
pub const COVERAGE_PROBE: &str = "
    call 174
    stxw [%r10-4], %r0
    lddw %r1, map0
    mov %r2, %r10
    add %r2, -4
    call 1
    jeq %r0, 0, +3
    ldxdw %r1, [%r0]
    add %r1, 1
    stxdw [%r0], %r1
    lddw %r1, map1
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
    lddw %r1, map2
    mov %r2, %r10
    add %r2, -16
    mov %r3, 8
    mov %r4, 0
    call 130
out:
    mov %r0, 0
    exit
";

fn coverage_maps(funcs: u32) -> Maps {
    Maps::new(
        &[
            MapDef::new("hits", MapType::PercpuArray, 4, 8, funcs),
            MapDef::new("seen", MapType::Array, 4, 4, funcs),
            MapDef::new("events", MapType::Ringbuf, 0, 0, 4096),
        ],
        online_cpus() as u32,
    )
}

#[test]
fn coverage_probe_counts_and_reports_first_hits() {
    let mut m = coverage_maps(8);
    let p = assemble(COVERAGE_PROBE);
    for inline in [true, false] {
        let env = m.env(inline);
        verify(&p, &env, &VerifierOptions::default()).unwrap();
        let code = jit(&p, &env);
        for cookie in [1u64, 5, 1, 1, 7, 5, 100] {
            let ctx = xcover_session::ProbeCtx {
                cookie,
                ..Default::default()
            };
            // SAFETY: r1 points to a live ProbeCtx; maps in `m`.
            let r = unsafe { code.call(&ctx as *const _ as u64, 0) };
            assert_eq!(r, 0);
        }
    }
    let mut m2 = coverage_maps(8);
    let env = m2.env(false);
    for cookie in [1u64, 5, 1, 1, 7, 5, 100] {
        let ctx = xcover_session::ProbeCtx {
            cookie,
            ..Default::default()
        };
        // SAFETY: as above, through the interpreter.
        unsafe { interp::run(&p, &env, &ctx as *const _ as u64, 0) }.unwrap();
    }
    for (mm, runs) in [(&mut m, 2), (&mut m2, 1)] {
        let arena = mm.arena();
        let hits = arena.map(mm.offsets[0]).unwrap().array_u64_all();
        assert_eq!(hits, vec![0, 3 * runs, 0, 0, 0, 2 * runs, 0, runs]);
        let mut events = Vec::new();
        arena.map(mm.offsets[2]).unwrap().ringbuf_consume(|b| {
            events.push(u64::from_le_bytes(b[..8].try_into().unwrap()));
        });
        assert_eq!(events, vec![1, 5, 7], "one event per function, ever");
    }
}

/// Prints the JIT-ed coverage probe (through objdump) for counting its hit path:
/// `cargo test -p xcover-bpf --test jit_inline coverage_probe_disassembly -- --nocapture`.
#[test]
fn coverage_probe_disassembly() {
    let m = coverage_maps(1024);
    let p = assemble(COVERAGE_PROBE);
    let env = m.env(true);
    // The agent's options.
    let o = JitOptions {
        preserve_vector_regs: true,
        inline_ctx_helpers: true,
        ..JitOptions::for_this_cpu()
    };
    let bytes = jit::compile(&p, &env, &o).unwrap();
    println!("coverage probe: {} bytes", bytes.len());
    let path = std::env::temp_dir().join(format!("xcover-probe-{}.bin", std::process::id()));
    std::fs::write(&path, &bytes).unwrap();
    let objdump = xcover_testsupport::tools::require("objdump", "binutils");
    let out = std::process::Command::new(objdump)
        .args(["-D", "-b", "binary", "-mi386:x86-64", "-M", "intel"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(out.status.success(), "objdump: {out:?}");
    println!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(!calls_lookup(&bytes));
}

/// Writes a large local buffer: anything left below the caller's `rsp` is overwritten.
unsafe extern "C" fn smash_stack(_: u64, _: u64, _: u64, _: u64, _: u64) -> u64 {
    let mut buf = [0u8; 1024];
    for b in buf.iter_mut() {
        // SAFETY: a valid, exclusive local.
        unsafe { core::ptr::write_volatile(b, 0xaa) };
    }
    core::hint::black_box(&buf);
    1
}

#[test]
fn stack_survives_helper_calls_in_every_frame_layout() {
    static SMASH: [(u32, HelperFn); 1] = [(1001, smash_stack)];
    let env = Env {
        helpers: &SMASH,
        protos: &TEST_PROTOS,
        ..Env::default()
    };
    // 8 and 128 bytes deep (red-zone layout), 136 (does not fit: full frame), and a stack
    // pointer kept in a callee-saved register across the call (escapes: full frame).
    for (depth, keep) in [(8, false), (128, false), (136, false), (16, true)] {
        let keep_ptr = if keep {
            "mov %r6, %r10\nadd %r6, -8\n"
        } else {
            ""
        };
        let use_ptr = if keep {
            "ldxdw %r2, [%r6]\nadd %r0, %r2\n"
        } else {
            ""
        };
        let p = asm::assemble(&format!(
            "stdw [%r10-8], 0x1234\nstdw [%r10-{depth}], 0x4321\n{keep_ptr}call 1001\n\
             ldxdw %r0, [%r10-8]\nldxdw %r1, [%r10-{depth}]\nadd %r0, %r1\n{use_ptr}exit"
        ))
        .unwrap();
        verify(&p, &env, &VerifierOptions::default()).unwrap();
        let want = if depth == 8 {
            0x4321 * 2
        } else {
            0x1234 + 0x4321
        } + if keep { 0x1234 } else { 0 };
        for preserve in [false, true] {
            let o = JitOptions {
                preserve_vector_regs: preserve,
                inline_ctx_helpers: true,
                ..JitOptions::for_this_cpu()
            };
            let code = JitCode::new(&jit::compile(&p, &env, &o).unwrap()).unwrap();
            // SAFETY: verified program; the helper only touches its own frame.
            let got = unsafe { code.call(0, 0) };
            assert_eq!(got, want, "depth {depth} keep {keep} preserve {preserve}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Inlined helpers: bpf_ringbuf_reserve / bpf_ringbuf_submit on a known ring buffer and
// bpf_get_current_pid_tgid, against the helpers (through the interpreter).

/// `r1` = size, `r2` = reserve flags: reserve, write the size and a checksum into the
/// record, submit with wakeup flag `size & 3`; returns the submit result, or 77 when the
/// reserve failed.
const RESERVE_SUBMIT: &str = "
    mov %r6, %r1
    lddw %r1, map0
    mov %r2, %r6
    mov %r3, %r7
    call 131
    jeq %r0, 0, none
    stxdw [%r0], %r6
    mov %r1, %r6
    mul %r1, 0x3779b1
    stxdw [%r0+8], %r1
    mov %r1, %r0
    mov %r2, %r6
    and %r2, 3
    call 132
    exit
none:
    mov %r0, 77
    exit
";

/// These programs take numbers in `r1`, `r2` and hand them to the ring-buffer helpers as a
/// record size or a record: the verifier rejects that (it wants a constant size and a record
/// from `bpf_ringbuf_reserve`), and names helper `helper`'s register `reg`. They run anyway
/// here, as tests of what the JIT's inlined helpers and the helpers do at run time with
/// values a verified program never passes.
fn rejected_for_helper_arg(p: &[Insn], env: &Env, helper: u32, reg: u8) {
    let opts = VerifierOptions {
        inputs: 2,
        ctx: None,
        ..Default::default()
    };
    match verify(p, env, &opts) {
        Err(xcover_bpf::verifier::VerifyError {
            reason:
                xcover_bpf::verifier::Reason::HelperArg {
                    helper: h, reg: r, ..
                },
            ..
        }) if h == helper && r == reg => {}
        other => panic!("expected helper {helper}'s r{reg} to be rejected: {other:?}"),
    }
}

fn reserve_submit_program() -> Vec<Insn> {
    // r7 = the reserve flags (r2 at entry), kept across the first instructions.
    let text = format!("mov %r7, %r2\n{RESERVE_SUBMIT}");
    assemble(&text)
}

/// The bytes of the inlined `lock cmpxchg [rdi + producer_pos], rcx`.
fn has_inline_reserve(code: &[u8]) -> bool {
    let off = core::mem::offset_of!(xcover_bpf::maps::MapHeader, producer_pos) as u32;
    let mut pat = vec![0xf0, 0x48, 0x0f, 0xb1, 0x8f];
    pat.extend_from_slice(&off.to_le_bytes());
    code.windows(pat.len()).any(|w| w == pat)
}

/// What a ring buffer looks like from outside: positions, drops, and the records consumed.
fn ring_state(m: &Maps, idx: usize) -> (u64, u64, u64, Vec<Vec<u8>>) {
    let arena = m.clone_arena();
    let v = arena.map(m.offsets[idx]).unwrap();
    let mut recs = Vec::new();
    v.ringbuf_consume(|b| recs.push(b.to_vec()));
    let h = v.header();
    (
        h.producer_pos.load(std::sync::atomic::Ordering::Relaxed),
        h.consumer_pos.load(std::sync::atomic::Ordering::Relaxed),
        h.dropped.load(std::sync::atomic::Ordering::Relaxed),
        recs,
    )
}

#[test]
fn inline_ringbuf_reserve_submit_match_the_helpers() {
    let defs = [MapDef::new("rb", MapType::Ringbuf, 0, 0, 4096)];
    let jm = Maps::new(&defs, 1);
    let im = Maps::new(&defs, 1);
    let p = reserve_submit_program();
    let jenv = jm.env(true);
    rejected_for_helper_arg(&p, &jenv, 131, 2);
    for vec_regs in [false, true] {
        let o = JitOptions {
            preserve_vector_regs: vec_regs,
            inline_ctx_helpers: true,
            ..JitOptions::for_this_cpu()
        };
        let bytes = jit::compile(&p, &jenv, &o).unwrap();
        assert!(has_inline_reserve(&bytes), "reserve not inlined");
    }
    let code = jit(&p, &jenv);
    let ienv = im.env(false);
    // Sizes that wrap the 4 KiB ring many times (padding records), fill it (drops) and
    // pass bad flags; consume every few steps so the ring empties again.
    let mut x = 12345u64;
    for step in 0..3000u64 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let size = 16 + (x >> 33) % 300;
        let flags = u64::from(step % 97 == 5);
        // SAFETY: a program over live maps; r1/r2 are plain numbers the helpers check.
        let rj = unsafe { code.call(size, flags) };
        // SAFETY: as above, through the interpreter.
        let ri = unsafe { interp::run(&p, &ienv, size, flags) }.unwrap();
        assert_eq!(rj, ri, "step {step}: size {size} flags {flags}");
        if step % 23 == 0 {
            let (a, b) = (ring_state(&jm, 0), ring_state(&im, 0));
            assert_eq!(a, b, "step {step}");
        }
    }
    let (a, b) = (ring_state(&jm, 0), ring_state(&im, 0));
    assert_eq!(a, b);
    assert!(a.2 > 0, "the ring never filled up: drops are not exercised");
    for r in &a.3 {
        let size = u64::from_le_bytes(r[..8].try_into().unwrap());
        assert_eq!(r.len() as u64, size);
        let sum = u64::from_le_bytes(r[8..16].try_into().unwrap());
        assert_eq!(sum, size.wrapping_mul(0x3779b1));
    }
}

/// `r1` = the pointer to submit, `r2` = flags: what `bpf_ringbuf_submit` returns for
/// pointers that are not records of the ring buffer.
#[test]
fn inline_ringbuf_submit_rejects_foreign_pointers() {
    let m = Maps::new(&[MapDef::new("rb", MapType::Ringbuf, 0, 0, 4096)], 1);
    // Keep a reference to the ring in the program so the JIT knows it.
    let p = assemble(
        "mov %r6, %r1\nmov %r7, %r2\nlddw %r1, map0\nmov %r1, %r6\nmov %r2, %r7\ncall 132\nexit",
    );
    let env = m.env(true);
    rejected_for_helper_arg(&p, &env, 132, 1);
    let code = jit(&p, &env);
    // A fake record: header word naming a "map" 64 bytes before it, which is no ring.
    let mut fake = [0u64; 16];
    fake[8] = (64u64 << 32) | u64::from(xcover_bpf::maps::RINGBUF_BUSY_BIT) | 8;
    let rec = &fake[9] as *const u64 as u64;
    let einval = (-22i64) as u64;
    for (ptr, flags) in [(rec, 0), (rec + 1, 0), (4, 0), (rec, 4)] {
        // SAFETY: a program (rejected by the verifier, see above); the helper and the inline path only read the word
        // before an aligned `ptr`, which is in `fake`, or reject it first.
        let r = unsafe { code.call(ptr, flags) };
        assert_eq!(r, einval, "{ptr:#x} {flags}");
    }
    assert_eq!(fake[8] >> 31 & 1, 1, "the fake record was touched");
    // A real record of the ring: submitted by the inline path.
    let rb = m.addrs[0];
    let f = helpers::ringbuf_reserve as HelperFn;
    // SAFETY: rb is a live ring buffer of `m`.
    let r = unsafe { f(rb, 8, 0, 0, 0) };
    assert_ne!(r, 0);
    // SAFETY: `r` is a record just reserved.
    assert_eq!(unsafe { code.call(r, 2) }, 0);
    let (_, _, _, recs) = ring_state(&m, 0);
    assert_eq!(recs.len(), 1);
}

#[test]
fn inline_ringbuf_is_consistent_under_concurrent_producers() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let m = Arc::new(std::sync::Mutex::new(Maps::new(
        &[MapDef::new("rb", MapType::Ringbuf, 0, 0, 1 << 14)],
        1,
    )));
    let p = reserve_submit_program();
    let (code_bytes, addr) = {
        let g = m.lock().unwrap();
        let env = g.env(true);
        rejected_for_helper_arg(&p, &env, 131, 2);
        let b = jit::compile(&p, &env, &opts()).unwrap();
        assert!(has_inline_reserve(&b));
        (b, g.mem.as_ptr() as usize)
    };
    let code = Arc::new(JitCode::new(&code_bytes).unwrap());
    let len = m.lock().unwrap().mem.len() * 8;
    let off = m.lock().unwrap().offsets[0];
    let stop = Arc::new(AtomicBool::new(false));
    const THREADS: u64 = 3;
    const PER: u64 = 40_000;
    let producers: Vec<_> = (0..THREADS)
        .map(|t| {
            let code = code.clone();
            std::thread::spawn(move || {
                let mut ok = 0u64;
                for i in 0..PER {
                    let size = 16 + (i * 7 + t * 13) % 120;
                    // SAFETY: the program and maps outlive the threads (joined below).
                    match unsafe { code.call(size, 0) } {
                        0 => ok += 1,
                        77 => {}
                        r => panic!("unexpected {r}"),
                    }
                }
                ok
            })
        })
        .collect();
    let consumer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // SAFETY: the arena (kept alive by `m`, which outlives the join) is `len` bytes.
            let arena = unsafe { Arena::from_raw(addr as *mut u8, len as u64) };
            let v = arena.map(off).unwrap();
            let mut n = 0u64;
            loop {
                let done = stop.load(Ordering::Acquire);
                n += v.ringbuf_consume(|r| {
                    let size = u64::from_le_bytes(r[..8].try_into().unwrap());
                    assert_eq!(r.len() as u64, size, "torn record");
                    let sum = u64::from_le_bytes(r[8..16].try_into().unwrap());
                    assert_eq!(sum, size.wrapping_mul(0x3779b1), "torn record");
                }) as u64;
                if done {
                    return n;
                }
            }
        })
    };
    let ok: u64 = producers.into_iter().map(|h| h.join().unwrap()).sum();
    stop.store(true, Ordering::Release);
    let consumed = consumer.join().unwrap();
    let g = m.lock().unwrap();
    let (prod, cons, dropped, rest) = ring_state(&g, 0);
    assert_eq!(consumed + rest.len() as u64, ok);
    assert_eq!(
        ok + dropped,
        THREADS * PER,
        "every failed reserve is a counted drop"
    );
    assert_eq!(prod, cons);
}

fn pid_tgid_now() -> u64 {
    // SAFETY: plain system calls.
    let (pid, tid) = unsafe { (libc::getpid() as u64, libc::gettid() as u64) };
    pid << 32 | tid
}

#[test]
fn inline_pid_tgid_matches_the_thread() {
    let m = Maps::new(&[MapDef::new("a", MapType::Array, 4, 8, 1)], 1);
    let p = assemble("call 14\nexit");
    let env = m.env(true);
    verify(&p, &env, &VerifierOptions::default()).unwrap();
    let bytes = jit::compile(&p, &env, &opts()).unwrap();
    let inlined = bytes.windows(4).any(|w| w == [0xf3, 0x49, 0x0f, 0xae]);
    assert_eq!(inlined, sys::tid_cache_layout().is_some(), "rdfsbase r9");
    let code = std::sync::Arc::new(JitCode::new(&bytes).unwrap());
    for _ in 0..3 {
        // SAFETY: a verified program that only calls get_current_pid_tgid.
        assert_eq!(unsafe { code.call(0, 0) }, pid_tgid_now());
    }
    // Threads one after another: glibc hands a dead thread's stack and TCB (so its %fs
    // base, the cache's key) to the next one, whose id must still come out right.
    for _ in 0..20 {
        let code = code.clone();
        std::thread::spawn(move || {
            for _ in 0..3 {
                // SAFETY: as above.
                assert_eq!(unsafe { code.call(0, 0) }, pid_tgid_now());
            }
        })
        .join()
        .unwrap();
    }
}

/// With the TCB's tid offset known, `bpf_get_current_pid_tgid` is one `%fs` load (no
/// `rdfsbase`, no cache): glibc's own offset gives every thread its id; a stand-in TLS
/// variable shows the id comes from that offset, and 0 there (no id) takes the helper.
#[test]
fn inline_pid_tgid_from_the_tcb() {
    let m = Maps::new(&[MapDef::new("a", MapType::Array, 4, 8, 1)], 1);
    let p = assemble("call 14\nexit");
    let compile = |off: i32| {
        let mut env = m.env(true);
        env.tcb_tid = Some(off);
        verify(&p, &env, &VerifierOptions::default()).unwrap();
        let bytes = jit::compile(&p, &env, &opts()).unwrap();
        let mut load = vec![0x64, 0x8b, 0x04, 0x25];
        load.extend_from_slice(&off.to_le_bytes());
        assert!(
            bytes.windows(load.len()).any(|w| w == load),
            "mov eax, fs:[{off:#x}]"
        );
        assert!(
            !bytes.windows(4).any(|w| w == [0xf3, 0x49, 0x0f, 0xae]),
            "no rdfsbase"
        );
        std::sync::Arc::new(JitCode::new(&bytes).unwrap())
    };
    let glibc = compile(xcover_session::GLIBC_TCB_TID_OFF as i32);
    for _ in 0..3 {
        // SAFETY: a verified program that only calls get_current_pid_tgid.
        assert_eq!(unsafe { glibc.call(0, 0) }, pid_tgid_now());
    }
    for _ in 0..8 {
        let code = glibc.clone();
        std::thread::spawn(move || {
            // SAFETY: as above.
            assert_eq!(unsafe { code.call(0, 0) }, pid_tgid_now());
        })
        .join()
        .unwrap();
    }
    let fake = compile(fake_cpu_id_offset());
    let pid = pid_tgid_now() >> 32;
    FAKE_CPU_ID.with(|c| c.set(12345));
    // SAFETY: as above; the offset is this thread's FAKE_CPU_ID.
    assert_eq!(unsafe { fake.call(0, 0) }, pid << 32 | 12345);
    FAKE_CPU_ID.with(|c| c.set(0));
    // SAFETY: as above.
    let helper = unsafe { fake.call(0, 0) };
    assert_eq!(helper, pid_tgid_now(), "no id: the helper's");
}

/// Whether the code calls the vDSO's clock_gettime directly (its address as an imm64).
fn calls_vdso_clock(code: &[u8]) -> bool {
    sys::vdso_clock_gettime_without_vector_regs(sys::CLOCK_MONOTONIC_COARSE as u32)
        .is_some_and(|f| code.windows(8).any(|w| w == f.to_le_bytes()))
}

#[test]
fn inline_ktime_matches_the_clocks_and_keeps_stack_and_vector_registers() {
    let m = Maps::new(&[MapDef::new("a", MapType::Array, 4, 8, 1)], 1);
    let env = m.env(true);
    let vdso = sys::vdso_clock_gettime_without_vector_regs(6).is_some();
    if !vdso {
        eprintln!("no vDSO clock here: the ktime helpers are called");
    }
    for (id, clock) in [
        (160, sys::monotonic_coarse_ns as fn() -> u64),
        (5, sys::monotonic_ns as fn() -> u64),
    ] {
        // Plain; a red-zone stack (8 and 128 deep) and a full frame (136 deep) around the
        // call; r10 kept in a register (rbp frame). Each returns the time, checked against
        // the clock, after checking the stack values (else returns 1).
        let programs = [
            format!("call {id}\nexit"),
            format!(
                "stdw [%r10-8], 11\nstdw [%r10-128], 5\ncall {id}\nldxdw %r1, [%r10-8]\n\
                 ldxdw %r2, [%r10-128]\njne %r1, 11, bad\njne %r2, 5, bad\nexit\nbad:\n\
                 mov %r0, 1\nexit"
            ),
            format!(
                "stdw [%r10-8], 11\nstdw [%r10-136], 5\ncall {id}\nldxdw %r1, [%r10-8]\n\
                 ldxdw %r2, [%r10-136]\njne %r1, 11, bad\njne %r2, 5, bad\nexit\nbad:\n\
                 mov %r0, 1\nexit"
            ),
            format!(
                "stdw [%r10-8], 11\nmov %r6, %r10\ncall {id}\nldxdw %r1, [%r6-8]\n\
                 jne %r1, 11, bad\nexit\nbad:\nmov %r0, 1\nexit"
            ),
        ];
        for text in &programs {
            let p = assemble(text);
            verify(&p, &env, &VerifierOptions::default()).unwrap();
            for vec_regs in [false, true] {
                let o = JitOptions {
                    preserve_vector_regs: vec_regs,
                    inline_ctx_helpers: true,
                    ..JitOptions::for_this_cpu()
                };
                let bytes = jit::compile(&p, &env, &o).unwrap();
                assert_eq!(calls_vdso_clock(&bytes), vdso, "{text}");
                let code = JitCode::new(&bytes).unwrap();
                let input: [[u8; 16]; 16] = core::array::from_fn(|i| [i as u8 * 3 + 1; 16]);
                let t0 = clock();
                let (out, r0) = call_with_xmm(code.as_ptr(), &input);
                let t1 = clock();
                assert!(t0 <= r0 && r0 <= t1, "{text}: {t0} <= {r0} <= {t1}");
                if vec_regs {
                    assert_eq!(out, input, "{text}: vector registers");
                }
            }
        }
    }
}

/// `*counter += 1` (load, add, store in eBPF) is one `add` instruction in the JIT code, so
/// threads preempted on the same CPU never write back a stale count: 4 threads pinned to one
/// CPU, 2 000 000 runs each, not one count lost. Jumping into the middle of the pattern
/// keeps the three instructions (checked against the interpreter).
#[test]
fn counter_increment_is_one_instruction_and_loses_nothing() {
    let p = assemble(
        "ldxdw %r2, [%r1]
         add %r2, 1
         stxdw [%r1], %r2
         mov %r0, %r2
         exit",
    );
    let env = Env::default();
    let code = std::sync::Arc::new(jit(&p, &env));
    let counter = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (code, counter) = (code.clone(), counter.clone());
            std::thread::spawn(move || {
                let pinned = pin(0);
                for _ in 0..2_000_000 {
                    // SAFETY: the program reads and writes the 8 bytes at r1, a live atomic.
                    unsafe { code.call(counter.as_ptr() as u64, 0) };
                }
                pinned
            })
        })
        .collect();
    let pinned = threads.into_iter().all(|t| t.join().unwrap());
    assert!(pinned, "could not pin the threads to CPU 0");
    assert_eq!(
        counter.load(std::sync::atomic::Ordering::Relaxed),
        8_000_000
    );
    // The value the program returns is the incremented one.
    let mut v = 41u64;
    // SAFETY: as above, on a local.
    assert_eq!(unsafe { code.call(&mut v as *mut u64 as u64, 0) }, 42);
    assert_eq!(v, 42);
    // The register dead after the store (overwritten first): no reload, same result.
    let dead = assemble(
        "ldxdw %r2, [%r1]
         add %r2, 1
         stxdw [%r1], %r2
         mov %r2, 7
         mov %r0, %r2
         exit",
    );
    let code_dead = jit(&dead, &env);
    let mut v = 41u64;
    // SAFETY: as above, on a local.
    assert_eq!(unsafe { code_dead.call(&mut v as *mut u64 as u64, 0) }, 7);
    assert_eq!(v, 42);
    // `mov rsi, [rdi]` (r2 = *r1): the reload, kept only where r2 is read.
    let reload = |code: &[u8]| code.windows(3).any(|w| w == [0x48, 0x8b, 0x37]);
    assert!(reload(&jit::compile(&p, &env, &opts()).unwrap()));
    assert!(!reload(&jit::compile(&dead, &env, &opts()).unwrap()));
    // A jump to the add: no fusion, the interpreter's result.
    let q = assemble(
        "ldxdw %r2, [%r1]
         jeq %r2, 5, over
         ldxdw %r2, [%r1]
         mid:
         add %r2, 1
         stxdw [%r1], %r2
         mov %r0, %r2
         exit
         over:
         mov %r2, 40
         ja mid",
    );
    let code = jit(&q, &env);
    for start in [5u64, 9] {
        let mut a = start;
        let mut b = start;
        // SAFETY: as above, on locals.
        let got = unsafe { code.call(&mut a as *mut u64 as u64, 0) };
        // SAFETY: as above.
        let want = unsafe { interp::run(&q, &env, &mut b as *mut u64 as u64, 0) }.unwrap();
        assert_eq!((got, a), (want, b));
    }
}

/// The JIT takes the CPU's features from [`JitOptions`], not from the machine it runs on:
/// `rdpid` and `rdfsbase` are emitted exactly when the options say the CPU has them
/// (compiled only, never run, so this holds on any machine).
#[test]
fn cpu_features_come_from_the_options() {
    const RDPID_R10: [u8; 4] = [0xf3, 0x41, 0x0f, 0xc7];
    const RDFSBASE_R9: [u8; 4] = [0xf3, 0x49, 0x0f, 0xae];
    let has = |code: &[u8], pat: [u8; 4]| code.windows(4).any(|w| w == pat);
    let m = Maps::new(&[MapDef::new("hits", MapType::PercpuArray, 4, 8, 8)], 4);
    let p = assemble("stw [%r10-4], 3\nlddw %r1, map0\nmov %r2, %r10\nadd %r2, -4\ncall 1\nexit");
    let env = m.env(true);
    verify(&p, &env, &VerifierOptions::default()).unwrap();
    for rdpid in [false, true] {
        let o = JitOptions {
            rdpid,
            ..JitOptions::default()
        };
        let bytes = jit::compile(&p, &env, &o).unwrap();
        assert_eq!(
            has(&bytes, RDPID_R10),
            rdpid,
            "rdpid r10 with rdpid: {rdpid}"
        );
        assert_eq!(
            calls_lookup(&bytes),
            !rdpid,
            "lookup inlined with rdpid: {rdpid}"
        );
    }
    let p = assemble("call 14\nexit");
    verify(&p, &env, &VerifierOptions::default()).unwrap();
    let o = JitOptions {
        fsgsbase: false,
        ..JitOptions::for_this_cpu()
    };
    assert!(!has(&jit::compile(&p, &env, &o).unwrap(), RDFSBASE_R9));
    let o = JitOptions {
        fsgsbase: true,
        ..JitOptions::default()
    };
    let inlined = has(&jit::compile(&p, &env, &o).unwrap(), RDFSBASE_R9);
    // The tid cache is the runtime's: it only exists where the kernel allows rdfsbase.
    assert_eq!(inlined, sys::tid_cache_layout().is_some());
}
