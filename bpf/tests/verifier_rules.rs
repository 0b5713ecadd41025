//! The typed verifier, rule by rule: one hostile program per rule, each rejected at the
//! right instruction, naming the right register, for the right reason; and the legitimate
//! programs next to them accepted.

use xcover_bpf::asm;
use xcover_bpf::env::{Env, HelperFn, MapInfo};
use xcover_bpf::helpers::standard_helpers;
use xcover_bpf::insn::*;
use xcover_bpf::program::MapType;
use xcover_bpf::verifier::{
    Access, Reason, RegType, VerifierOptions, VerifyError, verify, verify_stats,
};

const PROBE_CTX: i64 = core::mem::size_of::<xcover_session::ProbeCtx>() as i64;

/// Map 0: ARRAY (key 4, value 16, 4 entries); 1: HASH (key 8, value 8); 2: RINGBUF (4 KiB);
/// 3: a read-only array (`.rodata`, value 8).
static INFO: [MapInfo; 4] = [
    MapInfo {
        map_type: MapType::Array,
        key_size: 4,
        value_size: 16,
        max_entries: 4,
        read_only: false,
    },
    MapInfo {
        map_type: MapType::Hash,
        key_size: 8,
        value_size: 8,
        max_entries: 16,
        read_only: false,
    },
    MapInfo {
        map_type: MapType::Ringbuf,
        key_size: 0,
        value_size: 0,
        max_entries: 4096,
        read_only: false,
    },
    MapInfo {
        map_type: MapType::Array,
        key_size: 4,
        value_size: 8,
        max_entries: 1,
        read_only: true,
    },
];
static ADDRS: [u64; 4] = [0x1000, 0x2000, 0x3000, 0x4000];

fn env() -> Env<'static> {
    Env {
        helpers: standard_helpers(),
        map_addrs: &ADDRS,
        map_value_addrs: &ADDRS,
        maps: &INFO,
        ..Env::default()
    }
}

/// Assembles `text`; `lddw %rN, mapK` loads map K, `lddw %rN, valK` the first value of map K.
fn assemble(text: &str) -> Vec<Insn> {
    let mut lines = Vec::new();
    for l in text.lines() {
        let t = l.trim();
        let marked = t.strip_prefix("lddw ").and_then(|rest| {
            let (reg, what) = rest.split_once(", ")?;
            let (base, k) = if let Some(k) = what.strip_prefix("map") {
                (0x7000_0000u32, k)
            } else {
                (0x7100_0000u32, what.strip_prefix("val")?)
            };
            Some(format!("lddw {reg}, {:#x}", base + k.parse::<u32>().ok()?))
        });
        lines.push(marked.unwrap_or_else(|| t.to_string()));
    }
    let mut p = asm::assemble(&lines.join("\n")).unwrap_or_else(|e| panic!("{text}: {e}"));
    for k in 0..p.len() {
        if p[k].is_lddw() && p[k + 1].imm == 0 {
            let imm = p[k].imm as u32;
            if imm & 0xff00_0000 == 0x7000_0000 {
                p[k].src = PSEUDO_MAP_FD;
                p[k].imm = (imm & 0xff) as i32;
            } else if imm & 0xff00_0000 == 0x7100_0000 {
                p[k].src = PSEUDO_MAP_VALUE;
                p[k].imm = (imm & 0xff) as i32;
            }
        }
    }
    p
}

fn check_with(text: &str, opts: &VerifierOptions) -> Result<(), VerifyError> {
    verify(&assemble(text), &env(), opts)
}

fn check(text: &str) -> Result<(), VerifyError> {
    check_with(text, &VerifierOptions::default())
}

fn loops() -> VerifierOptions {
    VerifierOptions {
        allow_back_edges: true,
        ..VerifierOptions::default()
    }
}

#[track_caller]
fn rejects(text: &str, pc: usize, reason: Reason) -> String {
    let e = check(text).expect_err(text);
    assert_eq!(e, VerifyError { pc, reason }, "{text}\n{e}");
    e.to_string()
}

#[track_caller]
fn accepts(text: &str) {
    check(text).unwrap_or_else(|e| panic!("{text}\n{e}"));
}

