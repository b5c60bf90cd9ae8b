//! enawatch: EC2 ENA allowance throttling, the moment it happens.
//!
//! The data flows one way (see DESIGN.md):
//!
//! ```text
//! sys (ioctl, netlink) -> source (live) -> sampler (counters) -> history (snapshots)
//!                                                                  -> metrics -> http
//! ```

pub mod alerts;
pub mod analysis;
pub mod api;
pub mod capture;
pub mod cli;
pub mod config;
pub mod diagnose;
pub mod dns;
pub mod docs;
pub mod history;
pub mod http;
pub mod k8s;
pub mod linklocal;
pub mod metrics;
pub mod record;
pub mod remote_write;
pub mod rules;
pub mod sampler;
pub mod serve;
pub mod source;
pub mod stats;
#[allow(unsafe_code)]
pub mod sys;
pub mod top;
