//! Unit tests of the configuration checks and the collector.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::collector::Collector;
use super::config::expand;
use super::*;
use crate::history::{Snapshot, Store};
use crate::metrics;

fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    move |k| map.get(k).cloned()
}

fn endpoint(yaml: &str) -> EndpointConfig {
    yaml_serde::from_str(yaml).unwrap_or_else(|e| panic!("{e}: {yaml}"))
}

fn resolve(yaml: &str, vars: &[(&str, &str)]) -> Result<Endpoint, String> {
    endpoint(yaml).resolve_with(3, Duration::from_secs(1), &env(vars)).map_err(|e| e.to_string())
}

#[test]
fn defaults_and_amp_regions() {
    let amp = "url: https://aps-workspaces.eu-west-1.amazonaws.com/workspaces/ws-1/api/v1/remote_write\n\
               auth: {sigv4: {}}\n";
    let e = resolve(amp, &[("AWS_ACCESS_KEY_ID", "AKIA1"), ("AWS_SECRET_ACCESS_KEY", "s3cr3t")]).unwrap();
    assert_eq!(e.name, "aps-workspaces.eu-west-1.amazonaws.com");
    assert_eq!((e.resolution, e.queue_duration), (Duration::from_secs(15), Duration::from_secs(7200)));
    assert_eq!(e.queue_steps, 480);
    let Auth::Sigv4 { region, sts, .. } = &e.auth else { panic!("sigv4") };
    assert_eq!((region.as_str(), sts.as_str()), ("eu-west-1", "https://sts.eu-west-1.amazonaws.com/"));
    assert!(!format!("{e:?}").contains("s3cr3t"));

    // The printed configuration reads back to the same endpoint.
    let printed = yaml_serde::to_string(&e.effective()).unwrap();
    assert!(printed.contains("region: eu-west-1") && printed.contains("resolution: 15s"), "{printed}");
    let again = endpoint(&printed).resolve_with(
        3,
        Duration::from_secs(1),
        &env(&[("AWS_ACCESS_KEY_ID", "A"), ("AWS_SECRET_ACCESS_KEY", "B")]),
    );
    assert_eq!(again.unwrap().effective(), e.effective());

    // Without a region in the URL, the environment's or the configuration's.
    let local = "url: http://127.0.0.1:9/rw\nauth: {sigv4: {}}\n";
    let creds = [("AWS_ACCESS_KEY_ID", "A"), ("AWS_SECRET_ACCESS_KEY", "B")];
    assert!(resolve(local, &creds).unwrap_err().contains("auth.sigv4.region: \" is needed"));
    let with_env = [creds[0], creds[1], ("AWS_REGION", "ap-south-1")];
    assert!(
        matches!(resolve(local, &with_env).unwrap().auth, Auth::Sigv4 { ref region, .. } if region == "ap-south-1")
    );
    // A resolution below the interval sends every sample: the queue counts in intervals.
    let e = endpoint("url: http://x/\nresolution: 100ms\nqueue_duration: 1m\n")
        .resolve_with(0, Duration::from_secs(2), &env(&[]))
        .unwrap();
    assert_eq!(e.queue_steps, 30);
}

