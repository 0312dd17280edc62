//! What each kind of job does. Runs on a job worker thread: blocking is allowed here and
//! nowhere near a shard.
//!
//! At-least-once, made safe: a job may run again after a crash, so every side effect
//! carries the job id for the receiver to deduplicate by (the e-mail's Message-ID, the
//! webhook's `Percore-Delivery` header), and artifacts are written under a name derived
//! from the job id, replaced atomically.

pub mod address;
mod artifact;
mod email;
mod export;
mod pdf;
mod webhook;

use crate::jobs::Settings;
use crate::jobs::store::Claimed;
use r2d2_postgres::PostgresConnectionManager;
use std::sync::Arc;

pub type DbPool = r2d2::Pool<PostgresConnectionManager<postgres::NoTls>>;

/// What a job's attempt failed with.
#[derive(Debug)]
pub enum JobError {
    /// Worth another attempt (a timeout, a 500, a refused connection).
    Transient(String),
    /// No attempt can succeed (bad params, the user is gone): the job goes `dead` now.
    Permanent(String),
}

impl JobError {
    pub fn message(&self) -> &str {
        match self {
            JobError::Transient(m) | JobError::Permanent(m) => m,
        }
    }
}

impl From<postgres::Error> for JobError {
    fn from(error: postgres::Error) -> Self {
        JobError::Transient(format!("database: {error}"))
    }
}

impl From<r2d2::Error> for JobError {
    fn from(error: r2d2::Error) -> Self {
        JobError::Transient(format!("database pool: {error}"))
    }
}

/// What every kind may use: the database, the settings, the SMTP and HTTP clients.
pub struct Context {
    pub db: DbPool,
    pub settings: Arc<Settings>,
    pub mailer: email::Mailer,
    pub http: ureq::Agent,
    /// `webhooks.timeout_ms`, live: a reload changes it for deliveries that start after.
    pub webhook_timeout_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl Context {
    pub fn new(db: DbPool, settings: Arc<Settings>) -> Context {
        Context {
            mailer: email::Mailer::new(&settings.email),
            http: webhook::agent(&settings.webhooks),
            webhook_timeout_ms: Arc::new(std::sync::atomic::AtomicU64::new(settings.webhooks.timeout_ms)),
            db,
            settings,
        }
    }
}

/// Runs one attempt of `job`; the result is stored on the job row.
pub fn run(ctx: &Context, job: &Claimed) -> Result<serde_json::Value, JobError> {
    // Fault injection for the tests, in debug builds only: the first attempt of a job of
    // this kind panics mid-job, as a bug would.
    #[cfg(debug_assertions)]
    if job.attempt == 1 && std::env::var("PERCORE_TEST_PANIC_KIND").is_ok_and(|kind| kind == job.kind) {
        panic!("job {} panics on purpose (PERCORE_TEST_PANIC_KIND)", job.id);
    }
    match job.kind.as_str() {
        "email" => email::send(ctx, job),
        "pdf" => pdf::render(ctx, job),
        "export" => export::events_csv(ctx, job),
        "webhook" => webhook::deliver(ctx, job),
        other => Err(JobError::Permanent(format!("unknown job kind {other:?}"))),
    }
}

/// The kinds a client may enqueue with `POST /v1/jobs`; webhook deliveries come from events.
pub const ENQUEUEABLE: [&str; 3] = ["email", "pdf", "export"];

/// Checks `params` (JSON text) against `kind`'s shape and limits, and returns them in
/// canonical form (what is stored and hashed for idempotency), or why not.
pub fn canonical_params(kind: &str, params: &str) -> Result<String, String> {
    fn parse<T: serde::de::DeserializeOwned + serde::Serialize>(params: &str) -> Result<(T, String), String> {
        let value: T = serde_json::from_str(params).map_err(|e| e.to_string())?;
        let canonical = serde_json::to_string(&value).map_err(|e| e.to_string())?;
        Ok((value, canonical))
    }
    match kind {
        "email" => {
            let (email, canonical) = parse::<email::EmailParams>(params)?;
            email::check(&email)?;
            Ok(canonical)
        }
        "pdf" => parse::<pdf::PdfParams>(params).and_then(|(pdf, canonical)| {
            (pdf.report == "account")
                .then_some(canonical)
                .ok_or_else(|| "report must be \"account\"".to_string())
        }),
        "export" => parse::<export::ExportParams>(params).and_then(|(export, canonical)| {
            (export.format == "csv")
                .then_some(canonical)
                .ok_or_else(|| "format must be \"csv\"".to_string())
        }),
        other => Err(format!("kind {other:?} cannot be enqueued; kinds are {ENQUEUEABLE:?}")),
    }
}

/// Parses a job's params into the kind's shape; a mismatch is permanent.
fn params<T: serde::de::DeserializeOwned>(job: &Claimed) -> Result<T, JobError> {
    serde_json::from_value(job.params.clone()).map_err(|e| JobError::Permanent(format!("bad params: {e}")))
}
