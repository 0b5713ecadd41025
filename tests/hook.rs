//! The agent's real job, against real processes: hook functions of a running C target with a
//! JIT-ed eBPF probe, count their calls exactly, unhook, and leave the target as it was.
//!
//! The session is filled here (not by the `xcover` binary's session builder): a three-entry
//! function table (`f1`, `f2`, `f3` of `tests/targets/hooktarget.c`, found with `nm` and
//! `/proc/<pid>/maps`), a probe assembled with `xcover_bpf::asm` that adds 1 to an ARRAY
//! map entry keyed by `bpf_get_attach_cookie` (the function's index), and the map arena.

use std::io::{BufRead, BufReader, Write};
use std::mem::{offset_of, size_of};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::Ordering;
use std::time::Duration;

use xcover_bpf::maps::{ArenaLayout, ArenaMaps};
use xcover_bpf::program::{MapDef, MapType};
use xcover_injector::{AttachOptions, Attached, SessionFile};
use xcover_session::{FuncEntry, FuncStatus, Region, SessionHeader, SessionState};

use crate::support::{self, AGENT};

const FUNCS: [&str; 3] = ["f1", "f2", "f3"];
const FUNCS_OFF: u64 = 4096;
const REGIONS_CAP: u64 = 256;
const PAGE: u64 = 4096;

/// Where the sections of a session for `n` functions go (page-aligned, in this order).
struct Layout {
    prog_off: u64,
    maps_off: u64,
    regions_off: u64,
    arena_off: u64,
    size: u64,
}

fn layout(n: usize) -> Layout {
    let up = |v: u64| v.div_ceil(PAGE) * PAGE;
    let prog_off = up(FUNCS_OFF + (n * size_of::<FuncEntry>()) as u64);
    let maps_off = prog_off + PAGE;
    let regions_off = maps_off + PAGE;
    let arena_off = up(regions_off + REGIONS_CAP * size_of::<Region>() as u64);
    let size = arena_off + up(counts_layout(n).size());
    Layout {
        prog_off,
        maps_off,
        regions_off,
        arena_off,
        size,
    }
}

/// `tests/targets/hooktarget.c`, built once per test run (PIE, -O2).
fn target_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/targets/hooktarget.c");
        let out = support::targets_dir().join("hooktarget");
        let o = Command::new("cc")
            .args(["-O2", "-pthread", "-fPIE", "-pie", "-Wall", "-o"])
            .arg(&out)
            .arg(&src)
            .output()
            .expect("run cc");
        assert!(
            o.status.success(),
            "cc hooktarget: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        out
    })
}

/// A running hooktarget, driven through its stdin.
struct Target {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Target {
    fn start(threads: bool) -> Target {
        let mut cmd = Command::new(target_bin());
        if threads {
            cmd.arg("threads");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start hooktarget");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line, "ready\n");
        Target {
            child,
            stdin,
            stdout,
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line
    }

    /// One round: f1 × 1000, f3 × 7. Returns the "sum=" line.
    fn run(&mut self) -> String {
        self.stdin.write_all(b"run\n").unwrap();
        self.stdin.flush().unwrap();
        self.line()
    }

    /// Quits; returns the remaining output and the exit code.
    fn quit(mut self) -> (String, i32) {
        self.stdin.write_all(b"quit\n").unwrap();
        self.stdin.flush().unwrap();
        let mut out = String::new();
        loop {
            let l = self.line();
            if l.is_empty() {
                break;
            }
            out.push_str(&l);
        }
        let st = self.child.wait().unwrap();
        (out, st.code().unwrap_or(-1))
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every defined symbol of the target: (name, link-time address, size).
fn symbols() -> Vec<(String, u64, u64)> {
    nm(target_bin(), false)
        .into_iter()
        .map(|(n, a, s, _)| (n, a, s))
        .collect()
}

/// `nm -S --defined-only [-D]`: (name, address, size, type letter).
fn nm(path: &Path, dynamic: bool) -> Vec<(String, u64, u64, char)> {
    let mut cmd = Command::new("nm");
    cmd.args(["-S", "--defined-only"]);
    if dynamic {
        cmd.arg("-D");
    }
    let o = cmd.arg(path).output().expect("run nm");
    assert!(o.status.success(), "nm {}", path.display());
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let addr = u64::from_str_radix(f.first()?, 16).ok()?;
            let (size, ty, name) = match f.len() {
                4 => (u64::from_str_radix(f[1], 16).ok()?, f[2], f[3]),
                3 => (0, f[1], f[2]),
                _ => return None,
            };
            let name = name.split('@').next().unwrap_or(name);
            Some((name.to_string(), addr, size, ty.chars().next()?))
        })
        .collect()
}

/// Every exported function of the target's libc at its runtime address (aliases once),
/// with cookies from `first_cookie` on. Padding is only assumed up to the next 16-byte
/// boundary: local functions between exported ones are not in `.dynsym`.
fn libc_funcs(pid: i32) -> Vec<FuncEntry> {
    let (base, path) = support::maps(pid)
        .iter()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 6 && f[5].contains("/libc.so") && f[2].trim_start_matches('0').is_empty())
                .then(|| {
                    let a = u64::from_str_radix(f[0].split('-').next().unwrap(), 16).unwrap();
                    (a, PathBuf::from(f[5]))
                })
        })
        .expect("libc mapped");
    let syms = nm(&path, true);
    let mut starts: Vec<u64> = syms.iter().map(|s| s.1).collect();
    starts.sort_unstable();
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for (_, vaddr, size, ty) in syms {
        if !matches!(ty, 'T' | 'W') || size == 0 || !seen.insert(vaddr) {
            continue;
        }
        let next = starts
            .iter()
            .copied()
            .find(|&a| a > vaddr)
            .unwrap_or(u64::MAX)
            .min((vaddr + size).div_ceil(16) * 16);
        out.push(FuncEntry {
            addr: base + vaddr,
            size,
            offset: vaddr,
            pad_end: base + next,
            vaddr,
            module: 1,
            ..FuncEntry::default()
        });
    }
    out
}

