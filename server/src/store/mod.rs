//! The data layer: everything a handler reads or writes, and nothing of HTTP.
//!
//! - `catalogue`: every SQL statement, as data (imports nothing);
//! - `executor`: `Sql`, the per-request handle that runs catalogue statements against the
//!   query budget, on the primary or a replica;
//! - `pg`: this shard's Postgres connections (`percore-pg`), supervised and reconnected;
//! - `replicas`: which replica may serve a read, and how far each has replayed;
//! - `room`: the FIFO room of a connection's pipeline;
//! - `redis`: this shard's Redis connection;
//! - `cache`: the two-level cache (per-shard L1, Redis L2) and its invalidation bus.
//!
//! It returns `StoreError`; the API maps each to an HTTP status in one table
//! (`api::errors`). It may import `runtime`, `config` and `metrics`, nothing above.
//!
//! Runs on a shard: never blocks.

pub mod cache;
pub mod catalogue;
mod error;
pub mod executor;
pub mod pg;
pub mod redis;
pub mod replicas;
pub mod room;
pub mod settings;
pub mod typed_row;

pub use catalogue::{Kind, Stmt};
pub use error::StoreError;
pub use executor::Sql;

use crate::metrics::ShardMetrics;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;

/// One shard's data handles: its connections, its cache, and where it records writes for
/// read-your-writes across shards.
pub struct Store {
    pub shard_id: usize,
    pub db: Rc<pg::Pool>,
    /// Pools to `database.replicas` and what each has replayed.
    pub replicas: Rc<replicas::Replicas>,
    pub redis: Rc<redis::RedisClient>,
    pub cache: cache::Cache,
    /// Clients' last writes, process-wide.
    pub recent_writers: &'static replicas::RecentWriters,
    pub metrics: &'static ShardMetrics,
    pub redis_settings: &'static settings::Redis,
    pub cache_settings: &'static settings::Cache,
}

impl Store {
    /// A reload: pool waits and statement timeouts, and cache lifetimes (see
    /// `config::live` for what changes when).
    pub fn reconfigure(&self, database: &settings::Database, cache: &settings::Cache) {
        self.db.reconfigure(database);
        self.replicas.reconfigure(database);
        self.cache.reconfigure(cache);
    }

    /// Copies the primary pool's occupancy into the metrics; the shard's heartbeat calls it.
    pub fn sample_occupancy(&self) {
        let (in_flight, waiting) = self.db.occupancy();
        self.metrics.db_statements_in_flight.store(in_flight as u64, Relaxed);
        self.metrics.db_statements_waiting.store(waiting as u64, Relaxed);
    }
}
