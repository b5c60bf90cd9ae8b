//! The error every component reports about its configuration: which field, which value, what
//! is wrong. Components own their settings and their validation; the aggregator in
//! `config.rs` only collects them, so this lives below both.

/// A configuration error: which field, which value, what is wrong. Exits 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A field's value is invalid.
    #[error("{field}: {value:?} {problem}")]
    Invalid {
        /// Field (flag without dashes, or file key).
        field: &'static str,
        /// The value given.
        value: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The config file cannot be read or parsed.
    #[error("config file {path}: {problem}")]
    File {
        /// Path of the file.
        path: String,
        /// What is wrong (the parser names the field and the line).
        problem: String,
    },
}

impl ConfigError {
    /// A list of `len` `items` in `field`, longer than its `limit`: the error names all three.
    pub fn too_long(field: &'static str, len: usize, items: &str, limit: usize) -> Self {
        Self::Invalid {
            field,
            value: format!("{len} {items}"),
            problem: format!("is more than the limit of {limit}"),
        }
    }
}
