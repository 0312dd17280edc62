//! Per-shard counters and the Prometheus text exposition of all shards.
//!
//! Each shard writes only its own `ShardMetrics` (relaxed atomics on cache lines no other
//! core writes), so recording costs no lock and no cross-core traffic; `/metrics` on any
//! shard reads every shard's copy. With one writer, a count is bumped by a plain load and
//! store (`bump`), not a locked read-modify-write: readers on other cores still see whole
//! values, and the lock prefix was several per request on the hot path. Rendered by hand
//! because the families are fixed and the format is a page of text; a registry crate
//! would add a lock or a map to the hot path.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Statuses counted by name; anything else lands in the last slot as "other".
const STATUSES: [u16; 25] = [
    100, 200, 201, 202, 204, 304, 400, 401, 403, 404, 405, 408, 409, 413, 414, 415, 417, 422, 429, 431, 500, 501, 503,
    504, 505,
];
const STATUS_SLOTS: usize = STATUSES.len() + 1;
/// Upper bounds of the latency buckets, in seconds.
const BUCKETS_S: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const BUCKETS_US: [u64; 16] = {
    let mut out = [0u64; 16];
    let mut i = 0;
    while i < 16 {
        out[i] = (BUCKETS_S[i] * 1_000_000.0) as u64;
        i += 1;
    }
    out
};

/// The most replicas one percore reads from: these metrics keep a fixed slot per replica.
pub const REPLICAS_MAX: usize = 8;

/// Why a read that could have used a replica ran on the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnPrimary {
    /// No replica is up and within `max_replica_lag_ms`.
    NoneUsable,
    /// Replicas are usable but none has replayed past what this read must see.
    NotCaughtUp,
    /// The read fills the cache while this shard cannot hear invalidations: it could not
    /// tell how fresh a replica must be.
    CacheUnsubscribed,
    /// The read failed on the replica (it went down mid-read, say) and was retried here.
    ReplicaFailed,
    /// A session check found no live session on the replica: the session may be newer
    /// than the replica, so the primary decides.
    NoSessionOnReplica,
    /// The rows showed keys invalidated after what the replica held: read again here.
    ChangedAfterReplay,
}

impl OnPrimary {
    pub const ALL: [OnPrimary; 6] = [
        OnPrimary::NoneUsable,
        OnPrimary::NotCaughtUp,
        OnPrimary::CacheUnsubscribed,
        OnPrimary::ReplicaFailed,
        OnPrimary::NoSessionOnReplica,
        OnPrimary::ChangedAfterReplay,
    ];

    pub fn label(self) -> &'static str {
        match self {
            OnPrimary::NoneUsable => "none_usable",
            OnPrimary::NotCaughtUp => "not_caught_up",
            OnPrimary::CacheUnsubscribed => "cache_unsubscribed",
            OnPrimary::ReplicaFailed => "replica_failed",
            OnPrimary::NoSessionOnReplica => "no_session_on_replica",
            OnPrimary::ChangedAfterReplay => "changed_after_replay",
        }
    }
}

#[derive(Default)]
struct RouteMetrics {
    by_status: [AtomicU64; STATUS_SLOTS],
    /// Per-bucket (not cumulative) counts; the last slot is +Inf.
    latency_buckets: [AtomicU64; BUCKETS_S.len() + 1],
    latency_sum_us: AtomicU64,
    db_reads: AtomicU64,
    db_writes: AtomicU64,
    /// The most statements, and reads, any one request of this route ran: the query budget
    /// made visible under load.
    db_statements_max: AtomicU64,
    db_reads_max: AtomicU64,
}

/// Per route label, by its index in the names the registry was made with.
#[derive(Default)]
struct Routes {
    names: &'static [&'static str],
    metrics: Box<[RouteMetrics]>,
}

impl Routes {
    fn iter(&self) -> impl Iterator<Item = (&'static str, &RouteMetrics)> {
        self.names.iter().copied().zip(self.metrics.iter())
    }
}

impl std::ops::Index<usize> for Routes {
    type Output = RouteMetrics;
    fn index(&self, route: usize) -> &RouteMetrics {
        &self.metrics[route]
    }
}

