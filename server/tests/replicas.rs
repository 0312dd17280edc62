//! Read replicas against a real streaming replica of the throwaway primary: which reads
//! land where (counted by each server's own pg_stat_statements), read-your-writes while
//! the replica's replay is paused (so a stale read would show), and a replica that goes
//! down and comes back.

mod common;

use common::{Server, Services, Tuning, free_port, metric_sum};
use percore_testkit::Postgres;
use serde_json::json;
use std::time::{Duration, Instant};

/// Matches the text pg_stat_statements keeps of `Stmt::UserPublicById` and of no other
/// statement percore runs.
const USER_BY_ID: &str = "%LEFT JOIN profiles p ON p.user_id = u.id%WHERE u.id = $1";

fn connect(server: &Postgres) -> postgres::Client {
    postgres::Client::connect(&server.url, postgres::NoTls).unwrap()
}

/// Calls of `pattern` this server has run since its statistics began.
fn calls(client: &mut postgres::Client, pattern: &str) -> i64 {
    client
        .query_one(
            "SELECT coalesce(sum(calls), 0)::int8 FROM pg_stat_statements WHERE query LIKE $1",
            &[&pattern],
        )
        .unwrap()
        .get(0)
}

fn register(server: &Server, name: &str) -> i64 {
    let email = common::unique_email(name);
    let body = json!({"email": email, "password": "correct horse battery", "name": name});
    let created = server.call("POST", "/v1/auth/register", None, Some(&body));
    assert_eq!(created.status, 201, "{}", created.text());
    created.json()["id"].as_i64().unwrap()
}

/// A profile write: it invalidates the user's document and public view everywhere.
fn set_display_name(server: &Server, token: &str, name: &str) {
    let patched = server.call(
        "PATCH",
        "/v1/me/profile",
        Some(token),
        Some(&json!({"display_name": name})),
    );
    assert_eq!(patched.status, 200, "{}", patched.text());
}

fn metrics(server: &Server) -> String {
    server.get("/metrics").text()
}

fn wait_usable(server: &Server, usable: bool) {
    let ok = percore_testkit::wait_until(Duration::from_secs(20), || {
        metric_sum(&metrics(server), "percore_db_replica_usable{", "") == u64::from(usable)
    });
    assert!(ok, "replica usable = {usable}: {}", metrics(server));
}

/// A primary of our own with pg_stat_statements, a replica of it, and percore on both.
/// Our own even when `TEST_DATABASE_URL` names a server: a replica needs its primary's
/// data directory, so these tests never skip.
fn start(database: &str) -> (Services, Postgres, Server) {
    let services = Services {
        postgres: Postgres::own(),
        redis: percore_testkit::Redis::throwaway(),
    };
    connect(&services.postgres)
        .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .unwrap();
    let replica = services.postgres.replica();
    let server = start_percore(&services, &replica.url, database);
    (services, replica, server)
}

/// One percore on `services` reading from the replica at `replica_url`, once it is usable.
fn start_percore(services: &Services, replica_url: &str, database: &str) -> Server {
    let port = free_port();
    let database = format!("replicas = [\"{replica_url}\"]\nreconnect_backoff_ms_max = 200\n{database}");
    let text = Tuning {
        server: "shards = 1\nshutdown_timeout_ms = 5000",
        database: &database,
        // The tests register users faster than a client may by default.
        extra: "[rate_limit.auth]\nrate = 1000\nburst = 1000",
        ..Tuning::new(port, services)
    }
    .render();
    let server = Server::start_with_config(port, &text, &[]);
    wait_usable(&server, true);
    server
}

