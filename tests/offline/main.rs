//! Integration tests that need nothing but the binary and the repository: the command line,
//! the offline commands, the README's generated tables, the simulate/analyze property and
//! pod attribution against a local Kubernetes API, the JSON API's pinned bodies. `cargo test --test offline` runs them
//! anywhere, without root or any other program.

#[path = "../support/mod.rs"]
mod support;

mod api;
mod cli;
mod docs;
mod offline;
mod node_events;
mod pod_attribution;
mod simulate_analyze;
