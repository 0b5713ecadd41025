//! The SIGTRAP handler that serves the interceptor's one-byte `int3` hooks
//! (`HookKind::Trap`), and the chaining to whatever handled SIGTRAP before.
//!
//! # What a trap hit does
//!
//! The `int3` at a trap site's entry raises SIGTRAP with `si_code == SI_KERNEL` and the
//! saved `rip` one past the `int3`. The handler looks `rip - 1` up in the table of trap
//! sites (sorted, published through one atomic pointer: no lock), fills a [`ProbeCtx`] from
//! the signal frame (every general register and the flags, `rip`/`func_ip` = the entry,
//! `rsp` = the entry's: what the full trampoline body gives), calls the JIT-ed probe, writes
//! back the registers the trampolines reload after it (`rax`, `rcx`, `rdx`, `rsi`, `rdi`,
//! `r8`-`r11` and the arithmetic flags), and sets `rip` to the relocated copy of the first
//! instruction (followed by a jump back to the second), so the thread runs on as if it had
//! gone through a trampoline. A site already unhooked (its byte restored while the trap was
//! being delivered) resumes at the entry without a count.
//!
//! # Anything else
//!
//! A SIGTRAP that is not ours (the target's own `int3`, `raise(SIGTRAP)`, a debugger-aware
//! check) goes to the disposition that was in place when the handler was installed, as the
//! kernel would have delivered it: a handler is called with its `SA_SIGINFO` form and its
//! `sa_mask` blocked (except SIGTRAP itself, see below), `SA_RESETHAND` resets it; the
//! default action kills the process by SIGTRAP (the default disposition is restored and
//! the signal raised again); an ignored SIGTRAP is ignored unless it came from a trap
//! instruction, which the kernel never lets a process ignore (it kills it).
//!
//! Deviation, on purpose: SIGTRAP is never blocked while a handler runs (the handler is
//! installed with `SA_NODEFER`, and the chained handler's `sa_mask` loses SIGTRAP), because
//! a trap hit with SIGTRAP blocked makes the kernel kill the process.
//!
//! [`uninstall`] (at fini) puts the previous disposition back exactly, unless the target
//! replaced ours meanwhile (then its own stays).

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

use xcover_interceptor::TrapSite;
use xcover_rt::syscall6;
use xcover_session::ProbeCtx;

const SIGTRAP: usize = 5;
const SIG_DFL: u64 = 0;
const SIG_IGN: u64 = 1;
const SA_SIGINFO: u64 = 4;
const SA_RESTORER: u64 = 0x0400_0000;
const SA_ONSTACK: u64 = 0x0800_0000;
const SA_RESTART: u64 = 0x1000_0000;
const SA_NODEFER: u64 = 0x4000_0000;
const SA_RESETHAND: u64 = 0x8000_0000;
/// `si_code` of a signal the kernel raised for a trap instruction.
const SI_KERNEL: i32 = 0x80;
const SYS_RT_SIGACTION: usize = 13;
const SYS_RT_SIGPROCMASK: usize = 14;
const SYS_RT_SIGRETURN: usize = 15;
const SYS_TGKILL: usize = 234;
const SIG_UNBLOCK: usize = 1;
const SIG_BLOCK: usize = 0;
const TRAP_BIT: u64 = 1 << (SIGTRAP - 1);

/// The kernel's `struct sigaction` on x86-64.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct KSigaction {
    handler: u64,
    flags: u64,
    restorer: u64,
    mask: u64,
}

/// Offsets in the kernel's `ucontext_t` (x86-64): the general registers of
/// `uc_mcontext`, in `struct sigcontext` order, start at byte 40.
const UC_GREGS: usize = 40;
const R8: usize = 0;
const R9: usize = 1;
const R10: usize = 2;
const R11: usize = 3;
const R12: usize = 4;
const R13: usize = 5;
const R14: usize = 6;
const R15: usize = 7;
const RDI: usize = 8;
const RSI: usize = 9;
const RBP: usize = 10;
const RBX: usize = 11;
const RDX: usize = 12;
const RAX: usize = 13;
const RCX: usize = 14;
const RSP: usize = 15;
const RIP: usize = 16;
const EFL: usize = 17;
/// CF PF AF ZF SF OF: the flags the trampolines restore after the probe.
const ARITH_FLAGS: u64 = 0x8d5;

