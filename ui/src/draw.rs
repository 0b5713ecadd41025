//! Drawing: a pure function of [`App`] (it takes `&self`). Only the visible rows of the table
//! are turned into widgets, so the cost of a frame does not grow with the table.
//!
//! ```text
//!  xcover  pid 4242  /usr/bin/target                              attached 0:01:23   title
//!  hooked 12000  skipped 31  dropped 0          ▂▃▅▇█▇▅▃▂▁▂▃▅▇█▇▅▃▂▁▂▃▅▇            stats and
//!  coverage ██████████░░░░░░░ 45.2% 5432/12000  ▂▃▅▇█▇▅▃▂▁▂▃▅▇█▇▅▃▂▁▂▃▅▇            hits/s
//!  total 12.3k hits/s  peak 20k                 ▂▃▅▇█▇▅▃▂▁▂▃▅▇█▇▅▃▂▁▂▃▅▇            sparkline
//! ── functions 12000 ───────────────────────────────────────────────── 1/12000 ──
//!  function                                   hits▼  hits/s  first hit           table
//!  …
//! ── events ─────────────────────────────────────────────────────────────────────
//!  first hit +0.512s main::parse                                                 event log
//!  q quit+detach  K quit, keep live  / filter  h s n f sort  r report  ? help    footer
//! ```

use ratatui::Frame;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Sparkline, Table};

use crate::format;
use crate::state::{App, LogLine, Mode, Show};

/// Screen regions, computed the same way for drawing and for paging.
struct Areas {
    title: Rect,
    stats: Rect,
    spark: Option<Rect>,
    table: Rect,
    events: Rect,
    footer: Rect,
}

fn layout(area: Rect) -> Areas {
    let events = (area.height / 4).clamp(4, 12);
    let [title, header, table, events, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(3),
        Constraint::Min(3),
        Constraint::Length(events),
        Constraint::Length(1),
    ])
    .areas(area);
    let (stats, spark) = if area.width >= 70 {
        let left = (area.width * 2 / 5).clamp(46, 64);
        let [stats, _, spark] = Layout::horizontal([
            Constraint::Length(left),
            Constraint::Length(1),
            Constraint::Fill(1),
        ])
        .areas(header);
        (stats, Some(spark))
    } else {
        (header, None)
    };
    Areas {
        title,
        stats,
        spark,
        table,
        events,
        footer,
    }
}

/// Data rows the table shows in a terminal of this size (its title and header row aside).
pub(crate) fn table_rows(width: u16, height: u16) -> usize {
    layout(Rect::new(0, 0, width, height))
        .table
        .height
        .saturating_sub(2) as usize
}

/// Styles; with colour off every style is colourless (modifiers only), for `NO_COLOR`.
#[derive(Clone, Copy)]
struct Theme {
    color: bool,
}

impl Theme {
    fn fg(self, c: Color) -> Style {
        if self.color {
            Style::new().fg(c)
        } else {
            Style::new()
        }
    }
    fn bar(self) -> Style {
        Style::new().add_modifier(Modifier::REVERSED)
    }
    fn key(self) -> Style {
        self.fg(Color::Cyan).add_modifier(Modifier::BOLD)
    }
    fn heading(self) -> Style {
        Style::new().add_modifier(Modifier::BOLD)
    }
    fn selected(self) -> Style {
        Style::new().add_modifier(Modifier::REVERSED)
    }
    fn never_hit(self) -> Style {
        self.fg(Color::DarkGray)
    }
    fn fresh(self) -> Style {
        self.fg(Color::Green).add_modifier(Modifier::BOLD)
    }
    fn good(self) -> Style {
        self.fg(Color::Green)
    }
    fn warn(self) -> Style {
        self.fg(Color::Yellow)
    }
    fn bad(self) -> Style {
        self.fg(Color::Red).add_modifier(Modifier::BOLD)
    }
    fn spark(self) -> Style {
        self.fg(Color::Cyan)
    }
}

/// Column widths of the table; the name column takes what is left.
const HITS_W: u16 = 9;
const RATE_W: u16 = 8;
const FIRST_W: u16 = 10;
const HOOK_W: u16 = 4;
const MODULE_MAX_W: usize = 16;

impl App {
    /// Draws the whole screen into `frame`.
    pub fn draw(&self, frame: &mut Frame) {
        let theme = Theme { color: self.color };
        let areas = layout(frame.area());
        self.draw_title(frame, areas.title, theme);
        self.draw_stats(frame, areas.stats, theme);
        if let Some(spark) = areas.spark {
            self.draw_spark(frame, spark, theme);
        }
        self.draw_table(frame, areas.table, theme);
        self.draw_events(frame, areas.events, theme);
        self.draw_footer(frame, areas.footer, theme);
        if self.mode == Mode::Help {
            draw_help(frame, theme);
        }
    }

