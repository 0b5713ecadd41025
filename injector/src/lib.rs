//! The injector: everything xcover does to a running process from the outside.
//!
//! It stops every thread of a target with ptrace ([`StoppedProcess`]), reads and writes its
//! memory, makes remote system calls and remote function calls in a stopped thread, and
//! loads the agent (the `payload/agent` shared object) into the target with its own ELF
//! loader ([`elf`]).
//!
//! # Why our own loader, and not the target's `dlopen`
//!
//! The agent is never loaded with the target's `dlopen`. A remote `dlopen` runs the dynamic
//! loader inside a hijacked thread: it takes the loader lock and calls `malloc`. If another
//! thread of the target was stopped while holding either lock (a thread inside `malloc`, or
//! inside its own `dlopen`, is a common sight in a busy process), the hijacked thread waits
//! for a lock whose holder we keep stopped: attach deadlocks. (Frida avoids this by creating
//! a fresh thread in the target and letting it run the loader while the others run; we want
//! the others stopped.)
//!
//! So the agent is a self-contained `no_std` shared object that imports nothing, has no TLS
//! and no initialisers, and needs only `R_X86_64_RELATIVE` relocations. xcover loads it by
//! itself: one remote anonymous `mmap` reserves its span, the relocated segments are written
//! through `/proc/<pid>/mem`, each segment is `mprotect`ed to its flags (never writable and
//! executable at once), and the entry points are found in `.dynsym`. Running it in a
//! stopped thread takes no lock of the target's, so it cannot deadlock on one. The bytes go
//! straight from xcover's own binary into the target's memory: no file path is involved that
//! another user could write. Unloading is one remote `munmap`.
//!
//! # Modules
//! - [`sys`]: every ptrace request, wait and memory access (the only place they happen);
//! - [`procfs`]: read-only checks of a pid before it is touched;
//! - [`stop`]: the stop-the-world guard and its signal bookkeeping;
//! - `remote`: remote system calls and calls (methods of [`StoppedProcess`]);
//! - [`elf`]: the agent image;
//! - [`session`]: the `/dev/shm/xcover-<pid>` file;
//! - this file: attach and detach built from those.
#![deny(missing_docs)]

pub mod elf;
mod error;
pub mod procfs;
mod remote;
mod sections;
pub mod session;
pub mod stop;
pub mod sys;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub use error::{Error, Result};
pub use remote::nr;
pub use session::SessionFile;
pub use stop::StoppedProcess;
use xcover_abi::SessionState;

use elf::{AgentImage, PAGE};

/// Name of the agent's initialisation entry point.
pub const AGENT_INIT: &str = "xcover_agent_init";
/// Name of the agent's shutdown entry point.
pub const AGENT_FINI: &str = "xcover_agent_fini";

/// Size of the private stack remote calls run on.
const STACK_SIZE: u64 = 64 * 1024;

/// Scratch memory in the target for one stop: a code page holding the `int3` remote calls
/// return to, then a private stack (whose lowest bytes also hold small data, such as the
/// session path).
struct Scratch {
    addr: u64,
    size: u64,
}

impl Scratch {
    fn map(sp: &mut StoppedProcess, tid: i32) -> Result<Scratch> {
        let size = PAGE + STACK_SIZE;
        let addr = sp.syscall(
            tid,
            nr::MMAP,
            [
                0,
                size,
                (libc::PROT_READ | libc::PROT_WRITE) as u64,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                u64::MAX,
                0,
            ],
        )?;
        let s = Scratch { addr, size };
        let r = (|| {
            sp.write(addr, &[0xcc])?;
            sp.syscall(
                tid,
                nr::MPROTECT,
                [
                    addr,
                    PAGE,
                    (libc::PROT_READ | libc::PROT_EXEC) as u64,
                    0,
                    0,
                    0,
                ],
            )
        })();
        if let Err(e) = r {
            let _ = s.unmap(sp, tid);
            return Err(e);
        }
        Ok(s)
    }
    fn trap(&self) -> u64 {
        self.addr
    }
    fn data(&self) -> u64 {
        self.addr + PAGE
    }
    fn stack_top(&self) -> u64 {
        self.addr + self.size
    }
    fn unmap(&self, sp: &mut StoppedProcess, tid: i32) -> Result<()> {
        sp.syscall(tid, nr::MUNMAP, [self.addr, self.size, 0, 0, 0, 0])
            .map(drop)
    }
}

