//! The route table: one row per endpoint, read like the API. A row says everything about
//! its route: method, path, who may call it, the rate-limit class it counts against, its
//! metrics label and its handler. Routing (`router`), the auth middleware, the rate limit
//! and the metrics all read these rows; adding an endpoint is adding a row (and its
//! handler, statements and OpenAPI entry). HEAD is served wherever GET is.

use super::auth::Principal;
use super::{Answer, Ctx, bench, docs, events, identity, jobs, ops, public_users, techempower, users, webhooks};
use crate::api::state::Shard;
use crate::http::Method::{self, *};
use crate::limits::rate_limit::Class;

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

/// How a row's handler is called. Each kind names its handlers by an id (generated
/// below with one `match` per kind), so a call is direct and a waiting handler's future
/// lives inside the request's own, with no allocation per request.
#[derive(Clone, Copy)]
pub enum Handler {
    /// Never waits and checks nothing per client: answered while routing, with no
    /// future built (probes, the benchmark's plaintext and json).
    Now(NowHandler),
    Waits(Waiting),
}

#[derive(Clone, Copy)]
pub enum Waiting {
    Public(PublicHandler),
    /// Called with the caller the auth middleware authenticated.
    User(UserHandler),
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

/// Declares a handler id enum whose `call` runs the expression given for each id, with
/// the arguments named in the header bound: `kind Name(args) { Id => expression, … }`.
macro_rules! handlers {
    (now $name:ident($shard:ident, $body:ident) { $($id:ident => $call:expr),* $(,)? }) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($id),* }

        impl $name {
            pub fn call(self, $shard: &Shard, $body: &mut Vec<u8>) -> Answer {
                match self { $($name::$id => $call,)* }
            }
        }
    };
    (public $name:ident($ctx:ident, $body:ident) { $($id:ident => $call:expr),* $(,)? }) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($id),* }

        impl $name {
                        pub async fn call(self, $ctx: &Ctx<'_>, $body: &mut Vec<u8>) -> Answer {
                match self { $($name::$id => $call.await,)* }
            }
        }
    };
    (user $name:ident($ctx:ident, $who:ident, $body:ident) { $($id:ident => $call:expr),* $(,)? }) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($id),* }

        impl $name {
                        pub async fn call(self, $ctx: &Ctx<'_>, $who: &Principal, $body: &mut Vec<u8>) -> Answer {
                match self { $($name::$id => $call.await,)* }
            }
        }
    };
}

handlers! {
    now NowHandler(shard, body) {
        Healthz => ops::healthz(body),
        Metrics => ops::metrics(shard, body),
        OpenApi => ops::openapi(body),
        Docs => docs::docs(body),
        Plaintext => techempower::plaintext(body),
        Json => techempower::json(body),
    }
}

handlers! {
    public PublicHandler(ctx, body) {
        Readyz => ops::readyz(ctx.shard, &ctx.sql, body),
        Register => identity::register(ctx, body),
        Login => identity::login(ctx, body),
        Db => techempower::db(ctx, body),
        Queries => techempower::queries(ctx, body),
        Fortunes => techempower::fortunes(ctx, body),
        Updates => techempower::updates(ctx, body),
        CachedQueries => techempower::cached_queries(ctx, body),
        BenchHash => bench::hash(ctx.shard, ctx.request, body),
        DebugPanic => async { panic!("GET /bench/panic panics on purpose") },
        DebugStall => std::future::ready(bench::stall(ctx.request, body)),
    }
}

handlers! {
    user UserHandler(ctx, who, body) {
        Logout => identity::logout(ctx, who),
        Me => users::me(ctx, who, body),
        PatchProfile => users::patch_profile(ctx, who, body),
        PutPrefs => users::put_prefs(ctx, who, body),
        MyEvents => events::my_events(ctx, who, body),
        UserById => public_users::user_by_id(ctx, who, body),
        UsersByIds => public_users::users_by_ids(ctx, who, body),
        PostEvent => events::post_event(ctx, who, body),
        PostJob => jobs::post_job(ctx, who, body),
        ListJobs => jobs::list_jobs(ctx, who, body),
        GetJob => jobs::get_job(ctx, who, body),
        JobResult => jobs::job_result(ctx, who, body),
        PostWebhook => webhooks::post_webhook(ctx, who, body),
        ListWebhooks => webhooks::list_webhooks(ctx, who, body),
        DeleteWebhook => webhooks::delete_webhook(ctx, who),
        WebhookDeliveries => webhooks::deliveries(ctx, who, body),
    }
}

