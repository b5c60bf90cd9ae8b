//! Remote write, end to end, with the real binary and real peers, all on 127.0.0.1:
//!
//! - a real Prometheus (Debian's 2.42, `--web.enable-remote-write-receiver`) receives a
//!   simulated node's samples: every series and value it stores equals what the agent's
//!   `/metrics` showed for the same sample, at 1 s and at a coarser resolution;
//! - receiver outages, scaled down from minutes to about twenty seconds so the tests stay
//!   short: Prometheus stopped mid-run and started again, with the agent restarted (spool on)
//!   during the outage; a receiver in the test that answers 503, refuses connections and
//!   comes back, which must get every sample exactly once;
//! - bad input: a 400 drops its batch with a log line and is not retried, a 429's
//!   `Retry-After` is honoured, an unreachable endpoint is retried and counted without
//!   touching sampling or the other endpoint, and `--check-config` names what it can know;
//! - SigV4: a local receiver recomputes every signature with botocore (independent of the
//!   agent's implementation), with credentials from each provider, each speaking the real
//!   protocol locally (environment, EKS Pod Identity's container endpoint, IRSA's STS
//!   `AssumeRoleWithWebIdentity`, IMDSv2, and `AssumeRole` on top), refreshed mid-run;
//! - TLS with a private CA (`ca_file`), bearer and basic authentication from files.
//!
//! Needs `prometheus` and `openssl` (Debian) and botocore (`python3 -m pip install
//! botocore==1.43.11`). Nothing here contacts AWS: the agent runs with a cleared environment
//! and every AWS endpoint pointed at tests/remote_write/aws_mock.py.

#![expect(
    clippy::float_cmp,
    reason = "sample values are whole numbers or exact copies on both sides: comparing them exactly is the point"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use enawatch::remote_write::proto::{decode_request, DecodedSeries};

use crate::support::{bin, free_port, http_get, parse_metrics, sigterm, wait_until, Agent, TempDir};

pub(crate) const BOTOCORE: &str = "python3 -m pip install botocore==1.43.11";
pub(crate) const NODE: &str = "ip-10-0-1-23.ec2.internal";

// === the agent ===

/// The real binary, `serve --simulate SCENARIO` with `config` as its config file and only
/// the given environment (no AWS variable of the host's can leak in), once it has sampled.
pub(crate) fn start_agent(scenario: &str, config: &str, env: &[(&str, String)]) -> Agent<'static> {
    let mut launch = Agent::launch(&["serve", "--simulate", scenario]).env_clear();
    let config = launch.file("enawatch.yaml", config);
    launch = launch.arg("--config").arg(config);
    for (key, value) in env {
        launch = launch.env(key, value);
    }
    launch.start()
}

/// What the remote-write tests read off an agent.
pub(crate) trait RemoteWriteAgent {
    fn outcome(&self, endpoint: &str, outcome: &str) -> f64;
    fn pending(&self, endpoint: &str) -> f64;
    /// SIGTERM, which it must exit from cleanly, and the log.
    fn stop_cleanly(self) -> String;
}

impl RemoteWriteAgent for Agent<'_> {
    fn outcome(&self, endpoint: &str, outcome: &str) -> f64 {
        self.metric(&format!(
            "enawatch_remote_write_samples_total{{endpoint=\"{endpoint}\",outcome=\"{outcome}\"}}"
        ))
    }

    fn pending(&self, endpoint: &str) -> f64 {
        self.metric(&format!("enawatch_remote_write_pending_samples{{endpoint=\"{endpoint}\"}}"))
    }

    fn stop_cleanly(self) -> String {
        let (status, _, log) = self.stop();
        assert!(status.success(), "the agent exited with {status}:\n{log}");
        log
    }
}

// === series, as both sides spell them ===

/// A series as `name{a="x",b="y"}`: labels sorted, empty values dropped (an empty label is
/// no label, to Prometheus), `skip` labels left out.
pub(crate) fn canonical(
    name: &str,
    labels: impl IntoIterator<Item = (String, String)>,
    skip: &[&str],
) -> String {
    let mut labels: Vec<(String, String)> =
        labels.into_iter().filter(|(k, v)| !v.is_empty() && !skip.contains(&k.as_str())).collect();
    labels.sort();
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{name}{{{}}}", inner.join(","))
}

