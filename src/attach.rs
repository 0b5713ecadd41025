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
use xcover_injector::session::Owner;
use xcover_injector::{self as injector, AttachOptions, SessionFile};

use crate::cli::{AttachArgs, BadInput, DetachArgs, StatusArgs};
use crate::ending::{self, Watch};
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
    /// Writes the reports from a reading of the session: its last one (`snapshot` false), or
    /// one taken while it keeps counting. Both are tried; the first failure is returned.
    fn write(&self, s: &SessionFile, snapshot: bool) -> Result<()> {
        if self.report.is_none() && self.lcov.is_none() {
            return Ok(());
        }
        let v = session::view(s)?;
        let r = session::report(s, &v);
        let note = if snapshot {
            " (a snapshot: the session stays live and keeps counting)"
        } else {
            ""
        };
        let mut first_err = None;
        for (p, json) in [(&self.report, true), (&self.lcov, false)] {
            let Some(p) = p else { continue };
            let w = if json {
                r.write_json(p)
            } else {
                r.write_lcov(p)
            };
            match w {
                Ok(()) => eprintln!("xcover: wrote {}{note}", p.display()),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Checks every output path before the target is touched.
    fn check(&self) -> Result<()> {
        for p in [&self.report, &self.lcov].into_iter().flatten() {
            crate::report::check_writable(p)?;
        }
        Ok(())
    }
}

/// The error of a session whose reports could not be written: its counts are held in the
/// session file, and the message says where and how to get them.
fn held(e: anyhow::Error, pid: i32, path: &str) -> anyhow::Error {
    e.context(format!(
        "pid {pid}: a report could not be written; the counts are kept in {path} \
         (`xcover detach {pid} --report <file>` writes them and removes it)"
    ))
}

/// How a watch ended.
enum Ended {
    /// `q` in the TUI: detach.
    Detach,
    /// The time is up (`timed_out`), or Ctrl-C or a signal: the session's owner detaches,
    /// the watcher of a kept session leaves it kept.
    Stopped { timed_out: bool },
    /// Leave the hooks in place (`K` in the TUI).
    Keep,
    /// The target is gone: what [`injector::target_gone`] said.
    TargetGone(&'static str),
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
    let gone = || injector::target_gone(pid, s);
    let mut live = Live::new(s, pid, report_path);
    if tui {
        let alive = live.alive_check();
        // The time limit reaches the TUI through the same flag as the signals.
        let done = Arc::new(AtomicBool::new(false));
        let timed_out = Arc::new(AtomicBool::new(false));
        let timer = limit.map(|l| {
            let (stop, done, timed_out) = (stop.clone(), done.clone(), timed_out.clone());
            std::thread::spawn(move || {
                let start = Instant::now();
                while !done.load(Ordering::Acquire) {
                    if start.elapsed() >= l {
                        timed_out.store(true, Ordering::Release);
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
            xcover_ui::Outcome::Detach => Ended::Detach,
            xcover_ui::Outcome::Stopped => Ended::Stopped {
                timed_out: timed_out.load(Ordering::Acquire),
            },
            xcover_ui::Outcome::KeepLive => Ended::Keep,
            xcover_ui::Outcome::SourceEnded(why) => {
                if alive() {
                    eprintln!("xcover: {why}");
                    Ended::Detach
                } else {
                    Ended::TargetGone(gone().unwrap_or(injector::GONE_EXITED))
                }
            }
        });
    }
    let start = Instant::now();
    let mut next_status = Duration::from_secs(1);
    loop {
        let elapsed = start.elapsed();
        if limit.is_some_and(|l| elapsed >= l) {
            return Ok(Ended::Stopped { timed_out: true });
        }
        if stop.load(Ordering::Acquire) {
            return Ok(Ended::Stopped { timed_out: false });
        }
        if let Some(what) = gone() {
            return Ok(Ended::TargetGone(what));
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

/// The end of a session whose target is gone (`gone`, from [`injector::target_gone`]):
/// says how it ended, writes the reports from the session's counts, and removes the
/// session, or holds it if a report could not be written. Exit code 1 when a signal
/// killed the target.
fn target_ended(
    pid: i32,
    s: &SessionFile,
    watch: Option<&Watch>,
    gone: &str,
    outputs: &Outputs,
) -> Result<ExitCode> {
    let end = ending::explain(pid, s, watch, gone);
    if let Err(e) = outputs.write(s, false) {
        s.hold().map_err(cli_error)?;
        eprintln!("xcover: {}", end.message(pid));
        return Err(held(e, pid, s.path()));
    }
    s.remove().map_err(cli_error)?;
    eprintln!("xcover: {}; session removed", end.message(pid));
    Ok(end.exit_code())
}

/// Takes the hooks out with `detach` (which calls its closure once they are out, with the
/// session, and holds the session when it returns false), writing the reports; says what
/// happened. A target found gone meanwhile is explained with `watch`.
fn detach_and_report(
    pid: i32,
    watch: Option<&Watch>,
    outputs: &Outputs,
    detach: impl FnOnce(&mut dyn FnMut(&SessionFile) -> bool) -> Result<injector::Stats>,
) -> Result<ExitCode> {
    let mut written: Result<()> = Ok(());
    let mut end = None;
    let mut path = String::new();
    let st = detach(&mut |s| {
        path = s.path().to_string();
        // How a target that is gone ended, before its zombie is reaped.
        if !s.is_held()
            && let Some(what) = injector::target_gone(pid, s)
        {
            end = Some(ending::explain(pid, s, watch, what));
        }
        written = outputs.write(s, false);
        written.is_ok()
    })?;
    let code = end.as_ref().map_or(ExitCode::SUCCESS, |e| e.exit_code());
    let said = match (&st.gone, &end) {
        (_, Some(end)) => end.message(pid),
        (Some(what), None) => format!("pid {pid} {what}"),
        (None, None) => format!(
            "detached from pid {pid} (target stopped {:.2} ms)",
            ms(st.stopped)
        ),
    };
    if st.held {
        eprintln!("xcover: {said}");
        let e = written
            .err()
            .unwrap_or_else(|| anyhow::anyhow!("a report failed"));
        return Err(held(e, pid, &path));
    }
    if st.gone.is_some() || end.is_some() {
        eprintln!("xcover: {said}; session removed");
    } else {
        eprintln!("xcover: {said}");
    }
    Ok(code)
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
    let mut contents = session::prepare(&d, &prog, session::possible_cpus())?;
    if a.traps && !contents.allow_traps(true) {
        eprintln!(
            "xcover: --traps ignored: the target has Go code, whose runtime owns its signals"
        );
    }
    let prepared = t1.elapsed();

    let stop = stop_signals()?;
    // Before the target is touched, so that however it ends later is seen.
    let watcher = (!a.keep).then(|| Watch::start(a.pid));
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
             `xcover detach {}` takes them out{}",
            a.pid,
            a.pid,
            a.pid,
            if outputs.report.is_some() || outputs.lcov.is_some() {
                " (and writes the reports: give it --report/--lcov)"
            } else {
                ""
            }
        );
        return Ok(ExitCode::SUCCESS);
    }
    let ended = watch(att.session(), a.pid, tui, limit, &stop, report_path)?;
    match ended {
        Ended::TargetGone(what) => {
            target_ended(a.pid, att.session(), watcher.as_ref(), what, &outputs)
        }
        Ended::Keep => {
            let written = outputs.write(att.session(), true);
            att.leave();
            left_kept(a.pid, "", written)
        }
        Ended::Detach | Ended::Stopped { .. } => {
            if matches!(ended, Ended::Stopped { timed_out: false }) {
                eprintln!("xcover: signal received: detaching");
            }
            detach_and_report(a.pid, watcher.as_ref(), &outputs, |last_read| {
                att.detach_with(AGENT, last_read)
                    .map_err(cli_error)
                    .with_context(|| format!("detach from pid {}", a.pid))
            })
        }
    }
}

/// The end of a watch that leaves the session kept (`why`: what ended the watch), once the
/// reports asked for were written as a snapshot of the counts so far (`written`).
fn left_kept(pid: i32, why: &str, written: Result<()>) -> Result<ExitCode> {
    eprintln!(
        "xcover: {why}the hooks stay in pid {pid} (a kept session); `xcover detach {pid}` \
         takes them out"
    );
    written?;
    Ok(ExitCode::SUCCESS)
}

/// `xcover attach` on a pid that already has a session: a kept one (watched, and left kept
/// unless `q` in the TUI asks for a detach), or one whose xcover is gone (watched, and
/// detached at the end as that xcover would have).
fn reopen(
    pid: i32,
    s: SessionFile,
    tui: bool,
    limit: Option<Duration>,
    outputs: &Outputs,
    report_path: PathBuf,
) -> Result<ExitCode> {
    if s.is_held() {
        return Err(BadInput(format!(
            "pid {pid}: {} holds the counts of a session whose report could not be written; \
             `xcover detach {pid} --report <file>` writes them and removes it",
            s.path()
        ))
        .into());
    }
    let h = s.header();
    let left_by = match s.owner() {
        Owner::Alive(owner) => {
            return Err(
                BadInput(format!("pid {pid}: already attached by xcover pid {owner}")).into(),
            );
        }
        Owner::Gone(owner) => Some(owner),
        Owner::None => None,
    };
    if let Some(what) = injector::target_gone(pid, &s) {
        return Err(BadInput(format!(
            "pid {pid}: its session is stale (the target {what}); `xcover detach {pid}` removes \
             it, with --report writing its counts first"
        ))
        .into());
    }
    let kept = h.flags & FLAG_KEEP != 0;
    let stop = stop_signals()?;
    let watcher = Watch::start(pid);
    h.owner_pid.store(std::process::id(), Ordering::Release);
    match left_by {
        _ if kept => eprintln!(
            "xcover: pid {pid}: watching the kept session (it stays kept at the end: `q` in \
             the TUI or `xcover detach {pid}` takes the hooks out)"
        ),
        Some(owner) => eprintln!(
            "xcover: pid {pid}: watching the session xcover pid {owner} left (it is gone)"
        ),
        None => eprintln!("xcover: pid {pid}: watching its session"),
    }
    let ended = watch(&s, pid, tui, limit, &stop, report_path);
    let give_up = || h.owner_pid.store(0, Ordering::Release);
    let keep = |why: &str| {
        let written = outputs.write(&s, true);
        give_up();
        left_kept(pid, why, written)
    };
    match ended {
        Ok(Ended::Keep) => keep(""),
        Ok(Ended::Stopped { timed_out: true }) if kept => keep("time is up: "),
        Ok(Ended::Stopped { timed_out: false }) if kept => keep("signal received: "),
        Ok(Ended::TargetGone(what)) => target_ended(pid, &s, Some(&watcher), what, outputs),
        Ok(Ended::Detach | Ended::Stopped { .. }) => {
            drop(s);
            detach_pid(pid, Some(&watcher), outputs)
        }
        Err(e) => {
            give_up();
            Err(e)
        }
    }
}

fn detach_pid(pid: i32, watch: Option<&Watch>, outputs: &Outputs) -> Result<ExitCode> {
    detach_and_report(pid, watch, outputs, |last_read| {
        injector::detach_with(pid, AGENT, last_read)
            .map_err(cli_error)
            .with_context(|| format!("detach from pid {pid}"))
    })
}

/// `xcover detach`.
pub fn detach(a: DetachArgs) -> Result<ExitCode> {
    let outputs = Outputs {
        report: a.report,
        lcov: a.lcov,
    };
    outputs.check()?;
    detach_pid(a.pid, None, &outputs)
}

/// One line of `xcover status` for the session of `pid`.
fn status_line(pid: i32, s: &SessionFile) -> String {
    let h = s.header();
    let exe =
        String::from_utf8_lossy(&h.exe_path[..(h.exe_path_len as usize).min(h.exe_path.len())])
            .into_owned();
    let cov = match session::view(s) {
        Ok(v) => format!(
            "{} hooked, {} skipped, {} hit ({:.1}%)",
            v.hooked,
            v.skipped,
            v.hit_funcs(),
            v.coverage()
        ),
        Err(e) => format!("unreadable: {e:#}"),
    };
    let kept = if h.flags & FLAG_KEEP != 0 {
        " kept"
    } else {
        ""
    };
    let (state, owner, hint) = if s.is_held() {
        (
            "detached, counts held (a report could not be written)".to_string(),
            "none".to_string(),
            format!("`xcover detach {pid} --report <file>` writes them and removes the session"),
        )
    } else if let Some(what) = injector::target_gone(pid, s) {
        let state = if what == injector::GONE_EXEC {
            "stale: the target exec'd (its new program has no hooks)".to_string()
        } else {
            format!("stale: the target {what}")
        };
        (
            state,
            owner_text(s),
            format!("`xcover detach {pid}` removes the session (--report writes its counts)"),
        )
    } else {
        let state = format!("{}{kept}", state_name(h.state.load(Ordering::Acquire)));
        match s.owner() {
            Owner::Gone(o) => (
                state,
                format!("owner {o} gone"),
                format!("recoverable with `xcover detach {pid}` or `xcover attach {pid}`"),
            ),
            _ => (state, owner_text(s), String::new()),
        }
    };
    let hint = if hint.is_empty() {
        hint
    } else {
        format!("; {hint}")
    };
    format!("pid {pid}: {state}, {cov}, owner {owner}, {exe}{hint}")
}

fn owner_text(s: &SessionFile) -> String {
    match s.owner() {
        Owner::None => "none".into(),
        Owner::Alive(o) => o.to_string(),
        Owner::Gone(o) => format!("{o} gone"),
    }
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
    for (pid, _path) in sessions {
        match SessionFile::open(pid) {
            Ok(s) => println!("{}", status_line(pid, &s)),
            // The error names the file already.
            Err(e) if a.pid.is_some() => {
                return Err(cli_error(e)).with_context(|| format!("status of pid {pid}"));
            }
            Err(e) => println!("pid {pid}: {e}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}
