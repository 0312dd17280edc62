//! Reading the server's own counters around a run: requests answered and SQL statements
//! run, per route, so a result says how many statements each request cost under load.

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{Read, Write};

/// Per route: (requests, SQL statements); and under `family:<name>` the sum of each cache
/// counter family.
pub type Counts = BTreeMap<String, (f64, f64)>;

/// Cache counters whose deltas a result records.
const CACHE_FAMILIES: [&str; 4] = [
    "percore_cache_l1_hits_total",
    "percore_cache_l1_misses_total",
    "percore_cache_l2_hits_total",
    "percore_cache_l2_misses_total",
];

/// Requests answered so far, over every route but the scrape's own.
pub fn requests_total(base: &str) -> Result<f64, String> {
    Ok(snapshot(base)?
        .iter()
        .filter(|(route, _)| !route.starts_with("family:") && route.as_str() != "metrics")
        .map(|(_, (requests, _))| requests)
        .sum())
}

/// `/metrics` summed over shards.
pub fn snapshot(base: &str) -> Result<Counts, String> {
    let host = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(host).map_err(|e| format!("scraping {base}/metrics: {e}"))?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut text = String::new();
    stream.read_to_string(&mut text).map_err(|e| e.to_string())?;
    Ok(parse(&text))
}

fn parse(text: &str) -> Counts {
    let mut counts = Counts::new();
    for line in text.lines() {
        if let Some(family) = CACHE_FAMILIES.iter().find(|f| line.starts_with(&format!("{f}{{"))) {
            let value: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
            counts.entry(format!("family:{family}")).or_default().0 += value;
            continue;
        }
        let slot = if line.starts_with("percore_http_requests_total{") {
            0
        } else if line.starts_with("percore_db_statements_total{") {
            1
        } else {
            continue;
        };
        let Some(route) = line.split("route=\"").nth(1).and_then(|r| r.split('"').next()) else {
            continue;
        };
        let value: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        let entry = counts.entry(route.to_string()).or_default();
        if slot == 0 {
            entry.0 += value;
        } else {
            entry.1 += value;
        }
    }
    counts
}

/// Requests and statements per request during the run, per route and overall.
pub fn delta(before: &Counts, after: &Counts) -> Value {
    let mut routes = serde_json::Map::new();
    let (mut requests, mut statements) = (0.0, 0.0);
    let change = |name: &str| {
        let key = format!("family:{name}");
        after.get(&key).map_or(0.0, |v| v.0) - before.get(&key).map_or(0.0, |v| v.0)
    };
    let ratio = |hits: f64, misses: f64| {
        if hits + misses > 0.0 {
            hits / (hits + misses)
        } else {
            0.0
        }
    };
    let (l1_hits, l1_misses) = (change(CACHE_FAMILIES[0]), change(CACHE_FAMILIES[1]));
    let (l2_hits, l2_misses) = (change(CACHE_FAMILIES[2]), change(CACHE_FAMILIES[3]));
    for (route, (r1, s1)) in after.iter().filter(|(k, _)| !k.starts_with("family:")) {
        let (r0, s0) = before.get(route).copied().unwrap_or_default();
        let (r, s) = (r1 - r0, s1 - s0);
        // The scrape itself is a request to `metrics`; leave ops routes out.
        if r <= 0.0 || route == "metrics" {
            continue;
        }
        requests += r;
        statements += s;
        routes.insert(route.clone(), json!({"requests": r, "statements_per_request": s / r}));
    }
    json!({
        "requests": requests,
        "statements_per_request": if requests > 0.0 { statements / requests } else { 0.0 },
        "routes": routes,
        "cache": {
            "l1_hits": l1_hits, "l1_misses": l1_misses, "l1_hit_ratio": ratio(l1_hits, l1_misses),
            "l2_hits": l2_hits, "l2_misses": l2_misses, "l2_hit_ratio": ratio(l2_hits, l2_misses),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_per_request_come_from_counter_deltas() {
        let before = parse("percore_http_requests_total{shard=\"0\",route=\"me\",status=\"200\"} 10\n");
        let after = parse(
            "percore_http_requests_total{shard=\"0\",route=\"me\",status=\"200\"} 30\n\
             percore_http_requests_total{shard=\"1\",route=\"me\",status=\"401\"} 10\n\
             percore_db_statements_total{shard=\"0\",route=\"me\",kind=\"read\"} 30\n",
        );
        let d = delta(&before, &after);
        assert_eq!(d["routes"]["me"]["requests"], json!(30.0));
        assert_eq!(d["routes"]["me"]["statements_per_request"], json!(1.0));
    }
}
