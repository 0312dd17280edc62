//! A benchmark route, served only with `[bench] routes = true`: a password hash on the
//! worker pool, for measuring heavy-work capacity. The TechEmpower routes are in
//! `techempower`.

use super::{Answer, workers_busy};
use crate::http::{ApiError, Reply, Request};
use crate::shard::Shard;
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
    let phc = pending.await.map_err(|_| ApiError::internal())?;
    serde_json::to_writer(&mut *body, &serde_json::json!({ "hash": phc })).expect("writing JSON to a Vec cannot fail");
    Ok(Reply::json(200))
}