#[test]
fn reads_land_on_the_replica_and_every_client_reads_its_own_writes() {
    // A long max lag keeps the paused replica usable; a short sticky bound is tested too.
    let (services, replica, server) = start("max_replica_lag_ms = 60000\nsticky_primary_ms = 1500");
    let (_, reader) = server.sign_up("Reader");
    let (writer_id, writer) = server.sign_up("Writer");
    let others: Vec<i64> = (0..8).map(|i| register(&server, &format!("Other{i}"))).collect();
    // Their sessions, checked once on the primary, are known to the shard from here on.
    for token in [&reader, &writer] {
        assert_eq!(server.call("GET", "/v1/me", Some(token), None).status, 200);
    }
    let mut on_primary = connect(&services.postgres);
    let mut on_replica = connect(&replica);
    let get_user = |token: &str, id: i64| {
        let got = server.call("GET", &format!("/v1/users/{id}"), Some(token), None);
        assert_eq!(got.status, 200, "{}", got.text());
        got.json()
    };

    // By-id reads of an authenticated caller land on the replica, not the primary.
    let (primary_before, replica_before) = (calls(&mut on_primary, USER_BY_ID), calls(&mut on_replica, USER_BY_ID));
    let replica_reads = || metric_sum(&metrics(&server), "percore_db_replica_reads_total{", "");
    let counted_before = replica_reads();
    for id in &others[..3] {
        assert_eq!(get_user(&reader, *id)["id"], *id);
    }
    assert_eq!(calls(&mut on_replica, USER_BY_ID) - replica_before, 3, "on the replica");
    assert_eq!(calls(&mut on_primary, USER_BY_ID), primary_before, "not on the primary");
    assert_eq!(replica_reads() - counted_before, 3, "and counted in /metrics");

    // Freeze the replica before a write: whatever it serves from now on predates it.
    on_replica.batch_execute("SELECT pg_wal_replay_pause()").unwrap();
    set_display_name(&server, &writer, "after the pause");
    // The write ran on the primary only.
    const PROFILE_UPDATE: &str = "%UPDATE profiles%";
    assert_eq!(calls(&mut on_primary, PROFILE_UPDATE), 1);
    assert_eq!(calls(&mut on_replica, PROFILE_UPDATE), 0);
    let (primary_before, replica_before) = (calls(&mut on_primary, USER_BY_ID), calls(&mut on_replica, USER_BY_ID));
    // The writer sees its write, and so does anyone filling the key it invalidated.
    let me = server.call("GET", "/v1/me", Some(&writer), None);
    assert_eq!(me.json()["profile"]["display_name"], "after the pause", "{}", me.text());
    assert_eq!(get_user(&reader, writer_id)["display_name"], "after the pause");
    // The writer's read of a key nobody wrote still waits for the replica: its own write.
    assert_eq!(get_user(&writer, others[3])["id"], others[3]);
    assert_eq!(
        calls(&mut on_primary, USER_BY_ID) - primary_before,
        2,
        "the writer's two user reads"
    );
    // Someone else's read of an untouched key may use the frozen replica.
    assert_eq!(get_user(&reader, others[4])["id"], others[4]);
    assert_eq!(
        calls(&mut on_replica, USER_BY_ID) - replica_before,
        1,
        "the reader's untouched key"
    );
    // Someone who signs up now: registered and logged in as an address, then reading as a
    // token, it still finds itself.
    let (newcomer_id, newcomer) = server.sign_up("Newcomer");
    assert_eq!(server.call("GET", "/v1/me", Some(&newcomer), None).status, 200);
    assert_eq!(get_user(&newcomer, newcomer_id)["id"], newcomer_id);
    let text = metrics(&server);
    assert!(
        metric_sum(
            &text,
            "percore_db_replica_eligible_reads_on_primary_total{",
            "not_caught_up"
        ) >= 4,
        "{text}"
    );
    // Past sticky_primary_ms the writer's reads may use the replica again.
    std::thread::sleep(Duration::from_millis(1600));
    let replica_before = calls(&mut on_replica, USER_BY_ID);
    assert_eq!(get_user(&writer, others[5])["id"], others[5]);
    assert_eq!(
        calls(&mut on_replica, USER_BY_ID) - replica_before,
        1,
        "sticky_primary_ms is a bound"
    );
    // The replica holds the old row meanwhile: the reads above could have been stale.
    let stale: Option<String> = on_replica
        .query_one("SELECT display_name FROM profiles WHERE user_id = $1", &[&writer_id])
        .unwrap()
        .get(0);
    assert_ne!(
        stale.as_deref(),
        Some("after the pause"),
        "the replica was really behind"
    );
    on_replica.batch_execute("SELECT pg_wal_replay_resume()").unwrap();
}

