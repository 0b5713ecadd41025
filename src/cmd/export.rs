//! `attach --metrics` and `--otlp`: the Prometheus endpoint and the OTLP push, checked
//! before the target is touched, started once the session runs, and the last push at the
//! end.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Result;
use xcover::export::{FunctionSeries, MetricsServer, OtlpPusher, Reader, Resource};

use crate::cli::ExportArgs;

/// What was asked, checked: the endpoint bound, the collector's URL parsed.
pub struct Prepared {
    server: Option<MetricsServer>,
    otlp: Option<(OtlpPusher, Duration)>,
    series: FunctionSeries,
}

/// The exporters of a running session.
pub struct Exporting {
    reader: Option<Arc<Mutex<Reader>>>,
    otlp: Option<(OtlpPusher, Arc<AtomicBool>, JoinHandle<()>)>,
}

impl Prepared {
    /// Checks the options: a bad or busy address, a URL that is not http://, an interval
    /// that is not a positive number, or metrics for a session that is only left (`--keep`)
    /// are bad input.
    pub fn check(a: &ExportArgs, pid: i32, keep: bool) -> Result<Prepared> {
        if keep && (a.metrics.is_some() || a.otlp.is_some()) {
            return Err(xcover::BadInput(
                "--metrics and --otlp need a watch; --keep leaves at once (watch the kept \
                 session with `xcover attach <pid> --metrics …`)"
                    .into(),
            )
            .into());
        }
        let otlp = match &a.otlp {
            None => None,
            Some(url) => {
                if !(a.otlp_interval.is_finite() && a.otlp_interval > 0.0) {
                    return Err(xcover::BadInput(format!(
                        "--otlp-interval {}: must be a number of seconds > 0",
                        a.otlp_interval
                    ))
                    .into());
                }
                let service = a.service_name.clone().unwrap_or_else(|| {
                    std::fs::read_link(format!("/proc/{pid}/exe"))
                        .ok()
                        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                        .unwrap_or_else(|| "unknown_service".into())
                });
                let pusher = OtlpPusher::new(url, Resource::here(service))?;
                Some((pusher, Duration::from_secs_f64(a.otlp_interval)))
            }
        };
        let server = a.metrics.as_deref().map(MetricsServer::bind).transpose()?;
        Ok(Prepared {
            server,
            otlp,
            series: a.metrics_functions,
        })
    }

    /// Starts serving and pushing the sessions of `pids`.
    pub fn start(self, pids: &[i32]) -> Result<Exporting> {
        if self.server.is_none() && self.otlp.is_none() {
            return Ok(Exporting {
                reader: None,
                otlp: None,
            });
        }
        let reader = Arc::new(Mutex::new(Reader::open(pids, self.series)?));
        if let Some(server) = self.server {
            eprintln!(
                "xcover: serving metrics at http://{}/metrics",
                server.local_addr()?
            );
            server.serve(reader.clone());
        }
        let otlp = self.otlp.map(|(pusher, every)| {
            let stop = Arc::new(AtomicBool::new(false));
            let (r, s, p) = (reader.clone(), stop.clone(), pusher.clone());
            eprintln!(
                "xcover: pushing OTLP metrics to {} every {:.1}s",
                pusher.url(),
                every.as_secs_f64()
            );
            let t = std::thread::spawn(move || {
                let mut last_error = String::new();
                let mut next = Instant::now() + every;
                while !s.load(Ordering::Acquire) {
                    if Instant::now() < next {
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                    next += every;
                    push(&r, &p, &mut last_error);
                }
            });
            (pusher, stop, t)
        });
        Ok(Exporting {
            reader: Some(reader),
            otlp,
        })
    }
}

/// Reads and pushes once; a failure is said once (until a push works again).
fn push(reader: &Mutex<Reader>, p: &OtlpPusher, last_error: &mut String) -> bool {
    let sample = reader.lock().unwrap_or_else(|e| e.into_inner()).sample();
    let result = sample.and_then(|s| p.push(&s));
    match result {
        Ok(()) => {
            last_error.clear();
            true
        }
        Err(e) => {
            let text = xcover::error::chain(&e);
            if *last_error != text {
                eprintln!("xcover: warning: OTLP push failed: {text}");
                *last_error = text;
            }
            false
        }
    }
}

impl Exporting {
    /// Stops the periodic push and pushes the final counts once.
    pub fn finish(self) {
        let (Some(reader), Some((pusher, stop, t))) = (self.reader, self.otlp) else {
            return;
        };
        stop.store(true, Ordering::Release);
        let _ = t.join();
        let mut last_error = String::new();
        if push(&reader, &pusher, &mut last_error) {
            eprintln!("xcover: pushed the final metrics to {}", pusher.url());
        }
    }
}
