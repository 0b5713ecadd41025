//! The first-hit fast paths of `sys`: the vDSO clock, the cached pid and per-thread tids agree
//! with the system calls they replace.

use xcover_rt as sys;

#[test]
fn vdso_clock_agrees_with_the_syscall() {
    // This machine's vDSO has clock_gettime; the fallback is exercised wherever it has not.
    assert!(sys::monotonic_ns_uses_vdso());
    for _ in 0..1000 {
        let a = sys::monotonic_ns_syscall();
        let b = sys::monotonic_ns();
        let c = sys::monotonic_ns_syscall();
        assert!(a <= b && b <= c, "{a} {b} {c}");
    }
}

#[test]
fn coarse_clock_trails_the_fine_one_by_at_most_a_tick() {
    let mut last = 0;
    for _ in 0..1000 {
        let fine0 = sys::monotonic_ns();
        let coarse = sys::monotonic_coarse_ns();
        let fine1 = sys::monotonic_ns();
        // Never ahead of the fine clock, never more than a tick (<= 10 ms) behind, never back.
        assert!(coarse <= fine1, "{coarse} > {fine1}");
        assert!(
            fine0 - coarse.min(fine0) < 10_000_000,
            "{fine0} vs {coarse}"
        );
        assert!(coarse >= last);
        last = coarse;
    }
}

#[test]
fn cached_ids_match_the_syscalls() {
    assert_eq!(sys::getpid_cached(), std::process::id());
    assert_eq!(sys::getpid_cached(), sys::getpid());
    let main = sys::gettid();
    assert_eq!(sys::gettid_cached(), main);
    assert_eq!(sys::gettid_cached(), main);
    // glibc on an FSGSBASE kernel: the fast path is really taken.
    assert!(sys::gettid_is_cached());
    // Many threads at once, each asking twice (entry, then the cached path), a few rounds so
    // glibc hands out recycled stacks (and so recycled %fs bases) to later threads.
    for _ in 0..4 {
        let hs: Vec<_> = (0..32)
            .map(|_| {
                std::thread::spawn(|| {
                    let real = sys::gettid();
                    let first = sys::gettid_cached();
                    let again = sys::gettid_cached();
                    assert!(sys::gettid_is_cached());
                    (real, first, again)
                })
            })
            .collect();
        for h in hs {
            let (real, first, again) = h.join().unwrap();
            assert_eq!(first, real);
            assert_eq!(again, real);
        }
    }
    assert_eq!(sys::gettid_cached(), main);
}
