//! Per-client rate limits: a token bucket per client and route class (`[rate_limit.<class>]`).
//!
//! The client is its session when it sends a bearer token (the token's hash: known before
//! any lookup, and the same on every shard and instance; a user id would be known only
//! once a statement or the cache had resolved the session, so a client's first requests
//! and its later ones would land in different buckets), else its IP (`client_ip`: the TCP
//! peer, or `X-Forwarded-For` when the peer is one of `[server] trusted_proxies`). In `local` mode each shard keeps its own
//! buckets: no lock, no hop, and a client spread over N shards gets up to N allowances. In
//! `global` mode one Lua script on Redis keeps one bucket per client and class for every
//! shard of every instance; when Redis does not answer, the shard's own bucket decides
//! (fail open to the local limit, never to no limit).
//!
//! Runs on a shard: never blocks.

use super::throttle::{Key, Throttle};
use crate::http::Request;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::net::IpAddr;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Local,
    Global,
}

/// One class's bucket: `rate` requests per second refill it, `burst` is its size.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClassLimit {
    pub rate: f64,
    pub burst: u32,
}

/// `[rate_limit]` in tuning.toml.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub mode: Mode,
    /// Clients remembered per shard and class; the fullest buckets are forgotten first.
    pub tracked_max: usize,
    /// How long a global check may wait for Redis before the local bucket decides.
    pub redis_timeout_ms: u64,
    pub read: ClassLimit,
    pub write: ClassLimit,
    pub auth: ClassLimit,
    pub jobs: ClassLimit,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mode: Mode::Local,
            tracked_max: 100_000,
            redis_timeout_ms: 20,
            read: ClassLimit {
                rate: 1000.0,
                burst: 2000,
            },
            write: ClassLimit {
                rate: 200.0,
                burst: 400,
            },
            auth: ClassLimit { rate: 10.0, burst: 50 },
            jobs: ClassLimit { rate: 50.0, burst: 100 },
        }
    }
}

impl Settings {
    /// (key, reason) for the first bad value.
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (name, limit) in [
            ("read", self.read),
            ("write", self.write),
            ("auth", self.auth),
            ("jobs", self.jobs),
        ] {
            if !(limit.rate > 0.0 && limit.rate.is_finite()) {
                return Err((
                    format!("rate_limit.{name}.rate"),
                    format!("must be a positive number (got {})", limit.rate),
                ));
            }
            if limit.burst == 0 {
                return Err((format!("rate_limit.{name}.burst"), "must be at least 1".into()));
            }
        }
        if self.tracked_max == 0 {
            return Err(("rate_limit.tracked_max".into(), "must be at least 1".into()));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Read,
    Write,
    Auth,
    Jobs,
}

impl Class {
    pub fn name(self) -> &'static str {
        match self {
            Class::Read => "read",
            Class::Write => "write",
            Class::Auth => "auth",
            Class::Jobs => "jobs",
        }
    }
}

/// A refusal: what the 429 says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub class: Class,
    pub limit: u64,
    pub retry_after_s: u64,
}

/// A shard's buckets, one throttle per class.
pub struct Limiter {
    /// A reload replaces the class limits and the Redis timeout; mode and tracked_max
    /// are restart-only.
    settings: RefCell<Settings>,
    trusted_proxies: Vec<ipnet::IpNet>,
    classes: [RefCell<Throttle>; 4],
}

impl Limiter {
    pub fn new(settings: &Settings, trusted_proxies: Vec<ipnet::IpNet>) -> Limiter {
        let throttle = |limit: ClassLimit| RefCell::new(Throttle::new(limit.rate, limit.burst, settings.tracked_max));
        Limiter {
            classes: [
                throttle(settings.read),
                throttle(settings.write),
                throttle(settings.auth),
                throttle(settings.jobs),
            ],
            settings: RefCell::new(settings.clone()),
            trusted_proxies,
        }
    }

    pub fn mode(&self) -> Mode {
        self.settings.borrow().mode
    }

    pub fn redis_timeout(&self) -> std::time::Duration {
        crate::units::ms(self.settings.borrow().redis_timeout_ms)
    }

    pub fn limit(&self, class: Class) -> ClassLimit {
        let settings = self.settings.borrow();
        match class {
            Class::Read => settings.read,
            Class::Write => settings.write,
            Class::Auth => settings.auth,
            Class::Jobs => settings.jobs,
        }
    }

