//! Handlers: extract, call the domain, answer. They never name the runtime, and write
//! their response body into the buffer they are given.
//!
//! `dispatch` then `handle` are the core API's one hop: they route, apply the auth middleware to every
//! route the table marks `Access::User`, hands the handler a statement-counting `Sql`, and
//! records the statements each route ran.

pub mod auth;
mod bench;
pub mod bodies;
mod events;
pub mod extract;
pub mod identity;
mod jobs;
mod limits;
mod ops;
mod public_users;
mod techempower;
mod users;
mod webhooks;

use crate::engine::shard::Shard;
use crate::http::{ApiError, Reply, Request};
use crate::router::{self, Access, Endpoint, Resolved};
use crate::sql::Sql;

pub type Answer = Result<Reply, ApiError>;

/// What a domain handler works with: its shard, its request, and the statement-counting
/// database handle. Handlers of `Access::User` routes also get the caller's `Principal`.
pub struct Ctx<'a> {
    pub shard: &'a Shard,
    pub request: &'a Request<'a>,
    pub sql: Sql<'a>,
    /// The client's address: the peer, or `X-Forwarded-For` from a trusted proxy.
    pub client_ip: std::net::IpAddr,
    /// Who the request counts as (`rate_limit::client_key`): its session, else its address.
    pub client: crate::throttle::Key,
}

/// The OpenAPI 3.1 description of everything served; a test checks it against the routes.
pub const OPENAPI_JSON: &str = include_str!("../../openapi.json");

/// A routed request whose handler must be awaited.
pub struct Routed<'r> {
    endpoint: Endpoint,
    access: Access,
    param: Option<&'r str>,
}

/// What routing decided without waiting: an answer already (a routing error, or one of
/// the handlers that never wait), or a handler to run with `handle`.
pub enum Dispatch<'r> {
    Answered(Endpoint, Answer),
    Pending(Routed<'r>),
}

/// Routes one request. Handlers that never wait and check nothing per client (probes,
/// the benchmark's plaintext and json) answer here, with no future built for them.
pub fn dispatch<'r>(shard: &Shard, request: &Request<'r>, body: &mut Vec<u8>) -> Dispatch<'r> {
    let (endpoint, access, param) = match router::resolve(request.method, request.path, shard.config().bench.routes) {
        Resolved::Found {
            endpoint,
            access,
            param,
        } => (endpoint, access, param),
        Resolved::MethodNotAllowed(allow) => {
            let error = ApiError::new(
                405,
                "method_not_allowed",
                match request.method {
                    // Any other token (methods are case-sensitive): not echoed back.
                    crate::http::Method::Other => "this method is not allowed here".to_string(),
                    known => format!("{} is not allowed here", known.as_str()),
                },
            );
            let mut reply = crate::http::error::error_reply(&error, body);
            reply.headers.push(("Allow", allow));
            return Dispatch::Answered(Endpoint::MethodNotAllowed, Ok(reply));
        }
        Resolved::NotFound => {
            let error = ApiError::new(404, "not_found", "no such route");
            return Dispatch::Answered(Endpoint::NotFound, Err(error));
        }
    };
    // Over server.rss_bytes_max: shed the work that allocates, keep what operators watch.
    if shard.shared.memory_pressure.load(std::sync::atomic::Ordering::Relaxed)
        && !matches!(endpoint, Endpoint::Healthz | Endpoint::Readyz | Endpoint::Metrics)
    {
        let error = ApiError::unavailable("memory_pressure", "the server is over its memory bound; retry later", 1);
        return Dispatch::Answered(endpoint, Err(error));
    }
    let answer = match endpoint {
        Endpoint::Healthz => ops::healthz(body),
        Endpoint::Metrics => ops::metrics(shard, body),
        Endpoint::OpenApi => {
            body.extend_from_slice(OPENAPI_JSON.as_bytes());
            Ok(Reply::json(200))
        }
        Endpoint::Plaintext => techempower::plaintext(body),
        Endpoint::Json => techempower::json(body),
        _ => {
            return Dispatch::Pending(Routed {
                endpoint,
                access,
                param,
            });
        }
    };
    // Answered without the rate limit and the session check that `handle` applies.
    debug_assert!(
        access == Access::Public || access == Access::Bench,
        "{endpoint:?} needs a session"
    );
    debug_assert!(
        crate::rate_limit::Class::of(endpoint).is_none(),
        "{endpoint:?} has a rate class"
    );
    Dispatch::Answered(endpoint, answer)
}

