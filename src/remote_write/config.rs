//! The `remote_write` section of the configuration: each endpoint as written, and checked
//! into an [`Endpoint`] (URL, authentication, TLS, headers, batching and queue sizes), every
//! error naming the endpoint and the field.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::aws::credentials;
use crate::base::file::{read_bounded, CA_LIMIT, SECRET_LIMIT};
use crate::base::{parse_duration, ConfigError, HumanDuration};

/// One endpoint of the `remote_write` list in the config file.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// The receiver's URL, e.g. AMP's
    /// `https://aps-workspaces.REGION.amazonaws.com/workspaces/WORKSPACE_ID/api/v1/remote_write`;
    /// with `protocol: otlp`, an OTLP/HTTP base URL (`/v1/metrics` is appended unless the
    /// path already ends with it), e.g. CloudWatch's `https://monitoring.REGION.amazonaws.com`.
    pub url: String,
    /// `remote_write` (Prometheus Remote Write 1.0, the default) or `otlp` (OTLP/HTTP
    /// protobuf metrics). Both share the queue, spool, retries and self-metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// A name for logs, metrics (`endpoint` label) and the spool directory: letters, digits,
    /// `.`, `_`, `-`, `:`. Default: the URL's host and port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// How to authenticate: `sigv4`, `basic` or `bearer` (default: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthConfig>,
    /// A PEM file of CA certificates trusted besides the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Extra HTTP headers, e.g. `X-Scope-OrgID` for a multi-tenant Mimir.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// One sample per series per step of this duration (steps aligned on Unix time): the
    /// latest taken in the step. Default: 15s. `1s` with the default interval sends every
    /// sample.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<String>,
    /// Labels added to every series (a series' own label of the same name wins); `${VAR}`
    /// is replaced by the environment variable, e.g. `node: ${NODE_NAME}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub external_labels: BTreeMap<String, String>,
    /// Most samples in one request. Default: 2000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_samples_per_send: Option<u32>,
    /// Longest a sample waits for a fuller batch. Default: 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_send_deadline: Option<String>,
    /// How much data the queue keeps while the receiver is unreachable; beyond it the oldest
    /// is dropped and counted. Default: 2h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_duration: Option<String>,
    /// Keep the queue on disk here too (in a subdirectory named after the endpoint), so a
    /// restarted agent sends what its predecessor could not. Default: memory only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool_dir: Option<PathBuf>,
    /// Timeout of one request. Default: 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// First wait after a failed attempt, doubled at each failure. Default: 500ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_backoff: Option<String>,
    /// Longest wait between two attempts. Default: 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_backoff: Option<String>,
}

/// `auth`: exactly one of its fields.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// AWS Signature Version 4 (Amazon Managed Service for Prometheus).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sigv4: Option<Sigv4Config>,
    /// HTTP basic authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<BasicConfig>,
    /// A bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer: Option<BearerConfig>,
}

/// `auth.sigv4`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Sigv4Config {
    /// The workspace's region. Default: from the URL (`aps-workspaces.REGION.…`), else
    /// `AWS_REGION`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// A role to assume (`sts:AssumeRole`) with the credentials found, e.g. to write to a
    /// workspace of another account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
    /// The service signed for. Default: `monitoring` for a `monitoring.REGION.amazonaws.com`
    /// URL (CloudWatch's OTLP endpoint), else `aps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// `auth.basic`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BasicConfig {
    /// User name.
    pub username: String,
    /// A file holding the password (a mounted Secret), read at each request.
    pub password_file: PathBuf,
}

/// `auth.bearer`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BearerConfig {
    /// A file holding the token, read at each request.
    pub token_file: PathBuf,
}

/// Defaults.
const RESOLUTION: &str = "15s";
const MAX_SAMPLES_PER_SEND: u32 = 2000;
const BATCH_SEND_DEADLINE: &str = "5s";
const QUEUE_DURATION: &str = "2h";
const TIMEOUT: &str = "30s";
const MIN_BACKOFF: &str = "500ms";
const MAX_BACKOFF: &str = "30s";
/// Most steps a queue may hold (a day at 1 s): about 40 MB for a node's series.
const MAX_QUEUE_STEPS: u128 = 86_400;
/// Most endpoints: each has a sender, a queue of up to `queue_duration` and perhaps a spool.
pub const MAX_ENDPOINTS: usize = 8;
/// Most extra headers of an endpoint (each goes with every request).
pub const MAX_HEADERS: usize = 32;
/// Most external labels of an endpoint (each goes with every series).
pub const MAX_EXTERNAL_LABELS: usize = 32;
/// Headers the agent sets itself.
const RESERVED_HEADERS: [&str; 8] = [
    "authorization",
    "content-encoding",
    "content-length",
    "content-type",
    "host",
    "user-agent",
    "x-prometheus-remote-write-version",
    "transfer-encoding",
];

