//! `percore-bench`: where every claim about percore's speed is produced, repeatably.
//!
//! Its one job is to drive a running percore with a load generator and record what the
//! generator measured, with the exact command, the machine and the commit, as JSON. It
//! never judges a result: comparisons are ratios made from files it wrote in the same run.
//!
//!   percore-bench run plaintext|json|seed-mix|jobs [--url BASE] [--connections N]
//!                 [--duration 10s] [--depth 16] [--tokens FILE] [--wrk-cpu 0] [--out FILE]
//!                 [--rate 200] [--database-url URL]   (the last two: jobs only)
//!   percore-bench seed --database-url URL [--users 100000] [--events 1000000]
//!                 [--sessions 10000] [--tokens FILE]
//!
//! wrk runs pinned to `--wrk-cpu` (default 0) so that it stays off the shard cores.

mod jobs;
mod scrape;
mod seed;
mod wrk;

use serde_json::json;
use std::process::{Command, ExitCode};

const USAGE: &str = "usage: percore-bench run plaintext|json|seed-mix|jobs [--url BASE] [--connections N] [--duration 10s] \
                     [--depth 16] [--tokens FILE] [--wrk-cpu 0] [--out FILE] [--rate 200] [--database-url URL]\n       \
                     percore-bench seed --database-url URL [--users N] [--events N] [--sessions N] [--tokens FILE]";
const WORKLOADS: [&str; 4] = ["plaintext", "json", "seed-mix", "jobs"];
const TOKENS_DEFAULT: &str = "bench/results/seed-tokens.txt";

