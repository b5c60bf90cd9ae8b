//! One endpoint's sender: takes batches from its queue, one at a time, and delivers each
//! until the receiver accepts or rejects it.
//!
//! Network errors, 5xx and 429 are retried with exponential backoff and equal jitter (so
//! agents that lost the same receiver do not come back in lockstep), waiting `Retry-After`
//! instead when the receiver gives it. Any other 4xx means the receiver will never take the
//! batch (bad labels, samples out of bounds): it is dropped, counted as `failed`, and logged
//! with the receiver's reason. The client, the backoff, the classification and `Retry-After`
//! are [`crate::outbound`]'s, shared with the alert notifiers (src/alerts/notify.rs).

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::config::Protocol;
use super::queue::Batch;
use super::{proto, Auth, Shared};
use crate::aws::credentials::Provider;
use crate::aws::sigv4;
use crate::metrics::VERSION;
use crate::outbound::{self, Backoff, Class, ClientOptions};

/// A receiver's rejections of the same kind are logged at most this often.
const REJECTION_LOG_EVERY: Duration = Duration::from_secs(60);

/// What one attempt came to.
enum Outcome {
    Delivered,
    /// Worth another attempt: why, and how long the receiver asked to wait.
    Retry(String, Option<Duration>),
    /// The receiver refused the batch for good: HTTP status (0: the request could not be
    /// made at all) and its reason.
    Rejected(u16, String),
}

struct Sender {
    shared: Arc<Shared>,
    client: reqwest::Client,
    credentials: Option<Provider>,
    backoff: Backoff,
    /// Failing since, for the log line when it recovers.
    failing: Option<Instant>,
    /// The last rejection logged (status, when) and how many were not logged since.
    last_rejection: Option<(u16, Instant)>,
    unlogged_rejections: u64,
    /// OTLP's resource attributes.
    resource: Vec<(String, String)>,
}

/// How long an OTLP sender waits for IMDS before its first request (sampling never waits).
const IMDS_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs the sender of one endpoint until the runtime stops.
pub(super) async fn run(shared: Arc<Shared>) {
    let e = &shared.endpoint;
    let options = ClientOptions::new()
        .timeout(e.timeout)
        .connect_timeout(e.timeout.min(Duration::from_secs(10)))
        .user_agent(format!("enawatch/{VERSION}"))
        // A redirect would drop the body or break the signature: the URL must be the real one.
        .no_redirects()
        .extra_roots(e.ca.iter().cloned());
    let client = match options.build() {
        Ok(c) => c,
        Err(err) => {
            warn!(endpoint = %e.name, error = %err, "cannot build the HTTP client; remote write to this endpoint is off");
            return;
        }
    };
    let credentials = match &e.auth {
        Auth::Sigv4 { region, role_arn, source, sts, .. } => {
            match Provider::new(source.clone(), role_arn.clone(), sts.clone(), region.clone()) {
                Ok(p) => Some(p),
                Err(err) => {
                    warn!(endpoint = %e.name, error = %err, "cannot build the credentials client; remote write to this endpoint is off");
                    return;
                }
            }
        }
        _ => None,
    };
    // The config checked both bounds (positive, max at least min): this cannot fail.
    let backoff = match Backoff::new(e.min_backoff, e.max_backoff, 2.0) {
        Ok(b) => b,
        Err(err) => {
            warn!(endpoint = %e.name, error = %err, "unusable backoff; remote write to this endpoint is off");
            return;
        }
    };
    let resource = match e.protocol {
        Protocol::RemoteWrite => Vec::new(),
        Protocol::Otlp => resource(e, crate::aws::credentials::process_env).await,
    };
    let mut sender = Sender {
        shared,
        client,
        credentials,
        backoff,
        failing: None,
        last_rejection: None,
        unlogged_rejections: 0,
        resource,
    };
    loop {
        let batch = sender.next_batch().await;
        sender.deliver(&batch).await;
        let shared = &sender.shared;
        let mut queue = shared.lock();
        queue.finish();
        let needed = queue.needed();
        shared.update_pending(&queue);
        drop(queue);
        if let Some(spool) = &shared.spool {
            let mut spool = spool.lock().unwrap_or_else(PoisonError::into_inner);
            if let Err(err) = spool.ack(batch.end).and_then(|()| spool.trim(&needed)) {
                warn!(endpoint = %shared.endpoint.name, error = %err, "cannot update the spool's cursor; a restart may send some samples again");
            }
        }
    }
}

