//! The helper functions programs call, by Linux helper id.
//!
//! [`standard_helpers`] is the table a runner puts in [`crate::env::Env::helpers`]. Every
//! helper follows the kernel's contract for its id: arguments in `r1..r5`, result in `r0`,
//! errors as negative errno values. None panics; a bad user pointer given to
//! `probe_read_user*` yields `-EFAULT` (the read goes through `process_vm_readv` on our own
//! pid, which the kernel fault-checks). Pointers the verifier vouches for (map values, the
//! stack, the context) are used directly.
//!
//! `bpf_trace_printk` writes to a log sink set once at start-up with [`set_log_sink`]: a
//! [`LogRing`], a power-of-two ring of bytes in the session (see `xcover_session`'s
//! `log_off`/`log_size`/`log_head`) that a reader in another process follows with
//! [`LogRing::read_from`].

use core::sync::atomic::{AtomicU64, Ordering};

use xcover_session::ProbeCtx;

use crate::env::{Arg, HelperFn, HelperProto, Ret};
use crate::maps::{self, MapPtr};
use xcover_rt as sys;

/// `BPF_FUNC_map_lookup_elem`.
pub const MAP_LOOKUP_ELEM: u32 = 1;
/// `BPF_FUNC_map_update_elem`.
pub const MAP_UPDATE_ELEM: u32 = 2;
/// `BPF_FUNC_map_delete_elem`.
pub const MAP_DELETE_ELEM: u32 = 3;
/// `BPF_FUNC_probe_read` (legacy; reads user memory here).
pub const PROBE_READ: u32 = 4;
/// `BPF_FUNC_ktime_get_ns`.
pub const KTIME_GET_NS: u32 = 5;
/// `BPF_FUNC_trace_printk`.
pub const TRACE_PRINTK: u32 = 6;
/// `BPF_FUNC_get_prandom_u32`.
pub const GET_PRANDOM_U32: u32 = 7;
/// `BPF_FUNC_get_smp_processor_id`.
pub const GET_SMP_PROCESSOR_ID: u32 = 8;
/// `BPF_FUNC_get_current_pid_tgid`.
pub const GET_CURRENT_PID_TGID: u32 = 14;
/// `BPF_FUNC_get_current_comm`.
pub const GET_CURRENT_COMM: u32 = 16;
/// `BPF_FUNC_probe_read_str` (legacy; reads user memory here).
pub const PROBE_READ_STR: u32 = 45;
/// `BPF_FUNC_probe_read_user`.
pub const PROBE_READ_USER: u32 = 112;
/// `BPF_FUNC_probe_read_user_str`.
pub const PROBE_READ_USER_STR: u32 = 114;
/// `BPF_FUNC_ringbuf_output`.
pub const RINGBUF_OUTPUT: u32 = 130;
/// `BPF_FUNC_ringbuf_reserve`.
pub const RINGBUF_RESERVE: u32 = 131;
/// `BPF_FUNC_ringbuf_submit`.
pub const RINGBUF_SUBMIT: u32 = 132;
/// `BPF_FUNC_ringbuf_discard`.
pub const RINGBUF_DISCARD: u32 = 133;
/// `BPF_FUNC_ktime_get_coarse_ns`.
pub const KTIME_GET_COARSE_NS: u32 = 160;
/// `BPF_FUNC_get_func_ip`.
pub const GET_FUNC_IP: u32 = 173;
/// `BPF_FUNC_get_attach_cookie`.
pub const GET_ATTACH_COOKIE: u32 = 174;

fn err(e: i64) -> u64 {
    (-e) as u64
}

static STANDARD: [(u32, HelperFn); 20] = [
    (MAP_LOOKUP_ELEM, map_lookup_elem),
    (MAP_UPDATE_ELEM, map_update_elem),
    (MAP_DELETE_ELEM, map_delete_elem),
    (PROBE_READ, probe_read_user),
    (KTIME_GET_NS, ktime_get_ns),
    (TRACE_PRINTK, trace_printk),
    (GET_PRANDOM_U32, get_prandom_u32),
    (GET_SMP_PROCESSOR_ID, get_smp_processor_id),
    (GET_CURRENT_PID_TGID, get_current_pid_tgid),
    (GET_CURRENT_COMM, get_current_comm),
    (PROBE_READ_STR, probe_read_user_str),
    (PROBE_READ_USER, probe_read_user),
    (PROBE_READ_USER_STR, probe_read_user_str),
    (RINGBUF_OUTPUT, ringbuf_output),
    (RINGBUF_RESERVE, ringbuf_reserve),
    (RINGBUF_SUBMIT, ringbuf_submit),
    (RINGBUF_DISCARD, ringbuf_discard),
    (KTIME_GET_COARSE_NS, ktime_get_coarse_ns),
    (GET_FUNC_IP, get_func_ip),
    (GET_ATTACH_COOKIE, get_attach_cookie),
];

