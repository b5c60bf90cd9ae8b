//! Remote Write 1.0: the agent pushes its own samples to Amazon Managed Service for
//! Prometheus (SigV4), Mimir, Thanos Receive, VictoriaMetrics or Prometheus's receiver; and,
//! with the same machinery and a second encoding (otlp.rs, `protocol: otlp`), as OTLP/HTTP
//! metrics to an OpenTelemetry collector or CloudWatch (SigV4, service `monitoring`).
//!
//! ```text
//! store (latest snapshot) --poll--> collector thread --step--> spool (optional, on disk)
//!                                        |                       |
//!                                        +--> queue per endpoint --> sender task --> HTTP POST
//! ```
//!
//! - What is sent is what `/metrics` shows for the native families: the collector runs the
//!   same [`metrics::visit`] over the snapshot. One step per `resolution` (default 15 s,
//!   steps aligned on Unix time): the latest sample taken in it, stamped with the sample's
//!   time. The collector is a thread of its own that only reads published snapshots, so
//!   nothing here can delay the sampler, and a busy HTTP runtime cannot make it miss one.
//! - Each endpoint has a bounded [`queue`] (default: two hours of steps) and one sender that
//!   delivers one batch at a time, so each series arrives in order. Network errors, 5xx and
//!   429 are retried with exponential backoff and jitter (`Retry-After` honoured); any other
//!   4xx drops the batch, counted and logged with the receiver's reason. A full queue drops
//!   its oldest step and counts it.
//! - With `spool_dir`, steps are also written to disk ([`spool`]) and replayed after a
//!   restart, from the last step the receiver accepted.
//! - Authentication: SigV4 ([`sigv4`], credentials from [`credentials`]), basic or bearer
//!   (secrets read from files at each request, so rotated Secrets apply), TLS with the
//!   system roots plus an optional CA file. Secrets are never logged.

mod collector;
mod config;
mod otlp;
pub mod proto;
pub mod queue;
mod sender;
pub mod spool;

use self::collector::Shared;
pub use self::collector::{stats, Pusher, SpoolError};
use self::config::Auth;
pub use self::config::{
    resolve_all, AuthConfig, BasicConfig, BearerConfig, Endpoint, EndpointConfig, Protocol, Sigv4Config,
};

#[cfg(test)]
mod tests;
