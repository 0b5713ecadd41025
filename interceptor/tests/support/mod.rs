//! Helpers for the interceptor tests: an in-process [`Memory`] on libc, building and loading
//! the hand-written assembly, and a signal-based stop-the-world for threads of this process.
#![allow(dead_code)]

use std::ffi::{CStr, CString};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

use xcover_interceptor::{MemError, Memory, Protection, Site};

/// [`Memory`] for this very process, on libc.
pub struct LibcMemory;

impl Memory for LibcMemory {
    fn alloc_near(&mut self, near: u64, size: usize) -> Option<u64> {
        const STEP: u64 = 1 << 20;
        let base = near & !(STEP - 1);
        for k in 1..2000u64 {
            for cand in [base.wrapping_sub(k * STEP), base.wrapping_add(k * STEP)] {
                if cand == 0 || cand > (1 << 47) {
                    continue;
                }
                // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping; a fresh
                // anonymous mapping aliases nothing.
                let p = unsafe {
                    libc::mmap(
                        cand as *mut libc::c_void,
                        size,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                        -1,
                        0,
                    )
                };
                if p != libc::MAP_FAILED {
                    if p as u64 == cand {
                        return Some(cand);
                    }
                    // SAFETY: we just mapped it and nobody else knows about it.
                    unsafe { libc::munmap(p, size) };
                }
            }
        }
        None
    }

