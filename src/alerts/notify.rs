//! Notifications of local alerts: a generic webhook, the Alertmanager v2 API, and Slack
//! incoming webhooks.
//!
//! The sampler offers each transition (firing, resolved) without waiting: a bounded channel
//! that drops and counts what does not fit. Each receiver has its own worker and its own
//! bounded queue and sends in order, one notification at a time: a receiver that is down is
//! retried with exponential backoff and jitter, or after its `Retry-After` (network errors,
//! 5xx, 429: the policy of [`crate::outbound`], shared with remote write), its queue keeps
//! the newest notifications and counts the oldest it had to drop, and nothing it does can
//! delay sampling or another receiver. Receiver URLs are secrets (Slack's carries its token):
//! they come from the config, a file or the environment, and are never logged.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{mpsc, Notify};
use tracing::{info, warn};

use super::{events, Transition};
use crate::base::file::{read_bounded_text, SECRET_LIMIT};
use crate::base::time::rfc3339;
use crate::base::ConfigError;
use crate::history::{Alert, State};
use crate::metrics::telemetry::ReceiverStats;
use crate::outbound::kube::ApiAccess;
use crate::outbound::{self, Backoff, Class, ClientOptions};

/// Most receivers (`alerts.receivers`): each has a worker, a queue and a client of its own.
pub const MAX_RECEIVERS: usize = 16;

/// A receiver as written in the config file (`alerts.receivers`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    /// `webhook`, `alertmanager` or `slack`.
    #[serde(rename = "type")]
    pub kind: String,
    /// A name for logs and metrics (default: the type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The URL (Alertmanager: its base URL, e.g. `http://alertmanager:9093`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A file holding the URL (a mounted Secret), instead of `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_file: Option<PathBuf>,
    /// An environment variable holding the URL, instead of `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_env: Option<String>,
    /// Also notify when an alert resolves (default: true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_resolved: Option<bool>,
}

/// The kinds of receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// enawatch's JSON (docs/alerts.md).
    Webhook,
    /// `POST /api/v2/alerts`, so Alertmanager's routing, silences and inhibition apply.
    Alertmanager,
    /// A Slack incoming webhook.
    Slack,
}

/// A checked receiver.
#[derive(Clone)]
pub struct Receiver {
    /// Name for logs and metrics.
    pub name: String,
    /// Kind.
    pub kind: Kind,
    url: reqwest::Url,
    send_resolved: bool,
}

impl fmt::Debug for Receiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL is a secret: only its scheme and host are shown.
        write!(
            f,
            "Receiver({}, {:?}, {}://{}/…)",
            self.name,
            self.kind,
            self.url.scheme(),
            self.url.host_str().unwrap_or("")
        )
    }
}

