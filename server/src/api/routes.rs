//! The route table: one row per endpoint, read like the API. A row says everything about
//! its route: method, path, who may call it, the rate-limit class it counts against, its
//! metrics label and its handler. Routing (`router`), the auth middleware, the rate limit
//! and the metrics all read these rows; adding an endpoint is adding a row (and its
//! handler, statements and OpenAPI entry). HEAD is served wherever GET is.

use super::auth::Principal;
use super::{Answer, Ctx, bench, events, identity, jobs, ops, public_users, techempower, users, webhooks};
use crate::api::state::Shard;
use crate::http::Method::{self, *};
use crate::limits::rate_limit::Class;
use std::future::Future;
use std::pin::Pin;

/// Who may reach a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone; never rate limited, and still served over the memory bound: what operators
    /// and load balancers watch.
    Operator,
    Public,
    /// Needs `Authorization: Bearer <token>`: the auth middleware in `api::handle` checks it
    /// once, before the handler, which gets the caller. Only `Handler::User` rows.
    User,
    /// Only when `[bench] routes = true`.
    Bench,
    /// Only in debug builds (the tests' binary), and only with bench routes on.
    DebugBuild,
}

/// A handler's future; boxed because a table row holds a plain function pointer.
pub type Waits<'a> = Pin<Box<dyn Future<Output = Answer> + 'a>>;

#[derive(Clone, Copy)]
pub enum Handler {
    /// Never waits and checks nothing per client: answered while routing, with no
    /// future built (probes, the benchmark's plaintext and json).
    Now(fn(&Shard, &mut Vec<u8>) -> Answer),
    Waits(Waiting),
}

#[derive(Clone, Copy)]
pub enum Waiting {
    Public(for<'a> fn(&'a Ctx<'a>, &'a mut Vec<u8>) -> Waits<'a>),
    /// Called with the caller the auth middleware authenticated.
    User(for<'a> fn(&'a Ctx<'a>, &'a Principal, &'a mut Vec<u8>) -> Waits<'a>),
}

pub struct Route {
    pub method: Method,
    /// Literal segments, and `{name}` for one path parameter (in `Ctx::param`).
    pub path: &'static str,
    pub access: Access,
    /// The rate-limit class its requests count against; none for operations and benchmarks.
    pub rate: Option<Class>,
    /// Its name in metrics (`route="…"`).
    pub label: &'static str,
    pub handler: Handler,
    /// Where `{name}` starts and where the literal after its `}` starts; both are
    /// `path.len()` when there is no parameter. Found at compile time, because scanning
    /// every pattern for its brace on every request was a fifth of the plaintext profile.
    pub(super) param_open: usize,
    pub(super) param_end: usize,
}

const fn route(
    method: Method,
    path: &'static str,
    access: Access,
    rate: Option<Class>,
    label: &'static str,
    handler: Handler,
) -> Route {
    let needs_caller = matches!(handler, Handler::Waits(Waiting::User(_)));
    assert!(
        needs_caller == matches!(access, Access::User),
        "User rows, and only they, have a handler that takes the caller"
    );
    assert!(
        !matches!(handler, Handler::Now(_)) || rate.is_none(),
        "a handler answered while routing skips the rate limit"
    );
    let bytes = path.as_bytes();
    let mut open = 0;
    while open < bytes.len() && bytes[open] != b'{' {
        open += 1;
    }
    let mut close = open;
    while close < bytes.len() && bytes[close] != b'}' {
        close += 1;
    }
    assert!(
        (open == bytes.len()) == (close == bytes.len()),
        "a route's `{{` needs its `}}`"
    );
    let param_end = if close == bytes.len() { close } else { close + 1 };
    Route {
        method,
        path,
        access,
        rate,
        label,
        handler,
        param_open: open,
        param_end,
    }
}

/// `Handler::Waits(Waiting::Public(..))` for an `async fn(&Ctx, body)`, or for a closure
/// body given its arguments' names.
macro_rules! public {
    ($handler:path) => {
        Handler::Waits(Waiting::Public(|ctx, body| Box::pin($handler(ctx, body))))
    };
    (|$ctx:ident, $body:ident| $call:expr) => {
        Handler::Waits(Waiting::Public(|$ctx, $body| Box::pin($call)))
    };
}

/// `Handler::Waits(Waiting::User(..))` for an `async fn(&Ctx, &Principal, body)`, or for a
/// closure body given its arguments' names.
macro_rules! user {
    ($handler:path) => {
        Handler::Waits(Waiting::User(|ctx, who, body| Box::pin($handler(ctx, who, body))))
    };
    (|$ctx:ident, $who:ident, $body:ident| $call:expr) => {
        Handler::Waits(Waiting::User(|$ctx, $who, $body| Box::pin($call)))
    };
}

use Access::{Bench, DebugBuild, Operator, Public, User};
use Class::{Auth, Jobs, Read, Write};

