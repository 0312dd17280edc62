//! `webhook`: one event delivered to one subscription, POSTed as JSON with
//! `Percore-Delivery: <job id>` (the same on every retry: receivers deduplicate by it),
//! `Percore-Timestamp: <unix seconds>` and
//! `Percore-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
//! Any 2xx is delivered; anything else (or no answer within `[webhooks] timeout_ms`) is a
//! failed attempt, retried with backoff. Every attempt is logged in `webhook_deliveries`.
//! Redirects are not followed, and names resolving only to non-public addresses are
//! refused after resolution (see `address`), so DNS cannot point a delivery inward.

use super::{Context, JobError, address, params};
use crate::jobs::config::Webhooks;
use crate::jobs::store::Claimed;
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const DELIVERY_HEADER: &str = "Percore-Delivery";
pub const TIMESTAMP_HEADER: &str = "Percore-Timestamp";
pub const SIGNATURE_HEADER: &str = "Percore-Signature";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookParams {
    pub webhook_id: i64,
    pub event: serde_json::Value,
}

pub fn agent(settings: &Webhooks) -> ureq::Agent {
    let allow_private = settings.allow_private;
    ureq::AgentBuilder::new()
        .timeout(Duration::from_millis(settings.timeout_ms))
        .redirects(0)
        .user_agent("percore-webhooks/1")
        .resolver(move |netloc: &str| -> std::io::Result<Vec<SocketAddr>> {
            let all: Vec<SocketAddr> = netloc.to_socket_addrs()?.collect();
            let allowed: Vec<SocketAddr> = all
                .iter()
                .copied()
                .filter(|a| allow_private || address::is_public(a.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("{netloc} resolves only to non-public addresses ({all:?})"),
                ));
            }
            Ok(allowed)
        })
        .build()
}

/// `v1=<hex>` over `<timestamp>.<body>`.
pub fn signature(secret: &str, timestamp: u64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("v1={hex}")
}

pub fn deliver(ctx: &Context, job: &Claimed) -> Result<serde_json::Value, JobError> {
    let input: WebhookParams = params(job)?;
    let mut db = ctx.db.get()?;
    let Some(hook) = db.query_opt(
        "SELECT url, secret FROM webhooks WHERE id = $1 AND user_id = $2",
        &[&input.webhook_id, &job.user_id],
    )?
    else {
        // Unsubscribed meanwhile: nothing to deliver, and nothing to retry.
        return Ok(serde_json::json!({ "skipped": "the webhook was deleted" }));
    };
    let (url, secret): (String, String) = (hook.get(0), hook.get(1));
    drop(db);
    let body = serde_json::json!({
        "delivery_id": job.id,
        "webhook_id": input.webhook_id,
        "event": input.event,
    })
    .to_string();
    let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let started = Instant::now();
    let outcome = ctx
        .http
        .post(&url)
        .timeout(Duration::from_millis(
            ctx.webhook_timeout_ms.load(std::sync::atomic::Ordering::Relaxed),
        ))
        .set("Content-Type", "application/json")
        .set(DELIVERY_HEADER, &job.id.to_string())
        .set(TIMESTAMP_HEADER, &timestamp.to_string())
        .set(SIGNATURE_HEADER, &signature(&secret, timestamp, &body))
        .send_string(&body);
    let duration_ms = started.elapsed().as_millis().min(i32::MAX as u128) as i32;
    let (status_code, error): (Option<i32>, Option<String>) = match &outcome {
        Ok(response) => (Some(response.status().into()), None),
        Err(ureq::Error::Status(code, _)) => (Some((*code).into()), Some(format!("HTTP {code}"))),
        Err(ureq::Error::Transport(transport)) => (None, Some(transport.to_string())),
    };
    // The log row is best effort: a delivery that happened is not retried for want of it.
    if let Err(e) = ctx.db.get().map_err(JobError::from).and_then(|mut db| {
        db.execute(
            "INSERT INTO webhook_deliveries (webhook_id, job_id, attempt, status_code, error, duration_ms)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &input.webhook_id,
                &job.id,
                &job.attempt,
                &status_code,
                &error,
                &duration_ms,
            ],
        )
        .map_err(JobError::from)
    }) {
        log::warn!(
            "webhook delivery {}: logging the attempt failed: {}",
            job.id,
            e.message()
        );
    }
    match (status_code, error) {
        (Some(code), None) => Ok(serde_json::json!({ "status_code": code, "duration_ms": duration_ms })),
        (_, Some(error)) => Err(JobError::Transient(error)),
        (None, None) => unreachable!("a delivery either answered or failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_hmac() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        assert_ne!(signature("a", 1, "x"), signature("a", 2, "x"));
        assert!(signature("k", 1, "body").starts_with("v1="));
    }

    #[test]
    fn names_resolving_to_private_addresses_are_refused_after_dns() {
        // "localhost" resolves (from /etc/hosts) to loopback only: refused before connecting.
        let refused = agent(&Webhooks::default())
            .post("http://localhost:9/hook")
            .send_string("{}");
        let error = refused.expect_err("loopback is refused").to_string();
        assert!(error.contains("non-public"), "{error}");
        // Allowed, the same name is dialled (and port 9, discard, refuses the connection).
        let allowed = Webhooks {
            allow_private: true,
            ..Webhooks::default()
        };
        let dialled = agent(&allowed).post("http://localhost:9/hook").send_string("{}");
        assert!(
            !dialled
                .expect_err("nothing listens on port 9")
                .to_string()
                .contains("non-public")
        );
    }
}