/// The helpers this runtime implements, by Linux helper id.
pub fn standard_helpers() -> &'static [(u32, HelperFn)] {
    &STANDARD
}

/// The prototype the verifier checks calls to standard helper `id` against; `None` for an
/// id this runtime does not implement.
pub fn proto(id: u32) -> Option<HelperProto> {
    use Arg::*;
    Some(match id {
        MAP_LOOKUP_ELEM => HelperProto::new(&[Map, Key], Ret::MapValueOrNull),
        MAP_UPDATE_ELEM => HelperProto::new(&[Map, Key, Value, Scalar], Ret::Scalar),
        MAP_DELETE_ELEM => HelperProto::new(&[Map, Key], Ret::Scalar),
        PROBE_READ | PROBE_READ_USER | PROBE_READ_STR | PROBE_READ_USER_STR => {
            HelperProto::new(&[MemOut, Size, Anything], Ret::Scalar)
        }
        KTIME_GET_NS | KTIME_GET_COARSE_NS | GET_CURRENT_PID_TGID => {
            HelperProto::new(&[], Ret::Scalar)
        }
        TRACE_PRINTK => HelperProto::new(&[MemIn, Size, Anything, Anything, Anything], Ret::Scalar),
        GET_PRANDOM_U32 | GET_SMP_PROCESSOR_ID => HelperProto::new(&[], Ret::U32),
        GET_CURRENT_COMM => HelperProto::new(&[MemOut, Size], Ret::Scalar),
        RINGBUF_OUTPUT => HelperProto::new(&[Ringbuf, MemIn, Size, Scalar], Ret::Scalar),
        RINGBUF_RESERVE => HelperProto::new(&[Ringbuf, ConstSize, Scalar], Ret::RecordOrNull),
        RINGBUF_SUBMIT | RINGBUF_DISCARD => HelperProto::new(&[Record, Scalar], Ret::Scalar),
        GET_FUNC_IP | GET_ATTACH_COOKIE => HelperProto::new(&[Ctx], Ret::Scalar),
        _ => return Option::None,
    })
}

/// `void *bpf_map_lookup_elem(map, key)`: value address or 0.
///
/// # Safety
/// `map` must be 0, or a map header address from an arena that stays mapped (or any
/// readable 8-aligned address without the map magic); `key` readable for the key size.
pub unsafe extern "C" fn map_lookup_elem(map: u64, key: u64, _: u64, _: u64, _: u64) -> u64 {
    // SAFETY: caller contract on `map`.
    let Some(m) = (unsafe { MapPtr::from_addr(map) }) else {
        return 0;
    };
    if key == 0 {
        return 0;
    }
    // SAFETY: caller contract on `key`.
    unsafe { maps::lookup(m, key as *const u8) }
}

/// `long bpf_map_update_elem(map, key, value, flags)`.
///
/// # Safety
/// As [`map_lookup_elem`]; `value` readable for the value size.
pub unsafe extern "C" fn map_update_elem(
    map: u64,
    key: u64,
    value: u64,
    flags: u64,
    _: u64,
) -> u64 {
    // SAFETY: caller contract on `map`.
    let Some(m) = (unsafe { MapPtr::from_addr(map) }) else {
        return err(sys::EINVAL);
    };
    if key == 0 || value == 0 {
        return err(sys::EFAULT);
    }
    // SAFETY: caller contract on `key` and `value`.
    (unsafe { maps::update(m, key as *const u8, value as *const u8, flags) }) as u64
}

/// `long bpf_map_delete_elem(map, key)`.
///
/// # Safety
/// As [`map_lookup_elem`].
pub unsafe extern "C" fn map_delete_elem(map: u64, key: u64, _: u64, _: u64, _: u64) -> u64 {
    // SAFETY: caller contract on `map`.
    let Some(m) = (unsafe { MapPtr::from_addr(map) }) else {
        return err(sys::EINVAL);
    };
    if key == 0 {
        return err(sys::EFAULT);
    }
    // SAFETY: caller contract on `key`.
    (unsafe { maps::delete(m, key as *const u8) }) as u64
}

