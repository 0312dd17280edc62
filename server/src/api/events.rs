//! Events: a user's activity log. Written one at a time, read newest first by keyset
//! pagination on `events(user_id, created_at DESC, id DESC)`: the cursor is the last row's
//! (created_at, id), so every page is one index range scan, however deep, and rows written
//! meanwhile never shift a page (as OFFSET would). The cursor reads `<micros>.<id>`: both
//! values are in the page anyway, and a plain shape can be stated exactly in the OpenAPI
//! document.

use super::auth::{self, Principal};
use super::identity::timestamp;
use super::session::{self, Checked, SessionColumns, SessionRead};
use super::{Answer, Ctx, extract, write_json};
use crate::http::error::FieldError;
use crate::http::{ApiError, Reply};
use crate::store::Stmt;
use crate::store::cache::{Cached, EventPage, Key, PageEvent, bus};
use crate::store::typed_row::typed_row;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const KIND_CHARS_MAX: usize = 64;
const PAGE_DEFAULT: i64 = 20;
/// The cursor of the first page: after every event that can exist (9999-12-31).
const NEWEST_MICROS: i64 = 253_402_300_799_000_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewEvent<'a> {
    kind: String,
    #[serde(borrow)]
    payload: &'a RawValue,
}

#[derive(Serialize)]
struct Event<'a> {
    id: i64,
    kind: String,
    payload: &'a RawValue,
    created_at: String,
}

pub async fn post_event(ctx: &Ctx<'_>, principal: &Principal, body: &mut Vec<u8>) -> Answer {
    let input: NewEvent = extract::json(ctx.request)?;
    let payload_max = ctx.shard.config().api.event_payload_bytes_max;
    if input.payload.get().len() > payload_max {
        return Err(ApiError::new(
            413,
            "payload_too_large",
            format!("payload must be at most {payload_max} bytes of JSON"),
        ));
    }
    let kind_ok = (1..=KIND_CHARS_MAX).contains(&input.kind.len())
        && input
            .kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.:-".contains(&b));
    if !kind_ok {
        return Err(ApiError::invalid_fields(vec![FieldError::new(
            "kind",
            "invalid",
            format!("must be 1 to {KIND_CHARS_MAX} of a-z, 0-9, _ . : -"),
        )]));
    }
    if holds_nul(input.payload) {
        return Err(ApiError::invalid_fields(vec![FieldError::new(
            "payload",
            "invalid",
            "strings and keys must not contain \\u0000, which Postgres's jsonb cannot store",
        )]));
    }
    let webhooks = super::job_queue(ctx.shard, "webhook");
    let max_attempts = webhooks.max_attempts() as i32;
    let rows = ctx
        .sql
        .query(
            Stmt::EventInsert,
            &[
                &principal.token_hash(),
                &input.kind,
                &input.payload.get(),
                &webhooks.name,
                &max_attempts,
            ],
        )
        .await?;
    let row = InsertedEvent::from_row(rows.first().ok_or_else(auth::invalid_token)?);
    for _ in 0..row.deliveries_enqueued {
        webhooks.wake();
    }
    bus::invalidate(&ctx.shard.store, &[Key::Events(row.user_id)]).await;
    let event = Event {
        id: row.id,
        kind: input.kind,
        payload: input.payload,
        created_at: timestamp(row.created_at),
    };
    write_json(body, &event);
    Ok(Reply::json(201))
}

typed_row! {
    /// What `EventInsert` returns.
    struct InsertedEvent {
        id: i64,
        created_at: SystemTime,
        user_id: i64,
        deliveries_enqueued: i64,
    }
}

pub async fn my_events(ctx: &Ctx<'_>, principal: &Principal, body: &mut Vec<u8>) -> Answer {
    let page_max = i64::from(ctx.shard.config().api.events_page_max);
    let limit = extract::limit(ctx.request, PAGE_DEFAULT, page_max)?;
    // An empty `before` is the first page, as if absent.
    let before = match ctx.request.query_param("before").filter(|c| !c.is_empty()) {
        Some(cursor) => Some(decode_cursor(&cursor)?),
        None => None,
    };
    let (before_micros, before_id) = before.unwrap_or((NEWEST_MICROS, i64::MAX));
    let before_time = UNIX_EPOCH + Duration::from_micros(before_micros as u64);
    // One row more than asked tells whether another page exists.
    let fetch = limit + 1;
    let page = Checked {
        stmt: Stmt::EventsPage,
        params: &[&principal.token_hash(), &before_time, &before_id, &fetch],
        fills: &[],
        // The session's user, whose events these are.
        shown: |rows| {
            rows.first()
                .map(|row| Key::Events(SessionColumns::of(row).user_id))
                .into_iter()
                .collect()
        },
    };
    if before.is_some() {
        let read = session::checked_read(ctx, principal, page).await?;
        render_page(body, &page_events(&read.rows)?, limit as usize, false);
        return Ok(Reply::json(200));
    }
    // The first page comes from the cache when the session is known there: the newest
    // `events_page_max` events are kept, and any `limit` is a slice of them.
    let newest = |user_id: i64| async move {
        let fetch = page_max + 1;
        let rows = (ctx.sql)
            .query_replica(&[Key::Events(user_id)], Stmt::EventsNewestById, &[&user_id, &fetch])
            .await?;
        let mut events = page_events(&rows)?;
        let more = events.len() as i64 > page_max;
        events.truncate(page_max as usize);
        Ok(Some(Cached::Events(Rc::new(EventPage { events, more }))))
    };
    match session::cached_or_checked(ctx, principal, Key::Events, newest, page).await? {
        SessionRead::Cached(Some(Cached::Events(page))) => {
            render_page(body, &page.events, limit as usize, page.more);
        }
        SessionRead::Cached(_) => return Err(ApiError::internal()),
        SessionRead::Checked(read) => render_page(body, &page_events(&read.rows)?, limit as usize, false),
    }
    Ok(Reply::json(200))
}

