//! L2: Redis, shared by every shard of every process. Read-through with a TTL.
//!
//! Each key has a value (`<prefix>:v<shape>:<key>`) and a generation (`<prefix>:g:<key>`).
//! A write deletes the value and bumps the generation in the same script that publishes the
//! invalidation; a load reads the generation with the value (one MGET) and stores what it
//! loaded only if the generation is still the same (one script), so a read from before a
//! write never re-inserts what the write replaced.
//!
//! Values carry the shape version of the binary that wrote them in their key, so a deploy
//! that changes a cached shape never reads an old one; the generation and the channel are
//! shared by all versions, and every value is tagged with the generation it was stored
//! under and counts only while that is current, so a write by any version invalidates the
//! values of every version (during a rolling deploy, say).
//!
//! Every call waits at most `redis_timeout_ms`; an error or timeout opens the breaker and
//! the shard leaves Redis alone for `breaker_backoff_ms`, reading from Postgres meanwhile.
//!
//! Runs on a shard: never blocks.

use super::{Cached, EventPage, Key, PageEvent};
use crate::metrics::ShardMetrics;
use crate::store::redis::RedisClient;
use crate::store::settings as config;
use crate::units::ms;
use redis::Value;
use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant, UNIX_EPOCH};

/// Bump when the shape of a cached value changes: the new binary then uses new value keys.
pub const SHAPE_VERSION: u32 = 1;

/// KEYS: value, generation pairs. ARGV: TTL, then generation, value pairs. Stores
/// `<generation>|<value>` if the generation is still the one read.
const PUT_SCRIPT: &str = "for i = 1, #KEYS, 2 do \
       if (redis.call('GET', KEYS[i + 1]) or '0') == ARGV[i + 1] then \
         redis.call('SET', KEYS[i], ARGV[i + 1] .. '|' .. ARGV[i + 2], 'EX', ARGV[1]) end end return 1";
/// KEYS: value, generation pairs. ARGV: generation TTL, channel, message.
const INVALIDATE_SCRIPT: &str = "for i = 1, #KEYS, 2 do \
       redis.call('DEL', KEYS[i]) redis.call('INCR', KEYS[i + 1]) \
       redis.call('EXPIRE', KEYS[i + 1], ARGV[1]) end \
     return redis.call('PUBLISH', ARGV[2], ARGV[3])";

pub struct L2 {
    redis: Rc<RedisClient>,
    prefix: String,
    ttl_s: Cell<u64>,
    timeout: Duration,
    backoff: Duration,
    open_until: Cell<Option<Instant>>,
    metrics: &'static ShardMetrics,
}

/// What L2 knows about one key.
pub enum Lookup {
    Hit(Cached),
    /// Not there; store a loaded value with this generation.
    Miss(Vec<u8>),
    /// Redis is down, slow or the breaker is open: go to Postgres, store nothing.
    Unavailable,
}

impl L2 {
    pub fn new(settings: &config::Cache, redis: Rc<RedisClient>, metrics: &'static ShardMetrics) -> L2 {
        L2 {
            redis,
            prefix: settings.key_prefix.clone(),
            ttl_s: Cell::new(settings.ttl_s),
            timeout: ms(settings.redis_timeout_ms),
            backoff: ms(settings.breaker_backoff_ms),
            open_until: Cell::new(None),
            metrics,
        }
    }

    fn value_key(&self, key: &Key) -> String {
        format!("{}:v{SHAPE_VERSION}:{}", self.prefix, key.wire())
    }

    fn generation_key(&self, key: &Key) -> String {
        format!("{}:g:{}", self.prefix, key.wire())
    }

