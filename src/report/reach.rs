//! Reachability evidence: did the functions named in a vulnerability ever run while xcover
//! watched ([`reach`]), and the same as an OpenVEX document ([`openvex`]).
//!
//! A function is claimed unreached only when the report proves it was watched: the report
//! has an observation window (`observed_from`..`observed_until`, so not an inventory), and the
//! function was hooked for all of it (in the report, not skipped, and in a merged report
//! hooked in every session). A function that ran is reached whatever else holds. Anything
//! else — not in the report (excluded, another module), skipped, hooked in only some
//! sessions, or a report that observed nothing — is [`Reached::NotWatched`]: never evidence
//! either way.
//!
//! In OpenVEX, a vulnerability is `affected` when any of its functions ran, `not_affected`
//! with the justification `vulnerable_code_not_in_execute_path` when every one was watched
//! and none ran, and `under_investigation` otherwise. The product is the main executable of
//! the build, identified by a package URL that carries the build-id:
//! `pkg:generic/<executable name>?build-id=<hex>` (the `generic` type is for software that
//! no package ecosystem names; the qualifier ties the statement to this exact build).

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{FuncReport, Report};
use crate::BadInput;
use crate::error::Result;

/// A function asked about: a symbol (raw or demangled), maybe in a module, maybe with the
/// vulnerability it stands for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Wanted {
    /// The vulnerability (`CVE-2024-1234`), when the list names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vulnerability: Option<String>,
    /// The module (`libssl.so.3`), by the name reports give it or its file name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// The symbol, raw or demangled.
    pub symbol: String,
}

/// One entry of the JSON form of a function list.
#[derive(Deserialize)]
#[serde(untagged)]
enum Entry {
    Symbol(String),
    Named {
        #[serde(default, alias = "id", alias = "cve")]
        vulnerability: Option<String>,
        #[serde(default, alias = "symbol")]
        function: Option<String>,
        #[serde(default, alias = "symbols")]
        functions: Vec<String>,
    },
}

/// Splits `module:symbol` (one `:` that is not part of a C++ `::`) from a plain symbol.
fn split_spec(spec: &str) -> (Option<String>, String) {
    let b = spec.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        if c == b':' {
            let lone = (i == 0 || b[i - 1] != b':') && b.get(i + 1) != Some(&b':');
            let module = &spec[..i];
            if lone && !module.is_empty() && !module.contains(['(', '<', ' ', ':']) {
                return (Some(module.to_string()), spec[i + 1..].trim().to_string());
            }
            break;
        }
    }
    (None, spec.trim().to_string())
}

/// Reads a function list: one `symbol` or `module:symbol` per line (`#` starts a comment),
/// or a JSON list whose entries are such strings or objects
/// `{"vulnerability": "CVE-…", "function": "module:symbol"}` (or `"functions": [...]`).
/// `default_vulnerability` is given to entries that name none.
pub fn parse_functions(
    text: &str,
    what: &str,
    default_vulnerability: Option<&str>,
) -> Result<Vec<Wanted>> {
    let mut out = Vec::new();
    let mut push = |vuln: Option<String>, spec: &str| {
        let (module, symbol) = split_spec(spec);
        if !symbol.is_empty() {
            out.push(Wanted {
                vulnerability: vuln.or_else(|| default_vulnerability.map(str::to_string)),
                module,
                symbol,
            });
        }
    };
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        let entries: Vec<Entry> = serde_json::from_str(trimmed).map_err(|e| {
            BadInput(format!(
                "{what}: not a JSON list of functions (strings, or objects with \
                 \"vulnerability\" and \"function\" or \"functions\"): {e}"
            ))
        })?;
        for e in entries {
            match e {
                Entry::Symbol(s) => push(None, &s),
                Entry::Named {
                    vulnerability,
                    function,
                    functions,
                } => {
                    if function.is_none() && functions.is_empty() {
                        return Err(BadInput(format!(
                            "{what}: an entry names no \"function\" or \"functions\""
                        ))
                        .into());
                    }
                    for f in function.iter().chain(&functions) {
                        push(vulnerability.clone(), f);
                    }
                }
            }
        }
    } else {
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            if !line.is_empty() {
                push(None, line);
            }
        }
    }
    if out.is_empty() {
        return Err(BadInput(format!("{what}: names no function")).into());
    }
    Ok(out)
}

