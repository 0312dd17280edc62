//! Every error a client can get, and the one table mapping each to a status, a stable
//! machine-readable code and the JSON body `{"error":{"code":"…","message":"…"}}`.

use super::response::{JSON, Reply};
use std::borrow::Cow;

/// Errors found while reading a request off the wire. Each closes the connection: after a
/// framing error we can no longer tell where the next request would start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    BadRequest(&'static str),
    UriTooLong,
    HeadTooLarge,
    BodyTooLarge,
    VersionNotSupported,
    NotImplemented(&'static str),
    ExpectationFailed,
    /// The head did not arrive within `header_read_timeout_ms` (408, then close).
    HeadTimeout,
    /// The body did not arrive within `body_read_timeout_ms` (408, then close).
    BodyTimeout,
}

/// An error a handler returns; rendered by `render` below.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: Cow<'static, str>,
    /// Seconds for `Retry-After` (503 and 429).
    pub retry_after_s: Option<u64>,
    /// Per-field problems of a 422; empty otherwise (and then allocation-free).
    pub fields: Vec<FieldError>,
}

/// One field's problem in a 422 body: `{"field":"email","code":"invalid","message":"…"}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    pub field: Cow<'static, str>,
    pub code: &'static str,
    pub message: Cow<'static, str>,
}

impl FieldError {
    pub fn new(field: impl Into<Cow<'static, str>>, code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        FieldError {
            field: field.into(),
            code,
            message: message.into(),
        }
    }
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after_s: None,
            fields: Vec::new(),
        }
    }

    /// 422 listing every field that failed, so a client can fix them all at once.
    pub fn invalid_fields(fields: Vec<FieldError>) -> Self {
        debug_assert!(!fields.is_empty());
        let names: Vec<&str> = fields.iter().map(|f| f.field.as_ref()).collect();
        ApiError {
            message: format!("invalid fields: {}", names.join(", ")).into(),
            fields,
            ..ApiError::new(422, "invalid_fields", "")
        }
    }

    /// 429 with `Retry-After`.
    pub fn too_many(message: impl Into<Cow<'static, str>>, retry_after_s: u64) -> Self {
        ApiError {
            retry_after_s: Some(retry_after_s),
            ..ApiError::new(429, "too_many_requests", message)
        }
    }

    pub fn unavailable(code: &'static str, message: impl Into<Cow<'static, str>>, retry_after_s: u64) -> Self {
        ApiError {
            retry_after_s: Some(retry_after_s),
            ..ApiError::new(503, code, message)
        }
    }

    pub fn internal() -> Self {
        ApiError::new(500, "internal_error", "the server failed to handle this request")
    }
}

impl From<HttpError> for ApiError {
    fn from(error: HttpError) -> Self {
        let (status, code, message): (u16, &'static str, &'static str) = match error {
            HttpError::BadRequest(why) => (400, "bad_request", why),
            HttpError::UriTooLong => (414, "uri_too_long", "request line exceeds http.request_line_bytes_max"),
            HttpError::HeadTooLarge => (
                431,
                "headers_too_large",
                "request head exceeds http.head_bytes_max or http.headers_count_max",
            ),
            HttpError::BodyTooLarge => (413, "body_too_large", "request body exceeds http.body_bytes_max"),
            HttpError::VersionNotSupported => (
                505,
                "http_version_not_supported",
                "only HTTP/1.0 and HTTP/1.1 are served",
            ),
            HttpError::NotImplemented(why) => (501, "not_implemented", why),
            HttpError::ExpectationFailed => (417, "expectation_failed", "only Expect: 100-continue is supported"),
            HttpError::HeadTimeout => (408, "request_timeout", "the request head did not arrive in time"),
            HttpError::BodyTimeout => (408, "request_timeout", "the request body did not arrive in time"),
        };
        ApiError::new(status, code, message)
    }
}

/// The one place an `ApiError` becomes a response: its JSON body into `body`, and the head.
pub fn error_reply(error: &ApiError, body: &mut Vec<u8>) -> Reply {
    render(error, body);
    let mut reply = Reply::new(error.status, JSON);
    if let Some(seconds) = error.retry_after_s {
        reply = reply.with_header("Retry-After", seconds.to_string());
    }
    if error.status == 401 {
        // RFC 9110 §11.6.1: a 401 names the scheme; RFC 6750 §3 adds why a token failed.
        let challenge = if error.code == "invalid_token" {
            r#"Bearer realm="percore", error="invalid_token""#
        } else {
            r#"Bearer realm="percore""#
        };
        reply = reply.with_header("WWW-Authenticate", challenge);
    }
    reply
}

/// Writes the JSON error body into `out`.
fn render(error: &ApiError, out: &mut Vec<u8>) {
    #[derive(serde::Serialize)]
    struct Body<'a> {
        error: Inner<'a>,
    }
    #[derive(serde::Serialize)]
    struct Inner<'a> {
        code: &'a str,
        message: &'a str,
        #[serde(skip_serializing_if = "<[FieldError]>::is_empty")]
        fields: &'a [FieldError],
    }
    let body = Body {
        error: Inner {
            code: error.code,
            message: &error.message,
            fields: &error.fields,
        },
    };
    serde_json::to_writer(out, &body).expect("serializing two strings to a Vec cannot fail");
}

/// The reason phrase for every status percore sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}
