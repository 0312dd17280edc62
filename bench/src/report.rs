//! `percore-bench report FILES… -o report.html`: one self-contained HTML page (inline SVG,
//! no script, nothing fetched at view time) with the plots a reader needs: throughput and
//! p99 per result, latency percentile curves, throughput over time, CPU per shard, and the
//! commands and machines that produced them.

use serde_json::Value;
use std::fmt::Write;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 260.0;
const MARGIN: f64 = 48.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn label(file: &str, result: &Value) -> String {
    let name = std::path::Path::new(file)
        .file_stem()
        .map_or(file.into(), |s| s.to_string_lossy().into_owned());
    format!("{name} ({})", result["workload"].as_str().unwrap_or("?"))
}

/// A horizontal bar per (label, value).
fn bars(title: &str, unit: &str, items: &[(String, f64)]) -> String {
    let row = 26.0;
    let height = MARGIN + row * items.len() as f64 + 10.0;
    let max = items
        .iter()
        .map(|(_, v)| *v)
        .fold(0.0_f64, f64::max)
        .max(f64::MIN_POSITIVE);
    let left = 300.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" role=\"img\">\
         <text x=\"8\" y=\"20\" font-weight=\"bold\">{}</text>",
        escape(title)
    );
    for (i, (name, value)) in items.iter().enumerate() {
        let y = MARGIN + row * i as f64;
        let width = (WIDTH - left - 90.0) * value / max;
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" font-size=\"12\">{}</text>\
             <rect class=\"bar\" x=\"{left}\" y=\"{}\" width=\"{width:.1}\" height=\"{}\" fill=\"{}\"/>\
             <text x=\"{:.1}\" y=\"{}\" font-size=\"12\">{value:.1} {unit}</text>",
            left - 6.0,
            y + 14.0,
            escape(name),
            y + 2.0,
            row - 6.0,
            COLORS[i % COLORS.len()],
            left + width + 4.0,
            y + 14.0
        );
    }
    svg.push_str("</svg>");
    svg
}

