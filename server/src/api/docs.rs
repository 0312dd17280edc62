//! `GET /docs`: the API reference as one HTML page, built from `openapi.json` (the same
//! document `/openapi.json` serves) the first time it is asked for, then served as is.
//! No script and nothing fetched from elsewhere: the page's Content-Security-Policy forbids
//! both, so it renders the same offline, behind a proxy, or from a locked-down network.
//!
//! Runs on a shard: building the page is pure CPU (about a millisecond, once per process).

use super::Answer;
use crate::http::Reply;
use askama::Template;
use serde_json::Value;
use std::sync::OnceLock;

/// What the page may load: its own inline styles, nothing else.
const CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub fn docs(body: &mut Vec<u8>) -> Answer {
    static PAGE: OnceLock<String> = OnceLock::new();
    let page = PAGE.get_or_init(|| {
        let spec: Value = serde_json::from_str(super::OPENAPI_JSON).expect("openapi.json is JSON (a test reads it)");
        Page::of(&spec).render().expect("rendering into a String cannot fail")
    });
    body.extend_from_slice(page.as_bytes());
    Ok(Reply::new(200, "text/html; charset=utf-8")
        .with_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        .with_header("X-Content-Type-Options", "nosniff"))
}

#[derive(Template)]
#[template(path = "docs.html")]
struct Page {
    title: String,
    version: String,
    description: String,
    auth: String,
    groups: Vec<Group>,
    error_summary: String,
    errors: Vec<ErrorCode>,
    field_codes: Vec<ErrorCode>,
    schemas: Vec<Schema>,
}

/// Operations under one path segment (`/v1/jobs…` → "jobs").
struct Group {
    name: String,
    operations: Vec<Operation>,
}

struct Operation {
    id: String,
    method: String,
    path: String,
    summary: String,
    description: String,
    secured: bool,
    parameters: Vec<Parameter>,
    body: Option<Content>,
    responses: Vec<Response>,
}

struct Parameter {
    name: String,
    location: String,
    required: bool,
    kind: Vec<Piece>,
    notes: String,
    description: String,
}

/// A body: its media type and the shape of what it carries.
struct Content {
    media_type: String,
    kind: Vec<Piece>,
    rows: Vec<Row>,
}

struct Response {
    status: String,
    description: String,
    /// An error status: the page's error table lists its codes.
    error: bool,
    headers: Vec<String>,
    content: Option<Content>,
}

struct ErrorCode {
    /// The first code of its status: the row carries the status's anchor.
    first_of_status: bool,
    status: String,
    code: String,
    meaning: String,
}

struct Schema {
    name: String,
    description: String,
    kind: Vec<Piece>,
    rows: Vec<Row>,
}

/// One line of a schema table: a field (by its path from the top), or the heading of one
/// alternative of a `oneOf`.
struct Row {
    heading: bool,
    name: String,
    depth: usize,
    kind: Vec<Piece>,
    required: bool,
    notes: String,
    description: String,
}

/// A bit of a type's description, linked when it names a schema.
struct Piece {
    text: String,
    href: Option<String>,
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_string()
}

impl Page {
    fn of(spec: &Value) -> Page {
        let codes = &spec["x-error-codes"];
        let listed = |key: &str| -> Vec<ErrorCode> {
            let entries = codes[key].as_array().map(Vec::as_slice).unwrap_or_default();
            let status = |c: &Value| c["status"].as_u64().map(|s| s.to_string()).unwrap_or_default();
            entries
                .iter()
                .enumerate()
                .map(|(i, c)| ErrorCode {
                    first_of_status: i == 0 || status(&entries[i - 1]) != status(c),
                    status: status(c),
                    code: text(&c["code"]),
                    meaning: text(&c["meaning"]),
                })
                .collect()
        };
        let schemas = spec["components"]["schemas"].as_object().into_iter().flatten();
        Page {
            title: text(&spec["info"]["title"]),
            version: text(&spec["info"]["version"]),
            description: text(&spec["info"]["description"]),
            auth: text(&spec["components"]["securitySchemes"]["bearer"]["description"]),
            groups: groups(spec),
            error_summary: text(&codes["description"]),
            errors: listed("codes"),
            field_codes: listed("field_codes"),
            schemas: schemas
                .map(|(name, schema)| Schema {
                    name: name.clone(),
                    description: text(&schema["description"]),
                    kind: kind(schema),
                    rows: rows_of(schema),
                })
                .collect(),
        }
    }
}

