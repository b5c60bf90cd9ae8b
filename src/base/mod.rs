//! The floor: the vocabulary and helpers every layer uses, and the one bounded way to read a
//! file the configuration names. Nothing here imports anything from the crate, so any
//! module may import it without closing a loop.

pub mod allowance;
pub mod duration;
pub mod field;
pub mod file;
pub mod node;
pub mod time;

pub use self::allowance::Allowance;
pub use self::duration::{parse_duration, HumanDuration};
pub use self::field::ConfigError;
pub use self::node::node_name;
pub use self::time::wall_ms;
