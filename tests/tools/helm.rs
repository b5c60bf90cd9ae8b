//! The Helm chart (deploy/helm/enawatch) keeps its promises, checked without a `helm` binary:
//! Helm 4's own Go SDK, through the PyPI package helm-python-sdk, lints it and renders it
//! with every values file of its `ci/` matrix; each rendering passes
//! `kubernetes-validate --strict` for the Kubernetes versions of tests/tools/manifests.rs and
//! keeps the agent's security invariants for the features it turns on. The values schema
//! rejects unknown keys and wrong types by name, closes every level and covers every value,
//! and docs/helm.md documents every value. The chart's PrometheusRule is the binary's
//! rendering, its dashboards are deploy/grafana/, and the kustomize base (deploy/kubernetes)
//! is the chart's rendering: one source of truth, and each kustomize alternative equals the
//! chart with the matching switch.
//!
//! After an intended change to the chart, the rules or the dashboards:
//! `ENAWATCH_UPDATE_GOLDEN=1 cargo test --test tools helm::` rewrites deploy/kubernetes/ (but
//! kustomization.yaml, prometheusrule.yaml and alternatives/) and the chart's copies under
//! files/.
//!
//! Needs helm-python-sdk (`python3 -m pip install helm-python-sdk==0.2.2`, which carries
//! Helm's SDK as a shared library) and the `kubernetes-validate` CLI; `scripts/test` installs
//! both.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::json;
use yaml_serde::Value;

use crate::manifests::{self, kubernetes_validate, KUBERNETES_VERSIONS};
use crate::remote_write_manifests;
use crate::support::yaml::{documents, load, read, seq, text};
use crate::support::{bin, TempDir};

const CHART: &str = "deploy/helm/enawatch";
const KUSTOMIZE_VALUES: &str = "deploy/helm/kustomize-values.yaml";
const KUBE_DIR: &str = "deploy/kubernetes";
const DOCS: &str = "docs/helm.md";
const SDK_VERSION: &str = "0.2.2";
const SDK_INSTALL: &str = "python3 -m pip install helm-python-sdk==0.2.2 (scripts/test does this)";
/// The kustomize base is rendered as this release, in this namespace.
const RELEASE: &str = "enawatch";
/// Labels only Helm's own rendering carries: the kustomize base is the chart's rendering
/// without them.
const HELM_ONLY_LABELS: [&str; 3] =
    ["helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/instance"];
/// Templates whose kustomize file is not the chart's rendering: the rules are the binary's
/// own rendering there (tests/tools/package.rs), compared here by content.
const NOT_GENERATED: [&str; 1] = ["prometheusrule.yaml"];
/// The values files the issue asks for, in `ci/`.
const MATRIX: [&str; 8] = [
    "defaults",
    "meter",
    "dns-analysis",
    "remote-write-irsa",
    "remote-write-pod-identity",
    "servicemonitor",
    "dashboards",
    "everything",
];
/// Schema objects left open on purpose: Kubernetes API types the API server validates, whose
/// full schema would copy Kubernetes' own.
const OPEN_SCHEMA: [&str; 4] =
    ["affinity.nodeAffinity", "affinity.podAffinity", "affinity.podAntiAffinity", "resources.claims[]"];

/// Runs requests against the chart with helm-python-sdk; one process for all of them. Each
/// result is Ok(the SDK's answer) or Err(the SDK's error message).
const DRIVER: &str = r#"
import importlib.metadata, json, sys
try:
    version = importlib.metadata.version("helm-python-sdk")
except importlib.metadata.PackageNotFoundError:
    sys.exit("the PyPI package helm-python-sdk is not installed")
import helm_python as helm
chart_dir, requests = sys.argv[1], json.load(sys.stdin)
chart = helm.Chart.load(chart_dir)
results = []
for req in requests:
    try:
        values = helm.values_from_yaml(req.get("values") or "{}") or {}
        op = req["op"]
        if op == "render":
            ok = chart.render(values, name=req["release"], namespace=req["namespace"], is_install=True)
        elif op == "schema":
            ok = chart.validate_schema(values)
        elif op == "merge":
            ok = chart.merge_values(values)
        elif op == "lint":
            ok = helm.lint(chart_dir, values, strict=True, namespace=req["namespace"],
                           kube_version=req["kube_version"])
        else:
            sys.exit(f"unknown op {op}")
        results.append({"ok": ok})
    except helm.HelmError as e:
        results.append({"err": f"{type(e).__name__}: {e}"})
json.dump({"version": version, "sdk": helm.helm_sdk_version(), "results": results}, sys.stdout)
"#;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn is_ext(name: &str, ext: &str) -> bool {
    Path::new(name).extension().is_some_and(|e| e.eq_ignore_ascii_case(ext))
}

fn updating() -> bool {
    std::env::var_os("ENAWATCH_UPDATE_GOLDEN").is_some()
}

// === Helm, through its Go SDK ===

fn sdk(chart: &Path, requests: &[serde_json::Value]) -> Vec<Result<serde_json::Value, String>> {
    let mut child = Command::new("python3")
        .args(["-c", DRIVER])
        .arg(chart)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("python3: {e}"));
    serde_json::to_writer(child.stdin.take().unwrap(), requests).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "helm-python-sdk failed (missing? {SDK_INSTALL}):\n{stderr}");
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the driver's JSON");
    assert_eq!(
        answer["version"], SDK_VERSION,
        "helm-python-sdk {} is installed; these tests are written against {SDK_VERSION}: {SDK_INSTALL}",
        answer["version"]
    );
    answer["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| match r.get("err") {
            Some(e) => Err(e.as_str().unwrap_or_default().to_owned()),
            None => Ok(r["ok"].clone()),
        })
        .collect()
}

