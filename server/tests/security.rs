//! Security: who may call what (every API route × anonymous, bad token, revoked token,
//! owner, other user), SQL injection through every input, what error bodies and headers
//! give away, and what tokens are.

mod common;
use common::{Response, Server, Services};
use serde_json::{Value, json};

/// Every operation the OpenAPI document marks as needing a bearer token, with `{id}` filled.
fn secured_operations(server: &Server, id: i64) -> Vec<(String, String)> {
    let document = server.get("/openapi.json").json();
    let mut operations = Vec::new();
    for (path, methods) in document["paths"].as_object().unwrap() {
        for (method, operation) in methods.as_object().unwrap() {
            let secured = operation["security"].as_array().is_some_and(|s| !s.is_empty());
            if secured {
                operations.push((method.to_uppercase(), path.replace("{id}", &id.to_string())));
            }
        }
    }
    assert!(operations.len() >= 15, "the document lists the API: {operations:?}");
    operations
}

fn call(server: &Server, method: &str, path: &str, token: Option<&str>) -> Response {
    let body = matches!(method, "POST" | "PUT" | "PATCH").then(|| json!({}));
    server.call(method, path, token, body.as_ref())
}

#[test]
fn every_secured_route_refuses_anonymous_malformed_and_revoked_tokens() {
    let services = Services::start();
    let server = Server::start(&services, "");
    let (id, revoked) = server.sign_up("revoked");
    assert_eq!(server.call("POST", "/v1/auth/logout", Some(&revoked), None).status, 204);
    let malformed = "not-a-token";
    // Well-formed (32 bytes of base64url) but never issued.
    let unknown = "A".repeat(43);
    let mut failures = Vec::new();
    for (method, path) in secured_operations(&server, id) {
        for (who, token, code) in [
            ("anonymous", None, "missing_token"),
            ("malformed", Some(malformed), "invalid_token"),
            ("unknown", Some(unknown.as_str()), "invalid_token"),
            ("revoked", Some(revoked.as_str()), "invalid_token"),
        ] {
            let response = call(&server, &method, &path, token);
            let challenge = response.header("WWW-Authenticate").unwrap_or_default().to_string();
            if response.status != 401 || response.error_code() != code || !challenge.starts_with("Bearer") {
                failures.push(format!(
                    "{method} {path} as {who}: {} {} (WWW-Authenticate {challenge:?})",
                    response.status,
                    response.text()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn another_users_resources_are_not_found_and_lists_are_the_callers_own() {
    let services = Services::start();
    let server = Server::start(&services, "");
    let (owner_id, owner) = server.sign_up("owner");
    let (_, other) = server.sign_up("other");
    let job = server.call("POST", "/v1/jobs", Some(&owner), Some(&json!({"kind": "export"})));
    assert_eq!(job.status, 202, "{}", job.text());
    let job_id = job.json()["id"].as_i64().unwrap();
    let hook = server.call(
        "POST",
        "/v1/webhooks",
        Some(&owner),
        Some(&json!({"url": "https://hooks.example.com/in", "events": ["*"]})),
    );
    assert_eq!(hook.status, 201, "{}", hook.text());
    let hook_id = hook.json()["id"].as_i64().unwrap();
    // GET /v1/webhooks: the owner's list holds the subscription, the other user's does not
    // (checked before the matrix below deletes it).
    let hook_ids = |response: &Response| -> Vec<i64> {
        response.json()["webhooks"]
            .as_array()
            .unwrap_or_else(|| panic!("no webhooks list: {}", response.text()))
            .iter()
            .map(|w| w["id"].as_i64().unwrap())
            .collect()
    };
    assert!(hook_ids(&server.call("GET", "/v1/webhooks", Some(&owner), None)).contains(&hook_id));
    let theirs = server.call("GET", "/v1/webhooks", Some(&other), None);
    assert_eq!(theirs.status, 200, "{}", theirs.text());
    assert!(
        !hook_ids(&theirs).contains(&hook_id),
        "/v1/webhooks leaks: {}",
        theirs.text()
    );
    let event = server.call(
        "POST",
        "/v1/events",
        Some(&owner),
        Some(&json!({"kind": "private.note", "payload": {"secret": "owner-only"}})),
    );
    assert_eq!(event.status, 201, "{}", event.text());

    // (method, path, the other user's status, the owner's status); the owner goes second,
    // so a DELETE the other user could do would show as the owner's 404.
    let matrix = [
        ("GET", format!("/v1/jobs/{job_id}"), 404, 200),
        ("GET", format!("/v1/webhooks/{hook_id}/deliveries"), 404, 200),
        ("DELETE", format!("/v1/webhooks/{hook_id}"), 404, 204),
    ];
    for (method, path, other_status, owner_status) in &matrix {
        let as_other = server.call(method, path, Some(&other), None);
        assert_eq!(
            as_other.status,
            *other_status,
            "{method} {path} as other: {}",
            as_other.text()
        );
        let as_owner = server.call(method, path, Some(&owner), None);
        assert_eq!(
            as_owner.status,
            *owner_status,
            "{method} {path} as owner: {}",
            as_owner.text()
        );
    }
    // A job's result is the owner's alone, whatever state the job is in.
    let result = server.call("GET", &format!("/v1/jobs/{job_id}/result"), Some(&other), None);
    assert_eq!(result.status, 404, "{}", result.text());

    // Lists and "me" pages: (path, what marks the owner's data in them).
    let job_ids = |response: &Response| -> Vec<i64> {
        response.json()["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_i64().unwrap())
            .collect()
    };
    assert!(job_ids(&server.call("GET", "/v1/jobs", Some(&owner), None)).contains(&job_id));
    let theirs = server.call("GET", "/v1/jobs", Some(&other), None);
    assert!(!job_ids(&theirs).contains(&job_id), "/v1/jobs leaks: {}", theirs.text());
    assert!(
        server
            .call("GET", "/v1/me/events", Some(&owner), None)
            .text()
            .contains("owner-only")
    );
    let theirs = server.call("GET", "/v1/me/events", Some(&other), None);
    assert!(
        !theirs.text().contains("owner-only"),
        "/v1/me/events leaks: {}",
        theirs.text()
    );
    assert_eq!(
        server.call("GET", "/v1/me", Some(&owner), None).json()["user"]["id"],
        owner_id
    );
    assert_ne!(
        server.call("GET", "/v1/me", Some(&other), None).json()["user"]["id"],
        owner_id
    );
    // The public view of a user carries no email and no private profile data.
    let public = server.call("GET", &format!("/v1/users/{owner_id}"), Some(&other), None);
    assert_eq!(public.status, 200);
    assert!(public.json().get("email").is_none(), "{}", public.text());
    assert!(!public.text().contains('@'), "{}", public.text());
}

/// Strings that break queries built by concatenation.
const INJECTIONS: [&str; 8] = [
    "' OR '1'='1",
    "'; DROP TABLE users; --",
    "1; DELETE FROM sessions",
    "\" OR 1=1 --",
    "$$; DROP TABLE events; $$",
    "1' UNION SELECT password_hash FROM users --",
    "%27%20OR%201%3D1",
    "admin'/*",
];

fn table_counts(db: &mut postgres::Client) -> Vec<(String, i64)> {
    ["users", "sessions", "profiles", "prefs", "events", "jobs", "webhooks"]
        .iter()
        .map(|table| {
            let count: i64 = db
                .query_one(&format!("SELECT count(*) FROM {table}"), &[])
                .unwrap()
                .get(0);
            (table.to_string(), count)
        })
        .collect()
}

#[test]
fn sql_injection_through_every_input_changes_nothing_it_should_not() {
    let services = Services::start();
    let server = Server::start(&services, "");
    let (user_id, token) = server.sign_up("target");
    let mut db = postgres::Client::connect(&services.postgres.url, postgres::NoTls).unwrap();
    let hashes_before: Vec<String> = db
        .query("SELECT password_hash FROM users ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let counts_before = table_counts(&mut db);
    let t = Some(token.as_str());
    let enc = |s: &str| {
        s.replace('%', "%25")
            .replace(' ', "%20")
            .replace('\'', "%27")
            .replace('"', "%22")
            .replace('#', "%23")
            .replace(';', "%3B")
    };
    let mut failures = Vec::new();
    for attack in INJECTIONS {
        // Inputs with a shape to check: every one of these is a 4xx.
        let rejected: Vec<(&str, String, Option<&str>, Option<Value>)> = vec![
            (
                "POST",
                "/v1/auth/register".into(),
                None,
                Some(json!({"email": attack, "password": "correct horse", "name": "n"})),
            ),
            (
                "POST",
                "/v1/auth/login".into(),
                None,
                Some(json!({"email": attack, "password": attack})),
            ),
            (
                "POST",
                "/v1/auth/login".into(),
                None,
                Some(json!({"email": format!("x{attack}@example.com"), "password": attack})),
            ),
            (
                "PUT",
                "/v1/me/prefs".into(),
                t,
                Some(json!({"locale": attack, "timezone": "UTC", "theme": "dark", "email_opt_in": true})),
            ),
            (
                "PUT",
                "/v1/me/prefs".into(),
                t,
                Some(json!({"locale": "en", "timezone": attack, "theme": "dark", "email_opt_in": true})),
            ),
            (
                "PUT",
                "/v1/me/prefs".into(),
                t,
                Some(json!({"locale": "en", "timezone": "UTC", "theme": attack, "email_opt_in": true})),
            ),
            ("PATCH", "/v1/me/profile".into(), t, Some(json!({"avatar_url": attack}))),
            (
                "POST",
                "/v1/events".into(),
                t,
                Some(json!({"kind": attack, "payload": {}})),
            ),
            ("POST", "/v1/jobs".into(), t, Some(json!({"kind": attack}))),
            (
                "POST",
                "/v1/webhooks".into(),
                t,
                Some(json!({"url": attack, "events": ["*"]})),
            ),
            (
                "POST",
                "/v1/webhooks".into(),
                t,
                Some(json!({"url": "https://hooks.example.com/", "events": [attack]})),
            ),
            ("GET", format!("/v1/users/{}", enc(attack)), t, None),
            ("GET", format!("/v1/users?ids={}", enc(attack)), t, None),
            ("GET", format!("/v1/jobs/{}", enc(attack)), t, None),
            ("GET", format!("/v1/jobs?status={}", enc(attack)), t, None),
            ("GET", format!("/v1/jobs?limit={}", enc(attack)), t, None),
            ("GET", format!("/v1/me/events?before={}", enc(attack)), t, None),
            ("GET", format!("/v1/me/events?limit={}", enc(attack)), t, None),
            ("DELETE", format!("/v1/webhooks/{}", enc(attack)), t, None),
        ];
        for (method, path, token, body) in &rejected {
            let response = server.call(method, path, *token, body.as_ref());
            if !(400..500).contains(&response.status) {
                failures.push(format!(
                    "{method} {path} {body:?}: {} {}",
                    response.status,
                    response.text()
                ));
            }
        }
        // Free text is data: stored verbatim, read back the same.
        let patch = server.call(
            "PATCH",
            "/v1/me/profile",
            t,
            Some(&json!({"display_name": attack, "bio": attack})),
        );
        assert_eq!(patch.status, 200, "{}", patch.text());
        let me = server.call("GET", "/v1/me", t, None).json();
        assert_eq!(me["profile"]["display_name"], attack, "{me}");
        assert_eq!(me["profile"]["bio"], attack, "{me}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(table_counts(&mut db), counts_before, "rows appeared or vanished");
    let hashes_after: Vec<String> = db
        .query("SELECT password_hash FROM users ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(hashes_after, hashes_before);
    // The session survived every attempt at deleting sessions.
    assert_eq!(server.call("GET", "/v1/me", t, None).json()["user"]["id"], user_id);
}

/// What no client should ever read in an error body.
const INTERNALS: [&str; 12] = [
    "panicked",
    "backtrace",
    ".rs:",
    "src/",
    "/root",
    "/home",
    "/work",
    "SELECT",
    "INSERT",
    "postgres://",
    "tokio",
    "sqlstate",
];

#[test]
fn error_bodies_and_headers_give_nothing_away() {
    let mut services = Services::start();
    let server = Server::start(&services, "");
    let (_, token) = server.sign_up("curious");
    let t = Some(token.as_str());
    let mut responses: Vec<(String, Response)> = vec![
        ("panic".into(), server.get("/bench/panic")),
        ("no route".into(), server.get("/nope/../../etc/passwd")),
        ("bad id".into(), server.call("GET", "/v1/users/0x10", t, None)),
        ("bad json".into(), server.call("POST", "/v1/events", t, None)),
        (
            "huge id".into(),
            server.call("GET", "/v1/jobs/99999999999999999999", t, None),
        ),
        (
            "no such job".into(),
            server.call("GET", "/v1/jobs/9223372036854775807", t, None),
        ),
        (
            "bad prefs".into(),
            server.call("PUT", "/v1/me/prefs", t, Some(&json!({"locale": 1}))),
        ),
        (
            "NUL in text".into(),
            server.call("PATCH", "/v1/me/profile", t, Some(&json!({"bio": "a\u{0}b"}))),
        ),
    ];
    let raw_cases = [
        "GET /healthz HTTP/9.9\r\nHost: t\r\n\r\n",
        "POST /v1/events HTTP/1.1\r\nHost: t\r\nContent-Length: 1, 2\r\n\r\n",
        "BREW /coffee HTTP/1.1\r\nHost: t\r\n\r\n",
    ];
    for raw in raw_cases {
        responses.push((
            raw.lines().next().unwrap().to_string(),
            common::request_on(&server.connect(), raw),
        ));
    }
    // The database gone: 503 says so without saying how it is reached.
    services.postgres.kill();
    let event = json!({"kind": "k", "payload": {}});
    responses.push((
        "database down".into(),
        server.call("POST", "/v1/events", t, Some(&event)),
    ));

    assert_eq!(responses[0].1.status, 500, "the panic route exists in test builds");
    for (what, response) in &responses {
        assert!(response.status >= 400, "{what}: {}", response.status);
        let body = response.text();
        assert!(!response.error_code().is_empty(), "{what}: not the error shape: {body}");
        for secret in INTERNALS {
            assert!(
                !body.to_lowercase().contains(&secret.to_lowercase()),
                "{what}: the body shows {secret:?}: {body}"
            );
        }
        let server_header = response.header("Server").unwrap_or_default();
        assert!(
            !server_header.chars().any(|c| c.is_ascii_digit() || c == '/'),
            "{what}: Server {server_header:?} reveals a version"
        );
    }
}

#[test]
fn tokens_are_32_random_bytes_and_never_logged() {
    use base64::Engine as _;
    use sha2::Digest as _;
    let services = Services::start();
    // Log everything percore logs, to look for tokens and passwords in it.
    let port = common::free_port();
    let mut server = Server::start_with_config(
        port,
        &common::Tuning::new(port, &services).render(),
        &[("RUST_LOG", "trace")],
    );
    let mut tokens = Vec::new();
    let mut db = postgres::Client::connect(&services.postgres.url, postgres::NoTls).unwrap();
    for i in 0..4 {
        let (user_id, token) = server.sign_up(&format!("tok{i}"));
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&token).unwrap();
        assert_eq!(raw.len(), 32, "{token}");
        // Stored as the SHA-256 of its 32 bytes, and only so: the one session row holds
        // that digest, neither the token's text nor its bytes.
        let stored: Vec<Vec<u8>> = db
            .query("SELECT token_hash FROM sessions WHERE user_id = $1", &[&user_id])
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        let digest: Vec<u8> = sha2::Sha256::digest(&raw).to_vec();
        assert_eq!(
            stored,
            vec![digest],
            "user {user_id}'s session is stored as its token's SHA-256"
        );
        let as_text: i64 = db
            .query_one(
                "SELECT count(*) FROM sessions WHERE token_hash = $1 OR token_hash = $2",
                &[&raw, &token.as_bytes()],
            )
            .unwrap()
            .get(0);
        assert_eq!(as_text, 0, "a token is stored as itself");
        // 32 random bytes: two tokens never share more than a few bytes by chance.
        tokens.push((token, raw));
    }
    for (i, (_, a)) in tokens.iter().enumerate() {
        for (_, b) in &tokens[i + 1..] {
            let same = a.iter().zip(b).filter(|(x, y)| x == y).count();
            assert!(same < 8, "tokens share {same} of 32 bytes");
        }
    }
    // Use them, log out with one, and fail with another in the header, so every token path
    // (auth, cache, logout) has had its chance to log.
    for (token, _) in &tokens {
        assert_eq!(server.call("GET", "/v1/me", Some(token), None).status, 200);
    }
    assert_eq!(
        server.call("POST", "/v1/auth/logout", Some(&tokens[0].0), None).status,
        204
    );
    assert_eq!(server.call("GET", "/v1/me", Some(&tokens[0].0), None).status, 401);
    server.signal(libc::SIGTERM);
    server.wait_exit(std::time::Duration::from_secs(20));
    let log = server.stderr();
    assert!(log.len() > 200, "the server logged at trace level: {log}");
    for (token, _) in &tokens {
        assert!(!log.contains(token.as_str()), "a token is in the log");
    }
    assert!(!log.contains("correct horse battery"), "a password is in the log");
}