    fn protect(&mut self, addr: u64, len: usize, prot: Protection) -> Result<(), MemError> {
        let p = match prot {
            Protection::ReadExec => libc::PROT_READ | libc::PROT_EXEC,
            Protection::ReadWriteExec => libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
        };
        // SAFETY: the backend only changes protections of code it patches or arenas it got
        // from alloc_near; making them writable or read+exec breaks nothing in the process.
        let r = unsafe { libc::mprotect(addr as *mut libc::c_void, len, p) };
        if r == 0 {
            Ok(())
        } else {
            Err(MemError {
                op: "protect",
                addr,
            })
        }
    }

    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        // SAFETY: the tests only pass addresses of mapped code (functions of the loaded
        // library and their padding).
        unsafe { std::ptr::copy_nonoverlapping(addr as *const u8, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    fn write(&mut self, addr: u64, bytes: &[u8]) -> Result<(), MemError> {
        // SAFETY: the backend writes only trampolines into its arenas and patches into code
        // it was asked to hook, after making those pages writable.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), addr as *mut u8, bytes.len()) };
        Ok(())
    }
}

/// The assembly test library, loaded from its own copy so tests don't share hooks.
pub struct Lib {
    handle: *mut libc::c_void,
    pub path: PathBuf,
}

// SAFETY: the handle is only used for dlsym, which is thread-safe.
unsafe impl Send for Lib {}
// SAFETY: as above.
unsafe impl Sync for Lib {}

impl Lib {
    /// Assembles `tests/asm/prologues.S` into a fresh shared object and loads it.
    pub fn build(tag: &str) -> Lib {
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/asm/prologues.S");
        let dir = xcover_testsupport::tmp::run_dir("xcover-interceptor-");
        let path = dir.join(format!("libprologues-{tag}.so"));
        xcover_testsupport::build::compile("cc", &["-shared", "-fPIC", "-Wl,-z,now", src], &path);
        let c = CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: loading our own test library; its constructors are none.
        let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        assert!(!handle.is_null(), "dlopen {}", path.display());
        Lib { handle, path }
    }

    /// Address of a symbol.
    pub fn sym(&self, name: &str) -> u64 {
        let c = CString::new(name).unwrap();
        // SAFETY: valid handle and NUL-terminated name.
        let p = unsafe { libc::dlsym(self.handle, c.as_ptr()) };
        assert!(!p.is_null(), "no symbol {name}");
        p as u64
    }

    /// The table of functions `{addr, size, next}` in the assembly file, with names found
    /// back through `dladdr`.
    pub fn table(&self) -> Vec<(String, Site)> {
        let t = self.sym("xc_table") as *const u64;
        // SAFETY: xc_table_len and xc_table are laid out by the assembly file as u64s.
        let n = unsafe { *(self.sym("xc_table_len") as *const u64) } as usize;
        (0..n)
            .map(|i| {
                // SAFETY: i < n rows of three u64s.
                let (addr, size, next) =
                    unsafe { (*t.add(3 * i), *t.add(3 * i + 1), *t.add(3 * i + 2)) };
                let name = sym_name(addr);
                (name, Site::function(addr, size, addr + next, i as u64))
            })
            .collect()
    }
}

fn sym_name(addr: u64) -> String {
    // SAFETY: dladdr only reads the loader's tables; Dl_info is plain data.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: as above; addr is inside a loaded object.
    let ok = unsafe { libc::dladdr(addr as *const libc::c_void, &mut info) };
    assert!(ok != 0 && !info.dli_sname.is_null());
    // SAFETY: dli_sname is a NUL-terminated string owned by the loader.
    unsafe { CStr::from_ptr(info.dli_sname) }
        .to_string_lossy()
        .into_owned()
}

/// Reads `len` bytes at `addr` of this process.
pub fn peek(addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    LibcMemory.read(addr, &mut v).unwrap();
    v
}

// ---- stop-the-world for threads of this process -------------------------------------------
//
// The real stop comes from the injector (ptrace). Here each worker gets SIGUSR1 and parks in
// the handler until released; the handler publishes its ucontext so the controller can read
// and move the thread's rip, exactly as the injector does with PTRACE_GETREGS/SETREGS. The
// kernel's rt_sigreturn reloads the (possibly moved) rip.

pub const MAX_WORKERS: usize = 16;
static STOP: AtomicBool = AtomicBool::new(false);
static PARKED: AtomicUsize = AtomicUsize::new(0);
static SLOTS: [AtomicPtr<libc::ucontext_t>; MAX_WORKERS] =
    [const { AtomicPtr::new(std::ptr::null_mut()) }; MAX_WORKERS];
thread_local! {
    static SLOT: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}

extern "C" fn park(_sig: libc::c_int, _info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    let slot = SLOT.with(|s| s.get());
    if slot < MAX_WORKERS {
        SLOTS[slot].store(uc.cast(), Ordering::SeqCst);
    }
    PARKED.fetch_add(1, Ordering::SeqCst);
    while STOP.load(Ordering::SeqCst) {
        // SAFETY: sched_yield is async-signal-safe and has no preconditions.
        unsafe { libc::sched_yield() };
    }
    PARKED.fetch_sub(1, Ordering::SeqCst);
}

/// Installs the SIGUSR1 parking handler.
pub fn install_park_handler() {
    // SAFETY: sigaction with a valid handler that only touches atomics and a thread-local
    // Cell (async-signal-safe).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = park as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
}

/// Marks the calling thread as worker `slot`.
pub fn register_worker(slot: usize) {
    SLOT.with(|s| s.set(slot));
}

/// Stops `threads` (pthread ids of registered workers), runs `f` with a getter/setter for
/// each stopped thread's rip, and resumes them.
pub fn stop_the_world(
    threads: &[libc::pthread_t],
    f: impl FnOnce(&mut dyn FnMut(usize, Option<u64>) -> u64),
) {
    while PARKED.load(Ordering::SeqCst) != 0 {
        std::thread::yield_now();
    }
    for s in SLOTS.iter().take(threads.len()) {
        s.store(std::ptr::null_mut(), Ordering::SeqCst);
    }
    STOP.store(true, Ordering::SeqCst);
    for t in threads {
        // SAFETY: t is a live thread of this process that handles SIGUSR1.
        assert_eq!(unsafe { libc::pthread_kill(*t, libc::SIGUSR1) }, 0);
    }
    while PARKED.load(Ordering::SeqCst) != threads.len() {
        std::thread::yield_now();
    }
    let mut rip = |i: usize, new: Option<u64>| -> u64 {
        let uc = SLOTS[i].load(Ordering::SeqCst);
        assert!(!uc.is_null());
        // SAFETY: uc is the parked thread's ucontext, alive while it spins in the handler.
        unsafe {
            let g = &mut (*uc).uc_mcontext.gregs[libc::REG_RIP as usize];
            if let Some(v) = new {
                *g = v as i64;
            }
            *g as u64
        }
    };
    f(&mut rip);
    STOP.store(false, Ordering::SeqCst);
}