fn one(request: serde_json::Value) -> Result<serde_json::Value, String> {
    sdk(&repo().join(CHART), &[request]).remove(0)
}

fn render_request(values: &str) -> serde_json::Value {
    json!({"op": "render", "values": values, "release": RELEASE, "namespace": RELEASE})
}

/// Every template's rendering, by template file name (`daemonset.yaml`, `NOTES.txt`).
type Rendering = BTreeMap<String, String>;

fn rendering(answer: &serde_json::Value) -> Rendering {
    answer
        .as_object()
        .expect("a map of templates")
        .iter()
        .map(|(k, v)| (k.rsplit('/').next().unwrap().to_owned(), v.as_str().unwrap().to_owned()))
        .collect()
}

fn render(values: &str) -> Rendering {
    rendering(&one(render_request(values)).unwrap_or_else(|e| panic!("the chart does not render:\n{e}")))
}

/// The Kubernetes objects of a rendering.
fn objects(r: &Rendering) -> Vec<Value> {
    r.iter().filter(|(name, _)| is_ext(name, "yaml")).flat_map(|(name, text)| documents(text, name)).collect()
}

fn ci_values(name: &str) -> String {
    read(&format!("{CHART}/ci/{name}-values.yaml"))
}

fn ci_files() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(repo().join(CHART).join("ci"))
        .expect("the chart's ci/ directory")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter_map(|n| n.strip_suffix("-values.yaml").map(str::to_owned))
        .collect();
    names.sort();
    names
}

fn find<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| text(&o["kind"]) == kind).collect()
}

fn the<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found = find(objects, kind);
    assert_eq!(found.len(), 1, "expected one {kind}, found {}", found.len());
    found[0]
}

fn strings(v: &Value) -> Vec<String> {
    seq(v).iter().map(text).collect()
}

// === lint and the matrix ===

#[test]
fn the_ci_matrix_is_the_one_the_issue_asks_for() {
    let mut want: Vec<String> = MATRIX.iter().map(ToString::to_string).collect();
    want.sort();
    assert_eq!(ci_files(), want, "deploy/helm/enawatch/ci/*-values.yaml");
}

