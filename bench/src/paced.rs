//! The built-in open loop: requests at a fixed rate whatever the latency, each timed from
//! when it was due rather than when it was sent, so a server that stalls is charged for
//! every request that queued behind the stall (no coordinated omission: wrk2's method).
//!
//! Why it exists beside k6: k6 spends far more CPU per request than wrk, and on a small
//! box one k6 core offers a fraction of the rate percore serves (seed-mix: about 1,300/s
//! against a 6,900/s saturation), so its latency figures measure k6. This generator is one
//! blocking thread per connection doing nothing but write, read and note the time. Its
//! threads share one core with the rest of the load side, so keep the connections few
//! (`--paced-connections`, default 16): with 64 threads on one core their wake-ups alone
//! put a p99 of about 18 ms on /json at half its saturation rate, against 8 ms with 16.

use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Shares of the closed-loop (saturation) rate at which latency is measured.
pub const SHARES: [f64; 2] = [0.5, 0.8];
/// A response head larger than this is an error, not something to buffer.
const RESPONSE_HEAD_BYTES_MAX: usize = 16 * 1024;

/// What each request is.
#[derive(Clone)]
pub enum Mix {
    /// The same GET every time.
    Get(String),
    /// Issue 3's seed-mix, as `bench/wrk/seed-mix.lua` and `bench/k6/seed-mix.js` draw it.
    SeedMix(Seeded),
}

#[derive(Clone)]
pub struct Seeded {
    tokens: Vec<String>,
    first_id: u64,
    last_id: u64,
    domain: String,
    password: String,
}

impl Seeded {
    /// Reads the tokens file `percore-bench seed` writes.
    pub fn load(path: &str) -> Result<Seeded, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"))?;
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap_or_default().split(' ').collect();
        let [first_id, last_id, domain, password] = header[..] else {
            return Err(format!(
                "{path}: the first line is not \"first_id last_id domain password\""
            ));
        };
        let tokens: Vec<String> = lines.filter_map(|l| l.split(' ').next()).map(String::from).collect();
        if tokens.is_empty() {
            return Err(format!("{path} holds no token; run `percore-bench seed` first"));
        }
        Ok(Seeded {
            tokens,
            first_id: first_id.parse().map_err(|_| format!("{path}: bad first id"))?,
            last_id: last_id.parse().map_err(|_| format!("{path}: bad last id"))?,
            domain: domain.into(),
            password: password.into(),
        })
    }
}

/// Which latency bucket a request is counted in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tag {
    Login,
    Other,
}

