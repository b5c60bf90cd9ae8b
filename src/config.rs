//! Configuration: one set of settings, given in a YAML file, as flags, or both (flags win).
//!
//! [`Settings`] is both the flag set of `enawatch serve` and the schema of the config file,
//! so the two cannot drift; its doc comments are the `--help` text and the README's
//! configuration reference (`enawatch docs config` prints it; a test keeps the README equal).
//! Values stay strings until [`Settings::resolve`], which checks each one and names the
//! field and the bad value in every error.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use regex_lite::Regex;
use serde::{Deserialize, Serialize};

use crate::base::{parse_duration, ConfigError, HumanDuration};
use crate::metrics::Compat;

/// Settings of `enawatch serve`, as flags and as fields of the YAML config file.
#[derive(clap::Args, Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Address and port to serve HTTP on. Default: 0.0.0.0:9417.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,

    /// Time between two samples: 100ms or more. Below 1s, each read of an ENA device is an
    /// admin-queue command to the device, so the agent warns. Default: 1s.
    #[arg(long, value_name = "DURATION")]
    pub interval: Option<String>,

    /// How much history to keep in memory, per device, at full resolution. Default: 15m.
    #[arg(long, value_name = "DURATION")]
    pub history: Option<String>,

    /// How often to look for interfaces that appeared. Default: 30s.
    #[arg(long, value_name = "DURATION")]
    pub rediscover_interval: Option<String>,

    /// Watch the interfaces whose name matches this regex, whatever their driver, instead of
    /// the default: every interface whose driver is `ena`.
    #[arg(long, value_name = "REGEX")]
    pub device_include: Option<String>,

    /// Never watch the interfaces whose name matches this regex.
    #[arg(long, value_name = "REGEX")]
    pub device_exclude: Option<String>,

    /// ENI id of an interface, for the `eni` label where no `eni-…` altname supplies it:
    /// `DEVICE=ENI` on the command line (repeatable), a map in the file.
    #[arg(long = "eni", value_name = "DEVICE=ENI", value_parser = parse_eni_flag)]
    #[serde(default, deserialize_with = "eni_map", serialize_with = "eni_map_out")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub eni: Vec<(String, String)>,

    /// Compatibility families to add to `/metrics`, comma-separated: `showmax`
    /// (`node_net_ethtool{device,type}`), `node-exporter` (`node_ethtool_<stat>{device}`).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub compat: Option<Vec<String>>,

    /// Driver stats the compatibility families export (regex on the stat name; `.*` for
    /// all). Default: the six allowance stats.
    #[arg(long, value_name = "REGEX")]
    pub compat_stats: Option<String>,

    /// Meter the packets each watched device sends to link-local services (DNS resolver,
    /// IMDS, Time Sync) against their 1024/s budget. Needs CAP_NET_RAW. Default: off.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub linklocal_meter: Option<bool>,

    /// Match every DNS query on the node to its response: lookups, failures and latency per
    /// workload and upstream in /metrics, whether link-local throttling caused the failures,
    /// per-client rates and search-path amplification (`/api/v1/dns`). Needs CAP_NET_RAW at
    /// start. Default: off.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub dns_analysis: Option<bool>,

    /// Name DNS clients by pod (namespace, name, workload) from the Kubernetes API: lists and
    /// watches this node's pods (`NODE_NAME`), read-only. Default: off.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub pod_attribution: Option<bool>,

    /// Record the allowance alerts on this node's Node object as Kubernetes Events, with the
    /// reasons the EKS node monitoring agent uses (`LinkLocalExceeded`, `PPSExceeded`…):
    /// Warning when one fires, Normal when it resolves (docs/events.md). Needs `create` and
    /// `patch` on events and `NODE_NAME`. Default: off.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub node_events: Option<bool>,

    /// The least time between two writes of the same event (reason, device and type): firings
    /// in between are counted into the next write. 1s to 1h. Default: 1m.
    #[arg(long, value_name = "DURATION")]
    pub node_events_interval: Option<String>,

    /// The VPC's DNS resolvers (VPC+2 addresses) the meter counts besides 169.254.169.253,
    /// and the DNS analysis calls `upstream="vpc_resolver"`, comma-separated, at most 256.
    /// Default: the nameservers ending in .2 in /etc/resolv.conf.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub vpc_resolvers: Option<Vec<String>>,

    /// Addresses of NodeLocal DNSCache (`upstream="nodelocal"`), comma-separated.
    /// Default: 169.254.20.10.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub nodelocal_dns: Option<Vec<String>>,

    /// Addresses of the cluster's DNS, the kube-dns service and CoreDNS pods
    /// (`upstream="cluster_dns"`), comma-separated. Default: 10.100.0.10 and 172.20.0.10, the
    /// kube-dns service address of an EKS cluster in either default service range.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub cluster_dns: Option<Vec<String>>,

    /// How long a DNS query may wait for its response before it counts as unanswered
    /// (`reason="timeout"`). Default: 5s, glibc's timeout per try.
    #[arg(long, value_name = "DURATION")]
    pub dns_timeout: Option<String>,

    /// Workloads whose DNS lookups get series of their own (the busiest; the rest are
    /// `workload="other"`), 1 to 200. Each costs up to 29 series. Default: 20.
    #[arg(long, value_name = "N")]
    pub dns_workloads: Option<usize>,

    /// A file in the capture format (see `enawatch record`) whose latest sample adds
    /// statistics to the live devices it names, read every tick; a device's own statistics
    /// win. For a driver without the allowance counters whose values another tool knows, and
    /// for a lab that emulates the ENA limiter (docs/testing.md). Default: none.
    #[arg(long, value_name = "PATH")]
    pub extra_stats: Option<String>,

    /// Log level: error, warn, info, debug or trace. Default: info.
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,

    /// Log format: text (key=value) or json (one object per line). Default: text.
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,

    /// Local alerting (config file only): rule overrides and notification receivers, see
    /// docs/alerts.md.
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<AlertsConfig>,

    /// Push samples with Prometheus remote write (config file only): a list of endpoints, see
    /// docs/remote-write.md.
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_write: Vec<crate::remote_write::EndpointConfig>,
}