/// What an endpoint's requests carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Prometheus Remote Write 1.0, snappy-compressed.
    RemoteWrite,
    /// OTLP/HTTP protobuf (`ExportMetricsServiceRequest` to `/v1/metrics`).
    Otlp,
}

/// How requests are authenticated.
#[derive(Clone)]
pub(super) enum Auth {
    None,
    Sigv4 {
        region: String,
        service: String,
        role_arn: Option<String>,
        source: credentials::Source,
        sts: reqwest::Url,
    },
    Basic {
        username: String,
        password_file: PathBuf,
    },
    Bearer {
        token_file: PathBuf,
    },
}

/// A checked endpoint.
#[derive(Clone)]
pub struct Endpoint {
    /// Name for logs and metrics.
    pub name: String,
    pub(super) protocol: Protocol,
    pub(super) url: reqwest::Url,
    pub(super) auth: Auth,
    pub(super) ca: Vec<reqwest::Certificate>,
    pub(super) headers: Vec<(reqwest::header::HeaderName, reqwest::header::HeaderValue)>,
    pub(super) resolution: Duration,
    pub(super) external_labels: Vec<(String, String)>,
    pub(super) max_samples_per_send: usize,
    pub(super) batch_send_deadline: Duration,
    pub(super) queue_duration: Duration,
    pub(super) queue_steps: usize,
    pub(super) spool_dir: Option<PathBuf>,
    pub(super) timeout: Duration,
    pub(super) min_backoff: Duration,
    pub(super) max_backoff: Duration,
    /// As written, for the external labels' templates.
    pub(super) given: EndpointConfig,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only the scheme and host: a URL may carry a token in its query.
        write!(f, "Endpoint({}, {}://{}/…)", self.name, self.url.scheme(), self.url.host_str().unwrap_or(""))
    }
}

impl EndpointConfig {
    /// Checks the entry (`interval`: the sampling interval); errors name the entry and the
    /// field, never a secret.
    pub fn resolve(&self, index: usize, interval: Duration) -> Result<Endpoint, ConfigError> {
        self.resolve_with(index, interval, &credentials::process_env)
    }

