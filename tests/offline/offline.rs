//! The offline commands as a user runs them: analyze, simulate help, and their bad input.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{bin, check_golden, enawatch, parse_metrics, Agent, TempDir};

fn write(dir: &TempDir, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

const CAPTURE: &str = "@1790000000.0\n=== ens5 driver=ena\n     linklocal_allowance_exceeded: 100\n\
                       @1790000001.0\n=== ens5 driver=ena\n     linklocal_allowance_exceeded: 400\n\
                       @1790000002.0\n=== ens5 driver=ena\n     linklocal_allowance_exceeded: 400\n\
                       @1790000003.0\n=== ens5 driver=ena\n     linklocal_allowance_exceeded: 20\n";

#[test]
fn analyze_reports_episodes_resets_and_the_fix() {
    let dir = TempDir::new("offline");
    let path = write(&dir, "cap.txt", CAPTURE);
    let out = enawatch(&["analyze", &path]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    // 100 → 400 is one episode; 400 → 20 is a reset after which the driver counted 20.
    assert!(text.contains("linklocal  2 episodes, 320 packets, 2s throttled"), "{text}");
    assert!(
        text.contains("driver counter resets: 2026-09-21T14:13:23.000Z"),
        "counters going back are a reset: {text}"
    );
    assert!(text.contains("NodeLocal DNSCache"), "{text}");

    let out = enawatch(&["analyze", "--format", "json", &path]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["version"], 1);
    assert_eq!(json["verdict"]["throttled"], true);
    let ll = &json["devices"][0]["allowances"][4];
    assert_eq!(ll["allowance"], "linklocal");
    assert_eq!(ll["episodes"][0]["packets"], 300);
    assert_eq!(ll["episodes"][0]["peak_pps"], 300.0);
    assert_eq!(ll["episodes"][1]["packets"], 20);
    assert_eq!(json["devices"][0]["resets"][0], "2026-09-21T14:13:23.000Z");
}

#[test]
fn analyze_output_is_stable() {
    // Run from the crate root so the file name in the report is the same everywhere.
    for (format, golden) in [("text", "analyze.txt"), ("json", "analyze.json")] {
        let out = Command::new(bin())
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["analyze", "--format", format, "tests/data/small.capture.txt"])
            .output()
            .unwrap();
        assert!(out.status.success());
        check_golden(golden, &String::from_utf8_lossy(&out.stdout));
    }
}

#[test]
fn analyze_takes_a_bare_dump_from_stdin() {
    let mut child = Command::new(bin())
        .args(["analyze", "-", "--device", "ens9"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        child.stdin.as_mut().unwrap(),
        include_bytes!("../data/ena-allowances-aws-docs-excerpt.txt"),
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("1 samples") && text.contains("ens9"), "{text}");
    assert!(text.contains("conntrack available: low-water mark 136812"), "{text}");
    assert!(text.contains("Not throttled"), "{text}");
}

#[test]
fn a_malformed_capture_names_file_and_line_and_nothing_is_served() {
    let dir = TempDir::new("offline");
    let path = write(&dir, "bad.txt", "@1790000000.0\n=== ens5\n     linklocal_allowance_exceeded: lots\n");
    for args in
        [vec!["analyze", path.as_str()], vec!["serve", "--replay", path.as_str(), "--listen", "127.0.0.1:1"]]
    {
        let out = enawatch(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("{path}:3: expected an unsigned 64-bit value for \"linklocal_allowance_exceeded\", found \"lots\"")),
            "{stderr}"
        );
        assert!(!stderr.contains("serving"), "nothing is served: {stderr}");
    }
    let out = enawatch(&["analyze", "/nonexistent/cap.txt"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn an_unknown_scenario_lists_the_known_ones() {
    let out = enawatch(&["serve", "--simulate", "dns-strom"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "scenario dns-strom: no such built-in scenario; known: steady, dns-storm, conntrack-exhaustion"
        ),
        "{stderr}"
    );

    let out = enawatch(&["serve", "--simulate", "help"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for name in ["steady", "dns-storm", "conntrack-exhaustion", "driver-reset", "glitch"] {
        assert!(stdout.contains(name), "{stdout}");
    }
}

#[test]
fn a_bad_scenario_file_says_what_is_wrong() {
    let dir = TempDir::new("offline");
    let path = write(&dir, "s.yaml", "description: x\nevents:\n  - kind: drops\n    allowance: dns\n    rate: 1\n    at: 1s\n    duration: 1s\n");
    let out = enawatch(&["serve", "--simulate", &path]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("events[0].allowance: \"dns\" is not one of"), "{stderr}");
}

#[test]
fn replay_flags_need_a_replay_and_a_sane_speed() {
    assert_eq!(enawatch(&["serve", "--speed", "2"]).status.code(), Some(2));
    let dir = TempDir::new("offline");
    let path = write(&dir, "cap.txt", CAPTURE);
    let out = enawatch(&["serve", "--replay", &path, "--speed", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("speed: 0 is not a positive number"));
}

#[test]
fn the_demo_shows_link_local_throttling_within_a_minute() {
    // On a free loopback port.
    let mut demo = Agent::launch(&["demo"]).spawn();
    let listen = demo.addr.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    let log = loop {
        let log = demo.log();
        if log.contains("allowance exceeded") || Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let metrics = demo.scrape();
    demo.kill();
    assert!(log.contains("device=\"ens5\" allowance=\"linklocal\""), "{log}");
    let directions = demo.stdout();
    assert!(directions.contains(&format!("http://{listen}/metrics")), "{directions}");
    let seconds = parse_metrics(&metrics)
        ["ena_allowance_exceeded_seconds_total{device=\"ens5\",allowance=\"linklocal\"}"];
    assert!(seconds >= 1.0, "{metrics}");
}
