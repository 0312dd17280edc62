//! `percore-bench audit`: no acknowledged write is lost, under faults.
//!
//! Clients register, log in, then post events, put prefs and enqueue e-mail jobs, each on
//! its own keep-alive connection, while faults run in turn every `fault_every` (shell
//! commands from the command line; closures from a test). Every write attempt is recorded
//! with what came back: acknowledged (2xx), refused with an error status, or unanswered
//! (sent, and the connection failed before an answer). A connection that could not even
//! be opened sent nothing: not sent, counted apart.
//!
//! Afterwards, straight from Postgres: every acknowledged write is there with what was
//! acknowledged; each user's prefs are those of the last acknowledged PUT, unless a later
//! PUT was not acknowledged (it may or may not have landed); every job answered 202 runs to
//! `done`; every token a login returned still opens `/v1/me`. A write missing is *lost*.
//! Each fault's recovery time is how long after it began writes were acknowledged again.

use crate::jobs::{receive, send};
use serde_json::{Value, json};
use std::io::BufReader;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A fault: its name, and what injects it (returns once the fault is over or set going).
pub struct Fault {
    pub name: String,
    pub inject: Box<dyn FnMut() -> Result<(), String> + Send>,
}

impl Fault {
    /// A fault run as `sh -c COMMAND`.
    pub fn shell(name: &str, command: &str) -> Fault {
        let command = command.to_string();
        Fault {
            name: name.to_string(),
            inject: Box::new(move || {
                let status = std::process::Command::new("sh")
                    .args(["-c", &command])
                    .status()
                    .map_err(|e| e.to_string())?;
                status.success().then_some(()).ok_or(format!("exited with {status}"))
            }),
        }
    }
}

pub struct AuditOptions {
    /// host:port
    pub addr: String,
    pub database_url: String,
    pub clients: usize,
    pub duration: Duration,
    pub fault_every: Duration,
    /// After the load, how long jobs answered 202 have to reach `done`.
    pub jobs_wait: Duration,
    /// A request unanswered this long counts as unanswered.
    pub answer_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Register,
    Login,
    Event,
    Prefs,
    Job,
}

const KINDS: [Kind; 5] = [Kind::Register, Kind::Login, Kind::Event, Kind::Prefs, Kind::Job];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Register => "register",
            Kind::Login => "login",
            Kind::Event => "event",
            Kind::Prefs => "prefs",
            Kind::Job => "job",
        }
    }
}

#[derive(Debug, Clone)]
enum Outcome {
    /// 2xx, with the response body.
    Acked(Value),
    /// Answered with this status.
    Refused(u16),
    /// Sent; no answer came.
    Unanswered,
    /// Not sent: no connection could be opened.
    NotSent,
}

#[derive(Debug, Clone)]
struct Attempt {
    /// When the outcome was known (since the load began): a failure belongs to the fault
    /// that caused it, not to the one before, even if sent before this fault began.
    at: Duration,
    kind: Kind,
    /// The event's sequence number or the prefs' locale: what the audit looks for.
    mark: String,
    outcome: Outcome,
}

/// What one client did: its user (once registered), its token, and every attempt.
#[derive(Default)]
struct Client {
    email: String,
    /// Set once registered (-1: registered, by an attempt whose answer was lost).
    user_id: Option<i64>,
    token: Option<String>,
    attempts: Vec<Attempt>,
}

const PASSWORD: &str = "audit: correct horse battery";

