//! What the binary generates for the repository: the rule files of `deploy/prometheus/`
//! (`enawatch rules render`) and the README's tables (`enawatch docs`). One source of truth:
//! tests fail when a checked-in copy is stale.

pub mod readme;
pub mod rules;
