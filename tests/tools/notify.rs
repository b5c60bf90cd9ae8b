//! Local alerts reaching real receivers: a local HTTP receiver for the webhook and Slack
//! formats, a real Alertmanager (Debian) through its v2 API, and a receiver that is down for
//! a while and then comes back. Everything on 127.0.0.1.

#![expect(
    clippy::float_cmp,
    reason = "counter values are whole numbers on the wire: comparing them exactly is the point"
)]

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{self, free_port, http_get, wait_until, Agent, Posts, TempDir};

/// Records every POST (path, body) sent to `listener`.
fn receive(listener: TcpListener) -> Posts {
    support::record_posts(listener)
}

/// Runs a simulation whose link-local drops start at 1 s and last `drop_seconds`, with the
/// link-local warning made fast (2 s of drops within 5 s, no `for`) so alerts fire and
/// resolve within seconds, and the given receivers.
fn agent(drop_seconds: u32, receivers: &str) -> Agent<'static> {
    let launch = Agent::launch(&["serve"]);
    let scenario = launch.file(
        "scenario.yaml",
        &format!(
            "description: t\ndevices: 1\nconntrack_available: 50000\nevents:\n  - kind: drops\n    \
             allowance: linklocal\n    at: 1s\n    duration: {drop_seconds}s\n    rate: 300\n"
        ),
    );
    let config = launch.file(
        "enawatch.yaml",
        &format!(
            "alerts:\n  rules:\n    - alert: LinkLocalAllowanceExceeded\n      severity: warning\n      \
             min_throttled: 2s\n      window: 5s\n      for: 0s\n      keep_firing_for: 0s\n  receivers:\n{receivers}"
        ),
    );
    launch.arg("--simulate").arg(scenario).arg("--config").arg(config).spawn()
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[test]
fn webhook_and_slack_get_firing_then_resolved() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let posts = receive(listener);
    let dir = TempDir::new("secret");
    let slack_url = dir.join("slack-url");
    std::fs::write(&slack_url, format!("http://127.0.0.1:{port}/slack/T000/SECRET\n")).unwrap();
    let receivers = format!(
        "    - type: webhook\n      url: http://127.0.0.1:{port}/hook\n    - type: slack\n      url_file: {}\n",
        slack_url.display()
    );
    let agent = agent(4, &receivers);
    wait_until(
        "firing and resolved at both receivers",
        Duration::from_secs(30),
        || (posts.lock().unwrap().len() >= 4).then_some(()),
        || format!("; agent log:\n{}", agent.log()),
    );

    let posts = posts.lock().unwrap().clone();
    let hooks: Vec<serde_json::Value> =
        posts.iter().filter(|(p, _)| p == "/hook").map(|(_, b)| json(b)).collect();
    assert_eq!(hooks.len(), 2, "exactly one firing and one resolved: {posts:?}");
    assert_eq!(
        (hooks[0]["status"].as_str(), hooks[1]["status"].as_str()),
        (Some("firing"), Some("resolved"))
    );
    let alert = &hooks[0]["alert"];
    assert_eq!(hooks[0]["version"], "1");
    assert_eq!(alert["name"], "LinkLocalAllowanceExceeded");
    assert_eq!(
        (alert["severity"].as_str(), alert["device"].as_str(), alert["allowance"].as_str()),
        (Some("warning"), Some("ens5"), Some("linklocal"))
    );
    assert!(alert["runbook_url"].as_str().unwrap().ends_with("#linklocalallowanceexceeded"));
    assert!(hooks[1]["alert"]["resolved_at"].is_string());

    let slack: Vec<serde_json::Value> =
        posts.iter().filter(|(p, _)| p == "/slack/T000/SECRET").map(|(_, b)| json(b)).collect();
    assert_eq!(slack.len(), 2, "{posts:?}");
    let text = slack[0]["text"].as_str().unwrap();
    assert!(text.contains("[FIRING] LinkLocalAllowanceExceeded") && text.contains("ens5"), "{text}");
    assert!(slack[1]["text"].as_str().unwrap().contains("[RESOLVED]"));
    assert_eq!(agent.metric("enawatch_notifications_total{receiver=\"slack\",outcome=\"sent\"}"), 2.0);
    assert!(!agent.log().contains("SECRET"), "the Slack URL is a secret and never logged:\n{}", agent.log());
}

#[test]
fn a_receiver_down_for_a_while_gets_everything_once_in_order() {
    // Reserve a port, then leave it closed: the receiver is down.
    let port = free_port();
    let receivers =
        format!("    - type: webhook\n      name: flaky\n      url: http://127.0.0.1:{port}/hook\n");
    let agent = agent(4, &receivers);
    wait_until(
        "retries while the receiver is down",
        Duration::from_secs(30),
        || {
            (agent.metric("enawatch_notifications_total{receiver=\"flaky\",outcome=\"retried\"}") >= 2.0)
                .then_some(())
        },
        || format!("; agent log:\n{}", agent.log()),
    );
    // Sampling goes on while the receiver is down.
    let samples = agent.metric("enawatch_samples_total");
    std::thread::sleep(Duration::from_millis(2100));
    assert!(agent.metric("enawatch_samples_total") >= samples + 2.0);
    assert!(agent.log().contains("cannot notify; retrying with backoff"), "{}", agent.log());

    let posts = receive(TcpListener::bind(("127.0.0.1", port)).unwrap());
    wait_until(
        "delivery after the receiver came back",
        Duration::from_secs(60),
        || (posts.lock().unwrap().len() >= 2).then_some(()),
        || format!("; agent log:\n{}", agent.log()),
    );
    std::thread::sleep(Duration::from_secs(2));
    let posts = posts.lock().unwrap().clone();
    let statuses: Vec<String> =
        posts.iter().map(|(_, b)| json(b)["status"].as_str().unwrap().to_owned()).collect();
    assert_eq!(statuses, ["firing", "resolved"], "every notification once, in order");
    assert_eq!(agent.metric("enawatch_notifications_total{receiver=\"flaky\",outcome=\"sent\"}"), 2.0);
    assert!(agent.log().contains("receiver reachable again"), "{}", agent.log());
}

