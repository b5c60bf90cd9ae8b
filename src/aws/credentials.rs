//! AWS credentials for SigV4, found the way the AWS SDKs find them, in this order:
//!
//! 1. environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`);
//! 2. EKS Pod Identity, or any container credentials endpoint
//!    (`AWS_CONTAINER_CREDENTIALS_FULL_URI` or `…_RELATIVE_URI`, with the token in
//!    `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` or `…_TOKEN`);
//! 3. IRSA: the web identity token in `AWS_WEB_IDENTITY_TOKEN_FILE` exchanged for the role
//!    `AWS_ROLE_ARN` with STS `AssumeRoleWithWebIdentity`;
//! 4. the instance role, through IMDSv2 (unless `AWS_EC2_METADATA_DISABLED=true`).
//!
//! The source is chosen once, from what the environment configures; a configured source that
//! fails is an error (retried later), never a reason to try the next one. With `role_arn` in
//! the configuration, those credentials then call STS `AssumeRole` for that role.
//! Temporary credentials are refreshed [`REFRESH_BEFORE`] before they expire.
//!
//! Every endpoint can be overridden with the SDKs' own variables, which is how the tests
//! point them at local servers: `AWS_ENDPOINT_URL_STS`, `AWS_EC2_METADATA_SERVICE_ENDPOINT`,
//! and the container URI itself. Secrets (keys, session and identity tokens) never appear in
//! logs, errors or `Debug` output.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tracing::{info, warn};

use super::{sigv4, Credentials};
use crate::base::file::{read_bounded_text, SECRET_LIMIT};
use crate::base::time::parse_rfc3339;
use crate::outbound::{self, ClientError, ClientOptions};

/// Temporary credentials are replaced this long before they expire (what the AWS SDKs do).
pub(crate) const REFRESH_BEFORE: Duration = Duration::from_secs(300);
/// After a failed refresh, the next attempt waits at least this long.
const RETRY_REFRESH: Duration = Duration::from_secs(10);

