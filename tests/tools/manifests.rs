//! The deployment files keep their promises, checked offline: deploy/kubernetes/ (and the core
//! objects of deploy/adot/collector.yaml) against the real Kubernetes OpenAPI schemas with
//! `kubernetes-validate --strict`; the custom resources it has no schema for (PodMonitor,
//! ServiceMonitor, OpenTelemetryCollector), the DaemonSet's security invariants, the
//! kustomization, the ADOT pipeline and the Dockerfile by the checkers below. Every checker
//! returns its findings, and a negative test proves each one fails on a broken copy.
//!
//! Needs the `kubernetes-validate` CLI: `pip install kubernetes-validate==1.37.0`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use regex_lite::Regex;
use yaml_serde::Value;

use crate::support;
use crate::support::yaml::{documents, load, read, seq, text};

/// Kubernetes versions the core manifests must validate against: the oldest EKS version the
/// manifests promise and a recent one.
pub(crate) const KUBERNETES_VERSIONS: [&str; 2] = ["1.31.0", "1.35.0"];
const KUBERNETES_VALIDATE_INSTALL: &str = "pip install kubernetes-validate==1.37.0";
const KUBE_DIR: &str = "deploy/kubernetes";
const COLLECTOR: &str = "deploy/adot/collector.yaml";
/// API groups served by Kubernetes itself ("" is the core group): objects of any other group
/// are custom resources, which kubernetes-validate cannot check.
const BUILTIN_GROUPS: [&str; 10] = [
    "",
    "apps",
    "batch",
    "policy",
    "autoscaling",
    "rbac.authorization.k8s.io",
    "scheduling.k8s.io",
    "networking.k8s.io",
    "storage.k8s.io",
    "discovery.k8s.io",
];
/// Priority classes every cluster has.
const SYSTEM_PRIORITY_CLASSES: [&str; 2] = ["system-node-critical", "system-cluster-critical"];
/// The node every simulated pod runs on.
const NODE: &str = "ip-10-0-1-23.ec2.internal";

// === files and YAML ===

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn load_one(rel: &str) -> Value {
    let mut docs = load(rel);
    assert_eq!(docs.len(), 1, "{rel} must hold exactly one document");
    docs.remove(0)
}

/// The YAML files of deploy/kubernetes/, sorted, kustomization.yaml included.
fn kube_files() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(repo().join(KUBE_DIR))
        .expect("deploy/kubernetes exists")
        .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
        .filter(|n| Path::new(n).extension().is_some_and(|e| e.eq_ignore_ascii_case("yaml")))
        .collect();
    names.sort();
    names
}

fn strings(v: &Value) -> Vec<String> {
    seq(v).iter().map(text).collect()
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_mapping().into_iter().flatten().map(|(k, v)| (text(k), text(v))).collect()
}

fn keys(v: &Value) -> Vec<String> {
    v.as_mapping().into_iter().flatten().map(|(k, _)| text(k)).collect()
}

fn ident(doc: &Value) -> String {
    format!("{}/{}", text(&doc["kind"]), text(&doc["metadata"]["name"]))
}

pub(crate) fn is_builtin(api_version: &str) -> bool {
    let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
    BUILTIN_GROUPS.contains(&group)
}

/// Fields of `v` outside `allowed`: the typo check that `--strict` gives core kinds, for the
/// custom resources (the lists name the fields these files may use, a subset of each CRD).
fn unknown_fields(v: &Value, allowed: &[&str], at: &str) -> Vec<String> {
    keys(v)
        .into_iter()
        .filter(|k| !allowed.contains(&k.as_str()))
        .map(|k| format!("{at}: unknown field `{k}` (a typo? if the CRD has it, add it to the list)"))
        .collect()
}

/// Findings, collected by one `check` per invariant.
#[derive(Default)]
struct Findings(Vec<String>);

impl Findings {
    fn check(&mut self, ok: bool, message: impl Into<String>) {
        if !ok {
            self.0.push(message.into());
        }
    }

    fn extend(&mut self, more: Vec<String>) {
        self.0.extend(more);
    }

    fn assert_none(self, what: &str) {
        assert!(self.0.is_empty(), "{what}:\n- {}", self.0.join("\n- "));
    }
}

// === kubernetes-validate ===

/// Runs `kubernetes-validate --strict` for every version on `files`: Ok(output) when it
/// reports no error, Err(output) otherwise.
pub(crate) fn kubernetes_validate(files: &[PathBuf]) -> Result<String, String> {
    let mut cmd = Command::new("kubernetes-validate");
    cmd.arg("--strict");
    for version in KUBERNETES_VERSIONS {
        cmd.args(["-k", version]);
    }
    cmd.args(files);
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "kubernetes-validate is not installed (the CLI of the PyPI package that bundles the \
             Kubernetes OpenAPI schemas; this test validates the manifests with it offline): \
             {KUBERNETES_VALIDATE_INSTALL}"
        ),
        Err(e) => panic!("kubernetes-validate: {e}"),
    };
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let failed = report.lines().any(|l| l.starts_with("ERROR") || l.starts_with("FATAL"));
    if out.status.success() && !failed {
        Ok(report)
    } else {
        Err(report)
    }
}

pub(crate) fn major_minor(version: &str) -> &str {
    version.rsplit_once('.').map_or(version, |(mm, _)| mm)
}

/// Files whose built-in objects kubernetes-validate checks: deploy/kubernetes/ (but the
/// kustomization, which is no Kubernetes object) and the ADOT file.
fn validated_files() -> Vec<PathBuf> {
    kube_files()
        .into_iter()
        .filter(|f| f != "kustomization.yaml")
        .map(|f| repo().join(KUBE_DIR).join(f))
        .chain([repo().join(COLLECTOR)])
        .collect()
}

#[test]
fn core_objects_match_the_kubernetes_schemas() {
    let files = validated_files();
    // kubernetes-validate exits 0 with a WARN for a kind it has no schema for: count the
    // "passed" lines, so that a built-in object it skipped (a wrong apiVersion) fails too.
    let mut expected: BTreeMap<String, usize> = BTreeMap::new();
    for file in &files {
        let origin = file.display().to_string();
        for doc in documents(&std::fs::read_to_string(file).unwrap(), &origin) {
            if is_builtin(&text(&doc["apiVersion"])) {
                for version in KUBERNETES_VERSIONS {
                    let line = format!(
                        "{origin} passed for resource {}/{} against version {}",
                        text(&doc["kind"]).to_lowercase(),
                        text(&doc["metadata"]["name"]),
                        major_minor(version)
                    );
                    *expected.entry(line).or_default() += 1;
                }
            }
        }
    }
    for kind in ["daemonset", "namespace", "serviceaccount", "priorityclass", "service", "clusterrole"] {
        assert!(
            expected.keys().any(|l| l.contains(&format!(" {kind}/"))),
            "no {kind} among the validated objects"
        );
    }
    let report = kubernetes_validate(&files)
        .unwrap_or_else(|r| panic!("kubernetes-validate --strict rejected a manifest:\n{r}"));
    let mut passed: BTreeMap<String, usize> = BTreeMap::new();
    for line in report.lines().filter_map(|l| l.strip_prefix("INFO ")) {
        *passed.entry(line.to_owned()).or_default() += 1;
    }
    assert_eq!(
        passed, expected,
        "not every built-in object was validated; kubernetes-validate said:\n{report}"
    );
}