/// `r0` = a value of map `m` (or NULL), key 0 on the stack at r10-8.
fn lookup(m: u32) -> String {
    format!("stdw [%r10-8], 0\nmov %r2, %r10\nadd %r2, -8\nlddw %r1, map{m}\ncall 1\n")
}

#[test]
fn the_issue_program_is_rejected() {
    let msg = rejects(
        "lddw %r1, 0x10\nstxdw [%r1], %r1\nldxdw %r0, [%r1+8]\nexit",
        2,
        Reason::NotAPointer {
            reg: 1,
            ty: RegType::Scalar,
            access: Access::Store,
        },
    );
    assert_eq!(
        msg,
        "insn 2: r1 is a scalar, not a pointer to memory: cannot store through it"
    );
}

#[test]
fn load_through_a_scalar() {
    rejects(
        "ldxdw %r2, [%r1+112]\nldxdw %r0, [%r2]\nexit",
        1,
        Reason::NotAPointer {
            reg: 2,
            ty: RegType::Scalar,
            access: Access::Load,
        },
    );
    // A map (its header) is not memory the program may touch either.
    rejects(
        "lddw %r1, map0\nldxdw %r0, [%r1]\nexit",
        2,
        Reason::NotAPointer {
            reg: 1,
            ty: RegType::Map,
            access: Access::Load,
        },
    );
}

#[test]
fn context_bounds_and_read_only() {
    accepts(&format!("ldxdw %r0, [%r1+{}]\nexit", PROBE_CTX - 8));
    rejects(
        &format!("ldxdw %r0, [%r1+{}]\nexit", PROBE_CTX - 4),
        0,
        Reason::OutOfBounds {
            reg: 1,
            ty: RegType::Ctx,
            lo: PROBE_CTX - 4,
            hi: PROBE_CTX + 4,
            start: 0,
            end: PROBE_CTX,
        },
    );
    rejects(
        "ldxb %r0, [%r1-1]\nexit",
        0,
        Reason::OutOfBounds {
            reg: 1,
            ty: RegType::Ctx,
            lo: -1,
            hi: 0,
            start: 0,
            end: PROBE_CTX,
        },
    );
    rejects(
        "stdw [%r1], 0\nmov %r0, 0\nexit",
        0,
        Reason::ReadOnly {
            reg: 1,
            ty: RegType::Ctx,
        },
    );
}

#[test]
fn stack_bounds_through_a_copy() {
    rejects(
        "mov %r2, %r10\nadd %r2, -516\nldxw %r0, [%r2]\nexit",
        2,
        Reason::OutOfBounds {
            reg: 2,
            ty: RegType::Stack,
            lo: -516,
            hi: -512,
            start: -512,
            end: 0,
        },
    );
    rejects(
        "mov %r2, %r10\nstdw [%r2-8], 1\nldxdw %r0, [%r2-4]\nexit",
        2,
        Reason::OutOfBounds {
            reg: 2,
            ty: RegType::Stack,
            lo: -4,
            hi: 4,
            start: -512,
            end: 0,
        },
    );
}

#[test]
fn map_value_bounds() {
    accepts(&format!(
        "{}jeq %r0, 0, out\nldxdw %r1, [%r0+8]\nout:\nmov %r0, 0\nexit",
        lookup(0)
    ));
    rejects(
        &format!("{}jeq %r0, 0, +1\nldxdw %r0, [%r0+16]\nexit", lookup(0)),
        7,
        Reason::OutOfBounds {
            reg: 0,
            ty: RegType::MapValue,
            lo: 16,
            hi: 24,
            start: 0,
            end: 16,
        },
    );
    // A variable index: fine within the value, rejected when it may leave it.
    let idx = |mask: u32| {
        format!(
            "ldxdw %r6, [%r1+112]\n{}jeq %r0, 0, out\nand %r6, {mask}\nadd %r0, %r6\n\
             ldxdw %r1, [%r0]\nout:\nmov %r0, 0\nexit",
            lookup(0)
        )
    };
    accepts(&idx(7));
    rejects(
        &idx(15),
        10,
        Reason::OutOfBounds {
            reg: 0,
            ty: RegType::MapValue,
            lo: 0,
            hi: 23,
            start: 0,
            end: 16,
        },
    );
}