impl ReceiverConfig {
    /// Checks the entry; errors name it and the field, never the secret.
    pub fn resolve(&self, index: usize) -> Result<Receiver, ConfigError> {
        let bad = |field: &str, value: &str, problem: &str| ConfigError::Invalid {
            field: "alerts.receivers",
            value: format!("[{index}] {field}: {value}"),
            problem: problem.to_owned(),
        };
        let kind = match self.kind.as_str() {
            "webhook" => Kind::Webhook,
            "alertmanager" => Kind::Alertmanager,
            "slack" => Kind::Slack,
            other => return Err(bad("type", other, "is not one of: webhook, alertmanager, slack")),
        };
        let given = [self.url.is_some(), self.url_file.is_some(), self.url_env.is_some()];
        if given.iter().filter(|&&g| g).count() != 1 {
            return Err(bad("url", "url, url_file, url_env", "exactly one of them is needed"));
        }
        let (raw, origin) = if let Some(url) = &self.url {
            (url.clone(), "url".to_owned())
        } else if let Some(path) = &self.url_file {
            let text = read_bounded_text(path, SECRET_LIMIT)
                .map_err(|e| bad("url_file", &path.display().to_string(), &e.to_string()))?;
            (text.trim().to_owned(), format!("the URL in {}", path.display()))
        } else {
            let var = self.url_env.as_deref().unwrap_or_default();
            let value = std::env::var(var).map_err(|_| bad("url_env", var, "is not set"))?;
            (value.trim().to_owned(), format!("the URL in ${var}"))
        };
        // The value may be a secret: errors say where it came from, not what it is.
        let shown = if self.url.is_some() { raw.clone() } else { origin.clone() };
        let url =
            reqwest::Url::parse(&raw).map_err(|e| bad("url", &shown, &format!("is not a URL ({e})")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
            return Err(bad("url", &shown, "must be an http:// or https:// URL with a host"));
        }
        let name = self.name.clone().unwrap_or_else(|| self.kind.clone());
        Ok(Receiver { name, kind, url, send_resolved: self.send_resolved.unwrap_or(true) })
    }
}

/// What the sampler holds: offers transitions without ever waiting.
#[derive(Clone, Debug)]
pub struct Handle {
    tx: mpsc::Sender<Transition>,
    /// Per receiver.
    pub stats: Arc<Vec<ReceiverStats>>,
    /// Transitions the sampler could not hand over (the dispatcher was behind).
    pub overflow: Arc<AtomicU64>,
}

impl Handle {
    /// Offers a transition; never blocks.
    pub(crate) fn offer(&self, transition: Transition) {
        if self.tx.try_send(transition).is_err() {
            self.overflow.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Per-receiver queue capacity.
const QUEUE: usize = 1024;
/// Waits between retries: from 1 s, doubling, at most 60 s.
const BACKOFF: Backoff = match Backoff::new(Duration::from_secs(1), Duration::from_secs(60), 2.0) {
    Ok(b) => b,
    Err(_) => panic!("the notifiers' backoff is valid"),
};
/// How often Alertmanager hears again about a firing alert (it resolves alerts it stops
/// hearing about), and how far ahead each post sets `endsAt`.
const AM_RESEND: Duration = Duration::from_secs(60);
const AM_ENDS_AFTER: Duration = Duration::from_secs(180);

/// The dispatcher and its workers, to be spawned on the runtime.
pub(crate) struct Notifier {
    rx: mpsc::Receiver<Transition>,
    receivers: Vec<Receiver>,
    stats: Arc<Vec<ReceiverStats>>,
    node: String,
    /// Node events, when they are on: one more consumer of the same transitions, counted
    /// after the receivers in `stats`.
    events: Option<(ApiAccess, events::Settings)>,
    /// Where the agent serves its page, for links back.
    pub generator_url: String,
}

/// Creates the sampler's handle and the notifier to run, for `receivers` and, when `events`
/// is given, node events.
pub(crate) fn channel(
    receivers: Vec<Receiver>,
    node: String,
    events: Option<(ApiAccess, events::Settings)>,
) -> (Handle, Notifier) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let stats: Arc<Vec<ReceiverStats>> = Arc::new(
        receivers
            .iter()
            .map(|r| r.name.clone())
            .chain(events.iter().map(|_| events::RECEIVER.to_owned()))
            .map(|name| ReceiverStats { name, ..ReceiverStats::default() })
            .collect(),
    );
    let handle = Handle { tx, stats: Arc::clone(&stats), overflow: Arc::new(AtomicU64::new(0)) };
    (handle, Notifier { rx, receivers, stats, node, events, generator_url: String::new() })
}

/// A receiver's queue: bounded, oldest dropped first.
struct Queue {
    items: Mutex<VecDeque<Transition>>,
    ready: Notify,
}

impl Notifier {
    /// Runs until the sampler side is dropped.
    pub async fn run(mut self) {
        let client = match ClientOptions::new().timeout(Duration::from_secs(10)).build() {
            Ok(c) => c,
            Err(err) => {
                warn!(error = %err, "cannot build the HTTP client; notifications are off");
                return;
            }
        };
        let mut queues = Vec::new();
        for (i, receiver) in self.receivers.iter().enumerate() {
            let queue = Arc::new(Queue { items: Mutex::new(VecDeque::new()), ready: Notify::new() });
            queues.push(Arc::clone(&queue));
            let worker = Worker {
                receiver: receiver.clone(),
                stats: Arc::clone(&self.stats),
                index: i,
                client: client.clone(),
                node: self.node.clone(),
                generator_url: self.generator_url.clone(),
            };
            tokio::spawn(worker.run(queue));
        }
        let events = self.events.take().map(|(access, settings)| {
            let index = self.receivers.len();
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(events::Writer::new(access, settings, Arc::clone(&self.stats), index).run(rx));
            (tx, index)
        });
        while let Some(t) = self.rx.recv().await {
            if let Some((tx, index)) = &events {
                if events::wanted(&t) && tx.try_send(t.clone()).is_err() {
                    self.stats[*index].dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            for (i, queue) in queues.iter().enumerate() {
                let mut items = queue.items.lock().unwrap_or_else(PoisonError::into_inner);
                if items.len() == QUEUE {
                    items.pop_front();
                    self.stats[i].dropped.fetch_add(1, Ordering::Relaxed);
                }
                items.push_back(t.clone());
                self.stats[i].queued.store(items.len() as u64, Ordering::Relaxed);
                drop(items);
                queue.ready.notify_one();
            }
        }
    }
}

struct Worker {
    receiver: Receiver,
    stats: Arc<Vec<ReceiverStats>>,
    index: usize,
    client: reqwest::Client,
    node: String,
    generator_url: String,
}

/// What one delivery attempt came to.
enum Outcome {
    Delivered,
    Retry(String, Option<Duration>),
    Rejected(String),
}

impl Worker {
    fn stats(&self) -> &ReceiverStats {
        &self.stats[self.index]
    }

    async fn run(self, queue: Arc<Queue>) {
        // Alertmanager forgets alerts it stops hearing about: firing ones are posted again.
        // By alert, severity and subject: a device, or a workload (namespace, name).
        type Key = (String, String, Option<String>, Option<(String, String)>);
        let mut firing: BTreeMap<Key, Alert> = BTreeMap::new();
        let mut resend = tokio::time::interval(AM_RESEND);
        resend.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next = queue.items.lock().unwrap_or_else(PoisonError::into_inner).front().cloned();
            let Some(t) = next else {
                tokio::select! {
                    () = queue.ready.notified() => {}
                    _ = resend.tick(), if self.receiver.kind == Kind::Alertmanager && !firing.is_empty() => {
                        let alerts: Vec<Alert> = firing.values().cloned().collect();
                        self.deliver(&self.alertmanager_body(&alerts), None).await;
                    }
                }
                continue;
            };
            let a = &t.alert;
            let workload = a.namespace.clone().zip(a.workload.clone());
            let key = (a.name.to_owned(), a.severity.to_owned(), a.device.clone(), workload);
            if t.alert.state == State::Firing {
                firing.insert(key, t.alert.clone());
            } else {
                firing.remove(&key);
            }
            let skip = t.alert.state == State::Resolved && !self.receiver.send_resolved;
            if !skip {
                let body = match self.receiver.kind {
                    Kind::Webhook => self.webhook_body(&t),
                    Kind::Alertmanager => self.alertmanager_body(std::slice::from_ref(&t.alert)),
                    Kind::Slack => self.slack_body(&t),
                };
                self.deliver(&body, Some(&queue)).await;
            }
            let mut items = queue.items.lock().unwrap_or_else(PoisonError::into_inner);
            items.pop_front();
            self.stats().queued.store(items.len() as u64, Ordering::Relaxed);
        }
    }

    /// Sends until delivered or rejected, backing off between attempts.
    async fn deliver(&self, body: &serde_json::Value, queue: Option<&Queue>) {
        let mut retries = BACKOFF.retries(self.index as u64);
        let mut failing = false;
        loop {
            match self.attempt(body).await {
                Outcome::Delivered => {
                    self.stats().sent.fetch_add(1, Ordering::Relaxed);
                    if failing {
                        info!(receiver = %self.receiver.name, "receiver reachable again; delivered");
                    }
                    return;
                }
                Outcome::Rejected(why) => {
                    self.stats().failed.fetch_add(1, Ordering::Relaxed);
                    warn!(receiver = %self.receiver.name, reason = %why, "receiver rejected a notification; dropped it");
                    return;
                }
                Outcome::Retry(why, after) => {
                    self.stats().retried.fetch_add(1, Ordering::Relaxed);
                    if !failing {
                        warn!(receiver = %self.receiver.name, reason = %why, "cannot notify; retrying with backoff");
                        failing = true;
                    }
                    tokio::time::sleep(retries.next_wait(after)).await;
                    if let Some(q) = queue {
                        let len = q.items.lock().unwrap_or_else(PoisonError::into_inner).len();
                        self.stats().queued.store(len as u64, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    async fn attempt(&self, body: &serde_json::Value) -> Outcome {
        let mut url = self.receiver.url.clone();
        if self.receiver.kind == Kind::Alertmanager {
            let base = url.path().trim_end_matches('/').to_owned();
            url.set_path(&format!("{base}/api/v2/alerts"));
        }
        match self.client.post(url).json(body).send().await {
            Ok(resp) => {
                let status = resp.status();
                match outbound::classify_status(status) {
                    Class::Success => Outcome::Delivered,
                    Class::Retry => Outcome::Retry(
                        format!("HTTP {status}"),
                        outbound::retry_after(resp.headers(), crate::base::wall_ms()),
                    ),
                    Class::Drop => Outcome::Rejected(format!("HTTP {status}")),
                }
            }
            // reqwest's errors carry the URL; without_url keeps the secret out of the log.
            Err(err) => {
                let class = outbound::classify_error(&err);
                let why = err.without_url().to_string();
                if class == Class::Retry {
                    Outcome::Retry(why, None)
                } else {
                    Outcome::Rejected(why)
                }
            }
        }
    }

    fn webhook_body(&self, t: &Transition) -> serde_json::Value {
        json!({
            "version": "1",
            "status": t.alert.state.label(),
            "node": self.node,
            "sent_at": rfc3339(t.at_ms),
            "alert": t.alert,
        })
    }

    fn alertmanager_body(&self, alerts: &[Alert]) -> serde_json::Value {
        let now = crate::base::wall_ms();
        let ends = now + i64::try_from(AM_ENDS_AFTER.as_millis()).unwrap_or(0);
        let list: Vec<serde_json::Value> = alerts
            .iter()
            .map(|a| {
                let mut labels = BTreeMap::from([
                    ("alertname", a.name.to_owned()),
                    ("severity", a.severity.to_owned()),
                    ("node", self.node.clone()),
                    ("source", "enawatch".to_owned()),
                ]);
                if let Some(d) = &a.device {
                    labels.insert("device", d.clone());
                }
                if let Some(al) = a.allowance {
                    labels.insert("allowance", al.to_owned());
                }
                // As the Prometheus rule labels it (empty for lookups of no pod).
                if let (Some(n), Some(w)) = (&a.namespace, &a.workload) {
                    labels.insert("namespace", n.clone());
                    labels.insert("workload", w.clone());
                }
                json!({
                    "labels": labels,
                    "annotations": {"summary": a.summary, "description": a.description, "runbook_url": a.runbook_url},
                    "startsAt": a.firing_since.clone().unwrap_or_else(|| a.active_since.clone()),
                    "endsAt": a.resolved_at.clone().unwrap_or_else(|| rfc3339(ends)),
                    "generatorURL": self.generator_url,
                })
            })
            .collect();
        serde_json::Value::Array(list)
    }

    fn slack_body(&self, t: &Transition) -> serde_json::Value {
        let a = &t.alert;
        let status = if a.state == State::Firing { "FIRING" } else { "RESOLVED" };
        let emoji = match (a.state, a.severity) {
            (State::Resolved, _) => ":white_check_mark:",
            (_, "critical") => ":rotating_light:",
            _ => ":warning:",
        };
        let device = a.device.as_deref().map(|d| format!(" {d}")).unwrap_or_default();
        let device = match (&a.namespace, &a.workload) {
            (Some(n), Some(w)) => format!("{device} {}", super::workload_name(n, w)),
            _ => device,
        };
        json!({
            "text": format!(
                "{emoji} *[{status}] {}* ({}) on node {}{device}\n{}\n<{}|Runbook>",
                a.name, a.severity, self.node, a.description, a.runbook_url
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receiver(kind: &str, url: &str) -> ReceiverConfig {
        ReceiverConfig { kind: kind.into(), url: Some(url.into()), ..ReceiverConfig::default() }
    }

    #[test]
    fn receivers_are_checked_and_secrets_kept_out_of_errors() {
        assert!(receiver("webhook", "http://127.0.0.1:9/hook").resolve(0).is_ok());
        let err = |c: ReceiverConfig| c.resolve(2).unwrap_err().to_string();
        assert!(err(receiver("pager", "http://x")).contains("[2] type: pager\" is not one of"));
        assert!(err(receiver("webhook", "not a url")).contains("[2] url: not a url\" is not a URL"));
        assert!(err(receiver("slack", "ftp://files")).contains("must be an http:// or https:// URL"));
        assert!(
            err(ReceiverConfig { kind: "slack".into(), ..ReceiverConfig::default() }).contains("exactly one")
        );
        let from_env = ReceiverConfig {
            kind: "slack".into(),
            url_env: Some("ENAWATCH_TEST_UNSET_VAR".into()),
            ..ReceiverConfig::default()
        };
        assert!(err(from_env).contains("url_env: ENAWATCH_TEST_UNSET_VAR\" is not set"));
        let dir = std::env::temp_dir().join(format!("enawatch-secret-{}", std::process::id()));
        std::fs::write(&dir, "hooks.example/T000/SECRET-TOKEN").unwrap();
        let from_file =
            ReceiverConfig { kind: "slack".into(), url_file: Some(dir.clone()), ..ReceiverConfig::default() };
        let message = err(from_file);
        let _ = std::fs::remove_file(&dir);
        assert!(!message.contains("SECRET-TOKEN"), "the secret stays out of errors: {message}");
        let ok = receiver("slack", "https://hooks.example/T000/SECRET-TOKEN").resolve(0).unwrap();
        assert!(!format!("{ok:?}").contains("SECRET"), "nor in debug output");
    }
}
