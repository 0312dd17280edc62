//! Durable jobs against real Postgres, Redis, SMTP (aiosmtpd) and HTTP receivers: the
//! side effects are real and read back; crashes (kill -9 of the whole process, mid-job and
//! mid-transaction) lose nothing and invent nothing; two processes claim every job once.

mod common;

use common::receivers::{HttpReceiver, Smtp, mail_header};
use common::{Server, Services, Tuning};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Fast polling, short leases and backoff, so retries and recoveries happen within seconds.
const FAST: &str =
    "poll_interval_ms = 50\nlease_ms = 2000\nheartbeat_ms = 400\nbackoff_ms_min = 200\nbackoff_ms_max = 5000";

fn queues(reports_threads: usize, reports_max_depth: u64) -> String {
    format!(
        "[jobs.queues.email]\nkinds = [\"email\"]\nthreads = 2\nmax_depth = 10000\n\
         [jobs.queues.webhook]\nkinds = [\"webhook\"]\nthreads = 2\nmax_depth = 10000\n\
         [jobs.queues.reports]\nkinds = [\"pdf\", \"export\"]\nthreads = {reports_threads}\nmax_depth = {reports_max_depth}\n"
    )
}

fn config(port: u16, services: &Services, jobs: &str, more: &str) -> String {
    let extra = format!("[jobs]\n{jobs}\n{more}\n[webhooks]\nallow_private = true\n");
    Tuning {
        server: "shards = 2\nshutdown_timeout_ms = 1500",
        extra: &extra,
        ..Tuning::new(port, services)
    }
    .render()
}

fn start(services: &Services, jobs: &str, more: &str) -> Server {
    let port = common::free_port();
    Server::start_with_config(port, &config(port, services, jobs, more), &[])
}

fn db(services: &Services) -> postgres::Client {
    postgres::Client::connect(&services.postgres.url, postgres::NoTls).unwrap()
}

fn post_job(server: &Server, token: &str, body: &Value, key: Option<&str>) -> common::Response {
    let mut raw = common::api_request("POST", "/v1/jobs", Some(token), Some(body));
    if let Some(key) = key {
        raw = raw.replacen("\r\n", &format!("\r\nIdempotency-Key: {key}\r\n"), 1);
    }
    common::request_on(&server.connect(), &raw)
}

fn enqueue(server: &Server, token: &str, body: Value) -> i64 {
    let accepted = post_job(server, token, &body, None);
    assert_eq!(accepted.status, 202, "{}", accepted.text());
    let id = accepted.json()["id"].as_i64().unwrap();
    assert_eq!(accepted.header("location"), Some(format!("/v1/jobs/{id}").as_str()));
    id
}

fn job(server: &Server, token: &str, id: i64) -> Value {
    let response = server.call("GET", &format!("/v1/jobs/{id}"), Some(token), None);
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()
}

