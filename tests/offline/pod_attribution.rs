//! Pod attribution against a local server speaking the Kubernetes API (recorded pods list and
//! watch events in the real API's JSON, tests/data/k8s/): the node's pods by address, a pod
//! replaced under the same address, and an API that forbids the request.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::Agent;

const LIST: &str = include_str!("../data/k8s/pods-list.json");
const WATCH: &str = include_str!("../data/k8s/pods-watch.jsonl");
const NODE: &str = "ip-10-0-0-10.ec2.internal";

/// Serves the API: the list, then the watch's events one by one. `status` answers every
/// request when set (e.g. 403). Records request lines.
fn api(status: Option<u16>) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = Arc::clone(&requests);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                let _ = reader.read_line(&mut line);
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                }
                log.lock().unwrap().push(line.trim().to_owned());
                let out = reader.get_mut();
                if let Some(code) = status {
                    let body = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"Forbidden","code":403}"#;
                    let _ = write!(out, "HTTP/1.1 {code} Forbidden\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                } else if line.contains("watch=1") {
                    let _ = write!(
                        out,
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
                    );
                    for event in WATCH.lines() {
                        std::thread::sleep(Duration::from_millis(700));
                        let _ = writeln!(out, "{event}");
                        let _ = out.flush();
                    }
                    std::thread::sleep(Duration::from_secs(30));
                } else {
                    let _ = write!(out, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{LIST}", LIST.len());
                }
            });
        }
    });
    (port, requests)
}

/// The agent on a simulated node, attributing to pods through the API on `api_port`.
fn agent(api_port: u16) -> Agent<'static> {
    Agent::launch(&["serve", "--simulate", "steady", "--pod-attribution"])
        .env("NODE_NAME", NODE)
        .env("ENAWATCH_KUBE_API", format!("http://127.0.0.1:{api_port}"))
        .spawn()
}

fn pods(agent: &Agent) -> serde_json::Value {
    agent.get("/api/v1/pods").map(|r| serde_json::from_str(&r.text()).unwrap()).unwrap_or_default()
}

fn pod_at(v: &serde_json::Value, ip: &str) -> Option<String> {
    v["pods"].as_array()?.iter().find(|p| p["ip"] == ip).map(|p| p["pod"].as_str().unwrap().to_owned())
}

#[test]
fn the_nodes_pods_by_address_kept_current_by_the_watch() {
    let (port, requests) = api(None);
    let agent = agent(port);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut first = None;
    loop {
        let v = pods(&agent);
        if first.is_none() && pod_at(&v, "10.0.1.5").is_some() {
            first = Some(v.clone());
        }
        if pod_at(&v, "10.0.1.5").as_deref() == Some("web-7d4b9c8f6-b9w4t") {
            // The replacement took the address; the old pod's deletion did not remove it.
            std::thread::sleep(Duration::from_millis(1500));
            let v = pods(&agent);
            assert_eq!(pod_at(&v, "10.0.1.5").as_deref(), Some("web-7d4b9c8f6-b9w4t"), "{v}");
            let web = v["pods"].as_array().unwrap().iter().find(|p| p["ip"] == "10.0.1.5").unwrap();
            assert_eq!(
                (web["namespace"].as_str(), web["workload"].as_str()),
                (Some("shop"), Some("Deployment/web"))
            );
            break;
        }
        assert!(Instant::now() < deadline, "the watch never replaced the pod: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let first = first.expect("listed");
    assert_eq!(pod_at(&first, "10.0.1.9").as_deref(), Some("coredns-5d78c9869d-7qz4m"));
    assert_eq!(
        pod_at(&first, "10.0.0.10"),
        None,
        "a host-network pod is the node, not an address of its own"
    );
    let requests = requests.lock().unwrap();
    assert!(
        requests[0].contains("fieldSelector=spec.nodeName%3Dip-10-0-0-10.ec2.internal"),
        "only this node's pods: {requests:?}"
    );
    assert!(
        requests.iter().any(|r| r.contains("watch=1") && r.contains("resourceVersion=48213")),
        "{requests:?}"
    );
}

#[test]
fn a_forbidden_api_turns_attribution_off_with_one_line_and_nothing_else_changes() {
    let (port, _) = api(Some(403));
    let agent = agent(port);
    let deadline = Instant::now() + Duration::from_secs(15);
    let log = loop {
        let log = agent.log();
        if log.contains("pod attribution is off") || Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(log.contains("403"), "says why: {log}");
    std::thread::sleep(Duration::from_secs(2));
    let log = agent.log();
    assert_eq!(log.matches("pod attribution is off").count(), 1, "{log}");
    let metrics = agent.get("/metrics").unwrap();
    assert_eq!(metrics.status, 200);
    assert!(metrics.text().contains("ena_interface_info{device=\"ens5\""));
}
