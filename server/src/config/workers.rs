//! `[workers]`: the pool that runs heavy work (password hashing) off the shards.

use crate::units::at_least;
use serde::{Deserialize, Serialize};

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

impl Workers {
    pub fn validate(&self) -> Result<(), (String, String)> {
        at_least("workers.threads", self.threads as u64, 1)?;
        at_least("workers.queue_depth_max", self.queue_depth_max as u64, 1)?;
        if !(0..=19).contains(&self.nice) {
            return Err((
                "workers.nice".into(),
                format!("must be between 0 and 19 (got {})", self.nice),
            ));
        }
        let memory_kib_min = 8 * self.argon2_parallelism as u64;
        at_least(
            "workers.argon2_memory_kib",
            self.argon2_memory_kib as u64,
            memory_kib_min,
        )?;
        at_least("workers.argon2_iterations", self.argon2_iterations as u64, 1)?;
        at_least("workers.argon2_parallelism", self.argon2_parallelism as u64, 1)
    }
}
