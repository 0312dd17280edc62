//! The domain API against real Postgres: the whole flow on two shards, the query budget,
//! the events index, isolation between users, and logout on every shard.

mod common;

use common::{Server, Services, metric_sum};
use serde_json::json;
use std::collections::HashSet;
use std::time::{Duration, Instant};

fn series(metrics: &str, family: &str, shard: usize, route: &str, extra: &str) -> u64 {
    metric_sum(
        metrics,
        &format!("{family}{{shard=\"{shard}\",route=\"{route}\"{extra}"),
        "",
    )
}

#[test]
fn the_whole_flow_on_two_shards_within_the_query_budget() {
    let services = Services::start();
    let server = Server::start(&services, "");
    let (id, token) = server.sign_up("Flow");
    let token = Some(token.as_str());

    let me = server.call("GET", "/v1/me", token, None);
    assert_eq!(me.status, 200, "{}", me.text());
    let me = me.json();
    assert_eq!(me["user"]["id"], id);
    assert_eq!(me["user"]["name"], "Flow");
    assert!(me["user"].get("password_hash").is_none(), "no secrets in /v1/me");
    assert_eq!(me["profile"]["display_name"], serde_json::Value::Null);
    assert_eq!(me["prefs"]["theme"], "system");

    let profile = server.call(
        "PATCH",
        "/v1/me/profile",
        token,
        Some(&json!({"display_name": "F.", "bio": "hello"})),
    );
    assert_eq!(profile.status, 200, "{}", profile.text());
    assert_eq!(profile.json()["display_name"], "F.");
    // Absent fields stay; null clears.
    let profile = server.call("PATCH", "/v1/me/profile", token, Some(&json!({"bio": null})));
    assert_eq!(profile.json()["display_name"], "F.");
    assert_eq!(profile.json()["bio"], serde_json::Value::Null);

    let prefs = json!({"locale": "de-DE", "timezone": "Europe/Berlin", "theme": "dark", "email_opt_in": true});
    let put = server.call("PUT", "/v1/me/prefs", token, Some(&prefs));
    assert_eq!(put.status, 200, "{}", put.text());
    let me = server.call("GET", "/v1/me", token, None).json();
    assert_eq!(me["prefs"]["locale"], "de-DE");
    assert_eq!(me["prefs"]["email_opt_in"], true);
    assert_eq!(me["profile"]["display_name"], "F.");

    for n in 0..25 {
        let posted = server.call(
            "POST",
            "/v1/events",
            token,
            Some(&json!({"kind": "page.view", "payload": {"n": n, "path": "/x"}})),
        );
        assert_eq!(posted.status, 201, "{}", posted.text());
        assert_eq!(posted.json()["payload"]["n"], n);
    }
    // Page through newest first: 10, 10, 5, and the last page says there is no next.
    let mut seen = Vec::new();
    let mut path = "/v1/me/events?limit=10".to_string();
    let mut pages = 0;
    loop {
        let page = server.call("GET", &path, token, None);
        assert_eq!(page.status, 200, "{}", page.text());
        let page = page.json();
        pages += 1;
        for event in page["events"].as_array().unwrap() {
            seen.push(event["payload"]["n"].as_i64().unwrap());
        }
        match page["next"].as_str() {
            Some(cursor) => path = format!("/v1/me/events?limit=10&before={cursor}"),
            None => break,
        }
        assert!(pages < 10, "pagination does not end");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, (0..25).rev().collect::<Vec<_>>(), "newest first, each once");

    // Logout, then the token is refused on every shard. Connections spread over both
    // shards by SO_REUSEPORT; the metrics show both refused it.
    let logout = server.call("POST", "/v1/auth/logout", token, None);
    assert_eq!(logout.status, 204, "{}", logout.text());
    assert!(logout.header("content-length").is_none(), "204 has no Content-Length");
    for _ in 0..40 {
        let refused = server.call("GET", "/v1/me", token, None);
        assert_eq!(refused.status, 401);
        assert_eq!(refused.error_code(), "invalid_token");
        assert!(refused.header("www-authenticate").unwrap().starts_with("Bearer"));
    }
    let again = server.call("POST", "/v1/auth/logout", token, None);
    assert_eq!(again.status, 401);

    let metrics = server.get("/metrics").text();
    for shard in 0..2 {
        let refused = series(&metrics, "percore_http_requests_total", shard, "me", ",status=\"401\"");
        assert!(refused > 0, "shard {shard} never saw the revoked token:\n{metrics}");
    }
    // The query budget, as /metrics reports it: at most 2 statements and 1 read per request.
    let mut routes_seen = HashSet::new();
    for line in metrics.lines() {
        for (family, budget) in [
            ("percore_db_request_statements_max{", 2),
            ("percore_db_request_reads_max{", 1),
        ] {
            if let Some(rest) = line.strip_prefix(family) {
                let value: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
                assert!(value <= budget, "over budget: {line}");
                routes_seen.insert(
                    rest.split("route=\"")
                        .nth(1)
                        .unwrap()
                        .split('"')
                        .next()
                        .unwrap()
                        .to_string(),
                );
            }
        }
    }
    for route in [
        "register",
        "login",
        "logout",
        "me",
        "patch_profile",
        "put_prefs",
        "post_event",
        "my_events",
    ] {
        assert!(routes_seen.contains(route), "{route} ran no statement:\n{metrics}");
    }
    // Exactly: one statement for each of these, two (a read and a write) for login.
    let total = |route: &str, kind: &str| -> u64 {
        (0..2)
            .map(|shard| {
                series(
                    &metrics,
                    "percore_db_statements_total",
                    shard,
                    route,
                    &format!(",kind=\"{kind}\""),
                )
            })
            .sum()
    };
    assert_eq!(total("me", "read"), 2 + 40, "one read per GET /v1/me");
    assert_eq!(total("post_event", "write"), 25);
    assert_eq!(total("my_events", "read"), 3);
    assert_eq!((total("login", "read"), total("login", "write")), (1, 1));
}

