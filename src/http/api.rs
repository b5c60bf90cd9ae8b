//! The JSON API (`/api/v1/…`, documented in docs/api.md) and the live page at `/`.
//!
//! Every handler reads the latest snapshot and, for history and bursts, the history under a
//! short read lock. Parameters are checked: a malformed one gets a 400 naming it, an unknown
//! device a 404.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::base::allowance::Allowance;
use crate::base::time::rfc3339;
use crate::history::windows::{episodes, recent, Episode};
use crate::history::{DeviceState, Point, Snapshot};
use crate::http::AppState;
use crate::metrics::{REVISION, VERSION};

/// The API and page routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(page))
        .route("/app.js", get(script))
        .route("/style.css", get(style))
        .route("/api/v1/status", get(status))
        .route("/api/v1/devices", get(devices))
        .route("/api/v1/history", get(history))
        .route("/api/v1/bursts", get(bursts))
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/dns", get(dns))
        .route("/api/v1/pods", get(pods))
}

/// The page may load only what the agent itself serves: no CDN, no other origin.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn page() -> Response {
    asset("text/html; charset=utf-8", include_str!("web/index.html"))
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", include_str!("web/app.js"))
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", include_str!("web/style.css"))
}

/// A JSON error with a message.
fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

fn bad_query(rejection: &QueryRejection) -> Response {
    error(StatusCode::BAD_REQUEST, &format!("bad query parameters: {}", rejection.body_text()))
}

/// What this node looks like right now, in one sentence.
pub(crate) fn summary(snapshot: &Snapshot, points: &dyn Fn(&str) -> Vec<Point>) -> (bool, String) {
    if snapshot.devices.is_empty() {
        return (false, "No interface is watched yet (the agent's log says what it found).".into());
    }
    let mut now = Vec::new();
    let mut recently = Vec::new();
    for d in &snapshot.devices {
        let pts = points(&d.device.name);
        for a in Allowance::ALL.into_iter().filter(|a| d.counters.supported[a.index()]) {
            let r = recent(&pts, a);
            if r.pps > 0.0 {
                now.push(format!("{} is dropping {} packets at {:.0}/s", d.device.name, a.label(), r.pps));
            } else if r.throttled_15m > 0.0 {
                recently.push(format!("{} {} for {}s", d.device.name, a.label(), r.throttled_15m));
            }
        }
    }
    if !now.is_empty() {
        let dns = now.iter().any(|s| s.contains("linklocal"));
        let effect = if dns {
            " Link-local packets (the VPC DNS resolver, instance metadata, Time Sync) are being dropped: \
             pods on this node may see DNS timeouts (EAI_AGAIN, UnknownHostException)."
        } else {
            " Packets over the instance's allowances are being queued or dropped by EC2."
        };
        return (true, format!("Throttled right now: {}.{effect}", now.join("; ")));
    }
    if !recently.is_empty() {
        return (false, format!("Not throttled right now; in the last 15 minutes: {}.", recently.join(", ")));
    }
    (false, "Not throttled: no allowance was exceeded in the last 15 minutes.".into())
}

#[derive(Serialize)]
struct StatusBody {
    version: &'static str,
    revision: &'static str,
    source: String,
    node: String,
    interval_seconds: f64,
    history_seconds: f64,
    started: String,
    last_sample: Option<String>,
    samples: u64,
    missed_ticks: u64,
    finished: bool,
    throttled_now: bool,
    summary: String,
}

async fn status(State(state): State<Arc<AppState>>) -> Response {
    let snapshot = state.store.latest();
    let (throttled_now, summary) =
        state.store.read_history(|h| summary(&snapshot, &|d| h.points(d).collect()));
    Json(StatusBody {
        version: VERSION,
        revision: REVISION,
        source: state.source.clone(),
        node: crate::base::node_name(),
        interval_seconds: state.metrics.interval.as_secs_f64(),
        history_seconds: state.history.as_secs_f64(),
        started: rfc3339(state.started_ms),
        last_sample: (snapshot.seq > 0).then(|| rfc3339(snapshot.at_ms)),
        samples: snapshot.seq,
        missed_ticks: snapshot.missed_ticks,
        finished: snapshot.finished,
        throttled_now,
        summary,
    })
    .into_response()
}

