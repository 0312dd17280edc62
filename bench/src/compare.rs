//! `percore-bench compare A.json B.json …`: per workload, each result's req/s and p99 and
//! its ratio to the first file's for that workload. Ratios only mean something between
//! files written in the same run on the same machine.

use serde_json::Value;

/// One result file's headline figures.
#[derive(Debug, Clone)]
pub struct Headline {
    pub file: String,
    pub workload: String,
    pub requests_per_s: f64,
    pub p99_ms: f64,
}

pub fn headline(file: &str, result: &Value) -> Headline {
    Headline {
        file: file.to_string(),
        workload: result["workload"].as_str().unwrap_or("?").to_string(),
        requests_per_s: result["wrk"]["requests_per_s"].as_f64().unwrap_or(0.0),
        p99_ms: result["wrk"]["latency_us_p99"].as_f64().unwrap_or(0.0) / 1000.0,
    }
}

pub fn load(files: &[String]) -> Result<Vec<(String, Value)>, String> {
    files
        .iter()
        .map(|file| {
            let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
            let value: Value = serde_json::from_str(&text).map_err(|e| format!("{file}: {e}"))?;
            Ok((file.clone(), value))
        })
        .collect()
}

/// The comparison as a text table.
pub fn table(results: &[(String, Value)]) -> String {
    let rows: Vec<Headline> = results.iter().map(|(file, value)| headline(file, value)).collect();
    let mut out = format!(
        "{:<16} {:>12} {:>10} {:>9} {:>9}  file\n",
        "workload", "req/s", "p99 ms", "× req/s", "× p99"
    );
    for row in &rows {
        let first = rows.iter().find(|r| r.workload == row.workload).expect("row itself");
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
        out.push_str(&format!(
            "{:<16} {:>12.0} {:>10.2} {:>9.2} {:>9.2}  {}\n",
            row.workload,
            row.requests_per_s,
            row.p99_ms,
            ratio(row.requests_per_s, first.requests_per_s),
            ratio(row.p99_ms, first.p99_ms),
            row.file
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ratios_are_against_the_first_file_of_the_same_workload() {
        let a = json!({"workload": "json", "wrk": {"requests_per_s": 100.0, "latency_us_p99": 2000.0}});
        let b = json!({"workload": "json", "wrk": {"requests_per_s": 150.0, "latency_us_p99": 1000.0}});
        let c = json!({"workload": "db", "wrk": {"requests_per_s": 10.0, "latency_us_p99": 5000.0}});
        let text = table(&[("a".into(), a), ("b".into(), b), ("c".into(), c)]);
        let line = |file: &str| text.lines().find(|l| l.ends_with(file)).unwrap().to_string();
        assert!(line("b").contains("1.50") && line("b").contains("0.50"), "{text}");
        assert!(line("c").contains("1.00"), "{text}");
    }
}
