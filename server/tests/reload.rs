//! Tuning while serving: SIGHUP rereads tuning.toml under load. A lowered rate limit bites
//! within a second and a raised one lets go; an invalid file changes nothing and is
//! logged with its key; a restart-only key is named and flagged; no request fails.

mod common;
use common::{Server, Services, Tuning, metric_sum};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// (sent, status) for every request; status 0: sent and never answered.
type Samples = Vec<(Duration, u16)>;

/// `threads` clients on keep-alive connections send GET /v1/me with `token` until `stop`.
fn load(
    port: u16,
    token: &str,
    threads: usize,
    began: Instant,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Samples>> {
    (0..threads)
        .map(|_| {
            let (token, stop) = (token.to_string(), stop.clone());
            std::thread::spawn(move || {
                let request = common::api_request("GET", "/v1/me", Some(&token), None);
                let mut samples = Vec::new();
                let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut reader = common::ResponseReader::new(&stream);
                while !stop.load(Ordering::Relaxed) {
                    let sent = began.elapsed();
                    let answered = std::io::Write::write_all(&mut &stream, request.as_bytes())
                        .ok()
                        .and_then(|()| reader.next(false));
                    samples.push((sent, answered.as_ref().map_or(0, |r| r.status)));
                    if answered.is_none() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                samples
            })
        })
        .collect()
}

fn config(port: u16, services: &Services, read_limit: &str, server: &str) -> String {
    let extra = format!("[rate_limit.read]\n{read_limit}\n");
    Tuning {
        server,
        extra: &extra,
        ..Tuning::new(port, services)
    }
    .render()
}

#[test]
fn a_reload_under_load_moves_the_rate_limit_within_a_second_and_a_bad_file_changes_nothing() {
    const UNLIMITED: &str = "rate = 1000000.0\nburst = 1000000";
    const TIGHT: &str = "rate = 20.0\nburst = 20";
    let services = Services::start();
    let port = common::free_port();
    let shards = "shards = 2\nshutdown_timeout_ms = 5000";
    let server = Server::start_with_config(port, &config(port, &services, UNLIMITED, shards), &[]);
    let path = server.dir.join("tuning.toml");
    let (_, token) = server.sign_up("Reloaded");
    let reload = |text: &str| {
        std::fs::write(&path, text).unwrap();
        server.signal(libc::SIGHUP);
    };
    let began = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(port, &token, 4, began, &stop);
    // wrk beside them, on a route no limit touches: every reload happens under its load.
    let wrk = std::process::Command::new("wrk")
        .args(["-t1", "-c16", "-d5s", &format!("http://127.0.0.1:{port}/json")])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("wrk (apt-get install wrk)");

    std::thread::sleep(Duration::from_secs(1));
    let tightened = began.elapsed();
    reload(&config(port, &services, TIGHT, shards));
    std::thread::sleep(Duration::from_millis(1500));
    let loosened = began.elapsed();
    reload(&config(port, &services, UNLIMITED, shards));
    std::thread::sleep(Duration::from_millis(1500));
    // Invalid: refused, logged with its key; the unlimited configuration stays.
    let broken = began.elapsed();
    reload(&config(port, &services, "rate = -1.0\nburst = 20", shards));
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    let mut samples: Samples = clients.into_iter().flat_map(|c| c.join().unwrap()).collect();
    samples.sort();

    let wrk = wrk.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&wrk.stdout);
    assert!(report.contains("requests in"), "{report}");
    assert!(
        !report.contains("Non-2xx") && !report.contains("Socket errors"),
        "wrk saw failures through the reloads: {report}"
    );
    let unexpected: Vec<_> = samples.iter().filter(|(_, s)| *s != 200 && *s != 429).collect();
    assert!(
        unexpected.is_empty(),
        "only 200 and 429, every request answered: {unexpected:?}"
    );
    let limited: Vec<Duration> = samples.iter().filter(|(_, s)| *s == 429).map(|(at, _)| *at).collect();
    assert!(!limited.is_empty(), "the tightened limit never bit");
    let (first, last) = (limited[0], limited[limited.len() - 1]);
    eprintln!(
        "429s from {:?} after the tightening reload to {:?} after the loosening one",
        first - tightened,
        last.saturating_sub(loosened)
    );
    assert!(first > tightened, "no 429 before the reload: {first:?}");
    assert!(
        first - tightened < Duration::from_secs(1),
        "429s began {:?} after",
        first - tightened
    );
    assert!(
        last < loosened + Duration::from_secs(1),
        "429s went on {:?} after the loosening reload",
        last - loosened
    );
    assert!(
        samples.iter().any(|(at, s)| *at > broken && *s == 200),
        "served after the bad file"
    );
    let stderr = server.stderr();
    assert!(
        stderr.contains("reload refused") && stderr.contains("rate_limit.read.rate"),
        "{stderr}"
    );
    let metrics = server.get("/metrics").text();
    assert_eq!(
        metric_sum(&metrics, "percore_config_reloads_total{", "applied"),
        2,
        "{metrics}"
    );
    assert_eq!(metric_sum(&metrics, "percore_config_reloads_total{", "refused"), 1);
    assert_eq!(metric_sum(&metrics, "percore_config_restart_pending", ""), 0);

    // A restart-only key: named in one warning, flagged until a restart, not applied.
    reload(&config(
        port,
        &services,
        UNLIMITED,
        "shards = 1\nshutdown_timeout_ms = 5000",
    ));
    let flagged = percore_testkit::wait_until(Duration::from_secs(2), || {
        metric_sum(&server.get("/metrics").text(), "percore_config_restart_pending", "") == 1
    });
    assert!(flagged, "restart_pending never set");
    assert!(
        server
            .stderr()
            .contains("need a restart and keep their running values until then: server.shards")
    );
    let metrics = server.get("/metrics").text();
    assert!(
        metrics.contains("percore_http_requests_total{shard=\"1\""),
        "still two shards"
    );
}

/// A keep-alive connection opened before a reload obeys the new HTTP limits from its next
/// request on: a balancer's pooled connections may never close, so "new connections only"
/// would mean never.
#[test]
fn a_keep_alive_connection_open_across_a_reload_gets_the_new_body_limit_on_its_next_request() {
    let services = Services::start();
    let port = common::free_port();
    let with_body_max = |http: &str| {
        Tuning {
            server: "shards = 1\nshutdown_timeout_ms = 5000",
            http,
            ..Tuning::new(port, &services)
        }
        .render()
    };
    let server = Server::start_with_config(port, &with_body_max("body_bytes_max = 1048576"), &[]);
    let body = "x".repeat(30_000);
    let request = format!(
        "POST /nope HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reader = common::ResponseReader::new(&stream);
    let mut send = || {
        std::io::Write::write_all(&mut &stream, request.as_bytes()).unwrap();
        reader.next(false).expect("an answer on the same connection")
    };
    assert_eq!(send().status, 404, "30,000 bytes are within 1 MiB");

    std::fs::write(server.dir.join("tuning.toml"), with_body_max("body_bytes_max = 20000")).unwrap();
    server.signal(libc::SIGHUP);
    let applied = percore_testkit::wait_until(Duration::from_secs(5), || {
        metric_sum(
            &server.get("/metrics").text(),
            "percore_config_reloads_total{",
            "applied",
        ) == 1
    });
    assert!(applied, "the reload was not applied: {}", server.stderr());
    // The shard puts it in force at its next tick; until then the old limit answers 404.
    let deadline = Instant::now() + Duration::from_secs(2);
    let after = loop {
        let answer = send();
        if answer.status != 404 || Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(after.status, 413, "{}", after.text());
    assert!(after.text().contains("body_too_large"), "{}", after.text());
}
