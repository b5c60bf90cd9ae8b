//! `enawatch diagnose`: a one-shot report for the node it runs on.
//!
//! It samples for a short while (10 s by default) with everything it may use — the ENA
//! statistics, the link-local meter and the DNS analysis when `CAP_NET_RAW` allows — and says
//! what it found, what it could not check and why, and what to do. Exit code: 0 when no
//! throttling was found, 3 when it was, 2 for bad input, 1 when it could not run at all.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;

use crate::base::allowance::{Allowance, ALLOWANCE_STATS};
use crate::base::parse_duration;
use crate::cmd::analyze::advice;
use crate::cmd::cli::{DiagnoseArgs, Failure, ReportFormat};
use crate::cmd::runtime::Running;
use crate::config::Settings;
use crate::history::Point;
use crate::source::dns::{DnsReport, DnsStats};
use crate::source::linklocal::BUDGET_PPS;
use crate::source::live::{LiveSource, Selection};
use crate::sys::packet::{PacketSocket, Ring};
use crate::sys::{self, Ethtool, IfName};

/// What `diagnose` found.
#[derive(Debug, Serialize)]
pub(crate) struct Diagnosis {
    /// Seconds sampled.
    pub sampled_seconds: f64,
    /// Every interface of the namespace and its driver.
    pub interfaces: Vec<(String, String)>,
    /// The watched devices.
    pub devices: Vec<DeviceFinding>,
    /// The node's resolver configuration.
    pub resolver: Resolver,
    /// The DNS analysis, when it could run.
    pub dns: Option<DnsReport>,
    /// What could not be checked, and why.
    pub not_checked: Vec<String>,
    /// Throttling found during the sample (or link-local traffic over its budget)?
    pub throttled: bool,
    /// The conclusions, worst first.
    pub verdict: Vec<String>,
}

/// One device.
#[derive(Debug, Serialize)]
pub(crate) struct DeviceFinding {
    /// Interface name.
    pub device: String,
    /// Driver and version.
    pub driver: String,
    /// Allowance statistics the driver reports.
    pub supported: Vec<&'static str>,
    /// Packets over each allowance since the driver started (its counters as first read).
    pub since_driver_start: Vec<(&'static str, u64)>,
    /// Packets over each allowance during the sample.
    pub during_sample: Vec<(&'static str, u64)>,
    /// Highest per-second rate to link-local services during the sample (with the meter).
    pub linklocal_peak_pps: Option<u32>,
}

/// The resolver configuration of this node (`/etc/resolv.conf`).
#[derive(Debug, Default, Serialize)]
pub(crate) struct Resolver {
    /// Nameservers.
    pub nameservers: Vec<String>,
    /// Search list.
    pub search: Vec<String>,
    /// `ndots` (1 when unset, glibc's default).
    pub ndots: u32,
    /// Whether NodeLocal DNSCache (169.254.20.10) is in use on this node.
    pub nodelocal_dnscache: bool,
}

fn resolver(resolv_conf: &str, interfaces: &[(String, String)]) -> Resolver {
    let mut r = Resolver { ndots: 1, ..Resolver::default() };
    for line in resolv_conf.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => r.nameservers.extend(words.next().map(str::to_owned)),
            Some("search") => r.search = words.map(str::to_owned).collect(),
            Some("options") => {
                for o in words {
                    if let Some(n) = o.strip_prefix("ndots:").and_then(|n| n.parse().ok()) {
                        r.ndots = n;
                    }
                }
            }
            _ => {}
        }
    }
    r.nodelocal_dnscache = r.nameservers.iter().any(|n| n == "169.254.20.10")
        || interfaces.iter().any(|(name, _)| name == "nodelocaldns");
    r
}

