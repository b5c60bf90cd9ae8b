//! deploy/terraform/ (the AMP workspace, its rules and Alertmanager, the SNS topic, the agent's
//! IAM role, the optional Grafana workspace) checked without Terraform: python-hcl2 parses
//! every .tf file, and the checkers below hold the module to the repository's single sources:
//! every file()/templatefile()/fileset() path exists; the rule groups namespace reads the
//! shipped rule file and the Alertmanager definition the shipped AMP configuration; every
//! placeholder the module fills in still occurs in the file it is filled into; every variable
//! has a type and a description. checkov scans the module: no failed check, and each skip
//! carries its reason. Every checker returns its findings, and a negative test proves each one
//! fails on a broken copy.
//!
//! Needs python-hcl2 and checkov (PyPI). `scripts/test` installs python-hcl2 with pip and
//! checkov in a virtualenv of its own: checkov pins an older botocore than the remote-write
//! tests use, and ships a fork of the `hcl2` module under the same name.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use regex_lite::Regex;
use serde_json::Value;

use crate::support::yaml::{load, read, text};
use crate::support::TempDir;

const MODULE: &str = "deploy/terraform";
const HCL2_VERSION: &str = "8.1.4";
const HCL2_INSTALL: &str = "python3 -m pip install python-hcl2==8.1.4";
/// Where `scripts/test` installs checkov, in a virtualenv of its own; `checkov` on the PATH
/// otherwise.
const CHECKOV_VENV: &str = "/opt/enawatch-checkov";
const CHECKOV_INSTALL: &str = "python3 -m venv /opt/enawatch-checkov && \
     /opt/enawatch-checkov/bin/pip install checkov==3.3.30 (scripts/test does this)";
/// The plain Prometheus rule file for pushing agents: what AMP's rule groups namespace API takes.
const RULES: &str = "deploy/amp/enawatch-rules.yaml";
/// The same groups inside the ACK controller's resource.
const AMP_RULES: &str = "deploy/amp/rulegroupsnamespace.yaml";
const AMP_ALERTMANAGER: &str = "deploy/amp/alertmanagerdefinition.yaml";
/// The variables example, parsed too: every name it sets must be a declared variable.
const TFVARS_EXAMPLE: &str = "terraform.tfvars.example";

/// Parses the files named on the command line with python-hcl2 and prints
/// `{"version": ..., "files": {path: body}}`. The distribution is looked up by name because
/// checkov's fork installs a module called `hcl2` too, which parses differently.
const PARSE: &str = r#"
import importlib.metadata, json, sys
try:
    version = importlib.metadata.version("python-hcl2")
except importlib.metadata.PackageNotFoundError:
    sys.exit("the PyPI package python-hcl2 is not installed")
import hcl2
files = {}
for path in sys.argv[1:]:
    with open(path) as f:
        try:
            files[path] = hcl2.load(f)
        except Exception as e:
            sys.exit(f"{path}: {type(e).__name__}: {e}")
json.dump({"version": version, "files": files}, sys.stdout)
"#;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

// === the module, as python-hcl2 reads it ===

/// Each file's body by file name (`*.tf`, and the tfvars example).
struct Module {
    dir: PathBuf,
    files: BTreeMap<String, Value>,
}

fn parse(dir: &Path) -> Module {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
        .filter(|n| Path::new(n).extension().is_some_and(|e| e == "tf") || n == TFVARS_EXAMPLE)
        .collect();
    names.sort();
    assert!(names.iter().any(|n| is_tf(n)), "no .tf file in {}", dir.display());
    let out = match Command::new("python3").arg("-c").arg(PARSE).args(&names).current_dir(dir).output() {
        Ok(out) => out,
        Err(e) => panic!("python3 (runs python-hcl2): {e}"),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python-hcl2 could not parse {}: {stderr}\n(install it with `{HCL2_INSTALL}`)",
        dir.display()
    );
    let parsed: Value = serde_json::from_slice(&out.stdout).expect("the parser prints JSON");
    assert_eq!(
        parsed["version"].as_str(),
        Some(HCL2_VERSION),
        "python-hcl2 {HCL2_VERSION} is the version this test reads the output of: `{HCL2_INSTALL}`"
    );
    let files = parsed["files"].as_object().expect("files").clone().into_iter().collect();
    Module { dir: dir.to_owned(), files }
}