#[test]
fn the_events_page_is_an_index_range_scan_without_sort() {
    let services = Services::start();
    let server = Server::start(&services, "");
    let (_, token) = server.sign_up("Explain");
    let mut client = postgres::Client::connect(&services.postgres.url, postgres::NoTls).unwrap();
    // Enough rows, over enough users, that the planner's choice reflects a real table.
    client
        .batch_execute(
            "INSERT INTO users (email, password_hash, name)
                 SELECT 'seed' || g || '@example.com', 'x', 'seed' FROM generate_series(1, 2000) g;
             INSERT INTO events (user_id, kind, payload, created_at)
                 SELECT u.id, 'k', '{}', now() - make_interval(secs => g)
                 FROM users u, generate_series(1, 50) g;
             INSERT INTO sessions (token_hash, user_id, expires_at)
                 SELECT sha256(('s' || u.id)::bytea), u.id, now() + interval '1 day' FROM users u;
             ANALYZE users; ANALYZE events; ANALYZE sessions;",
        )
        .unwrap();
    let token_hash = {
        let rows = client
            .query("SELECT token_hash FROM sessions ORDER BY created_at DESC LIMIT 1", &[])
            .unwrap();
        rows[0].get::<_, Vec<u8>>(0)
    };
    let sql = percore::store::Stmt::EventsPage.sql();
    let before = std::time::SystemTime::now();
    let plan: Vec<String> = client
        .query(&format!("EXPLAIN {sql}"), &[&token_hash, &before, &i64::MAX, &21i64])
        .unwrap()
        .iter()
        .map(|row| row.get::<_, String>(0))
        .collect();
    let plan = plan.join("\n");
    assert!(plan.contains("events_user_created"), "{plan}");
    assert!(!plan.contains("Seq Scan"), "{plan}");
    assert!(!plan.contains("Sort"), "{plan}");
    // The served page agrees: this user got 50 seeded events, one a second back from now.
    let page = server.call("GET", "/v1/me/events", Some(&token), None).json();
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 20, "the default page");
    assert!(page["next"].is_string());
    let times: Vec<&str> = events.iter().map(|e| e["created_at"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] > w[1]), "newest first: {times:?}");
}

