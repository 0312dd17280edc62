//! Webhook subscriptions: `POST /v1/webhooks {url, events}` subscribes to event kinds (or
//! `*`); every matching `POST /v1/events` then enqueues one delivery job per subscription
//! in the same transaction as the event. Deliveries run on the job workers (signed,
//! retried, logged: see `percore_workers::kinds::webhook`).
//!
//! URLs naming a non-public address literally (or `localhost`) are refused here unless
//! `[webhooks] allow_private`; names are checked again after DNS, at delivery.

use super::auth::{self, Principal};
use super::events::KIND_CHARS_MAX;
use super::identity::timestamp;
use super::{Answer, Ctx, extract, write_json};
use crate::http::error::FieldError;
use crate::http::{ApiError, Reply};
use crate::store::Stmt;
use crate::store::typed_row::typed_row;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::time::SystemTime;

pub const URL_BYTES_MAX: usize = 2048;
pub const EVENTS_MAX: usize = 32;
const DELIVERIES_DEFAULT: i64 = 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewWebhook {
    url: String,
    events: Vec<String>,
}

#[derive(Serialize)]
struct Webhook {
    id: i64,
    url: String,
    events: Vec<String>,
    /// Only in the answer to the POST that created it.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
    created_at: String,
}

#[derive(Serialize)]
struct Delivery {
    id: i64,
    /// The job, and the `Percore-Delivery` header every attempt carried.
    delivery_id: i64,
    attempt: i32,
    status_code: Option<i32>,
    error: Option<String>,
    duration_ms: i32,
    attempted_at: String,
}

