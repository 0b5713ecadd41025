//! `xcover attach`, `detach` and `status`: the command-line side of the injector.
//!
//! The agent is embedded in the binary (built by `build.rs`), so the tool is one
//! self-contained file and the agent's bytes go from it straight into the target.

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use xcover_abi::{FLAG_KEEP, SessionState};
use xcover_injector::{self as injector, AttachOptions, SessionFile};

use crate::cli::{AttachArgs, BadInput, DemoArgs, DetachArgs, StatusArgs};

/// The agent shared object, embedded at build time.
static AGENT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/xcover_agent.so"));

/// Turns an injector error into the CLI's: bad input (exit code 2) or a runtime failure.
fn cli_error(e: injector::Error) -> anyhow::Error {
    if e.is_bad_input() {
        anyhow::Error::new(BadInput(e.to_string()))
    } else {
        anyhow::Error::new(e)
    }
}

fn state_name(v: u32) -> &'static str {
    match SessionState::from_u32(v) {
        Some(SessionState::Attaching) => "attaching",
        Some(SessionState::Live) => "live",
        Some(SessionState::Detaching) => "detaching",
        Some(SessionState::Detached) => "detached",
        Some(SessionState::Failed) => "failed",
        None => "unknown",
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// SIGINT/SIGTERM are blocked and read from a signalfd, so Ctrl-C during the wait detaches
/// cleanly instead of killing xcover with the agent inside the target.
fn stop_signals() -> Result<SignalFd> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGHUP);
    set.thread_block().context("blocking SIGINT/SIGTERM")?;
    SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .context("creating a signalfd")
}

/// `xcover attach`.
pub fn attach(a: AttachArgs) -> Result<ExitCode> {
    if a.report.is_some() || a.lcov.is_some() {
        eprintln!("xcover: note: reports are not written yet (no hooks exist yet)");
    }
    if let Some(d) = a.duration
        && !(d.is_finite() && d >= 0.0)
    {
        return Err(BadInput(format!("--duration {d}: must be a number of seconds >= 0")).into());
    }
    let sigfd = stop_signals()?;
    let opts = AttachOptions {
        keep: a.keep,
        ..AttachOptions::default()
    };
    let att = injector::attach(a.pid, AGENT, &opts)
        .map_err(cli_error)
        .with_context(|| format!("attach to pid {}", a.pid))?;
    eprintln!(
        "xcover: attached to pid {} ({} threads; target stopped {:.2} ms, attach took {:.2} ms)",
        a.pid,
        att.stats.threads,
        ms(att.stats.stopped),
        ms(att.stats.total)
    );
    if a.keep {
        att.leave();
        eprintln!(
            "xcover: the agent stays in pid {}; `xcover detach {}` takes it out",
            a.pid, a.pid
        );
        return Ok(ExitCode::SUCCESS);
    }
    let start = Instant::now();
    let limit = a.duration.map(Duration::from_secs_f64);
    let mut next_status = Duration::from_secs(1);
    let mut gone = false;
    loop {
        let elapsed = start.elapsed();
        if limit.is_some_and(|l| elapsed >= l) {
            break;
        }
        if let Ok(Some(si)) = sigfd.read_signal() {
            eprintln!("xcover: signal {}: detaching", si.ssi_signo);
            break;
        }
        if injector::procfs::stat(a.pid).is_err() {
            gone = true;
            break;
        }
        if elapsed >= next_status {
            let h = att.session().header();
            eprintln!(
                "xcover: pid {} {} {:.0}s agent_calls={}",
                a.pid,
                state_name(h.state.load(Ordering::Acquire)),
                elapsed.as_secs_f64(),
                h.agent_calls.load(Ordering::Acquire)
            );
            next_status += Duration::from_secs(1);
        }
        let mut nap = Duration::from_millis(50);
        if let Some(l) = limit {
            nap = nap.min(l.saturating_sub(elapsed));
        }
        std::thread::sleep(nap);
    }
    if gone {
        let _ = att.session().remove();
        eprintln!("xcover: pid {} exited; session removed", a.pid);
        return Ok(ExitCode::SUCCESS);
    }
    let st = att
        .detach(AGENT)
        .map_err(cli_error)
        .with_context(|| format!("detach from pid {}", a.pid))?;
    eprintln!(
        "xcover: detached from pid {} (target stopped {:.2} ms)",
        a.pid,
        ms(st.stopped)
    );
    Ok(ExitCode::SUCCESS)
}

/// `xcover detach`.
pub fn detach(a: DetachArgs) -> Result<ExitCode> {
    if a.report.is_some() || a.lcov.is_some() {
        eprintln!("xcover: note: reports are not written yet (no hooks exist yet)");
    }
    let st = injector::detach(a.pid, AGENT)
        .map_err(cli_error)
        .with_context(|| format!("detach from pid {}", a.pid))?;
    eprintln!(
        "xcover: detached from pid {} (target stopped {:.2} ms)",
        a.pid,
        ms(st.stopped)
    );
    Ok(ExitCode::SUCCESS)
}

/// `xcover status`.
pub fn status(a: StatusArgs) -> Result<ExitCode> {
    let sessions: Vec<(i32, String)> = injector::session::list_sessions()
        .into_iter()
        .filter(|(p, _)| a.pid.is_none_or(|want| want == *p))
        .collect();
    if sessions.is_empty() {
        if let Some(p) = a.pid {
            return Err(BadInput(format!("pid {p}: no xcover session")).into());
        }
        println!("no sessions");
        return Ok(ExitCode::SUCCESS);
    }
    for (pid, path) in sessions {
        match SessionFile::open(pid) {
            Ok(s) => {
                let h = s.header();
                let alive = injector::procfs::stat(pid)
                    .is_ok_and(|st| st.start_time == h.target_start_time);
                let exe = String::from_utf8_lossy(
                    &h.exe_path[..(h.exe_path_len as usize).min(h.exe_path.len())],
                )
                .into_owned();
                let owner = h.owner_pid.load(Ordering::Acquire);
                println!(
                    "pid {pid}: {}{}{} agent_calls={} owner={} {}",
                    state_name(h.state.load(Ordering::Acquire)),
                    if h.flags & FLAG_KEEP != 0 {
                        " kept"
                    } else {
                        ""
                    },
                    if alive { "" } else { " (target gone: stale)" },
                    h.agent_calls.load(Ordering::Acquire),
                    if owner == 0 {
                        "none".to_string()
                    } else {
                        owner.to_string()
                    },
                    exe
                );
            }
            Err(e) => println!("pid {pid}: {path}: {e}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `xcover demo`.
pub fn demo(_a: DemoArgs) -> Result<ExitCode> {
    bail!("demo is not built yet")
}
