//! Process events from the kernel's proc connector: fork, exec and exit of every process of
//! the machine, as they happen.
//!
//! xcover is neither the parent of its target nor (while it watches) its tracer, so once the
//! target is gone `/proc` no longer says how it ended. The proc connector does: its exit
//! event carries the wait status of every exiting thread (`PROC_EVENT_EXIT`), whoever reaps
//! it. It is a netlink socket (`NETLINK_CONNECTOR`) joined to the group `CN_IDX_PROC`.
//!
//! Joining needs `CAP_NET_ADMIN`, and the kernel only sends to listeners in its initial user
//! and pid namespaces: elsewhere [`ProcEvents::subscribe`] fails with a reason, and the caller
//! falls back to what `/proc` still shows. Kernels from 6.6 filter by event kind for each
//! listener; older ones send every kind, and [`ProcEvents::wait`] drops the kinds not asked
//! for.
//!
//! Events are sent to every listener of the machine; a listener that does not read fast
//! enough loses some (the kernel drops them when the socket's buffer is full):
//! [`Batch::lost`] says so. The socket gets a large buffer for that reason.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// A process (any thread of it) was created: [`ProcEvent::Fork`].
pub const FORK: u32 = libc::PROC_EVENT_FORK;
/// A process replaced its program: [`ProcEvent::Exec`].
pub const EXEC: u32 = libc::PROC_EVENT_EXEC;
/// A thread exited: [`ProcEvent::Exit`].
pub const EXIT: u32 = libc::PROC_EVENT_EXIT;

/// One event. Pids are as the initial pid namespace sees them; `pid` is the thread, `tgid`
/// the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcEvent {
    /// `parent` created `child` (a process, or a thread when `child_pid != child_tgid`).
    Fork {
        /// The creating thread.
        parent_pid: i32,
        /// Its process.
        parent_tgid: i32,
        /// The new thread.
        child_pid: i32,
        /// Its process.
        child_tgid: i32,
    },
    /// A process replaced its program with `execve`.
    Exec {
        /// The thread that called `execve` (the process's only thread afterwards).
        pid: i32,
        /// The process.
        tgid: i32,
    },
    /// A thread exited. The process is gone once its last thread has.
    Exit {
        /// The thread.
        pid: i32,
        /// Its process.
        tgid: i32,
        /// Its wait status (as `waitpid` reports it): `status & 0x7f` is the signal that
        /// killed it (0: none), `0x80` set when it dumped core, `(status >> 8) & 0xff` the
        /// exit code otherwise.
        status: i32,
        /// The signal its parent is sent (SIGCHLD for a process, -1 for a thread).
        exit_signal: i32,
    },
}

/// What [`ProcEvents::wait`] returns: the events received, in order.
#[derive(Debug, Default)]
pub struct Batch {
    /// The events of the kinds subscribed to.
    pub events: Vec<ProcEvent>,
    /// Events were dropped by the kernel since the last call (the socket's buffer was full).
    pub lost: bool,
}