fn raw(method: &str, path: &str, token: Option<&str>, body: &Value) -> String {
    let body = body.to_string();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    format!(
        "{method} {path} HTTP/1.1\r\nHost: audit\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

impl Client {
    /// One write: connects if needed (counting a refused connection and sending nothing),
    /// sends, and records what came back.
    fn write(
        &mut self,
        connection: &mut Option<BufReader<TcpStream>>,
        options: &AuditOptions,
        began: Instant,
        (kind, mark, request): (Kind, String, String),
    ) -> Outcome {
        let stream = match connection.take() {
            Some(stream) => stream,
            None => match TcpStream::connect(&options.addr) {
                Ok(stream) => {
                    let _ = stream.set_read_timeout(Some(options.answer_timeout));
                    let _ = stream.set_nodelay(true);
                    BufReader::new(stream)
                }
                Err(_) => {
                    let at = began.elapsed();
                    self.attempts.push(Attempt {
                        at,
                        kind,
                        mark,
                        outcome: Outcome::NotSent,
                    });
                    std::thread::sleep(Duration::from_millis(20));
                    return Outcome::NotSent;
                }
            },
        };
        let mut stream = stream;
        let answer = send(&mut stream, &request).and_then(|()| receive(&mut stream));
        let at = began.elapsed();
        let outcome = match answer {
            Ok((status, body)) => {
                *connection = Some(stream);
                if (200..300).contains(&status) {
                    Outcome::Acked(serde_json::from_str(&body).unwrap_or(Value::Null))
                } else {
                    Outcome::Refused(status)
                }
            }
            Err(_) => Outcome::Unanswered,
        };
        self.attempts.push(Attempt {
            at,
            kind,
            mark,
            outcome: outcome.clone(),
        });
        if !matches!(outcome, Outcome::Acked(_)) {
            // Errors come in bursts during a fault: do not spin.
            std::thread::sleep(Duration::from_millis(20));
        }
        outcome
    }

    /// The next write this client makes: sign-up first, then events and prefs in turn, and
    /// every eighth write a job.
    fn next_write(&self, round: u64) -> (Kind, String, String) {
        let token = self.token.as_deref();
        if self.user_id.is_none() {
            let body = json!({"email": self.email, "password": PASSWORD, "name": "audit"});
            return (
                Kind::Register,
                String::new(),
                raw("POST", "/v1/auth/register", None, &body),
            );
        }
        if token.is_none() {
            let body = json!({"email": self.email, "password": PASSWORD});
            return (Kind::Login, String::new(), raw("POST", "/v1/auth/login", None, &body));
        }
        match round % 8 {
            1 | 5 => {
                let locale = format!("en-n{round}");
                let body = json!({"locale": locale, "timezone": "UTC", "theme": "dark", "email_opt_in": false});
                (Kind::Prefs, locale, raw("PUT", "/v1/me/prefs", token, &body))
            }
            7 => {
                let body = json!({"kind": "email", "params": {"subject": "audit", "text": format!("round {round}")}});
                (Kind::Job, String::new(), raw("POST", "/v1/jobs", token, &body))
            }
            _ => {
                let body = json!({"kind": "audit", "payload": {"seq": round}});
                (Kind::Event, round.to_string(), raw("POST", "/v1/events", token, &body))
            }
        }
    }

    fn run(&mut self, options: &AuditOptions, began: Instant, stop: &AtomicBool) {
        let mut connection = None;
        let mut round = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let write = self.next_write(round);
            let kind = write.0;
            let outcome = self.write(&mut connection, options, began, write);
            match (kind, outcome) {
                (Kind::Register, Outcome::Acked(user)) => self.user_id = user["id"].as_i64(),
                // Registered by an earlier attempt whose answer was lost: find out at login.
                (Kind::Register, Outcome::Refused(409)) => self.user_id = Some(-1),
                (Kind::Login, Outcome::Acked(session)) => {
                    self.token = session["token"].as_str().map(str::to_string);
                }
                (Kind::Event | Kind::Prefs | Kind::Job, _) => round += 1,
                _ => {}
            }
        }
    }
}

/// Runs the load with `faults` in turn, then audits. The result's `lost` must be 0.
pub fn audit(options: &AuditOptions, mut faults: Vec<Fault>) -> Result<Value, String> {
    let began = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let run_id = format!(
        "{:x}",
        std::process::id() as u64 * 1_000_003 + began.elapsed().as_nanos() as u64
    );
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let clients: Vec<Arc<Mutex<Client>>> = (0..options.clients)
        .map(|i| {
            Arc::new(Mutex::new(Client {
                email: format!("audit-{run_id}-{nanos}-{i}@example.com"),
                ..Client::default()
            }))
        })
        .collect();
    let options_shared = Arc::new(AuditOptions {
        addr: options.addr.clone(),
        database_url: options.database_url.clone(),
        ..*options
    });
    let threads: Vec<_> = clients
        .iter()
        .map(|client| {
            let (client, stop, options) = (client.clone(), stop.clone(), options_shared.clone());
            std::thread::spawn(move || {
                let mut client = client.lock().unwrap_or_else(|e| e.into_inner());
                client.run(&options, began, &stop);
            })
        })
        .collect();
    let mut faults_run = Vec::new();
    let mut next = began + options.fault_every;
    let mut turn = 0;
    while began.elapsed() < options.duration {
        if faults.is_empty() || Instant::now() < next {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let count = faults.len();
        let fault = &mut faults[turn % count];
        let at = began.elapsed();
        let injected = (fault.inject)();
        faults_run.push((fault.name.clone(), at, began.elapsed() - at, injected));
        turn += 1;
        next += options.fault_every;
    }
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().map_err(|_| "a client thread panicked")?;
    }
    let clients: Vec<Client> = clients
        .into_iter()
        .map(|c| std::mem::take(&mut *c.lock().unwrap_or_else(|e| e.into_inner())))
        .collect();
    let checked = check(options, &clients)?;
    Ok(summary(options, &clients, &faults_run, checked))
}

/// What the audit found: writes lost, by kind, with examples.
struct Checked {
    lost: Vec<(Kind, String)>,
    jobs_waited: Duration,
}

fn check(options: &AuditOptions, clients: &[Client]) -> Result<Checked, String> {
    let mut db = postgres::Client::connect(&options.database_url, postgres::NoTls).map_err(|e| e.to_string())?;
    let mut lost = Vec::new();
    let mut job_ids = Vec::new();
    for client in clients {
        // From the database: a registration whose answer was lost has no id in hand.
        let user_id: Option<i64> = db
            .query_opt("SELECT id FROM users WHERE email = $1::text::citext", &[&client.email])
            .map_err(|e| e.to_string())?
            .map(|row| row.get(0));
        for attempt in &client.attempts {
            let Outcome::Acked(body) = &attempt.outcome else {
                continue;
            };
            match attempt.kind {
                Kind::Register => {
                    if user_id.is_none() || user_id != body["id"].as_i64() {
                        lost.push((Kind::Register, client.email.clone()));
                    }
                }
                Kind::Event => {
                    let id = body["id"].as_i64().unwrap_or(0);
                    let row = db
                        .query_opt("SELECT user_id, payload->>'seq' FROM events WHERE id = $1", &[&id])
                        .map_err(|e| e.to_string())?;
                    let matches = row.is_some_and(|row| {
                        Some(row.get::<_, i64>(0)) == user_id
                            && row.get::<_, Option<String>>(1).as_deref() == Some(&attempt.mark)
                    });
                    if !matches {
                        lost.push((Kind::Event, format!("event {id} of {}", client.email)));
                    }
                }
                Kind::Job => job_ids.push(body["id"].as_i64().unwrap_or(0)),
                Kind::Login | Kind::Prefs => {}
            }
        }
        if let Some(problem) = check_prefs(&mut db, client, user_id)? {
            lost.push((Kind::Prefs, problem));
        }
        if let Some(token) = &client.token
            && !session_works(&options.addr, token)
        {
            lost.push((Kind::Login, format!("the session of {}", client.email)));
        }
    }
    let waited = Instant::now();
    let mut pending = job_ids.clone();
    while !pending.is_empty() && waited.elapsed() < options.jobs_wait {
        std::thread::sleep(Duration::from_millis(200));
        let done: Vec<i64> = db
            .query(
                "SELECT id FROM jobs WHERE id = ANY($1) AND status = 'done'",
                &[&pending],
            )
            .map_err(|e| e.to_string())?
            .iter()
            .map(|row| row.get(0))
            .collect();
        pending.retain(|id| !done.contains(id));
    }
    for id in pending {
        let status: Option<String> = db
            .query_opt("SELECT status FROM jobs WHERE id = $1", &[&id])
            .map_err(|e| e.to_string())?
            .map(|row| row.get(0));
        lost.push((
            Kind::Job,
            format!("job {id}: {}", status.as_deref().unwrap_or("missing")),
        ));
    }
    Ok(Checked {
        lost,
        jobs_waited: waited.elapsed(),
    })
}

/// The stored prefs must be the last acknowledged PUT's, or a later unacknowledged one's.
fn check_prefs(db: &mut postgres::Client, client: &Client, user_id: Option<i64>) -> Result<Option<String>, String> {
    let puts: Vec<&Attempt> = client.attempts.iter().filter(|a| a.kind == Kind::Prefs).collect();
    let Some(last_acked) = puts.iter().rposition(|a| matches!(a.outcome, Outcome::Acked(_))) else {
        return Ok(None);
    };
    let stored: Option<String> = db
        .query_opt("SELECT locale FROM prefs WHERE user_id = $1", &[&user_id.unwrap_or(0)])
        .map_err(|e| e.to_string())?
        .map(|row| row.get(0));
    let allowed: Vec<&str> = std::iter::once(puts[last_acked].mark.as_str())
        .chain(puts[last_acked + 1..].iter().map(|a| a.mark.as_str()))
        .collect();
    Ok(match stored {
        Some(locale) if allowed.contains(&locale.as_str()) => None,
        other => Some(format!(
            "prefs of {}: stored {other:?}, last acknowledged {}",
            client.email, puts[last_acked].mark
        )),
    })
}

fn session_works(addr: &str, token: &str) -> bool {
    let Ok(stream) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut stream = BufReader::new(stream);
    let request = format!("GET /v1/me HTTP/1.1\r\nHost: audit\r\nAuthorization: Bearer {token}\r\n\r\n");
    send(&mut stream, &request)
        .and_then(|()| receive(&mut stream))
        .is_ok_and(|(status, _)| status == 200)
}

fn summary(
    options: &AuditOptions,
    clients: &[Client],
    faults: &[(String, Duration, Duration, Result<(), String>)],
    checked: Checked,
) -> Value {
    let attempts: Vec<&Attempt> = clients.iter().flat_map(|c| &c.attempts).collect();
    let count = |kind: Kind, pick: &dyn Fn(&Outcome) -> bool| {
        attempts.iter().filter(|a| a.kind == kind && pick(&a.outcome)).count()
    };
    let by_kind = |pick: &dyn Fn(&Outcome) -> bool| -> Value {
        KINDS
            .iter()
            .map(|k| (k.name().to_string(), json!(count(*k, pick))))
            .collect()
    };
    let acked = |o: &Outcome| matches!(o, Outcome::Acked(_));
    let unanswered = |o: &Outcome| matches!(o, Outcome::Unanswered);
    let refused = |o: &Outcome| matches!(o, Outcome::Refused(_));
    let not_sent = |o: &Outcome| matches!(o, Outcome::NotSent);
    let mut statuses: std::collections::BTreeMap<String, u64> = Default::default();
    for attempt in &attempts {
        if let Outcome::Refused(status) = attempt.outcome {
            *statuses.entry(status.to_string()).or_default() += 1;
        }
    }
    let mut timeline: Vec<(Duration, bool)> = attempts.iter().map(|a| (a.at, acked(&a.outcome))).collect();
    timeline.sort_by_key(|(at, _)| *at);
    let faults: Vec<Value> = faults
        .iter()
        .enumerate()
        .map(|(i, (name, at, took, injected))| {
            let until = faults.get(i + 1).map_or(Duration::MAX, |next| next.1);
            json!({
                "name": name,
                "t_s": at.as_secs_f64(),
                "took_s": took.as_secs_f64(),
                "ok": injected.is_ok(),
                "error": injected.as_ref().err(),
                "recovery_s": recovery(&timeline, *at, until).map(|d| d.as_secs_f64()),
            })
        })
        .collect();
    json!({
        "workload": "audit",
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "machine": crate::wrk::machine(),
        "commit": crate::wrk::git(&["rev-parse", "HEAD"]),
        "audit": {
            "clients": options.clients,
            "duration_s": options.duration.as_secs_f64(),
            "acknowledged": by_kind(&acked),
            "acknowledged_total": attempts.iter().filter(|a| acked(&a.outcome)).count(),
            "unanswered": by_kind(&unanswered),
            "unanswered_total": attempts.iter().filter(|a| unanswered(&a.outcome)).count(),
            "refused": by_kind(&refused),
            "refused_by_status": statuses,
            "not_sent": attempts.iter().filter(|a| not_sent(&a.outcome)).count(),
            "lost_total": checked.lost.len(),
            "lost": checked.lost.iter().take(20).map(|(k, what)| json!({"kind": k.name(), "what": what})).collect::<Vec<_>>(),
            "jobs_waited_s": checked.jobs_waited.as_secs_f64(),
            "faults": faults,
        },
    })
}

/// From `at` (a fault's start) to the first acknowledged write after the last failed one
/// before `until` (the next fault). Zero if nothing failed; None if writes never recovered.
fn recovery(timeline: &[(Duration, bool)], at: Duration, until: Duration) -> Option<Duration> {
    let window: Vec<&(Duration, bool)> = timeline.iter().filter(|(t, _)| *t >= at && *t < until).collect();
    let Some(last_failure) = window.iter().rposition(|(_, acked)| !acked) else {
        return Some(Duration::ZERO);
    };
    window[last_failure + 1..]
        .iter()
        .find(|(_, acked)| *acked)
        .map(|(t, _)| *t - at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_runs_from_the_fault_to_the_first_success_after_the_last_failure() {
        let ms = Duration::from_millis;
        let timeline = [
            (ms(0), true),
            (ms(100), false),
            (ms(150), true),
            (ms(200), false),
            (ms(300), true),
            (ms(900), false),
        ];
        assert_eq!(recovery(&timeline, ms(50), ms(800)), Some(ms(250)));
        assert_eq!(recovery(&timeline, ms(0), ms(90)), Some(Duration::ZERO));
        assert_eq!(recovery(&timeline, ms(850), Duration::MAX), None);
    }
}