#[derive(Serialize)]
struct AllowanceNow {
    allowance: &'static str,
    supported: bool,
    packets_total: u64,
    throttled_seconds_total: f64,
    pps: f64,
    throttled_1m: f64,
    throttled_15m: f64,
}

#[derive(Serialize)]
struct DeviceBody {
    device: String,
    driver: String,
    driver_version: String,
    firmware_version: String,
    bus_info: String,
    eni: Option<String>,
    conntrack_available: Option<u64>,
    allowances: Vec<AllowanceNow>,
    resets: u64,
    glitches: u64,
}

fn device_body(d: &DeviceState, points: &[Point]) -> DeviceBody {
    let c = &d.counters;
    DeviceBody {
        device: d.device.name.clone(),
        driver: d.device.driver.clone(),
        driver_version: d.device.driver_version.clone(),
        firmware_version: d.device.firmware_version.clone(),
        bus_info: d.device.bus_info.clone(),
        eni: d.device.eni.clone(),
        conntrack_available: c.available.filter(|_| c.available_supported),
        allowances: Allowance::ALL
            .into_iter()
            .map(|a| {
                let r = recent(points, a);
                AllowanceNow {
                    allowance: a.label(),
                    supported: c.supported[a.index()],
                    packets_total: c.packets[a.index()],
                    throttled_seconds_total: c.seconds[a.index()],
                    pps: r.pps,
                    throttled_1m: r.throttled_1m,
                    throttled_15m: r.throttled_15m,
                }
            })
            .collect(),
        resets: d.resets,
        glitches: d.glitches,
    }
}

async fn devices(State(state): State<Arc<AppState>>) -> Response {
    let snapshot = state.store.latest();
    let body: Vec<DeviceBody> = state.store.read_history(|h| {
        snapshot
            .devices
            .iter()
            .map(|d| device_body(d, &h.points(&d.device.name).collect::<Vec<_>>()))
            .collect()
    });
    Json(body).into_response()
}

/// `/api/v1/history` parameters.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    device: String,
    seconds: Option<u64>,
}

#[derive(Serialize)]
struct HistoryBody {
    device: String,
    /// Sample times, Unix milliseconds.
    t: Vec<i64>,
    /// Packets per second queued or dropped over the interval each sample closes.
    pps: serde_json::Map<String, serde_json::Value>,
    /// Seconds of that interval during which the allowance was exceeded (0 or the interval).
    throttled: serde_json::Map<String, serde_json::Value>,
    conntrack_available: Vec<Option<u32>>,
    /// Packets per second to link-local services (with the link-local meter on).
    linklocal_pps: Vec<Option<u32>>,
    glitch: Vec<bool>,
    reset: Vec<bool>,
}

/// A 404 naming the watched devices, unless `device` is one of them.
fn unknown_device(snapshot: &Snapshot, device: &str) -> Option<Response> {
    if snapshot.devices.iter().any(|d| d.device.name == device) {
        return None;
    }
    let known: Vec<&str> = snapshot.devices.iter().map(|d| d.device.name.as_str()).collect();
    let message = format!("device: no watched device named {device:?}; watched: {}", known.join(", "));
    Some(error(StatusCode::NOT_FOUND, &message))
}

