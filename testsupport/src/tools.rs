//! Tools the tests run. A missing one fails the test that needs it, naming the tool and the
//! script that installs it: a test that cannot run has not passed.

use std::path::{Path, PathBuf};

/// The message for a tool the tests need and do not find: `what` and the Debian package
/// `scripts/setup.sh` installs it from.
pub fn missing(what: &str, package: &str) -> String {
    format!(
        "{what} is not installed: run scripts/setup.sh (it installs the Debian package \
         {package}); a test that cannot run fails rather than skip"
    )
}

/// Where `tool` is on `PATH`, if anywhere.
pub fn find(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The path of `tool`, or a panic with [`missing`]`(tool, package)`.
pub fn require(tool: &str, package: &str) -> PathBuf {
    find(tool).unwrap_or_else(|| panic!("{}", missing(tool, package)))
}

/// The Debian package `scripts/setup.sh` installs `tool` from, for the tools the tests run.
pub fn package_of(tool: &str) -> &'static str {
    match tool {
        "cc" | "gcc" => "gcc",
        "c++" | "g++" => "g++",
        "clang" => "clang",
        "llvm-strip" | "llvm-objcopy" => "llvm",
        "go" => "golang-go",
        "tmux" => "tmux",
        "setpriv" => "util-linux",
        "genhtml" => "lcov",
        "strace" => "strace",
        "nm" | "readelf" | "objdump" | "strip" | "objcopy" => "binutils",
        "rustc" => "rustc (rustup)",
        _ => "that provides it",
    }
}
