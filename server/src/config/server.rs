//! `[server]`, `[cluster]`, `[bench]` and `[log]`: the process and its place.

use crate::units::at_least;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    pub listen: SocketAddr,
    pub shards: usize,
    /// CPUs for the shards, one each; empty means the first `shards` usable CPUs.
    pub cpus: Vec<usize>,
    pub connections_per_shard_max: usize,
    /// Each shard's listen backlog: connections the kernel completes and queues while the
    /// shard is busy or at its cap (net.core.somaxconn caps it).
    pub listen_backlog: i32,
    pub shutdown_timeout_ms: u64,
    /// Draining: how long a keep-alive connection idle between requests stays open for a
    /// request already on its way; within `shutdown_timeout_ms`.
    pub drain_idle_ms: u64,
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
            listen_backlog: 1024,
            shutdown_timeout_ms: 10_000,
            drain_idle_ms: 500,
            heartbeat_interval_ms: 250,
            accept_error_backoff_ms: 100,
            detect_stalls: false,
            rss_bytes_max: 4 << 30,
            trusted_proxies: Vec::new(),
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

impl Server {
    pub fn validate(&self) -> Result<(), (String, String)> {
        at_least("server.shards", self.shards as u64, 1)?;
        if self.shards > 1024 {
            return Err((
                "server.shards".into(),
                format!("must be at most 1024 (got {})", self.shards),
            ));
        }
        if !self.cpus.is_empty() && self.cpus.len() < self.shards {
            let (cpus, shards) = (self.cpus.len(), self.shards);
            let reason = format!("lists {cpus} CPUs for {shards} shards; list one per shard or none");
            return Err(("server.cpus".into(), reason));
        }
        let mut cpus = self.cpus.clone();
        cpus.sort_unstable();
        if cpus.windows(2).any(|w| w[0] == w[1]) {
            return Err((
                "server.cpus".into(),
                "lists a CPU twice; each shard needs its own".into(),
            ));
        }
        at_least(
            "server.connections_per_shard_max",
            self.connections_per_shard_max as u64,
            1,
        )?;
        at_least("server.listen_backlog", self.listen_backlog.max(0) as u64, 1)?;
        at_least("server.heartbeat_interval_ms", self.heartbeat_interval_ms, 10)?;
        at_least("server.drain_idle_ms", self.drain_idle_ms, 1)?;
        if self.drain_idle_ms > self.shutdown_timeout_ms {
            let reason = format!(
                "must be at most server.shutdown_timeout_ms ({}), got {}",
                self.shutdown_timeout_ms, self.drain_idle_ms
            );
            return Err(("server.drain_idle_ms".into(), reason));
        }
        at_least("server.rss_bytes_max", self.rss_bytes_max, 1 << 20)?;
        self.trusted_proxy_nets().map(|_| ())
    }
}

impl Cluster {
    pub fn validate(&self) -> Result<(), (String, String)> {
        at_least("cluster.expected_instances", self.expected_instances, 1)
    }
}

impl Log {
    pub fn validate(&self) -> Result<(), (String, String)> {
        if !["error", "warn", "info", "debug", "trace"].contains(&self.level.as_str()) {
            return Err(("log.level".into(), format!("unknown level {:?}", self.level)));
        }
        Ok(())
    }
}
