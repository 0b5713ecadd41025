//! `xcover attach`: prepares and starts a session with the library, watches it — the TUI
//! when stdout is a terminal, a status line every second otherwise — and ends it as the
//! watch ended.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use xcover::govern::Mode;
use xcover::report::Outputs;
use xcover::{Ended, Plan, ProcessSet, Session, Step};

use crate::cli::AttachArgs;

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

fn validate_duration(d: Option<f64>) -> Result<Option<Duration>> {
    match d {
        None => Ok(None),
        Some(d) if d.is_finite() && d >= 0.0 => Ok(Some(Duration::from_secs_f64(d))),
        Some(d) => Err(xcover::Error::bad_input(format!(
            "--duration {d}: must be a number of seconds >= 0"
        ))
        .into()),
    }
}

/// `xcover attach`.
pub fn run(a: AttachArgs) -> Result<ExitCode> {
    let limit = validate_duration(a.duration)?;
    let mode = match (a.first_hit, a.max_overhead) {
        (true, _) => Mode::FirstHit,
        (false, Some(p)) if p.is_finite() && p > 0.0 => Mode::MaxOverhead(p),
        (false, Some(p)) => {
            return Err(xcover::Error::bad_input(format!(
                "--max-overhead {p}: must be a percentage > 0"
            ))
            .into());
        }
        (false, None) => Mode::Count,
    };
    let mut outputs = a.output.outputs();
    outputs.set_debug_dirs(a.select.debug_dirs.clone());
    outputs.check()?;
    let export = super::export::Prepared::check(&a.export, a.pid, a.keep)?;
    let plan = Plan {
        select: a.select.options()?,
        probe: a.probe.clone(),
        keep: a.keep,
        traps: a.traps,
    };
    let tui = !a.no_tui && std::io::stdout().is_terminal() && std::io::stdin().is_terminal();
    // Everything is checked before the target is touched; a kept session is taken over,
    // never instrumented twice.
    let prepared = Session::prepare(&ProcessSet::pid(a.pid), &plan, &mut super::note)?;
    let stop = stop_signals()?;
    let Some(session) = prepared.start(&outputs, &mut super::note)? else {
        // --keep: the hooks stay, nothing to watch.
        return Ok(ExitCode::SUCCESS);
    };
    let pids: Vec<i32> = session.members().iter().map(|m| m.pid()).collect();
    let exporting = match export.start(&pids) {
        Ok(e) => e,
        Err(e) => {
            session.abandon();
            return Err(e);
        }
    };
    let ended = match watch(&session, tui, limit, &stop, &outputs, mode) {
        Ok(ended) => ended,
        Err(e) => {
            session.abandon();
            return Err(e);
        }
    };
    let outcome = session.end(ended, &outputs, &mut super::note);
    // The last push sends the final counts (read after the hooks are out).
    exporting.finish();
    Ok(super::exit_code(outcome?))
}

/// Watches a live session until it should end: the TUI, or a status line every second.
fn watch(
    session: &Session,
    tui: bool,
    limit: Option<Duration>,
    stop: &Arc<AtomicBool>,
    outputs: &Outputs,
    mode: Mode,
) -> Result<Ended> {
    let mut live = session.live(outputs).with_mode(mode);
    if tui {
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
            xcover_ui::Outcome::SourceEnded(why) => match session.watch_step() {
                Step::Running => {
                    eprintln!("xcover: {why}");
                    Ended::Detach
                }
                Step::Gone(what) => Ended::TargetGone(what),
            },
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
        if let Step::Gone(what) = session.watch_step() {
            return Ok(Ended::TargetGone(what));
        }
        live.tick();
        if elapsed >= next_status {
            match live.status_line() {
                Ok(line) => eprintln!("{line}"),
                Err(e) => eprintln!(
                    "xcover: pid {}: cannot read the session: {}",
                    session.members()[0].pid(),
                    xcover::error::chain(&e)
                ),
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
