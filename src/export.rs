//! Coverage for the engines people already run: a Prometheus text endpoint
//! ([`MetricsServer`]) and an OTLP/HTTP JSON push ([`OtlpPusher`]), both fed by a [`Reader`]
//! of the live sessions.
//!
//! The [`Reader`] opens each member's session file on its own (a second mapping of the
//! same shared memory the TUI reads) and reads it like the TUI does: names and statuses when
//! functions were hooked or skipped since the last reading, the counts every time. It is
//! read only when a scrape or a push asks, on their own threads, so the watch loop never
//! waits for it. Once the session ends, the mapping still holds the final counts (the file
//! is gone, its memory is not), which the last push sends.
//!
//! # Metrics
//!
//! | Prometheus | OTLP | kind | labels / attributes |
//! |---|---|---|---|
//! | `xcover_function_hits_total` | `xcover.function.hits` | counter (monotonic sum, cumulative) | `build_id`, `module`, `function`, `offset` |
//! | `xcover_functions_hooked` | `xcover.functions.hooked` | gauge | `build_id`, `module` |
//! | `xcover_functions_hit` | `xcover.functions.hit` | gauge | `build_id`, `module` |
//! | `xcover_functions_skipped` | `xcover.functions.skipped` | gauge | `build_id`, `module` |
//! | `xcover_events_dropped_total` | `xcover.events.dropped` | counter | `pid` |
//! | `xcover_processes` | `xcover.processes` | gauge | |
//! | `xcover_process_info` | | gauge (1) | `pid`, `build_id`, `exe` |
//! | `xcover_cpu_seconds_total` | `xcover.cpu.time` | counter, seconds | |
//!
//! `build_id` is the build-id of the process's main executable (the build being covered),
//! `function` its demangled name (else its raw one), `offset` its entry's offset in the
//! module's file (hex), which keeps two functions of one name apart. Hit counts are exact and
//! never go down while the session lasts (a watch of a kept session goes on from its counts).
//! Which functions get a series is [`FunctionSeries`]: those hit (the default), all hooked
//! ones, or none.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use xcover_injector::SessionFile;
use xcover_session::FuncStatus;

use crate::BadInput;
use crate::error::{Error, Result};
use crate::report::{hex, monotonic_to_unix_ns, unix_now_ns};
use crate::session::{self, View};

/// Which functions get a series of their own (`--metrics-functions`): the cardinality is
/// the user's choice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FunctionSeries {
    /// Those that ran at least once.
    #[default]
    Hit,
    /// Every hooked function (those not hit at 0).
    All,
    /// None: only the per-module gauges and the rest.
    None,
}

impl std::str::FromStr for FunctionSeries {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "hit" => Ok(FunctionSeries::Hit),
            "all" => Ok(FunctionSeries::All),
            "none" => Ok(FunctionSeries::None),
            _ => Err(format!("{s}: expected hit, all or none")),
        }
    }
}

/// One process of a [`Sample`].
#[derive(Clone, Debug)]
pub struct ProcessSample {
    /// Its pid.
    pub pid: i32,
    /// Its main executable.
    pub exe: String,
    /// The main executable's build-id, hex.
    pub build_id: String,
    /// When counting started (hooking done), ns since the Unix epoch; 0 when unknown.
    pub start_unix_ns: u64,
    /// Events the probe dropped.
    pub dropped: u64,
}

/// One module of one process.
#[derive(Clone, Debug)]
pub struct ModuleSample {
    /// The build-id label (the process's main executable's).
    pub build_id: String,
    /// The module's name.
    pub module: String,
    /// Functions hooked.
    pub hooked: u64,
    /// Functions hit.
    pub hit: u64,
    /// Functions skipped.
    pub skipped: u64,
}

/// One function's counter.
#[derive(Clone, Debug)]
pub struct FunctionSample {
    /// Index of its process in [`Sample::processes`].
    pub process: usize,
    /// Its module.
    pub module: String,
    /// Its demangled (else raw) name.
    pub function: String,
    /// Its entry's offset in the module's file.
    pub offset: u64,
    /// Hits so far.
    pub hits: u64,
}

/// What the exporters send, read at one time.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// When it was read, ns since the Unix epoch.
    pub at_unix_ns: u64,
    /// The processes.
    pub processes: Vec<ProcessSample>,
    /// The modules, per process.
    pub modules: Vec<ModuleSample>,
    /// The functions, as [`FunctionSeries`] asked.
    pub functions: Vec<FunctionSample>,
    /// CPU time this xcover used so far, seconds.
    pub cpu_seconds: f64,
}

