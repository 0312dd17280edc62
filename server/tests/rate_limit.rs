//! Per-client rate limits: a client over its class's rate gets 429 with Retry-After and the
//! RateLimit fields while another client stays at 200; X-Forwarded-For counts only from
//! trusted proxies; in global mode two processes enforce one limit through Redis, and fall
//! back to each shard's own limit when Redis is gone or frozen (at most redis_timeout_ms late).

mod common;
use common::{Response, Server, Services, Tuning};
use std::time::Duration;

fn start(services: &Services, server: &str, extra: &str) -> Server {
    let port = common::free_port();
    let text = Tuning {
        server,
        extra,
        ..Tuning::new(port, services)
    }
    .render();
    Server::start_with_config(port, &text, &[])
}

fn assert_limited(response: &Response, limit: &str) {
    assert_eq!(response.status, 429, "{}", response.text());
    assert_eq!(response.error_code(), "rate_limited");
    let retry: u64 = response.header("Retry-After").expect("Retry-After").parse().unwrap();
    assert!(retry >= 1, "Retry-After {retry}");
    assert_eq!(response.header("RateLimit-Limit"), Some(limit));
    assert_eq!(response.header("RateLimit-Remaining"), Some("0"));
    assert!(response.header("RateLimit-Reset").is_some());
}

#[test]
fn a_client_over_its_rate_gets_429_while_another_stays_at_200() {
    let services = Services::start();
    // One shard, so a client meets one bucket (local mode: one per shard).
    let server = start(&services, "shards = 1", "[rate_limit.read]\nrate = 1.0\nburst = 3\n");
    let (_, greedy) = server.sign_up("greedy");
    let (_, modest) = server.sign_up("modest");
    for _ in 0..3 {
        assert_eq!(server.call("GET", "/v1/me", Some(&greedy), None).status, 200);
    }
    assert_limited(&server.call("GET", "/v1/me", Some(&greedy), None), "3");
    assert_eq!(
        server.call("GET", "/v1/me", Some(&modest), None).status,
        200,
        "another client is unaffected"
    );
    // Writes are another class, operations none.
    let prefs = serde_json::json!({"locale": "en", "timezone": "UTC", "theme": "dark", "email_opt_in": true});
    assert_eq!(
        server.call("PUT", "/v1/me/prefs", Some(&greedy), Some(&prefs)).status,
        200
    );
    assert_eq!(server.get("/healthz").status, 200);
    // One token a second refills the bucket.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(server.call("GET", "/v1/me", Some(&greedy), None).status, 200);
    let metrics = server.get("/metrics").text();
    assert!(
        common::metric_sum(&metrics, "percore_http_requests_total", "status=\"429\"") >= 1,
        "429s are counted"
    );
}

fn login_from(server: &Server, forwarded_for: &str) -> u16 {
    let body = r#"{"email":"nobody@example.test","password":"wrong password"}"#;
    let raw = format!(
        "POST /v1/auth/login HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: {forwarded_for}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    common::request_on(&server.connect(), &raw).status
}

#[test]
fn forwarded_for_names_the_client_only_behind_a_trusted_proxy() {
    let services = Services::start();
    let limits =
        "[rate_limit.auth]\nrate = 0.01\nburst = 2\n[identity]\nlogin_burst = 100\nlogin_rate_per_minute = 100\n";
    let behind_proxy = start(&services, "shards = 1\ntrusted_proxies = [\"127.0.0.0/8\"]", limits);
    assert_eq!(login_from(&behind_proxy, "198.51.100.1"), 401);
    assert_eq!(login_from(&behind_proxy, "198.51.100.1"), 401);
    assert_eq!(
        login_from(&behind_proxy, "198.51.100.1"),
        429,
        "the forwarded client is over its limit"
    );
    assert_eq!(
        login_from(&behind_proxy, "198.51.100.2"),
        401,
        "another forwarded client is not"
    );
    // A client cannot pick its own identity where the peer is not a trusted proxy.
    let direct = start(&services, "shards = 1", limits);
    assert_eq!(login_from(&direct, "198.51.100.1"), 401);
    assert_eq!(login_from(&direct, "198.51.100.2"), 401);
    assert_eq!(
        login_from(&direct, "198.51.100.3"),
        429,
        "X-Forwarded-For from an untrusted peer is ignored"
    );
}

#[test]
fn in_global_mode_two_processes_enforce_one_limit_and_fall_back_to_their_own() {
    let mut services = Services::start();
    let limits = "[rate_limit]\nmode = \"global\"\nredis_timeout_ms = 200\n[rate_limit.read]\nrate = 0.01\nburst = 4\n";
    let a = start(&services, "shards = 2", limits);
    let b = start(&services, "shards = 2", limits);
    let (_, token) = a.sign_up("everywhere");
    let t = Some(token.as_str());
    // Four tokens in all, whichever process and shard serves them.
    for server in [&a, &b, &a, &b] {
        assert_eq!(server.call("GET", "/v1/me", t, None).status, 200);
    }
    assert_limited(&a.call("GET", "/v1/me", t, None), "4");
    assert_limited(&b.call("GET", "/v1/me", t, None), "4");
    // Redis gone: each shard's own bucket decides (fail open to the local limit).
    services.redis.kill();
    let answered: Vec<u16> = (0..12).map(|_| a.call("GET", "/v1/me", t, None).status).collect();
    assert!(answered.iter().all(|s| *s == 200 || *s == 429), "{answered:?}");
    assert!(answered.contains(&200), "served from the local buckets: {answered:?}");
    assert!(answered.contains(&429), "still limited locally: {answered:?}");
}

#[test]
fn in_global_mode_a_paused_redis_delays_a_request_at_most_redis_timeout_ms() {
    let services = Services::start();
    let limits = "[rate_limit]\nmode = \"global\"\nredis_timeout_ms = 150\n[rate_limit.read]\nrate = 0.01\nburst = 3\n";
    let server = start(&services, "shards = 1", limits);
    let (_, token) = server.sign_up("patient");
    let t = Some(token.as_str());
    let pid = services.redis.pid().expect("our own redis") as i32;
    // SAFETY: pausing our own child process.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    // GET /v1/jobs touches no cache: the limiter is its only Redis call. Frozen, Redis holds
    // each check until redis_timeout_ms; then the shard's own bucket (burst 3) decides.
    let mut answered = Vec::new();
    for _ in 0..6 {
        let asked = std::time::Instant::now();
        let status = server.call("GET", "/v1/jobs", t, None).status;
        let took = asked.elapsed();
        answered.push(status);
        assert!(
            took < Duration::from_millis(150 + 350),
            "{took:?} for one request with Redis paused"
        );
    }
    // SAFETY: resuming it.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert_eq!(answered[..3], [200, 200, 200], "{answered:?}");
    assert!(
        answered[3..].iter().all(|s| *s == 429),
        "the local bucket still limits: {answered:?}"
    );
}
