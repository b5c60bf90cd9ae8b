//! The `enawatch` command: parses arguments and maps outcomes to exit codes
//! (0 success, 1 runtime failure, 2 bad input).

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;
use enawatch::cli::{Cli, Command, DocTopic, ServeArgs};
use enawatch::config::Settings;
use enawatch::serve::{self, ServeError};
use enawatch::{docs, metrics};

fn main() -> ExitCode {
    // clap itself exits 2 on an unknown flag or a missing value.
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve_command(args),
        Command::Docs { topic } => {
            let text = match topic {
                DocTopic::Config => docs::config_reference(),
                DocTopic::Metrics => docs::metrics_table(),
            };
            print_stdout(&text)
        }
    }
}

fn serve_command(args: ServeArgs) -> ExitCode {
    let settings = match &args.config {
        Some(path) => match Settings::from_file(path) {
            Ok(file) => file.overridden_by(args.settings),
            Err(err) => return bad_input(&err),
        },
        None => args.settings,
    };
    let config = match settings.resolve() {
        Ok(config) => config,
        Err(err) => return bad_input(&err),
    };
    if args.check_config {
        // The effective configuration on stdout is itself a valid config file.
        eprintln!("enawatch: configuration ok");
        return print_stdout(&config.to_yaml());
    }
    init_logging(config.log_level, config.log_json);
    tracing::info!(version = metrics::VERSION, revision = metrics::REVISION, "enawatch starting");
    match serve::run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(ServeError::Config(err)) => bad_input(&err),
        Err(ServeError::Other(err)) => {
            tracing::error!(error = format!("{err:#}"), "enawatch failed");
            ExitCode::FAILURE
        }
    }
}

fn bad_input(err: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("enawatch: error: {err}");
    ExitCode::from(2)
}

fn print_stdout(text: &str) -> ExitCode {
    // A closed pipe (`enawatch docs config | head`) is not worth a panic.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    ExitCode::SUCCESS
}

fn init_logging(level: tracing::Level, json: bool) {
    let builder =
        tracing_subscriber::fmt().with_max_level(level).with_writer(std::io::stderr).with_target(false);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.with_ansi(false).init();
    }
}
