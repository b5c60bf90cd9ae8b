//! The Grafana dashboards under `deploy/grafana/` are valid, offline: every query parses
//! (`promtool check rules`, with Grafana's variables replaced by sample values), uses only
//! metrics that enawatch (or CoreDNS >= 1.11) exports, filters on the `cluster` and `node`
//! variables, never uses a window shorter than four 60 s scrapes, and no datasource is
//! hard-coded. The checkers themselves are tested on small broken dashboards, so they can fail.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use crate::support;

use enawatch::generate::rules::{self, Scope};
use enawatch::metrics::encode::Kind;

const ENA_UID: &str = "enawatch-ena-allowances";
const COREDNS_UID: &str = "enawatch-coredns";
const DNS_CLIENTS_UID: &str = "enawatch-dns-clients";

/// The DNS families decided in issue 12 (DESIGN.md's metric contract), which the DNS clients
/// dashboard reads. Listed here so the dashboard is checked whether or not this build of the
/// agent exports them yet; a name the agent does export is also in `NATIVE_FAMILIES`.
const DNS_CONTRACT: &[(&str, Kind)] = &[
    ("enawatch_dns_queries_total", Kind::Counter),
    ("enawatch_dns_failures_total", Kind::Counter),
    ("enawatch_dns_search_path_queries_total", Kind::Counter),
    ("enawatch_dns_response_seconds", Kind::Histogram),
    ("ena_linklocal_dns_unanswered_total", Kind::Counter),
    ("enawatch_capture_dropped_packets_total", Kind::Counter),
];

/// The sample names of a family: a histogram's are its `_bucket`, `_sum` and `_count`.
fn sample_names(name: &'static str, kind: Kind) -> Vec<String> {
    if kind == Kind::Histogram {
        ["_bucket", "_sum", "_count"].iter().map(|s| format!("{name}{s}")).collect()
    } else {
        vec![name.to_owned()]
    }
}

/// What the agent exports (its metric contract), its recording rules, and `up`: from the
/// crate itself, so the dashboards are checked against the one definition.
fn ena_names() -> Vec<String> {
    let families = enawatch::metrics::NATIVE_FAMILIES.iter().flat_map(|f| sample_names(f.name, f.kind));
    let dns = DNS_CONTRACT.iter().flat_map(|(name, kind)| sample_names(name, *kind));
    let recorded = rules::recordings().into_iter().map(|(name, _)| name);
    let mut names: Vec<String> = families.chain(dns).chain(recorded).chain(["up".to_owned()]).collect();
    names.sort();
    names.dedup();
    names
}

/// Recordings summed over a cluster's nodes: they have no `node` label to filter.
fn cluster_wide() -> Vec<String> {
    rules::recordings()
        .into_iter()
        .filter(|(_, scope)| *scope == Scope::Cluster)
        .map(|(name, _)| name)
        .collect()
}

/// CoreDNS >= 1.11 families, allowed in the CoreDNS dashboard only.
const COREDNS_METRICS: &[&str] = &[
    "coredns_dns_requests_total",
    "coredns_dns_responses_total",
    "coredns_dns_request_duration_seconds_bucket",
    "coredns_cache_hits_total",
    "coredns_cache_misses_total",
    "coredns_proxy_request_duration_seconds_bucket",
    "coredns_proxy_request_duration_seconds_count",
    "coredns_proxy_healthcheck_failures_total",
    "coredns_forward_healthcheck_broken_total",
    "coredns_build_info",
];

/// Families that CoreDNS 1.11 removed (replaced by `coredns_proxy_*`).
const COREDNS_REMOVED: &[&str] = &[
    "coredns_forward_requests_total",
    "coredns_forward_responses_total",
    "coredns_forward_request_duration_seconds",
    "coredns_forward_request_duration_seconds_bucket",
    "coredns_forward_request_duration_seconds_count",
    "coredns_forward_request_duration_seconds_sum",
];

/// The shortest hard-coded range window: four scrapes at 60 s.
const MIN_WINDOW_MS: u64 = 4 * 60 * 1000;

/// Words of PromQL that are not metric names: operators, modifiers, and aggregations (which
/// may be followed by `by (...)` rather than by their parenthesis).
#[rustfmt::skip]
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "atan2", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
    "group_right", "inf", "nan", "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
    "count_values", "bottomk", "topk", "quantile", "limitk", "limit_ratio",
];

/// Keywords followed by a parenthesised list of label names.
const LABEL_LISTS: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];

/// One PromQL query of a dashboard, with the title of the panel (or annotation) it belongs to.
#[derive(Debug)]
struct Query {
    panel: String,
    expr: String,
}