fn groups(spec: &Value) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for (path, item) in spec["paths"].as_object().into_iter().flatten() {
        let name = match path.strip_prefix("/v1/") {
            Some(rest) => rest.split('/').next().unwrap_or(rest).to_string(),
            None => "operations".to_string(),
        };
        let at = match groups.iter().position(|g| g.name == name) {
            Some(at) => at,
            None => {
                groups.push(Group {
                    name,
                    operations: Vec::new(),
                });
                groups.len() - 1
            }
        };
        for (method, operation) in item.as_object().into_iter().flatten() {
            groups[at].operations.push(operation_of(spec, path, method, operation));
        }
    }
    groups
}

fn operation_of(spec: &Value, path: &str, method: &str, operation: &Value) -> Operation {
    let parameters = operation["parameters"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let responses = operation["responses"].as_object().into_iter().flatten();
    Operation {
        id: text(&operation["operationId"]),
        method: method.to_uppercase(),
        path: path.to_string(),
        summary: text(&operation["summary"]),
        description: text(&operation["description"]),
        secured: operation.get("security").is_some(),
        parameters: parameters
            .iter()
            .map(|p| Parameter {
                name: text(&p["name"]),
                location: text(&p["in"]),
                required: p["required"].as_bool().unwrap_or(false),
                kind: kind(&p["schema"]),
                notes: notes(&p["schema"]),
                description: text(&p["description"]),
            })
            .collect(),
        body: content_of(&operation["requestBody"]["content"]),
        responses: responses
            .map(|(status, response)| {
                let response = resolve(spec, response);
                let headers = response["headers"].as_object().into_iter().flatten();
                Response {
                    status: status.clone(),
                    description: text(&response["description"]),
                    error: status.starts_with('4') || status.starts_with('5'),
                    headers: headers.map(|(name, _)| name.clone()).collect(),
                    content: content_of(&response["content"]),
                }
            })
            .collect(),
    }
}

/// A `$ref` to `#/components/…`, followed once.
fn resolve<'a>(spec: &'a Value, value: &'a Value) -> &'a Value {
    match value["$ref"].as_str().and_then(|r| r.strip_prefix("#/")) {
        Some(pointer) => spec.pointer(&format!("/{pointer}")).unwrap_or(value),
        None => value,
    }
}

fn content_of(content: &Value) -> Option<Content> {
    let (media_type, media) = content.as_object()?.iter().next()?;
    let schema = &media["schema"];
    Some(Content {
        media_type: media_type.clone(),
        kind: kind(schema),
        rows: rows_of(schema),
    })
}

fn schema_name(reference: &str) -> &str {
    reference.rsplit('/').next().unwrap_or(reference)
}

/// What a schema is, in a few words: `string (email)`, `array of Job`, `"pdf"`.
fn kind(schema: &Value) -> Vec<Piece> {
    let plain = |text: String| vec![Piece { text, href: None }];
    if let Some(reference) = schema["$ref"].as_str() {
        let name = schema_name(reference);
        return vec![Piece {
            text: name.to_string(),
            href: Some(format!("#schema-{name}")),
        }];
    }
    if let Some(constant) = schema.get("const") {
        return plain(constant.to_string());
    }
    if let Some(values) = schema["enum"].as_array() {
        let values: Vec<String> = values.iter().map(Value::to_string).collect();
        return plain(format!("one of {}", values.join(", ")));
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(variants) = schema[key].as_array() {
            let mut pieces = Vec::new();
            for (i, variant) in variants.iter().enumerate() {
                if i > 0 {
                    pieces.push(Piece {
                        text: " | ".into(),
                        href: None,
                    });
                }
                pieces.extend(kind(variant));
            }
            return pieces;
        }
    }
    let type_name = match &schema["type"] {
        Value::String(name) => name.clone(),
        Value::Array(names) => names.iter().map(text).collect::<Vec<_>>().join(" | "),
        _ if schema.get("properties").is_some() => "object".into(),
        _ => "any JSON".into(),
    };
    if type_name == "array" {
        let mut pieces = plain("array of ".into());
        pieces.extend(kind(&schema["items"]));
        return pieces;
    }
    if type_name == "object" && schema.get("properties").is_none() && schema["additionalProperties"].is_object() {
        let mut pieces = plain("object of ".into());
        pieces.extend(kind(&schema["additionalProperties"]));
        return pieces;
    }
    match schema["format"].as_str() {
        Some(format) => plain(format!("{type_name} ({format})")),
        None => plain(type_name),
    }
}

/// A schema's limits in words: `1-100 characters`, `at most 50 items`, `default 20`.
fn notes(schema: &Value) -> String {
    // Integers as integers: i64::MAX through f64 would read 9223372036854776000.
    let number = |key: &str| {
        let value = &schema[key];
        value
            .as_i64()
            .map(|n| n.to_string())
            .or_else(|| value.as_f64().map(|n| n.to_string()))
    };
    let mut notes = Vec::new();
    let pairs = [
        ("minLength", "maxLength", "characters"),
        ("minimum", "maximum", ""),
        ("minItems", "maxItems", "items"),
    ];
    for (low, high, unit) in pairs {
        let range = match (number(low), number(high)) {
            (Some(low), Some(high)) => format!("{low} to {high}"),
            (Some(low), None) => format!("at least {low}"),
            (None, Some(high)) => format!("at most {high}"),
            (None, None) => continue,
        };
        notes.push(format!("{range} {unit}").trim_end().to_string());
    }
    if let Some(pattern) = schema["pattern"].as_str() {
        notes.push(format!("matches {pattern}"));
    }
    if let Some(default) = schema.get("default") {
        notes.push(format!("default {default}"));
    }
    notes.join("; ")
}

/// The fields of an object schema, nested objects and the alternatives of a `oneOf`
/// flattened into rows (`params.subject`, `fields[].code`).
fn rows_of(schema: &Value) -> Vec<Row> {
    let mut rows = Vec::new();
    push_rows(schema, "", 0, &mut rows);
    rows
}

fn push_rows(schema: &Value, prefix: &str, depth: usize, rows: &mut Vec<Row>) {
    const DEPTH_MAX: usize = 6;
    if depth > DEPTH_MAX {
        return;
    }
    if let Some(variants) = schema["oneOf"].as_array() {
        for (i, variant) in variants.iter().enumerate() {
            if variant.get("properties").is_none() {
                continue;
            }
            let tag = variant["properties"].as_object().and_then(|p| {
                p.iter()
                    .find_map(|(name, s)| s.get("const").map(|c| format!("{name} = {c}")))
            });
            rows.push(Row {
                heading: true,
                name: tag.unwrap_or_else(|| format!("alternative {}", i + 1)),
                depth,
                kind: Vec::new(),
                required: false,
                notes: String::new(),
                description: text(&variant["description"]),
            });
            push_rows(variant, prefix, depth + 1, rows);
        }
        return;
    }
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for (name, field) in schema["properties"].as_object().into_iter().flatten() {
        let path = format!("{prefix}{name}");
        rows.push(Row {
            heading: false,
            name: path.clone(),
            depth,
            kind: kind(field),
            required: required.contains(&name.as_str()),
            notes: notes(field),
            description: text(&field["description"]),
        });
        if field.get("properties").is_some() || field.get("oneOf").is_some() {
            push_rows(field, &format!("{path}."), depth + 1, rows);
        } else if field["items"].get("properties").is_some() {
            push_rows(&field["items"], &format!("{path}[]."), depth + 1, rows);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_escapes_text_and_flattens_nested_fields_and_alternatives() {
        let spec: Value = serde_json::from_str(crate::api::OPENAPI_JSON).unwrap();
        let page = Page::of(&spec).render().unwrap();
        // Text from the document is escaped, never markup.
        assert!(page.contains("{&#34;error&#34;:{&#34;code&#34;"));
        assert!(!page.contains("<script"));
        // The Error schema's nested list of field errors, and the job kinds as alternatives.
        assert!(
            page.contains(">error.fields[].code <span class=\"req\">"),
            "nested rows"
        );
        assert!(page.contains(">kind = &#34;email&#34; </td>"), "oneOf alternatives");
        // Integer bounds print exactly.
        assert!(page.contains("1 to 9223372036854775807"), "integer limits");
    }
}
