//! `tuning.toml`: every runtime knob, with its default, parsed once at start-up.
//!
//! Unknown keys and bad values are refused with one message naming the file, the key and
//! the reason; `main` turns that into exit code 2. Durations are integers with their unit
//! last in the name (`idle_timeout_ms`), sizes likewise (`body_bytes_max`).

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: Server,
    pub http: Http,
    pub workers: Workers,
    pub database: Database,
    pub redis: Redis,
    pub identity: Identity,
    pub api: Api,
    pub cache: Cache,
    pub rate_limit: crate::limits::rate_limit::Settings,
    pub cluster: Cluster,
    /// `[jobs]`, `[email]`, `[webhooks]`: defined with the workers that use them.
    pub jobs: percore_workers::jobs::config::Jobs,
    pub email: percore_workers::jobs::config::Email,
    pub webhooks: percore_workers::jobs::config::Webhooks,
    pub bench: Bench,
    pub log: Log,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    pub listen: SocketAddr,
    pub shards: usize,
    /// CPUs for the shards, one each; empty means the first `shards` usable CPUs.
    pub cpus: Vec<usize>,
    pub connections_per_shard_max: usize,
    pub shutdown_timeout_ms: u64,
    /// How often each shard's loop ticks its heartbeat; the systemd watchdog checks it.
    pub heartbeat_interval_ms: u64,
    /// Pause before retrying `accept` after it failed (e.g. EMFILE at the fd limit).
    pub accept_error_backoff_ms: u64,
    /// glommio's stall detector; forced on in debug builds.
    pub detect_stalls: bool,
    /// Over this resident memory, API requests get 503 until it falls below 90% of it.
    pub rss_bytes_max: u64,
    /// Peers (addresses or CIDR ranges) whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<String>,
}

impl Server {
    /// `trusted_proxies` as networks; a bare address is its own /32 or /128.
    pub fn trusted_proxy_nets(&self) -> Result<Vec<ipnet::IpNet>, (String, String)> {
        self.trusted_proxies
            .iter()
            .map(|text| {
                text.parse::<ipnet::IpNet>()
                    .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        (
                            "server.trusted_proxies".to_string(),
                            format!("{text:?} is not an address or CIDR range"),
                        )
                    })
            })
            .collect()
    }
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: "0.0.0.0:8080".parse().expect("literal address"),
            shards: 4,
            cpus: Vec::new(),
            connections_per_shard_max: 10_000,
            shutdown_timeout_ms: 10_000,
            heartbeat_interval_ms: 250,
            accept_error_backoff_ms: 100,
            detect_stalls: false,
            rss_bytes_max: 4 << 30,
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    pub request_line_bytes_max: usize,
    pub head_bytes_max: usize,
    pub headers_count_max: usize,
    pub body_bytes_max: usize,
    pub header_read_timeout_ms: u64,
    pub body_read_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub write_timeout_ms: u64,
    /// Responses of one pipelined batch are flushed once they reach this many bytes.
    pub write_buffer_bytes_max: usize,
    /// When a read finds nothing, let the shard's other connections run and try again this
    /// many times before arming an io_uring poll. Under load the bytes usually arrive
    /// meanwhile, which saves the poll's completion work; idle, it costs a few syscalls.
    pub read_retries_max: usize,
    /// How often each shard expires read deadlines (header, body, idle timeouts fire up to
    /// this late).
    pub deadline_sweep_ms: u64,
    /// TCP_NODELAY on client sockets: each flush goes out at once instead of waiting for
    /// the peer's ACK of earlier data (Nagle).
    pub tcp_nodelay: bool,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            request_line_bytes_max: 8 * 1024,
            head_bytes_max: 16 * 1024,
            headers_count_max: 100,
            body_bytes_max: 1024 * 1024,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            idle_timeout_ms: 60_000,
            write_timeout_ms: 10_000,
            write_buffer_bytes_max: 64 * 1024,
            read_retries_max: 1,
            tcp_nodelay: true,
            deadline_sweep_ms: 100,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Workers {
    pub threads: usize,
    /// CPUs the worker threads may run on; empty means every CPU no shard uses (or unpinned).
    pub cpus: Vec<usize>,
    pub queue_depth_max: usize,
    /// A task that waited longer than this for a worker is not run: 503 with Retry-After
    /// at once, so a backlog bounds what a login waits. 0: never shed.
    pub wait_ms_max: u64,
    pub retry_after_s: u64,
    /// Niceness of worker threads (0-19), so shards win shared cores.
    pub nice: i32,
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub argon2_parallelism: u32,
}