// ---------------------------------------------------------------------------------------------
// Extraction

/// Every panel, including those nested in (collapsed) rows.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: Option<&'a Value>, out: &mut Vec<&'a Value>) {
        for panel in list.and_then(Value::as_array).into_iter().flatten() {
            out.push(panel);
            walk(panel.get("panels"), out);
        }
    }
    let mut out = Vec::new();
    walk(dashboard.get("panels"), &mut out);
    out
}

fn title(v: &Value) -> &str {
    v.get("title").and_then(Value::as_str).unwrap_or("(untitled)")
}

fn is_row(panel: &Value) -> bool {
    panel.get("type").and_then(Value::as_str) == Some("row")
}

/// Every `targets[].expr` of every panel, and every annotation query.
fn queries(dashboard: &Value) -> Vec<Query> {
    let mut out = Vec::new();
    for panel in panels(dashboard) {
        for target in panel.get("targets").and_then(Value::as_array).into_iter().flatten() {
            if let Some(expr) = target.get("expr").and_then(Value::as_str) {
                out.push(Query { panel: title(panel).to_owned(), expr: expr.to_owned() });
            }
        }
    }
    let annotations = dashboard.pointer("/annotations/list").and_then(Value::as_array);
    for annotation in annotations.into_iter().flatten() {
        let expr = annotation.get("expr").or_else(|| annotation.pointer("/target/expr"));
        if let Some(expr) = expr.and_then(Value::as_str) {
            let name = annotation.get("name").and_then(Value::as_str).unwrap_or("(unnamed)");
            out.push(Query { panel: format!("annotation {name}"), expr: expr.to_owned() });
        }
    }
    out
}

/// Names of the dashboard's templating variables.
fn variable_names(dashboard: &Value) -> Vec<String> {
    let list = dashboard.pointer("/templating/list").and_then(Value::as_array);
    list.into_iter()
        .flatten()
        .filter_map(|v| v.get("name").and_then(Value::as_str))
        .map(str::to_owned)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Grafana variables

/// `(start, end, name)` of every `$name` and `${name}` / `${name:format}` in `expr`.
fn variable_uses(expr: &str) -> Vec<(usize, usize, &str)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(pos) = expr[from..].find('$').map(|p| from + p) {
        let after = &expr[pos + 1..];
        let (name, len) = if let Some(inner) = after.strip_prefix('{') {
            // `${name}` or `${name:format}`; an unclosed `${` is no variable.
            inner
                .find('}')
                .map_or(("", 0), |close| (inner[..close].split(':').next().unwrap_or_default(), close + 2))
        } else {
            let n = after.bytes().take_while(|c| c.is_ascii_alphanumeric() || *c == b'_').count();
            (&after[..n], n)
        };
        // `$1` in a regex replacement is not a variable.
        if !name.is_empty() && !name.starts_with(|c: char| c.is_ascii_digit()) {
            out.push((pos, pos + 1 + len, name));
        }
        from = pos + 1 + len;
    }
    out
}

/// The sample value a variable takes for the parse check; `None` if Grafana does not know it.
fn sample_value(name: &str, variables: &[String]) -> Option<&'static str> {
    match name {
        "__rate_interval" => Some("5m"),
        "__interval" => Some("1m"),
        "__range" => Some("1h"),
        "__interval_ms" => Some("60000"),
        "__range_s" => Some("3600"),
        "__range_ms" => Some("3600000"),
        _ if variables.iter().any(|v| v == name) => Some(".*"),
        _ => None,
    }
}

/// `expr` as Prometheus would receive it, with sample values for the variables (unknown ones
/// are left in place, so that promtool rejects them).
fn substitute(expr: &str, variables: &[String]) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut copied = 0;
    for (start, end, name) in variable_uses(expr) {
        if let Some(value) = sample_value(name, variables) {
            out.push_str(&expr[copied..start]);
            out.push_str(value);
            copied = end;
        }
    }
    out.push_str(&expr[copied..]);
    out
}

// ---------------------------------------------------------------------------------------------
// A PromQL lexer, just enough to find selectors, matchers and range windows

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok<'a> {
    /// Identifier, keyword, number or duration.
    Word(&'a str),
    /// A string literal's content.
    Str(&'a str),
    /// A Grafana variable outside a string.
    Var(&'a str),
    /// Punctuation and operators.
    Op(&'a str),
}

#[derive(Debug, Clone, Copy)]
struct Token<'a> {
    tok: Tok<'a>,
    start: usize,
    end: usize,
}

fn is_word_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b':' | b'.')
}

