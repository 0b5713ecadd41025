//! The command line: what each command takes. The commands themselves are in `cmd/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use xcover::report::Outputs;

use crate::cmd::dev::{DevCommand, VmCommand};

/// Live function coverage of a running process, without restarting it.
#[derive(Parser, Debug)]
#[command(name = "xcover", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Instrument every function of a running process and show coverage live.
    #[command(
        mut_arg("report", |a| a.help("Write the JSON report here on detach")),
        mut_arg("lcov", |a| a.help("Write an LCOV report here on detach"))
    )]
    Attach(AttachArgs),
    /// Take the instrumentation of a kept session out of a process.
    Detach(DetachArgs),
    /// List live sessions with their coverage.
    Status(StatusArgs),
    /// Start the bundled demo target and attach to it.
    #[command(
        mut_arg("report", |a| a.help("Write the JSON report here on detach")),
        mut_arg("lcov", |a| a.help("Write an LCOV report here on detach"))
    )]
    Demo(DemoArgs),
    /// List the functions `attach` would hook, with their runtime addresses.
    #[command(
        mut_arg("report", |a| a.help(
            "Also write them as a JSON report with no hits (an inventory to merge others into)"
        )),
        mut_arg("lcov", |a| a.help("Also write them as an LCOV report with no hits"))
    )]
    Functions(FunctionsArgs),
    /// Sum JSON reports of the same build into one.
    #[command(
        mut_arg("report", |a| a.help("Write the merged JSON here instead of stdout (as -o)")),
        mut_arg("lcov", |a| a.help("Also write the merged coverage as LCOV"))
    )]
    Merge(MergeArgs),
    /// Put hooks back into a live session without detaching (those `unhook`,
    /// `--first-hit` or `--max-overhead` took out).
    Hook(HookArgs),
    /// Take hooks out of a live session without detaching; their counts are kept (a lower
    /// bound from then on).
    Unhook(HookArgs),
    /// Give a report taken without symbols its real names, files and lines, from a debug
    /// file of the same build (matched by build-id and address).
    Symbolize(SymbolizeArgs),
    /// Compare two JSON reports: functions newly hit, no longer hit, counts changed most.
    Diff(DiffArgs),
    /// Did these functions ever run? Evidence from a report, as a table, JSON or OpenVEX.
    Reach(ReachArgs),
    /// Developer commands, not for users: xcover's eBPF VM for the bpf_conformance suite.
    #[command(hide = true)]
    Dev {
        /// Which developer command.
        #[command(subcommand)]
        cmd: DevCommand,
    },
    /// `xcover dev vm` under its former name (the conformance tests and scripts use it).
    #[command(hide = true)]
    Vm {
        /// What to run.
        #[command(subcommand)]
        cmd: VmCommand,
    },
}