/// Polls the job until its status is `status` (panics on another final status or timeout).
fn wait_status(server: &Server, token: &str, id: i64, status: &str, limit: Duration) -> Value {
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

fn my_email(server: &Server, token: &str) -> String {
    server.call("GET", "/v1/me", Some(token), None).json()["user"]["email"]
        .as_str()
        .unwrap()
        .to_string()
}

fn post_event(server: &Server, token: &str, kind: &str, n: i64) {
    let response = server.call(
        "POST",
        "/v1/events",
        Some(token),
        Some(&json!({"kind": kind, "payload": {"n": n}})),
    );
    assert_eq!(response.status, 201, "{}", response.text());
}

/// Runs `qpdf --check` and `pdftotext` on a PDF; returns its text.
fn checked_pdf_text(bytes: &[u8], dir: &std::path::Path) -> String {
    let path = dir.join(format!("check-{}.pdf", common::free_port()));
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

#[test]
fn pdf_export_and_email_jobs_produce_what_they_promise() {
    let services = Services::start();
    let smtp = Smtp::start();
    let mail = format!(
        "[email]\nsmtp_url = \"{}\"\nfrom = \"percore <jobs@percore.test>\"",
        smtp.url()
    );
    let server = start(&services, FAST, &mail);
    // A name with a space and Latin-1 letters, as the PDF must show it.
    let email = common::unique_email("ada");
    let name = "Adélaïde Report";
    let password = "correct horse battery";
    let created = server.call(
        "POST",
        "/v1/auth/register",
        None,
        Some(&json!({"email": email, "password": password, "name": name})),
    );
    assert_eq!(created.status, 201, "{}", created.text());
    let login = server.call(
        "POST",
        "/v1/auth/login",
        None,
        Some(&json!({"email": email, "password": password})),
    );
    let token = login.json()["token"].as_str().unwrap().to_string();
    // The welcome e-mail was committed with the user and delivered over SMTP.
    let welcome = smtp.wait_for(1, Duration::from_secs(20), |m| m.contains(&email));
    assert_eq!(
        welcome.len(),
        1,
        "welcome e-mail: {:?} {}",
        smtp.messages(),
        server.call("GET", "/v1/jobs", Some(&token), None).text()
    );
    assert_eq!(
        mail_header(&welcome[0], "Subject").as_deref(),
        Some("Welcome to percore")
    );
    for n in 0..3 {
        post_event(&server, &token, "click", n);
    }

    let pdf = enqueue(&server, &token, json!({"kind": "pdf", "params": {"report": "account"}}));
    let done = wait_status(&server, &token, pdf, "done", Duration::from_secs(20));
    assert_eq!(done["attempts"], 1);
    assert_eq!(done["result_url"], format!("/v1/jobs/{pdf}/result"));
    let artifact = server.call("GET", &format!("/v1/jobs/{pdf}/result"), Some(&token), None);
    assert_eq!(artifact.status, 200);
    assert_eq!(artifact.header("content-type"), Some("application/pdf"));
    let text = checked_pdf_text(&artifact.body, &server.dir);
    assert!(text.contains(name), "{text}");
    assert!(text.contains("Events recorded: 3"), "{text}");

    let export = enqueue(&server, &token, json!({"kind": "export"}));
    wait_status(&server, &token, export, "done", Duration::from_secs(20));
    let csv = server.call("GET", &format!("/v1/jobs/{export}/result"), Some(&token), None);
    assert_eq!(csv.header("content-type"), Some("text/csv; charset=utf-8"));
    let lines: Vec<String> = csv.text().lines().map(String::from).collect();
    assert_eq!(lines[0], "id,kind,created_at,payload");
    assert_eq!(lines.len(), 1 + 3, "one line per event: {lines:?}");
    assert!(lines[1..].iter().all(|l| l.contains(",click,")), "{lines:?}");

    let sent = enqueue(
        &server,
        &token,
        json!({"kind": "email", "params": {"subject": "Your report is ready", "text": "Hi Adélaïde"}}),
    );
    wait_status(&server, &token, sent, "done", Duration::from_secs(20));
    let message = smtp.wait_for(1, Duration::from_secs(10), |m| m.contains("Your report is ready"));
    assert_eq!(message.len(), 1);
    assert!(mail_header(&message[0], "To").unwrap().contains(&email));
    // The job id is the Message-ID: a retried send is the same message to the receiver.
    assert_eq!(
        mail_header(&message[0], "Message-ID"),
        Some(format!("<job-{sent}@percore.test>"))
    );

    let listed = server
        .call("GET", "/v1/jobs?status=done&limit=10", Some(&token), None)
        .json();
    let ids: Vec<i64> = listed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_i64().unwrap())
        .collect();
    assert_eq!(&ids[..3], &[sent, export, pdf], "newest first: {listed}");
    assert_eq!(ids.len(), 4, "the welcome e-mail too: {listed}");
    let none = server.call("GET", "/v1/jobs?status=dead", Some(&token), None).json();
    assert_eq!(none["jobs"], json!([]));
    // Own jobs only.
    let (_, stranger) = server.sign_up("Stranger");
    assert_eq!(
        server
            .call("GET", &format!("/v1/jobs/{pdf}"), Some(&stranger), None)
            .status,
        404
    );
    assert_eq!(
        server
            .call("GET", &format!("/v1/jobs/{pdf}/result"), Some(&stranger), None)
            .status,
        404
    );
}

#[test]
fn an_idempotency_key_makes_one_job_and_refuses_another_body() {
    let services = Services::start();
    let server = start(&services, "run = false", "");
    let (user, token) = server.sign_up("Idem");
    let body = json!({"kind": "pdf", "params": {"report": "account"}});
    let first = post_job(&server, &token, &body, Some("order-42"));
    let again = post_job(&server, &token, &body, Some("order-42"));
    assert_eq!((first.status, again.status), (202, 202));
    assert_eq!(first.body, again.body);
    assert_eq!(first.header("location"), again.header("location"));
    let other = post_job(&server, &token, &json!({"kind": "export"}), Some("order-42"));
    assert_eq!(other.status, 422);
    assert_eq!(other.error_code(), "idempotency_key_reused");
    // Concurrent first uses of one key: one job, one answer.
    let answers: Vec<common::Response> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..16)
            .map(|_| scope.spawn(|| post_job(&server, &token, &body, Some("burst"))))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        answers.iter().all(|a| a.status == 202),
        "{:?}",
        answers.iter().map(|a| a.text()).collect::<Vec<_>>()
    );
    assert!(answers.iter().all(|a| a.body == answers[0].body));
    let mut db = db(&services);
    for key in ["order-42", "burst"] {
        let count: i64 = db
            .query_one(
                "SELECT count(*) FROM jobs WHERE user_id = $1 AND idempotency_key = $2",
                &[&user, &key],
            )
            .unwrap()
            .get(0);
        assert_eq!(count, 1, "{key}");
    }
    let bad_key = post_job(&server, &token, &body, Some("has space"));
    assert_eq!(
        (bad_key.status, bad_key.error_code().as_str()),
        (400, "invalid_idempotency_key")
    );
    // Without a key, every request is a job.
    let a = enqueue(&server, &token, body.clone());
    let b = enqueue(&server, &token, body);
    assert_ne!(a, b);
}

