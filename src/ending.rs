//! How a target ended while xcover watched it: the exit status or the signal, and for a
//! fault where it happened.
//!
//! xcover is not the target's parent and does not trace it while it watches (a tracer would
//! show in `TracerPid` and keep debuggers out), so it learns how the target ended from
//! - the kernel's process events ([`xcover_injector::proc_events`]), subscribed to before
//!   the target is touched: the exit event of each of its threads carries its wait status;
//! - else the zombie's own wait status in `/proc/<pid>/stat`, if its parent has not reaped
//!   it yet when xcover looks;
//! - and, for a fault, the kernel log (`/dev/kmsg`), where the kernel reports an unhandled
//!   SIGSEGV, SIGILL, SIGBUS, SIGFPE or SIGTRAP with the faulting thread and its `ip` (when
//!   `debug.exception-trace` is on, the default). The `ip` is placed in the session's
//!   function table or in xcover's own memory (agent, trampolines, JIT-ed probe).
//!
//! Without any of these it says so: "exited; how is unknown".

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use xcover_injector::SessionFile;
use xcover_injector::proc_events::{self, ProcEvent, ProcEvents, Waker};
use xcover_session::{FuncStatus, REGION_HEAP, REGION_JIT, REGION_TRAMPOLINES};

use crate::session;

/// Exit events of the target's threads kept (a thread storm makes thousands).
const EXITS_KEPT: usize = 256;
/// How long to wait for the target's exit events once it is seen gone (they are sent right
/// after its threads are released, so normally at once).
const EVENT_WAIT: Duration = Duration::from_secs(1);
/// After the first exit event, how long to wait for its other threads' events.
const STRAGGLERS: Duration = Duration::from_millis(30);

#[derive(Default)]
struct Seen {
    /// (thread, wait status) of the target's exited threads, oldest first.
    exits: VecDeque<(i32, i32)>,
    /// The kernel dropped events at some point.
    lost: bool,
    /// Why the events stopped, if they did.
    failed: Option<String>,
}

/// Watches for the end of one target: started before the target is touched, asked
/// [`explain`] once it is gone.
pub struct Watch {
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    waker: Option<Waker>,
    thread: Option<JoinHandle<()>>,
    /// Why there are no process events.
    no_events: Option<String>,
    /// The kernel log, read from where it ended when the watch started.
    kmsg: Mutex<Option<File>>,
    /// Why the kernel log cannot be read.
    no_kmsg: Option<String>,
}

impl Watch {
    /// Subscribes to process events and opens the kernel log, for the target `pid`. What
    /// is not available is remembered and said in the end, never an error.
    pub fn start(pid: i32) -> Watch {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (mut waker, mut thread, mut no_events) = (None, None, None);
        match ProcEvents::subscribe(proc_events::EXIT) {
            Ok(ev) => match ev.waker() {
                Ok(w) => {
                    waker = Some(w);
                    let (seen, stop) = (seen.clone(), stop.clone());
                    let spawned = std::thread::Builder::new()
                        .name("xcover-exits".into())
                        .spawn(move || collect(ev, pid, &seen, &stop));
                    match spawned {
                        Ok(t) => thread = Some(t),
                        Err(e) => no_events = Some(format!("no thread to read them: {e}")),
                    }
                }
                Err(e) => no_events = Some(e.to_string()),
            },
            Err(e) => no_events = Some(e.to_string()),
        }
        let (kmsg, no_kmsg) = match open_kmsg() {
            Ok(f) => (Some(f), None),
            Err(e) => (None, Some(format!("/dev/kmsg: {e}"))),
        };
        Watch {
            seen,
            stop,
            waker,
            thread,
            no_events,
            kmsg: Mutex::new(kmsg),
            no_kmsg,
        }
    }

