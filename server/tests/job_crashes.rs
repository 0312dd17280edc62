//! Durable jobs through crashes and shutdowns: kill -9 of the whole process mid-job, right
//! after a 202 and mid-transaction loses nothing and invents nothing; SIGTERM finishes or
//! gives back the job in hand; two processes on one database claim every job once.

mod common;

use common::jobs::*;
use common::receivers::{Smtp, mail_header};
use common::{Server, Services};
use serde_json::json;
use std::time::{Duration, Instant};

#[test]
fn kill_9_mid_job_and_right_after_a_202_loses_no_job_and_runs_each_to_completion_once() {
    let services = Services::start();
    let port = common::free_port();
    // One reports thread: while it is stuck in the first PDF, the second stays queued.
    let text = config(port, &services, FAST, &queues(1, 100));
    let mut server = Server::start_with_config(port, &text, &[]);
    let (_, token) = server.sign_up("Crash");
    post_event(&server, &token, "click", 1);
    let lock = TableLock::take(&services, "events", "ACCESS EXCLUSIVE");
    let mid_job = enqueue(&server, &token, json!({"kind": "pdf", "params": {"report": "account"}}));
    wait_status(&server, &token, mid_job, "running", Duration::from_secs(10));
    wait_blocked(&services, "FROM users u LEFT JOIN profiles");
    let after_202 = enqueue(&server, &token, json!({"kind": "export"}));
    // Other queues run on their own threads: an e-mail job finishes while reports are stuck.
    let email = enqueue(
        &server,
        &token,
        json!({"kind": "email", "params": {"subject": "s", "text": "t"}}),
    );
    wait_status(&server, &token, email, "done", Duration::from_secs(10));
    assert_eq!(job(&server, &token, after_202)["status"], "queued");

    kill_9(&mut server);
    lock.release();
    drop(server);
    let server = Server::start_with_config(port, &text, &[]);
    // The mid-job PDF runs again once its lease (2 s) has run out; the queued export runs.
    let pdf = wait_status(&server, &token, mid_job, "done", Duration::from_secs(20));
    assert_eq!(
        pdf["attempts"], 2,
        "one attempt lost with the process, one that completed: {pdf}"
    );
    let export = wait_status(&server, &token, after_202, "done", Duration::from_secs(20));
    assert_eq!(export["attempts"], 1);
    let csv = server.call("GET", &format!("/v1/jobs/{after_202}/result"), Some(&token), None);
    assert_eq!(csv.text().lines().count(), 2);
    let artifact = server.call("GET", &format!("/v1/jobs/{mid_job}/result"), Some(&token), None);
    assert!(checked_pdf_text(&artifact.body, &server.dir).contains("Crash"));
}

#[test]
fn kill_9_during_an_uncommitted_registration_leaves_neither_user_nor_welcome_job() {
    let services = Services::start();
    let mut server = start(&services, FAST, "");
    // Registration writes the user and its welcome e-mail job in one statement; with
    // `jobs` locked it is stuck between the two, uncommitted.
    let lock = TableLock::take(&services, "jobs", "SHARE ROW EXCLUSIVE");
    let email = common::unique_email("ghost");
    let port = server.port;
    let request = common::api_request(
        "POST",
        "/v1/auth/register",
        None,
        Some(&json!({"email": email, "password": "correct horse battery", "name": "Ghost"})),
    );
    let client = std::thread::spawn(move || {
        let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut writer = &stream;
        std::io::Write::write_all(&mut writer, request.as_bytes()).unwrap();
        let mut answer = Vec::new();
        let _ = std::io::Read::read_to_end(&mut &stream, &mut answer);
        answer
    });
    wait_blocked(&services, "INSERT INTO users");
    kill_9(&mut server);
    assert!(client.join().unwrap().is_empty(), "no answer came from a killed server");
    // The statement's transaction never commits: its connection is gone (Postgres also
    // checks every client_check_interval_ms while the statement waits for the lock).
    std::thread::sleep(Duration::from_millis(2_500));
    lock.release();
    let mut db = db(&services);
    let settled = percore_testkit::wait_until(Duration::from_secs(10), || {
        let running: i64 = db
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%INSERT INTO users%' AND pid <> pg_backend_pid()", &[])
            .unwrap()
            .get(0);
        running == 0
    });
    assert!(settled);
    let users: i64 = db
        .query_one("SELECT count(*) FROM users WHERE email = $1", &[&email])
        .unwrap()
        .get(0);
    let jobs: i64 = db
        .query_one(
            "SELECT count(*) FROM jobs WHERE params->>'text' LIKE 'Hello Ghost,%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!((users, jobs), (0, 0), "nothing committed, nothing exists");
}

#[test]
fn sigterm_gives_back_the_lease_of_a_job_that_cannot_finish_in_time() {
    let services = Services::start();
    let port = common::free_port();
    // A long lease: only the release on shutdown lets the job run again soon.
    let jobs = "poll_interval_ms = 50\nlease_ms = 60000\nheartbeat_ms = 1000";
    let text = config(port, &services, jobs, &queues(1, 100));
    let mut server = Server::start_with_config(port, &text, &[]);
    let (_, token) = server.sign_up("Term");
    let lock = TableLock::take(&services, "events", "ACCESS EXCLUSIVE");
    let id = enqueue(&server, &token, json!({"kind": "export"}));
    wait_status(&server, &token, id, "running", Duration::from_secs(10));
    server.keep_dir = true;
    let asked = Instant::now();
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(10)).unwrap().success());
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "exits within the shutdown timeout (1.5 s)"
    );
    let row = db(&services)
        .query_one("SELECT status, attempts, locked_by FROM jobs WHERE id = $1", &[&id])
        .unwrap();
    let (status, attempts, holder): (String, i32, Option<String>) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        (status.as_str(), attempts, holder),
        ("queued", 0, None),
        "released, the attempt uncounted"
    );
    lock.release();
    drop(server);
    let server = Server::start_with_config(port, &text, &[]);
    let done = wait_status(&server, &token, id, "done", Duration::from_secs(10));
    assert_eq!(done["attempts"], 1);
}