impl Default for Workers {
    fn default() -> Self {
        Workers {
            threads: 2,
            cpus: Vec::new(),
            queue_depth_max: 1024,
            wait_ms_max: 250,
            retry_after_s: 1,
            nice: 0,
            // OWASP's Argon2id minimum: 19 MiB, 2 iterations, 1 lane.
            argon2_memory_kib: 19 * 1024,
            argon2_iterations: 2,
            argon2_parallelism: 1,
        }
    }
}

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

/// `[cluster]`: facts about the deployment one instance cannot see for itself.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cluster {
    /// Instances sharing the database: each start-up checks they all fit its connections.
    pub expected_instances: u64,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster { expected_instances: 1 }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Bench {
    /// Serve the benchmark routes (`/plaintext`, `/json`, `/bench/hash`).
    pub routes: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// `error`, `warn`, `info`, `debug` or `trace`; `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for Log {
    fn default() -> Self {
        Log { level: "info".into() }
    }
}

/// Why a configuration was refused: the key (`server.shards`) and the reason.
#[derive(Debug)]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub reason: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file, self.reason)
        } else {
            write!(f, "{}: key `{}`: {}", self.file, self.key, self.reason)
        }
    }
}

impl Config {
    /// Reads and validates `path`, then applies the `PERCORE_*` environment overrides.
    /// A missing file at the default path means "all defaults"; a missing file named
    /// explicitly is an error.
    pub fn load(path: &Path, must_exist: bool) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let read = std::fs::read_to_string(path); // blocking-ok: start-up, before any shard
        let text = match read {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => String::new(),
            Err(e) => {
                return Err(ConfigError {
                    file,
                    key: String::new(),
                    reason: e.to_string(),
                });
            }
        };
        let mut config = Config::parse(&text).map_err(|(key, reason)| ConfigError {
            file: file.clone(),
            key,
            reason,
        })?;
        config.apply_env(|name| std::env::var(name).ok());
        config
            .validate()
            .map_err(|(key, reason)| ConfigError { file, key, reason })?;
        Ok(config)
    }

    /// Parses TOML text, naming the dotted key path of the first error.
    pub fn parse(text: &str) -> Result<Config, (String, String)> {
        let deserializer = toml::Deserializer::parse(text).map_err(|e| (String::new(), e.message().to_string()))?;
        serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { String::new() } else { key };
            let inner = e.into_inner();
            (key, inner.message().to_string())
        })
    }

    fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) {
        if let Some(url) = get("PERCORE_DATABASE_URL") {
            self.database.url = url;
        }
        if let Some(url) = get("PERCORE_REDIS_URL") {
            self.redis.url = url;
        }
        if let Some(listen) = get("PERCORE_LISTEN").and_then(|l| l.parse().ok()) {
            self.server.listen = listen;
        }
    }

    /// Serving, migrating and retrying jobs need both services. An empty URL is refused
    /// here, naming its key and variable, because the shipped binary never provisions a
    /// service of its own: a host that lost its environment file must fail, not `initdb`
    /// a database under its working directory.
    pub fn require_services(&self) -> Result<(), (String, String)> {
        let missing = |variable: &str| {
            format!(
                "is empty: set it in the tuning file or through {variable} (`./dev run` provisions local dev services)"
            )
        };
        if self.database.url.is_empty() {
            return Err(("database.url".into(), missing("PERCORE_DATABASE_URL")));
        }
        if self.redis.url.is_empty() {
            return Err(("redis.url".into(), missing("PERCORE_REDIS_URL")));
        }
        Ok(())
    }

    /// Range checks serde cannot express. Each names its key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        fn at_least(key: &str, value: u64, min: u64) -> Result<(), (String, String)> {
            if value < min {
                return Err((key.into(), format!("must be at least {min} (got {value})")));
            }
            Ok(())
        }
        let s = &self.server;
        at_least("server.shards", s.shards as u64, 1)?;
        if s.shards > 1024 {
            return Err((
                "server.shards".into(),
                format!("must be at most 1024 (got {})", s.shards),
            ));
        }
        if !s.cpus.is_empty() && s.cpus.len() < s.shards {
            return Err((
                "server.cpus".into(),
                format!(
                    "lists {} CPUs for {} shards; list one per shard or none",
                    s.cpus.len(),
                    s.shards
                ),
            ));
        }
        let mut cpus = s.cpus.clone();
        cpus.sort_unstable();
        if cpus.windows(2).any(|w| w[0] == w[1]) {
            return Err((
                "server.cpus".into(),
                "lists a CPU twice; each shard needs its own".into(),
            ));
        }
        at_least(
            "server.connections_per_shard_max",
            s.connections_per_shard_max as u64,
            1,
        )?;
        at_least("server.heartbeat_interval_ms", s.heartbeat_interval_ms, 10)?;
        at_least("server.rss_bytes_max", s.rss_bytes_max, 1 << 20)?;
        s.trusted_proxy_nets()?;
        self.rate_limit.validate()?;
        at_least("cluster.expected_instances", self.cluster.expected_instances, 1)?;
        let h = &self.http;
        at_least("http.request_line_bytes_max", h.request_line_bytes_max as u64, 64)?;
        at_least(
            "http.head_bytes_max",
            h.head_bytes_max as u64,
            h.request_line_bytes_max as u64,
        )?;
        at_least("http.headers_count_max", h.headers_count_max as u64, 4)?;
        if h.headers_count_max > crate::http::head::HEADERS_COUNT_LIMIT {
            let limit = crate::http::head::HEADERS_COUNT_LIMIT;
            return Err((
                "http.headers_count_max".into(),
                format!("must be at most {limit} (got {})", h.headers_count_max),
            ));
        }
        at_least("http.header_read_timeout_ms", h.header_read_timeout_ms, 1)?;
        at_least("http.body_read_timeout_ms", h.body_read_timeout_ms, 1)?;
        at_least("http.idle_timeout_ms", h.idle_timeout_ms, 1)?;
        at_least("http.write_timeout_ms", h.write_timeout_ms, 1)?;
        at_least("http.write_buffer_bytes_max", h.write_buffer_bytes_max as u64, 1024)?;
        at_least("http.deadline_sweep_ms", h.deadline_sweep_ms, 10)?;
        if h.read_retries_max > 16 {
            return Err((
                "http.read_retries_max".into(),
                format!("must be at most 16 (got {})", h.read_retries_max),
            ));
        }
        let w = &self.workers;
        at_least("workers.threads", w.threads as u64, 1)?;
        at_least("workers.queue_depth_max", w.queue_depth_max as u64, 1)?;
        if !(0..=19).contains(&w.nice) {
            return Err((
                "workers.nice".into(),
                format!("must be between 0 and 19 (got {})", w.nice),
            ));
        }
        at_least(
            "workers.argon2_memory_kib",
            w.argon2_memory_kib as u64,
            8 * w.argon2_parallelism as u64,
        )?;
        at_least("workers.argon2_iterations", w.argon2_iterations as u64, 1)?;
        at_least("workers.argon2_parallelism", w.argon2_parallelism as u64, 1)?;
        let d = &self.database;
        at_least("database.connections_per_shard", d.connections_per_shard as u64, 1)?;
        at_least("database.pool_wait_ms", d.pool_wait_ms, 1)?;
        at_least("database.deadline_margin_ms", d.deadline_margin_ms, 1)?;
        at_least("database.pipeline_depth_max", d.pipeline_depth_max as u64, 1)?;
        at_least(
            "database.reconnect_backoff_ms_max",
            d.reconnect_backoff_ms_max,
            d.reconnect_backoff_ms_min,
        )?;
        if !d.url.is_empty()
            && let Err(why) = percore_pg::Config::parse(&d.url)
        {
            return Err(("database.url".into(), format!("is not a valid postgres:// URL: {why}")));
        }
        if d.replicas.len() > crate::metrics::REPLICAS_MAX {
            return Err((
                "database.replicas".into(),
                format!(
                    "lists {} replicas; at most {}",
                    d.replicas.len(),
                    crate::metrics::REPLICAS_MAX
                ),
            ));
        }
        // By position, not by text: a URL may carry a password.
        for (i, url) in d.replicas.iter().enumerate() {
            if let Err(why) = percore_pg::Config::parse(url) {
                return Err((
                    "database.replicas".into(),
                    format!("entry {i} is not a valid postgres:// URL: {why}"),
                ));
            }
        }
        at_least("database.max_replica_lag_ms", d.max_replica_lag_ms, 1)?;
        at_least("database.replica_check_interval_ms", d.replica_check_interval_ms, 1)?;
        if d.replica_check_interval_ms >= d.max_replica_lag_ms {
            return Err((
                "database.replica_check_interval_ms".into(),
                format!(
                    "must be below database.max_replica_lag_ms ({}): a replica is judged by samples this far apart",
                    d.max_replica_lag_ms
                ),
            ));
        }
        at_least("database.recent_writers_slots", d.recent_writers_slots as u64, 1)?;
        at_least(
            "database.recent_invalidations_max",
            d.recent_invalidations_max as u64,
            1,
        )?;
        let r = &self.redis;
        at_least("redis.command_timeout_ms", r.command_timeout_ms, 1)?;
        at_least("redis.in_flight_max", r.in_flight_max as u64, 1)?;
        at_least(
            "redis.reconnect_backoff_ms_max",
            r.reconnect_backoff_ms_max,
            r.reconnect_backoff_ms_min,
        )?;
        if !r.url.is_empty() && !crate::store::redis::RedisTarget::is_valid_url(&r.url) {
            return Err(("redis.url".into(), "is not a valid redis://host:port[/db] URL".into()));
        }
        let i = &self.identity;
        at_least("identity.token_ttl_s", i.token_ttl_s, 60)?;
        at_least("identity.login_rate_per_minute", i.login_rate_per_minute as u64, 1)?;
        at_least("identity.login_burst", i.login_burst as u64, 1)?;
        at_least("identity.login_tracked_max", i.login_tracked_max as u64, 16)?;
        let a = &self.api;
        at_least("api.event_payload_bytes_max", a.event_payload_bytes_max as u64, 2)?;
        if a.event_payload_bytes_max > self.http.body_bytes_max {
            return Err((
                "api.event_payload_bytes_max".into(),
                format!("must not exceed http.body_bytes_max ({})", self.http.body_bytes_max),
            ));
        }
        at_least("api.user_ids_max", a.user_ids_max as u64, 1)?;
        at_least("api.events_page_max", a.events_page_max as u64, 1)?;
        let c = &self.cache;
        at_least("cache.l1_entries", c.l1_entries as u64, 16)?;
        at_least("cache.l1_ttl_ms", c.l1_ttl_ms, 1)?;
        at_least("cache.ttl_s", c.ttl_s, 1)?;
        at_least("cache.redis_timeout_ms", c.redis_timeout_ms, 1)?;
        at_least("cache.breaker_backoff_ms", c.breaker_backoff_ms, 1)?;
        at_least("cache.invalidation_ack_timeout_ms", c.invalidation_ack_timeout_ms, 1)?;
        at_least("cache.subscription_ping_ms", c.subscription_ping_ms, 10)?;
        let prefix_ok = !c.key_prefix.is_empty()
            && c.key_prefix.len() <= 64
            && c.key_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b":._-".contains(&b));
        if !prefix_ok {
            return Err(("cache.key_prefix".into(), "must be 1-64 of a-z A-Z 0-9 : . _ -".into()));
        }
        self.jobs.validate()?;
        if self.jobs.params_bytes_max > self.http.body_bytes_max {
            return Err((
                "jobs.params_bytes_max".into(),
                format!("must not exceed http.body_bytes_max ({})", self.http.body_bytes_max),
            ));
        }
        self.email.validate()?;
        self.webhooks.validate()?;
        if !["error", "warn", "info", "debug", "trace"].contains(&self.log.level.as_str()) {
            return Err(("log.level".into(), format!("unknown level {:?}", self.log.level)));
        }
        Ok(())
    }
}

