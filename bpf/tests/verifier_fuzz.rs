//! Differential fuzz of the verifier against guarded execution: random structured programs
//! (pointer moves, loads and stores of every size at small offsets, map lookups, NULL
//! checks, ring-buffer records, helper buffers, branches); every one the verifier accepts
//! runs in the reference interpreter with every memory access checked against what the
//! program was given — the context (read-only), the bytes of the stack it wrote, the values
//! of its array maps, its live ring-buffer records — and every helper's pointer arguments
//! checked the same way. A refused access is a verifier bug.

use std::cell::RefCell;
use std::time::Instant;

use xcover_bpf::env::{Env, HelperFn, MapInfo};
use xcover_bpf::helpers;
use xcover_bpf::insn::*;
use xcover_bpf::interp;
use xcover_bpf::maps::{Arena, ArenaLayout, ArenaMaps};
use xcover_bpf::program::{MapDef, MapType};
use xcover_bpf::verifier::{VerifierOptions, verify};
use xcover_session::ProbeCtx;

/// What a running program may touch.
#[derive(Default)]
struct Allowed {
    ctx: (u64, usize),
    stack: (u64, usize),
    /// Bytes of the stack written so far (a read of any other is a verifier bug too).
    written: Vec<bool>,
    /// Array maps: first value, stride, value size, entries.
    arrays: Vec<(u64, u64, u64, u64)>,
    /// Live ring-buffer records.
    records: Vec<(u64, u64)>,
    violations: Vec<String>,
    /// Accesses allowed, by region: ctx, stack, map value, record.
    hits: [usize; 4],
}

thread_local! {
    static ALLOWED: RefCell<Allowed> = RefCell::new(Allowed::default());
}

impl Allowed {
    fn check(&mut self, addr: u64, len: usize, write: bool) -> bool {
        let len64 = len as u64;
        let within = |start: u64, size: u64| addr >= start && addr + len64 <= start + size;
        if within(self.stack.0, self.stack.1 as u64) {
            let at = (addr - self.stack.0) as usize;
            if write {
                self.written[at..at + len]
                    .iter_mut()
                    .for_each(|w| *w = true);
            } else if !self.written[at..at + len].iter().all(|&w| w) {
                return self.refuse(addr, len, write, "uninitialised stack");
            }
            self.hits[1] += 1;
            return true;
        }
        if within(self.ctx.0, self.ctx.1 as u64) {
            if write {
                return self.refuse(addr, len, write, "a write to the context");
            }
            self.hits[0] += 1;
            return true;
        }
        for &(first, stride, size, n) in &self.arrays {
            if addr >= first && addr < first + stride * n {
                let off = (addr - first) % stride;
                if off + len64 <= size {
                    self.hits[2] += 1;
                    return true;
                }
                return self.refuse(addr, len, write, "across a map value's end");
            }
        }
        if self.records.iter().any(|&(p, n)| within(p, n)) {
            self.hits[3] += 1;
            return true;
        }
        self.refuse(addr, len, write, "memory the program was not given")
    }

    fn refuse(&mut self, addr: u64, len: usize, write: bool, why: &str) -> bool {
        let rw = if write { "write" } else { "read" };
        self.violations
            .push(format!("{len}-byte {rw} at {addr:#x}: {why}"));
        false
    }
}

fn check(addr: u64, len: usize, write: bool) -> bool {
    ALLOWED.with(|a| a.borrow_mut().check(addr, len, write))
}

// Helpers that check their pointer arguments, then do the real work.

unsafe extern "C" fn lookup(map: u64, key: u64, _: u64, _: u64, _: u64) -> u64 {
    if !check(key, 4, false) {
        return 0;
    }
    // SAFETY: map is a header of the test's arena; key was just checked.
    unsafe { helpers::map_lookup_elem(map, key, 0, 0, 0) }
}

unsafe extern "C" fn read_user(dst: u64, size: u64, src: u64, _: u64, _: u64) -> u64 {
    if size > 0 && !check(dst, size as usize, true) {
        return 0;
    }
    // SAFETY: dst was checked for size bytes; src is read fault-safely.
    unsafe { helpers::probe_read_user(dst, size, src, 0, 0) }
}

unsafe extern "C" fn reserve(map: u64, size: u64, flags: u64, _: u64, _: u64) -> u64 {
    // SAFETY: map is a header of the test's arena.
    let r = unsafe { helpers::ringbuf_reserve(map, size, flags, 0, 0) };
    if r != 0 {
        ALLOWED.with(|a| a.borrow_mut().records.push((r, size)));
    }
    r
}

