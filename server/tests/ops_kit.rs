//! The kit beside the binary (deploy/prometheus, deploy/grafana) stays true to the binary:
//! promtool checks and unit-tests the rules, every metric the rules, the dashboard and the
//! runbook name is in the `/metrics` of a server that has served every route, every
//! dashboard expression parses, and every alert has its runbook section.

mod common;

use common::{Services, Tuning};
use percore::api::{router, routes::Access};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo().join(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

fn promtool(args: &[&str]) -> String {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(repo())
        .output()
        .expect("promtool (apt-get install prometheus)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn promtool_checks_the_rules_and_the_scrape_config_and_passes_the_rule_unit_tests() {
    let checked = promtool(&["check", "rules", "deploy/prometheus/percore.rules.yml"]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    promtool(&["check", "config", "deploy/prometheus/prometheus.yml"]);
    let tested = promtool(&["test", "rules", "deploy/prometheus/percore.rules.test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// Words of `text` that name a metric percore exports (`percore_…`, `process_…`), and
/// words with a colon that name a recording (`level:metric:operation`). A word that ends
/// in `_` is a prefix in prose (`percore:objective_*`), not a name.
fn names_in(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut metrics, mut recordings) = (BTreeSet::new(), BTreeSet::new());
    for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')) {
        if word.ends_with('_') {
            continue;
        }
        if word.contains(':') && word.contains("percore") && !word.starts_with(':') && !word.ends_with(':') {
            recordings.insert(word.to_string());
        } else if word.starts_with("percore_") || word.starts_with("process_") {
            metrics.insert(word.to_string());
        }
    }
    (metrics, recordings)
}

/// The sample names of a `/metrics` answer.
fn sample_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| line.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

/// Every expression of the dashboard (targets and variable queries), with Grafana's
/// variables put in as PromQL would see them.
fn dashboard_expressions(dashboard: &Value) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let at = format!("panel {} ({}) {}", panel["id"], panel["title"], target["refId"]);
            found.push((at, target["expr"].as_str().unwrap().to_string()));
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = variable["query"]["query"].as_str() {
            // label_values(METRIC, LABEL) is Grafana's, not PromQL: check its metric.
            let metric = query
                .strip_prefix("label_values(")
                .and_then(|rest| rest.split(',').next())
                .unwrap_or_else(|| panic!("variable {}: {query}", variable["name"]));
            found.push((format!("variable {}", variable["name"]), metric.to_string()));
        }
    }
    let variables: BTreeSet<String> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    for (at, expr) in &mut found {
        *expr = expr.replace("$__rate_interval", "5m");
        for variable in &variables {
            *expr = expr.replace(&format!("${variable}"), ".*");
        }
        assert!(
            !expr.contains('$'),
            "{at}: a variable the dashboard does not define: {expr}"
        );
    }
    found
}

#[test]
fn every_metric_the_rules_the_dashboard_and_the_runbook_name_is_exported_and_every_query_parses() {
    let services = Services::start();
    let port = common::free_port();
    // A replica (the primary itself) so that the replica families have samples.
    let database = format!("replicas = [\"{}\"]", services.postgres.url);
    let server = Tuning {
        database: &database,
        ..Tuning::new(port, &services)
    }
    .start();
    let (_, token) = server.sign_up("ops");
    // One request of every route, whatever it answers: each route's families get samples.
    let mut served = 0;
    for (method, path, access) in router::routes() {
        if access == Access::DebugBuild {
            continue;
        }
        let path = path.replace("{id}", "1");
        let body = matches!(method.as_str(), "POST" | "PUT" | "PATCH").then(|| serde_json::json!({}));
        let answer = server.call(method.as_str(), &path, Some(&token), body.as_ref());
        assert!(answer.status < 500, "{method:?} {path}: {}", answer.status);
        served += 1;
    }
    assert!(served > 20, "{served} routes");
    let exposition = server.get("/metrics").text();
    let exported = sample_names(&exposition);
    // Every family, replicas' included, follows Prometheus' naming (base units, suffixes).
    if let Err(complaints) = common::promtool_check_metrics(exposition.as_bytes()) {
        panic!("promtool check metrics:\n{complaints}");
    }

    let rules = read("deploy/prometheus/percore.rules.yml");
    let dashboard_text = read("deploy/grafana/percore.json");
    let dashboard: Value = serde_json::from_str(&dashboard_text).expect("the dashboard is JSON");
    let expressions = dashboard_expressions(&dashboard);
    let recorded: BTreeSet<String> = rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- record: "))
        .map(str::to_string)
        .collect();

    let mut missing = Vec::new();
    let sources = [
        ("deploy/prometheus/percore.rules.yml", rules.clone()),
        (
            "deploy/prometheus/percore.rules.test.yml",
            read("deploy/prometheus/percore.rules.test.yml"),
        ),
        ("deploy/README.md", read("deploy/README.md")),
        (
            "deploy/grafana/percore.json",
            expressions
                .iter()
                .map(|(_, e)| e.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
        ),
    ];
    for (file, text) in &sources {
        let (metrics, recordings) = names_in(text);
        assert!(metrics.len() > 5 || *file == "deploy/README.md", "{file}: {metrics:?}");
        for metric in metrics.difference(&exported) {
            missing.push(format!("{file}: metric {metric}"));
        }
        for recording in recordings.difference(&recorded) {
            missing.push(format!("{file}: recording {recording}"));
        }
    }
    assert!(
        missing.is_empty(),
        "named but not exported (or not recorded):\n{}",
        missing.join("\n")
    );

    // Each dashboard expression as a recording rule: promtool parses every one.
    let mut generated = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in expressions.iter().enumerate() {
        generated.push_str(&format!(
            "      - record: dashboard:expression_{i}\n        expr: {}\n",
            serde_json::to_string(expr).unwrap()
        ));
    }
    let file = std::env::temp_dir().join(format!("percore-dashboard-{}.rules.yml", std::process::id()));
    std::fs::write(&file, &generated).unwrap();
    let checked = promtool(&["check", "rules", file.to_str().unwrap()]);
    std::fs::remove_file(&file).unwrap();
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", expressions.len())),
        "{checked}"
    );
}

#[test]
fn the_dashboard_is_a_grafana_dashboard_whose_panels_tile_without_overlap() {
    let dashboard: Value = serde_json::from_str(&read("deploy/grafana/percore.json")).unwrap();
    assert_eq!(dashboard["uid"], "percore");
    assert!(
        dashboard["schemaVersion"].as_u64().unwrap() >= 36,
        "Grafana 9+ dashboards"
    );
    let mut ids = BTreeSet::new();
    let mut boxes: Vec<(u64, u64, u64, u64, String)> = Vec::new();
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap().to_string();
        assert!(!title.is_empty());
        assert!(ids.insert(panel["id"].as_u64().unwrap()), "duplicate id: {title}");
        let grid = &panel["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| grid[k].as_u64().unwrap());
        assert!(x + w <= 24 && w > 0 && h > 0, "{title}: {grid}");
        for (ox, oy, ow, oh, other) in &boxes {
            let apart = x + w <= *ox || ox + ow <= x || y + h <= *oy || oy + oh <= y;
            assert!(apart, "{title} overlaps {other}");
        }
        boxes.push((x, y, w, h, title.clone()));
        match panel["type"].as_str().unwrap() {
            "row" => continue,
            "timeseries" | "stat" => {}
            other => panic!("{title}: panel type {other}"),
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            assert!(target["refId"].is_string() && target["expr"].is_string(), "{title}");
            queried += 1;
        }
    }
    assert!(queried >= 30, "{queried} queries");
}

#[test]
fn every_alert_has_a_summary_a_description_and_a_runbook_section() {
    let rules = read("deploy/prometheus/percore.rules.yml");
    let runbook = read("deploy/README.md");
    let anchors: BTreeSet<String> = runbook
        .lines()
        .filter_map(|line| line.strip_prefix("### "))
        .map(|heading| heading.trim().to_lowercase())
        .collect();
    let mut alerts = 0;
    for block in rules.split("- alert: ").skip(1) {
        let name = block.lines().next().unwrap().trim();
        let body: String = block.split("- record: ").next().unwrap().to_string();
        for key in ["summary:", "description:", "severity:"] {
            assert!(body.contains(key), "{name}: no {key}");
        }
        let url = body
            .lines()
            .find_map(|line| line.trim().strip_prefix("runbook_url: "))
            .unwrap_or_else(|| panic!("{name}: no runbook_url"));
        let anchor = url.trim_matches('"').strip_prefix("deploy/README.md#").unwrap();
        assert!(anchors.contains(anchor), "{name}: no runbook section #{anchor}");
        alerts += 1;
    }
    assert!(alerts >= 15, "{alerts} alerts");
}