    /// One round trip for any number of keys.
    pub async fn get_many(&self, keys: &[Key]) -> Vec<Lookup> {
        let mut cmd = redis::cmd("MGET");
        for key in keys {
            cmd.arg(self.value_key(key)).arg(self.generation_key(key));
        }
        let Ok(Value::Array(values)) = self.call(&cmd).await else {
            return keys.iter().map(|_| Lookup::Unavailable).collect();
        };
        let bytes = |value: &Value| match value {
            Value::BulkString(bytes) => Some(bytes.clone()),
            _ => None,
        };
        values
            .chunks(2)
            .map(|pair| {
                let generation = pair.get(1).and_then(bytes).unwrap_or_else(|| b"0".to_vec());
                let stored = pair.first().and_then(bytes);
                match stored.as_deref().and_then(|s| current(s, &generation)).and_then(decode) {
                    Some(hit) => {
                        ShardMetrics::add(&self.metrics.cache_l2_hits, 1);
                        Lookup::Hit(hit)
                    }
                    None => {
                        ShardMetrics::add(&self.metrics.cache_l2_misses, 1);
                        Lookup::Miss(generation)
                    }
                }
            })
            .collect()
    }

    pub async fn get(&self, key: &Key) -> Lookup {
        self.get_many(std::slice::from_ref(key))
            .await
            .pop()
            .unwrap_or(Lookup::Unavailable)
    }

    /// As `put`, without making the request that loaded the values wait for Redis: a late
    /// store is as safe as a prompt one, since the generation check happens in Redis.
    /// A reload's `ttl_s`, for values stored after it.
    pub fn set_ttl_s(&self, ttl_s: u64) {
        self.ttl_s.set(ttl_s);
    }

    pub fn put_later(l2: &Rc<L2>, entries: Vec<(Key, Vec<u8>, Cached)>) {
        if entries.is_empty() {
            return;
        }
        let l2 = l2.clone();
        crate::runtime::spawn(async move { l2.put(&entries).await });
    }

    /// Stores loaded values whose generations are unchanged; one round trip.
    pub async fn put(&self, entries: &[(Key, Vec<u8>, Cached)]) {
        if entries.is_empty() {
            return;
        }
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(PUT_SCRIPT).arg(entries.len() * 2);
        for (key, _, _) in entries {
            cmd.arg(self.value_key(key)).arg(self.generation_key(key));
        }
        cmd.arg(self.ttl_s.get());
        for (_, generation, value) in entries {
            cmd.arg(generation.as_slice()).arg(encode(value));
        }
        let _ = self.call(&cmd).await;
    }

    /// Deletes the keys, bumps their generations and publishes `message`; the number of
    /// subscribers that got it, or `None` if Redis could not be reached.
    pub async fn invalidate(&self, keys: &[Key], channel: &str, message: &str) -> Option<usize> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(INVALIDATE_SCRIPT).arg(keys.len() * 2);
        for key in keys {
            cmd.arg(self.value_key(key)).arg(self.generation_key(key));
        }
        // Generations outlive the values they guard; one that expired reads as "0", which
        // only ever makes a racing load skip its store.
        cmd.arg(self.ttl_s.get() * 2).arg(channel).arg(message);
        match self.call(&cmd).await {
            Ok(Value::Int(receivers)) => Some(receivers.max(0) as usize),
            _ => None,
        }
    }

    /// One call through the breaker, at most `redis_timeout_ms`.
    async fn call(&self, cmd: &redis::Cmd) -> Result<Value, ()> {
        if let Some(until) = self.open_until.get() {
            if Instant::now() < until {
                return Err(());
            }
            self.open_until.set(None);
            ShardMetrics::sub(&self.metrics.cache_breaker_open, 1);
        }
        match self.redis.query_within(cmd, self.timeout).await {
            Ok(Value::ServerError(_)) | Err(_) => {
                ShardMetrics::add(&self.metrics.cache_redis_errors, 1);
                if self.open_until.replace(Some(Instant::now() + self.backoff)).is_none() {
                    ShardMetrics::add(&self.metrics.cache_breaker_open, 1);
                }
                Err(())
            }
            Ok(value) => Ok(value),
        }
    }
}

/// The value part of `<generation>|<value>` if it was stored under `generation`.
fn current<'a>(stored: &'a [u8], generation: &[u8]) -> Option<&'a [u8]> {
    let bar = stored.iter().position(|b| *b == b'|')?;
    (&stored[..bar] == generation).then(|| &stored[bar + 1..])
}

