//! What handlers can reach: the process-wide `Shared` and one shard's own `Shard`. The
//! engine builds both; the API only reads them.
//!
//! Runs on a shard: never blocks.

use crate::config::Config;
use crate::limits::rate_limit::Limiter;
use crate::limits::throttle::Throttle;
use crate::metrics::ShardMetrics;
use crate::store::Store;
use crate::store::redis::RedisTarget;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64};

/// Process-wide state, created once at start-up and never freed.
pub struct Shared {
    /// The start-up configuration: in force for every restart-only key. Live keys are
    /// applied from `live` by each shard and the reload itself.
    pub config: Config,
    pub live: crate::config::live::Published,
    pub metrics: Vec<ShardMetrics>,
    pub workers: percore_workers::Handle,
    /// The durable job queues: shards admit jobs against their depth and wake them.
    pub jobs: percore_workers::jobs::Handle,
    pub db_target: crate::store::pg::Target,
    /// `database.replicas`, resolved, in order.
    pub replica_targets: Vec<crate::store::pg::Target>,
    /// Clients' last writes, for read-your-writes across shards.
    pub recent_writers: crate::store::replicas::RecentWriters,
    pub redis_target: RedisTarget,
    /// An Argon2 hash of nothing anyone knows, made at start-up with the configured cost: a
    /// login for an unknown email verifies against it, so it costs what a real one does.
    pub dummy_password_hash: String,
    /// Set by the memory guard thread while resident memory is over `rss_bytes_max`.
    pub memory_pressure: AtomicBool,
    /// The memory guard's last sample of resident memory, in bytes.
    pub resident_bytes: AtomicU64,
}

/// One shard's application state, owned by its thread.
pub struct Shard {
    pub id: usize,
    pub shared: &'static Shared,
    pub metrics: &'static ShardMetrics,
    /// Its connections and its cache: the data layer.
    pub store: Rc<Store>,
    /// Sequence for the tokens `/readyz` echoes through Redis.
    pub probe_seq: Cell<u64>,
    pub login_throttle: RefCell<Throttle>,
    /// Per-client rate limits by route class.
    pub limiter: Limiter,
    /// xorshift64* state for the benchmark routes' random row ids (not for secrets).
    pub random: Cell<u64>,
}

impl Shard {
    pub fn config(&self) -> &'static Config {
        &self.shared.config
    }

    /// A pseudo-random number in `1..=max`.
    pub fn random_up_to(&self, max: u64) -> u64 {
        let mut x = self.random.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.random.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D) % max + 1
    }
}
