//! Integration tests that run other programs next to the binary, on 127.0.0.1 only: Debian's
//! promtool, Prometheus, amtool and Alertmanager, tmux, headless Chromium and openssl, and
//! the PyPI packages kubernetes-validate, botocore, python-hcl2 and checkov (`scripts/test`
//! installs them all).
//! `cargo test --test tools` runs them; no root is needed.

#[path = "../support/mod.rs"]
mod support;

mod dashboards;
mod e2e;
mod golden;
mod helm;
mod manifests;
mod notify;
mod package;
mod remote_write;
mod remote_write_manifests;
mod remote_write_otlp;
mod terraform;
mod top_tmux;
mod web_page;
