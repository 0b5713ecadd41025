//! The session's contents: what xcover lays into the shared file before the agent runs, and
//! what it reads back while the target runs.
//!
//! Layout (offsets in the header, see `xcover-session`): the header page, the function table,
//! the module table, the names, the probe's instructions, the map table, the region table
//! the agent fills, the eBPF map arena, the log ring. Sections start on 64-byte boundaries;
//! the arena on a page boundary.

use std::mem::{offset_of, size_of};

use crate::error::{Context, Error, Result, bail};
use xcover_bpf::env::{Env, MapInfo};
use xcover_bpf::maps::{ArenaLayout, ArenaMaps};
use xcover_bpf::program::Program;
use xcover_bpf::verifier::{self, VerifierOptions};
use xcover_injector::SessionFile;
use xcover_session::probe::{EVENTS_MAP, HIT_COUNT_MAPS, PER_FUNCTION_MAPS};
use xcover_session::{
    FuncEntry, FuncStatus, HookKind, ModuleEntry, Region, SessionHeader, SkipReason,
};

use crate::BadInput;
use crate::discover::Discovery;
use crate::report::{monotonic_to_unix_ns, rfc3339_ns, unix_now_ns};

/// The coverage probe, compiled from `bpf/cover.bpf.c` by `scripts/build-bpf.sh`.
pub const COVER_PROBE: &[u8] = include_bytes!("../bpf/cover.bpf.o");

/// Capacity of the region table the agent fills (heap, JIT code, trampoline arenas).
const REGIONS_CAP: u64 = 4096;
/// Size of the log ring (trace_printk and agent messages).
const LOG_SIZE: u64 = 64 * 1024;
const PAGE: u64 = 4096;

fn align(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// Which probe a session runs.
#[derive(Clone, Copy, Debug)]
pub enum ProbeSource<'a> {
    /// The built-in coverage probe ([`COVER_PROBE`]).
    Builtin,
    /// A user's object given with `--probe`.
    File(&'a std::path::Path),
}

/// Loads the probe object. The built-in coverage probe's cookie-indexed maps
/// ([`PER_FUNCTION_MAPS`]) are sized for `funcs` functions; every map of a user's
/// object keeps the `max_entries` the object gives it (a lookup past it returns NULL, as in
/// the kernel); the loader refuses a map of 0 entries.
pub fn load_probe(object: &[u8], source: ProbeSource<'_>, funcs: usize) -> Result<Program> {
    let what = match source {
        ProbeSource::Builtin => "the built-in coverage probe object".to_string(),
        ProbeSource::File(p) => format!("probe object {}", p.display()),
    };
    let mut prog = xcover_bpf::object::load_program(object, None)
        .map_err(|e| BadInput(format!("{what}: {e}")))?;
    if let ProbeSource::Builtin = source {
        let n = u32::try_from(funcs.max(1)).context("too many functions")?;
        for name in PER_FUNCTION_MAPS {
            let m = prog
                .maps
                .iter_mut()
                .find(|m| m.name == name)
                .with_context(|| format!("{what} has no map `{name}`"))?;
            m.max_entries = n;
        }
    }
    Ok(prog)
}

/// Checks the probe with the verifier against the helpers and maps the agent will give it.
pub fn verify_probe(prog: &Program) -> Result<()> {
    let helpers = xcover_bpf::helpers::standard_helpers();
    let fake: Vec<u64> = (0..prog.maps.len() as u64)
        .map(|i| 0x1000 * (i + 1))
        .collect();
    let env = Env {
        helpers,
        map_addrs: &fake,
        map_value_addrs: &fake,
        maps: &MapInfo::table_of(&prog.maps),
        ..Default::default()
    };
    verifier::verify(&prog.insns, &env, &VerifierOptions::default()).map_err(|e| {
        Error::from(BadInput(format!(
            "probe {:?} rejected by the verifier: {e}",
            prog.name
        )))
    })?;
    Ok(())
}

/// Possible CPUs of this machine (per-CPU maps get a slot for each).
pub fn possible_cpus() -> u32 {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap_or_default();
    // "0-63" or "0,2-5": the highest index + 1.
    let max = s
        .trim()
        .split([',', '-'])
        .filter_map(|x| x.parse::<u32>().ok())
        .max();
    match max {
        Some(m) => m + 1,
        None => std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
    }
}

/// Where each section goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    funcs_off: u64,
    modules_off: u64,
    strings_off: u64,
    strings_size: u64,
    prog_off: u64,
    maps_off: u64,
    regions_off: u64,
    arena_off: u64,
    arena_size: u64,
    log_off: u64,
    /// Size of the whole file.
    pub total: u64,
}

