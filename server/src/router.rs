//! The route table: which method and path reach which endpoint. Reads like the API.
//! HEAD is served wherever GET is. Authentication is decided here, by each route's
//! `Access`, and applied once by `api::handle`, never inside handlers.

use crate::http::Method;

/// Every endpoint, plus the pseudo-routes that label metrics for requests no endpoint took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Healthz,
    Readyz,
    Metrics,
    OpenApi,
    Register,
    Login,
    Logout,
    Me,
    PatchProfile,
    PutPrefs,
    UserById,
    UsersByIds,
    PostEvent,
    MyEvents,
    PostJob,
    GetJob,
    JobResult,
    ListJobs,
    PostWebhook,
    ListWebhooks,
    DeleteWebhook,
    WebhookDeliveries,
    Plaintext,
    Json,
    Db,
    Queries,
    Fortunes,
    Updates,
    CachedQueries,
    BenchHash,
    /// Panics on purpose; proves a handler panic becomes a 500. Debug builds only.
    DebugPanic,
    /// Blocks its shard's thread on purpose (`?ms=`); proves the watchdog sees a stalled
    /// shard. Debug builds only.
    DebugStall,
    NotFound,
    MethodNotAllowed,
    /// A request that failed to parse, or timed out before it did.
    Malformed,
}

impl Endpoint {
    pub const ALL: [Endpoint; 35] = [
        Endpoint::Healthz,
        Endpoint::Readyz,
        Endpoint::Metrics,
        Endpoint::OpenApi,
        Endpoint::Register,
        Endpoint::Login,
        Endpoint::Logout,
        Endpoint::Me,
        Endpoint::PatchProfile,
        Endpoint::PutPrefs,
        Endpoint::UserById,
        Endpoint::UsersByIds,
        Endpoint::PostEvent,
        Endpoint::MyEvents,
        Endpoint::PostJob,
        Endpoint::GetJob,
        Endpoint::JobResult,
        Endpoint::ListJobs,
        Endpoint::PostWebhook,
        Endpoint::ListWebhooks,
        Endpoint::DeleteWebhook,
        Endpoint::WebhookDeliveries,
        Endpoint::Plaintext,
        Endpoint::Json,
        Endpoint::Db,
        Endpoint::Queries,
        Endpoint::Fortunes,
        Endpoint::Updates,
        Endpoint::CachedQueries,
        Endpoint::BenchHash,
        Endpoint::DebugPanic,
        Endpoint::DebugStall,
        Endpoint::NotFound,
        Endpoint::MethodNotAllowed,
        Endpoint::Malformed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Healthz => "healthz",
            Endpoint::Readyz => "readyz",
            Endpoint::Metrics => "metrics",
            Endpoint::OpenApi => "openapi",
            Endpoint::Register => "register",
            Endpoint::Login => "login",
            Endpoint::Logout => "logout",
            Endpoint::Me => "me",
            Endpoint::PatchProfile => "patch_profile",
            Endpoint::PutPrefs => "put_prefs",
            Endpoint::UserById => "user_by_id",
            Endpoint::UsersByIds => "users_by_ids",
            Endpoint::PostEvent => "post_event",
            Endpoint::MyEvents => "my_events",
            Endpoint::PostJob => "post_job",
            Endpoint::GetJob => "get_job",
            Endpoint::JobResult => "job_result",
            Endpoint::ListJobs => "list_jobs",
            Endpoint::PostWebhook => "post_webhook",
            Endpoint::ListWebhooks => "list_webhooks",
            Endpoint::DeleteWebhook => "delete_webhook",
            Endpoint::WebhookDeliveries => "webhook_deliveries",
            Endpoint::Plaintext => "plaintext",
            Endpoint::Json => "json",
            Endpoint::Db => "db",
            Endpoint::Queries => "queries",
            Endpoint::Fortunes => "fortunes",
            Endpoint::Updates => "updates",
            Endpoint::CachedQueries => "cached_queries",
            Endpoint::BenchHash => "bench_hash",
            Endpoint::DebugPanic => "debug_panic",
            Endpoint::DebugStall => "debug_stall",
            Endpoint::NotFound => "not_found",
            Endpoint::MethodNotAllowed => "method_not_allowed",
            Endpoint::Malformed => "malformed",
        }
    }
}

/// Who may reach a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Public,
    /// Needs `Authorization: Bearer <token>`: the auth middleware in `api::handle` checks it
    /// once for every such route, before any handler runs.
    User,
    /// Only when `[bench] routes = true`.
    Bench,
    /// Only in debug builds (the tests' binary), and only with bench routes on.
    DebugBuild,
}

