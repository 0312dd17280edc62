//! The shard's Postgres driver under faults the server itself must notice: a Postgres that
//! goes silent behind a network that swallows bytes, and a failover through a multi-host
//! URL (a streaming replica promoted, the old primary gone).

mod common;
use common::{Server, Services, Tuning};
use percore_testkit::Postgres;
use percore_testkit::proxy::FaultProxy;
use std::time::{Duration, Instant};

/// statement_timeout_ms + deadline_margin_ms in the silent-server test's tuning.
const DEADLINE_MS: u64 = 1_000 + 500;

#[test]
fn a_silent_postgres_gets_503_within_the_deadline_and_service_resumes_on_its_own() {
    let services = Services::start();
    let proxy = FaultProxy::start(services.postgres.port);
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", proxy.port);
    let server = Tuning {
        database_url: &url,
        server: "shards = 1",
        database: "statement_timeout_ms = 1000\ndeadline_margin_ms = 500\nconnect_timeout_ms = 1000\nreconnect_backoff_ms_max = 200",
        ..Tuning::new(common::free_port(), &services)
    }
    .start();
    wait_ready(&server);
    // /db reads the (unseeded) world table: 404 is Postgres answering.
    assert_eq!(server.get("/db").status, 404);

    proxy.blackhole();
    // A statement sent into the silence: 503 once its deadline passes, never a hang (the
    // deadline is checked every margin / 2, and the pool wait is 300 ms).
    let started = Instant::now();
    let silent = server.get("/db");
    let waited = started.elapsed();
    assert_eq!(silent.status, 503, "{}", silent.text());
    assert!(silent.header("retry-after").is_some());
    assert_eq!(silent.error_code(), "database_timeout");
    assert!(
        waited >= Duration::from_millis(DEADLINE_MS) && waited < Duration::from_millis(DEADLINE_MS + 1_000),
        "answered after {waited:?}"
    );
    // No usable connection now (new ones time out in the silence): not ready, fast.
    let started = Instant::now();
    let ready = server.get("/readyz");
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert!(
        started.elapsed() < Duration::from_millis(DEADLINE_MS + 1_000),
        "{:?}",
        started.elapsed()
    );

    proxy.heal();
    let healed = Instant::now();
    while server.get("/db").status != 404 {
        assert!(
            healed.elapsed() < Duration::from_secs(10),
            "no recovery: {}",
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(server.get("/readyz").status, 200);
    assert!(server.stderr().contains("lost"), "the replaced connection is logged");
}

fn wait_ready(server: &Server) {
    let started = Instant::now();
    while server.get("/readyz").status != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not ready: {}",
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn after_a_failover_writes_resume_through_the_new_primary_without_a_restart() {
    let mut primary = Postgres::own();
    // The standby stands in the services' place; the URL names both servers.
    let services = Services {
        postgres: primary.replica(),
        redis: percore_testkit::Redis::throwaway(),
    };
    let standby = &services.postgres;
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write",
        primary.port, standby.port
    );
    let server = Tuning {
        database_url: &url,
        server: "shards = 2",
        database: "reconnect_backoff_ms_max = 200\nconnect_timeout_ms = 1000",
        ..Tuning::new(common::free_port(), &services)
    }
    .start();
    wait_ready(&server);
    server.sign_up("before");

    primary.kill();
    // Promote the standby, as an operator or a failover manager would.
    let mut admin = postgres::Client::connect(&standby.url, postgres::NoTls).expect("standby");
    admin.execute("SELECT pg_promote(true, 30)", &[]).expect("promote");
    let promoted = Instant::now();
    let mut attempts = 0;
    let email = common::unique_email("after");
    loop {
        attempts += 1;
        let created = server.call(
            "POST",
            "/v1/auth/register",
            None,
            Some(&serde_json::json!({"email": email, "password": "correct horse battery", "name": "after"})),
        );
        if created.status == 201 {
            break;
        }
        assert_eq!(created.status, 503, "{}", created.text());
        assert!(
            promoted.elapsed() < Duration::from_secs(15),
            "writes did not resume: {}",
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "failover: writes resumed {:?} after promotion ({attempts} attempts)",
        promoted.elapsed()
    );
    let count: i64 = admin
        .query_one("SELECT count(*) FROM users WHERE email = $1::text::citext", &[&email])
        .unwrap()
        .get(0);
    assert_eq!(count, 1, "the write is on the promoted server");
    // Every shard writes there (each shard has its own connections).
    for i in 0..8 {
        let (_, token) = server.sign_up(&format!("shard{i}"));
        let posted = server.call(
            "POST",
            "/v1/events",
            Some(&token),
            Some(&serde_json::json!({"kind": "k", "payload": {}})),
        );
        assert_eq!(posted.status, 201, "{}", posted.text());
    }
}
