//! Hostile input (issue 8): bad command lines, pids, paths, regexes and probe objects each
//! get one clear error line and exit code 2 with the target untouched; corrupted or foreign
//! session files are refused, and the session reader never panics on them.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::faults::{Chaos, tmp_path, xcover_run};
use crate::support::{self, session_path, tracer_pids};

const LIMIT: Duration = Duration::from_secs(30);

/// The coverage probe with its final `exit` turned into a jump far out of the program:
/// a well-formed object the verifier must reject.
fn rejected_probe() -> Vec<u8> {
    let mut o = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/bpf/cover.bpf.o")).unwrap();
    let exit = [0x95u8, 0, 0, 0, 0, 0, 0, 0];
    let at = o
        .windows(8)
        .rposition(|w| w == exit)
        .expect("an exit instruction");
    o[at..at + 8].copy_from_slice(&[0x05, 0, 0xff, 0x7f, 0, 0, 0, 0]);
    o
}

#[test]
fn bad_command_lines_pids_paths_regexes_and_probes() {
    let mut t = Chaos::start(&["work"]);
    let pid = t.pid();
    let ps = pid.to_string();
    let maps_before = support::maps(pid);
    let dir = tmp_path("hostile");
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p.to_str().unwrap().to_string()
    };
    let cover = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/bpf/cover.bpf.o")).unwrap();
    let empty = write("empty.o", b"");
    let text = write("text.o", b"this is not an ELF object\n");
    let cut = write("cut.o", &cover[..cover.len() / 3]);
    let host_elf = write("host.o", &std::fs::read("/proc/self/exe").unwrap()[..65536]);
    let rejected = write("rejected.o", &rejected_probe());
    let unreadable = write("unreadable.o", &cover);
    std::fs::set_permissions(&unreadable, std::fs::Permissions::from_mode(0o000)).unwrap();
    let missing = dir.join("missing.o").to_str().unwrap().to_string();
    // SAFETY: geteuid has no preconditions.
    let is_root = unsafe { libc::geteuid() } == 0;

    // (arguments, what the error line must say). Every error is one line, the command
    // line's own included.
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["attach"], "required"),
        (vec!["attach", "abc"], "invalid value"),
        (vec!["attach", "-5"], "unexpected argument"),
        (vec!["attach", "99999999", "--no-tui"], "no process"),
        (vec!["attach", "0", "--no-tui"], "no process"),
        (vec!["attach", &ps, "--bogus"], "unexpected argument"),
        (
            vec!["attach", &ps, "--no-tui", "--include", "("],
            "bad regex",
        ),
        (
            vec!["attach", &ps, "--no-tui", "--exclude", "[z"],
            "bad regex",
        ),
        (
            vec![
                "attach",
                &ps,
                "--no-tui",
                "--include",
                "^nothing_matches_this$",
            ],
            "no function",
        ),
        (
            vec!["attach", &ps, "--no-tui", "--duration", "nan"],
            "--duration",
        ),
        (
            vec![
                "attach",
                &ps,
                "--no-tui",
                "--report",
                "/nonexistent/dir/r.json",
            ],
            "does not exist",
        ),
        (
            vec!["attach", &ps, "--no-tui", "--lcov", "/nonexistent/x.info"],
            "does not exist",
        ),
        (
            vec!["attach", &ps, "--no-tui", "--probe", &missing],
            "--probe",
        ),
        (
            vec!["attach", &ps, "--no-tui", "--probe", &empty],
            "probe object",
        ),
        (
            vec!["attach", &ps, "--no-tui", "--probe", &text],
            "probe object",
        ),
        (
            vec!["attach", &ps, "--no-tui", "--probe", &cut],
            "probe object",
        ),
        (
            vec!["attach", &ps, "--no-tui", "--probe", &host_elf],
            "probe object",
        ),
        (
            vec!["attach", &ps, "--no-tui", "--probe", &rejected],
            "rejected by the verifier",
        ),
        (vec!["detach", &ps], "no xcover session"),
        (vec!["detach", "99999999"], "no xcover session"),
        (vec!["status", "abc"], "invalid value"),
        (vec!["status", "99999999"], "no xcover session"),
        (vec!["functions", "99999999"], "process"),
    ];
    let mut cases = cases;
    if !is_root {
        // Root reads a mode-000 file anyway.
        cases.push((
            vec!["attach", &ps, "--no-tui", "--probe", &unreadable],
            "--probe",
        ));
    }
    for (args, want) in &cases {
        let (code, err) = xcover_run(args, LIMIT);
        assert_eq!(code, 2, "{args:?}: {err}");
        let first = err.lines().next().unwrap_or("");
        assert!(first.contains("error"), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err:?} lacks {want:?}");
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{args:?}: not one line: {err}"
        );
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        // The target is untouched.
        assert!(!session_path(pid).exists(), "{args:?} left a session");
        assert!(tracer_pids(pid).iter().all(|&p| p == 0), "{args:?}");
        assert_eq!(
            support::maps(pid),
            maps_before,
            "{args:?} changed the target's mappings"
        );
        assert!(t.alive(), "{args:?} hurt the target");
    }
    assert_eq!(t.stop(), (0, "work ok\n".to_string()));
}