/// One polyline per series of (x, y) points, on shared linear axes.
fn lines(title: &str, x_unit: &str, y_unit: &str, series: &[(String, Vec<(f64, f64)>)]) -> String {
    let points = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x_max, mut y_max) = (f64::MIN_POSITIVE, f64::MIN_POSITIVE);
    for (x, y) in points {
        x_max = x_max.max(*x);
        y_max = y_max.max(*y);
    }
    let plot_w = WIDTH - 2.0 * MARGIN;
    let plot_h = HEIGHT - 2.0 * MARGIN;
    let at = |x: f64, y: f64| (MARGIN + plot_w * x / x_max, HEIGHT - MARGIN - plot_h * y / y_max);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{}\" role=\"img\">\
         <text x=\"8\" y=\"20\" font-weight=\"bold\">{}</text>\
         <line x1=\"{MARGIN}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#888\"/>\
         <line x1=\"{MARGIN}\" y1=\"{MARGIN}\" x2=\"{MARGIN}\" y2=\"{}\" stroke=\"#888\"/>\
         <text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{x_max:.1} {x_unit}</text>\
         <text x=\"4\" y=\"{}\" font-size=\"11\">{y_max:.1} {y_unit}</text>",
        HEIGHT + 18.0 * series.len() as f64,
        escape(title),
        HEIGHT - MARGIN,
        WIDTH - MARGIN,
        HEIGHT - MARGIN,
        HEIGHT - MARGIN,
        WIDTH - MARGIN,
        HEIGHT - MARGIN + 16.0,
        MARGIN - 6.0,
    );
    for (i, (name, points)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = points
            .iter()
            .map(|(x, y)| {
                let (px, py) = at(*x, *y);
                format!("{px:.1},{py:.1}")
            })
            .collect();
        let _ = write!(
            svg,
            "<polyline class=\"series\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\
             <text x=\"{MARGIN}\" y=\"{}\" font-size=\"12\" fill=\"{color}\">{}</text>",
            path.join(" "),
            HEIGHT + 14.0 + 18.0 * i as f64,
            escape(name)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The whole page.
pub fn render(results: &[(String, Value)]) -> String {
    let named: Vec<(String, &Value)> = results.iter().map(|(f, v)| (label(f, v), v)).collect();
    let throughput: Vec<(String, f64)> = named
        .iter()
        .map(|(n, v)| (n.clone(), v["wrk"]["requests_per_s"].as_f64().unwrap_or(0.0)))
        .collect();
    let p99: Vec<(String, f64)> = named
        .iter()
        .map(|(n, v)| (n.clone(), v["wrk"]["latency_us_p99"].as_f64().unwrap_or(0.0) / 1000.0))
        .collect();
    // Percentile curves: x is the percentile's rank on a log scale of 1/(1-p), so the tail
    // gets room: 50 → 1, 90 → 2, 99 → 3, 99.9 → 4 (log10 of 1/(1-p) + 0.7).
    let percentiles: [(&str, f64); 5] = [("50", 0.5), ("90", 0.9), ("95", 0.95), ("99", 0.99), ("99.9", 0.999)];
    let curves: Vec<(String, Vec<(f64, f64)>)> = named
        .iter()
        .map(|(n, v)| {
            let points = percentiles
                .iter()
                .filter_map(|(key, p)| {
                    let us = v["wrk"][format!("latency_us_p{key}")].as_f64()?;
                    Some(((1.0 / (1.0 - p)).log10(), us / 1000.0))
                })
                .collect();
            (n.clone(), points)
        })
        .collect();
    let timelines: Vec<(String, Vec<(f64, f64)>)> = named
        .iter()
        .map(|(n, v)| {
            let points = v["timeline"]
                .as_array()
                .map(|t| {
                    t.iter()
                        .filter_map(|s| Some((s["t_s"].as_f64()?, s["requests_per_s"].as_f64()?)))
                        .collect()
                })
                .unwrap_or_default();
            (n.clone(), points)
        })
        .collect();
    let cpu: Vec<(String, f64)> = named
        .iter()
        .flat_map(|(n, v)| {
            v["cpu_per_shard"]
                .as_object()
                .map(|shards| {
                    shards
                        .iter()
                        .map(|(shard, share)| (format!("{n} {shard}"), share.as_f64().unwrap_or(0.0) * 100.0))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        })
        .collect();
    let mut page = String::from(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>percore benchmark report</title>\
         <style>body{font-family:sans-serif;margin:24px;max-width:800px}svg{display:block;margin:16px 0}\
         td,th{padding:2px 8px;text-align:left;font-size:13px}code{font-size:12px}</style></head><body>\
         <h1>percore benchmark report</h1>",
    );
    page.push_str(&bars("Throughput (higher is better)", "req/s", &throughput));
    page.push_str(&bars("p99 latency (lower is better)", "ms", &p99));
    page.push_str(&lines(
        "Latency percentiles (x: p50, p90, p95, p99, p99.9)",
        "log10 1/(1-p)",
        "ms",
        &curves,
    ));
    page.push_str(&lines("Throughput over time", "s", "req/s", &timelines));
    page.push_str(&bars("CPU per shard thread (share of one core)", "%", &cpu));
    for (title, key, unit) in [
        ("Soak: resident memory", "rss_mib", "MiB"),
        ("Soak: open file descriptors", "open_fds", "fds"),
        ("Soak: p99 latency per window (non-login)", "p99_ms", "ms"),
    ] {
        let series = soak_series(&named, |sample| sample[key].as_f64());
        if !series.is_empty() {
            page.push_str(&lines(title, "s", unit, &series));
        }
    }
    let errors = soak_series(&named, |sample| {
        Some(sample["errors"]["non_2xx"].as_f64()? + sample["errors"]["io"].as_f64()?)
    });
    if !errors.is_empty() {
        page.push_str(&lines(
            "Soak: errors per window (non-2xx and I/O)",
            "s",
            "errors",
            &errors,
        ));
    }
    page.push_str("<h2>Runs</h2><table><tr><th>result</th><th>commit</th><th>machine</th><th>command</th></tr>");
    for (name, value) in &named {
        let _ = write!(
            page,
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td><code>{}</code></td></tr>",
            escape(name),
            escape(value["commit"].as_str().unwrap_or("?")),
            escape(&value["machine"].to_string()),
            escape(value["command"].as_str().unwrap_or("?"))
        );
    }
    page.push_str("</table></body></html>\n");
    page
}

/// One line per soak result: (time, value) for each sample `value` reads.
fn soak_series(named: &[(String, &Value)], value: impl Fn(&Value) -> Option<f64>) -> Vec<(String, Vec<(f64, f64)>)> {
    named
        .iter()
        .filter_map(|(n, v)| {
            let samples = v["soak"]["samples"].as_array()?;
            let points = samples
                .iter()
                .filter_map(|s| Some((s["t_s"].as_f64()?, value(s)?)))
                .collect();
            Some((n.clone(), points))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_page_holds_one_plot_per_figure_and_escapes_what_it_quotes() {
        let result = json!({
            "workload": "json", "commit": "abc", "command": "wrk <x>",
            "wrk": {"requests_per_s": 1000.0, "latency_us_p50": 100.0, "latency_us_p99": 900.0, "latency_us_p99.9": 2000.0},
            "timeline": [{"t_s": 1.0, "requests_per_s": 990.0}, {"t_s": 2.0, "requests_per_s": 1010.0}],
            "cpu_per_shard": {"percore-shard-0": 0.5},
        });
        let page = render(&[("r/json-1.json".into(), result)]);
        assert_eq!(page.matches("<svg").count(), 5);
        assert_eq!(
            page.matches("class=\"series\"").count(),
            2,
            "a percentile curve and a timeline"
        );
        assert!(page.contains("1000.0 req/s") && page.contains("50.0 %"));
        assert!(page.contains("wrk &lt;x&gt;") && !page.contains("wrk <x>"));
        assert!(!page.contains("<script"), "nothing runs, nothing is fetched");
    }
}
