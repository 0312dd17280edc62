//! The engine against real processes: pinned shards, metrics, pipelining, timeouts,
//! the connection cap, handler panics and database loss.

mod common;
use common::{ResponseReader, Server, Services};
use std::io::Write;
use std::time::{Duration, Instant};

fn shard_threads(pid: u32) -> Vec<(String, String)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = task.unwrap().path();
        let name = std::fs::read_to_string(path.join("comm"))
            .unwrap_or_default()
            .trim()
            .to_string();
        if name.starts_with("percore-shard") {
            let status = std::fs::read_to_string(path.join("status")).unwrap();
            let cpus = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .unwrap()
                .trim()
                .to_string();
            threads.push((name, cpus));
        }
    }
    threads.sort();
    threads
}

#[test]
fn two_shards_are_pinned_to_distinct_cpus_and_metrics_pass_promtool() {
    let services = Services::start();
    let server = Server::start(&services, "");
    assert_eq!(server.get("/healthz").status, 200);

    // glommio's helper threads carry their executor's name and placement; every thread of
    // a shard must be on that shard's one CPU, and the two shards on different CPUs.
    let threads = shard_threads(server.pid());
    let mut by_shard: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> = Default::default();
    for (name, cpus) in &threads {
        assert!(
            cpus.parse::<usize>().is_ok(),
            "{name} may run on {cpus}: not a single CPU"
        );
        by_shard.entry(name.clone()).or_default().insert(cpus.clone());
    }
    assert_eq!(by_shard.len(), 2, "{threads:?}");
    let cpus: Vec<_> = by_shard.values().collect();
    assert!(
        cpus.iter().all(|set| set.len() == 1),
        "a shard's threads span CPUs: {threads:?}"
    );
    assert_ne!(cpus[0], cpus[1], "shards share a CPU: {threads:?}");

    // Traffic on several connections so both shards have something to report.
    for _ in 0..20 {
        assert_eq!(server.get("/json").status, 200);
        assert_eq!(server.get("/nope").status, 404);
    }
    // Each shard's Postgres connections come up on their own after start-up (each
    // prepares every statement first): wait for all of them, within a bound.
    let all_up =
        |text: &str| (0..2).all(|shard| text.contains(&format!("percore_db_connections_up{{shard=\"{shard}\"}} 6\n")));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut metrics = server.get("/metrics");
    while !all_up(&metrics.text()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        metrics = server.get("/metrics");
    }
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .header("Content-Type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = metrics.text();
    for family in [
        "percore_http_requests_total{shard=\"0\"",
        "percore_http_request_duration_seconds_bucket{shard=\"1\",route=\"json\"",
        "percore_connections_open{shard=\"1\"}",
        "percore_received_bytes_total{shard=\"0\"}",
        "percore_worker_queue_depth ",
        // Two connections for reads and four for writes (the defaults), all up.
        "percore_db_connections_up{shard=\"0\"} 6",
        "percore_db_connections_per_shard 6",
        "percore_db_connections_up{shard=\"1\"} 6",
        "percore_redis_up{shard=\"0\"} 1",
    ] {
        assert!(text.contains(family), "metrics lack {family}:\n{text}");
    }
    let json_count = common::metric_sum(&text, "percore_http_requests_total{", "route=\"json\",status=\"200\"");
    assert_eq!(json_count, 20);

    if let Err(complaints) = common::promtool_check_metrics(&metrics.body) {
        panic!("promtool: {complaints}");
    }
}

#[test]
fn sixty_four_pipelined_requests_are_answered_in_order() {
    let services = Services::start();
    let server = Server::start(&services, "");
    let paths = ["/healthz", "/json", "/plaintext", "/nope"];
    let mut batch = String::new();
    for i in 0..64 {
        batch.push_str(&format!("GET {} HTTP/1.1\r\nHost: t\r\n\r\n", paths[i % 4]));
    }
    let stream = server.connect();
    (&stream).write_all(batch.as_bytes()).unwrap();
    let mut reader = ResponseReader::new(&stream);
    for i in 0..64 {
        let response = reader.next(false).unwrap_or_else(|| panic!("response {i} missing"));
        let expected = match paths[i % 4] {
            "/healthz" => (200, r#"{"status":"ok"}"#),
            "/json" => (200, r#"{"message":"Hello, World!"}"#),
            "/plaintext" => (200, "Hello, World!"),
            _ => (404, r#"{"error":{"code":"not_found","message":"no such route"}}"#),
        };
        assert_eq!((response.status, response.text().as_str()), expected, "response {i}");
    }
}

#[test]
fn a_request_split_at_every_byte_boundary_is_parsed_the_same() {
    let services = Services::start();
    let server = Server::start(&services, "");
    let raw =
        b"POST /bench/hash HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
    let stream = server.connect();
    let mut reader = ResponseReader::new(&stream);
    for split in 1..raw.len() {
        (&stream).write_all(&raw[..split]).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        (&stream).write_all(&raw[split..]).unwrap();
        let response = reader.next(false).unwrap();
        assert_eq!(response.status, 200, "split at {split}: {}", response.text());
        assert!(response.json()["hash"].as_str().unwrap().starts_with("$argon2id$"));
    }
}

#[test]
fn a_slowloris_client_is_cut_off_at_the_header_timeout() {
    let services = Services::start();
    let server = Server::start(&services, "header_read_timeout_ms = 1000\nidle_timeout_ms = 5000");
    let stream = server.connect();
    let started = Instant::now();
    let raw = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut reader = ResponseReader::new(&stream);
    let mut cut_off = false;
    for byte in raw.iter() {
        // One byte every 100 ms: each read succeeds, only the head deadline can stop it.
        if (&stream).write_all(&[*byte]).is_err() {
            cut_off = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        if started.elapsed() > Duration::from_millis(1300) {
            break;
        }
    }
    let _ = cut_off;
    let response = reader.next(false).expect("a 408 before the close");
    assert_eq!(response.status, 408);
    assert_eq!(response.error_code(), "request_timeout");
    assert!(reader.closed());
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(3),
        "cut off after {elapsed:?}"
    );
}

#[test]
fn an_idle_keep_alive_connection_is_closed_at_the_idle_timeout() {
    let services = Services::start();
    let server = Server::start(&services, "idle_timeout_ms = 500");
    let stream = server.connect();
    let mut reader = ResponseReader::new(&stream);
    (&stream)
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(reader.next(false).unwrap().status, 200);
    let idle_since = Instant::now();
    assert!(reader.closed(), "still open after the idle timeout");
    let idle = idle_since.elapsed();
    assert!(
        idle >= Duration::from_millis(400) && idle < Duration::from_secs(3),
        "closed after {idle:?}"
    );
}

#[test]
fn at_the_connection_cap_the_shard_waits_until_a_slot_frees() {
    let services = Services::start();
    let port = common::free_port();
    let text = common::Tuning {
        server: "shards = 1\nconnections_per_shard_max = 2",
        ..common::Tuning::new(port, &services)
    };
    let server = Server::start_with_config(port, &text.render(), &[]);
    let first = server.connect();
    let second = server.connect();
    for stream in [&first, &second] {
        (&*stream)
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        assert_eq!(ResponseReader::new(stream).next(false).unwrap().status, 200);
    }
    // The kernel completes the handshake from its backlog, but the shard does not accept.
    let third = server.connect();
    third.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    (&third).write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut buffer = [0u8; 64];
    let waited = std::io::Read::read(&mut &third, &mut buffer);
    assert!(waited.is_err(), "answered past the cap: {waited:?}");
    drop(first);
    third.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(ResponseReader::new(&third).next(false).unwrap().status, 200);
}

#[test]
fn a_panicking_handler_gets_500_and_the_shard_lives_on() {
    let services = Services::start();
    let server = Server::start(&services, "");
    for _ in 0..8 {
        let stream = server.connect();
        let mut reader = ResponseReader::new(&stream);
        (&stream)
            .write_all(b"GET /bench/panic HTTP/1.1\r\nHost: t\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let failed = reader.next(false).unwrap();
        assert_eq!(failed.status, 500);
        assert_eq!(failed.error_code(), "internal_error");
        assert_eq!(reader.next(false).unwrap().status, 200);
    }
    let metrics = server.get("/metrics").text();
    let panics = common::metric_sum(&metrics, "percore_handler_panics_total{", "");
    assert_eq!(panics, 8);
}

fn wait_for_status(server: &Server, path: &str, status: u16, limit: Duration) -> common::Response {
    let deadline = Instant::now() + limit;
    loop {
        let response = server.get(path);
        if response.status == status || Instant::now() > deadline {
            return response;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn readyz_follows_postgres_down_and_back_without_a_restart() {
    let mut services = Services::start();
    let server = Server::start(&services, "");
    assert_eq!(
        wait_for_status(&server, "/readyz", 200, Duration::from_secs(10)).status,
        200
    );

    services.postgres.kill();
    let down = wait_for_status(&server, "/readyz", 503, Duration::from_secs(10));
    assert_eq!(down.status, 503, "{}", down.text());
    assert_eq!(down.error_code(), "not_ready");
    assert_eq!(down.header("Retry-After"), Some("1"));
    assert_eq!(
        server.get("/healthz").status,
        200,
        "liveness must not depend on the database"
    );

    services.postgres.restart();
    let back = wait_for_status(&server, "/readyz", 200, Duration::from_secs(15));
    assert_eq!(back.status, 200, "{}\n{}", back.text(), server.stderr());
}

#[test]
fn readyz_is_503_when_the_database_never_answers() {
    let services = Services::start();
    let port = common::free_port();
    let nowhere = format!("postgres://postgres@127.0.0.1:{}/postgres", common::free_port());
    let text = common::Tuning {
        database_url: &nowhere,
        ..common::Tuning::new(port, &services)
    }
    .render();
    let server = Server::start_with_config(port, &text, &[]);
    let response = server.get("/readyz");
    assert_eq!(response.status, 503);
    assert_eq!(response.error_code(), "not_ready");
}

#[test]
fn redis_loss_is_reported_not_fatal_and_the_connection_comes_back() {
    let mut services = Services::start();
    let server = Server::start(&services, "");
    let ready = wait_for_status(&server, "/readyz", 200, Duration::from_secs(10));
    assert_eq!(ready.json()["redis"], true, "{}", ready.text());

    services.redis.kill();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut without = server.get("/readyz");
    while without.json()["redis"] != false && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        without = server.get("/readyz");
    }
    assert_eq!(without.status, 200, "Redis does not gate readiness: {}", without.text());
    assert_eq!(without.json()["redis"], false);

    services.redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut back = server.get("/readyz");
    while back.json()["redis"] != true && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        back = server.get("/readyz");
    }
    assert_eq!(back.json()["redis"], true, "redis did not come back: {}", back.text());
}

#[test]
fn concurrent_readiness_checks_pipeline_on_each_shards_connections() {
    let services = Services::start();
    let server = Server::start(&services, "");
    let ready = wait_for_status(&server, "/readyz", 200, Duration::from_secs(10));
    assert_eq!(ready.status, 200, "{}", ready.text());
    // 200 readiness checks in one write per connection: each runs a prepared statement on
    // Postgres and a PING on Redis; replies must pair with their requests in order.
    let streams: Vec<_> = (0..4).map(|_| server.connect()).collect();
    for stream in &streams {
        (&*stream)
            .write_all("GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n".repeat(50).as_bytes())
            .unwrap();
    }
    for stream in &streams {
        let mut reader = ResponseReader::new(stream);
        for i in 0..50 {
            let response = reader.next(false).unwrap();
            assert_eq!(response.status, 200, "check {i}: {}", response.text());
            assert_eq!(response.json()["redis"], true);
        }
    }
    let metrics = server.get("/metrics").text();
    let statements = common::metric_sum(&metrics, "percore_db_statements_total{", "route=\"readyz\"");
    assert!(statements >= 200, "{statements} statements counted");
}

#[test]
fn a_body_that_stops_arriving_gets_408_at_the_body_timeout() {
    let services = Services::start();
    let server = Server::start(&services, "body_read_timeout_ms = 500");
    let stream = server.connect();
    let sent = Instant::now();
    (&stream)
        .write_all(b"POST /bench/hash HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
        .unwrap();
    let mut reader = ResponseReader::new(&stream);
    let response = reader.next(false).expect("a 408");
    assert_eq!(response.status, 408);
    assert_eq!(response.error_code(), "request_timeout");
    assert!(reader.closed());
    let waited = sent.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(3),
        "after {waited:?}"
    );
}

/// Open client connections on all shards, asked over `probe`, a keep-alive connection of
/// its own (so the count includes it, and no closing probe can blur the figure).
fn open_connections(probe: &std::net::TcpStream) -> u64 {
    (&*probe)
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let text = ResponseReader::new(probe).next(false).unwrap().text();
    common::metric_sum(&text, "percore_connections_open{", "")
}

#[test]
fn a_client_that_never_reads_is_dropped_at_the_write_timeout_holding_bounded_memory() {
    const WRITE_TIMEOUT_MS: u64 = 500;
    let services = Services::start();
    let server = Server::start(&services, "write_timeout_ms = 500\nwrite_buffer_bytes_max = 65536");
    let probe = server.connect();
    let metrics_bytes = server.get("/metrics").body.len();
    let rss_before_kib = server.rss_kib();
    let stream = server.connect();
    // Far more response bytes than the socket buffers hold (4,000 /metrics answers, about
    // 4,000 × metrics_bytes), and never a read.
    let batch = "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n".repeat(100);
    stream.set_write_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut stalled = Instant::now();
    for _ in 0..40 {
        if (&stream).write_all(batch.as_bytes()).is_err() {
            break;
        }
        stalled = Instant::now();
    }
    // Until it is dropped, the server holds at most its write buffer (plus the answer that
    // crossed it) and a read buffer, not the answers it was asked for: RSS is sampled all
    // along. Dropped once its writes made no progress for write_timeout_ms (only the probe
    // is left then).
    let bound = Duration::from_millis(WRITE_TIMEOUT_MS + 1_500);
    let mut grown_kib = 0;
    while open_connections(&probe) > 1 {
        grown_kib = grown_kib.max(server.rss_kib().saturating_sub(rss_before_kib));
        assert!(
            stalled.elapsed() < bound,
            "still open {:?} after the stall",
            stalled.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let asked_kib = (4_000 * metrics_bytes / 1024) as u64;
    assert!(
        grown_kib < 4 * 1024,
        "RSS grew {grown_kib} KiB for a stalled client asking {asked_kib} KiB of answers"
    );
    eprintln!(
        "never-reading client: dropped {:?} after the stall, RSS grew {grown_kib} KiB (asked {asked_kib} KiB)",
        stalled.elapsed()
    );
    drop(stream);
}

#[test]
fn at_the_fd_limit_accept_fails_softly_backs_off_and_service_resumes() {
    const BACKOFF_MS: u128 = 200;
    let services = Services::start();
    let port = common::free_port();
    let text = common::Tuning {
        server: "shards = 1\naccept_error_backoff_ms = 200",
        ..common::Tuning::new(port, &services)
    }
    .render();
    // Enough descriptors to start (rings, eventfds, Postgres, Redis, the listener), far too
    // few for the connections below; connections_per_shard_max stays at its 10,000.
    let server = Server::start_limited(port, &text, &[], Some(96));
    let mut held = Vec::new();
    let exhausting = Instant::now();
    for _ in 0..150 {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(stream) => held.push(stream),
            Err(_) => break,
        }
    }
    std::thread::sleep(Duration::from_millis(1_000));
    drop(held);
    let held_ms = exhausting.elapsed().as_millis();
    // The shard backs off after EMFILE and accepts again once descriptors are free.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut metrics = String::new();
    while Instant::now() < deadline {
        if let Ok(stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut reader = ResponseReader::new(&stream);
            if (&stream).write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").is_ok()
                && let Some(response) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reader.next(false)))
                    .ok()
                    .flatten()
            {
                metrics = response.text();
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let accept_errors = common::metric_sum(&metrics, "percore_accept_errors_total{", "");
    assert!(accept_errors > 0, "the fd limit was never hit:\n{metrics}");
    // One failed accept per backoff while the descriptors were gone, not a busy loop.
    let most = (held_ms / BACKOFF_MS + 3) as u64;
    eprintln!("fd limit: {accept_errors} failed accepts over {held_ms} ms (backoff {BACKOFF_MS} ms)");
    assert!(
        accept_errors <= most,
        "{accept_errors} failed accepts in {held_ms} ms: more than one per accept_error_backoff_ms ({most})"
    );
    assert_eq!(server.get("/healthz").status, 200);
}

#[test]
fn a_paused_redis_costs_at_most_the_command_timeout_and_replies_stay_paired() {
    let services = Services::start();
    let server = Server::start(&services, "");
    let ready = wait_for_status(&server, "/readyz", 200, Duration::from_secs(10));
    assert_eq!(ready.json()["redis"], true);
    let pid = services.redis.pid().expect("our own redis") as i32;

    // SAFETY: pausing our own child process.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    for _ in 0..5 {
        let asked = Instant::now();
        let paused = server.get("/readyz");
        let took = asked.elapsed();
        assert_eq!(paused.status, 200, "{}", paused.text());
        assert_eq!(paused.json()["redis"], false);
        // redis.command_timeout_ms (100 ms by default), plus 150 ms for a busy 2-core
        // machine running a debug build (measured: 101-106 ms beside the other tests).
        assert!(
            took < Duration::from_millis(100 + 150),
            "a paused Redis held a request for {took:?}"
        );
    }
    // SAFETY: resuming it.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    // The late replies to the timed-out PINGs arrive first and are discarded in order;
    // later commands get their own replies.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut back = server.get("/readyz");
    while back.json()["redis"] != true && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        back = server.get("/readyz");
    }
    assert_eq!(back.json()["redis"], true, "{}", back.text());
}