    /// The exit events of the target's threads, once at least one has come (up to
    /// [`EVENT_WAIT`]), plus whether events were lost and why none may come.
    fn exits(&self) -> (Vec<(i32, i32)>, bool, Option<String>) {
        let deadline = Instant::now() + EVENT_WAIT;
        let mut first = None;
        loop {
            let (n, failed) = {
                let s = self.seen.lock().unwrap_or_else(|e| e.into_inner());
                (s.exits.len(), s.failed.clone())
            };
            if n > 0 && first.is_none() {
                first = Some(Instant::now());
            }
            let done = match first {
                Some(t) => t.elapsed() >= STRAGGLERS,
                None => Instant::now() >= deadline,
            };
            if done || failed.is_some() || self.thread.is_none() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let s = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let why = self.no_events.clone().or_else(|| s.failed.clone());
        (s.exits.iter().copied().collect(), s.lost, why)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(w) = &self.waker {
            w.wake();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The watch's thread: keeps the exit events of `pid`'s threads until told to stop.
fn collect(mut ev: ProcEvents, pid: i32, seen: &Mutex<Seen>, stop: &AtomicBool) {
    while !stop.load(Ordering::Acquire) {
        let batch = ev.wait(Duration::from_millis(500));
        let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
        match batch {
            Ok(b) => {
                s.lost |= b.lost;
                for e in b.events {
                    if let ProcEvent::Exit {
                        pid: tid,
                        tgid,
                        status,
                        ..
                    } = e
                        && tgid == pid
                    {
                        if s.exits.len() == EXITS_KEPT {
                            s.exits.pop_front();
                        }
                        s.exits.push_back((tid, status));
                    }
                }
            }
            Err(e) => {
                s.failed = Some(e.to_string());
                return;
            }
        }
    }
}

/// Opens the kernel log past its last record, so only records from now on are read.
fn open_kmsg() -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/kmsg")?;
    f.seek(SeekFrom::End(0))?;
    Ok(f)
}

/// How the target ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum How {
    /// It exited with this status.
    Exited(i32),
    /// A signal killed it.
    Killed {
        /// The signal.
        signal: i32,
        /// It dumped core.
        core: bool,
    },
    /// It replaced its program (`execve`): the instrumented image is gone, the process runs.
    Exec,
    /// It is gone and nothing says how; the reason.
    Unknown(String),
}

/// A fault, as the kernel logged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// What the kernel called it ("segfault", "trap invalid opcode", ...).
    pub kind: String,
    /// The instruction that faulted.
    pub ip: u64,
    /// The address accessed, for a segfault.
    pub addr: Option<u64>,
    /// Where `ip` is: a function of the session's table, or xcover's own memory.
    pub place: Option<String>,
}

/// How the target ended, with the fault when there was one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    /// Exit, signal, exec, or unknown.
    pub how: How,
    /// The fault that killed it, when the kernel logged one.
    pub fault: Option<Fault>,
    /// For a fault signal without a fault record: why it is missing.
    pub no_fault: Option<String>,
}

impl Ending {
    /// One phrase: "pid 12 was killed by SIGSEGV (segmentation fault): segfault at ip
    /// 0x... in f+0x1c (hooked), accessing 0x0".
    pub fn message(&self, pid: i32) -> String {
        let mut m = match &self.how {
            How::Exited(s) => format!("pid {pid} exited with status {s}"),
            How::Killed { signal, core } => format!(
                "pid {pid} was killed by {}{}",
                signal_text(*signal),
                if *core { ", core dumped" } else { "" }
            ),
            How::Exec => format!("pid {pid} replaced its program (exec)"),
            How::Unknown(why) => format!("pid {pid} exited; how is unknown ({why})"),
        };
        if let Some(f) = &self.fault {
            m.push_str(&format!(": {} at ip {:#x}", f.kind, f.ip));
            if let Some(p) = &f.place {
                m.push_str(&format!(" in {p}"));
            }
            if let Some(a) = f.addr {
                m.push_str(&format!(", accessing {a:#x}"));
            }
        }
        if let Some(why) = &self.no_fault {
            m.push_str(&format!(" (where is unknown: {why})"));
        }
        m
    }

    /// Whether a signal killed the target (a failure: the command line exits 1), rather
    /// than an exit, whatever its status, or an exec: the target ended by itself.
    pub fn killed(&self) -> bool {
        matches!(self.how, How::Killed { .. })
    }
}