#[test]
fn two_processes_on_one_database_claim_every_job_exactly_once() {
    let services = Services::start();
    let smtp = Smtp::start();
    let mail = format!("[email]\nsmtp_url = \"{}\"", smtp.url());
    let a = start(&services, FAST, &mail);
    let b = start(&services, FAST, &mail);
    // A third process runs no workers: its jobs reach a and b only through their polling.
    let c = start(&services, &format!("{FAST}\nrun = false"), &mail);
    let (user, token) = a.sign_up("Twice");
    const JOBS: usize = 60;
    for i in 0..JOBS {
        let server = [&a, &b, &c][i % 3];
        let params = json!({"subject": format!("bulk {i}"), "text": "x"});
        enqueue(server, &token, json!({"kind": "email", "params": params}));
    }
    let mut db = db(&services);
    let all_done = percore_testkit::wait_until(Duration::from_secs(60), || {
        let open: i64 = db
            .query_one(
                "SELECT count(*) FROM jobs WHERE user_id = $1 AND status <> 'done'",
                &[&user],
            )
            .unwrap()
            .get(0);
        open == 0
    });
    assert!(all_done, "every job done");
    let attempts: Vec<i32> = db
        .query("SELECT attempts FROM jobs WHERE user_id = $1", &[&user])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(attempts.len(), JOBS + 1, "the bulk and the welcome e-mail");
    assert!(attempts.iter().all(|&n| n == 1), "one attempt each: {attempts:?}");
    let messages = smtp.wait_for(JOBS + 1, Duration::from_secs(10), |_| true);
    let mut ids: Vec<String> = messages.iter().map(|m| mail_header(m, "Message-ID").unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!((messages.len(), ids.len()), (JOBS + 1, JOBS + 1), "each sent once");
    for server in [&a, &b] {
        let done = common::metric_sum(&server.get("/metrics").text(), "percore_jobs_done_total", "email");
        assert!(done > 0, "both processes ran jobs");
    }
}

#[test]
fn sigterm_lets_a_job_in_hand_finish_within_the_timeout() {
    let services = Services::start();
    let port = common::free_port();
    let jobs = "poll_interval_ms = 50\nlease_ms = 60000\nheartbeat_ms = 1000";
    let text = config(port, &services, jobs, &queues(1, 100));
    let mut server = Server::start_with_config(port, &text, &[]);
    let (_, token) = server.sign_up("Finish");
    post_event(&server, &token, "click", 1);
    let lock = TableLock::take(&services, "events", "ACCESS EXCLUSIVE");
    let id = enqueue(&server, &token, json!({"kind": "export"}));
    wait_status(&server, &token, id, "running", Duration::from_secs(10));
    server.signal(libc::SIGTERM);
    // The job can go on 300 ms into the 1.5 s shutdown timeout: it finishes, then we exit.
    std::thread::sleep(Duration::from_millis(300));
    lock.release();
    assert!(server.wait_exit(Duration::from_secs(10)).unwrap().success());
    let row = db(&services)
        .query_one("SELECT status, attempts FROM jobs WHERE id = $1", &[&id])
        .unwrap();
    assert_eq!((row.get::<_, String>(0).as_str(), row.get::<_, i32>(1)), ("done", 1));
}

#[test]
fn the_heartbeat_keeps_a_long_job_leased_past_lease_ms() {
    let services = Services::start();
    // A 1 s lease and two report threads: were the lease not extended, the reaper would
    // return the job to the queue and the idle thread would run it a second time.
    let jobs = "poll_interval_ms = 50\nlease_ms = 1000\nheartbeat_ms = 250";
    let server = start(&services, jobs, &queues(2, 100));
    let (_, token) = server.sign_up("Long");
    let lock = TableLock::take(&services, "events", "ACCESS EXCLUSIVE");
    let id = enqueue(&server, &token, json!({"kind": "export"}));
    wait_status(&server, &token, id, "running", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(3_000));
    assert_eq!(
        job(&server, &token, id)["attempts"],
        1,
        "still the first attempt, 3 leases later"
    );
    lock.release();
    let done = wait_status(&server, &token, id, "done", Duration::from_secs(10));
    assert_eq!(done["attempts"], 1);
}