/// The trap sites, sorted by address.
struct Table(Vec<TrapSite>);

/// The current table (null before the first trap hook). Replaced only by entry points, with
/// the world stopped; a table once published is never freed before [`uninstall`] (a thread
/// may be stopped in the middle of a lookup), see [`RETIRED`].
static TABLE: AtomicPtr<Table> = AtomicPtr::new(core::ptr::null_mut());
/// Tables replaced so far, freed at fini.
static RETIRED: AtomicPtr<Vec<*mut Table>> = AtomicPtr::new(core::ptr::null_mut());
/// The JIT-ed probe, `extern "C" fn(*mut ProbeCtx) -> u64`.
static PROBE: AtomicU64 = AtomicU64::new(0);
/// Whether our handler is installed.
static INSTALLED: AtomicBool = AtomicBool::new(false);
/// The disposition before ours, fields of a [`KSigaction`].
static OLD: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

fn old() -> KSigaction {
    KSigaction {
        handler: OLD[0].load(Ordering::Acquire),
        flags: OLD[1].load(Ordering::Acquire),
        restorer: OLD[2].load(Ordering::Acquire),
        mask: OLD[3].load(Ordering::Acquire),
    }
}

fn set_old(a: &KSigaction) {
    OLD[1].store(a.flags, Ordering::Release);
    OLD[2].store(a.restorer, Ordering::Release);
    OLD[3].store(a.mask, Ordering::Release);
    OLD[0].store(a.handler, Ordering::Release);
}

/// `rt_sigaction(SIGTRAP, new, old)`.
fn sigaction(new: Option<&KSigaction>, old: Option<&mut KSigaction>) -> i64 {
    let new = new.map_or(0, |n| n as *const KSigaction as usize);
    let old = old.map_or(0, |o| o as *mut KSigaction as usize);
    // SAFETY: both pointers are null or point at a KSigaction we own (the kernel writes
    // `old`); the size is the kernel's sigset size.
    unsafe { syscall6(SYS_RT_SIGACTION, [SIGTRAP, new, old, 8, 0, 0]) }
}

/// The return path of our handler: `rt_sigreturn`.
#[unsafe(naked)]
unsafe extern "C" fn restore_rt() -> ! {
    core::arch::naked_asm!("mov eax, {nr}", "syscall", "ud2", nr = const SYS_RT_SIGRETURN)
}

/// Publishes `sites` (sorted by address) as the table the handler reads.
///
/// Called by entry points only (world stopped).
pub fn publish(sites: Vec<TrapSite>) {
    let new = Box::into_raw(Box::new(Table(sites)));
    let prev = TABLE.swap(new, Ordering::AcqRel);
    if !prev.is_null() {
        let mut retired = RETIRED.load(Ordering::Acquire);
        if retired.is_null() {
            retired = Box::into_raw(Box::new(Vec::new()));
            RETIRED.store(retired, Ordering::Release);
        }
        // SAFETY: RETIRED is only touched by entry points, one at a time.
        unsafe { (*retired).push(prev) };
    }
}

/// Installs the handler (calling `probe` on hits) over the current disposition, remembering
/// it; once. Returns false when `rt_sigaction` failed (no trap may be written then).
///
/// Called by entry points only (world stopped).
pub fn install(probe: u64) -> bool {
    PROBE.store(probe, Ordering::Release);
    if INSTALLED.load(Ordering::Acquire) {
        return true;
    }
    let mut prev = KSigaction::default();
    if sigaction(None, Some(&mut prev)) < 0 {
        return false;
    }
    set_old(&prev);
    let ours = KSigaction {
        handler: on_sigtrap as *const () as u64,
        // The previous handler's stack and restart choices carry over to the ones it gets.
        flags: SA_SIGINFO | SA_RESTORER | SA_NODEFER | (prev.flags & (SA_ONSTACK | SA_RESTART)),
        restorer: restore_rt as *const () as u64,
        mask: 0,
    };
    if sigaction(Some(&ours), None) < 0 {
        return false;
    }
    INSTALLED.store(true, Ordering::Release);
    true
}