/// How the target `pid` of `session` ended: `gone` is what [`xcover_injector::target_gone`]
/// said. Call it as soon as the target is seen gone (a zombie's status is there only until
/// its parent reaps it).
pub fn explain(pid: i32, session: &SessionFile, watch: Option<&Watch>, gone: &str) -> Ending {
    if gone == xcover_injector::GONE_EXEC {
        return Ending {
            how: How::Exec,
            fault: None,
            no_fault: None,
        };
    }
    let start = session.header().target_start_time;
    let zombie = xcover_injector::procfs::zombie_status(pid, start);
    let (exits, lost, no_events) = match watch {
        Some(w) => w.exits(),
        None => (vec![], false, None),
    };
    // In a group exit every thread carries the group's status; a thread that ended on its
    // own earlier carries its own. A signal in any of them killed the process; otherwise
    // the last thread to exit says how the process exited.
    let status = exits
        .iter()
        .rev()
        .find(|(_, s)| s & 0x7f != 0)
        .or(exits.last())
        .map(|&(_, s)| s)
        .or(zombie);
    let how = match status {
        Some(s) if s & 0x7f != 0 => How::Killed {
            signal: s & 0x7f,
            core: s & 0x80 != 0,
        },
        Some(s) => How::Exited((s >> 8) & 0xff),
        None if watch.is_none() => How::Unknown("xcover was not watching it".into()),
        None => {
            let mut why = match (no_events, lost) {
                (Some(why), _) => format!("no process events: {why}"),
                (None, true) => "its exit event was lost".to_string(),
                (None, false) => "no exit event came".to_string(),
            };
            why.push_str("; it was reaped before xcover looked");
            How::Unknown(why)
        }
    };
    let (mut fault, mut no_fault) = (None, None);
    if let How::Killed { signal, .. } = how
        && is_fault(signal)
    {
        let mut tids: Vec<i32> = exits.iter().map(|&(t, _)| t).collect();
        tids.push(pid);
        match watch.map(|w| w.kernel_fault(&tids)) {
            Some(Ok(Some(mut f))) => {
                f.place = place(session, f.ip);
                fault = Some(f);
            }
            Some(Ok(None)) => {
                no_fault = Some(
                    "the kernel logged no fault for it: a signal sent, not a fault, or \
                     debug.exception-trace off, or its log rate limit hit"
                        .into(),
                )
            }
            Some(Err(why)) => no_fault = Some(why),
            None => no_fault = Some("xcover was not watching".into()),
        }
    }
    Ending {
        how,
        fault,
        no_fault,
    }
}

/// The signals the kernel logs a fault for.
fn is_fault(sig: i32) -> bool {
    matches!(
        sig,
        libc::SIGSEGV | libc::SIGILL | libc::SIGBUS | libc::SIGFPE | libc::SIGTRAP
    )
}

impl Watch {
    /// The last fault the kernel logged for one of `tids` since the watch started; why the
    /// log cannot be read.
    fn kernel_fault(&self, tids: &[i32]) -> Result<Option<Fault>, String> {
        let mut guard = self.kmsg.lock().unwrap_or_else(|e| e.into_inner());
        let Some(f) = guard.as_mut() else {
            return Err(self.no_kmsg.clone().unwrap_or_default());
        };
        let mut found = None;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let rec = String::from_utf8_lossy(&buf[..n]);
                    if let Some(fault) = parse_kmsg_fault(&rec, tids) {
                        found = Some(fault);
                    }
                }
                // Records overwritten before they were read: the next read goes on with
                // the oldest one left.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // WouldBlock: no more records.
                Err(_) => break,
            }
        }
        Ok(found)
    }
}

