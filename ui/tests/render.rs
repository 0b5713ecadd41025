//! Rendering tests: each view is drawn on a `TestBackend` and compared with its snapshot.

use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::style::Color;
use xcover_ui::{App, Command, Function, Mode, Snapshot};

use crate::support::{FakeSession, assert_snapshot, render, small_app, text};

fn press(app: &mut App, keys: &str) {
    for c in keys.chars() {
        app.handle_key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE));
    }
}

fn press_code(app: &mut App, code: KeyCode) {
    app.handle_key(KeyEvent::new(code, KeyModifiers::NONE));
}

fn snapshot(name: &str, app: &mut App, width: u16, height: u16) {
    assert_snapshot(name, &text(&render(app, width, height)));
}

#[test]
fn main_view() {
    snapshot("main_100x30", &mut small_app(true, 1), 100, 30);
}

#[test]
fn main_view_80x24() {
    snapshot("main_80x24", &mut small_app(true, 1), 80, 24);
}

#[test]
fn several_modules_add_a_module_column() {
    snapshot("modules_80x24", &mut small_app(true, 3), 80, 24);
}

#[test]
fn each_sort_order() {
    for (key, name) in [('s', "rate"), ('n', "name"), ('f', "first_hit")] {
        let mut app = small_app(true, 1);
        press(&mut app, &key.to_string());
        snapshot(&format!("sort_{name}"), &mut app, 100, 30);
    }
    let mut app = small_app(true, 1);
    press(&mut app, "hh");
    snapshot("sort_hits_ascending", &mut app, 100, 30);
}

#[test]
fn filtering_while_typing_and_kept() {
    let mut app = small_app(true, 1);
    press(&mut app, "/demo::");
    assert_eq!(app.mode(), Mode::Filter);
    snapshot("filter_typing", &mut app, 80, 24);
    press_code(&mut app, KeyCode::Enter);
    press(&mut app, "j");
    snapshot("filter_kept", &mut app, 80, 24);
    press(&mut app, "/zzz");
    snapshot("filter_no_match", &mut app, 80, 24);
}

#[test]
fn only_hit_and_only_never_hit() {
    let mut app = small_app(true, 1);
    press(&mut app, "c");
    snapshot("only_hit", &mut app, 80, 24);
    press(&mut app, "u");
    snapshot("only_never_hit", &mut app, 80, 24);
}

#[test]
fn help_overlay() {
    let mut app = small_app(true, 1);
    press(&mut app, "?");
    snapshot("help_80x24", &mut app, 80, 24);
}

#[test]
fn scrolling_keeps_the_selection_on_screen() {
    let mut app = small_app(true, 1);
    press_code(&mut app, KeyCode::End);
    snapshot("scrolled_end_80x24", &mut app, 80, 24);
}

#[test]
fn resizing_reflows() {
    let mut app = small_app(true, 1);
    press_code(&mut app, KeyCode::End);
    let _ = render(&mut app, 80, 24);
    snapshot("resized_60x16", &mut app, 60, 16);
    snapshot("resized_120x40", &mut app, 120, 40);
}

#[test]
fn source_ended_and_report() {
    let mut app = small_app(true, 1);
    app.report_written(Ok("/tmp/xcover-4242.json".into()));
    app.report_written(Err("disk full".into()));
    app.source_ended("target exited with status 0".into());
    snapshot("ended_80x24", &mut app, 80, 24);
    assert!(matches!(
        app.handle_key(KeyEvent::new(KeyCode::Char('q'), KeyModifiers::NONE)),
        Command::Quit(xcover_ui::Outcome::SourceEnded(_))
    ));
}

#[test]
fn no_color_means_no_colour_anywhere() {
    let mut app = small_app(false, 3);
    for keys in ["", "?", "/demo"] {
        press(&mut app, keys);
        let buffer = render(&mut app, 100, 30);
        for cell in buffer.content() {
            assert_eq!(
                (cell.fg, cell.bg, cell.underline_color),
                (Color::Reset, Color::Reset, Color::Reset),
                "coloured cell {:?} after {keys:?}",
                cell.symbol()
            );
        }
    }
    // The text itself is the same as in colour.
    let colour = text(&render(&mut small_app(true, 1), 80, 24));
    let plain = text(&render(&mut small_app(false, 1), 80, 24));
    assert_eq!(colour, plain);
    // And the colour version does use colour, so the check above means something.
    let buffer = render(&mut small_app(true, 1), 80, 24);
    assert!(buffer.content().iter().any(|c| c.fg != Color::Reset));
}

