//! The real event loop in a real terminal: the `fake_session` example run inside a private
//! tmux server, driven with send-keys and read with capture-pane. Skipped (with a message)
//! when tmux or the example binary is missing; `cargo test -p xcover-ui` builds the example.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// A tmux server of our own (its own socket), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(width: u16, height: u16, command: &str) -> Option<Self> {
        let tmux = Self {
            socket: format!("xcover-ui-test-{}", std::process::id()),
        };
        let size = [width.to_string(), height.to_string()];
        let out = tmux.run(&[
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            &size[0],
            "-y",
            &size[1],
            command,
        ])?;
        out.status.success().then_some(tmux)
    }

    fn run(&self, args: &[&str]) -> Option<Output> {
        Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .output()
            .ok()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "t"];
        args.extend(keys);
        self.run(&args);
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-t", "t", "-p"])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// Waits up to five seconds for the screen to contain `text`.
    fn wait_for(&self, text: &str) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if screen.contains(text) || start.elapsed() > Duration::from_secs(5) {
                return screen;
            }
            sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.run(&["kill-server"]);
    }
}

fn example() -> Option<PathBuf> {
    // tests binary: <target>/<profile>/deps/tests-<hash>; examples: <target>/<profile>/examples
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.parent()?.join("examples/fake_session");
    path.exists().then_some(path)
}

#[test]
fn drives_the_real_terminal_and_restores_it() {
    let Some(example) = example() else {
        eprintln!("skipped: the fake_session example is not built (run cargo test -p xcover-ui)");
        return;
    };
    if Command::new("tmux").arg("-V").output().is_err() {
        eprintln!("skipped: no tmux");
        return;
    }
    let log = std::env::temp_dir().join(format!("xcover-ui-test-{}.out", std::process::id()));
    let command = format!(
        "sh -c '{} 500 > /dev/tty; echo \"exit=$?\" > {}; stty -a > {}.stty; sleep 30'",
        example.display(),
        log.display(),
        log.display()
    );
    let Some(tmux) = Tmux::start(80, 24, &command) else {
        eprintln!("skipped: tmux would not start");
        return;
    };

    let screen = tmux.wait_for("first hit +");
    assert!(screen.contains("xcover  pid"), "{screen}");
    assert!(screen.contains("K quit, keep live"), "{screen}");

    tmux.keys(&["/", "module_3::"]);
    let screen = tmux.wait_for("/module_3::   Enter keep");
    assert!(screen.contains("of 500 /module_3::"), "{screen}");
    tmux.keys(&["Enter", "r"]);
    let screen = tmux.wait_for("report written to");
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
