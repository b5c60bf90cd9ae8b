//! The remote-write deployment keeps its promises, checked offline:
//! deploy/kubernetes/alternatives/remote-write (a kustomize component) is applied to the base
//! here the way kustomize applies it (strategic merge patches, delete patches), and the
//! result is validated with `kubernetes-validate --strict` and checked for what the agent
//! needs to push (its configuration, a writable spool, CA certificates, the environment its
//! external labels use) and for what it must still not have (privilege, capabilities, a
//! writable root, a Kubernetes API token). The configuration in configmap.yaml passes
//! `enawatch serve --check-config`, and deploy/iam's policies grant what the agent uses and
//! trust the service account the manifests run it as.
//!
//! Needs the `kubernetes-validate` CLI: `pip install kubernetes-validate==1.37.0`.

use std::collections::BTreeMap;
use std::process::Command;

use yaml_serde::Value;

use crate::support;
use crate::support::yaml::{load, read, seq, text};

const BASE: &str = "deploy/kubernetes";
const COMPONENT: &str = "deploy/kubernetes/alternatives/remote-write";

fn id(doc: &Value) -> (String, String) {
    (text(&doc["kind"]), text(&doc["metadata"]["name"]))
}

fn group(doc: &Value) -> String {
    text(&doc["apiVersion"]).rsplit_once('/').map_or(String::new(), |(g, _)| g.to_owned())
}

// === kustomize, the part this component uses ===

/// The merge key of a list field in a strategic merge patch (the Kubernetes API's
/// `x-kubernetes-patch-merge-key`); lists without one are replaced.
fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "containers" | "initContainers" | "volumes" | "env" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        "ports" => Some("containerPort"),
        _ => None,
    }
}

