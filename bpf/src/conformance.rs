//! The bpf_conformance test format and a runner for it.
//!
//! A `.data` file has sections introduced by `-- name` lines: `asm` (the program, see
//! [`crate::asm`]), `raw` (64-bit instruction words that replace the assembly), `mem` (hex
//! bytes; `r1` points to a copy, `r2` holds the length), `result` (expected `r0`), `error`
//! (expected failure text). Lines starting with `#` are comments; other sections are
//! informational and ignored.
//!
//! Programs run in an [`Env`] whose helper 5 is the uBPF "unwind" helper: it returns its
//! first argument, and when that is 0 the program ends with `r0 = 0`.
//!
//! Every program is checked by the [`crate::verifier`] first, with `r1` a writable context
//! of the memory's size and back-edges allowed: the suite has loops (`prime.data`), which the
//! verifier walks to their end.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::env::{Arg, Env, HelperFn, HelperProto, Ret};
use crate::insn::Insn;
use crate::jit::{self, JitOptions};
use crate::verifier::{self, Context, VerifierOptions};
use crate::{asm, exec, interp};

/// Id of the conformance suite's unwind helper.
pub const UNWIND_HELPER_ID: u32 = 5;

/// The unwind helper: returns its first argument.
///
/// # Safety
///
/// None needed: it only returns a value; `unsafe` is the [`HelperFn`] signature.
pub unsafe extern "C" fn unwind_helper(a: u64, _: u64, _: u64, _: u64, _: u64) -> u64 {
    a
}

static HELPERS: [(u32, HelperFn); 1] = [(UNWIND_HELPER_ID, unwind_helper)];
static PROTOS: [(u32, HelperProto); 1] = [(
    UNWIND_HELPER_ID,
    HelperProto::new(&[Arg::Anything], Ret::Scalar),
)];

/// The environment conformance programs run in.
pub fn env() -> Env<'static> {
    Env {
        helpers: &HELPERS,
        map_addrs: &[],
        map_value_addrs: &[],
        unwind_helper: Some(UNWIND_HELPER_ID),
        map_inline: &[],
        rseq_cpu_id: None,
        tcb_tid: None,
        maps: &[],
        protos: &PROTOS,
    }
}

/// Which back end runs the programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// [`interp::run`].
    Interp,
    /// [`jit::compile`] + [`exec::JitCode`].
    Jit,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Interp => "interpreter",
            Backend::Jit => "jit",
        })
    }
}

/// One parsed `.data` file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TestCase {
    /// The `-- asm` section.
    pub asm: Option<String>,
    /// The `-- raw` section, one instruction word per entry.
    pub raw: Option<Vec<u64>>,
    /// The `-- mem` bytes.
    pub mem: Vec<u8>,
    /// The expected `r0`.
    pub result: Option<u64>,
    /// The expected error text.
    pub error: Option<String>,
}

fn parse_u64(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s
            .parse::<u64>()
            .ok()
            .or_else(|| s.parse::<i64>().ok().map(|v| v as u64)),
    }
}

/// Parses a `.data` file.
pub fn parse(text: &str) -> Result<TestCase, String> {
    let mut case = TestCase::default();
    let mut section = String::new();
    let mut asm_text = String::new();
    let mut have_asm = false;
    let mut raw = Vec::new();
    let mut have_raw = false;
    let mut error = String::new();
    for (n, line) in text.lines().enumerate() {
        if let Some(name) = line.strip_prefix("--") {
            section = name.trim().to_string();
            have_asm |= section == "asm";
            have_raw |= section == "raw";
            continue;
        }
        let t = line.trim();
        match section.as_str() {
            "asm" => {
                asm_text.push_str(line);
                asm_text.push('\n');
            }
            _ if t.starts_with('#') || t.is_empty() => {}
            "mem" => {
                for b in t.split_whitespace() {
                    let v = u8::from_str_radix(b, 16)
                        .map_err(|_| format!("line {}: bad mem byte {b:?}", n + 1))?;
                    case.mem.push(v);
                }
            }
            "result" => {
                let v = parse_u64(t).ok_or_else(|| format!("line {}: bad result {t:?}", n + 1))?;
                case.result = Some(v);
            }
            "raw" => {
                let v =
                    parse_u64(t).ok_or_else(|| format!("line {}: bad raw word {t:?}", n + 1))?;
                raw.push(v);
            }
            "error" => {
                if !error.is_empty() {
                    error.push('\n');
                }
                error.push_str(t);
            }
            _ => {}
        }
    }
    if have_asm {
        case.asm = Some(asm_text);
    }
    if have_raw {
        case.raw = Some(raw);
    }
    if !error.is_empty() {
        case.error = Some(error);
    }
    Ok(case)
}