/// Where the target's executable is loaded (its mapping at file offset 0).
fn load_base(pid: i32) -> u64 {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    let exe = exe.to_str().unwrap().to_string();
    for l in support::maps(pid) {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() >= 6 && f[5] == exe && u64::from_str_radix(f[2], 16).unwrap() == 0 {
            return u64::from_str_radix(f[0].split('-').next().unwrap(), 16).unwrap();
        }
    }
    panic!("{exe} not mapped in {pid}");
}

/// The function table for f1, f2, f3 at their runtime addresses.
fn func_table(pid: i32) -> Vec<FuncEntry> {
    let syms = symbols();
    let base = load_base(pid);
    FUNCS
        .iter()
        .map(|name| {
            let &(_, vaddr, size) = syms.iter().find(|s| s.0 == *name).unwrap();
            let next = syms
                .iter()
                .map(|s| s.1)
                .filter(|&a| a > vaddr)
                .min()
                .unwrap_or(vaddr + size);
            FuncEntry {
                addr: base + vaddr,
                size,
                offset: vaddr,
                pad_end: base + next,
                vaddr,
                ..FuncEntry::default()
            }
        })
        .collect()
}

/// `counts[bpf_get_attach_cookie()] += 1`.
fn probe() -> Vec<u8> {
    let mut insns = xcover_bpf::asm::assemble(
        "
        call 174                # cookie = bpf_get_attach_cookie(ctx)
        stxw [%r10-4], %r0
        lddw %r1, 0             # map 0 (src = BPF_PSEUDO_MAP_FD, set below)
        mov %r2, %r10
        add %r2, -4
        call 1                  # bpf_map_lookup_elem(counts, &cookie)
        jeq %r0, 0, +2
        mov %r1, 1
        lock add [%r0], %r1
        mov %r0, 0
        exit
        ",
    )
    .unwrap();
    insns[2].src = 1;
    insns.iter().flat_map(|i| i.encode()).collect()
}

fn counts_layout(n: usize) -> ArenaLayout {
    let def = MapDef::new("counts", MapType::Array, 4, 8, n as u32);
    ArenaLayout::new(&[def], 1).unwrap()
}

