//! End to end through the `xcover` binary: exact per-function counts in the JSON and LCOV
//! reports, code bytes and output of the target unchanged, re-attach after detach, genhtml
//! accepting the LCOV file, kept sessions, merge, and bad input.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

use xcover_testsupport::inspect::{code_bytes, exec_maps, func_addrs};
use xcover_testsupport::process::{Reaper, signal, spawn_ready};
use xcover_testsupport::report::{hits, read_report};

use xcover_bpf::maps::ArenaMaps;

use crate::support::{run_xcover, session_path, tracer_pids, xcover, xcover_ok as ok};

pub(crate) fn counts_exe() -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/targets/counts.c");
    crate::support::build_once(
        "counts",
        "cc",
        &["-O2", "-g", "-Wall", src.to_str().unwrap()],
    )
}

/// The counts target: SIGUSR2 runs a round (f1 × 1000, f3 × 7), SIGUSR1 ends it.
pub(crate) struct Counts {
    child: Child,
    out: BufReader<ChildStdout>,
    lines: Vec<String>,
}

impl Counts {
    pub(crate) fn start() -> Counts {
        Counts::spawn(Command::new(counts_exe()))
    }

    /// Starts the target with `cmd` (a copy of [`counts_exe`], maybe run as another user).
    pub(crate) fn spawn(mut cmd: Command) -> Counts {
        let (child, out) = spawn_ready(cmd.stdin(Stdio::null()), "counts");
        Counts {
            child,
            out,
            lines: vec![],
        }
    }

    pub(crate) fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn signal(&self, sig: i32) {
        signal(self.pid(), sig);
    }

    /// Runs one round and returns its output line.
    pub(crate) fn round(&mut self) -> String {
        self.signal(libc::SIGUSR2);
        let mut l = String::new();
        self.out.read_line(&mut l).unwrap();
        assert!(l.starts_with("round "), "unexpected output {l:?}");
        self.lines.push(l.clone());
        l
    }

    /// Ends the target; returns its whole output and exit code.
    pub(crate) fn finish(mut self) -> (Vec<String>, i32) {
        self.signal(libc::SIGUSR1);
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut self.out, &mut rest).unwrap();
        self.lines.extend(rest.lines().map(|l| format!("{l}\n")));
        let st = self.child.wait().unwrap();
        (std::mem::take(&mut self.lines), st.code().unwrap_or(-1))
    }
}