fn is_tf(name: &str) -> bool {
    Path::new(name).extension().is_some_and(|e| e.eq_ignore_ascii_case("tf"))
}

/// python-hcl2 keeps the quotes of block labels and string literals: `"aws_sns_topic"`.
fn unquote(s: &str) -> &str {
    s.strip_prefix('"').and_then(|s| s.strip_suffix('"')).unwrap_or(s)
}

/// python-hcl2's bookkeeping keys (`__is_block__`, `__comments__`…) are no part of the code.
fn is_meta(key: &str) -> bool {
    key.starts_with("__")
}

fn items(v: &Value) -> impl Iterator<Item = (&str, &Value)> {
    v.as_object().into_iter().flatten().filter(|(k, _)| !is_meta(k)).map(|(k, v)| (unquote(k), v))
}

impl Module {
    fn tf_files(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.files.iter().filter(|(n, _)| is_tf(n)).map(|(n, v)| (n.as_str(), v))
    }

    /// Every block of one kind (`variable`, `locals`, `resource`…), with its file.
    fn blocks(&self, kind: &str) -> Vec<(&str, &Value)> {
        self.tf_files()
            .flat_map(|(name, body)| {
                body[kind].as_array().into_iter().flatten().map(move |block| (name, block))
            })
            .collect()
    }

    /// `variable "NAME" {…}` bodies, by name.
    fn variables(&self) -> BTreeMap<String, &Value> {
        self.blocks("variable")
            .into_iter()
            .flat_map(|(_, block)| items(block))
            .map(|(name, body)| (name.to_owned(), body))
            .collect()
    }

    /// `resource "TYPE" "NAME" {…}` bodies of one type, by name.
    fn resources(&self, kind: &str) -> BTreeMap<String, &Value> {
        self.blocks("resource")
            .into_iter()
            .flat_map(|(_, block)| items(block))
            .filter(|(t, _)| *t == kind)
            .flat_map(|(_, named)| items(named))
            .map(|(name, body)| (name.to_owned(), body))
            .collect()
    }

    /// Every local value, by name, across the files.
    fn locals(&self) -> BTreeMap<String, &Value> {
        self.blocks("locals")
            .into_iter()
            .flat_map(|(_, block)| items(block))
            .map(|(name, value)| (name.to_owned(), value))
            .collect()
    }

    /// The text of a local: its expression, or for an object the JSON of its expressions.
    fn local_text(&self, name: &str) -> Option<String> {
        self.locals().get(name).map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
    }

    /// An expression followed by the text of every local it reaches, transitively: what
    /// "this attribute reads that file" is checked against, whichever local it goes through.
    fn closure(&self, expr: &str) -> String {
        let reference = Regex::new(r"\blocal\.([A-Za-z0-9_-]+)").unwrap();
        let mut seen: Vec<String> = Vec::new();
        let mut pending = vec![expr.to_owned()];
        let mut all = String::new();
        while let Some(text) = pending.pop() {
            for cap in reference.captures_iter(&text) {
                let name = cap[1].to_owned();
                if !seen.contains(&name) {
                    if let Some(t) = self.local_text(&name) {
                        pending.push(t);
                    }
                    seen.push(name);
                }
            }
            all.push_str(&text);
            all.push('\n');
        }
        all
    }

