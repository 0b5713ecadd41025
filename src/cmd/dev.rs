//! `xcover dev`: developer commands, hidden from `--help`. `xcover dev vm` runs eBPF
//! programs with xcover's VM — the bpf_conformance runner and the bpf_conformance plugin
//! protocol (`xcover vm`, its former name, still works).

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use xcover_bpf::conformance::{self, Backend};
use xcover_bpf::insn::Insn;

/// `xcover dev` subcommands.
#[derive(Subcommand, Debug)]
pub enum DevCommand {
    /// Run eBPF programs with xcover's VM (bpf_conformance runner and plugin).
    Vm {
        /// What to run.
        #[command(subcommand)]
        cmd: VmCommand,
    },
}

/// Runs a `dev` subcommand.
pub fn run(cmd: DevCommand) -> Result<ExitCode> {
    match cmd {
        DevCommand::Vm { cmd } => vm(cmd),
    }
}

/// `xcover dev vm` subcommands.
#[derive(Subcommand, Debug)]
pub enum VmCommand {
    /// Run every `.data` file of a bpf_conformance directory; ends with `N passed, M failed`.
    Conformance {
        /// Directory of `.data` files.
        dir: PathBuf,
        /// Which back end runs the programs.
        #[command(flatten)]
        backend: BackendArg,
    },
    /// bpf_conformance plugin: read a program as hex bytecode on stdin, run it on `<mem-hex>`
    /// and print `r0` in hex.
    Exec {
        /// The memory `r1` points to, as hex bytes.
        mem: Option<String>,
        /// Which back end runs the program.
        #[command(flatten)]
        backend: BackendArg,
    },
}

/// `--interp` (the default) or `--jit`.
#[derive(Args, Debug, Clone, Copy)]
#[group(multiple = false)]
pub struct BackendArg {
    /// Use the interpreter (default).
    #[arg(long)]
    interp: bool,
    /// Use the x86-64 JIT.
    #[arg(long)]
    jit: bool,
}

impl BackendArg {
    fn backend(self) -> Backend {
        if self.jit {
            Backend::Jit
        } else {
            Backend::Interp
        }
    }
}

fn hex_bytes(s: &str) -> Result<Vec<u8>> {
    let digits: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    let digits = digits.strip_prefix("0x").unwrap_or(&digits);
    if !digits.len().is_multiple_of(2) {
        bail!("odd number of hex digits");
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).context("bad hex digit"))
        .collect()
}

/// Runs a `dev vm` subcommand.
pub fn vm(cmd: VmCommand) -> Result<ExitCode> {
    match cmd {
        VmCommand::Conformance { dir, backend } => {
            let backend = backend.backend();
            let summary = match conformance::run_dir(&dir, backend, |path, why| {
                println!("FAIL {}: {why}", path.display());
            }) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("xcover: cannot read {}: {e}", dir.display());
                    return Ok(ExitCode::from(2));
                }
            };
            println!("{} passed, {} failed", summary.passed, summary.failed.len());
            Ok(if summary.failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        VmCommand::Exec { mem, backend } => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading the program from stdin")?;
            let code = hex_bytes(&text).context("program on stdin")?;
            let insns =
                Insn::decode_all(&code).context("program length is not a multiple of 8 bytes")?;
            let mem = match mem {
                Some(m) => hex_bytes(&m).context("memory argument")?,
                None => Vec::new(),
            };
            match conformance::run_program(&insns, &mem, backend.backend()) {
                Ok(r0) => {
                    println!("{r0:x}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("{e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
    }
}
