//! `percore-bench seed`: the seed-mix data set, written with COPY (not row by row).
//!
//! Users `seed-<n>@bench.percore` (password `bench-password`, one Argon2 hash shared by all,
//! made once), each with a profile and prefs; events spread over users and the last 30
//! days; and live sessions whose tokens go to a file the wrk script reads, one
//! `token user_id` per line, with the seeded id range on the first line.
//!
//! Idempotent: a run that finds the same scale already seeded (and its tokens file) does
//! nothing; otherwise it replaces every earlier seed row.

use sha2::{Digest, Sha256};
use std::io::Write;
use std::time::Instant;

pub struct Scale {
    pub users: u64,
    pub events: u64,
    pub sessions: u64,
}

pub const PASSWORD: &str = "bench-password";
const EMAIL_DOMAIN: &str = "bench.percore";

pub fn seed(database_url: &str, scale: &Scale, tokens_path: &str) -> Result<(), String> {
    let mut client =
        postgres::Client::connect(database_url, postgres::NoTls).map_err(|e| format!("connecting: {e}"))?;
    let outcome = percore_schema::migrate(&mut client)?;
    if !outcome.applied.is_empty() {
        eprintln!("seed: applied migrations {:?}", outcome.applied);
    }
    techempower_tables(&mut client)?;
    let marker = format!("{}|{}|{}", scale.users, scale.events, scale.sessions);
    let last_email = format!("seed-{}@{EMAIL_DOMAIN}", scale.users);
    let done: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM users WHERE email = $1::text::citext AND name = $2)",
            &[&last_email, &marker],
        )
        .map_err(|e| e.to_string())?
        .get(0);
    if done && std::path::Path::new(tokens_path).exists() {
        eprintln!("seed: {marker} already seeded; {tokens_path} kept");
        return Ok(());
    }
    let started = Instant::now();
    client
        .execute("DELETE FROM users WHERE email LIKE '%@' || $1", &[&EMAIL_DOMAIN])
        .map_err(|e| format!("removing an earlier seed: {e}"))?;
    let phc = percore_workers::password::hash(
        percore_workers::password::Argon2Params {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
        },
        PASSWORD.as_bytes(),
    );
    // Users: the last one carries the scale marker as its name, so a rerun can tell.
    copy(
        &mut client,
        "COPY users (email, password_hash, name) FROM STDIN",
        |out| {
            for n in 1..=scale.users {
                let name = if n == scale.users {
                    marker.clone()
                } else {
                    format!("Seed User {n}")
                };
                writeln!(out, "seed-{n}@{EMAIL_DOMAIN}\t{phc}\t{name}")?;
            }
            Ok(())
        },
    )?;
    let (first_id, last_id): (i64, i64) = {
        let row = client
            .query_one(
                "SELECT min(id), max(id) FROM users WHERE email LIKE '%@' || $1",
                &[&EMAIL_DOMAIN],
            )
            .map_err(|e| e.to_string())?;
        (row.get(0), row.get(1))
    };
    assert_eq!(
        (last_id - first_id + 1) as u64,
        scale.users,
        "COPY assigns consecutive ids"
    );
    copy(
        &mut client,
        "COPY profiles (user_id, display_name, bio) FROM STDIN",
        |out| {
            for id in first_id..=last_id {
                writeln!(out, "{id}\tseed {id}\tA seeded profile.")?;
            }
            Ok(())
        },
    )?;
    copy(&mut client, "COPY prefs (user_id) FROM STDIN", |out| {
        for id in first_id..=last_id {
            writeln!(out, "{id}")?;
        }
        Ok(())
    })?;
    let mut random = Random::new();
    copy(
        &mut client,
        "COPY events (user_id, kind, payload, created_at) FROM STDIN",
        |out| {
            for n in 0..scale.events {
                let user = first_id + (random.next() % scale.users) as i64;
                let seconds_ago = random.next() % (30 * 24 * 3600);
                writeln!(
                    out,
                    "{user}\tpage.view\t{{\"n\": {n}, \"path\": \"/p/{}\"}}\t{}",
                    n % 97,
                    seconds_ago_timestamp(seconds_ago)
                )?;
            }
            Ok(())
        },
    )?;
    let mut tokens = Vec::with_capacity(scale.sessions as usize);
    copy(
        &mut client,
        "COPY sessions (token_hash, user_id, expires_at) FROM STDIN",
        |out| {
            for k in 0..scale.sessions {
                let user = first_id + (k % scale.users) as i64;
                let mut raw = [0u8; 32];
                getrandom::fill(&mut raw).map_err(|e| std::io::Error::other(e.to_string()))?;
                let hash: String = Sha256::digest(raw).iter().map(|b| format!("{b:02x}")).collect();
                writeln!(out, "\\\\x{hash}\t{user}\t2099-01-01 00:00:00+00")?;
                use base64::Engine as _;
                tokens.push((base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw), user));
            }
            Ok(())
        },
    )?;
    client
        .batch_execute("ANALYZE users; ANALYZE profiles; ANALYZE prefs; ANALYZE events; ANALYZE sessions;")
        .map_err(|e| e.to_string())?;
    let mut file =
        std::io::BufWriter::new(std::fs::File::create(tokens_path).map_err(|e| format!("{tokens_path}: {e}"))?);
    let write = |file: &mut std::io::BufWriter<std::fs::File>| -> std::io::Result<()> {
        writeln!(file, "{first_id} {last_id} {EMAIL_DOMAIN} {PASSWORD}")?;
        for (token, user) in &tokens {
            writeln!(file, "{token} {user}")?;
        }
        file.flush()
    };
    write(&mut file).map_err(|e| format!("{tokens_path}: {e}"))?;
    eprintln!(
        "seed: {} users, {} events, {} sessions in {:.1} s; tokens in {tokens_path}",
        scale.users,
        scale.events,
        scale.sessions,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The TechEmpower fortunes, as their rules list them (the `<script>` and the Japanese
/// one included: they test escaping and UTF-8).
pub const FORTUNES: [&str; 12] = [
    "fortune: No such file or directory",
    "A computer scientist is someone who fixes things that aren't broken.",
    "After enough decimal places, nobody gives a damn.",
    "A bad random number generator: 1, 1, 1, 1, 1, 4.33e+67, 1, 1, 1",
    "A computer program does what you tell it to do, not what you want it to do.",
    "Emacs is a nice operating system, but I prefer UNIX. \u{2014} Tom Christaensen",
    "Any program that runs right is obsolete.",
    "A list is only as strong as its weakest link. \u{2014} Donald Knuth",
    "Feature: A bug with seniority.",
    "Computers make very fast, very accurate mistakes.",
    "<script>alert(\"This should not be displayed in a browser alert box.\");</script>",
    "\u{30d5}\u{30ec}\u{30fc}\u{30e0}\u{30ef}\u{30fc}\u{30af}\u{306e}\u{30d9}\u{30f3}\u{30c1}\u{30de}\u{30fc}\u{30af}",
];
pub const WORLD_ROWS: i32 = 10_000;

/// `world` (10,000 rows, random numbers 1-10,000) and `fortune` (the 12 standard rows),
/// refilled unless they already hold exactly that many rows.
fn techempower_tables(client: &mut postgres::Client) -> Result<(), String> {
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM world), (SELECT count(*) FROM fortune)",
            &[],
        )
        .map_err(|e| e.to_string())?;
    let (worlds, fortunes): (i64, i64) = (row.get(0), row.get(1));
    if worlds == i64::from(WORLD_ROWS) && fortunes == FORTUNES.len() as i64 {
        return Ok(());
    }
    client
        .batch_execute("TRUNCATE world, fortune")
        .map_err(|e| format!("emptying world and fortune: {e}"))?;
    let mut random = Random::new();
    copy(client, "COPY world (id, randomnumber) FROM STDIN", |out| {
        for id in 1..=WORLD_ROWS {
            writeln!(out, "{id}\t{}", random.next() % WORLD_ROWS as u64 + 1)?;
        }
        Ok(())
    })?;
    copy(client, "COPY fortune (id, message) FROM STDIN", |out| {
        for (index, message) in FORTUNES.iter().enumerate() {
            // COPY's text format: backslash, tab and newline would need escaping; none occur.
            writeln!(out, "{}\t{message}", index + 1)?;
        }
        Ok(())
    })?;
    eprintln!(
        "seed: world ({WORLD_ROWS} rows) and fortune ({} rows) filled",
        FORTUNES.len()
    );
    Ok(())
}

/// Streams rows written by `rows` into one COPY.
fn copy(
    client: &mut postgres::Client,
    statement: &str,
    rows: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), String> {
    let mut writer = client.copy_in(statement).map_err(|e| format!("{statement}: {e}"))?;
    {
        let mut buffered = std::io::BufWriter::with_capacity(1 << 20, &mut writer);
        rows(&mut buffered).map_err(|e| format!("{statement}: {e}"))?;
        buffered.flush().map_err(|e| format!("{statement}: {e}"))?;
    }
    writer.finish().map_err(|e| format!("{statement}: {e}"))?;
    Ok(())
}

/// An RFC 3339 time `seconds_ago` before now, which COPY reads as timestamptz.
fn seconds_ago_timestamp(seconds_ago: u64) -> String {
    let now = jiff::Timestamp::now().as_second();
    jiff::Timestamp::from_second(now - seconds_ago as i64)
        .expect("within jiff's range")
        .to_string()
}

/// xorshift64*: reproducible spread for seed data, not security.
struct Random(u64);

impl Random {
    fn new() -> Random {
        Random(0x9E37_79B9_7F4A_7C15)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}
