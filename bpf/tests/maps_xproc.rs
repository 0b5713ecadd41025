//! Maps shared by real processes: the test binary re-runs itself as child processes
//! (`XCOVER_MAPS_ROLE` set) that map the same `/dev/shm` file at their own address and
//! hammer it while the parent reads. Proves: no lost update on atomic and per-CPU counters,
//! no torn ring-buffer record under several producers (each record carries a checksum),
//! drops counted when the consumer is slow, wraparound, hash integrity under concurrent
//! writers, and lock takeover from a dead owner.

use std::fs::OpenOptions;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use xcover_bpf::helpers::{
    map_delete_elem, map_lookup_elem, map_update_elem, ringbuf_reserve, ringbuf_submit,
};
use xcover_bpf::maps::{Arena, ArenaLayout, ArenaMaps};
use xcover_bpf::program::{MapDef, MapType};

/// A shared mapping of a `/dev/shm` file, unmapped (and, for the creator, unlinked) on drop.
struct Shm {
    path: String,
    base: *mut u8,
    len: usize,
    owner: bool,
}

impl Shm {
    fn create(tag: &str, len: usize) -> Shm {
        let path = format!("/dev/shm/xcover-test-{tag}-{}", std::process::id());
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.set_len(len as u64).unwrap();
        Shm::map(path, len, true)
    }

    fn open(path: &str, len: usize) -> Shm {
        Shm::map(path.to_string(), len, false)
    }

    fn map(path: String, len: usize, owner: bool) -> Shm {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        // SAFETY: a fresh shared mapping of a file we opened; checked for failure.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&f),
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        Shm {
            path,
            base: base as *mut u8,
            len,
            owner,
        }
    }

    fn arena(&self) -> Arena {
        // SAFETY: the mapping lives as long as self, which outlives every use in a test.
        unsafe { Arena::from_raw(self.base, self.len as u64) }
    }
}

impl Drop for Shm {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping.
        unsafe { libc::munmap(self.base as *mut _, self.len) };
        if self.owner {
            std::fs::remove_file(&self.path).ok();
        }
    }
}

fn setup(tag: &str, defs: &[MapDef], ncpus: u32) -> (Shm, Vec<u64>) {
    let layout = ArenaLayout::new(defs, ncpus).unwrap();
    let shm = Shm::create(tag, layout.size() as usize);
    // SAFETY: the mapping is ours and no child runs yet.
    unsafe { layout.init(shm.base, shm.len as u64) }.unwrap();
    (shm, layout.offsets())
}

fn spawn(role: &str, shm: &Shm, id: usize, extra: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_entry",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("XCOVER_MAPS_ROLE", role)
        .env("XCOVER_MAPS_FILE", &shm.path)
        .env("XCOVER_MAPS_LEN", shm.len.to_string())
        .env("XCOVER_MAPS_ID", id.to_string())
        .env("XCOVER_MAPS_EXTRA", extra)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a child and returns the numbers it printed on its `RESULT` line.
fn finish(c: Child) -> Vec<u64> {
    let out = c.wait_with_output().unwrap();
    assert!(out.status.success(), "child failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("no RESULT line in {text}"));
    line.split_whitespace()
        .map(|w| w.parse().unwrap())
        .collect()
}

fn ncpus() -> u32 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) }).max(1) as u32
}

/// Child side: dispatches on `XCOVER_MAPS_ROLE`. Ignored in a normal run (it has nothing to
/// do there); the parents run it with `--ignored`.
#[test]
#[ignore = "the child side of the cross-process tests, run by them"]
fn child_entry() {
    let role = std::env::var("XCOVER_MAPS_ROLE").expect("XCOVER_MAPS_ROLE: run by a parent test");
    let path = std::env::var("XCOVER_MAPS_FILE").unwrap();
    let len: usize = std::env::var("XCOVER_MAPS_LEN").unwrap().parse().unwrap();
    let id: u64 = std::env::var("XCOVER_MAPS_ID").unwrap().parse().unwrap();
    let extra = std::env::var("XCOVER_MAPS_EXTRA").unwrap_or_default();
    let shm = Shm::open(&path, len);
    let arena = shm.arena();
    let offs: Vec<u64> = extra.split(',').map(|s| s.parse().unwrap()).collect();
    let result = match role.as_str() {
        "counter" => child_counter(&arena, &offs),
        "producer" => child_producer(&arena, &offs, id),
        "hash" => child_hash(&arena, &offs, id),
        r => panic!("unknown role {r}"),
    };
    let words: Vec<String> = result.iter().map(|v| v.to_string()).collect();
    println!("\nRESULT {}", words.join(" "));
}

