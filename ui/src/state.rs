//! The TUI's state: the function table with rates, the sorted and filtered view of it, the
//! event log, the hits/s history and what the user has asked for. Changed only by
//! [`App::update`] (new data) and the input handlers in `input.rs`; read by `draw.rs`.

use std::collections::VecDeque;
use std::time::Duration;

use crate::draw;
use crate::model::{Event, Snapshot};

/// How far back hits/s looks: rates are "hits in the last second".
const RATE_WINDOW: Duration = Duration::from_secs(1);
/// Samples of total hits/s kept for the sparkline.
const HISTORY_LEN: usize = 512;
/// Lines kept in the event log.
const LOG_LEN: usize = 2000;

/// Column the table is sorted by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortKey {
    /// Hit count, most first.
    Hits,
    /// Hits per second, fastest first.
    Rate,
    /// Name, A to Z.
    Name,
    /// Time of first hit, newest first; never-hit functions last.
    FirstHit,
}

impl SortKey {
    /// The direction a key starts in when chosen.
    fn default_descending(self) -> bool {
        !matches!(self, SortKey::Name)
    }
}

/// Which functions the table shows, on top of the text filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Show {
    /// Every function.
    All,
    /// Only functions hit at least once.
    Hit,
    /// Only functions never hit.
    NeverHit,
}

/// What the keyboard currently drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Navigation and commands.
    Normal,
    /// Typing the filter after `/`.
    Filter,
    /// The `?` overlay.
    Help,
}

/// One function's row data.
#[derive(Debug)]
pub(crate) struct Func {
    pub(crate) name: String,
    /// Lowercase name for case-insensitive filtering, computed once.
    lower: String,
    /// Index into [`App::modules`].
    pub(crate) module: u32,
    /// How it is hooked (`jmp`, `jmp8`, `trap`, or empty).
    pub(crate) hook: String,
    pub(crate) hits: u64,
    /// Hits in the last [`RATE_WINDOW`], per second.
    pub(crate) rate: f64,
    pub(crate) first_hit: Option<Duration>,
}

/// A line of the event log.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum LogLine {
    FirstHit { function: u32, at: Duration },
    Skipped { name: String, reason: String },
    Warning(String),
    Info(String),
    Error(String),
}

/// Hit counts at one instant, for rates.
#[derive(Debug)]
struct Sample {
    at: Duration,
    total: u64,
    hits: Vec<u64>,
}

/// Everything the TUI knows and shows. [`run`](crate::run) drives it; it is public so that
/// other front ends and tests can drive it too: feed it with [`update`](App::update) and
/// [`handle_key`](App::handle_key), tell it the terminal size with [`resize`](App::resize),
/// and render it with [`draw`](App::draw).
#[derive(Debug)]
pub struct App {
    pub(crate) color: bool,
    // Header.
    pub(crate) pid: u32,
    pub(crate) exe: String,
    pub(crate) hooked: u64,
    pub(crate) skipped: u64,
    pub(crate) trapped: u64,
    /// Whether any function's hook kind is known (the table then has a `hook` column).
    pub(crate) hooks_known: bool,
    pub(crate) dropped: u64,
    pub(crate) mode_line: String,
    pub(crate) attached_for: Duration,
    pub(crate) total_rate: f64,
    pub(crate) peak_rate: f64,
    pub(crate) hit_functions: usize,
    /// Total hits/s, one sample per update, newest last.
    pub(crate) history: VecDeque<u64>,
    // Table.
    pub(crate) funcs: Vec<Func>,
    pub(crate) modules: Vec<String>,
    modules_lower: Vec<String>,
    samples: VecDeque<Sample>,
    spare: Vec<Vec<u64>>,
    /// Every function, in sort order. Kept between updates so re-sorting is a pass of an
    /// adaptive sort over an almost sorted vector.
    order: Vec<u32>,
    /// Scratch for sorting: the primary key of each function, by index.
    primary: Vec<u64>,
    /// Scratch for sorting: `(primary << 32) | index` for each entry of `order`.
    keyed: Vec<u128>,
    /// Scratch for filtering: whether each function (by index) is shown.
    shown: Vec<bool>,
    /// Position of each function in name order; computed when first needed.
    name_rank: Vec<u32>,
    /// Key, direction and table size `order` was last sorted for.
    sorted_for: Option<(SortKey, bool, usize)>,
    /// `order` less what the filters hide: the rows of the table.
    pub(crate) view: Vec<u32>,
    /// Whether each function's name or module contains the filter text.
    matches: Vec<bool>,
    /// The filter text `matches` was computed for.
    matched_for: String,
    pub(crate) sort: SortKey,
    pub(crate) descending: bool,
    pub(crate) show: Show,
    pub(crate) filter: String,
    pub(crate) mode: Mode,
    /// Index into `view` of the highlighted row.
    pub(crate) selected: usize,
    /// Index into `view` of the first row on screen.
    pub(crate) offset: usize,
    /// Rows of the table on screen, from the last [`App::resize`].
    pub(crate) page: usize,
    // Log.
    pub(crate) log: VecDeque<LogLine>,
    /// Set when the source said the session is over.
    pub(crate) ended: Option<String>,
}