    #[expect(clippy::too_many_lines, reason = "one field after another")]
    pub(super) fn resolve_with(
        &self,
        index: usize,
        interval: Duration,
        env: credentials::Env<'_>,
    ) -> Result<Endpoint, ConfigError> {
        let bad = |field: &str, value: &str, problem: &str| ConfigError::Invalid {
            field: "remote_write",
            value: format!("[{index}] {field}: {value}"),
            problem: problem.to_owned(),
        };
        let protocol = match self.protocol.as_deref() {
            None | Some("remote_write") => Protocol::RemoteWrite,
            Some("otlp") => Protocol::Otlp,
            Some(other) => return Err(bad("protocol", other, "must be remote_write or otlp")),
        };
        let mut url = reqwest::Url::parse(&self.url)
            .map_err(|e| bad("url", &self.url, &format!("is not a URL ({e})")))?;
        if protocol == Protocol::Otlp && !url.path().ends_with("/v1/metrics") {
            // OTLP/HTTP's convention: the configured URL is the base, the signal's path follows.
            let path = format!("{}/v1/metrics", url.path().trim_end_matches('/'));
            url.set_path(&path);
        }
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
            return Err(bad("url", &self.url, "must be an http:// or https:// URL with a host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            // Shown without the credentials it carries.
            let shown = format!("{}://…@{}{}", url.scheme(), url.host_str().unwrap_or(""), url.path());
            return Err(bad("url", &shown, "carries credentials: use auth.basic with a password_file"));
        }
        let name = match &self.name {
            Some(name) => name.clone(),
            None => url.port().map_or_else(
                || url.host_str().unwrap_or_default().to_owned(),
                |p| format!("{}:{p}", url.host_str().unwrap_or_default()),
            ),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "._-:".contains(c)) {
            return Err(bad("name", &name, "may only have letters, digits, '.', '_', '-' and ':'"));
        }

        let auth = match &self.auth {
            None => Auth::None,
            Some(a) => match (&a.sigv4, &a.basic, &a.bearer) {
                (Some(s), None, None) => {
                    let region = match &s.region {
                        Some(r) => r.clone(),
                        None => region_of(&url)
                            .or_else(|| env("AWS_REGION"))
                            .or_else(|| env("AWS_DEFAULT_REGION"))
                            .ok_or_else(|| {
                                bad(
                                    "auth.sigv4.region",
                                    "",
                                    "is needed: the URL names no region and AWS_REGION is not set",
                                )
                            })?,
                    };
                    let region_ok = region.split('-').count() >= 3
                        && region.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
                    if !region_ok {
                        return Err(bad(
                            "auth.sigv4.region",
                            &region,
                            "is not an AWS region such as us-east-1",
                        ));
                    }
                    if let Some(arn) = &s.role_arn {
                        if !(arn.starts_with("arn:") && arn.contains(":iam::") && arn.contains(":role/")) {
                            return Err(bad(
                                "auth.sigv4.role_arn",
                                arn,
                                "is not a role ARN such as arn:aws:iam::111122223333:role/NAME",
                            ));
                        }
                    }
                    let source = credentials::choose(env)
                        .map_err(|e| bad("auth.sigv4", "credentials", &format!("cannot be found: {e}")))?;
                    let sts_region =
                        env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION")).unwrap_or(region.clone());
                    let sts = credentials::sts_endpoint(env, &sts_region)
                        .map_err(|e| bad("auth.sigv4", "STS endpoint", &e))?;
                    let service = match &s.service {
                        Some(service) => service.clone(),
                        None if url.host_str().is_some_and(|h| h.starts_with("monitoring.")) => {
                            "monitoring".into()
                        }
                        None => "aps".into(),
                    };
                    if service.is_empty() || !service.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                        return Err(bad(
                            "auth.sigv4.service",
                            &service,
                            "is not an AWS service name such as aps",
                        ));
                    }
                    Auth::Sigv4 { region, service, role_arn: s.role_arn.clone(), source, sts }
                }
                (None, Some(b), None) => {
                    if b.username.is_empty() {
                        return Err(bad("auth.basic.username", "", "is empty"));
                    }
                    secret_file("auth.basic.password_file", &b.password_file).map_err(|p| {
                        bad("auth.basic.password_file", &b.password_file.display().to_string(), &p)
                    })?;
                    Auth::Basic { username: b.username.clone(), password_file: b.password_file.clone() }
                }
                (None, None, Some(b)) => {
                    secret_file("auth.bearer.token_file", &b.token_file).map_err(|p| {
                        bad("auth.bearer.token_file", &b.token_file.display().to_string(), &p)
                    })?;
                    Auth::Bearer { token_file: b.token_file.clone() }
                }
                _ => return Err(bad("auth", "sigv4, basic, bearer", "exactly one of them is needed")),
            },
        };

        let ca = match &self.ca_file {
            None => Vec::new(),
            Some(path) => {
                let shown = path.display().to_string();
                let pem = read_bounded(path, CA_LIMIT).map_err(|e| bad("ca_file", &shown, &e.to_string()))?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|e| bad("ca_file", &shown, &format!("is not PEM certificates ({e})")))?;
                if certs.is_empty() {
                    return Err(bad("ca_file", &shown, "holds no certificate"));
                }
                certs
            }
        };