#[test]
fn every_error_names_the_entry_the_field_and_the_value() {
    let dir = std::env::temp_dir().join(format!("enawatch-rw-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let cases = [
        ("url: 'not a url'\n", "remote_write: \"[3] url: not a url\" is not a URL"),
        ("url: ftp://x/\n", "must be an http:// or https:// URL"),
        ("url: https://user:hunter2@x/\n", "[3] url: https://…@x/\" carries credentials"),
        ("url: http://x/\nname: 'a b'\n", "[3] name: a b\" may only have"),
        ("url: http://x/\nresolution: 2x\n", "[3] resolution: 2x\" has an unknown unit"),
        ("url: http://x/\nqueue_duration: 5s\n", "[3] queue_duration: 5s\" is shorter than one step"),
        ("url: http://x/\nqueue_duration: 30d\nresolution: 1s\n", "holds more than 86400 steps"),
        ("url: http://x/\nmax_samples_per_send: 0\n", "max_samples_per_send: 0\" is not between"),
        ("url: http://x/\nmin_backoff: 5s\nmax_backoff: 1s\n", "[3] max_backoff: 1s\" must be at least"),
        ("url: http://x/\nauth: {}\n", "[3] auth: sigv4, basic, bearer\" exactly one"),
        (
            "url: http://x/\nauth: {bearer: {token_file: /nonexistent/token}}\n",
            "[3] auth.bearer.token_file: /nonexistent/token\" cannot be read",
        ),
        (
            "url: http://x/\nca_file: /nonexistent/ca.pem\n",
            "[3] ca_file: /nonexistent/ca.pem\" cannot be read",
        ),
        ("url: http://x/\nspool_dir: /nonexistent/a/b\n", "spool_dir: /nonexistent/a/b\" does not exist"),
        ("url: http://x/\nheaders: {Authorization: x}\n", "[3] headers: Authorization\" is set by the agent"),
        ("url: http://x/\nexternal_labels: {__x: y}\n", "[3] external_labels: __x\" is not a label name"),
        (
            "url: http://x/\nexternal_labels: {node: '${NODE_NAME}'}\n",
            "[3] external_labels.node: ${NODE_NAME}\" uses NODE_NAME, which is not set",
        ),
        (
            "url: http://x/\nauth: {sigv4: {region: us-east-1, role_arn: admin}}\n",
            "[3] auth.sigv4.role_arn: admin\" is not a role ARN",
        ),
        (
            "url: http://x/\nauth: {sigv4: {region: us-east-1}}\n",
            "[3] auth.sigv4: credentials\" cannot be found: no AWS credentials",
        ),
    ];
    let no_imds = [("AWS_EC2_METADATA_DISABLED", "true")];
    for (yaml, want) in cases {
        let err = resolve(yaml, &no_imds).unwrap_err();
        assert!(err.contains(want), "{yaml}: got {err:?}, want {want:?}");
    }
    let basic =
        format!("url: http://x/\nauth: {{basic: {{username: u, password_file: {}}}}}\n", empty.display());
    assert!(
        resolve(&basic, &[]).unwrap_err().contains("password_file")
            && resolve(&basic, &[]).unwrap_err().contains("is empty")
    );
    let _ = std::fs::remove_dir_all(&dir);

    // Unknown fields, and unknown kinds of authentication, are errors of the file.
    let err = yaml_serde::from_str::<EndpointConfig>("url: http://x/\nauth: {oauth2: {}}\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `oauth2`, expected one of `sigv4`, `basic`, `bearer`"), "{err}");

    let two = [endpoint("url: http://x:1/a\n"), endpoint("url: http://x:1/b\n")];
    let err = resolve_all(&two, Duration::from_secs(1)).unwrap_err().to_string();
    assert!(err.contains("[1] name: x:1\" is the name of another endpoint"), "{err}");
}

#[test]
fn external_labels_expand_the_environment() {
    let vars = env(&[("NODE_NAME", "ip-10-0-1-23.ec2.internal")]);
    assert_eq!(expand("${NODE_NAME}", &vars).unwrap(), "ip-10-0-1-23.ec2.internal");
    assert_eq!(expand("a-${NODE_NAME}-$$5", &vars).unwrap(), "a-ip-10-0-1-23.ec2.internal-$5");
    assert!(expand("${NODE_NAME", &vars).is_err());
}

fn snapshot(seq: u64, at_ms: i64) -> Arc<Snapshot> {
    Arc::new(Snapshot { seq, at_ms, ..Snapshot::empty() })
}