/// Writes `bytes` as the session file of `pid`, mode 0600.
fn plant(pid: i32, bytes: &[u8]) {
    let p = session_path(pid);
    let _ = std::fs::remove_file(&p);
    std::fs::write(&p, bytes).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A live session's header bytes (and the whole file), to corrupt.
fn real_session(t: &Chaos) -> Vec<u8> {
    let ps = t.pid().to_string();
    let (code, err) = xcover_run(&["attach", &ps, "--no-tui", "--keep"], LIMIT);
    assert_eq!(code, 0, "{err}");
    let bytes = std::fs::read(session_path(t.pid())).unwrap();
    let (code, err) = xcover_run(&["detach", &ps], LIMIT);
    assert_eq!(code, 0, "{err}");
    bytes
}

/// Corrupted and foreign session files: `status`, `detach` and `attach` refuse them (or,
/// for `attach`, replace a file that is not a session of this target) and never panic or
/// touch the target on their word.
#[test]
fn corrupted_or_foreign_session_files_are_refused() {
    let mut t = Chaos::start(&["work"]);
    let pid = t.pid();
    let ps = pid.to_string();
    let good = real_session(&t);
    let maps_before = support::maps(pid);
    let hdr = std::mem::size_of::<xcover_session::SessionHeader>();
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("short", good[..64].to_vec()),
        (
            "garbage",
            (0..8192u32).map(|i| (i * 131 % 251) as u8).collect(),
        ),
        ("header only", good[..hdr].to_vec()),
    ];
    let mut bad_magic = good.clone();
    bad_magic[0] ^= 0xff;
    cases.push(("bad magic", bad_magic));
    let mut bad_version = good.clone();
    bad_version[8] = 99;
    cases.push(("bad version", bad_version));
    let mut other_pid = good.clone();
    let off = std::mem::offset_of!(xcover_session::SessionHeader, target_pid);
    other_pid[off..off + 4].copy_from_slice(&1u32.to_le_bytes());
    cases.push(("another pid", other_pid));
    // Offsets and counts far out of the file, one field at a time.
    use xcover_session::SessionHeader as H;
    for (name, off) in [
        ("funcs_off", std::mem::offset_of!(H, funcs_off)),
        ("funcs_count", std::mem::offset_of!(H, funcs_count)),
        ("strings_off", std::mem::offset_of!(H, strings_off)),
        ("strings_size", std::mem::offset_of!(H, strings_size)),
        ("modules_off", std::mem::offset_of!(H, modules_off)),
        ("modules_count", std::mem::offset_of!(H, modules_count)),
        ("maps_off", std::mem::offset_of!(H, maps_off)),
        ("maps_count", std::mem::offset_of!(H, maps_count)),
        ("arena_off", std::mem::offset_of!(H, arena_off)),
        ("arena_size", std::mem::offset_of!(H, arena_size)),
        ("hits_map", std::mem::offset_of!(H, hits_map)),
        ("regions_off", std::mem::offset_of!(H, regions_off)),
        ("regions_cap", std::mem::offset_of!(H, regions_cap)),
        ("total_size", std::mem::offset_of!(H, total_size)),
    ] {
        for v in [u64::MAX, u64::MAX / 2, 1 << 40, good.len() as u64 - 1] {
            let mut b = good.clone();
            b[off..off + 8].copy_from_slice(&v.to_le_bytes());
            cases.push((name, b));
        }
    }
    // Every function's name pointing out of the string section.
    let mut names = good.clone();
    let foff = u64::from_le_bytes(
        good[std::mem::offset_of!(H, funcs_off)..][..8]
            .try_into()
            .unwrap(),
    ) as usize;
    let fcount = u64::from_le_bytes(
        good[std::mem::offset_of!(H, funcs_count)..][..8]
            .try_into()
            .unwrap(),
    ) as usize;
    let fsize = std::mem::size_of::<xcover_session::FuncEntry>();
    let name_off = std::mem::offset_of!(xcover_session::FuncEntry, name_off);
    for i in 0..fcount {
        let at = foff + i * fsize + name_off;
        names[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    }
    cases.push(("names", names));

    for (i, (what, bytes)) in cases.iter().enumerate() {
        // The first seven are not this target's session at all; the others are, with a
        // field corrupted (detach may then find nothing to unload, never act on it).
        let foreign = i < 7;
        for cmd in ["status", "detach"] {
            plant(pid, bytes);
            let (code, err) = xcover_run(&[cmd, &ps], LIMIT);
            assert!(!err.contains("panicked"), "{what}: {cmd}: {err}");
            if cmd == "detach" && foreign {
                assert_ne!(code, 0, "{what}: detach trusted a corrupted session: {err}");
                assert!(err.trim().lines().count() == 1, "{what}: {err}");
            }
            assert!(tracer_pids(pid).iter().all(|&p| p == 0));
            assert_eq!(
                support::maps(pid),
                maps_before,
                "{what}: {cmd} touched the target"
            );
        }
    }
    let _ = std::fs::remove_file(session_path(pid));
    assert!(t.alive());
    assert_eq!(t.stop(), (0, "work ok\n".to_string()));
}