struct RunOptions {
    workload: String,
    base: String,
    connections: u32,
    duration: String,
    depth: u32,
    tokens: String,
    wrk_cpu: String,
    out: Option<String>,
    /// jobs: steady-phase jobs per second, and the database holding them.
    rate: u32,
    database_url: Option<String>,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.first().map(String::as_str) {
        Some("run") => parse_run(&args[1..]).map(|o| run(&o)),
        Some("seed") => parse_seed(&args[1..]).map(|(url, scale, tokens)| seed::seed(&url, &scale, &tokens)),
        _ => Err("the commands are `run` and `seed`".into()),
    };
    match outcome {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("percore-bench: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("percore-bench: {e}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// Flag/value pairs after the positional arguments.
fn flags(args: &[String]) -> Result<Vec<(&str, &str)>, String> {
    if !args.len().is_multiple_of(2) {
        return Err(format!("{} needs a value", args[args.len() - 1]));
    }
    Ok(args
        .chunks(2)
        .map(|pair| (pair[0].as_str(), pair[1].as_str()))
        .collect())
}

fn number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, String> {
    value.parse().map_err(|_| format!("{flag}: not a number: {value}"))
}

fn parse_run(args: &[String]) -> Result<RunOptions, String> {
    let workload = args.first().ok_or("which workload?")?;
    if !WORKLOADS.contains(&workload.as_str()) {
        return Err(format!("unknown workload {workload}"));
    }
    let mut options = RunOptions {
        workload: workload.clone(),
        base: "http://127.0.0.1:8080".into(),
        connections: 256,
        duration: "10s".into(),
        depth: 16,
        tokens: TOKENS_DEFAULT.into(),
        wrk_cpu: "0".into(),
        out: None,
        rate: 200,
        database_url: std::env::var("PERCORE_DATABASE_URL").ok(),
    };
    for (flag, value) in flags(&args[1..])? {
        match flag {
            "--url" => options.base = value.trim_end_matches('/').to_string(),
            "--connections" => options.connections = number(flag, value)?,
            "--duration" => options.duration = value.into(),
            "--depth" => options.depth = number(flag, value)?,
            "--tokens" => options.tokens = value.into(),
            "--wrk-cpu" => options.wrk_cpu = value.into(),
            "--out" => options.out = Some(value.into()),
            "--rate" => options.rate = number(flag, value)?,
            "--database-url" => options.database_url = Some(value.into()),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(options)
}

fn parse_seed(args: &[String]) -> Result<(String, seed::Scale, String), String> {
    let mut url = std::env::var("PERCORE_DATABASE_URL").ok();
    let mut scale = seed::Scale {
        users: 100_000,
        events: 1_000_000,
        sessions: 10_000,
    };
    let mut tokens = TOKENS_DEFAULT.to_string();
    for (flag, value) in flags(args)? {
        match flag {
            "--database-url" => url = Some(value.into()),
            "--users" => scale.users = number(flag, value)?,
            "--events" => scale.events = number(flag, value)?,
            "--sessions" => scale.sessions = number(flag, value)?,
            "--tokens" => tokens = value.into(),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if scale.users == 0 || scale.sessions == 0 {
        return Err("--users and --sessions must be at least 1".into());
    }
    let url = url.ok_or("--database-url (or PERCORE_DATABASE_URL) is required")?;
    Ok((url, scale, tokens))
}

fn run(options: &RunOptions) -> Result<(), String> {
    let scripts = concat!(env!("CARGO_MANIFEST_DIR"), "/wrk");
    let path = match options.workload.as_str() {
        "seed-mix" => "",
        "jobs" => "v1/jobs",
        workload => workload,
    };
    let url = format!("{}/{path}", options.base);
    let mut argv: Vec<String> = vec![
        "-c".into(),
        options.wrk_cpu.clone(),
        "wrk".into(),
        "-t1".into(),
        format!("-c{}", options.connections),
        format!("-d{}", options.duration),
        "--latency".into(),
        "-s".into(),
        format!("{scripts}/{}.lua", options.workload),
        url,
    ];
    match options.workload.as_str() {
        "plaintext" => argv.extend(["--".into(), options.depth.to_string()]),
        "seed-mix" | "jobs" => argv.extend(["--".into(), options.tokens.clone()]),
        _ => {}
    }
    let database_url = options.database_url.as_deref();
    let enqueue_mark = match (options.workload.as_str(), database_url) {
        ("jobs", Some(url)) => Some(jobs::mark(url)?),
        ("jobs", None) => return Err("jobs needs --database-url (or PERCORE_DATABASE_URL)".into()),
        _ => None,
    };
    let before = scrape::snapshot(&options.base)?;
    let output = Command::new("taskset")
        .args(&argv)
        .output()
        .map_err(|e| format!("running wrk via taskset: {e}"))?;
    let after = scrape::snapshot(&options.base)?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        return Err(format!(
            "wrk failed: {}{}",
            text,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let job_figures = match (enqueue_mark, database_url) {
        (Some(mark), Some(url)) => {
            let token = first_token(&options.tokens)?;
            let duration = wrk::seconds(&options.duration).ok_or("--duration: use e.g. 10s")?;
            jobs::measure(
                &jobs::Options {
                    base: &options.base,
                    database_url: url,
                    token: &token,
                    rate: options.rate,
                    duration,
                },
                mark,
            )?
        }
        _ => serde_json::Value::Null,
    };
    let result = json!({
        "workload": options.workload,
        "command": format!("taskset {}", argv.join(" ")),
        "machine": wrk::machine(),
        "commit": wrk::git(&["rev-parse", "HEAD"]),
        "wrk": wrk::parse_wrk(&text),
        "server": scrape::delta(&before, &after),
        "jobs": job_figures,
        "wrk_output": text,
    });
    let rendered = serde_json::to_string_pretty(&result).expect("JSON renders");
    match &options.out {
        Some(path) => std::fs::write(path, rendered).map_err(|e| format!("writing {path}: {e}"))?,
        None => println!("{rendered}"),
    }
    Ok(())
}

/// The first session token of a `seed` tokens file.
fn first_token(path: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"))?;
    text.lines()
        .nth(1)
        .and_then(|line| line.split(' ').next())
        .map(String::from)
        .ok_or_else(|| format!("{path} holds no token; run `percore-bench seed` first"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn refuses_unknown_workloads_and_bad_flags() {
        assert!(parse_run(&args("fortunes")).is_err());
        assert!(parse_run(&args("json --connections x")).is_err());
        assert!(parse_run(&args("json --connections")).is_err());
        assert_eq!(parse_run(&args("seed-mix --tokens t.txt")).unwrap().tokens, "t.txt");
        assert!(parse_seed(&args("--users 0 --database-url x")).is_err());
    }
}
