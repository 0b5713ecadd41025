//! Differential tests: the JIT against the interpreter on random programs, and the
//! interpreter against rbpf on the operations rbpf implements the same way.

use proptest::prelude::*;
use xcover_bpf::env::{Arg, Env, HelperFn, HelperProto, Ret};
use xcover_bpf::exec::JitCode;
use xcover_bpf::insn::*;
use xcover_bpf::jit::{self, JitOptions};
use xcover_bpf::verifier::{VerifierOptions, verify};
use xcover_bpf::{asm, interp};

unsafe extern "C" fn mix(a: u64, b: u64, c: u64, d: u64, e: u64) -> u64 {
    a.rotate_left(7) ^ b.wrapping_mul(3) ^ c.wrapping_add(d) ^ e.rotate_right(13)
}

/// `mix` as a test helper (not a Linux id): five numbers in, a number out.
const MIX: u32 = 1000;
static HELPERS: [(u32, HelperFn); 1] = [(MIX, mix)];
static PROTOS: [(u32, HelperProto); 1] =
    [(MIX, HelperProto::new(&[Arg::Anything; 5], Ret::Scalar))];

fn env() -> Env<'static> {
    Env {
        helpers: &HELPERS,
        map_addrs: &[],
        map_value_addrs: &[],
        unwind_helper: None,
        map_inline: &[],
        rseq_cpu_id: None,
        tcb_tid: None,
        maps: &[],
        protos: &PROTOS,
    }
}

/// One generated operation; `Jmp` skips a number of following operations.
#[derive(Clone, Debug)]
enum Op {
    Alu(u8, i16, u8, u8, i32),
    End(u8, i32, u8),
    Jmp(u8, u8, u8, i32, usize),
    Atomic(u8, i32, i16, u8),
    Load(u8, i16, u8),
    Store(u8, i16, u8),
    StoreImm(u8, i16, i32),
    Call,
}

fn edge_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        Just(0u64),
        Just(1),
        Just(u64::MAX),
        Just(i64::MIN as u64),
        Just(i32::MIN as u32 as u64),
        Just(u32::MAX as u64),
        0u64..64,
    ]
}

fn edge_i32() -> impl Strategy<Value = i32> {
    prop_oneof![
        any::<i32>(),
        Just(0),
        Just(-1),
        Just(1),
        Just(i32::MIN),
        -70i32..70
    ]
}

const ALU_CODES: [u8; 13] = [
    BPF_ADD, BPF_SUB, BPF_MUL, BPF_DIV, BPF_OR, BPF_AND, BPF_LSH, BPF_RSH, BPF_NEG, BPF_MOD,
    BPF_XOR, BPF_MOV, BPF_ARSH,
];
const JMP_CODES: [u8; 11] = [
    BPF_JEQ, BPF_JGT, BPF_JGE, BPF_JSET, BPF_JNE, BPF_JSGT, BPF_JSGE, BPF_JLT, BPF_JLE, BPF_JSLT,
    BPF_JSLE,
];
const ATOMICS: [i32; 10] = [
    ATOMIC_ADD,
    ATOMIC_OR,
    ATOMIC_AND,
    ATOMIC_XOR,
    ATOMIC_ADD | ATOMIC_FETCH,
    ATOMIC_OR | ATOMIC_FETCH,
    ATOMIC_AND | ATOMIC_FETCH,
    ATOMIC_XOR | ATOMIC_FETCH,
    ATOMIC_XCHG,
    ATOMIC_CMPXCHG,
];

fn alu_op() -> impl Strategy<Value = Op> {
    (
        any::<bool>(),
        0..ALU_CODES.len(),
        any::<bool>(),
        0u8..10,
        0u8..10,
        edge_i32(),
        0u8..4,
    )
        .prop_map(|(w, c, x, d, s, imm, o)| {
            let code = ALU_CODES[c];
            let class = if w { BPF_ALU64 } else { BPF_ALU };
            let x = x && code != BPF_NEG;
            let off = match code {
                BPF_DIV | BPF_MOD => (o & 1) as i16,
                BPF_MOV if x => [0, 8, 16, if w { 32 } else { 0 }][o as usize],
                _ => 0,
            };
            Op::Alu(class | code | if x { BPF_X } else { BPF_K }, off, d, s, imm)
        })
}