/// `u64 bpf_ktime_get_ns(void)`: `CLOCK_MONOTONIC`, through the vDSO when the process has
/// one (see [`sys::monotonic_ns`]).
///
/// # Safety
/// None (the signature is unsafe because every helper's is).
pub unsafe extern "C" fn ktime_get_ns(_: u64, _: u64, _: u64, _: u64, _: u64) -> u64 {
    sys::monotonic_ns()
}

/// `u64 bpf_ktime_get_coarse_ns(void)`: `CLOCK_MONOTONIC_COARSE` (the kernel tick's
/// resolution), through the vDSO when the process has one (see [`sys::monotonic_coarse_ns`]).
///
/// # Safety
/// None (the signature is unsafe because every helper's is).
pub unsafe extern "C" fn ktime_get_coarse_ns(_: u64, _: u64, _: u64, _: u64, _: u64) -> u64 {
    sys::monotonic_coarse_ns()
}

static PRANDOM: AtomicU64 = AtomicU64::new(0);

/// `u32 bpf_get_prandom_u32(void)`: splitmix64 over a shared atomic state (lock-free).
///
/// # Safety
/// None.
pub unsafe extern "C" fn get_prandom_u32(_: u64, _: u64, _: u64, _: u64, _: u64) -> u64 {
    const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
    if PRANDOM.load(Ordering::Relaxed) == 0 {
        let _ = PRANDOM.compare_exchange(0, sys::rdtsc() | 1, Ordering::Relaxed, Ordering::Relaxed);
    }
    let mut z = PRANDOM
        .fetch_add(GOLDEN, Ordering::Relaxed)
        .wrapping_add(GOLDEN);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) as u32 as u64
}

/// `u32 bpf_get_smp_processor_id(void)`.
///
/// # Safety
/// None.
pub unsafe extern "C" fn get_smp_processor_id(_: u64, _: u64, _: u64, _: u64, _: u64) -> u64 {
    sys::cpu_id() as u64
}

/// `u64 bpf_get_current_pid_tgid(void)`: `tgid << 32 | tid`, from per-process and
/// per-thread caches (no system call after a thread's first call; see [`sys::gettid_cached`]
/// for the caveats after `fork` and thread reuse).
///
/// # Safety
/// None.
pub unsafe extern "C" fn get_current_pid_tgid(_: u64, _: u64, _: u64, _: u64, _: u64) -> u64 {
    ((sys::getpid_cached() as u64) << 32) | sys::gettid_cached() as u64
}

/// `long bpf_get_current_comm(buf, size)`: the thread's name, NUL-terminated.
///
/// # Safety
/// `buf` must be writable for `size` bytes.
pub unsafe extern "C" fn get_current_comm(buf: u64, size: u64, _: u64, _: u64, _: u64) -> u64 {
    if buf == 0 || size == 0 {
        return err(sys::EINVAL);
    }
    let name = sys::thread_name();
    let n = (size as usize).min(name.len());
    // SAFETY: buf writable for size >= n bytes (caller).
    unsafe {
        core::ptr::copy_nonoverlapping(name.as_ptr(), buf as *mut u8, n);
        *(buf as *mut u8).add(n - 1) = 0;
    }
    0
}

/// `long bpf_probe_read_user(dst, size, unsafe_ptr)`: 0, or `-EFAULT` with `dst` zeroed.
///
/// # Safety
/// `dst` must be writable for `size` bytes; `unsafe_ptr` may be anything.
pub unsafe extern "C" fn probe_read_user(dst: u64, size: u64, src: u64, _: u64, _: u64) -> u64 {
    if size == 0 {
        return 0;
    }
    if dst == 0 || size > isize::MAX as u64 {
        return err(sys::EFAULT);
    }
    // SAFETY: dst writable for size (caller); src is checked by the kernel.
    let r = unsafe { sys::read_self(dst as *mut u8, src, size as usize) };
    if r == size as i64 {
        return 0;
    }
    // SAFETY: as above.
    unsafe { core::ptr::write_bytes(dst as *mut u8, 0, size as usize) };
    err(sys::EFAULT)
}