fn lex(expr: &str) -> Vec<Token<'_>> {
    let b = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let start = i;
        let tok = match b[i] {
            c if c.is_ascii_whitespace() => {
                i += 1;
                continue;
            }
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            quote @ (b'"' | b'\'' | b'`') => {
                i += 1;
                while i < b.len() && b[i] != quote {
                    i += if b[i] == b'\\' && quote != b'`' { 2 } else { 1 };
                }
                let content_end = i.min(b.len());
                i = (i + 1).min(b.len());
                Tok::Str(&expr[start + 1..content_end])
            }
            b'$' => {
                let (_, end, name) = variable_uses(&expr[i..])
                    .into_iter()
                    .next()
                    .filter(|(s, _, _)| *s == 0)
                    .unwrap_or((0, 1, ""));
                i += end;
                Tok::Var(name)
            }
            c if is_word_byte(c) => {
                while i < b.len() && is_word_byte(b[i]) {
                    i += 1;
                }
                Tok::Word(&expr[start..i])
            }
            _ => {
                let two = expr.get(i..i + 2);
                i += if matches!(two, Some("=~" | "!~" | "!=" | "==" | ">=" | "<=")) {
                    2
                } else {
                    expr[i..].chars().next().map_or(1, char::len_utf8)
                };
                Tok::Op(&expr[start..i])
            }
        };
        out.push(Token { tok, start, end: i });
    }
    out
}

/// A vector selector: its metric name (if any) and the tokens between its braces (if any).
#[derive(Debug)]
struct Selector<'a> {
    metric: Option<&'a str>,
    matchers: Option<Vec<Tok<'a>>>,
}

/// Index of the first `Op(close)` at or after `from`, or the end.
fn find_op(toks: &[Token<'_>], from: usize, close: &str) -> usize {
    toks[from..].iter().position(|t| t.tok == Tok::Op(close)).map_or(toks.len(), |p| from + p)
}

fn selectors<'a>(toks: &[Token<'a>]) -> Vec<Selector<'a>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let next = toks.get(i + 1).map(|t| t.tok);
        match toks[i].tok {
            Tok::Word(w) if LABEL_LISTS.contains(&w) && next == Some(Tok::Op("(")) => {
                i = find_op(toks, i, ")") + 1;
            }
            Tok::Word(w)
                if next == Some(Tok::Op("("))
                    || KEYWORDS.contains(&w.to_ascii_lowercase().as_str())
                    || w.starts_with(|c: char| c.is_ascii_digit() || c == '.') =>
            {
                i += 1;
            }
            Tok::Word(w) => {
                let mut matchers = None;
                i += 1;
                if next == Some(Tok::Op("{")) {
                    let close = find_op(toks, i, "}");
                    matchers = Some(toks[i + 1..close].iter().map(|t| t.tok).collect());
                    i = close + 1;
                }
                out.push(Selector { metric: Some(w), matchers });
            }
            Tok::Op("{") => {
                let close = find_op(toks, i, "}");
                out.push(Selector {
                    metric: None,
                    matchers: Some(toks[i + 1..close].iter().map(|t| t.tok).collect()),
                });
                i = close + 1;
            }
            _ => i += 1,
        }
    }
    out
}

/// The raw text of every `[...]` range or subquery window.
fn windows<'a>(expr: &'a str, toks: &[Token<'a>]) -> Vec<&'a str> {
    let mut out = Vec::new();
    for (i, t) in toks.iter().enumerate() {
        if t.tok == Tok::Op("[") {
            let close = find_op(toks, i, "]");
            let end = toks.get(close).map_or(expr.len(), |c| c.start);
            out.push(expr[t.end..end].trim());
        }
    }
    out
}

/// A Prometheus duration (`5m`, `1h30m`, `500ms`) in milliseconds.
fn duration_ms(text: &str) -> Option<u64> {
    let mut rest = text;
    let mut total = 0u64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 604_800_000,
            "y" => 31_536_000_000,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(unit)?)?;
        rest = &rest[unit_len..];
    }
    Some(total)
}

// ---------------------------------------------------------------------------------------------
// Checks: each returns the problems it finds, without the dashboard's name

