//! `[identity]` and `[api]`: sessions, login throttling and the API's own input bounds.

use crate::units::at_least;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Identity {
    /// Lifetime of a session token from login.
    pub token_ttl_s: u64,
    /// Login attempts refilled per minute, per client IP and per email, on each shard.
    pub login_rate_per_minute: u32,
    /// Attempts allowed at once before the rate applies.
    pub login_burst: u32,
    /// Clients (IPs plus emails) tracked per shard; the least recently seen are dropped.
    pub login_tracked_max: usize,
}

impl Default for Identity {
    fn default() -> Self {
        Identity {
            token_ttl_s: 7 * 24 * 3600,
            login_rate_per_minute: 10,
            login_burst: 10,
            login_tracked_max: 100_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Api {
    /// `POST /v1/events`: the largest `payload`, as JSON text.
    pub event_payload_bytes_max: usize,
    /// `GET /v1/users?ids=`: the most ids in one request.
    pub user_ids_max: usize,
    /// `GET /v1/me/events`: the largest `limit`.
    pub events_page_max: u32,
}

impl Default for Api {
    fn default() -> Self {
        Api {
            event_payload_bytes_max: 16 * 1024,
            user_ids_max: 100,
            events_page_max: 100,
        }
    }
}

impl Identity {
    pub fn validate(&self) -> Result<(), (String, String)> {
        at_least("identity.token_ttl_s", self.token_ttl_s, 60)?;
        at_least("identity.login_rate_per_minute", self.login_rate_per_minute as u64, 1)?;
        at_least("identity.login_burst", self.login_burst as u64, 1)?;
        at_least("identity.login_tracked_max", self.login_tracked_max as u64, 16)
    }
}

impl Api {
    /// `body_bytes_max`: `http.body_bytes_max`, which no payload can exceed.
    pub fn validate(&self, body_bytes_max: usize) -> Result<(), (String, String)> {
        at_least("api.event_payload_bytes_max", self.event_payload_bytes_max as u64, 2)?;
        if self.event_payload_bytes_max > body_bytes_max {
            let reason = format!("must not exceed http.body_bytes_max ({body_bytes_max})");
            return Err(("api.event_payload_bytes_max".into(), reason));
        }
        at_least("api.user_ids_max", self.user_ids_max as u64, 1)?;
        at_least("api.events_page_max", self.events_page_max as u64, 1)
    }
}