unsafe extern "C" fn release(data: u64, _: u64, _: u64, _: u64, _: u64) -> u64 {
    let held = ALLOWED.with(|a| {
        let mut a = a.borrow_mut();
        let before = a.records.len();
        a.records.retain(|&(p, _)| p != data);
        a.records.len() < before
    });
    if !held {
        ALLOWED.with(|a| {
            a.borrow_mut()
                .violations
                .push(format!("release of {data:#x}, not a live record"))
        });
        return 0;
    }
    // SAFETY: data is a live record of the test's ring.
    unsafe { helpers::ringbuf_discard(data, 0, 0, 0, 0) }
}

unsafe extern "C" fn cookie(ctx: u64, _: u64, _: u64, _: u64, _: u64) -> u64 {
    let ok = ALLOWED.with(|a| a.borrow().ctx.0 == ctx);
    if !ok {
        ALLOWED.with(|a| {
            a.borrow_mut()
                .violations
                .push(format!("ctx helper got {ctx:#x}"))
        });
        return 0;
    }
    // SAFETY: ctx is the test's ProbeCtx.
    unsafe { helpers::get_attach_cookie(ctx, 0, 0, 0, 0) }
}

static HELPERS: [(u32, HelperFn); 6] = [
    (helpers::MAP_LOOKUP_ELEM, lookup),
    (helpers::PROBE_READ_USER, read_user),
    (helpers::RINGBUF_RESERVE, reserve),
    (helpers::RINGBUF_SUBMIT, release),
    (helpers::RINGBUF_DISCARD, release),
    (helpers::GET_ATTACH_COOKIE, cookie),
];

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn reg(&mut self) -> u8 {
        // r0-r9 mostly, r10 (read-only) sometimes as a source.
        [0, 0, 1, 2, 3, 6, 6, 7, 7, 8, 9][self.below(11) as usize]
    }
    fn small(&mut self) -> i32 {
        let edges = [0, 1, 4, 7, 8, 12, 16, 24, -4, -8, -16, 120, 512, -512];
        if self.below(2) == 0 {
            edges[self.below(edges.len() as u64) as usize]
        } else {
            self.below(64) as i32 - 32
        }
    }
    fn size(&mut self) -> u8 {
        [BPF_B, BPF_H, BPF_W, BPF_DW][self.below(4) as usize]
    }
}

fn lddw(d: u8, src: u8, imm: i32) -> [Insn; 2] {
    [
        Insn::new(op::LDDW, d, src, 0, imm),
        Insn::new(0, 0, 0, 0, 0),
    ]
}

/// Offset for an access through `base`: below `r10` for the frame pointer.
fn offset(rng: &mut Rng, base: u8) -> i16 {
    if base == 10 {
        -(1 + rng.below(40) as i16)
    } else {
        rng.small() as i16
    }
}

fn mov(d: u8, imm: i32) -> Insn {
    Insn::new(BPF_ALU64 | BPF_MOV | BPF_K, d, 0, 0, imm)
}

/// After a helper call, `r1`-`r5` usually get numbers again (or stay clobbered).
fn reinit(p: &mut Vec<Insn>, rng: &mut Rng) {
    if rng.below(4) != 0 {
        for r in 1..=5 {
            p.push(mov(r, rng.small()));
        }
    }
}