/// `long bpf_probe_read_user_str(dst, size, unsafe_ptr)`: the string's length including its
/// NUL (truncated to `size`, always terminated), or `-EFAULT` with `dst` zeroed.
///
/// # Safety
/// `dst` must be writable for `size` bytes; `unsafe_ptr` may be anything.
pub unsafe extern "C" fn probe_read_user_str(dst: u64, size: u64, src: u64, _: u64, _: u64) -> u64 {
    if size == 0 {
        return 0;
    }
    if dst == 0 || size > isize::MAX as u64 {
        return err(sys::EFAULT);
    }
    let d = dst as *mut u8;
    let size = size as usize;
    let mut done = 0usize;
    while done < size {
        // Never read across a page boundary in one go: the next page may be unmapped while
        // the string ends before it.
        let at = src.wrapping_add(done as u64);
        let chunk = (4096 - (at % 4096) as usize).min(size - done);
        // SAFETY: d + done .. + chunk is within dst (caller); the kernel checks `at`.
        let r = unsafe { sys::read_self(d.add(done), at, chunk) };
        if r != chunk as i64 {
            // SAFETY: dst writable for size bytes.
            unsafe { core::ptr::write_bytes(d, 0, size) };
            return err(sys::EFAULT);
        }
        // SAFETY: we just wrote these `chunk` bytes.
        let got = unsafe { core::slice::from_raw_parts(d.add(done), chunk) };
        if let Some(p) = got.iter().position(|&b| b == 0) {
            return (done + p + 1) as u64;
        }
        done += chunk;
    }
    // SAFETY: size >= 1, within dst.
    unsafe { *d.add(size - 1) = 0 };
    size as u64
}

/// `void *bpf_ringbuf_reserve(ringbuf, size, flags)`.
///
/// # Safety
/// As [`map_lookup_elem`] for `ringbuf`.
pub unsafe extern "C" fn ringbuf_reserve(map: u64, size: u64, flags: u64, _: u64, _: u64) -> u64 {
    // SAFETY: caller contract on `map`.
    match unsafe { MapPtr::from_addr(map) } {
        Some(m) => maps::ringbuf_reserve(m, size, flags),
        None => 0,
    }
}

/// `void bpf_ringbuf_submit(data, flags)` (returns 0 or `-EINVAL`).
///
/// # Safety
/// `data` must come from [`ringbuf_reserve`] and not be submitted or discarded yet.
pub unsafe extern "C" fn ringbuf_submit(data: u64, flags: u64, _: u64, _: u64, _: u64) -> u64 {
    // SAFETY: forwarded.
    (unsafe { maps::ringbuf_submit(data, flags) }) as u64
}

/// `void bpf_ringbuf_discard(data, flags)` (returns 0 or `-EINVAL`).
///
/// # Safety
/// As [`ringbuf_submit`].
pub unsafe extern "C" fn ringbuf_discard(data: u64, flags: u64, _: u64, _: u64, _: u64) -> u64 {
    // SAFETY: forwarded.
    (unsafe { maps::ringbuf_discard(data, flags) }) as u64
}

/// `long bpf_ringbuf_output(ringbuf, data, size, flags)`.
///
/// # Safety
/// As [`map_lookup_elem`] for `ringbuf`; `data` readable for `size` bytes.
pub unsafe extern "C" fn ringbuf_output(map: u64, data: u64, size: u64, flags: u64, _: u64) -> u64 {
    // SAFETY: caller contract on `map`.
    let Some(m) = (unsafe { MapPtr::from_addr(map) }) else {
        return err(sys::EINVAL);
    };
    if data == 0 && size != 0 {
        return err(sys::EFAULT);
    }
    // SAFETY: caller contract on `data`.
    (unsafe { maps::ringbuf_output(m, data as *const u8, size, flags) }) as u64
}

/// `u64 bpf_get_func_ip(ctx)`: the hooked function's entry ([`ProbeCtx::func_ip`]).
///
/// # Safety
/// `ctx` must be 0 or point to a [`ProbeCtx`].
pub unsafe extern "C" fn get_func_ip(ctx: u64, _: u64, _: u64, _: u64, _: u64) -> u64 {
    if ctx == 0 {
        return 0;
    }
    // SAFETY: ctx points to a ProbeCtx (caller); read unaligned to be lenient.
    unsafe { core::ptr::addr_of!((*(ctx as *const ProbeCtx)).func_ip).read_unaligned() }
}

