//! The interceptor on real code: this test process hooks functions of a hand-written
//! assembly library (`tests/asm/prologues.S`), calls them, and unhooks them.

mod support;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use support::{Lib, LibcMemory, peek};
use xcover_interceptor::{HookOptions, Interceptor, IpFixup, Site, SkipReason};
use xcover_session::ProbeCtx;

const N: u64 = 1000;

type F0 = extern "C" fn() -> u64;
type F1 = extern "C" fn(u64) -> u64;
type F3 = extern "C" fn(u64, u64, u64) -> u64;
type FD = extern "C" fn(f64, f64, f64, f64, f64, f64, f64, f64) -> f64;
type FAvx = extern "C" fn(*const f64, *mut f64);

fn f0(lib: &Lib, n: &str) -> F0 {
    // SAFETY: the assembly defines `n` with this signature.
    unsafe { std::mem::transmute::<u64, F0>(lib.sym(n)) }
}
fn f1(lib: &Lib, n: &str) -> F1 {
    // SAFETY: as above.
    unsafe { std::mem::transmute::<u64, F1>(lib.sym(n)) }
}

/// Calls every table function `N` times (all variants together), checking return values.
fn call_all(lib: &Lib) {
    let regs: F3 = {
        // SAFETY: xc_call_regs(u64, u64, u64) -> u64.
        unsafe { std::mem::transmute::<u64, F3>(lib.sym("xc_call_regs")) }
    };
    let dbl: FD = {
        // SAFETY: f_doubles takes eight doubles.
        unsafe { std::mem::transmute::<u64, FD>(lib.sym("f_doubles")) }
    };
    let avx: FAvx = {
        // SAFETY: xc_call_avx(const double*, double*).
        unsafe { std::mem::transmute::<u64, FAvx>(lib.sym("xc_call_avx")) }
    };
    let has_avx = is_x86_feature_detected!("avx");
    for i in 0..N {
        assert_eq!(f0(lib, "f_push_rbp")(), 101);
        assert_eq!(f0(lib, "f_endbr")() as u32, 102);
        assert_eq!(f0(lib, "f_riprel")() as u32, 103);
        assert_eq!(f0(lib, "f_lea")() as u32, 104);
        assert_eq!(f0(lib, "f_jmp8")() as u32, 105);
        assert_eq!(f0(lib, "f_jmp32")() as u32, 106);
        let odd = i % 2 == 1;
        assert_eq!(
            f1(lib, "f_jcc8")(odd as u64) as u32,
            if odd { 107 } else { 1107 }
        );
        assert_eq!(
            f1(lib, "f_loop")(if odd { 1 } else { 5 }) as u32,
            if odd { 108 } else { 1108 }
        );
        assert_eq!(
            f1(lib, "f_jrcxz")(odd as u64) as u32,
            if odd { 109 } else { 1109 }
        );
        assert_eq!(f0(lib, "f_call")() as u32, 110);
        f0(lib, "f_ret1")();
        f0(lib, "f_ret1_nopad")();
        assert_eq!(f1(lib, "f_three")(i) as u32, i as u32);
        assert_eq!(f1(lib, "f_hop")(i % 7 + 1) as u32, (i % 7 + 1) as u32);
        assert_eq!(f1(lib, "f_backjump")(3) as u32, 114);
        let flags = if odd { 0x8d5 | 0x202 } else { 0x202 };
        assert_eq!(
            regs(0x1111 << 20, 0x2222 << 40, flags),
            (flags & 0x8d5) + (0x1111 << 20) + (0x2222 << 40)
        );
        let x = dbl(1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0 + i as f64);
        assert_eq!(x, 255.0 + i as f64);
        if has_avx {
            let inp: Vec<f64> = (0..32).map(|k| (k * 3 + i as usize) as f64).collect();
            let mut out = [0f64; 4];
            avx(inp.as_ptr(), out.as_mut_ptr());
            for (lane, o) in out.iter().enumerate() {
                let want: f64 = (0..8).map(|r| inp[r * 4 + lane]).sum();
                assert_eq!(*o, want, "ymm lane {lane}");
            }
        } else {
            // Not called: count it anyway so the hit counts below stay uniform.
            avx_missing();
        }
    }
}

