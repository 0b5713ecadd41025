//! Coverage where people already look, each output consumed by the real engine: Prometheus
//! (from Debian) scrapes `attach --metrics` and answers a PromQL query with the exact count;
//! the OTLP push is decoded by a receiver built on the official OpenTelemetry protobuf
//! definitions; `reach --openvex` validates against the published OpenVEX schema with the
//! statuses the fixture calls for; `diff` and `merge` of real and generated reports.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use xcover_testsupport::report::{hits, read_report};

use crate::e2e::{Counts, tmp};
use crate::support::{run_xcover, xcover, xcover_ok as ok};

/// The Python of the venv `scripts/setup.sh` makes for these tests.
fn python() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pyenv/bin/python");
    assert!(
        p.is_file(),
        "{}",
        xcover_testsupport::tools::missing(
            "the Python venv target/pyenv (opentelemetry-proto, jsonschema)",
            "python3-venv, and the PyPI packages it pins"
        )
    );
    p
}

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// Kills and reaps a helper process whatever happens.
struct Helper(Child);

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A watch of the counts target by `xcover attach … --no-tui` with `extra` options; returns
/// it once it has attached, with the lines it printed so far.
fn watch(pid: i32, extra: &[&str]) -> (Helper, BufReader<ChildStderr>, Vec<String>) {
    let mut x = xcover()
        .args(["attach", &pid.to_string(), "--no-tui"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(x.stderr.take().unwrap());
    let mut lines = vec![];
    loop {
        let mut l = String::new();
        assert!(
            err.read_line(&mut l).unwrap() > 0,
            "xcover ended before attaching: {lines:?}"
        );
        let done = l.contains("attached to pid");
        lines.push(l);
        if done {
            break;
        }
    }
    (Helper(x), err, lines)
}

/// Reads lines from `err` until one contains `what`; returns it.
fn line_with(err: &mut BufReader<ChildStderr>, what: &str, seen: &mut Vec<String>) -> String {
    loop {
        let mut l = String::new();
        assert!(
            err.read_line(&mut l).unwrap() > 0,
            "xcover ended before saying {what:?}: {seen:?}"
        );
        seen.push(l.clone());
        if l.contains(what) {
            return l;
        }
    }
}

/// Ends a watch with SIGTERM (a clean detach) and returns the rest of what it said.
fn stop(mut x: Helper, mut err: BufReader<ChildStderr>) -> String {
    xcover_testsupport::process::signal(x.0.id() as i32, libc::SIGTERM);
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    let st = x.0.wait().unwrap();
    assert!(st.success(), "xcover ended with {st}: {rest}");
    rest
}

/// `GET path` on `addr` (HTTP/1.0); returns the status and the body.
fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut c = TcpStream::connect(addr).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(c, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    c.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|x| x.1)?.to_string();
    Some((status, body))
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A free port on 127.0.0.1 (bound, then released for the tool that will take it).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn prometheus_scrapes_the_exact_count() {
    let prometheus = xcover_testsupport::tools::require("prometheus", "prometheus");
    let mut t = Counts::start();
    t.round(); // before the attach: not counted
    let json = tmp("prometheus-report.json");
    let (x, mut err, mut seen) = watch(
        t.pid(),
        &[
            "--metrics",
            "127.0.0.1:0",
            "--report",
            json.to_str().unwrap(),
        ],
    );
    let l = line_with(&mut err, "serving metrics at http://", &mut seen);
    let addr = l
        .split("http://")
        .nth(1)
        .and_then(|r| r.strip_suffix("/metrics\n"))
        .unwrap()
        .to_string();
    t.round();
    t.round();

    // Prometheus itself, on loopback, scraping xcover every second.
    let dir = tmp("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  \
             - job_name: xcover\n    static_configs:\n      - targets: ['{addr}']\n"
        ),
    )
    .unwrap();
    let web = format!("127.0.0.1:{}", free_port());
    let prom = Helper(
        Command::new(prometheus)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let query = |q: &str| -> Option<Value> {
        let (status, body) = http_get(&web, &format!("/api/v1/query?query={}", percent_encode(q)))?;
        (status == 200).then(|| serde_json::from_str(&body).ok())?
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let f3 = loop {
        let got = query("xcover_function_hits_total{function=\"f3\"}");
        if let Some(r) = got.as_ref().map(|v| v["data"]["result"].clone())
            && r.as_array().is_some_and(|a| !a.is_empty())
        {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never had the series: {got:?}; its log: {}",
            std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let series = &f3[0];
    assert_eq!(series["value"][1], "14", "two rounds of f3 × 7: {f3}");
    assert_eq!(series["metric"]["module"], "counts", "{f3}");
    assert_eq!(series["metric"]["job"], "xcover", "{f3}");
    let build_id = series["metric"]["build_id"].as_str().unwrap().to_string();
    assert_eq!(build_id.len(), 40, "a GNU build-id: {f3}");
    let f1 = query("sum(xcover_function_hits_total{function=\"f1\"})").unwrap();
    assert_eq!(f1["data"]["result"][0]["value"][1], "2000", "{f1}");
    // f2 never ran: with the default `hit`, no series.
    let f2 = query("xcover_function_hits_total{function=\"f2\"}").unwrap();
    assert_eq!(f2["data"]["result"], json!([]), "{f2}");
    let hit = query("xcover_functions_hit{module=\"counts\"}").unwrap();
    assert_eq!(
        hit["data"]["result"][0]["value"][1], "3",
        "on_usr2, f1, f3: {hit}"
    );
    let procs = query("xcover_processes").unwrap();
    assert_eq!(procs["data"]["result"][0]["value"][1], "1", "{procs}");
    let cpu = query("xcover_cpu_seconds_total").unwrap();
    assert!(
        cpu["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|v| v > 0.0),
        "{cpu}"
    );
    drop(prom);
    stop(x, err);
    let r = read_report(&json);
    assert_eq!(r["build_id"], build_id.as_str());
    assert_eq!(hits(&r, "f3"), (14, true));
    let (_, code) = t.finish();
    assert_eq!(code, 0);
}

/// The receiver's lines until one satisfies `done` (or the deadline).
fn received(
    out: &mut BufReader<std::process::ChildStdout>,
    all: &mut Vec<Value>,
    done: impl Fn(&Value) -> bool,
) -> Value {
    loop {
        let mut l = String::new();
        assert!(
            out.read_line(&mut l).unwrap() > 0,
            "the OTLP receiver ended; it got {all:?}"
        );
        let v: Value = serde_json::from_str(&l).unwrap();
        assert!(
            v.get("error").is_none(),
            "the official definitions rejected a push: {v}"
        );
        all.push(v.clone());
        if done(&v) {
            return v;
        }
    }
}

/// The value of `xcover.function.hits` for `function` in a decoded push.
fn hits_of(push: &Value, function: &str) -> Option<i64> {
    push["resources"][0]["metrics"]["xcover.function.hits"]["points"]
        .as_array()?
        .iter()
        .find(|p| p["attributes"]["function"] == function)
        .and_then(|p| p["value"].as_i64())
}

#[test]
fn otlp_push_is_decoded_by_the_official_definitions() {
    let mut rx = Helper(
        Command::new(python())
            .arg(data("otlp_receiver.py"))
            .args(["--max-seconds", "120"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(rx.0.stdout.take().unwrap());
    let mut l = String::new();
    out.read_line(&mut l).unwrap();
    let port = l
        .trim()
        .strip_prefix("listening ")
        .expect("listening <port>");
    let url = format!("http://127.0.0.1:{port}");
    let mut t = Counts::start();
    let json = tmp("otlp-report.json");
    let (x, mut err, mut seen) = watch(
        t.pid(),
        &[
            "--otlp",
            &url,
            "--otlp-interval",
            "0.3",
            "--service-name",
            "counts-svc",
            "--report",
            json.to_str().unwrap(),
        ],
    );
    line_with(&mut err, "pushing OTLP metrics", &mut seen);
    t.round();
    t.round();
    let mut all = vec![];
    // A periodic push sees the counts while the target runs (two rounds)...
    let live = received(&mut out, &mut all, |v| hits_of(v, "f3") == Some(14));
    t.round();
    let rest = stop(x, err);
    assert!(rest.contains("pushed the final metrics"), "{rest}");
    // ... and the last one, after the hooks are out, the final counts (three rounds): the
    // receiver printed it before answering, so it is in its output once xcover said so.
    let _ = rx.0.kill();
    let _ = rx.0.wait();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    for l in rest.lines() {
        all.push(serde_json::from_str(l).unwrap());
    }
    assert!(all.len() >= 2, "a periodic push and the final one: {all:?}");
    assert!(all.iter().all(|v| v.get("error").is_none()), "{all:?}");
    let last = all.last().unwrap();
    let r = read_report(&json);
    for (push, rounds) in [(&live, 2), (last, 3)] {
        assert_eq!(push["path"], "/v1/metrics");
        assert!(
            push["content_type"]
                .as_str()
                .unwrap()
                .starts_with("application/json")
        );
        assert_eq!(hits_of(push, "f3"), Some(7 * rounds), "{push}");
        assert_eq!(hits_of(push, "f1"), Some(1000 * rounds), "{push}");
        assert_eq!(hits_of(push, "f2"), None, "f2 never ran: {push}");
        let res = &push["resources"][0]["resource"];
        assert_eq!(res["service.name"], "counts-svc", "{res}");
        assert_eq!(
            res["process.executable.build_id.gnu"], r["build_id"],
            "{res}"
        );
        assert_eq!(res["process.pid"], t.pid(), "{res}");
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert_eq!(res["host.name"], host.trim(), "{res}");
        let m = &push["resources"][0]["metrics"]["xcover.function.hits"];
        assert_eq!(
            (m["kind"].as_str(), m["monotonic"].as_bool()),
            (Some("sum"), Some(true))
        );
        assert_eq!(m["temporality"], 2, "cumulative: {m}");
        let p = &m["points"][0];
        assert_eq!(p["attributes"]["build_id"], r["build_id"]);
        assert!(p["start"].as_u64().unwrap() > 0 && p["time"].as_u64() > p["start"].as_u64());
        let hooked = &push["resources"][0]["metrics"]["xcover.functions.hit"]["points"][0];
        assert_eq!(hooked["value"], 3, "{push}");
    }
    assert_eq!(hits(&r, "f3"), (21, true));
    assert_eq!(t.finish().1, 0);
}

/// The statuses the issue asks for: f3 ran (affected), on_usr1 was hooked all along and never
/// ran (not_affected), f2 was excluded (under_investigation, never not_affected), and from an
/// inventory that observed nothing, nothing is not_affected.
#[test]
fn reach_and_openvex_validate_against_the_published_schema() {
    let mut t = Counts::start();
    let ps = t.pid().to_string();
    let inventory = tmp("reach-inventory.json");
    ok(&["functions", &ps, "--report", inventory.to_str().unwrap()]);
    let report = tmp("reach.json");
    ok(&["attach", &ps, "--no-tui", "--keep", "--exclude", "^f2$"]);
    t.round();
    ok(&["detach", &ps, "--report", report.to_str().unwrap()]);
    let r = read_report(&report);
    let f3 = xcover_testsupport::report::function(&r, "f3");
    let (from, until) = (
        r["observed_from"].as_str().unwrap(),
        r["observed_until"].as_str().unwrap(),
    );
    assert!(from < until, "{from} .. {until}");
    assert!(f3["first_hit_at"].as_str().unwrap() < until, "{f3}");

    let list = tmp("reach-functions.json");
    std::fs::write(
        &list,
        r#"[{"vulnerability": "CVE-2026-0001", "function": "f3"},
            {"vulnerability": "CVE-2026-0002", "function": "counts:on_usr1"},
            {"vulnerability": "CVE-2026-0003", "function": "f2"}]"#,
    )
    .unwrap();
    let vex = tmp("reach.openvex.json");
    let findings = tmp("reach-findings.json");
    let table = ok(&[
        "reach",
        report.to_str().unwrap(),
        "--functions",
        list.to_str().unwrap(),
        "--openvex",
        vex.to_str().unwrap(),
        "--json",
        findings.to_str().unwrap(),
    ]);
    assert!(
        table.contains("never hit") && table.contains("not watched"),
        "{table}"
    );
    let v = Command::new(python())
        .arg(data("openvex_validate.py"))
        .arg(data("openvex_json_schema.json"))
        .arg(&vex)
        .output()
        .unwrap();
    assert!(
        v.status.success(),
        "the OpenVEX document fails the schema: {}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    let doc = read_report(&vex);
    assert_eq!(doc["@context"], "https://openvex.dev/ns/v0.2.0");
    let status = |cve: &str| {
        doc["statements"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["vulnerability"]["name"] == cve)
            .unwrap_or_else(|| panic!("no statement for {cve}: {doc}"))
            .clone()
    };
    let affected = status("CVE-2026-0001");
    assert_eq!(affected["status"], "affected", "{affected}");
    assert!(
        affected["action_statement"]
            .as_str()
            .unwrap()
            .contains("f3 ran 7 times"),
        "{affected}"
    );
    let purl = format!(
        "pkg:generic/counts?build-id={}",
        r["build_id"].as_str().unwrap()
    );
    assert_eq!(affected["products"][0]["@id"], purl.as_str());
    assert_eq!(
        affected["products"][0]["identifiers"]["purl"],
        purl.as_str()
    );
    let not = status("CVE-2026-0002");
    assert_eq!(not["status"], "not_affected", "{not}");
    assert_eq!(not["justification"], "vulnerable_code_not_in_execute_path");
    let impact = not["impact_statement"].as_str().unwrap();
    assert!(
        impact.contains(from)
            && impact.contains(until)
            && impact.contains(r["build_id"].as_str().unwrap()),
        "the window and build-id are the evidence: {impact}"
    );
    let excluded = status("CVE-2026-0003");
    assert_eq!(excluded["status"], "under_investigation", "{excluded}");
    let f = read_report(&findings);
    assert_eq!(f["functions"][2]["hooked"], false);
    assert_eq!(f["functions"][0]["first_hit_at"], f3["first_hit_at"]);

    // An inventory observed nothing: nothing in it is claimed unreached.
    let vex2 = tmp("reach-inventory.openvex.json");
    ok(&[
        "reach",
        inventory.to_str().unwrap(),
        "--functions",
        list.to_str().unwrap(),
        "--openvex",
        vex2.to_str().unwrap(),
    ]);
    let doc2 = read_report(&vex2);
    for s in doc2["statements"].as_array().unwrap() {
        assert_eq!(s["status"], "under_investigation", "{s}");
    }
    // A list without vulnerability ids cannot become OpenVEX without --vulnerability.
    let plain = tmp("reach-plain.txt");
    std::fs::write(&plain, "f3\n").unwrap();
    let o = run_xcover(&[
        "reach",
        report.to_str().unwrap(),
        "--functions",
        plain.to_str().unwrap(),
        "--openvex",
        vex2.to_str().unwrap(),
    ]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(t.finish().1, 0);
}

#[test]
fn diff_of_two_sessions() {
    let mut t = Counts::start();
    let ps = t.pid().to_string();
    let a = tmp("diff-a.json");
    ok(&["attach", &ps, "--no-tui", "--keep"]);
    t.round();
    ok(&["detach", &ps, "--report", a.to_str().unwrap()]);
    // The second session sees two rounds and the end (on_usr1).
    let b = tmp("diff-b.json");
    let (mut x, mut err, _) = watch(t.pid(), &["--report", b.to_str().unwrap()]);
    t.round();
    t.round();
    assert_eq!(t.finish().1, 0);
    let mut said = String::new();
    err.read_to_string(&mut said).unwrap();
    assert!(x.0.wait().unwrap().success(), "{said}");
    let o = run_xcover(&[
        "diff",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--json",
        "-",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let d: Value = serde_json::from_slice(&o.stdout).unwrap();
    let names = |k: &str| -> Vec<String> {
        d[k].as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names("newly_hit"), ["on_usr1"], "{d}");
    assert_eq!(names("no_longer_hit"), Vec::<String>::new(), "{d}");
    assert_eq!(
        names("changed"),
        ["f1", "f3", "on_usr2"],
        "largest change first: {d}"
    );
    assert_eq!(
        (
            d["changed"][0]["hits_a"].as_u64(),
            d["changed"][0]["hits_b"].as_u64()
        ),
        (Some(1000), Some(2000))
    );
    assert_eq!(d["changed"][1]["delta"], 7);
    assert!(
        d["changed"][0]["file"]
            .as_str()
            .unwrap()
            .ends_with("counts.c"),
        "{d}"
    );
    assert!(d["changed"][0]["line"].as_u64().unwrap() > 0);
    // The other way round, and the table.
    let table = ok(&[
        "diff",
        b.to_str().unwrap(),
        a.to_str().unwrap(),
        "--top",
        "1",
    ]);
    assert!(
        table.contains("no longer hit (1):") && table.contains("on_usr1"),
        "{table}"
    );
    assert!(
        table.contains("counts changed most (3):") && table.contains("… and 2 more"),
        "{table}"
    );
    // Another build: refused (exit 2) unless --force.
    let mut other = read_report(&b);
    other["build_id"] = json!("00ff");
    let c = tmp("diff-other-build.json");
    std::fs::write(&c, serde_json::to_vec(&other).unwrap()).unwrap();
    let o = run_xcover(&["diff", a.to_str().unwrap(), c.to_str().unwrap()]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("different builds") && e.contains("--force"),
        "{e}"
    );
    let forced = ok(&["diff", a.to_str().unwrap(), c.to_str().unwrap(), "--force"]);
    assert!(forced.contains("newly hit (1):"), "{forced}");
}

/// 50 reports of 10 000 functions, written as xcover writes them: the merge's sums, window
/// and `hooked_in` are exact.
#[test]
fn merge_of_many_reports_is_exact() {
    const REPORTS: u64 = 50;
    const FUNCS: u64 = 10_000;
    let dir = tmp("merge-many");
    std::fs::create_dir_all(&dir).unwrap();
    let mut paths = vec![];
    for i in 0..REPORTS {
        let functions: Vec<Value> = (0..FUNCS)
            // Function 7 is hooked only in the even reports.
            .filter(|&j| j != 7 || i % 2 == 0)
            .map(|j| {
                let n = (i * 31 + j * 17) % 5;
                json!({"name": format!("fn_{j}"), "offset": 0x1000 + j * 16, "hit": n > 0,
                       "hits": n, "module": "app",
                       "first_hit_at": (n > 0).then(|| format!("2026-01-01T00:00:{:02}.000000Z", 10 + i % 40))})
            })
            .collect();
        let r = json!({
            "schema_version": 1, "funcs_traced": [], "funcs_ack": [], "cov_by_func": 0.0,
            "exe_path": "/srv/app", "pid": 1000 + i, "pids": [1000 + i], "build_id": "abcd",
            "kernel": "6.1", "xcover_version": "0", "generated_at": "2026-01-01T01:00:00.000000Z",
            "observed_from": format!("2026-01-01T00:00:{:02}.000000Z", 5 + i % 50),
            "observed_until": format!("2026-01-01T00:{:02}:00.000000Z", 10 + i % 40),
            "sessions": 1, "functions": functions,
        });
        let p = dir.join(format!("r{i}.json"));
        std::fs::write(&p, serde_json::to_vec(&r).unwrap()).unwrap();
        paths.push(p);
    }
    let out = dir.join("merged.json");
    let mut args = vec!["merge".to_string()];
    args.extend(paths.iter().map(|p| p.display().to_string()));
    args.extend(["-o".into(), out.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&args);
    let m = read_report(&out);
    assert_eq!(m["sessions"], REPORTS);
    assert_eq!(m["pids"].as_array().unwrap().len() as u64, REPORTS);
    assert_eq!(m["observed_from"], "2026-01-01T00:00:05.000000Z");
    assert_eq!(m["observed_until"], "2026-01-01T00:49:00.000000Z");
    let fs = m["functions"].as_array().unwrap();
    assert_eq!(fs.len() as u64, FUNCS);
    for f in fs {
        let j: u64 = f["name"].as_str().unwrap()[3..].parse().unwrap();
        let want: u64 = (0..REPORTS)
            .filter(|&i| j != 7 || i % 2 == 0)
            .map(|i| (i * 31 + j * 17) % 5)
            .sum();
        assert_eq!(f["hits"], want, "{f}");
        if j == 7 {
            assert_eq!(f["hooked_in"], REPORTS / 2, "{f}");
        } else {
            assert!(f.get("hooked_in").is_none(), "{f}");
        }
    }
    assert_eq!(
        xcover_testsupport::report::function(&m, "fn_0")["first_hit_at"],
        "2026-01-01T00:00:11.000000Z",
        "the earliest first hit"
    );
}

#[test]
fn export_options_are_checked_before_the_target_is_touched() {
    let t = Counts::start();
    let ps = t.pid().to_string();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = busy.local_addr().unwrap().to_string();
    for args in [
        vec!["attach", &ps, "--no-tui", "--metrics", &busy],
        vec!["attach", &ps, "--no-tui", "--metrics", "not-an-address"],
        vec![
            "attach",
            &ps,
            "--no-tui",
            "--otlp",
            "https://collector:4318",
        ],
        vec![
            "attach",
            &ps,
            "--no-tui",
            "--otlp",
            "http://h:1",
            "--otlp-interval",
            "0",
        ],
        vec![
            "attach",
            &ps,
            "--no-tui",
            "--keep",
            "--metrics",
            "127.0.0.1:0",
        ],
        vec!["attach", &ps, "--no-tui", "--metrics-functions", "some"],
    ] {
        let o = run_xcover(&args);
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {e}");
        assert_eq!(e.lines().count(), 1, "{args:?}: {e}");
        assert!(!crate::support::session_path(t.pid()).exists(), "{args:?}");
    }
    assert_eq!(t.finish().1, 0);
}