/// `u64 bpf_get_attach_cookie(ctx)`: the function's index ([`ProbeCtx::cookie`]).
///
/// # Safety
/// `ctx` must be 0 or point to a [`ProbeCtx`].
pub unsafe extern "C" fn get_attach_cookie(ctx: u64, _: u64, _: u64, _: u64, _: u64) -> u64 {
    if ctx == 0 {
        return 0;
    }
    // SAFETY: as in get_func_ip.
    unsafe { core::ptr::addr_of!((*(ctx as *const ProbeCtx)).cookie).read_unaligned() }
}

// ---------------------------------------------------------------------------------------
// trace_printk and its log ring

/// A ring of bytes shared with readers: `size` (a power of two) bytes at `base`, and a
/// counter of bytes ever written. Writers reserve with `fetch_add` on the counter and then
/// copy; a reader that fell more than `size` behind skips ahead (old bytes are lost). Lines
/// are best-effort diagnostics: a reader racing a writer may see a line's bytes arrive late.
#[derive(Clone, Copy, Debug)]
pub struct LogRing {
    base: *mut u8,
    size: u64,
    head: *const AtomicU64,
}

// SAFETY: a LogRing designates shared memory used only through atomics and byte copies.
unsafe impl Send for LogRing {}
// SAFETY: as above.
unsafe impl Sync for LogRing {}

impl LogRing {
    /// A ring at `base` of `size` bytes, with its write counter at `head`. `None` unless
    /// `size` is a non-zero power of two and the pointers are non-null.
    ///
    /// # Safety
    /// `base` must stay mapped read-write for `size` bytes and `head` point to an 8-aligned
    /// u64 that stays mapped, for as long as the ring is used (or installed as the sink).
    pub unsafe fn new(base: *mut u8, size: u64, head: *const AtomicU64) -> Option<Self> {
        (size.is_power_of_two() && !base.is_null() && !head.is_null()).then_some(LogRing {
            base,
            size,
            head,
        })
    }

    fn head(&self) -> &AtomicU64 {
        // SAFETY: constructor contract.
        unsafe { &*self.head }
    }

    /// Appends bytes.
    pub fn write(&self, bytes: &[u8]) {
        let n = (bytes.len() as u64).min(self.size);
        let pos = self.head().fetch_add(n, Ordering::AcqRel);
        for (i, &b) in bytes.iter().take(n as usize).enumerate() {
            let at = (pos + i as u64) & (self.size - 1);
            // SAFETY: at < size; the constructor guarantees the range is mapped.
            unsafe { self.base.add(at as usize).write_volatile(b) };
        }
    }

    /// Bytes ever written.
    pub fn written(&self) -> u64 {
        self.head().load(Ordering::Acquire)
    }

    /// Appends to `out` what was written since `cursor` (skipping what was overwritten) and
    /// returns the new cursor.
    pub fn read_from(&self, cursor: u64, out: &mut alloc::vec::Vec<u8>) -> u64 {
        let head = self.written();
        let start = cursor.max(head.saturating_sub(self.size));
        for p in start..head {
            // SAFETY: index masked into the ring (constructor contract).
            out.push(unsafe {
                self.base
                    .add((p & (self.size - 1)) as usize)
                    .read_volatile()
            });
        }
        head
    }
}

static LOG_BASE: AtomicU64 = AtomicU64::new(0);
static LOG_SIZE: AtomicU64 = AtomicU64::new(0);
static LOG_HEAD: AtomicU64 = AtomicU64::new(0);

/// Installs (or with `None` removes) the sink `bpf_trace_printk` writes to. Call it before
/// programs run; without a sink, trace_printk formats and returns the length but drops the
/// text.
pub fn set_log_sink(sink: Option<LogRing>) {
    LOG_HEAD.store(0, Ordering::Release);
    if let Some(s) = sink {
        LOG_BASE.store(s.base as u64, Ordering::Relaxed);
        LOG_SIZE.store(s.size, Ordering::Relaxed);
        LOG_HEAD.store(s.head as u64, Ordering::Release);
    }
}

fn log_sink() -> Option<LogRing> {
    let head = LOG_HEAD.load(Ordering::Acquire);
    if head == 0 {
        return None;
    }
    Some(LogRing {
        base: LOG_BASE.load(Ordering::Relaxed) as *mut u8,
        size: LOG_SIZE.load(Ordering::Relaxed),
        head: head as *const AtomicU64,
    })
}