fn avx_missing() {}

fn hits(lib: &Lib) -> Vec<u64> {
    let p = lib.sym("xc_hits") as *const AtomicU64;
    // SAFETY: xc_hits is 64 u64 counters updated with lock inc.
    (0..64)
        .map(|i| unsafe { (*p.add(i)).load(Ordering::SeqCst) })
        .collect()
}

fn snapshot(specs: &[(String, Site)]) -> Vec<Vec<u8>> {
    specs
        .iter()
        .map(|(_, f)| peek(f.addr, (f.next - f.addr) as usize))
        .collect()
}

#[test]
fn every_prologue_shape_is_hooked_or_refused_and_restored() {
    shapes_roundtrip("shapes", HookOptions::default(), "xc_probe_clobber");
}

/// The light body (probe reads only its cookie and function address, keeps vector and
/// callee-saved registers) on every prologue shape: arguments, flags and vector registers
/// survive, and the probe sees the right function.
#[test]
fn every_prologue_shape_under_the_light_body() {
    let opts = HookOptions {
        save_vector_regs: false,
        flags_with_popfq: false,
        light_ctx: true,
        traps: false,
    };
    shapes_roundtrip("shapes-light", opts, "xc_probe_clobber_gpr");
}

fn shapes_roundtrip(copy: &str, opts: HookOptions, probe: &str) {
    let lib = Lib::build(copy);
    let has_avx = is_x86_feature_detected!("avx");
    // SAFETY: xc_use_avx is a 4-byte int in the library's .data.
    unsafe { *(lib.sym("xc_use_avx") as *mut u32) = has_avx as u32 };
    let table = lib.table();
    let specs: Vec<Site> = table.iter().map(|(_, f)| *f).collect();
    let before = snapshot(&table);
    let mut mem = LibcMemory;
    let mut ic = Interceptor::new(lib.sym(probe), opts);
    let func_ips = lib.sym("xc_func_ip") as *const u64;

    for round in 0..3 {
        let batch = ic.prepare_hooks(&mut mem, &specs);
        for ((name, _), (_, r)) in table.iter().zip(batch.outcomes()) {
            match name.as_str() {
                "f_ret1_nopad" => assert_eq!(*r, Err(SkipReason::NoRoom), "{name}"),
                "f_backjump" => assert!(
                    matches!(r, Err(SkipReason::BranchIntoPatch)),
                    "{name}: {r:?}"
                ),
                "f_avx" if !has_avx => {}
                _ => assert!(r.is_ok(), "{name}: {r:?}"),
            }
            if let Err(e) = r {
                eprintln!("round {round}: {name}: skipped: {e}");
            }
        }
        // SAFETY: no other thread runs this library's code; the specs come from its table.
        let n = unsafe { ic.commit_hooks(&mut mem, batch) }.unwrap();
        assert_eq!(n, table.len() - 2);
        for ((name, f), b) in table.iter().zip(&before) {
            let hooked = ic.is_hooked(f.addr);
            assert_eq!(peek(f.addr, b.len()) != *b, hooked, "{name}");
        }

        let h0 = hits(&lib);
        call_all(&lib);
        let h1 = hits(&lib);
        for (i, (name, f)) in table.iter().enumerate() {
            let want = if ic.is_hooked(f.addr) { N } else { 0 };
            let want = if name == "f_avx" && !has_avx { 0 } else { want };
            assert_eq!(h1[i] - h0[i], want, "hits of {name} (round {round})");
            if want > 0 && probe == "xc_probe_clobber_gpr" {
                // SAFETY: xc_func_ip has 64 u64s; the table has fewer functions.
                let seen = unsafe { func_ips.add(i).read_volatile() };
                assert_eq!(seen, f.addr, "func_ip of {name}");
            }
        }

        let all = ic.hooked();
        let ub = ic.prepare_unhooks(&all);
        // SAFETY: as for commit_hooks.
        unsafe { ic.commit_unhooks(&mut mem, ub) }.unwrap();
        assert_eq!(
            snapshot(&table),
            before,
            "bytes restored exactly (round {round})"
        );
        call_all(&lib);
        assert_eq!(hits(&lib), h1, "no hits once unhooked");
    }
    // Re-hooking reused the retired trampolines: one arena for everything.
    assert_eq!(ic.arenas(), 1);
}