/// Everything to write, prepared before the session file exists.
pub struct Contents {
    /// The layout.
    pub layout: Layout,
    funcs: Vec<FuncEntry>,
    modules: Vec<ModuleEntry>,
    strings: Vec<u8>,
    prog: Vec<u8>,
    map_offsets: Vec<u64>,
    arena: Vec<u8>,
    hits_map: u64,
    events_map: u64,
    ncpus: u32,
    insns: u64,
    /// `PROBE_TRAPS`: trap hooks allowed ([`Contents::allow_traps`]).
    traps: bool,
    /// A module is Go code: no traps.
    go: bool,
}

impl Contents {
    /// Lets the agent hook with one-byte traps what no jump can (`attach --traps`), unless
    /// a module is Go code (its runtime manages signals with raw system calls). Returns
    /// whether traps are allowed.
    pub fn allow_traps(&mut self, on: bool) -> bool {
        self.traps = on && !self.go;
        self.traps
    }
}

/// Prepares the session contents for `d`'s functions and the probe `prog`.
pub fn prepare(d: &Discovery, prog: &Program, ncpus: u32) -> Result<Contents> {
    let mut strings = Vec::new();
    let mut modules = Vec::new();
    for m in &d.modules {
        let p = m.path.to_string_lossy();
        let alias = m.alias.as_deref().unwrap_or("");
        modules.push(ModuleEntry {
            path_off: strings.len() as u32,
            path_len: p.len() as u32,
            alias_off: (strings.len() + p.len()) as u32,
            alias_len: alias.len() as u32,
        });
        strings.extend_from_slice(p.as_bytes());
        strings.extend_from_slice(alias.as_bytes());
    }
    let mut funcs = Vec::with_capacity(d.functions.len());
    for f in &d.functions {
        let name_off = u32::try_from(strings.len()).context("names exceed 4 GiB")?;
        strings.extend_from_slice(f.name.as_bytes());
        // What enters the function inside its first bytes: the offset for the agent, the
        // source's name (right after the function's) for whoever reports the skip.
        let entered = match &f.entered {
            Some(e) => {
                let from = &e.from.as_bytes()[..e.from.len().min(4096)];
                strings.extend_from_slice(from);
                FuncEntry::pack_entered(e.at, from.len() as u32)
            }
            None => 0,
        };
        funcs.push(FuncEntry {
            addr: f.addr,
            size: f.size,
            offset: f.offset,
            name_off,
            name_len: f.name.len() as u32,
            module: FuncEntry::pack_module(f.module as u32, f.source.code()),
            // A part the agent must not jump from is skipped before it runs.
            status: if f.red_zone {
                FuncStatus::Skipped as u32
            } else {
                FuncStatus::Pending as u32
            },
            skip_reason: if f.red_zone {
                xcover_session::SkipReason::RedZone.code()
            } else {
                0
            },
            entered,
            pad_end: f.next_start,
            vaddr: f.vaddr,
        });
    }
    let arena_layout =
        ArenaLayout::new(&prog.maps, ncpus).map_err(|e| BadInput(format!("probe maps: {e}")))?;
    let mut arena = vec![0u8; arena_layout.size() as usize];
    arena_layout
        .init_slice(&mut arena)
        .map_err(|e| Error::msg(format!("laying out the probe's maps: {e}")))?;
    let map_offsets = arena_layout.offsets();
    let prog_bytes: Vec<u8> = prog.insns.iter().flat_map(|i| i.encode()).collect();

    let find = |names: &[&str]| {
        prog.maps
            .iter()
            .position(|m| names.contains(&m.name.as_str()))
            .map_or(u64::MAX, |i| i as u64)
    };
    let hits_map = find(&HIT_COUNT_MAPS);
    let events_map = find(&[EVENTS_MAP]);

    let funcs_off = align(size_of::<SessionHeader>() as u64, PAGE);
    let modules_off = align(
        funcs_off + (funcs.len() * size_of::<FuncEntry>()) as u64,
        64,
    );
    let strings_off = align(
        modules_off + (modules.len() * size_of::<ModuleEntry>()) as u64,
        64,
    );
    let prog_off = align(strings_off + strings.len() as u64, 64);
    let maps_off = align(prog_off + prog_bytes.len() as u64, 64);
    let regions_off = align(maps_off + 8 * map_offsets.len() as u64, 64);
    let arena_off = align(regions_off + REGIONS_CAP * size_of::<Region>() as u64, PAGE);
    let arena_size = arena.len() as u64;
    let log_off = align(arena_off + arena_size, PAGE);
    let total = align(log_off + LOG_SIZE, PAGE);
    Ok(Contents {
        layout: Layout {
            funcs_off,
            modules_off,
            strings_off,
            strings_size: strings.len() as u64,
            prog_off,
            maps_off,
            regions_off,
            arena_off,
            arena_size,
            log_off,
            total,
        },
        funcs,
        modules,
        strings,
        prog: prog_bytes,
        map_offsets,
        arena,
        hits_map,
        events_map,
        ncpus,
        insns: prog.insns.len() as u64,
        traps: false,
        go: d.modules.iter().any(|m| m.go),
    })
}