/// Parses one `/dev/kmsg` record (`prio,seq,time,flags;text` and continuation lines) for
/// the kernel's report of an unhandled fault in one of `tids`:
///
/// `name[tid]: segfault at 10 ip 000055ce9ae7c132 sp 00007ffd... error 6 in name[...]`
/// `traps: name[tid] trap invalid opcode ip:5625402f512d sp:7fff040bf2c0 error:0 in ...`
pub fn parse_kmsg_fault(record: &str, tids: &[i32]) -> Option<Fault> {
    let text = record.split_once(';').map_or(record, |(_, t)| t);
    let text = text.lines().next()?;
    let after = tids.iter().find_map(|t| {
        let tag = format!("[{t}]");
        text.find(&tag).map(|i| &text[i + tag.len()..])
    })?;
    let after = after.strip_prefix(':').unwrap_or(after).trim_start();
    let hex = |s: &str| {
        let s = s.trim_start_matches("0x");
        let end = s.find(|c: char| !c.is_ascii_hexdigit()).unwrap_or(s.len());
        u64::from_str_radix(&s[..end], 16).ok()
    };
    if let Some(rest) = after.strip_prefix("segfault at ") {
        let addr = hex(rest);
        let ip = hex(rest.split_once(" ip ")?.1)?;
        return Some(Fault {
            kind: "segfault".into(),
            ip,
            addr,
            place: None,
        });
    }
    let (kind, rest) = after.split_once(" ip:")?;
    Some(Fault {
        kind: kind.trim().to_string(),
        ip: hex(rest)?,
        addr: None,
        place: None,
    })
}

/// Where `ip` lies: a function of the session's table ("name+0x1c (hooked)"), or xcover's
/// own memory in the target.
pub fn place(s: &SessionFile, ip: u64) -> Option<String> {
    let h = s.header();
    let base = h.agent_base.load(Ordering::Acquire);
    let size = h.agent_size.load(Ordering::Acquire);
    if base != 0 && (base..base.saturating_add(size)).contains(&ip) {
        return Some(format!("xcover's agent (+{:#x})", ip - base));
    }
    if let Ok(regions) = session::regions(s) {
        for r in regions {
            if (r.start..r.start.saturating_add(r.len)).contains(&ip) {
                let what = match r.kind {
                    REGION_TRAMPOLINES => {
                        "xcover's trampolines (a hook, or a hooked function's relocated first \
                         instructions)"
                    }
                    REGION_JIT => "xcover's JIT-compiled probe",
                    REGION_HEAP => "xcover's agent heap",
                    _ => "xcover's memory",
                };
                return Some(format!("{what} at {:#x}+{:#x}", r.start, ip - r.start));
            }
        }
    }
    let scratch = h.scratch_addr.load(Ordering::Acquire);
    let ssize = h.scratch_size.load(Ordering::Acquire);
    if scratch != 0 && (scratch..scratch.saturating_add(ssize)).contains(&ip) {
        return Some(format!("xcover's scratch memory (+{:#x})", ip - scratch));
    }
    let v = session::view(s).ok()?;
    let f = v
        .funcs
        .iter()
        .find(|f| f.entry.addr <= ip && ip < f.entry.addr.saturating_add(f.entry.size.max(1)))?;
    let name = crate::discover::demangle(&f.name).unwrap_or_else(|| f.name.clone());
    let status = match (f.entry.status(), f.skip_reason()) {
        (Some(FuncStatus::Hooked | FuncStatus::Unhooking), _) => "hooked".to_string(),
        (Some(FuncStatus::Unhooked), _) => match f.entry.unhook_reason() {
            Some(u) => format!("unhooked live: {}", u.name()),
            None => "unhooked live".to_string(),
        },
        (_, Some(why)) => format!("not hooked: {why}"),
        _ => "not hooked".to_string(),
    };
    Some(format!("{name}+{:#x} ({status})", ip - f.entry.addr))
}