/// A pusher for `endpoints` (1 s interval) whose collector the test drives by hand, and the
/// store it reads.
fn collecting(endpoints: &[EndpointConfig]) -> (Arc<Store>, Pusher, Collector) {
    let endpoints = resolve_all(endpoints, Duration::from_secs(1)).unwrap();
    let stats = stats(&endpoints);
    let store = Arc::new(Store::new(10));
    let options = metrics::Options {
        compat: Vec::new(),
        interval: Duration::from_secs(1),
        notify: None,
        remote_write: Some(Arc::clone(&stats)),
    };
    let mut pusher =
        Pusher::start(&endpoints, &stats, Arc::clone(&store), &options, Duration::from_secs(1)).unwrap();
    pusher.stop_collecting();
    let collector = Collector::new(
        pusher.shared.clone(),
        Arc::clone(&store),
        options,
        Duration::from_secs(1),
        vec![i64::MIN; endpoints.len()],
    );
    (store, pusher, collector)
}

#[test]
fn the_collector_takes_one_step_per_resolution_with_the_metrics_series() {
    let fine = endpoint(
        "url: http://127.0.0.1:9/a\nname: fine\nresolution: 1s\nexternal_labels: {cluster: c1, zz: last}\n",
    );
    let coarse = endpoint("url: http://127.0.0.1:9/b\nname: coarse\nresolution: 5s\n");
    let (store, pusher, mut collector) = collecting(&[fine, coarse]);
    collector.poll(); // the empty snapshot before the first tick: nothing
    for k in 1..=12 {
        store.publish(snapshot(k, 1_790_000_000_000 + i64::try_from(k).unwrap() * 1000));
        collector.poll();
        collector.poll(); // the same snapshot again: nothing more
    }
    let steps = |i: usize| {
        let mut q = pusher.shared[i].lock();
        let mut times = Vec::new();
        while let Some(batch) = q.take(1_000_000) {
            let decoded = proto::decode_request(&proto::compress(&batch.encode())).unwrap();
            let samples = decoded
                .iter()
                .find(|s| s.labels.iter().any(|l| l == &("__name__".into(), "enawatch_samples_total".into())))
                .unwrap();
            times.extend(samples.samples.iter().map(|(t, v)| (t - 1_790_000_000_000, *v)));
            if i == 0 {
                for s in &decoded {
                    let names: Vec<&str> = s.labels.iter().map(|(k, _)| k.as_str()).collect();
                    let mut sorted = names.clone();
                    sorted.sort_unstable();
                    assert_eq!(names, sorted, "labels are sorted");
                    assert_eq!(names[0], "__name__");
                    assert!(s.labels.contains(&("cluster".into(), "c1".into())), "{s:?}");
                    assert!(s.labels.iter().all(|(_, v)| !v.is_empty()), "no empty label values: {s:?}");
                }
            }
            q.finish();
        }
        times
    };
    let fine: Vec<(i64, f64)> = (1..=12).map(|k| (k * 1000, k as f64)).collect();
    assert_eq!(steps(0), fine, "every sample at 1s, at once");
    // The latest sample of each 5 s step, sent as it is taken: the next tick is in a new step.
    assert_eq!(steps(1), [(4000, 4.0), (9000, 9.0)]);
    // The step under way is sent when the agent stops.
    collector.finish();
    assert_eq!(steps(1), [(12_000, 12.0)]);
    assert!(steps(0).is_empty());
}