    /// A reload: new class limits (buckets keep their tokens, capped at the new burst)
    /// and Redis timeout.
    pub fn reconfigure(&self, settings: &Settings) {
        *self.settings.borrow_mut() = settings.clone();
        for (class, limit) in [Class::Read, Class::Write, Class::Auth, Class::Jobs].into_iter().zip([
            settings.read,
            settings.write,
            settings.auth,
            settings.jobs,
        ]) {
            self.classes[class as usize]
                .borrow_mut()
                .reconfigure(limit.rate, limit.burst);
        }
    }

    /// The shard's own decision for one request of `client` in `class`.
    pub fn check_local(&self, class: Class, client: &Key, now: Instant) -> Result<(), Refused> {
        let mut throttle = self.classes[class as usize].borrow_mut();
        throttle
            .attempt(std::slice::from_ref(client), now)
            .map_err(|retry_after_s| Refused {
                class,
                limit: throttle.burst(),
                retry_after_s,
            })
    }

    /// The address the request came from, through trusted proxies.
    pub fn client_ip(&self, request: &Request<'_>) -> IpAddr {
        // Most deployments trust no proxy: then no header is looked up at all.
        if self.trusted_proxies.is_empty() {
            return request.peer;
        }
        client_ip(request.peer, request.header("x-forwarded-for"), &self.trusted_proxies)
    }
}

/// Who a request counts against: its session, else its address.
pub fn client_key(token_hash: Option<&[u8; 32]>, ip: IpAddr) -> Key {
    match token_hash {
        Some(hash) => Key::Token(*hash),
        None => Key::Ip(ip),
    }
}

/// `peer` unless it is a trusted proxy; then the right-most `X-Forwarded-For` address that
/// is not one (RFC 7239's reasoning: only the hops we trust could have appended it).
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&[u8]>, trusted: &[ipnet::IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let Some(list) = forwarded_for.and_then(|v| std::str::from_utf8(v).ok()) else {
        return peer;
    };
    for hop in list.rsplit(',').map(str::trim) {
        match hop.parse::<IpAddr>() {
            Ok(ip) if is_trusted(&ip) => continue,
            Ok(ip) => return ip,
            // Garbage in the chain: stop trusting it here.
            Err(_) => return peer,
        }
    }
    peer
}

/// The Redis key of a client's bucket in a class (global mode).
pub fn redis_key(class: Class, client: &Key) -> String {
    match client {
        Key::Token(hash) => format!("percore:rl:{}:t:{}", class.name(), hex(&hash[..16])),
        Key::Ip(ip) => format!("percore:rl:{}:ip:{ip}", class.name()),
        Key::Email(email) => format!("percore:rl:{}:e:{email}", class.name()),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The global bucket: refill by elapsed time (Redis's clock, so instances need not agree
/// on theirs), take one token if there is one. Returns {allowed, tokens left, ms to wait}.
pub const GLOBAL_BUCKET_LUA: &str = r#"
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ms')
local tokens = tonumber(b[1]) or burst
local last = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - last) * rate / 1000)
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ms', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {allowed, math.floor(tokens), wait}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> ipnet::IpNet {
        text.parse().unwrap()
    }

    #[test]
    fn forwarded_for_counts_only_from_trusted_proxies() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let stranger: IpAddr = "203.0.113.9".parse().unwrap();
        let trusted = [net("10.0.0.0/8")];
        let xff = Some(&b"198.51.100.7, 10.0.0.2"[..]);
        assert_eq!(
            client_ip(proxy, xff, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(stranger, xff, &trusted),
            stranger,
            "an untrusted peer's header is ignored"
        );
        assert_eq!(client_ip(proxy, xff, &[]), proxy, "no trusted proxies: the peer");
        assert_eq!(
            client_ip(proxy, Some(b"junk, 198.51.100.7"), &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(proxy, Some(b"198.51.100.7, junk"), &trusted), proxy);
        assert_eq!(client_ip(proxy, None, &trusted), proxy);
    }

    #[test]
    fn settings_refuse_non_positive_rates_naming_the_key() {
        let mut settings = Settings::default();
        assert!(settings.validate().is_ok());
        settings.write.rate = 0.0;
        assert_eq!(settings.validate().unwrap_err().0, "rate_limit.write.rate");
        settings.write.rate = 1.0;
        settings.auth.burst = 0;
        assert_eq!(settings.validate().unwrap_err().0, "rate_limit.auth.burst");
    }
}