/// "SIGSEGV (segmentation fault)", or "signal 40" for one without a name here.
pub fn signal_text(sig: i32) -> String {
    let (name, what) = match sig {
        libc::SIGHUP => ("SIGHUP", "hangup"),
        libc::SIGINT => ("SIGINT", "interrupt"),
        libc::SIGQUIT => ("SIGQUIT", "quit"),
        libc::SIGILL => ("SIGILL", "illegal instruction"),
        libc::SIGTRAP => ("SIGTRAP", "trace/breakpoint trap"),
        libc::SIGABRT => ("SIGABRT", "aborted"),
        libc::SIGBUS => ("SIGBUS", "bus error"),
        libc::SIGFPE => ("SIGFPE", "arithmetic exception"),
        libc::SIGKILL => ("SIGKILL", "killed"),
        libc::SIGUSR1 => ("SIGUSR1", "user signal 1"),
        libc::SIGSEGV => ("SIGSEGV", "segmentation fault"),
        libc::SIGUSR2 => ("SIGUSR2", "user signal 2"),
        libc::SIGPIPE => ("SIGPIPE", "broken pipe"),
        libc::SIGALRM => ("SIGALRM", "alarm clock"),
        libc::SIGTERM => ("SIGTERM", "terminated"),
        libc::SIGSTKFLT => ("SIGSTKFLT", "stack fault"),
        libc::SIGXCPU => ("SIGXCPU", "CPU time limit exceeded"),
        libc::SIGXFSZ => ("SIGXFSZ", "file size limit exceeded"),
        libc::SIGVTALRM => ("SIGVTALRM", "virtual timer expired"),
        libc::SIGPROF => ("SIGPROF", "profiling timer expired"),
        libc::SIGIO => ("SIGIO", "I/O possible"),
        libc::SIGPWR => ("SIGPWR", "power failure"),
        libc::SIGSYS => ("SIGSYS", "bad system call"),
        _ => return format!("signal {sig}"),
    };
    format!("{name} ({what}, signal {sig})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_fault_records_are_parsed() {
        let segv = "3,1234,272391327,-;segv[16600]: segfault at 10 ip 000055ce9ae7c132 sp \
                    00007fff1a1ec3f0 error 6 in segv[1132,55ce9ae7c000+1000] likely on CPU 1 \
                    (core 1, socket 0)\n SUBSYSTEM=x\n";
        assert_eq!(
            parse_kmsg_fault(segv, &[5, 16600]),
            Some(Fault {
                kind: "segfault".into(),
                ip: 0x55ce9ae7c132,
                addr: Some(0x10),
                place: None
            })
        );
        assert_eq!(parse_kmsg_fault(segv, &[1660]), None, "another thread");
        let ill = "6,1240,272411487,-;traps: ill[16608] trap invalid opcode ip:5625402f512d \
                   sp:7fff040bf2c0 error:0 in ill[112d,5625402f5000+1000]";
        assert_eq!(
            parse_kmsg_fault(ill, &[16608]),
            Some(Fault {
                kind: "trap invalid opcode".into(),
                ip: 0x5625402f512d,
                addr: None,
                place: None
            })
        );
        let gp = "6,1,2,-;traps: a b[77] general protection fault ip:401000 sp:7ffc error:0";
        assert_eq!(
            parse_kmsg_fault(gp, &[77]).map(|f| (f.kind, f.ip)),
            Some(("general protection fault".into(), 0x401000))
        );
        assert_eq!(
            parse_kmsg_fault("6,1,2,-;x[77]: link up", &[77]),
            None,
            "not a fault"
        );
    }

    #[test]
    fn messages_and_exit_codes() {
        let e = Ending {
            how: How::Killed {
                signal: 11,
                core: false,
            },
            fault: Some(Fault {
                kind: "segfault".into(),
                ip: 0x1234,
                addr: Some(0),
                place: Some("f+0x4 (hooked)".into()),
            }),
            no_fault: None,
        };
        assert_eq!(
            e.message(7),
            "pid 7 was killed by SIGSEGV (segmentation fault, signal 11): segfault at ip \
             0x1234 in f+0x4 (hooked), accessing 0x0"
        );
        assert!(e.killed());
        let e = Ending {
            how: How::Exited(3),
            fault: None,
            no_fault: None,
        };
        assert_eq!(e.message(7), "pid 7 exited with status 3");
        assert!(!e.killed());
    }
}