#[test]
fn null_map_value_used_before_its_check() {
    let msg = rejects(
        &format!("{}ldxdw %r0, [%r0]\nexit", lookup(0)),
        6,
        Reason::MaybeNull {
            reg: 0,
            ty: RegType::MapValueOrNull,
            access: Access::Load,
        },
    );
    assert!(msg.contains("compare it with 0"), "{msg}");
    // Dereferenced on the NULL side of the check.
    rejects(
        &format!(
            "{}jne %r0, 0, +1\nstdw [%r0], 1\nmov %r0, 0\nexit",
            lookup(0)
        ),
        7,
        Reason::NotAPointer {
            reg: 0,
            ty: RegType::Scalar,
            access: Access::Store,
        },
    );
    // A copy checked stands for the original, and the other way round.
    accepts(&format!(
        "{}mov %r6, %r0\njeq %r0, 0, out\nstdw [%r6], 1\nout:\nmov %r0, 0\nexit",
        lookup(1)
    ));
    // But not a copy of another lookup's result.
    rejects(
        &format!(
            "{}mov %r6, %r0\n{}jeq %r0, 0, out\nstdw [%r6], 1\nout:\nmov %r0, 0\nexit",
            lookup(1),
            lookup(1)
        ),
        14,
        Reason::MaybeNull {
            reg: 6,
            ty: RegType::MapValueOrNull,
            access: Access::Store,
        },
    );
}

#[test]
fn pointers_stored_into_maps_or_records_leak() {
    rejects(
        &format!(
            "{}jeq %r0, 0, +1\nstxdw [%r0], %r10\nmov %r0, 0\nexit",
            lookup(0)
        ),
        7,
        Reason::PointerLeak {
            reg: 10,
            ty: RegType::Stack,
            into: RegType::MapValue,
        },
    );
    rejects(
        "mov %r6, %r1\nlddw %r1, map2\nmov %r2, 16\nmov %r3, 0\ncall 131\njeq %r0, 0, out\n\
         stxdw [%r0], %r6\nmov %r1, %r0\nmov %r2, 0\ncall 132\nout:\nmov %r0, 0\nexit",
        7,
        Reason::PointerLeak {
            reg: 6,
            ty: RegType::Ctx,
            into: RegType::Record,
        },
    );
    // Through a helper: a pointer spilled on the stack, handed over as the value to store.
    rejects(
        "stxdw [%r10-16], %r1\nstdw [%r10-8], 0\nlddw %r1, map1\nmov %r2, %r10\nadd %r2, -8\n\
         mov %r3, %r10\nadd %r3, -16\nmov %r4, 0\ncall 2\nexit",
        9,
        Reason::PointerLeak {
            reg: 3,
            ty: RegType::Ctx,
            into: RegType::Helper,
        },
    );
    // A spill on the stack is fine, and comes back as the pointer it was.
    accepts("stxdw [%r10-8], %r1\nldxdw %r2, [%r10-8]\nldxdw %r0, [%r2]\nexit");
}

#[test]
fn pointer_arithmetic() {
    // With a bounded number: fine (the conformance suite's stack.data does this).
    accepts(
        "stdw [%r10-16], 1\nstdw [%r10-8], 2\nldxdw %r2, [%r1+112]\nand %r2, 1\nlsh %r2, 3\n\
         mov %r3, %r10\nadd %r3, %r2\nldxdw %r0, [%r3-16]\nexit",
    );
    let msg = rejects(
        "ldxdw %r2, [%r1+112]\nmov %r3, %r10\nadd %r3, %r2\nldxdw %r0, [%r3-8]\nexit",
        2,
        Reason::PointerArith {
            reg: 2,
            ty: RegType::Scalar,
            why: "it has no bounds: added to a pointer it could point anywhere",
        },
    );
    assert!(
        msg.starts_with("insn 2: r2 is a scalar: it has no bounds"),
        "{msg}"
    );
    rejects(
        &format!("{}add %r0, 8\nexit", lookup(0)),
        6,
        Reason::PointerArith {
            reg: 0,
            ty: RegType::MapValueOrNull,
            why: "arithmetic on a pointer that may be NULL (compare it with 0 first)",
        },
    );
    for (text, reg) in [
        ("mov %r2, %r10\nand %r2, -8\nmov %r0, 0\nexit", 2),
        ("mov32 %r2, %r10\nmov %r0, 0\nexit", 10),
        ("mov %r2, %r10\nadd32 %r2, 8\nmov %r0, 0\nexit", 2),
        ("mov %r2, 8\nsub %r2, %r10\nmov %r0, 0\nexit", 10),
    ] {
        let e = check(text).expect_err(text);
        assert!(
            matches!(e.reason, Reason::PointerArith { reg: r, .. } if r == reg),
            "{text}: {e}"
        );
    }
}