/// Declares [`OutputArgs`]: one `--<field> <PATH>` option per report format, each tied to
/// the name of its format in `xcover::report::FORMATS`.
macro_rules! output_args {
    ($($(#[$doc:meta])* $field:ident => $format:literal,)*) => {
        /// Where to write reports, one option per report format: the same options, checked
        /// and written the same way, in every command that writes reports.
        #[derive(Args, Debug, Clone, Default)]
        pub struct OutputArgs {
            $(
                $(#[$doc])*
                #[arg(long, value_name = "PATH")]
                pub $field: Option<PathBuf>,
            )*
        }

        impl OutputArgs {
            /// The reports asked for, in the library's terms.
            pub fn outputs(&self) -> Outputs {
                let mut outputs = Outputs::new();
                $(
                    if let Some(path) = &self.$field {
                        let format = xcover::report::format($format)
                            .expect(concat!("no report format named ", $format));
                        outputs.add(format, path.clone());
                    }
                )*
                outputs
            }
        }
    };
}

// A new report format: one line here (its option and its format's name).
output_args! {
    /// Write the JSON report here.
    report => "json",
    /// Write an LCOV report here.
    lcov => "lcov",
}

/// `xcover attach`.
#[derive(Args, Debug)]
pub struct AttachArgs {
    /// Process id of the running target.
    pub pid: i32,
    /// Print a one-line status every second on stderr instead of the TUI.
    #[arg(long)]
    pub no_tui: bool,
    /// Detach by itself after this many seconds.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Leave the instrumentation in place when xcover exits (see `xcover detach`).
    #[arg(long)]
    pub keep: bool,
    /// Coverage at no steady cost: unhook each function after its first hit (in batches,
    /// at most every 100 ms, each a stop of about a millisecond). Counts become lower
    /// bounds (`hits_lower_bound` in the JSON report).
    #[arg(long, conflicts_with_all = ["keep", "max_overhead"])]
    pub first_hit: bool,
    /// Keep the overhead xcover adds under PCT percent of the target's CPU time: every
    /// second, estimate it from each function's hits and the cost of a hit, and unhook
    /// the hottest (already covered) functions until it fits. Their counts become lower
    /// bounds; the others stay exact.
    #[arg(long, value_name = "PCT", conflicts_with = "keep")]
    pub max_overhead: Option<f64>,
    /// The reports to write when the session ends.
    #[command(flatten)]
    pub output: OutputArgs,
    /// Hook functions no jump can patch with a one-byte `int3` trap, served by the agent's
    /// SIGTRAP handler (a signal delivery per hit); see README.md for what the target must
    /// not do meanwhile (block SIGTRAP, replace its handler). Never in Go programs.
    #[arg(long)]
    pub traps: bool,
    /// Run this eBPF object (`clang -target bpf`) as the probe instead of the built-in
    /// coverage probe; it is loaded and verified before the target is touched.
    #[arg(long, value_name = "FILE.bpf.o")]
    pub probe: Option<PathBuf>,
    /// Which functions to hook.
    #[command(flatten)]
    pub select: SelectArgs,
    /// Metrics for Prometheus and OpenTelemetry while the session is watched.
    #[command(flatten)]
    pub export: ExportArgs,
}

/// Metrics while a session is watched: a Prometheus endpoint, an OTLP push.
#[derive(Args, Debug, Clone, Default)]
pub struct ExportArgs {
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics while watching (hit counts per
    /// function, coverage per module, drops, the processes, xcover's own CPU); port 0 picks
    /// a free one (the address is printed).
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<String>,
    /// Which functions get a `xcover_function_hits_total` series (and an OTLP data point):
    /// those hit, every hooked one, or none.
    #[arg(long, value_name = "hit|all|none", default_value = "hit")]
    pub metrics_functions: xcover::export::FunctionSeries,
    /// Push the same metrics as OpenTelemetry over OTLP/HTTP (JSON) to this collector URL
    /// (`http://host:4318`; posted to <URL>/v1/metrics) every --otlp-interval and once at
    /// the end.
    #[arg(long, value_name = "URL")]
    pub otlp: Option<String>,
    /// Seconds between OTLP pushes.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub otlp_interval: f64,
    /// The OTLP resource's service.name (default: the target's executable name).
    #[arg(long, value_name = "NAME")]
    pub service_name: Option<String>,
}

/// Which functions to hook (shared by `attach` and `functions`).
#[derive(Args, Debug, Clone, Default)]
pub struct SelectArgs {
    /// Only functions whose raw or demangled name matches this regex.
    #[arg(long, value_name = "REGEX")]
    pub include: Option<String>,
    /// Leave out functions whose raw or demangled name matches this regex (wins over
    /// --include).
    #[arg(long, value_name = "REGEX")]
    pub exclude: Option<String>,
    /// Also hook a loaded shared library, by file name (`libc.so.6`) or path. Repeatable.
    #[arg(long = "module", value_name = "NAME-OR-PATH")]
    pub modules: Vec<String>,
    /// Also hook every file-backed executable mapping.
    #[arg(long)]
    pub all_modules: bool,
    /// Look for separate debug files here (as `<dir>/.build-id/xx/yyyy.debug` and by
    /// `.gnu_debuglink`) before `/usr/lib/debug`. Repeatable.
    #[arg(long = "debug-dir", value_name = "DIR")]
    pub debug_dirs: Vec<PathBuf>,
}

impl SelectArgs {
    /// The library's options; a bad regex is bad input.
    pub fn options(&self) -> xcover::Result<xcover::discover::Options> {
        let mut o = xcover::discover::Options::new(
            self.include.as_deref(),
            self.exclude.as_deref(),
            self.modules.clone(),
            self.all_modules,
        )?;
        o.debug_dirs = self.debug_dirs.clone();
        Ok(o)
    }
}

/// `xcover hook` and `xcover unhook`.
#[derive(Args, Debug)]
pub struct HookArgs {
    /// Process id of a target with a live session (watched by an `xcover attach`, or kept).
    pub pid: i32,
    /// Only functions whose raw or demangled name matches this regex.
    #[arg(long, value_name = "REGEX")]
    pub include: Option<String>,
    /// Leave out functions whose raw or demangled name matches this regex (wins over
    /// --include).
    #[arg(long, value_name = "REGEX")]
    pub exclude: Option<String>,
    /// Only functions of this module, by the name it goes by in the session, its file name or
    /// its path. Repeatable. Without any of these options: every function of the session.
    #[arg(long = "module", value_name = "NAME-OR-PATH")]
    pub modules: Vec<String>,
}

/// `xcover functions`.
#[derive(Args, Debug)]
pub struct FunctionsArgs {
    /// Process id of the running target.
    pub pid: i32,
    /// Which functions.
    #[command(flatten)]
    pub select: SelectArgs,
    /// The reports to write them in, with no hits.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `xcover merge`.
#[derive(Args, Debug)]
pub struct MergeArgs {
    /// JSON reports (ours or the original xcover's schema v1), all of one build-id.
    #[arg(required = true, value_name = "REPORT.json")]
    pub reports: Vec<PathBuf>,
    /// Write the merged JSON here instead of stdout.
    #[arg(short, long, value_name = "PATH", conflicts_with = "report")]
    pub output: Option<PathBuf>,
    /// The reports to write the merged coverage in (without a JSON one, the JSON goes to
    /// stdout).
    #[command(flatten)]
    pub out: OutputArgs,
}

/// `xcover symbolize`.
#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("debug").required(true).args(["debug_file", "debug_dirs"])))]
pub struct SymbolizeArgs {
    /// The JSON report to symbolize.
    #[arg(value_name = "REPORT.json")]
    pub report: PathBuf,
    /// The separate debug file of the report's build (refused if its build-id differs).
    #[arg(long, value_name = "FILE")]
    pub debug_file: Option<PathBuf>,
    /// Find the debug file by the report's build-id here (`<dir>/.build-id/xx/yyyy.debug`),
    /// then in `/usr/lib/debug`. Repeatable.
    #[arg(long = "debug-dir", value_name = "DIR")]
    pub debug_dirs: Vec<PathBuf>,
    /// Write the symbolized JSON here instead of stdout.
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,
}

/// `xcover diff`.
#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The report before.
    #[arg(value_name = "A.json")]
    pub a: PathBuf,
    /// The report after.
    #[arg(value_name = "B.json")]
    pub b: PathBuf,
    /// Also write the whole comparison as JSON here (`-` for stdout, then without the
    /// table).
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// How many functions each list of the table shows, and how many of the largest count
    /// changes are kept.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub top: usize,
    /// Compare reports of different builds (by module and function name; offsets differ).
    #[arg(long)]
    pub force: bool,
}

/// `xcover reach`.
#[derive(Args, Debug)]
pub struct ReachArgs {
    /// A JSON report (a session's, or a merge of many).
    #[arg(value_name = "REPORT.json")]
    pub report: PathBuf,
    /// The functions to look for: one `symbol` or `module:symbol` per line (`#` comments),
    /// or a JSON list of such strings or of objects
    /// `{"vulnerability": "CVE-…", "function": "module:symbol"}` (or `"functions": […]`).
    #[arg(long, value_name = "FILE")]
    pub functions: PathBuf,
    /// The vulnerability of the functions whose entry names none (a plain list).
    #[arg(long, value_name = "ID")]
    pub vulnerability: Option<String>,
    /// Write an OpenVEX document here: `affected` for a vulnerability whose function ran,
    /// `not_affected` (vulnerable_code_not_in_execute_path) when every one was hooked for
    /// the whole observation and never ran, `under_investigation` otherwise.
    #[arg(long, value_name = "PATH")]
    pub openvex: Option<PathBuf>,
    /// The OpenVEX document's author.
    #[arg(long, value_name = "NAME", default_value = "xcover")]
    pub author: String,
    /// Write the findings as JSON here (`-` for stdout, instead of the table).
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
}

/// `xcover detach`.
#[derive(Args, Debug)]
pub struct DetachArgs {
    /// Process id of the target with a kept session.
    pub pid: i32,
    /// Look for separate debug files (the reports' source lines) here before
    /// `/usr/lib/debug`. Repeatable.
    #[arg(long = "debug-dir", value_name = "DIR")]
    pub debug_dirs: Vec<PathBuf>,
    /// The reports to write from the final counts.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `xcover status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Only this process.
    pub pid: Option<i32>,
}

/// `xcover demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Print a status line every second instead of the TUI.
    #[arg(long)]
    pub no_tui: bool,
    /// Detach and stop the demo after this many seconds.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// The reports to write when the session ends.
    #[command(flatten)]
    pub output: OutputArgs,
    /// Metrics while it runs.
    #[command(flatten)]
    pub export: ExportArgs,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("xcover").chain(args.iter().copied()))
    }

    #[test]
    fn every_output_option_has_its_format() {
        let Command::Detach(d) = parse(&["detach", "1", "--report", "r.json", "--lcov", "r.info"])
            .unwrap()
            .command
        else {
            panic!("not detach");
        };
        let names: Vec<_> = d.output.outputs().iter().map(|o| o.format.name()).collect();
        assert_eq!(names, ["json", "lcov"]);
        assert_eq!(names.len(), xcover::report::FORMATS.len());
    }

    #[test]
    fn merge_output_is_the_json_report() {
        assert!(parse(&["merge", "a.json", "-o", "m.json"]).is_ok());
        assert!(parse(&["merge", "a.json", "--report", "m.json", "--lcov", "m.info"]).is_ok());
        assert!(parse(&["merge", "a.json", "-o", "m.json", "--report", "n.json"]).is_err());
    }

    #[test]
    fn developer_commands_are_hidden() {
        let help = Cli::command().render_help().to_string();
        assert!(help.contains("attach"), "{help}");
        let listed = |name: &str| help.lines().any(|l| l.trim_start().starts_with(name));
        assert!(!listed("dev ") && !listed("vm "), "{help}");
        assert!(parse(&["dev", "vm", "exec", "--jit", "00"]).is_ok());
        assert!(parse(&["vm", "conformance", "/x", "--interp"]).is_ok());
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
