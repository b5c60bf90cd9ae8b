//! Node events: the allowance alerts recorded on this node's Node object as Kubernetes
//! Events, where `kubectl describe node`, the EKS console and event exporters already look.
//!
//! The reasons are the EKS node monitoring agent's (`LinkLocalExceeded`, `PPSExceeded`,
//! `BandwidthInExceeded`, `BandwidthOutExceeded`, `ConntrackExceeded`), so whatever already
//! routes on them sees enawatch's too; the type is Warning when an alert fires and Normal when
//! it resolves. The writer is one more consumer of the notifier's transitions (a receiver
//! whose "delivery" is an API write), with the same bounded queue and counters.
//!
//! Events are core/v1 `Event`s in the `default` namespace with `involvedObject` the Node
//! (`uid` the node's name, as the kubelet writes them, which `kubectl describe node` matches).
//! Repeated firings of one reason on one device make one series: the first creates the event,
//! the next ones patch its `count`, `lastTimestamp` and `message`, and writes of one event
//! are at least [`Settings::interval`] apart (firings in between are counted into the next
//! write). A 403 or an unreachable API turns node events off with one log line; metrics,
//! alerts and the other receivers carry on.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::warn;

use super::Transition;
use crate::base::time::rfc3339;
use crate::base::Allowance;
use crate::history::State;
use crate::metrics::telemetry::ReceiverStats;
use crate::outbound::kube::ApiAccess;
use crate::outbound::{self, Class};

/// The name node events have in logs and in `enawatch_notifications_total{receiver}`.
pub const RECEIVER: &str = "node_events";

/// The `reportingComponent` and `source.component` of every event.
const COMPONENT: &str = "enawatch";

/// Node events are namespaced although the Node is not: the kubelet and
/// `kubectl` put them in `default`.
const NAMESPACE: &str = "default";

/// Largest answer read from the API (an Event or a Status).
const MAX_ANSWER: usize = 64 << 10;

/// How node events are written (`node_events`, `node_events_interval`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The least time between two writes of one event.
    pub interval: Duration,
}

impl Settings {
    /// Checks the interval: 1 s to 1 h.
    pub fn new(interval: Duration) -> Result<Self, &'static str> {
        if interval < Duration::from_secs(1) || interval > Duration::from_secs(3600) {
            return Err("is not between 1s and 1h");
        }
        Ok(Self { interval })
    }
}

/// The EKS node monitoring agent's reason for throttling on this allowance.
pub fn reason(allowance: Allowance) -> &'static str {
    match allowance {
        Allowance::BwIn => "BandwidthInExceeded",
        Allowance::BwOut => "BandwidthOutExceeded",
        Allowance::Pps => "PPSExceeded",
        Allowance::Conntrack => "ConntrackExceeded",
        Allowance::Linklocal => "LinkLocalExceeded",
    }
}

/// The allowance of an allowance-exceeded alert (not of the link-local budget alert, which
/// warns before anything is dropped), when `t` is one.
fn allowance_of(t: &Transition) -> Option<Allowance> {
    let a = &t.alert;
    a.device.as_ref()?;
    super::catalog::ALLOWANCE_ALERTS
        .iter()
        .find(|r| r.name == a.name && Some(r.allowance.label()) == a.allowance)
        .map(|r| r.allowance)
}

/// Whether node events record this transition.
pub(crate) fn wanted(t: &Transition) -> bool {
    allowance_of(t).is_some()
}

/// `metav1.Time`: RFC 3339 to the second.
fn k8s_time(ms: i64) -> String {
    rfc3339(ms - ms.rem_euclid(1000)).replace(".000Z", "Z")
}

/// The event's message: device, ENI, the alert's throttled seconds and the packets.
pub(crate) fn message(t: &Transition) -> String {
    let a = &t.alert;
    let device = a.device.as_deref().unwrap_or("?");
    let eni = t.throttle.as_ref().and_then(|th| th.eni.as_deref()).unwrap_or("ENI unknown");
    let stat = allowance_of(t).map_or("", Allowance::stat);
    let totals = t.throttle.as_ref().map_or_else(String::new, |th| {
        format!(
            "; since the agent started: {} packets queued or dropped, throttled {:.0}s",
            th.packets, th.seconds
        )
    });
    if a.state == State::Firing {
        format!(
            "{stat} increased on interface {device:?} ({eni}): throttled {:.0}s within the alert's window \
             ({} {}){totals}",
            a.value, a.name, a.severity
        )
    } else {
        format!("{stat} no longer increasing on interface {device:?} ({eni}): {} resolved{totals}", a.name)
    }
}