pub fn ms(value: u64) -> Duration {
    Duration::from_millis(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_proxies_take_addresses_and_ranges_and_name_the_key_otherwise() {
        let mut config = Config::default();
        config.server.trusted_proxies = vec!["10.0.0.0/8".into(), "127.0.0.1".into(), "::1".into()];
        assert_eq!(config.server.trusted_proxy_nets().unwrap().len(), 3);
        assert!(config.validate().is_ok());
        config.server.trusted_proxies.push("10.0.0.0/33".into());
        assert_eq!(config.validate().unwrap_err().0, "server.trusted_proxies");
    }

    #[test]
    fn the_database_url_and_deadline_margin_are_validated_naming_their_key() {
        let validate = |database: &str| {
            let config = Config::parse(&format!("[database]\n{database}\n")).unwrap();
            config.validate()
        };
        assert_eq!(
            validate("deadline_margin_ms = 0").unwrap_err().0,
            "database.deadline_margin_ms"
        );
        let (key, reason) = validate("url = \"postgres://h/db?sslmode=require\"").unwrap_err();
        assert_eq!(key, "database.url");
        assert!(reason.contains("sslmode=require"), "{reason}");
        assert!(validate("url = \"postgres://h1,h2:5433/db?target_session_attrs=read-write\"").is_ok());
    }

    #[test]
    fn replica_settings_name_their_key_and_never_echo_a_url() {
        let parse = |database: &str| {
            let config = Config::parse(&format!("[database]\n{database}\n")).unwrap();
            config.validate()
        };
        assert!(parse("replicas = [\"postgres://u@10.0.0.2/db\"]").is_ok());
        let (key, reason) =
            parse("replicas = [\"postgres://u@h/db\", \"postgres://u:secret@h:notaport/db\"]").unwrap_err();
        assert_eq!(key, "database.replicas");
        assert!(reason.contains("entry 1") && !reason.contains("secret"), "{reason}");
        let nine = ["\"postgres://h/db\""; 9].join(", ");
        assert_eq!(
            parse(&format!("replicas = [{nine}]")).unwrap_err().0,
            "database.replicas"
        );
        assert_eq!(
            parse("max_replica_lag_ms = 0").unwrap_err().0,
            "database.max_replica_lag_ms"
        );
        let (key, _) = parse("max_replica_lag_ms = 50\nreplica_check_interval_ms = 50").unwrap_err();
        assert_eq!(
            key, "database.replica_check_interval_ms",
            "samples must come faster than the lag bound"
        );
        assert_eq!(
            parse("recent_writers_slots = 0").unwrap_err().0,
            "database.recent_writers_slots"
        );
    }

    #[test]
    fn unknown_key_is_named_with_its_section() {
        let (key, reason) = Config::parse("[server]\nshardz = 3\n").unwrap_err();
        assert_eq!(key, "server.shardz");
        assert!(reason.contains("unknown field"), "{reason}");
    }

    #[test]
    fn negative_shards_is_named() {
        let (key, _) = Config::parse("[server]\nshards = -1\n").unwrap_err();
        assert_eq!(key, "server.shards");
    }

    #[test]
    fn zero_shards_fails_validation_naming_the_key() {
        let config = Config::parse("[server]\nshards = 0\n").unwrap();
        assert_eq!(config.validate().unwrap_err().0, "server.shards");
    }

    #[test]
    fn env_overrides_urls() {
        let mut config = Config::default();
        config.apply_env(|name| (name == "PERCORE_DATABASE_URL").then(|| "postgres://x@h/db".to_string()));
        assert_eq!(config.database.url, "postgres://x@h/db");
        assert!(config.redis.url.is_empty());
    }

    #[test]
    fn shipped_tuning_toml_is_valid_and_matches_defaults_where_it_should() {
        let text = include_str!("../../tuning.toml");
        let config = Config::parse(text).expect("tuning.toml parses");
        config.validate().expect("tuning.toml validates");
        assert_eq!(config.http.head_bytes_max, Http::default().head_bytes_max);
        assert_eq!(config.server.shards, Server::default().shards);
    }
}
