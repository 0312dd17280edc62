//! The connection budget: how many Postgres connections one percore opens to each server
//! (the primary, and each of `database.replicas`), and whether `[cluster]
//! expected_instances` of them fit in what that server allows. Checked once at
//! start-up, so that the fourth instance of a deployment refuses to start with the sums in
//! its message instead of starving the other three at run time.
//!
//! Blocking: start-up only, before any shard exists.

use crate::config::Config;
use postgres::Client as BlockingClient; // blocking-ok: start-up only, before any shard exists

/// One instance's connections to one Postgres server, by who holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerInstance {
    pub shards: u64,
    /// Connections of one shard to this server.
    pub per_shard: u64,
    /// Job worker threads' pool (one per thread, plus the maintenance thread's and one spare).
    pub workers: u64,
    /// The settings `per_shard` sums, for the message.
    pub per_shard_keys: &'static str,
}

impl PerInstance {
    pub fn of(config: &Config, shards: usize) -> PerInstance {
        let jobs = &config.jobs;
        let job_threads: usize = if jobs.run {
            jobs.queues.values().map(|q| q.threads).sum()
        } else {
            0
        };
        PerInstance {
            shards: shards as u64,
            per_shard: (config.database.connections_per_shard + config.database.write_connections_per_shard) as u64,
            workers: job_threads as u64 + 2,
            per_shard_keys: "database.connections_per_shard + database.write_connections_per_shard",
        }
    }

    /// To one replica: each shard's read connections; writes and job workers stay on the
    /// primary.
    pub fn of_replica(config: &Config, shards: usize) -> PerInstance {
        PerInstance {
            shards: shards as u64,
            per_shard: config.database.connections_per_shard as u64,
            workers: 0,
            per_shard_keys: "database.connections_per_shard",
        }
    }

    pub fn total(&self) -> u64 {
        self.shards * self.per_shard + self.workers
    }
}

/// `Err(message)` when `instances` × `per_instance` exceeds `max_connections` less the
/// slots Postgres keeps for superusers. `server` names it in the message.
pub fn check(
    server: &str,
    per_instance: PerInstance,
    instances: u64,
    max_connections: u64,
    reserved: u64,
) -> Result<(), String> {
    let need = instances * per_instance.total();
    let available = max_connections.saturating_sub(reserved);
    if need <= available {
        return Ok(());
    }
    Err(format!(
        "connection budget of {server}: cluster.expected_instances = {instances} instances × {} connections each \
         ({} shards × {} ({}) + {} for job workers) \
         = {need}, but it allows {available} (max_connections {max_connections} less {reserved} reserved); \
         lower those settings or raise max_connections",
        per_instance.total(),
        per_instance.shards,
        per_instance.per_shard,
        per_instance.per_shard_keys,
        per_instance.workers,
    ))
}

/// Asks `server` its limits and checks `per_instance`'s budget against them.
pub fn check_server(
    client: &mut BlockingClient,
    server: &str,
    per_instance: PerInstance,
    instances: u64,
) -> Result<(), String> {
    let setting = |client: &mut BlockingClient, name: &str| -> Result<u64, String> {
        let row = client
            .query_one("SELECT setting::int8 FROM pg_settings WHERE name = $1", &[&name])
            .map_err(|e| format!("connection budget: reading {name}: {e}"))?;
        Ok(row.get::<_, i64>(0).max(0) as u64)
    };
    let max_connections = setting(client, "max_connections")?;
    let reserved = setting(client, "superuser_reserved_connections")?;
    check(server, per_instance, instances, max_connections, reserved)?;
    log::info!(
        "connection budget of {server}: {instances} instance(s) × {} connections of {} allowed",
        per_instance.total(),
        max_connections - reserved.min(max_connections)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_shards_groups_and_workers_against_the_reserve() {
        let one = PerInstance {
            shards: 4,
            per_shard: 6,
            workers: 15,
            per_shard_keys: "k",
        };
        assert_eq!(one.total(), 39);
        assert!(check("p", one, 2, 100, 3).is_ok(), "78 of 97");
        let refused = check("the primary", one, 3, 100, 3).unwrap_err();
        assert!(refused.contains("117") && refused.contains("97"), "{refused}");
        assert!(
            refused.contains("of the primary: cluster.expected_instances = 3"),
            "{refused}"
        );
        assert!(check("p", one, 1, 39, 0).is_ok(), "exactly full fits");
    }

    #[test]
    fn a_replica_carries_only_the_shards_read_connections() {
        let config = Config {
            database: crate::config::Database {
                connections_per_shard: 3,
                write_connections_per_shard: 4,
                ..Default::default()
            },
            ..Default::default()
        };
        let replica = PerInstance::of_replica(&config, 4);
        assert_eq!(replica.total(), 12, "4 shards × 3 reads, no writes, no job workers");
        assert!(
            PerInstance::of(&config, 4).total() > 28,
            "the primary also carries writes and workers"
        );
        let refused = check("database.replicas[1]", replica, 9, 100, 3).unwrap_err();
        assert!(
            refused.contains("of database.replicas[1]") && refused.contains("108"),
            "{refused}"
        );
    }
}
