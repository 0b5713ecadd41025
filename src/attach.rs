//! `xcover attach`, `detach`, `status` and `demo`: the command-line side of a session.
//!
//! The agent is embedded in the binary (built by `build.rs`), so the tool is one
//! self-contained file and the agent's bytes go from it straight into the target.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use xcover_abi::{FLAG_KEEP, SessionState};
use xcover_injector::{self as injector, AttachOptions, SessionFile};

use crate::cli::{AttachArgs, BadInput, DetachArgs, StatusArgs};
use crate::live::Live;
use crate::{discover, session};

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

/// SIGINT/SIGTERM/SIGHUP set a flag instead of killing xcover, so Ctrl-C or a kill during
/// the session detaches cleanly rather than leaving the hooks inside the target.
fn stop_signals() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(sig, flag.clone())
            .with_context(|| format!("installing a handler for signal {sig}"))?;
    }
    Ok(flag)
}

/// Where reports go when the session ends.
struct Outputs {
    report: Option<PathBuf>,
    lcov: Option<PathBuf>,
}

impl Outputs {
    /// Writes the reports from a session's last reading; errors are reported, not fatal, so
    /// a failed write never keeps the hooks in the target.
    fn write(&self, s: &SessionFile) -> Result<()> {
        if self.report.is_none() && self.lcov.is_none() {
            return Ok(());
        }
        let v = session::view(s)?;
        let r = session::report(s, &v);
        if let Some(p) = &self.report {
            r.write_json(p)?;
            eprintln!("xcover: wrote {}", p.display());
        }
        if let Some(p) = &self.lcov {
            r.write_lcov(p)?;
            eprintln!("xcover: wrote {}", p.display());
        }
        Ok(())
    }

    fn check(&self) -> Result<()> {
        for p in [&self.report, &self.lcov].into_iter().flatten() {
            let dir = p.parent().filter(|d| !d.as_os_str().is_empty());
            if let Some(d) = dir
                && !d.is_dir()
            {
                return Err(BadInput(format!(
                    "{}: directory {} does not exist",
                    p.display(),
                    d.display()
                ))
                .into());
            }
        }
        Ok(())
    }
}

/// How a watch ended.
enum Ended {
    /// Detach now (time is up, Ctrl-C, `q`).
    Detach,
    /// Leave the hooks in place (`K` in the TUI).
    Keep,
    /// The target exited.
    TargetGone,
}

