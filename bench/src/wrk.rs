//! Running wrk and reading its `--latency` report, and the facts recorded with every result.

use serde_json::{Value, json};
use std::process::Command;

/// Requests per second, latency percentiles and error lines from wrk's `--latency` report.
pub fn parse_wrk(text: &str) -> Value {
    let mut result = serde_json::Map::new();
    for line in text.lines().map(str::trim) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["Requests/sec:", rps] => {
                result.insert("requests_per_s".into(), json!(rps.parse::<f64>().unwrap_or(0.0)));
            }
            ["percentile", pct, micros] => {
                let micros: f64 = micros.parse().unwrap_or(0.0);
                result.insert(format!("latency_us_p{pct}"), json!(micros));
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

/// "10s", "2m" or "90" (seconds), as wrk takes durations.
pub fn seconds(text: &str) -> Option<std::time::Duration> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = number.parse().ok()?;
    let seconds = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return None,
    };
    Some(std::time::Duration::from_secs(seconds))
}

pub fn machine() -> Value {
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

pub fn git(args: &[&str]) -> Option<String> {
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
                    Non-2xx or 3xx responses: 3\nRequests/sec:  12345.67\npercentile 95 4321\n";
        let parsed = parse_wrk(text);
        assert_eq!(parsed["requests_per_s"], json!(12345.67));
        assert_eq!(parsed["latency_p99"], json!("5.00ms"));
        assert_eq!(parsed["errors"][0], json!("Non-2xx or 3xx responses: 3"));
        assert_eq!(parsed["latency_us_p95"], json!(4321.0));
    }
}