/// A real Alertmanager (Debian) on 127.0.0.1 routing everything, grouped by `group_by`, to
/// the webhook on `hook_port`; its address.
fn alertmanager(dir: &TempDir, hook_port: u16, group_by: &str) -> (std::process::Child, String) {
    let am_port = free_port();
    let config = dir.join("alertmanager.yaml");
    std::fs::write(
        &config,
        format!(
            "route:\n  receiver: hook\n  group_by: [{group_by}]\n  group_wait: 1s\n  group_interval: 1s\n\
             receivers:\n  - name: hook\n    webhook_configs:\n      - url: http://127.0.0.1:{hook_port}/am\n        send_resolved: true\n"
        ),
    )
    .unwrap();
    let am = Command::new("prometheus-alertmanager")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{am_port}"))
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus-alertmanager (Debian package) must be installed; scripts/test installs it");
    let am_addr = format!("127.0.0.1:{am_port}");
    wait_until(
        "Alertmanager to start",
        Duration::from_secs(20),
        || http_get(&am_addr, "/-/ready", &[]).is_ok_and(|r| r.status == 200).then_some(()),
        String::new,
    );
    (am, am_addr)
}

/// The first notification Alertmanager routed to the webhook; stops Alertmanager.
fn routed(posts: &Posts, am: &mut std::process::Child, agent: &Agent) -> serde_json::Value {
    wait_until(
        "Alertmanager's notification",
        Duration::from_secs(40),
        || posts.lock().unwrap().iter().any(|(p, _)| p == "/am").then_some(()),
        || format!("; agent log:\n{}", agent.log()),
    );
    let _ = am.kill();
    let _ = am.wait();
    json(&posts.lock().unwrap().iter().find(|(p, _)| p == "/am").unwrap().1)
}

#[test]
fn alertmanager_receives_through_its_v2_api_and_routes_to_its_webhook() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let hook_port = listener.local_addr().unwrap().port();
    let posts = receive(listener);
    let dir = TempDir::new("am");
    let (mut am, am_addr) = alertmanager(&dir, hook_port, "alertname, device");

    let agent = agent(30, &format!("    - type: alertmanager\n      url: http://{am_addr}\n"));
    let body = routed(&posts, &mut am, &agent);
    let labels = &body["alerts"][0]["labels"];
    assert_eq!(labels["alertname"], "LinkLocalAllowanceExceeded");
    assert_eq!(
        (labels["device"].as_str(), labels["severity"].as_str(), labels["source"].as_str()),
        (Some("ens5"), Some("warning"), Some("enawatch"))
    );
    assert!(labels["node"].is_string());
    assert_eq!(body["status"], "firing");
    assert!(body["alerts"][0]["annotations"]["runbook_url"].as_str().unwrap().contains("runbooks.md#"));
}

/// The local DNS alert reaches Alertmanager with the workload's labels, as the Prometheus
/// rule labels it: a pod whose lookups are lost while ens5 drops link-local packets.
#[test]
fn alertmanager_gets_the_failing_workloads_dns_alert_with_its_labels() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let hook_port = listener.local_addr().unwrap().port();
    let posts = receive(listener);
    let dir = TempDir::new("am-dns");
    let (mut am, am_addr) = alertmanager(&dir, hook_port, "alertname, namespace, workload");
    let launch = Agent::launch(&["serve"]);
    let scenario = launch.file(
        "scenario.yaml",
        "description: t\nevents:\n  - {kind: drops, allowance: linklocal, device: ens5, at: 1s, duration: 1h, rate: 500}\n\
         dns:\n  - {workload: shop/web, address: 10.0.1.15, upstream: cluster_dns, rate: 50}\n",
    );
    let config = launch.file(
        "enawatch.yaml",
        &format!(
            "alerts:\n  rules:\n    - alert: DNSLookupsFailing\n      for: 0s\n    - alert: LinkLocalAllowanceExceeded\n      \
             enabled: false\n  receivers:\n    - type: alertmanager\n      url: http://{am_addr}\n"
        ),
    );
    let agent = launch.arg("--simulate").arg(scenario).arg("--config").arg(config).spawn();
    let body = routed(&posts, &mut am, &agent);
    let labels = &body["alerts"][0]["labels"];
    assert_eq!(labels["alertname"], "DNSLookupsFailing", "{body}");
    assert_eq!(
        (labels["namespace"].as_str(), labels["workload"].as_str()),
        (Some("shop"), Some("web")),
        "{body}"
    );
    assert!(labels.get("device").is_none(), "{body}");
    let description = body["alerts"][0]["annotations"]["description"].as_str().unwrap();
    assert!(description.contains("of the DNS lookups of shop/web failed"), "{description}");
    assert_eq!(
        agent.metric("enawatch_alerts{alertname=\"DNSLookupsFailing\",severity=\"warning\",alertstate=\"firing\",namespace=\"shop\",workload=\"web\"}"),
        1.0
    );
}
