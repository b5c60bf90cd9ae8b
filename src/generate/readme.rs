//! Reference documentation generated from the code, so it cannot drift: the configuration
//! reference comes from [`Settings`]' doc comments, the metrics table from
//! [`NATIVE_FAMILIES`]. `enawatch docs …` prints them; a test keeps the README equal.

use std::fmt::Write as _;

use clap::Args as _;

use crate::config::Settings;
use crate::metrics::encode::Kind;
use crate::metrics::NATIVE_FAMILIES;

/// The configuration reference: one row per field.
pub fn config_reference() -> String {
    let cmd = Settings::augment_args(clap::Command::new("serve"));
    let mut out = String::from("| file field | flag | meaning |\n|---|---|---|\n");
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        let value =
            arg.get_value_names().and_then(|v| v.first()).map(ToString::to_string).unwrap_or_default();
        let help = arg.get_long_help().or(arg.get_help()).map(ToString::to_string).unwrap_or_default();
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ").replace('|', "\\|");
        let _ = writeln!(out, "| `{}` | `--{long} {value}` | {help} |", arg.get_id());
    }
    out
}

/// The metrics table: one row per native family.
pub fn metrics_table() -> String {
    let mut out = String::from("| family | type | labels | meaning |\n|---|---|---|---|\n");
    for f in &NATIVE_FAMILIES {
        let kind = match f.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Untyped => "untyped",
            Kind::Histogram => "histogram",
        };
        let labels = if f.labels.is_empty() { String::new() } else { format!("`{}`", f.labels) };
        let _ = writeln!(out, "| `{}` | {kind} | {labels} | {} |", f.name, f.help.replace('|', "\\|"));
    }
    out
}