/// Where the base credentials come from.
#[derive(Clone)]
pub enum Source {
    /// Static credentials from the environment.
    Environment(Credentials),
    /// A container credentials endpoint (EKS Pod Identity, ECS).
    Container {
        /// The endpoint.
        url: reqwest::Url,
        /// A file holding the authorization token, re-read at each fetch (it rotates).
        token_file: Option<PathBuf>,
        /// The token itself.
        token: Option<String>,
    },
    /// IRSA: a web identity token exchanged with STS.
    WebIdentity {
        /// The projected service-account token.
        token_file: PathBuf,
        /// The role to assume.
        role_arn: String,
        /// `RoleSessionName`.
        session_name: String,
    },
    /// The instance profile, through IMDSv2.
    Imds {
        /// Base URL of the instance metadata service.
        endpoint: reqwest::Url,
    },
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Source {
    /// What the source is, for logs (no secrets).
    pub fn describe(&self) -> String {
        match self {
            Self::Environment(c) => format!("environment variables (access key {})", c.access_key_id),
            Self::Container { url, .. } => {
                format!("the container credentials endpoint {url} (EKS Pod Identity)")
            }
            Self::WebIdentity { role_arn, .. } => format!("IRSA: web identity token for {role_arn}"),
            Self::Imds { endpoint } => format!("the instance role, through IMDSv2 at {endpoint}"),
        }
    }
}

/// A variable of the environment, non-empty.
pub(crate) type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment, for [`choose`].
pub(crate) fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Hosts a container credentials endpoint may have over plain HTTP (the SDKs' rule): the
/// ECS and EKS Pod Identity agents' link-local addresses, and loopback.
fn allowed_container_host(url: &reqwest::Url) -> bool {
    if url.scheme() == "https" {
        return true;
    }
    let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => {
            ip.is_loopback() || ip.octets() == [169, 254, 170, 2] || ip.octets() == [169, 254, 170, 23]
        }
        Ok(std::net::IpAddr::V6(ip)) => {
            ip.is_loopback() || ip.segments() == [0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23]
        }
        Err(_) => host == "localhost",
    }
}

/// Chooses the source the environment configures, checking what can be checked without the
/// network (files exist, URLs parse). Errors name the variable.
pub(crate) fn choose(env: Env<'_>) -> Result<Source, String> {
    let (key, secret) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY"));
    match (key, secret) {
        (Some(access_key_id), Some(secret_access_key)) => {
            return Ok(Source::Environment(Credentials {
                access_key_id,
                secret_access_key,
                session_token: env("AWS_SESSION_TOKEN"),
                expires_ms: None,
            }))
        }
        (Some(_), None) => return Err("AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not".into()),
        (None, Some(_)) => return Err("AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not".into()),
        (None, None) => {}
    }
    let container =
        match (env("AWS_CONTAINER_CREDENTIALS_FULL_URI"), env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")) {
            (Some(full), _) => Some(("AWS_CONTAINER_CREDENTIALS_FULL_URI", full)),
            (None, Some(relative)) => {
                Some(("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", format!("http://169.254.170.2{relative}")))
            }
            (None, None) => None,
        };
    if let Some((var, uri)) = container {
        let url = reqwest::Url::parse(&uri).map_err(|e| format!("{var}: {uri:?} is not a URL ({e})"))?;
        if !allowed_container_host(&url) {
            return Err(format!(
                "{var}: {uri:?} must be https, or http to loopback or the ECS/EKS agent addresses"
            ));
        }
        let token_file = env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE").map(PathBuf::from);
        if let Some(path) = &token_file {
            readable("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", path)?;
        }
        return Ok(Source::Container { url, token_file, token: env("AWS_CONTAINER_AUTHORIZATION_TOKEN") });
    }
    if let Some(file) = env("AWS_WEB_IDENTITY_TOKEN_FILE") {
        let role_arn =
            env("AWS_ROLE_ARN").ok_or("AWS_WEB_IDENTITY_TOKEN_FILE is set but AWS_ROLE_ARN is not")?;
        let token_file = PathBuf::from(file);
        readable("AWS_WEB_IDENTITY_TOKEN_FILE", &token_file)?;
        let session_name = env("AWS_ROLE_SESSION_NAME").unwrap_or_else(default_session_name);
        return Ok(Source::WebIdentity { token_file, role_arn, session_name });
    }
    match imds_endpoint(env)? {
        Some(endpoint) => Ok(Source::Imds { endpoint }),
        None => Err("no AWS credentials: none in the environment, no container endpoint, no web \
                     identity token, and AWS_EC2_METADATA_DISABLED=true"
            .into()),
    }
}

/// Where IMDS is (`AWS_EC2_METADATA_SERVICE_ENDPOINT`, tests point it at a stand-in), or
/// `None` when `AWS_EC2_METADATA_DISABLED=true`.
pub(super) fn imds_endpoint(env: &dyn Fn(&str) -> Option<String>) -> Result<Option<reqwest::Url>, String> {
    if env("AWS_EC2_METADATA_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    let endpoint =
        env("AWS_EC2_METADATA_SERVICE_ENDPOINT").unwrap_or_else(|| "http://169.254.169.254".into());
    reqwest::Url::parse(&endpoint)
        .map(Some)
        .map_err(|e| format!("AWS_EC2_METADATA_SERVICE_ENDPOINT: {endpoint:?} is not a URL ({e})"))
}

/// An IMDSv2 session: the token, and reads of paths with it, each answer read bounded.
pub(super) struct ImdsSession<'a> {
    client: &'a reqwest::Client,
    endpoint: &'a reqwest::Url,
    token: String,
}

impl<'a> ImdsSession<'a> {
    /// Asks `endpoint` for a session token valid `ttl_seconds`.
    pub(super) async fn open(
        client: &'a reqwest::Client,
        endpoint: &'a reqwest::Url,
        ttl_seconds: u32,
    ) -> Result<Self, String> {
        let request = client
            .put(imds_url(endpoint, "/latest/api/token")?)
            .header("x-aws-ec2-metadata-token-ttl-seconds", ttl_seconds.to_string());
        let token = text(request.send().await, "the token request").await?.trim().to_owned();
        Ok(Self { client, endpoint, token })
    }