static LAST_CTX: Mutex<Option<ProbeCtx>> = Mutex::new(None);
static LAST_RET: AtomicU64 = AtomicU64::new(0);
static COUNTS: [AtomicU64; 64] = [const { AtomicU64::new(0) }; 64];

extern "C" fn record_probe(ctx: *mut ProbeCtx) -> u64 {
    // SAFETY: the trampoline passes a valid ProbeCtx on its stack.
    let c = unsafe { *ctx };
    // SAFETY: ctx.rsp is the stack pointer at the function's entry: the return address.
    LAST_RET.store(unsafe { *(c.rsp as *const u64) }, Ordering::Relaxed);
    *LAST_CTX.lock().unwrap() = Some(c);
    COUNTS[c.cookie as usize % 64].fetch_add(1, Ordering::Relaxed);
    0
}

#[test]
fn probe_sees_pt_regs_and_registers_survive_in_every_mode() {
    let lib = Lib::build("ctx");
    let table = lib.table();
    let regs_fn = table.iter().find(|(n, _)| n == "f_regs").unwrap().1;
    let dbl = table.iter().find(|(n, _)| n == "f_doubles").unwrap().1;
    let call_regs: F3 = {
        // SAFETY: xc_call_regs(u64, u64, u64) -> u64.
        unsafe { std::mem::transmute::<u64, F3>(lib.sym("xc_call_regs")) }
    };
    let dbl_fn: FD = {
        // SAFETY: f_doubles takes eight doubles.
        unsafe { std::mem::transmute::<u64, FD>(dbl.addr) }
    };
    let mut mem = LibcMemory;
    for (vec, popf) in [(true, false), (false, false), (true, true), (false, true)] {
        let opts = HookOptions {
            save_vector_regs: vec,
            flags_with_popfq: popf,
            light_ctx: false,
            traps: false,
        };
        let mut ic = Interceptor::new(record_probe as *const () as u64, opts);
        let f = Site {
            cookie: 42,
            ..regs_fn
        };
        let b = ic.prepare_hooks(&mut mem, &[f, dbl]);
        assert!(b.outcomes().iter().all(|o| o.1.is_ok()));
        // SAFETY: single-threaded use of this library copy.
        unsafe { ic.commit_hooks(&mut mem, b) }.unwrap();
        for flags in [0x202u64, 0x8d5 | 0x202, 0x801 | 0x202, 0x40 | 0x202] {
            let r = call_regs(0xdead_beef_1111, 0x2222_0000_3333, flags);
            assert_eq!(
                r,
                (flags & 0x8d5) + 0xdead_beef_1111 + 0x2222_0000_3333,
                "{opts:?}"
            );
            let c = LAST_CTX.lock().unwrap().take().unwrap();
            assert_eq!(c.r14, 0xdead_beef_1111);
            assert_eq!(c.r15, 0x2222_0000_3333);
            assert_eq!(c.rdi, 0xdead_beef_1111);
            assert_eq!(c.rsi, 0x2222_0000_3333);
            assert_eq!(c.eflags & 0x8d5, flags & 0x8d5);
            assert_eq!(c.rip, regs_fn.addr);
            assert_eq!(c.func_ip, regs_fn.addr);
            assert_eq!(c.cookie, 42);
            assert_eq!(c.orig_rax, u64::MAX);
            // rsp at entry points at the return address, inside xc_call_regs.
            let ret = LAST_RET.load(Ordering::Relaxed);
            let caller = lib.sym("xc_call_regs");
            assert!((caller..caller + 64).contains(&ret), "{ret:#x}");
        }
        // Vector arguments survive a probe that uses vector registers only when the
        // trampoline saves them: this Rust probe copies the context with SSE moves in
        // release builds. (Without the save, the probe itself must preserve them, as the
        // JIT-ed one does; the assembly test checks that with a probe that clobbers all.)
        if vec {
            assert_eq!(
                dbl_fn(1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0),
                255.0,
                "{opts:?}"
            );
        }
        let ub = ic.prepare_unhooks(&ic.hooked());
        // SAFETY: as above.
        unsafe { ic.commit_unhooks(&mut mem, ub) }.unwrap();
    }
}