    fn draw_title(&self, frame: &mut Frame, area: Rect, theme: Theme) {
        let right = match &self.ended {
            Some(_) => " session over ".to_string(),
            None => format!(" attached {} ", format::clock(self.attached_for)),
        };
        let prefix = format!(" xcover  pid {}  ", self.pid);
        let room = (area.width as usize).saturating_sub(prefix.len() + right.len() + 1);
        let left = format!("{prefix}{}", format::fit_start(&self.exe, room));
        let style = theme.bar().add_modifier(Modifier::BOLD);
        frame.render_widget(Paragraph::new(left).style(style), area);
        let right_style = if self.ended.is_some() {
            style.patch(theme.fg(Color::Red))
        } else {
            style
        };
        frame.render_widget(
            Paragraph::new(right)
                .style(right_style)
                .alignment(Alignment::Right),
            area,
        );
    }

    fn draw_stats(&self, frame: &mut Frame, area: Rect, theme: Theme) {
        let dropped_style = if self.dropped > 0 {
            theme.warn()
        } else {
            Style::new()
        };
        let mut counts = vec![
            Span::raw(" hooked "),
            Span::styled(self.hooked.to_string(), theme.heading()),
        ];
        if self.trapped > 0 {
            counts.extend([
                Span::raw(" (trap "),
                Span::styled(self.trapped.to_string(), theme.heading()),
                Span::raw(")"),
            ]);
        }
        counts.extend([
            Span::raw("  skipped "),
            Span::styled(self.skipped.to_string(), theme.heading()),
            Span::raw("  dropped "),
            Span::styled(
                self.dropped.to_string(),
                dropped_style.patch(theme.heading()),
            ),
        ]);
        if !self.mode_line.is_empty() {
            counts.push(Span::raw("  "));
            counts.push(Span::styled(self.mode_line.clone(), theme.warn()));
        }
        let counts = Line::from(counts);

        let pct = self.coverage();
        let tail = format!(" {pct:.1}% {}/{}", self.hit_functions, self.funcs.len());
        let label = " coverage ";
        let gauge_w = (area.width as usize)
            .saturating_sub(label.len() + tail.len() + 1)
            .min(40);
        let filled = ((pct / 100.0) * gauge_w as f64).round() as usize;
        let coverage = Line::from(vec![
            Span::raw(label),
            Span::styled("█".repeat(filled), theme.good()),
            Span::styled("░".repeat(gauge_w - filled), theme.never_hit()),
            Span::styled(tail, theme.heading()),
        ]);

        let rate = Line::from(vec![
            Span::raw(" total "),
            Span::styled(format::rate(self.total_rate), theme.heading()),
            Span::raw(" hits/s  peak "),
            Span::raw(format::rate(self.peak_rate)),
        ]);
        frame.render_widget(Paragraph::new(vec![counts, coverage, rate]), area);
    }

    fn draw_spark(&self, frame: &mut Frame, area: Rect, theme: Theme) {
        let n = (area.width as usize).min(self.history.len());
        let data: Vec<u64> = self
            .history
            .iter()
            .skip(self.history.len() - n)
            .copied()
            .collect();
        frame.render_widget(Sparkline::default().data(&data).style(theme.spark()), area);
    }

