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
    // The miss stored its value in Redis after answering; one more read leaves time for it.
    assert_eq!(common::request_on(&stream, &request).body, warm.body);
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
    // After each write the first shard to miss loads from Postgres; the others find the
    // new value in Redis.
    let l2_hits: u64 = [&a, &b]
        .iter()
        .map(|s| metric_sum(&s.get("/metrics").text(), "percore_cache_l2_hits_total", ""))
        .sum();
    assert!(l2_hits > 0, "no L2 hits");
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

/// GETs `path` on its own connection until `stop`, recording (status, latency).
fn load_thread(
    port: u16,
    path: String,
    token: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<(u16, std::time::Duration)>> {
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let request = common::api_request("GET", &path, Some(&token), None);
        let mut stream = None;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let connection = stream.get_or_insert_with(|| {
                let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
                s
            });
            let started = std::time::Instant::now();
            let response = common::request_on(connection, &request);
            seen.push((response.status, started.elapsed()));
        }
        seen
    })
}

#[test]
fn with_redis_stopped_then_killed_requests_keep_succeeding_and_hits_return_after() {
    let mut services = Services::start();
    // Six threads on one session: far past the default per-client read limit.
    let port = common::free_port();
    let text = common::Tuning {
        extra: "[rate_limit.read]\nrate = 1000000.0\nburst = 1000000",
        ..common::Tuning::new(port, &services)
    }
    .render();
    let server = Server::start_with_config(port, &text, &[]);
    wait_subscribed(&server, 2);
    let (id, token) = server.sign_up("Outage");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let paths = [
        "/v1/me".to_string(),
        format!("/v1/users/{id}"),
        format!("/v1/users?ids={id},1"),
    ];
    let threads: Vec<_> = (0..6)
        .map(|i| load_thread(server.port, paths[i % 3].clone(), token.clone(), stop.clone()))
        .collect();
    // A writer keeps evicting the user's entries, so reads keep missing L1 and ask Redis.
    let writer = {
        let (stop, token, port) = (stop.clone(), token.clone(), server.port);
        std::thread::spawn(move || {
            let mut statuses = Vec::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let patch = json!({ "bio": format!("write {n}") });
                let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                let raw = common::api_request("PATCH", "/v1/me/profile", Some(&token), Some(&patch));
                statuses.push(common::request_on(&stream, &raw).status);
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            statuses
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(500));
    let redis_pid = services.redis.pid().expect("a throwaway redis of our own") as i32;
    // SAFETY: signalling the test's own child process.
    unsafe { libc::kill(redis_pid, libc::SIGSTOP) };
    std::thread::sleep(std::time::Duration::from_millis(2500));
    // A frozen Redis keeps its sockets open: the unanswered PING is what turns L1 off.
    let frozen = server.get("/metrics").text();
    assert_eq!(metric_sum(&frozen, "percore_cache_subscribed", ""), 0, "{frozen}");
    services.redis.kill();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    services.redis.restart();
    wait_subscribed(&server, 2);
    std::thread::sleep(std::time::Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut latencies = Vec::new();
    for thread in threads {
        for (status, latency) in thread.join().unwrap() {
            assert_eq!(status, 200, "a request failed during the Redis outage");
            latencies.push(latency);
        }
    }
    let writes = writer.join().unwrap();
    assert!(writes.iter().all(|status| *status == 200), "writes: {writes:?}");
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    assert!(latencies.len() > 1000, "{} requests", latencies.len());
    // redis_timeout_ms is 100: a call waits at most that, then Postgres answers.
    assert!(p99 < std::time::Duration::from_millis(100 + 150), "p99 {p99:?}");
    let metrics = server.get("/metrics").text();
    assert!(
        metric_sum(&metrics, "percore_cache_redis_errors_total", "") > 0,
        "{metrics}"
    );
    // Back: hits return without a restart, and /v1/me costs no SQL again.
    let stream = server.connect();
    let request = common::api_request("GET", "/v1/me", Some(&token), None);
    common::request_on(&stream, &request);
    common::request_on(&stream, &request);
    let before = statements(&server, "me");
    for _ in 0..50 {
        assert_eq!(common::request_on(&stream, &request).status, 200);
    }
    assert_eq!(
        statements(&server, "me") - before,
        0,
        "hits are back after Redis returned"
    );
}

#[test]
fn cached_queries_follows_the_techempower_rules_and_loads_each_row_once() {
    let services = Services::start();
    let server = one_shard(&services);
    wait_subscribed(&server, 1);
    let mut client = postgres::Client::connect(&services.postgres.url, postgres::NoTls).unwrap();
    client
        .batch_execute(
            "INSERT INTO world (id, randomnumber)
             SELECT g, (g * 7919) % 10000 + 1 FROM generate_series(1, 10000) g",
        )
        .unwrap();
    for (query, expected) in [
        ("", 1),
        ("?count=abc", 1),
        ("?count=0", 1),
        ("?count=-3", 1),
        ("?count=20", 20),
        ("?count=1000", 500),
    ] {
        let response = server.get(&format!("/cached-queries{query}"));
        assert_eq!(response.status, 200, "{query}");
        let rows = response.json();
        let rows = rows.as_array().unwrap();
        assert_eq!(rows.len(), expected, "{query}");
        for row in rows {
            let id = row["id"].as_i64().unwrap();
            assert!((1..=10_000).contains(&id));
            assert_eq!(row["randomNumber"].as_i64().unwrap(), (id * 7919) % 10_000 + 1);
        }
    }
    let before = statements(&server, "cached_queries");
    for _ in 0..40 {
        assert_eq!(server.get("/cached-queries?count=500").status, 200);
    }
    let loaded = statements(&server, "cached_queries") - before;
    assert!(
        loaded <= 10_000,
        "each of the 10,000 rows is loaded at most once: {loaded}"
    );
    assert!(loaded > 0);
}

#[test]
fn the_cached_events_page_pages_like_the_database_and_sees_new_events_everywhere() {
    let services = Services::start();
    let a = Server::start(&services, "");
    let b = second_process(&services);
    wait_subscribed(&a, 2);
    wait_subscribed(&b, 2);
    let (_, token) = a.sign_up("Pager");
    let t = Some(token.as_str());
    for n in 0..30 {
        let posted = a.call("POST", "/v1/events", t, Some(&json!({"kind": "k", "payload": n})));
        assert_eq!(posted.status, 201);
    }
    for server in [&a, &b] {
        // Warm: the session, then the first page, on both shards.
        for _ in 0..20 {
            assert_eq!(server.call("GET", "/v1/me/events?limit=7", t, None).status, 200);
        }
        let mut seen = Vec::new();
        let mut path = "/v1/me/events?limit=7".to_string();
        loop {
            let page = server.call("GET", &path, t, None).json();
            seen.extend(
                page["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["payload"].as_i64().unwrap()),
            );
            match page["next"].as_str() {
                Some(cursor) => path = format!("/v1/me/events?limit=7&before={cursor}"),
                None => break,
            }
        }
        assert_eq!(
            seen,
            (0..30).rev().collect::<Vec<_>>(),
            "cached first page, then SQL pages"
        );
    }
    let posted = b.call("POST", "/v1/events", t, Some(&json!({"kind": "k", "payload": 30})));
    assert_eq!(posted.status, 201);
    for server in [&a, &b] {
        for _ in 0..20 {
            let page = server.call("GET", "/v1/me/events?limit=3", t, None).json();
            assert_eq!(
                page["events"][0]["payload"], 30,
                "a shard served the page from before the post"
            );
        }
    }
}
