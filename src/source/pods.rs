//! Pod attribution: which pod (namespace, name, workload) a DNS client address belongs to.
//!
//! The agent lists the pods of its own node through the Kubernetes API (a field selector on
//! `spec.nodeName`, so it reads only its node's pods) and keeps the table current with a
//! watch. It needs read-only `list` and `watch` on pods (the RBAC ships in
//! `deploy/kubernetes/alternatives/pod-attribution.yaml`). Host-network pods share the node's
//! address: clients at the node's own addresses are attributed to the node. When the API is
//! unreachable or forbids the request, attribution turns off with one log line and
//! everything else keeps working.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::outbound::ClientOptions;

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
}

impl Pods {
    /// Who `ip` is: a pod, or (for a host-network address) the node.
    #[cfg(test)]
    fn lookup(&self, ip: &str) -> Option<PodRef> {
        self.by_ip.get(ip).cloned()
    }

    /// The table, for the API.
    pub fn list(&self) -> Vec<(String, PodRef)> {
        let mut v: Vec<_> = self.by_ip.iter().map(|(ip, p)| (ip.clone(), p.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Applies one pod as listed or watched (`ADDED`, `MODIFIED`, `DELETED`).
    pub fn apply(&mut self, kind: &str, pod: &Pod) {
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

#[derive(Deserialize)]
struct WatchEvent {
    #[serde(rename = "type")]
    kind: String,
    object: Pod,
}

/// Where and how to reach the API.
#[derive(Clone, Debug)]
pub struct ApiAccess {
    /// Base URL (`https://KUBERNETES_SERVICE_HOST:PORT`, or `ENAWATCH_KUBE_API` for tests).
    pub base: String,
    /// The service account token, if any.
    pub token: Option<String>,
    /// The cluster CA (PEM), if any.
    pub ca: Option<Vec<u8>>,
    /// This node's name.
    pub node: String,
}

const SA: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

impl ApiAccess {
    /// The in-cluster configuration; `Err` says why attribution cannot run.
    pub(crate) fn in_cluster() -> Result<Self, String> {
        let node = std::env::var("NODE_NAME")
            .map_err(|_| "NODE_NAME is not set (the DaemonSet sets it)".to_owned())?;
        if let Ok(base) = std::env::var("ENAWATCH_KUBE_API") {
            return Ok(Self {
                base,
                token: std::fs::read_to_string(format!("{SA}/token")).ok(),
                ca: None,
                node,
            });
        }
        let host = std::env::var("KUBERNETES_SERVICE_HOST")
            .map_err(|_| "not running in a Kubernetes pod".to_owned())?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
        let token = std::fs::read_to_string(format!("{SA}/token")).map_err(|e| {
            format!("no service account token ({e}); automountServiceAccountToken must be true")
        })?;
        let ca = std::fs::read(format!("{SA}/ca.crt")).ok();
        let host = if host.contains(':') { format!("[{host}]") } else { host };
        Ok(Self { base: format!("https://{host}:{port}"), token: Some(token.trim().to_owned()), ca, node })
    }
}

/// Keeps `pods` current until the API fails for good; logs once when attribution stops.
pub async fn run(access: ApiAccess, pods: Arc<Mutex<Pods>>) {
    let mut options = ClientOptions::new().connect_timeout(Duration::from_secs(5));
    if let Some(ca) = &access.ca {
        options = options.extra_root_pem(ca.clone());
    }
    let client = match options.build() {
        Ok(client) => client,
        Err(err) => return stop(&err.to_string()),
    };
    let selector = format!("spec.nodeName={}", access.node);
    let auth = |r: reqwest::RequestBuilder| match &access.token {
        Some(t) => r.bearer_auth(t),
        None => r,
    };
    loop {
        let url = |pairs: &[(&str, &str)]| {
            let mut u = reqwest::Url::parse(&format!("{}/api/v1/pods", access.base)).ok()?;
            u.query_pairs_mut().extend_pairs(pairs);
            Some(u)
        };
        let Some(list_url) = url(&[("fieldSelector", selector.as_str())]) else {
            return stop(&format!("{:?} is not a URL", access.base));
        };
        let list = auth(client.get(list_url));
        let version = match list.send().await {
            Ok(resp) if resp.status().is_success() => match resp.json::<PodList>().await {
                Ok(list) => {
                    let mut table = Pods::default();
                    for pod in &list.items {
                        table.apply("ADDED", pod);
                    }
                    let n = list.items.len();
                    *pods.lock().unwrap_or_else(PoisonError::into_inner) = table;
                    info!(pods = n, node = %access.node, "pod attribution: listed this node's pods");
                    list.metadata.resource_version
                }
                Err(err) => return stop(&format!("unreadable pod list: {err}")),
            },
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
        let watch = auth(client.get(watch_url));
        let Ok(mut resp) = watch.send().await else {
            tokio::time::sleep(Duration::from_secs(5)).await;
            continue;
        };
        let mut pending = Vec::new();
        // The watch streams one JSON event per line until the server ends it; then relist.
        while let Ok(Some(chunk)) = resp.chunk().await {
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if let Ok(event) = serde_json::from_slice::<WatchEvent>(&line) {
                    pods.lock().unwrap_or_else(PoisonError::into_inner).apply(&event.kind, &event.object);
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
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
}
