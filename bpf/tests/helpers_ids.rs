//! The pid/tgid helper answers from the runtime's id caches, and agrees with the system
//! calls.

#[test]
fn pid_tgid_helper_uses_the_caches() {
    // SAFETY: get_current_pid_tgid reads no argument and no memory of the caller's.
    let v = unsafe { xcover_bpf::helpers::get_current_pid_tgid(0, 0, 0, 0, 0) };
    assert_eq!(v >> 32, std::process::id() as u64);
    assert_eq!(v as u32, xcover_rt::gettid());
}