#[test]
fn lint_is_clean_for_every_values_file_and_kubernetes_version() {
    let mut requests = Vec::new();
    for name in ci_files() {
        for version in KUBERNETES_VERSIONS {
            requests.push(json!({"op": "lint", "values": ci_values(&name), "namespace": RELEASE,
                                 "kube_version": format!("v{version}"), "name": name}));
        }
    }
    let mut problems = Vec::new();
    for (req, result) in requests.iter().zip(sdk(&repo().join(CHART), &requests)) {
        let at =
            format!("ci/{}-values.yaml, Kubernetes {}", text_of(&req["name"]), text_of(&req["kube_version"]));
        match result {
            Err(e) => problems.push(format!("{at}: {e}")),
            Ok(report) => {
                assert_eq!(report["total_charts_linted"], 1, "{at}: {report}");
                // Severity 1 is informational ("icon is recommended"); 2 is a warning, 3 an error.
                for m in report["messages"].as_array().unwrap() {
                    if m["severity"].as_u64().unwrap_or(3) >= 2 {
                        problems.push(format!("{at}: {}: {}", text_of(&m["path"]), text_of(&m["error"])));
                    }
                }
                for e in report["errors"].as_array().unwrap() {
                    problems.push(format!("{at}: {e}"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "helm lint --strict (Helm's Go SDK):\n- {}", problems.join("\n- "));
}

fn text_of(v: &serde_json::Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

#[test]
fn lint_reports_a_broken_template() {
    let dir = TempDir::new("helm-lint");
    let copy = copy_chart(&dir);
    let path = copy.join("templates/service.yaml");
    let broken = std::fs::read_to_string(&path)
        .unwrap()
        .replace("{{ .Values.service.port }}", "{{ .Values.service.port ");
    std::fs::write(&path, broken).unwrap();
    let req = json!({"op": "lint", "values": "", "namespace": RELEASE, "kube_version": "v1.31.0"});
    let report = sdk(&copy, &[req]).remove(0).expect("lint answers with findings");
    let text = report.to_string();
    assert!(text.contains("service.yaml"), "lint must name the broken template: {text}");
}

/// A copy of the chart to break.
fn copy_chart(dir: &TempDir) -> PathBuf {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let target = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                copy(&e.path(), &target);
            } else {
                std::fs::copy(e.path(), target).unwrap();
            }
        }
    }
    let to = dir.join("enawatch");
    copy(&repo().join(CHART), &to);
    to
}

// === security invariants, per feature ===

/// What a values file turns on, from the merged values (defaults included).
#[derive(Debug, Default)]
struct Features {
    net_raw: bool,
    pods: bool,
    events: bool,
    ca_file: Option<String>,
}

impl Features {
    /// Pod attribution and node events talk to the API: they need the token.
    fn token(&self) -> bool {
        self.pods || self.events
    }
}

fn features(merged: &serde_json::Value) -> Features {
    let on = |a: &str, b: &str| merged[a][b].as_bool() == Some(true);
    Features {
        net_raw: on("linklocalMeter", "enabled") || on("dnsAnalysis", "enabled"),
        pods: on("podAttribution", "enabled"),
        events: on("nodeEvents", "enabled"),
        ca_file: (on("caBundle", "enabled") || on("remoteWrite", "enabled"))
            .then(|| text_of(&merged["caBundle"]["hostPath"])),
    }
}

/// The agent pod's invariants: not privileged; no capability, or exactly NET_RAW for the
/// meter and DNS analysis (which run as UID 0 with it); otherwise non-root; a read-only root
/// filesystem; no host path but the one read-only CA file remote write reads; a token only
/// with pod attribution (and then exactly the read-only pods role).
fn invariant_violations(objects: &[Value], want: &Features) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            out.push(what);
        }
    };
    let ds = the(objects, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    check(pod["hostNetwork"].as_bool() == Some(true), "spec.hostNetwork must be true".into());
    for host in ["hostPID", "hostIPC"] {
        check(pod[host].as_bool() != Some(true), format!("spec.{host} must not be true"));
    }
    check(
        pod["automountServiceAccountToken"].as_bool() == Some(want.token()),
        format!(
            "spec.automountServiceAccountToken must be {} (pod attribution or node events)",
            want.token()
        ),
    );
    let host_paths: Vec<&Value> = seq(&pod["volumes"]).iter().filter(|v| !v["hostPath"].is_null()).collect();
    match &want.ca_file {
        None => check(host_paths.is_empty(), "spec.volumes must not mount a hostPath".into()),
        Some(file) => check(
            host_paths.len() == 1
                && text(&host_paths[0]["hostPath"]["path"]) == *file
                && text(&host_paths[0]["hostPath"]["type"]) == "File",
            format!("the only hostPath must be the CA file {file}, type File"),
        ),
    }
    let containers: Vec<&Value> = seq(&pod["containers"]).iter().chain(seq(&pod["initContainers"])).collect();
    check(containers.len() == 1, "the pod template must hold exactly the agent's container".into());
    for c in containers {
        let name = text(&c["name"]);
        let sc = &c["securityContext"];
        let effective =
            |f: &str| if sc[f].is_null() { pod["securityContext"][f].clone() } else { sc[f].clone() };
        check(
            sc["privileged"].as_bool() != Some(true),
            format!("container {name}: privileged must not be true"),
        );
        check(
            sc["allowPrivilegeEscalation"].as_bool() == Some(false),
            format!("container {name}: allowPrivilegeEscalation must be false"),
        );
        check(
            sc["readOnlyRootFilesystem"].as_bool() == Some(true),
            format!("container {name}: readOnlyRootFilesystem must be true"),
        );
        check(
            strings(&sc["capabilities"]["drop"]) == ["ALL"],
            format!("container {name}: capabilities.drop must be [ALL]"),
        );
        let add = strings(&sc["capabilities"]["add"]);
        let want_add: Vec<String> = if want.net_raw { vec!["NET_RAW".into()] } else { vec![] };
        check(
            add == want_add,
            format!("container {name}: capabilities.add must be {want_add:?} (meter or DNS analysis: {}), is {add:?}", want.net_raw),
        );
        check(
            text(&effective("seccompProfile")["type"]) == "RuntimeDefault",
            format!("container {name}: seccompProfile.type must be RuntimeDefault"),
        );
        if !want.net_raw {
            check(
                effective("runAsNonRoot").as_bool() == Some(true),
                format!("container {name}: runAsNonRoot must be true"),
            );
            check(
                effective("runAsUser").as_u64().is_some_and(|uid| uid > 0),
                format!("container {name}: runAsUser must be a non-root UID"),
            );
        }
        for m in seq(&c["volumeMounts"]) {
            let volume = seq(&pod["volumes"]).iter().find(|v| v["name"] == m["name"]);
            let host = volume.is_some_and(|v| !v["hostPath"].is_null());
            check(
                !host || m["readOnly"].as_bool() == Some(true),
                format!("container {name}: the hostPath mount {} must be readOnly", text(&m["mountPath"])),
            );
        }
    }
    rbac_violations(objects, want, &mut check);
    out
}

/// The RBAC each feature brings, and nothing else: a ClusterRole that lists and watches pods
/// for pod attribution, a Role in `default` that creates and patches events for node events.
fn rbac_violations(objects: &[Value], want: &Features, check: &mut impl FnMut(bool, String)) {
    let roles = find(objects, "ClusterRole");
    let bindings = find(objects, "ClusterRoleBinding");
    if want.pods {
        check(
            roles.len() == 1 && bindings.len() == 1,
            "pod attribution binds exactly one ClusterRole".into(),
        );
        for r in roles {
            let granted = serde_json::to_value(&r["rules"]).unwrap();
            check(
                granted == json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}]),
                format!("the ClusterRole must only list and watch pods: {granted}"),
            );
        }
    } else {
        check(roles.is_empty() && bindings.is_empty(), "no ClusterRole without pod attribution".into());
    }
    let (roles, bindings) = (find(objects, "Role"), find(objects, "RoleBinding"));
    if want.events {
        check(roles.len() == 1 && bindings.len() == 1, "node events bind exactly one Role".into());
        for r in roles.iter().chain(&bindings) {
            check(
                r["metadata"]["namespace"] == "default",
                "node events' Role and RoleBinding are in default, where Node events live".into(),
            );
        }
        for r in roles {
            let granted = serde_json::to_value(&r["rules"]).unwrap();
            check(
                granted
                    == json!([{"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]}]),
                format!("the Role must only create and patch events: {granted}"),
            );
        }
    } else {
        check(roles.is_empty() && bindings.is_empty(), "no namespaced RBAC without node events".into());
    }
}

#[test]
fn every_values_file_renders_validates_and_keeps_the_invariants() {
    let names = ci_files();
    let mut requests = Vec::new();
    for name in &names {
        requests.push(render_request(&ci_values(name)));
        requests.push(json!({"op": "merge", "values": ci_values(name)}));
    }
    let results = sdk(&repo().join(CHART), &requests);
    let dir = TempDir::new("helm-matrix");
    let mut files = Vec::new();
    let mut expected = BTreeSet::new();
    let mut problems = Vec::new();
    for (name, pair) in names.iter().zip(results.chunks(2)) {
        let r = rendering(
            pair[0].as_ref().unwrap_or_else(|e| panic!("ci/{name}-values.yaml does not render:\n{e}")),
        );
        let merged = pair[1].clone().unwrap_or_else(|e| panic!("ci/{name}-values.yaml: {e}"));
        let objs = objects(&r);
        let want = features(&merged);
        problems.extend(
            invariant_violations(&objs, &want).into_iter().map(|p| format!("ci/{name}-values.yaml: {p}")),
        );
        // The custom resources kubernetes-validate has no schema for: the checks of
        // tests/tools/manifests.rs.
        let agent = manifests::Pod::agent(the(&objs, "DaemonSet"));
        for pm in
            find(&objs, "PodMonitor").into_iter().filter(|pm| text(&pm["metadata"]["name"]) != "coredns")
        {
            problems.extend(
                manifests::podmonitor_problems(pm, &agent).into_iter().map(|p| format!("ci/{name}: {p}")),
            );
        }
        for sm in find(&objs, "ServiceMonitor") {
            let service = the(&objs, "Service");
            problems.extend(
                manifests::servicemonitor_problems(sm, service, &agent)
                    .into_iter()
                    .map(|p| format!("ci/{name}: {p}")),
            );
        }
        let path = dir.join(&format!("{name}.yaml"));
        let mut all = String::new();
        for o in &objs {
            let api = text(&o["apiVersion"]);
            if manifests::is_builtin(&api) {
                all.push_str("---\n");
                all.push_str(&yaml_serde::to_string(o).unwrap());
                for version in KUBERNETES_VERSIONS {
                    expected.insert(format!(
                        "{} passed for resource {}/{} against version {}",
                        path.display(),
                        text(&o["kind"]).to_lowercase(),
                        text(&o["metadata"]["name"]),
                        manifests::major_minor(version)
                    ));
                }
            }
        }
        std::fs::write(&path, all).unwrap();
        files.push(path);
    }
    assert!(
        problems.is_empty(),
        "the chart's renderings break their invariants:\n- {}",
        problems.join("\n- ")
    );
    let report = kubernetes_validate(&files).unwrap_or_else(|r| {
        let errors: Vec<&str> = r.lines().filter(|l| !l.starts_with("INFO")).collect();
        panic!("kubernetes-validate --strict rejected a rendering of the chart:\n{}", errors.join("\n"))
    });
    let passed: BTreeSet<String> =
        report.lines().filter_map(|l| l.strip_prefix("INFO ")).map(str::to_owned).collect();
    let missing: Vec<&String> = expected.difference(&passed).collect();
    assert!(missing.is_empty(), "not validated: {missing:?}\nkubernetes-validate said:\n{report}");
}

/// One rendering per mutation: each must be reported by the invariant checker.
#[test]
fn the_invariant_checker_catches_each_violation() {
    let cases: [(&str, &str, Features); 9] = [
        ("containerSecurityContext: {privileged: true}", "privileged", Features::default()),
        ("containerSecurityContext: {capabilities: {drop: [ALL], add: [NET_ADMIN]}}", "capabilities.add", Features::default()),
        ("containerSecurityContext: {readOnlyRootFilesystem: false}", "readOnlyRootFilesystem", Features::default()),
        (
            "containerSecurityContext: {runAsNonRoot: false, runAsUser: 0}\nsecurityContext: {runAsNonRoot: false, runAsUser: 0}",
            "runAsNonRoot",
            Features::default(),
        ),
        ("caBundle: {enabled: true}", "hostPath", Features::default()),
        ("linklocalMeter: {enabled: true}", "NET_RAW", Features::default()),
        (
            "linklocalMeter: {enabled: true}\ndnsAnalysis: {enabled: true}\npodAttribution: {enabled: true}",
            "automountServiceAccountToken",
            Features { net_raw: true, ..Features::default() },
        ),
        ("nodeEvents: {enabled: true}", "automountServiceAccountToken", Features::default()),
        (
            "nodeEvents: {enabled: true}",
            "no namespaced RBAC without node events",
            Features { pods: true, ..Features::default() },
        ),
    ];
    let requests: Vec<serde_json::Value> =
        cases.iter().map(|(values, _, _)| render_request(values)).collect();
    for ((values, expected, want), result) in cases.iter().zip(sdk(&repo().join(CHART), &requests)) {
        let objs = objects(&rendering(&result.unwrap_or_else(|e| panic!("{values}: {e}"))));
        let violations = invariant_violations(&objs, want);
        assert!(
            violations.iter().any(|v| v.contains(expected)),
            "rendering with `{values}` must be reported for {expected}; the checker said {violations:?}"
        );
    }
}

#[test]
fn both_monitors_fail_the_render_naming_them() {
    let err = one(render_request("prometheus: {monitor: {enabled: true}, podMonitor: {enabled: true}}"))
        .expect_err("a ServiceMonitor and a PodMonitor together must fail");
    assert!(
        err.contains("prometheus.monitor.enabled and prometheus.podMonitor.enabled are both true"),
        "the message names both keys: {err}"
    );
    let err = one(render_request("podAttribution: {enabled: true}"))
        .expect_err("pod attribution needs DNS analysis");
    assert!(err.contains("podAttribution.enabled needs dnsAnalysis.enabled"), "{err}");
}

// === the schema ===

#[test]
fn the_schema_rejects_an_unknown_key_and_a_wrong_type_by_name() {
    let cases = [
        ("image: {tga: latest}", ["/image", "tga"]),
        ("podMonitor: {enabled: true}", ["additional properties", "podMonitor"]),
        ("prometheus: {podMonitor: {enabeld: false}}", ["/prometheus/podMonitor", "enabeld"]),
        ("linklocalMeter: {enabled: \"yes\"}", ["/linklocalMeter/enabled", "want boolean"]),
        ("service: {port: \"9417\"}", ["/service/port", "want integer"]),
        ("remoteWrite: {endpoints: [{name: amp}]}", ["/remoteWrite/endpoints/0", "url"]),
    ];
    let mut requests = vec![];
    for (values, _) in &cases {
        requests.push(json!({"op": "schema", "values": values}));
        // `helm install` validates the same way before rendering.
        requests.push(render_request(values));
    }
    for name in ci_files() {
        requests.push(json!({"op": "schema", "values": ci_values(&name)}));
    }
    requests.push(json!({"op": "schema", "values": read(KUSTOMIZE_VALUES)}));
    let results = sdk(&repo().join(CHART), &requests);
    for ((values, words), pair) in cases.iter().zip(results.chunks(2)) {
        for (what, result) in ["validate_schema", "render"].iter().zip(pair) {
            let err = result.clone().expect_err(&format!("{what} must reject `{values}`"));
            for w in words {
                assert!(err.contains(w), "{what} of `{values}`: the message must name {w:?}: {err}");
            }
        }
    }
    for (result, name) in
        results[cases.len() * 2..].iter().zip(ci_files().iter().chain([&"kustomize".to_owned()]))
    {
        assert!(result.is_ok(), "{name}: the schema rejects a shipped values file: {result:?}");
    }
}

/// Walks a values mapping along the schema: every key must be declared; yields the paths a
/// user sets (descending into objects the schema closes, stopping at maps, lists and leaves).
fn schema_paths(
    values: &Value,
    schema: &serde_json::Value,
    at: &str,
    out: &mut Vec<String>,
    problems: &mut Vec<String>,
) {
    let Some(map) = values.as_mapping() else { return };
    for (k, v) in map {
        let key = text(k);
        let path = if at.is_empty() { key.clone() } else { format!("{at}.{key}") };
        let Some(sub) = schema["properties"].get(&key) else {
            problems.push(format!("{path}: in values.yaml, not in values.schema.json"));
            continue;
        };
        if sub.get("properties").is_some() && v.is_mapping() {
            out.push(path.clone());
            schema_paths(v, sub, &path, out, problems);
        } else {
            out.push(path);
        }
    }
}

/// Every object level of the schema must close itself (`additionalProperties: false`) or be
/// a map of one value type; OPEN_SCHEMA lists the Kubernetes types left to the API server.
fn open_levels(schema: &serde_json::Value, at: &str, out: &mut Vec<String>) {
    if schema["type"] == "object" {
        let closed = schema["additionalProperties"] == false;
        let map = schema["additionalProperties"].is_object() && schema.get("properties").is_none();
        if !closed && !map && !OPEN_SCHEMA.contains(&at) {
            out.push(format!(
                "{}: not closed (additionalProperties: false)",
                if at.is_empty() { "<root>" } else { at }
            ));
        }
    }
    if let Some(props) = schema["properties"].as_object() {
        for (k, v) in props {
            open_levels(v, &if at.is_empty() { k.clone() } else { format!("{at}.{k}") }, out);
        }
    }
    if schema["items"].is_object() {
        open_levels(&schema["items"], &format!("{at}[]"), out);
    }
}

fn schema() -> serde_json::Value {
    serde_json::from_str(&read(&format!("{CHART}/values.schema.json"))).expect("values.schema.json is JSON")
}

fn values_yaml() -> Value {
    load(&format!("{CHART}/values.yaml")).remove(0)
}

#[test]
fn the_schema_covers_every_value_and_closes_every_level() {
    let (mut paths, mut problems) = (vec![], vec![]);
    schema_paths(&values_yaml(), &schema(), "", &mut paths, &mut problems);
    open_levels(&schema(), "", &mut problems);
    assert!(paths.len() > 40, "{paths:?}");
    assert!(problems.is_empty(), "{CHART}/values.schema.json:\n- {}", problems.join("\n- "));
    // The checkers can fail.
    let mut loose = schema();
    loose["properties"]["image"].as_object_mut().unwrap().remove("additionalProperties");
    loose["properties"]["image"]["properties"].as_object_mut().unwrap().remove("tag");
    let (mut p, mut found) = (vec![], vec![]);
    schema_paths(&values_yaml(), &loose, "", &mut p, &mut found);
    open_levels(&loose, "", &mut found);
    assert!(found.iter().any(|f| f.starts_with("image.tag")), "{found:?}");
    assert!(found.iter().any(|f| f.starts_with("image: not closed")), "{found:?}");
}

/// Values that are Kubernetes API objects: documented as a whole, not field by field.
const KUBERNETES_SHAPED: [&str; 5] =
    ["affinity", "updateStrategy", "resources", "securityContext", "containerSecurityContext"];

/// The values docs/helm.md must name: every leaf, and the Kubernetes-shaped objects whole.
fn documented_paths() -> Vec<String> {
    let (mut paths, mut problems) = (vec![], vec![]);
    schema_paths(&values_yaml(), &schema(), "", &mut paths, &mut problems);
    let leaf = |p: &String| !paths.iter().any(|q| q.starts_with(&format!("{p}.")));
    let inside = |p: &String| KUBERNETES_SHAPED.iter().any(|k| p.starts_with(&format!("{k}.")));
    paths
        .iter()
        .filter(|p| KUBERNETES_SHAPED.contains(&p.as_str()) || (leaf(p) && !inside(p)))
        .cloned()
        .collect()
}

fn undocumented(docs: &str) -> Vec<String> {
    documented_paths().into_iter().filter(|p| !docs.contains(&format!("`{p}`"))).collect()
}

#[test]
fn every_value_is_documented() {
    let docs = read(DOCS);
    let missing = undocumented(&docs);
    assert!(missing.is_empty(), "{DOCS} does not document (as `key` in its table): {missing:?}");
    assert!(
        !undocumented(&docs.replace("`linklocalMeter.enabled`", "")).is_empty(),
        "the check must notice a value missing from the docs"
    );
}

// === one source: the rules, the dashboards, the kustomize base ===

#[test]
fn the_prometheus_rule_is_the_generated_one() {
    let out =
        Command::new(bin()).args(["rules", "render", "--format", "prometheus-operator"]).output().unwrap();
    assert!(out.status.success(), "enawatch rules render: {}", String::from_utf8_lossy(&out.stderr));
    let generated = String::from_utf8(out.stdout).unwrap();
    let copy = repo().join(CHART).join("files/prometheusrule.yaml");
    if updating() {
        std::fs::write(&copy, &generated).unwrap();
    }
    assert!(
        std::fs::read_to_string(&copy).unwrap_or_default() == generated,
        "{CHART}/files/prometheusrule.yaml is stale: run `enawatch rules render --format prometheus-operator > {CHART}/files/prometheusrule.yaml` \
         (or ENAWATCH_UPDATE_GOLDEN=1 cargo test --test tools helm::)"
    );
    let objs = objects(&render("prometheusRule: {additionalLabels: {team: network}}\nreleaseLabel: kps"));
    let rule = the(&objs, "PrometheusRule");
    let want = documents(&generated, "rules render").remove(0);
    assert_eq!(
        rule["spec"], want["spec"],
        "the chart's PrometheusRule groups differ from the generated ones"
    );
    assert_eq!(text(&rule["metadata"]["labels"]["release"]), "kps");
    assert_eq!(text(&rule["metadata"]["labels"]["team"]), "network");
    // promtool lints the rendered groups as tests/tools/package.rs lints the generated ones.
    let dir = TempDir::new("helm-rules");
    let file = dir.join("rules.yaml");
    std::fs::write(&file, yaml_serde::to_string(&rule["spec"]).unwrap()).unwrap();
    let out =
        Command::new("promtool").args(["check", "rules", "--lint=all"]).arg(&file).output().unwrap_or_else(
            |e| panic!("promtool (Debian package prometheus; scripts/test installs it): {e}"),
        );
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && said.contains("SUCCESS"),
        "promtool check rules on the chart's rules:\n{said}"
    );
    assert!(find(&objects(&render("prometheusRule: {enabled: false}")), "PrometheusRule").is_empty());
}

#[test]
fn the_dashboards_are_deploy_grafana() {
    let grafana = repo().join("deploy/grafana");
    let copies = repo().join(CHART).join("files/dashboards");
    let names = |dir: &Path| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .filter(|n| is_ext(n, "json"))
                    .collect()
            })
            .unwrap_or_default()
    };
    if updating() {
        for n in names(&copies).difference(&names(&grafana)) {
            std::fs::remove_file(copies.join(n)).unwrap();
        }
        for n in names(&grafana) {
            std::fs::copy(grafana.join(&n), copies.join(&n)).unwrap();
        }
    }
    let stale = "(ENAWATCH_UPDATE_GOLDEN=1 cargo test --test tools helm:: copies them)";
    assert!(!names(&grafana).is_empty());
    assert_eq!(
        names(&copies),
        names(&grafana),
        "{CHART}/files/dashboards/ must hold deploy/grafana/*.json {stale}"
    );
    for n in names(&grafana) {
        assert!(
            std::fs::read(grafana.join(&n)).unwrap() == std::fs::read(copies.join(&n)).unwrap(),
            "{CHART}/files/dashboards/{n} differs from deploy/grafana/{n} {stale}"
        );
    }
    let objs = objects(&render("dashboards: {enabled: true}"));
    let maps: Vec<&Value> = find(&objs, "ConfigMap");
    assert_eq!(maps.len(), names(&grafana).len(), "one ConfigMap per dashboard");
    for n in names(&grafana) {
        let cm = maps
            .iter()
            .find(|m| !m["data"][n.as_str()].is_null())
            .unwrap_or_else(|| panic!("no ConfigMap carries {n}"));
        assert_eq!(text(&cm["metadata"]["labels"]["grafana_dashboard"]), "1", "{n}: the sidecar's label");
        assert!(
            text(&cm["data"][n.as_str()]) == read(&format!("deploy/grafana/{n}")),
            "the ConfigMap's {n} differs from deploy/grafana/{n}"
        );
    }
    assert!(find(&objects(&render("")), "ConfigMap").is_empty(), "no dashboards by default");
}

