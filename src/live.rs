//! Watching a live session: the TUI's [`Source`] and the one-line status of `--no-tui`, both
//! read from the session's shared memory while the target runs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::error::{Result, bail, chain};
use xcover_bpf::maps::ArenaMaps;
use xcover_injector::SessionFile;
use xcover_session::{FirstHit, FuncStatus};
use xcover_ui::{Event, Function, Snapshot, Source};

use crate::govern::{Governor, Mode};
use crate::session;

/// Reads a live session for the TUI or the status line.
pub struct Live<'a> {
    session: &'a SessionFile,
    pid: i32,
    since: Instant,
    /// Cookie (function table index) → row in the UI table (hooked functions only).
    rows: HashMap<u64, usize>,
    /// Functions already sent to the UI, in row order (cookies).
    sent: Vec<u64>,
    skipped_told: bool,
    report_path: PathBuf,
    debug_dirs: Vec<PathBuf>,
    last_total: u64,
    last_at: Instant,
    /// Set once the target is gone: every later snapshot fails with this.
    ended: Option<String>,
    /// The last reading. Names and statuses are read again only when the session's
    /// hooked/skipped counters move; every refresh reads the counts.
    cache: Option<session::View>,
    /// `funcs_hooked + funcs_skipped` when `cache` was last read whole.
    cache_key: u64,
    /// The production mode's governor.
    governor: Governor,
    /// First hits read by [`Live::tick`] and not yet given to the TUI.
    fresh_hits: Vec<FirstHit>,
}

impl<'a> Live<'a> {
    /// Looks for separate debug files in `dirs` (then `/usr/lib/debug`) for the source
    /// lines of the reports it writes.
    pub fn with_debug_dirs(mut self, dirs: &[PathBuf]) -> Self {
        self.debug_dirs = dirs.to_vec();
        self
    }

    /// Watches `session` of `pid`; `report_path` is where the TUI's "write report" key goes.
    pub fn new(session: &'a SessionFile, pid: i32, report_path: PathBuf) -> Self {
        let now = Instant::now();
        Live {
            session,
            pid,
            since: now,
            rows: HashMap::new(),
            sent: Vec::new(),
            skipped_told: false,
            report_path,
            debug_dirs: Vec::new(),
            last_total: 0,
            last_at: now,
            ended: None,
            cache: None,
            cache_key: u64::MAX,
            governor: Governor::new(Mode::Count),
            fresh_hits: Vec::new(),
        }
    }

    /// Governs the session in `mode` (`--first-hit`, `--max-overhead`).
    pub fn with_mode(mut self, mode: Mode) -> Self {
        self.governor = Governor::new(mode);
        self
    }

    /// The governor: what the production mode did so far.
    pub fn governor(&self) -> &Governor {
        &self.governor
    }

    /// One step of the watch, as often as the caller likes (the TUI's refresh, the status
    /// line's loop): reads the first-hit events, then lets the production mode unhook what
    /// is due.
    pub fn tick(&mut self) {
        let hits = self.first_hits();
        self.fresh_hits.extend(hits);
        self.governor.step(self.pid, self.session);
    }

    /// Brings `cache` up to date: the whole session when functions were hooked or skipped
    /// since the last reading (or on the first call), the counts otherwise; says whether it
    /// read the whole session. With 100 000 functions, reading names every tick cost a
    /// third of a core.
    fn refresh(&mut self) -> Result<bool> {
        let h = self.session.header();
        let key = h.funcs_hooked.load(std::sync::atomic::Ordering::Acquire)
            + h.funcs_skipped.load(std::sync::atomic::Ordering::Acquire);
        match &mut self.cache {
            Some(v) if key == self.cache_key => {
                let hits = session::hits(self.session)?;
                for (f, n) in v.funcs.iter_mut().zip(hits) {
                    f.hits = n;
                }
                v.dropped = session::dropped(self.session)?;
                Ok(false)
            }
            _ => {
                self.cache = Some(session::view(self.session)?);
                self.cache_key = key;
                Ok(true)
            }
        }
    }

    /// Whether the target still runs (same process, not a recycled pid).
    pub fn target_alive(&self) -> bool {
        (self.alive_check())()
    }

    /// A check of the target's liveness that outlives this reader.
    ///
    /// A target that execed counts as gone: its new image has no agent and no hooks.
    pub fn alive_check(&self) -> impl Fn() -> bool + use<> {
        let h = self.session.header();
        let (pid, start) = (self.pid, h.target_start_time);
        let map_addr = h.target_map_addr.load(std::sync::atomic::Ordering::Acquire);
        let path = self.session.path().to_string();
        move || xcover_injector::target_gone_at(pid, start, map_addr, &path).is_none()
    }

