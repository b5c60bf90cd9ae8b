//! The command line: subcommands and their flags, and how failures map to exit codes.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::Settings;

/// Shows EC2 network-allowance throttling (link-local/DNS, PPS, bandwidth, conntrack) the
/// moment it happens, from the ENA driver's statistics.
#[derive(Parser, Debug)]
#[command(name = "enawatch", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Sample the watched interfaces (or a replay, or a simulation) and serve Prometheus metrics.
    Serve(ServeArgs),
    /// Start here: a simulated EC2 node in a DNS storm, served on 127.0.0.1.
    Demo(DemoArgs),
    /// A live terminal view of every watched device's allowances.
    Top(TopArgs),
    /// Record this host's driver statistics into a capture file.
    Record(RecordArgs),
    /// Report the throttling episodes in a capture and what to do about them.
    Analyze(AnalyzeArgs),
    /// A one-shot report for this node: devices, drops, link-local headroom, DNS, and fixes.
    /// Exits 3 when it finds throttling.
    Diagnose(DiagnoseArgs),
    /// The monitoring package's alerting and recording rules.
    Rules {
        /// What to do with them.
        #[command(subcommand)]
        action: RulesAction,
    },
    /// Print generated reference documentation (Markdown).
    Docs {
        /// Which reference.
        #[arg(value_enum)]
        topic: DocTopic,
    },
}

/// `enawatch rules …`.
#[derive(Subcommand, Debug)]
pub enum RulesAction {
    /// Print the rules in one of their three flavours.
    Render {
        /// `prometheus` (a rule file), `prometheus-operator` (a PrometheusRule) or `amp-ack`
        /// (an ACK RuleGroupsNamespace for Amazon Managed Prometheus).
        #[arg(long, value_enum)]
        format: crate::generate::rules::Flavour,
        /// `scraped` (agent down/absent from `up`) or `push` (for agents that push with
        /// remote write or OTLP and are never scraped: from the age of their last sample).
        #[arg(long, value_enum, default_value = "scraped")]
        agents: crate::generate::rules::Agents,
    },
}

/// Where samples come from, when not from this host's interfaces.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct SourceArgs {
    /// Play back a capture (from `enawatch record`, the README's shell loop, or a bare
    /// `ethtool -S` dump) on its recorded timeline instead of reading this host.
    #[arg(long, value_name = "FILE", conflicts_with = "simulate")]
    pub replay: Option<PathBuf>,

    /// Replay speed: 2 plays twice as fast. Default: 1.
    #[arg(long, value_name = "N", requires = "replay")]
    pub speed: Option<f64>,

    /// Start the replay over when it ends.
    #[arg(long = "loop", requires = "replay")]
    pub repeat: bool,

    /// Device name for the stats of a capture that names none. Default: eth0.
    #[arg(long, value_name = "NAME", requires = "replay")]
    pub device: Option<String>,

    /// Simulate an ENA node following SCENARIO: a built-in name (`help` lists them) or a
    /// scenario YAML file.
    #[arg(long, value_name = "SCENARIO")]
    pub simulate: Option<String>,
}

/// Flags of `enawatch serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// YAML config file with the fields below; flags override its values.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Check the configuration, print it, and exit: 0 when valid, 2 otherwise.
    #[arg(long)]
    pub check_config: bool,

    /// Where samples come from.
    #[command(flatten)]
    pub source: SourceArgs,

    /// Settings, also accepted in the config file.
    #[command(flatten)]
    pub settings: Settings,
}

/// Flags of `enawatch demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Address to serve on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9417")]
    pub listen: String,

    /// The scenario to simulate (`enawatch serve --simulate help` lists them).
    #[arg(long, value_name = "SCENARIO", default_value = "dns-storm")]
    pub scenario: String,
}

/// Flags of `enawatch top`.
#[derive(clap::Args, Debug)]
pub struct TopArgs {
    /// Where samples come from (default: this host's interfaces).
    #[command(flatten)]
    pub source: SourceArgs,

    /// Time between two samples and two screen updates. Default: 1s.
    #[arg(long, value_name = "DURATION")]
    pub interval: Option<String>,

    /// Watch the interfaces whose name matches, instead of the ENA ones.
    #[arg(long, value_name = "REGEX")]
    pub device_include: Option<String>,

    /// Never watch the interfaces whose name matches.
    #[arg(long, value_name = "REGEX")]
    pub device_exclude: Option<String>,

    /// Stop after this many updates (default: until q, Ctrl-C or the end of a replay).
    #[arg(long, value_name = "N")]
    pub iterations: Option<u64>,

    /// Meter link-local traffic against the 1024/s budget (needs CAP_NET_RAW).
    #[arg(long)]
    pub linklocal_meter: bool,

    /// Show the busiest DNS clients and their search-path amplification (needs CAP_NET_RAW).
    #[arg(long)]
    pub dns_analysis: bool,
}

/// Flags of `enawatch record`.
#[derive(clap::Args, Debug)]
pub struct RecordArgs {
    /// Time between two samples. Default: 1s.
    #[arg(long, value_name = "DURATION")]
    pub interval: Option<String>,

    /// Stop after this long (default: until Ctrl-C or SIGTERM).
    #[arg(long, value_name = "DURATION")]
    pub duration: Option<String>,

    /// Record the interfaces whose name matches, instead of the ENA ones.
    #[arg(long, value_name = "REGEX")]
    pub device_include: Option<String>,

    /// Never record the interfaces whose name matches.
    #[arg(long, value_name = "REGEX")]
    pub device_exclude: Option<String>,

    /// Write the capture here instead of to standard output.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// Flags of `enawatch analyze`.
#[derive(clap::Args, Debug)]
pub struct AnalyzeArgs {
    /// The capture to analyze (`-` for standard input).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: ReportFormat,

    /// Device name for the stats of a capture that names none. Default: eth0.
    #[arg(long, value_name = "NAME")]
    pub device: Option<String>,
}

/// Flags of `enawatch diagnose`.
#[derive(clap::Args, Debug)]
pub struct DiagnoseArgs {
    /// How long to sample. Default: 10s.
    #[arg(long, value_name = "DURATION")]
    pub duration: Option<String>,

    /// Watch the interfaces whose name matches, instead of the ENA ones.
    #[arg(long, value_name = "REGEX")]
    pub device_include: Option<String>,

    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: ReportFormat,
}

/// Report formats.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ReportFormat {
    /// For people.
    Text,
    /// For programs: the documented, stable JSON report.
    Json,
}

/// Generated references.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DocTopic {
    /// Every configuration field and flag of `enawatch serve`.
    Config,
    /// The metric families of `/metrics`.
    Metrics,
}

/// Why a command failed, and so its exit code.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Bad input (flags, config, capture, scenario, an unusable address): exit 2.
    #[error("{0}")]
    BadInput(String),
    /// Anything else: exit 1.
    #[error(transparent)]
    Runtime(#[from] anyhow::Error),
}

impl Failure {
    /// Bad input, from any error that explains itself.
    pub fn bad(err: impl std::fmt::Display) -> Self {
        Self::BadInput(err.to_string())
    }
}

impl From<crate::base::ConfigError> for Failure {
    fn from(err: crate::base::ConfigError) -> Self {
        Self::bad(err)
    }
}