impl Sender {
    /// Waits until a batch is due: a full one, one whose oldest sample has waited the
    /// batch deadline, anything when the queue is full (its oldest step would be dropped
    /// before the deadline) or at shutdown.
    async fn next_batch(&self) -> Batch {
        let shared = &self.shared;
        let e = &shared.endpoint;
        loop {
            let wait = {
                let mut queue = shared.lock();
                let due = queue.samples() >= e.max_samples_per_send
                    || (queue.samples() > 0 && (queue.is_full() || shared.flushing.load(Ordering::Relaxed)))
                    || queue.oldest().is_some_and(|t| t.elapsed() >= e.batch_send_deadline);
                if due {
                    if let Some(batch) = queue.take(e.max_samples_per_send) {
                        shared.update_pending(&queue);
                        return batch;
                    }
                }
                queue.oldest().map(|t| e.batch_send_deadline.saturating_sub(t.elapsed()))
            };
            match wait {
                Some(wait) => {
                    tokio::select! {
                        () = shared.ready.notified() => {}
                        () = tokio::time::sleep(wait) => {}
                    }
                }
                None => shared.ready.notified().await,
            }
        }
    }

    /// Sends until the batch is accepted or rejected, backing off between attempts.
    async fn deliver(&mut self, batch: &Batch) {
        let body = match self.shared.endpoint.protocol {
            Protocol::RemoteWrite => proto::compress(&batch.encode()),
            Protocol::Otlp => batch.encode_otlp(&self.resource, VERSION),
        };
        let n = batch.samples as u64;
        let mut retries = self.backoff.retries(self.shared.index as u64);
        loop {
            match self.attempt(&body).await {
                Outcome::Delivered => {
                    let stats = self.shared.stats();
                    stats.sent.fetch_add(n, Ordering::Relaxed);
                    stats.last_success_ms.store(crate::base::wall_ms(), Ordering::Relaxed);
                    if let Some(since) = self.failing.take() {
                        info!(endpoint = %self.shared.endpoint.name, failing_seconds = since.elapsed().as_secs(),
                            "remote-write endpoint reachable again; sending what was queued");
                    }
                    return;
                }
                Outcome::Rejected(status, reason) => {
                    self.shared.stats().failed.fetch_add(n, Ordering::Relaxed);
                    self.log_rejection(status, &reason, n);
                    return;
                }
                Outcome::Retry(reason, after) => {
                    self.shared.stats().retried.fetch_add(n, Ordering::Relaxed);
                    if self.failing.is_none() {
                        warn!(endpoint = %self.shared.endpoint.name, reason = %reason,
                            "cannot push samples; retrying with backoff (nothing is lost while the queue has room)");
                        self.failing = Some(Instant::now());
                    }
                    tokio::time::sleep(retries.next_wait(after)).await;
                }
            }
        }
    }

    /// One line per kind of rejection and minute: a receiver that rejects everything does
    /// not flood the log, and each new reason is logged at once.
    fn log_rejection(&mut self, status: u16, reason: &str, samples: u64) {
        let quiet = self
            .last_rejection
            .is_some_and(|(last, at)| last == status && at.elapsed() < REJECTION_LOG_EVERY);
        if quiet {
            self.unlogged_rejections += 1;
            return;
        }
        warn!(
            endpoint = %self.shared.endpoint.name,
            status,
            reason,
            samples,
            rejected_since_last_log = self.unlogged_rejections,
            "the receiver rejected a batch; dropped it (not retried: it would be rejected again)"
        );
        self.last_rejection = Some((status, Instant::now()));
        self.unlogged_rejections = 0;
    }