typed_row! {
    /// An `EventsNewestById` or `EventsPage` row; NULL columns in the one row of an empty
    /// page (which then ends with the session).
    struct EventRow {
        id: Option<i64>,
        kind: Option<String>,
        payload: Option<String>,
        created_at: Option<SystemTime>,
    }
}

/// Events from (id, kind, payload, created_at) rows, newest first, each serialized once;
/// the all-NULL row of an empty `EventsPage` is skipped.
fn page_events(rows: &percore_pg::Rows) -> Result<Vec<PageEvent>, crate::store::StoreError> {
    let mut events = Vec::with_capacity(rows.len());
    for row in rows {
        let row = EventRow::from_row(row);
        let (Some(id), Some(kind), Some(payload), Some(created_at)) = (row.id, row.kind, row.payload, row.created_at)
        else {
            continue;
        };
        let payload = RawValue::from_string(payload).map_err(|_| crate::store::StoreError::Failed)?;
        let mut json = Vec::with_capacity(64 + payload.get().len());
        write_json(
            &mut json,
            &Event {
                id,
                kind,
                payload: &payload,
                created_at: timestamp(created_at),
            },
        );
        events.push(PageEvent {
            id,
            created_at_micros: micros(created_at),
            json: json.into(),
        });
    }
    // Newest first by (created_at, id); already so, unless the plan changes.
    events.sort_by_key(|e| std::cmp::Reverse((e.created_at_micros, e.id)));
    Ok(events)
}

/// `{"events":[…],"next":…}` with at most `limit` events; `next` when more exist, here or
/// beyond (`more`).
fn render_page(body: &mut Vec<u8>, events: &[PageEvent], limit: usize, more: bool) {
    let shown = &events[..limit.min(events.len())];
    body.extend_from_slice(b"{\"events\":[");
    for (i, event) in shown.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&event.json);
    }
    body.extend_from_slice(b"],\"next\":");
    match shown.last().filter(|_| events.len() > shown.len() || more) {
        Some(last) => write_json(body, &format!("{}.{}", last.created_at_micros, last.id)),
        None => body.extend_from_slice(b"null"),
    }
    body.push(b'}');
}

fn micros(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

/// Whether any string or key in the JSON holds U+0000.
fn holds_nul(payload: &RawValue) -> bool {
    fn walk(value: &serde_json::Value) -> bool {
        match value {
            serde_json::Value::String(s) => s.contains('\0'),
            serde_json::Value::Array(items) => items.iter().any(walk),
            serde_json::Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || walk(v)),
            _ => false,
        }
    }
    // Cheap test first: without a backslash escape there can be no NUL (raw control
    // characters are not valid JSON).
    payload.get().contains("\\u") && serde_json::from_str(payload.get()).is_ok_and(|v| walk(&v))
}

fn decode_cursor(cursor: &str) -> Result<(i64, i64), ApiError> {
    let invalid = || {
        ApiError::new(
            400,
            "invalid_cursor",
            "before must be a cursor from a previous page's next",
        )
    };
    let (micros, id) = cursor.split_once('.').ok_or_else(invalid)?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(micros) || !digits(id) {
        return Err(invalid());
    }
    let micros: i64 = micros.parse().map_err(|_| invalid())?;
    let id: i64 = id.parse().map_err(|_| invalid())?;
    if !(0..=NEWEST_MICROS).contains(&micros) || id < 1 {
        return Err(invalid());
    }
    Ok((micros, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_is_found_in_strings_and_keys_but_not_in_escaped_backslashes() {
        let raw = |text: &str| RawValue::from_string(text.to_string()).unwrap();
        assert!(holds_nul(&raw(r#"{"a":"x\u0000"}"#)));
        assert!(holds_nul(&raw(r#"[{"k\u0000":1}]"#)));
        assert!(
            !holds_nul(&raw(r#"{"a":"\\u0000"}"#)),
            "an escaped backslash then u0000"
        );
        assert!(!holds_nul(&raw(r#"{"a":"\u00e9"}"#)));
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        assert_eq!(
            decode_cursor("1764000000123456.42").unwrap(),
            (1_764_000_000_123_456, 42)
        );
        for bad in [
            "",
            "x",
            "1",
            "1.0",
            "-1.5",
            "+1.5",
            "1.5.",
            "1.-5",
            "999999999999999999.1",
        ] {
            assert_eq!(decode_cursor(bad).unwrap_err().status, 400, "{bad:?}");
        }
    }
}