pub(crate) fn merge(base: &mut Value, patch: &Value, field: &str) {
    match (base, patch) {
        (Value::Mapping(b), Value::Mapping(p)) => {
            for (k, v) in p {
                let name = text(k);
                match b.get_mut(k) {
                    Some(existing) => merge(existing, v, &name),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Value::Sequence(b), Value::Sequence(p)) if merge_key(field).is_some() => {
            let key = merge_key(field).unwrap();
            for item in p {
                match b.iter_mut().find(|x| text(&x[key]) == text(&item[key])) {
                    Some(existing) => merge(existing, item, ""),
                    None => b.push(item.clone()),
                }
            }
        }
        (b, p) => *b = p.clone(),
    }
}

/// The base's objects with the component applied.
pub(crate) fn rendered() -> Vec<Value> {
    let base: Value = yaml_serde::from_str(&read(&format!("{BASE}/kustomization.yaml"))).unwrap();
    let component: Value = yaml_serde::from_str(&read(&format!("{COMPONENT}/kustomization.yaml"))).unwrap();
    assert_eq!(text(&component["kind"]), "Component");
    let mut objects: Vec<Value> = seq(&base["resources"])
        .iter()
        .flat_map(|r| load(&format!("{BASE}/{}", text(r))))
        .chain(seq(&component["resources"]).iter().flat_map(|r| load(&format!("{COMPONENT}/{}", text(r)))))
        .collect();
    for patch in seq(&component["patches"]) {
        if let Some(path) = patch["path"].as_str() {
            for p in load(&format!("{COMPONENT}/{path}")) {
                let target = objects
                    .iter_mut()
                    .find(|o| id(o) == id(&p))
                    .unwrap_or_else(|| panic!("{path}: no {:?}", id(&p)));
                merge(target, &p, "");
            }
        } else {
            let inline: Value =
                yaml_serde::from_str(patch["patch"].as_str().expect("an inline patch")).unwrap();
            assert_eq!(text(&inline["$patch"]), "delete", "only delete patches are inline: {patch:?}");
            let (g, kind) = (text(&patch["target"]["group"]), text(&patch["target"]["kind"]));
            let before = objects.len();
            objects.retain(|o| !(group(o) == g && text(&o["kind"]) == kind));
            assert!(objects.len() < before, "the delete patch for {kind} matched nothing");
        }
    }
    objects
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| id(o) == (kind.to_owned(), name.to_owned()))
        .unwrap_or_else(|| panic!("no {kind}/{name}"))
}

// === checks ===

/// What the pushing agent needs and must not have; an empty list when all is well.
fn problems(objects: &[Value]) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            out.push(what);
        }
    };
    for o in objects {
        check(
            group(o) != "monitoring.coreos.com",
            format!("{:?} is left: nothing scrapes agents that push", id(o)),
        );
    }
    let ds = find(objects, "DaemonSet", "enawatch");
    let pod = &ds["spec"]["template"]["spec"];
    let c = &seq(&pod["containers"])[0];
    let volumes: BTreeMap<String, &Value> =
        seq(&pod["volumes"]).iter().map(|v| (text(&v["name"]), v)).collect();
    let mounts: Vec<&Value> = seq(&c["volumeMounts"]).iter().collect();
    let env: BTreeMap<String, &Value> = seq(&c["env"]).iter().map(|e| (text(&e["name"]), e)).collect();

    // The configuration file: --config PATH, PATH in a read-only ConfigMap volume whose key it is.
    let args: Vec<String> = seq(&c["args"]).iter().map(text).collect();
    let config_path = args.iter().position(|a| a == "--config").and_then(|i| args.get(i + 1)).cloned();
    check(config_path.is_some(), format!("no --config in {args:?}"));
    let config_path = config_path.unwrap_or_default();
    let (dir, file) = config_path.rsplit_once('/').unwrap_or_default();
    let config_mount = mounts.iter().find(|m| text(&m["mountPath"]) == dir);
    let config_volume = config_mount.and_then(|m| volumes.get(&text(&m["name"])));
    let configmap_name = config_volume.map(|v| text(&v["configMap"]["name"])).unwrap_or_default();
    check(
        config_mount.is_some_and(|m| m["readOnly"] == Value::Bool(true)),
        format!("{dir} is not a read-only mount"),
    );
    let configmap = objects.iter().find(|o| id(o) == ("ConfigMap".into(), configmap_name.clone()));
    let config = configmap.map(|cm| text(&cm["data"][file])).unwrap_or_default();
    check(!config.is_empty(), format!("ConfigMap {configmap_name:?} has no {file}"));

    // The spool: under a writable emptyDir mount (the root filesystem is read-only).
    let parsed: Value = yaml_serde::from_str(&config).unwrap_or(Value::Null);
    for endpoint in seq(&parsed["remote_write"]) {
        if let Some(spool) = endpoint["spool_dir"].as_str() {
            let mount = mounts.iter().find(|m| spool.starts_with(&format!("{}/", text(&m["mountPath"]))));
            let writable_empty_dir = mount.is_some_and(|m| {
                m["readOnly"] != Value::Bool(true)
                    && volumes.get(&text(&m["name"])).is_some_and(|v| v["emptyDir"].is_mapping())
            });
            check(writable_empty_dir, format!("spool_dir {spool} is not on a writable emptyDir"));
        }
        // Every ${VAR} of the external labels is in the container's environment.
        for (_, value) in endpoint["external_labels"].as_mapping().into_iter().flatten() {
            let value = text(value);
            for var in value.split("${").skip(1).filter_map(|s| s.split_once('}')).map(|(v, _)| v) {
                check(
                    env.contains_key(var),
                    format!("external label value {value} uses {var}, which the pod does not set"),
                );
            }
        }
    }

    // CA certificates: SSL_CERT_FILE is a read-only mount of a file, the only host path.
    let cert_file = env.get("SSL_CERT_FILE").map(|e| text(&e["value"])).unwrap_or_default();
    let cert_mount = mounts.iter().find(|m| text(&m["mountPath"]) == cert_file);
    check(
        cert_mount.is_some_and(|m| m["readOnly"] == Value::Bool(true)),
        format!("SSL_CERT_FILE {cert_file:?} is not a read-only mount"),
    );
    for (name, v) in &volumes {
        if v["hostPath"].is_mapping() {
            let is_ca = cert_mount.is_some_and(|m| text(&m["name"]) == *name);
            check(
                is_ca && text(&v["hostPath"]["type"]) == "File",
                format!("host path volume {name}: only the CA bundle file may come from the host"),
            );
        }
    }

    // Still unprivileged.
    let sc = &c["securityContext"];
    check(sc["readOnlyRootFilesystem"] == Value::Bool(true), "the root filesystem is writable".into());
    check(
        sc["runAsNonRoot"] == Value::Bool(true) && sc["privileged"] != Value::Bool(true),
        "the agent runs as root or privileged".into(),
    );
    check(
        seq(&sc["capabilities"]["drop"]).iter().any(|d| text(d) == "ALL"),
        "capabilities are not all dropped".into(),
    );
    check(sc["capabilities"]["add"].is_null(), "a capability is added".into());
    check(
        pod["automountServiceAccountToken"] == Value::Bool(false),
        "a Kubernetes API token is mounted".into(),
    );
    out
}

