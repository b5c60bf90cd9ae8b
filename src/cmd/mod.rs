//! The subcommands: the command line, and what each subcommand runs on top of the library.

pub mod analyze;
pub mod cli;
pub mod diagnose;
pub mod record;
pub mod runtime;
pub mod serve;
pub mod top;