/// 100 000 functions: renders, and prints how long an update plus a frame takes (not
/// asserted: timings are noisy here). `cargo test --release -p xcover-ui --test tests
/// hundred_thousand -- --nocapture` gives the meaningful figure.
#[test]
fn hundred_thousand_functions() {
    const N: usize = 100_000;
    let mut session = FakeSession::big(N);
    let mut app = App::new(true);
    let t0 = Instant::now();
    app.update(session.at(Duration::ZERO));
    let first = t0.elapsed();
    let mut terminal = ratatui::Terminal::new(ratatui::backend::TestBackend::new(120, 40)).unwrap();
    app.resize(120, 40);

    let mut measure = |app: &mut App, label: &str, at_ms: &mut u64, keys: &str| {
        let mut update = Duration::ZERO;
        let mut draw = Duration::ZERO;
        const TICKS: u32 = 20;
        for _ in 0..TICKS {
            *at_ms += 100;
            let snap = session.at(Duration::from_millis(*at_ms));
            let t = Instant::now();
            app.update(snap);
            update += t.elapsed();
            let t = Instant::now();
            terminal.draw(|f| app.draw(f)).unwrap();
            draw += t.elapsed();
        }
        let t = Instant::now();
        press(app, keys);
        let key = t.elapsed();
        println!(
            "100k functions, {label}: update {:.2} ms + draw {:.2} ms per tick; keys {keys:?} {:.2} ms",
            update.as_secs_f64() * 1e3 / TICKS as f64,
            draw.as_secs_f64() * 1e3 / TICKS as f64,
            key.as_secs_f64() * 1e3,
        );
    };
    println!(
        "100k functions: first snapshot {:.2} ms",
        first.as_secs_f64() * 1e3
    );
    let mut at = 0;
    measure(&mut app, "sorted by hits", &mut at, "s");
    measure(&mut app, "sorted by hits/s", &mut at, "n");
    measure(&mut app, "sorted by name", &mut at, "/module_04");
    measure(&mut app, "filter typed", &mut at, "");
    press_code(&mut app, KeyCode::Esc);
    press(&mut app, "hc");
    measure(&mut app, "only hit", &mut at, "G");
    measure(&mut app, "at the end", &mut at, "");

    let mut app2 = App::new(true);
    let mut s2 = FakeSession::big(N);
    app2.update(s2.at(Duration::ZERO));
    app2.update(s2.at(Duration::from_secs(3)));
    snapshot("big_100k_120x40", &mut app2, 120, 40);
    press_code(&mut app2, KeyCode::End);
    snapshot("big_100k_end_120x40", &mut app2, 120, 40);
    assert_eq!(app2.visible_functions(), N);
}

/// Functions whose hook kind is known get a `hook` column, and trap hooks are counted in
/// the stats line.
#[test]
fn hook_kinds_add_a_hook_column_and_a_trap_count() {
    let mut app = App::new(false);
    app.update(Snapshot {
        pid: 7,
        exe: "/bin/t".into(),
        functions_hooked: 2,
        functions_trapped: 1,
        new_functions: vec![
            Function::new("by_jump", "t").with_hook("jmp"),
            Function::new("by_trap", "t").with_hook("trap"),
        ],
        hits: vec![3, 5],
        ..Snapshot::default()
    });
    let screen = text(&render(&mut app, 80, 24));
    assert!(screen.contains("hooked 2 (trap 1)"), "{screen}");
    let row = |name: &str| {
        screen
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("no row for {name}: {screen}"))
            .to_string()
    };
    assert!(
        screen
            .lines()
            .any(|l| l.contains("function") && l.contains("hook")),
        "{screen}"
    );
    assert!(
        row("by_trap").trim_end().ends_with(" trap"),
        "{}",
        row("by_trap")
    );
    assert!(
        row("by_jump").trim_end().ends_with(" jmp"),
        "{}",
        row("by_jump")
    );
}