#[test]
fn a_replica_that_goes_down_is_skipped_without_errors_and_used_again_when_back() {
    let (_services, mut replica, server) = start("max_replica_lag_ms = 1000");
    let (_, token) = server.sign_up("Reader");
    assert_eq!(server.call("GET", "/v1/me", Some(&token), None).status, 200);
    let ids: Vec<i64> = (0..60).map(|i| register(&server, &format!("Someone{i}"))).collect();
    let replica_reads = || metric_sum(&metrics(&server), "percore_db_replica_reads_total{", "");
    let mut next = ids.iter();
    let mut read_next = || {
        let id = next.next().expect("enough users");
        let got = server.call("GET", &format!("/v1/users/{id}"), Some(&token), None);
        assert_eq!(got.status, 200, "{}", got.text());
        assert_eq!(got.json()["id"], *id);
    };
    for _ in 0..5 {
        read_next();
    }
    assert_eq!(replica_reads(), 5);

    // Killed: every read is answered, from the primary, with no error.
    replica.kill();
    let down_at = Instant::now();
    for _ in 0..20 {
        read_next();
        std::thread::sleep(Duration::from_millis(25));
    }
    wait_usable(&server, false);
    let reads_while_down = replica_reads();
    for _ in 0..5 {
        read_next();
    }
    assert_eq!(replica_reads(), reads_while_down, "none while it is down");
    let text = metrics(&server);
    assert!(
        metric_sum(
            &text,
            "percore_db_replica_eligible_reads_on_primary_total{",
            "none_usable"
        ) >= 5,
        "{text}"
    );
    assert!(
        down_at.elapsed() < Duration::from_secs(10),
        "no read waited for the dead replica"
    );

    // Back: reads return to it.
    replica.restart();
    wait_usable(&server, true);
    let before = replica_reads();
    for _ in 0..5 {
        read_next();
    }
    assert_eq!(replica_reads() - before, 5, "all on the replica again");
}

#[test]
fn a_read_in_flight_on_a_replica_that_dies_is_retried_on_the_primary() {
    let services = Services {
        postgres: Postgres::own(),
        redis: percore_testkit::Redis::throwaway(),
    };
    let replica = services.postgres.replica();
    // Between percore and the replica: silence, then a reset, with a read waiting there.
    let proxy = percore_testkit::proxy::FaultProxy::start(replica.port);
    let proxied = format!("postgres://postgres@127.0.0.1:{}/postgres", proxy.port);
    let server = start_percore(&services, &proxied, "max_replica_lag_ms = 1000\nsticky_primary_ms = 1");
    let (_, token) = server.sign_up("Reader");
    let ids: Vec<i64> = (0..20).map(|i| register(&server, &format!("Someone{i}"))).collect();
    let replica_reads = || metric_sum(&metrics(&server), "percore_db_replica_reads_total{", "");
    let retried = || {
        let text = metrics(&server);
        metric_sum(
            &text,
            "percore_db_replica_eligible_reads_on_primary_total{",
            "replica_failed",
        )
    };
    let read = |id: i64| {
        let got = server.call("GET", &format!("/v1/users/{id}"), Some(&token), None);
        (got.status, got.json()["id"].as_i64())
    };
    // Until a read lands on the replica: it has replayed every registration (each id is
    // read once, as a second read would come from the cache). ids[0] stays unread.
    let mut warm = ids[1..].iter();
    assert!(
        percore_testkit::wait_until(Duration::from_secs(10), || {
            let Some(&id) = warm.next() else { return false };
            let before = replica_reads();
            read(id) == (200, Some(id)) && replica_reads() == before + 1
        }),
        "reads go to the replica"
    );
    let retried_before = retried();

    proxy.blackhole();
    let in_flight = {
        let (port, token, id) = (server.port, token.clone(), ids[0]);
        std::thread::spawn(move || {
            let started = Instant::now();
            let raw = common::api_request("GET", &format!("/v1/users/{id}"), Some(&token), None);
            let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            let got = common::request_on(&stream, &raw);
            (got.status, got.json()["id"].as_i64(), started.elapsed())
        })
    };
    // Well inside max_replica_lag_ms: the replica still counts as usable, and the read
    // waits on it in the silence.
    std::thread::sleep(Duration::from_millis(300));
    assert!(!in_flight.is_finished(), "the read is waiting on the silent replica");
    let reset = Instant::now();
    proxy.reset();
    let (status, id, took) = in_flight.join().unwrap();
    assert_eq!((status, id), (200, Some(ids[0])), "answered, from the primary");
    assert!(
        reset.elapsed() < Duration::from_secs(1),
        "retried at once, {took:?} in all"
    );
    assert_eq!(retried() - retried_before, 1, "counted as retried on the primary");
}

