//! `percore-bench`: where every claim about percore's speed is produced, repeatably.
//!
//! Its one job is to drive a running percore with a load generator and record what the
//! generator measured, with the exact command, the machine and the commit, as JSON. It
//! never judges a result: comparisons are ratios made from files it wrote in the same run.
//!
//!   percore-bench run plaintext|json [--url BASE] [--connections N] [--duration 10s]
//!                 [--depth 16] [--out results/NAME.json]
//!
//! wrk runs pinned to `--wrk-cpu` (default 0) so that it stays off the shard cores.

use serde_json::{Value, json};
use std::process::{Command, ExitCode};

struct Options {
    workload: String,
    base: String,
    connections: u32,
    duration: String,
    depth: u32,
    wrk_cpu: String,
    out: Option<String>,
}

fn main() -> ExitCode {
    match parse(std::env::args().skip(1).collect()) {
        Ok(options) => match run(&options) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("percore-bench: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!(
                "percore-bench: {e}\nusage: percore-bench run plaintext|json [--url BASE] [--connections N] [--duration 10s] [--depth 16] [--wrk-cpu 0] [--out FILE]"
            );
            ExitCode::from(2)
        }
    }
}

fn parse(args: Vec<String>) -> Result<Options, String> {
    let mut args = args.into_iter();
    if args.next().as_deref() != Some("run") {
        return Err("the only command is `run`".into());
    }
    let workload = args.next().ok_or("which workload?")?;
    if !["plaintext", "json"].contains(&workload.as_str()) {
        return Err(format!("unknown workload {workload}"));
    }
    let mut options = Options {
        workload,
        base: "http://127.0.0.1:8080".into(),
        connections: 256,
        duration: "10s".into(),
        depth: 16,
        wrk_cpu: "0".into(),
        out: None,
    };
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--url" => options.base = value.trim_end_matches('/').to_string(),
            "--connections" => options.connections = value.parse().map_err(|_| "--connections: a number")?,
            "--duration" => options.duration = value,
            "--depth" => options.depth = value.parse().map_err(|_| "--depth: a number")?,
            "--wrk-cpu" => options.wrk_cpu = value,
            "--out" => options.out = Some(value),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(options)
}

fn run(options: &Options) -> Result<(), String> {
    let scripts = concat!(env!("CARGO_MANIFEST_DIR"), "/wrk");
    let url = format!("{}/{}", options.base, options.workload);
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
    if options.workload == "plaintext" {
        argv.extend(["--".into(), options.depth.to_string()]);
    }
    let output = Command::new("taskset")
        .args(&argv)
        .output()
        .map_err(|e| format!("running wrk via taskset: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        return Err(format!(
            "wrk failed: {}{}",
            text,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let result = json!({
        "workload": options.workload,
        "command": format!("taskset {}", argv.join(" ")),
        "machine": machine(),
        "commit": git(&["rev-parse", "HEAD"]),
        "wrk": parse_wrk(&text),
        "wrk_output": text,
    });
    let rendered = serde_json::to_string_pretty(&result).expect("JSON renders");
    match &options.out {
        Some(path) => std::fs::write(path, rendered).map_err(|e| format!("writing {path}: {e}"))?,
        None => println!("{rendered}"),
    }
    Ok(())
}

/// Requests per second, latency percentiles and error lines from wrk's `--latency` report.
fn parse_wrk(text: &str) -> Value {
    let mut result = serde_json::Map::new();
    for line in text.lines().map(str::trim) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["Requests/sec:", rps] => {
                result.insert("requests_per_s".into(), json!(rps.parse::<f64>().unwrap_or(0.0)));
            }
            [pct, latency] if pct.ends_with('%') => {
                result.insert(format!("latency_p{}", pct.trim_end_matches('%')), json!(latency));
            }
            _ if line.starts_with("Non-2xx") || line.starts_with("Socket errors") => {
                result
                    .entry("errors")
                    .or_insert_with(|| json!([]))
                    .as_array_mut()
                    .expect("array")
                    .push(json!(line));
            }
            _ => {}
        }
    }
    Value::Object(result)
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|t| {
        t.lines()
            .find(|l| l.starts_with("model name"))
            .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
    });
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|s| s.trim().to_string()),
    })
}

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_latency_report() {
        let text = "  Latency Distribution\n     50%  1.10ms\n     99%  5.00ms\n  100 requests in 1.00s\n\
                    Non-2xx or 3xx responses: 3\nRequests/sec:  12345.67\n";
        let parsed = parse_wrk(text);
        assert_eq!(parsed["requests_per_s"], json!(12345.67));
        assert_eq!(parsed["latency_p99"], json!("5.00ms"));
        assert_eq!(parsed["errors"][0], json!("Non-2xx or 3xx responses: 3"));
    }

    #[test]
    fn refuses_unknown_workloads() {
        assert!(parse(vec!["run".into(), "fortunes".into()]).is_err());
        assert!(parse(vec!["run".into(), "json".into(), "--connections".into(), "x".into()]).is_err());
    }
}