/// Options of [`attach`].
#[derive(Debug, Clone)]
pub struct AttachOptions {
    /// The session outlives this process (`--keep`): `FLAG_KEEP` is set.
    pub keep: bool,
    /// Size of the session file.
    pub session_size: u64,
}

impl Default for AttachOptions {
    fn default() -> Self {
        AttachOptions {
            keep: false,
            session_size: session::DEFAULT_SESSION_SIZE,
        }
    }
}

/// Timings of one attach or detach.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    /// How long the target's threads were stopped.
    pub stopped: Duration,
    /// How long the whole operation took.
    pub total: Duration,
    /// Threads stopped.
    pub threads: usize,
}

/// A target with the agent loaded and running.
pub struct Attached {
    pid: i32,
    session: SessionFile,
    /// Timings of the attach.
    pub stats: Stats,
}

/// Checks `pid`, creates its session, stops it, loads the agent and runs its init, and
/// lets the target go. On error nothing is left behind.
pub fn attach(pid: i32, agent: &[u8], opts: &AttachOptions) -> Result<Attached> {
    let t0 = Instant::now();
    let image = AgentImage::parse(agent)?;
    let info = procfs::check_target(pid)?;
    let session = SessionFile::create(&info, opts.session_size, opts.keep)?;
    let r = (|| {
        let mut sp = StoppedProcess::stop(pid)?;
        let threads = sp.tids().len();
        load_and_init(&mut sp, &image, &session)?;
        let stopped_since = sp.started;
        sp.resume()?;
        Ok((stopped_since.elapsed(), threads))
    })();
    match r {
        Ok((stopped, threads)) => Ok(Attached {
            pid,
            session,
            stats: Stats {
                stopped,
                total: t0.elapsed(),
                threads,
            },
        }),
        Err(e) => {
            let _ = session.remove();
            Err(e)
        }
    }
}

fn load_and_init(sp: &mut StoppedProcess, image: &AgentImage, session: &SessionFile) -> Result<()> {
    let pid = sp.pid();
    let tid = sp.worker_tid().ok_or(Error::NoSuchProcess { pid })?;
    let init = image.export(AGENT_INIT)?;
    image.export(AGENT_FINI)?;
    let scratch = Scratch::map(sp, tid)?;
    let h = session.header();
    let mut agent_base = 0;
    let mut map_addr = 0;
    let r = (|| {
        // The agent: reserve, write relocated, protect.
        agent_base = sp.syscall(
            tid,
            nr::MMAP,
            [
                0,
                image.span,
                (libc::PROT_READ | libc::PROT_WRITE) as u64,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                u64::MAX,
                0,
            ],
        )?;
        sp.write(agent_base, &image.build(agent_base))?;
        for (off, len, prot) in image.protections() {
            sp.syscall(
                tid,
                nr::MPROTECT,
                [agent_base + off, len, prot as u64, 0, 0, 0],
            )?;
        }
        h.agent_base.store(agent_base, Ordering::Release);
        h.agent_size.store(image.span, Ordering::Release);
        // The session: open, map shared, close, in the target.
        let mut path = session.path().as_bytes().to_vec();
        path.push(0);
        sp.write(scratch.data(), &path)?;
        let fd = sp.syscall(
            tid,
            nr::OPENAT,
            [
                libc::AT_FDCWD as i64 as u64,
                scratch.data(),
                (libc::O_RDWR | libc::O_CLOEXEC | libc::O_NOFOLLOW) as u64,
                0,
                0,
                0,
            ],
        )?;
        let size = h.total_size;
        let m = sp.syscall(
            tid,
            nr::MMAP,
            [
                0,
                size,
                (libc::PROT_READ | libc::PROT_WRITE) as u64,
                libc::MAP_SHARED as u64,
                fd,
                0,
            ],
        );
        sp.syscall(tid, nr::CLOSE, [fd, 0, 0, 0, 0, 0])?;
        map_addr = m?;
        h.target_map_addr.store(map_addr, Ordering::Release);
        let rc = sp.call(
            tid,
            agent_base + init,
            [map_addr, size, 0, 0, 0, 0],
            scratch.stack_top(),
            scratch.trap(),
        )? as i64;
        if rc < 0 {
            return Err(Error::Agent {
                pid,
                entry: AGENT_INIT,
                code: rc,
            });
        }
        Ok(())
    })();
    if r.is_err() {
        if map_addr != 0 {
            let _ = sp.syscall(tid, nr::MUNMAP, [map_addr, h.total_size, 0, 0, 0, 0]);
            h.target_map_addr.store(0, Ordering::Release);
        }
        if agent_base != 0 {
            let _ = sp.syscall(tid, nr::MUNMAP, [agent_base, image.span, 0, 0, 0, 0]);
            h.agent_base.store(0, Ordering::Release);
        }
        h.state
            .store(SessionState::Failed as u32, Ordering::Release);
    }
    let u = scratch.unmap(sp, tid);
    r.and(u)
}

