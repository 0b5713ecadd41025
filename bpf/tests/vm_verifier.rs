//! The verifier rejects each class of hostile program, naming the right instruction.

use xcover_bpf::asm::assemble;
use xcover_bpf::env::{Arg, Env, HelperFn, HelperProto, MapInfo, Ret};
use xcover_bpf::insn::*;
use xcover_bpf::program::MapType;
use xcover_bpf::verifier::{Reason, VerifierOptions, VerifyError, verify};

unsafe extern "C" fn helper(a: u64, _: u64, _: u64, _: u64, _: u64) -> u64 {
    a
}

/// A test helper (not a Linux id): takes anything in r1, returns a number.
const HELPER: u32 = 1000;
static HELPERS: [(u32, HelperFn); 1] = [(HELPER, helper)];
static PROTOS: [(u32, HelperProto); 1] =
    [(HELPER, HelperProto::new(&[Arg::Anything], Ret::Scalar))];
static MAPS: [u64; 1] = [0x1000];
static INFO: [MapInfo; 1] = [MapInfo {
    map_type: MapType::Array,
    key_size: 4,
    value_size: 8,
    max_entries: 1,
    read_only: false,
}];

fn env() -> Env<'static> {
    Env {
        helpers: &HELPERS,
        map_addrs: &MAPS,
        map_value_addrs: &MAPS,
        unwind_helper: None,
        map_inline: &[],
        rseq_cpu_id: None,
        tcb_tid: None,
        maps: &INFO,
        protos: &PROTOS,
    }
}

fn check(insns: &[Insn]) -> Result<(), VerifyError> {
    verify(insns, &env(), &VerifierOptions::default())
}

fn check_asm(text: &str) -> Result<(), VerifyError> {
    check(&assemble(text).expect("assembles"))
}

fn rejects(r: Result<(), VerifyError>, pc: usize, reason: Reason) {
    assert_eq!(r, Err(VerifyError { pc, reason }));
}

const EXIT: Insn = Insn::new(op::EXIT, 0, 0, 0, 0);
const MOV0: Insn = Insn::new(BPF_ALU64 | BPF_MOV | BPF_K, 0, 0, 0, 0);

#[test]
fn accepts_a_good_program() {
    check_asm(
        "mov %r0, 0\nstxdw [%r10-8], %r1\nldxdw %r2, [%r10-8]\ncall 1000\nlddw %r1, 5\n\
         call local f\nexit\nf:\nmov %r0, %r1\nexit",
    )
    .unwrap();
}

#[test]
fn empty_program() {
    rejects(check(&[]), 0, Reason::Empty);
}

#[test]
fn unknown_opcode() {
    rejects(
        check(&[MOV0, Insn::new(0xff, 0, 0, 0, 0), EXIT]),
        1,
        Reason::UnknownOpcode(0xff),
    );
    // Legacy packet access is not supported.
    rejects(
        check(&[MOV0, Insn::new(0x20, 0, 0, 0, 0), EXIT]),
        1,
        Reason::UnknownOpcode(0x20),
    );
}

#[test]
fn bad_register() {
    rejects(
        check(&[Insn::new(BPF_ALU64 | BPF_MOV | BPF_K, 11, 0, 0, 0), EXIT]),
        0,
        Reason::BadRegister(11),
    );
}

#[test]
fn write_to_frame_pointer() {
    rejects(
        check_asm("mov %r0, 0\nmov %r10, 0\nexit"),
        1,
        Reason::WriteToFp,
    );
    rejects(
        check_asm("mov %r0, 0\nldxdw %r10, [%r1]\nexit"),
        1,
        Reason::WriteToFp,
    );
}

#[test]
fn jump_out_of_range() {
    let r = check_asm("mov %r0, 0\nja +10\nexit");
    rejects(r.clone(), 1, Reason::JumpOutOfRange { target: 12, len: 3 });
    assert_eq!(
        r.unwrap_err().to_string(),
        "insn 1: jump to 12 out of range (program has 3 instructions)"
    );
}

#[test]
fn jump_into_lddw() {
    rejects(
        check_asm("mov %r0, 0\nja +1\nlddw %r1, 5\nexit"),
        1,
        Reason::JumpIntoLddw(3),
    );
}

#[test]
fn incomplete_lddw() {
    rejects(
        check(&[MOV0, EXIT, Insn::new(op::LDDW, 0, 0, 0, 1)]),
        2,
        Reason::IncompleteLddw,
    );
}