/// Fills a fresh session: function table, probe, map table, region table, arena.
fn fill_session(s: &SessionFile, funcs: &[FuncEntry]) -> Result<(), String> {
    let e = |e: xcover_session::file::FileError| e.to_string();
    let l = layout(funcs.len());
    let layout = counts_layout(funcs.len());
    let mut arena = vec![0u8; layout.size() as usize];
    layout.init_slice(&mut arena).map_err(|e| e.to_string())?;
    let prog = probe();
    let mut table = Vec::new();
    for f in funcs {
        table.extend_from_slice(bytemuck_bytes(f));
    }
    s.write_at(FUNCS_OFF, &table).map_err(e)?;
    s.write_at(l.prog_off, &prog).map_err(e)?;
    s.write_at(l.maps_off, &layout.offsets()[0].to_le_bytes())
        .map_err(e)?;
    s.write_at(l.arena_off, &arena).map_err(e)?;
    let put = |off: usize, v: u64| s.write_at(off as u64, &v.to_le_bytes()).map_err(e);
    put(offset_of!(SessionHeader, funcs_off), FUNCS_OFF)?;
    put(offset_of!(SessionHeader, funcs_count), funcs.len() as u64)?;
    put(offset_of!(SessionHeader, prog_off), l.prog_off)?;
    put(offset_of!(SessionHeader, prog_insns), prog.len() as u64 / 8)?;
    put(offset_of!(SessionHeader, maps_off), l.maps_off)?;
    put(offset_of!(SessionHeader, maps_count), 1)?;
    put(offset_of!(SessionHeader, hits_map), 0)?;
    put(offset_of!(SessionHeader, events_map), u64::MAX)?;
    put(offset_of!(SessionHeader, regions_off), l.regions_off)?;
    put(offset_of!(SessionHeader, regions_cap), REGIONS_CAP)?;
    put(offset_of!(SessionHeader, arena_off), l.arena_off)?;
    put(offset_of!(SessionHeader, arena_size), arena.len() as u64)?;
    s.write_at(offset_of!(SessionHeader, ncpus) as u64, &1u32.to_le_bytes())
        .map_err(e)?;
    Ok(())
}

/// The bytes of a `FuncEntry` (plain `repr(C)` integers, no padding).
fn bytemuck_bytes(f: &FuncEntry) -> &[u8] {
    bytemuck::bytes_of(f)
}

fn attach(pid: i32, funcs: &[FuncEntry]) -> Attached {
    let prepare = |s: &SessionFile| fill_session(s, funcs);
    let opts = AttachOptions {
        session_size: layout(funcs.len()).size,
        prepare: Some(&prepare),
        ..AttachOptions::default()
    };
    xcover_injector::attach(pid, AGENT, &opts).unwrap_or_else(|e| panic!("attach {pid}: {e}"))
}

/// Calls counted so far, per function.
fn counts(s: &SessionFile) -> Vec<u64> {
    let n = s.header().funcs_count as usize;
    let off = counts_layout(n).offsets()[0];
    s.with_arena(|a| {
        let m = a.map(off).unwrap();
        (0..n as u32).map(|i| m.array_u64(i).unwrap()).collect()
    })
    .unwrap()
    .unwrap()
}

/// The first 16 bytes of each function, read from the target's memory.
fn code_bytes(pid: i32, funcs: &[FuncEntry]) -> Vec<[u8; 16]> {
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    funcs
        .iter()
        .map(|f| {
            let mut b = [0u8; 16];
            mem.read_exact_at(&mut b, f.addr).unwrap();
            b
        })
        .collect()
}

/// `/proc/<pid>/maps` as ranges, with adjacent pieces of one mapping merged (patching code
/// splits the text mapping's VMA while it is writable; the kernel may leave it split) and
/// the main stack's start left out (the stack grows on its own).
fn mappings(pid: i32) -> Vec<String> {
    let mut out: Vec<(u64, u64, String, String)> = Vec::new();
    for l in support::maps(pid) {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (a, b) = f[0].split_once('-').unwrap();
        let (a, b) = (
            u64::from_str_radix(a, 16).unwrap(),
            u64::from_str_radix(b, 16).unwrap(),
        );
        let perms = f[1].to_string();
        let path = f.get(5).map_or(String::new(), |p| p.to_string());
        if let Some(last) = out.last_mut()
            && last.1 == a
            && last.2 == perms
            && last.3 == path
            && !path.is_empty()
        {
            last.1 = b;
            continue;
        }
        out.push((a, b, perms, path));
    }
    out.iter()
        .map(|(a, b, p, n)| {
            if n == "[stack]" {
                format!("..-{b:x} {p} {n}")
            } else {
                format!("{a:x}-{b:x} {p} {n}")
            }
        })
        .collect()
}

fn statuses(s: &SessionFile) -> Vec<u32> {
    s.funcs().unwrap().iter().map(|f| f.status).collect()
}

/// The sum line of a run without xcover.
fn baseline_sum() -> String {
    let mut t = Target::start(false);
    let sum = t.run();
    assert!(sum.starts_with("sum="), "{sum}");
    let (rest, code) = t.quit();
    assert_eq!((rest.as_str(), code), ("bye\n", 0));
    sum
}

