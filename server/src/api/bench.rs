//! A benchmark route, served only with `[bench] routes = true`: a password hash on the
//! worker pool, for measuring heavy-work capacity. The TechEmpower routes are in
//! `techempower`.

use super::{Answer, workers_busy};
use crate::api::state::Shard;
use crate::http::{ApiError, Reply, Request};
use percore_workers::password::{self, Argon2Params};

/// Hashes the request body with Argon2id on the worker pool; answers the PHC string.
pub async fn hash(shard: &Shard, request: &Request<'_>, body: &mut Vec<u8>) -> Answer {
    let w = &shard.config().workers;
    let params = Argon2Params {
        memory_kib: w.argon2_memory_kib,
        iterations: w.argon2_iterations,
        parallelism: w.argon2_parallelism,
    };
    let secret = request.body.to_vec();
    let pending = shard
        .shared
        .workers
        .submit(move || password::hash(params, &secret))
        .map_err(|_| workers_busy(shard))?;
    let phc = pending.await.map_err(|e| super::task_failed(shard, e))?;
    serde_json::to_writer(&mut *body, &serde_json::json!({ "hash": phc })).expect("writing JSON to a Vec cannot fail");
    Ok(Reply::json(200))
}

/// The most a debug stall may hold its shard.
const STALL_MS_MAX: i64 = 10_000;

/// Debug builds only (the route table says so): holds this shard's thread for `?ms=`
/// milliseconds, the one thing a shard must never do, so tests can watch the watchdog
/// notice.
pub fn stall(request: &Request<'_>, body: &mut Vec<u8>) -> Answer {
    let ms = super::extract::query_number(request, "ms")?.unwrap_or(1000);
    if !(1..=STALL_MS_MAX).contains(&ms) {
        return Err(ApiError::new(
            400,
            "invalid_query",
            format!("ms must be 1 to {STALL_MS_MAX}"),
        ));
    }
    std::thread::sleep(std::time::Duration::from_millis(ms as u64)); // blocking-ok: a debug-build fault injection
    serde_json::to_writer(&mut *body, &serde_json::json!({ "stalled_ms": ms }))
        .expect("writing JSON to a Vec cannot fail");
    Ok(Reply::json(200))
}
