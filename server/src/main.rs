//! The `percore` command: `percore [--config PATH]` serves; `percore check-config [PATH]`
//! validates a tuning file and prints the effective configuration; `percore migrate` applies
//! pending schema migrations and exits; `percore jobs retry ID` puts a dead job back in its
//! queue.

use percore::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: percore [--config PATH] [serve]\n       percore [--config PATH] migrate\n       percore [--config PATH] jobs retry ID\n       percore check-config [PATH]";

/// What the command line asks for.
struct Invocation {
    command: String,
    config_path: Option<PathBuf>,
    job_to_retry: Option<i64>,
}

fn main() -> ExitCode {
    let invocation = match parse_args(std::env::args().skip(1)) {
        Ok(Some(invocation)) => invocation,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => return usage_error(&message),
    };
    let explicit = invocation.config_path.is_some();
    let path = invocation
        .config_path
        .clone()
        .unwrap_or_else(|| PathBuf::from("tuning.toml"));
    let config = match Config::load(&path, explicit) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("percore: bad configuration: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config.log.level);
    // The binary never provisions a service: serving and migrating need both URLs.
    if invocation.command != "check-config"
        && let Err((key, reason)) = config.require_services()
    {
        eprintln!("percore: bad configuration: {}: key `{key}`: {reason}", path.display());
        return ExitCode::from(2);
    }
    run_command(&invocation, &path, config)
}

/// `Ok(None)`: help was asked for.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Invocation>, String> {
    let mut config_path: Option<PathBuf> = None;
    let mut command = None;
    let mut positional = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" | "-c" => config_path = Some(args.next().ok_or("--config needs a PATH")?.into()),
            "-h" | "--help" => return Ok(None),
            "serve" | "check-config" | "migrate" | "jobs" if command.is_none() => command = Some(arg),
            _ if arg.starts_with('-') => return Err(format!("unknown option {arg}")),
            _ => positional.push(PathBuf::from(arg)),
        }
    }
    let command = command.unwrap_or_else(|| "serve".into());
    if command == "check-config" && config_path.is_none() {
        config_path = positional.pop();
    }
    let mut job_to_retry = None;
    if command == "jobs" {
        match positional.as_slice() {
            [verb, id] if verb.as_os_str() == "retry" => match id.to_string_lossy().parse::<i64>() {
                Ok(id) if id > 0 => job_to_retry = Some(id),
                _ => return Err("jobs retry needs a job id (a positive integer)".into()),
            },
            _ => return Err("jobs: the only subcommand is `retry ID`".into()),
        }
        positional.clear();
    }
    if !positional.is_empty() {
        return Err("unexpected arguments".into());
    }
    Ok(Some(Invocation {
        command,
        config_path,
        job_to_retry,
    }))
}

fn run_command(invocation: &Invocation, path: &std::path::Path, config: Config) -> ExitCode {
    let outcome = match invocation.command.as_str() {
        "check-config" => {
            println!("# {}: valid; effective configuration:", path.display());
            print!(
                "{}",
                toml::to_string_pretty(&config).expect("a parsed config serializes back")
            );
            Ok(())
        }
        "migrate" => percore::engine::start::migrate(&config.database).map(|outcome| {
            println!(
                "migrations: {} applied ({:?}), {} already applied",
                outcome.applied.len(),
                outcome.applied,
                outcome.already
            );
        }),
        "jobs" => {
            let id = invocation.job_to_retry.expect("parsed with the command");
            percore::engine::start::retry_job(&config.database, id).map(|done| println!("{done}"))
        }
        _ => percore::engine::start::run(config, path.to_path_buf()).inspect_err(|e| log::error!("{e}")),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("percore: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("percore: {message}\n{USAGE}");
    ExitCode::from(2)
}

/// `[log] level`, unless RUST_LOG says otherwise. The logger itself lets everything
/// through and the level is the global maximum, so a reload can raise or lower it.
fn init_logging(level: &str) {
    let mut builder = env_logger::Builder::new();
    builder.format_timestamp_millis();
    match std::env::var("RUST_LOG") {
        Ok(filters) => builder.parse_filters(&filters),
        Err(_) => builder.filter_level(log::LevelFilter::Trace),
    };
    builder.init();
    if std::env::var_os("RUST_LOG").is_none() {
        log::set_max_level(level.parse().unwrap_or(log::LevelFilter::Info));
    }
}
