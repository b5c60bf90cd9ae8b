//! The monitoring package, checked with the real tools: the rendered rules equal the
//! checked-in files, promtool lints and unit-tests them, amtool checks both Alertmanager
//! configurations and their routes, and every alert has a runbook.
//!
//! After an intended rule change: `ENAWATCH_UPDATE_GOLDEN=1 cargo test --test tools package::`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::{bin, TempDir};
use enawatch::generate::rules::{self, Agents, Flavour};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a tool from a Debian package, failing clearly when it is missing.
fn tool(name: &str, package: &str, args: &[&str]) -> Output {
    Command::new(name).args(args).current_dir(root()).output().unwrap_or_else(|e| {
        panic!("{name} (Debian package {package}) must be installed; scripts/test installs it: {e}")
    })
}

fn assert_ok(out: &Output, what: &str) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{what} failed:\n{text}");
    text
}

fn yaml(path: &Path) -> yaml_serde::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    yaml_serde::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn checked_in_rules_equal_what_the_binary_renders() {
    for (flavour, agents, file) in rules::COPIES {
        let rendered = rules::render_for(flavour, agents);
        let path = root().join(file);
        if std::env::var_os("ENAWATCH_UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, &rendered).unwrap();
            continue;
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == rendered,
            "{file} is stale: run `{} > {file}` (or ENAWATCH_UPDATE_GOLDEN=1 cargo test --test tools package::)",
            rules::command(flavour, agents),
        );
    }
    // The command line gives the same bytes.
    let out = Command::new(bin())
        .args(["rules", "render", "--format", "amp-ack", "--agents", "push"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), rules::render_for(Flavour::AmpAck, Agents::Push));
}

