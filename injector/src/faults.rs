//! The fault-injection points of the recovery tests.
//!
//! `XCOVER_FAULT=<point>` makes xcover SIGKILL itself at that point of an attach or detach,
//! as a `kill -9` landing at that moment would; the tests then check that the target lives
//! on and that the next xcover recovers everything.

/// Fault injection for the recovery tests: when the environment variable `XCOVER_FAULT`
/// names this point, xcover SIGKILLs itself right here, as a `kill -9` landing at that
/// moment would. The points, in order: attach `opened` (agent loaded, session file open in
/// the target, not mapped), `loaded` (agent and session mapped, init not run), `inited`, `planned` (HOOK done, threads moved, COMMIT not run), `committed`
/// (patches in, target not resumed); detach `unhooked` (FINI not run) and `finished`
/// (FINI done, agent still mapped).
pub(crate) fn fault_point(name: &str) {
    static WANT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if WANT
        .get_or_init(|| std::env::var("XCOVER_FAULT").ok())
        .as_deref()
        == Some(name)
    {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}