/// One shard's counters; `new` names its routes (the default has none, for tests of
/// other families).
#[derive(Default)]
pub struct ShardMetrics {
    routes: Routes,
    pub connections_open: AtomicU64,
    pub connections_accepted: AtomicU64,
    pub accept_errors: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub handler_panics: AtomicU64,
    pub db_connections_up: AtomicU64,
    pub db_connect_failures: AtomicU64,
    pub db_pool_wait_timeouts: AtomicU64,
    pub db_queue_full: AtomicU64,
    /// Statements that found the pipelines full and waited in line (admitted or not).
    pub db_pool_waits: AtomicU64,
    /// Sampled each tick: statements holding pipeline room, and statements waiting for it.
    pub db_statements_in_flight: AtomicU64,
    pub db_statements_waiting: AtomicU64,
    pub redis_up: AtomicU64,
    pub redis_errors: AtomicU64,
    pub redis_commands: AtomicU64,
    pub cache_l1_hits: AtomicU64,
    pub cache_l1_misses: AtomicU64,
    pub cache_flight_joins: AtomicU64,
    pub cache_subscribed: AtomicU64,
    pub cache_invalidations_sent: AtomicU64,
    pub cache_invalidations_received: AtomicU64,
    pub cache_invalidations_unconfirmed: AtomicU64,
    pub cache_l2_hits: AtomicU64,
    pub cache_l2_misses: AtomicU64,
    pub cache_redis_errors: AtomicU64,
    pub cache_breaker_open: AtomicU64,
    /// Milliseconds since the Unix epoch of the shard loop's last tick.
    pub heartbeat_ms: AtomicU64,
    /// The configuration generation the shard has applied (0: start-up; each reload +1).
    pub config_generation: AtomicU64,
    /// By `database.replicas` position; slots past the configured ones stay zero.
    pub replicas: [ReplicaMetrics; REPLICAS_MAX],
    /// Reads that could have used a replica but ran on the primary, by
    /// `OnPrimary` (in `OnPrimary::ALL` order).
    pub replica_eligible_on_primary: [AtomicU64; OnPrimary::ALL.len()],
}

/// One replica as one shard sees it.
#[derive(Default)]
pub struct ReplicaMetrics {
    pub connections_up: AtomicU64,
    pub connect_failures: AtomicU64,
    /// How far behind the newest primary sample the replica's replay is, in time;
    /// `u64::MAX` while unknown (down, or not a standby).
    pub lag_ms: AtomicU64,
    /// 1 while reads may go to it: up and within `max_replica_lag_ms`.
    pub usable: AtomicU64,
    pub reads: AtomicU64,
}

impl ShardMetrics {
    /// A registry for routes named `route_names` (recorded by their index there).
    pub fn new(route_names: &'static [&'static str]) -> ShardMetrics {
        ShardMetrics {
            routes: Routes {
                names: route_names,
                metrics: route_names.iter().map(|_| RouteMetrics::default()).collect(),
            },
            ..ShardMetrics::default()
        }
    }

    pub fn record(&self, route: usize, status: u16, elapsed: Duration) {
        self.record_many(route, status, elapsed, 1);
    }

    /// `count` responses of one route and status that took `elapsed` each: a pipelined
    /// batch read and flushed together is recorded once, not once per request.
    pub fn record_many(&self, route: usize, status: u16, elapsed: Duration, count: u64) {
        let route = &self.routes[route];
        let slot = STATUSES.iter().position(|s| *s == status).unwrap_or(STATUS_SLOTS - 1);
        bump(&route.by_status[slot], count);
        let micros = elapsed.as_micros().min(u128::from(u64::MAX)) as u64;
        let bucket = BUCKETS_US
            .iter()
            .position(|bound| micros <= *bound)
            .unwrap_or(BUCKETS_US.len());
        bump(&route.latency_buckets[bucket], count);
        bump(&route.latency_sum_us, micros * count);
    }

    /// One request's SQL statements, by route.
    pub fn record_statements(&self, route: usize, reads: u32, writes: u32) {
        if reads + writes == 0 {
            return;
        }
        let route = &self.routes[route];
        bump(&route.db_reads, u64::from(reads));
        bump(&route.db_writes, u64::from(writes));
        route.db_statements_max.fetch_max(u64::from(reads + writes), Relaxed);
        route.db_reads_max.fetch_max(u64::from(reads), Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        bump(counter, n);
    }

    pub fn sub(counter: &AtomicU64, n: u64) {
        counter.store(counter.load(Relaxed) - n, Relaxed);
    }
}

