//! Changing the hook set of a live session without detaching: `xcover hook <pid>` /
//! `xcover unhook <pid>`, the TUI's keys, and the watcher's own unhooks (`--first-hit`,
//! `--max-overhead`).
//!
//! Every change goes through the same commit path as attach and detach: xcover marks the
//! functions in the session's table (`Unhooking`, or `Pending` over `Unhooked` to hook
//! again), then stops the target, runs the agent's `UNHOOK_SOME` (or `HOOK` + `COMMIT`),
//! moves the threads the agent names and lets it go ([`xcover_injector::unhook_marked`],
//! [`xcover_injector::hook_pending`]).
//!
//! An unhooked function keeps its count, which stops there: a lower bound of its calls
//! (`hits_lower_bound` in the JSON report). Its trampoline is retired, not freed: a thread
//! still inside it (in the probe, or about to return into it) runs on safely, and hooking
//! the function again reuses it. The memory cost is the trampolines' arenas, which stay
//! until detach whatever is unhooked (about 100-200 bytes per function, in 64 KiB arenas).

use std::time::Duration;

use regex::Regex;
use xcover_injector::{self as injector, SessionFile};
use xcover_session::{FuncEntry, FuncStatus, SessionHeader, SessionState, UnhookReason};

use crate::BadInput;
use crate::error::{Context, Error, Result};
use crate::session::{self, View};

/// Which functions of a session a change is about: `--include`/`--exclude` on raw and
/// demangled names, `--module` by the name the module goes by, its file name or its path.
/// Nothing given: every function.
#[derive(Clone, Debug, Default)]
pub struct Selector {
    include: Option<Regex>,
    exclude: Option<Regex>,
    modules: Vec<String>,
}

impl Selector {
    /// From the command line's `--include`, `--exclude` and `--module`; a bad regex is bad
    /// input.
    pub fn new(include: Option<&str>, exclude: Option<&str>, modules: Vec<String>) -> Result<Self> {
        let o = crate::discover::Options::new(include, exclude, Vec::new(), false)?;
        Ok(Selector {
            include: o.include,
            exclude: o.exclude,
            modules,
        })
    }

    /// Whether function `i` of `v` is selected.
    pub fn matches(&self, v: &View, i: usize) -> bool {
        let Some(f) = v.funcs.get(i) else {
            return false;
        };
        let demangled = crate::discover::demangle(&f.name);
        let is = |re: &Regex| {
            re.is_match(&f.name) || demangled.as_deref().is_some_and(|d| re.is_match(d))
        };
        if self.exclude.as_ref().is_some_and(is) || !self.include.as_ref().is_none_or(is) {
            return false;
        }
        if self.modules.is_empty() {
            return true;
        }
        let m = f.entry.module_index() as usize;
        let path = v.modules.get(m).map(String::as_str).unwrap_or_default();
        let file = crate::discover::file_name(std::path::Path::new(path));
        let alias = v.module_name(m);
        self.modules
            .iter()
            .any(|want| *want == alias || *want == file || *want == path)
    }
}

/// What a change did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// Functions whose hook went in (hook) or out (unhook).
    pub funcs: u64,
    /// How long the target was stopped (zero when nothing had to change).
    pub stopped: Duration,
    /// Threads stopped.
    pub threads: usize,
}

/// Offset of function `i`'s status in the session file.
fn status_off(h: &SessionHeader, i: usize) -> u64 {
    h.funcs_off
        + i as u64 * size_of::<FuncEntry>() as u64
        + std::mem::offset_of!(FuncEntry, status) as u64
}

/// Writes function `i`'s status and the code beside it (one 8-byte write).
fn set_status(s: &SessionFile, i: usize, status: FuncStatus, code: u32) -> Result<()> {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&(status as u32).to_le_bytes());
    b[4..].copy_from_slice(&code.to_le_bytes());
    s.write_at(status_off(s.header(), i), &b)?;
    Ok(())
}

/// Takes the hooks of `cookies` (function table indices) out of the live session `s` of
/// `pid`, for `reason`; those not hooked are left alone. Their counts are kept (a lower
/// bound from now on).
pub fn unhook(
    pid: i32,
    s: &SessionFile,
    cookies: &[usize],
    reason: UnhookReason,
) -> Result<Change> {
    let table = s.funcs()?;
    let mut marked = 0;
    for &i in cookies {
        if let Some(f) = table
            .get(i)
            .filter(|f| f.status() == Some(FuncStatus::Hooked))
        {
            // The hook kind stays beside the reason (see `FuncEntry::skip_reason`).
            let code = FuncEntry::pack_hook(f.hook_kind(), Some(reason));
            set_status(s, i, FuncStatus::Unhooking, code)?;
            marked += 1;
        }
    }
    if marked == 0
        && !table
            .iter()
            .any(|f| f.status() == Some(FuncStatus::Unhooking))
    {
        return Ok(Change::default());
    }
    let st = injector::unhook_marked(pid, crate::control::agent(), s)
        .map_err(Error::from)
        .with_context(|| format!("unhook in pid {pid}"))?;
    Ok(Change {
        funcs: st.funcs,
        stopped: st.stopped,
        threads: st.threads,
    })
}

/// Puts the hooks of `cookies` back in (those a live unhook took out, and any still
/// `Pending`); hooked and skipped ones are left alone.
pub fn hook(pid: i32, s: &SessionFile, cookies: &[usize]) -> Result<Change> {
    let table = s.funcs()?;
    let mut any = table
        .iter()
        .any(|f| f.status() == Some(FuncStatus::Pending));
    for &i in cookies {
        if let Some(f) = table
            .get(i)
            .filter(|f| f.status() == Some(FuncStatus::Unhooked))
        {
            // The unhook's reason stays: the count missed calls, it is a lower bound.
            set_status(s, i, FuncStatus::Pending, f.skip_reason)?;
            any = true;
        }
    }
    if !any {
        return Ok(Change::default());
    }
    let st = injector::hook_pending(pid, crate::control::agent(), s)
        .map_err(Error::from)
        .with_context(|| format!("hook in pid {pid}"))?;
    Ok(Change {
        funcs: st.funcs,
        stopped: st.stopped,
        threads: st.threads,
    })
}

/// `xcover hook <pid>` (`on`) or `xcover unhook <pid>`: the live session of `pid`, whoever
/// watches it (or none, if kept), has the hooks of the functions `sel` selects put back in
/// or taken out. Returns the change and how many functions were selected; bad input when
/// there is no live session or `sel` selects nothing.
pub fn change(pid: i32, on: bool, sel: &Selector) -> Result<(Change, usize)> {
    let s = SessionFile::open(pid)
        .map_err(|_| BadInput(format!("pid {pid}: no xcover session (attach first)")))?;
    if s.is_held() || s.state() != SessionState::Live as u32 {
        return Err(BadInput(format!(
            "pid {pid}: its session is not live (see `xcover status {pid}`)"
        ))
        .into());
    }
    if let Some(what) = injector::target_gone(pid, &s) {
        return Err(BadInput(format!("pid {pid}: the target {what}")).into());
    }
    let v = session::view(&s)?;
    let chosen: Vec<usize> = (0..v.funcs.len()).filter(|&i| sel.matches(&v, i)).collect();
    if chosen.is_empty() {
        return Err(BadInput(format!(
            "pid {pid}: no function of the session matches (`xcover functions` lists what \
             attach found; a function that was not in the session at attach cannot be added)"
        ))
        .into());
    }
    let c = match on {
        true => hook(pid, &s, &chosen)?,
        false => unhook(pid, &s, &chosen, UnhookReason::User)?,
    };
    Ok((c, chosen.len()))
}
