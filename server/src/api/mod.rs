//! The API: the route table (`routes`), routing (`router`), and thin handlers (extract,
//! call the domain, answer) that never name the runtime and write their response body into
//! the buffer they are given.
//!
//! `dispatch` then `handle` are the core API's one hop: they find the row, apply the auth
//! middleware to every `Access::User` row, the rate limit of the row's class, hand the
//! handler a statement-counting `Sql`, and record the statements each route ran.
//!
//! It may import `config`, `http`, `limits`, `store` and `metrics`; never the engine,
//! which builds its state (`state`) and calls `dispatch` and `handle`.

pub mod auth;
mod bench;
pub mod bodies;
mod docs;
mod errors;
mod events;
pub mod extract;
pub mod identity;
mod jobs;
mod ops;
mod public_users;
pub mod router;
pub mod routes;
pub mod session;
pub mod state;
mod techempower;
mod users;
mod webhooks;

use crate::api::state::Shard;
use crate::http::{ApiError, Reply, Request};
use crate::limits::{admission, rate_limit};
use crate::store::Sql;
use router::Resolved;
use routes::{Access, Handler, Label, Route, Waiting};

pub type Answer = Result<Reply, ApiError>;

/// What a domain handler works with: its shard, its request, and the statement-counting
/// database handle. Handlers of `Access::User` routes also get the caller's `Principal`.
pub struct Ctx<'a> {
    pub shard: &'a Shard,
    pub request: &'a Request<'a>,
    /// The `{…}` segment of the route's path; empty for routes without one.
    pub param: &'a str,
    pub sql: Sql<'a>,
    /// The client's address: the peer, or `X-Forwarded-For` from a trusted proxy.
    pub client_ip: std::net::IpAddr,
    /// Who the request counts as (`rate_limit::client_key`): its session, else its address.
    pub client: crate::limits::throttle::Key,
}

/// The OpenAPI 3.1 description of everything served; a test checks it against the routes.
pub const OPENAPI_JSON: &str = include_str!("../../openapi.json");

/// A routed request whose handler must be awaited.
pub struct Routed<'r> {
    label: Label,
    route: &'static Route,
    handler: Waiting,
    param: Option<&'r str>,
}

/// What routing decided without waiting: an answer already (a routing error, or one of
/// the handlers that never wait), or a handler to run with `handle`.
pub enum Dispatch<'r> {
    Answered(Label, Answer),
    Pending(Routed<'r>),
}

/// Routes one request. `Handler::Now` rows answer here, with no future built for them.
pub fn dispatch<'r>(shard: &Shard, request: &Request<'r>, body: &mut Vec<u8>) -> Dispatch<'r> {
    let (label, route, param) = match router::resolve(request.method, request.path, shard.config().bench.routes) {
        Resolved::Found { label, route, param } => (label, route, param),
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
            return Dispatch::Answered(Label::METHOD_NOT_ALLOWED, Ok(reply));
        }
        Resolved::NotFound => {
            let error = ApiError::new(404, "not_found", "no such route");
            return Dispatch::Answered(Label::NOT_FOUND, Err(error));
        }
    };
    // Over server.rss_bytes_max: shed the work that allocates, keep what operators watch.
    if route.access != Access::Operator && shard.shared.memory_pressure.load(std::sync::atomic::Ordering::Relaxed) {
        let error = ApiError::unavailable("memory_pressure", "the server is over its memory bound; retry later", 1);
        return Dispatch::Answered(label, Err(error));
    }
    match route.handler {
        Handler::Now(handler) => Dispatch::Answered(label, handler.call(shard, body)),
        Handler::Waits(handler) => Dispatch::Pending(Routed {
            label,
            route,
            handler,
            param,
        }),
    }
}

/// Who is calling a waiting handler: anyone, or the user the auth middleware found.
enum Caller {
    Anyone(routes::PublicHandler),
    User(routes::UserHandler, auth::Principal),
}

/// Runs the handler of a routed request: the auth middleware (once, here, for every
/// `Access::User` row), the rate limit of the row's class, then the handler. Returns the
/// label for metrics.
pub async fn handle(shard: &Shard, request: &Request<'_>, routed: Routed<'_>, body: &mut Vec<u8>) -> (Label, Answer) {
    let Routed {
        label,
        route,
        handler,
        param,
    } = routed;
    let caller = match handler {
        Waiting::Public(handler) => Caller::Anyone(handler),
        Waiting::User(handler) => match auth::authenticate(request) {
            Ok(principal) => Caller::User(handler, principal),
            Err(error) => return (label, Err(error)),
        },
    };
    let principal = match &caller {
        Caller::User(_, principal) => Some(principal),
        Caller::Anyone(_) => None,
    };
    let client_ip = shard.limiter.client_ip(request);
    let client = rate_limit::client_key(principal.map(|who| &who.token_hash), client_ip);
    // Only replica routing reads it (a client's own writes): no hashing without replicas.
    let client_id = if shard.store.replicas.is_empty() {
        0
    } else {
        client.client_id()
    };
    let ctx = Ctx {
        shard,
        request,
        param: param.unwrap_or_default(),
        sql: match route.access {
            Access::Bench | Access::DebugBuild => Sql::unbudgeted(&shard.store, client_id),
            Access::Operator | Access::Public | Access::User => Sql::new(&shard.store, client_id),
        },
        client_ip,
        client,
    };
    if let Some(class) = route.rate
        && let Err(refused) = admission::admit(&shard.limiter, &shard.store.redis, &ctx.client, class).await
    {
        return (label, Ok(admission::too_many(&refused, body)));
    }
    let answer = match &caller {
        Caller::Anyone(handler) => handler.call(&ctx, body).await,
        Caller::User(handler, who) => match handler.call(&ctx, who, body).await {
            Err(error) => Err(unless_unauthenticated(&ctx, who, error).await),
            answer => answer,
        },
    };
    (shard.metrics).record_statements(label.index(), ctx.sql.reads(), ctx.sql.writes());
    (label, answer)
}

/// A handler refused the input before any statement checked the caller's session: a
/// caller whose token is not live gets 401, as everywhere else, and learns nothing about
/// what the route accepts. Only bad requests pay for this check.
async fn unless_unauthenticated(ctx: &Ctx<'_>, who: &auth::Principal, error: ApiError) -> ApiError {
    let checked = ctx.sql.reads() + ctx.sql.writes() > 0;
    if checked || !(400..500).contains(&error.status) || error.status == 401 || auth::cached_user(ctx, who).is_some() {
        return error;
    }
    match ctx
        .sql
        .query(crate::store::Stmt::SessionLive, &[&who.token_hash()])
        .await
    {
        Ok(rows) if rows.is_empty() => auth::invalid_token(),
        Ok(_) => error,
        Err(unavailable) => unavailable.into(),
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
