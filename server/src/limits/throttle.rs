//! Token buckets owned by one shard: login throttling (per client IP and per email) and
//! the per-client rate limits (`rate_limit`).
//!
//! Per shard, so it costs no lock and no cross-core traffic; a client whose connections
//! land on several shards gets each shard's allowance (documented in tuning.toml).
//! Memory is bounded by `identity.login_tracked_max`: when full, buckets that have refilled
//! completely are forgotten (they hold no information), and if none has, all are.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    Ip(IpAddr),
    /// Lower-cased, as emails compare case-insensitively.
    Email(String),
    /// A bearer token's hash: a signed-in client's session.
    Token([u8; 32]),
}

impl Key {
    /// The client's identity as `store::replicas::RecentWriters` hashes it: its session
    /// token, else what else it is known by.
    pub fn client_id(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        match self {
            // Already uniform: a SHA-256.
            Key::Token(hash) => u64::from_le_bytes(hash[..8].try_into().expect("8 of 32 bytes")),
            other => {
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                other.hash(&mut hasher);
                hasher.finish()
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

pub struct Throttle {
    buckets: HashMap<Key, Bucket>,
    burst: f64,
    per_second: f64,
    tracked_max: usize,
}

impl Throttle {
    pub fn new(per_second: f64, burst: u32, tracked_max: usize) -> Throttle {
        assert!(per_second > 0.0 && burst > 0 && tracked_max > 0);
        Throttle {
            buckets: HashMap::new(),
            burst: f64::from(burst),
            per_second,
            tracked_max,
        }
    }

    /// A reload's rate and burst; buckets keep their tokens, capped at the new burst.
    pub fn reconfigure(&mut self, per_second: f64, burst: u32) {
        assert!(per_second > 0.0 && burst > 0);
        self.per_second = per_second;
        self.burst = f64::from(burst);
    }

    /// Takes one attempt for every key, or none: `Err(seconds)` until the first refused
    /// key has a token again.
    pub fn attempt(&mut self, keys: &[Key], now: Instant) -> Result<(), u64> {
        for key in keys {
            let tokens = self.buckets.get(key).map_or(self.burst, |b| self.refilled(b, now));
            if tokens < 1.0 {
                let wait_s = ((1.0 - tokens) / self.per_second).ceil() as u64;
                return Err(wait_s.max(1));
            }
        }
        for key in keys {
            if !self.buckets.contains_key(key) && self.buckets.len() >= self.tracked_max {
                self.forget(now);
            }
            let tokens = self.buckets.get(key).map_or(self.burst, |b| self.refilled(b, now));
            self.buckets.insert(
                key.clone(),
                Bucket {
                    tokens: tokens - 1.0,
                    updated: now,
                },
            );
        }
        debug_assert!(self.buckets.len() <= self.tracked_max);
        Ok(())
    }

    pub fn burst(&self) -> u64 {
        self.burst as u64
    }

    fn refilled(&self, bucket: &Bucket, now: Instant) -> f64 {
        let elapsed_s = now.saturating_duration_since(bucket.updated).as_secs_f64();
        (bucket.tokens + elapsed_s * self.per_second).min(self.burst)
    }

    fn forget(&mut self, now: Instant) {
        let (burst, per_second) = (self.burst, self.per_second);
        self.buckets.retain(|_, b| {
            let elapsed_s = now.saturating_duration_since(b.updated).as_secs_f64();
            b.tokens + elapsed_s * per_second < burst
        });
        if self.buckets.len() >= self.tracked_max {
            log::warn!(
                "throttle: {} clients all mid-limit; forgetting them (the tracked_max bound)",
                self.buckets.len()
            );
            self.buckets.clear();
        }
    }

    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(n: u8) -> Key {
        Key::Ip(IpAddr::from([10, 0, 0, n]))
    }

    #[test]
    fn burst_then_refusal_then_refill() {
        let mut throttle = Throttle::new(1.0, 3, 100);
        let t0 = Instant::now();
        for _ in 0..3 {
            throttle.attempt(&[ip(1)], t0).unwrap();
        }
        assert_eq!(throttle.attempt(&[ip(1)], t0), Err(1));
        // A fresh client has burst - 1 left after its first attempt: two more, then none.
        for attempt in 0..3 {
            assert_eq!(throttle.attempt(&[ip(3)], t0), Ok(()), "attempt {attempt}");
        }
        assert_eq!(
            throttle.attempt(&[ip(3)], t0),
            Err(1),
            "a fresh client has burst - 1 left"
        );
        assert!(throttle.attempt(&[ip(2)], t0).is_ok(), "other clients are unaffected");
        throttle.attempt(&[ip(1)], t0 + Duration::from_secs(1)).unwrap();
    }

    #[test]
    fn a_refused_key_charges_no_other_key() {
        let mut throttle = Throttle::new(1.0 / 60.0, 1, 100);
        let t0 = Instant::now();
        let email = Key::Email("a@b.c".into());
        throttle.attempt(&[ip(1), email.clone()], t0).unwrap();
        assert_eq!(throttle.attempt(&[ip(2), email.clone()], t0), Err(60));
        throttle.attempt(&[ip(2)], t0).unwrap();
    }

    #[test]
    fn memory_stays_bounded() {
        let mut throttle = Throttle::new(1.0, 2, 16);
        let t0 = Instant::now();
        for n in 0..200u8 {
            throttle.attempt(&[ip(n)], t0).unwrap();
            assert!(throttle.tracked() <= 16);
        }
    }
}
