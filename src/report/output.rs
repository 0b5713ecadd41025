//! Where reports go: [`Outputs`], the formats and paths a command was asked for, checked
//! before anything is done ([`Outputs::check`]) and written at the end ([`Outputs::write`]).
//!
//! Every command that writes reports goes through here, so every path is checked and
//! written the same way: checked before the target is touched, written next to its
//! destination and renamed over it (a reader never sees half a report), a device or pipe
//! written in place. A session whose reports cannot be written at the end is held for its
//! counts by [`crate::Session`], never removed.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::{Report, ReportFormat};
use crate::BadInput;
use crate::error::{Context, Error, Result};

/// One report to write: a format and a path.
#[derive(Clone, Copy)]
pub struct Output<'a> {
    /// The format.
    pub format: &'static dyn ReportFormat,
    /// Where.
    pub path: &'a Path,
}

/// The reports a command was asked for, in the order given.
#[derive(Clone, Default)]
pub struct Outputs {
    wanted: Vec<(&'static dyn ReportFormat, PathBuf)>,
    debug_dirs: Vec<PathBuf>,
}

impl std::fmt::Debug for Outputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.wanted.iter().map(|(fmt, p)| (fmt.name(), p)))
            .finish()
    }
}

impl Outputs {
    /// No report.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a report of `format` at `path`.
    pub fn add(&mut self, format: &'static dyn ReportFormat, path: PathBuf) {
        self.wanted.push((format, path));
    }

    /// Looks for separate debug files (source files and lines of the reports) in `dirs`
    /// before `/usr/lib/debug` (`--debug-dir`).
    pub fn set_debug_dirs(&mut self, dirs: Vec<PathBuf>) {
        self.debug_dirs = dirs;
    }

    /// The directories searched for separate debug files before `/usr/lib/debug`.
    pub fn debug_dirs(&self) -> &[PathBuf] {
        &self.debug_dirs
    }

    /// Whether no report is asked for.
    pub fn is_empty(&self) -> bool {
        self.wanted.is_empty()
    }

    /// The reports asked for.
    pub fn iter(&self) -> impl Iterator<Item = Output<'_>> {
        self.wanted.iter().map(|(format, path)| Output {
            format: *format,
            path,
        })
    }

    /// Where the report of the format named `name` goes, if one is asked for.
    pub fn path_of(&self, name: &str) -> Option<&Path> {
        self.iter()
            .find(|o| o.format.name() == name)
            .map(|o| o.path)
    }

    /// Checks every path before anything is done (see [`check_writable`]).
    pub fn check(&self) -> Result<()> {
        for o in self.iter() {
            check_writable(o.path)?;
        }
        Ok(())
    }

    /// Writes every report of `report`, calling `wrote` with each path written. All are
    /// tried; the first failure is returned.
    pub fn write(&self, report: &Report, wrote: &mut dyn FnMut(&Path)) -> Result<()> {
        let mut first_err = None;
        for o in self.iter() {
            match o.format.write_to(report, o.path) {
                Ok(()) => wrote(o.path),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// Writes `report` as `format` at `path` (see [`ReportFormat::write_to`]).
pub(crate) fn write_report<F: ReportFormat + ?Sized>(
    format: &F,
    report: &Report,
    path: &Path,
) -> Result<()> {
    let mut bytes = Vec::new();
    format
        .write(report, &mut bytes)
        .with_context(|| format!("cannot write {}", path.display()))?;
    write_file(path, &bytes)
}

/// Writes `contents` to `path` as reports are written: whole, next to it, then renamed over
/// it (a device or pipe is written in place).
pub fn write_file(path: &Path, contents: &[u8]) -> Result<()> {
    // A device or a pipe (`/dev/stdout`) is written in place: renaming over it would
    // replace it.
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir()) {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        return f
            .write_all(contents)
            .and_then(|()| f.flush())
            .with_context(|| format!("cannot write {}", path.display()));
    }
    // Written next to the destination, flushed to the disk (a full disk or a quota shows as
    // late as that), then renamed: a reader never sees half a report, and an existing
    // report is only replaced by a complete one.
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::Context {
            what: format!("cannot write {}", path.display()),
            source: Box::new(e),
        }
    })
}

/// Checks, before anything is done, that a report can be written at `path` later: not a
/// directory, in an existing directory where a file can be created (one is, and removed);
/// or an existing device or pipe that opens for writing. An existing report is left as it
/// is until the new one replaces it.
pub fn check_writable(path: &Path) -> Result<()> {
    let bad = |why: String| Error::from(BadInput(format!("{}: {why}", path.display())));
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => return Err(bad("is a directory".into())),
        Ok(m) if !m.is_file() => {
            // Non-blocking, so a pipe without a reader fails instead of hanging.
            return std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path)
                .map(drop)
                .map_err(|e| bad(format!("cannot be written: {e}")));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(bad(e.to_string())),
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(bad(format!("{} is not a directory", dir.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(bad(format!("directory {} does not exist", dir.display())));
        }
        Err(e) => return Err(bad(format!("{}: {e}", dir.display()))),
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let probe = dir.join(format!(".{name}.xcover-check.{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&probe)
        .map_err(|e| bad(format!("cannot create a file in {}: {e}", dir.display())))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}
