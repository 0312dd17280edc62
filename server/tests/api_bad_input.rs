//! Every kind of bad input to the domain API gets its status and error code, never a 500.

mod common;

use common::{Server, Services, request_on};
use serde_json::json;

fn raw(
    server: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    body: &str,
) -> common::Response {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    request_on(
        &server.connect(),
        &format!(
            "{method} {path} HTTP/1.1\r\nHost: t\r\n{auth}Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
}

/// Method, path, token, content type, body; then the status, the error code and the field
/// the error must name.
type Case<'a> = (
    &'a str,
    &'a str,
    Option<&'a str>,
    &'a str,
    String,
    u16,
    &'a str,
    Option<&'a str>,
);

#[test]
fn each_bad_input_gets_its_status_and_code() {
    let services = Services::start();
    let server = Server::start(&services, "body_bytes_max = 65536");
    let (_, token) = server.sign_up("Bad");
    let t = Some(token.as_str());
    let json = "application/json";
    let long_name = "n".repeat(201);
    let big_payload = format!("{{\"kind\":\"k\",\"payload\":\"{}\"}}", "x".repeat(16 * 1024));
    let too_many_ids = (1..=101).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    let too_many_path = format!("/v1/users?ids={too_many_ids}");
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("POST", "/v1/auth/register", None, json, "{\"email\":".into(), 400, "invalid_json", None),
        ("POST", "/v1/auth/register", None, json, "".into(), 400, "invalid_json", None),
        ("POST", "/v1/auth/register", None, json, "{} trailing".into(), 400, "invalid_json", None),
        ("POST", "/v1/auth/register", None, "text/plain", "{}".into(), 415, "unsupported_media_type", None),
        ("POST", "/v1/auth/register", None, "application/jsonx", "{}".into(), 415, "unsupported_media_type", None),
        ("POST", "/v1/auth/register", None, json, r#"{"email":"a@b.co","password":"12345678","name":"n","admin":true}"#.into(), 422, "invalid_fields", Some("admin")),
        ("POST", "/v1/auth/register", None, json, r#"{"email":"a@b.co","password":12345678,"name":"n"}"#.into(), 422, "invalid_fields", Some("password")),
        ("POST", "/v1/auth/register", None, json, r#"{"email":"a@b.co","password":"12345678"}"#.into(), 422, "invalid_fields", Some("name")),
        ("POST", "/v1/auth/register", None, json, r#"{"email":"not-an-email","password":"12345678","name":"n"}"#.into(), 422, "invalid_fields", Some("email")),
        ("POST", "/v1/auth/register", None, json, r#"{"email":"a@b.co","password":"short","name":"n"}"#.into(), 422, "invalid_fields", Some("password")),
        ("POST", "/v1/auth/register", None, json, format!(r#"{{"email":"a@b.co","password":"12345678","name":"{long_name}"}}"#), 422, "invalid_fields", Some("name")),
        ("POST", "/v1/auth/register", None, json, format!(r#"{{"email":"a@b.co","password":"{}","name":"n"}}"#, "p".repeat(1025)), 422, "invalid_fields", Some("password")),
        ("POST", "/v1/auth/register", None, json, "[1,2]".into(), 422, "invalid_fields", None),
        ("POST", "/v1/auth/login", None, json, r#"{"email":"a@b.co"}"#.into(), 422, "invalid_fields", Some("password")),
        ("GET", "/v1/me", None, json, "".into(), 401, "missing_token", None),
        ("GET", "/v1/me", Some("not-a-token"), json, "".into(), 401, "invalid_token", None),
        ("GET", "/v1/me", Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"), json, "".into(), 401, "invalid_token", None),
        ("PATCH", "/v1/me/profile", t, json, r#"{"display_name":5}"#.into(), 422, "invalid_fields", Some("display_name")),
        ("PATCH", "/v1/me/profile", t, json, r#"{"avatar_url":"javascript:alert(1)"}"#.into(), 422, "invalid_fields", Some("avatar_url")),
        ("PATCH", "/v1/me/profile", t, json, format!(r#"{{"bio":"{}"}}"#, "b".repeat(2001)), 422, "invalid_fields", Some("bio")),
        ("PATCH", "/v1/me/profile", t, "text/plain", "{}".into(), 415, "unsupported_media_type", None),
        ("PATCH", "/v1/me/profile", t, json, r#"{"bio":"a\u0000b"}"#.into(), 422, "invalid_fields", Some("bio")),
        ("POST", "/v1/events", t, json, r#"{"kind":"k","payload":{"a":"\u0000"}}"#.into(), 422, "invalid_fields", Some("payload")),
        ("PUT", "/v1/me/prefs", t, json, r#"{"locale":"en","timezone":"UTC","theme":"neon","email_opt_in":true}"#.into(), 422, "invalid_fields", Some("theme")),
        ("PUT", "/v1/me/prefs", t, json, r#"{"locale":"en","timezone":"UTC","theme":"dark"}"#.into(), 422, "invalid_fields", Some("email_opt_in")),
        ("PUT", "/v1/me/prefs", t, json, r#"{"locale":"en","timezone":"UTC","theme":"dark","email_opt_in":"yes"}"#.into(), 422, "invalid_fields", Some("email_opt_in")),
        ("GET", "/v1/users/abc", t, json, "".into(), 400, "invalid_id", None),
        ("GET", "/v1/users/0", t, json, "".into(), 400, "invalid_id", None),
        ("GET", "/v1/users/99999999999999999999", t, json, "".into(), 400, "invalid_id", None),
        ("GET", "/v1/users?ids=1,x,3", t, json, "".into(), 400, "invalid_id", None),
        ("GET", "/v1/users?ids=", t, json, "".into(), 422, "invalid_fields", Some("ids")),
        ("GET", "/v1/users", t, json, "".into(), 422, "invalid_fields", Some("ids")),
        ("GET", &too_many_path, t, json, "".into(), 422, "invalid_fields", Some("ids")),
        ("POST", "/v1/events", t, json, big_payload, 413, "payload_too_large", None),
        ("POST", "/v1/events", t, json, r#"{"kind":"Bad Kind","payload":{}}"#.into(), 422, "invalid_fields", Some("kind")),
        ("POST", "/v1/events", t, json, r#"{"kind":"k"}"#.into(), 422, "invalid_fields", Some("payload")),
        ("GET", "/v1/me/events?limit=0", t, json, "".into(), 422, "invalid_fields", Some("limit")),
        ("GET", "/v1/me/events?limit=101", t, json, "".into(), 422, "invalid_fields", Some("limit")),
        ("GET", "/v1/me/events?limit=ten", t, json, "".into(), 400, "invalid_query", None),
        ("GET", "/v1/me/events?before=garbage!", t, json, "".into(), 400, "invalid_cursor", None),
        ("DELETE", "/v1/me", t, json, "".into(), 405, "method_not_allowed", None),
    ];
    for (method, path, token, content_type, body, status, code, field) in &cases {
        let response = raw(&server, method, path, *token, content_type, body);
        let what = format!("{method} {path} {}: {}", &body[..body.len().min(80)], response.text());
        assert_eq!(response.status, *status, "{what}");
        assert_eq!(response.error_code(), *code, "{what}");
        if let Some(field) = field {
            let fields = response.json()["error"]["fields"].clone();
            let named = fields.as_array().unwrap().iter().any(|f| f["field"] == *field);
            assert!(named, "field {field} not named: {what}");
        }
        if *status == 401 {
            assert!(response.header("www-authenticate").is_some(), "{what}");
        }
    }
    // A body over http.body_bytes_max is refused before it is read.
    let huge = format!("{{\"kind\":\"k\",\"payload\":\"{}\"}}", "x".repeat(70_000));
    let response = raw(&server, "POST", "/v1/events", t, json, &huge);
    assert_eq!(
        (response.status, response.error_code().as_str()),
        (413, "body_too_large")
    );
    // Registering the same email twice, in another case: 409.
    let email = common::unique_email("twice");
    let register = |email: &str| {
        server.call(
            "POST",
            "/v1/auth/register",
            None,
            Some(&json!({"email": email, "password": "12345678", "name": "T"})),
        )
    };
    assert_eq!(register(&email).status, 201);
    let taken = register(&email.to_uppercase());
    assert_eq!((taken.status, taken.error_code().as_str()), (409, "email_taken"));
    // Still healthy, and no handler panicked.
    let metrics = server.get("/metrics").text();
    assert_eq!(common::metric_sum(&metrics, "percore_handler_panics_total", ""), 0);
    assert_eq!(
        common::metric_sum(&metrics, "percore_http_requests_total", "status=\"500\""),
        0
    );
}