#[test]
fn exact_counts_and_a_clean_detach() {
    let want = baseline_sum();
    let mut t = Target::start(false);
    let pid = t.pid();
    let funcs = func_table(pid);
    let before_code = code_bytes(pid, &funcs);
    let before_maps = mappings(pid);

    let att = attach(pid, &funcs);
    let s = att.session();
    let h = s.header();
    assert_eq!(h.state.load(Ordering::Acquire), SessionState::Live as u32);
    assert_eq!(
        statuses(s),
        vec![FuncStatus::Hooked as u32; 3],
        "{:?}",
        s.funcs()
    );
    assert_eq!(h.funcs_hooked.load(Ordering::Acquire), 3);
    assert!(h.hooked_at_ns.load(Ordering::Acquire) > 0);
    assert_eq!(att.stats.funcs, 3);
    let hooked_code = code_bytes(pid, &funcs);
    for i in 0..3 {
        assert_ne!(hooked_code[i], before_code[i], "{} not patched", FUNCS[i]);
    }
    // The agent recorded its mappings (heap, JIT code, trampolines), all in the target.
    let n = h.regions_count.load(Ordering::Acquire);
    let mut raw = vec![0u8; n as usize * size_of::<Region>()];
    s.read_at(h.regions_off, &mut raw).unwrap();
    let regions: Vec<Region> = raw
        .chunks_exact(size_of::<Region>())
        .map(bytemuck::pod_read_unaligned)
        .collect();
    for k in [
        xcover_session::REGION_HEAP,
        xcover_session::REGION_JIT,
        xcover_session::REGION_TRAMPOLINES,
    ] {
        assert!(
            regions.iter().any(|r| r.kind == k),
            "no region of kind {k}: {regions:?}"
        );
    }
    for r in &regions {
        assert!(support::mapped(pid, r.start), "{r:?} not mapped");
    }
    eprintln!(
        "attach: {} functions hooked in {:?} inside the target; stopped {:?}; total {:?}",
        att.stats.funcs, att.stats.agent_call, att.stats.stopped, att.stats.total
    );

    assert_eq!(counts(s), vec![0, 0, 0]);
    assert_eq!(t.run(), want);
    assert_eq!(counts(s), vec![1000, 0, 7]);
    assert_eq!(t.run(), want);
    assert_eq!(counts(s), vec![2000, 0, 14]);

    let stats = att.detach(AGENT).unwrap();
    assert_eq!(stats.funcs, 3);
    assert_eq!(code_bytes(pid, &funcs), before_code, "code not restored");
    for r in &regions {
        assert!(!support::mapped(pid, r.start), "{r:?} left mapped");
    }
    assert_eq!(mappings(pid), before_maps, "mappings differ after detach");
    assert!(!support::session_path(pid).exists());
    assert!(support::tracer_pids(pid).iter().all(|&t| t == 0));
    assert_eq!(t.run(), want);
    let (rest, code) = t.quit();
    assert_eq!((rest.as_str(), code), ("bye\n", 0));
}

#[test]
fn reattach_after_detach_counts_again() {
    let want = baseline_sum();
    let mut t = Target::start(false);
    let pid = t.pid();
    let funcs = func_table(pid);
    let before_code = code_bytes(pid, &funcs);
    for round in 0..3 {
        let att = attach(pid, &funcs);
        assert_eq!(statuses(att.session()), vec![FuncStatus::Hooked as u32; 3]);
        assert_eq!(t.run(), want);
        assert_eq!(counts(att.session()), vec![1000, 0, 7], "round {round}");
        att.detach(AGENT).unwrap();
        assert_eq!(code_bytes(pid, &funcs), before_code, "round {round}");
    }
    assert_eq!(t.run(), want);
    let (rest, code) = t.quit();
    assert_eq!((rest.as_str(), code), ("bye\n", 0));
}

#[test]
fn hooking_again_does_not_hook_twice() {
    let want = baseline_sum();
    let mut t = Target::start(false);
    let pid = t.pid();
    let funcs = func_table(pid);
    let att = attach(pid, &funcs);
    let st = xcover_injector::hook_pending(pid, AGENT, att.session()).unwrap();
    assert_eq!(st.funcs, 0, "nothing was pending");
    assert_eq!(
        att.session().header().funcs_hooked.load(Ordering::Acquire),
        3
    );
    assert_eq!(t.run(), want);
    assert_eq!(counts(att.session()), vec![1000, 0, 7]);
    att.detach(AGENT).unwrap();
    let (rest, code) = t.quit();
    assert_eq!((rest.as_str(), code), ("bye\n", 0));
}

