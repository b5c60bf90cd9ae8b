//! The live source: the kernel's ethtool statistics of this host's interfaces.
//!
//! Per tick it issues exactly one `ETHTOOL_GSTATS` per watched device (one `ETHTOOL_GDRVINFO`
//! for a device without statistics, only to notice it vanish) and nothing else.
//! Discovery (one netlink dump, plus one `ETHTOOL_GDRVINFO` per interface never seen before)
//! runs at start and every rediscovery period; stat names (`ETHTOOL_GSTRINGS`) are read when
//! a device is first watched and again only when its stat count changes.
//!
//! Devices are read by name, so one deleted and re-created under the same name between two
//! discoveries reads on. The link-local meter and the DNS analysis are fed by the [`Tap`]'s
//! sockets on every interface, opened here at start; the meter's counts are taken per tick
//! by interface index.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use regex_lite::Regex;
use tracing::{debug, info, warn};

use super::{Device, Event, ReadError, Reading, Sample, Schema, Source};
use crate::base::allowance::ENA_DRIVER;
use crate::source::dns::{self, DnsStats};
use crate::source::linklocal::Targets;
use crate::source::tap::{Sockets, Tap};
use crate::sys::packet::{Instruction, PacketSocket, Ring};
use crate::sys::{self, Ethtool, IfName, Read, StatsBuffer};

/// Which interfaces to watch.
#[derive(Clone, Debug, Default)]
pub(crate) struct Selection {
    /// Watch interfaces whose name matches, whatever their driver (replaces the default).
    pub include: Option<Regex>,
    /// Never watch interfaces whose name matches.
    pub exclude: Option<Regex>,
    /// ENI ids by interface name, where altnames do not carry them.
    pub eni: HashMap<String, String>,
    /// Meter link-local traffic (needs `CAP_NET_RAW`).
    pub linklocal: Option<Targets>,
    /// Analyse DNS traffic on every interface into this (needs `CAP_NET_RAW`).
    pub dns: Option<Arc<Mutex<DnsStats>>>,
    /// A capture-format file whose latest sample adds statistics to the devices it names.
    pub extra_stats: Option<std::path::PathBuf>,
}

impl Selection {
    /// Whether to watch the interface `name` whose driver is `driver`.
    fn watches(&self, name: &str, driver: Option<&str>) -> bool {
        if self.exclude.as_ref().is_some_and(|re| re.is_match(name)) {
            return false;
        }
        match &self.include {
            Some(re) => re.is_match(name),
            None => driver == Some(ENA_DRIVER),
        }
    }

    fn reason(&self) -> &'static str {
        if self.include.is_some() {
            "name matches --device-include"
        } else {
            "driver is ena"
        }
    }
}

/// Reads the host's interfaces through `SIOCETHTOOL`.
pub(crate) struct LiveSource {
    ethtool: Ethtool,
    selection: Selection,
    rediscover_every: Duration,
    next_discovery: Instant,
    /// Driver per interface index, so `GDRVINFO` runs once per interface, not per discovery.
    drivers: HashMap<u32, Option<sys::DriverInfo>>,
    watched: Vec<Watched>,
    buf: StatsBuffer,
    layouts: Layouts,
    /// Interval below which reading an ENA device deserves a warning (each read is an
    /// admin-queue command to the device); warned once.
    fast_interval: Option<Duration>,
    first_discovery: bool,
    /// The thread reading the meter's and the DNS analysis's sockets, when either is on.
    tap: Option<Tap>,
    /// The link-local meter is on: every watched device's reading carries its counts.
    metering: bool,
    /// The DNS analysis the tap feeds, when its socket is open.
    dns: Option<Arc<Mutex<DnsStats>>>,
    /// Statistics added from `Selection::extra_stats`, by device, as last read.
    extra: HashMap<String, Vec<(String, u64)>>,
    /// What discovery found out for the next sample to say (a watched device gone).
    pending: Vec<Event>,
}