    /// The answer at `path`; `what` names the request in errors.
    pub(super) async fn get(&self, path: &str, what: &str) -> Result<String, String> {
        let request =
            self.client.get(imds_url(self.endpoint, path)?).header("x-aws-ec2-metadata-token", &self.token);
        text(request.send().await, what).await
    }
}

fn imds_url(endpoint: &reqwest::Url, path: &str) -> Result<reqwest::Url, String> {
    endpoint.join(path).map_err(|e| format!("{endpoint}{path} is not a URL: {e}"))
}

/// Start-up's check of a token file: read as every fetch will read it (a FIFO is refused
/// here, where it would otherwise block a fetch forever).
fn readable(var: &str, path: &std::path::Path) -> Result<(), String> {
    read_bounded_text(path, SECRET_LIMIT).map(drop).map_err(|e| format!("{var}: {} {e}", path.display()))
}

/// `enawatch-<node>`, within STS's 64 characters of `[\w+=,.@-]`.
fn default_session_name() -> String {
    let node: String = crate::base::node_name()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "+=,.@-_".contains(c) { c } else { '-' })
        .collect();
    let mut name = format!("enawatch-{node}");
    name.truncate(64);
    name
}

/// The STS endpoint: `AWS_ENDPOINT_URL_STS`, or the regional one.
pub(crate) fn sts_endpoint(env: Env<'_>, region: &str) -> Result<reqwest::Url, String> {
    let (var, url) = if let Some(url) = env("AWS_ENDPOINT_URL_STS") {
        ("AWS_ENDPOINT_URL_STS", url)
    } else {
        let suffix = if region.starts_with("cn-") { "amazonaws.com.cn" } else { "amazonaws.com" };
        ("the STS endpoint", format!("https://sts.{region}.{suffix}/"))
    };
    reqwest::Url::parse(&url).map_err(|e| format!("{var}: {url:?} is not a URL ({e})"))
}

/// Fetches, caches and refreshes credentials from one [`Source`].
pub(crate) struct Provider {
    source: Source,
    /// `sts:AssumeRole` on top of the source's credentials.
    assume_role: Option<String>,
    sts: reqwest::Url,
    region: String,
    client: reqwest::Client,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    current: Option<Credentials>,
    /// When a refresh last failed (the next waits [`RETRY_REFRESH`]).
    last_failure: Option<Instant>,
}

impl fmt::Debug for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Provider({}, assume_role: {:?})", self.source.describe(), self.assume_role)
    }
}

impl Provider {
    /// A provider for `source`; `region` signs STS calls.
    pub fn new(
        source: Source,
        assume_role: Option<String>,
        sts: reqwest::Url,
        region: String,
    ) -> Result<Self, ClientError> {
        // Short timeouts: IMDS answers in milliseconds or not at all (off EC2).
        let client = ClientOptions::new()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .no_redirects()
            .build()?;
        Ok(Self { source, assume_role, sts, region, client, state: Mutex::new(State::default()) })
    }

    /// What the credentials come from, for the start-up log.
    pub fn describe(&self) -> String {
        match &self.assume_role {
            Some(role) => format!("{}, then sts:AssumeRole {role}", self.source.describe()),
            None => self.source.describe(),
        }
    }

