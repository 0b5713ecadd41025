//! Attach, watch and detach: a [`Session`] over a [`ProcessSet`].
//!
//! - [`Session::prepare`] checks and prepares everything while no target is touched yet:
//!   the target, its functions, the probe, the session's contents (or, for a session that
//!   is already there, whether it may be taken over).
//! - [`Prepared::start`] instruments each target (or takes its session over) and says so.
//! - While a front end watches, [`Session::watch_step`] says whether the targets still run,
//!   and [`Session::live`] reads one for the TUI or a status line.
//! - [`Session::end`] ends the watch as asked — detach, keep, or the target gone — and
//!   writes the reports. [`detach`] ends a kept session; [`status`] reads one.
//!
//! The counts are never lost: when a report cannot be written at the end, the session file
//! is held for them ([`Error::Held`]), and `xcover detach <pid> --report <file>` writes them.
//!
//! The agent is embedded in the library (built by `build.rs`), so the tool is one
//! self-contained file and the agent's bytes go from it straight into the target.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use xcover_injector::session::Owner;
use xcover_injector::{self as injector, AttachOptions, SessionFile};
use xcover_session::{FLAG_KEEP, SessionState};

use crate::BadInput;
use crate::discover;
use crate::ending::{self, Watch};
use crate::error::{Context, Error, Result, chain};
use crate::live::Live;
use crate::note::{Detached, Note, Origin};
use crate::process_set::{Counts, Hold, Member, ProcessSet};
use crate::report::Outputs;
use crate::session;

/// The agent shared object, embedded at build time.
static AGENT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/xcover_agent.so"));

/// The agent's bytes, for the other paths that run its entry points ([`crate::hookset`]).
pub(crate) fn agent() -> &'static [u8] {
    AGENT
}

/// What to hook, with which probe, and whether the hooks outlive this xcover.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// Which functions.
    pub select: discover::Options,
    /// An eBPF object to run as the probe instead of the built-in coverage probe.
    pub probe: Option<PathBuf>,
    /// Leave the hooks in place and leave (`--keep`).
    pub keep: bool,
    /// Hook with one-byte traps what no jump can (`--traps`), unless the target has Go code
    /// ([`Note::TrapsIgnored`]).
    pub traps: bool,
}

/// A session checked and prepared: no target has been touched yet.
pub struct Prepared {
    members: Vec<Pending>,
    keep: bool,
}

/// One member, prepared.
enum Pending {
    /// To instrument.
    Fresh {
        pid: i32,
        contents: Box<session::Contents>,
        discovered: Duration,
        prepared: Duration,
    },
    /// A session already there, to take over.
    Existing {
        pid: i32,
        file: SessionFile,
        origin: Origin,
    },
}

/// A live session over a set of processes (one today): attached, or taken over.
pub struct Session {
    members: Vec<Member>,
}

/// Whether a watched session's targets still run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// They do.
    Running,
    /// They are gone, and how: what [`injector::target_gone`] said.
    Gone(&'static str),
}

/// How a watch ended: what [`Session::end`] does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// Take the hooks out (`q` in the TUI).
    Detach,
    /// The time is up (`timed_out`), or Ctrl-C or a signal: a session this xcover attached
    /// is detached, a kept one it watched again stays kept.
    Stopped {
        /// The time limit, not a signal.
        timed_out: bool,
    },
    /// Leave the hooks in place (`K` in the TUI).
    Keep,
    /// The target is gone: what [`Session::watch_step`] said.
    TargetGone(&'static str),
}

/// How a session ended, once its reports are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// A signal killed a target while it was watched (the command line exits 1).
    pub target_killed: bool,
}

impl Outcome {
    fn and(self, o: Outcome) -> Outcome {
        Outcome {
            target_killed: self.target_killed || o.target_killed,
        }
    }
}