/// The `alerts` section of the config file.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// Changes to the shipped alerts' thresholds and durations, or `enabled: false`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<crate::alerts::RuleOverride>,
    /// Where to send notifications.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub receivers: Vec<crate::alerts::notify::ReceiverConfig>,
}

fn parse_eni_flag(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(d, e)| (d.to_owned(), e.to_owned()))
        .ok_or_else(|| format!("{s:?} is not DEVICE=ENI, e.g. ens6=eni-0123456789abcdef0"))
}

#[expect(clippy::ptr_arg, reason = "serde's `serialize_with` passes the field as it is")]
fn eni_map_out<S: serde::Serializer>(v: &Vec<(String, String)>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(v.iter().map(|(k, v)| (k, v)))
}

fn eni_map<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<(String, String)>, D::Error> {
    Ok(BTreeMap::<String, String>::deserialize(d)?.into_iter().collect())
}

/// The checked configuration the agent runs with.
#[derive(Clone, Debug)]
pub struct Config {
    /// HTTP listen address.
    pub listen: SocketAddr,
    /// Sampling interval.
    pub interval: Duration,
    /// History kept per device.
    pub history: Duration,
    /// Rediscovery period.
    pub rediscover_interval: Duration,
    /// Include regex.
    pub device_include: Option<Regex>,
    /// Exclude regex.
    pub device_exclude: Option<Regex>,
    /// ENI ids by device.
    pub eni: HashMap<String, String>,
    /// Compatibility families.
    pub compat: Vec<Compat>,
    /// Compat stat selection; `None` for the six allowance stats.
    pub compat_stats: Option<Regex>,
    /// Log level.
    pub log_level: tracing::Level,
    /// JSON logs.
    pub log_json: bool,
    /// The link-local meter's destinations, when the meter is on.
    pub linklocal: Option<crate::source::linklocal::Targets>,
    /// Analyse DNS traffic.
    pub dns_analysis: bool,
    /// Statistics added to live devices from a file.
    pub extra_stats: Option<std::path::PathBuf>,
    /// How DNS traffic is analysed.
    pub dns: crate::source::dns::Settings,
    /// Attribute DNS clients to pods.
    pub pod_attribution: bool,
    /// Node events, when they are on.
    pub node_events: Option<crate::alerts::events::Settings>,
    /// Local alert rules (the shipped alerts with overrides applied).
    pub alert_rules: Vec<crate::alerts::LocalRule>,
    /// Notification receivers.
    pub receivers: Vec<crate::alerts::notify::Receiver>,
    /// The `alerts` section as given, for printing the configuration back.
    pub alerts: Option<AlertsConfig>,
    /// Remote-write endpoints.
    pub remote_write: Vec<crate::remote_write::Endpoint>,
}

