//! The command line: subcommands and their flags.

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
    /// Sample the watched interfaces and serve Prometheus metrics.
    Serve(ServeArgs),
    /// Print generated reference documentation (Markdown).
    Docs {
        /// Which reference.
        #[arg(value_enum)]
        topic: DocTopic,
    },
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

    /// Settings, also accepted in the config file.
    #[command(flatten)]
    pub settings: Settings,
}

/// Generated references.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DocTopic {
    /// Every configuration field and flag of `enawatch serve`.
    Config,
    /// The metric families of `/metrics`.
    Metrics,
}