struct Route {
    method: Method,
    /// Literal segments, and `{name}` for one path parameter.
    path: &'static str,
    /// Where `{name}` starts and where the literal after its `}` starts; both are
    /// `path.len()` when there is no parameter. Found at compile time, because scanning
    /// every pattern for its brace on every request was a fifth of the plaintext profile.
    param_open: usize,
    param_end: usize,
    endpoint: Endpoint,
    access: Access,
}

impl Route {
    /// No `{param}`: the pattern matches one exact path.
    fn is_literal(&self) -> bool {
        self.param_open == self.path.len()
    }
}

const fn route(method: Method, path: &'static str, endpoint: Endpoint, access: Access) -> Route {
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
        param_open: open,
        param_end,
        endpoint,
        access,
    }
}

use Access::*;
use Endpoint::*;
use Method::*;

const ROUTES: &[Route] = &[
    route(Get, "/healthz", Healthz, Public),
    route(Get, "/readyz", Readyz, Public),
    route(Get, "/metrics", Metrics, Public),
    route(Get, "/openapi.json", OpenApi, Public),
    route(Post, "/v1/auth/register", Register, Public),
    route(Post, "/v1/auth/login", Login, Public),
    route(Post, "/v1/auth/logout", Logout, User),
    route(Get, "/v1/me", Me, User),
    route(Patch, "/v1/me/profile", PatchProfile, User),
    route(Put, "/v1/me/prefs", PutPrefs, User),
    route(Get, "/v1/me/events", MyEvents, User),
    route(Get, "/v1/users/{id}", UserById, User),
    route(Get, "/v1/users", UsersByIds, User),
    route(Post, "/v1/events", PostEvent, User),
    route(Post, "/v1/jobs", PostJob, User),
    route(Get, "/v1/jobs", ListJobs, User),
    route(Get, "/v1/jobs/{id}", GetJob, User),
    route(Get, "/v1/jobs/{id}/result", JobResult, User),
    route(Post, "/v1/webhooks", PostWebhook, User),
    route(Get, "/v1/webhooks", ListWebhooks, User),
    route(Delete, "/v1/webhooks/{id}", DeleteWebhook, User),
    route(Get, "/v1/webhooks/{id}/deliveries", WebhookDeliveries, User),
    route(Get, "/plaintext", Plaintext, Bench),
    route(Get, "/json", Json, Bench),
    route(Get, "/db", Db, Bench),
    route(Get, "/queries", Queries, Bench),
    route(Get, "/fortunes", Fortunes, Bench),
    route(Get, "/updates", Updates, Bench),
    route(Get, "/cached-queries", CachedQueries, Bench),
    route(Post, "/bench/hash", BenchHash, Bench),
    route(Get, "/bench/panic", DebugPanic, DebugBuild),
    route(Get, "/bench/stall", DebugStall, DebugBuild),
];

/// Every route as (method, path pattern, access), for documentation checks.
pub fn routes() -> impl Iterator<Item = (Method, &'static str, Access)> {
    ROUTES.iter().map(|r| (r.method, r.path, r.access))
}

#[derive(Debug, PartialEq, Eq)]
pub enum Resolved<'a> {
    Found {
        endpoint: Endpoint,
        access: Access,
        /// The `{…}` segment of the path, if the route has one.
        param: Option<&'a str>,
    },
    /// The path exists for other methods; the value is the `Allow` header.
    MethodNotAllowed(String),
    NotFound,
}

/// Matches `path` against a route; `Some(param)` on a match. A parameter is one whole,
/// non-empty segment.
fn matches<'a>(route: &Route, path: &'a str) -> Option<Option<&'a str>> {
    let pattern = route.path.as_bytes();
    if route.is_literal() {
        return (pattern == path.as_bytes()).then_some(None);
    }
    let (prefix, suffix) = (&pattern[..route.param_open], &pattern[route.param_end..]);
    let bytes = path.as_bytes();
    if bytes.len() <= prefix.len() + suffix.len() || !bytes.starts_with(prefix) || !bytes.ends_with(suffix) {
        return None;
    }
    // The prefix and suffix are ASCII, so these offsets are character boundaries.
    let param = &path[prefix.len()..path.len() - suffix.len()];
    (!param.contains('/')).then_some(Some(param))
}

/// The routes a path of each length can match: those without a parameter whose pattern
/// has that length, then every route with one. Built once; a linear scan of the whole
/// table was a quarter of the instructions of a plaintext request.
struct Candidates {
    literal_by_len: Vec<Vec<&'static Route>>,
    parameterized: Vec<&'static Route>,
}