/// The stat layouts of the watched devices, shared: devices of one driver and queue count
/// report the same names, so they hold one `Schema` (one copy of the names, sanitised once
/// for node_exporter, and the renderers group devices by it). Held weakly: a layout no
/// device and no snapshot holds any more is gone, and its entry is dropped here.
struct Layouts {
    /// The layout of devices without statistics.
    empty: Arc<Schema>,
    known: Vec<Weak<Schema>>,
}

impl Layouts {
    fn intern(&mut self, names: Vec<String>) -> Arc<Schema> {
        self.known.retain(|s| s.strong_count() > 0);
        if let Some(known) = self.known.iter().filter_map(Weak::upgrade).find(|s| *s.names == *names) {
            return known;
        }
        let schema = Arc::new(Schema::new(names));
        self.known.push(Arc::downgrade(&schema));
        schema
    }
}

struct Watched {
    ifname: IfName,
    index: u32,
    device: Arc<Device>,
    /// `None` until the names have been read (or after the stat count changed).
    schema: Option<Arc<Schema>>,
    /// Set when the driver has no statistics at all; such a device is listed, not read.
    no_stats: bool,
    /// The last `linklocal_allowance_exceeded` read, and when: the DNS analysis asks whether
    /// it grew in each interval.
    linklocal_exceeded: Option<(i64, u64)>,
}

impl LiveSource {
    /// Opens the ethtool socket and the packet sockets the selection asks for (those need
    /// `CAP_NET_RAW`, which the caller may give up once this returns); devices are
    /// discovered on the first sample.
    pub fn new(selection: Selection, rediscover_every: Duration, interval: Duration) -> io::Result<Self> {
        let meter = selection.linklocal.as_ref().and_then(|targets| {
            open_capture(&targets.program(), Ring::METER, "the link-local meter")
                .map(|s| (s, targets.clone()))
        });
        let dns = selection.dns.as_ref().and_then(|stats| {
            open_capture(&dns::program(), Ring::DNS, "the DNS analysis").map(|s| (s, Arc::clone(stats)))
        });
        let metering = meter.is_some();
        let dns_on = dns.as_ref().map(|(_, stats)| Arc::clone(stats));
        let tap = if metering || dns.is_some() { Some(Tap::start(Sockets { meter, dns })?) } else { None };
        Ok(Self {
            ethtool: Ethtool::open()?,
            rediscover_every,
            next_discovery: Instant::now(),
            drivers: HashMap::new(),
            watched: Vec::new(),
            buf: StatsBuffer::new(),
            layouts: Layouts { empty: Arc::new(Schema::new(Vec::new())), known: Vec::new() },
            fast_interval: (interval < Duration::from_secs(1)).then_some(interval),
            first_discovery: true,
            tap,
            metering,
            dns: dns_on,
            extra: HashMap::new(),
            selection,
            pending: Vec::new(),
        })
    }

