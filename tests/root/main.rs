//! Integration tests on real interfaces: network namespaces of the tests' own with veth
//! pairs, devices churned under the agent, a DNS server that never answers, the link-local
//! lab (dnsmasq, nftables, dnsperf), the benchmark harness's smoke run and a three-minute
//! churn soak. They need root (`cargo test --test root` as root; CI runs as root) and clean
//! up after themselves; every namespace name is unique to its test, so they run in parallel.

#[path = "../support/mod.rs"]
mod support;

mod bench_smoke;
mod capture_live;
mod churn;
mod faults;
mod http_limits;
mod linklocal_lab;
mod live_veth;
mod soak;