fn encode(value: &Cached) -> Vec<u8> {
    match value {
        Cached::Session { user_id, expires_at } => {
            let micros = expires_at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros());
            format!("S{user_id}:{micros}").into_bytes()
        }
        Cached::Json(json) => {
            let mut bytes = Vec::with_capacity(json.len() + 1);
            bytes.push(b'J');
            bytes.extend_from_slice(json);
            bytes
        }
        // `E`, more (0/1), then per event: micros, id (i64 LE), length (u32 LE), JSON.
        Cached::Events(page) => {
            let mut bytes = vec![b'E', u8::from(page.more)];
            for event in &page.events {
                bytes.extend_from_slice(&event.created_at_micros.to_le_bytes());
                bytes.extend_from_slice(&event.id.to_le_bytes());
                bytes.extend_from_slice(&(event.json.len() as u32).to_le_bytes());
                bytes.extend_from_slice(&event.json);
            }
            bytes
        }
    }
}

fn decode_events(more: u8, mut rest: &[u8]) -> Option<Cached> {
    let mut events = Vec::new();
    while !rest.is_empty() {
        let (micros, tail) = rest.split_first_chunk::<8>()?;
        let (id, tail) = tail.split_first_chunk::<8>()?;
        let (len, tail) = tail.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len) as usize;
        let json = tail.get(..len)?;
        events.push(PageEvent {
            id: i64::from_le_bytes(*id),
            created_at_micros: i64::from_le_bytes(*micros),
            json: json.into(),
        });
        rest = &tail[len..];
    }
    Some(Cached::Events(Rc::new(EventPage {
        events,
        more: more == 1,
    })))
}

/// `None` for anything this binary did not write (the key prefix versions the shapes).
fn decode(bytes: &[u8]) -> Option<Cached> {
    match bytes.split_first()? {
        (b'J', json) => Some(Cached::Json(json.into())),
        (b'E', rest) => {
            let (more, events) = rest.split_first()?;
            decode_events(*more, events)
        }
        (b'S', rest) => {
            let (user_id, micros) = std::str::from_utf8(rest).ok()?.split_once(':')?;
            Some(Cached::Session {
                user_id: user_id.parse().ok()?,
                expires_at: UNIX_EPOCH + Duration::from_micros(micros.parse().ok()?),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_counts_only_under_the_generation_it_was_stored_with() {
        assert_eq!(current(b"3|J{}", b"3"), Some(&b"J{}"[..]));
        assert_eq!(current(b"3|J{}", b"4"), None, "a write since: stale");
        assert_eq!(current(b"0|J{}", b"0"), Some(&b"J{}"[..]));
        assert_eq!(current(b"J{}", b"0"), None, "untagged: not ours");
        assert_eq!(current(b"13|J|x", b"13"), Some(&b"J|x"[..]), "the first bar splits");
    }

    #[test]
    fn values_round_trip_and_foreign_bytes_do_not_decode() {
        let session = Cached::Session {
            user_id: 7,
            expires_at: UNIX_EPOCH + Duration::from_micros(1_764_000_000_123_456),
        };
        match decode(&encode(&session)) {
            Some(Cached::Session { user_id, expires_at }) => {
                assert_eq!(user_id, 7);
                assert_eq!(expires_at, UNIX_EPOCH + Duration::from_micros(1_764_000_000_123_456));
            }
            other => panic!("{other:?}"),
        }
        match decode(&encode(&Cached::Json(b"{\"a\":1}".as_slice().into()))) {
            Some(Cached::Json(json)) => assert_eq!(&*json, b"{\"a\":1}"),
            other => panic!("{other:?}"),
        }
        let page = Cached::Events(Rc::new(EventPage {
            events: vec![PageEvent {
                id: 3,
                created_at_micros: 99,
                json: b"{}".as_slice().into(),
            }],
            more: true,
        }));
        match (decode(&encode(&page)), &page) {
            (Some(Cached::Events(back)), Cached::Events(sent)) => assert_eq!(back, *sent),
            other => panic!("{other:?}"),
        }
        for foreign in [&b""[..], b"X{}", b"Sx:1", b"S1", b"E\x01short"] {
            assert!(decode(foreign).is_none());
        }
    }
}
