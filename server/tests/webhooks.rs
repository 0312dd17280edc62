//! Webhook deliveries against a real HTTP receiver: signed, retried with growing delays
//! under one delivery id, logged, given up on after max_attempts, revived by
//! `percore jobs retry`.

mod common;

use common::Services;
use common::jobs::*;
use common::receivers::HttpReceiver;
use serde_json::{Value, json};
use std::time::Duration;

fn verify_signature(secret: &str, hit: &common::receivers::Hit) {
    use hmac::{KeyInit, Mac};
    let timestamp = hit.header("percore-timestamp").expect("timestamp header");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.{}", hit.body).as_bytes());
    let expected: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hit.header("percore-signature"), Some(format!("v1={expected}").as_str()));
}

#[test]
fn webhooks_retry_with_growing_delays_then_give_up_and_an_operator_can_retry() {
    let services = Services::start();
    let server = start(&services, FAST, "");
    let recovering = HttpReceiver::start(&[500, 500, 500], 200);
    let broken = HttpReceiver::start(&[], 500);
    let (_, token) = server.sign_up("Hooks");
    let subscribe = |url: String, events: Value| {
        let created = server.call(
            "POST",
            "/v1/webhooks",
            Some(&token),
            Some(&json!({"url": url, "events": events})),
        );
        assert_eq!(created.status, 201, "{}", created.text());
        created.json()
    };
    let paid = subscribe(recovering.url("/paid"), json!(["order.paid"]));
    let all = subscribe(broken.url("/all"), json!(["*"]));
    let secret = paid["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"));
    post_event(&server, &token, "order.shipped", 1); // only the "*" subscription
    post_event(&server, &token, "order.paid", 2);

    let hits = recovering.wait_hits(4, Duration::from_secs(30));
    assert_eq!(hits.len(), 4, "500, 500, 500, then 200");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(recovering.hits().len(), 4, "nothing after the 200");
    let delivery = hits[0].header("percore-delivery").unwrap().to_string();
    for hit in &hits {
        assert_eq!(
            hit.header("percore-delivery"),
            Some(delivery.as_str()),
            "one delivery id"
        );
        verify_signature(&secret, hit);
        let body: Value = serde_json::from_str(&hit.body).unwrap();
        assert_eq!(body["event"]["kind"], "order.paid");
        assert_eq!(body["event"]["payload"], json!({"n": 2}));
        assert_eq!(body["delivery_id"].to_string(), delivery);
    }
    let gaps: Vec<Duration> = hits.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(gaps[1] > gaps[0] && gaps[2] > gaps[1], "backoff grows: {gaps:?}");
    let log = server.call(
        "GET",
        &format!("/v1/webhooks/{}/deliveries", paid["id"]),
        Some(&token),
        None,
    );
    let log = log.json()["deliveries"].clone();
    let statuses: Vec<i64> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["status_code"].as_i64().unwrap())
        .collect();
    assert_eq!(statuses, vec![200, 500, 500, 500], "newest first: {log}");
    let delivery_id: i64 = delivery.parse().unwrap();
    let paid_job = wait_status(&server, &token, delivery_id, "done", Duration::from_secs(5));
    assert_eq!(paid_job["attempts"], 4);

    // The broken receiver got both events; each delivery ends dead after max_attempts (5).
    let broken_hits = broken.wait_hits(10, Duration::from_secs(60));
    assert_eq!(broken_hits.len(), 10, "two deliveries of five attempts");
    let mut dead_ids: Vec<i64> = broken_hits
        .iter()
        .map(|hit| hit.header("percore-delivery").unwrap().parse().unwrap())
        .collect();
    let dead_id = dead_ids[0];
    dead_ids.sort();
    dead_ids.dedup();
    assert_eq!(dead_ids.len(), 2, "one delivery id per event, kept across its attempts");
    // The receiver sees a fifth attempt before its job is marked dead: wait for each.
    for id in dead_ids {
        let dead = wait_status(&server, &token, id, "dead", Duration::from_secs(10));
        assert_eq!(dead["attempts"], 5);
        assert!(dead["error"].as_str().unwrap().contains("500"), "{dead}");
    }
    let listed = server.call("GET", "/v1/jobs?status=dead", Some(&token), None).json();
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 2);
    let all_log = server.call(
        "GET",
        &format!("/v1/webhooks/{}/deliveries?limit=100", all["id"]),
        Some(&token),
        None,
    );
    assert_eq!(all_log.json()["deliveries"].as_array().unwrap().len(), 10);

    // The operator fixes the receiver and retries the dead job from the command line.
    broken.set_default(200);
    let retry = std::process::Command::new(env!("CARGO_BIN_EXE_percore"))
        .arg("--config")
        .arg(server.dir.join("tuning.toml"))
        .args(["jobs", "retry", &dead_id.to_string()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&retry.stdout);
    assert!(
        retry.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&retry.stderr)
    );
    assert!(said.contains("queued again"), "{said}");
    let revived = wait_status(&server, &token, dead_id, "done", Duration::from_secs(10));
    assert_eq!(revived["attempts"], 1, "fresh attempts");
    let last = broken.hits().last().unwrap().clone();
    assert_eq!(last.header("percore-delivery"), Some(dead_id.to_string().as_str()));
    verify_signature(all["secret"].as_str().unwrap(), &last);
}

#[test]
fn a_receiver_that_never_answers_costs_one_timeout_per_attempt() {
    let services = Services::start();
    // Accepts connections and reads nothing back: each delivery must give up on its own.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let held = std::thread::spawn(move || silent.incoming().take(2).flatten().collect::<Vec<_>>());
    let port = common::free_port();
    let extra = format!("[jobs]\n{FAST}\nmax_attempts = 2\n[webhooks]\nallow_private = true\ntimeout_ms = 400\n");
    let text = common::Tuning {
        extra: &extra,
        ..common::Tuning::new(port, &services)
    }
    .render();
    let server = common::Server::start_with_config(port, &text, &[]);
    let (_, token) = server.sign_up("Silent");
    let url = format!("http://127.0.0.1:{silent_port}/hook");
    let hook = server.call(
        "POST",
        "/v1/webhooks",
        Some(&token),
        Some(&json!({"url": url, "events": ["*"]})),
    );
    assert_eq!(hook.status, 201, "{}", hook.text());
    post_event(&server, &token, "ping", 1);
    let log_path = format!("/v1/webhooks/{}/deliveries", hook.json()["id"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let attempts = loop {
        let log = server.call("GET", &log_path, Some(&token), None).json()["deliveries"].clone();
        if log.as_array().unwrap().len() == 2 || std::time::Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let attempts = attempts.as_array().unwrap();
    assert_eq!(attempts.len(), 2, "both attempts logged: {attempts:?}");
    for attempt in attempts {
        let waited = attempt["duration_ms"].as_i64().unwrap();
        assert!(
            (350..2_000).contains(&waited),
            "gave up after about timeout_ms: {attempt}"
        );
        assert!(attempt["status_code"].is_null(), "{attempt}");
        assert!(!attempt["error"].as_str().unwrap().is_empty(), "{attempt}");
    }
    let delivery_id = attempts[0]["delivery_id"].as_i64().unwrap();
    let dead = wait_status(&server, &token, delivery_id, "dead", Duration::from_secs(10));
    assert_eq!(dead["attempts"], 2);
    drop(held);
}