/// Adds `n` to a counter only the calling shard writes (see the module comment).
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Relaxed) + n, Relaxed);
}

/// Process-wide gauges that belong to no shard.
pub struct Globals {
    pub worker_queue_depth: u64,
    pub worker_queue_capacity: u64,
    pub worker_rejected: u64,
    pub worker_shed: u64,
    pub worker_threads_busy: u64,
    pub worker_completed: u64,
    pub db_connections_per_shard: u64,
    /// Statements one shard's primary connections carry at once (connections × pipeline depth).
    pub db_pipeline_slots_per_shard: u64,
    pub replica_lag_max_ms: u64,
    pub resident_bytes: u64,
    pub rss_bytes_max: u64,
    pub memory_pressure: bool,
    /// How many of `ShardMetrics::replicas` are configured.
    pub replicas: u64,
}

/// Renders every family in the Prometheus text format, version 0.0.4.
pub fn render(shards: &[&ShardMetrics], globals: &Globals, out: &mut String) {
    render_requests(shards, out);
    render_durations(shards, out);
    render_statements(shards, out);
    render_per_shard(shards, out);
    render_replicas(shards, globals.replicas as usize, out);
    render_globals(globals, out);
}

/// Requests answered, by shard, route and status.
fn render_requests(shards: &[&ShardMetrics], out: &mut String) {
    family(
        out,
        "percore_http_requests_total",
        "counter",
        "Requests answered, by shard, route and status.",
    );
    for (id, shard) in shards.iter().enumerate() {
        for (label, route) in shard.routes.iter() {
            for (slot, count) in route.by_status.iter().enumerate() {
                let count = count.load(Relaxed);
                if count == 0 {
                    continue;
                }
                let status = STATUSES.get(slot).map_or("other".to_string(), |s| s.to_string());
                let _ = writeln!(
                    out,
                    "percore_http_requests_total{{shard=\"{id}\",route=\"{label}\",status=\"{status}\"}} {count}"
                );
            }
        }
    }
}

