//! Single-process tests of the maps and helpers: every map type through the helper ABI,
//! error returns, ring-buffer wraparound and drops, fault-safe user reads.

use std::sync::atomic::AtomicU64;

use xcover_bpf::env::{Env, HelperFn};
use xcover_bpf::helpers::{self, LogRing, standard_helpers};
use xcover_bpf::maps::{Arena, ArenaLayout, ArenaMaps, MapError};
use xcover_bpf::program::{MapDef, MapType};

/// An 8-aligned arena in a Vec<u64>.
struct TestArena {
    mem: Vec<u64>,
    offsets: Vec<u64>,
}

impl TestArena {
    fn new(defs: &[MapDef], ncpus: u32) -> Self {
        let layout = ArenaLayout::new(defs, ncpus).expect("layout");
        let mut mem = vec![0u64; (layout.size() as usize).div_ceil(8)];
        // SAFETY: mem is ours, 8-aligned and large enough.
        unsafe { layout.init(mem.as_mut_ptr() as *mut u8, (mem.len() * 8) as u64) }.unwrap();
        TestArena {
            mem,
            offsets: layout.offsets(),
        }
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
}

fn helper(id: u32) -> HelperFn {
    Env {
        helpers: standard_helpers(),
        ..Env::default()
    }
    .helper(id)
    .unwrap_or_else(|| panic!("helper {id} missing"))
}

fn call(id: u32, a: [u64; 5]) -> u64 {
    // SAFETY: tests pass valid maps, keys and buffers (or deliberately bad user pointers to
    // the fault-safe helpers).
    unsafe { helper(id)(a[0], a[1], a[2], a[3], a[4]) }
}

fn neg(e: i64) -> u64 {
    (-e) as u64
}

#[test]
fn array_lookup_update_and_bounds() {
    let mut t = TestArena::new(&[MapDef::new("a", MapType::Array, 4, 8, 16)], 2);
    let arena = t.arena();
    let m = arena.map(t.offsets[0]).unwrap();
    let addr = m.ptr().addr();
    for k in 0u32..16 {
        let p = call(1, [addr, &k as *const u32 as u64, 0, 0, 0]);
        assert_ne!(p, 0);
        // SAFETY: p is a value of 8 bytes in the arena.
        unsafe { *(p as *mut u64) += k as u64 * 10 };
    }
    let k = 16u32;
    assert_eq!(call(1, [addr, &k as *const u32 as u64, 0, 0, 0]), 0);
    let v = 77u64;
    let k = 3u32;
    assert_eq!(
        call(
            2,
            [addr, &k as *const _ as u64, &v as *const _ as u64, 0, 0]
        ),
        0
    );
    assert_eq!(
        call(
            2,
            [addr, &k as *const _ as u64, &v as *const _ as u64, 1, 0]
        ),
        neg(17)
    );
    assert_eq!(
        call(
            2,
            [addr, &k as *const _ as u64, &v as *const _ as u64, 9, 0]
        ),
        neg(22)
    );
    assert_eq!(call(3, [addr, &k as *const _ as u64, 0, 0, 0]), neg(22));
    assert_eq!(m.array_u64(3), Some(77));
    assert_eq!(m.array_u64(5), Some(50));
    assert_eq!(m.array_u64(16), None);
    assert_eq!(m.array_u64_all().len(), 16);
    // Not a map at all.
    let junk = [0u64; 64];
    assert_eq!(
        call(1, [junk.as_ptr() as u64, &k as *const _ as u64, 0, 0, 0]),
        0
    );
    assert_eq!(call(2, [0, 0, 0, 0, 0]), neg(22));
}

#[test]
fn percpu_array_sums_over_cpus() {
    let ncpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let mut t = TestArena::new(&[MapDef::new("p", MapType::PercpuArray, 4, 8, 4)], ncpus);
    let arena = t.arena();
    let m = arena.map(t.offsets[0]).unwrap();
    let addr = m.ptr().addr() as usize;
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(move || {
                for _ in 0..10_000 {
                    let k = 2u32;
                    let p = call(1, [addr as u64, &k as *const _ as u64, 0, 0, 0]);
                    // SAFETY: an 8-byte value; threads of one CPU slot share it, hence atomic.
                    let a = unsafe { &*(p as *const AtomicU64) };
                    a.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    });
    assert_eq!(m.array_u64(2), Some(40_000));
    assert_eq!(m.array_u64(1), Some(0));
}

#[test]
fn hash_crud_full_and_iteration() {
    let mut t = TestArena::new(&[MapDef::new("h", MapType::Hash, 12, 8, 64)], 1);
    let arena = t.arena();
    let m = arena.map(t.offsets[0]).unwrap();
    let addr = m.ptr().addr();
    let key = |i: u32| -> [u8; 12] {
        let mut k = [0u8; 12];
        k[..4].copy_from_slice(&i.to_le_bytes());
        k[8..].copy_from_slice(&(i * 7).to_le_bytes());
        k
    };
    for i in 0..64u32 {
        let k = key(i);
        let v = i as u64 * 100;
        assert_eq!(
            call(2, [addr, k.as_ptr() as u64, &v as *const _ as u64, 1, 0]),
            0,
            "{i}"
        );
    }
    let k = key(999);
    let v = 1u64;
    assert_eq!(
        call(2, [addr, k.as_ptr() as u64, &v as *const _ as u64, 0, 0]),
        neg(7)
    );
    assert_eq!(
        call(2, [addr, k.as_ptr() as u64, &v as *const _ as u64, 2, 0]),
        neg(2)
    );
    let k5 = key(5);
    assert_eq!(
        call(2, [addr, k5.as_ptr() as u64, &v as *const _ as u64, 1, 0]),
        neg(17)
    );
    let p = call(1, [addr, k5.as_ptr() as u64, 0, 0, 0]);
    // SAFETY: p is the 8-byte value.
    assert_eq!(unsafe { *(p as *const u64) }, 500);
    assert_eq!(m.len(), 64);
    // Delete half, reinsert new keys: entries are recycled.
    for i in (0..64u32).step_by(2) {
        let k = key(i);
        assert_eq!(call(3, [addr, k.as_ptr() as u64, 0, 0, 0]), 0);
        assert_eq!(call(3, [addr, k.as_ptr() as u64, 0, 0, 0]), neg(2));
        assert_eq!(call(1, [addr, k.as_ptr() as u64, 0, 0, 0]), 0);
    }
    for i in 1000..1032u32 {
        let k = key(i);
        let v = i as u64;
        assert_eq!(
            call(2, [addr, k.as_ptr() as u64, &v as *const _ as u64, 0, 0]),
            0
        );
    }
    let mut seen = std::collections::HashMap::new();
    let n = m.hash_for_each(|k, v| {
        seen.insert(k.to_vec(), u64::from_le_bytes(v[..8].try_into().unwrap()));
    });
    assert_eq!(n, 64);
    for i in (1..64u32).step_by(2) {
        assert_eq!(seen[&key(i).to_vec()], i as u64 * 100);
    }
    for i in 1000..1032u32 {
        assert_eq!(seen[&key(i).to_vec()], i as u64);
    }
    assert_eq!(m.hash_get(&key(1001)).unwrap()[..8], 1001u64.to_le_bytes());
    assert_eq!(m.hash_get(&key(2)), None);
}

#[test]
fn percpu_hash_slot_per_cpu() {
    let mut t = TestArena::new(&[MapDef::new("ph", MapType::PercpuHash, 4, 8, 8)], 64);
    let arena = t.arena();
    let m = arena.map(t.offsets[0]).unwrap();
    let addr = m.ptr().addr();
    let k = 42u32;
    let v = 5u64;
    assert_eq!(
        call(
            2,
            [addr, &k as *const _ as u64, &v as *const _ as u64, 0, 0]
        ),
        0
    );
    let vals = m.hash_get(&k.to_le_bytes()).unwrap();
    assert_eq!(vals.len(), 64 * 8);
    let sum: u64 = vals
        .chunks(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .sum();
    assert_eq!(sum, 5);
}

#[test]
fn ringbuf_records_wraparound_discard_and_drops() {
    let mut t = TestArena::new(&[MapDef::new("rb", MapType::Ringbuf, 0, 0, 256)], 1);
    let arena = t.arena();
    let m = arena.map(t.offsets[0]).unwrap();
    let addr = m.ptr().addr();
    let mut got = Vec::new();
    let mut next = 0u32;
    // 40-byte payloads (48 with header) do not divide 256: records must wrap via padding.
    for round in 0..50 {
        for _ in 0..3 {
            let p = call(131, [addr, 40, 0, 0, 0]);
            assert_ne!(p, 0, "round {round}");
            // SAFETY: 40 writable bytes of a reserved record.
            unsafe { std::ptr::write_bytes(p as *mut u8, next as u8, 40) };
            let discard = next % 5 == 4;
            let id = if discard { 133 } else { 132 };
            assert_eq!(call(id, [p, 0, 0, 0, 0]), 0);
            next += 1;
        }
        m.ringbuf_consume(|r| {
            assert_eq!(r.len(), 40);
            assert!(r.iter().all(|&b| b == r[0]));
            got.push(r[0] as u32);
        });
    }
    let want: Vec<u32> = (0..150u32)
        .filter(|i| i % 5 != 4)
        .map(|i| i % 256)
        .collect();
    assert_eq!(got, want);
    // Fill without consuming: drops are counted, output reports -EAGAIN.
    let data = [9u8; 40];
    let mut ok = 0;
    for _ in 0..10 {
        if call(130, [addr, data.as_ptr() as u64, 40, 0, 0]) == 0 {
            ok += 1;
        }
    }
    assert!((4..=5).contains(&ok), "{ok}");
    assert_eq!(m.dropped(), 10 - ok);
    assert_eq!(call(130, [addr, data.as_ptr() as u64, 40, 0, 0]), neg(11));
    assert_eq!(m.ringbuf_consume(|_| {}), ok as usize);
    // Bad arguments.
    assert_eq!(call(131, [addr, 1000, 0, 0, 0]), 0);
    assert_eq!(call(131, [addr, 8, 1, 0, 0]), 0);
    assert_eq!(call(130, [addr, data.as_ptr() as u64, 1000, 0, 0]), neg(7));
    assert_eq!(call(132, [12345, 0, 0, 0, 0]), neg(22));
    // A reserved-but-unsubmitted record holds the consumer back.
    let p = call(131, [addr, 8, 0, 0, 0]);
    assert_eq!(call(130, [addr, data.as_ptr() as u64, 8, 0, 0]), 0);
    assert_eq!(m.ringbuf_consume(|_| {}), 0);
    assert_eq!(call(132, [p, 0, 0, 0, 0]), 0);
    assert_eq!(m.ringbuf_consume(|_| {}), 2);
}

#[test]
fn layout_rejects_bad_defs() {
    let bad = [
        MapDef::new("a", MapType::Array, 8, 8, 1),
        MapDef::new("a", MapType::Array, 4, 0, 1),
        MapDef::new("h", MapType::Hash, 0, 8, 1),
        MapDef::new("h", MapType::Hash, 4, 8, 0),
        MapDef::new("r", MapType::Ringbuf, 0, 0, 100),
        MapDef::new("r", MapType::Ringbuf, 4, 0, 4096),
    ];
    for d in bad {
        assert!(matches!(
            ArenaLayout::new(&[d], 1),
            Err(MapError::BadDef { .. })
        ));
    }
    let l = ArenaLayout::new(&[MapDef::new("a", MapType::Array, 4, 8, 1)], 1).unwrap();
    let mut small = vec![0u8; 16];
    assert!(l.init_slice(&mut small).is_err());
}

#[test]
fn arena_reader_rejects_garbage_offsets() {
    let mut t = TestArena::new(&[MapDef::new("a", MapType::Array, 4, 8, 4)], 1);
    let arena = t.arena();
    assert!(arena.map(8).is_err());
    assert!(arena.map(1 << 40).is_err());
    assert_eq!(arena.map(0).unwrap().name(), "a");
}

#[test]
fn initial_data_and_value_addr() {
    let mut d = MapDef::new(".rodata", MapType::Array, 4, 5, 1);
    d.initial_data = b"hello".to_vec();
    let mut t = TestArena::new(&[d], 1);
    let arena = t.arena();
    let (addrs, vals) = arena.env_addrs(&t.offsets).unwrap();
    assert_eq!(addrs[0], arena.base());
    // SAFETY: the first value holds 5 initial bytes.
    let s = unsafe { std::slice::from_raw_parts(vals[0] as *const u8, 5) };
    assert_eq!(s, b"hello");
}

#[test]
fn probe_read_user_never_faults() {
    let src = *b"abcdefgh";
    let mut dst = [0xffu8; 8];
    assert_eq!(
        call(112, [dst.as_mut_ptr() as u64, 8, src.as_ptr() as u64, 0, 0]),
        0
    );
    assert_eq!(&dst, b"abcdefgh");
    for bad in [0u64, 8, 0xdead_0000_0000, u64::MAX - 3] {
        let mut dst = [0xffu8; 8];
        assert_eq!(call(112, [dst.as_mut_ptr() as u64, 8, bad, 0, 0]), neg(14));
        assert_eq!(dst, [0; 8]);
        assert_eq!(call(114, [dst.as_mut_ptr() as u64, 8, bad, 0, 0]), neg(14));
    }
    let s = b"hi there\0";
    let mut dst = [0xffu8; 32];
    assert_eq!(
        call(114, [dst.as_mut_ptr() as u64, 32, s.as_ptr() as u64, 0, 0]),
        9
    );
    assert_eq!(&dst[..9], s);
    assert_eq!(
        call(114, [dst.as_mut_ptr() as u64, 4, s.as_ptr() as u64, 0, 0]),
        4
    );
    assert_eq!(&dst[..4], b"hi \0");
}

#[test]
fn probe_read_user_str_stops_before_unmapped_page() {
    // A string ending right before an unmapped page must be read fine.
    // SAFETY: plain anonymous mappings owned by the test.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            8192,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        ) as *mut u8;
        assert!(!p.is_null());
        libc::munmap(p.add(4096) as *mut _, 4096);
        let s = p.add(4096 - 4);
        std::ptr::copy_nonoverlapping(c"abc".as_ptr() as *const u8, s, 4);
        let mut dst = [0u8; 64];
        assert_eq!(call(114, [dst.as_mut_ptr() as u64, 64, s as u64, 0, 0]), 4);
        std::ptr::copy_nonoverlapping(b"abcd".as_ptr(), s, 4);
        assert_eq!(
            call(114, [dst.as_mut_ptr() as u64, 64, s as u64, 0, 0]),
            neg(14)
        );
        libc::munmap(p as *mut _, 4096);
    }
}

#[test]
fn process_helpers() {
    let pt = call(14, [0; 5]);
    assert_eq!(pt >> 32, std::process::id() as u64);
    // SAFETY: gettid has no preconditions.
    assert_eq!(pt as u32 as i64, unsafe { libc::gettid() } as i64);
    let mut comm = [0xffu8; 16];
    assert_eq!(call(16, [comm.as_mut_ptr() as u64, 16, 0, 0, 0]), 0);
    assert!(comm.contains(&0));
    assert_eq!(call(16, [0, 16, 0, 0, 0]), neg(22));
    let a = call(7, [0; 5]);
    let b = call(7, [0; 5]);
    assert!(a <= u32::MAX as u64 && a != b);
    let t1 = call(5, [0; 5]);
    let t2 = call(5, [0; 5]);
    assert!(t1 > 0 && t2 >= t1);
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    assert!(call(8, [0; 5]) < ncpu.max(4096));
    let ctx = xcover_session::ProbeCtx {
        cookie: 1234,
        func_ip: 0x401000,
        ..Default::default()
    };
    assert_eq!(call(174, [&ctx as *const _ as u64, 0, 0, 0, 0]), 1234);
    assert_eq!(call(173, [&ctx as *const _ as u64, 0, 0, 0, 0]), 0x401000);
    assert_eq!(call(174, [0, 0, 0, 0, 0]), 0);
}

#[test]
fn trace_printk_formats_into_log_ring() {
    let mut ring = vec![0u8; 256];
    let head = AtomicU64::new(0);
    // SAFETY: ring and head outlive the sink (removed at the end of the test).
    let lr = unsafe { LogRing::new(ring.as_mut_ptr(), 256, &head) }.unwrap();
    helpers::set_log_sink(Some(lr));
    let fmt = b"f=%d u=%u x=%x %%\0";
    let s = b"str\0";
    let n = call(
        6,
        [fmt.as_ptr() as u64, fmt.len() as u64, -5i64 as u64, 7, 255],
    );
    let fmt2 = b"%lld %s\0";
    call(
        6,
        [
            fmt2.as_ptr() as u64,
            fmt2.len() as u64,
            -9i64 as u64,
            s.as_ptr() as u64,
            0,
        ],
    );
    let bad = b"%q\0";
    assert_eq!(call(6, [bad.as_ptr() as u64, 3, 0, 0, 0]), neg(22));
    let four = b"%d%d%d%d\0";
    assert_eq!(call(6, [four.as_ptr() as u64, 9, 0, 0, 0]), neg(22));
    assert_eq!(call(6, [0xdead, 9, 0, 0, 0]), neg(22));
    helpers::set_log_sink(None);
    let mut out = Vec::new();
    lr.read_from(0, &mut out);
    let text = String::from_utf8(out).unwrap();
    assert_eq!(n as usize, text.lines().next().unwrap().len() + 1);
    assert!(text.starts_with("f=-5 u=7 x=ff %\n"), "{text}");
    assert!(text.ends_with("-9 str\n"), "{text}");
}