#[test]
fn a_probe_the_verifier_rejects_is_reported_and_changes_nothing() {
    let mut t = Target::start(false);
    let pid = t.pid();
    let funcs = func_table(pid);
    let before_code = code_bytes(pid, &funcs);
    let before_maps = mappings(pid);
    let prepare = |s: &SessionFile| {
        fill_session(s, &funcs)?;
        // `exit` without setting r0: the verifier refuses to read an uninitialised register.
        let bad = xcover_bpf::asm::assemble("exit").unwrap();
        s.write_at(layout(funcs.len()).prog_off, &bad[0].encode())
            .map_err(|e| e.to_string())?;
        s.write_at(
            offset_of!(SessionHeader, prog_insns) as u64,
            &1u64.to_le_bytes(),
        )
        .map_err(|e| e.to_string())
    };
    let opts = AttachOptions {
        session_size: layout(funcs.len()).size,
        prepare: Some(&prepare),
        ..AttachOptions::default()
    };
    let err = xcover_injector::attach(pid, AGENT, &opts)
        .err()
        .expect("attach must fail");
    let msg = err.to_string();
    assert!(msg.contains("verifier"), "{msg}");
    assert_eq!(code_bytes(pid, &funcs), before_code);
    assert_eq!(mappings(pid), before_maps);
    assert!(!support::session_path(pid).exists());
    assert!(t.run().starts_with("sum="));
    let (_, code) = t.quit();
    assert_eq!(code, 0);
}

#[test]
fn eight_busy_threads_survive_20_attach_detach_cycles() {
    // The verdict line of a run without xcover.
    let base = {
        let t = Target::start(true);
        std::thread::sleep(Duration::from_millis(100));
        t.quit()
    };
    assert!(base.0.starts_with("threads ok "), "{}", base.0);

    let t = Target::start(true);
    let pid = t.pid();
    let funcs = func_table(pid);
    let before_code = code_bytes(pid, &funcs);
    let mut worst_stop = Duration::ZERO;
    let mut worst_call = Duration::ZERO;
    let mut retries = 0;
    for cycle in 0..20 {
        let att = attach(pid, &funcs);
        worst_stop = worst_stop.max(att.stats.stopped);
        worst_call = worst_call.max(att.stats.agent_call);
        std::thread::sleep(Duration::from_millis(10));
        let c = counts(att.session());
        assert!(c[0] > 0 && c[2] > 0 && c[1] == 0, "cycle {cycle}: {c:?}");
        let st = att
            .detach(AGENT)
            .unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
        worst_stop = worst_stop.max(st.stopped);
        worst_call = worst_call.max(st.agent_call);
        retries += st.retries;
        assert_eq!(code_bytes(pid, &funcs), before_code, "cycle {cycle}");
    }
    eprintln!(
        "20 cycles with 8 busy threads: worst stop {worst_stop:?} (worst agent call \
         {worst_call:?}), {retries} detach retries"
    );
    let (out, code) = t.quit();
    assert_eq!(code, 0);
    assert_eq!(out, base.0, "the workers noticed");
}

#[test]
fn every_libc_function_and_the_targets_hooked_at_once() {
    let want = baseline_sum();
    let mut t = Target::start(false);
    let pid = t.pid();
    let mut funcs = func_table(pid);
    funcs.extend(libc_funcs(pid));
    assert!(funcs.len() > 1000, "only {} functions", funcs.len());
    let before = code_bytes(pid, &funcs);
    let before_maps = mappings(pid);
    let att = attach(pid, &funcs);
    let s = att.session();
    let h = s.header();
    let hooked = h.funcs_hooked.load(Ordering::Acquire);
    let skipped = h.funcs_skipped.load(Ordering::Acquire);
    assert_eq!(hooked + skipped, funcs.len() as u64);
    assert!(
        hooked * 10 >= funcs.len() as u64 * 9,
        "{hooked} hooked of {}",
        funcs.len()
    );
    eprintln!(
        "{hooked} functions hooked, {skipped} skipped: {:?} inside the target (HOOK), target \
         stopped {:?}, attach {:?}",
        att.stats.agent_call, att.stats.stopped, att.stats.total
    );
    assert_eq!(t.run(), want);
    let c = counts(s);
    assert_eq!(c[..3], [1000, 0, 7]);
    // `run` went through fgets and printf at least: libc's functions count too.
    assert!(c[3..].iter().sum::<u64>() > 0, "no libc function counted");
    let st = att.detach(AGENT).unwrap();
    eprintln!(
        "detach: {} unhooked in {:?} inside the target, stopped {:?} ({} retries)",
        st.funcs, st.agent_call, st.stopped, st.retries
    );
    assert_eq!(code_bytes(pid, &funcs), before, "code not restored");
    assert_eq!(mappings(pid), before_maps, "mappings differ after detach");
    assert_eq!(t.run(), want);
    let (rest, code) = t.quit();
    assert_eq!((rest.as_str(), code), ("bye\n", 0));
}