fn has_filter(matchers: &[Tok<'_>], label: &str) -> bool {
    let wanted = [format!("${label}"), format!("${{{label}}}")];
    matchers.windows(3).any(|w| {
        matches!(w, [Tok::Word(l), Tok::Op("=~"), Tok::Str(v)] if *l == label && wanted.iter().any(|x| x == v))
    })
}

fn metric_problem(metric: &str, allowed: &[String]) -> Option<String> {
    if allowed.iter().any(|a| a == metric) {
        None
    } else if COREDNS_REMOVED.contains(&metric) {
        Some(format!("{metric} was removed in CoreDNS 1.11 (use coredns_proxy_*{{proxy_name=\"forward\"}})"))
    } else {
        Some(format!("metric {metric} is not one this dashboard may use ({})", allowed.join(", ")))
    }
}

fn window_problem(window: &str) -> Option<String> {
    let range = window.split_once(':').map_or(window, |(range, _step)| range).trim();
    match range {
        "$__rate_interval" | "${__rate_interval}" | "$__range" | "${__range}" => None,
        _ => match duration_ms(range) {
            Some(ms) if ms >= MIN_WINDOW_MS => None,
            Some(_) => Some(format!("window [{window}] is shorter than 4 scrapes of 60 s")),
            None => Some(format!("window [{window}]: use $__rate_interval, $__range or a duration >= 4m")),
        },
    }
}

/// Metric names, label filters, windows and variables of one query.
fn expression_problems(q: &Query, variables: &[String], allowed: &[String]) -> Vec<String> {
    let toks = lex(&q.expr);
    let mut problems = Vec::new();
    let cluster_wide = cluster_wide();
    for sel in selectors(&toks) {
        let name = sel.metric.unwrap_or("selector without a metric name");
        match sel.metric {
            Some(metric) => problems.extend(metric_problem(metric, allowed)),
            None => problems.push(format!("{name}: every selector must name its metric")),
        }
        let matchers = sel.matchers.unwrap_or_default();
        let per_node = !cluster_wide.iter().any(|c| Some(c.as_str()) == sel.metric);
        for label in ["cluster", "node"] {
            if label == "node" && !per_node {
                // Summed over the nodes: a node filter would hide it whenever one is chosen.
                if has_filter(&matchers, label) {
                    problems.push(format!("{name} has no node label: filtering it by node hides it"));
                }
                continue;
            }
            if !has_filter(&matchers, label) {
                problems.push(format!("{name} does not filter {label}=~\"${label}\""));
            }
        }
    }
    problems.extend(windows(&q.expr, &toks).into_iter().filter_map(window_problem));
    for (_, _, var) in variable_uses(&q.expr) {
        if sample_value(var, variables).is_none() {
            problems.push(format!("${var} is neither a Grafana global nor a variable of this dashboard"));
        }
    }
    problems.into_iter().map(|p| format!("panel \"{}\": {p} in `{}`", q.panel, q.expr)).collect()
}

/// Every `datasource` anywhere must be `{"type": "prometheus", "uid": "${datasource}"}`; the
/// datasource variable itself is exempt.
fn datasource_problems(dashboard: &Value) -> Vec<String> {
    fn walk(v: &Value, path: &str, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                if map.get("type").and_then(Value::as_str) == Some("datasource") && map.contains_key("name") {
                    return; // the datasource variable
                }
                for (key, child) in map {
                    let path = format!("{path}.{key}");
                    if key == "datasource" {
                        let uid = child.get("uid").and_then(Value::as_str);
                        let kind = child.get("type").and_then(Value::as_str);
                        if !matches!(uid, Some("${datasource}" | "$datasource")) || kind != Some("prometheus")
                        {
                            out.push(format!(
                                "{path} is {child}, not {{\"type\": \"prometheus\", \"uid\": \"${{datasource}}\"}}"
                            ));
                        }
                    }
                    walk(child, &path, out);
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(item, &format!("{path}[{i}]"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, "$", &mut out);
    for panel in panels(dashboard).into_iter().filter(|p| !is_row(p)) {
        if panel.get("datasource").is_none() {
            out.push(format!("panel \"{}\" has no datasource", title(panel)));
        }
    }
    for cruft in ["__inputs", "__requires", "__elements"] {
        if dashboard.get(cruft).is_some() {
            out.push(format!("export cruft: top-level {cruft}"));
        }
    }
    out
}

fn variable_query(v: &Value) -> &str {
    let q = v.get("query");
    q.and_then(Value::as_str).or_else(|| q.and_then(|q| q.get("query")).and_then(Value::as_str)).unwrap_or("")
}

/// The `datasource`, `cluster` and `node` variables exist and are set up as the queries need.
fn variable_problems(dashboard: &Value) -> Vec<String> {
    let list = dashboard.pointer("/templating/list").and_then(Value::as_array);
    let find = |name: &str| list.into_iter().flatten().find(|v| v["name"] == name);
    let mut out = Vec::new();
    let expect = [
        ("datasource", json!({"type": "datasource", "query": "prometheus"}), ""),
        (
            "cluster",
            json!({"type": "query", "includeAll": true, "allValue": ".*"}),
            "label_values(enawatch_build_info, cluster)",
        ),
        (
            "node",
            json!({"type": "query", "includeAll": true, "multi": true, "allValue": ".*"}),
            "label_values(enawatch_build_info{cluster=~\"$cluster\"}, node)",
        ),
    ];
    for (name, fields, query) in expect {
        let Some(var) = find(name) else {
            out.push(format!("templating variable `{name}` is missing"));
            continue;
        };
        for (key, want) in fields.as_object().into_iter().flatten() {
            if &var[key] != want {
                out.push(format!("variable `{name}`: {key} is {}, not {want}", var[key]));
            }
        }
        if !query.is_empty() && variable_query(var) != query {
            out.push(format!("variable `{name}`: query is {:?}, not {query:?}", variable_query(var)));
        }
    }
    out
}

fn panel_problems(panel: &Value, ids: &mut BTreeSet<u64>) -> Vec<String> {
    let name = title(panel);
    let mut out = Vec::new();
    match panel.get("id").and_then(Value::as_u64) {
        Some(id) if !ids.insert(id) => out.push(format!("panel \"{name}\": id {id} is used twice")),
        Some(_) => {}
        None => out.push(format!("panel \"{name}\" has no id")),
    }
    if is_row(panel) {
        return out;
    }
    let text = |key: &str| panel.get(key).and_then(Value::as_str).unwrap_or("").trim().is_empty();
    if text("title") || text("description") {
        out.push(format!("panel \"{name}\" needs a title and a description"));
    }
    let kind = panel.get("type").and_then(Value::as_str).unwrap_or("");
    if matches!(kind, "timeseries" | "stat") && panel.pointer("/fieldConfig/defaults/unit").is_none() {
        out.push(format!("panel \"{name}\" has no unit"));
    }
    let targets = panel.get("targets").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    if targets.is_empty() {
        out.push(format!("panel \"{name}\" has no query"));
    }
    let mut refs = BTreeSet::new();
    for t in targets {
        if t.get("expr").and_then(Value::as_str).is_none_or(|e| e.trim().is_empty()) {
            out.push(format!("panel \"{name}\": a target has no expr"));
        }
        if !refs.insert(t.get("refId").and_then(Value::as_str).unwrap_or("")) {
            out.push(format!("panel \"{name}\": refIds are not unique"));
        }
    }
    out
}

/// uid, title, schema version, and each panel's id, description, unit and queries.
fn structure_problems(dashboard: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for key in ["uid", "title"] {
        if dashboard.get(key).and_then(Value::as_str).is_none_or(|s| s.trim().is_empty()) {
            out.push(format!("dashboard has no {key}"));
        }
    }
    if dashboard["schemaVersion"] != 39 || dashboard["editable"] != true {
        out.push("dashboard must have schemaVersion 39 and editable true".to_owned());
    }
    let mut ids = BTreeSet::new();
    for panel in panels(dashboard) {
        out.extend(panel_problems(panel, &mut ids));
    }
    out
}

fn require_promtool() {
    match Command::new("promtool").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!("`promtool --version` failed: {}", String::from_utf8_lossy(&out.stderr)),
        Err(e) => panic!(
            "promtool is needed to check the dashboards' PromQL and cannot be run ({e}): install \
             Debian's `prometheus` package (scripts/test installs it)"
        ),
    }
}

/// Writes every query (variables substituted) as a recording rule and runs
/// `promtool check rules`; each error names the panel of the query that failed.
fn promtool_problems(queries: &[Query], variables: &[String]) -> Vec<String> {
    require_promtool();
    let dir = support::TempDir::new("dash");
    let path = dir.join("dashboard-rules.yml");
    let mut yaml = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let checked: Vec<String> = queries.iter().map(|q| substitute(&q.expr, variables)).collect();
    for (i, expr) in checked.iter().enumerate() {
        let quoted = Value::String(expr.clone()); // JSON strings are YAML double-quoted scalars
        writeln!(yaml, "      - record: dashboard_panel_{i}\n        expr: {quoted}").unwrap();
    }
    std::fs::write(&path, yaml).expect("write rule file");
    let out = Command::new("promtool").arg("check").arg("rules").arg(&path).output().expect("run promtool");
    if out.status.success() {
        return Vec::new();
    }
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let path = path.display().to_string();
    let mut problems: Vec<String> = text
        .lines()
        .filter_map(|line| {
            let (_, rest) = line.split_once("\"dashboard_panel_")?;
            let i: usize = rest.split_once('"')?.0.parse().ok()?;
            let message = line.trim().replace(&path, "rules");
            Some(format!("panel \"{}\": promtool: {message}\n    checked: {}", queries[i].panel, checked[i]))
        })
        .collect();
    if problems.is_empty() {
        problems.push(format!("promtool check rules failed: {text}"));
    }
    problems
}

fn allowed_metrics(dashboard: &Value) -> Vec<String> {
    let mut allowed = ena_names();
    if dashboard["uid"] == COREDNS_UID {
        allowed.extend(COREDNS_METRICS.iter().map(|m| (*m).to_owned()));
    }
    allowed
}

/// Every problem of one dashboard, each prefixed with `name`.
fn check_dashboard(name: &str, dashboard: &Value) -> Vec<String> {
    let variables = variable_names(dashboard);
    let allowed = allowed_metrics(dashboard);
    let queries = queries(dashboard);
    let mut problems = structure_problems(dashboard);
    problems.extend(variable_problems(dashboard));
    problems.extend(datasource_problems(dashboard));
    for q in &queries {
        problems.extend(expression_problems(q, &variables, &allowed));
    }
    if queries.is_empty() {
        problems.push("no queries".to_owned());
    } else {
        problems.extend(promtool_problems(&queries, &variables));
    }
    let label = format!("{name} ({})", title(dashboard));
    problems.into_iter().map(|p| format!("{label}: {p}")).collect()
}

/// Every shipped dashboard: (file name as `deploy/grafana/NAME`, its JSON).
fn shipped_dashboards() -> Vec<(String, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("read deploy/grafana").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|path| {
            let name = format!("deploy/grafana/{}", path.file_name().unwrap().to_string_lossy());
            let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{name}: {e}"));
            let dashboard = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: not JSON: {e}"));
            (name, dashboard)
        })
        .collect()
}

#[test]
fn dashboards_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana");
    let mut problems = Vec::new();
    let mut uids = Vec::new();
    for (name, dashboard) in &shipped_dashboards() {
        assert!(queries(dashboard).len() > 5, "{name}: expected a dashboard full of queries");
        problems.extend(check_dashboard(name, dashboard));
        uids.push(dashboard["uid"].as_str().unwrap_or_default().to_owned());
    }
    for uid in [ENA_UID, COREDNS_UID, DNS_CLIENTS_UID] {
        assert!(uids.iter().any(|u| u == uid), "no dashboard with uid {uid} in {}: {uids:?}", dir.display());
    }
    let unique: BTreeSet<&String> = uids.iter().collect();
    assert_eq!(unique.len(), uids.len(), "dashboard uids must be unique: {uids:?}");
    assert!(problems.is_empty(), "{} problem(s) in the dashboards:\n{}", problems.len(), problems.join("\n"));
}

/// A recording costs every node a share of each rule cycle (and its series): each one must be
/// read by a shipped alert, a shipped dashboard, or a recording that is.
#[test]
fn every_recording_is_read_by_an_alert_or_a_dashboard() {
    let rules: Vec<rules::Rule> = rules::groups().into_iter().flat_map(|g| g.rules).collect();
    let mut readers: Vec<String> =
        rules.iter().filter(|r| r.is_alert()).map(|r| r.expr().to_owned()).collect();
    for (_, dashboard) in &shipped_dashboards() {
        readers.extend(queries(dashboard).into_iter().map(|q| q.expr));
    }
    let reads = |text: &str, name: &str| lex(text).iter().any(|t| t.tok == Tok::Word(name));
    let mut unread: Vec<String> = rules::recordings().into_iter().map(|(name, _)| name).collect();
    // A recording read by a recording that is read counts; repeat until nothing changes.
    loop {
        let before = unread.len();
        let read: Vec<String> =
            unread.iter().filter(|name| readers.iter().any(|r| reads(r, name))).cloned().collect();
        for name in &read {
            let rule = rules.iter().find(|r| r.name() == name).unwrap();
            readers.push(rule.expr().to_owned());
        }
        unread.retain(|name| !read.contains(name));
        if unread.len() == before {
            break;
        }
    }
    assert!(unread.is_empty(), "recorded but read by no shipped alert or dashboard: {unread:?}");
}

// ---------------------------------------------------------------------------------------------
// The checkers catch what they must (a check that cannot fail proves nothing)

const OK: &str = r#"{cluster=~"$cluster", node=~"$node"}"#;

fn vars() -> Vec<String> {
    ["datasource", "cluster", "node"].map(str::to_owned).to_vec()
}

fn ds() -> Value {
    json!({"type": "prometheus", "uid": "${datasource}"})
}

fn query(panel: &str, expr: &str) -> Query {
    Query { panel: panel.to_owned(), expr: expr.to_owned() }
}

#[test]
fn extractor_walks_rows_and_annotations() {
    let dashboard = json!({
        "annotations": {"list": [{"name": "resets", "expr": "a_expr"}, {"name": "new", "target": {"expr": "t_expr"}}]},
        "panels": [
            {"type": "timeseries", "title": "Top", "targets": [{"expr": "top_a"}, {"expr": "top_b"}]},
            {"type": "row", "title": "Open row", "panels": []},
            {"type": "row", "title": "Closed row", "collapsed": true, "panels": [
                {"type": "stat", "title": "Nested", "targets": [{"expr": "nested"}]},
            ]},
        ],
    });
    let found: Vec<(String, String)> = queries(&dashboard).into_iter().map(|q| (q.panel, q.expr)).collect();
    let want = [
        ("Top", "top_a"),
        ("Top", "top_b"),
        ("Nested", "nested"),
        ("annotation resets", "a_expr"),
        ("annotation new", "t_expr"),
    ];
    assert_eq!(found, want.map(|(p, e)| (p.to_owned(), e.to_owned())));
}

#[test]
fn substitution_gives_prometheus_sample_values() {
    let expr = r#"rate(x{cluster=~"$cluster", node=~"${node:regex}"}[$__rate_interval]) * $__interval_ms"#;
    assert_eq!(substitute(expr, &vars()), r#"rate(x{cluster=~".*", node=~".*"}[5m]) * 60000"#);
    assert_eq!(substitute("increase(x[$__range]) / $__interval", &vars()), "increase(x[1h]) / 1m");
    // Unknown variables stay (promtool then rejects them), regex replacements are no variables.
    assert_eq!(
        substitute(r#"label_replace(x, "a", "$1", "b", "(.*)")[$nope]"#, &vars()),
        r#"label_replace(x, "a", "$1", "b", "(.*)")[$nope]"#
    );
}

#[test]
fn promtool_names_the_panel_of_a_broken_expression() {
    let good =
        query("Good panel", &format!("rate(ena_allowance_exceeded_packets_total{OK}[$__rate_interval])"));
    let bad =
        query("Broken panel", &format!("sum by (node) (rate(ena_allowance_exceeded_packets_total{OK}[5m])"));
    let undefined = query("Undefined variable", "rate(up[$oops])");
    assert!(promtool_problems(&[query("Good panel", &good.expr)], &vars()).is_empty());
    let problems = promtool_problems(&[good, bad, undefined], &vars());
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(problems[0].starts_with("panel \"Broken panel\": promtool:"), "{problems:#?}");
    assert!(problems[0].contains("parse error"), "{problems:#?}");
    assert!(problems[1].starts_with("panel \"Undefined variable\""), "{problems:#?}");
}

#[test]
fn datasource_checker_catches_hard_coded_datasources() {
    let clean = json!({
        "templating": {"list": [{"type": "datasource", "name": "datasource", "query": "prometheus"}]},
        "annotations": {"list": [{"datasource": ds(), "expr": "up"}]},
        "panels": [{"type": "row", "panels": [{"type": "stat", "datasource": ds(), "targets": [{"datasource": ds()}]}]}],
    });
    assert_eq!(datasource_problems(&clean), Vec::<String>::new());

    let bad = json!({
        "__inputs": [{"name": "DS_PROMETHEUS"}],
        "annotations": {"list": [{"datasource": {"type": "grafana", "uid": "-- Grafana --"}}]},
        "panels": [
            {"type": "stat", "title": "Hard", "datasource": {"type": "prometheus", "uid": "P1809F7CD0C75ACF3"}},
            {"type": "stat", "title": "Legacy", "datasource": ds(), "targets": [{"datasource": "Prometheus"}]},
            {"type": "stat", "title": "Input", "datasource": {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}},
            {"type": "stat", "title": "Missing"},
        ],
    });
    let problems = datasource_problems(&bad);
    let expect = [
        "$.annotations.list[0].datasource",
        "$.panels[0].datasource",
        "$.panels[1].targets[0].datasource",
        "$.panels[2].datasource",
        "panel \"Missing\" has no datasource",
        "export cruft: top-level __inputs",
    ];
    assert_eq!(problems.len(), expect.len(), "{problems:#?}");
    for (problem, start) in problems.iter().zip(expect) {
        assert!(problem.starts_with(start), "{problem} should start with {start}");
    }
}

#[test]
fn expression_checker_catches_metrics_filters_and_windows() {
    let ena = ena_names();
    let check = |expr: &str| expression_problems(&query("P", expr), &vars(), &ena);
    let fine = [
        format!("sum by (cluster, node) (rate(ena_allowance_exceeded_packets_total{OK}[$__rate_interval])) > 0"),
        format!("count(up{OK} == 0) or vector(0)"),
        format!("increase(ena_allowance_exceeded_seconds_total{OK}[15m]) and on (cluster, node) enawatch_build_info{OK}"),
        format!("max_over_time(ena:conntrack_allowance_available:min{OK}[1h:1m]) + 0.5"),
        format!("increase(enawatch_driver_resets_total{OK}[$__range])"),
    ];
    for expr in &fine {
        assert_eq!(check(expr), Vec::<String>::new(), "{expr}");
    }
    let bad = [
        (format!("rate(ena_allowance_exceeded_total{OK}[5m])"), "metric ena_allowance_exceeded_total"),
        (format!("rate(coredns_forward_requests_total{OK}[5m])"), "removed in CoreDNS 1.11"),
        (format!("rate(coredns_dns_requests_total{OK}[5m])"), "metric coredns_dns_requests_total"),
        (r#"rate(ena_allowance_exceeded_packets_total{cluster=~"$cluster"}[5m])"#.to_owned(), "node=~"),
        (r#"up{cluster="$cluster", node=~"$node"}"#.to_owned(), "cluster=~"),
        ("sum(enawatch_build_info)".to_owned(), "does not filter cluster"),
        (format!("rate(ena_allowance_exceeded_packets_total{OK}[30s])"), "shorter than 4 scrapes"),
        (format!("rate(ena_allowance_exceeded_packets_total{OK}[$__interval])"), "window [$__interval]"),
        (OK.to_owned(), "must name its metric"),
        (format!("rate(up{OK}[$window])"), "$window is neither"),
    ];
    for (expr, want) in &bad {
        let problems = check(expr);
        assert!(problems.iter().any(|p| p.contains(want)), "{expr}: wanted {want:?} in {problems:#?}");
    }
    // A recording summed over the nodes filters on the cluster only.
    let wide = rules::DNS_FAILURE_RATIO;
    assert!(cluster_wide().iter().any(|c| c == wide));
    assert_eq!(check(&format!(r#"{wide}{{cluster=~"$cluster"}} > 0"#)), Vec::<String>::new());
    let problems = check(&format!("{wide}{OK}"));
    assert!(problems.iter().any(|p| p.contains("has no node label")), "{problems:#?}");
    let problems = check(&format!("sum({wide})"));
    assert!(problems.iter().any(|p| p.contains("does not filter cluster")), "{problems:#?}");
}

#[test]
fn structure_and_variable_checkers_catch_missing_pieces() {
    let dashboard = json!({
        "uid": "", "title": "T", "schemaVersion": 38, "editable": true,
        "templating": {"list": [
            {"type": "datasource", "name": "datasource", "query": "prometheus"},
            {"type": "query", "name": "cluster", "includeAll": true, "allValue": ".*",
             "query": {"query": "label_values(enawatch_build_info, cluster)"}},
        ]},
        "panels": [
            {"id": 1, "type": "timeseries", "title": "No description", "targets": [{"expr": "x", "refId": "A"}],
             "fieldConfig": {"defaults": {"unit": "s"}}},
            {"id": 1, "type": "row", "title": "Same id", "panels": [
                {"id": 2, "type": "stat", "title": "S", "description": "d", "targets": [{"refId": "A"}]},
            ]},
        ],
    });
    let problems = [structure_problems(&dashboard), variable_problems(&dashboard)].concat();
    for want in [
        "dashboard has no uid",
        "schemaVersion 39",
        "panel \"No description\" needs a title and a description",
        "panel \"Same id\": id 1 is used twice",
        "panel \"S\" has no unit",
        "panel \"S\": a target has no expr",
        "templating variable `node` is missing",
    ] {
        assert!(problems.iter().any(|p| p.contains(want)), "wanted {want:?} in {problems:#?}");
    }
    assert!(!problems.iter().any(|p| p.contains("variable `cluster`")), "{problems:#?}");
}

#[test]
fn duration_parser() {
    assert_eq!(duration_ms("5m"), Some(300_000));
    assert_eq!(duration_ms("1h30m"), Some(5_400_000));
    assert_eq!(duration_ms("500ms"), Some(500));
    assert_eq!(duration_ms("4m"), Some(MIN_WINDOW_MS));
    assert_eq!(duration_ms(""), None);
    assert_eq!(duration_ms("5x"), None);
    assert_eq!(duration_ms("m"), None);
}