#[test]
fn kubernetes_validate_rejects_a_misspelled_field() {
    let dir = support::TempDir::new("kv");
    let good = read(&format!("{KUBE_DIR}/daemonset.yaml"));
    let typo = good.replace("readOnlyRootFilesystem:", "readOnlyRootFilesytem:");
    assert_ne!(good, typo, "the mutation must apply");
    let (good_path, typo_path) = (dir.join("good.yaml"), dir.join("typo.yaml"));
    std::fs::write(&good_path, good).unwrap();
    std::fs::write(&typo_path, typo).unwrap();
    kubernetes_validate(&[good_path]).unwrap_or_else(|r| panic!("the unmodified copy must pass:\n{r}"));
    let report = kubernetes_validate(&[typo_path]).expect_err("a misspelled field must fail --strict");
    assert!(report.contains("readOnlyRootFilesytem"), "the error names the field:\n{report}");
}

/// The Event docs/events.md shows is what the agent writes (the stand-in API of
/// tests/offline/node_events.rs checks the same fields), and the API's schema accepts it,
/// along with the alternative's Role and RoleBinding.
#[test]
fn the_node_event_and_its_rbac_match_the_kubernetes_schemas() {
    let docs = read("docs/events.md");
    let example = docs
        .split("```yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/events.md shows an Event in a yaml block");
    let event = &documents(example, "docs/events.md")[0];
    assert_eq!((text(&event["apiVersion"]), text(&event["kind"])), ("v1".into(), "Event".into()));
    assert_eq!(text(&event["metadata"]["namespace"]), "default", "Node events live in default");
    assert_eq!(text(&event["involvedObject"]["kind"]), "Node");
    let dir = support::TempDir::new("event");
    let path = dir.join("event.yaml");
    std::fs::write(&path, example).unwrap();
    let rbac = repo().join(KUBE_DIR).join("alternatives/node-events.yaml");
    let report = kubernetes_validate(&[path, rbac])
        .unwrap_or_else(|r| panic!("kubernetes-validate --strict rejected the Event or its RBAC:\n{r}"));
    for kind in ["event/", "role/enawatch-event-writer", "rolebinding/enawatch-event-writer"] {
        assert!(report.contains(&format!("passed for resource {kind}")), "{kind}: {report}");
    }
}

// === the DaemonSet ===

fn daemonset() -> Value {
    load_one(&format!("{KUBE_DIR}/daemonset.yaml"))
}

fn shipped_priority_classes() -> BTreeSet<String> {
    load(&format!("{KUBE_DIR}/priorityclass.yaml"))
        .iter()
        .filter(|d| text(&d["kind"]) == "PriorityClass")
        .map(|d| text(&d["metadata"]["name"]))
        .collect()
}

/// Every container of the pod template, init containers included.
fn containers(ds: &Value) -> Vec<&Value> {
    let pod = &ds["spec"]["template"]["spec"];
    seq(&pod["containers"]).iter().chain(seq(&pod["initContainers"])).collect()
}

/// The container ports of the pod template, by name.
fn container_ports(ds: &Value) -> BTreeMap<String, u64> {
    containers(ds)
        .into_iter()
        .flat_map(|c| seq(&c["ports"]))
        .map(|p| (text(&p["name"]), p["containerPort"].as_u64().unwrap_or(0)))
        .collect()
}

/// The security invariants of the agent's pod: one check, one message each.
fn daemonset_violations(ds: &Value, priority_classes: &BTreeSet<String>) -> Vec<String> {
    let pod = &ds["spec"]["template"]["spec"];
    let mut f = Findings::default();
    f.check(
        pod["hostNetwork"].as_bool() == Some(true),
        "spec.hostNetwork must be true: the ioctl reads the ENIs of the host network namespace",
    );
    f.check(
        text(&pod["dnsPolicy"]) == "ClusterFirstWithHostNet",
        "spec.dnsPolicy must be ClusterFirstWithHostNet with hostNetwork",
    );
    f.check(pod["hostPID"].as_bool() != Some(true), "spec.hostPID must not be true");
    f.check(pod["hostIPC"].as_bool() != Some(true), "spec.hostIPC must not be true");
    f.check(
        seq(&pod["volumes"]).iter().all(|v| v["hostPath"].is_null()),
        "spec.volumes must not mount a hostPath",
    );
    f.check(
        pod["automountServiceAccountToken"].as_bool() == Some(false),
        "spec.automountServiceAccountToken must be false: the agent calls no API",
    );
    f.check(
        seq(&pod["tolerations"])
            .iter()
            .any(|t| text(&t["operator"]) == "Exists" && t["key"].is_null() && t["effect"].is_null()),
        "spec.tolerations needs `operator: Exists` without key or effect, to run on every node",
    );
    let class = text(&pod["priorityClassName"]);
    f.check(
        priority_classes.contains(&class) || SYSTEM_PRIORITY_CLASSES.contains(&class.as_str()),
        format!("spec.priorityClassName `{class}` must name a PriorityClass shipped here or a system one"),
    );
    let all = containers(ds);
    f.check(!all.is_empty(), "the pod template has no container");
    for c in all {
        f.extend(container_violations(c, pod, &container_ports(ds)));
    }
    f.0
}

fn container_violations(c: &Value, pod: &Value, ports: &BTreeMap<String, u64>) -> Vec<String> {
    let name = text(&c["name"]);
    let sc = &c["securityContext"];
    // runAsNonRoot, runAsUser and seccompProfile fall back to the pod's securityContext.
    let effective = |field: &str| {
        if sc[field].is_null() {
            pod["securityContext"][field].clone()
        } else {
            sc[field].clone()
        }
    };
    let mut f = Findings::default();
    f.check(
        sc["privileged"].as_bool() != Some(true),
        format!("container {name}: privileged must not be true"),
    );
    f.check(
        strings(&sc["capabilities"]["drop"]).contains(&"ALL".to_owned()),
        format!("container {name}: capabilities.drop must contain ALL"),
    );
    f.check(
        seq(&sc["capabilities"]["add"]).is_empty(),
        format!("container {name}: capabilities.add must be empty: the ioctl needs no capability"),
    );
    f.check(
        effective("runAsNonRoot").as_bool() == Some(true),
        format!("container {name}: runAsNonRoot must be true"),
    );
    f.check(
        effective("runAsUser").as_u64().is_some_and(|uid| uid > 0),
        format!("container {name}: runAsUser must be a numeric non-root UID"),
    );
    f.check(
        text(&effective("seccompProfile")["type"]) == "RuntimeDefault",
        format!("container {name}: seccompProfile.type must be RuntimeDefault"),
    );
    f.check(
        sc["readOnlyRootFilesystem"].as_bool() == Some(true),
        format!("container {name}: readOnlyRootFilesystem must be true"),
    );
    f.check(
        sc["allowPrivilegeEscalation"].as_bool() == Some(false),
        format!("container {name}: allowPrivilegeEscalation must be false"),
    );
    for bound in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            f.check(
                !text(&c["resources"][bound][resource]).is_empty(),
                format!("container {name}: resources.{bound}.{resource} must be set"),
            );
        }
    }
    for probe in ["readinessProbe", "livenessProbe"] {
        let get = &c[probe]["httpGet"];
        let port = text(&get["port"]);
        f.check(
            text(&get["path"]) == "/healthz"
                && (port == "metrics" || port == "9417")
                && ports.get("metrics") == Some(&9417),
            format!("container {name}: {probe} must GET /healthz on the metrics port (9417)"),
        );
    }
    f.0
}

#[test]
fn daemonset_meets_its_security_invariants() {
    let violations = daemonset_violations(&daemonset(), &shipped_priority_classes());
    Findings(violations).assert_none("deploy/kubernetes/daemonset.yaml breaks its security invariants");
}

