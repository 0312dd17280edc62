//! The `jobs` workload: how fast percore accepts jobs, and how long a job takes from its
//! 202 to `done` at a steady rate, for e-mail (over SMTP) and webhook (over HTTP) jobs.
//!
//! - Enqueue: wrk posts e-mail jobs as fast as it can (closed loop); then the driver waits
//!   for the workers to drain the backlog and records how long that took.
//! - Steady: one connection paces jobs at `--rate` per second (open loop: a slow answer
//!   does not lower the offered rate) for `--duration`; each job's latency is its
//!   `updated_at - created_at` in the database (commit to done).
//!
//! The server needs an SMTP server at `[email] smtp_url` and `[webhooks] allow_private =
//! true` (the receiver is this process, on loopback); `bench/jobs.sh` sets both up.

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// One request on a keep-alive connection; returns (status, body).
fn call(stream: &mut BufReader<TcpStream>, raw: &str) -> Result<(u16, String), String> {
    send(stream, raw)?;
    receive(stream)
}

pub(crate) fn send(stream: &mut BufReader<TcpStream>, raw: &str) -> Result<(), String> {
    stream.get_mut().write_all(raw.as_bytes()).map_err(|e| e.to_string())
}

/// The next response on the connection: (status, body).
pub(crate) fn receive(stream: &mut BufReader<TcpStream>) -> Result<(u16, String), String> {
    let mut line = String::new();
    if stream.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
        return Err("closed with no answer".into());
    }
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("bad status line")?;
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        stream.read_line(&mut header).map_err(|e| e.to_string())?;
        if header == "\r\n" || header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).map_err(|e| e.to_string())?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

pub(crate) fn request(method: &str, path: &str, token: &str, body: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// A webhook receiver answering 200 to everything, keep-alive, one thread per connection.
fn start_receiver() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                loop {
                    let mut length = 0usize;
                    let mut first = true;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" && !first {
                            break;
                        }
                        first = false;
                        if let Some((n, v)) = line.split_once(':')
                            && n.eq_ignore_ascii_case("content-length")
                        {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0u8; length];
                    if reader.read_exact(&mut body).is_err()
                        || reader
                            .get_mut()
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                            .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    Ok(port)
}