/// One event series: a reason, a device and a type.
type Key = (&'static str, String, &'static str);

/// What the writer knows of one series.
struct Series {
    /// The Event's name, once created.
    name: Option<String>,
    /// Occurrences so far (the Event's `count`).
    count: u64,
    first_ms: i64,
    /// The latest occurrence not yet written.
    pending: Option<Transition>,
    /// When the series was last written.
    written: Option<Instant>,
}

/// What one write came to.
enum Written {
    Done,
    /// The event is gone (expired, 404): create it again.
    Gone,
    /// Node events must stop (403, unreachable API).
    Stop(String),
    /// This write failed; later ones may not.
    Failed(String),
}

/// Writes node events; fed by the notifier's dispatcher.
pub(crate) struct Writer {
    access: ApiAccess,
    settings: Settings,
    stats: Arc<Vec<ReceiverStats>>,
    index: usize,
}

impl Writer {
    /// A writer whose counters are `stats[index]`.
    pub(crate) fn new(
        access: ApiAccess,
        settings: Settings,
        stats: Arc<Vec<ReceiverStats>>,
        index: usize,
    ) -> Self {
        Self { access, settings, stats, index }
    }

    fn stats(&self) -> &ReceiverStats {
        &self.stats[self.index]
    }

    /// Writes until the dispatcher is dropped, or until the API refuses for good.
    pub(crate) async fn run(self, mut rx: mpsc::Receiver<Transition>) {
        let client = match self.access.client(Some(Duration::from_secs(10))) {
            Ok(c) => c,
            Err(err) => return stop(&err.to_string(), rx).await,
        };
        let mut series: HashMap<Key, Series> = HashMap::new();
        let mut serial: u64 = 0;
        loop {
            // The next pending series due for a write, if any.
            let due = series.values().filter(|s| s.pending.is_some()).filter_map(|s| s.written).min();
            let wake = due.map(|w| w + self.settings.interval);
            let received = tokio::select! {
                t = rx.recv() => match t {
                    Some(t) => Some(t),
                    None => return,
                },
                () = sleep_until(wake) => None,
            };
            if let Some(t) = received {
                self.stats().queued.store(rx.len() as u64, Ordering::Relaxed);
                let Some(allowance) = allowance_of(&t) else { continue };
                let kind = if t.alert.state == State::Firing { "Warning" } else { "Normal" };
                let key = (reason(allowance), t.alert.device.clone().unwrap_or_default(), kind);
                let s = series.entry(key).or_insert(Series {
                    name: None,
                    count: 0,
                    first_ms: t.at_ms,
                    pending: None,
                    written: None,
                });
                s.count += 1;
                s.pending = Some(t);
            }
            let now = Instant::now();
            for (key, s) in &mut series {
                let ready = s.written.is_none_or(|w| now >= w + self.settings.interval);
                let Some(t) = s.pending.take_if(|_| ready) else { continue };
                let mut outcome = match &s.name {
                    Some(name) => self.patch(&client, name, s, &t).await,
                    None => Written::Gone,
                };
                if matches!(outcome, Written::Gone) {
                    serial += 1;
                    let name = event_name(&self.access.node, t.at_ms, serial);
                    outcome = self.create(&client, &name, key, s, &t).await;
                    if matches!(outcome, Written::Done) {
                        s.name = Some(name);
                    }
                }
                s.written = Some(now);
                match outcome {
                    Written::Done => {
                        self.stats().sent.fetch_add(1, Ordering::Relaxed);
                    }
                    Written::Gone => {
                        self.stats().failed.fetch_add(1, Ordering::Relaxed);
                        warn!(reason = "the API answered 404 to a create", "a node event was not written");
                    }
                    Written::Failed(why) => {
                        // At most one line per series and interval: writes are that far apart.
                        self.stats().failed.fetch_add(1, Ordering::Relaxed);
                        warn!(reason = %why, "a node event was not written");
                    }
                    Written::Stop(why) => return stop(&why, rx).await,
                }
            }
        }
    }