    async fn attempt(&self, body: &[u8]) -> Outcome {
        let e = &self.shared.endpoint;
        let mut request =
            self.client.post(e.url.clone()).header(reqwest::header::CONTENT_TYPE, "application/x-protobuf");
        if e.protocol == Protocol::RemoteWrite {
            request = request
                .header(reqwest::header::CONTENT_ENCODING, "snappy")
                .header("X-Prometheus-Remote-Write-Version", "0.1.0");
        }
        for (k, v) in &e.headers {
            request = request.header(k, v);
        }
        match &e.auth {
            Auth::None => {}
            Auth::Basic { username, password_file } => match read_secret(password_file) {
                Ok(password) => request = request.basic_auth(username, Some(password)),
                Err(err) => return Outcome::Retry(format!("auth.basic.password_file: {err}"), None),
            },
            Auth::Bearer { token_file } => match read_secret(token_file) {
                Ok(token) => request = request.bearer_auth(token),
                Err(err) => return Outcome::Retry(format!("auth.bearer.token_file: {err}"), None),
            },
            Auth::Sigv4 { region, service, .. } => {
                let provider = self.credentials.as_ref().expect("built for SigV4 endpoints");
                let credentials = match provider.get().await {
                    Ok(c) => c,
                    Err(err) => return Outcome::Retry(format!("cannot get AWS credentials: {err}"), None),
                };
                let mut signed: Vec<(&str, &str)> = match e.protocol {
                    Protocol::RemoteWrite => vec![
                        ("content-encoding", "snappy"),
                        ("content-type", "application/x-protobuf"),
                        ("x-prometheus-remote-write-version", "0.1.0"),
                    ],
                    Protocol::Otlp => vec![("content-type", "application/x-protobuf")],
                };
                signed.extend(e.headers.iter().filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?))));
                let scope = sigv4::Scope { region, service, now_ms: crate::base::wall_ms() };
                for (name, value) in sigv4::sign("POST", &e.url, &signed, body, &credentials, &scope) {
                    request = request.header(name, value);
                }
            }
        }
        let response = match request.body(body.to_vec()).send().await {
            Ok(r) => r,
            Err(err) => {
                let class = outbound::classify_error(&err);
                // reqwest's errors carry the URL, which may carry a secret.
                let reason = outbound::describe(&err.without_url());
                return if class == Class::Retry {
                    Outcome::Retry(reason, None)
                } else {
                    Outcome::Rejected(0, reason)
                };
            }
        };
        let status = response.status();
        let class = outbound::classify_status(status);
        if class == Class::Success {
            return Outcome::Delivered;
        }
        let retry_after = outbound::retry_after(response.headers(), crate::base::wall_ms());
        let reason = format!("HTTP {status}: {}", excerpt(response).await);
        if class == Class::Retry {
            return Outcome::Retry(reason, retry_after);
        }
        if matches!(status.as_u16(), 401 | 403) {
            // Perhaps credentials the receiver no longer takes: the next batch fetches anew.
            if let Some(provider) = &self.credentials {
                provider.invalidate().await;
            }
        }
        Outcome::Rejected(status.as_u16(), reason)
    }
}

/// The start of a response body, on one line (the receiver's reason for refusing).
async fn excerpt(mut response: reqwest::Response) -> String {
    let mut body = Vec::new();
    while body.len() < 512 {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body.truncate(512);
    let text = String::from_utf8_lossy(&body);
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.is_empty() {
        "(no reason given)".into()
    } else {
        text
    }
}

/// A secret from a file, without its trailing newline.
fn read_secret(path: &std::path::Path) -> Result<String, String> {
    let text = crate::base::file::read_bounded_text(path, crate::base::file::SECRET_LIMIT)
        .map_err(|e| format!("{} {e}", path.display()))?;
    let text = text.trim_end_matches(['\r', '\n']).to_owned();
    if text.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(text)
}

/// OTLP's resource attributes: who is sending. `host.id` and `cloud.availability_zone` come
/// from IMDSv2 when it answers within [`IMDS_TIMEOUT`] (the sender's first request waits for
/// it, once; the sampler and the collector never do).
async fn resource(e: &super::Endpoint, env: fn(&str) -> Option<String>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> =
        vec![("service.name".into(), "enawatch".into()), ("service.version".into(), VERSION.into())];
    let host =
        std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
    if !host.is_empty() {
        out.push(("host.name".into(), host));
    }
    if let Some(node) = env("NODE_NAME").filter(|n| !n.is_empty()) {
        out.push(("k8s.node.name".into(), node));
    }
    out.push(("cloud.provider".into(), "aws".into()));
    let mut region = match &e.auth {
        Auth::Sigv4 { region, .. } => Some(region.clone()),
        _ => env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION")),
    };
    match tokio::time::timeout(IMDS_TIMEOUT * 2, crate::aws::imds::identity(env, IMDS_TIMEOUT)).await {
        Ok(Ok(id)) => {
            region.get_or_insert(id.region);
            out.push(("cloud.availability_zone".into(), id.availability_zone));
            out.push(("host.id".into(), id.instance_id));
        }
        Ok(Err(err)) => {
            info!(endpoint = %e.name, reason = %err, "IMDS not reachable: the OTLP resource has no host.id or cloud.availability_zone");
        }
        Err(_) => {
            info!(endpoint = %e.name, "IMDS did not answer in time: the OTLP resource has no host.id or cloud.availability_zone");
        }
    }
    if let Some(region) = region {
        out.push(("cloud.region".into(), region));
    }
    out
}
