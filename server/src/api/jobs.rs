//! Jobs: `POST /v1/jobs` answers 202 once the job row has committed (it then survives a
//! crash and runs at least once, on the job workers, never here); `GET` reads status,
//! lists, and serves a finished job's artifact.
//!
//! `Idempotency-Key`: the same key with the same kind and params answers the same 202
//! without a second job; with anything else, 422. The comparison is on a hash of the
//! canonical request, stored on the job.

use super::auth::{self, Principal};
use super::identity::timestamp;
use super::{Answer, Ctx, extract, workers_busy, write_json};
use crate::http::error::FieldError;
use crate::http::{ApiError, Reply};
use crate::store::Stmt;
use crate::store::typed_row::typed_row;
use percore_pg::Row;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use std::time::SystemTime;

pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 255;
const LIST_DEFAULT: i64 = 20;
pub const STATUSES: [&str; 5] = ["queued", "running", "failed", "done", "dead"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewJob<'a> {
    kind: String,
    /// Absent: `{}`. Present, it must be an object (null is refused, not taken as absent).
    #[serde(borrow, default, deserialize_with = "extract::present")]
    params: Option<Option<&'a RawValue>>,
}

#[derive(Serialize)]
struct Accepted<'a> {
    id: i64,
    status: &'a str,
}

#[derive(Serialize)]
struct Job {
    id: i64,
    kind: String,
    queue: String,
    status: String,
    attempts: i32,
    max_attempts: i32,
    error: Option<String>,
    result: Option<Box<RawValue>>,
    /// Where the artifact or result is served, once the job is done.
    result_url: Option<String>,
    run_after: String,
    created_at: String,
    updated_at: String,
}

pub async fn post_job(ctx: &Ctx<'_>, principal: &Principal, body: &mut Vec<u8>) -> Answer {
    let input: NewJob = extract::json(ctx.request)?;
    let params = job_params(ctx, &input)?;
    let key = idempotency_key(ctx)?;
    let request_hash = key.map(|_| {
        let mut hash = Sha256::new();
        hash.update(input.kind.as_bytes());
        hash.update([0]);
        hash.update(params.as_bytes());
        hash.finalize().to_vec()
    });
    let queue = super::job_queue(ctx.shard, &input.kind);
    let Some(admission) = queue.admit() else {
        return Err(ApiError::unavailable(
            "queue_full",
            format!("the {} job queue is full; retry later", queue.name),
            ctx.shard.config().workers.retry_after_s,
        ));
    };
    let max_attempts = queue.max_attempts() as i32;
    let rows = ctx
        .sql
        .query(
            Stmt::JobInsert,
            &[
                &principal.token_hash(),
                &input.kind,
                &queue.name,
                &params,
                &max_attempts,
                &key,
                &request_hash,
            ],
        )
        .await?;
    let row = InsertedJob::from_row(rows.first().ok_or_else(auth::invalid_token)?);
    let (id, status, stored_hash) = match (row.new_id, row.new_status, row.old_id, row.old_status) {
        (Some(id), Some(status), _, _) => {
            admission.committed();
            queue.wake();
            (id, status, None)
        }
        (_, _, Some(id), Some(status)) => (id, status, row.old_request_hash),
        _ => {
            // The key's job committed while our statement ran: its snapshot missed it.
            let again = ctx.sql.query(Stmt::JobByKey, &[&row.user_id, &key]).await?;
            let old = again.first().ok_or_else(|| {
                ApiError::unavailable("idempotency_conflict", "a request with this key is in flight; retry", 1)
            })?;
            let old = JobByKeyRow::from_row(old);
            (old.id, old.status, old.request_hash)
        }
    };
    if stored_hash.is_some() && stored_hash != request_hash {
        return Err(ApiError::new(
            422,
            "idempotency_key_reused",
            "this Idempotency-Key was used for a different request",
        ));
    }
    write_json(body, &Accepted { id, status: &status });
    Ok(Reply::json(202).with_header("Location", format!("/v1/jobs/{id}")))
}