async fn history(
    State(state): State<Arc<AppState>>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(r) => return bad_query(&r),
    };
    let snapshot = state.store.latest();
    if let Some(resp) = unknown_device(&snapshot, &q.device) {
        return resp;
    }
    // A span longer than any history asks for all of it: the arithmetic saturates, so no
    // `seconds` can overflow.
    let since = q.seconds.map_or(i64::MIN, |s| {
        snapshot.at_ms.saturating_sub(i64::try_from(s).unwrap_or(i64::MAX).saturating_mul(1000))
    });
    let points: Vec<Point> = state.store.read_history(|h| h.points(&q.device).collect());
    let mut body = HistoryBody {
        device: q.device,
        t: Vec::new(),
        pps: serde_json::Map::new(),
        throttled: serde_json::Map::new(),
        conntrack_available: Vec::new(),
        linklocal_pps: Vec::new(),
        glitch: Vec::new(),
        reset: Vec::new(),
    };
    let mut pps: Vec<Vec<f64>> = vec![Vec::new(); 5];
    let mut throttled: Vec<Vec<f64>> = vec![Vec::new(); 5];
    let mut previous: Option<i64> = None;
    for p in &points {
        let glitch = p.flags & Point::GLITCH != 0;
        let seconds = previous.map_or(0.0, |prev| (p.at_ms - prev) as f64 / 1000.0);
        if !glitch {
            previous = Some(p.at_ms);
        }
        if p.at_ms <= since {
            continue;
        }
        body.t.push(p.at_ms);
        for a in Allowance::ALL {
            let added = f64::from(p.added[a.index()]);
            pps[a.index()].push(if seconds > 0.0 { (added / seconds * 10.0).round() / 10.0 } else { 0.0 });
            throttled[a.index()].push(if added > 0.0 { seconds } else { 0.0 });
        }
        body.conntrack_available.push((p.available != Point::NO_VALUE && !glitch).then_some(p.available));
        body.linklocal_pps.push((p.linklocal != Point::NO_VALUE).then_some(p.linklocal));
        body.glitch.push(glitch);
        body.reset.push(p.flags & Point::RESET != 0);
    }
    for a in Allowance::ALL {
        body.pps.insert(a.label().into(), json!(pps[a.index()]));
        body.throttled.insert(a.label().into(), json!(throttled[a.index()]));
    }
    Json(body).into_response()
}

/// `/api/v1/bursts` parameters.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BurstsQuery {
    device: Option<String>,
    allowance: Option<String>,
}

#[derive(Serialize)]
struct Burst {
    device: String,
    allowance: &'static str,
    #[serde(flatten)]
    episode: Episode,
}

async fn bursts(
    State(state): State<Arc<AppState>>,
    query: Result<Query<BurstsQuery>, QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(r) => return bad_query(&r),
    };
    let allowances: Vec<Allowance> = match &q.allowance {
        None => Allowance::ALL.to_vec(),
        Some(name) => {
            let Some(a) = Allowance::ALL.into_iter().find(|a| a.label() == name) else {
                let message =
                    format!("allowance: {name:?} is not one of bw_in, bw_out, pps, conntrack, linklocal");
                return error(StatusCode::BAD_REQUEST, &message);
            };
            vec![a]
        }
    };
    let snapshot = state.store.latest();
    if let Some(device) = &q.device {
        if let Some(resp) = unknown_device(&snapshot, device) {
            return resp;
        }
    }
    let list: Vec<Burst> = state.store.read_history(|h| {
        let mut list = Vec::new();
        for d in snapshot.devices.iter().filter(|d| q.device.as_ref().is_none_or(|n| *n == d.device.name)) {
            let points: Vec<Point> = h.points(&d.device.name).collect();
            for &a in &allowances {
                for episode in episodes(&points, a) {
                    list.push(Burst { device: d.device.name.clone(), allowance: a.label(), episode });
                }
            }
        }
        list
    });
    Json(json!({ "bursts": list })).into_response()
}

async fn alerts(State(state): State<Arc<AppState>>) -> Response {
    Json(json!({ "alerts": state.store.latest().alerts })).into_response()
}

async fn dns(State(state): State<Arc<AppState>>) -> Response {
    let Some(analysis) = &state.dns else {
        return Json(
            json!({ "enabled": false, "hint": "start the agent with --dns-analysis (needs CAP_NET_RAW)" }),
        )
        .into_response();
    };
    let report =
        analysis.lock().unwrap_or_else(std::sync::PoisonError::into_inner).report(crate::base::wall_ms());
    Json(json!({ "enabled": true, "report": report })).into_response()
}

async fn pods(State(state): State<Arc<AppState>>) -> Response {
    let Some(pods) = &state.pods else {
        return Json(json!({ "enabled": false, "hint": "start the agent with --pod-attribution" }))
            .into_response();
    };
    let list = pods.lock().unwrap_or_else(std::sync::PoisonError::into_inner).list();
    let pods: Vec<serde_json::Value> = list
        .into_iter()
        .map(|(ip, p)| json!({ "ip": ip, "namespace": p.namespace, "pod": p.pod, "workload": p.workload }))
        .collect();
    Json(json!({ "enabled": true, "pods": pods })).into_response()
}