/// Writes `c` into the freshly created session file (before the agent is loaded).
pub fn write(s: &SessionFile, c: &Contents) -> Result<()> {
    let l = &c.layout;
    if s.len() < l.total {
        bail!(
            "session file {} is {} bytes, the layout needs {}",
            s.path(),
            s.len(),
            l.total
        );
    }
    s.write_at(l.funcs_off, bytemuck::cast_slice(&c.funcs))?;
    s.write_at(l.modules_off, bytemuck::cast_slice(&c.modules))?;
    s.write_at(l.strings_off, &c.strings)?;
    s.write_at(l.prog_off, &c.prog)?;
    let maps: Vec<u8> = c.map_offsets.iter().flat_map(|o| o.to_le_bytes()).collect();
    s.write_at(l.maps_off, &maps)?;
    s.write_at(l.arena_off, &c.arena)?;

    let put = |off: usize, v: u64| s.write_at(off as u64, &v.to_le_bytes());
    let put32 = |off: usize, v: u32| s.write_at(off as u64, &v.to_le_bytes());
    put(offset_of!(SessionHeader, funcs_off), l.funcs_off)?;
    put(offset_of!(SessionHeader, funcs_count), c.funcs.len() as u64)?;
    put(offset_of!(SessionHeader, modules_off), l.modules_off)?;
    put(
        offset_of!(SessionHeader, modules_count),
        c.modules.len() as u64,
    )?;
    put(offset_of!(SessionHeader, strings_off), l.strings_off)?;
    put(offset_of!(SessionHeader, strings_size), l.strings_size)?;
    put(offset_of!(SessionHeader, prog_off), l.prog_off)?;
    put(offset_of!(SessionHeader, prog_insns), c.insns)?;
    put(offset_of!(SessionHeader, maps_off), l.maps_off)?;
    put(
        offset_of!(SessionHeader, maps_count),
        c.map_offsets.len() as u64,
    )?;
    put(offset_of!(SessionHeader, hits_map), c.hits_map)?;
    put(offset_of!(SessionHeader, events_map), c.events_map)?;
    let skipped = c
        .funcs
        .iter()
        .filter(|f| f.status == FuncStatus::Skipped as u32)
        .count();
    put(offset_of!(SessionHeader, funcs_skipped), skipped as u64)?;
    put32(offset_of!(SessionHeader, ncpus), c.ncpus)?;
    let flags = if c.traps {
        xcover_session::PROBE_TRAPS
    } else {
        0
    };
    put32(offset_of!(SessionHeader, probe_flags), flags)?;
    put(offset_of!(SessionHeader, regions_off), l.regions_off)?;
    put(offset_of!(SessionHeader, regions_cap), REGIONS_CAP)?;
    put(offset_of!(SessionHeader, arena_off), l.arena_off)?;
    put(offset_of!(SessionHeader, arena_size), l.arena_size)?;
    put(offset_of!(SessionHeader, log_off), l.log_off)?;
    put(offset_of!(SessionHeader, log_size), LOG_SIZE)?;
    Ok(())
}