/// Runs the handler of a routed request. Returns the endpoint for metrics.
pub async fn handle(
    shard: &Shard,
    request: &Request<'_>,
    routed: Routed<'_>,
    body: &mut Vec<u8>,
) -> (Endpoint, Answer) {
    let Routed {
        endpoint,
        access,
        param,
    } = routed;
    // The auth middleware: once, here, for every route that needs it.
    let principal = match access {
        Access::User => match auth::authenticate(request) {
            Ok(principal) => Some(principal),
            Err(error) => return (endpoint, Err(error)),
        },
        Access::Public | Access::Bench | Access::DebugBuild => None,
    };
    let client_ip = shard.limiter.client_ip(request);
    let client = crate::rate_limit::client_key(principal.as_ref(), client_ip);
    // Only replica routing reads it (a client's own writes): no hashing without replicas.
    let client_id = if shard.replicas.is_empty() {
        0
    } else {
        crate::replicas::client_id(&client)
    };
    let ctx = Ctx {
        shard,
        request,
        sql: match access {
            Access::Bench | Access::DebugBuild => Sql::unbudgeted(shard, client_id),
            Access::Public | Access::User => Sql::new(shard, client_id),
        },
        client_ip,
        client,
    };
    if let Some(class) = crate::rate_limit::Class::of(endpoint)
        && let Err(refused) = limits::admit(&ctx, class).await
    {
        return (endpoint, Ok(limits::too_many(&refused, body)));
    }
    let answer = match (endpoint, &principal) {
        (Endpoint::Readyz, _) => ops::readyz(shard, &ctx.sql, body).await,
        (Endpoint::Register, _) => identity::register(&ctx, body).await,
        (Endpoint::Login, _) => identity::login(&ctx, body).await,
        (Endpoint::Logout, Some(who)) => identity::logout(&ctx, who).await,
        (Endpoint::Me, Some(who)) => users::me(&ctx, who, body).await,
        (Endpoint::PatchProfile, Some(who)) => users::patch_profile(&ctx, who, body).await,
        (Endpoint::PutPrefs, Some(who)) => users::put_prefs(&ctx, who, body).await,
        (Endpoint::UserById, Some(who)) => public_users::user_by_id(&ctx, who, param.unwrap_or_default(), body).await,
        (Endpoint::UsersByIds, Some(who)) => public_users::users_by_ids(&ctx, who, body).await,
        (Endpoint::PostEvent, Some(who)) => events::post_event(&ctx, who, body).await,
        (Endpoint::MyEvents, Some(who)) => events::my_events(&ctx, who, body).await,
        (Endpoint::PostJob, Some(who)) => jobs::post_job(&ctx, who, body).await,
        (Endpoint::ListJobs, Some(who)) => jobs::list_jobs(&ctx, who, body).await,
        (Endpoint::GetJob, Some(who)) => jobs::get_job(&ctx, who, param.unwrap_or_default(), body).await,
        (Endpoint::JobResult, Some(who)) => jobs::job_result(&ctx, who, param.unwrap_or_default(), body).await,
        (Endpoint::PostWebhook, Some(who)) => webhooks::post_webhook(&ctx, who, body).await,
        (Endpoint::ListWebhooks, Some(who)) => webhooks::list_webhooks(&ctx, who, body).await,
        (Endpoint::DeleteWebhook, Some(who)) => webhooks::delete_webhook(&ctx, who, param.unwrap_or_default()).await,
        (Endpoint::WebhookDeliveries, Some(who)) => {
            webhooks::deliveries(&ctx, who, param.unwrap_or_default(), body).await
        }
        (Endpoint::Db, _) => techempower::db(&ctx, body).await,
        (Endpoint::Queries, _) => techempower::queries(&ctx, body).await,
        (Endpoint::Fortunes, _) => techempower::fortunes(&ctx, body).await,
        (Endpoint::Updates, _) => techempower::updates(&ctx, body).await,
        (Endpoint::CachedQueries, _) => techempower::cached_queries(&ctx, body).await,
        (Endpoint::BenchHash, _) => bench::hash(shard, request, body).await,
        (Endpoint::DebugPanic, _) => panic!("GET /bench/panic panics on purpose"),
        (Endpoint::DebugStall, _) => bench::stall(request, body),
        (
            Endpoint::Logout
            | Endpoint::Me
            | Endpoint::PatchProfile
            | Endpoint::PutPrefs
            | Endpoint::UserById
            | Endpoint::UsersByIds
            | Endpoint::PostEvent
            | Endpoint::MyEvents
            | Endpoint::PostJob
            | Endpoint::ListJobs
            | Endpoint::GetJob
            | Endpoint::JobResult
            | Endpoint::PostWebhook
            | Endpoint::ListWebhooks
            | Endpoint::DeleteWebhook
            | Endpoint::WebhookDeliveries,
            None,
        ) => unreachable!("the route table marks {endpoint:?} Access::User"),
        (Endpoint::NotFound | Endpoint::MethodNotAllowed | Endpoint::Malformed, _) => {
            unreachable!("pseudo-endpoints are never routed to")
        }
        (Endpoint::Healthz | Endpoint::Metrics | Endpoint::OpenApi | Endpoint::Plaintext | Endpoint::Json, _) => {
            unreachable!("dispatch answers {endpoint:?} itself")
        }
    };
    let answer = match (answer, &principal) {
        (Err(error), Some(who)) => Err(unless_unauthenticated(&ctx, who, error).await),
        (answer, _) => answer,
    };
    shard
        .metrics
        .record_statements(endpoint, ctx.sql.reads(), ctx.sql.writes());
    (endpoint, answer)
}

