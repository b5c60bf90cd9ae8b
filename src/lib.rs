//! enawatch: EC2 ENA allowance throttling, the moment it happens.
//!
//! The modules are declared in layer order: each may import only those above it (and
//! `tests/layers.rs` fails on an edge that points up). The data flows down the same page:
//!
//! ```text
//! base        time, durations, the field error, the node name, the allowance vocabulary
//! sys         the kernel boundary: SIOCETHTOOL, AF_PACKET, netlink (all the unsafe code)
//! outbound    the one HTTP client: builder, backoff with jitter, retry classification, Retry-After
//! aws         SigV4 and the AWS credential chain
//! source      live | replay | simulate, and what feeds them: the capture format, the
//!   │         link-local meter, DNS analysis, pod attribution
//!   ▼ samples
//! history     what a tick leaves for readers: immutable snapshots (with the alert state),
//!   ▲         per-device rings, and the windows read off them
//! sampler     the tick loop and the counter semantics; writes the history
//!   │ snapshots
//!   ▼
//! metrics     /metrics (and the agent's counters about itself)
//! http        the HTTP app: /metrics, the JSON API, the page
//! alerts      the alert catalog, local evaluation, notifiers
//! remote_write  Remote Write 1.0 with a queue and a spool
//! config      aggregates every component's settings (flags and file)
//! generate    the rule files and the README's tables
//! cmd         the subcommands and the runtime they share
//! fuzz        entry points of the fuzz targets in fuzz/ (under `cargo fuzz`, and tests)
//! ```

pub mod base;
#[expect(unsafe_code, reason = "the kernel boundary: every unsafe block is here and says why")]
pub mod sys;
pub mod outbound;
pub mod aws;
pub mod source;
pub mod history;
pub mod sampler;
pub mod metrics;
pub mod http;
pub mod alerts;
pub mod remote_write;
pub mod config;
pub mod generate;
pub mod cmd;
#[cfg(any(fuzzing, test))]
pub mod fuzz;