/// The latency histogram, by shard and route.
fn render_durations(shards: &[&ShardMetrics], out: &mut String) {
    family(
        out,
        "percore_http_request_duration_seconds",
        "histogram",
        "Time from reading a request to handing its response to the kernel.",
    );
    for (id, shard) in shards.iter().enumerate() {
        for (label, route) in shard.routes.iter() {
            let labels = format!("shard=\"{id}\",route=\"{label}\"");
            let mut cumulative = 0;
            for (i, bound) in BUCKETS_S.iter().enumerate() {
                cumulative += route.latency_buckets[i].load(Relaxed);
                let _ = writeln!(
                    out,
                    "percore_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                );
            }
            cumulative += route.latency_buckets[BUCKETS_S.len()].load(Relaxed);
            let sum_s = route.latency_sum_us.load(Relaxed) as f64 / 1e6;
            let _ = writeln!(
                out,
                "percore_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {cumulative}"
            );
            let _ = writeln!(out, "percore_http_request_duration_seconds_sum{{{labels}}} {sum_s}");
            let _ = writeln!(
                out,
                "percore_http_request_duration_seconds_count{{{labels}}} {cumulative}"
            );
        }
    }
}

/// Statements run, by shard, route and kind, and the most one request ran.
fn render_statements(shards: &[&ShardMetrics], out: &mut String) {
    family(
        out,
        "percore_db_statements_total",
        "counter",
        "SQL statements run, by shard, route and kind (read or write).",
    );
    for (id, shard) in shards.iter().enumerate() {
        for (label, route) in shard.routes.iter() {
            for (kind, counter) in [("read", &route.db_reads), ("write", &route.db_writes)] {
                let count = counter.load(Relaxed);
                if count > 0 {
                    let _ = writeln!(
                        out,
                        "percore_db_statements_total{{shard=\"{id}\",route=\"{label}\",kind=\"{kind}\"}} {count}"
                    );
                }
            }
        }
    }
    #[rustfmt::skip]
    let maxima: [(&str, &str, RouteCounter); 2] = [
        ("percore_db_request_statements_max", "The most SQL statements one request of the route ran (budget: 2).", |r| &r.db_statements_max),
        ("percore_db_request_reads_max", "The most SQL reads one request of the route ran (budget: 1).", |r| &r.db_reads_max),
    ];
    for (name, help, get) in maxima {
        family(out, name, "gauge", help);
        for (id, shard) in shards.iter().enumerate() {
            for (label, route) in shard.routes.iter() {
                let value = get(route).load(Relaxed);
                if value > 0 {
                    let _ = writeln!(out, "{name}{{shard=\"{id}\",route=\"{label}\"}} {value}");
                }
            }
        }
    }
}

/// The heartbeat and the one-sample-per-shard families.
fn render_per_shard(shards: &[&ShardMetrics], out: &mut String) {
    family(
        out,
        "percore_shard_heartbeat_timestamp_seconds",
        "gauge",
        "When the shard loop last ticked, Unix time.",
    );
    for (id, shard) in shards.iter().enumerate() {
        let seconds = shard.heartbeat_ms.load(Relaxed) as f64 / 1e3;
        let _ = writeln!(
            out,
            "percore_shard_heartbeat_timestamp_seconds{{shard=\"{id}\"}} {seconds}"
        );
    }
    #[rustfmt::skip]
    let per_shard: [Family; 27] = [
        ("percore_connections_open", "gauge", "Client connections open.", |m| &m.connections_open),
        ("percore_connections_accepted_total", "counter", "Client connections accepted.", |m| &m.connections_accepted),
        ("percore_accept_errors_total", "counter", "accept() failures (e.g. at the fd limit).", |m| &m.accept_errors),
        ("percore_received_bytes_total", "counter", "Bytes read from clients.", |m| &m.bytes_received),
        ("percore_sent_bytes_total", "counter", "Bytes written to clients.", |m| &m.bytes_sent),
        ("percore_handler_panics_total", "counter", "Handler panics turned into 500.", |m| &m.handler_panics),
        ("percore_db_connections_up", "gauge", "Postgres connections currently usable.", |m| &m.db_connections_up),
        ("percore_db_connect_failures_total", "counter", "Failed Postgres connection attempts.", |m| &m.db_connect_failures),
        ("percore_db_pool_wait_timeouts_total", "counter", "Requests that waited pool_wait_ms for a connection in vain.", |m| &m.db_pool_wait_timeouts),
        ("percore_db_queue_full_total", "counter", "Requests refused at once: database.queued_max statements already waited.", |m| &m.db_queue_full),
        ("percore_db_pool_waits_total", "counter", "Statements that found every pipeline full and waited in line for room.", |m| &m.db_pool_waits),
        ("percore_db_statements_in_flight", "gauge", "Statements holding pipeline room on the primary (sampled each heartbeat).", |m| &m.db_statements_in_flight),
        ("percore_db_statements_waiting", "gauge", "Statements waiting in line for pipeline room on the primary (sampled each heartbeat).", |m| &m.db_statements_waiting),
        ("percore_redis_up", "gauge", "1 while the shard's Redis connection is usable.", |m| &m.redis_up),
        ("percore_redis_errors_total", "counter", "Redis connection errors and command timeouts.", |m| &m.redis_errors),
        ("percore_redis_commands_total", "counter", "Redis commands sent.", |m| &m.redis_commands),
        ("percore_cache_l1_hits_total", "counter", "Reads answered from the shard's memory.", |m| &m.cache_l1_hits),
        ("percore_cache_l1_misses_total", "counter", "Reads the shard's memory could not answer.", |m| &m.cache_l1_misses),
        ("percore_cache_flight_joins_total", "counter", "Misses that waited for a load already running for the key.", |m| &m.cache_flight_joins),
        ("percore_cache_subscribed", "gauge", "1 while the shard hears invalidations (L1 is used only then).", |m| &m.cache_subscribed),
        ("percore_cache_invalidations_sent_total", "counter", "Invalidations this shard published after a write.", |m| &m.cache_invalidations_sent),
        ("percore_cache_invalidations_received_total", "counter", "Invalidations this shard applied, from any shard of any process.", |m| &m.cache_invalidations_received),
        ("percore_cache_invalidations_unconfirmed_total", "counter", "Invalidations not confirmed by every shard in time.", |m| &m.cache_invalidations_unconfirmed),
        ("percore_cache_l2_hits_total", "counter", "L1 misses answered from Redis.", |m| &m.cache_l2_hits),
        ("percore_cache_l2_misses_total", "counter", "L1 misses Redis could not answer (loaded from Postgres).", |m| &m.cache_l2_misses),
        ("percore_cache_redis_errors_total", "counter", "Cache calls to Redis that failed or timed out (redis_timeout_ms).", |m| &m.cache_redis_errors),
        ("percore_cache_breaker_open", "gauge", "1 while the shard leaves Redis alone after an error (breaker_backoff_ms).", |m| &m.cache_breaker_open),
    ];
    for (name, kind, help, get) in per_shard {
        family(out, name, kind, help);
        for (id, shard) in shards.iter().enumerate() {
            let _ = writeln!(out, "{name}{{shard=\"{id}\"}} {}", get(shard).load(Relaxed));
        }
    }
}

/// Process-wide gauges.
fn render_globals(globals: &Globals, out: &mut String) {
    #[rustfmt::skip]
    let global: [(&str, &str, &str, u64); 11] = [
        ("percore_worker_queue_depth", "gauge", "Tasks waiting for a worker thread.", globals.worker_queue_depth),
        ("percore_worker_queue_capacity", "gauge", "Bound of the worker queue (workers.queue_depth_max).", globals.worker_queue_capacity),
        ("percore_worker_rejected_total", "counter", "Tasks refused because the worker queue was full.", globals.worker_rejected),
        ("percore_worker_shed_total", "counter", "Tasks not run because they waited past workers.wait_ms_max (answered 503).", globals.worker_shed),
        ("percore_worker_threads_busy", "gauge", "Worker threads running a task.", globals.worker_threads_busy),
        ("percore_worker_tasks_completed_total", "counter", "Tasks the worker pool finished (e.g. password hashes and verifications).", globals.worker_completed),
        ("percore_db_connections_per_shard", "gauge", "Configured Postgres connections per shard, read and write.", globals.db_connections_per_shard),
        ("percore_db_pipeline_slots_per_shard", "gauge", "Statements one shard's primary connections carry at once (connections x database.pipeline_depth_max).", globals.db_pipeline_slots_per_shard),
        ("process_resident_memory_bytes", "gauge", "Resident memory of the process (sampled every 100 ms).", globals.resident_bytes),
        ("percore_memory_rss_bytes_max", "gauge", "server.rss_bytes_max: over it API requests get 503 until resident memory falls under 90% of it.", globals.rss_bytes_max),
        ("percore_memory_pressure", "gauge", "1 while resident memory is over server.rss_bytes_max and API requests get 503.", u64::from(globals.memory_pressure)),
    ];
    for (name, kind, help, value) in global {
        family(out, name, kind, help);
        let _ = writeln!(out, "{name} {value}");
    }
    let name = "percore_db_replica_lag_max_seconds";
    family(
        out,
        name,
        "gauge",
        "database.max_replica_lag_ms: past it a replica serves no reads.",
    );
    let _ = writeln!(out, "{name} {}", seconds_from_ms(globals.replica_lag_max_ms));
}

/// The configuration in force: reloads by result, a restart pending, its fingerprint and
/// when it was loaded.
pub struct ConfigState<'a> {
    pub reloads_applied: u64,
    pub reloads_refused: u64,
    pub restart_pending: bool,
    pub fingerprint: &'a str,
    pub loaded_at_s: u64,
}

