//! `/openapi.json` describes what is served: the same routes as the router's table, and
//! schemathesis (from PyPI) generating requests from it against a real server finds no
//! server error and no response that breaks the document.

mod common;

use common::{Server, Services};
use percore::api::{router, routes::Access};
use std::collections::BTreeSet;
use std::process::Command;

#[test]
fn the_document_lists_exactly_the_public_and_user_routes() {
    let services = Services::start();
    let server = Server::start(&services, "");
    let served = server.get("/openapi.json");
    assert_eq!(served.status, 200);
    assert_eq!(served.header("content-type"), Some("application/json"));
    let spec = served.json();
    assert_eq!(spec["openapi"], "3.1.0");
    let mut documented = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let secured = operation.get("security").is_some();
            documented.insert((method.to_uppercase(), path.clone(), secured));
        }
    }
    let routed: BTreeSet<(String, String, bool)> = router::routes()
        .filter(|(_, _, access)| matches!(access, Access::Operator | Access::Public | Access::User))
        .map(|(method, path, access)| (method.as_str().to_string(), path.to_string(), access == Access::User))
        .collect();
    assert_eq!(
        documented, routed,
        "documented (left) vs routed (right), with whether auth is needed"
    );
}

/// Where the pinned schemathesis is: `./dev test` installs it and sets this.
fn schemathesis() -> String {
    std::env::var("PERCORE_SCHEMATHESIS").unwrap_or_else(|_| {
        panic!("PERCORE_SCHEMATHESIS is not set: run the tests with `./dev test`, which installs schemathesis")
    })
}

fn run_schemathesis(server: &Server, token: &str, operations: &[&str]) -> (bool, String) {
    let url = format!("http://127.0.0.1:{}/openapi.json", server.port);
    let output = Command::new(schemathesis())
        .args(["run", &url, "--max-examples", "60", "--no-color"])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(operations)
        .env("SCHEMATHESIS_HOOKS", "")
        .current_dir(&server.dir)
        .output()
        .expect("running schemathesis");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn schemathesis_finds_no_server_error_and_no_response_off_the_schema() {
    let services = Services::start();
    let server = Server::start(&services, "");
    let (_, token) = server.sign_up("Fuzz");
    // Every operation but logout first, so the token stays live; then logout on its own.
    let (ok, text) = run_schemathesis(
        &server,
        &token,
        &[
            "--exclude-operation-id",
            "logout",
            "--exclude-operation-id",
            "postJob",
            "--exclude-operation-id",
            "postWebhook",
        ],
    );
    assert!(ok, "schemathesis failed:\n{text}");
    // Two operations refuse some schema-valid requests by design, so "valid data is
    // accepted" cannot hold for them; every other check still runs. postJob: a reused
    // Idempotency-Key with another body is a 422 (the fuzzer reuses short keys).
    // postWebhook: a URL must reach a public host, which no schema can say.
    let (ok, text) = run_schemathesis(
        &server,
        &token,
        &[
            "--include-operation-id",
            "postJob",
            "--include-operation-id",
            "postWebhook",
            "--exclude-checks",
            "positive_data_acceptance",
        ],
    );
    assert!(ok, "schemathesis failed on postJob/postWebhook:\n{text}");
    let (ok, text) = run_schemathesis(&server, &token, &["--include-operation-id", "logout"]);
    assert!(ok, "schemathesis failed on logout:\n{text}");
    let metrics = server.get("/metrics").text();
    assert_eq!(common::metric_sum(&metrics, "percore_handler_panics_total", ""), 0);
    assert_eq!(
        common::metric_sum(&metrics, "percore_http_requests_total", "status=\"500\""),
        0
    );
    assert!(
        common::metric_sum(&metrics, "percore_http_requests_total", "route=\"me\"") > 0,
        "schemathesis reached the authenticated routes"
    );
}