impl Candidates {
    fn get() -> &'static Candidates {
        static CANDIDATES: std::sync::OnceLock<Candidates> = std::sync::OnceLock::new();
        CANDIDATES.get_or_init(|| {
            let longest = ROUTES.iter().map(|r| r.path.len()).max().unwrap_or(0);
            let mut literal_by_len = vec![Vec::new(); longest + 1];
            let mut parameterized = Vec::new();
            for r in ROUTES {
                if r.is_literal() {
                    literal_by_len[r.path.len()].push(r);
                } else {
                    parameterized.push(r);
                }
            }
            Candidates {
                literal_by_len,
                parameterized,
            }
        })
    }

    fn of(&self, path: &str) -> impl Iterator<Item = &'static Route> + '_ {
        let literal = self.literal_by_len.get(path.len()).map_or(&[][..], Vec::as_slice);
        literal.iter().chain(&self.parameterized).copied()
    }
}

pub fn resolve(method: Method, path: &str, bench_routes: bool) -> Resolved<'_> {
    let visible = |r: &&Route| match r.access {
        Public | User => true,
        Bench => bench_routes,
        DebugBuild => bench_routes && cfg!(debug_assertions),
    };
    let lookup = if method == Head { Get } else { method };
    let mut path_matched = false;
    for r in Candidates::get().of(path).filter(visible) {
        if let Some(param) = matches(r, path) {
            if r.method == lookup {
                return Resolved::Found {
                    endpoint: r.endpoint,
                    access: r.access,
                    param,
                };
            }
            path_matched = true;
        }
    }
    if !path_matched {
        return Resolved::NotFound;
    }
    let mut allow: Vec<&str> = ROUTES
        .iter()
        .filter(visible)
        .filter(|r| matches(r, path).is_some())
        .map(|r| r.method.as_str())
        .collect();
    if allow.contains(&"GET") {
        allow.push("HEAD");
    }
    Resolved::MethodNotAllowed(allow.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_get_head_405_and_404() {
        let healthz = Resolved::Found {
            endpoint: Healthz,
            access: Public,
            param: None,
        };
        assert_eq!(resolve(Get, "/healthz", false), healthz);
        assert_eq!(resolve(Head, "/healthz", false), healthz);
        assert_eq!(
            resolve(Post, "/healthz", false),
            Resolved::MethodNotAllowed("GET, HEAD".into())
        );
        assert_eq!(resolve(Get, "/nope", false), Resolved::NotFound);
    }

    #[test]
    fn every_route_resolves_to_its_own_endpoint() {
        for r in ROUTES {
            let path = if r.is_literal() {
                r.path.to_string()
            } else {
                format!("{}7{}", &r.path[..r.param_open], &r.path[r.param_end..])
            };
            let expected_param = (!r.is_literal()).then_some("7");
            assert_eq!(
                resolve(r.method, &path, true),
                Resolved::Found {
                    endpoint: r.endpoint,
                    access: r.access,
                    param: expected_param,
                },
                "{path}"
            );
        }
    }

    #[test]
    fn bench_routes_hide_unless_enabled() {
        assert_eq!(resolve(Get, "/plaintext", false), Resolved::NotFound);
        assert!(matches!(
            resolve(Get, "/plaintext", true),
            Resolved::Found {
                endpoint: Plaintext,
                ..
            }
        ));
        assert_eq!(
            resolve(Get, "/bench/hash", true),
            Resolved::MethodNotAllowed("POST".into())
        );
    }

    #[test]
    fn path_parameters_match_one_whole_segment() {
        assert_eq!(
            resolve(Get, "/v1/users/42", false),
            Resolved::Found {
                endpoint: UserById,
                access: User,
                param: Some("42")
            }
        );
        assert!(matches!(
            resolve(Get, "/v1/users", false),
            Resolved::Found {
                endpoint: UsersByIds,
                ..
            }
        ));
        assert_eq!(resolve(Get, "/v1/users/", false), Resolved::NotFound);
        assert_eq!(resolve(Get, "/v1/users/1/x", false), Resolved::NotFound);
        assert_eq!(
            resolve(Get, "/v1/jobs/7/result", false),
            Resolved::Found {
                endpoint: JobResult,
                access: User,
                param: Some("7")
            }
        );
        assert_eq!(resolve(Get, "/v1/jobs//result", false), Resolved::NotFound);
        assert_eq!(resolve(Get, "/v1/jobs/1/2/result", false), Resolved::NotFound);
        assert_eq!(
            resolve(Delete, "/v1/users/1", false),
            Resolved::MethodNotAllowed("GET, HEAD".into())
        );
    }
}
