//! Runs the TUI on a synthetic session, to try it in a real terminal:
//!
//! ```text
//! cargo run -p xcover-ui --example fake_session -- [functions] [seconds until the target "exits"]
//! ```
//!
//! `XCOVER_UI_PANIC_AFTER=<ticks>` makes the source panic, to check that the terminal is
//! restored on that path too.

use std::time::{Duration, Instant};

use xcover_ui::{Event, Function, Options, Snapshot, Source};

struct Fake {
    started: Instant,
    hits: Vec<u64>,
    sent: bool,
    ticks: u64,
    exit_after: Option<Duration>,
    panic_after: Option<u64>,
}

impl Source for Fake {
    fn snapshot(&mut self) -> Result<Snapshot, String> {
        self.ticks += 1;
        if self.panic_after.is_some_and(|n| self.ticks > n) {
            panic!(
                "synthetic panic in the source after {} ticks",
                self.ticks - 1
            );
        }
        let now = self.started.elapsed();
        if self.exit_after.is_some_and(|d| now > d) {
            return Err("target exited with status 0".into());
        }
        let n = self.hits.len() as u64;
        let mut events = Vec::new();
        // Function i starts being called i*20 ms after attach, at a rate that varies with i.
        let mut x = self.ticks.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        for (i, h) in self.hits.iter_mut().enumerate() {
            let i = i as u64;
            if !i.is_multiple_of(3) || now < Duration::from_millis(i * 20) {
                continue;
            }
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if *h == 0 {
                events.push(Event::FirstHit {
                    function: i as usize,
                    at: now,
                });
            }
            *h += 1 + (x % (1 + (n - i) * 10)) / 10;
        }
        let new_functions = if self.sent {
            Vec::new()
        } else {
            self.sent = true;
            events.push(Event::Skipped {
                name: "fake::tiny".into(),
                reason: "shorter than 5 bytes".into(),
            });
            (0..n)
                .map(|i| {
                    let module = if i.is_multiple_of(5) {
                        "libc.so.6"
                    } else {
                        "fake"
                    };
                    Function::new(format!("fake::module_{}::function_{i}", i % 37), module)
                })
                .collect()
        };
        Ok(Snapshot {
            pid: std::process::id(),
            exe: std::env::current_exe()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            functions_hooked: n,
            functions_skipped: 1,
            functions_trapped: 0,
            dropped_events: 0,
            attached_for: now,
            new_functions,
            hits: self.hits.clone(),
            events,
            mode_line: String::new(),
        })
    }

    fn write_report(&mut self) -> Result<String, String> {
        Ok("/tmp/xcover-fake-report.json (not really written)".into())
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let exit_after = args
        .next()
        .and_then(|a| a.parse().ok())
        .map(Duration::from_secs_f64);
    let panic_after = std::env::var("XCOVER_UI_PANIC_AFTER")
        .ok()
        .and_then(|v| v.parse().ok());
    let source = Fake {
        started: Instant::now(),
        hits: vec![0; n],
        sent: false,
        ticks: 0,
        exit_after,
        panic_after,
    };
    match xcover_ui::run(source, Options::default()) {
        Ok(outcome) => println!("outcome: {outcome:?}"),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