    /// Credentials valid for at least a while; fetched or refreshed when needed.
    pub async fn get(&self) -> Result<Credentials, String> {
        let now = crate::base::wall_ms();
        let mut state = self.state.lock().await;
        let remaining = |c: &Credentials| c.expires_ms.map_or(i64::MAX, |e| e - now);
        let refresh_ms = i64::try_from(REFRESH_BEFORE.as_millis()).unwrap_or(i64::MAX);
        if let Some(c) = &state.current {
            let recently_failed = state.last_failure.is_some_and(|t| t.elapsed() < RETRY_REFRESH);
            if remaining(c) > refresh_ms || (recently_failed && remaining(c) > 0) {
                return Ok(c.clone());
            }
        }
        match self.fetch(now).await {
            Ok(c) => {
                if state.last_failure.take().is_some() {
                    info!(source = %self.describe(), "AWS credentials obtained again");
                }
                state.current = Some(c.clone());
                Ok(c)
            }
            Err(err) => {
                let first = state.last_failure.is_none();
                state.last_failure = Some(Instant::now());
                match state.current.clone().filter(|c| remaining(c) > 0) {
                    Some(c) => {
                        if first {
                            warn!(source = %self.describe(), error = %err,
                                "cannot refresh AWS credentials; using the current ones until they expire");
                        }
                        Ok(c)
                    }
                    None => Err(err),
                }
            }
        }
    }

    /// Forgets the cached credentials (the receiver refused them).
    pub(crate) async fn invalidate(&self) {
        self.state.lock().await.current = None;
    }

    async fn fetch(&self, now_ms: i64) -> Result<Credentials, String> {
        let base = match &self.source {
            Source::Environment(c) => c.clone(),
            Source::Container { url, token_file, token } => {
                self.container(url, token_file.as_ref(), token.as_deref()).await?
            }
            Source::WebIdentity { token_file, role_arn, session_name } => {
                let token = read_bounded_text(token_file, SECRET_LIMIT)
                    .map_err(|e| format!("AWS_WEB_IDENTITY_TOKEN_FILE {} {e}", token_file.display()))?;
                let form = [
                    ("Action", "AssumeRoleWithWebIdentity"),
                    ("Version", "2011-06-15"),
                    ("RoleArn", role_arn),
                    ("RoleSessionName", session_name),
                    ("WebIdentityToken", token.trim()),
                ];
                self.sts(&form, None, now_ms).await.map_err(|e| format!("AssumeRoleWithWebIdentity: {e}"))?
            }
            Source::Imds { endpoint } => self.imds(endpoint).await.map_err(|e| format!("IMDSv2: {e}"))?,
        };
        match &self.assume_role {
            None => Ok(base),
            Some(role_arn) => {
                let session_name = default_session_name();
                let form = [
                    ("Action", "AssumeRole"),
                    ("Version", "2011-06-15"),
                    ("RoleArn", role_arn.as_str()),
                    ("RoleSessionName", session_name.as_str()),
                ];
                self.sts(&form, Some(&base), now_ms).await.map_err(|e| format!("AssumeRole {role_arn}: {e}"))
            }
        }
    }

    async fn container(
        &self,
        url: &reqwest::Url,
        token_file: Option<&PathBuf>,
        token: Option<&str>,
    ) -> Result<Credentials, String> {
        let mut request = self.client.get(url.clone());
        let token = match token_file {
            Some(path) => Some(
                read_bounded_text(path, SECRET_LIMIT)
                    .map_err(|e| format!("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE {} {e}", path.display()))?
                    .trim()
                    .to_owned(),
            ),
            None => token.map(ToOwned::to_owned),
        };
        if let Some(token) = token {
            request = request.header(reqwest::header::AUTHORIZATION, token);
        }
        let body = text(request.send().await, "the container credentials endpoint").await?;
        from_json(&body).map_err(|e| format!("the container credentials endpoint: {e}"))
    }

    async fn imds(&self, endpoint: &reqwest::Url) -> Result<Credentials, String> {
        let session = ImdsSession::open(&self.client, endpoint, 21_600).await?;
        let base = "/latest/meta-data/iam/security-credentials/";
        let roles = session.get(base, "the role request (does the instance have a role?)").await?;
        let role = roles
            .lines()
            .next()
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .ok_or("the instance has no role")?;
        let body = session.get(&format!("{base}{role}"), "the credentials request").await?;
        from_json(&body)
    }