/// One function as a reader sees it.
#[derive(Clone, Debug)]
pub struct FuncView {
    /// Raw name.
    pub name: String,
    /// The table entry.
    pub entry: FuncEntry,
    /// Hits so far.
    pub hits: u64,
    /// Where another function's branch enters this one inside its first bytes (`name` or
    /// `name+0x12`), when xcover found one.
    pub entered_from: Option<String>,
    /// When it first ran (`CLOCK_MONOTONIC` nanoseconds, the probe's `seen` map), 0 when it
    /// has not or the probe does not record it.
    pub first_hit_ns: u64,
}

impl FuncView {
    /// Why the function was skipped, when it was: the interceptor's reason, with the
    /// branch's source named for one entered inside its patch by other code.
    pub fn skip_reason(&self) -> Option<String> {
        if self.entry.status() != Some(FuncStatus::Skipped) {
            return None;
        }
        let code = self.entry.skip_reason;
        Some(match (SkipReason::from_code(code), &self.entered_from) {
            (Some(SkipReason::EnteredInside), Some(from)) => {
                format!("entered at +{} from {from}", self.entry.entered_at())
            }
            _ => SkipReason::text_of(code).to_string(),
        })
    }

    /// How the function is (or, after detach, was) hooked: `jmp`, `jmp8`, `trap`.
    pub fn hook(&self) -> Option<&'static str> {
        self.entry.hook_kind().map(HookKind::name)
    }
}

/// A reading of a live session.
#[derive(Clone, Debug, Default)]
pub struct View {
    /// Module paths, main executable first.
    pub modules: Vec<String>,
    /// The name the user gave each module (`--module`), when not its file name.
    pub module_aliases: Vec<Option<String>>,
    /// Every function, in table (cookie) order.
    pub funcs: Vec<FuncView>,
    /// Functions hooked.
    pub hooked: u64,
    /// Functions skipped.
    pub skipped: u64,
    /// Functions whose hook is out while the target runs on (`Unhooked`: their counts are
    /// lower bounds).
    pub unhooked: u64,
    /// First-hit events dropped (ring buffer full) plus map writes given up.
    pub dropped: u64,
}

impl View {
    /// Functions hooked now by each form, in [`HookKind::ALL`] order: `[jmp, jmp8, trap]`.
    pub fn hook_counts(&self) -> [u64; HookKind::ALL.len()] {
        let mut n = [0u64; HookKind::ALL.len()];
        for f in self.funcs.iter().filter(|f| f.entry.is_hooked()) {
            if let Some(k) = f.entry.hook_kind()
                && let Some(i) = HookKind::ALL.iter().position(|&a| a == k)
                && let Some(c) = n.get_mut(i)
            {
                *c += 1;
            }
        }
        n
    }

    /// The alias of module `i`, if it has one.
    pub fn module_name_alias(&self, i: usize) -> Option<&str> {
        self.module_aliases.get(i).and_then(|a| a.as_deref())
    }

    /// Module `i` as reports and the TUI show it: its alias, else its file name.
    pub fn module_name(&self, i: usize) -> String {
        match (self.module_name_alias(i), self.modules.get(i)) {
            (Some(a), _) => a.to_string(),
            (None, Some(p)) => crate::discover::file_name(std::path::Path::new(p)),
            (None, None) => String::new(),
        }
    }

    /// Functions hit at least once.
    pub fn hit_funcs(&self) -> usize {
        self.funcs.iter().filter(|f| f.hits > 0).count()
    }

    /// Sum of all hits.
    pub fn total_hits(&self) -> u64 {
        self.funcs.iter().map(|f| f.hits).sum()
    }

    /// Hit functions over hooked ones, in percent. A function hit while hooked counts as
    /// hooked even when it is not any more (a session whose hooks were taken out, or one a
    /// killed xcover left half-undone), so this never exceeds 100.
    pub fn coverage(&self) -> f64 {
        let hit = self.hit_funcs();
        let measured = (self.hooked + self.unhooked) as usize;
        hit as f64 * 100.0 / measured.max(hit).max(1) as f64
    }
}

