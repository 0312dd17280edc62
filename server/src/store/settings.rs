//! `[database]`, `[redis]` and `[cache]`: the data layer's sections of tuning.toml, each
//! with its own checks (the configuration aggregate in `config` calls them).

use crate::metrics::REPLICAS_MAX;
use crate::units::at_least;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Database {
    /// Empty: `PERCORE_DATABASE_URL`. Required to serve or migrate: the binary never
    /// provisions a database (`./dev run` asks `percore-dev` for a local one).
    pub url: String,
    pub connections_per_shard: usize,
    /// Connections per shard that run only writes, so that a read never waits in a
    /// connection's pipeline behind a commit's WAL flush. 0: writes share the others.
    pub write_connections_per_shard: usize,
    pub pool_wait_ms: u64,
    /// Statements in flight at once on one connection (its pipeline); more wait for room.
    pub pipeline_depth_max: usize,
    /// Statements waiting for room per shard and kind; past this, 503 at once.
    pub queued_max: usize,
    pub connect_timeout_ms: u64,
    pub statement_timeout_ms: u64,
    /// A statement unanswered for `statement_timeout_ms` plus this has met a silent server
    /// or network (Postgres would have cancelled it): it fails with 503 and its connection
    /// is replaced.
    pub deadline_margin_ms: u64,
    /// Sent as client_connection_check_interval: a statement whose client (a shard) is
    /// gone is cancelled rather than run to commit. 0: Postgres never checks.
    pub client_check_interval_ms: u64,
    /// A connection idle this long sends `SELECT 1`, and is replaced if the answer takes
    /// over `keepalive_timeout_ms`: a half-open connection (its server or the path to it
    /// gone without a FIN or RST reaching us) is found before a request needs it. 0: never.
    pub keepalive_interval_ms: u64,
    pub keepalive_timeout_ms: u64,
    pub reconnect_backoff_ms_min: u64,
    pub reconnect_backoff_ms_max: u64,
    /// Apply pending migrations at start-up. Off by default: run `percore migrate` in the
    /// deploy step (the systemd unit's ExecStartPre does; so does `./dev run`).
    pub auto_migrate: bool,
    /// Streaming replicas of `url`: reads that check no session may run on them
    /// (`replicas.rs`). Each shard opens `connections_per_shard` to each.
    pub replicas: Vec<String>,
    /// A replica whose replay trails the primary by more than this is skipped.
    pub max_replica_lag_ms: u64,
    /// After a client's write, its reads stay on the primary until a replica has replayed
    /// past the write, or for this long at most.
    pub sticky_primary_ms: u64,
    /// How often each shard samples the primary's WAL position and each replica's replay
    /// position: the granularity of "has replayed past".
    pub replica_check_interval_ms: u64,
    /// Slots of the process-wide table of clients' last writes. Clients sharing a slot
    /// share a time, which only sends more reads to the primary.
    pub recent_writers_slots: usize,
    /// Cache invalidations each shard remembers (key and time) so that a fill from a
    /// replica never reads from before one. Past this the oldest are folded into one time
    /// that applies to every key, which only sends more fills to the primary.
    pub recent_invalidations_max: usize,
}

