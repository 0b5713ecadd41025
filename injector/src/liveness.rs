//! Whether a target still runs the image xcover instrumented: exited, killed, replaced by
//! `execve`, or a zombie whose threads are tearing it down.

use std::sync::atomic::Ordering;

use crate::procfs;
use crate::session::SessionFile;

/// What [`target_gone`] says of a target that exited (or whose pid names another process).
pub const GONE_EXITED: &str = "exited";
/// What [`target_gone`] says of a target that replaced its program.
pub const GONE_EXEC: &str = "replaced its program (exec)";

/// Whether the target of `session` is gone, and how: `"exited"` (or its pid now names
/// another process), or `"replaced its program (exec)"` when it still runs but no longer
/// maps the session where the agent mapped it (an `execve` threw away the old image, the
/// agent and every hook with it). `None` while the instrumented image lives.
pub fn target_gone(pid: i32, session: &SessionFile) -> Option<&'static str> {
    let h = session.header();
    target_gone_at(
        pid,
        h.target_start_time,
        h.target_map_addr.load(Ordering::Acquire),
        session.path(),
    )
}

/// [`target_gone`] from the session's values (for a check that outlives the mapping):
/// the target's start time, where the target maps the session (0: not mapped yet) and
/// the session's path.
pub fn target_gone_at(
    pid: i32,
    start_time: u64,
    map_addr: u64,
    path: &str,
) -> Option<&'static str> {
    let zombie = match procfs::stat(pid) {
        Ok(st) if st.start_time == start_time => matches!(st.state, 'Z' | 'X'),
        _ => return Some(GONE_EXITED),
    };
    if zombie {
        // Every thread a zombie (or gone): the process has exited, whatever its mappings
        // still say while the last thread tears them down.
        let all_dead = procfs::tasks(pid).is_ok_and(|tids| {
            tids.iter().all(|&t| {
                procfs::task_stat(pid, t).map_or(true, |st| matches!(st.state, 'Z' | 'X'))
            })
        });
        if all_dead {
            return Some(GONE_EXITED);
        }
    }
    if map_addr == 0 && !zombie {
        return None;
    }
    let maps = match procfs::mappings(pid) {
        Ok(m) if !m.is_empty() => m,
        // A process that has exited has no mappings left (a leader that is a zombie while
        // other threads run still has them).
        Ok(_) => return Some(GONE_EXITED),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some(GONE_EXITED),
        // Unreadable (e.g. permissions changed): assume it still runs.
        Err(_) => return None,
    };
    if map_addr == 0 {
        return None;
    }
    if maps
        .iter()
        .any(|m| m.start == map_addr && m.path.contains(path))
    {
        None
    } else {
        Some(GONE_EXEC)
    }
}