#[test]
fn back_edges_need_permission() {
    let p = assemble("mov %r0, 3\nsub %r0, 1\njne %r0, 0, -2\nexit").unwrap();
    rejects(check(&p), 2, Reason::BackEdge(1));
    let loops = VerifierOptions {
        allow_back_edges: true,
        ..Default::default()
    };
    verify(&p, &env(), &loops).unwrap();
}

#[test]
fn uninitialised_registers() {
    rejects(check_asm("mov %r0, %r3\nexit"), 0, Reason::Uninit(3));
    // r2 is only an input when asked for.
    rejects(check_asm("mov %r0, %r2\nexit"), 0, Reason::Uninit(2));
    let two = VerifierOptions {
        inputs: 2,
        ..Default::default()
    };
    verify(&assemble("mov %r0, %r2\nexit").unwrap(), &env(), &two).unwrap();
    // Calls clobber r1-r5.
    rejects(
        check_asm("call 1000\nmov %r0, %r1\nexit"),
        1,
        Reason::Uninit(1),
    );
    // exit reads r0.
    rejects(check_asm("mov %r1, 1\nexit"), 1, Reason::Uninit(0));
    // Only initialised on one path.
    rejects(
        check_asm("jeq %r1, 0, +1\nmov %r0, 1\nexit"),
        2,
        Reason::Uninit(0),
    );
}

#[test]
fn unknown_helper_and_map() {
    rejects(
        check_asm("mov %r0, 0\ncall 99\nexit"),
        1,
        Reason::UnknownHelper(99),
    );
    let map = Insn::new(op::LDDW, 1, PSEUDO_MAP_FD, 0, 3);
    rejects(
        check(&[MOV0, map, Insn::default(), EXIT]),
        1,
        Reason::UnknownMap(3),
    );
    let ok = Insn::new(op::LDDW, 1, PSEUDO_MAP_FD, 0, 0);
    check(&[MOV0, ok, Insn::default(), EXIT]).unwrap();
}

#[test]
fn stack_out_of_bounds() {
    rejects(
        check_asm("mov %r0, 0\nstxdw [%r10-520], %r1\nexit"),
        1,
        Reason::StackOutOfBounds { off: -520, size: 8 },
    );
    rejects(
        check_asm("mov %r0, 0\nstw [%r10-2], 1\nexit"),
        1,
        Reason::StackOutOfBounds { off: -2, size: 4 },
    );
    rejects(
        check_asm("ldxb %r0, [%r10]\nexit"),
        0,
        Reason::StackOutOfBounds { off: 0, size: 1 },
    );
    check_asm("mov %r0, 0\nstxdw [%r10-512], %r1\nexit").unwrap();
}

#[test]
fn fall_through_and_missing_exit() {
    rejects(check_asm("mov %r0, 0"), 0, Reason::FallThrough);
    rejects(
        check_asm("mov %r0, 0\nja +1\nexit\nmov %r0, 1"),
        3,
        Reason::FallThrough,
    );
    let loops = VerifierOptions {
        allow_back_edges: true,
        ..Default::default()
    };
    let p = assemble("mov %r0, 0\nja -1").unwrap();
    assert_eq!(
        verify(&p, &env(), &loops),
        Err(VerifyError {
            pc: 0,
            reason: Reason::MissingExit
        })
    );
}

#[test]
fn recursion_and_leaving_a_function() {
    rejects(
        check_asm("mov %r0, 0\ncall local f\nexit\nf:\ncall local f\nexit"),
        3,
        Reason::Recursion,
    );
    rejects(
        check_asm("mov %r0, 0\ncall local f\nja f\nf:\nmov %r0, 1\nexit"),
        2,
        Reason::JumpOutOfFunction(3),
    );
}

#[test]
fn random_bytes_never_panic() {
    use proptest::prelude::*;
    proptest!(ProptestConfig::with_cases(2000), |(words in proptest::collection::vec(any::<u64>(), 0..40))| {
        let insns: Vec<Insn> = words.iter().map(|w| Insn::decode(w.to_le_bytes())).collect();
        let _ = verify(&insns, &env(), &VerifierOptions::default());
        let _ = verify(&insns, &env(), &VerifierOptions { allow_back_edges: true, inputs: 2, ..Default::default() });
    });
}

#[test]
fn random_text_never_panics_the_assembler() {
    use proptest::prelude::*;
    proptest!(ProptestConfig::with_cases(2000), |(text in "[a-z0-9%\\[\\]+\\-:, x\n]{0,80}")| {
        let _ = assemble(&text);
    });
    proptest!(ProptestConfig::with_cases(1000), |(text in "\\PC{0,60}")| {
        let _ = assemble(&text);
    });
}