    /// Lists the interfaces, watches the new ones that are selected.
    fn discover(&mut self) {
        let links = match sys::list_links() {
            Ok(links) => links,
            Err(err) => {
                warn!(error = %err, "cannot list network interfaces; keeping the current set");
                return;
            }
        };
        self.drivers.retain(|index, _| links.iter().any(|l| l.index == *index));
        let mut added = Vec::new();
        let mut skipped = Vec::new();
        // Watched devices whose name is now another interface's (deleted and re-created under
        // that name): followed below while still selected, else they vanish.
        let mut recreated: Vec<String> = self
            .watched
            .iter()
            .filter(|w| links.iter().any(|l| l.name == w.device.name && l.index != w.index))
            .map(|w| w.device.name.clone())
            .collect();
        for link in &links {
            let Some(ifname) = IfName::new(&link.name) else { continue };
            let ethtool = &self.ethtool;
            let driver =
                self.drivers.entry(link.index).or_insert_with(|| ethtool.driver_info(ifname).ok()).clone();
            let driver_name = driver.as_ref().map(|d| d.driver.as_str());
            if self.watched.iter().any(|w| w.index == link.index && w.device.name == link.name) {
                continue;
            }
            if !self.selection.watches(&link.name, driver_name) {
                if self.first_discovery {
                    skipped.push(format!("{} ({})", link.name, driver_name.unwrap_or("no driver")));
                }
                continue;
            }
            // Same name, new index: the interface was re-created; start it afresh.
            if let Some(at) = recreated.iter().position(|name| *name == link.name) {
                recreated.swap_remove(at);
                info!(device = %link.name, index = link.index, "device re-created under the same name; following the new interface");
            }
            self.watched.retain(|w| w.device.name != link.name);
            let driver = driver.unwrap_or_default();
            let eni = self
                .selection
                .eni
                .get(&link.name)
                .cloned()
                .or_else(|| link.altnames.iter().find(|a| a.starts_with("eni-")).cloned());
            let device = Arc::new(Device {
                name: link.name.clone(),
                driver: driver.driver,
                driver_version: driver.version,
                firmware_version: driver.firmware_version,
                bus_info: driver.bus_info,
                eni,
            });
            added.push(device.describe());
            self.watched.push(Watched {
                ifname,
                index: link.index,
                device,
                schema: None,
                no_stats: false,
                linklocal_exceeded: None,
            });
        }
        // Re-created as an interface no longer selected (or gone again): it vanishes.
        for name in recreated {
            self.watched.retain(|w| w.device.name != name);
            self.pending.push(Event::Vanished { device: name });
        }
        self.watched.sort_by(|a, b| a.device.name.cmp(&b.device.name));

        if !added.is_empty() && !self.first_discovery {
            // The sampler announces devices that appear later, rate-limited with the rest of
            // the churn: pod veths come and go all day.
            debug!(devices = %added.join(", "), "new devices watched");
        } else if !added.is_empty() {
            info!(devices = %added.join(", "), reason = self.selection.reason(), "watching devices");
        } else if self.first_discovery && self.watched.is_empty() {
            warn!(
                interfaces = %skipped.join(", "),
                "no ENA device found; watching nothing until one appears. \
                 To watch other interfaces, pass --device-include REGEX"
            );
        }
        if let Some(interval) = self.fast_interval {
            if self.watched.iter().any(|w| w.device.driver == ENA_DRIVER) {
                warn!(
                    interval = ?interval,
                    "sampling ENA devices faster than once a second: every read is an \
                     admin-queue command to the device"
                );
                self.fast_interval = None;
            }
        }
        self.first_discovery = false;
    }

    /// Reads the stat names of `w`; `false` when there is nothing to read this tick.
    fn load_schema(
        ethtool: &Ethtool,
        buf: &mut StatsBuffer,
        layouts: &mut Layouts,
        w: &mut Watched,
    ) -> io::Result<bool> {
        let Some(count) = ethtool.stats_count(w.ifname)? else {
            w.no_stats = true;
            return Ok(false);
        };
        match ethtool.stat_names(w.ifname, count, buf)? {
            Read::Complete(names) => {
                w.schema = Some(layouts.intern(names));
                Ok(true)
            }
            // Changed again between the count and the names: try next tick.
            Read::CountChanged => Ok(false),
        }
    }
}

/// Opens a packet socket on every interface for `what`; `None` (with one log line) when the
/// process may not, so everything else keeps working.
fn open_capture(program: &[Instruction], ring: Ring, what: &str) -> Option<PacketSocket> {
    match PacketSocket::open(0, program, ring) {
        Ok(socket) => Some(socket),
        Err(err) if err.kind() == io::ErrorKind::PermissionDenied => {
            warn!(
                error = %err,
                "{what} needs CAP_NET_RAW at start (add it to the container, or run as root); \
                 it is off, everything else keeps working"
            );
            None
        }
        Err(err) => {
            warn!(error = %err, "cannot open the packet socket of {what}; it is off");
            None
        }
    }
}