fn op() -> impl Strategy<Value = Op> {
    let slot = (1i16..=8).prop_map(|k| -8 * k);
    let size = prop_oneof![Just(BPF_B), Just(BPF_H), Just(BPF_W), Just(BPF_DW)];
    prop_oneof![
        6 => alu_op(),
        1 => (0u8..3, prop_oneof![Just(16), Just(32), Just(64)], 0u8..10).prop_map(|(k, bits, d)| {
            let op = [BPF_ALU | BPF_END | BPF_TO_LE, BPF_ALU | BPF_END | BPF_TO_BE,
                BPF_ALU64 | BPF_END][k as usize];
            Op::End(op, bits, d)
        }),
        2 => (any::<bool>(), 0..JMP_CODES.len(), any::<bool>(), 0u8..10, 0u8..10, edge_i32(), 0usize..4)
            .prop_map(|(w, c, x, d, s, imm, skip)| {
                let class = if w { BPF_JMP } else { BPF_JMP32 };
                Op::Jmp(class | JMP_CODES[c] | if x { BPF_X } else { BPF_K }, d, s, imm, skip)
            }),
        1 => (any::<bool>(), 0..ATOMICS.len(), slot.clone(), 0u8..10).prop_map(|(w, a, off, s)| {
            Op::Atomic(if w { BPF_DW } else { BPF_W }, ATOMICS[a], off, s)
        }),
        1 => (size.clone(), any::<bool>(), slot.clone(), 0u8..10).prop_map(|(sz, sx, off, d)| {
            let mode = if sx && sz != BPF_DW { BPF_MEMSX } else { BPF_MEM };
            Op::Load(BPF_LDX | mode | sz, off, d)
        }),
        1 => (size.clone(), slot.clone(), 0u8..10).prop_map(|(sz, off, s)| Op::Store(sz, off, s)),
        1 => (size, slot, edge_i32()).prop_map(|(sz, off, imm)| Op::StoreImm(sz, off, imm)),
        1 => Just(Op::Call),
    ]
}

fn lddw(d: u8, v: u64) -> [Insn; 2] {
    [
        Insn::new(op::LDDW, d, 0, 0, v as u32 as i32),
        Insn::new(0, 0, 0, 0, (v >> 32) as u32 as i32),
    ]
}

/// Builds a complete program: registers and stack initialised, the body, then everything
/// folded into r0.
fn build(init: &[u64], ops: &[Op]) -> Vec<Insn> {
    let mut p = Vec::new();
    for (r, &v) in init.iter().enumerate().take(10) {
        p.extend(lddw(r as u8, v));
    }
    for k in 1..=8u8 {
        p.push(Insn::new(
            BPF_STX | BPF_MEM | BPF_DW,
            10,
            k,
            -8 * k as i16,
            0,
        ));
    }
    // Emit the body, remembering where each op starts to resolve forward jumps.
    let mut starts = Vec::new();
    let mut jumps = Vec::new();
    for (n, o) in ops.iter().enumerate() {
        starts.push(p.len());
        match *o {
            Op::Alu(op, off, d, s, imm) => p.push(Insn::new(op, d, s, off, imm)),
            Op::End(op, bits, d) => p.push(Insn::new(op, d, 0, 0, bits)),
            Op::Jmp(op, d, s, imm, skip) => {
                jumps.push((p.len(), n + 1 + skip));
                p.push(Insn::new(op, d, s, 0, imm));
            }
            Op::Atomic(sz, imm, off, s) => {
                p.push(Insn::new(BPF_STX | BPF_ATOMIC | sz, 10, s, off, imm))
            }
            Op::Load(op, off, d) => p.push(Insn::new(op, d, 10, off, 0)),
            Op::Store(sz, off, s) => p.push(Insn::new(BPF_STX | BPF_MEM | sz, 10, s, off, 0)),
            Op::StoreImm(sz, off, imm) => p.push(Insn::new(BPF_ST | BPF_MEM | sz, 10, 0, off, imm)),
            Op::Call => {
                p.push(Insn::new(op::CALL, 0, 0, 0, MIX as i32));
                for r in 1..=5u8 {
                    p.extend(lddw(r, init[r as usize].rotate_left(r as u32)));
                }
            }
        }
    }
    let end = p.len();
    for (at, to_op) in jumps {
        let to = starts.get(to_op).copied().unwrap_or(end);
        p[at].off = (to - at - 1) as i16;
    }
    for r in 1..=9u8 {
        p.push(Insn::new(BPF_ALU64 | BPF_XOR | BPF_X, 0, r, 0, 0));
    }
    for k in 1..=8u8 {
        p.push(Insn::new(
            BPF_LDX | BPF_MEM | BPF_DW,
            1,
            10,
            -8 * k as i16,
            0,
        ));
        p.push(Insn::new(BPF_ALU64 | BPF_LSH | BPF_K, 0, 0, 0, 1));
        p.push(Insn::new(BPF_ALU64 | BPF_XOR | BPF_X, 0, 1, 0, 0));
    }
    p.push(Insn::new(op::EXIT, 0, 0, 0, 0));
    p
}

fn run_interp(p: &[Insn]) -> u64 {
    // SAFETY: the program was verified and only touches its own stack and the pure helper.
    unsafe { interp::run(p, &env(), 0, 0) }.expect("interpreter runs")
}