fn verify_signature(secret: &str, hit: &common::receivers::Hit) {
    use hmac::{KeyInit, Mac};
    let timestamp = hit.header("percore-timestamp").expect("timestamp header");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.{}", hit.body).as_bytes());
    let expected: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hit.header("percore-signature"), Some(format!("v1={expected}").as_str()));
}

#[test]
fn webhooks_retry_with_growing_delays_then_give_up_and_an_operator_can_retry() {
    let services = Services::start();
    let server = start(&services, FAST, "");
    let recovering = HttpReceiver::start(&[500, 500, 500], 200);
    let broken = HttpReceiver::start(&[], 500);
    let (_, token) = server.sign_up("Hooks");
    let subscribe = |url: String, events: Value| {
        let created = server.call(
            "POST",
            "/v1/webhooks",
            Some(&token),
            Some(&json!({"url": url, "events": events})),
        );
        assert_eq!(created.status, 201, "{}", created.text());
        created.json()
    };
    let paid = subscribe(recovering.url("/paid"), json!(["order.paid"]));
    let all = subscribe(broken.url("/all"), json!(["*"]));
    let secret = paid["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"));
    post_event(&server, &token, "order.shipped", 1); // only the "*" subscription
    post_event(&server, &token, "order.paid", 2);

    let hits = recovering.wait_hits(4, Duration::from_secs(30));
    assert_eq!(hits.len(), 4, "500, 500, 500, then 200");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(recovering.hits().len(), 4, "nothing after the 200");
    let delivery = hits[0].header("percore-delivery").unwrap().to_string();
    for hit in &hits {
        assert_eq!(
            hit.header("percore-delivery"),
            Some(delivery.as_str()),
            "one delivery id"
        );
        verify_signature(&secret, hit);
        let body: Value = serde_json::from_str(&hit.body).unwrap();
        assert_eq!(body["event"]["kind"], "order.paid");
        assert_eq!(body["event"]["payload"], json!({"n": 2}));
        assert_eq!(body["delivery_id"].to_string(), delivery);
    }
    let gaps: Vec<Duration> = hits.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(gaps[1] > gaps[0] && gaps[2] > gaps[1], "backoff grows: {gaps:?}");
    let log = server.call(
        "GET",
        &format!("/v1/webhooks/{}/deliveries", paid["id"]),
        Some(&token),
        None,
    );
    let log = log.json()["deliveries"].clone();
    let statuses: Vec<i64> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["status_code"].as_i64().unwrap())
        .collect();
    assert_eq!(statuses, vec![200, 500, 500, 500], "newest first: {log}");
    let delivery_id: i64 = delivery.parse().unwrap();
    let paid_job = wait_status(&server, &token, delivery_id, "done", Duration::from_secs(5));
    assert_eq!(paid_job["attempts"], 4);

    // The broken receiver got both events; each delivery ends dead after max_attempts (5).
    let broken_hits = broken.wait_hits(10, Duration::from_secs(60));
    assert_eq!(broken_hits.len(), 10, "two deliveries of five attempts");
    let dead_id: i64 = broken_hits[0].header("percore-delivery").unwrap().parse().unwrap();
    let dead = wait_status(&server, &token, dead_id, "dead", Duration::from_secs(10));
    assert_eq!(dead["attempts"], 5);
    assert!(dead["error"].as_str().unwrap().contains("500"), "{dead}");
    let listed = server.call("GET", "/v1/jobs?status=dead", Some(&token), None).json();
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 2);
    let all_log = server.call(
        "GET",
        &format!("/v1/webhooks/{}/deliveries?limit=100", all["id"]),
        Some(&token),
        None,
    );
    assert_eq!(all_log.json()["deliveries"].as_array().unwrap().len(), 10);

    // The operator fixes the receiver and retries the dead job from the command line.
    broken.set_default(200);
    let retry = std::process::Command::new(env!("CARGO_BIN_EXE_percore"))
        .arg("--config")
        .arg(server.dir.join("tuning.toml"))
        .args(["jobs", "retry", &dead_id.to_string()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&retry.stdout);
    assert!(
        retry.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&retry.stderr)
    );
    assert!(said.contains("queued again"), "{said}");
    let revived = wait_status(&server, &token, dead_id, "done", Duration::from_secs(10));
    assert_eq!(revived["attempts"], 1, "fresh attempts");
    let last = broken.hits().last().unwrap().clone();
    assert_eq!(last.header("percore-delivery"), Some(dead_id.to_string().as_str()));
    verify_signature(all["secret"].as_str().unwrap(), &last);
}
