//! Routing: which row of the route table (`routes`) a method and path reach. HEAD is
//! served wherever GET is.

use super::routes::{Access, Label, ROUTES, Route};
use crate::http::Method;

impl Route {
    /// No `{param}`: the pattern matches one exact path.
    fn is_literal(&self) -> bool {
        self.param_open == self.path.len()
    }
}

/// Every route as (method, path pattern, access), for documentation checks.
pub fn routes() -> impl Iterator<Item = (Method, &'static str, Access)> {
    ROUTES.iter().map(|r| (r.method, r.path, r.access))
}

pub enum Resolved<'a> {
    Found {
        label: Label,
        route: &'static Route,
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
    literal_by_len: Vec<Vec<(Label, &'static Route)>>,
    parameterized: Vec<(Label, &'static Route)>,
}

impl Candidates {
    fn get() -> &'static Candidates {
        static CANDIDATES: std::sync::OnceLock<Candidates> = std::sync::OnceLock::new();
        CANDIDATES.get_or_init(|| {
            let longest = ROUTES.iter().map(|r| r.path.len()).max().unwrap_or(0);
            let mut literal_by_len = vec![Vec::new(); longest + 1];
            let mut parameterized = Vec::new();
            for (row, r) in ROUTES.iter().enumerate() {
                let candidate = (Label::of_row(row), r);
                if r.is_literal() {
                    literal_by_len[r.path.len()].push(candidate);
                } else {
                    parameterized.push(candidate);
                }
            }
            Candidates {
                literal_by_len,
                parameterized,
            }
        })
    }

    fn of(&self, path: &str) -> impl Iterator<Item = (Label, &'static Route)> + '_ {
        let literal = self.literal_by_len.get(path.len()).map_or(&[][..], Vec::as_slice);
        literal.iter().chain(&self.parameterized).copied()
    }
}

pub fn resolve(method: Method, path: &str, bench_routes: bool) -> Resolved<'_> {
    let visible = |r: &Route| match r.access {
        Access::Operator | Access::Public | Access::User => true,
        Access::Bench => bench_routes,
        Access::DebugBuild => bench_routes && cfg!(debug_assertions),
    };
    let lookup = if method == Method::Head { Method::Get } else { method };
    let mut path_matched = false;
    for (label, r) in Candidates::get().of(path).filter(|(_, r)| visible(r)) {
        if let Some(param) = matches(r, path) {
            if r.method == lookup {
                return Resolved::Found { label, route: r, param };
            }
            path_matched = true;
        }
    }
    if !path_matched {
        return Resolved::NotFound;
    }
    let mut allow: Vec<&str> = ROUTES
        .iter()
        .filter(|r| visible(r))
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
    use Method::*;

    /// (label name, access, param) of what `resolve` found, or the other outcomes as text.
    fn found(resolved: Resolved<'_>) -> Result<(&'static str, Access, Option<&str>), String> {
        match resolved {
            Resolved::Found { label, route, param } => {
                assert_eq!(Label::NAMES[label.index()], route.label);
                Ok((route.label, route.access, param))
            }
            Resolved::MethodNotAllowed(allow) => Err(format!("405 {allow}")),
            Resolved::NotFound => Err("404".into()),
        }
    }

    #[test]
    fn resolves_get_head_405_and_404() {
        let healthz = Ok(("healthz", Access::Operator, None));
        assert_eq!(found(resolve(Get, "/healthz", false)), healthz);
        assert_eq!(found(resolve(Head, "/healthz", false)), healthz);
        assert_eq!(found(resolve(Post, "/healthz", false)), Err("405 GET, HEAD".into()));
        assert_eq!(found(resolve(Get, "/nope", false)), Err("404".into()));
    }

    #[test]
    fn every_route_resolves_to_its_own_row() {
        for r in ROUTES {
            let path = if r.is_literal() {
                r.path.to_string()
            } else {
                format!("{}7{}", &r.path[..r.param_open], &r.path[r.param_end..])
            };
            let expected_param = (!r.is_literal()).then_some("7");
            assert_eq!(
                found(resolve(r.method, &path, true)),
                Ok((r.label, r.access, expected_param)),
                "{path}"
            );
        }
    }

    #[test]
    fn bench_routes_hide_unless_enabled() {
        assert_eq!(found(resolve(Get, "/plaintext", false)), Err("404".into()));
        assert_eq!(
            found(resolve(Get, "/plaintext", true)),
            Ok(("plaintext", Access::Bench, None))
        );
        assert_eq!(found(resolve(Get, "/bench/hash", true)), Err("405 POST".into()));
    }

    #[test]
    fn path_parameters_match_one_whole_segment() {
        assert_eq!(
            found(resolve(Get, "/v1/users/42", false)),
            Ok(("user_by_id", Access::User, Some("42")))
        );
        assert_eq!(
            found(resolve(Get, "/v1/users", false)),
            Ok(("users_by_ids", Access::User, None))
        );
        assert_eq!(found(resolve(Get, "/v1/users/", false)), Err("404".into()));
        assert_eq!(found(resolve(Get, "/v1/users/1/x", false)), Err("404".into()));
        assert_eq!(
            found(resolve(Get, "/v1/jobs/7/result", false)),
            Ok(("job_result", Access::User, Some("7")))
        );
        assert_eq!(found(resolve(Get, "/v1/jobs//result", false)), Err("404".into()));
        assert_eq!(found(resolve(Get, "/v1/jobs/1/2/result", false)), Err("404".into()));
        assert_eq!(
            found(resolve(Delete, "/v1/users/1", false)),
            Err("405 GET, HEAD".into())
        );
    }
}
