//! Processes that carry a session they were not attached to: children forked from a target
//! while its hooks were in. A child inherits the whole instrumented image — the entry
//! patches, the agent, its regions and the `MAP_SHARED` session mapping (its hits count
//! into the same session) — at the same addresses. Whichever way a session ends, no such
//! process may keep any of it: [`carriers`] finds them by the session file's inode in their
//! mappings, and [`clean_forks`] takes everything out of each.
//!
//! A carrier is cleaned like a target is detached, with two differences, because the
//! session's header and tables are shared with the target (and every other carrier):
//! the agent's `UNHOOK` restores the carrier's own (private, copied-on-fork) code, and the
//! shared counters it resets are put back; and the agent's `FINI` is not run — it would
//! forget the regions in the shared table — xcover unmaps the regions itself, from a list
//! read before anything was taken out (`Carried`). Scratch memory in a carrier is not
//! recorded in the session (its record names the target's).

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use xcover_session::FuncEntry;

use crate::agent::{call_with_threads, check_identity};
use crate::doomed::{Doomed, doomed_ranges, thread_inside};
use crate::elf::AgentImage;
use crate::remote::nr;
use crate::scratch::{LEAVE_PAUSE, Scratch};
use crate::session::SessionFile;
use crate::stop::StoppedProcess;
use crate::{AGENT_UNHOOK, Error, Result, procfs};

/// How many times a carrier with a thread inside the agent's memory is let run and stopped
/// again.
const LEAVE_TRIES: u32 = 200;

/// How many rounds of scanning `/proc` [`clean_forks`] makes at most (each round cleans every
/// carrier it found; a carrier that forks while it is cleaned adds one round).
const SWEEPS: usize = 64;

/// What a carrier holds of the session, read from the session before the target's own
/// detach forgets it: the agent, its regions, and where the session is mapped.
#[derive(Clone, Debug)]
pub(crate) struct Carried {
    base: u64,
    size: u64,
    map_addr: u64,
    regions: Vec<Doomed>,
}

impl Carried {
    /// Reads it from `session`.
    pub(crate) fn read(session: &SessionFile) -> Result<Carried> {
        let h = session.header();
        let base = h.agent_base.load(Ordering::Acquire);
        let size = h.agent_size.load(Ordering::Acquire);
        Ok(Carried {
            base,
            size,
            map_addr: h.target_map_addr.load(Ordering::Acquire),
            regions: doomed_ranges(session, base, size)?,
        })
    }
}

/// The pids other than `target` that map the session file (found by its inode and path in
/// `/proc/<pid>/maps`) where the target maps it — what a fork copies; an xcover reading the
/// session maps it elsewhere —, ascending. Neither this process nor the session's owner is
/// one; processes whose mappings cannot be read are left out.
pub fn carriers(target: i32, session: &SessionFile) -> Vec<i32> {
    let map_addr = session.header().target_map_addr.load(Ordering::Acquire);
    carriers_at(target, session, map_addr)
}

fn carriers_at(target: i32, session: &SessionFile, map_addr: u64) -> Vec<i32> {
    let inode = session.inode();
    if inode == 0 || map_addr == 0 {
        return Vec::new();
    }
    let me = std::process::id() as i32;
    let owner = session.header().owner_pid.load(Ordering::Acquire) as i32;
    procfs::pids()
        .into_iter()
        .filter(|&p| p != target && p != me && p != owner)
        .filter(|&p| {
            procfs::mappings(p).is_ok_and(|maps| {
                maps.iter().any(|m| {
                    m.start == map_addr && m.inode == inode && m.path.starts_with(session.path())
                })
            })
        })
        .collect()
}

/// Cleans every process other than `target` that carries `session` (see the module doc):
/// scans `/proc` and cleans what it finds until a scan finds nothing new. Returns the number
/// of processes cleaned; a carrier that cannot be cleaned (and is not gone) is an error,
/// returned once every other one was tried.
pub fn clean_forks(target: i32, agent: &[u8], session: &SessionFile) -> Result<usize> {
    let image = AgentImage::parse(agent)?;
    let carried = Carried::read(session)?;
    let mut done = BTreeSet::new();
    clean_all(target, &image, session, &carried, &mut done)
}