/// Most history points a device may keep (one day at 100 ms, ~4 MB per device).
const MAX_HISTORY_POINTS: u128 = 864_000;

/// Largest config file read: a file of any real configuration is a few KiB.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Most `eni` entries: more than any instance has ENIs (network cards × ENIs per card).
const MAX_ENI: usize = 256;

/// Most `compat` entries (there are two families; a repeated one is harmless, a list of
/// thousands is not a configuration).
const MAX_COMPAT: usize = 16;
/// Most addresses in `nodelocal_dns` and `cluster_dns` (each DNS transaction is compared
/// with every one).
const MAX_DNS_ADDRESSES: usize = 64;

impl Settings {
    /// Reads a YAML config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let file_error = |problem: String| ConfigError::File { path: path.display().to_string(), problem };
        let text = crate::base::file::read_bounded_text(path, MAX_CONFIG_BYTES)
            .map_err(|e| file_error(e.to_string()))?;
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        yaml_serde::from_str(&text).map_err(|e| file_error(e.to_string()))
    }

    /// `self` with every field that `over` sets replaced by `over`'s value.
    #[must_use]
    pub fn overridden_by(self, over: Settings) -> Settings {
        Settings {
            listen: over.listen.or(self.listen),
            interval: over.interval.or(self.interval),
            history: over.history.or(self.history),
            rediscover_interval: over.rediscover_interval.or(self.rediscover_interval),
            device_include: over.device_include.or(self.device_include),
            device_exclude: over.device_exclude.or(self.device_exclude),
            eni: if over.eni.is_empty() { self.eni } else { over.eni },
            compat: over.compat.or(self.compat),
            compat_stats: over.compat_stats.or(self.compat_stats),
            linklocal_meter: over.linklocal_meter.or(self.linklocal_meter),
            dns_analysis: over.dns_analysis.or(self.dns_analysis),
            pod_attribution: over.pod_attribution.or(self.pod_attribution),
            node_events: over.node_events.or(self.node_events),
            node_events_interval: over.node_events_interval.or(self.node_events_interval),
            vpc_resolvers: over.vpc_resolvers.or(self.vpc_resolvers),
            nodelocal_dns: over.nodelocal_dns.or(self.nodelocal_dns),
            cluster_dns: over.cluster_dns.or(self.cluster_dns),
            dns_timeout: over.dns_timeout.or(self.dns_timeout),
            dns_workloads: over.dns_workloads.or(self.dns_workloads),
            extra_stats: over.extra_stats.or(self.extra_stats),
            log_level: over.log_level.or(self.log_level),
            log_format: over.log_format.or(self.log_format),
            // Only the file has alerts and remote_write sections.
            alerts: self.alerts,
            remote_write: self.remote_write,
        }
    }

    /// Checks every value.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        self.check_lengths()?;
        let listen_s = self.listen.as_deref().unwrap_or("0.0.0.0:9417");
        let listen = listen_s.parse().map_err(|_| ConfigError::Invalid {
            field: "listen",
            value: listen_s.to_owned(),
            problem: "is not an address and port, e.g. 0.0.0.0:9417 or [::]:9417".into(),
        })?;
        let interval = duration("interval", self.interval.as_deref(), "1s")?;
        if interval < crate::sampler::MIN_INTERVAL {
            return Err(invalid("interval", self.interval.as_deref(), "is below the minimum of 100ms"));
        }
        let history = duration("history", self.history.as_deref(), "15m")?;
        if history < interval {
            return Err(invalid("history", self.history.as_deref(), "is shorter than the interval"));
        }
        if history.as_millis() / interval.as_millis() > MAX_HISTORY_POINTS {
            return Err(invalid(
                "history",
                self.history.as_deref(),
                &format!("keeps more than {MAX_HISTORY_POINTS} samples per device at this interval"),
            ));
        }
        let rediscover_interval =
            duration("rediscover_interval", self.rediscover_interval.as_deref(), "30s")?;
        if rediscover_interval < Duration::from_secs(1) {
            return Err(invalid("rediscover_interval", self.rediscover_interval.as_deref(), "is below 1s"));
        }
        let mut eni = HashMap::new();
        for (device, id) in &self.eni {
            if !id.starts_with("eni-") || id.len() < 5 {
                return Err(ConfigError::Invalid {
                    field: "eni",
                    value: format!("{device}={id}"),
                    problem: "is not DEVICE=eni-…".into(),
                });
            }
            eni.insert(device.clone(), id.clone());
        }
        let compat = self
            .compat
            .iter()
            .flatten()
            .filter(|c| !c.is_empty())
            .map(|c| match c.as_str() {
                "showmax" => Ok(Compat::Showmax),
                "node-exporter" => Ok(Compat::NodeExporter),
                other => Err(invalid("compat", Some(other), "is not one of: showmax, node-exporter")),
            })
            .collect::<Result<std::collections::BTreeSet<_>, _>>()?
            .into_iter()
            .collect();
        let log_level = match self.log_level.as_deref().unwrap_or("info") {
            "error" => tracing::Level::ERROR,
            "warn" => tracing::Level::WARN,
            "info" => tracing::Level::INFO,
            "debug" => tracing::Level::DEBUG,
            "trace" => tracing::Level::TRACE,
            other => {
                return Err(invalid(
                    "log_level",
                    Some(other),
                    "is not one of: error, warn, info, debug, trace",
                ))
            }
        };
        let log_json = match self.log_format.as_deref().unwrap_or("text") {
            "text" => false,
            "json" => true,
            other => return Err(invalid("log_format", Some(other), "is not one of: text, json")),
        };
        let (linklocal, dns) = self.packet_settings()?;
        let alerts = self.alerts.clone().unwrap_or_default();
        let alert_rules = crate::alerts::rules_with(&alerts.rules)?;
        let receivers =
            alerts.receivers.iter().enumerate().map(|(i, r)| r.resolve(i)).collect::<Result<Vec<_>, _>>()?;
        let remote_write = crate::remote_write::resolve_all(&self.remote_write, interval)?;
        let node_events = self.node_events_settings()?;
        Ok(Config {
            remote_write,
            linklocal,
            dns_analysis: self.dns_analysis.unwrap_or(false),
            dns,
            extra_stats: self.extra_stats.as_ref().map(std::path::PathBuf::from),
            pod_attribution: self.pod_attribution.unwrap_or(false),
            node_events,
            alert_rules,
            receivers,
            alerts: self.alerts.clone(),
            listen,
            interval,
            history,
            rediscover_interval,
            device_include: regex("device_include", self.device_include.as_deref())?,
            device_exclude: regex("device_exclude", self.device_exclude.as_deref())?,
            eni,
            compat,
            compat_stats: regex("compat_stats", self.compat_stats.as_deref())?,
            log_level,
            log_json,
        })
    }
}