impl App {
    /// An empty app; `color: false` draws without any colour (for `NO_COLOR`).
    pub fn new(color: bool) -> Self {
        let mut app = Self {
            color,
            pid: 0,
            exe: String::new(),
            hooked: 0,
            skipped: 0,
            trapped: 0,
            hooks_known: false,
            dropped: 0,
            mode_line: String::new(),
            attached_for: Duration::ZERO,
            total_rate: 0.0,
            peak_rate: 0.0,
            hit_functions: 0,
            history: VecDeque::with_capacity(HISTORY_LEN),
            funcs: Vec::new(),
            modules: Vec::new(),
            modules_lower: Vec::new(),
            samples: VecDeque::new(),
            spare: Vec::new(),
            order: Vec::new(),
            primary: Vec::new(),
            keyed: Vec::new(),
            shown: Vec::new(),
            name_rank: Vec::new(),
            sorted_for: None,
            view: Vec::new(),
            matches: Vec::new(),
            matched_for: String::new(),
            sort: SortKey::Hits,
            descending: true,
            show: Show::All,
            filter: String::new(),
            mode: Mode::Normal,
            selected: 0,
            offset: 0,
            page: 1,
            log: VecDeque::new(),
            ended: None,
        };
        app.resize(80, 24);
        app
    }

    /// Tells the app the terminal's size, so paging moves by a screenful.
    pub fn resize(&mut self, width: u16, height: u16) {
        self.page = draw::table_rows(width, height).max(1);
        self.scroll_to_selection();
    }

    /// Takes in a new snapshot: appends new functions, updates counts and rates, logs the
    /// events, then re-sorts and re-filters the table.
    pub fn update(&mut self, snap: Snapshot) {
        self.pid = snap.pid;
        self.exe = snap.exe;
        self.hooked = snap.functions_hooked;
        self.skipped = snap.functions_skipped;
        self.trapped = snap.functions_trapped;
        self.dropped = snap.dropped_events;
        self.mode_line = snap.mode_line;
        let now = snap.attached_for;
        self.attached_for = now;

        for f in snap.new_functions {
            let module = match self.modules.iter().position(|m| *m == f.module) {
                Some(i) => i,
                None => {
                    self.modules_lower.push(f.module.to_lowercase());
                    self.modules.push(f.module);
                    self.modules.len() - 1
                }
            };
            let index = self.funcs.len() as u32;
            self.hooks_known |= !f.hook.is_empty();
            let lower = f.name.to_lowercase();
            let matched = self.filter_matches(&lower, module, &self.matched_for);
            self.matches.push(matched);
            self.funcs.push(Func {
                name: f.name,
                lower,
                module: module as u32,
                hook: f.hook,
                hits: 0,
                rate: 0.0,
                first_hit: None,
            });
            self.order.push(index);
        }

        for event in snap.events {
            let line = match event {
                Event::FirstHit { function, at } => {
                    let Some(f) = self.funcs.get_mut(function) else {
                        continue;
                    };
                    f.first_hit = Some(f.first_hit.map_or(at, |t| t.min(at)));
                    LogLine::FirstHit {
                        function: function as u32,
                        at,
                    }
                }
                Event::Skipped { name, reason } => LogLine::Skipped { name, reason },
                Event::Warning(w) => LogLine::Warning(w),
            };
            self.push_log(line);
        }

        let mut total = 0u64;
        let mut hit_functions = 0;
        for (f, &h) in self.funcs.iter_mut().zip(&snap.hits) {
            f.hits = h;
        }
        for f in &mut self.funcs {
            total = total.wrapping_add(f.hits);
            if f.hits > 0 {
                hit_functions += 1;
                // The first-hit event may have been dropped: the first snapshot that shows
                // the hit is the best estimate left.
                f.first_hit.get_or_insert(now);
            }
        }
        self.hit_functions = hit_functions;
        self.update_rates(now, total);
        self.refresh_view();
    }