    fn request(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self.access.token() {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    async fn create(
        &self,
        client: &reqwest::Client,
        name: &str,
        key: &Key,
        s: &Series,
        t: &Transition,
    ) -> Written {
        let node = &self.access.node;
        let url = format!("{}/api/v1/namespaces/{NAMESPACE}/events", self.access.base);
        let body = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "involvedObject": {"apiVersion": "v1", "kind": "Node", "name": node, "uid": node},
            "reason": key.0,
            "message": message(t),
            "type": key.2,
            "count": s.count,
            "firstTimestamp": k8s_time(s.first_ms),
            "lastTimestamp": k8s_time(t.at_ms),
            "source": {"component": COMPONENT, "host": node},
            "reportingComponent": COMPONENT,
            "reportingInstance": node,
        });
        self.send(self.request(client.post(url)).json(&body)).await
    }

    async fn patch(&self, client: &reqwest::Client, name: &str, s: &Series, t: &Transition) -> Written {
        let url = format!("{}/api/v1/namespaces/{NAMESPACE}/events/{name}", self.access.base);
        let body = json!({
            "count": s.count,
            "lastTimestamp": k8s_time(t.at_ms),
            "message": message(t),
        });
        let request = self
            .request(client.patch(url))
            .header(reqwest::header::CONTENT_TYPE, "application/strategic-merge-patch+json")
            .body(body.to_string());
        self.send(request).await
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Written {
        match request.send().await {
            Ok(resp) => {
                let status = resp.status();
                // The answer is read (bounded) so the connection can be reused.
                let _ = outbound::read_body(resp, MAX_ANSWER).await;
                match status.as_u16() {
                    200..=299 => Written::Done,
                    404 => Written::Gone,
                    403 => Written::Stop(format!(
                        "the API answered {status} (RBAC: create and patch events in {NAMESPACE})"
                    )),
                    _ => Written::Failed(format!("the API answered {status}")),
                }
            }
            Err(err) if outbound::classify_error(&err) == Class::Retry && !err.is_connect() => {
                Written::Failed(err.without_url().to_string())
            }
            Err(err) => Written::Stop(format!("the API is unreachable: {}", err.without_url())),
        }
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A unique, valid name: the node's, then the time and a serial in hex (as client-go does).
fn event_name(node: &str, at_ms: i64, serial: u64) -> String {
    format!("{node}.enawatch.{:x}{serial:x}", at_ms.max(0))
}

/// Logs once that node events are off, then takes what the dispatcher still sends, unwritten,
/// so its queue never backs up.
async fn stop(why: &str, mut rx: mpsc::Receiver<Transition>) {
    warn!(reason = %why, "node events are off; metrics and alerts continue");
    while rx.recv().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::Throttle;
    use crate::history::Alert;

    fn transition(name: &'static str, allowance: &'static str, state: State) -> Transition {
        Transition {
            alert: Alert {
                name,
                severity: "warning",
                device: Some("ens5".into()),
                namespace: None,
                workload: None,
                allowance: Some(allowance),
                state,
                value: 12.0,
                active_since: String::new(),
                firing_since: None,
                resolved_at: None,
                summary: String::new(),
                description: String::new(),
                runbook_url: String::new(),
                active_ms: 0,
                last_true_ms: 0,
            },
            at_ms: 1_764_480_000_123,
            throttle: Some(Throttle { eni: Some("eni-0abc".into()), packets: 4321, seconds: 17.0 }),
        }
    }

    #[test]
    fn every_allowance_alert_has_the_node_monitoring_agents_reason() {
        for rule in &crate::alerts::catalog::ALLOWANCE_ALERTS {
            let t = transition(rule.name, rule.allowance.label(), State::Firing);
            assert!(wanted(&t), "{}", rule.name);
            assert!(reason(rule.allowance).ends_with("Exceeded"));
        }
        let budget = transition("LinkLocalBudgetHigh", "linklocal", State::Firing);
        assert!(!wanted(&budget), "the budget alert warns before drops: no event");
    }

    #[test]
    fn messages_name_the_device_the_eni_the_seconds_and_the_packets() {
        let firing = message(&transition("LinkLocalAllowanceExceeded", "linklocal", State::Firing));
        for part in ["linklocal_allowance_exceeded", "\"ens5\"", "eni-0abc", "12s", "4321 packets", "17s"] {
            assert!(firing.contains(part), "{part} in {firing}");
        }
        let resolved = message(&transition("LinkLocalAllowanceExceeded", "linklocal", State::Resolved));
        assert!(resolved.contains("resolved") && resolved.contains("eni-0abc"), "{resolved}");
        assert_eq!(k8s_time(1_764_480_000_999), "2025-11-30T05:20:00Z");
        assert!(Settings::new(Duration::from_millis(500)).is_err());
        assert!(Settings::new(Duration::from_secs(60)).is_ok());
    }
}
