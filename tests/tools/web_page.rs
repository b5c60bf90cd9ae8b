//! The live page in real headless Chromium (Debian's `chromium`): against a simulated DNS
//! storm, the charts, the alert banner and the workloads whose lookups failed appear, on a laptop-sized and a phone-sized
//! window, and the browser makes no request outside 127.0.0.1. Screenshots are kept in
//! tests/artifacts/ for people to look at.

use std::io::Read as _;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{wait_until, Agent, TempDir};

/// Runs headless Chromium on `url` with every non-loopback request sent to `proxy`.
fn chromium(dir: &TempDir, proxy: u16, size: &str, url: &str, output: &[&str]) -> String {
    let out = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"])
        .args(["--disable-background-networking", "--disable-component-update", "--disable-sync"])
        .arg(format!("--user-data-dir={}", dir.join(&format!("profile-{size}")).display()))
        // Loopback is never proxied; anything else would reach the recording proxy.
        .arg(format!("--proxy-server=http://127.0.0.1:{proxy}"))
        .arg(format!("--window-size={size}"))
        .arg("--virtual-time-budget=4000")
        .args(output)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .expect("chromium (Debian package) must be installed; scripts/test installs it");
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_page_shows_live_charts_and_the_alert_banner() {
    let dir = TempDir::new("page");
    let config = dir.join("enawatch.yaml");
    // The link-local warning and the DNS throttling alert made fast, so they fire within the
    // first burst and its lost lookups' timeouts.
    std::fs::write(
        &config,
        "alerts:\n  rules:\n    - alert: LinkLocalAllowanceExceeded\n      severity: warning\n      min_throttled: 2s\n      for: 0s\n    \
         - alert: DNSFailuresFromLinkLocalThrottling\n      for: 0s\n",
    )
    .unwrap();
    let agent = Agent::launch(&["serve", "--simulate", "dns-storm", "--config"]).arg(&config).spawn();
    let addr = agent.addr.clone();
    wait_until(
        "the local alert to fire",
        Duration::from_secs(40),
        || agent.get("/api/v1/alerts").is_ok_and(|r| r.text().contains("\"firing\"")).then_some(()),
        String::new,
    );
    // The scenario's pods lose lookups in the burst at 8 s; they are unanswered 5 s later.
    wait_until(
        "lookups lost to throttling in the DNS report",
        Duration::from_secs(40),
        || {
            let body = agent.get("/api/v1/dns").ok()?.text();
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            let hurt = v["report"]["who_is_hurt"].as_array()?;
            hurt.iter().any(|w| w["workload"] == "web" && w["throttled"].as_u64() > Some(0)).then_some(())
        },
        || agent.get("/api/v1/dns").map(|r| r.text()).unwrap_or_default(),
    );

    // A proxy that records and never answers: every request for another host comes here.
    let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_port = proxy.local_addr().unwrap().port();
    let escaped: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = Arc::clone(&escaped);
    std::thread::spawn(move || {
        for mut stream in proxy.incoming().flatten() {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let mut head = [0u8; 256];
            let n = stream.read(&mut head).unwrap_or(0);
            let line = String::from_utf8_lossy(&head[..n]).lines().next().unwrap_or("").to_owned();
            log.lock().unwrap().push(line);
        }
    });

    let url = format!("http://{addr}/");
    let dom = chromium(&dir, proxy_port, "1280,1600", &url, &["--dump-dom"]);
    assert!(dom.contains("id=\"banner\" class=\"firing\""), "the alert banner is shown:\n{dom}");
    assert!(dom.contains("LinkLocalAllowanceExceeded"), "{dom}");
    assert!(
        dom.contains("FIRING DNSFailuresFromLinkLocalThrottling"),
        "the node's DNS alert, evaluated locally: {dom}"
    );
    assert!(dom.contains("id=\"dev-ens5\"") && dom.contains("id=\"dev-ens6\""), "a card per device");
    let drawn: Vec<usize> =
        dom.split("data-points=\"").skip(1).filter_map(|s| s.split('"').next()?.parse().ok()).collect();
    assert_eq!(drawn.len(), 8, "four charts per device (the link-local budget too): {drawn:?}");
    assert!(drawn.iter().all(|&n| n > 0), "every chart has live data: {drawn:?}");
    assert!(dom.contains("link-local (DNS, IMDS, Time Sync)"), "plain-language names");
    assert!(dom.contains("Recent bursts: linklocal"), "{dom}");
    let linklocal =
        dom.split("data-kind=\"linklocal\"").nth(1).and_then(|rest| rest.split('>').next()).unwrap_or("");
    assert!(linklocal.contains("data-points="), "the link-local budget chart is drawn: {linklocal}");
    // Who is hurt: the workloads whose lookups failed during throttling, marked hot.
    let hurt =
        dom.split("<table class=\"hurt\">").nth(1).and_then(|t| t.split("</table>").next()).unwrap_or("");
    for workload in ["kube-system/coredns", "shop/web", "jobs/batch"] {
        let row = hurt.split("<tr").find(|r| r.contains(&format!("<td>{workload}</td>"))).unwrap_or("");
        assert!(row.starts_with(" class=\"hot\""), "{workload} is hurt by throttling: {hurt}");
    }
    assert!(dom.contains("<td>10.0.1.15 (shop/web-6d4cf56db6-15)</td>"), "a DNS client is named by its pod");

    let artifacts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    for (size, name) in [("1280,1600", "page-laptop.png"), ("390,1400", "page-phone.png")] {
        let shot = artifacts.join(name);
        let _ = std::fs::remove_file(&shot);
        chromium(&dir, proxy_port, size, &url, &[&format!("--screenshot={}", shot.display())]);
        assert!(std::fs::metadata(&shot).is_ok_and(|m| m.len() > 10_000), "{name} was written");
    }
    // Chromium itself checks for updates and the time with Google even when told not to; the
    // proxy catches those and answers none. The page may make no request of its own there.
    let escaped = escaped.lock().unwrap();
    let browser_own = |line: &str| {
        let host = line.split_whitespace().nth(1).unwrap_or("");
        let host = host.trim_start_matches("http://").split(['/', ':']).next().unwrap_or("");
        ["google.com", "googleapis.com", "gvt1.com", "gstatic.com"]
            .iter()
            .any(|d| host == *d || host.ends_with(&format!(".{d}")))
    };
    let from_page: Vec<&String> = escaped.iter().filter(|l| !browser_own(l)).collect();
    assert!(from_page.is_empty(), "requests outside 127.0.0.1: {from_page:?}");
}
