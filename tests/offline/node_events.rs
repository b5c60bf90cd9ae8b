//! Node events against a local server speaking the Kubernetes API's Events JSON: the first
//! firing creates the event, the next ones patch the same series (its count grows), the
//! resolution is recorded as a Normal event, and an API that forbids the writes turns node
//! events off with one log line while metrics and alerts go on.

use std::collections::BTreeMap;
use std::io::{BufReader, Write as _};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::Agent;

const NODE: &str = "ip-10-0-0-10.ec2.internal";
const EVENTS: &str = "/api/v1/namespaces/default/events";

/// Link-local drops on ens5 for 2 s every 6 s: the alert fires and resolves every 6 s.
const SCENARIO: &str = "description: link-local drops in short bursts\n\
devices: 1\n\
events:\n  - kind: drops\n    allowance: linklocal\n    device: ens5\n    at: 2s\n    duration: 2s\n    rate: 300\n    every: 6s\n";

/// The warning over a window short enough for the test, firing at once and resolving at once.
const CONFIG: &str = "node_events: true\nnode_events_interval: 1s\nalerts:\n  rules:\n    - alert: LinkLocalAllowanceExceeded\n      severity: warning\n      min_throttled: 1s\n      window: 2s\n      for: 0s\n      keep_firing_for: 0s\n";

/// What the stand-in saw: requests ("METHOD path"), and the events it holds by name.
#[derive(Default)]
struct Api {
    requests: Vec<String>,
    events: BTreeMap<String, Value>,
    /// When each event was written, by name.
    writes: Vec<(Instant, String)>,
}

/// Serves `POST …/events` (201 and the stored Event) and `PATCH …/events/NAME` (a merge, 200
/// and the Event; 404 for an unknown name), or `status` to every request when set.
fn api(status: Option<u16>) -> (u16, Arc<Mutex<Api>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let state: Arc<Mutex<Api>> = Arc::default();
    let shared = Arc::clone(&state);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let state = Arc::clone(&shared);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                while let Some((line, body)) = crate::support::next_request(&mut reader) {
                    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let mut parts = line.split_whitespace();
                    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                    let (code, answer) = answer(&state, status, method, path, body);
                    let text = answer.to_string();
                    let reason = match code {
                        200 => "OK",
                        201 => "Created",
                        403 => "Forbidden",
                        _ => "Not Found",
                    };
                    let out = reader.get_mut();
                    let _ = write!(
                        out,
                        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
                        text.len()
                    );
                    let _ = out.flush();
                }
            });
        }
    });
    (port, state)
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": reason, "code": code})
}

fn answer(state: &Mutex<Api>, forced: Option<u16>, method: &str, path: &str, body: Value) -> (u16, Value) {
    let mut api = state.lock().unwrap();
    api.requests.push(format!("{method} {path}"));
    if let Some(code) = forced {
        return (code, status(code, "Forbidden"));
    }
    match method {
        "POST" if path == EVENTS => {
            let mut event = body;
            let name = event["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            let n = api.events.len();
            event["metadata"]["uid"] = json!(format!("00000000-0000-0000-0000-{n:012}"));
            event["metadata"]["resourceVersion"] = json!(format!("{}", 1000 + n));
            api.events.insert(name.clone(), event.clone());
            api.writes.push((Instant::now(), name));
            (201, event)
        }
        "PATCH" => {
            let name = path.strip_prefix(EVENTS).unwrap_or_default().trim_start_matches('/');
            let Some(event) = api.events.get_mut(name) else { return (404, status(404, "NotFound")) };
            for (k, v) in body.as_object().into_iter().flatten() {
                event[k] = v.clone();
            }
            let event = event.clone();
            api.writes.push((Instant::now(), name.to_owned()));
            (200, event)
        }
        _ => (404, status(404, "NotFound")),
    }
}

fn agent(api_port: u16) -> Agent<'static> {
    agent_writing_every(api_port, "1s")
}

/// The agent with `node_events_interval` set to `interval`.
fn agent_writing_every(api_port: u16, interval: &str) -> Agent<'static> {
    let launch = Agent::launch(&["serve"]);
    let scenario = launch.file("bursts.yaml", SCENARIO);
    let config = launch.file(
        "enawatch.yaml",
        &CONFIG.replace("node_events_interval: 1s", &format!("node_events_interval: {interval}")),
    );
    launch
        .args(&["--simulate", scenario.to_str().unwrap(), "--config", config.to_str().unwrap()])
        .env("NODE_NAME", NODE)
        .env("ENAWATCH_KUBE_API", format!("http://127.0.0.1:{api_port}"))
        .spawn()
}

/// The event of this type, once the stand-in holds it with at least `count`.
fn event(api: &Mutex<Api>, kind: &str, count: u64) -> Option<Value> {
    let api = api.lock().unwrap();
    api.events.values().find(|e| e["type"] == kind && e["count"].as_u64() >= Some(count)).cloned()
}