#[test]
fn a_write_on_one_instance_is_read_fresh_on_another_while_the_replica_is_behind() {
    let (services, replica, a) = start("max_replica_lag_ms = 60000");
    let b = start_percore(&services, &replica.url, "max_replica_lag_ms = 60000");
    let (user_id, user) = a.sign_up("Writer");
    let (_, reader) = a.sign_up("Reader");
    // B knows both sessions and has the writer's documents in its memory.
    for token in [&user, &reader] {
        assert_eq!(b.call("GET", "/v1/me", Some(token), None).status, 200);
    }
    assert_eq!(
        b.call("GET", &format!("/v1/users/{user_id}"), Some(&reader), None)
            .status,
        200
    );
    let mut on_replica = connect(&replica);
    on_replica.batch_execute("SELECT pg_wal_replay_pause()").unwrap();
    set_display_name(&a, &user, "written on A");
    // B heard the invalidation before A answered; its refills wait for a replica that
    // has replayed past it, which the paused one has not, so they come from the primary.
    let me = b.call("GET", "/v1/me", Some(&user), None);
    assert_eq!(me.json()["profile"]["display_name"], "written on A", "{}", me.text());
    let seen = b.call("GET", &format!("/v1/users/{user_id}"), Some(&reader), None);
    assert_eq!(seen.json()["display_name"], "written on A", "{}", seen.text());
    // Someone who registers on A is found on B, though the replica has not replayed them.
    let newcomer = register(&a, "Newcomer");
    let found = b.call("GET", &format!("/v1/users/{newcomer}"), Some(&reader), None);
    assert_eq!(found.status, 200, "{}", found.text());
    let text = metrics(&b);
    assert!(
        metric_sum(
            &text,
            "percore_db_replica_eligible_reads_on_primary_total{",
            "not_caught_up"
        ) >= 3,
        "{text}"
    );
    on_replica.batch_execute("SELECT pg_wal_replay_resume()").unwrap();
}

#[test]
fn a_replica_that_is_not_a_standby_is_never_read_from() {
    // The primary itself listed as a replica: a configuration mistake that would read
    // from a server no sample can vouch for.
    let services = Services::start();
    let port = free_port();
    let database = format!("replicas = [\"{}\"]", services.postgres.url);
    let text = Tuning {
        server: "shards = 1\nshutdown_timeout_ms = 5000",
        database: &database,
        ..Tuning::new(port, &services)
    }
    .render();
    let server = Server::start_with_config(port, &text, &[]);
    let (user_id, token) = server.sign_up("Someone");
    assert_eq!(server.call("GET", "/v1/me", Some(&token), None).status, 200);
    let warned = percore_testkit::wait_until(Duration::from_secs(10), || server.stderr().contains("is not a standby"));
    assert!(warned, "{}", server.stderr());
    // Warned once: the replica is sampled every replica_check_interval_ms (10 ms), so half
    // a second later it has been found not a standby some fifty times more.
    std::thread::sleep(Duration::from_millis(500));
    let warnings = server.stderr().matches("is not a standby").count();
    assert_eq!(warnings, 1, "one shard, one warning: {}", server.stderr());
    let got = server.call("GET", &format!("/v1/users/{user_id}"), Some(&token), None);
    assert_eq!(got.status, 200, "{}", got.text());
    let text = metrics(&server);
    assert_eq!(metric_sum(&text, "percore_db_replica_usable{", ""), 0, "{text}");
    assert_eq!(metric_sum(&text, "percore_db_replica_reads_total{", ""), 0, "{text}");
    assert!(
        metric_sum(
            &text,
            "percore_db_replica_eligible_reads_on_primary_total{",
            "none_usable"
        ) >= 1
    );
}

fn login(server: &Server, email: &str) -> String {
    let body = json!({"email": email, "password": "correct horse battery"});
    let login = server.call("POST", "/v1/auth/login", None, Some(&body));
    assert_eq!(login.status, 200, "{}", login.text());
    login.json()["token"].as_str().unwrap().to_string()
}

/// Matches the text pg_stat_statements keeps of `Stmt::Me` (the session-checking read of
/// `GET /v1/me`) and of no other statement.
const ME_WITH_SESSION: &str = "%q.updated_at, s.user_id, s.expires_at%";