/// A rendered template as its kustomize file: without the Helm-only labels, under a header.
fn as_kustomize_file(template: &str, rendered: &str) -> String {
    let kept: Vec<&str> = rendered
        .lines()
        .filter(|l| !HELM_ONLY_LABELS.iter().any(|label| l.trim_start().starts_with(&format!("{label}:"))))
        .collect();
    format!(
        "# Generated from {CHART}/templates/{template} with {KUSTOMIZE_VALUES}; do not edit.\n\
         # Regenerate: ENAWATCH_UPDATE_GOLDEN=1 cargo test --test tools helm:: (docs/helm.md).\n{}\n",
        kept.join("\n").trim_end()
    )
}

/// The kustomize base's files the chart renders, by file name.
fn kustomize_base() -> BTreeMap<String, String> {
    render(&read(KUSTOMIZE_VALUES))
        .into_iter()
        .filter(|(name, text)| {
            is_ext(name, "yaml") && !NOT_GENERATED.contains(&name.as_str()) && !text.trim().is_empty()
        })
        .map(|(name, text)| {
            let file = as_kustomize_file(&name, &text);
            (name, file)
        })
        .collect()
}

#[test]
fn the_kustomize_base_is_the_charts_rendering() {
    let base = kustomize_base();
    let dir = repo().join(KUBE_DIR);
    let mut stale = Vec::new();
    for (name, want) in &base {
        let path = dir.join(name);
        if updating() {
            std::fs::write(&path, want).unwrap();
        }
        if std::fs::read_to_string(&path).unwrap_or_default() != *want {
            stale.push(format!("{KUBE_DIR}/{name} differs from the chart's rendering"));
        }
    }
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let generated_or_kept = base.contains_key(&name)
            || NOT_GENERATED.contains(&name.as_str())
            || name == "kustomization.yaml";
        if is_ext(&name, "yaml") && !generated_or_kept {
            stale.push(format!("{KUBE_DIR}/{name} is not rendered by the chart any more: remove it"));
        }
    }
    assert!(
        stale.is_empty(),
        "{}\nRegenerate with ENAWATCH_UPDATE_GOLDEN=1 cargo test --test tools helm:: (docs/helm.md)",
        stale.join("\n")
    );
    for want in [
        "daemonset.yaml",
        "namespace.yaml",
        "serviceaccount.yaml",
        "priorityclass.yaml",
        "service.yaml",
        "podmonitor.yaml",
    ] {
        assert!(base.contains_key(want), "the chart no longer renders {want} for the kustomize base");
    }
}