/// What a report says of a function asked about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reached {
    /// It ran.
    Hit,
    /// It was hooked for the whole observation and never ran.
    NotHit,
    /// It was not watched for the whole observation: no evidence either way.
    NotWatched,
}

/// One function of the report that matched.
#[derive(Clone, Debug, Serialize)]
pub struct Match {
    /// Its module.
    pub module: String,
    /// Its raw name.
    pub name: String,
    /// Its offset in the module's file.
    pub offset: u64,
    /// Its hits.
    pub hits: u64,
    /// When it first ran, when the report says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_hit_at: Option<String>,
    /// Whether it was hooked for the whole observation.
    pub watched: bool,
}

/// The answer for one function asked about.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    /// What was asked.
    #[serde(flatten)]
    pub wanted: Wanted,
    /// The answer.
    pub reached: Reached,
    /// Whether some function of the report matched and was hooked (for part or all of the
    /// observation).
    pub hooked: bool,
    /// Hits over every match.
    pub hits: u64,
    /// The earliest first hit over the matches.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_hit_at: Option<String>,
    /// Why, in words.
    pub why: String,
    /// The report's functions that matched.
    pub matches: Vec<Match>,
}

fn matches(w: &Wanted, f: &FuncReport) -> bool {
    let module_ok = w
        .module
        .as_deref()
        .is_none_or(|m| f.module == m || f.module_file.as_deref() == Some(m));
    module_ok && (f.name == w.symbol || f.demangled.as_deref() == Some(w.symbol.as_str()))
}

/// Whether `r` observed anything: it has a window and at least one session behind it.
pub fn observed(r: &Report) -> bool {
    r.observed_from.is_some() && r.observed_until.is_some() && r.sessions > 0
}

/// What `r` says of each function of `wanted`.
pub fn reach(r: &Report, wanted: &[Wanted]) -> Vec<Finding> {
    let observed = observed(r);
    wanted
        .iter()
        .map(|w| {
            let found: Vec<&FuncReport> = r.functions.iter().filter(|f| matches(w, f)).collect();
            let ms: Vec<Match> = found
                .iter()
                .map(|f| Match {
                    module: f.module.clone(),
                    name: f.name.clone(),
                    offset: f.offset,
                    hits: f.hits,
                    first_hit_at: f.first_hit_at.clone(),
                    watched: observed && f.skipped.is_none() && f.hooked_in.is_none(),
                })
                .collect();
            let hits = ms.iter().map(|m| m.hits).sum::<u64>();
            let first_hit_at = ms.iter().filter_map(|m| m.first_hit_at.clone()).min();
            let hooked = found
                .iter()
                .any(|f| f.skipped.is_none() && f.hooked_in != Some(0));
            let (reached, why) = if hits > 0 {
                (Reached::Hit, format!("ran {hits} times"))
            } else if !ms.is_empty() && ms.iter().all(|m| m.watched) {
                (
                    Reached::NotHit,
                    "hooked for the whole observation, never ran".to_string(),
                )
            } else {
                let why = if found.is_empty() {
                    "not in the report (excluded, or not in a hooked module): not watched"
                        .to_string()
                } else if !observed {
                    "the report observed nothing (an inventory, or no observation window)"
                        .to_string()
                } else if let Some(f) = found.iter().find(|f| f.skipped.is_some()) {
                    format!("not hooked: {}", f.skipped.as_deref().unwrap_or("skipped"))
                } else {
                    let f = found.iter().find(|f| f.hooked_in.is_some()).copied();
                    format!(
                        "hooked in {} of the {} sessions only",
                        f.and_then(|f| f.hooked_in).unwrap_or(0),
                        r.sessions
                    )
                };
                (Reached::NotWatched, why)
            };
            Finding {
                wanted: w.clone(),
                reached,
                hooked,
                hits,
                first_hit_at,
                why,
                matches: ms,
            }
        })
        .collect()
}

