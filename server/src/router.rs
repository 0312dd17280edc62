//! The route table: which method and path reach which endpoint. Reads like the API.
//! HEAD is served wherever GET is. Authentication, when routes need it, is applied here
//! once, by the `auth` column, not inside handlers.

use crate::http::Method;

/// Every endpoint, plus the pseudo-routes that label metrics for requests no endpoint took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Healthz,
    Readyz,
    Metrics,
    Plaintext,
    Json,
    BenchHash,
    /// Panics on purpose; proves a handler panic becomes a 500. Debug builds only.
    DebugPanic,
    NotFound,
    MethodNotAllowed,
    /// A request that failed to parse, or timed out before it did.
    Malformed,
}

impl Endpoint {
    pub const ALL: [Endpoint; 10] = [
        Endpoint::Healthz,
        Endpoint::Readyz,
        Endpoint::Metrics,
        Endpoint::Plaintext,
        Endpoint::Json,
        Endpoint::BenchHash,
        Endpoint::DebugPanic,
        Endpoint::NotFound,
        Endpoint::MethodNotAllowed,
        Endpoint::Malformed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Healthz => "healthz",
            Endpoint::Readyz => "readyz",
            Endpoint::Metrics => "metrics",
            Endpoint::Plaintext => "plaintext",
            Endpoint::Json => "json",
            Endpoint::BenchHash => "bench_hash",
            Endpoint::DebugPanic => "debug_panic",
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
    /// Only when `[bench] routes = true`.
    Bench,
    /// Only in debug builds (the tests' binary), and only with bench routes on.
    DebugBuild,
}

struct Route {
    method: Method,
    path: &'static str,
    endpoint: Endpoint,
    access: Access,
}

const fn route(method: Method, path: &'static str, endpoint: Endpoint, access: Access) -> Route {
    Route {
        method,
        path,
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
    route(Get, "/plaintext", Plaintext, Bench),
    route(Get, "/json", Json, Bench),
    route(Post, "/bench/hash", BenchHash, Bench),
    route(Get, "/bench/panic", DebugPanic, DebugBuild),
];

#[derive(Debug, PartialEq, Eq)]
pub enum Resolved {
    Found(Endpoint),
    /// The path exists for other methods; the value is the `Allow` header.
    MethodNotAllowed(String),
    NotFound,
}

pub fn resolve(method: Method, path: &str, bench_routes: bool) -> Resolved {
    let visible = |r: &&Route| match r.access {
        Public => true,
        Bench => bench_routes,
        DebugBuild => bench_routes && cfg!(debug_assertions),
    };
    let lookup = if method == Head { Get } else { method };
    let mut path_matched = false;
    for r in ROUTES.iter().filter(visible) {
        if r.path == path {
            if r.method == lookup {
                return Resolved::Found(r.endpoint);
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
        .filter(|r| r.path == path)
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
        assert_eq!(resolve(Get, "/healthz", false), Resolved::Found(Healthz));
        assert_eq!(resolve(Head, "/healthz", false), Resolved::Found(Healthz));
        assert_eq!(
            resolve(Post, "/healthz", false),
            Resolved::MethodNotAllowed("GET, HEAD".into())
        );
        assert_eq!(resolve(Get, "/nope", false), Resolved::NotFound);
    }

    #[test]
    fn bench_routes_hide_unless_enabled() {
        assert_eq!(resolve(Get, "/plaintext", false), Resolved::NotFound);
        assert_eq!(resolve(Get, "/plaintext", true), Resolved::Found(Plaintext));
        assert_eq!(
            resolve(Get, "/bench/hash", true),
            Resolved::MethodNotAllowed("POST".into())
        );
    }
}