#[test]
fn uninitialised_stack_reads() {
    rejects(
        "ldxdw %r0, [%r10-8]\nexit",
        0,
        Reason::UninitStack { reg: 10, off: -8 },
    );
    rejects(
        "stw [%r10-8], 1\nldxdw %r0, [%r10-8]\nexit",
        1,
        Reason::UninitStack { reg: 10, off: -4 },
    );
    // At a variable offset, every byte it may read must be written.
    rejects(
        "ldxdw %r2, [%r1+112]\nand %r2, 8\nmov %r3, %r10\nadd %r3, -16\nadd %r3, %r2\n\
         stdw [%r10-16], 1\nldxdw %r0, [%r3]\nexit",
        6,
        Reason::UninitStack { reg: 3, off: -8 },
    );
    // A helper's key must be written too.
    rejects(
        "stw [%r10-8], 0\nmov %r2, %r10\nadd %r2, -8\nlddw %r1, map1\ncall 1\nmov %r0, 0\nexit",
        5,
        Reason::UninitStack { reg: 2, off: -4 },
    );
}

#[test]
fn helper_arguments_of_the_wrong_type() {
    rejects(
        "stdw [%r10-8], 0\nmov %r2, %r10\nadd %r2, -8\nmov %r1, 0\ncall 1\nmov %r0, 0\nexit",
        4,
        Reason::HelperArg {
            helper: 1,
            reg: 1,
            expected: "a map with keys (array or hash)",
            got: RegType::Scalar,
        },
    );
    // A lookup in a ring buffer.
    let e = check(&format!("{}mov %r0, 0\nexit", lookup(2))).unwrap_err();
    assert!(
        matches!(
            e.reason,
            Reason::HelperArg {
                helper: 1,
                reg: 1,
                got: RegType::Map,
                ..
            }
        ),
        "{e}"
    );
    // A stack key smaller than the key size (4 bytes here).
    rejects(
        "sth [%r10-2], 0\nmov %r2, %r10\nadd %r2, -2\nlddw %r1, map0\ncall 1\nmov %r0, 0\nexit",
        5,
        Reason::OutOfBounds {
            reg: 2,
            ty: RegType::Stack,
            lo: -2,
            hi: 2,
            start: -512,
            end: 0,
        },
    );
    // A number as the key.
    let e = check("mov %r2, 8\nlddw %r1, map0\ncall 1\nmov %r0, 0\nexit").unwrap_err();
    assert!(
        matches!(
            e.reason,
            Reason::HelperArg {
                helper: 1,
                reg: 2,
                got: RegType::Scalar,
                ..
            }
        ),
        "{e}"
    );
    // bpf_get_attach_cookie wants the context itself.
    rejects(
        "mov %r1, %r10\ncall 174\nexit",
        1,
        Reason::HelperArg {
            helper: 174,
            reg: 1,
            expected: "the context pointer",
            got: RegType::Stack,
        },
    );
    // bpf_probe_read_user: a size without bounds, or larger than the buffer.
    let read = |size: &str| {
        format!(
            "ldxdw %r3, [%r1+112]\nldxdw %r2, [%r1+104]\n{size}mov %r1, %r10\nadd %r1, -16\n\
             call 112\nexit"
        )
    };
    rejects(
        &read(""),
        4,
        Reason::UnboundedSize {
            helper: 112,
            reg: 2,
        },
    );
    rejects(
        &read("and %r2, 31\n"),
        5,
        Reason::OutOfBounds {
            reg: 1,
            ty: RegType::Stack,
            lo: -16,
            hi: 15,
            start: -512,
            end: 0,
        },
    );
    accepts(&read("and %r2, 15\n"));
    // The helper wrote its buffer: reading it back is fine.
    accepts(
        "ldxdw %r3, [%r1+112]\nmov %r1, %r10\nadd %r1, -8\nmov %r2, 8\ncall 112\n\
         ldxdw %r0, [%r10-8]\nexit",
    );
}