#[test]
fn session_checks_use_the_replica_only_while_it_is_as_safe_as_the_primary() {
    let (services, replica, a) = start("max_replica_lag_ms = 60000");
    // B reads, A writes: B's table of recent writers knows nothing of A's clients, so
    // only what every shard hears (invalidations) and what the rows say can protect B.
    let b = start_percore(&services, &replica.url, "max_replica_lag_ms = 60000");
    let email = common::unique_email("Traveller");
    let body = json!({"email": email, "password": "correct horse battery", "name": "Traveller"});
    assert_eq!(a.call("POST", "/v1/auth/register", None, Some(&body)).status, 201);
    let (first, second) = (login(&a, &email), login(&a, &email));
    let (_, other) = a.sign_up("Bystander");
    let mut on_primary = connect(&services.postgres);
    let mut on_replica = connect(&replica);
    // Everything so far has reached the replica.
    let ok = percore_testkit::wait_until(Duration::from_secs(10), || {
        let lsn = |client: &mut postgres::Client, sql: &str| -> String { client.query_one(sql, &[]).unwrap().get(0) };
        lsn(&mut on_primary, "SELECT pg_current_wal_flush_lsn()::text")
            == lsn(&mut on_replica, "SELECT pg_last_wal_replay_lsn()::text")
    });
    assert!(ok, "the replica caught up");
    let me = |token: &str| b.call("GET", "/v1/me", Some(token), None);
    let counts = |on_primary: &mut postgres::Client, on_replica: &mut postgres::Client| {
        (calls(on_primary, ME_WITH_SESSION), calls(on_replica, ME_WITH_SESSION))
    };

    // A session B has not seen is checked on the replica.
    let before = counts(&mut on_primary, &mut on_replica);
    assert_eq!(me(&first).status, 200);
    let after = counts(&mut on_primary, &mut on_replica);
    assert_eq!((after.0 - before.0, after.1 - before.1), (0, 1), "(primary, replica)");

    on_replica.batch_execute("SELECT pg_wal_replay_pause()").unwrap();
    // A logout on A is honoured on B, though the frozen replica still holds the session.
    assert_eq!(a.call("POST", "/v1/auth/logout", Some(&first), None).status, 204);
    let refused = me(&first);
    assert_eq!(refused.status, 401, "a revoked token: {}", refused.text());
    // A session newer than the replica: not there, so the primary decides.
    let third = login(&a, &email);
    let fresh = me(&third);
    assert_eq!(fresh.status, 200, "a new token: {}", fresh.text());
    // A write on A shows through a session the replica does hold: the row it returned
    // was older than the write's invalidation, so the primary reads it again.
    set_display_name(&a, &third, "moved on");
    let via_second = me(&second);
    assert_eq!(
        via_second.json()["profile"]["display_name"],
        "moved on",
        "{}",
        via_second.text()
    );
    // Someone untouched by all this is still served by the frozen replica.
    let before = counts(&mut on_primary, &mut on_replica);
    assert_eq!(me(&other).status, 200);
    let after = counts(&mut on_primary, &mut on_replica);
    assert_eq!((after.0 - before.0, after.1 - before.1), (0, 1), "(primary, replica)");
    let text = metrics(&b);
    for reason in ["no_session_on_replica", "changed_after_replay"] {
        let counted = metric_sum(&text, "percore_db_replica_eligible_reads_on_primary_total{", reason);
        assert!(counted >= 1, "{reason}: {text}");
    }
    on_replica.batch_execute("SELECT pg_wal_replay_resume()").unwrap();
}

#[test]
fn a_replica_lagging_past_max_replica_lag_ms_is_skipped_until_it_catches_up() {
    let (_services, replica, server) = start("max_replica_lag_ms = 300");
    let (_, token) = server.sign_up("Reader");
    let ids: Vec<i64> = (0..6).map(|i| register(&server, &format!("Someone{i}"))).collect();
    assert_eq!(server.call("GET", "/v1/me", Some(&token), None).status, 200);
    let replica_reads = || metric_sum(&metrics(&server), "percore_db_replica_reads_total{", "");
    let read = |id: i64| {
        let got = server.call("GET", &format!("/v1/users/{id}"), Some(&token), None);
        assert_eq!(got.status, 200, "{}", got.text());
    };
    // Idle, a paused replica is still caught up: nothing new to replay. A write moves the
    // primary on, and from then the replica falls behind by the clock.
    let mut on_replica = connect(&replica);
    on_replica.batch_execute("SELECT pg_wal_replay_pause()").unwrap();
    register(&server, "Mover");
    wait_usable(&server, false);
    let text = metrics(&server);
    let lag_s: f64 = text
        .lines()
        .find(|line| line.starts_with("percore_db_replica_lag_seconds{"))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
        .expect("a lag sample");
    assert!(lag_s > 0.3, "reported lag {lag_s} s");
    let before = replica_reads();
    read(ids[0]);
    read(ids[1]);
    assert_eq!(replica_reads(), before, "skipped while too far behind");
    let text = metrics(&server);
    assert!(
        metric_sum(
            &text,
            "percore_db_replica_eligible_reads_on_primary_total{",
            "none_usable"
        ) >= 2,
        "{text}"
    );
    on_replica.batch_execute("SELECT pg_wal_replay_resume()").unwrap();
    wait_usable(&server, true);
    let before = replica_reads();
    read(ids[2]);
    assert_eq!(replica_reads() - before, 1, "used again once caught up");
}