struct Source {
    pid: i32,
    file: SessionFile,
    view: Option<View>,
    /// `funcs_hooked + funcs_skipped` when `view` was read whole.
    key: u64,
    /// Demangled names, read with `view`.
    names: Vec<String>,
}

/// Reads the live sessions for the exporters.
pub struct Reader {
    sources: Vec<Source>,
    series: FunctionSeries,
}

/// CPU time used by this process so far (user + system), in seconds.
pub fn own_cpu_seconds() -> f64 {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_SELF).map_or(0.0, |u| {
        let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 * 1e-6;
        t(u.user_time()) + t(u.system_time())
    })
}

impl Reader {
    /// Opens the session of each of `pids` (they must have one: call it once the session
    /// has started).
    pub fn open(pids: &[i32], series: FunctionSeries) -> Result<Reader> {
        let mut sources = Vec::new();
        for &pid in pids {
            sources.push(Source {
                pid,
                file: SessionFile::open(pid)?,
                view: None,
                key: u64::MAX,
                names: vec![],
            });
        }
        Ok(Reader { sources, series })
    }

    /// Reads every session now.
    pub fn sample(&mut self) -> Result<Sample> {
        let mut out = Sample {
            at_unix_ns: unix_now_ns(),
            ..Default::default()
        };
        for s in &mut self.sources {
            let h = s.file.header();
            let key =
                h.funcs_hooked.load(Ordering::Acquire) + h.funcs_skipped.load(Ordering::Acquire);
            match &mut s.view {
                Some(v) if key == s.key => {
                    for (f, n) in v.funcs.iter_mut().zip(session::hits(&s.file)?) {
                        f.hits = n;
                    }
                    v.dropped = session::dropped(&s.file)?;
                }
                _ => {
                    let v = session::view(&s.file)?;
                    s.names = v
                        .funcs
                        .iter()
                        .map(|f| {
                            crate::discover::demangle(&f.name).unwrap_or_else(|| f.name.clone())
                        })
                        .collect();
                    s.view = Some(v);
                    s.key = key;
                }
            }
            let v = s.view.as_ref().expect("read above");
            let build_id = hex(&h.build_id[..(h.build_id_len as usize).min(32)]);
            let exe = String::from_utf8_lossy(&h.exe_path[..(h.exe_path_len as usize).min(512)])
                .into_owned();
            let p = out.processes.len();
            out.processes.push(ProcessSample {
                pid: s.pid,
                exe,
                build_id: build_id.clone(),
                start_unix_ns: monotonic_to_unix_ns(h.hooked_at_ns.load(Ordering::Acquire))
                    .unwrap_or(0),
                dropped: v.dropped,
            });
            let first_module = out.modules.len();
            for i in 0..v.modules.len() {
                out.modules.push(ModuleSample {
                    build_id: build_id.clone(),
                    module: v.module_name(i),
                    hooked: 0,
                    hit: 0,
                    skipped: 0,
                });
            }
            for (f, name) in v.funcs.iter().zip(&s.names) {
                let Some(m) = out
                    .modules
                    .get_mut(first_module + f.entry.module_index() as usize)
                else {
                    continue;
                };
                // A function hit while hooked counts as hooked even once its hooks are out.
                // So does one whose hook a live unhook took out (its count a lower bound).
                let hooked = f.entry.is_hooked() || f.entry.hits_lower_bound() || f.hits > 0;
                if f.entry.status == FuncStatus::Skipped as u32 && f.hits == 0 {
                    m.skipped += 1;
                    continue;
                }
                if !hooked {
                    continue;
                }
                m.hooked += 1;
                if f.hits > 0 {
                    m.hit += 1;
                }
                let wanted = match self.series {
                    FunctionSeries::Hit => f.hits > 0,
                    FunctionSeries::All => true,
                    FunctionSeries::None => false,
                };
                if wanted {
                    out.functions.push(FunctionSample {
                        process: p,
                        module: m.module.clone(),
                        function: name.clone(),
                        offset: f.entry.offset,
                        hits: f.hits,
                    });
                }
            }
        }
        out.cpu_seconds = own_cpu_seconds();
        Ok(out)
    }
}

