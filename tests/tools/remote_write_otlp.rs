//! OTLP/HTTP export, checked by a receiver that decodes every request with the official
//! protobuf definitions (tests/remote_write/otlp_receiver.py, PyPI `opentelemetry-proto`):
//! every point equals what `/metrics` showed, start times move only where a series really
//! restarted, an outage and an agent restart lose nothing and send nothing twice, and
//! CloudWatch's SigV4 (service `monitoring`) is recomputed by botocore.
//!
//! Named `remote_write_otlp` so that `cargo test --test tools remote_write` runs it with the
//! delivery machinery it shares.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

use crate::remote_write::{
    canonical, is_self_metric, name_of, parse_series, recorded, runs, sigv4_case_as, start_agent,
    RemoteWriteAgent as _, NODE,
};
use crate::support::{http_get, wait_until, TempDir};

const OTLP_PROTO: &str = "python3 -m pip install opentelemetry-proto==1.45.2";

/// tests/remote_write/otlp_receiver.py, running.
struct Receiver {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Receiver {
    /// On `port` (0: any).
    fn start(port: u16) -> Self {
        let dir = TempDir::new("otlp");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/remote_write/otlp_receiver.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--port", &port.to_string()])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("receiver.err")).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let Ok(port) = line.trim().parse() else {
            let err = std::fs::read_to_string(dir.join("receiver.err")).unwrap_or_default();
            panic!("otlp_receiver.py did not start (opentelemetry-proto missing? {OTLP_PROTO}):\n{err}");
        };
        Self { child, port, _dir: dir }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn seen(&self) -> Json {
        let r = http_get(&format!("127.0.0.1:{}", self.port), "/_seen", &[]).unwrap();
        serde_json::from_slice(&r.body).unwrap()
    }