#[rustfmt::skip]
pub const ROUTES: &[Route] = &[
    route(Get, "/healthz", Operator, None, "healthz", Handler::Now(|_, body| ops::healthz(body))),
    route(Get, "/readyz", Operator, None, "readyz", public!(|ctx, body| ops::readyz(ctx.shard, &ctx.sql, body))),
    route(Get, "/metrics", Operator, None, "metrics", Handler::Now(ops::metrics)),
    route(Get, "/openapi.json", Public, None, "openapi", Handler::Now(|_, body| ops::openapi(body))),
    route(Post, "/v1/auth/register", Public, Some(Auth), "register", public!(identity::register)),
    route(Post, "/v1/auth/login", Public, Some(Auth), "login", public!(identity::login)),
    route(Post, "/v1/auth/logout", User, Some(Write), "logout", user!(|ctx, who, _body| identity::logout(ctx, who))),
    route(Get, "/v1/me", User, Some(Read), "me", user!(users::me)),
    route(Patch, "/v1/me/profile", User, Some(Write), "patch_profile", user!(users::patch_profile)),
    route(Put, "/v1/me/prefs", User, Some(Write), "put_prefs", user!(users::put_prefs)),
    route(Get, "/v1/me/events", User, Some(Read), "my_events", user!(events::my_events)),
    route(Get, "/v1/users/{id}", User, Some(Read), "user_by_id", user!(public_users::user_by_id)),
    route(Get, "/v1/users", User, Some(Read), "users_by_ids", user!(public_users::users_by_ids)),
    route(Post, "/v1/events", User, Some(Write), "post_event", user!(events::post_event)),
    route(Post, "/v1/jobs", User, Some(Jobs), "post_job", user!(jobs::post_job)),
    route(Get, "/v1/jobs", User, Some(Read), "list_jobs", user!(jobs::list_jobs)),
    route(Get, "/v1/jobs/{id}", User, Some(Read), "get_job", user!(jobs::get_job)),
    route(Get, "/v1/jobs/{id}/result", User, Some(Read), "job_result", user!(jobs::job_result)),
    route(Post, "/v1/webhooks", User, Some(Write), "post_webhook", user!(webhooks::post_webhook)),
    route(Get, "/v1/webhooks", User, Some(Read), "list_webhooks", user!(webhooks::list_webhooks)),
    route(Delete, "/v1/webhooks/{id}", User, Some(Write), "delete_webhook", user!(|ctx, who, _body| webhooks::delete_webhook(ctx, who))),
    route(Get, "/v1/webhooks/{id}/deliveries", User, Some(Read), "webhook_deliveries", user!(webhooks::deliveries)),
    route(Get, "/plaintext", Bench, None, "plaintext", Handler::Now(|_, body| techempower::plaintext(body))),
    route(Get, "/json", Bench, None, "json", Handler::Now(|_, body| techempower::json(body))),
    route(Get, "/db", Bench, None, "db", public!(techempower::db)),
    route(Get, "/queries", Bench, None, "queries", public!(techempower::queries)),
    route(Get, "/fortunes", Bench, None, "fortunes", public!(techempower::fortunes)),
    route(Get, "/updates", Bench, None, "updates", public!(techempower::updates)),
    route(Get, "/cached-queries", Bench, None, "cached_queries", public!(techempower::cached_queries)),
    route(Post, "/bench/hash", Bench, None, "bench_hash", public!(|ctx, body| bench::hash(ctx.shard, ctx.request, body))),
    // Panics on purpose: proves a handler panic becomes a 500.
    route(Get, "/bench/panic", DebugBuild, None, "debug_panic", Handler::Waits(Waiting::Public(|_, _| panic!("GET /bench/panic panics on purpose")))),
    // Blocks its shard's thread on purpose (`?ms=`): proves the watchdog sees a stalled shard.
    route(Get, "/bench/stall", DebugBuild, None, "debug_stall", public!(|ctx, body| std::future::ready(bench::stall(ctx.request, body)))),
];

/// A response's name in the metrics: a row of `ROUTES`, or one of the pseudo-routes for
/// requests no row took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label(u16);

impl Label {
    pub const NOT_FOUND: Label = Label(ROUTES.len() as u16);
    pub const METHOD_NOT_ALLOWED: Label = Label(ROUTES.len() as u16 + 1);
    /// A request that failed to parse, timed out before it did, or whose handler panicked.
    pub const MALFORMED: Label = Label(ROUTES.len() as u16 + 2);

    /// Every label's name, by `index`: the metrics registry's rows.
    pub const NAMES: [&'static str; ROUTES.len() + 3] = {
        let mut names = ["not_found"; ROUTES.len() + 3];
        let mut i = 0;
        while i < ROUTES.len() {
            names[i] = ROUTES[i].label;
            i += 1;
        }
        names[ROUTES.len() + 1] = "method_not_allowed";
        names[ROUTES.len() + 2] = "malformed";
        names
    };

    pub(super) const fn of_row(row: usize) -> Label {
        assert!(row < ROUTES.len());
        Label(row as u16)
    }

    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(method: Method, path: &str) -> &'static Route {
        ROUTES
            .iter()
            .find(|r| r.method == method && r.path == path)
            .unwrap_or_else(|| panic!("no route {path}"))
    }

    #[test]
    fn api_routes_have_classes_and_operations_none() {
        assert_eq!(row(Post, "/v1/auth/login").rate, Some(Auth));
        assert_eq!(row(Get, "/v1/me").rate, Some(Read));
        assert_eq!(row(Put, "/v1/me/prefs").rate, Some(Write));
        assert_eq!(row(Post, "/v1/jobs").rate, Some(Jobs));
        for path in ["/healthz", "/readyz", "/metrics", "/plaintext"] {
            assert_eq!(row(Get, path).rate, None, "{path}");
        }
        // Every route a client calls counts against a class.
        for r in ROUTES.iter().filter(|r| r.access == User) {
            assert!(r.rate.is_some(), "{} {}", r.method.as_str(), r.path);
        }
    }

    #[test]
    fn labels_are_unique_and_name_every_row() {
        let mut names = Label::NAMES.to_vec();
        assert_eq!(
            names[..ROUTES.len()],
            ROUTES.iter().map(|r| r.label).collect::<Vec<_>>()[..]
        );
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Label::NAMES.len(), "a label names one route");
        assert_eq!(Label::NAMES[Label::MALFORMED.index()], "malformed");
    }
}