/// Why the proc connector is not available or failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcEventsError {
    /// No netlink connector socket (a kernel without `CONFIG_CONNECTOR`).
    #[error("no netlink connector socket: {0}")]
    Socket(#[source] io::Error),
    /// Joining the process-event group was refused (no `CAP_NET_ADMIN`).
    #[error("joining the kernel's process events was refused (needs CAP_NET_ADMIN): {0}")]
    Join(#[source] io::Error),
    /// The subscription was sent but the kernel did not confirm it.
    #[error("the kernel did not confirm the subscription to process events ({0})")]
    NotConfirmed(String),
    /// A system call on the socket failed.
    #[error("process events: {what}: {source}")]
    Io {
        /// Which call.
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// `struct nlmsghdr`.
const NLMSG_HDR: usize = 16;
/// `struct cn_msg` without its data.
const CN_MSG_HDR: usize = 20;
/// `struct proc_event` up to its union: what, cpu, timestamp_ns.
const PROC_EVENT_HDR: usize = 16;
/// `NLMSG_DONE`, the type the connector's messages carry.
const NLMSG_DONE: u16 = 3;
/// Buffer asked for the socket: events of a whole busy machine arrive here.
const RCVBUF: i32 = 8 << 20;
/// How long [`ProcEvents::subscribe`] waits for the kernel's acknowledgement.
const ACK_WAIT: Duration = Duration::from_millis(500);

/// A subscription to the kernel's process events.
pub struct ProcEvents {
    sock: OwnedFd,
    /// An eventfd that interrupts [`ProcEvents::wait`] ([`Waker`]).
    wake: OwnedFd,
    /// The kinds asked for (a mask of [`FORK`], [`EXEC`], [`EXIT`]).
    kinds: u32,
    seq: u32,
    /// Events received while waiting for the subscription's acknowledgement.
    pending: Batch,
}

/// Interrupts a [`ProcEvents::wait`] in another thread.
pub struct Waker(OwnedFd);

impl Waker {
    /// Makes the current or next [`ProcEvents::wait`] return at once.
    pub fn wake(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to an eventfd we own.
        let _ = unsafe { libc::write(self.0.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }
}

fn last_error(what: &'static str) -> ProcEventsError {
    ProcEventsError::Io {
        what,
        source: io::Error::last_os_error(),
    }
}

impl ProcEvents {
    /// Subscribes to the events of `kinds` (a mask of [`FORK`], [`EXEC`], [`EXIT`]) and
    /// waits for the kernel to confirm it: events from then on are received.
    pub fn subscribe(kinds: u32) -> Result<ProcEvents, ProcEventsError> {
        // SAFETY: socket(2) with constant arguments; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::NETLINK_CONNECTOR,
            )
        };
        if fd < 0 {
            return Err(ProcEventsError::Socket(io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a descriptor we just created and own.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: eventfd(2) with constant arguments; the result is checked.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(last_error("eventfd"));
        }
        // SAFETY: `efd` is a descriptor we just created and own.
        let wake = unsafe { OwnedFd::from_raw_fd(efd) };
        for (opt, what) in [
            (libc::SO_RCVBUFFORCE, "SO_RCVBUFFORCE"),
            (libc::SO_RCVBUF, "SO_RCVBUF"),
        ] {
            // SAFETY: setsockopt reads an int from a live local.
            let r = unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&RCVBUF as *const i32).cast(),
                    size_of::<i32>() as libc::socklen_t,
                )
            };
            // SO_RCVBUFFORCE needs CAP_NET_ADMIN too; a smaller buffer still works.
            if r == 0 || what == "SO_RCVBUF" {
                break;
            }
        }
        // SAFETY: sockaddr_nl is plain integers; all-zero is valid.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = libc::CN_IDX_PROC;
        // SAFETY: binds our socket to an initialised sockaddr_nl of the size given.
        let r = unsafe {
            libc::bind(
                sock.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(ProcEventsError::Join(io::Error::last_os_error()));
        }
        let mut ev = ProcEvents {
            sock,
            wake,
            kinds,
            seq: std::process::id().wrapping_mul(2654435761),
            pending: Batch::default(),
        };
        // Every kernel takes the plain form (all kinds)...
        let seq = ev.send_op(libc::PROC_CN_MCAST_LISTEN, None)?;
        ev.confirm(seq)?;
        // ...and from 6.6 this one narrows it to `kinds` (older kernels ignore it).
        ev.send_op(libc::PROC_CN_MCAST_LISTEN, Some(kinds))?;
        Ok(ev)
    }

    /// A handle that interrupts [`wait`](Self::wait) from another thread.
    pub fn waker(&self) -> Result<Waker, ProcEventsError> {
        let fd = self
            .wake
            .try_clone()
            .map_err(|source| ProcEventsError::Io {
                what: "dup",
                source,
            })?;
        Ok(Waker(fd))
    }

    /// Sends a multicast control message: `op` alone, or with an event-kind filter.
    fn send_op(&mut self, op: u32, filter: Option<u32>) -> Result<u32, ProcEventsError> {
        self.seq = self.seq.wrapping_add(1);
        let mut data = op.to_ne_bytes().to_vec();
        if let Some(kinds) = filter {
            // struct proc_input { mcast_op, event_type }.
            data.extend_from_slice(&kinds.to_ne_bytes());
        }
        let total = NLMSG_HDR + CN_MSG_HDR + data.len();
        let mut msg = Vec::with_capacity(total);
        // nlmsghdr: len, type, flags, seq, pid.
        msg.extend_from_slice(&(total as u32).to_ne_bytes());
        msg.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        msg.extend_from_slice(&0u16.to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&std::process::id().to_ne_bytes());
        // cn_msg: id (idx, val), seq, ack, len, flags.
        msg.extend_from_slice(&libc::CN_IDX_PROC.to_ne_bytes());
        msg.extend_from_slice(&libc::CN_VAL_PROC.to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        // The kernel answers with `ack + 1` (it numbers its own messages, so `seq` is lost):
        // a token of ours tells our acknowledgement from another listener's.
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&(data.len() as u16).to_ne_bytes());
        msg.extend_from_slice(&0u16.to_ne_bytes());
        msg.extend_from_slice(&data);
        // SAFETY: sends `msg.len()` bytes from a live buffer on our socket.
        let n = unsafe { libc::send(self.sock.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if n < 0 {
            return Err(last_error("send"));
        }
        Ok(self.seq)
    }

    /// Waits for the kernel's acknowledgement of the control message whose token is `seq`
    /// (it comes back as `ack == seq + 1`): the kernel handles the message while we send it,
    /// so the acknowledgement is normally queued already. No acknowledgement means
    /// no events either (a listener outside the initial namespaces is ignored silently).
    fn confirm(&mut self, seq: u32) -> Result<(), ProcEventsError> {
        let deadline = Instant::now() + ACK_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ProcEventsError::NotConfirmed(
                    "is xcover outside the initial user or pid namespace?".into(),
                ));
            }
            let mut acked = None;
            let (kinds, mut pending) = (self.kinds, std::mem::take(&mut self.pending));
            pending.lost |= self.receive(left, |cn_ack, what, data| {
                if what == libc::PROC_EVENT_NONE && cn_ack == seq.wrapping_add(1) {
                    acked = Some(read_u32(data, 0).unwrap_or(0));
                }
                pending.events.extend(parse_event(kinds, what, data));
            })?;
            self.pending = pending;
            match acked {
                Some(0) => return Ok(()),
                Some(err) => {
                    return Err(ProcEventsError::NotConfirmed(
                        io::Error::from_raw_os_error(err as i32).to_string(),
                    ));
                }
                None => {}
            }
        }
    }

    /// Waits up to `timeout` for events (less if a [`Waker`] fires), then returns every event
    /// queued: possibly none.
    pub fn wait(&mut self, timeout: Duration) -> Result<Batch, ProcEventsError> {
        let mut batch = std::mem::take(&mut self.pending);
        let kinds = self.kinds;
        let timeout = if batch.events.is_empty() {
            timeout
        } else {
            Duration::ZERO
        };
        batch.lost |= self.receive(timeout, |_, what, data| {
            batch.events.extend(parse_event(kinds, what, data));
        })?;
        Ok(batch)
    }

    /// Waits up to `timeout` for the socket (or the waker), then reads every queued message,
    /// calling `each(cn_ack, what, event data)` for each process event. Returns
    /// whether the kernel dropped messages meanwhile.
    fn receive(
        &self,
        timeout: Duration,
        mut each: impl FnMut(u32, u32, &[u8]),
    ) -> Result<bool, ProcEventsError> {
        let mut fds = [
            libc::pollfd {
                fd: self.sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: polls two initialised pollfd entries of a live array.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(ProcEventsError::Io {
                what: "poll",
                source: e,
            });
        }
        if fds[1].revents != 0 {
            let mut b = [0u8; 8];
            // SAFETY: reads at most 8 bytes into a live buffer from our eventfd.
            let _ = unsafe { libc::read(self.wake.as_raw_fd(), b.as_mut_ptr().cast(), b.len()) };
        }
        let mut lost = false;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            // SAFETY: receives at most `buf.len()` bytes into a live buffer.
            let n = unsafe {
                libc::recv(
                    self.sock.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => return Ok(lost),
                    Some(libc::ENOBUFS) => {
                        lost = true;
                        continue;
                    }
                    Some(libc::EINTR) => continue,
                    _ => {
                        return Err(ProcEventsError::Io {
                            what: "recv",
                            source: e,
                        });
                    }
                }
            }
            parse_datagram(&buf[..n as usize], &mut each);
        }
    }
}

impl Drop for ProcEvents {
    fn drop(&mut self) {
        // Kernels before 6.6 count listeners until told otherwise, and keep building events
        // while the count is not zero.
        let _ = self.send_op(libc::PROC_CN_MCAST_IGNORE, None);
    }
}

/// Decodes the data of a process event of kind `what`, if it is one of `kinds`.
fn parse_event(kinds: u32, what: u32, d: &[u8]) -> Option<ProcEvent> {
    if what & kinds == 0 {
        return None;
    }
    let f = |i: usize| read_u32(d, 4 * i).map(|v| v as i32);
    match what {
        libc::PROC_EVENT_FORK => Some(ProcEvent::Fork {
            parent_pid: f(0)?,
            parent_tgid: f(1)?,
            child_pid: f(2)?,
            child_tgid: f(3)?,
        }),
        libc::PROC_EVENT_EXEC => Some(ProcEvent::Exec {
            pid: f(0)?,
            tgid: f(1)?,
        }),
        libc::PROC_EVENT_EXIT => Some(ProcEvent::Exit {
            pid: f(0)?,
            tgid: f(1)?,
            status: f(2)?,
            exit_signal: f(3)?,
        }),
        _ => None,
    }
}

fn read_u32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

/// Splits one datagram into its netlink messages and calls `each(cn_ack, what, event data)`
/// for each process event in it; anything malformed or foreign is skipped.
fn parse_datagram(mut b: &[u8], each: &mut impl FnMut(u32, u32, &[u8])) {
    while b.len() >= NLMSG_HDR {
        let Some(len) = read_u32(b, 0).map(|l| l as usize) else {
            return;
        };
        if len < NLMSG_HDR || len > b.len() {
            return;
        }
        let msg = &b[NLMSG_HDR..len];
        if let (Some(idx), Some(val), Some(ack)) =
            (read_u32(msg, 0), read_u32(msg, 4), read_u32(msg, 12))
            && idx == libc::CN_IDX_PROC
            && val == libc::CN_VAL_PROC
            && let Some(ev) = msg.get(CN_MSG_HDR..)
            && let Some(what) = read_u32(ev, 0)
            && let Some(data) = ev.get(PROC_EVENT_HDR..)
        {
            each(ack, what, data);
        }
        // Messages are aligned to 4 bytes.
        let next = len.div_ceil(4) * 4;
        b = b.get(next..).unwrap_or(&[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One datagram as the kernel builds it for an exit event.
    fn exit_datagram(pid: i32, tgid: i32, status: i32) -> Vec<u8> {
        let mut ev = Vec::new();
        ev.extend_from_slice(&libc::PROC_EVENT_EXIT.to_ne_bytes());
        ev.extend_from_slice(&1u32.to_ne_bytes()); // cpu
        ev.extend_from_slice(&123u64.to_ne_bytes()); // timestamp
        for v in [pid, tgid, status, 17, 1, 1] {
            ev.extend_from_slice(&v.to_ne_bytes());
        }
        let mut cn = Vec::new();
        for v in [libc::CN_IDX_PROC, libc::CN_VAL_PROC, 9, 0] {
            cn.extend_from_slice(&v.to_ne_bytes());
        }
        cn.extend_from_slice(&(ev.len() as u16).to_ne_bytes());
        cn.extend_from_slice(&0u16.to_ne_bytes());
        cn.extend_from_slice(&ev);
        let mut nl = Vec::new();
        nl.extend_from_slice(&((NLMSG_HDR + cn.len()) as u32).to_ne_bytes());
        nl.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        nl.extend_from_slice(&[0; 10]);
        nl.extend_from_slice(&cn);
        nl
    }

    #[test]
    fn parses_exit_events_and_skips_garbage() {
        let mut d = exit_datagram(11, 10, 0x8b);
        d.extend(exit_datagram(10, 10, 0x8b));
        let mut seen = vec![];
        parse_datagram(&d, &mut |_, what, data| {
            seen.push((what, read_u32(data, 0), read_u32(data, 8)))
        });
        assert_eq!(
            seen,
            vec![
                (libc::PROC_EVENT_EXIT, Some(11), Some(0x8b)),
                (libc::PROC_EVENT_EXIT, Some(10), Some(0x8b))
            ]
        );
        // Truncated or foreign messages are skipped, never read past.
        for cut in 0..d.len() {
            parse_datagram(&d[..cut], &mut |_, _, _| {});
        }
        let mut foreign = exit_datagram(1, 1, 0);
        foreign[NLMSG_HDR] = 7;
        let mut n = 0;
        parse_datagram(&foreign, &mut |_, _, _| n += 1);
        assert_eq!(n, 0);
    }

    /// A real subscription sees a real process die of a signal and another exit with a
    /// status, with the wait status of each (the test suite runs as root).
    #[test]
    fn sees_how_real_processes_end() {
        let mut ev = ProcEvents::subscribe(EXIT).expect("subscribe (root, initial namespaces)");
        let run = |script: &str| {
            let mut c = std::process::Command::new("sh")
                .args(["-c", script])
                .spawn()
                .unwrap();
            c.wait().unwrap();
            c.id() as i32
        };
        let killed = run("kill -SEGV $$");
        let exited = run("exit 3");
        let mut seen = std::collections::HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while seen.len() < 2 && Instant::now() < deadline {
            for e in ev.wait(Duration::from_millis(100)).unwrap().events {
                match e {
                    ProcEvent::Exit { tgid, status, .. } if tgid == killed || tgid == exited => {
                        seen.insert(tgid, status);
                    }
                    ProcEvent::Exit { .. } => {}
                    other => panic!("an event of a kind not asked for: {other:?}"),
                }
            }
        }
        assert_eq!(seen.get(&killed).map(|s| s & 0x7f), Some(libc::SIGSEGV));
        assert_eq!(seen.get(&exited), Some(&(3 << 8)));
    }
}
