//! A tmux server of the test's own (`-L <socket>`, no configuration file), to run a TUI in
//! a real terminal: send-keys to drive it, capture-pane to read it. It never touches a
//! user's sessions nor another test's, and is killed on drop.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::tools;

/// The private tmux server. Its one session, once started, is `t`.
pub struct Tmux {
    socket: String,
}

impl Tmux {
    /// A fresh server (started with its session by [`Tmux::start`]); fails the test when
    /// tmux is not installed. One per test: tests run in parallel.
    pub fn new(tag: &str) -> Tmux {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        tools::require("tmux", "tmux");
        Tmux {
            socket: format!(
                "xcover-{tag}-{}-{}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            ),
        }
    }

    /// Starts session `t`, `width`×`height`, running `command` (tmux runs it with `sh -c`
    /// when it is one word, else as the argument vector).
    pub fn start(&self, width: u16, height: u16, command: &[&str]) {
        let size = [width.to_string(), height.to_string()];
        let mut args = vec![
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            &size[0],
            "-y",
            &size[1],
        ];
        args.extend_from_slice(command);
        let o = self.command(&args);
        assert!(
            o.status.success(),
            "tmux new-session: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    fn command(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .output()
            .expect("run tmux")
    }

    /// Runs a tmux command on this server; returns its stdout.
    pub fn run(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&self.command(args).stdout).into_owned()
    }

    /// What the pane shows.
    pub fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "t"])
    }

    /// The pane with its last 200 lines of history.
    pub fn history(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "t", "-S", "-200"])
    }

    /// Types `keys` (tmux key names or text).
    pub fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "t"];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    /// The screen once it satisfies `f`, or whatever it shows after `limit`.
    pub fn screen_when(&self, limit: Duration, f: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + limit;
        loop {
            let s = self.screen();
            if f(&s) || Instant::now() >= end {
                return s;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the screen satisfies `f`, up to `secs`; fails naming `what` otherwise.
    pub fn wait_for(&self, secs: u64, what: &str, f: impl Fn(&str) -> bool) -> String {
        let s = self.screen_when(Duration::from_secs(secs), &f);
        assert!(f(&s), "timed out waiting for {what}; screen:\n{s}");
        s
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.command(&["kill-server"]);
    }
}