/// Waits until no job of `kind` is waiting or running; returns how long that took.
fn drain(db: &mut postgres::Client, kind: &str, limit: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    loop {
        let open: i64 = db
            .query_one(
                "SELECT count(*) FROM jobs WHERE kind = $1 AND status IN ('queued', 'running', 'failed')",
                &[&kind],
            )
            .map_err(|e| e.to_string())?
            .get(0);
        if open == 0 {
            return Ok(started.elapsed());
        }
        if started.elapsed() > limit {
            return Err(format!("{open} {kind} jobs still open after {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Commit-to-done latency percentiles (ms) of `kind` jobs created since `since_id`.
fn latencies(db: &mut postgres::Client, kind: &str, since_id: i64) -> Result<Value, String> {
    let row = db
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE status = 'done'),
                    percentile_cont(ARRAY[0.5, 0.9, 0.99, 0.999]) WITHIN GROUP
                        (ORDER BY extract(epoch FROM updated_at - created_at) * 1000),
                    max(extract(epoch FROM updated_at - created_at) * 1000)::float8
             FROM jobs WHERE kind = $1 AND id > $2",
            &[&kind, &since_id],
        )
        .map_err(|e| e.to_string())?;
    let p: Vec<f64> = row.get::<_, Option<Vec<f64>>>(2).unwrap_or_default();
    Ok(json!({
        "jobs": row.get::<_, i64>(0),
        "done": row.get::<_, i64>(1),
        "e2e_ms_p50": p.first(), "e2e_ms_p90": p.get(1), "e2e_ms_p99": p.get(2), "e2e_ms_p999": p.get(3),
        "e2e_ms_max": row.get::<_, Option<f64>>(3),
    }))
}

fn max_job_id(db: &mut postgres::Client) -> Result<i64, String> {
    Ok(db
        .query_one("SELECT coalesce(max(id), 0) FROM jobs", &[])
        .map_err(|e| e.to_string())?
        .get(0))
}

/// Paces `make()` requests at `rate` per second for `duration` on one connection.
fn steady(base: &str, rate: u32, duration: Duration, raw: impl Fn(u64) -> String) -> Result<Value, String> {
    let host = base.trim_start_matches("http://");
    let mut stream = BufReader::new(TcpStream::connect(host).map_err(|e| e.to_string())?);
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let started = Instant::now();
    let (mut sent, mut refused) = (0u64, 0u64);
    while started.elapsed() < duration {
        let due = started + interval * sent as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let (status, _) = call(&mut stream, &raw(sent))?;
        if !(200..300).contains(&status) {
            refused += 1;
        }
        sent += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(json!({ "sent": sent, "refused": refused, "offered_per_s": sent as f64 / elapsed }))
}

pub struct Options<'a> {
    pub base: &'a str,
    pub database_url: &'a str,
    pub token: &'a str,
    pub rate: u32,
    pub duration: Duration,
}

pub fn connect(database_url: &str) -> Result<postgres::Client, String> {
    postgres::Client::connect(database_url, postgres::NoTls).map_err(|e| format!("connecting to {database_url}: {e}"))
}

/// The newest job id now: jobs after it belong to the phase that follows.
pub fn mark(database_url: &str) -> Result<i64, String> {
    max_job_id(&mut connect(database_url)?)
}

/// After the enqueue phase (wrk, run by `main`) added the e-mail jobs after `enqueue_mark`:
/// waits for the workers to drain them and records their processing rate, then runs the
/// steady phases.
pub fn measure(options: &Options, enqueue_mark: i64) -> Result<Value, String> {
    let mut db = connect(options.database_url)?;
    let drained = drain(&mut db, "email", Duration::from_secs(600))?;
    let row = db
        .query_one(
            "SELECT count(*), extract(epoch FROM max(updated_at) - min(created_at))::float8
             FROM jobs WHERE kind = 'email' AND id > $1 AND status = 'done'",
            &[&enqueue_mark],
        )
        .map_err(|e| e.to_string())?;
    let (processed, span_s): (i64, Option<f64>) = (row.get(0), row.get(1));

    let before = max_job_id(&mut db)?;
    let email_body = r#"{"kind":"email","params":{"subject":"steady","text":"x"}}"#;
    let email_send = steady(options.base, options.rate, options.duration, |_| {
        request("POST", "/v1/jobs", options.token, email_body)
    })?;
    drain(&mut db, "email", Duration::from_secs(120))?;
    let email = latencies(&mut db, "email", before)?;

    let port = start_receiver()?;
    let host = options.base.trim_start_matches("http://");
    let mut stream = BufReader::new(TcpStream::connect(host).map_err(|e| e.to_string())?);
    let subscription = format!(r#"{{"url":"http://127.0.0.1:{port}/hook","events":["bench.hook"]}}"#);
    let (status, body) = call(
        &mut stream,
        &request("POST", "/v1/webhooks", options.token, &subscription),
    )?;
    if status != 201 {
        return Err(format!(
            "subscribing the receiver: {status} {body} (is [webhooks] allow_private on?)"
        ));
    }
    let webhook_id = serde_json::from_str::<Value>(&body).map_err(|e| e.to_string())?["id"].clone();
    let before = max_job_id(&mut db)?;
    let webhook_send = steady(options.base, options.rate, options.duration, |n| {
        request(
            "POST",
            "/v1/events",
            options.token,
            &format!(r#"{{"kind":"bench.hook","payload":{{"n":{n}}}}}"#),
        )
    })?;
    drain(&mut db, "webhook", Duration::from_secs(120))?;
    let webhook = latencies(&mut db, "webhook", before)?;
    let _ = call(
        &mut stream,
        &request("DELETE", &format!("/v1/webhooks/{webhook_id}"), options.token, ""),
    );
    Ok(json!({
        "enqueued_jobs_done": processed,
        "drain_after_enqueue_s": drained.as_secs_f64(),
        // From the first job's commit to the last one's completion.
        "processed_per_s": span_s.filter(|s| *s > 0.0).map(|s| processed as f64 / s),
        "steady_rate_per_s": options.rate,
        "steady_duration_s": options.duration.as_secs_f64(),
        "email": { "send": email_send, "latency": email },
        "webhook": { "send": webhook_send, "latency": webhook },
    }))
}
