//! End to end, with the real parts: three simulated nodes (the real binary in `dns-storm`,
//! `conntrack-exhaustion` and `steady`), a real Prometheus (Debian) scraping them and
//! evaluating the **shipped** rules unchanged, and a real Alertmanager running the shipped
//! configuration (its receiver URLs pointed at a local receiver) that routes to a webhook.
//! Everything listens on 127.0.0.1, in temp dirs, and is stopped by PID.
//!
//! It takes a few minutes: the scenarios are built to cross the shipped thresholds quickly
//! (`LinkLocalAllowanceExceeded` within about two minutes, `ConntrackAllowanceExceeded`
//! within about three), never the other way round.

use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use crate::support::{self, free_port, http_get, wait_until, Agent, Posts, TempDir};

/// A child process killed (by PID) when dropped.
struct Proc {
    name: &'static str,
    child: Child,
    log: std::path::PathBuf,
}

impl Proc {
    fn start(name: &'static str, dir: &TempDir, program: &str, args: &[String]) -> Self {
        let log = dir.join(&format!("{name}.log"));
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.join(&format!("{name}.err"))).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("{program} must be installed (scripts/test installs it): {e}"));
        Self { name, child, log }
    }

    fn check_alive(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            let err = std::fs::read_to_string(self.log.with_extension("err")).unwrap_or_default();
            panic!("{} exited early ({status}):\n{err}", self.name);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A local HTTP receiver that records every POST (path, body).
fn receiver() -> (u16, Posts) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    (port, support::record_posts(listener))
}

/// The shipped Alertmanager configuration with every receiver pointed at the local receiver
/// (nothing else changes; nothing may leave 127.0.0.1).
fn alertmanager_config(dir: &TempDir, receiver: u16) -> std::path::PathBuf {
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/alertmanager/alertmanager.yaml"),
    )
    .unwrap();
    let slack_url = dir.join("slack-url");
    let pagerduty_key = dir.join("pagerduty-key");
    std::fs::write(&slack_url, format!("http://127.0.0.1:{receiver}/slack")).unwrap();
    std::fs::write(&pagerduty_key, "0123456789abcdef0123456789abcdef").unwrap();
    let config = shipped
        .replace("/etc/alertmanager/secrets/slack-webhook-url", slack_url.to_str().unwrap())
        .replace(
            "routing_key_file: /etc/alertmanager/secrets/pagerduty-routing-key",
            &format!(
                "routing_key_file: {}\n        url: http://127.0.0.1:{receiver}/pagerduty",
                pagerduty_key.display()
            ),
        )
        .replace(
            "http://alert-receiver.monitoring.svc:8080/enawatch",
            &format!("http://127.0.0.1:{receiver}/webhook"),
        );
    let settings: Vec<&str> = config.lines().filter(|l| !l.trim_start().starts_with('#')).collect();
    assert!(
        settings.iter().all(|l| !l.contains("secrets/") && !l.contains("svc:8080")),
        "every receiver is local:\n{config}"
    );
    let path = dir.join("alertmanager.yaml");
    std::fs::write(&path, config).unwrap();
    path
}

/// Alerts posted to the webhook receiver: (alertname, status, labels).
fn webhook_alerts(seen: &Mutex<Vec<(String, String)>>) -> Vec<(String, String, serde_json::Value)> {
    let seen = seen.lock().unwrap();
    seen.iter()
        .filter(|(path, _)| path == "/webhook")
        .filter_map(|(_, body)| serde_json::from_str::<serde_json::Value>(body).ok())
        .flat_map(|msg| msg["alerts"].as_array().cloned().unwrap_or_default())
        .map(|a| {
            (
                a["labels"]["alertname"].as_str().unwrap_or("").to_owned(),
                a["status"].as_str().unwrap_or("").to_owned(),
                a["labels"].clone(),
            )
        })
        .collect()
}

