//! Pod attribution: which pod (namespace, name, workload) a DNS client address belongs to.
//!
//! The agent lists the pods of its own node through the Kubernetes API (a field selector on
//! `spec.nodeName`, so it reads only its node's pods) and keeps the table current with a
//! watch. It needs read-only `list` and `watch` on pods (the RBAC ships in
//! `deploy/kubernetes/alternatives/pod-attribution.yaml`). Host-network pods share the node's
//! address: clients at the node's own addresses are attributed to the node. When the API is
//! unreachable or forbids the request, attribution turns off with one log line and
//! everything else keeps working.
//!
//! The service-account token is read from its file for every list and again after a 401,
//! because the kubelet rotates it and the API stops accepting an expired one. The watch
//! stream is decoded by `WatchDecoder`, a pure function of the bytes with a bounded buffer
//! (an overlong event is dropped, counted, and the table relisted).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::outbound;
use crate::outbound::kube::ApiAccess;

/// Who a client address is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PodRef {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// The owning workload (`Deployment/coredns`, `DaemonSet/aws-node`, …), when known.
    pub workload: Option<String>,
    /// The pod's uid, so an old pod's deletion does not remove its replacement.
    #[serde(skip)]
    pub uid: String,
}

/// Addresses of this node's pods.
#[derive(Debug, Default)]
pub struct Pods {
    by_ip: HashMap<String, PodRef>,
    /// Pods on the host network (their address is the node's).
    host_network: Vec<PodRef>,
    /// Changes with every change of the table, so a reader may cache lookups.
    pub generation: u64,
}

impl Pods {
    /// The pod at `ip`, if it is one of this node's (host-network pods have the node's).
    pub fn lookup(&self, ip: &str) -> Option<&PodRef> {
        self.by_ip.get(ip)
    }

