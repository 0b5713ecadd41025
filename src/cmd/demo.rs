//! `xcover demo`: starts the bundled demo target (`src/demo/target.c`, compiled into this
//! binary by `build.rs`) and attaches to it as `xcover attach` does, so the whole tool can
//! be seen at work with one command.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::cli::{AttachArgs, DemoArgs, SelectArgs};

/// The demo target, compiled at build time.
static DEMO: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/xcover_demo"));

/// A private directory (mode 0700) holding the demo binary, removed on drop.
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn new() -> Result<Self> {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = base.join(format!("xcover-demo-{}-{nanos:x}", std::process::id()));
        // create() fails if the name exists, so nobody can have planted it.
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(PrivateDir(dir))
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `xcover demo`.
pub fn run(a: DemoArgs) -> Result<ExitCode> {
    let dir = PrivateDir::new()?;
    let exe = dir.0.join("xcover-demo");
    std::fs::write(&exe, DEMO).with_context(|| format!("cannot write {}", exe.display()))?;
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o700))?;
    let quiet = !a.no_tui;
    let mut child = Command::new(&exe)
        .stdin(Stdio::null())
        .stdout(if quiet {
            Stdio::piped()
        } else {
            Stdio::inherit()
        })
        .stderr(if quiet {
            Stdio::null()
        } else {
            Stdio::inherit()
        })
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    let pid = child.id() as i32;
    eprintln!("xcover: demo target started, pid {pid}");
    // Let it reach its main loop: attach while it is still in the loader works too, but the
    // functions of a phase appear more naturally once it runs.
    std::thread::sleep(Duration::from_millis(100));
    let result = super::attach::run(AttachArgs {
        pid,
        no_tui: a.no_tui,
        duration: a.duration,
        keep: false,
        first_hit: false,
        max_overhead: None,
        output: a.output,
        probe: None,
        traps: false,
        select: SelectArgs::default(),
        export: a.export,
    });
    // The demo target ends with xcover (SIGTERM: it prints its checksum and exits 0).
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    );
    let mut said = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = std::io::Read::read_to_string(&mut out, &mut said);
    }
    let status = child.wait().context("waiting for the demo target")?;
    match said.lines().find(|l| l.contains("checksum")) {
        Some(line) if status.success() => {
            eprintln!(
                "xcover: the demo target exited cleanly ({})",
                line.trim_start_matches("demo: ")
            );
        }
        _ => eprintln!("xcover: the demo target ended with {status}"),
    }
    result
}
