//! Running the agent's entry points in a stopped target: `HOOK`/`UNHOOK` with the thread
//! table (and the moves they ask for), `COMMIT`, their errors, and the identity check of a
//! loaded agent.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::elf::AgentImage;
use crate::faults::fault_point;
use crate::scratch::Scratch;
use crate::session::SessionFile;
use crate::stop::StoppedProcess;
use crate::tracer::Tracer;
use crate::{AGENT_COMMIT, AGENT_HOOK, AGENT_UNHOOK, Error, Result};

/// Hooks the session's `Pending` functions: runs the agent's `HOOK` (plans, writes the
/// trampolines, names the threads to move), moves those threads, then runs `COMMIT`, which
/// writes the entry patches. Moving first means a thread never sits on changed bytes, even
/// if xcover dies between the two. `entries` are the offsets of `HOOK` and `COMMIT` from
/// `base`. Returns the number of functions hooked and the time spent in the agent.
pub(crate) fn hook_with_threads<T: Tracer>(
    sp: &mut StoppedProcess<T>,
    tid: i32,
    scratch: &Scratch,
    base: u64,
    entries: [u64; 2],
    session: &SessionFile,
) -> Result<(i64, Duration)> {
    let (_, planning) =
        call_with_threads(sp, tid, scratch, base + entries[0], AGENT_HOOK, session)?;
    fault_point("planned");
    let t = Instant::now();
    let rc = sp.call(
        tid,
        base + entries[1],
        [0; 6],
        scratch.stack_top(),
        scratch.trap(),
    )? as i64;
    let took = planning + t.elapsed();
    if rc < 0 {
        return Err(agent_failed(sp.pid(), AGENT_COMMIT, rc, session));
    }
    fault_point("committed");
    Ok((rc, took))
}

/// Runs the agent's `HOOK` or `UNHOOK` entry point at `func` in thread `tid`: writes every
/// stopped thread's instruction pointer into the scratch data area, calls it, reads back
/// where each thread must move and moves those threads (at once: see
/// [`StoppedProcess::set_ip`]). Returns the entry point's result and how long the call took.
pub(crate) fn call_with_threads<T: Tracer>(
    sp: &mut StoppedProcess<T>,
    tid: i32,
    scratch: &Scratch,
    func: u64,
    entry: &'static str,
    session: &SessionFile,
) -> Result<(i64, Duration)> {
    let pid = sp.pid();
    let tids = sp.tids();
    let mut ips = Vec::with_capacity(tids.len());
    // For UNHOOK, threads held with the SIGTRAP of an `int3` (maybe one of the agent's trap
    // hooks) are marked: the agent sends those back to the restored entry, and their signal
    // is dropped below.
    let trapped: Vec<bool> = tids
        .iter()
        .map(|t| entry == AGENT_UNHOOK && sp.held_int3_trap(*t))
        .collect();
    for (&t, &trap) in tids.iter().zip(&trapped) {
        let rip = sp.regs(t)?.rip;
        ips.push(match trap {
            true => rip | xcover_session::entry::IP_TRAP_STOPPED,
            false => rip,
        });
    }
    let n = ips.len() as u64;
    if 16 * n > scratch.data_size {
        return Err(Error::Unexpected {
            pid,
            tid,
            what: format!("{n} threads do not fit the scratch area"),
        });
    }
    let ips_addr = scratch.data();
    let moves_addr = ips_addr + 8 * n;
    let bytes: Vec<u8> = ips.iter().flat_map(|ip| ip.to_le_bytes()).collect();
    sp.write(ips_addr, &bytes)?;
    let t = Instant::now();
    let rc = sp.call(
        tid,
        func,
        [ips_addr, moves_addr, n, 0, 0, 0],
        scratch.stack_top(),
        scratch.trap(),
    )? as i64;
    let took = t.elapsed();
    if rc < 0 {
        return Err(agent_failed(pid, entry, rc, session));
    }
    let mut moves = vec![0u8; 8 * n as usize];
    sp.read(moves_addr, &mut moves)?;
    let moved = tids
        .iter()
        .zip(moves.chunks_exact(8))
        .zip(&trapped)
        .zip(&ips);
    for (((&t, mv), &trap), &ip) in moved {
        let to = u64::from_le_bytes(mv.try_into().expect("8 bytes"));
        if to != 0 {
            sp.set_ip(t, to)?;
            let rip = ip & !xcover_session::entry::IP_TRAP_STOPPED;
            if trap && to == rip.wrapping_sub(1) {
                // The trap was the agent's: the thread re-runs the restored entry instead.
                sp.drop_held_signal(t);
            }
        }
    }
    Ok((rc, took))
}

/// The error for an entry point that returned `code < 0`, with the agent's own message.
pub(crate) fn agent_failed(
    pid: i32,
    entry: &'static str,
    code: i64,
    session: &SessionFile,
) -> Error {
    let h = session.header();
    let len = (h.agent_error_len.load(Ordering::Acquire) as usize).min(h.agent_error.len());
    let mut buf = vec![0u8; len];
    let off = std::mem::offset_of!(xcover_session::SessionHeader, agent_error) as u64;
    let mut message = match session.read_at(off, &mut buf) {
        Ok(()) => String::from_utf8_lossy(&buf).into_owned(),
        Err(_) => String::new(),
    };
    if message.is_empty() {
        message = match code {
            -1 => "null session".into(),
            -2 => "session smaller than its header".into(),
            -3 => "bad session magic".into(),
            -4 => "session layout version unknown to the agent".into(),
            -5 => "no session (init did not run)".into(),
            _ => "no message".into(),
        };
    }
    Error::Agent {
        pid,
        entry,
        code,
        message,
    }
}

/// Checks that the agent loaded at `base` is this xcover's.
pub(crate) fn check_identity<T: Tracer>(
    sp: &StoppedProcess<T>,
    image: &AgentImage,
    session: &SessionFile,
    base: u64,
) -> Result<()> {
    let pid = sp.pid();
    let id = image.identity();
    let mut loaded = vec![0u8; id.len()];
    sp.read(base, &mut loaded)?;
    if loaded != id {
        return Err(Error::BadSession {
            path: session.path().to_string(),
            reason: format!(
                "the agent at {base:#x} in pid {pid} is not this xcover's agent; \
                 detach with the xcover that attached"
            ),
        });
    }
    Ok(())
}