/// Puts the previous disposition back (unless the target replaced ours since) and frees the
/// tables. At fini, with the world stopped and no thread inside the agent.
pub fn uninstall() {
    if INSTALLED.swap(false, Ordering::AcqRel) {
        let mut now = KSigaction::default();
        if sigaction(None, Some(&mut now)) >= 0 && now.handler == on_sigtrap as *const () as u64 {
            sigaction(Some(&old()), None);
        }
    }
    let t = TABLE.swap(core::ptr::null_mut(), Ordering::AcqRel);
    if !t.is_null() {
        // SAFETY: published by `publish` from a Box; no thread is inside the agent.
        drop(unsafe { Box::from_raw(t) });
    }
    let r = RETIRED.swap(core::ptr::null_mut(), Ordering::AcqRel);
    if !r.is_null() {
        // SAFETY: as above, for the retired list and every table in it.
        let r = unsafe { Box::from_raw(r) };
        for t in r.iter() {
            // SAFETY: each was published from a Box and is referenced nowhere else now.
            drop(unsafe { Box::from_raw(*t) });
        }
    }
    PROBE.store(0, Ordering::Release);
}

/// The trap site at `addr`, if any.
fn lookup(addr: u64) -> Option<TrapSite> {
    let t = TABLE.load(Ordering::Acquire);
    if t.is_null() {
        return None;
    }
    // SAFETY: a published table lives until fini, which runs with no thread in the agent.
    let sites = unsafe { &(*t).0 };
    let i = sites.binary_search_by_key(&addr, |s| s.addr).ok()?;
    sites.get(i).copied()
}

/// The signal frame's general registers.
struct Frame(*mut u64);

impl Frame {
    fn get(&self, r: usize) -> u64 {
        // SAFETY: `r` is one of the register indices above (< 23), inside the kernel's
        // `uc_mcontext` of the frame this handler was given.
        unsafe { self.0.add(r).read() }
    }
    fn set(&self, r: usize, v: u64) {
        // SAFETY: as in `get`; the frame is ours to change until we return.
        unsafe { self.0.add(r).write(v) }
    }
}

/// The SIGTRAP handler.
///
/// # Safety
/// Called by the kernel only, with a valid `siginfo_t` and `ucontext_t`.
unsafe extern "C" fn on_sigtrap(sig: i32, info: *mut u8, uc: *mut u8) {
    // SAFETY: the kernel passes a valid siginfo; si_code is the third i32.
    let code = unsafe { (info as *const i32).add(2).read() };
    // SAFETY: the kernel passes a valid ucontext; its registers start at UC_GREGS.
    let regs = Frame(unsafe { uc.add(UC_GREGS) } as *mut u64);
    if code == SI_KERNEL
        && let Some(site) = lookup(regs.get(RIP).wrapping_sub(1))
    {
        if site.active {
            hit(&regs, &site);
            return;
        }
        // Unhooked while this trap was delivered: the original byte is back.
        let mut b = [0u8; 1];
        // SAFETY: `b` is ours; reading our own memory through the kernel cannot fault.
        let read = unsafe { xcover_rt::read_self(b.as_mut_ptr(), site.addr, 1) };
        if read == 1 && b != [0xcc] {
            regs.set(RIP, site.addr);
            return;
        }
    }
    // SAFETY: the kernel's arguments, handed on.
    unsafe { chain(sig, info, uc, code) }
}