#[test]
fn the_component_applied_to_the_base_is_valid_and_keeps_its_promises() {
    let objects = rendered();
    let problems = problems(&objects);
    assert!(problems.is_empty(), "problems:\n- {}", problems.join("\n- "));

    let dir = support::TempDir::new("rw-manifests");
    let out = dir.join("rendered.yaml");
    let docs: Vec<String> = objects.iter().map(|o| yaml_serde::to_string(o).unwrap()).collect();
    std::fs::write(&out, docs.join("---\n")).unwrap();
    let result = Command::new("kubernetes-validate")
        .args(["--strict", "-k", "1.31.0", "-k", "1.35.0"])
        .arg(&out)
        .output()
        .expect("kubernetes-validate must be installed: pip install kubernetes-validate==1.37.0");
    let report =
        format!("{}{}", String::from_utf8_lossy(&result.stdout), String::from_utf8_lossy(&result.stderr));
    let passed =
        report.lines().filter(|l| l.starts_with("INFO") && l.contains(" passed for resource ")).count();
    assert!(result.status.success() && !report.contains("ERROR"), "{report}");
    assert_eq!(passed, objects.len() * 2, "every object, against both versions:\n{report}");
}

fn container(objects: &mut [Value]) -> &mut Value {
    let ds = objects.iter_mut().find(|x| id(x) == ("DaemonSet".into(), "enawatch".into())).unwrap();
    &mut ds["spec"]["template"]["spec"]["containers"][0]
}

#[test]
fn the_problem_checker_catches_each_violation() {
    type Mutation = fn(&mut Value);
    let good = rendered();
    assert!(problems(&good).is_empty());
    let mutations: [(&str, Mutation); 4] = [
        ("no --config", |c| c["args"] = Value::Sequence(vec!["serve".into()])),
        ("is not on a writable emptyDir", |c| {
            let mounts = c["volumeMounts"].as_sequence_mut().unwrap();
            mounts.retain(|m| text(&m["mountPath"]) != "/var/lib/enawatch");
        }),
        ("which the pod does not set", |c| {
            c["env"].as_sequence_mut().unwrap().retain(|e| text(&e["name"]) != "POD_NAME");
        }),
        ("SSL_CERT_FILE", |c| {
            let mounts = c["volumeMounts"].as_sequence_mut().unwrap();
            for m in mounts.iter_mut() {
                if let Value::Mapping(map) = m {
                    map.insert("readOnly".into(), false.into());
                }
            }
        }),
    ];
    for (want, mutate) in mutations {
        let mut objects = good.clone();
        mutate(container(&mut objects));
        let found = problems(&objects);
        assert!(found.iter().any(|p| p.contains(want)), "{want}: {found:?}");
    }
    let mut with_podmonitor = good.clone();
    with_podmonitor.extend(load(&format!("{BASE}/podmonitor.yaml")));
    assert!(problems(&with_podmonitor).iter().any(|p| p.contains("nothing scrapes")));
}

