//! The one way out over HTTP. Every client the agent uses (alert notifiers, remote write,
//! the AWS credential chain, the Kubernetes API) is built here, and the two retry loops (the
//! notifier and the remote-write sender) share one backoff, one classification of outcomes
//! and one `Retry-After` parser, so they cannot drift apart again.
//!
//! * [`ClientOptions`] builds a `reqwest::Client`, after installing rustls's crypto provider
//!   once for the process (clippy.toml forbids building a client anywhere else);
//! * [`Backoff`] is a validated exponential backoff with equal jitter, and [`Retries`] walks
//!   it for one delivery;
//! * [`classify_status`] and [`classify_error`] say whether an attempt succeeded, is worth
//!   another, or never will be;
//! * [`parse_retry_after`] reads both forms of `Retry-After`.
//!
//! It imports only `base`, so every layer that talks HTTP can use it.

mod backoff;
mod client;
pub mod kube;

use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;

pub use self::backoff::{Backoff, BackoffError, Retries, MAX_RETRY_AFTER};
pub use self::client::{describe, ClientError, ClientOptions};
use crate::base::time::parse_http_date;

// === classification ===

/// What an attempt came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    /// Delivered.
    Success,
    /// Worth another attempt: the receiver or the path to it may recover.
    Retry,
    /// Never worth another attempt: the same request would get the same answer.
    Drop,
}

/// 2xx is [`Class::Success`]; 429 and 5xx are [`Class::Retry`]; everything else is
/// [`Class::Drop`]: another 4xx means the receiver refuses this request for good, a 3xx is a
/// redirect the client was told not to follow (or one too many), so the URL is wrong, and
/// reqwest answers 1xx itself.
pub(crate) fn classify_status(status: StatusCode) -> Class {
    if status.is_success() {
        Class::Success
    } else if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        Class::Retry
    } else {
        Class::Drop
    }
}

/// Network trouble (connecting, a timeout, sending, reading the body) is [`Class::Retry`];
/// an error carrying a status is classified by it; a request that cannot be built, a
/// redirect loop or an unreadable answer is [`Class::Drop`].
pub(crate) fn classify_error(err: &reqwest::Error) -> Class {
    if let Some(status) = err.status() {
        classify_status(status)
    } else if err.is_timeout() || err.is_connect() || err.is_request() || err.is_body() {
        Class::Retry
    } else {
        Class::Drop
    }
}

// === Retry-After ===

/// `Retry-After` (RFC 9110 §10.2.3): delay-seconds (`120`) or an HTTP-date
/// (`Sun, 06 Nov 1994 08:49:37 GMT`), as a wait from `now_ms` (Unix milliseconds); a date
/// already past is no wait at all. `None` when it is neither.
pub fn parse_retry_after(value: &str, now_ms: i64) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at_ms = parse_http_date(value)?;
    Some(Duration::from_millis(u64::try_from(at_ms.saturating_sub(now_ms)).unwrap_or(0)))
}

/// The `Retry-After` of a response's headers, if present and readable.
pub(crate) fn retry_after(headers: &HeaderMap, now_ms: i64) -> Option<Duration> {
    parse_retry_after(headers.get(RETRY_AFTER)?.to_str().ok()?, now_ms)
}

/// The body of `response`, refused when longer than `max` bytes: an answer from a server
/// the agent talks to is read with a bound, as every file is.
pub(crate) async fn read_body(mut response: reqwest::Response, max: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) if body.len() + chunk.len() <= max => body.extend_from_slice(&chunk),
            Ok(Some(_)) => return Err(format!("an answer longer than {} KiB", max >> 10)),
            Ok(None) => return Ok(body),
            Err(err) => return Err(err.without_url().to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn statuses_by_class() {
        let class = |code: u16| classify_status(StatusCode::from_u16(code).unwrap());
        for code in [200, 201, 202, 204] {
            assert_eq!(class(code), Class::Success, "{code}");
        }
        for code in [429, 500, 502, 503, 504] {
            assert_eq!(class(code), Class::Retry, "{code}");
        }
        for code in [100, 301, 302, 307, 400, 401, 403, 404, 408, 413, 422] {
            assert_eq!(class(code), Class::Drop, "{code}");
        }
    }

    #[tokio::test]
    async fn network_errors_are_retried_and_unbuildable_requests_dropped() {
        let client = ClientOptions::new().connect_timeout(Duration::from_secs(2)).build().unwrap();
        // A port that was just free: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let refused = client.get(format!("http://127.0.0.1:{port}/")).send().await.unwrap_err();
        assert_eq!(classify_error(&refused), Class::Retry, "{}", describe(&refused));
        let unbuildable = client.get("http://127.0.0.1:9/").header("x-bad", "a\nb").send().await.unwrap_err();
        assert_eq!(classify_error(&unbuildable), Class::Drop, "{}", describe(&unbuildable));
    }

    #[test]
    fn retry_after_in_both_forms() {
        assert_eq!(parse_retry_after("7", 0), Some(Duration::from_secs(7)));
        let date = 784_111_777_000; // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", date - 3000),
            Some(Duration::from_secs(3))
        );
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", date + 3000), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", 0), None);
    }

    #[test]
    fn retry_after_from_headers_and_dates_long_past() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers, 0), None);
        headers.insert(RETRY_AFTER, " 12 ".parse().unwrap());
        assert_eq!(retry_after(&headers, 0), Some(Duration::from_secs(12)));
        headers.insert(RETRY_AFTER, "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap());
        assert_eq!(retry_after(&headers, i64::MAX), Some(Duration::ZERO));
        assert_eq!(retry_after(&headers, 784_111_777_000 - 1500), Some(1500 * MS));
        assert_eq!(parse_retry_after("-5", 0), None, "delay-seconds cannot be negative");
    }
}