    /// Follows `${local.NAME}` while the expression is nothing else.
    fn through_locals(&self, expr: &str) -> String {
        let mut expr = expr.to_owned();
        for _ in 0..8 {
            let Some(name) = expr.strip_prefix("${local.").and_then(|s| s.strip_suffix('}')) else {
                break;
            };
            match self.local_text(name) {
                Some(next) if !name.contains(['.', '[', ' ']) => expr = next,
                _ => break,
            }
        }
        expr
    }
}

/// Every string in a parsed body (code only, not comments).
fn strings(v: &Value) -> Vec<&str> {
    match v {
        Value::String(s) => vec![s.as_str()],
        Value::Array(a) => a.iter().flat_map(strings).collect(),
        Value::Object(o) => o.iter().filter(|(k, _)| !is_meta(k)).flat_map(|(_, v)| strings(v)).collect(),
        _ => Vec::new(),
    }
}

fn attr<'a>(body: &'a Value, name: &str) -> Option<&'a str> {
    body.get(name).and_then(Value::as_str)
}

/// `path`, lexically normalised (`a/b/../c` is `a/c`), without touching the filesystem.
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

// === the checkers ===

/// Findings, one `check` per invariant.
#[derive(Default)]
struct Findings(Vec<String>);

impl Findings {
    fn check(&mut self, ok: bool, message: impl FnOnce() -> String) {
        if !ok {
            self.0.push(message());
        }
    }
}

fn assert_none(findings: &[String], what: &str) {
    assert!(findings.is_empty(), "{what}:\n- {}", findings.join("\n- "));
}

/// Every file()/templatefile()/fileset() names, as a string literal relative to
/// `${path.module}`, a file (or for fileset a directory with a match) inside the repository.
/// A path that ends in an interpolation (`${each.value}`) must be in a directory the module
/// lists with fileset(): the files it can name are the ones fileset finds.
fn file_findings(m: &Module) -> Vec<String> {
    let call = Regex::new(r"\b(file|templatefile|fileset)\(").unwrap();
    let literal = Regex::new(r#"\b(file|templatefile|fileset)\(\s*"([^"]*)"(?:\s*,\s*"([^"]*)")?"#).unwrap();
    let root = normalise(repo());
    let mut f = Findings::default();
    let mut calls = Vec::new();
    for (name, body) in m.tf_files() {
        for s in strings(body) {
            let literals: Vec<_> = literal.captures_iter(s).collect();
            f.check(literals.len() == call.find_iter(s).count(), || {
                format!("{name}: a file function whose path is not a string literal (the test cannot check it): {s}")
            });
            for cap in literals {
                let pattern = cap.get(3).map(|p| p.as_str().to_owned());
                calls.push((name, cap[1].to_owned(), cap[2].to_owned(), pattern));
            }
        }
    }
    f.check(!calls.is_empty(), || "the module reads no shipped file at all".to_owned());
    let listed: Vec<&str> = calls
        .iter()
        .filter(|(_, function, ..)| function == "fileset")
        .map(|(_, _, path, _)| path.as_str())
        .collect();
    for (name, function, path, pattern) in &calls {
        let Some(rel) = path.strip_prefix("${path.module}/") else {
            f.0.push(format!(
                "{name}: {function}(\"{path}\") must be relative to ${{path.module}}, or it breaks when run from elsewhere"
            ));
            continue;
        };
        let (rel, each) = match rel.rsplit_once('/') {
            Some((dir, last)) if last.starts_with("${") && !dir.contains("${") => (dir, true),
            _ => (rel, false),
        };
        f.check(!rel.contains("${"), || {
            format!("{name}: {function}(\"{path}\"): an interpolation the test cannot resolve")
        });
        let resolved = normalise(&m.dir.join(rel));
        f.check(resolved.starts_with(&root), || {
            format!("{name}: {function}(\"{path}\") leaves the repository")
        });
        if each {
            let dir = format!("${{path.module}}/{rel}");
            f.check(listed.contains(&dir.as_str()), || {
                format!("{name}: {function}(\"{path}\") names files of {dir}, which no fileset() lists")
            });
        } else if function == "fileset" {
            let pattern = pattern.as_deref().unwrap_or_default();
            let suffix = pattern.strip_prefix('*').unwrap_or_else(|| {
                panic!("{name}: fileset pattern {pattern:?}: the test only knows \"*SUFFIX\" patterns")
            });
            let matches = std::fs::read_dir(&resolved).map_or(0, |d| {
                d.filter(|e| e.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().ends_with(suffix)))
                    .count()
            });
            f.check(matches > 0, || {
                format!("{name}: fileset(\"{path}\", \"{pattern}\") matches no file ({})", resolved.display())
            });
        } else {
            f.check(resolved.is_file(), || {
                format!("{name}: {function}(\"{path}\") names no file ({})", resolved.display())
            });
        }
    }
    f.0
}