impl TestCase {
    /// The program: the raw words when present, else the assembled text.
    pub fn program(&self) -> Result<Vec<Insn>, String> {
        if let Some(raw) = &self.raw {
            return Ok(raw.iter().map(|w| Insn::decode(w.to_le_bytes())).collect());
        }
        match &self.asm {
            Some(text) => asm::assemble(text).map_err(|e| format!("assembler: {e}")),
            None => Err("no program (neither -- asm nor -- raw)".into()),
        }
    }
}

/// Verifies and runs a program on a copy of `mem` with the conformance [`env()`].
pub fn run_program(insns: &[Insn], mem: &[u8], backend: Backend) -> Result<u64, String> {
    let env = env();
    // `r1` points to the memory (a context the program may write), `r2` is its length.
    let opts = VerifierOptions {
        allow_back_edges: true,
        inputs: 2,
        ctx: Some(Context {
            size: u32::try_from(mem.len()).map_err(|_| "memory too large".to_string())?,
            writable: true,
        }),
    };
    verifier::verify(insns, &env, &opts).map_err(|e| format!("verifier: {e}"))?;
    let mut copy = mem.to_vec();
    let (r1, r2) = if copy.is_empty() {
        (0, 0)
    } else {
        (copy.as_mut_ptr() as u64, copy.len() as u64)
    };
    match backend {
        // SAFETY: the program passed the verifier, so its stack accesses are in bounds; its
        // other accesses are to the memory it was given (`r1`, `r2` bytes), which is what the
        // conformance suite promises; the only helper is the pure unwind helper.
        Backend::Interp => unsafe { interp::run(insns, &env, r1, r2) }.map_err(|e| e.to_string()),
        Backend::Jit => {
            let code = jit::compile(insns, &env, &JitOptions::for_this_cpu())
                .map_err(|e| format!("jit: {e}"))?;
            let code = exec::JitCode::new(&code).map_err(|e| format!("mapping code: {e}"))?;
            // SAFETY: as for the interpreter; the code was just compiled from that program.
            Ok(unsafe { code.call(r1, r2) })
        }
    }
}

/// Runs one test case; `Err` describes the failure.
pub fn run_case(case: &TestCase, backend: Backend) -> Result<(), String> {
    let outcome = case
        .program()
        .and_then(|p| run_program(&p, &case.mem, backend));
    match (outcome, case.result, &case.error) {
        (Ok(v), Some(want), _) if v == want => Ok(()),
        (Ok(v), Some(want), _) => Err(format!("r0 = {v:#x}, expected {want:#x}")),
        (Ok(v), None, Some(e)) => Err(format!("r0 = {v:#x}, expected error {e:?}")),
        (Ok(v), None, None) => Err(format!("r0 = {v:#x}, but the file has no -- result")),
        (Err(_), None, Some(_)) => Ok(()),
        (Err(e), _, _) => Err(e),
    }
}

/// The result of running a directory.
#[derive(Debug, Default)]
pub struct Summary {
    /// Files that passed.
    pub passed: usize,
    /// Files that failed, with why.
    pub failed: Vec<(PathBuf, String)>,
}

/// The `.data` files of a directory, sorted.
pub fn data_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "data"))
        .collect();
    files.sort();
    Ok(files)
}

/// Runs every `.data` file of `dir`; `on_failure` sees each failure as it happens.
pub fn run_dir(
    dir: &Path,
    backend: Backend,
    mut on_failure: impl FnMut(&Path, &str),
) -> std::io::Result<Summary> {
    let mut summary = Summary::default();
    for path in data_files(dir)? {
        let outcome = std::fs::read_to_string(&path)
            .map_err(|e| format!("reading: {e}"))
            .and_then(|t| parse(&t))
            .and_then(|c| run_case(&c, backend));
        match outcome {
            Ok(()) => summary.passed += 1,
            Err(e) => {
                on_failure(&path, &e);
                summary.failed.push((path, e));
            }
        }
    }
    Ok(summary)
}