static LIGHT_COOKIE: AtomicU64 = AtomicU64::new(0);
static LIGHT_FUNC: AtomicU64 = AtomicU64::new(0);

extern "C" fn light_probe(ctx: *mut ProbeCtx) -> u64 {
    let field = |off: usize| {
        // SAFETY: under the light body only the cookie and func_ip fields of the context
        // are valid memory; this reads those two and nothing else (no reference to the
        // whole struct is made).
        unsafe { (ctx as *const u8).wrapping_add(off).cast::<u64>().read() }
    };
    LIGHT_COOKIE.store(
        field(xcover_session::PROBE_CTX_COOKIE_OFF),
        Ordering::Relaxed,
    );
    LIGHT_FUNC.store(
        field(xcover_session::PROBE_CTX_FUNC_IP_OFF),
        Ordering::Relaxed,
    );
    0
}

/// The light body in both forms (a stub calling the shared body; the whole head inline,
/// for a cookie a stub cannot carry): the probe gets the cookie and the function's address,
/// and the function gets its registers and flags.
#[test]
fn light_body_passes_cookie_and_function_and_keeps_registers() {
    let lib = Lib::build("light");
    let regs_fn = lib
        .table()
        .into_iter()
        .find(|(n, _)| n == "f_regs")
        .unwrap()
        .1;
    let call_regs: F3 = {
        // SAFETY: xc_call_regs(u64, u64, u64) -> u64.
        unsafe { std::mem::transmute::<u64, F3>(lib.sym("xc_call_regs")) }
    };
    let mut mem = LibcMemory;
    for cookie in [42u64, 1 << 40] {
        let opts = HookOptions {
            save_vector_regs: false,
            flags_with_popfq: false,
            light_ctx: true,
            traps: false,
        };
        let mut ic = Interceptor::new(light_probe as *const () as u64, opts);
        let f = Site { cookie, ..regs_fn };
        let b = ic.prepare_hooks(&mut mem, &[f]);
        assert!(b.outcomes().iter().all(|o| o.1.is_ok()));
        // SAFETY: single-threaded use of this library copy.
        unsafe { ic.commit_hooks(&mut mem, b) }.unwrap();
        for flags in [
            0x202u64,
            0x8d5 | 0x202,
            0x801 | 0x202,
            0x40 | 0x202,
            0x880 | 0x202,
        ] {
            LIGHT_COOKIE.store(0, Ordering::Relaxed);
            let r = call_regs(0xdead_beef_1111, 0x2222_0000_3333, flags);
            assert_eq!(
                r,
                (flags & 0x8d5) + 0xdead_beef_1111 + 0x2222_0000_3333,
                "cookie {cookie:#x}, flags {flags:#x}"
            );
            assert_eq!(LIGHT_COOKIE.load(Ordering::Relaxed), cookie);
            assert_eq!(LIGHT_FUNC.load(Ordering::Relaxed), regs_fn.addr);
        }
        let ub = ic.prepare_unhooks(&ic.hooked());
        // SAFETY: as above.
        unsafe { ic.commit_unhooks(&mut mem, ub) }.unwrap();
    }
}

static HITS_T: [AtomicU64; 64] = [const { AtomicU64::new(0) }; 64];
extern "C" fn count_probe(ctx: *mut ProbeCtx) -> u64 {
    // SAFETY: the trampoline passes a valid ProbeCtx.
    let c = unsafe { (*ctx).cookie } as usize;
    HITS_T[c % 64].fetch_add(1, Ordering::Relaxed);
    0
}