fn run_jit(p: &[Insn], opts: &JitOptions) -> u64 {
    let code = JitCode::new(&jit::compile(p, &env(), opts).expect("compiles")).expect("maps");
    // SAFETY: compiled from a verified program that only touches its own stack and `mix`.
    unsafe { code.call(0, 0) }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(600))]

    #[test]
    fn jit_matches_interpreter(
        init in proptest::collection::vec(edge_u64(), 10),
        ops in proptest::collection::vec(op(), 1..40),
        preserve in any::<bool>(),
    ) {
        let p = build(&init, &ops);
        verify(&p, &env(), &VerifierOptions::default()).expect("generated program verifies");
        let want = run_interp(&p);
        let opts = JitOptions { preserve_vector_regs: preserve, ..JitOptions::for_this_cpu() };
        prop_assert_eq!(run_jit(&p, &opts), want, "program {:?}", ops);
    }
}

/// Operations rbpf 0.4 implements with the same semantics as RFC 9669.
fn rbpf_op() -> impl Strategy<Value = Op> {
    let codes = [
        BPF_ADD, BPF_SUB, BPF_MUL, BPF_DIV, BPF_OR, BPF_AND, BPF_LSH, BPF_RSH, BPF_MOD, BPF_XOR,
        BPF_MOV, BPF_ARSH,
    ];
    (
        any::<bool>(),
        0..codes.len(),
        any::<bool>(),
        0u8..10,
        0u8..10,
        edge_i32(),
    )
        .prop_map(move |(w, c, x, d, s, imm)| {
            let code = codes[c];
            let class = if w { BPF_ALU64 } else { BPF_ALU };
            // rbpf leaves the upper half of dst on 32-bit modulo by zero (avoid mod32 by reg) and
            // shifts by unmasked register counts (shift by immediates only).
            let x = x && (w || code != BPF_MOD) && !matches!(code, BPF_LSH | BPF_RSH | BPF_ARSH);
            let imm = match code {
                BPF_LSH | BPF_RSH | BPF_ARSH => imm & if w { 63 } else { 31 },
                BPF_DIV | BPF_MOD if imm == 0 => 3,
                _ => imm,
            };
            Op::Alu(class | code | if x { BPF_X } else { BPF_K }, 0, d, s, imm)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn interpreter_matches_rbpf(
        init in proptest::collection::vec(edge_u64(), 10),
        ops in proptest::collection::vec(rbpf_op(), 1..30),
    ) {
        let p = build(&init, &ops);
        let want = run_interp(&p);
        let bytes: Vec<u8> = p.iter().flat_map(|i| i.encode()).collect();
        let vm = rbpf::EbpfVmNoData::new(Some(&bytes)).expect("rbpf accepts");
        let got = vm.execute_program().expect("rbpf runs");
        prop_assert_eq!(got, want, "program {:?}", ops);
        prop_assert_eq!(run_jit(&p, &JitOptions::for_this_cpu()), want);
    }
}

#[test]
fn inline_ctx_helpers_read_the_probe_ctx() {
    unsafe extern "C" fn not_inlined(_: u64, _: u64, _: u64, _: u64, _: u64) -> u64 {
        0xdead
    }
    static CTX_HELPERS: [(u32, HelperFn); 2] = [
        (jit::HELPER_GET_ATTACH_COOKIE, not_inlined),
        (jit::HELPER_GET_FUNC_IP, not_inlined),
    ];
    let env = Env {
        helpers: &CTX_HELPERS,
        ..Env::default()
    };
    let ctx = xcover_session::ProbeCtx {
        cookie: 42,
        func_ip: 0x401000,
        ..Default::default()
    };
    let p = asm::assemble(
        "mov %r6, %r1\ncall 174\nmov %r7, %r0\nmov %r1, %r6\ncall 173\nadd %r0, %r7\nexit",
    )
    .unwrap();
    verify(&p, &env, &VerifierOptions::default()).unwrap();
    for (inline, want) in [(true, 42 + 0x401000), (false, 2 * 0xdead)] {
        let opts = JitOptions {
            preserve_vector_regs: true,
            inline_ctx_helpers: inline,
            ..JitOptions::for_this_cpu()
        };
        let code = JitCode::new(&jit::compile(&p, &env, &opts).unwrap()).unwrap();
        // SAFETY: r1 points to a live ProbeCtx; the helpers are pure.
        let got = unsafe { code.call(&ctx as *const _ as u64, 0) };
        assert_eq!(got, want, "inline = {inline}");
    }
}

#[test]
fn jit_code_runs_anywhere() {
    // The same bytes copied to two different mappings give the same result.
    let p =
        asm::assemble("mov %r0, 1\ncall local f\nadd %r0, 1\nexit\nf:\nmov %r0, 41\nexit").unwrap();
    verify(&p, &env(), &VerifierOptions::default()).unwrap();
    let bytes = jit::compile(&p, &env(), &JitOptions::for_this_cpu()).unwrap();
    let a = JitCode::new(&bytes).unwrap();
    let b = JitCode::new(&bytes).unwrap();
    assert_ne!(a.as_ptr(), b.as_ptr());
    // SAFETY: verified program touching nothing but its stack.
    unsafe {
        assert_eq!(a.call(0, 0), 42);
        assert_eq!(b.call(0, 0), 42);
    }
}