#[test]
fn a_user_cannot_read_or_change_another_users_private_data() {
    let services = Services::start();
    let server = Server::start(&services, "");
    let (a_id, a) = server.sign_up("Alice");
    let (b_id, b) = server.sign_up("Bob");
    let (a, b) = (Some(a.as_str()), Some(b.as_str()));
    server.call(
        "POST",
        "/v1/events",
        a,
        Some(&json!({"kind": "secret", "payload": "alice's"})),
    );
    let patched = server.call("PATCH", "/v1/me/profile", b, Some(&json!({"display_name": "B"})));
    assert_eq!(patched.status, 200);
    server.call(
        "PUT",
        "/v1/me/prefs",
        b,
        Some(&json!({"locale": "fr", "timezone": "UTC", "theme": "light", "email_opt_in": false})),
    );

    let b_me = server.call("GET", "/v1/me", b, None).json();
    assert_eq!(b_me["user"]["id"], b_id, "a token reads only its own user");
    let a_me = server.call("GET", "/v1/me", a, None).json();
    assert_eq!(a_me["user"]["id"], a_id);
    assert_eq!(
        a_me["profile"]["display_name"],
        serde_json::Value::Null,
        "B's patch left A alone"
    );
    assert_eq!(a_me["prefs"]["locale"], "en", "B's prefs left A alone");
    let b_events = server.call("GET", "/v1/me/events", b, None).json();
    assert_eq!(
        b_events["events"].as_array().unwrap().len(),
        0,
        "B sees none of A's events"
    );

    // The public view of A shows exactly the public columns: no email, no bio, no prefs.
    let public = server.call("GET", &format!("/v1/users/{a_id}"), b, None).json();
    let keys: HashSet<&str> = public.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, HashSet::from(["id", "name", "display_name", "avatar_url"]));
    let batch = server
        .call("GET", &format!("/v1/users?ids={b_id},999999,{a_id},{b_id}"), a, None)
        .json();
    let ids: Vec<i64> = batch["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![b_id, a_id], "in the order asked, missing left out, once each");
    assert!(batch["users"][0].get("email").is_none());
    assert_eq!(
        server.call("GET", "/v1/users/999999", a, None).error_code(),
        "user_not_found"
    );
}

#[test]
fn unknown_email_and_wrong_password_answer_the_same_and_both_verify_a_hash() {
    let services = Services::start();
    let server = Server::start(&services, "");
    let email = common::unique_email("victim");
    let created = server.call(
        "POST",
        "/v1/auth/register",
        None,
        Some(&json!({"email": email, "password": "right password", "name": "V"})),
    );
    assert_eq!(created.status, 201);
    let completed = |server: &Server| {
        metric_sum(
            &server.get("/metrics").text(),
            "percore_worker_tasks_completed_total",
            "",
        )
    };
    let login = |email: &str| {
        server.call(
            "POST",
            "/v1/auth/login",
            None,
            Some(&json!({"email": email, "password": "wrong password"})),
        )
    };
    let before = completed(&server);
    let wrong_password = login(&email);
    let after_wrong = completed(&server);
    let unknown = login(&common::unique_email("nobody"));
    let after_unknown = completed(&server);
    assert_eq!(wrong_password.status, 401);
    assert_eq!(
        (unknown.status, unknown.body.clone()),
        (wrong_password.status, wrong_password.body.clone())
    );
    assert_eq!(unknown.error_code(), "invalid_credentials");
    assert_eq!(after_wrong - before, 1, "a wrong password verifies one hash");
    assert_eq!(after_unknown - after_wrong, 1, "an unknown email verifies one hash too");
    // Case does not make a different account.
    let upper = server.call(
        "POST",
        "/v1/auth/login",
        None,
        Some(&json!({"email": email.to_uppercase(), "password": "right password"})),
    );
    assert_eq!(upper.status, 200, "{}", upper.text());
}

#[test]
fn login_attempts_past_the_burst_get_429_with_retry_after() {
    let services = Services::start();
    let port = common::free_port();
    let text = common::Tuning {
        server: "shards = 1",
        extra: "[identity]\nlogin_burst = 3\nlogin_rate_per_minute = 1",
        ..common::Tuning::new(port, &services)
    }
    .render();
    let server = Server::start_with_config(port, &text, &[]);
    let attempt = || {
        server.call(
            "POST",
            "/v1/auth/login",
            None,
            Some(&json!({"email": "x@example.com", "password": "whatever1"})),
        )
    };
    for _ in 0..3 {
        assert_eq!(attempt().status, 401);
    }
    let throttled = attempt();
    assert_eq!(throttled.status, 429, "{}", throttled.text());
    assert_eq!(throttled.error_code(), "too_many_requests");
    let wait: u64 = throttled.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "Retry-After {wait}");
}