    /// Records that the source is over; the app keeps showing the last data.
    pub fn source_ended(&mut self, reason: String) {
        self.push_log(LogLine::Error(reason.clone()));
        self.ended = Some(reason);
        // Nothing is counted any more: rates would only be stale.
        self.total_rate = 0.0;
        for f in &mut self.funcs {
            f.rate = 0.0;
        }
    }

    /// Shows the result of writing the report.
    pub fn report_written(&mut self, result: Result<String, String>) {
        self.push_log(match result {
            Ok(path) => LogLine::Info(format!("report written to {path}")),
            Err(e) => LogLine::Error(format!("report failed: {e}")),
        });
    }

    /// Whether the source has ended (no more snapshots are wanted).
    pub fn has_ended(&self) -> bool {
        self.ended.is_some()
    }

    /// Number of rows the table shows with the current filters.
    pub fn visible_functions(&self) -> usize {
        self.view.len()
    }

    fn push_log(&mut self, line: LogLine) {
        if self.log.len() == LOG_LEN {
            self.log.pop_front();
        }
        self.log.push_back(line);
    }

    /// Rates are the hits between the oldest sample at most [`RATE_WINDOW`] old and now.
    fn update_rates(&mut self, now: Duration, total: u64) {
        if let Some(last) = self.samples.back()
            && now <= last.at
        {
            return; // no time has passed (or the clock went back): rates stay as they were
        }
        while self.samples.len() >= 2 && self.samples[1].at + RATE_WINDOW <= now {
            if let Some(old) = self.samples.pop_front() {
                self.spare.push(old.hits);
            }
        }
        if let Some(base) = self.samples.front() {
            let dt = (now - base.at).as_secs_f64();
            for (f, &then) in self.funcs.iter_mut().zip(&base.hits) {
                f.rate = f.hits.saturating_sub(then) as f64 / dt;
            }
            // Functions that appeared since the base sample count from zero.
            for f in self.funcs.iter_mut().skip(base.hits.len()) {
                f.rate = f.hits as f64 / dt;
            }
            self.total_rate = total.saturating_sub(base.total) as f64 / dt;
        }
        self.peak_rate = self.peak_rate.max(self.total_rate);
        if self.history.len() == HISTORY_LEN {
            self.history.pop_front();
        }
        self.history.push_back(self.total_rate.round() as u64);

        let mut hits = self.spare.pop().unwrap_or_default();
        hits.clear();
        hits.extend(self.funcs.iter().map(|f| f.hits));
        self.samples.push_back(Sample {
            at: now,
            total,
            hits,
        });
    }

    fn filter_matches(&self, lower_name: &str, module: usize, query: &str) -> bool {
        query.is_empty()
            || lower_name.contains(query)
            || self
                .modules_lower
                .get(module)
                .is_some_and(|m| m.contains(query))
    }

    /// Recomputes which names match the filter text. When the new text contains the old one
    /// (the user typed another character), only the current matches can still match.
    fn refilter_text(&mut self) {
        let query = self.filter.to_lowercase();
        if query == self.matched_for {
            return;
        }
        let narrowing = query.contains(self.matched_for.as_str());
        let mut matches = std::mem::take(&mut self.matches);
        for (i, m) in matches.iter_mut().enumerate() {
            if narrowing && !*m {
                continue;
            }
            let f = &self.funcs[i];
            *m = self.filter_matches(&f.lower, f.module as usize, &query);
        }
        self.matches = matches;
        self.matched_for = query;
    }

    /// The primary sort key of function `i` as an integer, smaller first. Combined with the
    /// index into `(primary << 32) | index` it orders ties by table position; comparing plain
    /// integers in a contiguous vector is what keeps a 100 000-row re-sort cheap.
    fn primary_key(&self, i: usize, f: &Func) -> u64 {
        let desc = self.descending;
        let flip = |k: u64| if desc { !k } else { k };
        match self.sort {
            SortKey::Hits => flip(f.hits),
            // Rates are never negative, and the bits of non-negative floats sort like them.
            SortKey::Rate => flip(f.rate.max(0.0).to_bits()),
            SortKey::Name => flip(u64::from(self.name_rank[i])),
            // Never-hit functions last in both directions.
            SortKey::FirstHit => match f.first_hit {
                None => u64::MAX,
                Some(t) => {
                    let ns = u64::try_from(t.as_nanos())
                        .unwrap_or(u64::MAX)
                        .min(u64::MAX - 1);
                    if desc { u64::MAX - 1 - ns } else { ns }
                }
            },
        }
    }

