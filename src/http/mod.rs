//! The HTTP side: [`app`] builds the routes (tested without a socket), [`serve`] runs them.
//!
//! Handlers read the latest snapshot only, so a scrape costs an encode and never a kernel
//! read. The server is hardened for a port exposed on every node: bounded request-header size
//! and read time, a cap on concurrent connections, and nothing it does can hold the sampler.

use std::convert::Infallible;
use std::io::Write as _;
use std::net::TcpListener as StdListener;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::debug;

pub mod api;

use crate::history::Store;
use crate::metrics::{self, encode::Format, Options};

/// What handlers need.
pub struct AppState {
    /// Snapshots and history.
    pub store: Arc<Store>,
    /// `/metrics` options.
    pub metrics: Options,
    /// What the samples come from ("live", "simulation dns-storm", …).
    pub source: String,
    /// When the agent started, Unix milliseconds.
    pub started_ms: i64,
    /// History kept per device.
    pub history: Duration,
    /// The DNS analysis, when on.
    pub dns: Option<Arc<Mutex<crate::source::dns::DnsStats>>>,
    /// This node's pods by address, when pod attribution is on.
    pub pods: Option<Arc<Mutex<crate::source::pods::Pods>>>,
}

/// Builds the HTTP application.
pub fn app(state: Arc<AppState>) -> Router {
    api::routes().route("/metrics", get(metrics_handler)).route("/healthz", get(healthz)).with_state(state)
}

async fn metrics_handler(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let header_str = |name| headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    let format = Format::negotiate(header_str(header::ACCEPT));
    let body = metrics::render(&state.store.latest(), &state.metrics, format);
    let content_type = [(header::CONTENT_TYPE, format.content_type())];
    let len = body.len();
    let chunks = body.into_chunks();
    if accepts_gzip(header_str(header::ACCEPT_ENCODING)) {
        if let Ok(compressed) = gzip(&chunks, len) {
            return (content_type, [(header::CONTENT_ENCODING, "gzip")], compressed).into_response();
        }
    }
    let left = u64::try_from(len).unwrap_or(u64::MAX);
    (content_type, Body::new(Chunks { chunks: chunks.into_iter(), left })).into_response()
}

/// The chunks as one gzip member (RFC 1952), compressed by a deflate state kept between
/// scrapes: allocated for each, its few hundred KiB of tables were page-faulted and freed
/// every time (and mapped and unmapped by musl's allocator, the image's).
fn gzip(chunks: &[metrics::encode::Chunk], len: usize) -> std::io::Result<Vec<u8>> {
    type Deflate = flate2::write::DeflateEncoder<Vec<u8>>;
    static SPARE: Mutex<Option<Deflate>> = Mutex::new(None);
    // Concurrent scrapes each take one; one is kept.
    let spare = SPARE.lock().unwrap_or_else(PoisonError::into_inner).take();
    let mut deflate = spare.unwrap_or_else(|| Deflate::new(Vec::new(), flate2::Compression::fast()));
    // Header: deflate, no flags, no time, no extra flags, OS unknown.
    let out = deflate.get_mut();
    out.reserve(len / 4);
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
    let mut crc = crc32fast::Hasher::new();
    for chunk in chunks {
        crc.update(chunk.as_ref());
        deflate.write_all(chunk.as_ref())?;
    }
    // Ends this stream, and readies the state for the next one.
    let mut out = deflate.reset(Vec::new())?;
    SPARE.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert(deflate);
    // Trailer: CRC-32 and the length modulo 2^32, little-endian.
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&(len as u64).to_le_bytes()[..4]);
    Ok(out)
}

/// A response body sent as the chunks it was rendered in (`metrics::encode::Exposition`
/// says why), with its length known up front (`Content-Length`).
struct Chunks {
    chunks: std::vec::IntoIter<metrics::encode::Chunk>,
    left: u64,
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        Poll::Ready(this.chunks.next().map(|chunk| {
            this.left = this.left.saturating_sub(chunk.as_ref().len() as u64);
            // The chunk goes back to its pool when hyper has written it and drops it.
            Ok(Frame::data(Bytes::from_owner(chunk)))
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.len() == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

/// Whether an `Accept-Encoding` header allows gzip (present and not `q=0`).
fn accepts_gzip(accept_encoding: Option<&str>) -> bool {
    accept_encoding.is_some_and(|v| {
        v.split(',').any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or("");
            let refused =
                parts.any(|p| p.strip_prefix("q=").and_then(|q| q.parse::<f32>().ok()) == Some(0.0));
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
        })
    })
}

async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    let snapshot = state.store.latest();
    let limit = state.metrics.interval * 3;
    let age = snapshot.published.elapsed();
    let (status, text) = if snapshot.finished {
        (StatusCode::OK, "ok: replay finished; serving its final state\n".to_owned())
    } else if snapshot.seq == 0 {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: no sample taken yet\n".to_owned())
    } else if age > limit {
        let text = format!("unhealthy: last sample {:.1}s ago, more than 3 intervals\n", age.as_secs_f64());
        (StatusCode::SERVICE_UNAVAILABLE, text)
    } else {
        (StatusCode::OK, format!("ok: last sample {:.1}s ago\n", age.as_secs_f64()))
    };
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], Body::from(text)).into_response()
}

