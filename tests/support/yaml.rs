//! Reading the repository's YAML files for the manifest tests.

use std::path::Path;

use serde::Deserialize as _;
use yaml_serde::Value;

/// A file of the repository, by its path relative to the root.
pub fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every document of a (multi-document) YAML text, empty ones skipped.
pub fn documents(text: &str, origin: &str) -> Vec<Value> {
    yaml_serde::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{origin}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

/// Every document of a repository file.
pub fn load(rel: &str) -> Vec<Value> {
    documents(&read(rel), rel)
}

/// A scalar as text ("" when missing or not a scalar): `9417` and `"9417"` read the same.
pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => String::new(),
    }
}

/// A sequence's items (none when missing or not a sequence).
pub fn seq(v: &Value) -> &[Value] {
    v.as_sequence().map_or(&[], Vec::as_slice)
}