    /// Ranks the names once (they never change), so sorting by name compares integers.
    fn rank_names(&mut self) {
        if self.name_rank.len() == self.funcs.len() {
            return;
        }
        let mut by_name: Vec<u32> = (0..self.funcs.len() as u32).collect();
        let funcs = &self.funcs;
        by_name.sort_unstable_by(|&a, &b| {
            funcs[a as usize]
                .name
                .cmp(&funcs[b as usize].name)
                .then(a.cmp(&b))
        });
        self.name_rank.resize(funcs.len(), 0);
        for (rank, &i) in by_name.iter().enumerate() {
            self.name_rank[i as usize] = rank as u32;
        }
    }

    /// Re-sorts `order` and rebuilds `view`. The previous order is the starting point, so the
    /// stable, run-detecting sort does little work when few values changed.
    pub(crate) fn refresh_view(&mut self) {
        self.refilter_text();
        if self.sort == SortKey::Name {
            self.rank_names();
        }
        // Names never change: a name order stays right until functions are added.
        let sorted_for = (self.sort, self.descending, self.funcs.len());
        if self.sort != SortKey::Name || self.sorted_for != Some(sorted_for) {
            self.sort_order_now();
            self.sorted_for = Some(sorted_for);
        }
        self.rebuild_view();
    }

    /// Sorts `order` by the current key.
    fn sort_order_now(&mut self) {
        // Keys are computed in table order (a sequential pass over the functions), then
        // gathered in the previous sort order, which is nearly sorted for the stable sort.
        let mut primary = std::mem::take(&mut self.primary);
        primary.clear();
        primary.extend(
            self.funcs
                .iter()
                .enumerate()
                .map(|(i, f)| self.primary_key(i, f)),
        );
        let mut keyed = std::mem::take(&mut self.keyed);
        keyed.clear();
        keyed.extend(
            self.order
                .iter()
                .map(|&i| (u128::from(primary[i as usize]) << 32) | u128::from(i)),
        );
        keyed.sort();
        self.primary = primary;
        self.order.clear();
        self.order.extend(keyed.iter().map(|&k| k as u32));
        self.keyed = keyed;
    }

    /// Rebuilds `view` from `order` and the filters.
    fn rebuild_view(&mut self) {
        let show = self.show;
        let visible = |f: &Func, matched: bool| {
            matched
                && match show {
                    Show::All => true,
                    Show::Hit => f.hits > 0,
                    Show::NeverHit => f.hits == 0,
                }
        };
        let mut shown = std::mem::take(&mut self.shown);
        shown.clear();
        shown.extend(
            self.funcs
                .iter()
                .zip(&self.matches)
                .map(|(f, &m)| visible(f, m)),
        );
        self.view.clear();
        self.view
            .extend(self.order.iter().copied().filter(|&i| shown[i as usize]));
        self.shown = shown;
        self.selected = self.selected.min(self.view.len().saturating_sub(1));
        self.scroll_to_selection();
    }

    /// Moves the selection by `delta` rows, clamped to the table.
    pub(crate) fn move_selection(&mut self, delta: isize) {
        let last = self.view.len().saturating_sub(1);
        self.selected = self.selected.saturating_add_signed(delta).min(last);
        self.scroll_to_selection();
    }

    pub(crate) fn select_first(&mut self) {
        self.selected = 0;
        self.scroll_to_selection();
    }

    pub(crate) fn select_last(&mut self) {
        self.selected = self.view.len().saturating_sub(1);
        self.scroll_to_selection();
    }

    /// Keeps the selected row on screen, and the screen full when the table allows it.
    fn scroll_to_selection(&mut self) {
        if self.selected < self.offset {
            self.offset = self.selected;
        } else if self.selected >= self.offset + self.page {
            self.offset = self.selected + 1 - self.page;
        }
        self.offset = self.offset.min(self.view.len().saturating_sub(self.page));
    }

    /// Sorts by `key`; choosing the current key again flips the direction.
    pub(crate) fn sort_by(&mut self, key: SortKey) {
        if self.sort == key {
            self.descending = !self.descending;
        } else {
            self.sort = key;
            self.descending = key.default_descending();
        }
        self.refresh_view();
    }

    /// Switches to `show`, or back to all when it is already on.
    pub(crate) fn toggle_show(&mut self, show: Show) {
        self.show = if self.show == show { Show::All } else { show };
        self.selected = 0;
        self.refresh_view();
    }

    pub(crate) fn set_filter(&mut self, text: String) {
        self.filter = text;
        self.selected = 0;
        self.refresh_view();
    }

    /// The function on the highlighted row.
    pub fn selected_function(&self) -> Option<&str> {
        let i = *self.view.get(self.selected)?;
        Some(&self.funcs[i as usize].name)
    }

    /// The sort key and whether it runs from largest to smallest.
    pub fn sort_order(&self) -> (SortKey, bool) {
        (self.sort, self.descending)
    }