/// Limits for the server.
const MAX_CONNECTIONS: usize = 64;
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_REQUEST_HEAD: usize = 16 * 1024;
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Serves `router` on an already-bound listener until the future is dropped.
pub async fn serve(listener: StdListener, router: Router) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = Arc::clone(&permits).acquire_owned().await.expect("never closed");
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(err) => {
                // Out of descriptors and the like: back off instead of spinning.
                debug!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // A body goes out in several writes (its chunks): with Nagle's algorithm the last
        // one waited for the client's delayed ACK, 40 ms on a third of the scrapes at 64
        // devices. Go's servers, Prometheus's own, set this on every connection too.
        if let Err(err) = stream.set_nodelay(true) {
            debug!(%peer, error = %err, "TCP_NODELAY");
        }
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_REQUEST_HEAD)
                .serve_connection(TokioIo::new(stream), service);
            // A client that keeps a connection open forever gives it up after a while.
            match tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                Ok(Err(err)) => debug!(%peer, error = %err, "connection error"),
                Err(_) => debug!(%peer, "connection closed after its lifetime"),
                Ok(Ok(())) => {}
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;
    use std::time::Instant;

    use axum::http::Request;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    use super::*;
    use crate::history::Snapshot;

    fn state() -> Arc<AppState> {
        Arc::new(AppState {
            store: Arc::new(Store::new(10)),
            metrics: Options {
                compat: Vec::new(),
                interval: Duration::from_secs(1),
                notify: None,
                remote_write: None,
            },
            source: "test".into(),
            started_ms: 0,
            history: Duration::from_secs(900),
            dns: None,
            pods: None,
        })
    }

    async fn get(
        state: &Arc<AppState>,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, Vec<u8>) {
        let mut req = Request::get(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = app(Arc::clone(state)).oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
        let (parts, body) = resp.into_parts();
        (parts.status, parts.headers, body.collect().await.unwrap().to_bytes().to_vec())
    }

    /// Publishes a snapshot with `n` read-error series (`veth00000` …): a body of `n` lines.
    fn published_errors(state: &AppState, n: u64) {
        let read_errors = (0..n)
            .map(|i| crate::history::ErrorCount {
                device: format!("veth{i:05}"),
                reason: crate::source::ReadError::Io,
                count: i,
            })
            .collect();
        state.store.publish(Arc::new(Snapshot { seq: 1, read_errors, ..Snapshot::empty() }));
    }

    fn published(state: &AppState) {
        state.store.publish(Arc::new(Snapshot { seq: 1, ..Snapshot::empty() }));
    }

    #[tokio::test]
    async fn metrics_negotiates_format_and_compression() {
        let state = state();
        published(&state);
        let (status, headers, body) = get(&state, "/metrics", &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], Format::Text.content_type());
        let text = String::from_utf8(body).unwrap();
        assert!(text.contains("# TYPE enawatch_build_info gauge"));

        let accept = [("accept", "application/openmetrics-text;version=1.0.0,text/plain;q=0.5")];
        let (_, headers, body) = get(&state, "/metrics", &accept).await;
        assert_eq!(headers[header::CONTENT_TYPE], Format::OpenMetrics.content_type());
        assert!(String::from_utf8(body).unwrap().ends_with("# EOF\n"));

        let (_, headers, body) = get(&state, "/metrics", &[("accept-encoding", "gzip")]).await;
        assert_eq!(headers[header::CONTENT_ENCODING], "gzip");
        let mut plain = String::new();
        flate2::read::GzDecoder::new(&body[..]).read_to_string(&mut plain).unwrap();
        assert_eq!(plain, text);
    }

    #[tokio::test]
    async fn a_body_of_many_chunks_arrives_whole_with_its_length() {
        let state = state();
        published_errors(&state, 3000);
        let (status, headers, body) = get(&state, "/metrics", &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.len() > 4 * metrics::encode::CHUNK, "{} bytes: several chunks", body.len());
        assert_eq!(headers[header::CONTENT_LENGTH], body.len().to_string().as_str());
        let text = String::from_utf8(body).unwrap();
        assert_eq!(text.lines().filter(|l| l.starts_with("enawatch_read_errors_total{")).count(), 3000);
        assert!(text.contains("{device=\"veth02999\",reason=\"io\"} 2999\n"));
        // Twice: the second reuses the deflate state the first left (its CRC and length are
        // checked by the decoder).
        for _ in 0..2 {
            let (_, _, gzipped) = get(&state, "/metrics", &[("accept-encoding", "gzip")]).await;
            let mut plain = String::new();
            flate2::read::GzDecoder::new(&gzipped[..]).read_to_string(&mut plain).unwrap();
            assert_eq!(plain, text);
        }
    }

    /// Regression: a body goes out in several writes, and with Nagle's algorithm on the
    /// connection the last one waited for the client's delayed ACK: 40 ms on many scrapes of
    /// a body of a few chunks over a kept-alive connection (p50 43 ms at 64 devices).
    #[tokio::test]
    async fn a_body_of_several_chunks_is_not_held_back_by_nagle() {
        let state = state();
        published_errors(&state, 1300);
        let listener = StdListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, app(Arc::clone(&state))));
        let times = tokio::task::spawn_blocking(move || {
            use std::io::{BufRead as _, BufReader, Read as _};
            let stream = std::net::TcpStream::connect(addr).unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut writer = stream;
            (0..20)
                .map(|_| {
                    let start = Instant::now();
                    writer.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
                    let mut length = 0;
                    loop {
                        let mut line = String::new();
                        reader.read_line(&mut line).unwrap();
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap();
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    assert!(length > 2 * metrics::encode::CHUNK, "{length} bytes: several chunks");
                    start.elapsed()
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap();
        server.abort();
        let mut sorted = times.clone();
        sorted.sort();
        // A stall is 40 ms (the delayed ACK); a scrape of this body takes about a millisecond.
        assert!(sorted[sorted.len() / 2] < Duration::from_millis(20), "scrape times: {times:?}");
    }

    #[tokio::test]
    async fn healthz_reports_the_sampler() {
        let state = state();
        let (status, _, body) = get(&state, "/healthz", &[]).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(String::from_utf8(body).unwrap().contains("no sample taken yet"));
        published(&state);
        assert_eq!(get(&state, "/healthz", &[]).await.0, StatusCode::OK);
        let four_seconds_ago = Instant::now().checked_sub(Duration::from_secs(4)).unwrap();
        let old = Snapshot { seq: 7, published: four_seconds_ago, ..Snapshot::empty() };
        state.store.publish(Arc::new(old));
        let (status, _, body) = get(&state, "/healthz", &[]).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(String::from_utf8(body).unwrap().contains("more than 3 intervals"));
    }

    #[tokio::test]
    async fn malformed_api_parameters_get_a_400_with_a_message() {
        let state = state();
        published(&state);
        for (path, status, message) in [
            ("/api/v1/history?device=ens5&seconds=abc", 400, "seconds: invalid digit"),
            ("/api/v1/history?devic=ens5", 400, "unknown field `devic`"),
            ("/api/v1/history", 400, "missing field `device`"),
            ("/api/v1/history?device=ens9", 404, "no watched device named \"ens9\""),
            ("/api/v1/bursts?allowance=dns", 400, "allowance: \"dns\" is not one of"),
            ("/api/v1/bursts?device=ens9", 404, "no watched device"),
        ] {
            let (got, _, body) = get(&state, path, &[]).await;
            let body = String::from_utf8(body).unwrap();
            assert_eq!(got.as_u16(), status, "{path}: {body}");
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert!(json["error"].as_str().unwrap().contains(message), "{path}: {body}");
        }
        let (got, _, body) = get(&state, "/api/v1/status", &[]).await;
        assert_eq!(got, StatusCode::OK);
        let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status["summary"], "No interface is watched yet (the agent's log says what it found).");
    }

    #[tokio::test]
    async fn the_page_links_the_endpoints_and_unknown_paths_are_404() {
        let state = state();
        let (status, headers, body) = get(&state, "/", &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert!(headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap().starts_with("default-src 'none'"));
        assert!(String::from_utf8(body).unwrap().contains("href=\"metrics\""));
        assert_eq!(get(&state, "/nope", &[]).await.0, StatusCode::NOT_FOUND);
    }

    #[test]
    fn gzip_negotiation() {
        assert!(accepts_gzip(Some("gzip")));
        assert!(accepts_gzip(Some("deflate, gzip;q=1.0, *;q=0.5")));
        assert!(!accepts_gzip(Some("gzip;q=0")));
        assert!(!accepts_gzip(Some("identity")));
        assert!(!accepts_gzip(None));
    }
}