impl Settings {
    /// Bounds the lists that are this aggregate's own or that it hands out element by
    /// element (each component bounds the lists inside its own section).
    fn check_lengths(&self) -> Result<(), ConfigError> {
        if self.eni.len() > MAX_ENI {
            return Err(ConfigError::too_long("eni", self.eni.len(), "devices", MAX_ENI));
        }
        if let Some(list) = self.compat.as_ref().filter(|l| l.len() > MAX_COMPAT) {
            return Err(ConfigError::too_long("compat", list.len(), "entries", MAX_COMPAT));
        }
        let receivers = self.alerts.as_ref().map_or(0, |a| a.receivers.len());
        let max_receivers = crate::alerts::notify::MAX_RECEIVERS;
        if receivers > max_receivers {
            return Err(ConfigError::too_long("alerts.receivers", receivers, "receivers", max_receivers));
        }
        Ok(())
    }

    /// The VPC resolvers: as configured, or the `.2` nameservers of /etc/resolv.conf.
    fn vpc_resolver_list(&self) -> Result<Vec<std::net::Ipv4Addr>, ConfigError> {
        use crate::source::linklocal::MAX_VPC_RESOLVERS;
        if let Some(list) = self.vpc_resolvers.as_ref().filter(|l| l.len() > MAX_VPC_RESOLVERS) {
            return Err(invalid(
                "vpc_resolvers",
                Some(&format!("{} addresses", list.len())),
                &format!(
                    "is more than the limit of {MAX_VPC_RESOLVERS} (the kernel compares every packet \
                     the device sends with each one)"
                ),
            ));
        }
        Ok(match &self.vpc_resolvers {
            Some(list) => list
                .iter()
                .map(|a| {
                    a.trim().parse().map_err(|_| invalid("vpc_resolvers", Some(a), "is not an IPv4 address"))
                })
                .collect::<Result<Vec<_>, _>>()?,
            // Only where it matters: the file is the host's, read once at start.
            None if self.linklocal_meter.unwrap_or(false) || self.dns_analysis.unwrap_or(false) => {
                crate::source::linklocal::vpc_resolvers(
                    &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
                )
            }
            None => Vec::new(),
        })
    }