#[test]
fn eight_threads_survive_100_hook_unhook_cycles() {
    const THREADS: usize = 8;
    let lib = std::sync::Arc::new(Lib::build("threads"));
    let table = lib.table();
    let wanted = [
        "f_push_rbp",
        "f_riprel",
        "f_lea",
        "f_jcc8",
        "f_loop",
        "f_jrcxz",
        "f_call",
        "f_three",
        "f_hop",
        "f_doubles",
        "f_jmp8",
    ];
    let specs: Vec<Site> = table
        .iter()
        .filter(|(n, _)| wanted.contains(&n.as_str()))
        .map(|(_, f)| *f)
        .collect();
    let before: Vec<Vec<u8>> = specs
        .iter()
        .map(|f| peek(f.addr, (f.next - f.addr) as usize))
        .collect();
    support::install_park_handler();
    static DONE: AtomicBool = AtomicBool::new(false);
    static READY: AtomicUsize = AtomicUsize::new(0);
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let tids = std::sync::Arc::new(Mutex::new(vec![0 as libc::pthread_t; THREADS]));
    let mut handles = Vec::new();
    for slot in 0..THREADS {
        let lib = lib.clone();
        let tids = tids.clone();
        handles.push(std::thread::spawn(move || {
            support::register_worker(slot);
            // SAFETY: pthread_self has no preconditions.
            tids.lock().unwrap()[slot] = unsafe { libc::pthread_self() };
            READY.fetch_add(1, Ordering::SeqCst);
            let dbl: FD = {
                // SAFETY: f_doubles takes eight doubles.
                unsafe { std::mem::transmute::<u64, FD>(lib.sym("f_doubles")) }
            };
            let (p, r, l, j, lo, jr, c, t, h, j8) = (
                f0(&lib, "f_push_rbp"),
                f0(&lib, "f_riprel"),
                f0(&lib, "f_lea"),
                f1(&lib, "f_jcc8"),
                f1(&lib, "f_loop"),
                f1(&lib, "f_jrcxz"),
                f0(&lib, "f_call"),
                f1(&lib, "f_three"),
                f1(&lib, "f_hop"),
                f0(&lib, "f_jmp8"),
            );
            let mut i = 0u64;
            while !DONE.load(Ordering::Relaxed) {
                let odd = i & 1;
                assert_eq!(p(), 101);
                assert_eq!(r() as u32, 103);
                assert_eq!(l() as u32, 104);
                assert_eq!(j(odd) as u32, if odd == 1 { 107 } else { 1107 });
                assert_eq!(lo(1 + 4 * odd) as u32, if odd == 1 { 1108 } else { 108 });
                assert_eq!(jr(odd) as u32, if odd == 1 { 109 } else { 1109 });
                assert_eq!(c() as u32, 110);
                assert_eq!(t(i) as u32, i as u32);
                assert_eq!(h(3) as u32, 3);
                assert_eq!(j8() as u32, 105);
                assert_eq!(
                    dbl(1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, odd as f64),
                    127.0 + odd as f64
                );
                i += 1;
            }
            CALLS.fetch_add(i, Ordering::Relaxed);
        }));
    }
    while READY.load(Ordering::SeqCst) != THREADS {
        std::thread::yield_now();
    }
    let tids: Vec<libc::pthread_t> = tids.lock().unwrap().clone();
    let mut mem = LibcMemory;
    let mut ic = Interceptor::new(count_probe as *const () as u64, HookOptions::default());
    let (mut moved_in, mut moved_out, mut blocked) = (0, 0, 0);
    for _ in 0..100 {
        let mut batch = ic.prepare_hooks(&mut mem, &specs);
        assert!(batch.outcomes().iter().all(|o| o.1.is_ok()));
        support::stop_the_world(&tids, |rip| {
            for i in 0..tids.len() {
                match batch.fixup(rip(i, None)) {
                    IpFixup::Untouched => {}
                    IpFixup::MoveTo(a) => {
                        rip(i, Some(a));
                        moved_in += 1;
                    }
                    IpFixup::Blocked(f) => {
                        batch.cancel(f);
                        blocked += 1;
                    }
                }
            }
            // SAFETY: every worker is parked in the signal handler and none is inside a
            // range being patched (moved or cancelled above).
            unsafe { ic.commit_hooks(&mut mem, batch) }.unwrap();
        });
        std::thread::sleep(std::time::Duration::from_micros(300));
        let ub = ic.prepare_unhooks(&ic.hooked());
        support::stop_the_world(&tids, |rip| {
            for i in 0..tids.len() {
                if let IpFixup::MoveTo(a) = ub.fixup(rip(i, None)) {
                    rip(i, Some(a));
                    moved_out += 1;
                }
            }
            // SAFETY: every worker is parked; trampolines stay mapped for those inside.
            unsafe { ic.commit_unhooks(&mut mem, ub) }.unwrap();
        });
        std::thread::sleep(std::time::Duration::from_micros(100));
    }
    DONE.store(true, Ordering::SeqCst);
    for h in handles {
        h.join().expect("worker panicked (wrong result)");
    }
    let after: Vec<Vec<u8>> = specs
        .iter()
        .map(|f| peek(f.addr, (f.next - f.addr) as usize))
        .collect();
    assert_eq!(after, before);
    let total_hits: u64 = HITS_T.iter().map(|h| h.load(Ordering::Relaxed)).sum();
    eprintln!(
        "threads: {} calls, {total_hits} probe hits, {moved_in} threads moved into trampolines, \
         {moved_out} moved back, {blocked} hooks cancelled, {} arenas",
        CALLS.load(Ordering::Relaxed),
        ic.arenas()
    );
    assert!(total_hits > 0);
}