fn set(v: &mut Value, key: &str, value: Value) {
    v.as_mapping_mut().expect("a mapping").insert(Value::String(key.to_owned()), value);
}

fn remove(v: &mut Value, key: &str) {
    v.as_mapping_mut().expect("a mapping").remove(key);
}

fn pod_mut(ds: &mut Value) -> &mut Value {
    &mut ds["spec"]["template"]["spec"]
}

fn agent_mut(ds: &mut Value) -> &mut Value {
    &mut pod_mut(ds)["containers"][0]
}

fn yaml(text: &str) -> Value {
    yaml_serde::from_str(text).expect("test YAML")
}

/// A mutation of a document, and the text the checker must then report.
type Mutation = (&'static str, fn(&mut Value));

#[test]
fn daemonset_checker_catches_each_violation() {
    let cases: [Mutation; 15] = [
        ("privileged", |d| set(&mut agent_mut(d)["securityContext"], "privileged", Value::Bool(true))),
        ("hostNetwork", |d| remove(pod_mut(d), "hostNetwork")),
        ("capabilities.add", |d| {
            agent_mut(d)["securityContext"]["capabilities"]["add"] = yaml("[NET_ADMIN]");
        }),
        ("capabilities.drop", |d| remove(&mut agent_mut(d)["securityContext"]["capabilities"], "drop")),
        ("runAsUser", |d| {
            set(&mut agent_mut(d)["securityContext"], "runAsUser", yaml("0"));
            set(&mut pod_mut(d)["securityContext"], "runAsUser", yaml("0"));
        }),
        ("runAsNonRoot", |d| {
            remove(&mut agent_mut(d)["securityContext"], "runAsNonRoot");
            remove(&mut pod_mut(d)["securityContext"], "runAsNonRoot");
        }),
        ("readOnlyRootFilesystem", |d| {
            set(&mut agent_mut(d)["securityContext"], "readOnlyRootFilesystem", Value::Bool(false));
        }),
        ("allowPrivilegeEscalation", |d| {
            remove(&mut agent_mut(d)["securityContext"], "allowPrivilegeEscalation");
        }),
        ("seccompProfile", |d| {
            agent_mut(d)["securityContext"]["seccompProfile"]["type"] = yaml("Unconfined");
        }),
        ("resources.limits.memory", |d| remove(&mut agent_mut(d)["resources"]["limits"], "memory")),
        ("resources.requests.cpu", |d| remove(&mut agent_mut(d)["resources"]["requests"], "cpu")),
        ("tolerations", |d| pod_mut(d)["tolerations"] = yaml("[{key: dedicated, operator: Exists}]")),
        ("priorityClassName", |d| set(pod_mut(d), "priorityClassName", yaml("made-up"))),
        ("readinessProbe", |d| agent_mut(d)["readinessProbe"]["httpGet"]["path"] = yaml("/")),
        ("automountServiceAccountToken", |d| remove(pod_mut(d), "automountServiceAccountToken")),
    ];
    let classes = shipped_priority_classes();
    for (expected, mutate) in cases {
        let mut ds = daemonset();
        mutate(&mut ds);
        let violations = daemonset_violations(&ds, &classes);
        assert!(
            violations.iter().any(|v| v.contains(expected)),
            "breaking {expected} must be reported; the checker said {violations:?}"
        );
    }
}

/// The rest of the issue's DaemonSet: identity, image, arguments, port, environment, rollout.
#[test]
fn daemonset_matches_the_issue() {
    let ds = daemonset();
    let pod = &ds["spec"]["template"]["spec"];
    let agent = &pod["containers"][0];
    let want_labels = [("app.kubernetes.io/name", "enawatch"), ("app.kubernetes.io/component", "agent")];
    let template_labels = string_map(&ds["spec"]["template"]["metadata"]["labels"]);
    let mut f = Findings::default();
    f.check(text(&ds["apiVersion"]) == "apps/v1" && text(&ds["kind"]) == "DaemonSet", "apps/v1 DaemonSet");
    f.check(text(&ds["metadata"]["namespace"]) == "enawatch", "namespace enawatch");
    for (k, v) in want_labels {
        for (at, labels) in
            [("metadata", string_map(&ds["metadata"]["labels"])), ("template", template_labels.clone())]
        {
            f.check(labels.get(k).map(String::as_str) == Some(v), format!("{at} label {k}={v}"));
        }
    }
    let selector = string_map(&ds["spec"]["selector"]["matchLabels"]);
    f.check(
        matches(&selector, &template_labels),
        "spec.selector.matchLabels must select the template's labels",
    );
    f.check(text(&agent["image"]) == "public.ecr.aws/enawatch/enawatch:0.1.0", "image");
    f.check(strings(&agent["args"]) == ["serve", "--log-format", "json"], "args [serve, --log-format, json]");
    f.check(container_ports(&ds).get("metrics") == Some(&9417), "container port 9417 named metrics");
    f.check(
        seq(&agent["env"]).iter().any(|e| {
            text(&e["name"]) == "NODE_NAME"
                && text(&e["valueFrom"]["fieldRef"]["fieldPath"]) == "spec.nodeName"
        }),
        "env NODE_NAME from spec.nodeName",
    );
    f.check(
        text(&ds["spec"]["updateStrategy"]["type"]) == "RollingUpdate"
            && text(&ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"]) == "10%",
        "updateStrategy RollingUpdate with maxUnavailable 10%",
    );
    let sa = load_one(&format!("{KUBE_DIR}/serviceaccount.yaml"));
    f.check(
        text(&pod["serviceAccountName"]) == text(&sa["metadata"]["name"])
            && text(&sa["metadata"]["namespace"]) == text(&ds["metadata"]["namespace"]),
        "serviceAccountName names serviceaccount.yaml's account, in the same namespace",
    );
    let ns = load_one(&format!("{KUBE_DIR}/namespace.yaml"));
    f.check(text(&ns["metadata"]["name"]) == "enawatch", "namespace.yaml creates enawatch");
    f.assert_none("deploy/kubernetes/daemonset.yaml differs from the issue");
}

/// The real binary accepts the DaemonSet's arguments and would listen on the container port.
#[test]
fn daemonset_arguments_are_accepted_by_the_binary() {
    let ds = daemonset();
    let mut cmd = vec![support::bin().to_owned()];
    cmd.extend(strings(&ds["spec"]["template"]["spec"]["containers"][0]["args"]));
    cmd.push("--check-config".to_owned());
    let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let out = support::run(&args);
    let effective: Value = yaml_serde::from_str(&String::from_utf8_lossy(&out.stdout)).expect("config YAML");
    let listen = text(&effective["listen"]);
    let port = container_ports(&ds)["metrics"];
    assert!(listen.ends_with(&format!(":{port}")), "the agent listens on {listen}, the pod declares {port}");
    assert_eq!(text(&effective["log_format"]), "json");
}

// === relabelling, simulated ===

/// A pod as Kubernetes service discovery (`role: pod`) sees it.
pub(crate) struct Pod {
    namespace: String,
    name: String,
    ip: String,
    labels: BTreeMap<String, String>,
    ports: Vec<(String, u64)>,
}

impl Pod {
    fn new(namespace: &str, name: &str, labels: &[(&str, &str)], ports: &[(&str, u64)]) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            ip: "10.0.1.23".to_owned(),
            labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            ports: ports.iter().map(|(n, p)| ((*n).to_owned(), *p)).collect(),
        }
    }

    /// The agent pod of the DaemonSet on node NODE.
    pub(crate) fn agent(ds: &Value) -> Self {
        Self {
            namespace: text(&ds["metadata"]["namespace"]),
            name: "enawatch-x7k2p".to_owned(),
            ip: "10.0.1.23".to_owned(),
            labels: string_map(&ds["spec"]["template"]["metadata"]["labels"]),
            ports: container_ports(ds).into_iter().collect(),
        }
    }

    /// EKS's CoreDNS pod.
    fn coredns() -> Self {
        let mut pod = Self::new(
            "kube-system",
            "coredns-5d8c7f9b4-abcde",
            &[("k8s-app", "kube-dns"), ("eks.amazonaws.com/component", "coredns")],
            &[("dns", 53), ("dns-tcp", 53), ("metrics", 9153)],
        );
        "10.0.1.57".clone_into(&mut pod.ip);
        pod
    }

    /// The targets `role: pod` makes of this pod, one per port, before relabelling.
    fn targets(&self, job: &str) -> Vec<BTreeMap<String, String>> {
        let sanitize =
            |k: &str| k.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect::<String>();
        self.ports
            .iter()
            .map(|(port_name, port)| {
                let mut t: BTreeMap<String, String> = [
                    ("job", job.to_owned()),
                    ("__address__", format!("{}:{port}", self.ip)),
                    ("__metrics_path__", "/metrics".to_owned()),
                    ("__meta_kubernetes_namespace", self.namespace.clone()),
                    ("__meta_kubernetes_pod_name", self.name.clone()),
                    ("__meta_kubernetes_pod_ip", self.ip.clone()),
                    ("__meta_kubernetes_pod_node_name", NODE.to_owned()),
                    ("__meta_kubernetes_pod_phase", "Running".to_owned()),
                    ("__meta_kubernetes_pod_container_port_name", port_name.clone()),
                    ("__meta_kubernetes_pod_container_port_number", port.to_string()),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect();
                for (k, v) in &self.labels {
                    t.insert(format!("__meta_kubernetes_pod_label_{}", sanitize(k)), v.clone());
                    t.insert(
                        format!("__meta_kubernetes_pod_labelpresent_{}", sanitize(k)),
                        "true".to_owned(),
                    );
                }
                t
            })
            .collect()
    }
}

const RELABEL_FIELDS: [&str; 9] = [
    "action",
    "source_labels",
    "sourceLabels",
    "separator",
    "target_label",
    "targetLabel",
    "regex",
    "replacement",
    "modulus",
];

/// Applies Prometheus relabelling rules (Prometheus' snake_case or the Prometheus Operator's
/// camelCase) to a target: Ok(false) when the target is dropped.
fn relabel(target: &mut BTreeMap<String, String>, rules: &[Value]) -> Result<bool, String> {
    for rule in rules {
        let unknown = unknown_fields(rule, &RELABEL_FIELDS, "relabel rule");
        if !unknown.is_empty() {
            return Err(unknown.join("; "));
        }
        let field = |snake: &str, camel: &str| {
            let v = if rule[snake].is_null() { &rule[camel] } else { &rule[snake] };
            (!v.is_null()).then(|| v.clone())
        };
        let action = field("action", "action").map_or("replace".to_owned(), |v| text(&v).to_lowercase());
        let separator = field("separator", "separator").map_or(";".to_owned(), |v| text(&v));
        let regex = field("regex", "regex").map_or("(.*)".to_owned(), |v| text(&v));
        let re = Regex::new(&format!("^(?:{regex})$")).map_err(|e| format!("regex {regex}: {e}"))?;
        let sources = field("source_labels", "sourceLabels").map(|v| strings(&v)).unwrap_or_default();
        let value: Vec<&str> = sources.iter().map(|l| target.get(l).map_or("", String::as_str)).collect();
        let value = value.join(&separator);
        match action.as_str() {
            "keep" if !re.is_match(&value) => return Ok(false),
            "drop" if re.is_match(&value) => return Ok(false),
            "keep" | "drop" => {}
            "replace" => {
                let label = field("target_label", "targetLabel")
                    .map(|v| text(&v))
                    .ok_or("replace needs a target label")?;
                let replacement = field("replacement", "replacement").map_or("$1".to_owned(), |v| text(&v));
                if let Some(caps) = re.captures(&value) {
                    let mut out = String::new();
                    caps.expand(&replacement, &mut out);
                    if out.is_empty() {
                        target.remove(&label);
                    } else {
                        target.insert(label, out);
                    }
                }
            }
            other => return Err(format!("relabel action {other} is not simulated here")),
        }
    }
    // Prometheus' default: the instance is the address.
    if !target.contains_key("instance") {
        let address = target["__address__"].clone();
        target.insert("instance".to_owned(), address);
    }
    Ok(true)
}

// === the Service and the Prometheus Operator monitors ===

fn load_kube(file: &str) -> Value {
    load_one(&format!("{KUBE_DIR}/{file}"))
}

/// Whether a label map (a Service's selector) matches `labels`; an empty one matches nothing.
fn matches(wanted: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !wanted.is_empty() && wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Whether a label selector (matchLabels only) matches `labels`.
fn selects(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    selector["matchExpressions"].is_null() && matches(&string_map(&selector["matchLabels"]), labels)
}

/// The namespaces a monitor's namespaceSelector covers (`None`: any).
fn monitor_namespaces(monitor: &Value) -> Option<Vec<String>> {
    let sel = &monitor["spec"]["namespaceSelector"];
    if sel["any"].as_bool() == Some(true) {
        None
    } else if sel["matchNames"].is_null() {
        Some(vec![text(&monitor["metadata"]["namespace"])])
    } else {
        Some(strings(&sel["matchNames"]))
    }
}

const ENDPOINT_FIELDS: [&str; 9] = [
    "port",
    "path",
    "interval",
    "scrapeTimeout",
    "scheme",
    "relabelings",
    "metricRelabelings",
    "honorLabels",
    "params",
];

/// Checks shared by every monitor endpoint: the port (one of `ports`), path, interval, and that
/// its relabelings give a target of `pod` the `node` label.
fn endpoint_problems(endpoint: &Value, at: &str, ports: &BTreeSet<String>, pod: &Pod) -> Vec<String> {
    let mut f = Findings::default();
    f.extend(unknown_fields(endpoint, &ENDPOINT_FIELDS, at));
    let port = text(&endpoint["port"]);
    f.check(ports.contains(&port), format!("{at}: port `{port}` is none of {ports:?}"));
    f.check(text(&endpoint["path"]) == "/metrics", format!("{at}: path must be /metrics"));
    f.check(text(&endpoint["interval"]) == "30s", format!("{at}: interval must be 30s"));
    let mut target = pod.targets("any").remove(0);
    match relabel(&mut target, seq(&endpoint["relabelings"])) {
        Ok(true) => f.check(
            target.get("node").map(String::as_str) == Some(NODE),
            format!("{at}: relabelings must set `node` from __meta_kubernetes_pod_node_name"),
        ),
        Ok(false) => f.check(false, format!("{at}: relabelings drop the target")),
        Err(e) => f.check(false, format!("{at}: {e}")),
    }
    f.0
}

const PODMONITOR_SPEC: [&str; 5] =
    ["jobLabel", "namespaceSelector", "selector", "podMetricsEndpoints", "podTargetLabels"];
const SERVICEMONITOR_SPEC: [&str; 6] =
    ["jobLabel", "namespaceSelector", "selector", "endpoints", "targetLabels", "podTargetLabels"];

/// A PodMonitor of `pod`: it selects the pod in its namespace and every endpoint is sound.
pub(crate) fn podmonitor_problems(pm: &Value, pod: &Pod) -> Vec<String> {
    let at = format!("PodMonitor {}", text(&pm["metadata"]["name"]));
    let spec = &pm["spec"];
    let mut f = Findings::default();
    f.check(
        text(&pm["apiVersion"]) == "monitoring.coreos.com/v1",
        format!("{at}: apiVersion monitoring.coreos.com/v1"),
    );
    f.extend(unknown_fields(spec, &PODMONITOR_SPEC, &format!("{at}: spec")));
    f.check(selects(&spec["selector"], &pod.labels), format!("{at}: selector must match the pod's labels"));
    f.check(
        monitor_namespaces(pm).is_none_or(|ns| ns.contains(&pod.namespace)),
        format!("{at}: namespaceSelector must cover {}", pod.namespace),
    );
    let job_label = text(&spec["jobLabel"]);
    f.check(pod.labels.contains_key(&job_label), format!("{at}: jobLabel `{job_label}` is no pod label"));
    let endpoints = seq(&spec["podMetricsEndpoints"]);
    f.check(!endpoints.is_empty(), format!("{at}: podMetricsEndpoints is empty"));
    let ports: BTreeSet<String> = pod.ports.iter().map(|(name, _)| name.clone()).collect();
    for (i, endpoint) in endpoints.iter().enumerate() {
        f.extend(endpoint_problems(endpoint, &format!("{at}: podMetricsEndpoints[{i}]"), &ports, pod));
    }
    f.0
}

/// The ServiceMonitor selects the Service, which selects the agent and names its port.
pub(crate) fn servicemonitor_problems(sm: &Value, service: &Value, pod: &Pod) -> Vec<String> {
    let at = "ServiceMonitor enawatch";
    let spec = &sm["spec"];
    let svc_labels = string_map(&service["metadata"]["labels"]);
    let svc_ports: BTreeMap<String, &Value> =
        seq(&service["spec"]["ports"]).iter().map(|p| (text(&p["name"]), p)).collect();
    let mut f = Findings::default();
    f.check(
        text(&sm["apiVersion"]) == "monitoring.coreos.com/v1",
        format!("{at}: apiVersion monitoring.coreos.com/v1"),
    );
    f.extend(unknown_fields(spec, &SERVICEMONITOR_SPEC, &format!("{at}: spec")));
    f.check(
        selects(&spec["selector"], &svc_labels),
        format!("{at}: selector must match the Service's labels"),
    );
    let svc_ns = text(&service["metadata"]["namespace"]);
    f.check(
        monitor_namespaces(sm).is_none_or(|ns| ns.contains(&svc_ns)),
        format!("{at}: namespaceSelector must cover {svc_ns}"),
    );
    let job_label = text(&spec["jobLabel"]);
    f.check(svc_labels.contains_key(&job_label), format!("{at}: jobLabel `{job_label}` is no Service label"));
    f.check(text(&service["spec"]["clusterIP"]) == "None", "Service: clusterIP must be None (headless)");
    f.check(
        svc_ns == pod.namespace && matches(&string_map(&service["spec"]["selector"]), &pod.labels),
        "Service: spec.selector must match the agent pods, in their namespace",
    );
    let endpoints = seq(&spec["endpoints"]);
    f.check(!endpoints.is_empty(), format!("{at}: endpoints is empty"));
    for (i, endpoint) in endpoints.iter().enumerate() {
        let ep_at = format!("{at}: endpoints[{i}]");
        let name = text(&endpoint["port"]);
        match svc_ports.get(&name) {
            Some(port) => {
                let target = text(&port["targetPort"]);
                f.check(
                    pod.ports.iter().any(|(n, p)| *n == target || p.to_string() == target),
                    format!("{ep_at}: Service port {name} targets `{target}`, no container port"),
                );
                f.check(text(&port["port"]) == "9417", format!("{ep_at}: Service port {name} must be 9417"));
            }
            None => f.check(false, format!("{ep_at}: the Service has no port named `{name}`")),
        }
        // Endpoints targets carry the pod's metadata too: the same relabelling applies.
        let names: BTreeSet<String> = svc_ports.keys().cloned().collect();
        f.extend(endpoint_problems(endpoint, &ep_at, &names, pod));
    }
    f.0
}

#[test]
fn service_and_monitors_select_the_agent() {
    let ds = daemonset();
    let agent = Pod::agent(&ds);
    let mut f = Findings::default();
    f.extend(podmonitor_problems(&load_kube("podmonitor.yaml"), &agent));
    f.extend(servicemonitor_problems(
        &load_kube("alternatives/servicemonitor.yaml"),
        &load_kube("service.yaml"),
        &agent,
    ));
    let service = load_kube("service.yaml");
    f.check(
        seq(&service["spec"]["ports"])
            .iter()
            .any(|p| text(&p["name"]) == "metrics" && text(&p["port"]) == "9417"),
        "Service: port 9417 named metrics",
    );
    let coredns = load_kube("coredns-podmonitor.yaml");
    f.extend(podmonitor_problems(&coredns, &Pod::coredns()));
    f.check(
        text(&coredns["spec"]["jobLabel"]) == "k8s-app",
        "CoreDNS PodMonitor: jobLabel k8s-app (job=kube-dns)",
    );
    f.check(
        monitor_namespaces(&coredns) == Some(vec!["kube-system".to_owned()]),
        "CoreDNS PodMonitor: namespaceSelector kube-system only",
    );
    f.check(
        seq(&coredns["spec"]["podMetricsEndpoints"]).iter().all(|e| text(&e["port"]) == "metrics"),
        "CoreDNS PodMonitor: port metrics (9153)",
    );
    // The enawatch monitor must not pick up CoreDNS, and the CoreDNS one not the agent.
    f.check(
        !selects(&load_kube("podmonitor.yaml")["spec"]["selector"], &Pod::coredns().labels),
        "the enawatch PodMonitor also selects CoreDNS",
    );
    f.check(
        !selects(&coredns["spec"]["selector"], &agent.labels),
        "the CoreDNS PodMonitor also selects the agent",
    );
    f.assert_none("the Service or a monitor does not reach its pods");
}

#[test]
fn monitor_checker_catches_broken_monitors() {
    let agent = Pod::agent(&daemonset());
    let cases: [Mutation; 5] = [
        ("selector", |m| m["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] = yaml("enawtch")),
        ("port", |m| m["spec"]["podMetricsEndpoints"][0]["port"] = yaml("http")),
        ("node", |m| remove(&mut m["spec"]["podMetricsEndpoints"][0], "relabelings")),
        ("unknown field `intervall`", |m| {
            set(&mut m["spec"]["podMetricsEndpoints"][0], "intervall", yaml("30s"));
        }),
        ("namespaceSelector", |m| m["spec"]["namespaceSelector"]["matchNames"] = yaml("[default]")),
    ];
    for (expected, mutate) in cases {
        let mut pm = load_kube("podmonitor.yaml");
        mutate(&mut pm);
        let problems = podmonitor_problems(&pm, &agent);
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "breaking {expected} must be reported: {problems:?}"
        );
    }
}

#[test]
fn custom_resources_all_have_a_structural_check() {
    // kubernetes-validate has no schema for these: each kind needs a checker in this file.
    let checked = ["PodMonitor", "ServiceMonitor", "PrometheusRule", "OpenTelemetryCollector"];
    let mut f = Findings::default();
    for file in validated_files() {
        let origin = file.display().to_string();
        for doc in documents(&std::fs::read_to_string(&file).unwrap(), &origin) {
            let kind = text(&doc["kind"]);
            f.check(
                !text(&doc["metadata"]["name"]).is_empty(),
                format!("{origin}: {kind} without metadata.name"),
            );
            if !is_builtin(&text(&doc["apiVersion"])) {
                f.check(checked.contains(&kind.as_str()), format!("{origin}: {kind} is checked by nothing"));
                f.check(
                    text(&doc["metadata"]["namespace"]) == "enawatch",
                    format!("{origin}: {} must live in namespace enawatch", ident(&doc)),
                );
            }
        }
    }
    let rule = load_kube("prometheusrule.yaml");
    f.check(
        text(&rule["apiVersion"]) == "monitoring.coreos.com/v1" && !seq(&rule["spec"]["groups"]).is_empty(),
        "prometheusrule.yaml: a monitoring.coreos.com/v1 PrometheusRule with groups",
    );
    f.assert_none("custom resources");
}

// === kustomization ===

/// What differs between the kustomization's resources and the files beside it.
fn kustomization_problems(listed: &[String], files: &[String]) -> Vec<String> {
    let mut f = Findings::default();
    let mut seen = BTreeSet::new();
    for name in listed {
        f.check(seen.insert(name), format!("{name} is listed twice"));
        f.check(files.contains(name), format!("{name} is listed but does not exist"));
    }
    for name in files.iter().filter(|n| *n != "kustomization.yaml") {
        f.check(listed.contains(name), format!("{name} is missing from kustomization.yaml's resources"));
    }
    f.0
}

#[test]
fn kustomization_lists_every_manifest() {
    let k = load_kube("kustomization.yaml");
    assert_eq!(text(&k["apiVersion"]), "kustomize.config.k8s.io/v1beta1");
    assert_eq!(text(&k["kind"]), "Kustomization");
    let listed = strings(&k["resources"]);
    assert!(
        listed.contains(&"prometheusrule.yaml".to_owned()),
        "the generated rules are part of the install"
    );
    Findings(kustomization_problems(&listed, &kube_files()))
        .assert_none("deploy/kubernetes/kustomization.yaml");
}

#[test]
fn kustomization_checker_catches_drift() {
    let files: Vec<String> = ["a.yaml", "b.yaml", "kustomization.yaml"].map(String::from).to_vec();
    let ok: Vec<String> = ["a.yaml", "b.yaml"].map(String::from).to_vec();
    assert!(kustomization_problems(&ok, &files).is_empty());
    let missing = kustomization_problems(&ok[..1], &files);
    assert!(missing.iter().any(|p| p.contains("b.yaml is missing")), "{missing:?}");
    let stale = kustomization_problems(&["a.yaml", "b.yaml", "gone.yaml"].map(String::from), &files);
    assert!(stale.iter().any(|p| p.contains("gone.yaml is listed but does not exist")), "{stale:?}");
}

// === the ADOT collector ===

/// The pods the collector's jobs are tried on: what must be scraped (the agent on 9417, and
/// CoreDNS on 9153 if at all) and what must not (the agent's other ports, the collector
/// itself, an unrelated pod on 9417 in the same namespace).
fn candidate_pods(ds: &Value) -> Vec<Pod> {
    let mut agent = Pod::agent(ds);
    agent.ports.push(("debug".to_owned(), 6060));
    vec![
        agent,
        Pod::coredns(),
        Pod::new(
            "enawatch",
            "enawatch-collector-6f9c-abcde",
            &[("app.kubernetes.io/name", "enawatch"), ("app.kubernetes.io/component", "collector")],
            &[("metrics", 8888)],
        ),
        Pod::new("enawatch", "other-1", &[("app", "other")], &[("metrics", 9417)]),
    ]
}

/// What the prometheus receiver's jobs keep of the candidate pods, and what is wrong with them.
fn scrape_problems(receiver: &Value, ds: &Value, f: &mut Findings) -> BTreeSet<String> {
    let mut namespaces = BTreeSet::new();
    let jobs = seq(&receiver["config"]["scrape_configs"]);
    f.check(!jobs.is_empty(), "receivers.prometheus: no scrape_configs");
    let mut agent_targets = Vec::new();
    for job in jobs {
        let name = text(&job["job_name"]);
        let at = format!("scrape job {name}");
        let interval = text(&job["scrape_interval"]);
        let global = text(&receiver["config"]["global"]["scrape_interval"]);
        f.check(
            interval == "30s" || (interval.is_empty() && global == "30s"),
            format!("{at}: must scrape every 30s"),
        );
        let sds = seq(&job["kubernetes_sd_configs"]);
        f.check(
            !sds.is_empty() && sds.iter().all(|sd| text(&sd["role"]) == "pod"),
            format!("{at}: role pod"),
        );
        let allowed: Vec<String> = sds.iter().flat_map(|sd| strings(&sd["namespaces"]["names"])).collect();
        namespaces.extend(allowed.iter().cloned());
        for pod in candidate_pods(ds) {
            if !allowed.is_empty() && !allowed.contains(&pod.namespace) {
                continue;
            }
            for mut target in pod.targets(&name) {
                match relabel(&mut target, seq(&job["relabel_configs"])) {
                    Ok(false) => {}
                    Ok(true) => {
                        let address = target["__address__"].clone();
                        let what = format!("{at} scrapes {}/{} at {address}", pod.namespace, pod.name);
                        f.check(
                            target.get("node").map(String::as_str) == Some(NODE),
                            format!("{what} without `node`"),
                        );
                        if pod.name == Pod::agent(ds).name && address.ends_with(":9417") {
                            agent_targets.push(target);
                        } else {
                            f.check(pod.name.starts_with("coredns-") && address.ends_with(":9153"), what);
                        }
                    }
                    Err(e) => f.check(false, format!("{at}: {e}")),
                }
            }
        }
    }
    f.check(
        agent_targets.len() == 1,
        format!("the agent on 9417 is scraped {} times, not once", agent_targets.len()),
    );
    for t in &agent_targets {
        f.check(
            t["job"] == "enawatch",
            format!("the agent's job is `{}`: the rules expect enawatch", t["job"]),
        );
    }
    namespaces
}

const OTELCOL_SPEC: [&str; 7] =
    ["mode", "replicas", "image", "serviceAccount", "resources", "podSecurityContext", "securityContext"];

/// The collector file: an OpenTelemetryCollector that scrapes the agents and remote-writes to
/// AMP with SigV4, with the identity and the RBAC its service discovery needs.
fn collector_problems(docs: &[Value], ds: &Value) -> Vec<String> {
    let mut f = Findings::default();
    let Some(otel) = docs.iter().find(|d| text(&d["kind"]) == "OpenTelemetryCollector") else {
        return vec!["no OpenTelemetryCollector".to_owned()];
    };
    f.check(text(&otel["apiVersion"]) == "opentelemetry.io/v1beta1", "apiVersion opentelemetry.io/v1beta1");
    let spec = &otel["spec"];
    let mut allowed_spec = OTELCOL_SPEC.to_vec();
    allowed_spec.push("config");
    f.extend(unknown_fields(spec, &allowed_spec, "OpenTelemetryCollector spec"));
    f.check(text(&spec["mode"]) == "deployment", "spec.mode deployment (one collector scrapes every node)");
    f.check(
        text(&spec["image"]).contains("aws-otel-collector"),
        "spec.image must be ADOT (it has sigv4auth)",
    );
    let config = &spec["config"];
    f.extend(unknown_fields(
        config,
        &["extensions", "receivers", "processors", "exporters", "service"],
        "config",
    ));

    let sigv4 = &config["extensions"]["sigv4auth"];
    f.check(text(&sigv4["service"]) == "aps", "extensions.sigv4auth.service must be aps");
    f.check(!text(&sigv4["region"]).is_empty(), "extensions.sigv4auth.region must be set");
    let service_extensions = strings(&config["service"]["extensions"]);
    f.check(service_extensions.contains(&"sigv4auth".to_owned()), "service.extensions must enable sigv4auth");
    for ext in &service_extensions {
        f.check(
            !config["extensions"][ext.as_str()].is_null(),
            format!("service.extensions: {ext} is not defined"),
        );
    }

    let prw = &config["exporters"]["prometheusremotewrite"];
    let amp =
        Regex::new(r"^https://aps-workspaces\.[^./]+\.amazonaws\.com/workspaces/[^/]+/api/v1/remote_write$")
            .unwrap();
    f.check(
        amp.is_match(&text(&prw["endpoint"])),
        "exporters.prometheusremotewrite.endpoint must be an AMP URL",
    );
    f.check(
        text(&prw["auth"]["authenticator"]) == "sigv4auth",
        "exporters.prometheusremotewrite.auth.authenticator must be sigv4auth",
    );

    let pipeline = &config["service"]["pipelines"]["metrics"];
    f.check(
        strings(&pipeline["receivers"]).contains(&"prometheus".to_owned()),
        "metrics pipeline: receiver prometheus",
    );
    f.check(
        strings(&pipeline["exporters"]).contains(&"prometheusremotewrite".to_owned()),
        "metrics pipeline: exporter prometheusremotewrite",
    );
    for section in ["receivers", "processors", "exporters"] {
        for component in strings(&pipeline[section]) {
            f.check(
                !config[section][component.as_str()].is_null(),
                format!("metrics pipeline: {section} {component} is not defined"),
            );
        }
    }
    let namespaces = scrape_problems(&config["receivers"]["prometheus"], ds, &mut f);
    rbac_problems(docs, otel, &namespaces, &mut f);
    // The collector expands `$` as environment variables; a Prometheus `$1` must be `$$1`.
    let raw = yaml_serde::to_string(config).unwrap();
    f.check(
        raw.replace("$$", "").replace("${env:", "").find('$').is_none(),
        "config: a lone `$` would be expanded as an environment variable (write $$)",
    );
    f.0
}

/// The collector's service account exists and may list and watch pods where it discovers them.
fn rbac_problems(docs: &[Value], otel: &Value, namespaces: &BTreeSet<String>, f: &mut Findings) {
    let account = text(&otel["spec"]["serviceAccount"]);
    let namespace = text(&otel["metadata"]["namespace"]);
    f.check(namespace == "enawatch", "the OpenTelemetryCollector must live in namespace enawatch");
    f.check(
        docs.iter().any(|d| {
            text(&d["kind"]) == "ServiceAccount"
                && text(&d["metadata"]["name"]) == account
                && text(&d["metadata"]["namespace"]) == namespace
        }),
        format!("spec.serviceAccount `{account}` is not defined in this file"),
    );
    let reads_pods = |role_name: &str| {
        docs.iter().any(|d| {
            text(&d["kind"]) == "ClusterRole"
                && text(&d["metadata"]["name"]) == role_name
                && seq(&d["rules"]).iter().any(|r| {
                    let verbs = strings(&r["verbs"]);
                    strings(&r["resources"]).contains(&"pods".to_owned())
                        && ["list", "watch"].iter().all(|v| verbs.contains(&(*v).to_owned()))
                })
        })
    };
    for ns in namespaces {
        f.check(
            docs.iter().any(|d| {
                text(&d["kind"]) == "RoleBinding"
                    && text(&d["metadata"]["namespace"]) == *ns
                    && reads_pods(&text(&d["roleRef"]["name"]))
                    && seq(&d["subjects"])
                        .iter()
                        .any(|s| text(&s["name"]) == account && text(&s["namespace"]) == namespace)
            }),
            format!("no RoleBinding lets {account} list and watch pods in {ns}"),
        );
    }
}

#[test]
fn adot_collector_scrapes_the_agents_and_writes_to_amp() {
    let problems = collector_problems(&load(COLLECTOR), &daemonset());
    Findings(problems).assert_none("deploy/adot/collector.yaml");
}

fn otel_config(docs: &mut [Value]) -> &mut Value {
    let otel = docs.iter_mut().find(|d| text(&d["kind"]) == "OpenTelemetryCollector").unwrap();
    &mut otel["spec"]["config"]
}

#[test]
fn collector_checker_catches_a_broken_pipeline() {
    let cases: [Mutation; 6] = [
        ("service.extensions must enable sigv4auth", |c| c["service"]["extensions"] = yaml("[health_check]")),
        ("authenticator", |c| remove(&mut c["exporters"]["prometheusremotewrite"], "auth")),
        ("scrapes enawatch/enawatch-collector", |c| {
            // A keep rule that matches everything: the collector and CoreDNS on 53 get scraped.
            c["receivers"]["prometheus"]["config"]["scrape_configs"][0]["relabel_configs"] = yaml(
                "[{action: replace, source_labels: [__meta_kubernetes_pod_node_name], target_label: node}]",
            );
        }),
        ("without `node`", |c| {
            let rules = c["receivers"]["prometheus"]["config"]["scrape_configs"][0]["relabel_configs"]
                .as_sequence_mut()
                .unwrap();
            rules.retain(|r| text(&r["target_label"]) != "node");
        }),
        ("environment variable", |c| {
            c["exporters"]["prometheusremotewrite"]["external_labels"]["x"] = yaml("$1");
        }),
        ("RoleBinding", |c| {
            c["receivers"]["prometheus"]["config"]["scrape_configs"][1]["kubernetes_sd_configs"][0]
                ["namespaces"]["names"] = yaml("[default, kube-system]");
        }),
    ];
    let ds = daemonset();
    for (expected, mutate) in cases {
        let mut docs = load(COLLECTOR);
        mutate(otel_config(&mut docs));
        let problems = collector_problems(&docs, &ds);
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "breaking {expected} must be reported: {problems:?}"
        );
    }
}

// === the Dockerfile ===

/// One build stage: its base, its name and its instructions (keyword upper-cased, arguments).
struct Stage {
    from: String,
    name: String,
    steps: Vec<(String, String)>,
}

/// Parses a Dockerfile into stages: comments dropped, continuation lines joined.
fn stages(dockerfile: &str) -> Vec<Stage> {
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(part) = trimmed.strip_suffix('\\') {
            current.push_str(part);
            current.push(' ');
        } else {
            current.push_str(trimmed);
            logical.push(std::mem::take(&mut current));
        }
    }
    let mut out: Vec<Stage> = Vec::new();
    for line in logical.iter().filter(|l| !l.is_empty()) {
        let (keyword, args) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let (keyword, args) = (keyword.to_uppercase(), args.trim().to_owned());
        if keyword == "FROM" {
            let words: Vec<&str> = args.split_whitespace().filter(|w| !w.starts_with("--")).collect();
            let name = match words.as_slice() {
                [_, alias, name] if alias.eq_ignore_ascii_case("as") => (*name).to_owned(),
                _ => String::new(),
            };
            out.push(Stage {
                from: words.first().copied().unwrap_or_default().to_owned(),
                name,
                steps: Vec::new(),
            });
        } else if let Some(stage) = out.last_mut() {
            stage.steps.push((keyword, args));
        }
    }
    out
}

/// The arguments of a stage's `keyword` instructions, in order.
fn steps<'a>(stage: &'a Stage, keyword: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    stage.steps.iter().filter(move |(k, _)| k == keyword).map(|(_, a)| a.as_str())
}