#[test]
fn firings_make_one_series_on_the_node_and_the_resolution_is_recorded() {
    let (port, state) = api(None);
    let agent = agent(port);
    let deadline = Instant::now() + Duration::from_secs(40);
    // Two firings and two resolutions at least: each type's event patched once.
    while event(&state, "Warning", 2).is_none() || event(&state, "Normal", 2).is_none() {
        assert!(Instant::now() < deadline, "no series of two: {}", agent.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let warning = event(&state, "Warning", 2).unwrap();
    assert_eq!(warning["kind"], "Event");
    assert_eq!(warning["apiVersion"], "v1");
    assert_eq!(warning["metadata"]["namespace"], "default");
    assert_eq!(
        warning["involvedObject"],
        json!({"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": NODE})
    );
    assert_eq!(warning["reason"], "LinkLocalExceeded");
    assert_eq!(warning["reportingComponent"], "enawatch");
    assert_eq!(warning["source"]["component"], "enawatch");
    let message = warning["message"].as_str().unwrap();
    for part in ["linklocal_allowance_exceeded", "\"ens5\"", "throttled", "packets"] {
        assert!(message.contains(part), "{part} in {message}");
    }
    assert!(warning["firstTimestamp"].as_str() <= warning["lastTimestamp"].as_str(), "{warning}");
    // The fields are the ones docs/events.md shows (which tests/tools validates against the
    // API's schema), and no others; the stand-in added only metadata.uid and resourceVersion.
    let documented: Value = {
        let docs = include_str!("../../docs/events.md");
        let yaml = docs.split("```yaml\n").nth(1).and_then(|r| r.split("```").next()).unwrap();
        yaml_serde::from_str(yaml).unwrap()
    };
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&warning), keys(&documented));
    assert_eq!(keys(&warning["metadata"]).len(), keys(&documented["metadata"]).len() + 2);
    let normal = event(&state, "Normal", 1).unwrap();
    assert_eq!(normal["reason"], "LinkLocalExceeded");
    assert!(normal["message"].as_str().unwrap().contains("resolved"), "{normal}");

    let api = state.lock().unwrap();
    let posts = api.requests.iter().filter(|r| r.starts_with("POST")).count();
    let patches = api.requests.iter().filter(|r| r.starts_with("PATCH")).count();
    assert_eq!(posts, 2, "one event per type, created once: {:?}", api.requests);
    assert!(patches >= 2, "repeats patch the series: {:?}", api.requests);
    assert_eq!(api.events.len(), 2, "{:?}", api.events.keys());
    assert!(api.requests.iter().all(|r| r.contains(EVENTS)), "{:?}", api.requests);
    drop(api);
    let metrics = agent.metrics();
    assert!(
        metrics.contains("enawatch_notifications_total{receiver=\"node_events\",outcome=\"sent\"}"),
        "node events are counted like a receiver"
    );
}

#[test]
fn a_forbidden_api_turns_node_events_off_with_one_line_and_alerts_go_on() {
    let (port, state) = api(Some(403));
    let agent = agent(port);
    let deadline = Instant::now() + Duration::from_secs(30);
    let line = "node events are off";
    // Until the alert has fired and resolved again after the refusal.
    loop {
        let log = agent.log();
        if log.contains(line) && log.matches("alert firing").count() >= 2 && log.contains("alert resolved") {
            break;
        }
        assert!(Instant::now() < deadline, "{log}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = agent.log();
    assert_eq!(log.matches(line).count(), 1, "{log}");
    assert!(log.contains("403"), "says why: {log}");
    assert_eq!(state.lock().unwrap().requests.len(), 1, "nothing asked after the refusal");
    let metrics = agent.metrics();
    assert!(metrics.contains("ena_allowance_exceeded_packets_total{device=\"ens5\",allowance=\"linklocal\"}"));
    let alerts = agent.get("/api/v1/alerts").unwrap();
    assert_eq!(alerts.status, 200);
}

#[test]
fn writes_of_one_event_are_an_interval_apart_and_firings_between_are_counted() {
    let (port, state) = api(None);
    // Firings every 6 s, writes at least 8 s apart: the second firing waits for the interval.
    let agent = agent_writing_every(port, "8s");
    let deadline = Instant::now() + Duration::from_secs(45);
    while event(&state, "Warning", 3).is_none() {
        assert!(Instant::now() < deadline, "no third firing written: {}", agent.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let api = state.lock().unwrap();
    let warning = api.events.iter().find(|(_, e)| e["type"] == "Warning").map(|(n, _)| n.clone()).unwrap();
    let times: Vec<Instant> = api.writes.iter().filter(|(_, n)| *n == warning).map(|(t, _)| *t).collect();
    assert!(times.len() >= 3, "{:?}", api.requests);
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap >= Duration::from_millis(7500), "writes {gap:?} apart");
    }
    // Every firing is in the count, although writes were fewer than firings would have made
    // without the interval.
    let firings = agent.log().matches("alert firing").count() as u64;
    let count = api.events[&warning]["count"].as_u64().unwrap();
    assert!(count >= 3 && count <= firings, "count {count}, firings {firings}");
}