    /// Node events' settings, when they are on.
    fn node_events_settings(&self) -> Result<Option<crate::alerts::events::Settings>, ConfigError> {
        if !self.node_events.unwrap_or(false) {
            return Ok(None);
        }
        let given = self.node_events_interval.as_deref();
        let interval = duration("node_events_interval", given, "1m")?;
        crate::alerts::events::Settings::new(interval)
            .map(Some)
            .map_err(|problem| invalid("node_events_interval", given, problem))
    }

    /// The link-local meter's targets (when it is on) and the DNS analysis's settings.
    fn packet_settings(
        &self,
    ) -> Result<(Option<crate::source::linklocal::Targets>, crate::source::dns::Settings), ConfigError> {
        let resolvers = self.vpc_resolver_list()?;
        let linklocal =
            self.linklocal_meter.unwrap_or(false).then(|| crate::source::linklocal::Targets::new(&resolvers));
        Ok((linklocal, self.dns_settings(&resolvers)?))
    }

    /// The DNS analysis's settings.
    fn dns_settings(
        &self,
        resolvers: &[std::net::Ipv4Addr],
    ) -> Result<crate::source::dns::Settings, ConfigError> {
        use std::net::IpAddr;

        use crate::source::dns::families::{
            Upstreams, CLUSTER_DNS_DEFAULT, NODELOCAL_DEFAULT, VPC_RESOLVER, VPC_RESOLVER_V6,
        };
        let addresses = |field: &'static str, list: &Option<Vec<String>>, default: &[std::net::Ipv4Addr]| {
            let Some(given) = list else { return Ok(default.iter().copied().map(IpAddr::V4).collect()) };
            if given.len() > MAX_DNS_ADDRESSES {
                return Err(ConfigError::too_long(field, given.len(), "addresses", MAX_DNS_ADDRESSES));
            }
            given
                .iter()
                .map(|a| a.trim().parse().map_err(|_| invalid(field, Some(a), "is not an IP address")))
                .collect::<Result<Vec<IpAddr>, _>>()
        };
        let mut vpc_resolver = vec![IpAddr::V4(VPC_RESOLVER), IpAddr::V6(VPC_RESOLVER_V6)];
        vpc_resolver.extend(resolvers.iter().map(|&a| IpAddr::V4(a)));
        let upstreams = Upstreams {
            vpc_resolver,
            nodelocal: addresses("nodelocal_dns", &self.nodelocal_dns, &[NODELOCAL_DEFAULT])?,
            cluster_dns: addresses("cluster_dns", &self.cluster_dns, &CLUSTER_DNS_DEFAULT)?,
        };
        let timeout = duration("dns_timeout", self.dns_timeout.as_deref(), "5s")?;
        if timeout < Duration::from_millis(100) || timeout > Duration::from_secs(60) {
            return Err(invalid("dns_timeout", self.dns_timeout.as_deref(), "is not between 100ms and 60s"));
        }
        let workloads = self.dns_workloads.unwrap_or(crate::source::dns::families::DEFAULT_SLOTS);
        if !(1..=200).contains(&workloads) {
            return Err(invalid("dns_workloads", Some(&workloads.to_string()), "is not between 1 and 200"));
        }
        Ok(crate::source::dns::Settings {
            upstreams,
            timeout,
            workloads,
            ..crate::source::dns::Settings::default()
        })
    }
}