/// Every variable has a type and a non-empty description; the tfvars example sets only
/// declared variables, and every variable without a default.
fn variable_findings(m: &Module) -> Vec<String> {
    let mut f = Findings::default();
    let variables = m.variables();
    f.check(!variables.is_empty(), || "no variable declared".to_owned());
    for (name, body) in &variables {
        let description = attr(body, "description").map(unquote).unwrap_or_default();
        f.check(!description.trim().is_empty(), || format!("variable {name} has no description"));
        f.check(attr(body, "type").is_some_and(|t| !t.trim().is_empty()), || {
            format!("variable {name} has no type")
        });
    }
    if let Some(example) = m.files.get(TFVARS_EXAMPLE) {
        let set: Vec<&str> = items(example).map(|(k, _)| k).collect();
        for name in &set {
            f.check(variables.contains_key(*name), || {
                format!("{TFVARS_EXAMPLE} sets {name}, which is no variable")
            });
        }
        for (name, body) in &variables {
            f.check(body.get("default").is_some() || set.contains(&name.as_str()), || {
                format!("variable {name} is required but {TFVARS_EXAMPLE} does not set it")
            });
        }
    }
    f.0
}

/// The one rule groups namespace's data is exactly the shipped rule file, read with file().
fn rules_findings(m: &Module) -> Vec<String> {
    let expected = r#"${file("${path.module}/../amp/enawatch-rules.yaml")}"#;
    let namespaces = m.resources("aws_prometheus_rule_group_namespace");
    let mut f = Findings::default();
    f.check(namespaces.len() == 1, || {
        format!("expected one aws_prometheus_rule_group_namespace, found {:?}", namespaces.keys())
    });
    for (name, body) in namespaces {
        let data = m.through_locals(attr(body, "data").unwrap_or_default());
        f.check(data == expected, || {
            format!(
                "aws_prometheus_rule_group_namespace.{name}.data must be {expected} (the shipped {RULES}, not a copy), is {data}"
            )
        });
    }
    f.0
}

/// The Alertmanager definition is the shipped AMP configuration, read with file() and
/// unwrapped from its ACK resource, with nothing written inline.
fn alertmanager_findings(m: &Module) -> Vec<String> {
    let shipped = r#"file("${path.module}/../amp/alertmanagerdefinition.yaml")"#;
    let definitions = m.resources("aws_prometheus_alert_manager_definition");
    let mut f = Findings::default();
    f.check(definitions.len() == 1, || {
        format!("expected one aws_prometheus_alert_manager_definition, found {:?}", definitions.keys())
    });
    for (name, body) in definitions {
        let definition = attr(body, "definition").unwrap_or_default();
        let closure = m.closure(definition);
        f.check(closure.contains(shipped) && closure.contains(".spec.configuration"), || {
            format!(
                "aws_prometheus_alert_manager_definition.{name}.definition must come from \
                 yamldecode({shipped}).spec.configuration ({AMP_ALERTMANAGER}), is {definition}"
            )
        });
        for inline in ["alertmanager_config", "receivers", "sns_configs", "template_files"] {
            f.check(!closure.contains(inline), || {
                format!("aws_prometheus_alert_manager_definition.{name}: `{inline}` written in Terraform: read it from {AMP_ALERTMANAGER}")
            });
        }
    }
    f.0
}