const COUNTER_ITERS: u64 = 100_000;
const COUNTER_KEYS: u32 = 4;

fn child_counter(arena: &Arena, offs: &[u64]) -> Vec<u64> {
    let array = arena.map(offs[0]).unwrap().ptr().addr();
    let percpu = arena.map(offs[1]).unwrap().ptr().addr();
    std::thread::scope(|s| {
        for t in 0..2u64 {
            s.spawn(move || {
                for i in 0..COUNTER_ITERS {
                    let k = ((i + t) % COUNTER_KEYS as u64) as u32;
                    for m in [array, percpu] {
                        // SAFETY: a live map of this arena and a 4-byte key.
                        let p = unsafe { map_lookup_elem(m, &k as *const u32 as u64, 0, 0, 0) };
                        assert_ne!(p, 0);
                        // SAFETY: an 8-byte value of the map, updated atomically.
                        unsafe { &*(p as *const AtomicU64) }.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    vec![2 * COUNTER_ITERS]
}

#[test]
fn counters_lose_no_update_across_processes() {
    let defs = [
        MapDef::new("counts", MapType::Array, 4, 8, COUNTER_KEYS),
        MapDef::new("pcpu", MapType::PercpuArray, 4, 8, COUNTER_KEYS),
    ];
    let (shm, offs) = setup("counters", &defs, ncpus());
    let extra = format!("{},{}", offs[0], offs[1]);
    let kids: Vec<Child> = (0..3).map(|i| spawn("counter", &shm, i, &extra)).collect();
    let arena = shm.arena();
    let counts = arena.map(offs[0]).unwrap();
    let pcpu = arena.map(offs[1]).unwrap();
    // Read while they write: totals only ever grow.
    let mut last = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let total: u64 = counts.array_u64_all().iter().sum();
        assert!(total >= last);
        last = total;
        if total == 3 * 2 * COUNTER_ITERS {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let done: u64 = kids.into_iter().map(|c| finish(c)[0]).sum();
    assert_eq!(done, 3 * 2 * COUNTER_ITERS);
    let per_key = done / COUNTER_KEYS as u64;
    for k in 0..COUNTER_KEYS {
        assert_eq!(counts.array_u64(k), Some(per_key), "array key {k}");
        assert_eq!(pcpu.array_u64(k), Some(per_key), "per-CPU key {k}");
    }
}

const RECORDS_PER_PRODUCER: u64 = 40_000;

/// Payload: producer id (u32), sequence (u32), filler, then an FNV-1a checksum (u64) of
/// everything before it. Lengths vary from 16 to 200 bytes, so records wrap at odd places.
fn record(id: u64, seq: u64, buf: &mut [u8]) -> usize {
    let len = 16 + ((seq * 37 + id * 11) % 185) as usize;
    buf[..4].copy_from_slice(&(id as u32).to_le_bytes());
    buf[4..8].copy_from_slice(&(seq as u32).to_le_bytes());
    for (i, b) in buf[8..len - 8].iter_mut().enumerate() {
        *b = (seq as u8).wrapping_mul(31).wrapping_add(i as u8) ^ id as u8;
    }
    let sum = fnv(&buf[..len - 8]);
    buf[len - 8..len].copy_from_slice(&sum.to_le_bytes());
    len
}

fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ x as u64).wrapping_mul(0x100_0000_01b3)
    })
}

fn child_producer(arena: &Arena, offs: &[u64], id: u64) -> Vec<u64> {
    let rb = arena.map(offs[0]).unwrap().ptr().addr();
    let mut buf = [0u8; 256];
    let (mut sent, mut dropped) = (0u64, 0u64);
    for seq in 0..RECORDS_PER_PRODUCER {
        let len = record(id, seq, &mut buf);
        // SAFETY: a live ring buffer of this arena.
        let p = unsafe { ringbuf_reserve(rb, len as u64, 0, 0, 0) };
        if p == 0 {
            dropped += 1;
            std::thread::yield_now();
            continue;
        }
        // SAFETY: p is a reserved record of `len` bytes; we write it in two halves so a
        // consumer reading before submit would see a mismatched checksum.
        unsafe {
            std::ptr::copy_nonoverlapping(buf.as_ptr(), p as *mut u8, len / 2);
            std::hint::black_box(fnv(&buf[..8]));
            std::ptr::copy_nonoverlapping(
                buf.as_ptr().add(len / 2),
                (p as *mut u8).add(len / 2),
                len - len / 2,
            );
            assert_eq!(ringbuf_submit(p, 0, 0, 0, 0), 0);
        }
        sent += 1;
    }
    vec![sent, dropped]
}

#[test]
fn ringbuf_many_producers_no_torn_records_drops_counted() {
    let defs = [MapDef::new("events", MapType::Ringbuf, 0, 0, 4096)];
    let (shm, offs) = setup("ringbuf", &defs, 1);
    let extra = offs[0].to_string();
    let kids: Vec<Child> = (0..3).map(|i| spawn("producer", &shm, i, &extra)).collect();
    let arena = shm.arena();
    let rb = arena.map(offs[0]).unwrap();
    let mut next_seq = [0u64; 3];
    let mut got = [0u64; 3];
    let mut rounds = 0u64;
    let mut kids: Vec<Option<Child>> = kids.into_iter().map(Some).collect();
    let mut results = vec![Vec::new(); 3];
    loop {
        rounds += 1;
        rb.ringbuf_consume(|r| {
            assert!(r.len() >= 16);
            let (body, sum) = r.split_at(r.len() - 8);
            assert_eq!(
                fnv(body),
                u64::from_le_bytes(sum.try_into().unwrap()),
                "torn record"
            );
            let id = u32::from_le_bytes(r[..4].try_into().unwrap()) as usize;
            let seq = u32::from_le_bytes(r[4..8].try_into().unwrap()) as u64;
            let mut want = [0u8; 256];
            let len = record(id as u64, seq, &mut want);
            assert_eq!(&want[..len], r);
            assert!(
                seq >= next_seq[id],
                "producer {id} went back: {seq} < {}",
                next_seq[id]
            );
            next_seq[id] = seq + 1;
            got[id] += 1;
        });
        // A slow consumer now and then, so the ring fills and producers drop.
        if rounds.is_multiple_of(50) {
            std::thread::sleep(Duration::from_millis(2));
        }
        for (i, k) in kids.iter_mut().enumerate() {
            if let Some(c) = k.as_mut()
                && c.try_wait().unwrap().is_some()
            {
                results[i] = finish(k.take().unwrap());
            }
        }
        if kids.iter().all(Option::is_none) {
            // Drain what is left.
            rb.ringbuf_consume(|r| {
                let id = u32::from_le_bytes(r[..4].try_into().unwrap()) as usize;
                got[id] += 1;
            });
            break;
        }
    }
    let mut dropped_total = 0;
    for i in 0..3 {
        let (sent, dropped) = (results[i][0], results[i][1]);
        assert_eq!(sent + dropped, RECORDS_PER_PRODUCER);
        assert_eq!(
            got[i], sent,
            "producer {i}: every submitted record delivered once"
        );
        dropped_total += dropped;
    }
    assert_eq!(rb.dropped(), dropped_total);
    assert!(
        dropped_total > 0,
        "the slow consumer should have caused drops"
    );
    let wraps = rb.header().producer_pos.load(Ordering::Relaxed) / 4096;
    assert!(wraps > 100, "only {wraps} wraparounds");
    eprintln!("ringbuf: delivered {got:?}, dropped {dropped_total}, {wraps} wraps");
}

const HASH_KEYS: u64 = 500;

fn child_hash(arena: &Arena, offs: &[u64], id: u64) -> Vec<u64> {
    let h = arena.map(offs[0]).unwrap().ptr().addr();
    let mut busy = 0;
    for round in 0..20u64 {
        for k in 0..HASH_KEYS {
            let key = [id, k];
            let val = [id * 1_000_000 + k, !(id * 1_000_000 + k)];
            loop {
                // SAFETY: a live hash map; key and value are 16 bytes.
                let r = unsafe {
                    if round.is_multiple_of(2) {
                        map_update_elem(h, key.as_ptr() as u64, val.as_ptr() as u64, 0, 0)
                    } else {
                        map_delete_elem(h, key.as_ptr() as u64, 0, 0, 0)
                    }
                };
                if r as i64 == -16 {
                    busy += 1;
                    continue; // EBUSY: retry
                }
                assert_eq!(r, 0, "round {round} key {k}");
                break;
            }
            if round.is_multiple_of(2) {
                // SAFETY: as above.
                let p = unsafe { map_lookup_elem(h, key.as_ptr() as u64, 0, 0, 0) };
                assert_ne!(p, 0);
            }
        }
    }
    // Leave every key inserted.
    for k in 0..HASH_KEYS {
        let key = [id, k];
        let val = [id * 1_000_000 + k, !(id * 1_000_000 + k)];
        // SAFETY: as above.
        while unsafe { map_update_elem(h, key.as_ptr() as u64, val.as_ptr() as u64, 0, 0) } != 0 {}
    }
    vec![busy]
}

#[test]
fn hash_concurrent_writers_and_reader_stay_consistent() {
    let defs = [MapDef::new(
        "h",
        MapType::Hash,
        16,
        16,
        (3 * HASH_KEYS) as u32,
    )];
    let (shm, offs) = setup("hash", &defs, 1);
    let extra = offs[0].to_string();
    let mut kids: Vec<Child> = (0..3).map(|i| spawn("hash", &shm, i, &extra)).collect();
    let arena = shm.arena();
    let h = arena.map(offs[0]).unwrap();
    let check = |k: &[u8], v: &[u8]| {
        let id = u64::from_le_bytes(k[..8].try_into().unwrap());
        let key = u64::from_le_bytes(k[8..].try_into().unwrap());
        let a = u64::from_le_bytes(v[..8].try_into().unwrap());
        let b = u64::from_le_bytes(v[8..16].try_into().unwrap());
        assert_eq!(a, id * 1_000_000 + key, "value does not match key");
        assert_eq!(b, !a);
    };
    let mut scans = 0;
    while kids.iter_mut().any(|c| c.try_wait().unwrap().is_none()) {
        h.hash_for_each(check);
        scans += 1;
    }
    for c in kids {
        finish(c);
    }
    assert_eq!(h.hash_for_each(check), 3 * HASH_KEYS as usize);
    assert_eq!(h.len(), 3 * HASH_KEYS);
    for id in 0..3u64 {
        for k in 0..HASH_KEYS {
            let mut key = id.to_le_bytes().to_vec();
            key.extend_from_slice(&k.to_le_bytes());
            assert!(h.hash_get(&key).is_some());
        }
    }
    assert!(scans > 0);
}

#[test]
fn hash_lock_held_by_dead_process_is_taken_over() {
    let defs = [MapDef::new("h", MapType::Hash, 8, 8, 16)];
    let (shm, offs) = setup("hashdead", &defs, 1);
    let arena = shm.arena();
    let h = arena.map(offs[0]).unwrap();
    // A process that has exited holds the lock.
    let mut dead = Command::new("true").spawn().unwrap();
    let pid = dead.id() as u64;
    dead.wait().unwrap();
    h.header().lock.store(pid << 32 | pid, Ordering::Relaxed);
    let (k, v) = (7u64, 9u64);
    let t = Instant::now();
    // SAFETY: a live hash map; 8-byte key and value.
    let r = unsafe {
        map_update_elem(
            h.ptr().addr(),
            &k as *const _ as u64,
            &v as *const _ as u64,
            0,
            0,
        )
    };
    assert_eq!(r, 0);
    assert_eq!(h.header().lock_steals.load(Ordering::Relaxed), 1);
    assert_eq!(h.hash_get(&k.to_le_bytes()).unwrap(), v.to_le_bytes());
    eprintln!("takeover of a dead owner's lock after {:?}", t.elapsed());
    // A live owner (another thread of ours) is not robbed: the writer gives up with -EBUSY
    // after a bounded spin, and counts it.
    let (tx, rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        tx.send(unsafe { libc::gettid() } as u64).unwrap();
        done_rx.recv().ok();
    });
    let tid = rx.recv().unwrap();
    h.header()
        .lock
        .store((std::process::id() as u64) << 32 | tid, Ordering::Relaxed);
    let t = Instant::now();
    // SAFETY: as above.
    let r = unsafe {
        map_update_elem(
            h.ptr().addr(),
            &k as *const _ as u64,
            &v as *const _ as u64,
            0,
            0,
        )
    };
    let waited = t.elapsed();
    assert_eq!(r as i64, -16);
    assert_eq!(h.dropped(), 1);
    assert!(waited < Duration::from_secs(2), "spun for {waited:?}");
    eprintln!("gave up on a live owner after {waited:?}");
    h.header().lock.store(0, Ordering::Relaxed);
    done_tx.send(()).unwrap();
    holder.join().unwrap();
}