fn dockerfile_problems(dockerfile: &str) -> Vec<String> {
    let all = stages(dockerfile);
    let mut f = Findings::default();
    f.check(all.len() >= 2, "must be multi-stage: a build stage and a minimal runtime stage");
    let Some(last) = all.last() else { return f.0 };
    f.check(
        last.from == "scratch" || last.from.starts_with("gcr.io/distroless/static"),
        format!("final stage FROM {}: must be scratch or distroless static", last.from),
    );
    let user = steps(last, "USER").last().unwrap_or("");
    let numeric_non_root = user.split(':').all(|id| id.parse::<u32>().is_ok_and(|id| id > 0));
    f.check(numeric_non_root, format!("final stage USER `{user}`: must be a numeric non-root uid[:gid]"));
    f.check(
        steps(last, "EXPOSE").any(|a| a.split_whitespace().any(|p| p == "9417" || p == "9417/tcp")),
        "EXPOSE 9417",
    );
    f.check(steps(last, "ENTRYPOINT").last() == Some(r#"["/enawatch"]"#), r#"ENTRYPOINT ["/enawatch"]"#);
    f.check(steps(last, "CMD").last() == Some(r#"["serve"]"#), r#"CMD ["serve"]"#);
    f.check(
        steps(last, "LABEL").any(|a| a.contains("org.opencontainers.image.source")),
        "OCI labels (LABEL org.opencontainers.image.*)",
    );
    let copy = steps(last, "COPY").find(|a| a.starts_with("--from=")).unwrap_or("");
    let build_name = copy.trim_start_matches("--from=").split_whitespace().next().unwrap_or("");
    f.check(
        copy.ends_with(" /enawatch"),
        "the final stage copies the binary to /enawatch from the build stage",
    );
    let Some(build) = all.iter().find(|s| !s.name.is_empty() && s.name == build_name) else {
        f.check(false, format!("no build stage named `{build_name}`"));
        return f.0;
    };
    f.check(
        build.from.starts_with("rust:"),
        format!("build stage FROM {}: must be a rust image", build.from),
    );
    let runs: Vec<&str> = build.steps.iter().filter(|(k, _)| k == "RUN").map(|(_, a)| a.as_str()).collect();
    let cargo = runs.iter().find(|r| r.contains("cargo build")).copied().unwrap_or("");
    let target =
        cargo.split_once("--target ").map_or("", |(_, rest)| rest.split_whitespace().next().unwrap_or(""));
    f.check(cargo.contains("--locked"), "cargo build --locked (Cargo.lock decides the dependencies)");
    f.check(cargo.contains("--profile dist"), "cargo build --profile dist (LTO, stripped)");
    f.check(
        target.ends_with("-unknown-linux-musl"),
        format!("cargo build --target `{target}`: must be a musl target"),
    );
    f.check(
        runs.iter().any(|r| r.contains(&format!("rustup target add {target}"))),
        format!("the build stage must add the {target} target"),
    );
    f.check(
        cargo.contains(&format!("target/{target}/dist/enawatch")),
        "the binary is copied from target/<musl target>/dist/",
    );
    let revision = |k: &str| build.steps.iter().any(|(kw, a)| kw == k && a.starts_with("ENAWATCH_REVISION"));
    f.check(
        revision("ARG") && revision("ENV"),
        "ENAWATCH_REVISION: a build ARG, exported to build.rs with ENV",
    );
    f.0
}

#[test]
fn dockerfile_builds_a_static_non_root_image() {
    let dockerfile = read("Dockerfile");
    let mut f = Findings(dockerfile_problems(&dockerfile));
    // The image's user is the one the DaemonSet runs as.
    let final_user = stages(&dockerfile).last().and_then(|s| {
        s.steps
            .iter()
            .rev()
            .find(|(k, _)| k == "USER")
            .map(|(_, a)| a.split(':').next().unwrap_or("").to_owned())
    });
    let ds_user = text(&daemonset()["spec"]["template"]["spec"]["securityContext"]["runAsUser"]);
    f.check(
        final_user.as_deref() == Some(ds_user.as_str()),
        "the image's USER must be the DaemonSet's runAsUser",
    );
    f.assert_none("Dockerfile");
}

#[test]
fn dockerfile_checker_catches_each_violation() {
    let good = read("Dockerfile");
    let single_stage = good[good.find("FROM scratch").unwrap()..].to_owned();
    let cases = [
        ("USER", good.replace("USER 65534:65534", "USER root")),
        ("USER", good.replace("USER 65534:65534", "USER 0:0")),
        ("final stage FROM", good.replace("FROM scratch", "FROM debian:bookworm-slim")),
        ("--locked", good.replace("--locked ", "")),
        ("musl", good.replace("-unknown-linux-musl", "-unknown-linux-gnu")),
        ("EXPOSE", good.replace("EXPOSE 9417", "EXPOSE 8080")),
        ("multi-stage", single_stage),
    ];
    assert!(dockerfile_problems(&good).is_empty());
    for (expected, bad) in cases {
        assert_ne!(bad, good, "the mutation for {expected} must apply");
        let problems = dockerfile_problems(&bad);
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "breaking {expected} must be reported: {problems:?}"
        );
    }
}

/// Whether a .dockerignore pattern excludes `path` (or a folder above it).
fn ignored(pattern: &str, path: &str) -> bool {
    let pattern = pattern.trim_matches('/');
    let glob =
        regex_lite::escape(pattern).replace(r"\*\*", ".*").replace(r"\*", "[^/]*").replace(r"\?", "[^/]");
    let re = Regex::new(&format!("^{glob}(/.*)?$")).unwrap();
    re.is_match(path)
}

/// Files the build reads through include_str!/include_bytes!, relative to the repository.
fn embedded_files(dir: &Path, out: &mut Vec<String>) {
    let include = Regex::new(r#"include_(?:str|bytes)!\(\s*"([^"]+)"\s*\)"#).unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            embedded_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let source = std::fs::read_to_string(&path).unwrap();
            for caps in include.captures_iter(&source) {
                let mut resolved = PathBuf::new();
                for part in path.parent().unwrap().join(&caps[1]).strip_prefix(repo()).unwrap().components() {
                    match part {
                        Component::ParentDir => {
                            resolved.pop();
                        }
                        Component::Normal(p) => resolved.push(p),
                        _ => {}
                    }
                }
                out.push(resolved.to_string_lossy().into_owned());
            }
        }
    }
}

#[test]
fn dockerignore_keeps_what_the_build_reads() {
    let patterns: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('!'))
        .map(str::to_owned)
        .collect();
    let mut f = Findings::default();
    for path in ["target/release/enawatch", ".git/HEAD"] {
        f.check(patterns.iter().any(|p| ignored(p, path)), format!("{path} must not be sent to the build"));
    }
    let mut needed: Vec<String> =
        ["Cargo.toml", "Cargo.lock", "build.rs", "src/main.rs"].map(String::from).to_vec();
    embedded_files(&repo().join("src"), &mut needed);
    assert!(needed.iter().any(|p| p.starts_with("tests/data/")), "src embeds fixtures: {needed:?}");
    for path in &needed {
        f.check(repo().join(path).exists(), format!("{path} does not exist"));
        for pattern in &patterns {
            f.check(
                !ignored(pattern, path),
                format!(".dockerignore `{pattern}` excludes {path}, which the build reads"),
            );
        }
    }
    f.assert_none(".dockerignore");
    assert!(
        ignored("tests/", "tests/data/x.txt") && !ignored("target/", "src/target.rs"),
        "the matcher itself"
    );
}