/// Every `local.placeholders.KEY` an expression fills in occurs in the one file that
/// expression reads, and every placeholder is used: a placeholder renamed in deploy/ would
/// otherwise be left in place silently.
fn placeholder_findings(m: &Module) -> Vec<String> {
    let file = Regex::new(r#"\bfile\(\s*"\$\{path\.module\}/([^"]*)""#).unwrap();
    let used = Regex::new(r"\blocal\.placeholders\.([A-Za-z0-9_]+)").unwrap();
    let mut f = Findings::default();
    let placeholders: BTreeMap<String, String> = m
        .locals()
        .get("placeholders")
        .map(|p| {
            items(p)
                .map(|(k, v)| (k.to_owned(), unquote(v.as_str().unwrap_or_default()).to_owned()))
                .collect()
        })
        .unwrap_or_default();
    f.check(!placeholders.is_empty(), || "no local.placeholders map".to_owned());
    let mut unused: Vec<&String> = placeholders.keys().collect();
    for (name, body) in m.tf_files() {
        for s in strings(body) {
            let keys: Vec<String> = used.captures_iter(s).map(|c| c[1].to_owned()).collect();
            if keys.is_empty() {
                continue;
            }
            let files: Vec<PathBuf> = file.captures_iter(s).map(|c| normalise(&m.dir.join(&c[1]))).collect();
            if files.len() != 1 {
                f.0.push(format!("{name}: fills placeholders {keys:?} but reads {} files: {s}", files.len()));
                continue;
            }
            let content = std::fs::read_to_string(&files[0]).unwrap_or_default();
            for key in keys {
                unused.retain(|k| **k != key);
                match placeholders.get(&key) {
                    None => f.0.push(format!("{name}: local.placeholders.{key} is not defined")),
                    Some(needle) => f.check(content.contains(needle.as_str()), || {
                        format!(
                            "{name}: placeholder {key} ({needle:?}) does not occur in {}: the file changed, \
                             and the module would leave it unfilled",
                            files[0].display()
                        )
                    }),
                }
            }
        }
    }
    f.check(unused.is_empty(), || format!("placeholders defined but never filled in: {unused:?}"));
    f.0
}

/// `#checkov:skip=CHECK:reason`: every skip in the module's source says why.
fn skip_findings(sources: &[(String, String)]) -> Vec<String> {
    let skip = Regex::new(r"checkov:skip=([A-Z0-9_]+)(?::(.*))?").unwrap();
    let mut f = Findings::default();
    for (name, source) in sources {
        for cap in skip.captures_iter(source) {
            let reason = cap.get(2).map_or("", |r| r.as_str().trim());
            f.check(reason.len() >= 20, || {
                format!(
                    "{name}: checkov skip of {} without a reason (`#checkov:skip={}:why`)",
                    &cap[1], &cap[1]
                )
            });
        }
    }
    f.0
}

fn tf_sources(dir: &Path) -> Vec<(String, String)> {
    let mut sources: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "tf"))
        .map(|p| {
            (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    sources.sort();
    sources
}

// === checkov ===

/// What checkov counted.
#[derive(Debug)]
struct Scan {
    passed: u32,
    failed: u32,
    skipped: u32,
    report: String,
}

/// `checkov -d DIR` for Terraform. `--skip-download` keeps it off the network (otherwise it
/// fetches guideline links from its vendor's API at every run).
fn checkov(dir: &Path) -> Scan {
    let venv = Path::new(CHECKOV_VENV).join("bin/checkov");
    let program = if venv.is_file() { venv } else { PathBuf::from("checkov") };
    let out = Command::new(program)
        .arg("-d")
        .arg(dir)
        .args(["--framework", "terraform", "--compact", "--quiet", "--skip-download"])
        .output()
        .unwrap_or_else(|e| panic!("checkov (PyPI) is not installed: {CHECKOV_INSTALL}: {e}"));
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let summary = Regex::new(r"Passed checks: (\d+), Failed checks: (\d+), Skipped checks: (\d+)").unwrap();
    let Some(cap) = summary.captures(&report) else {
        panic!("checkov printed no summary (exit {:?}):\n{report}", out.status.code())
    };
    let scan = Scan {
        passed: cap[1].parse().unwrap(),
        failed: cap[2].parse().unwrap(),
        skipped: cap[3].parse().unwrap(),
        report: report.clone(),
    };
    // checkov exits 1 exactly when a check failed.
    assert_eq!(
        out.status.success(),
        scan.failed == 0,
        "checkov's exit status and summary disagree:\n{report}"
    );
    scan
}

// === the tests ===

fn module() -> Module {
    parse(&repo().join(MODULE))
}

#[test]
fn every_file_the_module_reads_exists() {
    let m = module();
    assert_none(&file_findings(&m), "deploy/terraform reads files that do not exist");
}

#[test]
fn every_variable_has_a_type_and_a_description() {
    let m = module();
    let variables = m.variables();
    for name in ["region", "identity", "cluster_name", "oidc_provider_arn", "grafana"] {
        assert!(variables.contains_key(name), "variable {name} is missing: {:?}", variables.keys());
    }
    assert_none(&variable_findings(&m), "deploy/terraform's variables");
}

#[test]
fn the_rules_namespace_reads_the_shipped_rule_file() {
    assert_none(&rules_findings(&module()), "the AMP rule groups namespace");
    // What it reads is what AMP takes: a plain rule file with the groups the ACK flavour
    // carries (package.rs runs promtool on both).
    let plain = load(RULES).remove(0);
    let amp = load(AMP_RULES).remove(0);
    let carried: yaml_serde::Value = yaml_serde::from_str(&text(&amp["spec"]["configuration"])).unwrap();
    assert!(plain["groups"].as_sequence().is_some_and(|g| !g.is_empty()), "{RULES} has no groups");
    assert_eq!(plain, carried, "{RULES} and the configuration of {AMP_RULES} differ");
}

#[test]
fn the_alertmanager_definition_reads_the_shipped_amp_configuration() {
    assert_none(&alertmanager_findings(&module()), "the AMP Alertmanager definition");
}

#[test]
fn every_placeholder_the_module_fills_in_occurs_in_its_file() {
    assert_none(&placeholder_findings(&module()), "placeholders");
    // The SNS receiver is the one the module fills in.
    assert!(read(AMP_ALERTMANAGER).contains("arn:aws:sns:REGION:ACCOUNT_ID:enawatch-alerts"));
}

#[test]
fn checkov_finds_no_failed_check_and_every_skip_has_a_reason() {
    let dir = repo().join(MODULE);
    assert_none(&skip_findings(&tf_sources(&dir)), "checkov skips");
    let scan = checkov(&dir);
    eprintln!("checkov: {} passed, {} failed, {} skipped", scan.passed, scan.failed, scan.skipped);
    assert_eq!(scan.failed, 0, "checkov failed checks in {MODULE}:\n{}", scan.report);
    // A scan that understood nothing passes nothing: the module has dozens of checked objects.
    assert!(scan.passed >= 40, "checkov passed only {} checks:\n{}", scan.passed, scan.report);
    let skips = tf_sources(&dir).iter().map(|(_, s)| s.matches("checkov:skip=").count()).sum::<usize>();
    assert_eq!(
        scan.skipped as usize, skips,
        "checkov skipped other checks than those written down:\n{}",
        scan.report
    );
}

// === the checkers fail on broken copies ===

/// Rewrites every string of the parsed module.
fn map_strings(v: &mut Value, f: &dyn Fn(&str) -> String) {
    match v {
        Value::String(s) => *s = f(s),
        Value::Array(a) => a.iter_mut().for_each(|v| map_strings(v, f)),
        Value::Object(o) => o.iter_mut().filter(|(k, _)| !is_meta(k)).for_each(|(_, v)| map_strings(v, f)),
        _ => {}
    }
}

fn mutated(what: &str, f: &dyn Fn(&str) -> String) -> Module {
    let mut m = module();
    let before = serde_json::to_string(&m.files).unwrap();
    m.files.values_mut().for_each(|v| map_strings(v, f));
    assert!(before != serde_json::to_string(&m.files).unwrap(), "the mutation ({what}) must apply");
    m
}

fn assert_flags(findings: &[String], needle: &str, what: &str) {
    assert!(
        findings.iter().any(|f| f.contains(needle)),
        "{what} must be reported (a finding naming {needle:?}); found {findings:?}"
    );
}

#[test]
fn the_checkers_fail_on_a_broken_module() {
    let m = mutated("a mistyped rules path", &|s| s.replace("enawatch-rules.yaml", "enawatch-rule.yaml"));
    assert_flags(&file_findings(&m), "enawatch-rule.yaml", "a file() path that does not exist");
    assert_flags(&rules_findings(&m), "enawatch-rule.yaml", "a rules namespace reading another file");

    let m = mutated("a dashboards directory moved", &|s| s.replace("/../grafana\"", "/../dashboards\""));
    assert_flags(&file_findings(&m), "fileset", "a fileset() of a missing directory");

    let m = mutated("an absolute path", &|s| s.replace("${path.module}/../iam/", "/etc/enawatch/iam/"));
    assert_flags(&file_findings(&m), "/etc/enawatch/iam/", "a path not relative to the module");

    let m = mutated("inline rules", &|s| {
        if s.contains("amp/enawatch-rules.yaml") {
            "\"groups: []\"".to_owned()
        } else {
            s.to_owned()
        }
    });
    assert_flags(&rules_findings(&m), "groups: []", "inline rule data");

    let m = mutated("an inline Alertmanager definition", &|s| {
        s.replace(
            r#"file("${path.module}/../amp/alertmanagerdefinition.yaml")"#,
            r#""alertmanager_config: {route: {receiver: sns}}""#,
        )
    });
    assert_flags(&alertmanager_findings(&m), "alertmanager_config", "an inline Alertmanager definition");

    let m = mutated("a renamed placeholder", &|s| {
        s.replace("arn:aws:sns:REGION:ACCOUNT_ID:enawatch-alerts", "arn:aws:sns:REGION:ACCOUNT_ID:alerts")
    });
    assert_flags(&placeholder_findings(&m), "sns_topic_arn", "a placeholder missing from its file");

    let mut m = module();
    let first = m.files.values_mut().find_map(|v| v.get_mut("variable")).expect("variables");
    let body = first[0].as_object_mut().unwrap().values_mut().next().unwrap();
    body.as_object_mut().unwrap().remove("description");
    body.as_object_mut().unwrap().remove("type");
    let findings = variable_findings(&m);
    assert_flags(&findings, "has no description", "a variable without a description");
    assert_flags(&findings, "has no type", "a variable without a type");

    let sources =
        vec![("x.tf".to_owned(), "resource \"a\" \"b\" {\n  #checkov:skip=CKV_AWS_26\n}\n".to_owned())];
    assert_flags(&skip_findings(&sources), "CKV_AWS_26", "a skip without a reason");
}

#[test]
fn checkov_fails_an_unencrypted_topic() {
    let dir = TempDir::new("tf");
    std::fs::write(dir.join("main.tf"), "resource \"aws_sns_topic\" \"plain\" {\n  name = \"plain\"\n}\n")
        .unwrap();
    let scan = checkov(&dir.0);
    assert!(scan.failed >= 1 && scan.report.contains("CKV_AWS_26"), "{scan:?}");
}