impl Default for Database {
    fn default() -> Self {
        Database {
            url: String::new(),
            connections_per_shard: 2,
            write_connections_per_shard: 4,
            pool_wait_ms: 1_000,
            pipeline_depth_max: 128,
            queued_max: 65_536,
            connect_timeout_ms: 2_000,
            statement_timeout_ms: 5_000,
            deadline_margin_ms: 1_000,
            client_check_interval_ms: 1_000,
            keepalive_interval_ms: 5_000,
            keepalive_timeout_ms: 1_000,
            reconnect_backoff_ms_min: 50,
            reconnect_backoff_ms_max: 5_000,
            auto_migrate: false,
            replicas: Vec::new(),
            max_replica_lag_ms: 1_000,
            sticky_primary_ms: 1_000,
            replica_check_interval_ms: 10,
            recent_writers_slots: 65_536,
            recent_invalidations_max: 16_384,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Redis {
    /// Empty: `PERCORE_REDIS_URL`. Required to serve, as `database.url` is.
    pub url: String,
    pub connect_timeout_ms: u64,
    pub command_timeout_ms: u64,
    pub reconnect_backoff_ms_min: u64,
    pub reconnect_backoff_ms_max: u64,
    /// Commands waiting for their reply on one shard's connection; more get an error at once.
    pub in_flight_max: usize,
}

impl Default for Redis {
    fn default() -> Self {
        Redis {
            url: String::new(),
            connect_timeout_ms: 1_000,
            command_timeout_ms: 100,
            reconnect_backoff_ms_min: 50,
            reconnect_backoff_ms_max: 5_000,
            in_flight_max: 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cache {
    /// Off: every read goes to Postgres (for measuring what the cache buys).
    pub enabled: bool,
    /// Entries in each shard's in-memory (L1) cache.
    pub l1_entries: usize,
    /// An L1 entry is dropped this long after it was loaded, even if no invalidation came:
    /// the bound on staleness should an invalidation ever be lost.
    pub l1_ttl_ms: u64,
    /// Values in Redis (L2) expire this long after they were stored.
    pub ttl_s: u64,
    /// Each Redis call the cache makes waits at most this long, then falls back to Postgres.
    pub redis_timeout_ms: u64,
    /// After a Redis error or timeout the shard stops calling Redis for the cache this long.
    pub breaker_backoff_ms: u64,
    /// A write waits this long for every subscribed shard to confirm its eviction.
    pub invalidation_ack_timeout_ms: u64,
    /// Each shard PINGs Redis on its subscription this often; an unanswered PING counts the
    /// subscription as lost (L1 cleared and bypassed until it is back).
    pub subscription_ping_ms: u64,
    /// Prefix of every Redis key and channel; change it with the cached shapes.
    pub key_prefix: String,
}

impl Default for Cache {
    fn default() -> Self {
        Cache {
            enabled: true,
            l1_entries: 100_000,
            l1_ttl_ms: 10_000,
            ttl_s: 300,
            redis_timeout_ms: 100,
            breaker_backoff_ms: 1_000,
            invalidation_ack_timeout_ms: 250,
            subscription_ping_ms: 200,
            key_prefix: "percore:v1".into(),
        }
    }
}

impl Database {
    pub fn validate(&self) -> Result<(), (String, String)> {
        at_least("database.connections_per_shard", self.connections_per_shard as u64, 1)?;
        at_least("database.pool_wait_ms", self.pool_wait_ms, 1)?;
        at_least("database.deadline_margin_ms", self.deadline_margin_ms, 1)?;
        at_least("database.keepalive_timeout_ms", self.keepalive_timeout_ms, 1)?;
        at_least("database.pipeline_depth_max", self.pipeline_depth_max as u64, 1)?;
        let backoff_ms_min = self.reconnect_backoff_ms_min;
        at_least(
            "database.reconnect_backoff_ms_max",
            self.reconnect_backoff_ms_max,
            backoff_ms_min,
        )?;
        if !self.url.is_empty()
            && let Err(why) = percore_pg::Config::parse(&self.url)
        {
            return Err(("database.url".into(), format!("is not a valid postgres:// URL: {why}")));
        }
        self.validate_replicas()?;
        at_least("database.recent_writers_slots", self.recent_writers_slots as u64, 1)?;
        at_least(
            "database.recent_invalidations_max",
            self.recent_invalidations_max as u64,
            1,
        )
    }

    fn validate_replicas(&self) -> Result<(), (String, String)> {
        if self.replicas.len() > REPLICAS_MAX {
            let reason = format!("lists {} replicas; at most {REPLICAS_MAX}", self.replicas.len());
            return Err(("database.replicas".into(), reason));
        }
        // By position, not by text: a URL may carry a password.
        for (i, url) in self.replicas.iter().enumerate() {
            if let Err(why) = percore_pg::Config::parse(url) {
                let reason = format!("entry {i} is not a valid postgres:// URL: {why}");
                return Err(("database.replicas".into(), reason));
            }
        }
        at_least("database.max_replica_lag_ms", self.max_replica_lag_ms, 1)?;
        at_least("database.replica_check_interval_ms", self.replica_check_interval_ms, 1)?;
        if self.replica_check_interval_ms >= self.max_replica_lag_ms {
            let reason = format!(
                "must be below database.max_replica_lag_ms ({}): a replica is judged by samples this far apart",
                self.max_replica_lag_ms
            );
            return Err(("database.replica_check_interval_ms".into(), reason));
        }
        Ok(())
    }
}

impl Redis {
    pub fn validate(&self) -> Result<(), (String, String)> {
        at_least("redis.command_timeout_ms", self.command_timeout_ms, 1)?;
        at_least("redis.in_flight_max", self.in_flight_max as u64, 1)?;
        let backoff_ms_min = self.reconnect_backoff_ms_min;
        at_least(
            "redis.reconnect_backoff_ms_max",
            self.reconnect_backoff_ms_max,
            backoff_ms_min,
        )?;
        if !self.url.is_empty() && !super::redis::RedisTarget::is_valid_url(&self.url) {
            return Err(("redis.url".into(), "is not a valid redis://host:port[/db] URL".into()));
        }
        Ok(())
    }
}

impl Cache {
    pub fn validate(&self) -> Result<(), (String, String)> {
        at_least("cache.l1_entries", self.l1_entries as u64, 16)?;
        at_least("cache.l1_ttl_ms", self.l1_ttl_ms, 1)?;
        at_least("cache.ttl_s", self.ttl_s, 1)?;
        at_least("cache.redis_timeout_ms", self.redis_timeout_ms, 1)?;
        at_least("cache.breaker_backoff_ms", self.breaker_backoff_ms, 1)?;
        at_least("cache.invalidation_ack_timeout_ms", self.invalidation_ack_timeout_ms, 1)?;
        at_least("cache.subscription_ping_ms", self.subscription_ping_ms, 10)?;
        let prefix = &self.key_prefix;
        let prefix_ok = !prefix.is_empty()
            && prefix.len() <= 64
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b":._-".contains(&b));
        if !prefix_ok {
            return Err(("cache.key_prefix".into(), "must be 1-64 of a-z A-Z 0-9 : . _ -".into()));
        }
        Ok(())
    }
}