    /// An STS query API call (form POST); signed with `signer` when given.
    async fn sts(
        &self,
        form: &[(&str, &str)],
        signer: Option<&Credentials>,
        now_ms: i64,
    ) -> Result<Credentials, String> {
        let body: Vec<String> =
            form.iter().map(|(k, v)| format!("{k}={}", sigv4::uri_encode(v, false))).collect();
        let body = body.join("&");
        let content_type = "application/x-www-form-urlencoded; charset=utf-8";
        let mut request = self
            .client
            .post(self.sts.clone())
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .header(reqwest::header::ACCEPT, "text/xml");
        if let Some(credentials) = signer {
            let scope = sigv4::Scope { region: &self.region, service: "sts", now_ms };
            let headers = [("content-type", content_type)];
            for (name, value) in
                sigv4::sign("POST", &self.sts, &headers, body.as_bytes(), credentials, &scope)
            {
                request = request.header(name, value);
            }
        }
        let xml = match request.body(body).send().await {
            Ok(resp) if resp.status().is_success() => utf8(outbound::read_body(resp, MAX_ANSWER).await?)?,
            Ok(resp) => {
                let status = resp.status();
                let xml = outbound::read_body(resp, MAX_ANSWER).await.and_then(utf8).unwrap_or_default();
                let code = xml_value(&xml, "Code").unwrap_or_default();
                let message = xml_value(&xml, "Message").unwrap_or_default();
                return Err(format!("STS answered HTTP {status}: {code} {message}"));
            }
            Err(e) => return Err(e.without_url().to_string()),
        };
        let field = |name: &str| xml_value(&xml, name).ok_or_else(|| format!("the STS answer has no {name}"));
        Ok(Credentials {
            access_key_id: field("AccessKeyId")?,
            secret_access_key: field("SecretAccessKey")?,
            session_token: Some(field("SessionToken")?),
            expires_ms: Some(parse_rfc3339(&field("Expiration")?)?),
        })
    }
}

/// The body of a successful response, or why not.
async fn text(response: Result<reqwest::Response, reqwest::Error>, what: &str) -> Result<String, String> {
    let response = response.map_err(|e| format!("{what}: {}", e.without_url()))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("{what}: HTTP {status}"));
    }
    outbound::read_body(response, MAX_ANSWER).await.and_then(utf8).map_err(|e| format!("{what}: {e}"))
}

/// Most bytes of a credential answer (STS XML, IMDS or container JSON: about 2 KiB).
const MAX_ANSWER: usize = 64 << 10;

fn utf8(body: Vec<u8>) -> Result<String, String> {
    String::from_utf8(body).map_err(|_| "an answer that is not UTF-8 text".to_owned())
}

/// Credentials from the JSON of IMDS and container endpoints.
pub(crate) fn from_json(body: &str) -> Result<Credentials, String> {
    let v: serde_json::Value = serde_json::from_str(body).map_err(|e| format!("not JSON ({e})"))?;
    if let Some(code) = v.get("Code").and_then(|c| c.as_str()).filter(|c| *c != "Success") {
        let message = v.get("Message").and_then(|m| m.as_str()).unwrap_or_default();
        return Err(format!("{code}: {message}"));
    }
    let field = |name: &str| {
        v.get(name)
            .and_then(|x| x.as_str())
            .map(ToOwned::to_owned)
            .ok_or_else(|| format!("no {name} in the answer"))
    };
    Ok(Credentials {
        access_key_id: field("AccessKeyId")?,
        secret_access_key: field("SecretAccessKey")?,
        session_token: field("Token").ok(),
        expires_ms: field("Expiration").ok().map(|e| parse_rfc3339(&e)).transpose()?,
    })
}