impl Drop for Counts {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn tmp(name: &str) -> PathBuf {
    xcover_testsupport::tmp::run_dir("xcover-e2e-").join(name)
}

/// A reference run without xcover: two rounds, then the end.
fn reference_output() -> Vec<String> {
    let mut t = Counts::start();
    t.round();
    t.round();
    let (lines, code) = t.finish();
    assert_eq!(code, 0);
    lines
}

#[test]
fn exact_counts_in_json_and_lcov_bytes_restored_and_reattach() {
    let reference = reference_output();
    let exe = counts_exe();
    let mut t = Counts::start();
    let pid = t.pid();
    let ps = pid.to_string();
    let addrs = func_addrs(pid, &exe, &["f1", "f2", "f3"]);
    let before = code_bytes(pid, &addrs);
    let maps_before = exec_maps(pid);

    for cycle in 1..=2 {
        let err = ok(&["attach", &ps, "--no-tui", "--keep"]);
        assert!(err.contains("functions hooked"), "{err}");
        assert_ne!(code_bytes(pid, &addrs)[0], before[0], "f1 is not patched");
        t.round();
        let status = ok(&["status", &ps]);
        assert!(status.contains("kept"), "{status}");
        let json = tmp(&format!("r{cycle}.json"));
        let info = tmp(&format!("r{cycle}.info"));
        ok(&[
            "detach",
            &ps,
            "--report",
            json.to_str().unwrap(),
            "--lcov",
            info.to_str().unwrap(),
        ]);
        // Every cycle starts counting afresh.
        let r = read_report(&json);
        assert_eq!(hits(&r, "f1"), (1000, true), "cycle {cycle}");
        assert_eq!(hits(&r, "f3"), (7, true), "cycle {cycle}");
        assert_eq!(hits(&r, "f2"), (0, false), "cycle {cycle}");
        assert_eq!(r["schema_version"], 1);
        assert_eq!(r["pid"], pid);
        let traced = r["funcs_traced"].as_array().unwrap();
        let ack = r["funcs_ack"].as_array().unwrap();
        assert!(traced.iter().any(|n| n == "f2"));
        assert!(!ack.iter().any(|n| n == "f2"));
        let cov = r["cov_by_func"].as_f64().unwrap();
        assert!((cov - 100.0 * ack.len() as f64 / traced.len() as f64).abs() < 1e-9);

        let lcov = std::fs::read_to_string(&info).unwrap();
        assert!(lcov.contains("SF:") && lcov.contains("counts.c"), "{lcov}");
        for want in ["FNDA:1000,f1\n", "FNDA:7,f3\n", "FNDA:0,f2\n"] {
            assert!(lcov.contains(want), "{want:?} missing from {lcov}");
        }
        let html = tmp(&format!("html{cycle}"));
        let g = Command::new(xcover_testsupport::tools::require("genhtml", "lcov"))
            .arg(&info)
            .arg("-o")
            .arg(&html)
            .arg("--quiet")
            .output()
            .unwrap();
        assert!(
            g.status.success(),
            "genhtml: {}",
            String::from_utf8_lossy(&g.stderr)
        );
        assert!(html.join("index.html").is_file());

        assert_eq!(code_bytes(pid, &addrs), before, "code bytes not restored");
        assert_eq!(exec_maps(pid), maps_before, "executable mappings changed");
        assert!(!session_path(pid).exists());
        assert!(tracer_pids(pid).iter().all(|&t| t == 0));
    }
    let (lines, code) = t.finish();
    assert_eq!(code, 0);
    assert_eq!(lines, reference, "the target's output changed under xcover");
}

#[test]
fn attach_for_a_duration_writes_the_report_at_the_end() {
    let mut t = Counts::start();
    let pid = t.pid();
    let json = tmp("duration.json");
    let mut x = xcover()
        .args(["attach", &pid.to_string(), "--no-tui", "--duration", "1.5"])
        .arg("--report")
        .arg(&json)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(x.stderr.take().unwrap());
    let mut l = String::new();
    while !l.contains("attached") {
        l.clear();
        assert!(
            err.read_line(&mut l).unwrap() > 0,
            "xcover ended before attaching"
        );
    }
    t.round();
    t.round();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    assert!(x.wait().unwrap().success(), "{rest}");
    assert!(rest.contains("hooked"), "no status line: {rest}");
    let r = read_report(&json);
    assert_eq!(hits(&r, "f1"), (2000, true));
    assert_eq!(hits(&r, "f3"), (14, true));
    assert_eq!(hits(&r, "f2"), (0, false));
    let (_, code) = t.finish();
    assert_eq!(code, 0);
}

#[test]
fn functions_lists_and_merge_sums() {
    let t = Counts::start();
    let ps = t.pid().to_string();
    let listing = ok(&["functions", &ps, "--include", "^f[0-9]$"]);
    for f in ["f1", "f2", "f3"] {
        assert!(
            listing.lines().any(|l| l.ends_with(&format!(" {f}"))),
            "{listing}"
        );
    }
    assert!(!listing.lines().any(|l| l.ends_with(" main")));
    let inventory = tmp("inventory.json");
    ok(&["functions", &ps, "--report", inventory.to_str().unwrap()]);
    let a = tmp("merge-a.json");
    let b = tmp("merge-b.json");
    let mut t = t;
    // Two sessions of one process, then one of another process of the same build.
    for out in [&a, &b] {
        ok(&["attach", &ps, "--no-tui", "--keep", "--exclude", "^f3$"]);
        t.round();
        ok(&["detach", &ps, "--report", out.to_str().unwrap()]);
    }
    let mut u = Counts::start();
    let us = u.pid().to_string();
    let c = tmp("merge-c.json");
    ok(&["attach", &us, "--no-tui", "--keep"]);
    u.round();
    ok(&["detach", &us, "--report", c.to_str().unwrap()]);

    let merged = tmp("merged.json");
    ok(&[
        "merge",
        inventory.to_str().unwrap(),
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "-o",
        merged.to_str().unwrap(),
    ]);
    let r = read_report(&merged);
    assert_eq!(hits(&r, "f1"), (2000, true));
    assert_eq!(
        hits(&r, "f3"),
        (0, false),
        "f3 was excluded from the attach"
    );
    // One process: `pid` is its pid, `pids` lists it once.
    assert_eq!(r["pid"], t.pid());
    assert_eq!(r["pids"], serde_json::json!([t.pid()]));

    ok(&[
        "merge",
        a.to_str().unwrap(),
        c.to_str().unwrap(),
        "-o",
        merged.to_str().unwrap(),
    ]);
    let r = read_report(&merged);
    assert_eq!(hits(&r, "f1"), (2000, true));
    assert_eq!(hits(&r, "f3"), (7, true));
    // Several processes: `pid` names none of them, `pids` all.
    let mut pids = vec![t.pid(), u.pid()];
    pids.sort();
    assert_eq!(r["pid"], 0, "a merged report of two processes has pid 0");
    assert_eq!(r["pids"], serde_json::json!(pids));

    // The same session's report twice, under its name or a copy's: refused, both named.
    let copy = tmp("merge-a-copy.json");
    std::fs::copy(&a, &copy).unwrap();
    for second in [&a, &copy] {
        let o = run_xcover(&[
            "merge",
            inventory.to_str().unwrap(),
            a.to_str().unwrap(),
            second.to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "merged {a:?} twice: {err}");
        assert!(o.stdout.is_empty(), "a refused merge printed a report");
        assert!(
            err.contains(&format!("{} (argument 2)", a.display()))
                && err.contains(&format!("{} (argument 3)", second.display()))
                && err.contains(&format!("pid {}", t.pid()))
                && err.contains("twice"),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    assert_eq!(t.finish().1, 0);
    assert_eq!(u.finish().1, 0);
}

#[test]
fn bad_input_exits_2_and_leaves_the_target_alone() {
    let t = Counts::start();
    let ps = t.pid().to_string();
    let missing = tmp("no/such/dir/r.json");
    let cases: Vec<Vec<&str>> = vec![
        vec!["attach", "999999999", "--no-tui"],
        vec!["attach", &ps, "--no-tui", "--include", "("],
        vec!["attach", &ps, "--no-tui", "--duration=-1"],
        vec![
            "attach",
            &ps,
            "--no-tui",
            "--include",
            "^nothing_matches_this$",
        ],
        vec![
            "attach",
            &ps,
            "--no-tui",
            "--report",
            missing.to_str().unwrap(),
        ],
        vec!["attach", &ps, "--no-tui", "--module", "libnosuch.so"],
        vec!["detach", &ps],
        vec!["status", &ps],
        vec!["attach", "notapid"],
    ];
    for args in cases {
        let o = run_xcover(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        // Every error is one line, the command line's too.
        assert!(err.starts_with("xcover: error:"), "{args:?}: {err}");
        assert_eq!(
            err.lines().count(),
            1,
            "{args:?}: error is not one line: {err}"
        );
        assert!(!session_path(t.pid()).exists(), "{args:?} left a session");
        assert!(tracer_pids(t.pid()).iter().all(|&p| p == 0));
    }
    let (_, code) = t.finish();
    assert_eq!(code, 0);
}

#[test]
fn stripped_target_gets_names_and_lines_from_its_debug_file() {
    // counts, stripped of .symtab, with its symbols and DWARF in counts.debug beside it,
    // found through .gnu_debuglink.
    let dir = tmp("stripped");
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("counts-stripped");
    let dbg = dir.join("counts-stripped.debug");
    std::fs::copy(counts_exe(), &exe).unwrap();
    let run = |args: &[&std::ffi::OsStr]| {
        let st = Command::new(args[0]).args(&args[1..]).status().unwrap();
        assert!(st.success(), "{args:?}");
    };
    run(&[
        "objcopy".as_ref(),
        "--only-keep-debug".as_ref(),
        exe.as_os_str(),
        dbg.as_os_str(),
    ]);
    run(&["strip".as_ref(), "--strip-all".as_ref(), exe.as_os_str()]);
    let link = format!("--add-gnu-debuglink={}", dbg.display());
    run(&["objcopy".as_ref(), link.as_ref(), exe.as_os_str()]);
    let nm = Command::new("nm").arg(&exe).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&nm.stdout).contains(" f1\n"),
        "strip left f1 in .symtab"
    );

    let mut child = Command::new(&exe)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut l = String::new();
    out.read_line(&mut l).unwrap();
    let ps = child.id().to_string();
    let listing = ok(&["functions", &ps, "--include", "^f[0-9]$"]);
    let json = tmp("stripped.json");
    let info = tmp("stripped.info");
    ok(&["attach", &ps, "--no-tui", "--keep", "--include", "^f[0-9]$"]);
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as i32, libc::SIGUSR2) };
    l.clear();
    out.read_line(&mut l).unwrap();
    ok(&[
        "detach",
        &ps,
        "--report",
        json.to_str().unwrap(),
        "--lcov",
        info.to_str().unwrap(),
    ]);
    let _ = child.kill();
    let _ = child.wait();
    for f in ["f1", "f2", "f3"] {
        assert!(
            listing.lines().any(|l| l.ends_with(&format!(" {f}"))),
            "{listing}"
        );
    }
    let r = read_report(&json);
    assert_eq!(hits(&r, "f1"), (1000, true));
    assert_eq!(hits(&r, "f2"), (0, false));
    let lcov = std::fs::read_to_string(&info).unwrap();
    assert!(
        lcov.contains("counts.c"),
        "no source lines from the debug file: {lcov}"
    );
}

/// The names of a live session's functions, in cookie order.
pub(crate) fn cookie_names(s: &xcover_injector::SessionFile) -> Vec<String> {
    let h = s.header();
    s.funcs()
        .unwrap()
        .iter()
        .map(|f| {
            let mut b = vec![0u8; f.name_len as usize];
            s.read_at(h.strings_off + u64::from(f.name_off), &mut b)
                .unwrap();
            String::from_utf8(b).unwrap()
        })
        .collect()
}

/// (max_entries, the u64 of each entry) of the probe map `name` of a live session.
pub(crate) fn array_map(s: &xcover_injector::SessionFile, name: &str) -> (u32, Vec<u64>) {
    let h = s.header();
    for i in 0..h.maps_count {
        let off = s.read_u64(h.maps_off + i * 8).unwrap();
        let found = s
            .with_arena(|a| {
                let m = a.map(off).unwrap();
                (m.name() == name).then(|| (m.header().max_entries, m.array_u64_all()))
            })
            .unwrap()
            .expect("the session has an arena");
        if let Some(v) = found {
            return v;
        }
    }
    panic!("no map `{name}` in the session");
}

/// A `--probe` object's arrays keep the sizes the object gives them, whatever the number of
/// hooked functions (3 here): `wide` (1000 entries) counts at key 999 and at key = cookie,
/// `narrow` (1 entry) only for cookie 0. Before, xcover resized both to 3 entries: key 999
/// had no slot and `narrow` counted cookies 1 and 2. A map of 0 entries is refused (exit 2).
#[test]
fn custom_probe_maps_keep_their_max_entries() {
    let probe = crate::support::build_probe("map_sizes.bpf.c", "map_sizes.bpf.o", &[]);
    let zero = crate::support::build_probe("map_sizes.bpf.c", "map_sizes0.bpf.o", &["-DNARROW=0"]);
    let mut t = Counts::start();
    let ps = t.pid().to_string();
    let select = ["--include", "^f[0-9]$"];

    let mut args = vec!["attach", &ps, "--no-tui", "--keep", "--probe"];
    args.push(zero.to_str().unwrap());
    args.extend(select);
    let o = run_xcover(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("map `narrow`: max_entries must be > 0") && err.contains("map_sizes0.bpf.o"),
        "{err}"
    );
    assert!(!session_path(t.pid()).exists());

    let mut args = vec!["attach", &ps, "--no-tui", "--keep", "--probe"];
    args.push(probe.to_str().unwrap());
    args.extend(select);
    ok(&args);
    t.round();
    let s = xcover_injector::SessionFile::open(t.pid()).unwrap();
    let names = cookie_names(&s);
    assert_eq!(names.len(), 3, "{names:?}");
    let cookie = |n: &str| names.iter().position(|x| x == n).unwrap();
    let (wide_n, wide) = array_map(&s, "wide");
    let (narrow_n, narrow) = array_map(&s, "narrow");
    assert_eq!((wide_n, narrow_n), (1000, 1), "max_entries changed");
    assert_eq!(wide[999], 1007, "hits counted at key 999");
    assert_eq!(wide[cookie("f1")], 1000);
    assert_eq!(wide[cookie("f3")], 7);
    assert_eq!(wide[cookie("f2")], 0);
    let want0 = [1000, 0, 7][["f1", "f2", "f3"]
        .iter()
        .position(|n| *n == names[0])
        .unwrap()];
    assert_eq!(
        narrow,
        vec![want0],
        "narrow counts only cookie 0 ({})",
        names[0]
    );
    drop(s);
    ok(&["detach", &ps]);
    assert!(!session_path(t.pid()).exists());
    assert!(tracer_pids(t.pid()).iter().all(|&p| p == 0));
    let (_, code) = t.finish();
    assert_eq!(code, 0);
}

/// File offset of each named function of the ELF file `exe`, from `nm` (link-time address)
/// and its `PT_LOAD` headers.
fn file_offsets(exe: &Path, names: &[&str]) -> Vec<u64> {
    let bytes = std::fs::read(exe).unwrap();
    let elf = goblin::elf::Elf::parse(&bytes).unwrap();
    xcover_testsupport::inspect::nm_addrs(exe, names)
        .into_iter()
        .map(|v| {
            let ph = elf
                .program_headers
                .iter()
                .find(|p| {
                    p.p_type == goblin::elf::program_header::PT_LOAD
                        && v >= p.p_vaddr
                        && v < p.p_vaddr + p.p_filesz
                })
                .unwrap();
            v - ph.p_vaddr + ph.p_offset
        })
        .collect()
}

/// A stripped executable with no debug file: its functions come from `.eh_frame`, named
/// `func_<file offset>` with source `eh_frame`, at the offsets the unstripped build gives
/// its symbols; attach hooks them and counts exactly; `xcover symbolize` with the debug
/// file kept aside gives them their names, files and lines back by build-id and offset.
#[test]
fn stripped_target_without_debug_file_gets_eh_frame_functions() {
    let dir = tmp("stripped-bare");
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("counts-bare");
    std::fs::copy(counts_exe(), &exe).unwrap();
    let offs = file_offsets(&exe, &["f1", "f2", "f3"]);
    let dbg_dir = dir.join("debug");
    let id = build_id(&exe);
    let dbg = dbg_dir.join(format!(".build-id/{}/{}.debug", &id[..2], &id[2..]));
    std::fs::create_dir_all(dbg.parent().unwrap()).unwrap();
    let st = Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(&exe)
        .arg(&dbg)
        .status()
        .unwrap();
    assert!(st.success());
    let st = Command::new("strip")
        .arg("--strip-all")
        .arg(&exe)
        .status()
        .unwrap();
    assert!(st.success());
    let mut child = Reaper(
        Command::new(&exe)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(child.0.stdout.take().unwrap());
    let mut l = String::new();
    out.read_line(&mut l).unwrap();
    assert_eq!(l, "ready\n");
    let pid = child.0.id() as i32;
    let ps = pid.to_string();
    let listing = ok(&["functions", &ps]);
    let names: Vec<String> = offs.iter().map(|o| format!("func_{o:x}")).collect();
    for n in &names {
        assert!(
            listing
                .lines()
                .any(|l| l.ends_with(&format!(" {n}")) && l.contains(" eh_frame ")),
            "{n} missing: {listing}"
        );
    }
    let json = tmp("stripped-bare.json");
    ok(&["attach", &ps, "--no-tui", "--keep"]);
    signal(pid, libc::SIGUSR2);
    l.clear();
    out.read_line(&mut l).unwrap();
    assert!(l.starts_with("round 1 "), "{l:?}");
    ok(&["detach", &ps, "--report", json.to_str().unwrap()]);
    let r = read_report(&json);
    assert_eq!(hits(&r, &names[0]), (1000, true));
    assert_eq!(hits(&r, &names[1]), (0, false));
    assert_eq!(hits(&r, &names[2]), (7, true));
    assert_eq!(
        xcover_testsupport::report::function(&r, &names[0])["source"],
        "eh_frame"
    );

    // Symbolized with the debug file kept aside: real names, lines, source `debug`.
    let named = tmp("stripped-bare-named.json");
    ok(&[
        "symbolize",
        json.to_str().unwrap(),
        "--debug-dir",
        dbg_dir.to_str().unwrap(),
        "-o",
        named.to_str().unwrap(),
    ]);
    let n = read_report(&named);
    assert_eq!(hits(&n, "f1"), (1000, true));
    assert_eq!(hits(&n, "f3"), (7, true));
    let f1 = xcover_testsupport::report::function(&n, "f1");
    assert_eq!(f1["source"], "debug");
    assert!(f1["file"].as_str().unwrap().ends_with("counts.c"), "{f1}");
    assert!(f1["line"].as_u64().unwrap() > 0);
    // The same, given the file itself.
    let again = run_xcover(&[
        "symbolize",
        json.to_str().unwrap(),
        "--debug-file",
        dbg.to_str().unwrap(),
    ]);
    assert!(again.status.success());
    let v: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(hits(&v, "f1"), (1000, true));
    // A debug file of another build (xcover's own binary) is refused.
    let other = run_xcover(&[
        "symbolize",
        json.to_str().unwrap(),
        "--debug-file",
        env!("CARGO_BIN_EXE_xcover"),
    ]);
    let err = String::from_utf8_lossy(&other.stderr);
    assert_eq!(other.status.code(), Some(2), "{err}");
    assert!(err.contains("build-id"), "{err}");
}

fn build_id(exe: &Path) -> String {
    let r = Command::new("readelf")
        .args(["-n"])
        .arg(exe)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&r.stdout).into_owned();
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: ").map(str::to_string))
        .expect("cc gave the target a build-id")
}

/// A stripped executable with no `.eh_frame` and no debug file: `functions` and `attach`
/// both refuse it the same way (exit 2, one line naming the file, why, and where its debug
/// symbols would be looked for), and the target is left alone.
#[test]
fn stripped_target_without_eh_frame_is_refused_alike() {
    let dir = tmp("stripped-noeh");
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("counts-noeh");
    let st = Command::new("objcopy")
        .args(["--strip-all", "--remove-section", ".eh_frame"])
        .args(["--remove-section", ".eh_frame_hdr"])
        .arg(counts_exe())
        .arg(&exe)
        .status()
        .unwrap();
    assert!(st.success());
    let mut child = Reaper(
        Command::new(&exe)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(child.0.stdout.take().unwrap());
    let mut l = String::new();
    out.read_line(&mut l).unwrap();
    assert_eq!(l, "ready\n");
    let pid = child.0.id() as i32;
    let ps = pid.to_string();
    let id = build_id(&exe);
    let debug_path = format!("/usr/lib/debug/.build-id/{}/{}.debug", &id[..2], &id[2..]);
    let mut errs = Vec::new();
    for args in [
        vec!["functions", &ps],
        vec!["attach", &ps, "--no-tui", "--keep"],
    ] {
        let o = run_xcover(&args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(o.stdout.is_empty(), "{args:?} printed functions");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        for want in [
            &format!("pid {pid}"),
            exe.to_str().unwrap(),
            "no symbol table (stripped)",
            "no .eh_frame",
            "debug symbols",
            &debug_path,
        ] {
            assert!(err.contains(want), "{args:?}: {want:?} missing from {err}");
        }
        assert!(!session_path(pid).exists());
        assert!(tracer_pids(pid).iter().all(|&p| p == 0));
        errs.push(err);
    }
    assert_eq!(errs[0], errs[1], "functions and attach disagree");
    signal(pid, libc::SIGUSR2);
    l.clear();
    out.read_line(&mut l).unwrap();
    assert!(
        l.starts_with("round 1 "),
        "the target did not run on: {l:?}"
    );
}

/// `tests/targets/versioned.c`, linked against `libver.so.1`, a symlink to the library
/// `libver.so.1.2.3` beside it: (the executable, the symlink).
fn versioned_exe() -> (PathBuf, PathBuf) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/targets");
    let lib = crate::support::build_once(
        "libver.so.1.2.3",
        "cc",
        &[
            "-O2",
            "-shared",
            "-fPIC",
            "-Wl,-soname,libver.so.1",
            src.join("libver.c").to_str().unwrap(),
        ],
    );
    let dir = lib.parent().unwrap().to_path_buf();
    let link = dir.join("libver.so.1");
    match std::os::unix::fs::symlink("libver.so.1.2.3", &link) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => panic!("{link:?}: {e}"),
        _ => {}
    }
    let rpath = format!("-Wl,-rpath,{}", dir.display());
    let exe = crate::support::build_once(
        "versioned",
        "cc",
        &[
            "-O2",
            src.join("versioned.c").to_str().unwrap(),
            link.to_str().unwrap(),
            &rpath,
        ],
    );
    (exe, link)
}

/// `--module libver.so.1` (the soname, a symlink to `libver.so.1.2.3`) keeps the name the
/// user gave: the listing, the JSON (`module`, with the file in `module_file`) and the LCOV
/// file show `libver.so.1`; the symlink's path names it too; a report that named the module
/// by its file merges with one that named it by its alias. Before, every report said
/// `libver.so.1.2.3` and the symlink's path was "no executable mapping".
#[test]
fn module_named_by_its_soname_keeps_that_name() {
    let (exe, link) = versioned_exe();
    let mut child = Reaper(
        Command::new(&exe)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(child.0.stdout.take().unwrap());
    let mut l = String::new();
    out.read_line(&mut l).unwrap();
    assert_eq!(l, "ready\n");
    let pid = child.0.id() as i32;
    let ps = pid.to_string();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    assert!(
        maps.contains("/libver.so.1.2.3\n"),
        "the library is not mapped by its versioned file name: {maps}"
    );

    let listing = ok(&[
        "functions",
        &ps,
        "--module",
        "libver.so.1",
        "--include",
        "^ver_",
    ]);
    for f in ["ver_a", "ver_b", "ver_never"] {
        assert!(
            listing
                .lines()
                .any(|l| l.ends_with(&format!(" libver.so.1!{f}"))),
            "{f}: {listing}"
        );
    }

    let mut round = 0;
    let mut session = |spec: &str, name: &str| -> (serde_json::Value, String) {
        ok(&[
            "attach",
            &ps,
            "--no-tui",
            "--keep",
            "--module",
            spec,
            "--include",
            "^ver_",
        ]);
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGUSR2) };
        round += 1;
        l.clear();
        out.read_line(&mut l).unwrap();
        assert!(l.starts_with(&format!("round {round} ")), "{l:?}");
        let json = tmp(&format!("{name}.json"));
        let info = tmp(&format!("{name}.info"));
        ok(&[
            "detach",
            &ps,
            "--report",
            json.to_str().unwrap(),
            "--lcov",
            info.to_str().unwrap(),
        ]);
        (read_report(&json), std::fs::read_to_string(&info).unwrap())
    };
    let func = |r: &serde_json::Value, name: &str| {
        r["functions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing from {r}"))
            .clone()
    };
    let by_soname = tmp("alias-soname.json");
    let by_path = tmp("alias-path.json");
    let by_file = tmp("alias-file.json");
    for (spec, out) in [
        ("libver.so.1", &by_soname),
        (link.to_str().unwrap(), &by_path),
        ("libver.so.1.2.3", &by_file),
    ] {
        // Writes the report to `out`.
        let (r, lcov) = session(spec, out.file_stem().unwrap().to_str().unwrap());
        let a = func(&r, "ver_a");
        assert_eq!(a["hits"], 10, "{spec}: {a}");
        assert_eq!(func(&r, "ver_b")["hits"], 3, "{spec}");
        assert_eq!(func(&r, "ver_never")["hits"], 0, "{spec}");
        if out == &by_file {
            assert_eq!(a["module"], "libver.so.1.2.3", "{spec}: {a}");
            assert!(a.get("module_file").is_none(), "{spec}: {a}");
            assert!(lcov.contains("SF:libver.so.1.2.3\n"), "{spec}: {lcov}");
        } else {
            assert_eq!(a["module"], "libver.so.1", "{spec}: {a}");
            assert_eq!(a["module_file"], "libver.so.1.2.3", "{spec}: {a}");
            assert!(lcov.contains("SF:libver.so.1\n"), "{spec}: {lcov}");
        }
    }
    // One module, whatever each report called it: counts add up, nothing is listed twice.
    let merged = tmp("alias-merged.json");
    ok(&[
        "merge",
        by_soname.to_str().unwrap(),
        by_path.to_str().unwrap(),
        by_file.to_str().unwrap(),
        "-o",
        merged.to_str().unwrap(),
    ]);
    let r = read_report(&merged);
    assert_eq!(r["functions"].as_array().unwrap().len(), 3, "{r}");
    assert_eq!(func(&r, "ver_a")["hits"], 30);
    assert_eq!(func(&r, "ver_a")["module"], "libver.so.1");
    assert!(!session_path(pid).exists());
}

/// A `--probe` object without any map attaches, runs on every hit and detaches cleanly.
/// Before, laying out its empty arena failed ("arena of 0 bytes at 0x1", exit 1).
#[test]
fn custom_probe_without_maps_attaches() {
    let probe = crate::support::build_probe("no_maps.bpf.c", "no_maps.bpf.o", &[]);
    let reference = reference_output();
    let mut t = Counts::start();
    let ps = t.pid().to_string();
    let err = ok(&[
        "attach",
        &ps,
        "--no-tui",
        "--keep",
        "--probe",
        probe.to_str().unwrap(),
    ]);
    assert!(err.contains("functions hooked"), "{err}");
    t.round();
    t.round();
    ok(&["detach", &ps]);
    assert!(!session_path(t.pid()).exists());
    assert!(tracer_pids(t.pid()).iter().all(|&p| p == 0));
    let (lines, code) = t.finish();
    assert_eq!(code, 0);
    assert_eq!(lines, reference);
}
