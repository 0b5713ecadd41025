//! A scripted session and the snapshot machinery.

use std::path::PathBuf;
use std::time::Duration;

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;
use xcover_ui::{App, Event, Function, Snapshot};

/// Function names that look like a real Rust/C++ target's.
const NAMES: &[&str] = &[
    "main",
    "demo::parse_config",
    "demo::Worker::run",
    "demo::checksum",
    "alloc::vec::Vec<T>::push",
    "core::fmt::write",
    "std::io::stdio::_print",
    "demo::render_frame",
    "demo::rarely_called",
    "demo::never_called",
    "demo::cleanup",
    "hashbrown::raw::RawTable<T>::reserve_rehash",
    "demo::net::Connection::read_exact_with_a_rather_long_name_for_truncation",
    "demo::idle",
];

/// A deterministic session: function `i` is hit `rate(i)` times a second from `start(i)` on.
pub struct FakeSession {
    names: Vec<Function>,
    rates: Vec<u64>,
    starts: Vec<Duration>,
    sent: usize,
}

impl FakeSession {
    /// The small session of the snapshot tests; `modules` > 1 spreads functions over libraries.
    pub fn small(modules: usize) -> Self {
        let names = NAMES
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let module = match i % modules {
                    0 => "demo",
                    1 => "libc.so.6",
                    _ => "libstdc++.so.6",
                };
                Function::new(*n, module)
            })
            .collect::<Vec<_>>();
        let rates = vec![1, 40, 2500, 900, 12_000, 300, 5, 60, 0, 0, 1, 7, 0, 0];
        let starts = (0..names.len() as u64)
            .map(|i| Duration::from_millis(37 * i * i))
            .collect();
        Self {
            names,
            rates,
            starts,
            sent: 0,
        }
    }

    /// `n` functions; about one in three is hit, at rates that differ.
    pub fn big(n: usize) -> Self {
        let names = (0..n)
            .map(|i| {
                Function::new(
                    format!("big::module_{:03}::function_{i:06}", i % 997),
                    "big",
                )
            })
            .collect();
        let rates = (0..n as u64)
            .map(|i| if i % 3 == 0 { (i * 7919) % 10_000 } else { 0 })
            .collect();
        let starts = (0..n as u64)
            .map(|i| Duration::from_micros(i * 13))
            .collect();
        Self {
            names,
            rates,
            starts,
            sent: 0,
        }
    }

    /// The session as it is `at` after attach.
    pub fn at(&mut self, at: Duration) -> Snapshot {
        let mut events = Vec::new();
        if self.sent == 0 {
            events.push(Event::Skipped {
                name: "demo::tiny".into(),
                reason: "shorter than 5 bytes".into(),
            });
            events.push(Event::Warning(
                "2 threads were inside hooked code; moved".into(),
            ));
        }
        let hits = (0..self.names.len())
            .map(|i| {
                let since = at.saturating_sub(self.starts[i]).as_millis() as u64;
                if at < self.starts[i] || self.rates[i] == 0 {
                    0
                } else {
                    1 + self.rates[i] * since / 1000
                }
            })
            .collect::<Vec<_>>();
        // First hits inside this window, as the probe's ring buffer would report them (only
        // for the small session, to keep the big one's log from flooding).
        if self.names.len() < 100 {
            for (i, &h) in hits.iter().enumerate() {
                if h > 0 && self.starts[i] <= at && self.starts[i] + Duration::from_millis(500) > at
                {
                    events.push(Event::FirstHit {
                        function: i,
                        at: self.starts[i],
                    });
                }
            }
        }
        let new_functions = self.names[self.sent..].to_vec();
        self.sent = self.names.len();
        Snapshot {
            pid: 4242,
            exe: "/usr/local/bin/demo-target".into(),
            functions_hooked: self.names.len() as u64,
            functions_skipped: 1,
            functions_trapped: 0,
            dropped_events: 0,
            attached_for: at,
            new_functions,
            hits,
            events,
            mode_line: String::new(),
        }
    }
}

/// An app fed the small session for three seconds, in half-second ticks.
pub fn small_app(color: bool, modules: usize) -> App {
    let mut session = FakeSession::small(modules);
    let mut app = App::new(color);
    for tick in 0..=6 {
        app.update(session.at(Duration::from_millis(500 * tick)));
    }
    app
}

/// Renders `app` at `width`×`height` and returns the buffer.
pub fn render(app: &mut App, width: u16, height: u16) -> Buffer {
    app.resize(width, height);
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal.draw(|f| app.draw(f)).unwrap();
    terminal.backend().buffer().clone()
}

/// The buffer as text, one line per row, trailing blanks cut.
pub fn text(buffer: &Buffer) -> String {
    let area = buffer.area;
    let mut out = String::new();
    for y in area.top()..area.bottom() {
        let mut line = String::new();
        for x in area.left()..area.right() {
            line.push_str(buffer[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Compares `actual` with `tests/snapshots/<name>.txt`, or rewrites the file when
/// `UPDATE_SNAPSHOTS` is set.
pub fn assert_snapshot(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(format!("{name}.txt"));
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "no snapshot {}; run with UPDATE_SNAPSHOTS=1 to create it",
            path.display()
        )
    });
    if expected != actual {
        let new = path.with_extension("txt.new");
        std::fs::write(&new, actual).unwrap();
        panic!(
            "snapshot {name} differs (new rendering in {}):\n--- expected\n{expected}\n--- actual\n{actual}",
            new.display()
        );
    }
}