fn string_at(s: &SessionFile, off: u32, len: u32) -> Result<String> {
    let h = s.header();
    if u64::from(off) + u64::from(len) > h.strings_size {
        bail!("session {}: name outside the string section", s.path());
    }
    let start = h
        .strings_off
        .checked_add(u64::from(off))
        .filter(|&a| a.checked_add(u64::from(len)).is_some_and(|e| e <= s.len()))
        .with_context(|| format!("session {}: name outside the file", s.path()))?;
    let mut b = vec![0u8; len as usize];
    s.read_at(start, &mut b)?;
    Ok(String::from_utf8_lossy(&b).into_owned())
}

/// Per-function hit counts (index = cookie), from the probe's hit map.
pub fn hits(s: &SessionFile) -> Result<Vec<u64>> {
    let h = s.header();
    let n = h.funcs_count as usize;
    let Some(off) = s.map_offset(h.hits_map)? else {
        return Ok(vec![0; n]);
    };
    let v = s.with_arena(|a| a.map(off).map(|m| m.array_u64_all()))?;
    let mut counts = match v {
        Some(Ok(c)) => c,
        Some(Err(e)) => bail!("session {}: hit map: {e}", s.path()),
        None => vec![],
    };
    counts.resize(n, 0);
    Ok(counts)
}

/// The regions the agent mapped in the target (heap, JIT-ed code, trampoline arenas), from
/// the session's region table.
pub fn regions(s: &SessionFile) -> Result<Vec<Region>> {
    use std::sync::atomic::Ordering;
    let h = s.header();
    let size = size_of::<Region>() as u64;
    // Bounded by the file, whatever the (shared, writable) header says.
    let n = h
        .regions_count
        .load(Ordering::Acquire)
        .min(h.regions_cap)
        .min(s.len().saturating_sub(h.regions_off) / size);
    let mut raw = vec![0u8; (n * size) as usize];
    s.read_at(h.regions_off, &mut raw)?;
    Ok(raw
        .chunks_exact(size as usize)
        .map(bytemuck::pod_read_unaligned)
        .collect())
}

/// Per-function first-hit times (index = cookie, `CLOCK_MONOTONIC` nanoseconds, 0 for
/// none), from the built-in probe's `seen` map (an ARRAY of `u64` keyed by cookie holding
/// the first hit's timestamp). Zeros when the probe has no such map (a `--probe`, or a
/// session of an xcover whose probe kept only a flag there).
pub fn first_hits(s: &SessionFile) -> Result<Vec<u64>> {
    let h = s.header();
    let n = h.funcs_count as usize;
    let mut times = Vec::new();
    for i in 0..h.maps_count {
        let off = s.read_u64(h.maps_off.saturating_add(i.saturating_mul(8)))?;
        let found = s.with_arena(|a| {
            a.map(off).ok().and_then(|m| {
                let hd = m.header();
                (m.name() == "seen"
                    && hd.value_size == 8
                    && m.map_type() == xcover_bpf::program::MapType::Array)
                    .then(|| m.array_u64_all())
            })
        })?;
        if let Some(Some(t)) = found {
            times = t;
            break;
        }
    }
    times.resize(n, 0);
    Ok(times)
}

/// Events dropped by the probe's maps.
pub fn dropped(s: &SessionFile) -> Result<u64> {
    let h = s.header();
    let mut total = 0;
    for i in 0..h.maps_count {
        let Some(off) = s.map_offset(i)? else { break };
        if let Some(Ok(d)) = s.with_arena(|a| a.map(off).map(|m| m.dropped()))? {
            total += d;
        }
    }
    Ok(total)
}