impl Session {
    /// Checks and prepares a session over `set` as `plan` says, touching no target: a pid
    /// with a session already there is taken over as it is (never instrumented twice);
    /// the others are checked, their functions found and the session's contents prepared.
    pub fn prepare(set: &ProcessSet, plan: &Plan, notes: &mut dyn FnMut(Note)) -> Result<Prepared> {
        let mut members = Vec::new();
        for pid in set.pids() {
            members.push(match SessionFile::open(pid) {
                Ok(file) => existing(pid, file)?,
                Err(_) => fresh(pid, plan, notes)?,
            });
        }
        Ok(Prepared {
            members,
            keep: plan.keep,
        })
    }

    /// The members.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The coverage so far, over every member.
    pub fn counts(&self) -> Result<Counts> {
        let mut c = Counts::default();
        for m in &self.members {
            c += m.counts()?;
        }
        Ok(c)
    }

    /// One step of a watch: whether the targets still run. `Gone` once every member's is
    /// gone (with what was said of the first).
    pub fn watch_step(&self) -> Step {
        let mut first = None;
        for m in &self.members {
            match m.gone() {
                None => return Step::Running,
                Some(what) => {
                    first.get_or_insert(what);
                }
            }
        }
        Step::Gone(first.unwrap_or(injector::GONE_EXITED))
    }

    /// A reader of the session for the TUI or a status line; the TUI's "write report" key
    /// writes the JSON report where `outputs` says, else to `xcover-report-<pid>.json`. It
    /// reads the first member (the only one today).
    pub fn live(&self, outputs: &Outputs) -> Live<'_> {
        let m = &self.members[0];
        let path = outputs
            .path_of(crate::report::JSON.name())
            .map_or_else(|| default_report_path(m.pid), Path::to_path_buf);
        Live::new(m.session(), m.pid, path).with_debug_dirs(outputs.debug_dirs())
    }

    /// Ends the watch as `ended` says, for every member: takes the hooks out and writes the
    /// reports from the final counts, or leaves the hooks in with the reports as a snapshot
    /// of the counts so far, or writes the reports of a target that is gone and removes its
    /// session. A member whose reports cannot be written is held for its counts
    /// ([`Error::Held`]). The first error is returned, after every member is ended.
    pub fn end(
        self,
        ended: Ended,
        outputs: &Outputs,
        notes: &mut dyn FnMut(Note),
    ) -> Result<Outcome> {
        let mut outcome = Outcome::default();
        let mut first_err = None;
        for m in self.members {
            match end_member(m, ended, outputs, notes) {
                Ok(o) => outcome = outcome.and(o),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(outcome), Err)
    }

    /// Leaves the session as it is after a watch that failed: the hooks stay in, and a
    /// session this xcover took over has no owner again.
    pub fn abandon(self) {
        for m in &self.members {
            m.give_up();
        }
    }
}

impl Prepared {
    /// Instruments each target, or takes its session over, telling `notes` as each is done.
    /// With `--keep` ([`Plan::keep`]) a target this xcover instruments is left so at once:
    /// `None` when no member is left to watch.
    pub fn start(self, outputs: &Outputs, notes: &mut dyn FnMut(Note)) -> Result<Option<Session>> {
        let mut members = Vec::new();
        for p in self.members {
            match p {
                Pending::Fresh {
                    pid,
                    contents,
                    discovered,
                    prepared,
                } => {
                    // Before the target is touched, so that however it ends later is seen.
                    let watch = (!self.keep).then(|| Watch::start(pid));
                    let prepare =
                        |s: &SessionFile| session::write(s, &contents).map_err(|e| chain(&e));
                    let opts = AttachOptions {
                        keep: self.keep,
                        session_size: contents.layout.total,
                        prepare: Some(&prepare),
                    };
                    let att = injector::attach(pid, AGENT, &opts)
                        .map_err(Error::from)
                        .with_context(|| format!("attach to pid {pid}"))?;
                    let h = att.session().header();
                    notes(Note::Attached {
                        pid,
                        hooked: h.funcs_hooked.load(Ordering::Relaxed),
                        skipped: h.funcs_skipped.load(Ordering::Relaxed),
                        threads: att.stats.threads,
                        discovered,
                        prepared,
                        stopped: att.stats.stopped,
                        agent_call: att.stats.agent_call,
                        total: att.stats.total,
                    });
                    if self.keep {
                        att.leave();
                        notes(Note::Kept {
                            pid,
                            reports_asked: !outputs.is_empty(),
                        });
                        continue;
                    }
                    members.push(Member {
                        pid,
                        hold: Hold::Attached(att),
                        watch,
                        origin: None,
                    });
                }
                Pending::Existing { pid, file, origin } => {
                    let watch = Watch::start(pid);
                    file.header()
                        .owner_pid
                        .store(std::process::id(), Ordering::Release);
                    notes(Note::Watching { pid, origin });
                    members.push(Member {
                        pid,
                        hold: Hold::Opened(file),
                        watch: Some(watch),
                        origin: Some(origin),
                    });
                }
            }
        }
        Ok((!members.is_empty()).then_some(Session { members }))
    }
}