    /// One line for `--no-tui`: hooked/skipped, coverage, hits/s.
    pub fn status_line(&mut self) -> Result<String> {
        self.refresh()?;
        let Some(v) = &self.cache else {
            bail!("pid {}: the session could not be read", self.pid);
        };
        let total = v.total_hits();
        let now = Instant::now();
        let dt = now.duration_since(self.last_at).as_secs_f64().max(1e-3);
        let rate = total.saturating_sub(self.last_total) as f64 / dt;
        self.last_total = total;
        self.last_at = now;
        let kinds = v.hook_counts();
        let mut line = format!(
            "xcover: pid {} {:.0}s: {} hooked, {} skipped, {} hit ({:.1}%), {:.0} hits/s, \
             hooks jmp {} jmp8 {} trap {}, {} dropped",
            self.pid,
            self.since.elapsed().as_secs_f64(),
            v.hooked,
            v.skipped,
            v.hit_funcs(),
            v.coverage(),
            rate,
            kinds[0],
            kinds[1],
            kinds[2],
            v.dropped
        );
        let mode = self.governor.line();
        if !mode.is_empty() {
            line.push_str(", ");
            line.push_str(&mode);
        }
        Ok(line)
    }

    /// The first hits the probe sent since the last call (the session's events ring buffer,
    /// which this reader consumes).
    fn first_hits(&self) -> Vec<FirstHit> {
        let h = self.session.header();
        let Ok(Some(off)) = self.session.map_offset(h.events_map) else {
            return vec![];
        };
        let mut out = Vec::new();
        let _ = self.session.with_arena(|a| {
            if let Ok(m) = a.map(off) {
                m.ringbuf_consume(|rec| out.extend(FirstHit::from_record(rec)));
            }
        });
        out
    }
}

impl Source for Live<'_> {
    fn snapshot(&mut self) -> Result<Snapshot, String> {
        if let Some(why) = &self.ended {
            return Err(why.clone());
        }
        if !self.target_alive() {
            let why = format!("pid {} exited", self.pid);
            self.ended = Some(why.clone());
            return Err(why);
        }
        self.tick();
        let whole = self.refresh().map_err(|e| chain(&e))?;
        let Some(v) = &self.cache else {
            return Err("the session could not be read".into());
        };
        let mut snap = Snapshot {
            pid: self.pid as u32,
            exe: v.modules.first().cloned().unwrap_or_default(),
            functions_hooked: v.hooked,
            functions_skipped: v.skipped,
            functions_trapped: v.hook_counts()[2],
            dropped_events: v.dropped,
            attached_for: self.since.elapsed(),
            mode_line: self.governor.line(),
            ..Default::default()
        };
        let several = v.modules.len() > 1;
        // New rows only appear when the table itself was read again.
        for (cookie, f) in v.funcs.iter().enumerate().filter(|_| whole) {
            let cookie = cookie as u64;
            let measured = f.entry.is_hooked() || f.entry.hits_lower_bound();
            if measured && !self.rows.contains_key(&cookie) {
                self.rows.insert(cookie, self.sent.len());
                self.sent.push(cookie);
                let module = if several {
                    v.module_name(f.entry.module_index() as usize)
                } else {
                    String::new()
                };
                let name = crate::discover::demangle(&f.name).unwrap_or_else(|| f.name.clone());
                snap.new_functions
                    .push(Function::new(name, module).with_hook(f.hook().unwrap_or_default()));
            }
        }
        if !self.skipped_told {
            for f in v
                .funcs
                .iter()
                .filter(|f| f.entry.status == FuncStatus::Skipped as u32)
            {
                snap.events.push(Event::Skipped {
                    name: crate::discover::demangle(&f.name).unwrap_or_else(|| f.name.clone()),
                    reason: f.skip_reason().unwrap_or_default(),
                });
            }
            self.skipped_told = true;
        }
        snap.hits = self
            .sent
            .iter()
            .map(|&c| v.funcs.get(c as usize).map_or(0, |f| f.hits))
            .collect();
        let base = self
            .session
            .header()
            .hooked_at_ns
            .load(std::sync::atomic::Ordering::Relaxed);
        for hit in std::mem::take(&mut self.fresh_hits) {
            if let Some(&row) = self.rows.get(&hit.cookie) {
                snap.events.push(Event::FirstHit {
                    function: row,
                    at: Duration::from_nanos(hit.ts_ns.saturating_sub(base)),
                });
            }
        }
        Ok(snap)
    }

    fn write_report(&mut self) -> Result<String, String> {
        let v = session::view(self.session).map_err(|e| chain(&e))?;
        let r = session::report(self.session, &v, &self.debug_dirs);
        crate::report::JSON
            .write_to(&r, &self.report_path)
            .map_err(|e| chain(&e))?;
        Ok(self.report_path.display().to_string())
    }
}
