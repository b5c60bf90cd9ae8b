//! Pod attribution against a local server speaking the Kubernetes API (recorded pods list and
//! watch events in the real API's JSON, tests/data/k8s/): the node's pods by address, a pod
//! replaced under the same address, an API that forbids the request, and a service-account
//! token rotated mid-run.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{wait_until, Agent, TempDir};

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
                let (line, mut reader) = crate::support::read_request(stream);
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

/// Serves the API to one bearer token at a time (`accepted`), answering 401 to any other: the
/// list, and a watch that sends one event and ends (so the agent relists). Records each
/// request as "<token> <status> <list|watch>".
fn api_with_token(accepted: Arc<Mutex<String>>) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = Arc::clone(&requests);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let (mut line, mut token) = (String::new(), String::new());
            let _ = reader.read_line(&mut line);
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                if let Some((name, value)) = h.split_once(':') {
                    if name.eq_ignore_ascii_case("authorization") {
                        value.trim().trim_start_matches("Bearer ").clone_into(&mut token);
                    }
                }
            }
            let watch = line.contains("watch=1");
            let (status, body) = if token != *accepted.lock().unwrap() {
                let body = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"Unauthorized","code":401}"#;
                ("401 Unauthorized", body.to_owned())
            } else if watch {
                ("200 OK", format!("{}\n", WATCH.lines().next().unwrap()))
            } else {
                ("200 OK", LIST.to_owned())
            };
            let kind = if watch { "watch" } else { "list" };
            log.lock().unwrap().push(format!("{token} {} {kind}", &status[..3]));
            let _ = write!(
                reader.get_mut(),
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, requests)
}

/// Regression (issue 13): the service-account token was read once at start-up, so pod
/// attribution died with the first 401 once the API stopped accepting the expired token,
/// although the kubelet had written a new one to the file long before.
#[test]
fn a_token_rotated_mid_run_is_read_again_and_attribution_goes_on() {
    let dir = TempDir::new("token");
    let token_file = dir.join("token");
    std::fs::write(&token_file, "old-token\n").unwrap();
    let accepted = Arc::new(Mutex::new("old-token".to_owned()));
    let (port, requests) = api_with_token(Arc::clone(&accepted));
    let agent = Agent::launch(&["serve", "--simulate", "steady", "--pod-attribution"])
        .env("NODE_NAME", NODE)
        .env("ENAWATCH_KUBE_API", format!("http://127.0.0.1:{port}"))
        .env("ENAWATCH_KUBE_TOKEN_FILE", &token_file)
        .spawn();
    let seen = |what: &str| requests.lock().unwrap().iter().any(|r| r == what).then_some(());
    let context = || format!("; requests: {:?}\nlog:\n{}", requests.lock().unwrap(), agent.log());
    let timeout = Duration::from_secs(20);
    wait_until("a list and a watch with the first token", timeout, || seen("old-token 200 watch"), context);
    // The old token expires: the API refuses it from now on, before the kubelet has
    // written the new one.
    *accepted.lock().unwrap() = "new-token".to_owned();
    wait_until("the relist with the expired token refused", timeout, || seen("old-token 401 list"), context);
    std::fs::write(&token_file, "new-token\n").unwrap();
    wait_until("a relist with the rotated token", timeout, || seen("new-token 200 list"), context);
    wait_until("a watch with the rotated token", timeout, || seen("new-token 200 watch"), context);
    let v = pods(&agent);
    assert_eq!(pod_at(&v, "10.0.1.9").as_deref(), Some("coredns-5d78c9869d-7qz4m"), "{v}");
    let log = agent.log();
    assert!(!log.contains("pod attribution is off"), "{log}");
    assert_eq!(log.matches("rejected the service account token (401)").count(), 1, "one line: {log}");
}