/// The text of the first `<name>…</name>` element, unescaped.
pub(crate) fn xml_value(xml: &str, name: &str) -> Option<String> {
    let start = xml.find(&format!("<{name}>"))? + name.len() + 2;
    let end = start + xml[start..].find(&format!("</{name}>"))?;
    Some(
        xml[start..end]
            .trim()
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> =
            vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn the_source_is_chosen_in_the_documented_order() {
        let dir = std::env::temp_dir().join(format!("enawatch-creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token = dir.join("token");
        std::fs::write(&token, "t").unwrap();
        let token = token.to_str().unwrap();
        let all = [
            ("AWS_ACCESS_KEY_ID", "AKIA1"),
            ("AWS_SECRET_ACCESS_KEY", "s3cr3t"),
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://169.254.170.23/v1/credentials"),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", token),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", token),
            ("AWS_ROLE_ARN", "arn:aws:iam::111122223333:role/r"),
        ];
        assert!(matches!(choose(&env(&all)), Ok(Source::Environment(_))));
        assert!(matches!(choose(&env(&all[2..])), Ok(Source::Container { .. })));
        assert!(matches!(choose(&env(&all[4..])), Ok(Source::WebIdentity { .. })));
        let Ok(Source::Imds { endpoint }) = choose(&env(&[])) else { panic!("IMDS last") };
        assert_eq!(endpoint.as_str(), "http://169.254.169.254/");

        let err = |vars: &[(&str, &str)]| choose(&env(vars)).unwrap_err();
        assert!(err(&all[..1]).contains("AWS_SECRET_ACCESS_KEY is not"));
        assert!(
            err(&[("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://10.0.0.1/creds")]).contains("must be https")
        );
        assert!(err(&[("AWS_WEB_IDENTITY_TOKEN_FILE", "/nonexistent/t"), ("AWS_ROLE_ARN", "arn")])
            .contains("AWS_WEB_IDENTITY_TOKEN_FILE: /nonexistent/t cannot be read"));
        assert!(err(&[("AWS_EC2_METADATA_DISABLED", "true")]).contains("no AWS credentials"));
        // Regression (issue 13): token files were read whole and whatever they were, so a
        // FIFO blocked the credential fetch forever; now start-up refuses it, naming it.
        let fifo = dir.join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let fifo = fifo.to_str().unwrap();
        let e = err(&[("AWS_WEB_IDENTITY_TOKEN_FILE", fifo), ("AWS_ROLE_ARN", "arn")]);
        assert!(e.contains(&format!("AWS_WEB_IDENTITY_TOKEN_FILE: {fifo} is a FIFO")), "{e}");
        let e = err(&[
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", "https://x/"),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", fifo),
        ]);
        assert!(e.contains("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE") && e.contains("is a FIFO"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
        let chosen = choose(&env(&all)).unwrap();
        assert!(!format!("{chosen:?}").contains("s3cr3t"), "no secret in Debug output");
    }

    #[test]
    fn sts_and_json_answers() {
        let xml = "<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
            <AssumeRoleWithWebIdentityResult><Credentials><SessionToken>tok&amp;en</SessionToken>\
            <SecretAccessKey>sec</SecretAccessKey><Expiration>2026-11-01T12:00:00Z</Expiration>\
            <AccessKeyId>ASIA1</AccessKeyId></Credentials></AssumeRoleWithWebIdentityResult>\
            </AssumeRoleWithWebIdentityResponse>";
        assert_eq!(xml_value(xml, "SessionToken").as_deref(), Some("tok&en"));
        assert_eq!(xml_value(xml, "Missing"), None);
        let c = from_json(
            r#"{"Code":"Success","AccessKeyId":"ASIA2","SecretAccessKey":"s3cr3t","Token":"t0k3n","Expiration":"2026-11-01T12:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(c.expires_ms, Some(parse_rfc3339("2026-11-01T12:00:00.000+00:00").unwrap()));
        assert!(from_json(r#"{"Code":"Failure","Message":"no"}"#).unwrap_err().contains("Failure: no"));
        assert!(!format!("{c:?}").contains("s3cr3t") && !format!("{c:?}").contains("t0k3n"));
    }

    #[test]
    fn rfc3339_times() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_rfc3339("2015-08-30T12:36:00Z"), Ok(1_440_938_160_000));
        assert_eq!(parse_rfc3339("2015-08-30T12:36:00.5Z"), Ok(1_440_938_160_500));
        for bad in ["", "2015-08-30", "2015-08-30T12:36:00+02:00", "2015-13-30T12:36:00Z"] {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
    }
}