/// Runs the diagnosis; `true` when it found throttling.
#[expect(clippy::too_many_lines, reason = "one pass, read top to bottom: sample, then conclude")]
pub fn run(args: &DiagnoseArgs) -> Result<bool, Failure> {
    let duration = parse_duration(args.duration.as_deref().unwrap_or("10s"))
        .map_err(|p| Failure::BadInput(format!("duration: {p}")))?;
    let settings = Settings {
        device_include: args.device_include.clone(),
        linklocal_meter: Some(true),
        ..Settings::default()
    };
    let config = settings.resolve()?;
    let mut not_checked = Vec::new();

    let ethtool = Ethtool::open().map_err(|e| Failure::Runtime(e.into()))?;
    let interfaces: Vec<(String, String)> = sys::list_links()
        .map_err(|e| Failure::Runtime(e.into()))?
        .into_iter()
        .map(|l| {
            let driver = IfName::new(&l.name)
                .and_then(|n| ethtool.driver_info(n).ok())
                .map_or_else(|| "-".to_owned(), |d| d.driver);
            (l.name, driver)
        })
        .collect();

    // Everything the process may open: the capture sockets need CAP_NET_RAW.
    let can_capture = PacketSocket::open(0, &crate::source::dns::program(), Ring::METER).is_ok();
    if !can_capture {
        not_checked.push(
            "link-local rate and DNS clients: opening packet sockets needs CAP_NET_RAW (run as root or add the capability)"
                .to_owned(),
        );
    }
    let dns = can_capture.then(|| Arc::new(Mutex::new(DnsStats::new(config.dns.clone(), None))));
    let selection = Selection {
        include: config.device_include.clone(),
        exclude: None,
        eni: config.eni.clone(),
        linklocal: if can_capture { config.linklocal.clone() } else { None },
        dns: dns.clone(),
        extra_stats: config.extra_stats.clone(),
    };
    let source = LiveSource::new(selection, config.rediscover_interval, config.interval).map_err(|e| {
        Failure::Runtime(anyhow::Error::from(e).context("cannot open a socket for the ethtool ioctl"))
    })?;
    let running = Running::start(&config, Box::new(source), None)?;
    std::thread::sleep(duration + Duration::from_millis(300));
    let store = Arc::clone(&running.store);
    running.stop();

    let snapshot = store.latest();
    let devices: Vec<DeviceFinding> = store.read_history(|h| {
        snapshot
            .devices
            .iter()
            .map(|d| {
                let points: Vec<Point> = h.points(&d.device.name).collect();
                let during: Vec<(&'static str, u64)> = Allowance::ALL
                    .into_iter()
                    .filter(|a| d.counters.supported[a.index()])
                    .map(|a| (a.label(), points.iter().map(|p| u64::from(p.added[a.index()])).sum()))
                    .collect();
                let start: Vec<(&'static str, u64)> = Allowance::ALL
                    .into_iter()
                    .filter(|a| d.counters.supported[a.index()])
                    .map(|a| {
                        let since = during.iter().find(|(l, _)| *l == a.label()).map_or(0, |(_, n)| *n);
                        (a.label(), d.counters.packets[a.index()].saturating_sub(since))
                    })
                    .collect();
                DeviceFinding {
                    device: d.device.name.clone(),
                    driver: format!("{} {}", d.device.driver, d.device.driver_version).trim().to_owned(),
                    supported: ALLOWANCE_STATS
                        .iter()
                        .enumerate()
                        .filter(|(k, _)| d.schema.index.supports(*k))
                        .map(|(_, s)| *s)
                        .collect(),
                    since_driver_start: start,
                    during_sample: during,
                    linklocal_peak_pps: points
                        .iter()
                        .filter(|p| p.linklocal != Point::NO_VALUE)
                        .map(|p| p.linklocal)
                        .max(),
                }
            })
            .collect()
    });
    if devices.is_empty() {
        let seen: Vec<String> = interfaces.iter().map(|(n, d)| format!("{n} ({d})")).collect();
        not_checked.push(format!(
            "allowances: no ENA device here (interfaces: {}); pass --device-include REGEX for others",
            seen.join(", ")
        ));
    } else if devices.iter().all(|d| d.supported.is_empty()) {
        not_checked
            .push("allowances: the watched devices' drivers report no allowance statistics".to_owned());
    }
    let resolver = resolver(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(), &interfaces);
    let dns = dns.map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).report(crate::base::wall_ms()));

    let mut verdict = Vec::new();
    let mut throttled = false;
    for d in &devices {
        for (a, n) in &d.during_sample {
            if *n > 0 {
                throttled = true;
                let allowance = Allowance::ALL.into_iter().find(|x| x.label() == *a).expect("known");
                verdict.push(format!(
                    "{}: {n} packets over the {a} allowance during the sample. {}",
                    d.device,
                    advice(allowance)
                ));
            }
        }
        if let Some(peak) = d.linklocal_peak_pps {
            if f64::from(peak) > BUDGET_PPS {
                throttled = true;
                verdict.push(format!(
                    "{}: sends up to {peak} link-local packets a second, over the 1024/s budget: EC2 drops the excess. {}",
                    d.device,
                    advice(Allowance::Linklocal)
                ));
            } else if f64::from(peak) > 0.8 * BUDGET_PPS {
                verdict.push(format!(
                    "{}: link-local traffic peaks at {peak}/s, over 80% of the 1024/s budget.",
                    d.device
                ));
            }
        }
    }
    if let Some(report) = &dns {
        for w in report.who_is_hurt.iter().filter(|w| w.failures() > 0) {
            let cause = if w.throttled > 0 {
                format!(
                    "{} of them sent while the link-local allowance was dropping packets: that is the throttling. \
                     Spread CoreDNS over more nodes, or use NodeLocal DNSCache.",
                    w.throttled
                )
            } else {
                "none while link-local packets were dropped: not this throttling.".to_owned()
            };
            verdict.push(format!(
                "DNS lookups of {} failed: {} of {} ({} timed out, {} SERVFAIL, {} REFUSED); {cause}",
                w.name(),
                w.failures(),
                w.queries,
                w.timeouts,
                w.servfail,
                w.refused
            ));
        }
        for c in report.amplifying() {
            let a = c.amplification.as_ref().expect("amplifying");
            verdict.push(format!(
                "{} sends {}x the DNS queries its lookups need (search path, ndots {}): {} queries would be saved. \
                 Set ndots:{} in the workloads' dnsConfig, use trailing-dot names, or NodeLocal DNSCache.",
                c.client, a.factor, resolver.ndots, a.would_save, a.recommended_ndots
            ));
        }
    }
    if verdict.is_empty() {
        verdict.push("No throttling found during the sample.".to_owned());
    }
    let diagnosis = Diagnosis {
        sampled_seconds: duration.as_secs_f64(),
        interfaces,
        devices,
        resolver,
        dns,
        not_checked,
        throttled,
        verdict,
    };
    let out = match args.format {
        ReportFormat::Json => serde_json::to_string_pretty(&diagnosis).expect("serializable") + "\n",
        ReportFormat::Text => diagnosis.to_text(),
    };
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), out.as_bytes());
    Ok(diagnosis.throttled)
}

