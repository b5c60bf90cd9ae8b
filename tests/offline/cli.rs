//! Bad input at the command line and in the config file: a clear message that names the
//! field and the value, and exit code 2, before anything is served.

use crate::support::{enawatch, TempDir};

fn assert_bad_input(args: &[&str], message: &str) {
    let out = enawatch(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?} → {stderr}");
    assert!(stderr.contains(message), "{args:?}: want {message:?} in:\n{stderr}");
    assert!(out.stdout.is_empty(), "nothing on stdout for bad input");
}

#[test]
fn unknown_flag() {
    assert_bad_input(&["serve", "--intervall", "1s"], "unexpected argument '--intervall'");
}

#[test]
fn interval_below_100ms() {
    assert_bad_input(&["serve", "--interval", "50ms"], "interval: \"50ms\" is below the minimum of 100ms");
}

#[test]
fn regex_that_does_not_compile() {
    assert_bad_input(
        &["serve", "--device-include", "eth(", "--check-config"],
        "device_include: \"eth(\" is not a valid regex",
    );
    assert_bad_input(
        &["serve", "--compat-stats", "[", "--check-config"],
        "compat_stats: \"[\" is not a valid regex",
    );
}

#[test]
fn unknown_compat_family() {
    assert_bad_input(
        &["serve", "--compat", "showmax,prom", "--check-config"],
        "compat: \"prom\" is not one of: showmax, node-exporter",
    );
}

#[test]
fn port_already_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    assert_bad_input(&["serve", "--listen", &addr], &format!("listen: \"{addr}\" cannot be listened on"));
}

#[test]
fn unknown_field_in_config_file() {
    let dir = TempDir::new("cli");
    let path = dir.join("enawatch.yaml");
    std::fs::write(&path, "interval: 2s\nintervall: 1s\n").unwrap();
    let path = path.to_str().unwrap();
    assert_bad_input(
        &["serve", "--config", path, "--check-config"],
        &format!("config file {path}: unknown field `intervall`"),
    );
}

#[test]
fn bad_value_in_config_file_names_the_field() {
    let dir = TempDir::new("cli");
    let path = dir.join("enawatch.yaml");
    std::fs::write(&path, "history: forever\n").unwrap();
    assert_bad_input(
        &["serve", "--config", path.to_str().unwrap()],
        "history: \"forever\" is not a duration",
    );
}

#[test]
fn missing_config_file() {
    assert_bad_input(
        &["serve", "--config", "/nonexistent/enawatch.yaml"],
        "config file /nonexistent/enawatch.yaml:",
    );
}

#[test]
fn check_config_accepts_a_good_file_and_flags_win() {
    let dir = TempDir::new("cli");
    let path = dir.join("enawatch.yaml");
    std::fs::write(&path, "interval: 2s\ncompat: [showmax]\neni:\n  ens6: eni-0abc\n").unwrap();
    let out = enawatch(&["serve", "--config", path.to_str().unwrap(), "--interval", "5s", "--check-config"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("configuration ok"));
    assert!(stdout.contains("\ninterval: 5s\n"), "flags win over the file: {stdout}");
    assert!(stdout.contains("- showmax"), "{stdout}");
    assert!(stdout.contains("ens6: eni-0abc"), "{stdout}");
}

#[test]
fn an_invalid_notifier_url_is_rejected_by_check_config() {
    let dir = TempDir::new("cli");
    let path = dir.join("enawatch.yaml");
    std::fs::write(&path, "alerts:\n  receivers:\n    - type: webhook\n      url: hooks.example/x\n")
        .unwrap();
    assert_bad_input(
        &["serve", "--config", path.to_str().unwrap(), "--check-config"],
        "alerts.receivers: \"[0] url: hooks.example/x\" is not a URL",
    );
    std::fs::write(&path, "alerts:\n  receivers:\n    - type: pagerduty\n      url: http://x\n").unwrap();
    assert_bad_input(
        &["serve", "--config", path.to_str().unwrap(), "--check-config"],
        "is not one of: webhook, alertmanager, slack",
    );
    std::fs::write(&path, "alerts:\n  rules:\n    - alert: LinkLocalAllowanceExceeded\n      for: soon\n")
        .unwrap();
    assert_bad_input(
        &["serve", "--config", path.to_str().unwrap(), "--check-config"],
        "alerts.rules: \"[0] for: soon\" is not a duration",
    );
}