/// Runs the probe for a hit of `site` and resumes at its relocated first instruction.
fn hit(regs: &Frame, site: &TrapSite) {
    let mut ctx = ProbeCtx {
        r15: regs.get(R15),
        r14: regs.get(R14),
        r13: regs.get(R13),
        r12: regs.get(R12),
        rbp: regs.get(RBP),
        rbx: regs.get(RBX),
        r11: regs.get(R11),
        r10: regs.get(R10),
        r9: regs.get(R9),
        r8: regs.get(R8),
        rax: regs.get(RAX),
        rcx: regs.get(RCX),
        rdx: regs.get(RDX),
        rsi: regs.get(RSI),
        rdi: regs.get(RDI),
        orig_rax: u64::MAX,
        rip: site.addr,
        cs: 0,
        eflags: regs.get(EFL),
        rsp: regs.get(RSP),
        ss: 0,
        cookie: site.cookie,
        func_ip: site.addr,
    };
    let probe = PROBE.load(Ordering::Acquire);
    if probe != 0 {
        // SAFETY: PROBE is the JIT-ed probe's address (set before any trap was written, and
        // cleared only at fini); it takes a ProbeCtx, as the trampolines call it.
        let f: extern "C" fn(*mut ProbeCtx) -> u64 = unsafe { core::mem::transmute(probe) };
        f(&mut ctx);
    }
    for (r, v) in [
        (RAX, ctx.rax),
        (RCX, ctx.rcx),
        (RDX, ctx.rdx),
        (RSI, ctx.rsi),
        (RDI, ctx.rdi),
        (R8, ctx.r8),
        (R9, ctx.r9),
        (R10, ctx.r10),
        (R11, ctx.r11),
    ] {
        regs.set(r, v);
    }
    let fl = regs.get(EFL);
    regs.set(EFL, (fl & !ARITH_FLAGS) | (ctx.eflags & ARITH_FLAGS));
    regs.set(RIP, site.resume);
}

/// Delivers a SIGTRAP that is not ours to the disposition in place before ours.
///
/// # Safety
/// The kernel's handler arguments.
unsafe fn chain(sig: i32, info: *mut u8, uc: *mut u8, code: i32) {
    let prev = old();
    match prev.handler {
        SIG_IGN if code != SI_KERNEL => {}
        SIG_DFL | SIG_IGN => die(),
        h => {
            if prev.flags & SA_RESETHAND != 0 {
                let mut reset = prev;
                reset.handler = SIG_DFL;
                set_old(&reset);
            }
            // Its mask, as the kernel would block it (rt_sigreturn restores ours); SIGTRAP
            // stays deliverable (see the module doc).
            let mask = prev.mask & !TRAP_BIT;
            if mask != 0 {
                // SAFETY: `mask` is a local the kernel only reads.
                unsafe {
                    syscall6(
                        SYS_RT_SIGPROCMASK,
                        [SIG_BLOCK, &mask as *const u64 as usize, 0, 8, 0, 0],
                    );
                }
            }
            if prev.flags & SA_SIGINFO != 0 {
                // SAFETY: the target installed this as an `sa_sigaction`; it gets the kernel's
                // own arguments.
                let f: unsafe extern "C" fn(i32, *mut u8, *mut u8) =
                    unsafe { core::mem::transmute(h) };
                // SAFETY: as above.
                unsafe { f(sig, info, uc) };
            } else {
                // SAFETY: the target installed this as an `sa_handler`.
                let f: unsafe extern "C" fn(i32) = unsafe { core::mem::transmute(h) };
                // SAFETY: as above.
                unsafe { f(sig) };
            }
        }
    }
}

/// What the default disposition does: the process dies by SIGTRAP (with a core dump, as
/// the kernel's default action for it). The default is put back and the signal raised
/// again; SIGTRAP is not blocked here (`SA_NODEFER`), so it is delivered at once.
fn die() {
    let dfl = KSigaction::default();
    sigaction(Some(&dfl), None);
    let unblock = TRAP_BIT;
    // SAFETY: locals the kernel only reads; tgkill on our own thread.
    unsafe {
        syscall6(
            SYS_RT_SIGPROCMASK,
            [SIG_UNBLOCK, &unblock as *const u64 as usize, 0, 8, 0, 0],
        );
        syscall6(
            SYS_TGKILL,
            [
                xcover_rt::getpid() as usize,
                xcover_rt::gettid() as usize,
                SIGTRAP,
                0,
                0,
                0,
            ],
        );
    }
}