#[test]
fn thread_fixups_name_the_equivalent_instruction() {
    let lib = Lib::build("fixups");
    let table = lib.table();
    let spec = |n: &str| table.iter().find(|(name, _)| name == n).unwrap().1;
    let (jcc, jmp8, hop) = (spec("f_jcc8"), spec("f_jmp8"), spec("f_hop"));
    let mut mem = LibcMemory;
    let mut ic = Interceptor::new(count_probe as *const () as u64, HookOptions::default());
    let batch = ic.prepare_hooks(&mut mem, &[jcc, jmp8, hop]);
    assert_eq!(
        batch.fixup(jcc.addr),
        IpFixup::Untouched,
        "entry: takes the jump"
    );
    assert_eq!(
        batch.fixup(jcc.addr + 9),
        IpFixup::Untouched,
        "after the patch"
    );
    // test edi,edi (2) ; je (2) ; mov eax,107 (5): je and mov move into the trampoline.
    let IpFixup::MoveTo(je) = batch.fixup(jcc.addr + 2) else {
        panic!("je not moved")
    };
    let IpFixup::MoveTo(mov) = batch.fixup(jcc.addr + 4) else {
        panic!("mov not moved")
    };
    assert_eq!(mov - je, 6, "je rel8 became je rel32");
    assert_eq!(peek(mov, 5), [0xb8, 107, 0, 0, 0]);
    assert_eq!(
        batch.fixup(jcc.addr + 3),
        IpFixup::Blocked(jcc.addr),
        "mid-instruction"
    );
    assert_eq!(
        batch.fixup(jmp8.addr + 3),
        IpFixup::Blocked(jmp8.addr),
        "dead tail"
    );
    // SAFETY: single-threaded use of this library copy.
    unsafe { ic.commit_hooks(&mut mem, batch) }.unwrap();
    // f_hop: `jmp rel8` at the entry to a `jmp rel32` at +9 in its padding.
    assert_eq!(peek(hop.addr, 2), [0xeb, 7]);
    assert_eq!(peek(hop.addr + 9, 1), [0xe9]);
    assert_eq!(f1(&lib, "f_hop")(5), 5);

    let ub = ic.prepare_unhooks(&[jcc.addr, jmp8.addr, hop.addr]);
    assert_eq!(
        ub.fixup(hop.addr + 9),
        IpFixup::MoveTo(hop.addr),
        "on the hop slot"
    );
    assert_eq!(ub.fixup(je), IpFixup::MoveTo(jcc.addr + 2));
    assert_eq!(ub.fixup(mov), IpFixup::MoveTo(jcc.addr + 4));
    assert_eq!(
        ub.fixup(je + 1),
        IpFixup::Untouched,
        "mid-sequence: runs to the jump back"
    );
    // SAFETY: as above.
    unsafe { ic.commit_unhooks(&mut mem, ub) }.unwrap();
    assert_eq!(peek(hop.addr + 9, 5), [0xcc; 5]);
}