impl Mix {
    /// One request's bytes, and its tag.
    fn draw(&self, random: &mut Random, host: &str) -> (Vec<u8>, Tag) {
        let seeded = match self {
            Mix::Get(path) => {
                let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
                return (request.into_bytes(), Tag::Other);
            }
            Mix::SeedMix(seeded) => seeded,
        };
        let token = &seeded.tokens[random.below(seeded.tokens.len() as u64) as usize];
        let authed = |method: &str, path: &str, body: &str| {
            let mut text = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n");
            if !body.is_empty() {
                text += &format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len());
            }
            (format!("{text}\r\n{body}").into_bytes(), Tag::Other)
        };
        let r = random.below(1000);
        let id = |random: &mut Random| seeded.first_id + random.below(seeded.last_id - seeded.first_id + 1);
        match r {
            0..600 => authed("GET", "/v1/me", ""),
            600..750 => {
                let ids: Vec<String> = (0..20).map(|_| id(random).to_string()).collect();
                authed("GET", &format!("/v1/users?ids={}", ids.join(",")), "")
            }
            750..900 => authed("GET", "/v1/me/events?limit=20", ""),
            900..950 => authed(
                "POST",
                "/v1/events",
                &format!(r#"{{"kind":"bench.click","payload":{{"x":{}}}}}"#, random.below(1000)),
            ),
            950..999 => {
                let theme = ["light", "dark", "system"][random.below(3) as usize];
                let opt_in = random.below(2) == 1;
                authed(
                    "PUT",
                    "/v1/me/prefs",
                    &format!(r#"{{"locale":"en","timezone":"UTC","theme":"{theme}","email_opt_in":{opt_in}}}"#),
                )
            }
            _ => {
                let n = 1 + random.below(seeded.last_id - seeded.first_id + 1);
                let body = format!(
                    r#"{{"email":"seed-{n}@{}","password":"{}"}}"#,
                    seeded.domain, seeded.password
                );
                let text = format!(
                    "POST /v1/auth/login HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                (text.into_bytes(), Tag::Login)
            }
        }
    }
}

/// xorshift64*: the driver needs spread, not secrecy, and no crate for it.
struct Random(u64);

impl Random {
    fn seeded() -> Random {
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).expect("the OS has randomness");
        Random(u64::from_le_bytes(seed) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// One run: `rate` requests per second over `connections` for `duration`.
pub struct Plan<'a> {
    /// host:port
    pub addr: &'a str,
    pub rate: f64,
    pub duration: Duration,
    pub connections: usize,
    pub mix: &'a Mix,
    /// The CPU the generator threads are pinned to, if one.
    pub cpu: Option<usize>,
}

#[derive(Default)]
struct Tally {
    other_us: Vec<u64>,
    login_us: Vec<u64>,
    non_2xx: u64,
    io_errors: u64,
}

/// Runs the plan and summarizes it.
pub fn run(plan: &Plan<'_>) -> Value {
    assert!(plan.rate > 0.0 && plan.connections > 0);
    let interval = Duration::from_secs_f64(plan.connections as f64 / plan.rate);
    let start = Instant::now() + Duration::from_millis(100);
    let end = start + plan.duration;
    // Logins (seconds of Argon2 when the pool is busy, on purpose) run on threads and
    // connections of their own, as k6 gives each iteration its own VU: on a connection's
    // schedule they would hold up every request due behind them and charge their wait to
    // requests that never met Argon2.
    let logins: std::sync::Mutex<Tally> = std::sync::Mutex::default();
    let mut tallies: Vec<Tally> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..plan.connections)
            .map(|index| {
                // Connection i's requests are due at start + (k * connections + i) / rate.
                let first_due = start + Duration::from_secs_f64(index as f64 / plan.rate);
                let logins = &logins;
                scope.spawn(move || {
                    if let Some(cpu) = plan.cpu {
                        pin_to(cpu);
                    }
                    drive(plan, first_due, interval, end, scope, logins)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("a generator thread"))
            .collect()
    });
    tallies.push(logins.into_inner().unwrap_or_else(|e| e.into_inner()));
    let mut total = Tally::default();
    for tally in tallies {
        total.other_us.extend(tally.other_us);
        total.login_us.extend(tally.login_us);
        total.non_2xx += tally.non_2xx;
        total.io_errors += tally.io_errors;
    }
    // Over the time it took, not the time planned: a generator (or server) that fell
    // behind finishes late, and its rate is what it really managed.
    let answered = (total.other_us.len() + total.login_us.len()) as f64;
    let achieved = answered / start.elapsed().as_secs_f64().max(plan.duration.as_secs_f64());
    json!({
        "offered_per_s": plan.rate.round(),
        "achieved_per_s": achieved.round(),
        "rate_not_achieved": achieved < plan.rate * 0.95,
        "connections": plan.connections,
        "latency_ms": { "other": percentiles(&mut total.other_us), "login": percentiles(&mut total.login_us) },
        "errors": { "non_2xx": total.non_2xx, "io": total.io_errors },
    })
}

/// One connection's schedule.
fn drive<'scope, 'env>(
    plan: &'env Plan<'env>,
    first_due: Instant,
    interval: Duration,
    end: Instant,
    scope: &'scope std::thread::Scope<'scope, 'env>,
    logins: &'env std::sync::Mutex<Tally>,
) -> Tally {
    let mut tally = Tally::default();
    let mut random = Random::seeded();
    let mut stream: Option<TcpStream> = None;
    let mut buffer = Vec::with_capacity(4096);
    let mut due = first_due;
    while due < end {
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let (request, tag) = plan.mix.draw(&mut random, plan.addr);
        if tag == Tag::Login {
            let cpu = plan.cpu;
            scope.spawn(move || {
                if let Some(cpu) = cpu {
                    pin_to(cpu);
                }
                let answered = TcpStream::connect(plan.addr).and_then(|mut fresh| {
                    fresh.set_read_timeout(Some(Duration::from_secs(10)))?;
                    fresh.write_all(&request)?;
                    read_response(&mut fresh, &mut Vec::new())
                });
                let latency_us = due.elapsed().as_micros() as u64;
                let mut tally = logins.lock().unwrap_or_else(|e| e.into_inner());
                match answered {
                    Ok(status) => {
                        tally.non_2xx += u64::from(!(200..300).contains(&status));
                        tally.login_us.push(latency_us);
                    }
                    Err(_) => tally.io_errors += 1,
                }
            });
            due += interval;
            continue;
        }
        let answered = (|| -> std::io::Result<u16> {
            if stream.is_none() {
                let fresh = TcpStream::connect(plan.addr)?;
                fresh.set_nodelay(true)?;
                fresh.set_read_timeout(Some(Duration::from_secs(10)))?;
                stream = Some(fresh);
            }
            let s = stream.as_mut().expect("connected above");
            s.write_all(&request)?;
            read_response(s, &mut buffer)
        })();
        let latency_us = due.elapsed().as_micros() as u64;
        match answered {
            Ok(status) => {
                if !(200..300).contains(&status) {
                    tally.non_2xx += 1;
                }
                match tag {
                    Tag::Login => tally.login_us.push(latency_us),
                    Tag::Other => tally.other_us.push(latency_us),
                }
            }
            Err(_) => {
                tally.io_errors += 1;
                stream = None;
            }
        }
        due += interval;
    }
    tally
}

/// Reads one response (percore always frames with Content-Length); returns its status.
fn read_response(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> std::io::Result<u16> {
    buffer.clear();
    let mut chunk = [0u8; 4096];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(head_len) = response
            .parse(buffer)
            .map_err(|e| std::io::Error::other(format!("bad response: {e}")))?
        {
            let status = response.code.unwrap_or(0);
            let length: usize = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                .ok_or_else(|| std::io::Error::other("a response without Content-Length"))?;
            let mut remaining = (head_len + length).saturating_sub(buffer.len());
            while remaining > 0 {
                let want = remaining.min(chunk.len());
                let n = stream.read(&mut chunk[..want])?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                remaining -= n;
            }
            return Ok(status);
        }
        if buffer.len() > RESPONSE_HEAD_BYTES_MAX {
            return Err(std::io::Error::other("response head too large"));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
}

fn percentiles(micros: &mut [u64]) -> Value {
    if micros.is_empty() {
        return json!({ "count": 0 });
    }
    micros.sort_unstable();
    let at = |q: f64| micros[((micros.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
    json!({
        "count": micros.len(), "p50": at(0.50), "p90": at(0.90), "p99": at(0.99),
        "p99.9": at(0.999), "max": at(1.0),
    })
}

fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_ranks_in_milliseconds() {
        let mut micros: Vec<u64> = (1..=1000).map(|i| i * 1000).collect();
        micros.reverse();
        let p = percentiles(&mut micros);
        assert_eq!(p["count"], 1000);
        assert_eq!(p["p50"], 501.0);
        assert_eq!(p["p99"], 990.0);
        assert_eq!(p["max"], 1000.0);
        assert_eq!(percentiles(&mut [])["count"], 0);
    }

    #[test]
    fn the_seed_mix_draws_its_shares() {
        let seeded = Seeded {
            tokens: vec!["t".into()],
            first_id: 1,
            last_id: 100,
            domain: "d".into(),
            password: "p".into(),
        };
        let mix = Mix::SeedMix(seeded);
        let mut random = Random(42);
        let draws: Vec<(Vec<u8>, Tag)> = (0..100_000).map(|_| mix.draw(&mut random, "h")).collect();
        let share = |prefix: &str| {
            draws.iter().filter(|(r, _)| r.starts_with(prefix.as_bytes())).count() as f64 / draws.len() as f64
        };
        assert!((share("GET /v1/me HTTP") - 0.60).abs() < 0.01);
        assert!((share("GET /v1/users?ids=") - 0.15).abs() < 0.01);
        assert!((share("POST /v1/events") - 0.05).abs() < 0.005);
        let logins = draws.iter().filter(|(_, tag)| *tag == Tag::Login).count();
        assert!((50..=150).contains(&logins), "{logins} logins in 100k");
        assert!(draws.iter().all(|(r, _)| r.ends_with(b"}") || r.ends_with(b"\r\n\r\n")));
    }
}
