//! The real event loop in a real terminal: the `fake_session` example run inside a private
//! tmux server, driven with send-keys and read with capture-pane. Missing tmux or a missing
//! example binary fails the test; `cargo test -p xcover-ui` builds the example.

use std::path::PathBuf;
use std::thread::sleep;
use std::time::{Duration, Instant};

use xcover_testsupport::tmux::Tmux;

/// The `fake_session` example, which `cargo test` builds with the tests.
fn example() -> PathBuf {
    // tests binary: <target>/<profile>/deps/tests-<hash>; examples: <target>/<profile>/examples
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/fake_session");
    assert!(
        path.exists(),
        "the fake_session example is not built: run the tests with cargo test (it builds \
         examples), not with --tests alone"
    );
    path
}

#[test]
fn drives_the_real_terminal_and_restores_it() {
    let example = example();
    let tmux = Tmux::new("ui-test");
    let log = std::env::temp_dir().join(format!("xcover-ui-test-{}.out", std::process::id()));
    let command = format!(
        "sh -c '{} 500 > /dev/tty; echo \"exit=$?\" > {}; stty -a > {}.stty; sleep 30'",
        example.display(),
        log.display(),
        log.display()
    );
    tmux.start(80, 24, &[&command]);

    let screen = tmux.screen_when(Duration::from_secs(5), |s| s.contains("first hit +"));
    assert!(screen.contains("xcover  pid"), "{screen}");
    assert!(screen.contains("K quit, keep live"), "{screen}");

    tmux.keys(&["/", "module_3::"]);
    let screen = tmux.screen_when(Duration::from_secs(5), |s| {
        s.contains("/module_3::   Enter keep")
    });
    assert!(screen.contains("of 500 /module_3::"), "{screen}");
    tmux.keys(&["Enter", "r"]);
    let screen = tmux.screen_when(Duration::from_secs(5), |s| s.contains("report written to"));
    assert!(screen.contains("report written to"), "{screen}");

    tmux.keys(&["q"]);
    let start = Instant::now();
    while !log.exists() && start.elapsed() < Duration::from_secs(5) {
        sleep(Duration::from_millis(100));
    }
    sleep(Duration::from_millis(200));
    let screen = tmux.screen();
    assert!(screen.contains("outcome: Detach"), "{screen}");
    assert!(
        !screen.contains("functions"),
        "the alternate screen was left: {screen}"
    );
    let exit = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(exit.trim(), "exit=0");
    let stty = std::fs::read_to_string(log.with_extension("out.stty")).unwrap_or_default();
    assert!(
        stty.contains(" icanon") && stty.contains(" echo "),
        "raw mode left on: {stty}"
    );
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(log.with_extension("out.stty"));
}