/// Parses an exposition series key `name{a="x",b="y"}` (escapes included).
pub(crate) fn parse_series(key: &str) -> (String, Vec<(String, String)>) {
    let Some((name, rest)) = key.split_once('{') else { return (key.to_owned(), Vec::new()) };
    let mut labels = Vec::new();
    let mut chars = rest.trim_end_matches('}').chars().peekable();
    loop {
        let label: String = chars.by_ref().take_while(|&c| c != '=').collect();
        if label.is_empty() {
            break;
        }
        assert_eq!(chars.next(), Some('"'), "{key}");
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => {}
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.push((label.trim_start_matches(',').to_owned(), value));
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    (name.to_owned(), labels)
}

/// One scrape as canonical series → value, and the time of the sample it shows (ms).
pub(crate) fn recorded(text: &str) -> (i64, BTreeMap<String, f64>) {
    let metrics = parse_metrics(text);
    #[expect(clippy::cast_possible_truncation, reason = "milliseconds, exactly representable")]
    let at = (metrics.get("enawatch_last_sample_timestamp_seconds").copied().unwrap_or(0.0) * 1000.0).round()
        as i64;
    let series = metrics
        .into_iter()
        .map(|(key, value)| {
            let (name, labels) = parse_series(&key);
            (canonical(&name, labels, &[]), value)
        })
        .collect();
    (at, series)
}

pub(crate) fn name_of(series: &str) -> &str {
    series.split('{').next().unwrap()
}

// === Prometheus ===

struct Prometheus {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl Prometheus {
    fn start(dir: &TempDir) -> Self {
        let mut p = Self { child: None, port: free_port(), dir: dir.0.clone() };
        std::fs::write(p.dir.join("prometheus.yml"), "global:\n  scrape_interval: 1h\n").unwrap();
        p.run();
        p
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn run(&mut self) {
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", self.dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", self.dir.join("tsdb").display()))
            .arg(format!("--web.listen-address={}", self.addr()))
            .arg("--web.enable-remote-write-receiver")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus (Debian package) must be installed; scripts/test installs it");
        self.child = Some(child);
        let addr = self.addr();
        wait_until(
            "Prometheus to be ready",
            Duration::from_secs(30),
            || http_get(&addr, "/-/ready", &[]).is_ok_and(|r| r.status == 200).then_some(()),
            || format!("\n{}", std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()),
        );
    }

    /// Stops it by PID (SIGTERM: it closes its TSDB), keeping the data for the next start.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            sigterm(&mut child);
        }
    }

    /// Every raw sample of the series `selector` selects, by series (without `skip` labels).
    fn samples(&self, selector: &str, skip: &[&str]) -> BTreeMap<String, BTreeMap<i64, f64>> {
        let query = format!("{selector}[1h]");
        let path = format!("/api/v1/query?query={}", urlencode(&query));
        let response = http_get(&self.addr(), &path, &[]).unwrap();
        let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(body["status"], "success", "{body}");
        let mut out = BTreeMap::new();
        for series in body["data"]["result"].as_array().unwrap() {
            let labels = series["metric"].as_object().unwrap();
            let name = labels["__name__"].as_str().unwrap();
            let labels = labels
                .iter()
                .filter(|(k, _)| *k != "__name__")
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()));
            let key = canonical(name, labels, skip);
            let values: &mut BTreeMap<i64, f64> = out.entry(key).or_default();
            for point in series["values"].as_array().unwrap() {
                #[expect(clippy::cast_possible_truncation, reason = "milliseconds, exactly representable")]
                let at = (point[0].as_f64().unwrap() * 1000.0).round() as i64;
                values.insert(at, point[1].as_str().unwrap().parse().unwrap());
            }
        }
        out
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The values of a counter that restarts with each agent process, split into those runs.
pub(crate) fn runs(values: &BTreeMap<i64, f64>) -> Vec<Vec<f64>> {
    let mut runs: Vec<Vec<f64>> = Vec::new();
    for &v in values.values() {
        match runs.last_mut() {
            Some(run) if run.last().is_some_and(|&last| v > last) => run.push(v),
            _ => runs.push(vec![v]),
        }
    }
    runs
}

/// `1, 2, …, n`: every tick of one agent process, none missing.
pub(crate) fn assert_every_tick(run: &[f64], what: &str) {
    let expected: Vec<f64> = (1..=run.len()).map(|i| i as f64).collect();
    assert_eq!(run, expected, "{what}: ticks missing or out of order");
}

pub(crate) fn is_self_metric(series: &str) -> bool {
    name_of(series).starts_with("enawatch_remote_write_")
}