/// A handler refused the input before any statement checked the caller's session: a
/// caller whose token is not live gets 401, as everywhere else, and learns nothing about
/// what the route accepts. Only bad requests pay for this check.
async fn unless_unauthenticated(ctx: &Ctx<'_>, who: &auth::Principal, error: ApiError) -> ApiError {
    let checked = ctx.sql.reads() + ctx.sql.writes() > 0;
    if checked || !(400..500).contains(&error.status) || error.status == 401 || auth::cached_user(ctx, who).is_some() {
        return error;
    }
    match ctx.sql.query(crate::sql::Stmt::SessionLive, &[&who.token_hash()]).await {
        Ok(rows) if rows.is_empty() => auth::invalid_token(),
        Ok(_) => error,
        Err(unavailable) => unavailable,
    }
}

/// The job queue `kind` runs on.
pub fn job_queue<'a>(shard: &'a Shard, kind: &str) -> &'a percore_workers::jobs::QueueHandle {
    shard
        .shared
        .jobs
        .queue_of_kind(kind)
        .expect("tuning validation maps every kind to a queue")
}

/// 503 for a full worker queue, with the configured Retry-After.
pub fn workers_busy(shard: &Shard) -> ApiError {
    ApiError::unavailable(
        "workers_busy",
        "the worker pool is busy; retry later",
        shard.config().workers.retry_after_s,
    )
}

/// A worker-pool task that gave no answer: shed after waiting past `workers.wait_ms_max`
/// (503, retry), or lost to a panic (500).
pub fn task_failed(shard: &Shard, failed: percore_workers::TaskFailed) -> ApiError {
    match failed {
        percore_workers::TaskFailed::Shed => workers_busy(shard),
        percore_workers::TaskFailed::Lost => ApiError::internal(),
    }
}

/// Serializes a response body; our types always serialize.
pub fn write_json(body: &mut Vec<u8>, value: &impl serde::Serialize) {
    serde_json::to_writer(body, value).expect("response types serialize to a Vec without fail");
}
