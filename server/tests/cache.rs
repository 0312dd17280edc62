//! The shard cache against real Redis and Postgres: the hit path costs nothing remote,
//! writes are seen on every shard of every process the moment they return, a cold key is
//! loaded once however many ask, and a revoked token dies everywhere before logout's 204.

mod common;

use common::{Server, Services, metric_sum};
use serde_json::json;
use std::sync::{Arc, Barrier};

fn one_shard(services: &Services) -> Server {
    let port = common::free_port();
    let text = common::Tuning {
        server: "shards = 1",
        ..common::Tuning::new(port, services)
    }
    .render();
    Server::start_with_config(port, &text, &[])
}

fn second_process(services: &Services) -> Server {
    let port = common::free_port();
    Server::start_with_config(port, &common::Tuning::new(port, services).render(), &[])
}

/// Waits until every shard of `server` hears invalidations (L1 is used only then).
fn wait_subscribed(server: &Server, shards: u64) {
    for _ in 0..100 {
        if metric_sum(&server.get("/metrics").text(), "percore_cache_subscribed", "") == shards {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("shards did not subscribe: {}", server.get("/metrics").text());
}

fn statements(server: &Server, route: &str) -> u64 {
    metric_sum(
        &server.get("/metrics").text(),
        "percore_db_statements_total",
        &format!("route=\"{route}\""),
    )
}

fn redis_commands(server: &Server) -> u64 {
    metric_sum(&server.get("/metrics").text(), "percore_redis_commands_total", "")
}

#[test]
fn after_one_warm_read_a_thousand_reads_of_me_cost_no_sql_and_no_redis() {
    let services = Services::start();
    let server = one_shard(&services);
    wait_subscribed(&server, 1);
    let (_, token) = server.sign_up("Hot");
    let stream = server.connect();
    let request = common::api_request("GET", "/v1/me", Some(&token), None);
    let warm = common::request_on(&stream, &request);
    assert_eq!(warm.status, 200);
    let warm = common::request_on(&stream, &request);
    let (sql_before, redis_before) = (statements(&server, "me"), redis_commands(&server));
    for _ in 0..1000 {
        let response = common::request_on(&stream, &request);
        assert_eq!(response.status, 200);
        assert_eq!(response.body, warm.body);
    }
    assert_eq!(
        statements(&server, "me") - sql_before,
        0,
        "SQL statements on the hit path"
    );
    assert_eq!(redis_commands(&server) - redis_before, 0, "Redis calls on the hit path");
    let hits = metric_sum(&server.get("/metrics").text(), "percore_cache_l1_hits_total", "");
    assert!(hits >= 2000, "session and view hits: {hits}");
}

#[test]
fn a_prefs_write_is_seen_by_every_shard_of_every_process_when_it_returns() {
    let services = Services::start();
    let a = Server::start(&services, "");
    let b = second_process(&services);
    wait_subscribed(&a, 2);
    wait_subscribed(&b, 2);
    let (_, token) = a.sign_up("Everywhere");
    let t = Some(token.as_str());
    // Warm both shards of both processes: connections spread over shards.
    for server in [&a, &b] {
        for _ in 0..30 {
            assert_eq!(server.call("GET", "/v1/me", t, None).status, 200);
        }
        let metrics = server.get("/metrics").text();
        for shard in 0..2 {
            let hits = metric_sum(
                &metrics,
                &format!("percore_cache_l1_hits_total{{shard=\"{shard}\"}}"),
                "",
            );
            assert!(hits > 0, "shard {shard} never served from memory: {metrics}");
        }
    }
    for theme in ["dark", "light", "system", "dark"] {
        let prefs = json!({"locale": "en", "timezone": "UTC", "theme": theme, "email_opt_in": false});
        assert_eq!(a.call("PUT", "/v1/me/prefs", t, Some(&prefs)).status, 200);
        for server in [&a, &b] {
            for _ in 0..20 {
                let me = server.call("GET", "/v1/me", t, None).json();
                assert_eq!(me["prefs"]["theme"], theme, "a shard served the old prefs");
            }
        }
    }
    let unconfirmed = metric_sum(
        &a.get("/metrics").text(),
        "percore_cache_invalidations_unconfirmed_total",
        "",
    );
    assert_eq!(unconfirmed, 0, "every shard confirmed every invalidation");
}

#[test]
fn two_hundred_concurrent_misses_of_one_key_run_one_statement() {
    let services = Services::start();
    let server = one_shard(&services);
    wait_subscribed(&server, 1);
    let (_, token) = server.sign_up("Cold");
    // Known session, then the view evicted by a write: /v1/me is cold, the session warm.
    assert_eq!(server.call("GET", "/v1/me", Some(&token), None).status, 200);
    let patched = server.call(
        "PATCH",
        "/v1/me/profile",
        Some(&token),
        Some(&json!({"bio": "cold again"})),
    );
    assert_eq!(patched.status, 200);
    let before = statements(&server, "me");
    let streams: Vec<_> = (0..200).map(|_| server.connect()).collect();
    let barrier = Arc::new(Barrier::new(streams.len()));
    let request = common::api_request("GET", "/v1/me", Some(&token), None);
    let threads: Vec<_> = streams
        .into_iter()
        .map(|stream| {
            let (barrier, request) = (barrier.clone(), request.clone());
            std::thread::spawn(move || {
                barrier.wait();
                common::request_on(&stream, &request)
            })
        })
        .collect();
    for thread in threads {
        let response = thread.join().unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.json()["profile"]["bio"], "cold again");
    }
    assert_eq!(statements(&server, "me") - before, 1, "one load for one cold key");
}

#[test]
fn a_revoked_token_is_refused_on_every_shard_of_every_process_after_logout() {
    let services = Services::start();
    let a = Server::start(&services, "");
    let b = second_process(&services);
    wait_subscribed(&a, 2);
    wait_subscribed(&b, 2);
    let (_, token) = a.sign_up("Leaving");
    let t = Some(token.as_str());
    for server in [&a, &b] {
        for _ in 0..30 {
            assert_eq!(server.call("GET", "/v1/me", t, None).status, 200);
            assert_eq!(server.call("GET", "/v1/users?ids=1", t, None).status, 200);
        }
    }
    assert_eq!(b.call("POST", "/v1/auth/logout", t, None).status, 204);
    for server in [&a, &b] {
        for _ in 0..30 {
            assert_eq!(server.call("GET", "/v1/me", t, None).status, 401);
            assert_eq!(server.call("GET", "/v1/users?ids=1", t, None).status, 401);
        }
    }
}
