//! Every statement the job workers run, on blocking connections from the r2d2 pool.
//!
//! Claims are `FOR UPDATE SKIP LOCKED`, so workers of any number of processes never wait
//! on each other and never take the same job. Every state change after the claim is fenced
//! by the lease holder (`locked_by`) and the attempt number: a worker that lost its lease
//! (its process froze past `lease_ms`) cannot overwrite what the next holder did.

use postgres::GenericClient;
use std::time::Duration;

/// A job claimed by one worker for one attempt.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    pub user_id: i64,
    pub kind: String,
    pub params: serde_json::Value,
    /// 1 for the first attempt.
    pub attempt: i32,
    pub max_attempts: i32,
}

fn secs(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

/// Claims the oldest runnable job of `queue` for `worker`, under a lease of `lease`.
pub fn claim(
    db: &mut impl GenericClient,
    queue: &str,
    worker: &str,
    lease: Duration,
) -> Result<Option<Claimed>, postgres::Error> {
    let row = db.query_opt(
        "UPDATE jobs j SET status = 'running', attempts = j.attempts + 1, locked_by = $2,
                locked_until = now() + make_interval(secs => $3::float8), updated_at = now()
         FROM (SELECT id FROM jobs
               WHERE queue = $1 AND status IN ('queued', 'failed') AND run_after <= now()
               ORDER BY run_after LIMIT 1
               FOR UPDATE SKIP LOCKED) c
         WHERE j.id = c.id
         RETURNING j.id, j.user_id, j.kind, j.params, j.attempts, j.max_attempts",
        &[&queue, &worker, &secs(lease)],
    )?;
    Ok(row.map(|row| Claimed {
        id: row.get(0),
        user_id: row.get(1),
        kind: row.get(2),
        params: row.get(3),
        attempt: row.get(4),
        max_attempts: row.get(5),
    }))
}

/// Jobs whose lease ended without a heartbeat (their worker died or froze) go back to the
/// queue, or to `dead` when that was their last attempt. Returns the queues that got work.
pub fn reap_expired(db: &mut impl GenericClient) -> Result<Vec<String>, postgres::Error> {
    let rows = db.query(
        "UPDATE jobs SET
            status = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'queued' END,
            error = 'the worker holding this job stopped (lease expired)',
            locked_by = NULL, locked_until = NULL, run_after = now(), updated_at = now()
         WHERE status = 'running' AND locked_until < now()
         RETURNING queue, status",
        &[],
    )?;
    let mut queues: Vec<String> = rows
        .iter()
        .filter(|row| row.get::<_, &str>(1) == "queued")
        .map(|row| row.get(0))
        .collect();
    queues.sort();
    queues.dedup();
    Ok(queues)
}

/// Marks the attempt done with `result`. False: the lease was lost meanwhile.
pub fn complete(
    db: &mut impl GenericClient,
    job: &Claimed,
    worker: &str,
    result: &serde_json::Value,
) -> Result<bool, postgres::Error> {
    let updated = db.execute(
        "UPDATE jobs SET status = 'done', result = $4, error = NULL, locked_by = NULL,
                locked_until = NULL, updated_at = now()
         WHERE id = $1 AND locked_by = $2 AND attempts = $3 AND status = 'running'",
        &[&job.id, &worker, &job.attempt, result],
    )?;
    Ok(updated == 1)
}

/// Records a failed attempt: retried after `retry_in`, or `dead` when it is `None`.
/// False: the lease was lost meanwhile.
pub fn fail(
    db: &mut impl GenericClient,
    job: &Claimed,
    worker: &str,
    error: &str,
    retry_in: Option<Duration>,
) -> Result<bool, postgres::Error> {
    let updated = db.execute(
        "UPDATE jobs SET status = CASE WHEN $5::float8 IS NULL THEN 'dead' ELSE 'failed' END,
                run_after = now() + make_interval(secs => coalesce($5::float8, 0)),
                error = $4, locked_by = NULL, locked_until = NULL, updated_at = now()
         WHERE id = $1 AND locked_by = $2 AND attempts = $3 AND status = 'running'",
        &[&job.id, &worker, &job.attempt, &error, &retry_in.map(secs)],
    )?;
    Ok(updated == 1)
}

/// Extends the leases of the jobs in hand: (job id, lease holder) pairs.
pub fn heartbeat(db: &mut impl GenericClient, held: &[(i64, String)], lease: Duration) -> Result<u64, postgres::Error> {
    let (ids, workers): (Vec<i64>, Vec<String>) = held.iter().cloned().unzip();
    db.execute(
        "UPDATE jobs j SET locked_until = now() + make_interval(secs => $3::float8)
         FROM unnest($1::int8[], $2::text[]) AS h(id, worker)
         WHERE j.id = h.id AND j.locked_by = h.worker AND j.status = 'running'",
        &[&ids, &workers, &secs(lease)],
    )
}

/// Gives the jobs in hand back to their queues at once (shutdown): the interrupted
/// attempt does not count.
pub fn release(db: &mut impl GenericClient, held: &[(i64, String)]) -> Result<u64, postgres::Error> {
    let (ids, workers): (Vec<i64>, Vec<String>) = held.iter().cloned().unzip();
    db.execute(
        "UPDATE jobs j SET status = 'queued', attempts = greatest(j.attempts - 1, 0),
                locked_by = NULL, locked_until = NULL, run_after = now(), updated_at = now()
         FROM unnest($1::int8[], $2::text[]) AS h(id, worker)
         WHERE j.id = h.id AND j.locked_by = h.worker AND j.status = 'running'",
        &[&ids, &workers],
    )
}

/// One queue as sampled: jobs waiting (queued or awaiting a retry), how many of them may
/// run now, and how long the oldest runnable one has waited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sample {
    pub queue: String,
    pub waiting: u64,
    pub runnable: u64,
    pub oldest_age_ms: u64,
}

pub fn sample(db: &mut impl GenericClient) -> Result<Vec<Sample>, postgres::Error> {
    let rows = db.query(
        "SELECT queue, count(*), count(*) FILTER (WHERE run_after <= now()),
                coalesce(max(extract(epoch FROM now() - run_after) * 1000)
                         FILTER (WHERE run_after <= now()), 0)::float8
         FROM jobs WHERE status IN ('queued', 'failed') GROUP BY queue",
        &[],
    )?;
    Ok(rows
        .iter()
        .map(|row| Sample {
            queue: row.get(0),
            waiting: row.get::<_, i64>(1).max(0) as u64,
            runnable: row.get::<_, i64>(2).max(0) as u64,
            oldest_age_ms: row.get::<_, f64>(3).max(0.0) as u64,
        })
        .collect())
}

/// Puts a dead (or failed) job back in its queue with fresh attempts: `percore jobs retry`.
/// Returns the status it had, or `None` when no such job exists.
pub fn retry(db: &mut impl GenericClient, id: i64) -> Result<Option<(String, String)>, postgres::Error> {
    let row = db.query_opt(
        "WITH old AS (SELECT id, status, queue FROM jobs WHERE id = $1 FOR UPDATE)
         UPDATE jobs j SET status = CASE WHEN old.status IN ('dead', 'failed') THEN 'queued' ELSE j.status END,
                attempts = CASE WHEN old.status IN ('dead', 'failed') THEN 0 ELSE j.attempts END,
                run_after = CASE WHEN old.status IN ('dead', 'failed') THEN now() ELSE j.run_after END,
                updated_at = now()
         FROM old WHERE j.id = old.id
         RETURNING old.status, old.queue",
        &[&id],
    )?;
    Ok(row.map(|row| (row.get(0), row.get(1))))
}
