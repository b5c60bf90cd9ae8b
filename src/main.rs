//! The `enawatch` command: parses arguments and maps outcomes to exit codes
//! (0 success, 1 runtime failure, 2 bad input).

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;
use enawatch::cmd::cli::{Cli, Command, DocTopic, Failure, ReportFormat, RulesAction, ServeArgs};
use enawatch::cmd::{analyze, diagnose, record, runtime, serve, top};
use enawatch::config::Settings;
use enawatch::generate::{readme, rules};
use enawatch::metrics;
use enawatch::source::simulate::Scenario;

fn main() -> ExitCode {
    // clap itself exits 2 on an unknown flag or a missing value.
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve_command(args),
        Command::Demo(args) => {
            init_logging(tracing::Level::INFO, false);
            serve::demo(&args.listen, &args.scenario)
        }
        Command::Top(args) => top::run(&args),
        Command::Record(args) => {
            init_logging(tracing::Level::INFO, false);
            record::run(&args)
        }
        Command::Analyze(args) => runtime::load_capture(&args.file, args.device.as_deref()).map(|capture| {
            let report = analyze::analyze(capture, &args.file.display().to_string());
            match args.format {
                ReportFormat::Text => print_stdout(&report.to_text()),
                ReportFormat::Json => {
                    print_stdout(&(serde_json::to_string_pretty(&report).expect("serializable") + "\n"));
                }
            }
        }),
        Command::Diagnose(args) => match diagnose::run(&args) {
            // Throttling found is an answer, not a failure: its own exit code, for scripts.
            Ok(true) => return ExitCode::from(3),
            other => other.map(|_| ()),
        },
        Command::Rules { action: RulesAction::Render { format, agents } } => {
            print_stdout(&rules::render_for(format, agents));
            Ok(())
        }
        Command::Docs { topic } => {
            print_stdout(&match topic {
                DocTopic::Config => readme::config_reference(),
                DocTopic::Metrics => readme::metrics_table(),
            });
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::BadInput(message)) => {
            eprintln!("enawatch: error: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(err)) => {
            eprintln!("enawatch: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve_command(args: ServeArgs) -> Result<(), Failure> {
    if args.source.simulate.as_deref() == Some("help") {
        print_stdout(&Scenario::help());
        return Ok(());
    }
    let settings = match &args.config {
        Some(path) => Settings::from_file(path)?.overridden_by(args.settings),
        None => args.settings,
    };
    let config = settings.resolve()?;
    if args.check_config {
        // The effective configuration on stdout is itself a valid config file.
        eprintln!("enawatch: configuration ok");
        print_stdout(&config.to_yaml());
        return Ok(());
    }
    init_logging(config.log_level, config.log_json);
    tracing::info!(version = metrics::VERSION, revision = metrics::REVISION, "enawatch starting");
    serve::run(&config, &args.source)
}

fn print_stdout(text: &str) {
    // A closed pipe (`enawatch docs config | head`) is not worth a panic.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
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