    fn draw_table(&self, frame: &mut Frame, area: Rect, theme: Theme) {
        let total = self.funcs.len();
        let shown = self.view.len();
        let mut title = vec![Span::styled(" functions ", theme.heading())];
        if shown == total {
            title.push(Span::raw(format!("{total} ")));
        } else {
            title.push(Span::raw(format!("{shown} of {total} ")));
        }
        if !self.filter.is_empty() || self.mode == Mode::Filter {
            title.push(Span::styled(format!("/{} ", self.filter), theme.key()));
        }
        match self.show {
            Show::All => {}
            Show::Hit => title.push(Span::styled("only hit ", theme.key())),
            Show::NeverHit => title.push(Span::styled("only never hit ", theme.key())),
        }
        let position = if shown == 0 {
            String::new()
        } else {
            format!(" {}/{shown} ", self.selected + 1)
        };
        let block = Block::new()
            .borders(Borders::TOP)
            .title(Line::from(title))
            .title_top(Line::from(position).right_aligned());
        let mut inner = block.inner(area);
        frame.render_widget(block, area);
        // One column of margin on the left, like the header and the log.
        inner.x = inner.x.saturating_add(1).min(inner.right());
        inner.width = inner.width.saturating_sub(1);

        let several_modules = self.modules.len() > 1;
        let module_w = if several_modules {
            self.modules
                .iter()
                .map(|m| m.chars().count())
                .max()
                .unwrap_or(0)
                .clamp(6, MODULE_MAX_W) as u16
        } else {
            0
        };
        let mut widths = vec![Constraint::Fill(1)];
        let mut fixed = HITS_W + RATE_W + FIRST_W + 3;
        if several_modules {
            widths.push(Constraint::Length(module_w));
            fixed += module_w + 1;
        }
        widths.extend([
            Constraint::Length(HITS_W),
            Constraint::Length(RATE_W),
            Constraint::Length(FIRST_W),
        ]);
        // Last, so the other columns keep their places.
        if self.hooks_known {
            widths.push(Constraint::Length(HOOK_W));
            fixed += HOOK_W + 1;
        }
        let name_w = inner.width.saturating_sub(fixed) as usize;

        let marker = if self.descending { "▼" } else { "▲" };
        let head = |label: &str, key| {
            if self.sort == key {
                format!("{label}{marker}")
            } else {
                label.to_string()
            }
        };
        use crate::state::SortKey;
        let mut header = vec![Cell::from(head("function", SortKey::Name))];
        if several_modules {
            header.push(Cell::from("module"));
        }
        header.extend([
            right(head("hits", SortKey::Hits)),
            right(head("hits/s", SortKey::Rate)),
            right(head("first hit", SortKey::FirstHit)),
        ]);
        if self.hooks_known {
            header.push(Cell::from("hook"));
        }

        let page = inner.height.saturating_sub(1) as usize;
        let end = (self.offset + page).min(shown);
        let rows = self.view[self.offset.min(end)..end]
            .iter()
            .enumerate()
            .map(|(k, &i)| {
                let f = &self.funcs[i as usize];
                let mut cells = vec![Cell::from(format::fit_end(&f.name, name_w))];
                if several_modules {
                    let m = &self.modules[f.module as usize];
                    cells.push(Cell::from(format::fit_end(m, module_w as usize)));
                }
                cells.extend([
                    right(format::count(f.hits)),
                    right(format::rate(f.rate)),
                    right(f.first_hit.map_or("-".to_string(), format::offset)),
                ]);
                if self.hooks_known {
                    cells.push(Cell::from(f.hook.as_str()));
                }
                let fresh = f
                    .first_hit
                    .is_some_and(|t| t + std::time::Duration::from_secs(2) > self.attached_for);
                let mut style = if f.hits == 0 {
                    theme.never_hit()
                } else if fresh {
                    theme.fresh()
                } else {
                    Style::new()
                };
                if self.offset + k == self.selected {
                    style = style.patch(theme.selected());
                }
                Row::new(cells).style(style)
            });
        let table = Table::new(rows, widths)
            .header(Row::new(header).style(theme.heading()))
            .column_spacing(1);
        frame.render_widget(table, inner);

        if shown == 0 && inner.height > 1 {
            let msg = if total == 0 {
                "waiting for functions…".to_string()
            } else {
                "no function matches (Esc clears the filter, c/u toggle hit)".to_string()
            };
            let at = Rect::new(inner.x, inner.y + 1, inner.width, 1);
            frame.render_widget(
                Paragraph::new(format!(" {msg}")).style(theme.never_hit()),
                at,
            );
        }
    }

    fn draw_events(&self, frame: &mut Frame, area: Rect, theme: Theme) {
        let block = Block::new()
            .borders(Borders::TOP)
            .title(Span::styled(" events ", theme.heading()));
        let inner = block.inner(area);
        frame.render_widget(block, area);
        let n = (inner.height as usize).min(self.log.len());
        let width = inner.width as usize;
        let lines: Vec<Line> = self
            .log
            .iter()
            .skip(self.log.len() - n)
            .map(|line| {
                let (tag, style, text) = match line {
                    LogLine::FirstHit { function, at } => (
                        "first hit",
                        theme.good(),
                        format!(
                            "{} {}",
                            format::offset(*at),
                            self.funcs[*function as usize].name
                        ),
                    ),
                    LogLine::Skipped { name, reason } => {
                        ("skipped", theme.warn(), format!("{name}: {reason}"))
                    }
                    LogLine::Warning(w) => ("warning", theme.warn(), w.clone()),
                    LogLine::Info(i) => ("note", theme.key(), i.clone()),
                    LogLine::Error(e) => ("error", theme.bad(), e.clone()),
                };
                Line::from(vec![
                    Span::styled(format!(" {tag:<9} "), style),
                    Span::raw(format::fit_end(&text, width.saturating_sub(11))),
                ])
            })
            .collect();
        frame.render_widget(Paragraph::new(lines), inner);
    }