    /// The table, for the API.
    pub fn list(&self) -> Vec<(String, PodRef)> {
        let mut v: Vec<_> = self.by_ip.iter().map(|(ip, p)| (ip.clone(), p.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Adds a pod at `ip` by hand: the pods of a simulated node.
    pub fn insert(&mut self, ip: String, pod: PodRef) {
        self.generation += 1;
        self.by_ip.insert(ip, pod);
    }

    /// Applies one pod as listed or watched (`ADDED`, `MODIFIED`, `DELETED`).
    pub fn apply(&mut self, kind: &str, pod: &Pod) {
        self.generation += 1;
        let Some(r) = pod.reference() else { return };
        let ips: Vec<String> =
            pod.status.pod_ips.iter().map(|p| p.ip.clone()).chain(pod.status.pod_ip.clone()).collect();
        if pod.spec.host_network {
            self.host_network.retain(|p| p.uid != r.uid);
            if kind != "DELETED" {
                self.host_network.push(r);
            }
            return;
        }
        for ip in ips {
            if kind == "DELETED" {
                // Only if the address still belongs to this pod: a replacement may hold it now.
                if self.by_ip.get(&ip).is_some_and(|p| p.uid == r.uid) {
                    self.by_ip.remove(&ip);
                }
            } else {
                self.by_ip.insert(ip, r.clone());
            }
        }
    }
}

/// The parts of a Pod object that matter here.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Pod {
    metadata: Metadata,
    spec: Spec,
    status: Status,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Metadata {
    name: String,
    namespace: String,
    uid: String,
    owner_references: Vec<Owner>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
struct Owner {
    kind: String,
    name: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Spec {
    host_network: bool,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Status {
    #[serde(rename = "podIP")]
    pod_ip: Option<String>,
    #[serde(rename = "podIPs")]
    pod_ips: Vec<PodIp>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
struct PodIp {
    ip: String,
}

impl Pod {
    fn reference(&self) -> Option<PodRef> {
        let m = &self.metadata;
        if m.name.is_empty() {
            return None;
        }
        let workload = m.owner_references.first().map(|o| match o.kind.as_str() {
            // A ReplicaSet's name is its Deployment's plus a hash.
            "ReplicaSet" => match o.name.rsplit_once('-') {
                Some((deployment, _)) => format!("Deployment/{deployment}"),
                None => format!("ReplicaSet/{}", o.name),
            },
            kind => format!("{kind}/{}", o.name),
        });
        Some(PodRef { namespace: m.namespace.clone(), pod: m.name.clone(), workload, uid: m.uid.clone() })
    }
}

#[derive(Deserialize)]
struct PodList {
    #[serde(default)]
    metadata: ListMeta,
    #[serde(default)]
    items: Vec<Pod>,
}

#[derive(Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct ListMeta {
    resource_version: String,
}

/// One event of the watch stream.
#[derive(Debug, Deserialize)]
pub(crate) struct WatchEvent {
    /// `ADDED`, `MODIFIED`, `DELETED` (or `BOOKMARK`, `ERROR`: no pod, ignored).
    #[serde(rename = "type")]
    pub kind: String,
    /// The pod.
    pub object: Pod,
}

/// A list of this node's pods, decoded: the table, how many pods it had, and the resource
/// version the watch starts from.
pub(crate) fn decode_list(body: &[u8]) -> Result<(Pods, usize, String), serde_json::Error> {
    let list: PodList = serde_json::from_slice(body)?;
    let mut table = Pods::default();
    for pod in &list.items {
        table.apply("ADDED", pod);
    }
    Ok((table, list.items.len(), list.metadata.resource_version))
}

/// The longest watch event accepted, in bytes: the API stores an object of at most 1.5 MiB
/// (etcd's default request limit) and its JSON may be larger. A longer line is dropped and
/// counted, and the watch is ended so a relist resynchronises the table; the buffer holding
/// an unfinished line never grows past this.
pub(crate) const MAX_EVENT_BYTES: usize = 4 << 20;

/// The longest pod list read, in bytes (a node runs at most a few hundred pods).
const MAX_LIST_BYTES: usize = 256 << 20;

/// What the watch stream decodes to.
#[derive(Debug)]
pub(crate) enum Decoded {
    /// A watch event.
    Event(WatchEvent),
    /// A line longer than the decoder's limit was dropped: an event is missing.
    TooLong,
}

/// Splits the watch stream (one JSON event per line) into events: bytes in, events out, in
/// whatever chunks the network delivers them. At most `max` bytes of an unfinished line are
/// held; a longer line is reported once as [`Decoded::TooLong`] and skipped to its end.
/// A line that is not a watch event is skipped, as the API never sends one.
pub(crate) struct WatchDecoder {
    pending: Vec<u8>,
    max: usize,
    /// The rest of an overlong line is being skipped.
    skipping: bool,
    /// Lines dropped for their length.
    pub too_long: u64,
    /// Lines that were not a watch event.
    pub unreadable: u64,
}

impl WatchDecoder {
    /// A decoder holding at most `max` bytes of an unfinished line.
    pub(crate) fn new(max: usize) -> Self {
        Self { pending: Vec::new(), max, skipping: false, too_long: 0, unreadable: 0 }
    }

    /// Takes the next chunk of the stream and hands `out` every line it completes.
    pub(crate) fn push(&mut self, mut chunk: &[u8], mut out: impl FnMut(Decoded)) {
        while let Some(end) = chunk.iter().position(|&b| b == b'\n') {
            let (piece, rest) = (&chunk[..end], &chunk[end + 1..]);
            chunk = rest;
            if std::mem::take(&mut self.skipping) {
                continue; // the end of a line already reported as too long
            }
            if self.pending.len() + piece.len() > self.max {
                self.pending.clear();
                self.too_long += 1;
                out(Decoded::TooLong);
                continue;
            }
            let line = if self.pending.is_empty() {
                piece
            } else {
                self.pending.extend_from_slice(piece);
                &self.pending
            };
            match serde_json::from_slice::<WatchEvent>(line) {
                Ok(event) => out(Decoded::Event(event)),
                Err(_) => self.unreadable += 1,
            }
            self.pending.clear();
        }
        if self.skipping {
            return;
        }
        if self.pending.len() + chunk.len() > self.max {
            self.pending.clear();
            self.skipping = true;
            self.too_long += 1;
            out(Decoded::TooLong);
        } else {
            self.pending.extend_from_slice(chunk);
        }
        debug_assert!(self.pending.len() <= self.max, "the watch buffer is bounded");
    }
}

/// How long to wait before asking again after `n` answers of 401 in a row, with an
/// unchanged token: 1 s, doubling, at most a minute.
fn unauthorized_backoff(n: u32) -> Duration {
    Duration::from_secs(1 << n.saturating_sub(1).min(6)).min(Duration::from_secs(60))
}

/// Keeps `pods` current until the API fails for good; logs once when attribution stops.
pub async fn run(access: ApiAccess, pods: Arc<Mutex<Pods>>) {
    let client = match access.client(None) {
        Ok(client) => client,
        Err(err) => return stop(&err.to_string()),
    };
    let selector = format!("spec.nodeName={}", access.node);
    let auth = |r: reqwest::RequestBuilder, token: Option<&str>| match token {
        Some(t) => r.bearer_auth(t),
        None => r,
    };
    // 401 answers in a row: the token was rejected (expired, or not yet rotated).
    let mut rejected: u32 = 0;
    // Watches answered 401 in a row.
    let mut watch_refused: u32 = 0;
    // Watch events dropped for their length since the start.
    let mut dropped_events: u64 = 0;
    loop {
        let url = |pairs: &[(&str, &str)]| {
            let mut u = reqwest::Url::parse(&format!("{}/api/v1/pods", access.base)).ok()?;
            u.query_pairs_mut().extend_pairs(pairs);
            Some(u)
        };
        let Some(list_url) = url(&[("fieldSelector", selector.as_str())]) else {
            return stop(&format!("{:?} is not a URL", access.base));
        };
        // Every relist reads the token file again.
        let token = access.token();
        let list = auth(client.get(list_url), token.as_deref());
        let version = match list.send().await {
            Ok(resp) if resp.status() == reqwest::StatusCode::UNAUTHORIZED => {
                rejected += 1;
                if rejected == 1 {
                    warn!("the API rejected the service account token (401); re-reading the token file and retrying");
                }
                // A token rotated since this request is tried at once; the same one, later.
                if access.token() == token {
                    tokio::time::sleep(unauthorized_backoff(rejected)).await;
                }
                continue;
            }
            Ok(resp) if resp.status().is_success() => {
                match outbound::read_body(resp, MAX_LIST_BYTES)
                    .await
                    .and_then(|body| decode_list(&body).map_err(|e| e.to_string()))
                {
                    Ok((table, n, version)) => {
                        let mut held = pods.lock().unwrap_or_else(PoisonError::into_inner);
                        let generation = held.generation + 1;
                        *held = table;
                        held.generation = generation;
                        drop(held);
                        if std::mem::take(&mut rejected) > 0 {
                            info!("pod attribution: the API accepts the service account token again");
                        }
                        if watch_refused == 0 {
                            info!(pods = n, node = %access.node, "pod attribution: listed this node's pods");
                        } else {
                            debug!(pods = n, "pod attribution: relisted while the API refuses to watch");
                        }
                        version
                    }
                    Err(err) => return stop(&format!("unreadable pod list: {err}")),
                }
            }
            Ok(resp) => {
                return stop(&format!(
                    "the API answered {} to listing pods (RBAC: list/watch pods)",
                    resp.status()
                ))
            }
            Err(err) => return stop(&format!("the API is unreachable: {}", err.without_url())),
        };
        let watch_url = url(&[
            ("fieldSelector", selector.as_str()),
            ("watch", "1"),
            ("resourceVersion", version.as_str()),
            ("allowWatchBookmarks", "false"),
        ]);
        let Some(watch_url) = watch_url else { return };
        let watch = auth(client.get(watch_url), token.as_deref());
        let Ok(resp) = watch.send().await else {
            tokio::time::sleep(Duration::from_secs(5)).await;
            continue;
        };
        if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
            // Relist (with the token file read again) after a pause growing to a minute: an
            // API that lists but refuses to watch is neither asked nor logged every second.
            watch_refused += 1;
            if watch_refused == 1 {
                warn!("pod attribution: the API refused to watch pods (401); relisting, less and less often");
            }
            tokio::time::sleep(unauthorized_backoff(watch_refused)).await;
            continue;
        }
        if std::mem::take(&mut watch_refused) > 0 {
            info!("pod attribution: the API accepts the watch again");
        }
        // The watch streams one JSON event per line until the server ends it; then relist.
        report_skipped(&follow(resp, &pods).await, &mut dropped_events);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Applies the events of a watch to `pods` until the server ends it, or until an event is
/// dropped for its length (the table is then missing it: the caller relists).
async fn follow(mut resp: reqwest::Response, pods: &Mutex<Pods>) -> WatchDecoder {
    let mut decoder = WatchDecoder::new(MAX_EVENT_BYTES);
    while let Ok(Some(chunk)) = resp.chunk().await {
        decoder.push(&chunk, |decoded| {
            if let Decoded::Event(event) = decoded {
                pods.lock().unwrap_or_else(PoisonError::into_inner).apply(&event.kind, &event.object);
            }
        });
        if decoder.too_long > 0 {
            break;
        }
    }
    decoder
}

/// Logs what a watch skipped: events dropped for their length (`dropped`, the count since
/// the start, grows by them), lines that were no event.
fn report_skipped(decoder: &WatchDecoder, dropped: &mut u64) {
    if decoder.too_long > 0 {
        *dropped += decoder.too_long;
        warn!(
            limit_bytes = MAX_EVENT_BYTES,
            dropped_events = *dropped,
            "pod attribution: a watch event longer than the limit was dropped; relisting"
        );
    }
    if decoder.unreadable > 0 {
        debug!(lines = decoder.unreadable, "pod attribution: watch lines that were not events skipped");
    }
}

fn stop(why: &str) {
    warn!(reason = why, "pod attribution is off; DNS clients are shown by address only");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: &str) -> Pod {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn pods_by_address_with_their_workload() {
        let mut t = Pods::default();
        t.apply("ADDED", &pod(r#"{"metadata":{"name":"web-7d4b9-abcde","namespace":"shop","uid":"1","ownerReferences":[{"kind":"ReplicaSet","name":"web-7d4b9"}]},"status":{"podIP":"10.0.1.5","podIPs":[{"ip":"10.0.1.5"}]}}"#));
        t.apply("ADDED", &pod(r#"{"metadata":{"name":"aws-node-x","namespace":"kube-system","uid":"2","ownerReferences":[{"kind":"DaemonSet","name":"aws-node"}]},"spec":{"hostNetwork":true},"status":{"podIP":"10.0.0.10"}}"#));
        let web = t.lookup("10.0.1.5").unwrap();
        assert_eq!(
            (web.namespace.as_str(), web.pod.as_str(), web.workload.as_deref()),
            ("shop", "web-7d4b9-abcde", Some("Deployment/web"))
        );
        assert!(t.lookup("10.0.0.10").is_none(), "host-network pods are the node, not a pod address");
    }

    #[test]
    fn a_pod_replaced_under_the_same_address_keeps_the_new_one() {
        let mut t = Pods::default();
        let old =
            pod(r#"{"metadata":{"name":"a-1","namespace":"n","uid":"old"},"status":{"podIP":"10.0.1.7"}}"#);
        let new =
            pod(r#"{"metadata":{"name":"b-1","namespace":"n","uid":"new"},"status":{"podIP":"10.0.1.7"}}"#);
        t.apply("ADDED", &old);
        t.apply("ADDED", &new); // the address is reused before the old pod's deletion arrives
        t.apply("DELETED", &old);
        assert_eq!(t.lookup("10.0.1.7").unwrap().pod, "b-1");
        t.apply("DELETED", &new);
        assert!(t.lookup("10.0.1.7").is_none());
    }

    const WATCH: &str = include_str!("../../tests/data/k8s/pods-watch.jsonl");

    /// The events `chunks` decode to, as text, and the decoder.
    fn decode(max: usize, chunks: &[&[u8]]) -> (Vec<String>, WatchDecoder) {
        let mut decoder = WatchDecoder::new(max);
        let mut out = Vec::new();
        for chunk in chunks {
            decoder.push(chunk, |d| {
                out.push(match d {
                    Decoded::Event(e) => format!("{} {:?}", e.kind, e.object.reference()),
                    Decoded::TooLong => "too long".to_owned(),
                });
            });
            assert!(decoder.pending.len() <= max, "the buffer holds at most {max} bytes");
        }
        (out, decoder)
    }

    #[test]
    fn watch_events_decode_the_same_whatever_the_chunks() {
        let (whole, _) = decode(MAX_EVENT_BYTES, &[WATCH.as_bytes()]);
        assert_eq!(whole.len(), WATCH.lines().count(), "{whole:?}");
        assert!(whole[0].starts_with("ADDED Some(PodRef { namespace: \"shop\""), "{whole:?}");
        let bytes = WATCH.as_bytes();
        for at in 0..bytes.len() {
            let (split, _) = decode(MAX_EVENT_BYTES, &[&bytes[..at], &bytes[at..]]);
            assert_eq!(split, whole, "split at byte {at}");
        }
        let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(decode(MAX_EVENT_BYTES, &bytewise).0, whole);
    }

    /// Regression (issue 13): the pod watch buffer was unbounded, so an API (or a proxy in
    /// front of it) streaming a line without end grew the agent's memory without limit.
    #[test]
    fn the_watch_buffer_is_bounded_and_an_overlong_event_is_dropped_and_counted() {
        let first = WATCH.lines().next().unwrap();
        let max = first.len();
        let endless = vec![b'x'; 10 * max];
        // An overlong line in pieces, in one piece, then a normal event: only it is decoded.
        let long_line = format!("{}\n", "y".repeat(max + 1));
        let good = format!("{first}\n");
        let chunks: Vec<&[u8]> = vec![
            &endless[..max],
            &endless[max..],
            b"\n",
            long_line.as_bytes(),
            good.as_bytes(),
            &endless[..max],
        ];
        let (out, decoder) = decode(max, &chunks);
        assert_eq!(out[..2], ["too long", "too long"], "{out:?}");
        assert!(out[2].starts_with("ADDED Some(PodRef"), "{out:?}");
        assert_eq!(out.len(), 3, "an unfinished line within the limit waits: {out:?}");
        assert_eq!((decoder.too_long, decoder.unreadable), (2, 0));
        // Every unfinished line is held whole up to the limit, and no further.
        let (out, decoder) = decode(max, &[&endless[..max]]);
        assert!(out.is_empty() && decoder.pending.len() == max);
        let (out, decoder) = decode(max, &[&endless[..=max]]);
        assert_eq!((out.len(), decoder.pending.len(), decoder.too_long), (1, 0, 1));
    }
}
