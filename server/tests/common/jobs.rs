//! Helpers for the job tests: a server with fast job settings, enqueueing and waiting on
//! jobs, PDF checks, and table locks that hold a job or a statement mid-flight.

use super::{Server, Services, Tuning};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Fast polling, short leases and backoff, so retries and recoveries happen within seconds.
pub const FAST: &str =
    "poll_interval_ms = 50\nlease_ms = 2000\nheartbeat_ms = 400\nbackoff_ms_min = 200\nbackoff_ms_max = 5000";

/// Per-client rate limits out of the way, for tests that load the server from one client.
pub const UNLIMITED: &str = "[rate_limit.write]\nrate = 1000000.0\nburst = 1000000\n\
                             [rate_limit.jobs]\nrate = 1000000.0\nburst = 1000000\n";

pub fn queues(reports_threads: usize, reports_max_depth: u64) -> String {
    format!(
        "[jobs.queues.email]\nkinds = [\"email\"]\nthreads = 2\nmax_depth = 10000\n\
         [jobs.queues.webhook]\nkinds = [\"webhook\"]\nthreads = 2\nmax_depth = 10000\n\
         [jobs.queues.reports]\nkinds = [\"pdf\", \"export\"]\nthreads = {reports_threads}\nmax_depth = {reports_max_depth}\n"
    )
}

pub fn config(port: u16, services: &Services, jobs: &str, more: &str) -> String {
    // One client posts jobs and events as fast as the tests can: no per-client limit.
    let extra = format!("[jobs]\n{jobs}\n{more}\n[webhooks]\nallow_private = true\n{UNLIMITED}");
    Tuning {
        server: "shards = 2\nshutdown_timeout_ms = 1500",
        extra: &extra,
        ..Tuning::new(port, services)
    }
    .render()
}

pub fn start(services: &Services, jobs: &str, more: &str) -> Server {
    let port = super::free_port();
    Server::start_with_config(port, &config(port, services, jobs, more), &[])
}

pub fn db(services: &Services) -> postgres::Client {
    postgres::Client::connect(&services.postgres.url, postgres::NoTls).unwrap()
}

pub fn post_job(server: &Server, token: &str, body: &Value, key: Option<&str>) -> super::Response {
    let mut raw = super::api_request("POST", "/v1/jobs", Some(token), Some(body));
    if let Some(key) = key {
        raw = raw.replacen("\r\n", &format!("\r\nIdempotency-Key: {key}\r\n"), 1);
    }
    super::request_on(&server.connect(), &raw)
}

pub fn enqueue(server: &Server, token: &str, body: Value) -> i64 {
    let accepted = post_job(server, token, &body, None);
    assert_eq!(accepted.status, 202, "{}", accepted.text());
    let id = accepted.json()["id"].as_i64().unwrap();
    assert_eq!(accepted.header("location"), Some(format!("/v1/jobs/{id}").as_str()));
    id
}

pub fn job(server: &Server, token: &str, id: i64) -> Value {
    let response = server.call("GET", &format!("/v1/jobs/{id}"), Some(token), None);
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()
}

/// Polls the job until its status is `status` (panics on another final status or timeout).
pub fn wait_status(server: &Server, token: &str, id: i64, status: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let job = job(server, token, id);
        if job["status"] == status {
            return job;
        }
        let last = job["status"] == "done" || job["status"] == "dead";
        assert!(
            !last && Instant::now() < deadline,
            "job {id} never became {status}: {job}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

pub fn post_event(server: &Server, token: &str, kind: &str, n: i64) {
    let response = server.call(
        "POST",
        "/v1/events",
        Some(token),
        Some(&json!({"kind": kind, "payload": {"n": n}})),
    );
    assert_eq!(response.status, 201, "{}", response.text());
}

/// Runs `qpdf --check` and `pdftotext` on a PDF; returns its text.
pub fn checked_pdf_text(bytes: &[u8], dir: &std::path::Path) -> String {
    let path = dir.join(format!("check-{}.pdf", super::free_port()));
    std::fs::write(&path, bytes).unwrap();
    let qpdf = std::process::Command::new("qpdf")
        .arg("--check")
        .arg(&path)
        .output()
        .expect("qpdf (Debian package qpdf; `./dev test` installs it)");
    assert!(
        qpdf.status.success(),
        "qpdf --check: {}",
        String::from_utf8_lossy(&qpdf.stdout)
    );
    let text = std::process::Command::new("pdftotext")
        .arg(&path)
        .arg("-")
        .output()
        .expect("pdftotext (Debian package poppler-utils; `./dev test` installs it)");
    assert!(text.status.success());
    String::from_utf8_lossy(&text.stdout).into_owned()
}

/// Holds `LOCK TABLE <table> IN <mode>` in an open transaction until dropped or released:
/// a job or statement that needs the table waits, mid-flight, for as long as the test wants.
pub struct TableLock {
    client: postgres::Client,
}

impl TableLock {
    pub fn take(services: &Services, table: &str, mode: &str) -> TableLock {
        let mut client = db(services);
        client
            .batch_execute(&format!("BEGIN; LOCK TABLE {table} IN {mode} MODE"))
            .unwrap();
        TableLock { client }
    }

    pub fn release(mut self) {
        self.client.batch_execute("ROLLBACK").unwrap();
    }
}

/// Waits until some backend is blocked on a lock running a statement containing `needle`.
pub fn wait_blocked(services: &Services, needle: &str) {
    let mut db = db(services);
    let blocked = percore_testkit::wait_until(Duration::from_secs(20), || {
        let count: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%' || $1 || '%'",
                &[&needle],
            )
            .unwrap()
            .get(0);
        count > 0
    });
    assert!(blocked, "no statement with {needle:?} waited on the lock");
}

/// Kills the server with SIGKILL and waits until its port has no listener left. The kernel
/// tears a dead process's io_uring down after the process is gone, and its listening
/// sockets with it: for a moment a connection can still land in the old backlog, only to
/// be reset (seen as a failed health check of the restarted server).
pub fn kill_9(server: &mut Server) {
    server.keep_dir = true;
    server.signal(libc::SIGKILL);
    assert!(server.wait_exit(Duration::from_secs(5)).is_some());
    let port = server.port;
    assert!(
        percore_testkit::wait_until(Duration::from_secs(10), || !percore_testkit::port_open(port)),
        "the killed server's port kept listening"
    );
}