        let too_many = |field: &str, n: usize, limit: usize| {
            bad(field, &format!("{n} entries"), &format!("is more than the limit of {limit}"))
        };
        if self.headers.len() > MAX_HEADERS {
            return Err(too_many("headers", self.headers.len(), MAX_HEADERS));
        }
        if self.external_labels.len() > MAX_EXTERNAL_LABELS {
            return Err(too_many("external_labels", self.external_labels.len(), MAX_EXTERNAL_LABELS));
        }
        let mut headers = Vec::new();
        for (k, v) in &self.headers {
            let lower = k.to_ascii_lowercase();
            if RESERVED_HEADERS.contains(&lower.as_str()) || lower.starts_with("x-amz-") {
                return Err(bad("headers", k, "is set by the agent itself"));
            }
            let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| bad("headers", k, "is not a valid header name"))?;
            let value = reqwest::header::HeaderValue::from_str(v)
                .map_err(|_| bad(&format!("headers.{k}"), v, "is not a valid header value"))?;
            headers.push((name, value));
        }

        let duration = |field: &str, value: Option<&String>, default: &str| {
            let s = value.map_or(default, String::as_str);
            parse_duration(s).map_err(|p| bad(field, s, &p))
        };
        let resolution = duration("resolution", self.resolution.as_ref(), RESOLUTION)?;
        if resolution < crate::sampler::MIN_INTERVAL {
            return Err(bad("resolution", self.resolution.as_deref().unwrap_or_default(), "is below 100ms"));
        }
        let batch_send_deadline =
            duration("batch_send_deadline", self.batch_send_deadline.as_ref(), BATCH_SEND_DEADLINE)?;
        let queue_duration = duration("queue_duration", self.queue_duration.as_ref(), QUEUE_DURATION)?;
        let timeout = duration("timeout", self.timeout.as_ref(), TIMEOUT)?;
        if timeout.is_zero() {
            return Err(bad("timeout", self.timeout.as_deref().unwrap_or_default(), "must be positive"));
        }
        let min_backoff = duration("min_backoff", self.min_backoff.as_ref(), MIN_BACKOFF)?;
        let max_backoff = duration("max_backoff", self.max_backoff.as_ref(), MAX_BACKOFF)?;
        if min_backoff.is_zero() || max_backoff < min_backoff {
            return Err(bad(
                "max_backoff",
                &HumanDuration(max_backoff).to_string(),
                &format!(
                    "must be at least min_backoff ({}), which must be positive",
                    HumanDuration(min_backoff)
                ),
            ));
        }
        // Steps arrive once per resolution, or once per interval when that is longer.
        let step = resolution.max(interval);
        if queue_duration < step {
            return Err(bad(
                "queue_duration",
                &HumanDuration(queue_duration).to_string(),
                "is shorter than one step (the resolution or the interval)",
            ));
        }
        let steps = queue_duration.as_millis() / step.as_millis().max(1);
        if steps > MAX_QUEUE_STEPS {
            return Err(bad(
                "queue_duration",
                &HumanDuration(queue_duration).to_string(),
                &format!("holds more than {MAX_QUEUE_STEPS} steps at this resolution"),
            ));
        }
        let max_samples_per_send = self.max_samples_per_send.unwrap_or(MAX_SAMPLES_PER_SEND);
        if !(1..=100_000).contains(&max_samples_per_send) {
            return Err(bad(
                "max_samples_per_send",
                &max_samples_per_send.to_string(),
                "is not between 1 and 100000",
            ));
        }

        if let Some(dir) = &self.spool_dir {
            let shown = dir.display().to_string();
            match std::fs::metadata(dir) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(bad("spool_dir", &shown, "is not a directory")),
                Err(_) => {
                    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
                    if !parent.is_dir() {
                        return Err(bad("spool_dir", &shown, "does not exist, nor does its parent"));
                    }
                }
            }
        }

        let mut external_labels = Vec::new();
        for (k, v) in &self.external_labels {
            let valid = k.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !k.starts_with("__");
            if !valid {
                return Err(bad(
                    "external_labels",
                    k,
                    "is not a label name ([a-zA-Z_][a-zA-Z0-9_]*, no leading __)",
                ));
            }
            let value = expand(v, env).map_err(|p| bad(&format!("external_labels.{k}"), v, &p))?;
            if value.is_empty() {
                return Err(bad(&format!("external_labels.{k}"), v, "is empty"));
            }
            external_labels.push((k.clone(), value));
        }

        Ok(Endpoint {
            name,
            protocol,
            url,
            auth,
            ca,
            headers,
            resolution,
            external_labels,
            max_samples_per_send: max_samples_per_send as usize,
            batch_send_deadline,
            queue_duration,
            queue_steps: usize::try_from(steps).unwrap_or(usize::MAX),
            spool_dir: self.spool_dir.clone(),
            timeout,
            min_backoff,
            max_backoff,
            given: self.clone(),
        })
    }
}

