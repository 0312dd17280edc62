//! Open-loop latency: after a closed-loop (wrk) run has found what the server can do, k6
//! offers 50% and then 80% of that rate at a constant arrival rate, whatever the latency.
//! A closed loop slows down with the server and hides queueing; these are the honest
//! latency figures.

use crate::run::RunOptions;
use serde_json::{Value, json};
use std::process::Command;

/// The shares of the saturation rate that are measured.
pub const SHARES: [f64; 2] = [0.5, 0.8];

/// The k6 script and its environment for a workload, if k6 can drive it.
fn script(workload: &str) -> Option<(&'static str, Vec<(&'static str, String)>)> {
    match workload {
        "seed-mix" => Some(("seed-mix.js", vec![])),
        "plaintext" | "json" | "db" | "queries" | "fortunes" | "updates" | "cached-queries" => {
            Some(("techempower.js", vec![("WORKLOAD", workload.to_string())]))
        }
        _ => None,
    }
}

/// Runs `k6` at each share of `saturation_rps` for `duration`, pinned like wrk.
pub fn measure(options: &RunOptions, k6: &str, duration: &str, saturation_rps: f64) -> Result<Value, String> {
    let (workload, base, cpu) = (&options.workload, &options.base, &options.wrk_cpu);
    // k6 opens files relative to its script, not to our working directory.
    let tokens = match options.tokens.as_str() {
        "" => String::new(),
        path => std::path::absolute(path)
            .map_err(|e| format!("{path}: {e}"))?
            .display()
            .to_string(),
    };
    let rows = options.rows;
    let Some((file, env)) = script(workload) else {
        return Ok(json!({ "unavailable": format!("no k6 script for {workload}") }));
    };
    let path = format!("{}/k6/{file}", env!("CARGO_MANIFEST_DIR"));
    let mut runs = Vec::new();
    for share in SHARES {
        let rate = (saturation_rps * share).round().max(1.0) as u64;
        let summary = std::env::temp_dir().join(format!("percore-k6-{}-{rate}.json", std::process::id()));
        let mut command = Command::new("taskset");
        command
            .args(["-c", cpu, k6, "run", "--quiet", "--no-color"])
            .arg(format!("--summary-export={}", summary.display()))
            .args(["-e", &format!("BASE={base}"), "-e", &format!("RATE={rate}")])
            .args(["-e", &format!("DURATION={duration}"), "-e", &format!("ROWS={rows}")])
            .args(["-e", &format!("TOKENS={tokens}")]);
        for (key, value) in &env {
            command.args(["-e", &format!("{key}={value}")]);
        }
        let output = command.arg(&path).output().map_err(|e| format!("running k6: {e}"))?;
        let text = std::fs::read_to_string(&summary)
            .map_err(|e| format!("k6 wrote no summary ({e}): {}", String::from_utf8_lossy(&output.stderr)))?;
        let _ = std::fs::remove_file(&summary);
        let summary: Value = serde_json::from_str(&text).map_err(|e| format!("k6 summary: {e}"))?;
        let metrics = &summary["metrics"];
        let duration_ms = &metrics["http_req_duration"];
        let achieved = metrics["http_reqs"]["rate"].as_f64().unwrap_or(0.0);
        runs.push(json!({
            "share_of_saturation": share,
            "offered_per_s": rate,
            "achieved_per_s": achieved,
            // The offered rate was not kept up: by the server, or by k6 itself (k6 costs far
            // more CPU per request than wrk; on a small box it is often the limit). Latency
            // under a rate that was not achieved is not the latency at that rate.
            "rate_not_achieved": achieved < rate as f64 * 0.95,
            "latency_ms": {
                "p50": duration_ms["med"], "p90": duration_ms["p(90)"], "p95": duration_ms["p(95)"],
                "p99": duration_ms["p(99)"], "p99.9": duration_ms["p(99.9)"], "max": duration_ms["max"],
            },
            // Per tag, where the script sets thresholds on tagged submetrics: seed-mix's
            // logins (bound by Argon2 on purpose) apart from everything else.
            "latency_ms_by_tag": tagged_latencies(metrics),
            "failed_share": metrics["http_req_failed"]["value"],
            "dropped_iterations": metrics["dropped_iterations"]["count"].as_f64().unwrap_or(0.0),
            // k6 exits non-zero when a threshold (p95/p99 bounds, failures) is missed.
            "thresholds_met": output.status.success(),
            "command": format!("taskset -c {cpu} k6 run -e RATE={rate} … {path}"),
        }));
    }
    Ok(json!({ "saturation_per_s": saturation_rps, "runs": runs }))
}

/// `http_req_duration{tag:value}` submetrics of a k6 summary, as tag → percentiles.
fn tagged_latencies(metrics: &Value) -> Value {
    let Some(all) = metrics.as_object() else {
        return json!({});
    };
    let tagged = all.iter().filter_map(|(name, metric)| {
        let tag = name.strip_prefix("http_req_duration{")?.strip_suffix('}')?;
        Some((
            tag.to_string(),
            json!({ "p50": metric["med"], "p95": metric["p(95)"], "p99": metric["p(99)"], "max": metric["max"] }),
        ))
    });
    Value::Object(tagged.collect())
}