#[test]
fn otlp_endpoints_and_cloudwatch_sigv4() {
    let creds = [("AWS_ACCESS_KEY_ID", "A"), ("AWS_SECRET_ACCESS_KEY", "B")];
    let cw = "url: https://monitoring.eu-central-1.amazonaws.com\nprotocol: otlp\nauth: {sigv4: {}}\n";
    let e = resolve(cw, &creds).unwrap();
    assert_eq!(e.protocol, Protocol::Otlp);
    assert_eq!(e.url.as_str(), "https://monitoring.eu-central-1.amazonaws.com/v1/metrics");
    let Auth::Sigv4 { region, service, .. } = &e.auth else { panic!("sigv4") };
    assert_eq!((region.as_str(), service.as_str()), ("eu-central-1", "monitoring"));
    // The printed configuration reads back to the same endpoint.
    let printed = yaml_serde::to_string(&e.effective()).unwrap();
    assert!(printed.contains("protocol: otlp") && printed.contains("service: monitoring"), "{printed}");
    assert_eq!(
        endpoint(&printed).resolve_with(3, Duration::from_secs(1), &env(&creds)).unwrap().effective(),
        e.effective()
    );

    // A collector's base URL gets the signal's path once; a full one is kept.
    let e = resolve("url: http://otel:4318/\nprotocol: otlp\n", &[]).unwrap();
    assert_eq!(e.url.as_str(), "http://otel:4318/v1/metrics");
    let e = resolve("url: http://otel:4318/v1/metrics\nprotocol: otlp\n", &[]).unwrap();
    assert_eq!(e.url.as_str(), "http://otel:4318/v1/metrics");
    // Remote write is the default, and AMP signs for aps.
    let amp = "url: https://aps-workspaces.eu-west-1.amazonaws.com/workspaces/ws-1/api/v1/remote_write\n\
               auth: {sigv4: {}}\n";
    let e = resolve(amp, &creds).unwrap();
    assert_eq!(e.protocol, Protocol::RemoteWrite);
    assert!(matches!(e.auth, Auth::Sigv4 { ref service, .. } if service == "aps"));
    assert!(!yaml_serde::to_string(&e.effective()).unwrap().contains("protocol"));
    assert!(resolve("url: http://x/\nprotocol: grpc\n", &[])
        .unwrap_err()
        .contains("must be remote_write or otlp"));
    let bad = "url: http://x/\nauth: {sigv4: {region: us-east-1, service: 'a b'}}\n";
    assert!(resolve(bad, &creds).unwrap_err().contains("auth.sigv4.service"));
}

/// An OTLP endpoint's steps carry each series' type and start: the start stays while a
/// counter grows and moves when it goes down (here the agent's own tick counter, as after a
/// restart); gauges have none.
#[test]
fn otlp_steps_carry_types_and_start_times_that_move_only_on_a_restart() {
    let e = endpoint("url: http://127.0.0.1:9/\nname: otel\nprotocol: otlp\nresolution: 1s\n");
    let (store, pusher, mut collector) = collecting(&[e]);
    let base = 1_790_000_000_000;
    // Ticks 1..=4, then the counter starts over at 1 (what a new process shows).
    for (k, seq) in [(1, 1), (2, 2), (3, 3), (4, 4), (5, 1)] {
        store.publish(Arc::new(Snapshot { seq, at_ms: base + k * 1000, ..Snapshot::empty() }));
        collector.poll();
    }
    let mut q = pusher.shared[0].lock();
    let batch = q.take(1_000_000).unwrap();
    let decoded = proto::decode_request(&proto::compress(&batch.encode())).unwrap();
    let label = |s: &proto::DecodedSeries, name: &str| {
        s.labels.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    };
    let mut ticks = Vec::new();
    for s in &decoded {
        let name = label(s, "__name__").unwrap();
        let kind = label(s, otlp::TYPE).unwrap();
        match kind.as_str() {
            otlp::COUNTER => assert!(label(s, otlp::START).is_some(), "{name}"),
            otlp::GAUGE => assert!(label(s, otlp::START).is_none(), "{name}"),
            otlp::HISTOGRAM => {}
            other => panic!("{name}: {other}"),
        }
        if name == "enawatch_samples_total" {
            let start: i64 = label(s, otlp::START).unwrap().parse().unwrap();
            ticks.extend(s.samples.iter().map(|(t, v)| (t - base, *v, start - base)));
        }
    }
    ticks.sort_by_key(|t| t.0);
    let tick_starts: Vec<i64> = ticks.iter().map(|t| t.2).collect();
    assert_eq!(ticks.len(), 5, "{ticks:?}");
    assert_eq!(tick_starts[..4], [1000; 4], "{ticks:?}");
    assert_eq!(tick_starts[4], 5000, "went down: a new start {ticks:?}");
}
