//! The shard's Postgres driver through a failover: a multi-host URL, a streaming replica
//! promoted, the old primary gone. (Network faults: `network_faults.rs`.)

mod common;
use common::{Server, Services, Tuning};
use percore_testkit::Postgres;
use std::time::{Duration, Instant};

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