#[test]
fn the_shipped_configuration_passes_check_config() {
    let objects = rendered();
    let config = text(&find(&objects, "ConfigMap", "enawatch-config")["data"]["enawatch.yaml"]);
    let dir = support::TempDir::new("rw-config");
    // The placeholders as a user fills them in; the spool's parent as it exists in the pod.
    let filled = config
        .replace("REGION", "eu-west-1")
        .replace("WORKSPACE_ID", "ws-0123abcd-4567-89ef-0123-456789abcdef")
        .replace("CLUSTER_NAME", "prod")
        .replace("/var/lib/enawatch/spool", &dir.join("spool").display().to_string());
    let path = dir.join("enawatch.yaml");
    std::fs::write(&path, filled).unwrap();
    let out = Command::new(support::bin())
        .args(["serve", "--check-config", "--config"])
        .arg(&path)
        .env_clear()
        .envs([
            ("NODE_NAME", "ip-10-0-1-23.eu-west-1.compute.internal"),
            ("POD_NAME", "enawatch-x7k2p"),
            // What the IRSA webhook sets; the token file exists in the pod.
            ("AWS_ROLE_ARN", "arn:aws:iam::111122223333:role/enawatch-remote-write"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", path.to_str().unwrap()),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}{stdout}", String::from_utf8_lossy(&out.stderr));
    for line in ["region: eu-west-1", "resolution: 15s", "queue_duration: 120m", "name: amp"] {
        assert!(stdout.contains(line), "{line}:\n{stdout}");
    }
}

#[test]
fn the_iam_policies_grant_remote_write_to_the_manifests_service_account() {
    let json = |rel: &str| -> serde_json::Value {
        serde_json::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    };
    let policy = json("deploy/iam/remote-write-policy.json");
    let statements = policy["Statement"].as_array().unwrap();
    assert_eq!(statements.len(), 1);
    assert_eq!(statements[0]["Effect"], "Allow");
    assert_eq!(statements[0]["Action"], "aps:RemoteWrite", "exactly what the agent calls");
    assert_eq!(statements[0]["Resource"], "arn:aws:aps:REGION:ACCOUNT_ID:workspace/WORKSPACE_ID");

    let objects = rendered();
    let sa = find(&objects, "ServiceAccount", "enawatch");
    let subject = format!(
        "system:serviceaccount:{}:{}",
        text(&sa["metadata"]["namespace"]),
        text(&sa["metadata"]["name"])
    );
    let irsa = json("deploy/iam/remote-write-trust-irsa.json");
    let condition = &irsa["Statement"][0]["Condition"]["StringEquals"];
    assert_eq!(irsa["Statement"][0]["Action"], "sts:AssumeRoleWithWebIdentity");
    assert_eq!(condition["oidc.eks.REGION.amazonaws.com/id/OIDC_ID:sub"], subject.as_str());
    assert_eq!(condition["oidc.eks.REGION.amazonaws.com/id/OIDC_ID:aud"], "sts.amazonaws.com");
    let role = text(&sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]);
    assert!(role.starts_with("arn:aws:iam::ACCOUNT_ID:role/"), "{role}");

    let pod_identity = json("deploy/iam/remote-write-trust-pod-identity.json");
    assert_eq!(pod_identity["Statement"][0]["Principal"]["Service"], "pods.eks.amazonaws.com");
    assert_eq!(
        pod_identity["Statement"][0]["Action"],
        serde_json::json!(["sts:AssumeRole", "sts:TagSession"])
    );
}