#[test]
fn an_expired_session_is_refused_and_login_sets_the_configured_lifetime() {
    let services = Services::start();
    let port = common::free_port();
    let text = common::Tuning {
        // Expiry is moved in the database behind the server's back below: the shard's cached
        // session notices only when its entry ages out (l1_ttl_ms).
        extra: "[identity]\ntoken_ttl_s = 3600\n[cache]\nl1_ttl_ms = 200",
        ..common::Tuning::new(port, &services)
    }
    .render();
    let server = Server::start_with_config(port, &text, &[]);
    let email = common::unique_email("ttl");
    let register = json!({"email": email, "password": "12345678", "name": "T"});
    assert_eq!(
        server.call("POST", "/v1/auth/register", None, Some(&register)).status,
        201
    );
    let login = server
        .call(
            "POST",
            "/v1/auth/login",
            None,
            Some(&json!({"email": email, "password": "12345678"})),
        )
        .json();
    let token = login["token"].as_str().unwrap().to_string();
    let mut client = postgres::Client::connect(&services.postgres.url, postgres::NoTls).unwrap();
    let lifetime_s: f64 = client
        .query_one(
            "SELECT extract(epoch FROM s.expires_at - s.created_at)::float8 FROM sessions s
             JOIN users u ON u.id = s.user_id WHERE u.email = $1::text::citext",
            &[&email],
        )
        .unwrap()
        .get(0);
    assert!((lifetime_s - 3600.0).abs() < 1.0, "session lifetime {lifetime_s}");
    assert_eq!(server.call("GET", "/v1/me", Some(&token), None).status, 200);
    client
        .execute(
            "UPDATE sessions s SET expires_at = now() - interval '1 second'
             FROM users u WHERE u.id = s.user_id AND u.email = $1::text::citext",
            &[&email],
        )
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let expired = server.call("GET", "/v1/me", Some(&token), None);
    assert_eq!((expired.status, expired.error_code().as_str()), (401, "invalid_token"));
}

#[test]
fn a_statement_past_statement_timeout_answers_503_and_the_shard_goes_on() {
    let services = Services::start();
    let port = common::free_port();
    let text = common::Tuning::new(port, &services)
        .render()
        .replace("[database]\n", "[database]\nstatement_timeout_ms = 300\n");
    let server = Server::start_with_config(port, &text, &[]);
    let (id, token) = server.sign_up("Locked");
    // Another client holds the user's prefs row: the update waits, and is cancelled.
    let mut client = postgres::Client::connect(&services.postgres.url, postgres::NoTls).unwrap();
    let mut tx = client.transaction().unwrap();
    tx.execute("SELECT 1 FROM prefs WHERE user_id = $1 FOR UPDATE", &[&id])
        .unwrap();
    let prefs = json!({"locale": "en", "timezone": "UTC", "theme": "dark", "email_opt_in": false});
    // While the update waits on the lock, other routes of the same shard stay fast.
    let asked = Instant::now();
    let (waited, others_slowest) = std::thread::scope(|scope| {
        let put = scope.spawn(|| server.call("PUT", "/v1/me/prefs", Some(&token), Some(&prefs)));
        std::thread::sleep(Duration::from_millis(100));
        let mut slowest = Duration::ZERO;
        for path in ["/healthz", "/v1/me", "/v1/me/events"] {
            let began = Instant::now();
            let got = server.call("GET", path, Some(&token), None);
            assert_eq!(got.status, 200, "{path} while the lock is held: {}", got.text());
            slowest = slowest.max(began.elapsed());
        }
        (put.join().unwrap(), slowest)
    });
    let took = asked.elapsed();
    assert!(
        others_slowest < Duration::from_millis(100),
        "another route took {others_slowest:?} while a write waited"
    );
    // Cancelled at statement_timeout_ms (300), answered within 300 ms more.
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(300 + 300),
        "the waiting write was answered after {took:?}"
    );
    assert_eq!(waited.status, 503, "{}", waited.text());
    assert_eq!(waited.error_code(), "database_timeout");
    assert!(waited.header("retry-after").is_some());
    tx.rollback().unwrap();
    let after = server.call("PUT", "/v1/me/prefs", Some(&token), Some(&prefs));
    assert_eq!(after.status, 200, "{}", after.text());
}

