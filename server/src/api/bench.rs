//! Benchmark routes, served only with `[bench] routes = true`: the TechEmpower plaintext,
//! JSON and cached-queries tests, and a password hash on the worker pool for measuring
//! heavy-work capacity.

use super::{Answer, Ctx, workers_busy};
use crate::cache::{Cached, Key};
use crate::http::{ApiError, Reply, Request, response};
use crate::shard::Shard;
use crate::sql::Stmt;
use percore_workers::password::{self, Argon2Params};

pub fn plaintext(body: &mut Vec<u8>) -> Answer {
    body.extend_from_slice(b"Hello, World!");
    Ok(Reply::new(200, response::TEXT))
}

#[derive(serde::Serialize)]
struct Message {
    message: &'static str,
}

/// Serialized on every request, as the TechEmpower rules ask.
pub fn json(body: &mut Vec<u8>) -> Answer {
    serde_json::to_writer(
        &mut *body,
        &Message {
            message: "Hello, World!",
        },
    )
    .expect("writing JSON to a Vec cannot fail");
    Ok(Reply::json(200))
}

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

/// TechEmpower's `world` table has ids 1 to 10,000.
const WORLD_ROWS: u64 = 10_000;
/// TechEmpower clamps `count` to 1..=500; anything missing or not a number is 1.
const QUERIES_MAX: u64 = 500;

/// TechEmpower cached-queries: `count` random `world` rows through the two-level cache;
/// each miss is its own statement, as the rules ask.
pub async fn cached_queries(ctx: &Ctx<'_>, body: &mut Vec<u8>) -> Answer {
    let count = ctx
        .request
        .query_param("count")
        .and_then(|c| c.parse::<i64>().ok())
        .map_or(1, |c| c.clamp(1, QUERIES_MAX as i64)) as usize;
    body.push(b'[');
    for i in 0..count {
        let id = ctx.shard.random_up_to(WORLD_ROWS) as i32;
        let loaded = ctx
            .shard
            .cache
            .get_or_load(Key::World(id), || async move {
                let rows = ctx.sql.query(Stmt::WorldById, &[&id]).await?;
                Ok(rows.first().map(|row| {
                    let (id, number): (i32, i32) = (row.get(0), row.get(1));
                    Cached::Json(format!("{{\"id\":{id},\"randomNumber\":{number}}}").into_bytes().into())
                }))
            })
            .await?;
        let Some(Cached::Json(json)) = loaded else {
            return Err(ApiError::new(
                404,
                "not_found",
                "the world table lacks a row; run percore-bench seed",
            ));
        };
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&json);
    }
    body.push(b']');
    Ok(Reply::json(200))
}