#[test]
fn the_generated_kustomize_files_lose_only_helm_labels() {
    let rendered = "metadata:\n  labels:\n    app.kubernetes.io/name: enawatch\n    helm.sh/chart: enawatch-0.1.0\n    app.kubernetes.io/managed-by: Helm\n    app.kubernetes.io/instance: x\n";
    let file = as_kustomize_file("t.yaml", rendered);
    assert!(file.contains("app.kubernetes.io/name: enawatch"), "{file}");
    for label in HELM_ONLY_LABELS {
        assert!(!file.contains(label), "{file}");
    }
}

/// Objects without the Helm-only labels, keyed by kind and name.
fn by_id(objs: &[Value]) -> BTreeMap<(String, String), Value> {
    objs.iter()
        .map(|o| {
            let mut o = o.clone();
            if let Some(labels) = o["metadata"]["labels"].as_mapping_mut() {
                for label in HELM_ONLY_LABELS {
                    labels.remove(label);
                }
            }
            ((text(&o["kind"]), text(&o["metadata"]["name"])), o)
        })
        .collect()
}

/// Differences between the kustomize path's objects and the chart's. Labels are compared on
/// the DaemonSet (its pods are what the monitors select); the alternatives' other objects carry
/// a shorter set of labels. A ConfigMap's configuration is compared as parsed YAML.
fn differences(kustomize: &[Value], chart: &[Value]) -> Vec<String> {
    let (k, c) = (by_id(kustomize), by_id(chart));
    let mut out = Vec::new();
    if k.keys().collect::<Vec<_>>() != c.keys().collect::<Vec<_>>() {
        out.push(format!(
            "objects: kustomize {:?}, chart {:?}",
            k.keys().collect::<Vec<_>>(),
            c.keys().collect::<Vec<_>>()
        ));
    }
    for (id, want) in &k {
        let Some(got) = c.get(id) else { continue };
        let (mut want, mut got) = (want.clone(), got.clone());
        if id.0 != "DaemonSet" {
            for o in [&mut want, &mut got] {
                o["metadata"].as_mapping_mut().unwrap().remove("labels");
            }
        }
        if id.0 == "ConfigMap" {
            for o in [&mut want, &mut got] {
                let data = o["data"].as_mapping_mut().unwrap();
                for (_, v) in data.iter_mut() {
                    *v = yaml_serde::from_str(&text(v)).unwrap();
                }
            }
        }
        if want != got {
            out.push(format!(
                "{}/{}:\n--- kustomize\n{}--- chart\n{}",
                id.0,
                id.1,
                yaml_serde::to_string(&want).unwrap(),
                yaml_serde::to_string(&got).unwrap()
            ));
        }
    }
    out
}