impl Config {
    /// The configuration as a config file that would produce it (every field spelled out).
    pub fn to_yaml(&self) -> String {
        let re = |r: &Option<Regex>| r.as_ref().map(|r| r.as_str().to_owned());
        let mut eni: Vec<_> = self.eni.clone().into_iter().collect();
        eni.sort();
        let settings = Settings {
            listen: Some(self.listen.to_string()),
            interval: Some(HumanDuration(self.interval).to_string()),
            history: Some(HumanDuration(self.history).to_string()),
            rediscover_interval: Some(HumanDuration(self.rediscover_interval).to_string()),
            device_include: re(&self.device_include),
            device_exclude: re(&self.device_exclude),
            eni,
            compat: Some(
                self.compat
                    .iter()
                    .map(|c| match c {
                        Compat::Showmax => "showmax".to_owned(),
                        Compat::NodeExporter => "node-exporter".to_owned(),
                    })
                    .collect(),
            ),
            compat_stats: re(&self.compat_stats),
            linklocal_meter: Some(self.linklocal.is_some()),
            dns_analysis: Some(self.dns_analysis),
            pod_attribution: Some(self.pod_attribution),
            node_events: Some(self.node_events.is_some()),
            node_events_interval: self.node_events.as_ref().map(|e| HumanDuration(e.interval).to_string()),
            // After 169.254.169.253 and fd00:ec2::253, the VPC's own.
            vpc_resolvers: Some(
                self.dns.upstreams.vpc_resolver.iter().skip(2).map(ToString::to_string).collect(),
            ),
            nodelocal_dns: Some(self.dns.upstreams.nodelocal.iter().map(ToString::to_string).collect()),
            cluster_dns: Some(self.dns.upstreams.cluster_dns.iter().map(ToString::to_string).collect()),
            dns_timeout: Some(HumanDuration(self.dns.timeout).to_string()),
            dns_workloads: Some(self.dns.workloads),
            extra_stats: self.extra_stats.as_ref().map(|p| p.display().to_string()),
            log_level: Some(self.log_level.to_string().to_lowercase()),
            log_format: Some(if self.log_json { "json" } else { "text" }.to_owned()),
            alerts: self.alerts.clone(),
            remote_write: self.remote_write.iter().map(crate::remote_write::Endpoint::effective).collect(),
        };
        let mut yaml = yaml_serde::to_string(&settings).unwrap_or_default();
        match yaml.chars().last() {
            None | Some('\n') => {}
            // libyaml ends a document whose last value ends in a line break of its own
            // (`\r`, U+0085, U+2028, U+2029, e.g. in a path) without a newline; one added
            // would become part of that value. A document end marker on the next line
            // ends the output in a newline and reads back to the same configuration.
            Some('\r' | '\u{85}' | '\u{2028}' | '\u{2029}') => yaml.push_str("...\n"),
            Some(_) => yaml.push('\n'),
        }
        yaml
    }

    /// History points kept per device.
    pub(crate) fn history_points(&self) -> usize {
        usize::try_from(self.history.as_millis() / self.interval.as_millis()).unwrap_or(usize::MAX)
    }
}

fn invalid(field: &'static str, value: Option<&str>, problem: &str) -> ConfigError {
    ConfigError::Invalid { field, value: value.unwrap_or_default().to_owned(), problem: problem.to_owned() }
}

fn duration(field: &'static str, value: Option<&str>, default: &str) -> Result<Duration, ConfigError> {
    let s = value.unwrap_or(default);
    parse_duration(s).map_err(|problem| invalid(field, Some(s), &problem))
}