/// A random program: `r9` keeps the context, `r6`/`r7` often hold pointers, 32 bytes of
/// stack are written first.
fn program(rng: &mut Rng) -> Vec<Insn> {
    let mut p = vec![Insn::new(BPF_ALU64 | BPF_MOV | BPF_X, 9, 1, 0, 0)];
    for k in 1..=4 {
        p.push(Insn::new(BPF_ST | BPF_MEM | BPF_DW, 10, 0, -8 * k, 0));
    }
    for r in [0, 1, 2, 3, 4, 5, 7] {
        p.push(mov(r, rng.small()));
    }
    p.push(Insn::new(BPF_ALU64 | BPF_MOV | BPF_X, 6, 10, 0, 0));
    p.push(Insn::new(BPF_ALU64 | BPF_ADD | BPF_K, 6, 0, 0, -16));
    p.push(Insn::new(BPF_ALU64 | BPF_MOV | BPF_X, 8, 9, 0, 0));
    let mut starts = Vec::new();
    let mut jumps = Vec::new();
    let n = 3 + rng.below(14) as usize;
    for k in 0..n {
        starts.push(p.len());
        let (r, s) = (rng.reg(), rng.reg());
        let access = |rng: &mut Rng, base: u8, v: u8| {
            let off = rng.below(18) as i16 - 1;
            if rng.below(2) == 0 {
                Insn::new(BPF_LDX | BPF_MEM | rng.size(), v, base, off, 0)
            } else {
                Insn::new(BPF_STX | BPF_MEM | rng.size(), base, v, off, 0)
            }
        };
        match rng.below(26) {
            20 | 21 => {
                // Look up, check, touch the value.
                p.push(Insn::new(
                    BPF_ST | BPF_MEM | BPF_W,
                    10,
                    0,
                    -4,
                    rng.below(5) as i32,
                ));
                p.push(Insn::new(BPF_ALU64 | BPF_MOV | BPF_X, 2, 10, 0, 0));
                p.push(Insn::new(BPF_ALU64 | BPF_ADD | BPF_K, 2, 0, 0, -4));
                p.extend(lddw(1, PSEUDO_MAP_FD, 0));
                p.push(Insn::new(
                    op::CALL,
                    0,
                    0,
                    0,
                    helpers::MAP_LOOKUP_ELEM as i32,
                ));
                p.push(Insn::new(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 1, 0));
                p.push(access(rng, 0, s));
                reinit(&mut p, rng);
            }
            22 | 23 => {
                // Reserve, check, write, submit.
                let size = [8, 16, 24][rng.below(3) as usize];
                p.extend(lddw(1, PSEUDO_MAP_FD, 1));
                p.push(mov(2, size));
                p.push(mov(3, 0));
                p.push(Insn::new(
                    op::CALL,
                    0,
                    0,
                    0,
                    helpers::RINGBUF_RESERVE as i32,
                ));
                p.push(Insn::new(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 4, 0));
                let v = [8, 9, 6][rng.below(3) as usize];
                p.push(access(rng, 0, v));
                p.push(Insn::new(BPF_ALU64 | BPF_MOV | BPF_X, 1, 0, 0, 0));
                p.push(mov(2, 0));
                p.push(Insn::new(op::CALL, 0, 0, 0, helpers::RINGBUF_SUBMIT as i32));
                reinit(&mut p, rng);
            }
            24 => {
                p.extend(lddw(r, PSEUDO_MAP_VALUE, 2));
                p.push(access(rng, r, s));
            }
            0 => p.push(Insn::new(BPF_ALU64 | BPF_MOV | BPF_K, r, 0, 0, rng.small())),
            1 => p.push(Insn::new(BPF_ALU64 | BPF_MOV | BPF_X, r, s, 0, 0)),
            2 => p.push(Insn::new(BPF_ALU64 | BPF_ADD | BPF_K, r, 0, 0, rng.small())),
            3 => p.push(Insn::new(BPF_ALU64 | BPF_ADD | BPF_X, r, s, 0, 0)),
            4 => {
                let m = [1, 3, 7, 15, 255, -1, -8][rng.below(7) as usize];
                p.push(Insn::new(BPF_ALU64 | BPF_AND | BPF_K, r, 0, 0, m));
            }
            5 => {
                let code = [BPF_SUB, BPF_MUL, BPF_LSH, BPF_RSH, BPF_OR, BPF_XOR, BPF_MOD]
                    [rng.below(7) as usize];
                let class = if rng.below(3) == 0 {
                    BPF_ALU
                } else {
                    BPF_ALU64
                };
                let imm = rng.below(8) as i32;
                p.push(Insn::new(class | code | BPF_K, r, 0, 0, imm));
            }
            6 | 7 => {
                let base = [6, 7, 9, 10, r][rng.below(5) as usize];
                let sx = if rng.below(4) == 0 {
                    BPF_MEMSX
                } else {
                    BPF_MEM
                };
                let sz = rng.size();
                let mode = if sz == BPF_DW { BPF_MEM } else { sx };
                let off = offset(rng, base);
                p.push(Insn::new(BPF_LDX | mode | sz, r, base, off, 0));
            }
            8 | 9 => {
                let base = [6, 7, 10, r][rng.below(4) as usize];
                let off = offset(rng, base);
                p.push(Insn::new(BPF_STX | BPF_MEM | rng.size(), base, s, off, 0));
            }
            10 => {
                let base = [6, 7, 10][rng.below(3) as usize];
                let imm = rng.small();
                let off = offset(rng, base);
                p.push(Insn::new(BPF_ST | BPF_MEM | rng.size(), base, 0, off, imm));
            }
            11 | 12 => {
                // r0 = lookup(map 0, key); the key is stored first unless we skip it.
                let key = rng.below(6) as i32;
                if rng.below(8) != 0 {
                    p.push(Insn::new(BPF_ST | BPF_MEM | BPF_W, 10, 0, -4, key));
                }
                p.push(Insn::new(BPF_ALU64 | BPF_MOV | BPF_X, 2, 10, 0, 0));
                p.push(Insn::new(BPF_ALU64 | BPF_ADD | BPF_K, 2, 0, 0, -4));
                p.extend(lddw(1, PSEUDO_MAP_FD, 0));
                p.push(Insn::new(
                    op::CALL,
                    0,
                    0,
                    0,
                    helpers::MAP_LOOKUP_ELEM as i32,
                ));
                let keep = [6, 7, 0][rng.below(3) as usize];
                p.push(Insn::new(BPF_ALU64 | BPF_MOV | BPF_X, keep, 0, 0, 0));
                reinit(&mut p, rng);
            }
            13 | 14 => {
                // A forward branch, often a NULL check.
                let skip = 1 + rng.below(3) as usize;
                let code = if rng.below(2) == 0 { BPF_JEQ } else { BPF_JNE };
                jumps.push((p.len(), k + 1 + skip));
                if rng.below(3) == 0 {
                    let code = [BPF_JGT, BPF_JLT, BPF_JSGT, BPF_JSET][rng.below(4) as usize];
                    p.push(Insn::new(BPF_JMP | code | BPF_K, r, 0, 0, rng.small()));
                } else {
                    let r = [0, 6, 7][rng.below(3) as usize];
                    p.push(Insn::new(BPF_JMP | code | BPF_K, r, 0, 0, 0));
                }
            }
            15 => {
                let size = [8, 16, 24][rng.below(3) as usize];
                p.extend(lddw(1, PSEUDO_MAP_FD, 1));
                p.push(Insn::new(BPF_ALU64 | BPF_MOV | BPF_K, 2, 0, 0, size));
                p.push(Insn::new(BPF_ALU64 | BPF_MOV | BPF_K, 3, 0, 0, 0));
                p.push(Insn::new(
                    op::CALL,
                    0,
                    0,
                    0,
                    helpers::RINGBUF_RESERVE as i32,
                ));
                p.push(Insn::new(BPF_ALU64 | BPF_MOV | BPF_X, 7, 0, 0, 0));
                reinit(&mut p, rng);
            }
            16 => {
                p.push(Insn::new(
                    BPF_ALU64 | BPF_MOV | BPF_X,
                    1,
                    [7, 6, 0][rng.below(3) as usize],
                    0,
                    0,
                ));
                p.push(Insn::new(BPF_ALU64 | BPF_MOV | BPF_K, 2, 0, 0, 0));
                let id = if rng.below(2) == 0 {
                    helpers::RINGBUF_SUBMIT
                } else {
                    helpers::RINGBUF_DISCARD
                };
                p.push(Insn::new(op::CALL, 0, 0, 0, id as i32));
                reinit(&mut p, rng);
            }
            17 => {
                // probe_read_user(dst, size, ctx)
                p.push(Insn::new(
                    BPF_ALU64 | BPF_MOV | BPF_X,
                    1,
                    [6, 7, 10][rng.below(3) as usize],
                    0,
                    0,
                ));
                if rng.below(2) == 0 {
                    p.push(Insn::new(
                        BPF_ALU64 | BPF_ADD | BPF_K,
                        1,
                        0,
                        0,
                        -(8 * (1 + rng.below(3) as i32)),
                    ));
                }
                p.push(Insn::new(
                    BPF_ALU64 | BPF_MOV | BPF_K,
                    2,
                    0,
                    0,
                    rng.below(20) as i32,
                ));
                p.push(Insn::new(BPF_ALU64 | BPF_MOV | BPF_X, 3, 9, 0, 0));
                p.push(Insn::new(
                    op::CALL,
                    0,
                    0,
                    0,
                    helpers::PROBE_READ_USER as i32,
                ));
                reinit(&mut p, rng);
            }
            18 => {
                // A pointer to the stack, or to the global value (map 2's value 0).
                if rng.below(2) == 0 {
                    p.push(Insn::new(BPF_ALU64 | BPF_MOV | BPF_X, r, 10, 0, 0));
                    p.push(Insn::new(
                        BPF_ALU64 | BPF_ADD | BPF_K,
                        r,
                        0,
                        0,
                        -(rng.below(24) as i32),
                    ));
                } else {
                    p.extend(lddw(r, PSEUDO_MAP_VALUE, 2));
                }
            }
            _ => {
                p.push(Insn::new(BPF_ALU64 | BPF_MOV | BPF_X, 1, 9, 0, 0));
                p.push(Insn::new(
                    op::CALL,
                    0,
                    0,
                    0,
                    helpers::GET_ATTACH_COOKIE as i32,
                ));
                reinit(&mut p, rng);
            }
        }
    }
    let end = p.len();
    for (at, to) in jumps {
        let to = starts.get(to).copied().unwrap_or(end);
        p[at].off = (to - at - 1) as i16;
    }
    p.push(Insn::new(BPF_ALU64 | BPF_MOV | BPF_K, 0, 0, 0, 0));
    p.push(Insn::new(op::EXIT, 0, 0, 0, 0));
    p
}