/// A pid with a session already there: a kept one, or one whose xcover is gone, is taken
/// over; one held for its counts, one another xcover watches, or one whose target is gone
/// is refused (bad input), saying what to do.
fn existing(pid: i32, s: SessionFile) -> Result<Pending> {
    if s.is_held() {
        return Err(BadInput(format!(
            "pid {pid}: {} holds the counts of a session whose report could not be written; \
             `xcover detach {pid} --report <file>` writes them and removes it",
            s.path()
        ))
        .into());
    }
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
    let origin = match left_by {
        _ if s.header().flags & FLAG_KEEP != 0 => Origin::Kept,
        Some(owner) => Origin::Left(owner),
        None => Origin::Unowned,
    };
    Ok(Pending::Existing {
        pid,
        file: s,
        origin,
    })
}

/// A pid to instrument: checks it, finds its functions, loads and verifies the probe, and
/// prepares the session's contents.
fn fresh(pid: i32, plan: &Plan, notes: &mut dyn FnMut(Note)) -> Result<Pending> {
    injector::procfs::check_target(pid)?;
    if let Some(owner) = carried_session(pid) {
        return Err(BadInput(format!(
            "pid {pid}: carries the hooks of pid {owner}'s session (it was forked from a \
             process while hooked); `xcover detach {owner}` takes them out of both"
        ))
        .into());
    }
    let t0 = Instant::now();
    let d = discover::discover(pid, &plan.select).map_err(|e| {
        // A target that exits while its symbols are read: say so, not which file vanished.
        match injector::procfs::stat(pid) {
            Ok(st) if !matches!(st.state, 'Z' | 'X') => e,
            _ => BadInput(format!(
                "pid {pid}: no process (it exited during discovery)"
            ))
            .into(),
        }
    })?;
    if d.functions.is_empty() {
        return Err(discover::nothing_to_hook(pid, &d));
    }
    for n in discover::stripped_warnings(pid, &d) {
        notes(n);
    }
    let discovered = t0.elapsed();
    let t1 = Instant::now();
    let probe = match &plan.probe {
        Some(p) => {
            std::fs::read(p).map_err(|e| BadInput(format!("--probe {}: {e}", p.display())))?
        }
        None => session::COVER_PROBE.to_vec(),
    };
    let source = match &plan.probe {
        Some(p) => session::ProbeSource::File(p),
        None => session::ProbeSource::Builtin,
    };
    let prog = session::load_probe(&probe, source, d.functions.len())?;
    session::verify_probe(&prog)?;
    let mut contents = session::prepare(&d, &prog, session::possible_cpus())?;
    if plan.traps && !contents.allow_traps(true) {
        notes(Note::TrapsIgnored { pid });
    }
    Ok(Pending::Fresh {
        pid,
        contents: Box::new(contents),
        discovered,
        prepared: t1.elapsed(),
    })
}