const RESERVE: &str = "mov %r6, %r1\nlddw %r1, map2\nmov %r2, 16\nmov %r3, 0\ncall 131\n";

#[test]
fn ring_buffer_records_must_be_released_on_every_path() {
    // Submitted on one path only.
    rejects(
        &format!(
            "{RESERVE}jeq %r0, 0, out\nldxdw %r2, [%r6+112]\njeq %r2, 0, out\nmov %r1, %r0\n\
             mov %r2, 0\ncall 132\nout:\nmov %r0, 0\nexit"
        ),
        13,
        Reason::Unreleased(5),
    );
    // Submitted on one path, discarded on the other: fine.
    accepts(&format!(
        "{RESERVE}jeq %r0, 0, out\nstdw [%r0+8], 7\nmov %r1, %r0\nmov %r2, 0\n\
         ldxdw %r3, [%r6+112]\njeq %r3, 0, drop\ncall 132\nja out\ndrop:\ncall 133\nout:\n\
         mov %r0, 0\nexit"
    ));
    // NULL: nothing to release.
    accepts(&format!(
        "{RESERVE}jne %r0, 0, +2\nmov %r0, 0\nexit\nmov %r1, %r0\nmov %r2, 0\ncall 133\nmov %r0, 0\nexit"
    ));
    // Out of bounds of the 16-byte record, and used after it was submitted.
    let e = check(&format!(
        "{RESERVE}jeq %r0, 0, out\nstdw [%r0+16], 7\nmov %r1, %r0\nmov %r2, 0\ncall 132\nout:\n\
         mov %r0, 0\nexit"
    ))
    .unwrap_err();
    assert!(
        matches!(
            e.reason,
            Reason::OutOfBounds {
                reg: 0,
                ty: RegType::Record,
                ..
            }
        ),
        "{e}"
    );
    rejects(
        &format!(
            "{RESERVE}jeq %r0, 0, out\nmov %r7, %r0\nmov %r1, %r0\nmov %r2, 0\ncall 132\n\
             stdw [%r7], 1\nout:\nmov %r0, 0\nexit"
        ),
        11,
        Reason::Uninit(7),
    );
    // Submitting what is not the record as reserved.
    let e = check(&format!(
        "{RESERVE}jeq %r0, 0, out\nadd %r0, 8\nmov %r1, %r0\nmov %r2, 0\ncall 132\nout:\n\
         mov %r0, 0\nexit"
    ))
    .unwrap_err();
    assert!(
        matches!(
            e.reason,
            Reason::HelperArg {
                helper: 132,
                reg: 1,
                got: RegType::Record,
                ..
            }
        ),
        "{e}"
    );
    // A variable record size.
    let e = check("ldxdw %r2, [%r1+112]\nlddw %r1, map2\nmov %r3, 0\ncall 131\nexit").unwrap_err();
    assert!(
        matches!(
            e.reason,
            Reason::HelperArg {
                helper: 131,
                reg: 2,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn loops_must_provably_end() {
    let e = check_with("mov %r0, 0\nja -1\nexit", &loops()).unwrap_err();
    assert_eq!(
        e,
        VerifyError {
            pc: 1,
            reason: Reason::InfiniteLoop
        }
    );
    // A loop whose exit condition never changes.
    let e = check_with(
        "ldxdw %r2, [%r1+112]\nmov %r0, 0\ntop:\njeq %r2, 0, out\nja top\nout:\nexit",
        &loops(),
    )
    .unwrap_err();
    assert_eq!(e.reason, Reason::InfiniteLoop, "{e}");
    // A counter against an unknown bound: it could run 2^64 times.
    let t = std::time::Instant::now();
    let e = check_with(
        "ldxdw %r2, [%r1+112]\nmov %r0, 0\ntop:\nadd %r0, 1\njlt %r0, %r2, top\nexit",
        &loops(),
    )
    .unwrap_err();
    assert_eq!(
        e.reason,
        Reason::TooComplex(xcover_bpf::verifier::MAX_PROCESSED),
        "{e}"
    );
    eprintln!("complexity limit reached in {:?}", t.elapsed());
    // A counted loop: walked to its end.
    let p =
        assemble("mov %r0, 0\nmov %r2, 0\ntop:\nadd %r0, %r2\nadd %r2, 1\njlt %r2, 100, top\nexit");
    let stats = verify_stats(&p, &env(), &loops()).unwrap();
    assert!(stats.processed > 300, "{stats:?}");
    // Without permission no loop at all.
    assert_eq!(
        check("mov %r0, 0\nmov %r2, 0\nadd %r2, 1\njlt %r2, 3, -2\nexit")
            .unwrap_err()
            .reason,
        Reason::BackEdge(2)
    );
}

#[test]
fn atomics_must_be_aligned() {
    rejects(
        "stdw [%r10-16], 0\nstdw [%r10-8], 0\nmov %r1, 1\nlock add [%r10-12], %r1\nmov %r0, 0\nexit",
        3,
        Reason::Misaligned {
            reg: 10,
            ty: RegType::Stack,
            off: -12,
            size: 8,
        },
    );
    accepts("stdw [%r10-8], 0\nmov %r1, 1\nlock add32 [%r10-4], %r1\nmov %r0, 0\nexit");
}

#[test]
fn read_only_globals() {
    accepts("lddw %r1, val3\nldxdw %r0, [%r1]\nexit");
    rejects(
        "lddw %r1, val3\nstdw [%r1], 1\nmov %r0, 0\nexit",
        2,
        Reason::ReadOnly {
            reg: 1,
            ty: RegType::MapValue,
        },
    );
    // A writable global: fine.
    accepts("lddw %r1, val0\nstdw [%r1+8], 1\nmov %r0, 0\nexit");
}

#[test]
fn local_functions_do_not_return_their_stack() {
    rejects(
        "call local f\nldxdw %r0, [%r0]\nexit\nf:\nmov %r0, %r10\nadd %r0, -8\nstdw [%r0], 1\nexit",
        6,
        Reason::DanglingStack { reg: 0 },
    );
    // But may use their caller's, through a pointer argument.
    accepts(
        "stdw [%r10-8], 5\nmov %r1, %r10\nadd %r1, -8\ncall local f\nexit\nf:\n\
         ldxdw %r0, [%r1]\nstdw [%r1], 6\nexit",
    );
}

#[test]
fn indirect_calls_need_a_known_target() {
    rejects(
        "ldxdw %r2, [%r1+112]\ncall %r2\nexit",
        1,
        Reason::BadCallTarget { reg: 2 },
    );
}

#[test]
fn helpers_without_a_prototype_cannot_be_called() {
    unsafe extern "C" fn h(_: u64, _: u64, _: u64, _: u64, _: u64) -> u64 {
        0
    }
    static HELPERS: [(u32, HelperFn); 1] = [(999, h)];
    let env = Env {
        helpers: &HELPERS,
        ..Env::default()
    };
    let p = asm::assemble("call 999\nexit").unwrap();
    assert_eq!(
        verify(&p, &env, &VerifierOptions::default()),
        Err(VerifyError {
            pc: 0,
            reason: Reason::NoPrototype(999)
        })
    );
}

#[test]
fn pointers_on_the_stack_stay_whole() {
    rejects(
        "stxw [%r10-8], %r1\nmov %r0, 0\nexit",
        0,
        Reason::PartialSpill {
            reg: 1,
            ty: RegType::Ctx,
        },
    );
    rejects(
        "stxdw [%r10-8], %r1\nldxw %r0, [%r10-8]\nexit",
        1,
        Reason::PartialPointer { reg: 10, off: -8 },
    );
    // Overwriting part of it leaves the rest unreadable.
    rejects(
        "stxdw [%r10-8], %r1\nstw [%r10-8], 0\nldxdw %r0, [%r10-8]\nexit",
        2,
        Reason::UninitStack { reg: 10, off: -4 },
    );
    // An atomic update would turn it into a number.
    rejects(
        "stxdw [%r10-8], %r1\nmov %r2, 1\nlock add [%r10-8], %r2\nmov %r0, 0\nexit",
        2,
        Reason::PartialPointer { reg: 10, off: -8 },
    );
}
