//! `percore-dev`: the local dev services, only when asked for (by `./dev run` and the
//! benchmark scripts). The `percore` binary never provisions anything.
//!
//! - `percore-dev env [--var DIR]`: starts (or reuses) a Postgres and a Redis under DIR
//!   (default `./var/`) and prints `export PERCORE_DATABASE_URL=…` and
//!   `export PERCORE_REDIS_URL=…` for a shell to `eval`, each only when the environment
//!   does not name that service already.
//! - `percore-dev stop [--var DIR]`: stops them (they are otherwise left running, so data
//!   and start-up speed survive between runs).

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: percore-dev env [--var DIR]\n       percore-dev stop [--var DIR]";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut command = None;
    let mut var = PathBuf::from("var");
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--var" => match args.next() {
                Some(dir) => var = dir.into(),
                None => return usage("--var needs a DIR"),
            },
            "env" | "stop" if command.is_none() => command = Some(arg),
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => return usage(&format!("unexpected argument {other}")),
        }
    }
    let outcome = match command.as_deref() {
        Some("env") => percore_testkit::dev::ensure(&var, &[]).map(|services| {
            for (name, url) in [
                ("PERCORE_DATABASE_URL", services.database_url),
                ("PERCORE_REDIS_URL", services.redis_url),
            ] {
                if std::env::var(name).is_ok_and(|set| !set.is_empty()) {
                    continue;
                }
                // Single-quoted for the shell: the URLs hold no quote.
                println!("export {name}='{url}'");
            }
        }),
        Some("stop") => percore_testkit::dev::stop(&var),
        _ => return usage("a command is needed"),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("percore-dev: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage(message: &str) -> ExitCode {
    eprintln!("percore-dev: {message}\n{USAGE}");
    ExitCode::from(2)
}