/// The pid whose session `pid` maps though it is not its own (a process forked from a
/// hooked one): attaching to it would stack a second set of hooks.
fn carried_session(pid: i32) -> Option<i32> {
    let maps = injector::procfs::mappings(pid).ok()?;
    sessions(None).into_iter().filter(|&p| p != pid).find(|&p| {
        let path = injector::session::session_path(p);
        maps.iter().any(|m| {
            m.path
                .strip_prefix(path.as_str())
                .is_some_and(|rest| rest.is_empty() || rest == " (deleted)")
        })
    })
}

fn default_report_path(pid: i32) -> PathBuf {
    PathBuf::from(format!("xcover-report-{pid}.json"))
}

/// Ends one member's watch (see [`Session::end`]).
fn end_member(
    m: Member,
    ended: Ended,
    outputs: &Outputs,
    notes: &mut dyn FnMut(Note),
) -> Result<Outcome> {
    let kept = m.origin == Some(Origin::Kept);
    let Member {
        pid, hold, watch, ..
    } = m;
    let watch = watch.as_ref();
    match hold {
        Hold::Attached(att) => match ended {
            Ended::TargetGone(what) => {
                target_ended(pid, att.session(), watch, what, outputs, notes)
            }
            Ended::Keep => {
                let written = write_reports(att.session(), true, outputs, notes);
                att.leave();
                left_kept(pid, "", written, notes)
            }
            Ended::Detach | Ended::Stopped { .. } => {
                if ended == (Ended::Stopped { timed_out: false }) {
                    notes(Note::Signalled);
                }
                detach_and_report(pid, watch, outputs, notes, |last_read| {
                    att.detach_with(AGENT, last_read)
                        .map_err(Error::from)
                        .with_context(|| format!("detach from pid {pid}"))
                })
            }
        },
        Hold::Opened(s) => {
            let mut keep = |why: &'static str| {
                let written = write_reports(&s, true, outputs, notes);
                s.header().owner_pid.store(0, Ordering::Release);
                left_kept(pid, why, written, notes)
            };
            match ended {
                Ended::Keep => keep(""),
                Ended::Stopped { timed_out: true } if kept => keep("time is up: "),
                Ended::Stopped { timed_out: false } if kept => keep("signal received: "),
                Ended::TargetGone(what) => target_ended(pid, &s, watch, what, outputs, notes),
                Ended::Detach | Ended::Stopped { .. } => {
                    drop(s);
                    detach_pid(pid, watch, outputs, notes)
                }
            }
        }
    }
}

/// Writes the reports from a reading of the session: its last one (`snapshot` false), or
/// one taken while it keeps counting. All are tried; the first failure is returned.
fn write_reports(
    s: &SessionFile,
    snapshot: bool,
    outputs: &Outputs,
    notes: &mut dyn FnMut(Note),
) -> Result<()> {
    if outputs.is_empty() {
        return Ok(());
    }
    let v = session::view(s)?;
    let r = session::report(s, &v, outputs.debug_dirs());
    outputs.write(&r, &mut |path| {
        notes(Note::Wrote {
            path: path.to_path_buf(),
            snapshot,
        })
    })
}

/// The error of a session whose reports could not be written: its counts are held in the
/// session file, and the message says where and how to get them.
fn held(e: Error, pid: i32, path: &str) -> Error {
    Error::Held {
        pid,
        path: path.to_string(),
        source: Box::new(e),
    }
}

/// The end of a watch that leaves the session kept (`why`: what ended the watch), once the
/// reports asked for were written as a snapshot of the counts so far (`written`).
fn left_kept(
    pid: i32,
    why: &'static str,
    written: Result<()>,
    notes: &mut dyn FnMut(Note),
) -> Result<Outcome> {
    notes(Note::LeftKept { pid, why });
    written?;
    Ok(Outcome::default())
}