    /// What the keyboard drives now.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The table's filters: text and hit state.
    pub fn filters(&self) -> (&str, Show) {
        (&self.filter, self.show)
    }

    /// Coverage in percent: functions hit / functions in the table.
    pub(crate) fn coverage(&self) -> f64 {
        if self.funcs.is_empty() {
            0.0
        } else {
            self.hit_functions as f64 * 100.0 / self.funcs.len() as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Function;

    fn snap(at_ms: u64, new: &[&str], hits: &[u64]) -> Snapshot {
        Snapshot {
            pid: 1,
            exe: "/bin/t".into(),
            attached_for: Duration::from_millis(at_ms),
            new_functions: new.iter().map(|n| Function::new(*n, "t")).collect(),
            hits: hits.to_vec(),
            ..Snapshot::default()
        }
    }

    fn names(app: &App) -> Vec<&str> {
        app.view
            .iter()
            .map(|&i| app.funcs[i as usize].name.as_str())
            .collect()
    }

    #[test]
    fn rates_come_from_the_last_second() {
        let mut app = App::new(false);
        app.update(snap(0, &["a", "b"], &[0, 0]));
        app.update(snap(500, &[], &[50, 0]));
        assert_eq!(app.funcs[0].rate, 100.0);
        app.update(snap(1000, &[], &[100, 10]));
        assert_eq!(app.funcs[0].rate, 100.0);
        assert_eq!(app.funcs[1].rate, 10.0);
        // The sample at 0 ms is now more than a second old and the one at 500 ms the base.
        app.update(snap(1500, &[], &[100, 10]));
        assert_eq!(app.funcs[0].rate, 50.0);
        assert_eq!(app.total_rate, 60.0);
    }

    #[test]
    fn first_hit_falls_back_to_snapshot_time_and_events_win() {
        let mut app = App::new(false);
        app.update(snap(0, &["a", "b"], &[0, 0]));
        app.update(snap(300, &[], &[1, 0]));
        assert_eq!(app.funcs[0].first_hit, Some(Duration::from_millis(300)));
        let mut s = snap(400, &[], &[2, 1]);
        s.events.push(Event::FirstHit {
            function: 0,
            at: Duration::from_millis(120),
        });
        app.update(s);
        assert_eq!(app.funcs[0].first_hit, Some(Duration::from_millis(120)));
        assert_eq!(app.funcs[1].first_hit, Some(Duration::from_millis(400)));
    }

    #[test]
    fn sorting_and_ties_are_deterministic() {
        let mut app = App::new(false);
        app.update(snap(0, &["c", "a", "b", "d"], &[5, 0, 5, 9]));
        assert_eq!(names(&app), ["d", "c", "b", "a"]);
        app.sort_by(SortKey::Name);
        assert_eq!(names(&app), ["a", "b", "c", "d"]);
        app.sort_by(SortKey::Name);
        assert_eq!(names(&app), ["d", "c", "b", "a"]);
        app.sort_by(SortKey::Hits);
        assert_eq!(names(&app), ["d", "c", "b", "a"]);
        app.sort_by(SortKey::FirstHit);
        // All hit ones share the same first-hit time: table order; never hit last.
        assert_eq!(names(&app), ["c", "b", "d", "a"]);
    }

    #[test]
    fn narrowing_and_widening_filters() {
        let mut app = App::new(false);
        app.update(snap(0, &["parse_a", "parse_b", "print"], &[0, 1, 0]));
        app.set_filter("p".into());
        assert_eq!(app.view.len(), 3);
        app.set_filter("pa".into());
        assert_eq!(app.view.len(), 2);
        app.set_filter("PARSE_B".into());
        assert_eq!(names(&app), ["parse_b"]);
        app.set_filter("pr".into());
        assert_eq!(names(&app), ["print"]);
        app.set_filter(String::new());
        app.toggle_show(Show::NeverHit);
        assert_eq!(names(&app), ["parse_a", "print"]);
        app.toggle_show(Show::Hit);
        assert_eq!(names(&app), ["parse_b"]);
        app.toggle_show(Show::Hit);
        assert_eq!(app.view.len(), 3);
    }

    #[test]
    fn functions_added_later_join_filter_and_rates() {
        let mut app = App::new(false);
        app.set_filter("x".into());
        app.update(snap(0, &["x1", "y1"], &[0, 0]));
        app.update(snap(1000, &["x2"], &[1, 1, 4]));
        assert_eq!(names(&app), ["x2", "x1"]);
        assert_eq!(app.funcs[2].rate, 4.0);
    }
}