impl Diagnosis {
    /// The human-readable form.
    pub fn to_text(&self) -> String {
        let mut s = format!("enawatch diagnose: sampled {}s\n\nDevices\n", self.sampled_seconds);
        for d in &self.devices {
            let _ = writeln!(
                s,
                "  {} ({}): reports {}",
                d.device,
                d.driver,
                if d.supported.is_empty() {
                    "no allowance statistics".to_owned()
                } else {
                    d.supported.join(", ")
                }
            );
            let hist: Vec<String> = d
                .since_driver_start
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(a, n)| format!("{a} {n}"))
                .collect();
            if !hist.is_empty() {
                let _ = writeln!(s, "    since the driver started: {}", hist.join(", "));
            }
            let now: Vec<String> =
                d.during_sample.iter().filter(|(_, n)| *n > 0).map(|(a, n)| format!("{a} {n}")).collect();
            let _ = writeln!(
                s,
                "    during the sample: {}",
                if now.is_empty() { "no drops".to_owned() } else { now.join(", ") }
            );
            if let Some(peak) = d.linklocal_peak_pps {
                let _ = writeln!(
                    s,
                    "    link-local peak: {peak}/s ({:.0}% of the 1024/s budget)",
                    f64::from(peak) / BUDGET_PPS * 100.0
                );
            }
        }
        let r = &self.resolver;
        let _ = writeln!(
            s,
            "\nResolver\n  nameservers {}; search {}; ndots {}; NodeLocal DNSCache {}",
            r.nameservers.join(" "),
            if r.search.is_empty() { "-".to_owned() } else { r.search.join(" ") },
            r.ndots,
            if r.nodelocal_dnscache { "in use" } else { "not in use" }
        );
        if let Some(dns) = &self.dns {
            s.push('\n');
            s.push_str(&dns.to_text());
        }
        if !self.not_checked.is_empty() {
            s.push_str("\nNot checked\n");
            for n in &self.not_checked {
                let _ = writeln!(s, "  {n}");
            }
        }
        let _ = writeln!(s, "\nVerdict: {}", if self.throttled { "THROTTLED" } else { "not throttled" });
        for v in &self.verdict {
            let _ = writeln!(s, "  - {v}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_resolver_configuration() {
        let conf = "search default.svc.cluster.local svc.cluster.local cluster.local\nnameserver 172.20.0.10\noptions ndots:5 timeout:1\n";
        let r = resolver(conf, &[]);
        assert_eq!((r.ndots, r.search.len(), r.nodelocal_dnscache), (5, 3, false));
        assert!(resolver("nameserver 169.254.20.10\n", &[]).nodelocal_dnscache);
        assert!(resolver("", &[("nodelocaldns".into(), "dummy".into())]).nodelocal_dnscache);
        assert_eq!(resolver("", &[]).ndots, 1);
    }
}