/// The job's kind checked and its params in canonical form (422 or 413 otherwise).
fn job_params(ctx: &Ctx<'_>, input: &NewJob) -> Result<String, ApiError> {
    let settings = &ctx.shard.shared.jobs.settings().jobs;
    let params_text = match input.params {
        None => "{}",
        Some(Some(params)) if params.get().starts_with('{') => params.get(),
        Some(_) => {
            return Err(ApiError::invalid_fields(vec![FieldError::new(
                "params",
                "invalid_type",
                "must be a JSON object",
            )]));
        }
    };
    if params_text.len() > settings.params_bytes_max {
        return Err(ApiError::new(
            413,
            "params_too_large",
            format!("params must be at most {} bytes of JSON", settings.params_bytes_max),
        ));
    }
    if !percore_workers::kinds::ENQUEUEABLE.contains(&input.kind.as_str()) {
        let why = if input.kind == "webhook" {
            "webhook deliveries are enqueued by events for your subscriptions".to_string()
        } else {
            format!("must be one of {:?}", percore_workers::kinds::ENQUEUEABLE)
        };
        return Err(ApiError::invalid_fields(vec![FieldError::new("kind", "invalid", why)]));
    }
    percore_workers::kinds::canonical_params(&input.kind, params_text)
        .map_err(|why| ApiError::invalid_fields(vec![FieldError::new("params", "invalid", why)]))
}

/// `Idempotency-Key`: absent, or 1-255 visible ASCII characters (400 otherwise).
fn idempotency_key<'a>(ctx: &Ctx<'a>) -> Result<Option<&'a str>, ApiError> {
    let Some(raw) = ctx.request.header("idempotency-key") else {
        return Ok(None);
    };
    let ok = (1..=IDEMPOTENCY_KEY_BYTES_MAX).contains(&raw.len()) && raw.iter().all(|b| b.is_ascii_graphic());
    match std::str::from_utf8(raw) {
        Ok(key) if ok => Ok(Some(key)),
        _ => Err(ApiError::new(
            400,
            "invalid_idempotency_key",
            format!("Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_BYTES_MAX} visible ASCII characters"),
        )),
    }
}

typed_row! {
    /// What `JobInsert` returns: the session's user, then the new job, or the one a used
    /// key already names.
    struct InsertedJob {
        user_id: i64,
        new_id: Option<i64>,
        new_status: Option<String>,
        old_id: Option<i64>,
        old_status: Option<String>,
        old_request_hash: Option<Vec<u8>>,
    }
}

typed_row! {
    struct JobByKeyRow {
        id: i64,
        status: String,
        request_hash: Option<Vec<u8>>,
    }
}

typed_row! {
    /// A `JobGet` or `JobsList` row: the session's user, then the job's columns, NULL when
    /// there is no job.
    struct JobRow {
        _session_user_id: i64,
        id: Option<i64>,
        kind: Option<String>,
        queue: Option<String>,
        status: Option<String>,
        attempts: Option<i32>,
        max_attempts: Option<i32>,
        error: Option<String>,
        result: Option<String>,
        run_after: Option<SystemTime>,
        created_at: Option<SystemTime>,
        updated_at: Option<SystemTime>,
    }
}

fn job_of(row: Row<'_>) -> Result<Option<Job>, ApiError> {
    let row = JobRow::from_row(row);
    let (Some(id), Some(status), Some(run_after), Some(created_at), Some(updated_at)) =
        (row.id, row.status, row.run_after, row.created_at, row.updated_at)
    else {
        return Ok(None);
    };
    let result = match row.result {
        Some(text) => Some(RawValue::from_string(text).map_err(|_| ApiError::internal())?),
        None => None,
    };
    Ok(Some(Job {
        id,
        kind: row.kind.unwrap_or_default(),
        queue: row.queue.unwrap_or_default(),
        result_url: (status == "done").then(|| format!("/v1/jobs/{id}/result")),
        status,
        attempts: row.attempts.unwrap_or_default(),
        max_attempts: row.max_attempts.unwrap_or_default(),
        error: row.error,
        result,
        run_after: timestamp(run_after),
        created_at: timestamp(created_at),
        updated_at: timestamp(updated_at),
    }))
}