/// Reads the whole session: names, statuses and counts.
pub fn view(s: &SessionFile) -> Result<View> {
    use std::sync::atomic::Ordering;
    let h = s.header();
    let mut modules = Vec::new();
    let mut module_aliases = Vec::new();
    // Sizes come from a file another process writes: check them before allocating.
    let bytes = usize::try_from(h.modules_count)
        .ok()
        .and_then(|n| n.checked_mul(size_of::<ModuleEntry>()))
        .filter(|&b| {
            h.modules_off
                .checked_add(b as u64)
                .is_some_and(|e| e <= s.len())
        })
        .with_context(|| {
            format!(
                "session {}: module table ({} entries at {:#x}) lies outside the file",
                s.path(),
                h.modules_count,
                h.modules_off
            )
        })?;
    let mut raw = vec![0u8; bytes];
    s.read_at(h.modules_off, &mut raw)?;
    for m in raw.chunks_exact(size_of::<ModuleEntry>()) {
        let m: ModuleEntry = bytemuck::pod_read_unaligned(m);
        modules.push(string_at(s, m.path_off, m.path_len)?);
        module_aliases.push(match m.alias_len {
            0 => None,
            n => Some(string_at(s, m.alias_off, n)?),
        });
    }
    let entries = s.funcs()?;
    let counts = hits(s)?;
    let firsts = first_hits(s)?;
    let mut funcs = Vec::with_capacity(entries.len());
    for ((e, hits), first_hit_ns) in entries.into_iter().zip(counts).zip(firsts) {
        let from_len = e.entered_from_len();
        let entered_from = if from_len == 0 {
            None
        } else {
            let off = e.name_off.checked_add(e.name_len).with_context(|| {
                format!("session {}: name outside the string section", s.path())
            })?;
            Some(string_at(s, off, from_len)?)
        };
        funcs.push(FuncView {
            name: string_at(s, e.name_off, e.name_len)?,
            entry: e,
            hits,
            entered_from,
            first_hit_ns,
        });
    }
    Ok(View {
        modules,
        module_aliases,
        hooked: h.funcs_hooked.load(Ordering::Relaxed),
        skipped: h.funcs_skipped.load(Ordering::Relaxed),
        unhooked: funcs
            .iter()
            .filter(|f| f.entry.status() == Some(FuncStatus::Unhooked))
            .count() as u64,
        funcs,
        dropped: dropped(s)?,
    })
}

/// The report of a session.
pub fn report(
    s: &SessionFile,
    v: &View,
    debug_dirs: &[std::path::PathBuf],
) -> crate::report::Report {
    use crate::report::ModuleLines;
    let h = s.header();
    let modules: Vec<ModuleLines> = v
        .modules
        .iter()
        .enumerate()
        .map(|(i, p)| {
            ModuleLines::open(std::path::Path::new(p), v.module_name_alias(i), debug_dirs)
        })
        .collect();
    let unknown = ModuleLines::open(std::path::Path::new(""), None, &[]);
    let hooked_at = h.hooked_at_ns.load(std::sync::atomic::Ordering::Acquire);
    let functions = v
        .funcs
        .iter()
        .map(|f| {
            let m = modules
                .get(f.entry.module_index() as usize)
                .unwrap_or(&unknown);
            let mut r = m.func(&f.name, f.entry.offset, f.entry.vaddr, f.hits);
            r.source = crate::discover::Source::from_code(f.entry.source_code())
                .map(|s| s.name().to_string());
            r.skipped = f.skip_reason();
            r.hits_lower_bound = f.entry.hits_lower_bound();
            r.unhooked = f.entry.unhook_reason().map(|u| u.name().to_string());
            if f.hits > 0 {
                r.first_hit_at = monotonic_to_unix_ns(f.first_hit_ns).map(rfc3339_ns);
                // From the probe's `seen` map (never lost, unlike the events ring buffer),
                // relative to when the hooks went in.
                r.first_hit_ns =
                    (f.first_hit_ns != 0).then(|| f.first_hit_ns.saturating_sub(hooked_at));
            }
            r.hook = f.hook().map(str::to_string);
            r
        })
        .collect();
    let exe =
        String::from_utf8_lossy(&h.exe_path[..(h.exe_path_len as usize).min(512)]).into_owned();
    let id = crate::report::hex(&h.build_id[..(h.build_id_len as usize).min(32)]);
    let mut r = crate::report::Report::new(exe, i64::from(h.target_pid), id, functions);
    // An observation happened only where hits are counted, from the time the hooks were in.
    if h.hits_map != u64::MAX
        && let Some(from) = monotonic_to_unix_ns(hooked_at)
    {
        r.observed_from = Some(rfc3339_ns(from));
        r.observed_until = Some(rfc3339_ns(unix_now_ns()));
    } else {
        r.sessions = 0;
    }
    r
}
