//! The network between percore and its services fails the way data-centre networks do,
//! through a TCP fault proxy (`percore_testkit::proxy`): a Postgres or Redis path that
//! goes silent, one that gets slow, and Postgres connections cut half-open or reset. Each
//! test bounds how fast percore notices and what its clients see meanwhile.

mod common;
use common::{Server, Services, Tuning, metric_sum};
use percore_testkit::proxy::FaultProxy;
use std::time::{Duration, Instant};

const SHARDS: u64 = 2;
/// connections_per_shard (2) + write_connections_per_shard (4).
const CONNECTIONS_PER_SHARD: u64 = 6;
/// What the common tuning sets.
const POOL_WAIT_MS: u64 = 300;

fn seed_world(services: &Services) {
    let mut db = postgres::Client::connect(&services.postgres.url, postgres::NoTls).unwrap();
    db.batch_execute("INSERT INTO world (id, randomnumber) SELECT n, n FROM generate_series(1, 10000) n")
        .unwrap();
}

/// Waits until every shard has all its Postgres connections up, at most `limit`.
fn wait_all_connections_up(server: &Server, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let metrics = server.get("/metrics").text();
        let up: Vec<u64> = (0..SHARDS)
            .map(|shard| metric_sum(&metrics, "percore_db_connections_up", &format!("shard=\"{shard}\"")))
            .collect();
        if up.iter().all(|n| *n == CONNECTIONS_PER_SHARD) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "connections up per shard {up:?} after {limit:?}: {}",
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `count` GET `path`, each on a fresh connection (so both shards get some), at once:
/// (status, error code, latency) each.
fn burst(server: &Server, path: &'static str, count: usize) -> Vec<(u16, String, Duration)> {
    let threads: Vec<_> = (0..count)
        .map(|_| {
            let stream = server.connect();
            std::thread::spawn(move || {
                let started = Instant::now();
                let response = common::request_on(&stream, &format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n"));
                let code = if response.status >= 400 {
                    response.error_code()
                } else {
                    String::new()
                };
                (response.status, code, started.elapsed())
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// Process ids of the backends Postgres runs for percore's shards (each shard names its
/// connections).
fn shard_backends(services: &Services) -> Vec<i32> {
    let mut db = postgres::Client::connect(&services.postgres.url, postgres::NoTls).unwrap();
    db.query(
        "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'percore-shard-%'",
        &[],
    )
    .unwrap()
    .iter()
    .map(|row| row.get(0))
    .collect()
}

/// Waits until every backend in `old` is gone and a full set of new ones serves the shards.
fn wait_replaced(services: &Services, server: &Server, old: &[i32], bound: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let now = shard_backends(services);
        let fresh = now.iter().filter(|pid| !old.contains(pid)).count() as u64;
        if fresh == SHARDS * CONNECTIONS_PER_SHARD && now.len() as u64 == fresh {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < bound,
            "{fresh} of {} connections replaced after {bound:?}: {}",
            SHARDS * CONNECTIONS_PER_SHARD,
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_blackholed_postgres_gets_503_within_pool_wait_plus_statement_deadline_and_every_shard_recovers() {
    // Statements are abandoned at statement_timeout_ms + deadline_margin_ms: Postgres
    // enforces the first itself, so only silence gets past it.
    const STATEMENT_DEADLINE_MS: u64 = 1_000 + 500;
    let services = Services::start();
    let proxy = FaultProxy::start(services.postgres.port);
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", proxy.port);
    let server = Tuning {
        database_url: &url,
        // Keepalive pings off: the statement deadline alone must find the silence.
        database: "statement_timeout_ms = 1000\ndeadline_margin_ms = 500\nconnect_timeout_ms = 1000\n\
                   reconnect_backoff_ms_max = 200\nkeepalive_interval_ms = 0",
        ..Tuning::new(common::free_port(), &services)
    }
    .start();
    seed_world(&services);
    wait_all_connections_up(&server, Duration::from_secs(10));
    assert!(burst(&server, "/db", 8).iter().all(|(status, _, _)| *status == 200));

    proxy.blackhole();
    let bound = Duration::from_millis(POOL_WAIT_MS + STATEMENT_DEADLINE_MS + 500);
    let answers = burst(&server, "/db", 16);
    let slowest = answers.iter().map(|(_, _, latency)| *latency).max().unwrap();
    eprintln!("blackholed Postgres: 16 requests answered 503, slowest after {slowest:?}");
    for (status, code, latency) in &answers {
        assert_eq!(*status, 503, "{answers:?}");
        assert!(
            code == "database_timeout" || code == "database_unavailable",
            "{answers:?}"
        );
        assert!(
            *latency < bound,
            "answered after {latency:?}, bound {bound:?}: {answers:?}"
        );
    }
    // Nothing usable now (new connections time out in the silence): not ready, fast.
    let started = Instant::now();
    let ready = server.get("/readyz");
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert_eq!(ready.error_code(), "not_ready");
    assert!(started.elapsed() < bound, "{:?}", started.elapsed());

    proxy.heal();
    let recovered = wait_all_connections_up(&server, Duration::from_secs(10));
    eprintln!("blackholed Postgres: every shard's connections back {recovered:?} after healing");
    assert_eq!(server.get("/readyz").status, 200);
    let after = burst(&server, "/db", 16);
    assert!(after.iter().all(|(status, _, _)| *status == 200), "{after:?}");
    assert!(server.stderr().contains("lost"), "the replaced connections are logged");
}

#[test]
fn a_blackholed_redis_costs_a_read_at_most_redis_timeout_ms_and_postgres_answers() {
    const REDIS_TIMEOUT_MS: u64 = 100;
    let services = Services::start();
    let proxy = FaultProxy::start(services.redis.port);
    let url = format!("redis://127.0.0.1:{}", proxy.port);
    let server = Tuning {
        redis_url: &url,
        // The client's own command timeout is far longer: only the cache's bound holds.
        redis: "command_timeout_ms = 3000",
        extra: "[cache]\nredis_timeout_ms = 100\nbreaker_backoff_ms = 300\n\
                [rate_limit.read]\nrate = 100000.0\nburst = 100000",
        ..Tuning::new(common::free_port(), &services)
    }
    .start();
    let users: Vec<(i64, String)> = (0..4).map(|i| server.sign_up(&format!("reader{i}"))).collect();
    let token = users[0].1.clone();
    let read = |id: i64| {
        let stream = server.connect();
        let started = Instant::now();
        let request = common::api_request("GET", &format!("/v1/users/{id}"), Some(&token), None);
        (common::request_on(&stream, &request).status, started.elapsed())
    };
    for (id, _) in &users {
        assert_eq!(read(*id).0, 200);
    }

    proxy.blackhole();
    let metrics = server.get("/metrics").text();
    let errors_before = metric_sum(&metrics, "percore_cache_redis_errors_total", "");
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut reads = 0;
    while started.elapsed() < Duration::from_secs(3) {
        for (id, _) in &users {
            let (status, latency) = read(*id);
            assert_eq!(status, 200, "a read failed with Redis blackholed");
            slowest = slowest.max(latency);
            reads += 1;
        }
    }
    let metrics = server.get("/metrics").text();
    let errors = metric_sum(&metrics, "percore_cache_redis_errors_total", "") - errors_before;
    eprintln!("blackholed Redis: {reads} reads, slowest {slowest:?}, {errors} Redis calls timed out");
    assert!(errors >= 2, "Redis was asked, and timed out: {errors}");
    assert!(
        slowest < Duration::from_millis(REDIS_TIMEOUT_MS + 150),
        "a read waited {slowest:?} (redis_timeout_ms {REDIS_TIMEOUT_MS})"
    );

    proxy.heal();
    let healed = Instant::now();
    loop {
        let metrics = server.get("/metrics").text();
        if metric_sum(&metrics, "percore_redis_up", "") == SHARDS {
            break;
        }
        assert!(healed.elapsed() < Duration::from_secs(10), "Redis not back: {metrics}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_slow_postgres_shows_in_the_route_histogram_and_nothing_fails() {
    const DELAY_MS: u64 = 30;
    let services = Services::start();
    let proxy = FaultProxy::start(services.postgres.port);
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", proxy.port);
    let server = Tuning {
        database_url: &url,
        ..Tuning::new(common::free_port(), &services)
    }
    .start();
    seed_world(&services);
    wait_all_connections_up(&server, Duration::from_secs(10));
    let histogram = |server: &Server| {
        let metrics = server.get("/metrics").text();
        let count = metric_sum(&metrics, "percore_http_request_duration_seconds_count", "route=\"db\"");
        let fast = metric_sum(
            &metrics,
            "percore_http_request_duration_seconds_bucket",
            "route=\"db\",le=\"0.05\"",
        );
        (count, fast)
    };
    let stream = server.connect();
    let db = |n: usize| -> Vec<(u16, Duration)> {
        (0..n)
            .map(|_| {
                let started = Instant::now();
                let status = common::request_on(&stream, "GET /db HTTP/1.1\r\nHost: t\r\n\r\n").status;
                (status, started.elapsed())
            })
            .collect()
    };
    assert!(db(20).iter().all(|(status, _)| *status == 200));

    proxy.delay(Duration::from_millis(DELAY_MS));
    let (count_before, fast_before) = histogram(&server);
    let delayed = db(40);
    let (count_after, fast_after) = histogram(&server);
    assert!(delayed.iter().all(|(status, _)| *status == 200), "{delayed:?}");
    // The statement and its answer each wait DELAY_MS in the proxy.
    let quickest = delayed.iter().map(|(_, latency)| *latency).min().unwrap();
    assert!(quickest >= Duration::from_millis(2 * DELAY_MS), "{quickest:?}");
    assert_eq!(count_after - count_before, 40, "every delayed request is counted");
    assert_eq!(
        fast_after - fast_before,
        0,
        "none of them lands in the histogram under 50 ms"
    );

    proxy.delay(Duration::ZERO);
    let (_, fast_before) = histogram(&server);
    assert!(db(20).iter().all(|(status, _)| *status == 200));
    let (_, fast_after) = histogram(&server);
    assert!(fast_after - fast_before >= 15, "fast again once the delay is gone");
}

#[test]
fn half_open_postgres_connections_are_found_by_keepalive_and_replaced_before_a_request_meets_them() {
    const KEEPALIVE_INTERVAL_MS: u64 = 500;
    const KEEPALIVE_TIMEOUT_MS: u64 = 300;
    const CHECK_MS: u64 = 1_000 / 2; // deadline_margin_ms / 2
    let services = Services::start();
    let proxy = FaultProxy::start(services.postgres.port);
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", proxy.port);
    let server = Tuning {
        database_url: &url,
        database: "keepalive_interval_ms = 500\nkeepalive_timeout_ms = 300\nreconnect_backoff_ms_max = 200",
        ..Tuning::new(common::free_port(), &services)
    }
    .start();
    seed_world(&services);
    wait_all_connections_up(&server, Duration::from_secs(10));
    let before = shard_backends(&services);
    assert_eq!(before.len() as u64, SHARDS * CONNECTIONS_PER_SHARD);

    // Postgres sees every connection end; percore sees nothing at all on them.
    proxy.cut_half_open();
    let bound = Duration::from_millis(KEEPALIVE_INTERVAL_MS + KEEPALIVE_TIMEOUT_MS + 2 * CHECK_MS + 1_000);
    let took = wait_replaced(&services, &server, &before, bound);
    eprintln!("half-open: every connection replaced {took:?} after the cut");
    assert!(server.stderr().contains("did not answer a keepalive"));
    wait_all_connections_up(&server, Duration::from_secs(5));
    let answers = burst(&server, "/db", 16);
    assert!(
        answers
            .iter()
            .all(|(status, _, latency)| *status == 200 && *latency < Duration::from_secs(1)),
        "no request met a dead connection: {answers:?}"
    );

    // A reset is noticed at once, without waiting for a keepalive.
    let before = shard_backends(&services);
    proxy.reset();
    let took = wait_replaced(
        &services,
        &server,
        &before,
        Duration::from_millis(KEEPALIVE_INTERVAL_MS),
    );
    eprintln!("reset: every connection replaced {took:?} after it");
    wait_all_connections_up(&server, Duration::from_secs(5));
    assert!(burst(&server, "/db", 8).iter().all(|(status, _, _)| *status == 200));
}