struct Buf {
    b: [u8; 256],
    n: usize,
}

impl Buf {
    fn push(&mut self, c: u8) {
        if let Some(slot) = self.b.get_mut(self.n) {
            *slot = c;
            self.n += 1;
        }
    }
    fn num(&mut self, mut v: u64, base: u64, neg: bool) {
        if neg {
            self.push(b'-');
        }
        // Digits least significant first (at most 20: u64::MAX in base 10), then reversed.
        let mut d = [0u8; 20];
        let mut n = 0;
        for slot in d.iter_mut() {
            *slot = b"0123456789abcdef"
                .get((v % base) as usize)
                .copied()
                .unwrap_or(b'?');
            n += 1;
            v /= base;
            if v == 0 {
                break;
            }
        }
        for &c in d.iter().take(n).rev() {
            self.push(c);
        }
    }
}

/// `long bpf_trace_printk(fmt, fmt_size, a, b, c)`: formats with `%d %i %u %x %lld %llu
/// %llx %p %c %s %%` (with `l`/`ll` modifiers) and appends the line to the log sink. Returns
/// the bytes written, or `-EINVAL` for a bad format (unknown conversion, more than three
/// arguments, unreadable).
///
/// # Safety
/// None beyond the helper ABI: the format and `%s` arguments are read fault-safely.
pub unsafe extern "C" fn trace_printk(fmt: u64, fmt_size: u64, a: u64, b: u64, c: u64) -> u64 {
    let mut f = [0u8; 256];
    if fmt_size == 0 || fmt_size > f.len() as u64 {
        return err(sys::EINVAL);
    }
    // SAFETY: f is writable for fmt_size <= 256 bytes; fmt is read fault-safely.
    if unsafe { probe_read_user(f.as_mut_ptr() as u64, fmt_size, fmt, 0, 0) } != 0 {
        return err(sys::EINVAL);
    }
    let f = f.get(..fmt_size as usize).unwrap_or(&[]);
    let f = f.split(|&x| x == 0).next().unwrap_or(&[]);
    let args = [a, b, c];
    let mut next = 0;
    let mut out = Buf { b: [0; 256], n: 0 };
    let mut i = 0;
    while let Some(&ch) = f.get(i) {
        i += 1;
        if ch != b'%' {
            out.push(ch);
            continue;
        }
        let mut longs = 0;
        while f.get(i) == Some(&b'l') {
            longs += 1;
            i += 1;
        }
        let Some(&conv) = f.get(i) else {
            return err(sys::EINVAL);
        };
        i += 1;
        if conv == b'%' {
            out.push(b'%');
            continue;
        }
        let (Some(&v), 0..=2) = (args.get(next), longs) else {
            return err(sys::EINVAL);
        };
        next += 1;
        let narrow = longs == 0;
        match conv {
            b'd' | b'i' => {
                let s = if narrow { v as i32 as i64 } else { v as i64 };
                out.num(s.unsigned_abs(), 10, s < 0);
            }
            b'u' => out.num(if narrow { v as u32 as u64 } else { v }, 10, false),
            b'x' => out.num(if narrow { v as u32 as u64 } else { v }, 16, false),
            b'p' => {
                out.push(b'0');
                out.push(b'x');
                out.num(v, 16, false);
            }
            b'c' => out.push(v as u8),
            b's' => {
                let mut s = [0u8; 64];
                // SAFETY: s is writable for 64 bytes; v is read fault-safely.
                let r = unsafe { probe_read_user_str(s.as_mut_ptr() as u64, 64, v, 0, 0) };
                if (r as i64) < 0 {
                    for &x in b"(fault)" {
                        out.push(x);
                    }
                } else {
                    for &x in s.iter().take((r as usize).saturating_sub(1)) {
                        out.push(x);
                    }
                }
            }
            _ => return err(sys::EINVAL),
        }
    }
    let last = out.n.checked_sub(1).and_then(|l| out.b.get(l)).copied();
    if out.n == out.b.len() {
        if let Some(l) = out.b.last_mut() {
            *l = b'\n';
        }
    } else if last != Some(b'\n') {
        out.push(b'\n');
    }
    if let Some(sink) = log_sink() {
        sink.write(out.b.get(..out.n).unwrap_or(&[]));
    }
    out.n as u64
}