/// The end of a session whose target is gone (`gone`, from [`injector::target_gone`]):
/// says how it ended, writes the reports from the session's counts, and removes the
/// session, or holds it if a report could not be written.
fn target_ended(
    pid: i32,
    s: &SessionFile,
    watch: Option<&Watch>,
    gone: &str,
    outputs: &Outputs,
    notes: &mut dyn FnMut(Note),
) -> Result<Outcome> {
    let end = ending::explain(pid, s, watch, gone);
    let target_killed = end.killed();
    // Processes it forked while hooked may still run with its hooks: none may keep them.
    let forks = injector::forks::clean_forks(pid, AGENT, s)
        .map_err(Error::from)
        .with_context(|| format!("clean the processes forked from pid {pid}"))?;
    if forks > 0 {
        notes(Note::ForksCleaned { pid, count: forks });
    }
    if let Err(e) = write_reports(s, false, outputs, notes) {
        s.hold()?;
        notes(Note::TargetEnded {
            pid,
            ending: end,
            removed: false,
        });
        return Err(held(e, pid, s.path()));
    }
    s.remove()?;
    notes(Note::TargetEnded {
        pid,
        ending: end,
        removed: true,
    });
    Ok(Outcome { target_killed })
}

/// Takes the hooks out with `detach` (which calls its closure once they are out, with the
/// session, and holds the session when it returns false), writing the reports; says what
/// happened. A target found gone meanwhile is explained with `watch`.
fn detach_and_report(
    pid: i32,
    watch: Option<&Watch>,
    outputs: &Outputs,
    notes: &mut dyn FnMut(Note),
    detach: impl FnOnce(&mut dyn FnMut(&SessionFile) -> bool) -> Result<injector::Stats>,
) -> Result<Outcome> {
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
        written = write_reports(s, false, outputs, notes);
        written.is_ok()
    })?;
    if st.forks > 0 {
        notes(Note::ForksCleaned {
            pid,
            count: st.forks,
        });
    }
    let target_killed = end.as_ref().is_some_and(ending::Ending::killed);
    let removed = !st.held && (st.gone.is_some() || end.is_some());
    let how = match (st.gone, end) {
        (_, Some(end)) => Detached::Ended(end),
        (Some(what), None) => Detached::Gone(what),
        (None, None) => Detached::Out {
            stopped: st.stopped,
        },
    };
    notes(Note::Detached { pid, how, removed });
    if st.held {
        let e = written
            .err()
            .unwrap_or_else(|| Error::msg("a report failed"));
        return Err(held(e, pid, &path));
    }
    Ok(Outcome { target_killed })
}

fn detach_pid(
    pid: i32,
    watch: Option<&Watch>,
    outputs: &Outputs,
    notes: &mut dyn FnMut(Note),
) -> Result<Outcome> {
    detach_and_report(pid, watch, outputs, notes, |last_read| {
        injector::detach_with(pid, AGENT, last_read)
            .map_err(Error::from)
            .with_context(|| format!("detach from pid {pid}"))
    })
}

/// `xcover detach`: takes the hooks of every process of `set` out (its kept session, one an
/// xcover left behind, or one held for its counts), writing the reports from the final
/// counts. The first error is returned, after every process is tried.
pub fn detach(set: &ProcessSet, outputs: &Outputs, notes: &mut dyn FnMut(Note)) -> Result<Outcome> {
    let mut outcome = Outcome::default();
    let mut first_err = None;
    for pid in set.pids() {
        match detach_pid(pid, None, outputs, notes) {
            Ok(o) => outcome = outcome.and(o),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    first_err.map_or(Ok(outcome), Err)
}

/// The pids with a session file, ascending; only `only` when given.
pub fn sessions(only: Option<i32>) -> Vec<i32> {
    injector::session::list_sessions()
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| only.is_none_or(|want| want == *p))
        .collect()
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

/// One line of `xcover status` for the session of `pid`: its state and what is really the
/// case (stale, owner gone, counts held), its coverage, owner and executable, and what to do.
pub fn status(pid: i32) -> Result<String> {
    let s = SessionFile::open(pid)?;
    Ok(status_line(pid, &s))
}

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
        Err(e) => format!("unreadable: {}", chain(&e)),
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
