//! Admission: one check per request of a limited route class, before the handler runs,
//! and the 429 it answers with (`rate_limit` holds the buckets).
//!
//! Runs on a shard: never blocks.

use super::rate_limit::{Class, GLOBAL_BUCKET_LUA, Limiter, Mode, Refused, redis_key};
use super::throttle::Key;
use crate::http::{ApiError, Reply};
use crate::store::redis::RedisClient;
use std::time::Instant;

/// Takes a token from `client`'s bucket in `class` (in Redis when the limit is global,
/// else, or when Redis fails, in this shard's), or says how long to wait.
pub async fn admit(limiter: &Limiter, redis: &RedisClient, client: &Key, class: Class) -> Result<(), Refused> {
    if limiter.mode() == Mode::Global {
        let limit = limiter.limit(class);
        let mut script = redis::cmd("EVAL");
        script
            .arg(GLOBAL_BUCKET_LUA)
            .arg(1)
            .arg(redis_key(class, client))
            .arg(limit.rate)
            .arg(limit.burst);
        let answer = redis.query_within(&script, limiter.redis_timeout()).await;
        if let Ok(redis::Value::Array(fields)) = answer {
            let number = |i: usize| match fields.get(i) {
                Some(redis::Value::Int(n)) => Some(*n),
                _ => None,
            };
            if let (Some(allowed), Some(wait_ms)) = (number(0), number(2)) {
                return if allowed == 1 {
                    Ok(())
                } else {
                    Err(Refused {
                        class,
                        limit: u64::from(limit.burst),
                        retry_after_s: (wait_ms.max(1) as u64).div_ceil(1000),
                    })
                };
            }
        }
        // Redis down, slow or strange: this shard's own bucket decides.
    }
    limiter.check_local(class, client, Instant::now())
}

/// 429 with `Retry-After` and the RateLimit fields (draft-ietf-httpapi-ratelimit-headers).
pub fn too_many(refused: &Refused, body: &mut Vec<u8>) -> Reply {
    let mut error = ApiError::new(
        429,
        "rate_limited",
        format!("too many {} requests; retry later", refused.class.name()),
    );
    error.retry_after_s = Some(refused.retry_after_s);
    crate::http::error::error_reply(&error, body)
        .with_header("RateLimit-Limit", refused.limit.to_string())
        .with_header("RateLimit-Remaining", "0")
        .with_header("RateLimit-Reset", refused.retry_after_s.to_string())
}
