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
    /// Run this eBPF object (`clang -target bpf`) as the probe instead of the built-in
    /// coverage probe; it is loaded and verified before the target is touched.
    #[arg(long, value_name = "FILE.bpf.o")]
    pub probe: Option<PathBuf>,
    /// Which functions to hook.
    #[command(flatten)]
    pub select: SelectArgs,
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
}

impl SelectArgs {
    /// The library's options; a bad regex is bad input.
    pub fn options(&self) -> xcover::Result<xcover::discover::Options> {
        xcover::discover::Options::new(
            self.include.as_deref(),
            self.exclude.as_deref(),
            self.modules.clone(),
            self.all_modules,
        )
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

/// `xcover detach`.
#[derive(Args, Debug)]
pub struct DetachArgs {
    /// Process id of the target with a kept session.
    pub pid: i32,
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