pub fn render_config(config: &ConfigState<'_>, out: &mut String) {
    let name = "percore_config_reloads_total";
    family(out, name, "counter", "Reloads of tuning.toml (SIGHUP), by result.");
    let _ = writeln!(out, "{name}{{result=\"applied\"}} {}", config.reloads_applied);
    let _ = writeln!(out, "{name}{{result=\"refused\"}} {}", config.reloads_refused);
    let name = "percore_config_restart_pending";
    family(
        out,
        name,
        "gauge",
        "1 when a reload changed a key that only a restart applies.",
    );
    let _ = writeln!(out, "{name} {}", u8::from(config.restart_pending));
    let name = "percore_config_info";
    family(
        out,
        name,
        "gauge",
        "The configuration in force, by its fingerprint (SHA-256 of its canonical TOML).",
    );
    let _ = writeln!(out, "{name}{{sha256=\"{}\"}} 1", config.fingerprint);
    let name = "percore_config_loaded_timestamp_seconds";
    family(out, name, "gauge", "When the configuration in force was loaded.");
    let _ = writeln!(out, "{name} {}", config.loaded_at_s);
}

/// Milliseconds as Prometheus' base unit, exactly: 1500 → "1.500".
fn seconds_from_ms(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// Per shard and replica: its connections, lag and reads; and the reads kept on the primary.
fn render_replicas(shards: &[&ShardMetrics], replicas: usize, out: &mut String) {
    if replicas == 0 {
        return;
    }
    // How each family's stored value reads: counts as they are, the lag (kept in ms) in
    // Prometheus' base unit.
    let count: Format = |v| v.to_string();
    #[rustfmt::skip]
    let families: [(&str, &str, &str, ReplicaCounter, Format); 5] = [
        ("percore_db_replica_connections_up", "gauge", "Connections to the replica currently usable.", |r| &r.connections_up, count),
        ("percore_db_replica_connect_failures_total", "counter", "Failed connection attempts to the replica.", |r| &r.connect_failures, count),
        ("percore_db_replica_lag_seconds", "gauge", "How long ago the newest primary position the replica has replayed was sampled (NaN: unknown, e.g. down).", |r| &r.lag_ms, seconds_from_ms),
        ("percore_db_replica_usable", "gauge", "1 while reads may go to the replica: up and within database.max_replica_lag_ms.", |r| &r.usable, count),
        ("percore_db_replica_reads_total", "counter", "Reads the replica served.", |r| &r.reads, count),
    ];
    for (name, kind, help, get, format) in families {
        family(out, name, kind, help);
        for (id, shard) in shards.iter().enumerate() {
            for (replica, metrics) in shard.replicas.iter().take(replicas).enumerate() {
                let value = get(metrics).load(Relaxed);
                let value = if value == u64::MAX {
                    "NaN".to_string()
                } else {
                    format(value)
                };
                let _ = writeln!(out, "{name}{{shard=\"{id}\",replica=\"{replica}\"}} {value}");
            }
        }
    }
    let name = "percore_db_replica_eligible_reads_on_primary_total";
    family(
        out,
        name,
        "counter",
        "Reads a replica could have served that ran on the primary, by why.",
    );
    for (id, shard) in shards.iter().enumerate() {
        for (why, count) in OnPrimary::ALL.iter().zip(&shard.replica_eligible_on_primary) {
            let _ = writeln!(
                out,
                "{name}{{shard=\"{id}\",reason=\"{}\"}} {}",
                why.label(),
                count.load(Relaxed)
            );
        }
    }
}

/// The job queues: per queue, depth and oldest age (sampled from the database every
/// `jobs.poll_interval_ms`) and this process's workers' outcomes.
pub fn render_jobs(jobs: &percore_workers::jobs::Handle, out: &mut String) {
    #[rustfmt::skip]
    let families: [(&str, &str, &str, QueueValue); 8] = [
        ("percore_jobs_queue_depth", "gauge", "Jobs waiting in the queue (queued, or failed awaiting a retry), all processes.", |q| q.stats.depth.load(Relaxed)),
        ("percore_jobs_queue_oldest_age_seconds", "gauge", "How long the oldest runnable job of the queue has waited.", |q| q.stats.oldest_age_ms.load(Relaxed) / 1000),
        ("percore_jobs_queue_max_depth", "gauge", "The queue's max_depth: past it POST /v1/jobs answers 503.", |q| q.max_depth()),
        ("percore_jobs_running", "gauge", "Jobs this process's workers are running.", |q| q.stats.running.load(Relaxed)),
        ("percore_jobs_done_total", "counter", "Jobs this process's workers finished.", |q| q.stats.done.load(Relaxed)),
        ("percore_jobs_retried_total", "counter", "Failed attempts this process scheduled a retry for.", |q| q.stats.retried.load(Relaxed)),
        ("percore_jobs_dead_total", "counter", "Jobs this process's workers gave up on (out of attempts, or a permanent error).", |q| q.stats.dead.load(Relaxed)),
        ("percore_jobs_rejected_total", "counter", "POST /v1/jobs answered 503 because the queue was at max_depth.", |q| q.stats.rejected.load(Relaxed)),
    ];
    for (name, kind, help, get) in families {
        family(out, name, kind, help);
        for queue in jobs.queues() {
            let _ = writeln!(out, "{name}{{queue=\"{}\"}} {}", queue.name, get(queue));
        }
    }
}

/// One queue's value, picked out of its handle.
type QueueValue = fn(&percore_workers::jobs::QueueHandle) -> u64;

/// One replica's counter, picked out of its metrics.
type ReplicaCounter = fn(&ReplicaMetrics) -> &AtomicU64;
/// How a stored value reads in the exposition.
type Format = fn(u64) -> String;

/// One route's counter, picked out of its metrics.
type RouteCounter = fn(&RouteMetrics) -> &AtomicU64;

/// (name, type, help, the shard's counter) of a one-sample-per-shard family.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ShardMetrics) -> &AtomicU64,
);

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_counts_match() {
        let metrics = ShardMetrics::new(&["healthz"]);
        metrics.record(0, 200, Duration::from_micros(50));
        metrics.record(0, 200, Duration::from_millis(3));
        metrics.record(0, 299, Duration::from_secs(60));
        let globals = Globals {
            worker_queue_depth: 0,
            worker_queue_capacity: 1,
            worker_rejected: 0,
            worker_shed: 0,
            worker_threads_busy: 0,
            worker_completed: 0,
            db_connections_per_shard: 2,
            db_pipeline_slots_per_shard: 256,
            replica_lag_max_ms: 1500,
            resident_bytes: 1 << 20,
            rss_bytes_max: 1 << 30,
            memory_pressure: true,
            replicas: 1,
        };
        metrics.replicas[0].lag_ms.store(u64::MAX, Relaxed);
        metrics.replicas[0].reads.store(7, Relaxed);
        let mut out = String::new();
        render(&[&metrics], &globals, &mut out);
        assert!(out.contains("percore_http_requests_total{shard=\"0\",route=\"healthz\",status=\"200\"} 2\n"));
        assert!(out.contains("route=\"healthz\",status=\"other\"} 1\n"));
        assert!(out.contains("route=\"healthz\",le=\"0.0001\"} 1\n"));
        assert!(out.contains("route=\"healthz\",le=\"0.005\"} 2\n"));
        assert!(out.contains("route=\"healthz\",le=\"10\"} 2\n"));
        assert!(out.contains("route=\"healthz\",le=\"+Inf\"} 3\n"));
        assert!(out.contains("percore_db_replica_lag_seconds{shard=\"0\",replica=\"0\"} NaN\n"));
        assert!(out.contains("\npercore_db_replica_lag_max_seconds 1.500\n"));
        assert!(out.contains("percore_db_replica_reads_total{shard=\"0\",replica=\"0\"} 7\n"));
        assert!(!out.contains("replica=\"1\""), "only configured replicas");
        assert!(out.contains("percore_http_request_duration_seconds_count{shard=\"0\",route=\"healthz\"} 3\n"));
        assert!(out.contains("\npercore_memory_pressure 1\n"));
        assert!(out.contains("\nprocess_resident_memory_bytes 1048576\n"));
    }
}