#[test]
fn an_unknown_render_format_lists_the_known_ones() {
    let out = Command::new(bin()).args(["rules", "render", "--format", "grafana"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("[possible values: prometheus, prometheus-operator, amp-ack]"), "{stderr}");
}

#[test]
fn every_flavour_passes_promtool_lint() {
    let dir = TempDir::new("rules");
    // The plain file as it is; the other two carry the same groups inside a resource.
    let operator = yaml(&root().join("deploy/kubernetes/prometheusrule.yaml"));
    let amp = yaml(&root().join("deploy/amp/rulegroupsnamespace.yaml"));
    let from_operator = yaml_serde::to_string(&operator["spec"]).unwrap();
    let from_amp = amp["spec"]["configuration"].as_str().expect("configuration is a string").to_owned();
    std::fs::write(dir.join("operator.yaml"), from_operator).unwrap();
    std::fs::write(dir.join("amp.yaml"), from_amp).unwrap();
    let plain =
        ["deploy/prometheus/enawatch-rules.yaml", "deploy/amp/enawatch-rules.yaml"].map(|f| root().join(f));
    for file in plain.into_iter().chain([dir.join("operator.yaml"), dir.join("amp.yaml")]) {
        let out = tool("promtool", "prometheus", &["check", "rules", "--lint=all", file.to_str().unwrap()]);
        let text = assert_ok(&out, &format!("promtool check rules --lint=all {}", file.display()));
        assert!(text.contains("SUCCESS: 34 rules found"), "{text}");
    }
}

#[test]
fn promtool_unit_tests_of_the_rules_pass() {
    let tests: Vec<String> = std::fs::read_dir(root().join("deploy/prometheus/tests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| p.to_str().unwrap().to_owned())
        .collect();
    assert!(tests.len() >= 2, "{tests:?}");
    let mut args = vec!["test", "rules"];
    args.extend(tests.iter().map(String::as_str));
    let text = assert_ok(&tool("promtool", "prometheus", &args), "promtool test rules");
    assert_eq!(text.matches("SUCCESS").count(), tests.len(), "{text}");
}

/// AMP's alert manager definition, unpacked: (Alertmanager config, template files).
fn amp_alertmanager() -> (String, Vec<(String, String)>) {
    let resource = yaml(&root().join("deploy/amp/alertmanagerdefinition.yaml"));
    let definition: yaml_serde::Value =
        yaml_serde::from_str(resource["spec"]["configuration"].as_str().expect("configuration is a string"))
            .expect("the definition is YAML");
    let config =
        definition["alertmanager_config"].as_str().expect("alertmanager_config is a string").to_owned();
    let templates = definition["template_files"]
        .as_mapping()
        .expect("template_files")
        .iter()
        .map(|(k, v)| (k.as_str().unwrap().to_owned(), v.as_str().unwrap().to_owned()))
        .collect();
    (config, templates)
}

#[test]
fn both_alertmanager_configurations_pass_amtool() {
    let out =
        tool("amtool", "prometheus-alertmanager", &["check-config", "deploy/alertmanager/alertmanager.yaml"]);
    assert_ok(&out, "amtool check-config deploy/alertmanager/alertmanager.yaml");

    // AMP loads the template files itself; amtool is pointed at them.
    let dir = TempDir::new("amp");
    let (config, templates) = amp_alertmanager();
    for (name, text) in &templates {
        std::fs::write(dir.join(name), text).unwrap();
    }
    let config = format!("{config}templates: ['{}/*.tmpl']\n", dir.0.display());
    std::fs::write(dir.join("alertmanager.yaml"), config).unwrap();
    let out = tool(
        "amtool",
        "prometheus-alertmanager",
        &["check-config", dir.join("alertmanager.yaml").to_str().unwrap()],
    );
    let text = assert_ok(&out, "amtool check-config on AMP's inner configuration");
    assert!(text.contains("1 templates"), "{text}");
}

#[test]
fn sns_subjects_stay_within_sns_limits() {
    let (_, templates) = amp_alertmanager();
    let text = &templates.iter().find(|(n, _)| n == "enawatch.tmpl").expect("enawatch.tmpl").1;
    let start = text.find("{{ define \"enawatch.sns.subject\" }}").expect("subject template") + 34;
    let subject = &text[start..start + text[start..].find("{{ end }}").expect("end")];
    // The longest subject any shipped alert can produce.
    let longest_alert = rules::alert_names().into_iter().max_by_key(String::len).unwrap();
    let worst = subject
        .replace("{{ .Status | toUpper }}", "RESOLVED")
        .replace("{{ .CommonLabels.alertname }}", &longest_alert)
        .replace("{{ .CommonLabels.severity }}", "critical")
        .replace("{{ .CommonLabels.device }}", "eni0123456789ab");
    assert!(!worst.contains("{{"), "every action of the subject is accounted for: {worst}");
    assert!(worst.len() <= 100 && worst.is_ascii() && !worst.contains('\n'), "{worst:?}");
}

fn routes(config: &str, labels: &[&str], receivers: &str) {
    let mut args = vec!["config", "routes", "test", "--config.file", config, "--verify.receivers", receivers];
    args.extend_from_slice(labels);
    let out = tool("amtool", "prometheus-alertmanager", &args);
    assert_ok(&out, &format!("route of {labels:?} to {receivers}"));
}

#[test]
fn alerts_route_by_severity() {
    let plain = "deploy/alertmanager/alertmanager.yaml";
    routes(plain, &["alertname=ConntrackAllowanceExceeded", "severity=critical"], "pagerduty,slack,webhook");
    routes(plain, &["alertname=LinkLocalAllowanceExceeded", "severity=warning"], "slack,webhook");
    routes(plain, &["alertname=EnaAllowanceStatsUnsupported", "severity=info"], "webhook");
    // A wrong expectation is caught (amtool's verification really compares).
    let mut args =
        vec!["config", "routes", "test", "--config.file", plain, "--verify.receivers", "pagerduty"];
    args.push("severity=warning");
    assert!(!tool("amtool", "prometheus-alertmanager", &args).status.success());
}

#[test]
fn every_alert_has_a_runbook_section() {
    let runbooks = std::fs::read_to_string(root().join("docs/runbooks.md")).unwrap();
    for name in rules::alert_names() {
        assert!(runbooks.contains(&format!("\n## {name}\n")), "docs/runbooks.md has no section `## {name}`");
    }
    let linked: Vec<&str> = enawatch::alerts::catalog::RUNBOOK_BASE.rsplit('/').take(2).collect();
    assert_eq!(linked, ["runbooks.md", "docs"], "runbook_url points at docs/runbooks.md");
}