    fn set(&self, mode: &str) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            s,
            "POST /_mode HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{mode}",
            mode.len()
        )
        .unwrap();
        let mut reply = String::new();
        BufReader::new(s).read_line(&mut reply).unwrap();
        assert!(reply.contains(" 200 "), "{reply}");
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn otlp_config(url: &str, spool: Option<&Path>) -> String {
    let spool = spool.map(|p| format!("  spool_dir: {}\n", p.display())).unwrap_or_default();
    format!(
        "remote_write:\n- url: {url}\n  protocol: otlp\n  name: otel\n  resolution: 1s\n  \
         batch_send_deadline: 500ms\n  min_backoff: 100ms\n  max_backoff: 1s\n{spool}"
    )
}

/// `le` as a number, spelled one way on both sides.
fn le(v: f64) -> String {
    if v.is_infinite() {
        "+Inf".into()
    } else {
        format!("{v}")
    }
}

/// A /metrics series key with its `le` respelled by [`le`].
fn normalised(key: &str) -> String {
    let (name, labels) = parse_series(key);
    let labels = labels.into_iter().map(|(k, v)| {
        if k == "le" {
            let n: f64 = if v == "+Inf" { f64::INFINITY } else { v.parse().unwrap() };
            (k, le(n))
        } else {
            (k, v)
        }
    });
    canonical(&name, labels, &[])
}

fn ms(ns: &Json) -> i64 {
    i64::try_from(ns.as_u64().unwrap() / 1_000_000).unwrap()
}

fn attributes(p: &Json) -> Vec<(String, String)> {
    p["attributes"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect()
}

/// Every point, as Prometheus would name its samples: series → time (ms) → (value, start ms).
/// Histograms become their `_bucket{le}` (cumulative again), `_sum` and `_count` series.
fn samples(points: &[Json]) -> BTreeMap<String, BTreeMap<i64, Vec<(f64, i64)>>> {
    let mut out: BTreeMap<String, BTreeMap<i64, Vec<(f64, i64)>>> = BTreeMap::new();
    for p in points {
        let (at, start) = (ms(&p["time"]), ms(&p["start"]));
        let name = p["metric"].as_str().unwrap();
        let attrs = attributes(p);
        let mut put =
            |key: String, v: f64| out.entry(key).or_default().entry(at).or_default().push((v, start));
        match p["type"].as_str().unwrap() {
            "sum" => {
                assert_eq!(p["temporality"], "AGGREGATION_TEMPORALITY_CUMULATIVE", "{p}");
                assert_eq!(p["monotonic"], true, "{p}");
                assert!(name.ends_with("_total"), "a sum that is not a counter: {p}");
                put(canonical(name, attrs, &[]), p["value"].as_f64().unwrap());
            }
            "gauge" => {
                assert_eq!(p["start"], 0, "a gauge has no start: {p}");
                put(canonical(name, attrs, &[]), p["value"].as_f64().unwrap());
            }
            "histogram" => {
                assert_eq!(p["temporality"], "AGGREGATION_TEMPORALITY_CUMULATIVE", "{p}");
                let bounds: Vec<f64> =
                    p["bounds"].as_array().unwrap().iter().map(|b| b.as_f64().unwrap()).collect();
                let buckets: Vec<f64> =
                    p["buckets"].as_array().unwrap().iter().map(|b| b.as_f64().unwrap()).collect();
                let mut cumulative = 0.0;
                for (i, n) in buckets.iter().enumerate() {
                    cumulative += n;
                    let bound = bounds.get(i).copied().unwrap_or(f64::INFINITY);
                    let mut labels = attrs.clone();
                    labels.push(("le".into(), le(bound)));
                    put(canonical(&format!("{name}_bucket"), labels, &[]), cumulative);
                }
                put(canonical(&format!("{name}_sum"), attrs.clone(), &[]), p["sum"].as_f64().unwrap());
                put(canonical(&format!("{name}_count"), attrs, &[]), p["count"].as_f64().unwrap());
            }
            other => panic!("unexpected type {other}: {p}"),
        }
    }
    out
}

/// The one resource every request carried.
fn resource(points: &[Json]) -> Json {
    let resources: BTreeSet<String> = points.iter().map(|p| p["resource"].to_string()).collect();
    assert_eq!(resources.len(), 1, "{resources:?}");
    points[0]["resource"].clone()
}

/// Every point the receiver decoded, as [`samples`], and every sample /metrics showed, by its
/// time, for `seconds` of `scenario`; the counter `metric` read at the end; the log.
struct Compared {
    got: BTreeMap<String, BTreeMap<i64, Vec<(f64, i64)>>>,
    shown: BTreeMap<i64, BTreeMap<String, f64>>,
    metric: f64,
    log: String,
}

/// Runs `scenario` for `seconds` pushing OTLP, and checks that every point equals what
/// /metrics showed for the same sample, and nothing else was sent.
fn run_and_compare(scenario: &str, seconds: u64, metric: &str) -> Compared {
    let receiver = Receiver::start(0);
    let env = [("NODE_NAME", NODE.to_owned()), ("AWS_EC2_METADATA_SERVICE_ENDPOINT", receiver.url())];
    let agent = start_agent(scenario, &otlp_config(&receiver.url(), None), &env);
    let mut shown: BTreeMap<i64, BTreeMap<String, f64>> = BTreeMap::new();
    let begin = Instant::now();
    while begin.elapsed() < Duration::from_secs(seconds) {
        let (at, series) = recorded(&agent.scrape());
        if at > 0 {
            shown.entry(at).or_insert(series);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(3));
    let value = agent.metric(metric);
    let log = agent.stop_cleanly();
    let seen = receiver.seen();
    assert_eq!(seen["errors"].as_array().unwrap().len(), 0, "{}", seen["errors"]);
    let points = seen["points"].as_array().unwrap();

    let r = resource(points);
    assert_eq!(r["service.name"], "enawatch");
    assert_eq!(r["k8s.node.name"], NODE);
    assert_eq!(r["cloud.provider"], "aws");
    assert_eq!(r["cloud.region"], "us-west-2", "from IMDS: {r}");
    assert_eq!(r["cloud.availability_zone"], "us-west-2b");
    assert_eq!(r["host.id"], "i-0123456789abcdef0");
    assert!(
        r["service.version"].as_str().is_some_and(|v| !v.is_empty()) && r["host.name"].is_string(),
        "{r}"
    );

    let got = samples(points);
    let shown: BTreeMap<i64, BTreeMap<String, f64>> = shown
        .into_iter()
        .map(|(at, series)| (at, series.into_iter().map(|(k, v)| (normalised(&k), v)).collect()))
        .collect();
    assert!(shown.len() as u64 >= seconds - 6, "{} samples shown", shown.len());
    let mut compared = 0;
    for (at, series) in &shown {
        for (key, value) in series {
            if is_self_metric(key) {
                assert!(got.contains_key(key), "{key} was not pushed");
                continue;
            }
            let points = got.get(key).and_then(|s| s.get(at));
            let values: Option<Vec<f64>> = points.map(|p| p.iter().map(|(v, _)| *v).collect());
            assert_eq!(
                values,
                Some(vec![*value]),
                "{key} at {at}: /metrics showed {value}, OTLP has {values:?}"
            );
            compared += 1;
        }
    }
    assert!(compared > 300, "compared {compared} values");
    // Nothing but what /metrics shows.
    let last_shown = *shown.keys().last().unwrap();
    for (key, by_time) in &got {
        if by_time.keys().any(|&at| at <= last_shown) {
            assert!(shown.values().any(|s| s.contains_key(key)), "{key} was never shown");
        }
    }

    assert!(!log.contains("cannot push") && !log.contains("rejected"), "a healthy run:\n{log}");
    Compared { got, shown, metric: value, log }
}

/// The link-local storm fills the histogram: its points, bucket by bucket, are /metrics'.
#[test]
fn otlp_points_equal_what_metrics_showed_histograms_included() {
    let c = run_and_compare("dns-storm", 15, "enawatch_samples_total");
    let histogram = "ena_linklocal_packets_per_second_bucket";
    assert!(
        c.shown.values().flat_map(BTreeMap::keys).any(|k| k.starts_with(histogram)),
        "the histogram was compared"
    );
    let count = "ena_linklocal_packets_per_second_count";
    let mut counted =
        c.got.iter().filter(|(k, _)| k.starts_with(count)).flat_map(|(_, v)| v.values().flatten());
    assert!(counted.any(|(v, _)| *v > 0.0), "the storm's packet rates were observed");
    assert!(c.metric >= 10.0);
}

/// The driver resets at 20 s: the exported counters keep growing, so no start time moves;
/// every point is what /metrics showed for the same sample.
#[test]
fn otlp_points_equal_what_metrics_showed_and_a_driver_reset_moves_no_start() {
    let Compared { got, metric: resets, log, .. } =
        run_and_compare("driver-reset", 26, "enawatch_driver_resets_total{device=\"ens5\"}");
    // The driver reset happened, and moved no start time: one start per series.
    assert!(resets >= 1.0, "the scenario's driver reset at 20 s:\n{log}");
    let linklocal = "ena_allowance_exceeded_packets_total{allowance=\"linklocal\",device=\"ens5\"}";
    assert!(got[linklocal].values().flatten().any(|(v, _)| *v > 0.0));
    for (key, by_time) in &got {
        let starts: BTreeSet<i64> = by_time.values().flatten().map(|(_, s)| *s).collect();
        if name_of(key).ends_with("_total")
            || key.contains("_bucket")
            || key.contains("_count")
            || key.contains("_sum")
        {
            assert_eq!(starts.len(), 1, "{key}: start times {starts:?}");
            let first = *by_time.keys().next().unwrap();
            assert!(starts.iter().all(|&s| s <= first && s > 0), "{key}: {starts:?}, first point {first}");
        }
    }
}

/// A 503 phase, then no receiver at all, with the agent restarted in between (spool on),
/// about 20 s in all: every point arrives, once; a counter that restarted with the agent
/// has a new start time, one per run.
#[test]
fn otlp_across_an_outage_and_an_agent_restart_every_point_arrives_once() {
    let dir = TempDir::new("otlp-outage");
    let receiver = Receiver::start(0);
    let port = receiver.port;
    let config = otlp_config(&receiver.url(), Some(&dir.join("spool")));
    let env = [("AWS_EC2_METADATA_SERVICE_ENDPOINT", receiver.url())];
    let first = start_agent("steady", &config, &env);
    std::thread::sleep(Duration::from_secs(3));
    receiver.set("unavailable");
    std::thread::sleep(Duration::from_secs(8));
    let before: Vec<Json> = receiver.seen()["points"].as_array().unwrap().clone();
    drop(receiver); // refused connections from now on
    std::thread::sleep(Duration::from_secs(3));
    assert!(first.outcome("otel", "retried") > 0.0);
    let first_ticks = first.metric("enawatch_samples_total");
    first.stop_cleanly();
    let second = start_agent("steady", &config, &env);
    std::thread::sleep(Duration::from_secs(6));
    let receiver = Receiver::start(port);
    wait_until(
        "the backlog to be delivered",
        Duration::from_secs(30),
        || (second.pending("otel") < 60.0 && second.outcome("otel", "sent") > 0.0).then_some(()),
        || format!("\n{}", second.log()),
    );
    let second_ticks = second.metric("enawatch_samples_total");
    std::thread::sleep(Duration::from_secs(2));
    let log = second.stop_cleanly();
    let seen = receiver.seen();
    assert_eq!(seen["errors"].as_array().unwrap().len(), 0, "{}", seen["errors"]);
    let mut points = before;
    points.extend(seen["points"].as_array().unwrap().iter().cloned());

    let got = samples(&points);
    let twice: Vec<_> = got
        .iter()
        .flat_map(|(k, by_time)| by_time.iter().filter(|(_, v)| v.len() > 1).map(move |(t, _)| (k, *t)))
        .collect();
    assert!(twice.is_empty(), "points received twice: {twice:?}");
    let ticks = &got["enawatch_samples_total{}"];
    let values: BTreeMap<i64, f64> = ticks.iter().map(|(t, v)| (*t, v[0].0)).collect();
    let runs = runs(&values);
    assert_eq!(runs.len(), 2, "{runs:?}");
    for (run, shown) in runs.iter().zip([first_ticks, second_ticks]) {
        let expected: Vec<f64> = (1..=run.len()).map(|i| i as f64).collect();
        assert_eq!(run, &expected, "ticks missing or out of order");
        assert!(run.len() as f64 >= shown);
    }
    // One start per run: the agent's own counter restarted with the agent, nothing else moved it.
    let starts: Vec<i64> = ticks.values().map(|v| v[0].1).collect();
    let distinct: BTreeSet<i64> = starts.iter().copied().collect();
    assert_eq!(distinct.len(), 2, "{distinct:?}");
    assert!(starts.windows(2).all(|w| w[0] <= w[1]), "starts go forward: {starts:?}");
    assert!(log.contains("spool: resending"), "{log}");
    // A counter that continued across the restart (the drop counters, flat in this scenario)
    // kept its start: the new process took it from the spool.
    let drops: Vec<_> =
        got.iter().filter(|(k, _)| name_of(k) == "ena_allowance_exceeded_packets_total").collect();
    assert!(!drops.is_empty());
    for (key, by_time) in drops {
        let starts: BTreeSet<i64> = by_time.values().flatten().map(|(_, s)| *s).collect();
        assert_eq!(starts.len(), 1, "{key}: {starts:?}");
    }
}

/// CloudWatch's OTLP endpoint: every request signed for `monitoring`, recomputed by
/// botocore, with EKS Pod Identity credentials that expire mid-run.
#[test]
fn otlp_sigv4_for_cloudwatch_with_a_credentials_refresh() {
    let dir = TempDir::new("otlp-podid");
    let token = dir.join("token");
    std::fs::write(&token, "pod-identity-token-1").unwrap();
    let env = [
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://MOCK/creds".to_owned()),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", token.display().to_string()),
    ];
    let stats = sigv4_case_as("cloudwatch", &env, None, 2, true);
    let calls = stats["calls"].as_array().unwrap().iter().filter(|c| c["endpoint"] == "container").count();
    assert!(calls >= 2, "{stats}");
}
