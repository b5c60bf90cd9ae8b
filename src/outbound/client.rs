//! The client builder: the one place a `reqwest::Client` is made, where rustls gets its
//! crypto provider, and where host names are looked up ([`Lookup`]).

use std::sync::Once;
use std::time::Duration;

use reqwest::{Certificate, Client};

/// How to build a client. Everything is off unless asked for, except redirects, which are
/// followed (up to ten) as reqwest does by default.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    timeout: Option<Duration>,
    connect_timeout: Option<Duration>,
    user_agent: Option<String>,
    follow_redirects: bool,
    roots: Vec<Certificate>,
    root_pem: Option<Vec<u8>>,
}

/// A client that cannot be built: which part failed, and why.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The extra root CA is not readable PEM certificates.
    #[error("the extra root CA is not PEM certificates: {0}")]
    RootCa(String),
    /// reqwest refused the options (for example, TLS could not be set up).
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientOptions {
    /// No timeouts, no user agent, redirects followed, the platform's roots only.
    pub fn new() -> Self {
        Self {
            timeout: None,
            connect_timeout: None,
            user_agent: None,
            follow_redirects: true,
            roots: Vec::new(),
            root_pem: None,
        }
    }

    /// The whole request: connecting, sending, and reading the response.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Connecting alone (a host that does not answer fails fast).
    #[must_use]
    pub(crate) fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// The `User-Agent` header (none by default).
    #[must_use]
    pub(crate) fn user_agent(mut self, agent: impl Into<String>) -> Self {
        self.user_agent = Some(agent.into());
        self
    }

    /// Never follow a redirect: for requests whose body or signature a redirect would break,
    /// or whose URL must be the real one.
    #[must_use]
    pub(crate) fn no_redirects(mut self) -> Self {
        self.follow_redirects = false;
        self
    }

    /// Trusts these roots as well as the platform's.
    #[must_use]
    pub(crate) fn extra_roots(mut self, roots: impl IntoIterator<Item = Certificate>) -> Self {
        self.roots.extend(roots);
        self
    }

    /// Trusts the certificates of this PEM bundle as well as the platform's (read when the
    /// client is built, so a bad bundle is a [`ClientError::RootCa`]).
    #[must_use]
    pub(crate) fn extra_root_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.root_pem = Some(pem.into());
        self
    }

    /// Builds the client.
    pub fn build(self) -> Result<Client, ClientError> {
        install_crypto_provider();
        #[expect(clippy::disallowed_methods, reason = "the one place an HTTP client is built")]
        let mut builder = Client::builder();
        // The lookup runs inside the connect timeout (or the request's), which would end a
        // lookup that gets no answer with its own anonymous "operation timed out"; the
        // lookup's deadline comes first, so the error says that it was the name lookup.
        let budget = self.connect_timeout.or(self.timeout);
        builder = builder.dns_resolver(Lookup { deadline: budget.map(lookup_deadline) });
        if let Some(timeout) = self.timeout {
            builder = builder.timeout(timeout);
        }
        if let Some(timeout) = self.connect_timeout {
            builder = builder.connect_timeout(timeout);
        }
        if let Some(agent) = self.user_agent {
            builder = builder.user_agent(agent);
        }
        if !self.follow_redirects {
            builder = builder.redirect(reqwest::redirect::Policy::none());
        }
        let mut roots = self.roots;
        if let Some(pem) = &self.root_pem {
            roots.extend(Certificate::from_pem_bundle(pem).map_err(|e| ClientError::RootCa(describe(&e)))?);
        }
        if !roots.is_empty() {
            builder = builder.tls_certs_merge(roots);
        }
        builder.build().map_err(|e| ClientError::Build(describe(&e)))
    }
}

// === name lookup ===

/// How much earlier than the connect timeout a lookup that gets no answer gives up: enough
/// for its error, not the timeout's, to be the one that comes out.
const LOOKUP_MARGIN: Duration = Duration::from_millis(250);

/// The lookup's share of a connect timeout of `budget`.
fn lookup_deadline(budget: Duration) -> Duration {
    budget.saturating_sub(LOOKUP_MARGIN).max(budget / 2)
}

/// Host name lookup with the system's resolver (`getaddrinfo`, as reqwest's default) and
/// errors that name the lookup and the host.
struct Lookup {
    deadline: Option<Duration>,
}

/// A failed lookup: which host, and whether it failed or got no answer in time.
#[derive(Debug, thiserror::Error)]
enum LookupError {
    /// The resolver answered that it cannot resolve the name.
    #[error("name lookup of {host} failed: {source}")]
    Failed {
        /// The host name.
        host: String,
        /// The resolver's words.
        source: std::io::Error,
    },
    /// No answer before the deadline (the DNS server does not answer, or is unreachable).
    #[error("name lookup of {host} got no answer within {}ms (is the DNS server reachable?)", after.as_millis())]
    NoAnswer {
        /// The host name.
        host: String,
        /// How long it waited.
        after: Duration,
    },
}

impl reqwest::dns::Resolve for Lookup {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        let deadline = self.deadline;
        Box::pin(async move {
            // The port is the URL's; reqwest puts it in after the lookup.
            let lookup = tokio::net::lookup_host((host.clone(), 0));
            let found = match deadline {
                Some(after) => tokio::time::timeout(after, lookup)
                    .await
                    .map_err(|_| LookupError::NoAnswer { host: host.clone(), after })?,
                None => lookup.await,
            };
            let addrs: Vec<_> = found.map_err(|source| LookupError::Failed { host, source })?.collect();
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// rustls needs one process-wide crypto provider before any client is built; reqwest is
/// built without one so the binary carries only ring.
fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // An error means a provider is already installed (by a test, say): that one serves.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A reqwest error with its causes: reqwest's own message is often only "error sending
/// request" or "builder error", and the reason is further down the chain.
pub fn describe(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_name_that_does_not_resolve_is_named_as_the_lookup() {
        let client = ClientOptions::new().connect_timeout(Duration::from_secs(5)).build().unwrap();
        // RFC 2606: no name under .invalid resolves.
        let err = client.get("http://enawatch-test.invalid:9/").send().await.unwrap_err();
        let text = describe(&err);
        assert!(text.contains("name lookup of enawatch-test.invalid"), "{text}");
        assert!(err.is_connect(), "retried like any other network trouble: {text}");
        assert_eq!(lookup_deadline(Duration::from_secs(10)), Duration::from_millis(9750));
        assert_eq!(lookup_deadline(Duration::from_millis(300)), Duration::from_millis(150));
    }

    #[test]
    fn a_bad_root_pem_is_named() {
        let err = ClientOptions::new().extra_root_pem(b"not a certificate".to_vec()).build();
        // reqwest skips PEM sections it does not know; a broken one is an error.
        let broken = ClientOptions::new()
            .extra_root_pem(b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n".to_vec())
            .build()
            .unwrap_err();
        assert!(broken.to_string().starts_with("the extra root CA is not PEM certificates"), "{broken}");
        assert!(err.is_ok(), "text without PEM sections adds no root and is not an error");
    }
}
