//! Handlers: extract, call the domain, answer. They never name the runtime, and write
//! their response body into the buffer they are given so that answering allocates nothing.

mod bench;
mod ops;

use crate::http::{ApiError, Reply, Request};
use crate::router::{self, Endpoint, Resolved};
use crate::shard::Shard;

pub type Answer = Result<Reply, ApiError>;

/// Routes one request and runs its handler. Returns the endpoint for metrics.
pub async fn handle(shard: &Shard, request: &Request<'_>, body: &mut Vec<u8>) -> (Endpoint, Answer) {
    let endpoint = match router::resolve(request.method, request.path, shard.config().bench.routes) {
        Resolved::Found(endpoint) => endpoint,
        Resolved::MethodNotAllowed(allow) => {
            let error = ApiError::new(
                405,
                "method_not_allowed",
                format!("{} is not allowed here", request.method.as_str()),
            );
            let mut reply = crate::http::error::error_reply(&error, body);
            reply.headers.push(("Allow", allow));
            return (Endpoint::MethodNotAllowed, Ok(reply));
        }
        Resolved::NotFound => {
            return (
                Endpoint::NotFound,
                Err(ApiError::new(404, "not_found", "no such route")),
            );
        }
    };
    let answer = match endpoint {
        Endpoint::Healthz => ops::healthz(body),
        Endpoint::Readyz => ops::readyz(shard, body).await,
        Endpoint::Metrics => ops::metrics(shard, body),
        Endpoint::Plaintext => bench::plaintext(body),
        Endpoint::Json => bench::json(body),
        Endpoint::BenchHash => bench::hash(shard, request, body).await,
        Endpoint::DebugPanic => panic!("GET /bench/panic panics on purpose"),
        Endpoint::NotFound | Endpoint::MethodNotAllowed | Endpoint::Malformed => {
            unreachable!("pseudo-endpoints are never routed to")
        }
    };
    (endpoint, answer)
}

/// 503 for a full worker queue, with the configured Retry-After.
pub fn workers_busy(shard: &Shard) -> ApiError {
    ApiError::unavailable(
        "workers_busy",
        "the worker queue is full; retry later",
        shard.config().workers.retry_after_s,
    )
}