/// While a write waits (here on a row lock; in production on its commit's WAL flush), reads
/// on the same shard answer at once from a connection of their own. Run both ways: with
/// writes sharing the one connection, the same read queues behind the write.
#[test]
fn reads_do_not_queue_behind_a_waiting_write_on_its_connection() {
    let services = Services::start();
    for (write_connections, read_waits) in [(1, false), (0, true)] {
        let server = one_uncached_shard(
            &services,
            &format!("connections_per_shard = 1\nwrite_connections_per_shard = {write_connections}"),
        );
        let (id, token) = server.sign_up("Waiting");
        let mut client = postgres::Client::connect(&services.postgres.url, postgres::NoTls).unwrap();
        let mut tx = client.transaction().unwrap();
        tx.execute("SELECT 1 FROM prefs WHERE user_id = $1 FOR UPDATE", &[&id])
            .unwrap();
        let writer = {
            let (port, token) = (server.port, token.clone());
            std::thread::spawn(move || {
                let prefs = json!({"locale": "en", "timezone": "UTC", "theme": "dark", "email_opt_in": true});
                common::call_on_port(port, "PUT", "/v1/me/prefs", Some(&token), Some(&prefs)).status
            })
        };
        // Until the write is in its statement, the read could not queue behind it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !prefs_update_waits(&mut client_for(&services)) {
            assert!(std::time::Instant::now() < deadline, "the write never reached its lock");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let reader = {
            let (port, token) = (server.port, token.clone());
            std::thread::spawn(move || {
                let at = std::time::Instant::now();
                let status = common::call_on_port(port, "GET", "/v1/me", Some(&token), None).status;
                (status, at.elapsed())
            })
        };
        // The lock is held for 2 s: a read that does not queue is answered long before.
        std::thread::sleep(std::time::Duration::from_secs(2));
        let read_done_while_locked = reader.is_finished();
        tx.rollback().unwrap();
        let (read_status, read_took) = reader.join().unwrap();
        assert_eq!(read_status, 200);
        assert_eq!(writer.join().unwrap(), 200);
        assert_eq!(
            !read_done_while_locked, read_waits,
            "write_connections_per_shard = {write_connections}: the read took {read_took:?}"
        );
    }
}

/// One shard with the cache off, so every read reaches Postgres, and `database` keys added.
fn one_uncached_shard(services: &Services, database: &str) -> Server {
    let port = common::free_port();
    let text = common::Tuning {
        server: "shards = 1",
        extra: "[cache]\nenabled = false\n",
        ..common::Tuning::new(port, services)
    }
    .render()
    .replace("[database]\n", &format!("[database]\n{database}\n"));
    Server::start_with_config(port, &text, &[])
}

fn client_for(services: &Services) -> postgres::Client {
    postgres::Client::connect(&services.postgres.url, postgres::NoTls).unwrap()
}

/// True while some backend runs the prefs update and waits for a lock.
fn prefs_update_waits(client: &mut postgres::Client) -> bool {
    let row = client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query ILIKE '%prefs%'",
            &[],
        )
        .unwrap();
    row.get::<_, i64>(0) > 0
}

/// With every connection of one group down (terminated, and kept down by a long reconnect
/// backoff), its statements run on the other group's connections.
#[test]
fn a_group_whose_connections_are_all_down_borrows_the_others() {
    let services = Services::start();
    let prefs = json!({"locale": "en", "timezone": "UTC", "theme": "light", "email_opt_in": false});
    let mut admin = client_for(&services);
    for (down, method, path, body) in [
        ("percore-shard-0-writes", "PUT", "/v1/me/prefs", Some(&prefs)),
        ("percore-shard-0", "GET", "/v1/me", None),
    ] {
        // A server per case: a terminated group stays down for the rest of its minute.
        let server = one_uncached_shard(
            &services,
            "connections_per_shard = 1\nwrite_connections_per_shard = 1\n\
             reconnect_backoff_ms_min = 60000\nreconnect_backoff_ms_max = 60000",
        );
        let (_, token) = server.sign_up("Borrower");
        let terminated: i64 = admin
            .query_one(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = $1) t",
                &[&down],
            )
            .unwrap()
            .get(0);
        assert_eq!(terminated, 1, "{down}");
        // Once the shard has seen its connection end (one of two up), the group stays down
        // for the minute-long backoff, and the call must succeed on the other group.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let up = |text: &str| metric_sum(text, "percore_db_connections_up{shard=\"0\"}", "");
        while up(&server.get("/metrics").text()) != 1 {
            assert!(std::time::Instant::now() < deadline, "the shard never saw {down} end");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let response = server.call(method, path, Some(&token), body);
        assert_eq!(
            response.status,
            200,
            "{method} {path} with {down} down: {}",
            response.text()
        );
        drop(server);
    }
}
