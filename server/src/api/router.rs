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

/// A cheap key of a path: its length and three of its bytes (the second, the last two),
/// a few loads and multiplies on every request rather than a hash of every byte. They tell
/// the current literal paths apart (a test checks), so a path meets at most one literal
/// route's pattern before its compare.
fn path_key(path: &[u8]) -> usize {
    let len = path.len();
    let at = |i: usize| path.get(i).map_or(0, |&b| b as usize);
    len.wrapping_mul(0x9e37_79b9)
        ^ at(1).wrapping_mul(0x85eb_ca6b)
        ^ at(len.wrapping_sub(1)).wrapping_mul(0xc2b2_ae35)
        ^ at(len.wrapping_sub(2)).wrapping_mul(0x27d4_eb2f)
}

/// The routes a path can match: the literal routes in its `path_key` slot (every method
/// of one path, in the table's order), then every route with a parameter. Built once; a
/// linear scan of the whole table was a quarter of the instructions of a plaintext
/// request, and a slot per length still compared /json against /docs.
struct Candidates {
    literal_by_key: Vec<Vec<(Label, &'static Route)>>,
    /// `literal_by_key.len() - 1`, a power of two less one.
    slot_mask: usize,
    parameterized: Vec<(Label, &'static Route)>,
}

impl Candidates {
    /// Slots at most: past this many the key, not the table, is what needs changing.
    const SLOTS_MAX: usize = 1 << 12;

    fn get() -> &'static Candidates {
        static CANDIDATES: std::sync::OnceLock<Candidates> = std::sync::OnceLock::new();
        CANDIDATES.get_or_init(|| Candidates::build(ROUTES))
    }

    /// The smallest table in which no two literal paths share a slot, or the largest
    /// allowed if none is (still correct: a shared slot is compared in turn).
    fn build(routes: &'static [Route]) -> Candidates {
        let literal_paths: std::collections::BTreeSet<&str> =
            routes.iter().filter(|r| r.is_literal()).map(|r| r.path).collect();
        let mut slots = (literal_paths.len() * 2).next_power_of_two().max(16);
        while slots < Self::SLOTS_MAX {
            let mut used = vec![false; slots];
            let collides = literal_paths.iter().any(|p| {
                let slot = path_key(p.as_bytes()) & (slots - 1);
                std::mem::replace(&mut used[slot], true)
            });
            if !collides {
                break;
            }
            slots *= 2;
        }
        let mut literal_by_key = vec![Vec::new(); slots];
        let mut parameterized = Vec::new();
        for (row, r) in routes.iter().enumerate() {
            let candidate = (Label::of_row(row), r);
            if r.is_literal() {
                literal_by_key[path_key(r.path.as_bytes()) & (slots - 1)].push(candidate);
            } else {
                parameterized.push(candidate);
            }
        }
        Candidates {
            literal_by_key,
            slot_mask: slots - 1,
            parameterized,
        }
    }

    fn of(&self, path: &str) -> impl Iterator<Item = (Label, &'static Route)> + '_ {
        let literal = &self.literal_by_key[path_key(path.as_bytes()) & self.slot_mask];
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
    fn no_two_literal_paths_share_a_slot() {
        let candidates = Candidates::get();
        assert!(
            candidates.literal_by_key.len() < Candidates::SLOTS_MAX,
            "path_key needs another byte"
        );
        for slot in &candidates.literal_by_key {
            let paths: std::collections::BTreeSet<&str> = slot.iter().map(|(_, r)| r.path).collect();
            assert!(paths.len() <= 1, "{paths:?} share a slot: path_key needs another byte");
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
