//! Production modes: bounded overhead while watching a live session.
//!
//! - [`Mode::FirstHit`] (`--first-hit`): every function is unhooked after its first hit, so
//!   the steady-state cost is zero. Every [`BATCH_INTERVAL`] at most, the functions hooked
//!   and hit since the last batch are unhooked in one stop (the commit path of
//!   [`crate::hookset`]); each stop is measured ([`Governor::line`]).
//! - [`Mode::MaxOverhead`] (`--max-overhead PCT`): every [`RATE_INTERVAL`], the overhead
//!   xcover adds is estimated as Σ(hits of each function over the interval) × the cost of a
//!   hit ([`HIT_COST_NS`]) / the CPU time the process used over the interval; above the
//!   budget, the hottest functions (already seen, so coverage loses nothing) are unhooked
//!   until the estimate fits. The others stay hooked and exact.
//!
//! Unhooked functions keep their counts, marked as lower bounds (`hits_lower_bound` in the
//! JSON report). The governor runs in the watching xcover (the TUI's refresh, or the status
//! line's loop): a kept session that nobody watches is not governed.

use std::time::{Duration, Instant};

use xcover_injector::SessionFile;
use xcover_session::{FuncStatus, UnhookReason};

use crate::error::Result;
use crate::hookset;
use crate::session;

/// Shortest time between two first-hit batches (each is one stop of the target).
pub const BATCH_INTERVAL: Duration = Duration::from_millis(100);
/// The interval over which `--max-overhead` measures rates.
pub const RATE_INTERVAL: Duration = Duration::from_secs(1);
/// What one hit of a hooked function costs the target, in nanoseconds: the added cost per
/// hit that `scripts/bench.sh` measures on this kind of machine (3-7 ns median for the
/// three entry kinds, docs/performance.md), rounded up. A constant, not a calibration of
/// the machine at attach: the estimate errs on the side of unhooking.
pub const HIT_COST_NS: f64 = 8.0;

/// How a watched session is governed.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Mode {
    /// Count every hit (the default).
    #[default]
    Count,
    /// Unhook each function after its first hit (`--first-hit`).
    FirstHit,
    /// Keep the estimated overhead under this many percent (`--max-overhead`).
    MaxOverhead(f64),
}

/// The governor of one member's session: what it did so far.
#[derive(Debug, Default)]
pub struct Governor {
    mode: Mode,
    last_batch: Option<Instant>,
    /// Batches run, functions unhooked, the last and the longest stop.
    pub batches: u64,
    /// Functions unhooked by the governor.
    pub unhooked: u64,
    /// The last batch's stop of the target.
    pub last_stop: Duration,
    /// The longest stop.
    pub max_stop: Duration,
    /// The functions of the last batch.
    pub last_funcs: u64,
    /// The last overhead estimate, in percent (`--max-overhead`).
    pub estimate: Option<f64>,
    /// Counts and CPU ticks at the start of the current rate interval.
    rate_start: Option<(Instant, Vec<u64>, u64)>,
    /// The first error, told once.
    pub error: Option<String>,
}