fn kube(rel: &str) -> Vec<Value> {
    load(&format!("{KUBE_DIR}/{rel}"))
}

/// The base (deploy/kubernetes, as kustomize builds it) with strategic merge patches applied.
fn base_with(patches: &[&str], extra: &[&str]) -> Vec<Value> {
    let k: Value = yaml_serde::from_str(&read(&format!("{KUBE_DIR}/kustomization.yaml"))).unwrap();
    let mut objs: Vec<Value> = seq(&k["resources"]).iter().flat_map(|r| kube(&text(r))).collect();
    objs.extend(extra.iter().flat_map(|f| kube(f)));
    for p in patches.iter().flat_map(|p| kube(p)) {
        let target = objs
            .iter_mut()
            .find(|o| o["kind"] == p["kind"] && o["metadata"]["name"] == p["metadata"]["name"])
            .expect("the patch's target");
        remote_write_manifests::merge(target, &p, "");
    }
    objs
}

fn chart_with(switch: &str) -> Vec<Value> {
    objects(&render(&format!("{}\n{switch}", read(KUSTOMIZE_VALUES))))
}

#[test]
fn each_kustomize_alternative_is_the_chart_with_its_switch() {
    let cases: Vec<(&str, Vec<Value>, &str)> = vec![
        ("the base", base_with(&[], &[]), ""),
        (
            "alternatives/linklocal-meter.yaml",
            base_with(&["alternatives/linklocal-meter.yaml"], &[]),
            "linklocalMeter: {enabled: true}",
        ),
        (
            "alternatives/pod-attribution*.yaml",
            base_with(
                &["alternatives/linklocal-meter.yaml", "alternatives/pod-attribution-patch.yaml"],
                &["alternatives/pod-attribution.yaml"],
            ),
            "linklocalMeter: {enabled: true}\ndnsAnalysis: {enabled: true}\npodAttribution: {enabled: true}",
        ),
        (
            "alternatives/node-events*.yaml",
            base_with(&["alternatives/node-events-patch.yaml"], &["alternatives/node-events.yaml"]),
            "nodeEvents: {enabled: true}",
        ),
        (
            "alternatives/servicemonitor.yaml",
            {
                let mut objs = base_with(&[], &["alternatives/servicemonitor.yaml"]);
                objs.retain(|o| !(o["kind"] == "PodMonitor" && o["metadata"]["name"] == "enawatch"));
                objs
            },
            "prometheus: {monitor: {enabled: true}, podMonitor: {enabled: false}}",
        ),
        (
            "alternatives/remote-write (IRSA)",
            remote_write_manifests::rendered(),
            "remoteWrite:\n  enabled: true\n  clusterName: CLUSTER_NAME\n  endpoints:\n    - url: \
             https://aps-workspaces.REGION.amazonaws.com/workspaces/WORKSPACE_ID/api/v1/remote_write\n\
             serviceAccount:\n  annotations:\n    eks.amazonaws.com/role-arn: arn:aws:iam::ACCOUNT_ID:role/enawatch-remote-write\n\
             prometheus: {podMonitor: {enabled: false}}\ncoredns: {podMonitor: {enabled: false}}\n\
             prometheusRule: {enabled: false}",
        ),
    ];
    let mut problems = Vec::new();
    for (what, kustomize, switch) in &cases {
        for d in differences(kustomize, &chart_with(switch)) {
            problems.push(format!("{what} vs the chart with `{}`: {d}", switch.replace('\n', "; ")));
        }
    }
    assert!(
        problems.is_empty(),
        "the kustomize path and the chart render different objects:\n{}",
        problems.join("\n")
    );
    // The comparison can fail.
    let meter = base_with(&["alternatives/linklocal-meter.yaml"], &[]);
    assert!(!differences(&meter, &chart_with("dnsAnalysis: {enabled: true}")).is_empty());
}