fn check_url(text: &str, allow_private: bool) -> Result<(), FieldError> {
    let invalid = |why: String| FieldError::new("url", "invalid", why);
    if text.len() > URL_BYTES_MAX {
        return Err(invalid(format!("must be at most {URL_BYTES_MAX} bytes")));
    }
    let url = url::Url::parse(text).map_err(|e| invalid(format!("is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("must be http:// or https://".into()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("must not carry credentials".into()));
    }
    let private = match url.host() {
        None => return Err(invalid("must name a host".into())),
        Some(url::Host::Ipv4(ip)) => !percore_workers::kinds::address::is_public(ip.into()),
        Some(url::Host::Ipv6(ip)) => !percore_workers::kinds::address::is_public(ip.into()),
        Some(url::Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
    };
    if private && !allow_private {
        return Err(FieldError::new(
            "url",
            "private_address",
            "must reach a public address (loopback and private ranges are refused)",
        ));
    }
    Ok(())
}

fn check_events(events: &[String]) -> Result<(), FieldError> {
    let kind_ok = |k: &str| {
        k == "*"
            || ((1..=KIND_CHARS_MAX).contains(&k.len())
                && k.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.:-".contains(&b)))
    };
    if events.is_empty() || events.len() > EVENTS_MAX || !events.iter().all(|k| kind_ok(k)) {
        return Err(FieldError::new(
            "events",
            "invalid",
            format!("must list 1 to {EVENTS_MAX} event kinds (a-z, 0-9, _ . : -) or \"*\""),
        ));
    }
    Ok(())
}

pub async fn post_webhook(ctx: &Ctx<'_>, principal: &Principal, body: &mut Vec<u8>) -> Answer {
    let input: NewWebhook = extract::json(ctx.request)?;
    let settings = &ctx.shard.shared.jobs.settings().webhooks;
    let problems: Vec<FieldError> = [
        check_url(&input.url, settings.allow_private),
        check_events(&input.events),
    ]
    .into_iter()
    .filter_map(Result::err)
    .collect();
    if !problems.is_empty() {
        return Err(ApiError::invalid_fields(problems));
    }
    let mut events = input.events;
    events.sort();
    events.dedup();
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|_| ApiError::internal())?;
    let secret = format!("whsec_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key));
    let per_user_max = i64::from(settings.per_user_max);
    let rows = ctx
        .sql
        .query(
            Stmt::WebhookInsert,
            &[&principal.token_hash(), &input.url, &events, &secret, &per_user_max],
        )
        .await?;
    let row = InsertedWebhook::from_row(rows.first().ok_or_else(auth::invalid_token)?);
    let (Some(id), Some(created_at)) = (row.id, row.created_at) else {
        return Err(ApiError::new(
            409,
            "too_many_webhooks",
            format!("an account holds at most {per_user_max} webhooks; delete one first"),
        ));
    };
    let webhook = Webhook {
        id,
        url: input.url,
        events,
        secret: Some(secret),
        created_at: timestamp(created_at),
    };
    write_json(body, &webhook);
    Ok(Reply::json(201).with_header("Location", format!("/v1/webhooks/{id}")))
}

typed_row! {
    /// What `WebhookInsert` returns: NULL id and time when the caller is at the limit.
    struct InsertedWebhook {
        _session_user_id: i64,
        id: Option<i64>,
        created_at: Option<SystemTime>,
    }
}

typed_row! {
    /// A `WebhooksList` row; NULL columns in the one row of an empty list.
    struct WebhookRow {
        _session_user_id: i64,
        id: Option<i64>,
        url: Option<String>,
        events: Option<Vec<String>>,
        created_at: Option<SystemTime>,
    }
}

typed_row! {
    /// What `WebhookDelete` returns: NULL when there was no such webhook of the caller's.
    struct DeletedWebhook {
        _session_user_id: i64,
        id: Option<i64>,
    }
}

typed_row! {
    /// A `WebhookDeliveries` row: the webhook (NULL: not the caller's), then one attempt
    /// (NULL columns when there is none).
    struct DeliveryRow {
        _session_user_id: i64,
        webhook_id: Option<i64>,
        id: Option<i64>,
        job_id: Option<i64>,
        attempt: Option<i32>,
        status_code: Option<i32>,
        error: Option<String>,
        duration_ms: Option<i32>,
        attempted_at: Option<SystemTime>,
    }
}

pub async fn list_webhooks(ctx: &Ctx<'_>, principal: &Principal, body: &mut Vec<u8>) -> Answer {
    let rows = ctx.sql.query(Stmt::WebhooksList, &[&principal.token_hash()]).await?;
    if rows.is_empty() {
        return Err(auth::invalid_token());
    }
    let mut webhooks: Vec<Webhook> = rows
        .iter()
        .filter_map(|row| {
            let row = WebhookRow::from_row(row);
            Some(Webhook {
                id: row.id?,
                url: row.url?,
                events: row.events?,
                secret: None,
                created_at: timestamp(row.created_at?),
            })
        })
        .collect();
    webhooks.sort_by_key(|w| w.id);
    #[derive(Serialize)]
    struct List {
        webhooks: Vec<Webhook>,
    }
    write_json(body, &List { webhooks });
    Ok(Reply::json(200))
}

pub async fn delete_webhook(ctx: &Ctx<'_>, principal: &Principal) -> Answer {
    let id = extract::id(ctx.param, "webhook")?;
    let rows = ctx
        .sql
        .query(Stmt::WebhookDelete, &[&principal.token_hash(), &id])
        .await?;
    match DeletedWebhook::from_row(rows.first().ok_or_else(auth::invalid_token)?).id {
        Some(_) => Ok(Reply::new(204, crate::http::response::JSON)),
        None => Err(ApiError::new(404, "not_found", "no such webhook")),
    }
}

pub async fn deliveries(ctx: &Ctx<'_>, principal: &Principal, body: &mut Vec<u8>) -> Answer {
    let id = extract::id(ctx.param, "webhook")?;
    let limit_max = i64::from(ctx.shard.shared.jobs.settings().webhooks.deliveries_limit_max);
    let limit = extract::limit(ctx.request, DELIVERIES_DEFAULT, limit_max)?;
    let rows = ctx
        .sql
        .query(Stmt::WebhookDeliveries, &[&principal.token_hash(), &id, &limit])
        .await?;
    if DeliveryRow::from_row(rows.first().ok_or_else(auth::invalid_token)?)
        .webhook_id
        .is_none()
    {
        return Err(ApiError::new(404, "not_found", "no such webhook"));
    }
    let mut deliveries: Vec<Delivery> = rows
        .iter()
        .filter_map(|row| {
            let row = DeliveryRow::from_row(row);
            Some(Delivery {
                id: row.id?,
                delivery_id: row.job_id?,
                attempt: row.attempt?,
                status_code: row.status_code,
                error: row.error,
                duration_ms: row.duration_ms?,
                attempted_at: timestamp(row.attempted_at?),
            })
        })
        .collect();
    deliveries.sort_by_key(|d| std::cmp::Reverse(d.id));
    #[derive(Serialize)]
    struct List {
        deliveries: Vec<Delivery>,
    }
    write_json(body, &List { deliveries });
    Ok(Reply::json(200))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_public_http_unless_allowed() {
        assert!(check_url("https://hooks.example.com/x", false).is_ok());
        for bad in [
            "ftp://example.com/",
            "http://user:pw@example.com/",
            "not a url",
            "http://127.0.0.1:9/",
            "http://[::1]/",
            "http://localhost/",
            "http://169.254.169.254/latest",
        ] {
            assert!(check_url(bad, false).is_err(), "{bad}");
        }
        assert!(check_url("http://127.0.0.1:9/", true).is_ok());
        assert!(check_events(&["*".into()]).is_ok());
        assert!(check_events(&[]).is_err());
        assert!(check_events(&["Bad Kind".into()]).is_err());
    }
}