#[test]
fn accepted_programs_never_touch_memory_they_were_not_given() {
    let defs = [
        MapDef::new("arr", MapType::Array, 4, 12, 4),
        MapDef::new("rb", MapType::Ringbuf, 0, 0, 1 << 16),
        MapDef::new(".data", MapType::Array, 4, 8, 1),
    ];
    let layout = ArenaLayout::new(&defs, 1).unwrap();
    let mut mem = vec![0u64; (layout.size() as usize).div_ceil(8)];
    let len = (mem.len() * 8) as u64;
    // SAFETY: mem is ours, 8-aligned and large enough.
    unsafe { layout.init(mem.as_mut_ptr() as *mut u8, len) }.unwrap();
    // SAFETY: mem outlives the arena's uses below.
    let arena = unsafe { Arena::from_raw(mem.as_mut_ptr() as *mut u8, len) };
    let (addrs, values) = arena.env_addrs(&layout.offsets()).unwrap();
    let info = MapInfo::table_of(&defs);
    let env = Env {
        helpers: &HELPERS,
        map_addrs: &addrs,
        map_value_addrs: &values,
        maps: &info,
        ..Env::default()
    };
    let ctx = ProbeCtx {
        cookie: 3,
        ..Default::default()
    };
    let mut stack = vec![0u64; STACK_SIZE * MAX_CALL_DEPTH / 8];
    let arrays = vec![(values[0], 16, 12, 4), (values[2], 8, 8, 1)];

    let cases = 40_000;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut accepted, mut hits) = (0usize, [0usize; 4]);
    let mut rejected_for = std::collections::BTreeMap::<String, usize>::new();
    let t = Instant::now();
    for case in 0..cases {
        let p = program(&mut rng);
        match verify(&p, &env, &VerifierOptions::default()) {
            Err(e) => {
                let kind = format!("{:?}", e.reason);
                let kind = kind.split([' ', '(']).next().unwrap_or("").to_string();
                *rejected_for.entry(kind).or_default() += 1;
                continue;
            }
            Ok(()) => accepted += 1,
        }
        stack.iter_mut().for_each(|w| *w = 0);
        ALLOWED.with(|a| {
            *a.borrow_mut() = Allowed {
                ctx: (&ctx as *const ProbeCtx as u64, size_of::<ProbeCtx>()),
                stack: (stack.as_ptr() as u64, stack.len() * 8),
                written: vec![false; stack.len() * 8],
                arrays: arrays.clone(),
                ..Allowed::default()
            }
        });
        let mut guard = |addr: u64, len: usize, write: bool| check(addr, len, write);
        // SAFETY: every access the program makes is checked by the guard first, and every
        // helper checks its pointer arguments; refused ones are not made.
        let r = unsafe {
            interp::run_guarded(&p, &env, &ctx as *const _ as u64, 0, &mut stack, &mut guard)
        };
        let (violations, live) = ALLOWED.with(|a| {
            let a = a.borrow();
            for (h, x) in hits.iter_mut().zip(a.hits) {
                *h += x;
            }
            (a.violations.clone(), a.records.clone())
        });
        assert!(
            violations.is_empty() && r.is_ok() && live.is_empty(),
            "case {case}: verifier accepted a program that {violations:?} / {r:?} / records \
             left {live:?}:\n{p:#?}"
        );
    }
    let took = t.elapsed();
    eprintln!(
        "{cases} programs, {accepted} accepted, run in {took:?}; accesses allowed (ctx, \
         stack, map value, record) = {hits:?}; rejections: {rejected_for:?}"
    );
    // The fuzz must exercise every kind of memory, not only reject.
    // (About 4% of these programs verify: most random pointer use is rightly rejected.)
    assert!(accepted >= 1000, "only {accepted} of {cases} accepted");
    assert!(hits.iter().all(|&h| h > 100), "{hits:?}");
}
