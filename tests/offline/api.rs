//! The JSON API's bodies, pinned: every endpoint docs/api.md promises, answered by the
//! in-process app over a fixed simulation, compared with tests/golden/api/*.json.
//!
//! After an intended change: `ENAWATCH_UPDATE_GOLDEN=1 cargo test --test offline api::`, then
//! read the diff (and update docs/api.md if a field changed).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use enawatch::alerts::{default_rules, Evaluator, Local};
use enawatch::history::Store;
use enawatch::http::{app, AppState};
use enawatch::metrics::Options;
use enawatch::sampler::{Sampler, Settings};
use enawatch::source::simulate::{Scenario, SimulatedSource};
use http_body_util::BodyExt as _;
use serde_json::Value;
use tower::ServiceExt as _;

/// 2026-09-21T14:13:20Z: a fixed start, so every time in the bodies is fixed too.
const T0: i64 = 1_790_000_000_000;

/// The dns-storm scenario sampled at 1 s for three minutes, with the local alerts: bursts,
/// a pending-then-firing alert and both devices' history are all in the bodies.
fn state() -> Arc<AppState> {
    let scenario = Scenario::load("dns-storm").expect("built-in scenario");
    let store = Arc::new(Store::new(900));
    let settings =
        Settings { interval: Duration::from_secs(1), compat_stats: None, forget_after_ms: 900_000 };
    let mut sampler = Sampler::new(Box::new(SimulatedSource::new(scenario)), settings, Arc::clone(&store))
        .with_hook(Local::new(Evaluator::new(default_rules()), None));
    for s in 0..=180 {
        sampler.tick(T0 + s * 1000).expect("the simulation never ends");
    }
    Arc::new(AppState {
        store,
        metrics: Options {
            compat: Vec::new(),
            interval: Duration::from_secs(1),
            notify: None,
            remote_write: None,
        },
        source: "simulation dns-storm".into(),
        started_ms: T0,
        history: Duration::from_secs(900),
        dns: None,
        pods: None,
    })
}

async fn get(state: &Arc<AppState>, path: &str) -> (StatusCode, Value) {
    let response =
        app(Arc::clone(state)).oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{path}: not JSON: {e}")))
}

/// What differs between builds and hosts, replaced by a placeholder.
fn pinned(mut body: Value) -> Value {
    for field in ["version", "revision", "node"] {
        if let Some(v) = body.get_mut(field) {
            *v = Value::String(format!("<{field}>"));
        }
    }
    body
}

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/api").join(format!("{name}.json"))
}

#[tokio::test]
async fn every_documented_endpoint_answers_its_pinned_body() {
    let state = state();
    let update = std::env::var_os("ENAWATCH_UPDATE_GOLDEN").is_some();
    let mut differing = Vec::new();
    for (name, path) in [
        ("status", "/api/v1/status"),
        ("devices", "/api/v1/devices"),
        ("history", "/api/v1/history?device=ens5&seconds=20"),
        ("bursts", "/api/v1/bursts"),
        ("bursts-filtered", "/api/v1/bursts?device=ens5&allowance=linklocal"),
        ("alerts", "/api/v1/alerts"),
        ("history-unknown-device", "/api/v1/history?device=eth9"),
        ("history-bad-seconds", "/api/v1/history?device=ens5&seconds=soon"),
    ] {
        let (status, body) = get(&state, path).await;
        let got = serde_json::json!({ "status": status.as_u16(), "body": pinned(body) });
        let text = serde_json::to_string_pretty(&got).unwrap() + "\n";
        let file = golden(name);
        if update {
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, &text).unwrap();
        } else if std::fs::read_to_string(&file).ok().as_deref() != Some(text.as_str()) {
            differing.push(format!("{path} (tests/golden/api/{name}.json):\n{text}"));
        }
    }
    assert!(differing.is_empty(), "bodies differ from the golden files:\n{}", differing.join("\n"));
}