impl Governor {
    /// A governor in `mode`.
    pub fn new(mode: Mode) -> Governor {
        Governor {
            mode,
            ..Governor::default()
        }
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// One step: unhooks what the mode says is due, at most once per interval. Cheap when
    /// nothing is due.
    pub fn step(&mut self, pid: i32, s: &SessionFile) {
        if self.error.is_some() {
            return;
        }
        let r = match self.mode {
            Mode::Count => Ok(()),
            Mode::FirstHit => self.first_hit(pid, s),
            Mode::MaxOverhead(pct) => self.overhead(pid, s, pct),
        };
        if let Err(e) = r {
            self.error = Some(crate::error::chain(&e));
        }
    }

    fn record(&mut self, c: hookset::Change) {
        if c.funcs == 0 && c.stopped.is_zero() {
            return;
        }
        self.batches += 1;
        self.unhooked += c.funcs;
        self.last_funcs = c.funcs;
        self.last_stop = c.stopped;
        self.max_stop = self.max_stop.max(c.stopped);
    }

    fn first_hit(&mut self, pid: i32, s: &SessionFile) -> Result<()> {
        if self
            .last_batch
            .is_some_and(|t| t.elapsed() < BATCH_INTERVAL)
        {
            return Ok(());
        }
        let table = s.funcs()?;
        let hits = session::hits(s)?;
        let due: Vec<usize> = table
            .iter()
            .zip(&hits)
            .enumerate()
            .filter(|(_, (f, n))| **n > 0 && f.status() == Some(FuncStatus::Hooked))
            .map(|(i, _)| i)
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        self.last_batch = Some(Instant::now());
        let c = hookset::unhook(pid, s, &due, UnhookReason::FirstHit)?;
        self.record(c);
        Ok(())
    }

    fn overhead(&mut self, pid: i32, s: &SessionFile, budget: f64) -> Result<()> {
        let now = Instant::now();
        let cpu = xcover_injector::procfs::stat(pid)?.cpu_ticks;
        let Some((t0, c0, cpu0)) = &self.rate_start else {
            // The hooks went in just before: every count so far belongs to this interval.
            self.rate_start = Some((now, Vec::new(), cpu));
            return Ok(());
        };
        if now.duration_since(*t0) < RATE_INTERVAL {
            return Ok(());
        }
        let hits = session::hits(s)?;
        let table = s.funcs()?;
        // Hits over the interval, of functions still hooked (the others cost nothing now).
        let mut delta: Vec<(u64, usize)> = hits
            .iter()
            .zip(c0.iter().chain(std::iter::repeat(&0)))
            .enumerate()
            .filter(|(i, _)| {
                table
                    .get(*i)
                    .is_some_and(|f| f.status() == Some(FuncStatus::Hooked))
            })
            .map(|(i, (n, n0))| (n.saturating_sub(*n0), i))
            .filter(|(d, _)| *d > 0)
            .collect();
        let cpu_ns = cpu.saturating_sub(*cpu0) as f64 * 1e9 / clock_ticks() as f64;
        // A process that used less than a tick: the interval's wall time bounds its CPU.
        let cpu_ns = cpu_ns.max(1e9 / clock_ticks() as f64);
        let cost = |d: u64| d as f64 * HIT_COST_NS * 100.0 / cpu_ns;
        let mut estimate: f64 = delta.iter().map(|(d, _)| cost(*d)).sum();
        self.rate_start = Some((now, hits, cpu));
        if estimate > budget {
            delta.sort_unstable_by_key(|&(d, _)| std::cmp::Reverse(d));
            let mut chosen = Vec::new();
            for (d, i) in delta {
                if estimate <= budget {
                    break;
                }
                estimate -= cost(d);
                chosen.push(i);
            }
            let c = hookset::unhook(pid, s, &chosen, UnhookReason::Overhead)?;
            self.record(c);
        }
        self.estimate = Some(estimate.max(0.0));
        Ok(())
    }

    /// What the governor did, for the status line and the TUI: empty in count mode.
    pub fn line(&self) -> String {
        let stops = |g: &Governor| {
            format!(
                "{} unhooked in {} stop(s), last {} in {:.2} ms, longest {:.2} ms",
                g.unhooked,
                g.batches,
                g.last_funcs,
                g.last_stop.as_secs_f64() * 1e3,
                g.max_stop.as_secs_f64() * 1e3
            )
        };
        let mut l = match self.mode {
            Mode::Count => return String::new(),
            Mode::FirstHit => format!("first-hit: {}", stops(self)),
            Mode::MaxOverhead(b) => match self.estimate {
                Some(e) => format!("overhead ~{e:.2}% (budget {b}%): {}", stops(self)),
                None => format!("overhead: measuring (budget {b}%)"),
            },
        };
        if let Some(e) = &self.error {
            l.push_str(&format!("; stopped governing: {e}"));
        }
        l
    }
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`; 100 on Linux x86-64).
fn clock_ticks() -> u64 {
    xcover_injector::procfs::clock_ticks()
}