/// The findings as a table.
pub fn table(r: &Report, findings: &[Finding]) -> String {
    use std::fmt::Write as _;
    let mut t = String::new();
    let window = match (&r.observed_from, &r.observed_until) {
        (Some(f), Some(u)) => format!("observed {f} .. {u}"),
        _ => "no observation window".to_string(),
    };
    let _ = writeln!(
        t,
        "{}  build {}  {} session(s)  {window}",
        r.exe_path,
        super::display_id(&r.build_id),
        r.sessions
    );
    let _ = writeln!(
        t,
        "{:<20} {:<40} {:<7} {:<12} {:>10}  first hit",
        "vulnerability", "function", "hooked", "reached", "hits"
    );
    for f in findings {
        let name = match &f.wanted.module {
            Some(m) => format!("{m}:{}", f.wanted.symbol),
            None => f.wanted.symbol.clone(),
        };
        let reached = match f.reached {
            Reached::Hit => "hit",
            Reached::NotHit => "never hit",
            Reached::NotWatched => "not watched",
        };
        let _ = writeln!(
            t,
            "{:<20} {:<40} {:<7} {:<12} {:>10}  {}",
            f.wanted.vulnerability.as_deref().unwrap_or("-"),
            name,
            if f.hooked { "yes" } else { "no" },
            reached,
            f.hits,
            f.first_hit_at.as_deref().unwrap_or("-"),
        );
        if f.reached == Reached::NotWatched {
            let _ = writeln!(t, "{:<20} {}", "", f.why);
        }
    }
    t
}

/// Percent-encodes what a package URL's name or qualifier value may not hold as is.
fn purl_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The package URL that names the build of `r`: `pkg:generic/<exe name>?build-id=<hex>`.
pub fn product_purl(r: &Report) -> String {
    let name = std::path::Path::new(&r.exe_path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "unknown".into());
    let mut p = format!("pkg:generic/{}", purl_escape(&name));
    if !r.build_id.is_empty() {
        p.push_str(&format!("?build-id={}", purl_escape(&r.build_id)));
    }
    p
}