/// Watches a live session until it should end: the TUI when stdout is a terminal, a status
/// line every second otherwise.
fn watch(
    s: &SessionFile,
    pid: i32,
    tui: bool,
    limit: Option<Duration>,
    stop: &Arc<AtomicBool>,
    report_path: PathBuf,
) -> Result<Ended> {
    let mut live = Live::new(s, pid, report_path);
    if tui {
        let alive = live.alive_check();
        // The time limit reaches the TUI through the same flag as the signals.
        let done = Arc::new(AtomicBool::new(false));
        let timer = limit.map(|l| {
            let (stop, done) = (stop.clone(), done.clone());
            std::thread::spawn(move || {
                let start = Instant::now();
                while !done.load(Ordering::Acquire) {
                    if start.elapsed() >= l {
                        stop.store(true, Ordering::Release);
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        });
        let opts = xcover_ui::Options {
            stop: stop.clone(),
            ..xcover_ui::Options::default()
        };
        let outcome = xcover_ui::run(live, opts).context("the TUI failed");
        done.store(true, Ordering::Release);
        if let Some(t) = timer {
            let _ = t.join();
        }
        return Ok(match outcome? {
            xcover_ui::Outcome::Detach | xcover_ui::Outcome::Stopped => Ended::Detach,
            xcover_ui::Outcome::KeepLive => Ended::Keep,
            xcover_ui::Outcome::SourceEnded(why) => {
                eprintln!("xcover: {why}");
                if alive() {
                    Ended::Detach
                } else {
                    Ended::TargetGone
                }
            }
        });
    }
    let start = Instant::now();
    let mut next_status = Duration::from_secs(1);
    loop {
        let elapsed = start.elapsed();
        if limit.is_some_and(|l| elapsed >= l) {
            return Ok(Ended::Detach);
        }
        if stop.load(Ordering::Acquire) {
            eprintln!("xcover: signal received: detaching");
            return Ok(Ended::Detach);
        }
        if !live.target_alive() {
            return Ok(Ended::TargetGone);
        }
        if elapsed >= next_status {
            match live.status_line() {
                Ok(line) => eprintln!("{line}"),
                Err(e) => eprintln!("xcover: pid {pid}: cannot read the session: {e:#}"),
            }
            next_status += Duration::from_secs(1);
        }
        let mut nap = Duration::from_millis(50);
        if let Some(l) = limit {
            nap = nap.min(l.saturating_sub(elapsed));
        }
        std::thread::sleep(nap);
    }
}

fn validate_duration(d: Option<f64>) -> Result<Option<Duration>> {
    match d {
        None => Ok(None),
        Some(d) if d.is_finite() && d >= 0.0 => Ok(Some(Duration::from_secs_f64(d))),
        Some(d) => {
            Err(BadInput(format!("--duration {d}: must be a number of seconds >= 0")).into())
        }
    }
}

fn default_report_path(pid: i32) -> PathBuf {
    PathBuf::from(format!("xcover-report-{pid}.json"))
}

/// `xcover attach`.
pub fn attach(a: AttachArgs) -> Result<ExitCode> {
    let limit = validate_duration(a.duration)?;
    let outputs = Outputs {
        report: a.report.clone(),
        lcov: a.lcov.clone(),
    };
    outputs.check()?;
    let select = discover::Options::from_args(&a.select)?;
    let tui = !a.no_tui && std::io::stdout().is_terminal() && std::io::stdin().is_terminal();
    let report_path = a
        .report
        .clone()
        .unwrap_or_else(|| default_report_path(a.pid));

    // A kept session: re-open it, never instrument twice.
    if let Ok(s) = SessionFile::open(a.pid) {
        return reopen(a.pid, s, tui, limit, &outputs, report_path);
    }
    injector::procfs::check_target(a.pid).map_err(cli_error)?;

    let t0 = Instant::now();
    let d = discover::discover(a.pid, &select).map_err(|e| {
        // A target that exits while its symbols are read: say so, not which file vanished.
        match injector::procfs::stat(a.pid) {
            Ok(st) if !matches!(st.state, 'Z' | 'X') => e,
            _ => BadInput(format!(
                "pid {}: no process (it exited during discovery)",
                a.pid
            ))
            .into(),
        }
    })?;
    if d.functions.is_empty() {
        return Err(discover::nothing_to_hook(a.pid, &d));
    }
    discover::warn_stripped(a.pid, &d);
    let discovered = t0.elapsed();
    let t1 = Instant::now();
    let probe = match &a.probe {
        Some(p) => {
            std::fs::read(p).map_err(|e| BadInput(format!("--probe {}: {e}", p.display())))?
        }
        None => session::COVER_PROBE.to_vec(),
    };
    let source = match &a.probe {
        Some(p) => session::ProbeSource::File(p),
        None => session::ProbeSource::Builtin,
    };
    let prog = session::load_probe(&probe, source, d.functions.len())?;
    session::verify_probe(&prog)?;
    let contents = session::prepare(&d, &prog, session::possible_cpus())?;
    let prepared = t1.elapsed();

    let stop = stop_signals()?;
    let prepare = |s: &SessionFile| session::write(s, &contents).map_err(|e| format!("{e:#}"));
    let opts = AttachOptions {
        keep: a.keep,
        session_size: contents.layout.total,
        prepare: Some(&prepare),
    };
    let att = injector::attach(a.pid, AGENT, &opts)
        .map_err(cli_error)
        .with_context(|| format!("attach to pid {}", a.pid))?;
    let h = att.session().header();
    eprintln!(
        "xcover: attached to pid {}: {} functions hooked, {} skipped ({} threads; discovery \
         {:.1} ms, probe and session {:.1} ms, target stopped {:.2} ms of which the agent's hook call {:.2} ms, \
         attach {:.1} ms)",
        a.pid,
        h.funcs_hooked.load(Ordering::Relaxed),
        h.funcs_skipped.load(Ordering::Relaxed),
        att.stats.threads,
        ms(discovered),
        ms(prepared),
        ms(att.stats.stopped),
        ms(att.stats.agent_call),
        ms(att.stats.total)
    );
    if a.keep {
        att.leave();
        eprintln!(
            "xcover: the hooks stay in pid {}; `xcover attach {}` watches them again, \
             `xcover detach {}` takes them out",
            a.pid, a.pid, a.pid
        );
        return Ok(ExitCode::SUCCESS);
    }
    let ended = watch(att.session(), a.pid, tui, limit, &stop, report_path)?;
    match ended {
        Ended::TargetGone => {
            let r = outputs.write(att.session());
            let what = injector::target_gone(a.pid, att.session()).unwrap_or("exited");
            let _ = att.session().remove();
            eprintln!("xcover: pid {} {what}; session removed", a.pid);
            r?;
            Ok(ExitCode::SUCCESS)
        }
        Ended::Keep => {
            att.leave();
            eprintln!(
                "xcover: the hooks stay in pid {}; `xcover detach {}` takes them out",
                a.pid, a.pid
            );
            Ok(ExitCode::SUCCESS)
        }
        Ended::Detach => {
            let mut written = Ok(());
            let st = att
                .detach_with(AGENT, |s| written = outputs.write(s))
                .map_err(cli_error)
                .with_context(|| format!("detach from pid {}", a.pid))?;
            match st.gone {
                Some(what) => eprintln!("xcover: pid {} {what}; session removed", a.pid),
                None => eprintln!(
                    "xcover: detached from pid {} (target stopped {:.2} ms)",
                    a.pid,
                    ms(st.stopped)
                ),
            }
            written?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `xcover attach` on a pid that already has a session.
fn reopen(
    pid: i32,
    s: SessionFile,
    tui: bool,
    limit: Option<Duration>,
    outputs: &Outputs,
    report_path: PathBuf,
) -> Result<ExitCode> {
    let h = s.header();
    let owner = h.owner_pid.load(Ordering::Acquire);
    if owner != 0 && owner != std::process::id() && injector::procfs::stat(owner as i32).is_ok() {
        return Err(BadInput(format!("pid {pid}: already attached by xcover pid {owner}")).into());
    }
    let alive = injector::procfs::stat(pid).is_ok_and(|st| st.start_time == h.target_start_time);
    if !alive {
        s.remove().map_err(cli_error)?;
        return Err(BadInput(format!(
            "pid {pid}: no such process (stale session removed)"
        ))
        .into());
    }
    h.owner_pid.store(std::process::id(), Ordering::Release);
    eprintln!("xcover: pid {pid}: watching the kept session");
    let stop = stop_signals()?;
    let ended = watch(&s, pid, tui, limit, &stop, report_path);
    match ended {
        Ok(Ended::Keep) => {
            h.owner_pid.store(0, Ordering::Release);
            Ok(ExitCode::SUCCESS)
        }
        Ok(Ended::TargetGone) => {
            let r = outputs.write(&s);
            let what = injector::target_gone(pid, &s).unwrap_or("exited");
            let _ = s.remove();
            eprintln!("xcover: pid {pid} {what}; session removed");
            r?;
            Ok(ExitCode::SUCCESS)
        }
        Ok(Ended::Detach) => {
            drop(s);
            detach_pid(pid, outputs)
        }
        Err(e) => {
            h.owner_pid.store(0, Ordering::Release);
            Err(e)
        }
    }
}

fn detach_pid(pid: i32, outputs: &Outputs) -> Result<ExitCode> {
    let mut written = Ok(());
    let st = injector::detach_with(pid, AGENT, |s| written = outputs.write(s))
        .map_err(cli_error)
        .with_context(|| format!("detach from pid {pid}"))?;
    match st.gone {
        Some(what) => eprintln!("xcover: pid {pid} {what}; session removed"),
        None => eprintln!(
            "xcover: detached from pid {pid} (target stopped {:.2} ms)",
            ms(st.stopped)
        ),
    }
    written?;
    Ok(ExitCode::SUCCESS)
}

/// `xcover detach`.
pub fn detach(a: DetachArgs) -> Result<ExitCode> {
    let outputs = Outputs {
        report: a.report,
        lcov: a.lcov,
    };
    outputs.check()?;
    detach_pid(a.pid, &outputs)
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
                let cov = match session::view(&s) {
                    Ok(v) => format!(
                        "{} hooked, {} skipped, {} hit ({:.1}%)",
                        v.hooked,
                        v.skipped,
                        v.hit_funcs(),
                        v.coverage()
                    ),
                    Err(e) => format!("unreadable: {e:#}"),
                };
                println!(
                    "pid {pid}: {}{}{}, {cov}, owner {}, {}",
                    state_name(h.state.load(Ordering::Acquire)),
                    if h.flags & FLAG_KEEP != 0 {
                        " kept"
                    } else {
                        ""
                    },
                    if alive { "" } else { " (target gone: stale)" },
                    if owner == 0 {
                        "none".to_string()
                    } else {
                        owner.to_string()
                    },
                    exe
                );
            }
            // The error names the file already.
            Err(e) if a.pid.is_some() => {
                let _ = path;
                return Err(cli_error(e)).with_context(|| format!("status of pid {pid}"));
            }
            Err(e) => println!("pid {pid}: {e}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}