    fn draw_footer(&self, frame: &mut Frame, area: Rect, theme: Theme) {
        if self.mode == Mode::Filter {
            let prompt = format!(" /{}", self.filter);
            let cursor_x = area.x + prompt.chars().count() as u16;
            let line = Line::from(vec![
                Span::styled(prompt, theme.key()),
                Span::raw("   "),
                Span::styled("Enter", theme.key()),
                Span::raw(" keep  "),
                Span::styled("Esc", theme.key()),
                Span::raw(" clear  "),
                Span::styled("↑↓", theme.key()),
                Span::raw(" move"),
            ]);
            frame.render_widget(Paragraph::new(line), area);
            if cursor_x < area.right() {
                frame.set_cursor_position((cursor_x, area.y));
            }
            return;
        }
        // (priority, key, what): items that do not fit are left out, lowest priority first.
        let items: &[(u8, &str, &str)] = if let Some(reason) = &self.ended {
            let line = Line::from(vec![
                Span::styled(format!(" {reason} "), theme.bad()),
                Span::styled(" q", theme.key()),
                Span::raw(" leave  "),
                Span::styled("r", theme.key()),
                Span::raw(" report  "),
                Span::styled("?", theme.key()),
                Span::raw(" help"),
            ]);
            frame.render_widget(Paragraph::new(line), area);
            return;
        } else {
            &[
                (0, "q", "quit+detach"),
                (1, "K", "quit, keep live"),
                (3, "/", "filter"),
                (4, "h s n f", "sort"),
                (6, "c u", "only hit/never hit"),
                (7, "j k PgUp PgDn", "move"),
                (5, "r", "report"),
                (2, "?", "help"),
            ]
        };
        let cost = |(_, k, w): &(u8, &str, &str)| k.chars().count() + w.len() + 3;
        let mut budget = area.width as usize;
        let mut keep = vec![false; items.len()];
        let mut by_priority: Vec<usize> = (0..items.len()).collect();
        by_priority.sort_by_key(|&i| items[i].0);
        for i in by_priority {
            let c = cost(&items[i]);
            if c <= budget {
                budget -= c;
                keep[i] = true;
            }
        }
        let mut spans = Vec::new();
        for (item, _) in items.iter().zip(&keep).filter(|(_, k)| **k) {
            spans.push(Span::raw(" "));
            spans.push(Span::styled(item.1, theme.key()));
            spans.push(Span::raw(format!(" {} ", item.2)));
        }
        frame.render_widget(Paragraph::new(Line::from(spans)), area);
    }
}

fn right<'a>(s: String) -> Cell<'a> {
    Cell::from(Line::from(s).alignment(Alignment::Right))
}

const HELP: &[(&str, &str)] = &[
    ("q", "quit and detach (every hook removed)"),
    ("Ctrl-C", "detach, but a kept session stays kept"),
    ("K", "quit and keep the session live"),
    ("", "  (xcover attach <pid> reopens it)"),
    ("↑ ↓  j k", "move"),
    ("PgUp PgDn", "move a page"),
    ("Home End  g G", "first / last row"),
    ("h", "sort by hits (again: reverse)"),
    ("s", "sort by hits/s"),
    ("n", "sort by name"),
    ("f", "sort by first hit"),
    ("/", "filter as you type"),
    ("", "  Enter keeps, Esc clears"),
    ("c", "only functions hit"),
    ("u", "only functions never hit"),
    ("r", "write the JSON report now"),
    ("?", "this help (any key closes)"),
];

fn draw_help(frame: &mut Frame, theme: Theme) {
    let area = frame.area();
    let w = 56.min(area.width);
    let h = (HELP.len() as u16 + 2).min(area.height);
    let rect = Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    );
    let lines: Vec<Line> = HELP
        .iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::styled(format!(" {k:<15}"), theme.key()),
                Span::raw(*what),
            ])
        })
        .collect();
    frame.render_widget(Clear, rect);
    frame.render_widget(
        Paragraph::new(lines)
            .block(Block::bordered().title(Span::styled(" help ", theme.heading()))),
        rect,
    );
}