const fn now(handler: NowHandler) -> Handler {
    Handler::Now(handler)
}

const fn public(handler: PublicHandler) -> Handler {
    Handler::Waits(Waiting::Public(handler))
}

const fn user(handler: UserHandler) -> Handler {
    Handler::Waits(Waiting::User(handler))
}

use Access::{Bench, DebugBuild, Operator, Public, User};
use Class::{Auth, Jobs, Read, Write};

#[rustfmt::skip]
pub const ROUTES: &[Route] = &[
    route(Get, "/healthz", Operator, None, "healthz", now(NowHandler::Healthz)),
    route(Get, "/readyz", Operator, None, "readyz", public(PublicHandler::Readyz)),
    route(Get, "/metrics", Operator, None, "metrics", now(NowHandler::Metrics)),
    route(Get, "/openapi.json", Public, None, "openapi", now(NowHandler::OpenApi)),
    route(Get, "/docs", Public, None, "docs", now(NowHandler::Docs)),
    route(Post, "/v1/auth/register", Public, Some(Auth), "register", public(PublicHandler::Register)),
    route(Post, "/v1/auth/login", Public, Some(Auth), "login", public(PublicHandler::Login)),
    route(Post, "/v1/auth/logout", User, Some(Write), "logout", user(UserHandler::Logout)),
    route(Get, "/v1/me", User, Some(Read), "me", user(UserHandler::Me)),
    route(Patch, "/v1/me/profile", User, Some(Write), "patch_profile", user(UserHandler::PatchProfile)),
    route(Put, "/v1/me/prefs", User, Some(Write), "put_prefs", user(UserHandler::PutPrefs)),
    route(Get, "/v1/me/events", User, Some(Read), "my_events", user(UserHandler::MyEvents)),
    route(Get, "/v1/users/{id}", User, Some(Read), "user_by_id", user(UserHandler::UserById)),
    route(Get, "/v1/users", User, Some(Read), "users_by_ids", user(UserHandler::UsersByIds)),
    route(Post, "/v1/events", User, Some(Write), "post_event", user(UserHandler::PostEvent)),
    route(Post, "/v1/jobs", User, Some(Jobs), "post_job", user(UserHandler::PostJob)),
    route(Get, "/v1/jobs", User, Some(Read), "list_jobs", user(UserHandler::ListJobs)),
    route(Get, "/v1/jobs/{id}", User, Some(Read), "get_job", user(UserHandler::GetJob)),
    route(Get, "/v1/jobs/{id}/result", User, Some(Read), "job_result", user(UserHandler::JobResult)),
    route(Post, "/v1/webhooks", User, Some(Write), "post_webhook", user(UserHandler::PostWebhook)),
    route(Get, "/v1/webhooks", User, Some(Read), "list_webhooks", user(UserHandler::ListWebhooks)),
    route(Delete, "/v1/webhooks/{id}", User, Some(Write), "delete_webhook", user(UserHandler::DeleteWebhook)),
    route(Get, "/v1/webhooks/{id}/deliveries", User, Some(Read), "webhook_deliveries", user(UserHandler::WebhookDeliveries)),
    route(Get, "/plaintext", Bench, None, "plaintext", now(NowHandler::Plaintext)),
    route(Get, "/json", Bench, None, "json", now(NowHandler::Json)),
    route(Get, "/db", Bench, None, "db", public(PublicHandler::Db)),
    route(Get, "/queries", Bench, None, "queries", public(PublicHandler::Queries)),
    route(Get, "/fortunes", Bench, None, "fortunes", public(PublicHandler::Fortunes)),
    route(Get, "/updates", Bench, None, "updates", public(PublicHandler::Updates)),
    route(Get, "/cached-queries", Bench, None, "cached_queries", public(PublicHandler::CachedQueries)),
    route(Post, "/bench/hash", Bench, None, "bench_hash", public(PublicHandler::BenchHash)),
    // Panics on purpose: proves a handler panic becomes a 500.
    route(Get, "/bench/panic", DebugBuild, None, "debug_panic", public(PublicHandler::DebugPanic)),
    // Blocks its shard's thread on purpose (`?ms=`): proves the watchdog sees a stalled shard.
    route(Get, "/bench/stall", DebugBuild, None, "debug_stall", public(PublicHandler::DebugStall)),
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
        let mut names = [""; ROUTES.len() + 3];
        let mut i = 0;
        while i < ROUTES.len() {
            names[i] = ROUTES[i].label;
            i += 1;
        }
        names[ROUTES.len()] = "not_found";
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