fn regex(field: &'static str, value: Option<&str>) -> Result<Option<Regex>, ConfigError> {
    value
        .map(|s| {
            Regex::new(s).map_err(|e| {
                // The parser's message spans several lines; the first says what is wrong.
                let first = e.to_string().lines().last().unwrap_or_default().trim().to_owned();
                invalid(field, Some(s), &format!("is not a valid regex: {first}"))
            })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = [
            ("100ms", 100),
            ("1s", 1000),
            ("1m30s", 90_000),
            ("15m", 900_000),
            ("2h", 7_200_000),
            ("1d", 86_400_000),
        ];
        for (s, ms) in ok {
            assert_eq!(parse_duration(s), Ok(Duration::from_millis(ms)), "{s}");
        }
        for bad in ["", "1", "s", "1x", "-1s", "1.5s", "99999999999999999999s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
        assert_eq!(HumanDuration(Duration::from_millis(1500)).to_string(), "1500ms");
        assert_eq!(HumanDuration(Duration::from_secs(90)).to_string(), "90s");
        assert_eq!(HumanDuration(Duration::from_secs(900)).to_string(), "15m");
    }

    #[test]
    fn defaults() {
        let c = Settings::default().resolve().unwrap();
        assert_eq!(c.listen, "0.0.0.0:9417".parse().unwrap());
        assert_eq!(c.interval, Duration::from_secs(1));
        assert_eq!(c.history_points(), 900);
        assert_eq!(c.rediscover_interval, Duration::from_secs(30));
        assert!(c.compat.is_empty() && c.compat_stats.is_none() && c.device_include.is_none());
    }

    #[test]
    fn every_error_names_the_field_and_the_value() {
        let cases: [(Settings, &str); 8] = [
            (
                Settings { interval: Some("50ms".into()), ..Default::default() },
                "interval: \"50ms\" is below the minimum of 100ms",
            ),
            (
                Settings { interval: Some("fast".into()), ..Default::default() },
                "interval: \"fast\" is not a duration",
            ),
            (
                Settings { listen: Some("9417".into()), ..Default::default() },
                "listen: \"9417\" is not an address",
            ),
            (
                Settings { device_include: Some("eth(".into()), ..Default::default() },
                "device_include: \"eth(\" is not a valid regex",
            ),
            (
                Settings { compat: Some(vec!["prom".into()]), ..Default::default() },
                "compat: \"prom\" is not one of",
            ),
            (
                Settings { history: Some("100ms".into()), ..Default::default() },
                "history: \"100ms\" is shorter than the interval",
            ),
            (
                Settings { eni: vec![("ens5".into(), "x".into())], ..Default::default() },
                "eni: \"ens5=x\" is not DEVICE=eni-",
            ),
            (
                Settings { log_level: Some("loud".into()), ..Default::default() },
                "log_level: \"loud\" is not one of",
            ),
        ];
        for (settings, want) in cases {
            let err = settings.resolve().unwrap_err().to_string();
            assert!(err.starts_with(want), "got {err:?}, want {want:?}");
        }
    }

    #[test]
    fn flags_override_the_file() {
        let file: Settings = yaml_serde::from_str(
            "interval: 2s\nlisten: 127.0.0.1:1\neni:\n  ens6: eni-0abc\ncompat: [showmax]\n",
        )
        .unwrap();
        let flags = Settings { interval: Some("5s".into()), ..Default::default() };
        let c = file.overridden_by(flags).resolve().unwrap();
        assert_eq!(c.interval, Duration::from_secs(5));
        assert_eq!(c.listen.port(), 1);
        assert_eq!(c.eni["ens6"], "eni-0abc");
        assert_eq!(c.compat, [Compat::Showmax]);
    }

    #[test]
    fn the_printed_configuration_reads_back_the_same() {
        let settings = Settings {
            interval: Some("250ms".into()),
            device_include: Some("^eth".into()),
            eni: vec![("ens6".into(), "eni-0abc".into())],
            compat: Some(vec!["node-exporter".into()]),
            ..Default::default()
        };
        let yaml = settings.resolve().unwrap().to_yaml();
        let again: Settings = yaml_serde::from_str(&yaml).unwrap();
        assert_eq!(again.resolve().unwrap().to_yaml(), yaml);
        assert!(yaml.contains("interval: 250ms"), "{yaml}");
    }

    #[test]
    fn unknown_fields_in_the_file_are_errors() {
        let err = yaml_serde::from_str::<Settings>("intervall: 1s\n").unwrap_err().to_string();
        assert!(err.contains("unknown field `intervall`"), "{err}");
    }
}