/// An OpenVEX (v0.2.0) document of `findings` for the build of `r`: one statement per
/// vulnerability (each finding must name one), written by `author` at `timestamp`
/// (RFC 3339).
pub fn openvex(
    r: &Report,
    findings: &[Finding],
    author: &str,
    timestamp: &str,
) -> Result<serde_json::Value> {
    let mut by_vuln: Vec<(String, Vec<&Finding>)> = Vec::new();
    for f in findings {
        let Some(v) = &f.wanted.vulnerability else {
            return Err(BadInput(format!(
                "--openvex: {} names no vulnerability (give a JSON list with \
                 \"vulnerability\", or --vulnerability)",
                f.wanted.symbol
            ))
            .into());
        };
        match by_vuln.iter_mut().find(|(id, _)| id == v) {
            Some((_, fs)) => fs.push(f),
            None => by_vuln.push((v.clone(), vec![f])),
        }
    }
    let purl = product_purl(r);
    let window = match (&r.observed_from, &r.observed_until) {
        (Some(from), Some(until)) => format!("from {from} to {until}"),
        _ => "(no observation window)".to_string(),
    };
    let build = super::display_id(&r.build_id);
    let pids = r.processes();
    let evidence = format!(
        "xcover hooked the functions of {} (build-id {build}) in {} session(s) of pid(s) \
         {pids:?} and counted every entry {window}",
        r.exe_path, r.sessions
    );
    let mut statements = Vec::new();
    for (vuln, fs) in by_vuln {
        let name = |f: &Finding| match &f.wanted.module {
            Some(m) => format!("{m}:{}", f.wanted.symbol),
            None => f.wanted.symbol.clone(),
        };
        let list = |pick: Reached| {
            fs.iter()
                .filter(|f| f.reached == pick)
                .map(|f| name(f))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut st = json!({
            "vulnerability": { "name": vuln },
            "timestamp": timestamp,
            "products": [{ "@id": purl, "identifiers": { "purl": purl } }],
        });
        let o = st.as_object_mut().expect("an object");
        if fs.iter().any(|f| f.reached == Reached::Hit) {
            let ran: Vec<String> = fs
                .iter()
                .filter(|f| f.reached == Reached::Hit)
                .map(|f| {
                    format!(
                        "{} ran {} times, first at {}",
                        name(f),
                        f.hits,
                        f.first_hit_at.as_deref().unwrap_or("an unrecorded time")
                    )
                })
                .collect();
            o.insert("status".into(), json!("affected"));
            o.insert(
                "action_statement".into(),
                json!(format!(
                    "The vulnerable code runs in this build: {}. Update or mitigate.",
                    ran.join("; ")
                )),
            );
            o.insert(
                "status_notes".into(),
                json!(format!("{evidence}; {}", ran.join("; "))),
            );
        } else if fs.iter().all(|f| f.reached == Reached::NotHit) {
            o.insert("status".into(), json!("not_affected"));
            o.insert(
                "justification".into(),
                json!("vulnerable_code_not_in_execute_path"),
            );
            o.insert(
                "impact_statement".into(),
                json!(format!(
                    "{evidence}; the vulnerable function(s) {} were hooked for the whole \
                     observation and never ran",
                    list(Reached::NotHit)
                )),
            );
        } else {
            let unwatched: Vec<String> = fs
                .iter()
                .filter(|f| f.reached == Reached::NotWatched)
                .map(|f| format!("{} ({})", name(f), f.why))
                .collect();
            o.insert("status".into(), json!("under_investigation"));
            o.insert(
                "status_notes".into(),
                json!(format!(
                    "{evidence}; not watched, so no evidence either way: {}",
                    unwatched.join("; ")
                )),
            );
        }
        statements.push(st);
    }
    let id_time: String = timestamp.chars().filter(char::is_ascii_digit).collect();
    Ok(json!({
        "@context": "https://openvex.dev/ns/v0.2.0",
        "@id": format!("urn:xcover:vex:{}:{id_time}", purl_escape(&r.build_id)),
        "author": author,
        "timestamp": timestamp,
        "version": 1,
        "tooling": format!("xcover {}", env!("CARGO_PKG_VERSION")),
        "statements": statements,
    }))
}

#[cfg(test)]
mod tests {
    use super::super::tests::f;
    use super::*;

    #[test]
    fn function_lists() {
        let w = parse_functions(
            "# vulnerable\nf3\nlibssl.so.3:SSL_read  # a module\nns::Type::method\n",
            "list",
            Some("CVE-1"),
        )
        .unwrap();
        assert_eq!(w[0].symbol, "f3");
        assert_eq!(w[1].module.as_deref(), Some("libssl.so.3"));
        assert_eq!(w[1].symbol, "SSL_read");
        assert_eq!(
            (w[2].module.as_deref(), w[2].symbol.as_str()),
            (None, "ns::Type::method")
        );
        assert!(
            w.iter()
                .all(|w| w.vulnerability.as_deref() == Some("CVE-1"))
        );
        let w = parse_functions(
            r#"[{"vulnerability":"CVE-2","function":"app:f1"},
               {"vulnerability":"CVE-3","functions":["f2","f3"]}, "f4"]"#,
            "list",
            None,
        )
        .unwrap();
        assert_eq!(w.len(), 4);
        assert_eq!(w[0].module.as_deref(), Some("app"));
        assert_eq!(w[2].vulnerability.as_deref(), Some("CVE-3"));
        assert_eq!(w[3].vulnerability, None);
        assert!(parse_functions("# nothing\n", "list", None).is_err());
        assert!(parse_functions(r#"[{"vulnerability":"x"}]"#, "list", None).is_err());
    }

    #[test]
    fn never_claims_unreached_without_a_watch() {
        let mut r = Report::new(
            "/bin/app".into(),
            1,
            "ab".into(),
            vec![f("hit", 0x10, 3), f("never", 0x20, 0), {
                let mut s = f("skipped", 0x30, 0);
                s.skipped = Some("too short".into());
                s
            }],
        );
        let w = parse_functions("hit\nnever\nskipped\nabsent\n", "l", Some("V")).unwrap();
        // No observation window: nothing is claimed unreached.
        let got: Vec<_> = reach(&r, &w).iter().map(|f| f.reached).collect();
        assert_eq!(
            got,
            [
                Reached::Hit,
                Reached::NotWatched,
                Reached::NotWatched,
                Reached::NotWatched
            ]
        );
        r.observed_from = Some("2026-01-01T00:00:00.000000Z".into());
        r.observed_until = Some("2026-01-01T01:00:00.000000Z".into());
        let got: Vec<_> = reach(&r, &w).iter().map(|f| f.reached).collect();
        assert_eq!(
            got,
            [
                Reached::Hit,
                Reached::NotHit,
                Reached::NotWatched,
                Reached::NotWatched
            ]
        );
        // Hooked in only some of the merged sessions: not watched throughout.
        r.functions[1].hooked_in = Some(1);
        r.sessions = 2;
        assert_eq!(reach(&r, &w)[1].reached, Reached::NotWatched);
        assert_eq!(product_purl(&r), "pkg:generic/app?build-id=ab");
    }
}
