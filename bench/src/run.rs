//! `percore-bench run WORKLOAD`: wrk against a running server, with the server's own
//! counters read before and after.

use crate::{jobs, scrape, wrk};
use serde_json::{Value, json};
use std::process::Command;

/// Every workload `run` knows.
pub const WORKLOADS: [&str; 9] = [
    "plaintext",
    "json",
    "db",
    "queries",
    "fortunes",
    "updates",
    "cached-queries",
    "seed-mix",
    "jobs",
];

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub workload: String,
    pub base: String,
    pub connections: u32,
    pub duration: String,
    pub depth: u32,
    pub tokens: String,
    pub wrk_cpu: String,
    pub out: Option<String>,
    /// jobs: steady-phase jobs per second, and the database holding them.
    pub rate: u32,
    pub database_url: Option<String>,
    /// queries, updates, cached-queries: rows per request.
    pub rows: u32,
    /// The server's tuning file, recorded with the result.
    pub tuning: Option<String>,
    /// k6 to run the open-loop phases with (50% and 80% of the wrk rate), for this long;
    /// `None` skips them.
    pub k6: Option<(String, String)>,
    /// The built-in open loop (`paced.rs`) at 50% and 80% of the wrk rate, for this long;
    /// `None` skips it.
    pub paced: Option<std::time::Duration>,
    pub paced_connections: u32,
}

/// `k6` if it is on PATH.
pub fn k6_on_path() -> Option<String> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("k6"))
        .find(|k6| k6.is_file())
        .map(|k6| k6.to_string_lossy().into_owned())
}

/// Drives a running server with one workload and returns the result document.
pub fn run(options: &RunOptions) -> Result<Value, String> {
    let scripts = concat!(env!("CARGO_MANIFEST_DIR"), "/wrk");
    let rows = options.rows;
    let (path, script) = match options.workload.as_str() {
        "seed-mix" => (String::new(), "seed-mix"),
        "jobs" => ("v1/jobs".into(), "jobs"),
        "plaintext" => ("plaintext".into(), "plaintext"),
        "json" => ("json".into(), "json"),
        "queries" => (format!("queries?queries={rows}"), "get"),
        "updates" => (format!("updates?queries={rows}"), "get"),
        "cached-queries" => (format!("cached-queries?count={rows}"), "get"),
        workload => (workload.to_string(), "get"),
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
        format!("{scripts}/{script}.lua"),
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
    let pg_before = database_url.map(crate::pgstat::calls);
    let before = scrape::snapshot(&options.base)?;
    let sampler = crate::sample::Sampler::start(&options.base, std::time::Duration::from_secs(1));
    let output = Command::new("taskset")
        .args(&argv)
        .output()
        .map_err(|e| format!("running wrk via taskset: {e}"))?;
    let during = sampler.finish();
    let after = scrape::snapshot(&options.base)?;
    let pg_after = database_url.map(crate::pgstat::calls);
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
    let server = scrape::delta(&before, &after);
    let wrk_result = wrk::parse_wrk(&text);
    let open_loop = match &options.k6 {
        Some((k6, duration)) => crate::openloop::measure(
            options,
            k6,
            duration,
            wrk_result["requests_per_s"].as_f64().unwrap_or(0.0),
        )?,
        None => json!({ "unavailable": "k6 is not on PATH (or --open-loop off)" }),
    };
    let paced = match options.paced {
        Some(duration) => paced_open_loop(options, duration, wrk_result["requests_per_s"].as_f64().unwrap_or(0.0))?,
        None => json!({ "unavailable": "not asked for (--paced DURATION)" }),
    };
    let result = json!({
        "workload": options.workload,
        "command": format!("taskset {}", argv.join(" ")),
        "machine": wrk::machine(),
        "commit": wrk::git(&["rev-parse", "HEAD"]),
        "wrk": wrk_result,
        "open_loop": open_loop,
        "paced_open_loop": paced,
        "server": server,
        "pg_stat_statements": match (&pg_before, &pg_after) {
            (Some(b), Some(a)) => crate::pgstat::delta(b, a, server["requests"].as_f64().unwrap_or(0.0)),
            _ => json!({ "unavailable": "no --database-url" }),
        },
        "timeline": during["timeline"],
        "cpu_per_shard": during["cpu_per_shard"],
        "tuning": match &options.tuning {
            Some(path) => json!({"path": path, "text": std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?}),
            None => Value::Null,
        },
        "jobs": job_figures,
        "wrk_output": text,
    });
    Ok(result)
}

/// The built-in open loop at each share of the closed-loop rate.
fn paced_open_loop(options: &RunOptions, duration: std::time::Duration, saturation_rps: f64) -> Result<Value, String> {
    use crate::paced::{Mix, Plan, SHARES, Seeded};
    let mix = match options.workload.as_str() {
        "seed-mix" => Mix::SeedMix(Seeded::load(&options.tokens)?),
        "json" | "db" | "fortunes" => Mix::Get(format!("/{}", options.workload)),
        "queries" | "cached-queries" => Mix::Get(format!(
            "/{}?queries={}&count={}",
            options.workload, options.rows, options.rows
        )),
        other => return Ok(json!({ "unavailable": format!("no paced open loop for {other}") })),
    };
    let addr = options.base.trim_start_matches("http://");
    let runs: Vec<Value> = SHARES
        .iter()
        .map(|share| {
            let mut run = crate::paced::run(&Plan {
                addr,
                rate: (saturation_rps * share).max(1.0),
                duration,
                connections: options.paced_connections as usize,
                mix: &mix,
                cpu: options.wrk_cpu.parse().ok(),
            });
            run["share_of_saturation"] = json!(share);
            run
        })
        .collect();
    Ok(json!({ "saturation_per_s": saturation_rps, "duration_s": duration.as_secs_f64(), "runs": runs }))
}

/// The first session token of a `seed` tokens file.
pub fn first_token(path: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"))?;
    text.lines()
        .nth(1)
        .and_then(|line| line.split(' ').next())
        .map(String::from)
        .ok_or_else(|| format!("{path} holds no token; run `percore-bench seed` first"))
}