#[test]
fn shipped_rules_and_alertmanager_page_on_simulated_throttling() {
    let dir = TempDir::new("e2e");
    let root = env!("CARGO_MANIFEST_DIR");

    // Three simulated nodes.
    let mut nodes = Vec::new();
    let mut targets = String::new();
    for (node, scenario) in
        [("sim-dns", "dns-storm"), ("sim-conntrack", "conntrack-exhaustion"), ("sim-steady", "steady")]
    {
        let agent = Agent::launch(&["serve", "--simulate", scenario]).spawn();
        let _ = write!(targets, "      - targets: ['{}']\n        labels: {{node: {node}}}\n", agent.addr);
        nodes.push(agent);
    }

    let (receiver_port, seen) = receiver();
    let am_port = free_port();
    let am_config = alertmanager_config(&dir, receiver_port);
    let am_args = vec![
        format!("--config.file={}", am_config.display()),
        format!("--storage.path={}", dir.join("am").display()),
        format!("--web.listen-address=127.0.0.1:{am_port}"),
        "--cluster.listen-address=".to_owned(),
    ];
    let mut alertmanager = Proc::start("alertmanager", &dir, "prometheus-alertmanager", &am_args);

    let prom_port = free_port();
    let prom_config = dir.join("prometheus.yaml");
    std::fs::write(
        &prom_config,
        format!(
            "global:\n  scrape_interval: 5s\n  evaluation_interval: 5s\n\
             rule_files:\n  - {root}/deploy/prometheus/enawatch-rules.yaml\n\
             alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['127.0.0.1:{am_port}']\n\
             scrape_configs:\n  - job_name: enawatch\n    static_configs:\n{targets}"
        ),
    )
    .unwrap();
    let prom_args = vec![
        format!("--config.file={}", prom_config.display()),
        format!("--storage.tsdb.path={}", dir.join("tsdb").display()),
        format!("--web.listen-address=127.0.0.1:{prom_port}"),
    ];
    let mut prometheus = Proc::start("prometheus", &dir, "prometheus", &prom_args);

    // The shipped rules load unchanged.
    let prom = format!("127.0.0.1:{prom_port}");
    wait_until(
        "Prometheus to load the rules",
        Duration::from_secs(60),
        || {
            prometheus.check_alive();
            http_get(&prom, "/api/v1/rules", &[])
                .is_ok_and(|r| r.status == 200 && r.text().contains("LinkLocalAllowanceExceeded"))
                .then_some(())
        },
        String::new,
    );

    let want = |alerts: &[(String, String, serde_json::Value)], name: &str, node: &str| {
        alerts.iter().find(|(n, status, l)| n == name && status == "firing" && l["node"] == node).cloned()
    };
    let (linklocal, conntrack) = wait_until(
        "the alerts at the webhook",
        Duration::from_secs(6 * 60),
        || {
            prometheus.check_alive();
            alertmanager.check_alive();
            for node in &mut nodes {
                node.check_alive();
            }
            let alerts = webhook_alerts(&seen);
            Some((
                want(&alerts, "LinkLocalAllowanceExceeded", "sim-dns")?,
                want(&alerts, "ConntrackAllowanceExceeded", "sim-conntrack")?,
            ))
        },
        || {
            let firing = http_get(&prom, "/api/v1/alerts", &[]).map(|r| r.text()).unwrap_or_default();
            format!("; webhook got {:?}\nPrometheus alerts: {firing}", webhook_alerts(&seen))
        },
    );

    // The right labels, straight from the scrape and the shipped rule.
    let labels = &linklocal.2;
    assert_eq!(labels["device"], "ens5", "{labels}");
    assert_eq!(labels["allowance"], "linklocal");
    assert_eq!(labels["severity"], "warning");
    assert_eq!(labels["job"], "enawatch");
    assert_eq!(conntrack.2["severity"], "critical");
    assert_eq!(conntrack.2["device"], "ens5");
    // The critical one also went to PagerDuty and Slack; the warning to Slack, not PagerDuty.
    let paths: Vec<String> = seen.lock().unwrap().iter().map(|(p, _)| p.clone()).collect();
    assert!(paths.iter().any(|p| p.starts_with("/pagerduty")), "{paths:?}");
    assert!(paths.iter().any(|p| p == "/slack"), "{paths:?}");

    // The steady node never alerted on its allowances.
    let alerts = webhook_alerts(&seen);
    let noisy: Vec<_> = alerts.iter().filter(|(_, _, l)| l["node"] == "sim-steady").collect();
    assert!(noisy.is_empty(), "steady produced ENA alerts: {noisy:?}");
    let firing = http_get(&prom, "/api/v1/alerts", &[]).unwrap().text();
    let firing: serde_json::Value = serde_json::from_str(&firing).unwrap();
    let steady: Vec<_> = firing["data"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["labels"]["node"] == "sim-steady")
        .collect();
    assert!(steady.is_empty(), "steady has pending or firing alerts: {steady:?}");
}
