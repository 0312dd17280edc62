//! The `[jobs]`, `[email]` and `[webhooks]` sections of tuning.toml. They live with the
//! code they configure; the server embeds them in its `Config` and calls `validate`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Every job kind percore runs. Each must be mapped to exactly one queue.
pub const KINDS: [&str; 4] = ["email", "pdf", "export", "webhook"];

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Jobs {
    /// Run job workers in this process. Off: jobs are still accepted and queued, and
    /// another percore process (sharing the database) runs them.
    pub run: bool,
    /// The maintenance thread samples the queues this often, waking idle workers for jobs
    /// committed by other processes and retries come due, and reaping expired leases; jobs
    /// committed here wake a worker at once.
    pub poll_interval_ms: u64,
    /// A claimed job's lease. A heartbeat extends it every `heartbeat_ms`; a job whose
    /// worker died runs again once its lease ends.
    pub lease_ms: u64,
    pub heartbeat_ms: u64,
    /// Attempts per job, unless its queue says otherwise; then it is `dead`.
    pub max_attempts: u32,
    /// Retry n waits a random time in [d/2, d], d = min(backoff_ms_max, backoff_ms_min × 2^(n-1)).
    pub backoff_ms_min: u64,
    pub backoff_ms_max: u64,
    /// Where PDF and CSV artifacts are written (one file per job).
    pub artifacts_dir: PathBuf,
    /// An artifact larger than this fails its job (and is not kept).
    pub artifact_bytes_max: u64,
    /// `POST /v1/jobs` params, as JSON text, at most this long.
    pub params_bytes_max: usize,
    /// `GET /v1/jobs`: the largest `limit`.
    pub list_limit_max: u32,
    /// Per queue (`[jobs.queues.<name>]`): its kinds, threads and depth limit.
    pub queues: BTreeMap<String, Queue>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Queue {
    pub kinds: Vec<String>,
    /// Worker threads of this queue: how many of its jobs run at once, per process.
    pub threads: usize,
    /// Jobs waiting in this queue; past it `POST /v1/jobs` answers 503 with Retry-After.
    pub max_depth: u64,
    /// Overrides `jobs.max_attempts` for this queue.
    #[serde(default)]
    pub max_attempts: Option<u32>,
}

impl Default for Jobs {
    fn default() -> Self {
        let queue = |kinds: &[&str], threads, max_depth| Queue {
            kinds: kinds.iter().map(|k| k.to_string()).collect(),
            threads,
            max_depth,
            max_attempts: None,
        };
        Jobs {
            run: true,
            poll_interval_ms: 1_000,
            lease_ms: 30_000,
            heartbeat_ms: 10_000,
            max_attempts: 5,
            backoff_ms_min: 1_000,
            backoff_ms_max: 300_000,
            artifacts_dir: PathBuf::from("var/artifacts"),
            artifact_bytes_max: 256 * 1024 * 1024,
            params_bytes_max: 16 * 1024,
            list_limit_max: 100,
            queues: BTreeMap::from([
                ("email".to_string(), queue(&["email"], 8, 100_000)),
                ("webhook".to_string(), queue(&["webhook"], 4, 100_000)),
                ("reports".to_string(), queue(&["pdf", "export"], 1, 1_000)),
            ]),
        }
    }
}

impl Jobs {
    /// The queue `kind` runs on, and its name. Every kind has one (see `validate`).
    pub fn queue_of(&self, kind: &str) -> Option<(&str, &Queue)> {
        self.queues
            .iter()
            .find(|(_, q)| q.kinds.iter().any(|k| k == kind))
            .map(|(name, q)| (name.as_str(), q))
    }

    pub fn max_attempts_of(&self, queue: &Queue) -> u32 {
        queue.max_attempts.unwrap_or(self.max_attempts)
    }

    /// Range checks; each failure names its key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let at_least = |key: &str, value: u64, min: u64| {
            if value < min {
                return Err((format!("jobs.{key}"), format!("must be at least {min} (got {value})")));
            }
            Ok(())
        };
        at_least("poll_interval_ms", self.poll_interval_ms, 10)?;
        at_least("heartbeat_ms", self.heartbeat_ms, 10)?;
        // Two heartbeats per lease at least, so one late beat does not lose the lease.
        at_least("lease_ms", self.lease_ms, 2 * self.heartbeat_ms)?;
        at_least("max_attempts", self.max_attempts.into(), 1)?;
        at_least("backoff_ms_min", self.backoff_ms_min, 1)?;
        at_least("backoff_ms_max", self.backoff_ms_max, self.backoff_ms_min)?;
        at_least("artifact_bytes_max", self.artifact_bytes_max, 1024)?;
        at_least("params_bytes_max", self.params_bytes_max as u64, 2)?;
        at_least("list_limit_max", self.list_limit_max.into(), 1)?;
        if self.artifacts_dir.as_os_str().is_empty() {
            return Err(("jobs.artifacts_dir".into(), "must not be empty".into()));
        }
        for (name, queue) in &self.queues {
            let key = |field: &str| format!("jobs.queues.{name}.{field}");
            let name_ok = !name.is_empty()
                && name.len() <= 64
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b));
            if !name_ok {
                return Err((
                    format!("jobs.queues.{name}"),
                    "a queue name is 1-64 of a-z A-Z 0-9 _ -".into(),
                ));
            }
            if !(1..=256).contains(&queue.threads) {
                return Err((key("threads"), format!("must be 1 to 256 (got {})", queue.threads)));
            }
            if queue.max_depth < 1 {
                return Err((key("max_depth"), "must be at least 1".into()));
            }
            if queue.max_attempts == Some(0) {
                return Err((key("max_attempts"), "must be at least 1".into()));
            }
            if let Some(unknown) = queue.kinds.iter().find(|k| !KINDS.contains(&k.as_str())) {
                return Err((key("kinds"), format!("unknown kind {unknown:?}; kinds are {KINDS:?}")));
            }
        }
        for kind in KINDS {
            let homes = self
                .queues
                .values()
                .filter(|q| q.kinds.iter().any(|k| k == kind))
                .count();
            if homes != 1 {
                return Err((
                    "jobs.queues".into(),
                    format!("kind {kind:?} must be in exactly one queue's kinds (it is in {homes})"),
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Email {
    /// `smtp://host:port` (add `?tls=required` for STARTTLS) or `smtps://host:port`, with
    /// optional `user:password@`. Empty: messages are written as .eml files under
    /// `<jobs.artifacts_dir>/outbox/` instead (for development).
    pub smtp_url: String,
    /// The From header and envelope sender.
    pub from: String,
    /// Connecting, and each SMTP command, waits at most this long.
    pub timeout_ms: u64,
}

impl Default for Email {
    fn default() -> Self {
        Email {
            smtp_url: String::new(),
            from: "percore <no-reply@localhost>".into(),
            timeout_ms: 10_000,
        }
    }
}

impl Email {
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.from.parse::<lettre::message::Mailbox>().is_err() {
            return Err(("email.from".into(), format!("is not a mailbox: {:?}", self.from)));
        }
        if !self.smtp_url.is_empty() && lettre::SmtpTransport::from_url(&self.smtp_url).is_err() {
            return Err(("email.smtp_url".into(), "is not a valid smtp:// or smtps:// URL".into()));
        }
        if self.timeout_ms < 1 {
            return Err(("email.timeout_ms".into(), "must be at least 1".into()));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Webhooks {
    /// Each delivery (connect, send, response head) waits at most this long.
    pub timeout_ms: u64,
    /// Deliver to loopback, private, link-local and other non-public addresses. Off in
    /// production: a subscriber must not be able to make percore call its own network.
    pub allow_private: bool,
    /// Subscriptions one user may hold.
    pub per_user_max: u32,
    /// `GET /v1/webhooks/{id}/deliveries`: the largest `limit`.
    pub deliveries_limit_max: u32,
}

impl Default for Webhooks {
    fn default() -> Self {
        Webhooks {
            timeout_ms: 10_000,
            allow_private: false,
            per_user_max: 20,
            deliveries_limit_max: 100,
        }
    }
}

impl Webhooks {
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.timeout_ms < 1 {
            return Err(("webhooks.timeout_ms".into(), "must be at least 1".into()));
        }
        if self.per_user_max < 1 {
            return Err(("webhooks.per_user_max".into(), "must be at least 1".into()));
        }
        if self.deliveries_limit_max < 1 {
            return Err(("webhooks.deliveries_limit_max".into(), "must be at least 1".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_map_every_kind_once() {
        Jobs::default().validate().unwrap();
        Email::default().validate().unwrap();
        Webhooks::default().validate().unwrap();
        assert_eq!(Jobs::default().queue_of("export").unwrap().0, "reports");
    }

    #[test]
    fn a_kind_in_two_queues_or_none_is_refused() {
        let mut jobs = Jobs::default();
        jobs.queues.get_mut("email").unwrap().kinds.push("pdf".into());
        assert_eq!(jobs.validate().unwrap_err().0, "jobs.queues");
        let mut jobs = Jobs::default();
        jobs.queues.remove("webhook");
        assert!(jobs.validate().unwrap_err().1.contains("\"webhook\""));
    }

    #[test]
    fn a_short_lease_is_named() {
        let jobs = Jobs {
            lease_ms: 15_000,
            ..Jobs::default()
        };
        assert_eq!(jobs.validate().unwrap_err().0, "jobs.lease_ms");
    }
}