/// The region of an AMP URL: the label after `aps-workspaces…` in the host.
fn region_of(url: &reqwest::Url) -> Option<String> {
    let labels: Vec<&str> = url.host_str()?.split('.').collect();
    let at = labels.iter().position(|l| l.starts_with("aps-workspaces") || *l == "monitoring")?;
    labels.get(at + 1).map(|r| (*r).to_owned())
}

/// Checks a secret file without reading it into an error.
fn secret_file(_field: &str, path: &Path) -> Result<(), String> {
    match read_bounded(path, SECRET_LIMIT) {
        Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Err("is empty".into()),
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// Replaces `${VAR}` by the variable's value (`$$` is a literal `$`).
pub(super) fn expand(template: &str, env: credentials::Env<'_>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        if let Some(r) = rest.strip_prefix("$$") {
            out.push('$');
            rest = r;
        } else if let Some(r) = rest.strip_prefix("${") {
            let end = r.find('}').ok_or("has an unclosed ${")?;
            let var = &r[..end];
            out.push_str(&env(var).ok_or_else(|| format!("uses {var}, which is not set"))?);
            rest = &r[end + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

impl Endpoint {
    /// The entry with every default spelled out, for `--check-config`.
    pub fn effective(&self) -> EndpointConfig {
        let d = |v: Duration| Some(HumanDuration(v).to_string());
        let auth = match &self.auth {
            Auth::None => None,
            Auth::Sigv4 { region, service, role_arn, .. } => Some(AuthConfig {
                sigv4: Some(Sigv4Config {
                    region: Some(region.clone()),
                    role_arn: role_arn.clone(),
                    // Spelled out only where it is not the Remote Write default.
                    service: (service != "aps").then(|| service.clone()),
                }),
                ..AuthConfig::default()
            }),
            Auth::Basic { .. } | Auth::Bearer { .. } => self.given.auth.clone(),
        };
        EndpointConfig {
            url: self.given.url.clone(),
            protocol: (self.protocol == Protocol::Otlp).then(|| "otlp".to_owned()),
            name: Some(self.name.clone()),
            auth,
            ca_file: self.given.ca_file.clone(),
            headers: self.given.headers.clone(),
            resolution: d(self.resolution),
            external_labels: self.given.external_labels.clone(),
            max_samples_per_send: u32::try_from(self.max_samples_per_send).ok(),
            batch_send_deadline: d(self.batch_send_deadline),
            queue_duration: d(self.queue_duration),
            spool_dir: self.spool_dir.clone(),
            timeout: d(self.timeout),
            min_backoff: d(self.min_backoff),
            max_backoff: d(self.max_backoff),
        }
    }

    /// How requests are authenticated, for the start-up log (no secret).
    pub(super) fn describe_auth(&self) -> String {
        match &self.auth {
            Auth::None => "none".into(),
            Auth::Basic { username, .. } => format!("basic, user {username}"),
            Auth::Bearer { .. } => "bearer token".into(),
            Auth::Sigv4 { region, service, source, role_arn, .. } => {
                let assume =
                    role_arn.as_ref().map(|r| format!(", then sts:AssumeRole {r}")).unwrap_or_default();
                format!("SigV4 ({service}, {region}), credentials from {}{assume}", source.describe())
            }
        }
    }
}

/// Checks every entry; names must be unique.
pub fn resolve_all(configs: &[EndpointConfig], interval: Duration) -> Result<Vec<Endpoint>, ConfigError> {
    if configs.len() > MAX_ENDPOINTS {
        return Err(ConfigError::too_long("remote_write", configs.len(), "endpoints", MAX_ENDPOINTS));
    }
    let endpoints =
        configs.iter().enumerate().map(|(i, c)| c.resolve(i, interval)).collect::<Result<Vec<_>, _>>()?;
    for (i, e) in endpoints.iter().enumerate() {
        if endpoints[..i].iter().any(|o| o.name == e.name) {
            return Err(ConfigError::Invalid {
                field: "remote_write",
                value: format!("[{i}] name: {}", e.name),
                problem: "is the name of another endpoint too: give each a name".into(),
            });
        }
    }
    Ok(endpoints)
}