/// What one device's read came to.
enum Outcome {
    Read(Reading),
    Nothing,
    Event(Event),
    Gone,
}

impl LiveSource {
    fn read_one(
        ethtool: &Ethtool,
        buf: &mut StatsBuffer,
        layouts: &mut Layouts,
        linklocal: Option<[u32; 3]>,
        w: &mut Watched,
    ) -> Outcome {
        let device = Arc::clone(&w.device);
        let reading = |schema: Arc<Schema>, values: &[u64]| {
            Outcome::Read(Reading { device: Arc::clone(&device), schema, values: values.into(), linklocal })
        };
        let result = (|| {
            if w.no_stats {
                // Nothing to read, so no read would notice the device go: ask the driver its
                // name instead (no admin command on any driver). Only "gone" counts here; a
                // device without driver information (loopback) is still there.
                if let Err(err) = ethtool.driver_info(w.ifname) {
                    if ReadError::from_io(&err) == ReadError::NoDevice {
                        return Err(err);
                    }
                }
                return Ok(reading(Arc::clone(&layouts.empty), &[]));
            }
            if w.schema.is_none() && !Self::load_schema(ethtool, buf, layouts, w)? {
                return Ok(if w.no_stats {
                    reading(Arc::clone(&layouts.empty), &[])
                } else {
                    Outcome::Nothing
                });
            }
            let schema = w.schema.clone().expect("loaded above");
            match ethtool.stats(w.ifname, schema.names.len(), buf)? {
                Read::Complete(values) => Ok(reading(schema, values)),
                Read::CountChanged => {
                    // Drop this sample and re-read the names now, so the next tick reads
                    // the new set.
                    w.schema = None;
                    Self::load_schema(ethtool, buf, layouts, w)?;
                    Ok(Outcome::Event(Event::SchemaChanged { device: w.device.name.clone() }))
                }
            }
        })();
        result.unwrap_or_else(|err: io::Error| {
            let reason = ReadError::from_io(&err);
            if reason == ReadError::NoDevice {
                return Outcome::Gone;
            }
            if reason == ReadError::NotSupported {
                // Some drivers count stats but fail to read them: stop asking.
                w.no_stats = true;
            }
            let device = w.device.name.clone();
            Outcome::Event(Event::ReadFailed { device, reason, detail: err.to_string() })
        })
    }
}

impl Source for LiveSource {
    fn sample(&mut self, now_ms: i64) -> Option<Sample> {
        let mut sample = Sample { at_ms: now_ms, ..Sample::default() };
        let metered = self.tap.as_ref().map(Tap::take_metered).unwrap_or_default();
        // Link-local packets from an interface discovery has not seen (one re-created under a
        // watched name, say) are worth a discovery now rather than at the next period.
        if Instant::now() >= self.next_discovery || metered.keys().any(|i| !self.drivers.contains_key(i)) {
            self.discover();
            self.next_discovery = Instant::now() + self.rediscover_every;
        }
        sample.events.append(&mut self.pending);
        if let Some(tap) = &self.tap {
            sample.capture_dropped = tap.dropped();
        }
        if let Some(path) = &self.selection.extra_stats {
            self.extra = read_extra(path);
        }
        let (ethtool, buf, layouts, metering) =
            (&self.ethtool, &mut self.buf, &mut self.layouts, self.metering);
        let extra = &self.extra;
        let mut dns = self.dns.as_ref().map(|d| d.lock().unwrap_or_else(PoisonError::into_inner));
        self.watched.retain_mut(|w| {
            let linklocal = metering.then(|| metered.get(&w.index).copied().unwrap_or_default());
            match Self::read_one(ethtool, buf, layouts, linklocal, w) {
                Outcome::Read(mut r) => {
                    if let Some(stats) = extra.get(&w.device.name) {
                        add_stats(layouts, &mut r, stats);
                    }
                    if let Some(dns) = &mut dns {
                        dns.reading(w.index, &r, &mut w.linklocal_exceeded, now_ms);
                    }
                    sample.readings.push(r);
                }
                Outcome::Nothing => {}
                Outcome::Event(e) => sample.events.push(e),
                Outcome::Gone => {
                    sample.events.push(Event::Vanished { device: w.device.name.clone() });
                    return false;
                }
            }
            true
        });
        if let Some(dns) = &mut dns {
            let watched = self.watched.iter().map(|w| w.index).collect();
            sample.dns = Some(Arc::new(dns.tick(now_ms, &watched)));
        }
        Some(sample)
    }
}

