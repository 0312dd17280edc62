//! The `percore` command: `percore [--config PATH]` serves; `percore check-config [PATH]`
//! validates a tuning file and prints the effective configuration; `percore migrate` applies
//! pending schema migrations and exits; `percore jobs retry ID` puts a dead job back in its
//! queue.

use percore::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: percore [--config PATH] [serve]\n       percore [--config PATH] migrate\n       percore [--config PATH] jobs retry ID\n       percore check-config [PATH]";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut config_path: Option<PathBuf> = None;
    let mut command = None;
    let mut positional = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" | "-c" => match args.next() {
                Some(path) => config_path = Some(path.into()),
                None => return usage_error("--config needs a PATH"),
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "serve" | "check-config" | "migrate" | "jobs" if command.is_none() => command = Some(arg),
            _ if arg.starts_with('-') => return usage_error(&format!("unknown option {arg}")),
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
                _ => return usage_error("jobs retry needs a job id (a positive integer)"),
            },
            _ => return usage_error("jobs: the only subcommand is `retry ID`"),
        }
        positional.clear();
    }
    if !positional.is_empty() {
        return usage_error("unexpected arguments");
    }
    let explicit = config_path.is_some();
    let path = config_path.unwrap_or_else(|| PathBuf::from("tuning.toml"));
    let config = match Config::load(&path, explicit) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("percore: bad configuration: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config.log.level);
    if command != "check-config"
        && let Err((key, reason)) = config.require_services()
    {
        eprintln!("percore: bad configuration: {}: key `{key}`: {reason}", path.display());
        return ExitCode::from(2);
    }
    match command.as_str() {
        "check-config" => {
            println!("# {}: valid; effective configuration:", path.display());
            print!(
                "{}",
                toml::to_string_pretty(&config).expect("a parsed config serializes back")
            );
            ExitCode::SUCCESS
        }
        "migrate" => match percore::engine::start::migrate(&config.database) {
            Ok(outcome) => {
                println!(
                    "migrations: {} applied ({:?}), {} already applied",
                    outcome.applied.len(),
                    outcome.applied,
                    outcome.already
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("percore: {e}");
                ExitCode::FAILURE
            }
        },
        "jobs" => {
            let id = job_to_retry.expect("parsed above");
            match percore::engine::start::retry_job(&config.database, id) {
                Ok(done) => {
                    println!("{done}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("percore: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => match percore::engine::start::run(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                log::error!("{e}");
                eprintln!("percore: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("percore: {message}\n{USAGE}");
    ExitCode::from(2)
}

fn init_logging(level: &str) {
    let env = env_logger::Env::default().default_filter_or(level);
    env_logger::Builder::from_env(env).format_timestamp_millis().init();
}