/// Stops the target, runs the agent's fini, unmaps the agent and the session, lets it go.
fn unload(pid: i32, image: &AgentImage, session: &SessionFile) -> Result<Stats> {
    let t0 = Instant::now();
    let h = session.header();
    h.state
        .store(SessionState::Detaching as u32, Ordering::Release);
    let mut sp = StoppedProcess::stop(pid)?;
    let threads = sp.tids().len();
    let tid = sp.worker_tid().ok_or(Error::NoSuchProcess { pid })?;
    let scratch = Scratch::map(&mut sp, tid)?;
    let base = h.agent_base.load(Ordering::Acquire);
    let size = h.agent_size.load(Ordering::Acquire);
    let map_addr = h.target_map_addr.load(Ordering::Acquire);
    let r = (|| {
        if base != 0 {
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
            let fini = image.export(AGENT_FINI)?;
            let rc = sp.call(
                tid,
                base + fini,
                [0; 6],
                scratch.stack_top(),
                scratch.trap(),
            )? as i64;
            if rc < 0 {
                return Err(Error::Agent {
                    pid,
                    entry: AGENT_FINI,
                    code: rc,
                });
            }
        }
        Ok(())
    })();
    // Unmap even if fini failed: the agent must not stay behind half-dead.
    let mut unmap = Ok(());
    if r.as_ref().is_ok() || !matches!(r, Err(Error::BadSession { .. })) {
        if map_addr != 0 {
            unmap = unmap.and(
                sp.syscall(tid, nr::MUNMAP, [map_addr, h.total_size, 0, 0, 0, 0])
                    .map(drop),
            );
            h.target_map_addr.store(0, Ordering::Release);
        }
        if base != 0 {
            unmap = unmap.and(
                sp.syscall(tid, nr::MUNMAP, [base, size, 0, 0, 0, 0])
                    .map(drop),
            );
            h.agent_base.store(0, Ordering::Release);
        }
    }
    let u = scratch.unmap(&mut sp, tid);
    let started = sp.started;
    let resumed = sp.resume();
    let stopped = started.elapsed();
    r?;
    unmap?;
    u?;
    resumed?;
    h.state
        .store(SessionState::Detached as u32, Ordering::Release);
    Ok(Stats {
        stopped,
        total: t0.elapsed(),
        threads,
    })
}

impl Attached {
    /// The target's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The session, as xcover sees it.
    pub fn session(&self) -> &SessionFile {
        &self.session
    }

    /// Unloads the agent and removes the session.
    pub fn detach(self, agent: &[u8]) -> Result<Stats> {
        let image = AgentImage::parse(agent)?;
        let stats = unload(self.pid, &image, &self.session)?;
        self.session.remove()?;
        Ok(stats)
    }

    /// Leaves the agent in the target for a later [`detach`]: the session has no owner
    /// from now on.
    pub fn leave(self) {
        self.session.header().owner_pid.store(0, Ordering::Release);
    }
}

/// Detaches a session left by `attach --keep` (or by an xcover that died): unloads the
/// agent and removes the session file.
pub fn detach(pid: i32, agent: &[u8]) -> Result<Stats> {
    let image = AgentImage::parse(agent)?;
    let session = SessionFile::open(pid)?;
    let h = session.header();
    let owner = h.owner_pid.load(Ordering::Acquire);
    if owner != 0 && owner != std::process::id() && procfs::stat(owner as i32).is_ok() {
        return Err(Error::AlreadyAttached {
            pid,
            detail: format!("xcover pid {owner} owns the session; stop it instead"),
        });
    }
    match procfs::stat(pid) {
        Ok(st) if st.start_time == h.target_start_time => {}
        _ => {
            // The target is gone: nothing to unload, only the file to remove.
            session.remove()?;
            return Err(Error::NoSuchProcess { pid });
        }
    }
    procfs::check_target(pid)?;
    h.owner_pid.store(std::process::id(), Ordering::Release);
    let stats = unload(pid, &image, &session)?;
    session.remove()?;
    Ok(stats)
}