/// The latest sample of the extra-statistics file, by device; empty (with a debug line)
/// when it cannot be read, so a writer replacing it is never fatal.
fn read_extra(path: &std::path::Path) -> HashMap<String, Vec<(String, u64)>> {
    const LIMIT: u64 = 1024 * 1024;
    let origin = path.display().to_string();
    let parsed = crate::base::file::read_bounded_text(path, LIMIT)
        .map_err(|e| e.to_string())
        .and_then(|text| super::capture::parse(&text, &origin, "eth0", 0).map_err(|e| e.to_string()));
    match parsed {
        Ok(capture) => capture
            .samples
            .into_iter()
            .last()
            .map(|s| s.devices.into_iter().map(|d| (d.name, d.stats)).collect())
            .unwrap_or_default(),
        Err(err) => {
            debug!(file = %origin, error = %err, "extra statistics not read this tick");
            HashMap::new()
        }
    }
}

/// Appends to `r` the statistics of `extra` its driver does not report.
fn add_stats(layouts: &mut Layouts, r: &mut Reading, extra: &[(String, u64)]) {
    let added: Vec<&(String, u64)> = extra.iter().filter(|(n, _)| !r.schema.names.contains(n)).collect();
    if added.is_empty() {
        return;
    }
    let names = r.schema.names.iter().cloned().chain(added.iter().map(|(n, _)| n.clone())).collect();
    r.schema = layouts.intern(names);
    r.values = r.values.iter().copied().chain(added.iter().map(|(_, v)| *v)).collect();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_with_the_same_stat_names_share_one_layout_until_none_holds_it() {
        let mut layouts = Layouts { empty: Arc::new(Schema::new(Vec::new())), known: Vec::new() };
        let names = |n: &str| vec!["rx".to_owned(), n.to_owned()];
        let a = layouts.intern(names("tx"));
        let b = layouts.intern(names("tx"));
        assert!(Arc::ptr_eq(&a, &b));
        let c = layouts.intern(names("tx_q1"));
        assert!(!Arc::ptr_eq(&a, &c));
        drop((a, b));
        let _ = layouts.intern(names("other"));
        assert_eq!(layouts.known.len(), 2, "the layout nothing holds is forgotten: {:?}", layouts.known);
    }

    #[test]
    fn default_selection_is_by_driver_never_by_name() {
        let s = Selection::default();
        assert!(s.watches("ens5", Some("ena")));
        assert!(s.watches("eth1", Some("ena")));
        assert!(s.watches("weird0", Some("ena")));
        assert!(!s.watches("eth0", Some("virtio_net")));
        assert!(!s.watches("eni1234abcd", Some("veth")));
        assert!(!s.watches("lo", None));
    }

    #[test]
    fn include_overrides_and_exclude_wins() {
        let s = Selection {
            include: Some(Regex::new("^(eth|veth)").unwrap()),
            exclude: Some(Regex::new("^eth9$").unwrap()),
            ..Selection::default()
        };
        assert!(s.watches("eth0", Some("virtio_net")));
        assert!(s.watches("veth3", None));
        assert!(!s.watches("eth9", Some("ena")));
        assert!(!s.watches("ens5", Some("ena")));
        let only_exclude = Selection { exclude: Some(Regex::new("ens6").unwrap()), ..Selection::default() };
        assert!(only_exclude.watches("ens5", Some("ena")));
        assert!(!only_exclude.watches("ens6", Some("ena")));
    }
}