#[test]
fn prometheus_stores_exactly_what_the_agent_showed() {
    let dir = TempDir::new("rw-prom");
    let prom = Prometheus::start(&dir);
    let url = format!("http://{}/api/v1/write", prom.addr());
    let config = format!(
        "remote_write:\n\
         - {{url: '{url}', name: full, resolution: 1s, batch_send_deadline: 1s,\n\
            external_labels: {{stream: full, node: '${{NODE_NAME}}', cluster: test}}}}\n\
         - {{url: '{url}', name: coarse, resolution: 5s, batch_send_deadline: 1s,\n\
            external_labels: {{stream: coarse, node: '${{NODE_NAME}}', cluster: test}}}}\n"
    );
    let agent = start_agent("dns-storm", &config, &[("NODE_NAME", NODE.into())]);

    // What the agent shows, one scrape per sample, for 20 s (the storm's first burst is at 8 s).
    let mut shown: BTreeMap<i64, BTreeMap<String, f64>> = BTreeMap::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        let (at, series) = recorded(&agent.scrape());
        if at > 0 {
            shown.entry(at).or_insert(series);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Everything shown has been pushed after one batch deadline.
    std::thread::sleep(Duration::from_secs(3));
    let external = ["stream", "node", "cluster"];
    let full = prom.samples("{stream=\"full\"}", &external);
    let coarse = prom.samples("{stream=\"coarse\"}", &external);
    let log = agent.stop_cleanly();

    assert!(shown.len() >= 15, "{} samples shown", shown.len());
    let mut compared = 0;
    for (at, series) in &shown {
        for (key, value) in series {
            if is_self_metric(key) {
                // Counted at push time, not at scrape time: present is what can be checked.
                assert!(full.contains_key(key), "{key} was not pushed");
                continue;
            }
            let stored = full.get(key).and_then(|s| s.get(at));
            assert_eq!(
                stored,
                Some(value),
                "{key} at {at}: /metrics showed {value}, Prometheus has {stored:?}"
            );
            compared += 1;
        }
    }
    // Only native families, and only what /metrics showed.
    let names: BTreeSet<String> = enawatch::metrics::NATIVE_FAMILIES
        .iter()
        .flat_map(|f| ["", "_bucket", "_sum", "_count"].map(|suffix| format!("{}{suffix}", f.name)))
        .collect();
    let last_shown = *shown.keys().last().unwrap();
    for (key, samples) in &full {
        assert!(names.contains(name_of(key)), "{key} is not a sample of a native family");
        if samples.keys().any(|&at| at <= last_shown) {
            assert!(shown.values().any(|s| s.contains_key(key)), "{key} was never shown");
        }
    }
    let drops = "ena_allowance_exceeded_packets_total{allowance=\"linklocal\",device=\"ens5\"}";
    assert!(full[drops].values().any(|&v| v > 0.0), "the storm's drops arrived: {:?}", full[drops]);
    // Every label of every series: node and cluster from the configuration.
    let nodes = prom.samples(&format!("{{node=\"{NODE}\",cluster=\"test\"}}"), &[]);
    assert_eq!(nodes.len(), full.len() + coarse.len());

    // 5 s: the latest sample of each 5-second step, one per step, with the same values.
    let ticks: Vec<i64> = full["enawatch_samples_total{}"].keys().copied().collect();
    let coarse_ticks: Vec<i64> = coarse["enawatch_samples_total{}"].keys().copied().collect();
    assert!(coarse_ticks.len() >= 3, "{coarse_ticks:?}");
    for (i, t) in coarse_ticks.iter().enumerate() {
        let step = t.div_euclid(5000);
        let last_in_step = ticks.iter().rfind(|&&x| x.div_euclid(5000) == step).copied();
        assert_eq!(Some(*t), last_in_step, "coarse samples {coarse_ticks:?}, ticks {ticks:?}");
        assert!(i == 0 || coarse_ticks[i - 1].div_euclid(5000) < step, "two samples in one step");
    }
    for (key, samples) in &coarse {
        for (at, value) in samples {
            if !is_self_metric(key) && full[key].contains_key(at) {
                assert_eq!(full[key][at], *value, "{key} at {at}");
            }
        }
    }
    assert!(compared > 500, "compared {compared} values");
    assert!(!log.contains("cannot push") && !log.contains("rejected"), "a healthy run:\n{log}");
}

/// The outage is 20 s rather than minutes, and the agent is restarted in its middle: what
/// matters is that it spans many batches, retries and a restart, not its length.
#[test]
fn a_prometheus_outage_and_an_agent_restart_lose_nothing() {
    let dir = TempDir::new("rw-outage");
    let mut prom = Prometheus::start(&dir);
    let spool = dir.join("spool");
    let config = format!(
        "remote_write:\n- {{url: 'http://{}/api/v1/write', name: prom, resolution: 1s, batch_send_deadline: 500ms,\n  \
         min_backoff: 200ms, max_backoff: 1s, spool_dir: '{}', external_labels: {{node: n1}}}}\n",
        prom.addr(),
        spool.display()
    );
    let first = start_agent("dns-storm", &config, &[]);
    wait_until(
        "a first delivery",
        Duration::from_secs(10),
        || (first.outcome("prom", "sent") > 0.0).then_some(()),
        || format!("\n{}", first.log()),
    );

    prom.stop();
    std::thread::sleep(Duration::from_secs(8));
    assert!(first.outcome("prom", "retried") > 0.0, "{}", first.log());
    let first_seq = first.metric("enawatch_samples_total");
    let first_log = first.stop_cleanly();
    assert!(first_log.contains("cannot push samples; retrying with backoff"), "{first_log}");

    let second = start_agent("dns-storm", &config, &[]);
    assert!(
        second.log().contains("spool: resending what the previous process could not deliver"),
        "{}",
        second.log()
    );
    std::thread::sleep(Duration::from_secs(8));
    // Sampling went on all along.
    let second_seq = second.metric("enawatch_samples_total");
    assert!(second_seq >= 8.0, "{second_seq}");
    assert!(second.pending("prom") > 0.0);

    prom.run();
    let n = second_seq;
    wait_until(
        "the backlog to be delivered",
        Duration::from_secs(40),
        || {
            let stored = prom.samples("enawatch_samples_total", &["node"]);
            stored
                .get("enawatch_samples_total{}")
                .is_some_and(|s| runs(s).get(1).is_some_and(|r| r.len() as f64 >= n))
                .then_some(())
        },
        || format!("\n{}", second.log()),
    );
    let stored = prom.samples("enawatch_samples_total", &["node"]);
    let runs = runs(&stored["enawatch_samples_total{}"]);
    assert_eq!(runs.len(), 2, "one run per agent process: {runs:?}");
    assert_every_tick(&runs[0], "first agent");
    assert!(runs[0].len() as f64 >= first_seq, "the first agent's last samples arrived: {runs:?}");
    assert_every_tick(&runs[1], "second agent");
    // Every family arrived for every tick, not only the tick counter (but the last few
    // ticks, which may still be on their way).
    let all = prom.samples("{node=\"n1\"}", &["node"]);
    let ticks: Vec<i64> = all["enawatch_samples_total{}"].keys().copied().collect();
    for (key, samples) in &all {
        if name_of(key).starts_with("ena_allowance") {
            for at in &ticks[..ticks.len() - 3] {
                assert!(samples.contains_key(at), "{key} has no sample at {at}");
            }
        }
    }
    let log = second.stop_cleanly();
    assert!(log.contains("remote-write endpoint reachable again"), "{log}");
}

// === a receiver in the test ===

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Accept,
    /// 503.
    Unavailable,
    /// One 429 with `Retry-After: 2`, then accept.
    TooManyOnce,
    /// One 400 (bad labels), then accept.
    RejectOnce,
}

