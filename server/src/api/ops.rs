//! Ops endpoints: liveness, readiness and Prometheus metrics.

use super::Answer;
use crate::api::state::Shard;
use crate::http::{ApiError, Reply, response};
use crate::metrics::{self, Globals};
use crate::store::typed_row::typed_row;
use crate::store::{Sql, Stmt};
use std::sync::atomic::Ordering::Relaxed;

pub fn openapi(body: &mut Vec<u8>) -> Answer {
    body.extend_from_slice(super::OPENAPI_JSON.as_bytes());
    Ok(Reply::json(200))
}

pub fn healthz(body: &mut Vec<u8>) -> Answer {
    body.extend_from_slice(br#"{"status":"ok"}"#);
    Ok(Reply::json(200))
}

typed_row! {
    /// What `Ping` returns.
    struct Pong {
        one: i32,
    }
}

/// Ready when this shard answers `SELECT 1` and every other shard has a live connection.
/// Redis is reported but does not gate readiness: the cache falls back to the database.
pub async fn readyz(shard: &Shard, sql: &Sql<'_>, body: &mut Vec<u8>) -> Answer {
    let local = sql
        .query(Stmt::Ping, &[])
        .await
        .is_ok_and(|rows| rows.first().is_some_and(|row| Pong::from_row(row).one == 1));
    // ECHO of a token unique on this shard: a reply paired with the wrong command fails.
    let token = shard.probe_seq.get();
    shard.probe_seq.set(token + 1);
    let token = format!("percore-{}-{token}", shard.id);
    let echoed = shard.store.redis.query(redis::cmd("ECHO").arg(&token)).await;
    let redis = matches!(echoed, Ok(redis::Value::BulkString(ref bytes)) if bytes == token.as_bytes());
    let down: Vec<usize> = shard
        .shared
        .metrics
        .iter()
        .enumerate()
        .filter(|(id, m)| {
            if *id == shard.id {
                !local
            } else {
                m.db_connections_up.load(Relaxed) == 0
            }
        })
        .map(|(id, _)| id)
        .collect();
    if !down.is_empty() {
        return Err(ApiError::unavailable(
            "not_ready",
            format!("shards {down:?} cannot reach Postgres"),
            1,
        ));
    }
    // Shedding load over the memory bound: a balancer should send traffic elsewhere.
    if shard.shared.memory_pressure.load(Relaxed) {
        return Err(ApiError::unavailable("not_ready", "over server.rss_bytes_max", 1));
    }
    serde_json::to_writer(
        &mut *body,
        &serde_json::json!({
            "status": "ready",
            "shards": shard.shared.metrics.len(),
            "redis": redis,
        }),
    )
    .expect("writing JSON to a Vec cannot fail");
    Ok(Reply::json(200))
}

pub fn metrics(shard: &Shard, body: &mut Vec<u8>) -> Answer {
    let workers = &shard.shared.workers;
    let live = &shard.shared.live;
    let (_, in_force, fingerprint) = live.current();
    let database = &shard.config().database;
    let globals = Globals {
        worker_queue_depth: workers.queue_depth() as u64,
        worker_queue_capacity: workers.capacity() as u64,
        worker_rejected: workers.stats().rejected.load(Relaxed),
        worker_shed: workers.stats().shed.load(Relaxed),
        worker_threads_busy: workers.stats().busy.load(Relaxed),
        worker_completed: workers.stats().completed.load(Relaxed),
        db_connections_per_shard: (database.connections_per_shard + database.write_connections_per_shard) as u64,
        db_pipeline_slots_per_shard: ((database.connections_per_shard + database.write_connections_per_shard)
            * database.pipeline_depth_max) as u64,
        replica_lag_max_ms: in_force.database.max_replica_lag_ms,
        resident_bytes: shard.shared.resident_bytes.load(Relaxed),
        rss_bytes_max: shard.config().server.rss_bytes_max,
        memory_pressure: shard.shared.memory_pressure.load(Relaxed),
        replicas: database.replicas.len() as u64,
    };
    let shards: Vec<_> = shard.shared.metrics.iter().collect();
    let mut text = String::with_capacity(16 * 1024);
    metrics::render(&shards, &globals, &mut text);
    metrics::render_jobs(&shard.shared.jobs, &mut text);
    let config = metrics::ConfigState {
        reloads_applied: live.reloads_applied.load(Relaxed),
        reloads_refused: live.reloads_refused.load(Relaxed),
        restart_pending: live.restart_pending.load(Relaxed),
        fingerprint: &fingerprint,
        loaded_at_s: live.loaded_at_s.load(Relaxed),
    };
    metrics::render_config(&config, &mut text);
    body.extend_from_slice(text.as_bytes());
    Ok(Reply::new(200, response::PROMETHEUS_TEXT))
}