/// [`clean_forks`] with what the carriers hold read beforehand, skipping (and adding to)
/// `done`.
pub(crate) fn clean_all(
    target: i32,
    image: &AgentImage,
    session: &SessionFile,
    carried: &Carried,
    done: &mut BTreeSet<i32>,
) -> Result<usize> {
    let mut cleaned = 0;
    let mut first_err = None;
    for _ in 0..SWEEPS {
        let found: Vec<i32> = carriers_at(target, session, carried.map_addr)
            .into_iter()
            .filter(|p| !done.contains(p))
            .collect();
        if found.is_empty() {
            break;
        }
        for pid in found {
            done.insert(pid);
            match clean_one(pid, image, session, carried) {
                Ok(true) => cleaned += 1,
                Ok(false) => {}
                // Gone (or exiting) meanwhile: nothing is left in it.
                Err(_) if !procfs::stat(pid).is_ok_and(|st| !matches!(st.state, 'Z' | 'X')) => {}
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
    }
    first_err.map_or(Ok(cleaned), Err)
}

/// Cleans one carrier: stops it, restores its code (`UNHOOK`), waits until no thread is
/// inside the agent's memory, unmaps the regions, the session and the agent, lets it go.
/// `false` when it turned out to carry nothing (it exec'd, or exited, before it was stopped).
fn clean_one(pid: i32, image: &AgentImage, session: &SessionFile, c: &Carried) -> Result<bool> {
    let mut sp = StoppedProcess::stop(pid)?;
    let inode = session.inode();
    let maps: Vec<(u64, u64)> = procfs::mappings(pid)
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.inode == inode && m.path.starts_with(session.path()))
        .map(|m| (m.start, m.end))
        .collect();
    if maps.is_empty() {
        sp.resume()?;
        return Ok(false);
    }
    // A fork has the session where the target had it, and the agent too; a process that
    // does not is not one (never touched).
    let whole = maps.iter().any(|&(s, _)| s == c.map_addr);
    let agent = c.base != 0 && check_identity(&sp, image, session, c.base).is_ok();
    if !whole || (c.base != 0 && !agent) {
        sp.resume()?;
        return Ok(false);
    }
    let tid = sp.worker_tid().ok_or(Error::NoSuchProcess { pid })?;
    let mut tries = 0;
    loop {
        let scratch = Scratch::map_unrecorded(&mut sp, tid)?;
        let r = (|| {
            if agent && tries == 0 {
                unhook(&mut sp, tid, &scratch, image, session, c.base)?;
            }
            match agent {
                true => thread_inside(&sp, &c.regions),
                false => Ok(None),
            }
        })();
        let inside = match r {
            Ok(inside) => inside,
            Err(e) => {
                let _ = scratch.unmap_unrecorded(&mut sp, tid);
                let _ = sp.resume();
                return Err(e);
            }
        };
        let Some((t, rip, what)) = inside else {
            let mut r = Ok(());
            if agent {
                for &(start, end, _) in c.regions.iter().filter(|r| r.0 != c.base) {
                    r = r.and(unmap(&mut sp, tid, start, end));
                }
            }
            for &(start, end) in &maps {
                r = r.and(unmap(&mut sp, tid, start, end));
            }
            for fd in procfs::fds_on_inode(pid, inode).unwrap_or_default() {
                r = r.and(
                    sp.syscall(tid, nr::CLOSE, [fd as u64, 0, 0, 0, 0, 0])
                        .map(drop),
                );
            }
            if agent {
                r = r.and(unmap(&mut sp, tid, c.base, c.base + c.size));
            }
            let u = scratch.unmap_unrecorded(&mut sp, tid);
            let resumed = sp.resume();
            r.and(u).and(resumed)?;
            return Ok(true);
        };
        scratch.unmap_unrecorded(&mut sp, tid)?;
        sp.resume()?;
        tries += 1;
        if tries >= LEAVE_TRIES {
            return Err(Error::Unexpected {
                pid,
                tid: t,
                what: format!(
                    "(forked from the session's target) stays inside {what}, or returns there \
                     ({rip:#x}), after {LEAVE_TRIES} tries; its functions are unhooked but the \
                     agent is left loaded in it"
                ),
            });
        }
        std::thread::sleep(LEAVE_PAUSE);
        sp = StoppedProcess::stop(pid)?;
    }
}

/// Runs `UNHOOK` in a carrier: its own copy of the agent restores its own code. What it
/// resets in the shared tables is the target's (the count of hooked functions, each hooked
/// function's status): put back.
fn unhook(
    sp: &mut StoppedProcess,
    tid: i32,
    scratch: &Scratch,
    image: &AgentImage,
    session: &SessionFile,
    base: u64,
) -> Result<()> {
    let h = session.header();
    let hooked = h.funcs_hooked.load(Ordering::Acquire);
    let funcs = session.funcs()?;
    let entry = image.export(AGENT_UNHOOK)?;
    let r = call_with_threads(sp, tid, scratch, base + entry, AGENT_UNHOOK, session);
    h.funcs_hooked.store(hooked, Ordering::Release);
    let status = std::mem::offset_of!(FuncEntry, status) as u64;
    let size = std::mem::size_of::<FuncEntry>() as u64;
    // `Hooked` and `Unhooking` ones (UNHOOK made both `Pending`, keeping `skip_reason`).
    for (i, f) in funcs.iter().enumerate() {
        if f.is_hooked() {
            let code = f.status.to_le_bytes();
            session.write_at(h.funcs_off + i as u64 * size + status, &code)?;
        }
    }
    r.map(drop)
}

fn unmap(sp: &mut StoppedProcess, tid: i32, start: u64, end: u64) -> Result<()> {
    sp.syscall(tid, nr::MUNMAP, [start, end - start, 0, 0, 0, 0])
        .map(drop)
}