// === the rest of the chart ===

#[test]
fn the_app_version_is_the_crate_version() {
    let chart = load(&format!("{CHART}/Chart.yaml")).remove(0);
    assert_eq!(text(&chart["apiVersion"]), "v2");
    assert_eq!(text(&chart["appVersion"]), env!("CARGO_PKG_VERSION"), "{CHART}/Chart.yaml appVersion");
    assert!(text(&chart["kubeVersion"]).starts_with(">=1.31"), "kubeVersion: {:?}", chart["kubeVersion"]);
    let objs = objects(&render(""));
    let ds = the(&objs, "DaemonSet");
    let image = text(&ds["spec"]["template"]["spec"]["containers"][0]["image"]);
    assert!(
        image.ends_with(&format!(":{}", env!("CARGO_PKG_VERSION"))),
        "the image tag defaults to appVersion: {image}"
    );
}

#[test]
fn the_notes_say_how_to_see_it_work() {
    let notes = &render("")["NOTES.txt"];
    for want in
        ["port-forward", "9417:9417", "exec", "/enawatch diagnose", "rollout status daemonset/enawatch"]
    {
        assert!(notes.contains(want), "NOTES.txt must mention {want:?}:\n{notes}");
    }
}

#[test]
fn the_rendered_configuration_passes_check_config() {
    for name in ["remote-write-irsa", "everything"] {
        let objs = objects(&render(&ci_values(name)));
        let cm = find(&objs, "ConfigMap")
            .into_iter()
            .find(|c| !c["data"]["enawatch.yaml"].is_null())
            .unwrap_or_else(|| panic!("ci/{name}: no configuration ConfigMap"));
        let dir = TempDir::new("helm-config");
        // The pod's paths, here: the spool's parent and the Secret's file.
        let secret = dir.join("slack-url");
        std::fs::write(&secret, "https://hooks.slack.com/services/T0/B0/x\n").unwrap();
        let config = text(&cm["data"]["enawatch.yaml"])
            .replace("/var/lib/enawatch/spool", &dir.join("spool").display().to_string())
            .replace("/etc/enawatch-secrets/enawatch-slack/url", &secret.display().to_string());
        let file = dir.join("enawatch.yaml");
        std::fs::write(&file, config).unwrap();
        let ds = the(&objs, "DaemonSet");
        let mut args = strings(&ds["spec"]["template"]["spec"]["containers"][0]["args"]);
        // The file is where the container mounts it; here it is in a scratch directory.
        let at = args.iter().position(|a| a == "--config").expect("--config in the arguments");
        args[at + 1] = file.display().to_string();
        let out = Command::new(bin())
            .args(&args)
            .arg("--check-config")
            .env_clear()
            .envs([
                ("NODE_NAME", "ip-10-0-1-23.ec2.internal"),
                ("POD_NAME", "enawatch-x7k2p"),
                // What the IRSA webhook sets; the token file exists in the pod.
                ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/enawatch-remote-write"),
                ("AWS_WEB_IDENTITY_TOKEN_FILE", file.to_str().unwrap()),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ci/{name}: `enawatch {} --check-config` rejects the rendered configuration:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        if name == "everything" {
            // The DNS analysis's values reach the agent as its effective configuration says.
            let effective = String::from_utf8_lossy(&out.stdout);
            for want in ["cluster_dns:\n- 10.100.0.10\n", "dns_timeout: 3s\n", "dns_workloads: 30\n"] {
                assert!(effective.contains(want), "ci/everything: {want:?} not in:\n{effective}");
            }
        }
    }
}