#[derive(Default)]
struct Seen {
    /// Accepted requests' series.
    accepted: Vec<DecodedSeries>,
    /// The rejected request's series.
    rejected: Vec<DecodedSeries>,
    /// Every request: when, and the status answered.
    attempts: Vec<(Instant, u16)>,
}

/// A Remote Write receiver that answers as told, and can go away and come back on its port.
struct Receiver {
    port: u16,
    mode: Arc<Mutex<Mode>>,
    seen: Arc<Mutex<Seen>>,
    open: Arc<AtomicBool>,
}

impl Receiver {
    fn start() -> Self {
        let r = Self {
            port: free_port(),
            mode: Arc::new(Mutex::new(Mode::Accept)),
            seen: Arc::default(),
            open: Arc::new(AtomicBool::new(false)),
        };
        r.reopen();
        r
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// Stops listening: connections are refused.
    fn close(&self) {
        self.open.store(false, Ordering::SeqCst);
        // Wait for the accept loop to drop the listener.
        wait_until(
            "the listener to close",
            Duration::from_secs(5),
            || TcpStream::connect(("127.0.0.1", self.port)).is_err().then_some(()),
            String::new,
        );
    }

    fn reopen(&self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        self.open.store(true, Ordering::SeqCst);
        let (mode, seen, open) = (Arc::clone(&self.mode), Arc::clone(&self.seen), Arc::clone(&self.open));
        std::thread::spawn(move || {
            while open.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        let (mode, seen) = (Arc::clone(&mode), Arc::clone(&seen));
                        std::thread::spawn(move || serve(stream, &mode, &seen));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/api/v1/write", self.port)
    }
}

/// Answers one request (`Connection: close`, so a closed receiver has no pooled connection).
fn serve(stream: TcpStream, mode: &Mutex<Mode>, seen: &Mutex<Seen>) {
    let mut reader = BufReader::new(stream);
    let Some((_, body)) = crate::support::next_request(&mut reader) else { return };
    let series = decode_request(&body).expect("a valid Remote Write body");
    let mut m = mode.lock().unwrap();
    let (status, extra, text) = match *m {
        Mode::Accept => (204, "", ""),
        Mode::Unavailable => (503, "", "down for maintenance"),
        Mode::TooManyOnce => {
            *m = Mode::Accept;
            (429, "Retry-After: 2\r\n", "slow down")
        }
        Mode::RejectOnce => {
            *m = Mode::Accept;
            (400, "", "invalid label name \"0bad\"")
        }
    };
    drop(m);
    {
        let mut seen = seen.lock().unwrap();
        seen.attempts.push((Instant::now(), status));
        match status {
            204 => seen.accepted.extend(series),
            400 => seen.rejected.extend(series),
            _ => {}
        }
    }
    let reply = format!(
        "HTTP/1.1 {status} X\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
    let _ = reader.get_mut().write_all(reply.as_bytes());
}

/// (series, time) → how many times it was received.
fn counts(series: &[DecodedSeries]) -> BTreeMap<(String, i64), usize> {
    let mut out = BTreeMap::new();
    for s in series {
        let name = s.labels.iter().find(|(k, _)| k == "__name__").map(|(_, v)| v.clone()).unwrap_or_default();
        let key = canonical(&name, s.labels.iter().filter(|(k, _)| k != "__name__").cloned(), &[]);
        for (t, _) in &s.samples {
            *out.entry((key.clone(), *t)).or_default() += 1;
        }
    }
    out
}

fn tick_values(series: &[DecodedSeries]) -> BTreeMap<i64, f64> {
    series
        .iter()
        .filter(|s| s.labels.iter().any(|(k, v)| k == "__name__" && v == "enawatch_samples_total"))
        .flat_map(|s| s.samples.iter().copied())
        .collect()
}

fn rw_config(url: &str, spool: Option<&Path>) -> String {
    let spool = spool.map(|p| format!("  spool_dir: {}\n", p.display())).unwrap_or_default();
    format!(
        "remote_write:\n- url: {url}\n  name: test\n  resolution: 1s\n  batch_send_deadline: 500ms\n  \
         min_backoff: 100ms\n  max_backoff: 1s\n{spool}"
    )
}

/// 503s, refused connections and a restart of the agent in between (spool on), each a few
/// seconds: every sample arrives, and none twice.
#[test]
fn a_flaky_receiver_gets_every_sample_exactly_once() {
    let dir = TempDir::new("rw-flaky");
    let receiver = Receiver::start();
    let config = rw_config(&receiver.url(), Some(&dir.join("spool")));
    let first = start_agent("steady", &config, &[]);
    std::thread::sleep(Duration::from_secs(3));
    receiver.set(Mode::Unavailable);
    std::thread::sleep(Duration::from_secs(4));
    receiver.close();
    std::thread::sleep(Duration::from_secs(2));
    let first_seq = first.metric("enawatch_samples_total");
    assert!(first.outcome("test", "retried") > 0.0);
    first.stop_cleanly();
    let second = start_agent("steady", &config, &[]);
    std::thread::sleep(Duration::from_secs(3));
    receiver.set(Mode::Accept);
    receiver.reopen();
    wait_until(
        "the backlog to be delivered",
        Duration::from_secs(30),
        || (second.pending("test") < 60.0 && second.outcome("test", "sent") > 0.0).then_some(()),
        || format!("\n{}", second.log()),
    );
    let second_seq = second.metric("enawatch_samples_total");
    std::thread::sleep(Duration::from_secs(2));
    let log = second.stop_cleanly();

    let seen = receiver.seen.lock().unwrap();
    let twice: Vec<_> = counts(&seen.accepted).into_iter().filter(|(_, n)| *n > 1).collect();
    assert!(twice.is_empty(), "samples received twice: {twice:?}");
    let ticks = tick_values(&seen.accepted);
    let runs = runs(&ticks);
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_every_tick(&runs[0], "first agent");
    assert!(runs[0].len() as f64 >= first_seq);
    assert_every_tick(&runs[1], "second agent");
    assert!(runs[1].len() as f64 >= second_seq);
    assert!(seen.attempts.iter().any(|(_, s)| *s == 503));
    assert!(log.contains("spool: resending"), "{log}");
}

/// A 400 drops its batch once, with the receiver's reason in one log line; a 429's
/// Retry-After is waited for; an endpoint that does not answer at all is retried and
/// counted while sampling and the other endpoint carry on.
#[test]
fn receiver_errors_are_dropped_retried_or_waited_for_as_they_say() {
    let receiver = Receiver::start();
    let down = format!("http://127.0.0.1:{}/api/v1/write", free_port());
    let config = format!(
        "{}- {{url: '{down}', name: down, resolution: 1s, min_backoff: 100ms, max_backoff: 1s, queue_duration: 3s}}\n",
        rw_config(&receiver.url(), None)
    );
    let agent = start_agent("steady", &config, &[]);
    let started = Instant::now();
    wait_until(
        "a delivery",
        Duration::from_secs(10),
        || (agent.outcome("test", "sent") > 0.0).then_some(()),
        || format!("\n{}", agent.log()),
    );

    receiver.set(Mode::RejectOnce);
    wait_until(
        "the rejection",
        Duration::from_secs(10),
        || (agent.outcome("test", "failed") > 0.0).then_some(()),
        || format!("\n{}", agent.log()),
    );
    receiver.set(Mode::TooManyOnce);
    wait_until(
        "the 429",
        Duration::from_secs(10),
        || receiver.seen.lock().unwrap().attempts.iter().any(|(_, s)| *s == 429).then_some(()),
        || format!("\n{}", agent.log()),
    );
    std::thread::sleep(Duration::from_secs(5));
    let samples = agent.metric("enawatch_samples_total");
    let elapsed = started.elapsed().as_secs_f64();
    let failed = agent.outcome("test", "failed");
    let down_retried = agent.outcome("down", "retried");
    let down_pending = agent.pending("down");
    let down_dropped = agent.outcome("down", "dropped");
    let log = agent.stop_cleanly();

    let seen = receiver.seen.lock().unwrap();
    // The 400: dropped, counted, logged with the reason, never sent again.
    let rejected = counts(&seen.rejected);
    assert_eq!(failed, rejected.len() as f64);
    let accepted = counts(&seen.accepted);
    assert!(rejected.keys().all(|k| !accepted.contains_key(k)), "a rejected sample was sent again");
    let line = log.lines().find(|l| l.contains("the receiver rejected a batch")).expect(&log);
    assert!(line.contains("status=400") && line.contains("invalid label name"), "{line}");
    assert_eq!(log.matches("the receiver rejected a batch").count(), 1, "{log}");
    // The 429: the next attempt came after Retry-After (2 s), not after the 100 ms backoff.
    let i = seen.attempts.iter().position(|(_, s)| *s == 429).unwrap();
    let wait = seen.attempts[i + 1].0 - seen.attempts[i].0;
    assert!(wait >= Duration::from_millis(1900), "retried after {wait:?}");
    // Everything else arrived once, in order.
    let mut ticks = tick_values(&seen.accepted);
    ticks.extend(tick_values(&seen.rejected));
    assert_every_tick(&runs(&ticks)[0], "agent");
    assert!(accepted.values().all(|&n| n == 1));
    // The endpoint that never answered: retried and counted, its full queue (3 s) dropping
    // the oldest, nothing else disturbed.
    assert!(down_retried > 0.0 && down_pending > 0.0, "{down_retried} {down_pending}");
    assert!(down_dropped > 0.0, "{down_dropped}");
    assert!(log.contains("remote-write queue full: dropping the oldest samples"), "{log}");
    assert!(samples >= elapsed - 2.0, "sampling went on: {samples} ticks in {elapsed} s");
    assert!(log.contains("endpoint=down") && log.contains("cannot push samples"), "{log}");
}

#[test]
fn check_config_names_what_is_wrong_with_an_endpoint() {
    let dir = TempDir::new("rw-check");
    let check_with = |config: &str, env: &[(&str, &str)]| {
        let path = dir.join("enawatch.yaml");
        std::fs::write(&path, config).unwrap();
        let out = Command::new(bin())
            .args(["serve", "--check-config", "--config"])
            .arg(&path)
            .env_clear()
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let cases = [
        ("remote_write:\n- url: 'htp:/x'\n", "remote_write: \"[0] url: htp:/x\" must be an http:// or https:// URL"),
        (
            "remote_write:\n- url: http://x/\n  auth: {basic: {username: u, password_file: /nonexistent/pw}}\n",
            "remote_write: \"[0] auth.basic.password_file: /nonexistent/pw\" cannot be read",
        ),
        ("remote_write:\n- url: http://x/\n  auth: {token: abc}\n", "unknown field `token`, expected one of `sigv4`, `basic`, `bearer`"),
        ("remote_write:\n- url: http://x/\n  ca_file: /nonexistent/ca.pem\n", "[0] ca_file: /nonexistent/ca.pem\" cannot be read"),
        (
            "remote_write:\n- url: http://x/\n  auth: {sigv4: {region: us-east-1}}\n",
            "[0] auth.sigv4: credentials\" cannot be found: no AWS credentials",
        ),
        ("remote_write:\n- url: http://x/\n  resoltion: 1s\n", "unknown field `resoltion`"),
    ];
    let check = |config: &str| check_with(config, &[("AWS_EC2_METADATA_DISABLED", "true")]);
    for (config, want) in cases {
        let (code, stderr, _) = check(config);
        assert_eq!(code, Some(2), "{config}: {stderr}");
        assert!(stderr.contains(want), "{config}: got {stderr}, want {want}");
    }
    let (code, stderr, stdout) = check_with(
        "remote_write:\n- url: https://aps-workspaces.us-east-1.amazonaws.com/workspaces/ws-1/api/v1/remote_write\n  \
         auth: {sigv4: {role_arn: 'arn:aws:iam::111122223333:role/writer'}}\n  spool_dir: /tmp\n",
        &[("AWS_ACCESS_KEY_ID", "AKIA1"), ("AWS_SECRET_ACCESS_KEY", "s3cr3t-key")],
    );
    assert!(!stdout.contains("s3cr3t-key") && !stderr.contains("s3cr3t-key"));
    assert_eq!(code, Some(0), "{stderr}");
    for line in [
        "region: us-east-1",
        "resolution: 15s",
        "max_samples_per_send: 2000",
        "name: aps-workspaces.us-east-1.amazonaws.com",
    ] {
        assert!(stdout.contains(line), "{line} in\n{stdout}");
    }
}

// === SigV4, verified by botocore ===

/// tests/remote_write/aws_mock.py, running.
pub(crate) struct AwsMock {
    child: Child,
    port: u16,
    /// With --tls-cert: the same, over TLS.
    tls_port: u16,
    /// The token files it checks against, kept while it runs.
    _dir: TempDir,
}

impl AwsMock {
    fn start(extra: &[&str]) -> Self {
        let dir = TempDir::new("aws");
        std::fs::write(dir.join("container-token"), "pod-identity-token-1").unwrap();
        std::fs::write(dir.join("web-identity-token"), "eyJhbGciOiJSUzI1NiJ9.web-identity.sig").unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/remote_write/aws_mock.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg("--container-token-file")
            .arg(dir.join("container-token"))
            .arg("--web-identity-token-file")
            .arg(dir.join("web-identity-token"))
            .args(["--role-arn", "arn:aws:iam::111122223333:role/enawatch-irsa"])
            .args(["--assume-role-arn", "arn:aws:iam::444455556666:role/amp-writer"])
            .args(["--static", "AKIAENVIRONMENT00001:env-secret-key/abc+def"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("mock.err")).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let ports: Vec<u16> = line.split_whitespace().filter_map(|p| p.parse().ok()).collect();
        let Some(&port) = ports.first() else {
            let err = std::fs::read_to_string(dir.join("mock.err")).unwrap_or_default();
            panic!("aws_mock.py did not start (botocore missing? {BOTOCORE}):\n{err}");
        };
        Self { child, port, tls_port: ports.get(1).copied().unwrap_or(0), _dir: dir }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn stats(&self) -> serde_json::Value {
        let r = http_get(&format!("127.0.0.1:{}", self.port), "/_stats", &[]).unwrap();
        serde_json::from_slice(&r.body).unwrap()
    }
}

impl Drop for AwsMock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs an agent pushing to the mock's SigV4 receiver as `case` for about ten seconds with
/// `env`, and checks every request botocore saw: all verified, signed with at least
/// `min_keys` different access keys (a refresh mid-run), and no secret in the agent's log.
pub(crate) fn sigv4_case(
    case: &str,
    env: &[(&str, String)],
    role_arn: Option<&str>,
    min_keys: usize,
) -> serde_json::Value {
    sigv4_case_as(case, env, role_arn, min_keys, false)
}

/// [`sigv4_case`], over OTLP to the mock's CloudWatch stand-in (service `monitoring`) when
/// `otlp`.
pub(crate) fn sigv4_case_as(
    case: &str,
    env: &[(&str, String)],
    role_arn: Option<&str>,
    min_keys: usize,
    otlp: bool,
) -> serde_json::Value {
    let mock = AwsMock::start(&[]);
    let role = role_arn.map(|r| format!(", role_arn: '{r}'")).unwrap_or_default();
    let (url, protocol, service) = if otlp {
        // The mock's host is 127.0.0.1, not monitoring.REGION.amazonaws.com: the service is named.
        (mock.url(&format!("/otlp/{case}")), "  protocol: otlp\n", ", service: monitoring")
    } else {
        (mock.url(&format!("/rw/{case}")), "", "")
    };
    let config = format!(
        "remote_write:\n- url: {url}\n  name: amp\n{protocol}  resolution: 1s\n  batch_send_deadline: 500ms\n  \
         min_backoff: 100ms\n  max_backoff: 1s\n  auth: {{sigv4: {{region: us-west-2{role}{service}}}}}\n"
    );
    let mut env = env.to_vec();
    // Everything AWS points at the mock, whatever the case uses; the agent never leaves 127.0.0.1.
    env.push(("AWS_ENDPOINT_URL_STS", mock.url("/sts")));
    env.push(("AWS_EC2_METADATA_SERVICE_ENDPOINT", mock.url("")));
    let env: Vec<(&str, String)> =
        env.into_iter().map(|(k, v)| (k, v.replace("MOCK", &format!("127.0.0.1:{}", mock.port)))).collect();
    let agent = start_agent("steady", &config, &env);
    std::thread::sleep(Duration::from_secs(10));
    let sent = agent.outcome("amp", "sent");
    let log = agent.stop_cleanly();

    let stats = mock.stats();
    let writes: Vec<&serde_json::Value> =
        stats["writes"].as_array().unwrap().iter().filter(|w| w["case"] == case).collect();
    assert!(writes.len() >= 5, "{case}: {} requests:\n{log}", writes.len());
    for w in &writes {
        assert_eq!(w["ok"], true, "{case}: botocore rejected a signature: {w}\n{log}");
    }
    let keys: BTreeSet<&str> = writes.iter().map(|w| w["akid"].as_str().unwrap()).collect();
    assert!(keys.len() >= min_keys, "{case}: signed with {keys:?}, want at least {min_keys} (a refresh)");
    for call in stats["calls"].as_array().unwrap() {
        assert_eq!(call["ok"], true, "{case}: {call}");
    }
    for secret in stats["secrets"].as_array().unwrap() {
        assert!(!log.contains(secret.as_str().unwrap()), "{case}: a secret reached the log:\n{log}");
    }
    assert!(sent > 0.0 && !log.contains("WARN"), "{case}:\n{log}");
    stats
}

fn calls(stats: &serde_json::Value, endpoint: &str) -> usize {
    stats["calls"].as_array().unwrap().iter().filter(|c| c["endpoint"] == endpoint).count()
}

#[test]
fn sigv4_with_credentials_from_the_environment() {
    let env = [
        ("AWS_ACCESS_KEY_ID", "AKIAENVIRONMENT00001".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "env-secret-key/abc+def".to_owned()),
    ];
    let stats = sigv4_case("env", &env, None, 1);
    assert_eq!(stats["calls"].as_array().unwrap().len(), 0, "no credentials endpoint is called");
}

#[test]
fn sigv4_with_eks_pod_identity_refreshes_mid_run() {
    let mock_token_dir = TempDir::new("podid");
    // The agent reads the token file the mock checks against; both hold the same token.
    let token = mock_token_dir.join("token");
    std::fs::write(&token, "pod-identity-token-1").unwrap();
    let env = [
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://MOCK/creds".to_owned()),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", token.display().to_string()),
    ];
    let stats = sigv4_case("pod-identity", &env, None, 2);
    assert!(calls(&stats, "container") >= 2);
}

#[test]
fn sigv4_with_irsa_web_identity_refreshes_mid_run() {
    let dir = TempDir::new("irsa");
    let token = dir.join("token");
    std::fs::write(&token, "eyJhbGciOiJSUzI1NiJ9.web-identity.sig").unwrap();
    let env = [
        ("AWS_WEB_IDENTITY_TOKEN_FILE", token.display().to_string()),
        ("AWS_ROLE_ARN", "arn:aws:iam::111122223333:role/enawatch-irsa".to_owned()),
        ("AWS_ROLE_SESSION_NAME", "enawatch-test".to_owned()),
        ("AWS_REGION", "us-west-2".to_owned()),
    ];
    let stats = sigv4_case("irsa", &env, None, 2);
    assert!(calls(&stats, "sts-web-identity") >= 2);
}

#[test]
fn sigv4_with_the_instance_role_through_imdsv2_refreshes_mid_run() {
    let stats = sigv4_case("imds", &[], None, 2);
    assert!(calls(&stats, "imds-creds") >= 2);
    assert_eq!(calls(&stats, "imds-token"), calls(&stats, "imds-creds"), "a session token before each fetch");
}

#[test]
fn sigv4_assuming_a_role_with_signed_sts_calls() {
    let env = [
        ("AWS_ACCESS_KEY_ID", "AKIAENVIRONMENT00001".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "env-secret-key/abc+def".to_owned()),
    ];
    let stats = sigv4_case("assume-role", &env, Some("arn:aws:iam::444455556666:role/amp-writer"), 2);
    // botocore verified the AssumeRole calls' signatures too (a failed one is a failed call).
    assert!(calls(&stats, "sts-assume-role") >= 2);
}

// === TLS, bearer and basic ===

fn openssl(dir: &TempDir, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(&dir.0)
        .output()
        .expect("openssl (Debian package) must be installed");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA (`ca.pem`) and a certificate it signed for 127.0.0.1 (`server.pem`, `server.key`).
fn private_ca(dir: &TempDir) {
    let words = |s: &str| s.split_whitespace().map(ToOwned::to_owned).collect::<Vec<String>>();
    let mut ca = words(
        "req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 -subj /CN=enawatch-test-ca",
    );
    ca.extend(words("-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign"));
    let csr = words("req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1");
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let sign = words(
        "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 1 -extfile ext.cnf",
    );
    for args in [ca, csr, sign] {
        openssl(dir, &args.iter().map(String::as_str).collect::<Vec<_>>());
    }
}

#[test]
fn tls_with_a_private_ca_and_secrets_from_files() {
    let certs = TempDir::new("tls");
    private_ca(&certs);
    let tls = AwsMock::start(&[
        "--tls-cert",
        certs.join("server.pem").to_str().unwrap(),
        "--tls-key",
        certs.join("server.key").to_str().unwrap(),
    ]);
    let plain = AwsMock::start(&[]);
    let (token, password) = (certs.join("token"), certs.join("password"));
    std::fs::write(&token, "bearer-secret-1\n").unwrap();
    std::fs::write(&password, "basic-secret\n").unwrap();
    let https = format!("https://127.0.0.1:{}", tls.tls_port);
    let config = format!(
        "remote_write:\n\
         - {{url: '{https}/plain/tls', name: tls, resolution: 1s, batch_send_deadline: 500ms, ca_file: {ca},\n\
            auth: {{bearer: {{token_file: {token}}}}}}}\n\
         - {{url: '{https}/plain/untrusted', name: untrusted, resolution: 1s, batch_send_deadline: 500ms,\n            min_backoff: 100ms, max_backoff: 1s}}\n\
         - {{url: '{plain}', name: basic, resolution: 1s, batch_send_deadline: 500ms,\n\
            auth: {{basic: {{username: enawatch, password_file: {password}}}}}}}\n",
        ca = certs.join("ca.pem").display(),
        token = token.display(),
        plain = plain.url("/plain/basic"),
        password = password.display(),
    );
    let agent = start_agent("steady", &config, &[]);
    wait_until(
        "deliveries",
        Duration::from_secs(15),
        || (agent.outcome("tls", "sent") > 0.0 && agent.outcome("basic", "sent") > 0.0).then_some(()),
        || format!("\n{}", agent.log()),
    );
    // A rotated Secret applies to the next request.
    std::fs::write(&token, "bearer-secret-2\n").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let untrusted = agent.outcome("untrusted", "retried");
    let log = agent.stop_cleanly();

    let tls_seen: Vec<String> = tls.stats()["plain"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["case"] == "tls")
        .map(|p| p["authorization"].as_str().unwrap().to_owned())
        .collect();
    assert!(tls_seen.first().is_some_and(|a| a == "Bearer bearer-secret-1"), "{tls_seen:?}");
    assert!(tls_seen.last().is_some_and(|a| a == "Bearer bearer-secret-2"), "{tls_seen:?}");
    assert!(tls.stats()["plain"].as_array().unwrap().iter().all(|p| p["case"] != "untrusted"));
    let basic = plain.stats()["plain"][0]["authorization"].as_str().unwrap().to_owned();
    assert_eq!(basic, "Basic ZW5hd2F0Y2g6YmFzaWMtc2VjcmV0", "enawatch:basic-secret");
    // Without the CA, the receiver is not trusted: retried, counted, and said why.
    assert!(untrusted > 0.0);
    let line =
        log.lines().find(|l| l.contains("endpoint=untrusted") && l.contains("cannot push")).expect(&log);
    assert!(line.to_lowercase().contains("certificate"), "{line}");
    for secret in ["bearer-secret", "basic-secret"] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
}
