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
    // schemathesis 4.32.5 reads every string of a 2xx body as a possible link when it
    // infers links from Location headers, and crashes ("Invalid IPv6 URL") on one that
    // opens "http://[" — such as a display name it generated itself and the server echoes.
    // The other inference (from the schema's dependencies) stays on.
    let config = server.dir.join("schemathesis.toml");
    std::fs::write(
        &config,
        "[phases.stateful.inference]\nalgorithms = [\"dependency-analysis\"]\n",
    )
    .unwrap();
    let output = Command::new(schemathesis())
        .arg("--config-file")
        .arg(&config)
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

/// The snake_case string literal `text` opens with (after blanks), if any.
fn code_literal(text: &str) -> Option<&str> {
    let rest = text.trim_start().strip_prefix('"')?;
    let end = rest.find('"')?;
    let code = &rest[..end];
    (!code.is_empty() && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')).then_some(code)
}

/// Error codes the server's source can answer: `(status, "code"` as `ApiError::new` and the
/// HTTP layer's status table write them, `unavailable("code"` (always 503), and the codes
/// of `FieldError::new(field, "code"`. Test modules are left out.
fn codes_in_source() -> (BTreeSet<(u64, String)>, BTreeSet<String>) {
    fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    rust_files(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    let (mut codes, mut field_codes) = (BTreeSet::new(), BTreeSet::new());
    for file in files {
        let source = std::fs::read_to_string(&file).unwrap();
        let source = source.split("#[cfg(test)]").next().unwrap();
        for (at, _) in source.match_indices('(') {
            let rest = source[at + 1..].trim_start();
            let status = rest.get(..3).filter(|s| s.bytes().all(|b| b.is_ascii_digit()));
            let code = rest.get(3..).and_then(|r| code_literal(r.strip_prefix(',')?));
            if let (Some(status), Some(code)) = (status, code) {
                codes.insert((status.parse().unwrap(), code.to_string()));
            }
        }
        for (at, call) in source.match_indices("unavailable(") {
            if let Some(code) = code_literal(&source[at + call.len()..]) {
                codes.insert((503, code.to_string()));
            }
        }
        for (at, call) in source.match_indices("FieldError::new(") {
            let args = &source[at + call.len()..];
            let code = args.find(',').and_then(|comma| code_literal(&args[comma + 1..]));
            let code = code.unwrap_or_else(|| panic!("{file:?}: write FieldError::new's code as a literal"));
            field_codes.insert(code.to_string());
        }
    }
    (codes, field_codes)
}

#[test]
fn the_documented_error_codes_are_exactly_those_the_server_can_answer() {
    let spec: serde_json::Value = serde_json::from_str(percore::api::OPENAPI_JSON).unwrap();
    let listed =
        |key: &str| -> Vec<serde_json::Value> { spec["x-error-codes"][key].as_array().cloned().unwrap_or_default() };
    let documented: BTreeSet<(u64, String)> = listed("codes")
        .iter()
        .map(|c| (c["status"].as_u64().unwrap(), c["code"].as_str().unwrap().to_string()))
        .collect();
    let documented_fields: BTreeSet<String> = listed("field_codes")
        .iter()
        .map(|c| c["code"].as_str().unwrap().to_string())
        .collect();
    for entry in listed("codes").iter().chain(&listed("field_codes")) {
        let meaning = entry["meaning"].as_str().unwrap_or_default();
        assert!(meaning.len() > 10, "{entry}: say what it means");
    }
    let (codes, field_codes) = codes_in_source();
    assert!(
        codes.len() > 20 && field_codes.len() > 3,
        "the scan finds codes: {codes:?} {field_codes:?}"
    );
    assert_eq!(documented, codes, "x-error-codes (left) vs the source (right)");
    assert_eq!(
        documented_fields, field_codes,
        "x-error-codes.field_codes (left) vs the source (right)"
    );
}
