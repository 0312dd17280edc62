//! Turning request bytes into typed input, with the error every bad input deserves: 415 for
//! a body that is not JSON by its Content-Type, 400 `invalid_json` for malformed JSON, 422
//! naming the field for unknown fields, missing fields and wrong types, 400 for ids and
//! query values that are not numbers.

use crate::http::error::FieldError;
use crate::http::{ApiError, Request};
use serde::Deserialize;

/// Parses the body as JSON into `T`, which should deny unknown fields.
pub fn json<'a, T: Deserialize<'a>>(request: &Request<'a>) -> Result<T, ApiError> {
    let content_type = request.header("content-type").unwrap_or_default();
    let media_type = content_type
        .split(|b| *b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    if !media_type.eq_ignore_ascii_case(b"application/json") {
        return Err(ApiError::new(
            415,
            "unsupported_media_type",
            "send the body as Content-Type: application/json",
        ));
    }
    json_body(request.body)
}

/// Parses `body` as the JSON object `T`, with `json`'s errors (its content-type check aside).
pub fn json_body<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    // serde would also read a struct from an array of its fields; bodies are objects.
    if body.trim_ascii_start().first() != Some(&b'{') {
        serde_json::from_slice::<serde::de::IgnoredAny>(body).map_err(|e| json_error(".", e))?;
        return Err(ApiError::invalid_fields(vec![FieldError::new(
            "",
            "invalid_type",
            "the body must be a JSON object",
        )]));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        // Malformed JSON is a 400 even where a field went wrong before the syntax did.
        if let Err(syntax) = serde_json::from_slice::<serde::de::IgnoredAny>(body) {
            return json_error(".", syntax);
        }
        let path = e.path().to_string();
        json_error(&path, e.into_inner())
    })?;
    deserializer.end().map_err(|e| json_error(".", e))?;
    Ok(value)
}

fn json_error(path: &str, error: serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    match error.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            ApiError::new(400, "invalid_json", format!("the body is not valid JSON: {error}"))
        }
        Category::Data => {
            let message = error.to_string();
            // serde reports missing and unknown fields at the parent; name the field itself.
            let quoted = message
                .split('`')
                .nth(1)
                .filter(|_| message.starts_with("missing field") || message.starts_with("unknown field"));
            // serde_path_to_error has already stepped into an unknown key, not a missing one.
            let field = match (quoted, path) {
                (Some(name), ".") => name.to_string(),
                (Some(name), path) if path == name || path.ends_with(&format!(".{name}")) => path.to_string(),
                (Some(name), parent) => format!("{parent}.{name}"),
                (None, ".") => String::new(),
                (None, path) => path.to_string(),
            };
            let why = strip_position(&message);
            // Each code written out at its call: the openapi test finds the codes this way.
            let problem = if message.starts_with("missing field") {
                FieldError::new(field, "required", why)
            } else if message.starts_with("unknown field") {
                FieldError::new(field, "unknown", why)
            } else {
                FieldError::new(field, "invalid_type", why)
            };
            ApiError::invalid_fields(vec![problem])
        }
    }
}

/// serde_json appends " at line 1 column 9"; a field error does not need it.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// A user id: a positive 64-bit integer in decimal. 400 otherwise.
pub fn user_id(text: &str) -> Result<i64, ApiError> {
    id(text, "user")
}

/// The id of a `what` (job, webhook…) in a path: a positive 64-bit decimal integer.
pub fn id(text: &str, what: &str) -> Result<i64, ApiError> {
    match text.parse::<i64>() {
        Ok(id) if id > 0 && text.bytes().all(|b| b.is_ascii_digit()) => Ok(id),
        _ => Err(ApiError::new(
            400,
            "invalid_id",
            format!("{:?} is not a {what} id (a positive integer)", truncate(text)),
        )),
    }
}

/// A query parameter as a number; `None` when absent, 400 when present but not a number.
pub fn query_number(request: &Request<'_>, key: &'static str) -> Result<Option<i64>, ApiError> {
    let Some(text) = request.query_param(key) else {
        return Ok(None);
    };
    text.parse::<i64>().map(Some).map_err(|_| {
        ApiError::new(
            400,
            "invalid_query",
            format!("query parameter {key}={:?} is not a number", truncate(&text)),
        )
    })
}

/// The `limit` query parameter: `default` when absent, 422 outside 1..=`max`.
pub fn limit(request: &Request<'_>, default: i64, max: i64) -> Result<i64, ApiError> {
    let limit = query_number(request, "limit")?.unwrap_or(default);
    if !(1..=max).contains(&limit) {
        return Err(ApiError::invalid_fields(vec![FieldError::new(
            "limit",
            "range",
            format!("must be 1 to {max}"),
        )]));
    }
    Ok(limit)
}

/// Echoing untrusted input into a message: at most this much of it.
fn truncate(text: &str) -> &str {
    const SHOWN_CHARS_MAX: usize = 40;
    match text.char_indices().nth(SHOWN_CHARS_MAX) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

/// For optional nullable fields (PATCH): absent → `None`, null → `Some(None)`.
pub fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_positive_decimal_integers() {
        assert_eq!(user_id("42").unwrap(), 42);
        for bad in ["0", "-1", "+1", "abc", "1.5", "", "99999999999999999999", " 1"] {
            assert_eq!(user_id(bad).unwrap_err().status, 400, "{bad:?}");
        }
    }

    #[test]
    fn data_errors_name_the_field() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Input {
            name: String,
        }
        let fail = |text: &str| -> ApiError {
            let mut de = serde_json::Deserializer::from_str(text);
            let e = serde_path_to_error::deserialize::<_, Input>(&mut de).unwrap_err();
            let path = e.path().to_string();
            json_error(&path, e.into_inner())
        };
        let missing = fail("{}");
        assert_eq!((missing.status, missing.fields[0].field.as_ref()), (422, "name"));
        assert_eq!(missing.fields[0].code, "required");
        let unknown = fail(r#"{"name":"a","x":1}"#);
        assert_eq!((unknown.status, unknown.fields[0].field.as_ref()), (422, "x"));
        let wrong = fail(r#"{"name":1}"#);
        assert_eq!((wrong.status, wrong.fields[0].field.as_ref()), (422, "name"));
        assert_eq!(wrong.fields[0].code, "invalid_type");
        assert_eq!(fail("{").status, 400);
        assert_eq!(fail("[1]").status, 422);
    }
}