/// A Prometheus label value, escaped.
fn label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// The Prometheus text exposition (format 0.0.4) of `s`.
pub fn prometheus_text(s: &Sample) -> String {
    use std::fmt::Write as _;
    let mut t = String::with_capacity(128 * (s.functions.len() + 16));
    let head = |t: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(t, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    head(
        &mut t,
        "xcover_function_hits_total",
        "counter",
        "Times the function was entered since the session attached.",
    );
    for f in &s.functions {
        let p = &s.processes[f.process];
        let _ = writeln!(
            t,
            "xcover_function_hits_total{{build_id=\"{}\",module=\"{}\",function=\"{}\",offset=\"{:#x}\"}} {}",
            label(&p.build_id),
            label(&f.module),
            label(&f.function),
            f.offset,
            f.hits
        );
    }
    for (name, help, get) in [
        (
            "xcover_functions_hooked",
            "Functions hooked in the module.",
            (|m: &ModuleSample| m.hooked) as fn(&ModuleSample) -> u64,
        ),
        (
            "xcover_functions_hit",
            "Hooked functions that ran at least once.",
            |m| m.hit,
        ),
        (
            "xcover_functions_skipped",
            "Functions left unhooked (see the report for why).",
            |m| m.skipped,
        ),
    ] {
        head(&mut t, name, "gauge", help);
        for m in &s.modules {
            let _ = writeln!(
                t,
                "{name}{{build_id=\"{}\",module=\"{}\"}} {}",
                label(&m.build_id),
                label(&m.module),
                get(m)
            );
        }
    }
    head(
        &mut t,
        "xcover_events_dropped_total",
        "counter",
        "First-hit events the probe dropped (a full ring buffer); counts are never dropped.",
    );
    for p in &s.processes {
        let _ = writeln!(
            t,
            "xcover_events_dropped_total{{pid=\"{}\"}} {}",
            p.pid, p.dropped
        );
    }
    head(
        &mut t,
        "xcover_processes",
        "gauge",
        "Processes in the session.",
    );
    let _ = writeln!(t, "xcover_processes {}", s.processes.len());
    head(
        &mut t,
        "xcover_process_info",
        "gauge",
        "One per process in the session.",
    );
    for p in &s.processes {
        let _ = writeln!(
            t,
            "xcover_process_info{{pid=\"{}\",build_id=\"{}\",exe=\"{}\"}} 1",
            p.pid,
            label(&p.build_id),
            label(&p.exe)
        );
    }
    head(
        &mut t,
        "xcover_cpu_seconds_total",
        "counter",
        "CPU time xcover itself used (user + system).",
    );
    let _ = writeln!(t, "xcover_cpu_seconds_total {:.6}", s.cpu_seconds);
    t
}

/// The resource an OTLP export describes: the service and its host.
#[derive(Clone, Debug)]
pub struct Resource {
    /// `service.name`.
    pub service_name: String,
    /// `host.name`.
    pub host_name: String,
}

impl Resource {
    /// `service` on this host (its hostname).
    pub fn here(service: String) -> Resource {
        let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        Resource {
            service_name: service,
            host_name,
        }
    }
}

fn attr(key: &str, v: &str) -> Value {
    json!({ "key": key, "value": { "stringValue": v } })
}

/// An OTLP `ExportMetricsServiceRequest` of `s`, in the OTLP/JSON mapping: one
/// `resourceMetrics` per process (resource: `service.name`, `host.name`, `process.pid`,
/// `process.executable.path`, `process.executable.build_id.gnu`).
pub fn otlp_json(s: &Sample, r: &Resource) -> Value {
    let now = s.at_unix_ns.to_string();
    let mut resources = Vec::new();
    for (i, p) in s.processes.iter().enumerate() {
        let start = p.start_unix_ns.to_string();
        let int_point = |attrs: Vec<Value>, v: u64| {
            json!({
                "attributes": attrs,
                "startTimeUnixNano": start,
                "timeUnixNano": now,
                "asInt": v.to_string(),
            })
        };
        let sum = |name: &str, unit: &str, desc: &str, points: Vec<Value>| {
            json!({
                "name": name, "unit": unit, "description": desc,
                "sum": { "aggregationTemporality": 2, "isMonotonic": true, "dataPoints": points },
            })
        };
        let gauge = |name: &str, desc: &str, points: Vec<Value>| {
            json!({ "name": name, "unit": "{function}", "description": desc,
                    "gauge": { "dataPoints": points } })
        };
        let hits: Vec<Value> = s
            .functions
            .iter()
            .filter(|f| f.process == i)
            .map(|f| {
                int_point(
                    vec![
                        attr("build_id", &p.build_id),
                        attr("module", &f.module),
                        attr("function", &f.function),
                        attr("offset", &format!("{:#x}", f.offset)),
                    ],
                    f.hits,
                )
            })
            .collect();
        let modules: Vec<&ModuleSample> = s
            .modules
            .iter()
            .filter(|m| m.build_id == p.build_id)
            .collect();
        let per_module = |get: fn(&ModuleSample) -> u64| -> Vec<Value> {
            modules
                .iter()
                .map(|m| {
                    int_point(
                        vec![attr("build_id", &m.build_id), attr("module", &m.module)],
                        get(m),
                    )
                })
                .collect()
        };
        let metrics = vec![
            sum(
                "xcover.function.hits",
                "{call}",
                "Times the function was entered since the session attached.",
                hits,
            ),
            gauge(
                "xcover.functions.hooked",
                "Functions hooked in the module.",
                per_module(|m| m.hooked),
            ),
            gauge(
                "xcover.functions.hit",
                "Hooked functions that ran at least once.",
                per_module(|m| m.hit),
            ),
            gauge(
                "xcover.functions.skipped",
                "Functions left unhooked.",
                per_module(|m| m.skipped),
            ),
            sum(
                "xcover.events.dropped",
                "{event}",
                "First-hit events the probe dropped.",
                vec![int_point(vec![], p.dropped)],
            ),
            json!({ "name": "xcover.processes", "unit": "{process}", "description": "Processes in the session.",
                    "gauge": { "dataPoints": [ int_point(vec![], s.processes.len() as u64) ] } }),
            json!({ "name": "xcover.cpu.time", "unit": "s", "description": "CPU time xcover itself used.",
                    "sum": { "aggregationTemporality": 2, "isMonotonic": true, "dataPoints": [{
                        "startTimeUnixNano": start, "timeUnixNano": now, "asDouble": s.cpu_seconds }] } }),
        ];
        resources.push(json!({
            "resource": { "attributes": [
                attr("service.name", &r.service_name),
                attr("host.name", &r.host_name),
                json!({ "key": "process.pid", "value": { "intValue": p.pid.to_string() } }),
                attr("process.executable.path", &p.exe),
                attr("process.executable.build_id.gnu", &p.build_id),
            ]},
            "scopeMetrics": [{
                "scope": { "name": "xcover", "version": env!("CARGO_PKG_VERSION") },
                "metrics": metrics,
            }],
        }));
    }
    json!({ "resourceMetrics": resources })
}

/// The Prometheus endpoint: bound when the command line is checked (a bad or busy address
/// is bad input, before any target is touched), served on its own thread once the session
/// runs.
pub struct MetricsServer {
    listener: TcpListener,
}

impl MetricsServer {
    /// Listens on `addr` (`127.0.0.1:9464`; port 0 picks a free one).
    pub fn bind(addr: &str) -> Result<MetricsServer> {
        let listener = TcpListener::bind(addr)
            .map_err(|e| BadInput(format!("--metrics {addr}: cannot listen there: {e}")))?;
        Ok(MetricsServer { listener })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Serves `GET /metrics` from `reader` on a thread of its own, one connection at a
    /// time, until the process ends.
    pub fn serve(self, reader: Arc<Mutex<Reader>>) {
        std::thread::Builder::new()
            .name("xcover-metrics".into())
            .spawn(move || {
                loop {
                    match self.listener.accept() {
                        Ok((c, _)) => {
                            let _ = answer(c, &reader);
                        }
                        // Out of descriptors, say: wait rather than spin.
                        Err(_) => std::thread::sleep(Duration::from_millis(100)),
                    }
                }
            })
            .map(drop)
            .unwrap_or(());
    }
}

/// Answers one HTTP/1.x request on `c` (then closes it).
fn answer(mut c: TcpStream, reader: &Mutex<Reader>) -> std::io::Result<()> {
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    c.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut req = Vec::new();
    let mut buf = [0u8; 2048];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16 * 1024 {
        let n = c.read(&mut buf)?;
        if n == 0 {
            break;
        }
        req.extend_from_slice(&buf[..n]);
    }
    let line =
        String::from_utf8_lossy(req.split(|&b| b == b'\r').next().unwrap_or(&[])).into_owned();
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, kind, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let sample = reader.lock().unwrap_or_else(|e| e.into_inner()).sample();
            match sample {
                Ok(s) => (
                    "200 OK",
                    "text/plain; version=0.0.4; charset=utf-8",
                    prometheus_text(&s),
                ),
                Err(e) => (
                    "503 Service Unavailable",
                    "text/plain; charset=utf-8",
                    format!(
                        "xcover: cannot read the session: {}\n",
                        crate::error::chain(&e)
                    ),
                ),
            }
        }
        ("GET" | "HEAD", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "xcover serves /metrics\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "GET /metrics\n".to_string(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes())?;
    if method != "HEAD" {
        c.write_all(body.as_bytes())?;
    }
    c.flush()
}

/// Where OTLP/HTTP metrics go: `http://host:port[/prefix]`, posted to
/// `<prefix>/v1/metrics` (a URL that already ends so is taken as it is). Plain HTTP only:
/// xcover sends to a collector on the host or its network, which forwards over TLS.
#[derive(Clone, Debug)]
pub struct OtlpPusher {
    url: String,
    host: String,
    port: u16,
    path: String,
    resource: Resource,
}

impl OtlpPusher {
    /// Checks `url` (bad input when it is not `http://host[:port][/path]`).
    pub fn new(url: &str, resource: Resource) -> Result<OtlpPusher> {
        let bad = |why: &str| Error::from(BadInput(format!("--otlp {url}: {why}")));
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            bad("only http:// URLs (send to a local OpenTelemetry Collector, which can forward over TLS)")
        })?;
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h,
                p.parse::<u16>()
                    .map_err(|_| bad("the port is not a number"))?,
            ),
            _ => (hostport, 4318),
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let path = if path.ends_with("/v1/metrics") {
            path.to_string()
        } else {
            format!("{path}/v1/metrics")
        };
        Ok(OtlpPusher {
            url: url.to_string(),
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
            path,
            resource,
        })
    }

    /// The URL given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Posts `s` as OTLP/JSON; an answer other than 2xx is an error that quotes it.
    pub fn push(&self, s: &Sample) -> Result<()> {
        let body = serde_json::to_vec(&otlp_json(s, &self.resource))?;
        let addr = (self.host.as_str(), self.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| Error::msg(format!("{}: no address", self.host)))?;
        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        c.set_read_timeout(Some(Duration::from_secs(10)))?;
        c.set_write_timeout(Some(Duration::from_secs(10)))?;
        let host = if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        };
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nUser-Agent: xcover/{}\r\nConnection: close\r\n\r\n",
            self.path,
            body.len(),
            env!("CARGO_PKG_VERSION")
        );
        c.write_all(head.as_bytes())?;
        c.write_all(&body)?;
        c.flush()?;
        let mut answer = Vec::new();
        c.read_to_end(&mut answer)?;
        let text = String::from_utf8_lossy(&answer);
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(0);
        if !(200..300).contains(&status) {
            let first = text.lines().next().unwrap_or("no answer");
            return Err(Error::msg(format!("{}: {first}", self.url)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Sample {
        Sample {
            at_unix_ns: 2_000,
            processes: vec![ProcessSample {
                pid: 7,
                exe: "/bin/app".into(),
                build_id: "ab".into(),
                start_unix_ns: 1_000,
                dropped: 0,
            }],
            modules: vec![ModuleSample {
                build_id: "ab".into(),
                module: "app".into(),
                hooked: 2,
                hit: 1,
                skipped: 0,
            }],
            functions: vec![FunctionSample {
                process: 0,
                module: "app".into(),
                function: "ns::f<\"x\">".into(),
                offset: 0x10,
                hits: 7,
            }],
            cpu_seconds: 0.5,
        }
    }

    #[test]
    fn prometheus_text_escapes_and_types() {
        let t = prometheus_text(&sample());
        assert!(t.contains(
            "xcover_function_hits_total{build_id=\"ab\",module=\"app\",function=\"ns::f<\\\"x\\\">\",offset=\"0x10\"} 7\n"
        ), "{t}");
        assert!(t.contains("# TYPE xcover_function_hits_total counter\n"));
        assert!(t.contains("xcover_functions_hit{build_id=\"ab\",module=\"app\"} 1\n"));
        assert!(t.contains("xcover_cpu_seconds_total 0.500000\n"));
    }

    #[test]
    fn otlp_urls() {
        let r = Resource::here("svc".into());
        let p = OtlpPusher::new("http://127.0.0.1:4318", r.clone()).unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.path.as_str()),
            ("127.0.0.1", 4318, "/v1/metrics")
        );
        let p = OtlpPusher::new("http://collector/otlp/", r.clone()).unwrap();
        assert_eq!((p.port, p.path.as_str()), (4318, "/otlp/v1/metrics"));
        let p = OtlpPusher::new("http://[::1]:9/v1/metrics", r.clone()).unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.path.as_str()),
            ("::1", 9, "/v1/metrics")
        );
        for bad in ["https://x", "x:1", "http://:1", "http://h:port"] {
            assert!(
                OtlpPusher::new(bad, r.clone()).unwrap_err().is_bad_input(),
                "{bad}"
            );
        }
        let j = otlp_json(&sample(), &r);
        let m = &j["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0];
        assert_eq!(m["sum"]["dataPoints"][0]["asInt"], "7");
        assert_eq!(m["sum"]["isMonotonic"], true);
    }
}