async fn own_job(ctx: &Ctx<'_>, principal: &Principal, param: &str) -> Result<Job, ApiError> {
    let id = extract::id(param, "job")?;
    let rows = ctx.sql.query(Stmt::JobGet, &[&principal.token_hash(), &id]).await?;
    let row = rows.first().ok_or_else(auth::invalid_token)?;
    job_of(row)?.ok_or_else(|| ApiError::new(404, "not_found", "no such job"))
}

pub async fn get_job(ctx: &Ctx<'_>, principal: &Principal, body: &mut Vec<u8>) -> Answer {
    let job = own_job(ctx, principal, ctx.param).await?;
    write_json(body, &job);
    Ok(Reply::json(200))
}

pub async fn list_jobs(ctx: &Ctx<'_>, principal: &Principal, body: &mut Vec<u8>) -> Answer {
    let limit_max = i64::from(ctx.shard.shared.jobs.settings().jobs.list_limit_max);
    let limit = extract::limit(ctx.request, LIST_DEFAULT, limit_max)?;
    let status = ctx.request.query_param("status");
    if let Some(status) = &status
        && !STATUSES.contains(&status.as_ref())
    {
        return Err(ApiError::invalid_fields(vec![FieldError::new(
            "status",
            "invalid",
            format!("must be one of {STATUSES:?}"),
        )]));
    }
    let status = status.as_deref();
    let rows = ctx
        .sql
        .query(Stmt::JobsList, &[&principal.token_hash(), &status, &limit])
        .await?;
    if rows.is_empty() {
        return Err(auth::invalid_token());
    }
    let mut jobs = Vec::with_capacity(rows.len());
    for row in &rows {
        jobs.extend(job_of(row)?);
    }
    // Newest first; SQL promised no order without an ORDER BY on the outer query.
    jobs.sort_by(|a, b| (&b.created_at, b.id).cmp(&(&a.created_at, a.id)));
    #[derive(Serialize)]
    struct List {
        jobs: Vec<Job>,
    }
    write_json(body, &List { jobs });
    Ok(Reply::json(200))
}

/// A finished job's artifact with its own Content-Type (PDF, CSV), read from disk on the
/// worker pool, or its JSON result when it has no artifact (e-mail, webhook).
pub async fn job_result(ctx: &Ctx<'_>, principal: &Principal, body: &mut Vec<u8>) -> Answer {
    let job = own_job(ctx, principal, ctx.param).await?;
    if job.status != "done" {
        return Err(ApiError::new(
            409,
            "job_not_done",
            format!("the job is {}; its result exists once it is done", job.status),
        ));
    }
    let result: serde_json::Value = job
        .result
        .as_ref()
        .and_then(|raw| serde_json::from_str(raw.get()).ok())
        .unwrap_or(serde_json::Value::Null);
    let Some(file) = result.get("artifact").and_then(|a| a.as_str()) else {
        write_json(body, &result);
        return Ok(Reply::json(200));
    };
    let content_type = match result.get("content_type").and_then(|c| c.as_str()) {
        Some("application/pdf") => "application/pdf",
        Some("text/csv; charset=utf-8") => "text/csv; charset=utf-8",
        _ => "application/octet-stream",
    };
    // Artifact names are ours (`job-<id>.<ext>`), never a client's; refuse anything else.
    if file.contains('/') || file.starts_with('.') {
        return Err(ApiError::internal());
    }
    let path = ctx.shard.shared.jobs.settings().jobs.artifacts_dir.join(file);
    let read = move || std::fs::read(path); // blocking-ok: submitted to the worker pool
    let reading = ctx
        .shard
        .shared
        .workers
        .submit(read)
        .map_err(|_| workers_busy(ctx.shard))?;
    match reading.await.map_err(|e| super::task_failed(ctx.shard, e))? {
        Ok(bytes) => body.extend_from_slice(&bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::new(410, "artifact_gone", "the artifact is no longer stored"));
        }
        Err(e) => {
            log::error!("job {}: reading its artifact failed: {e}", job.id);
            return Err(ApiError::internal());
        }
    }
    Ok(Reply::new(200, content_type).with_header("Content-Disposition", format!("attachment; filename=\"{file}\"")))
}
