//! Which keys change while percore runs, and which need a restart.
//!
//! A reload (SIGHUP) reads `tuning.toml` as start-up does, then takes from it only the
//! keys listed in `LIVE_KEYS`; every other key keeps its running value, and those that
//! differ are named so that an operator knows a restart is pending. The list is the one
//! place that says what is live: the shards apply exactly these (`engine::reload`).

use super::Config;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Dotted key paths that a reload applies; `*` stands for one path segment (a queue's
/// name). A key is live when its path is one of these or lies under one.
pub const LIVE_KEYS: &[&str] = &[
    // Per-client rate limits and login throttling.
    "rate_limit.read",
    "rate_limit.write",
    "rate_limit.auth",
    "rate_limit.jobs",
    "rate_limit.redis_timeout_ms",
    "identity.login_rate_per_minute",
    "identity.login_burst",
    // HTTP timeouts and size limits, for connections accepted after the reload.
    "http.request_line_bytes_max",
    "http.head_bytes_max",
    "http.headers_count_max",
    "http.body_bytes_max",
    "http.header_read_timeout_ms",
    "http.body_read_timeout_ms",
    "http.idle_timeout_ms",
    "http.write_timeout_ms",
    "http.write_buffer_bytes_max",
    // Postgres: the pool wait at once; the statement timeout for connections opened after.
    "database.pool_wait_ms",
    "database.statement_timeout_ms",
    // Cache lifetimes, for entries stored after the reload.
    "cache.l1_ttl_ms",
    "cache.ttl_s",
    // Job queues: depth at once; attempts for jobs enqueued after.
    "jobs.queues.*.max_depth",
    "jobs.queues.*.max_attempts",
    "jobs.max_attempts",
    "log.level",
    // Webhook deliveries that start after the reload.
    "webhooks.timeout_ms",
];

pub fn is_live(key: &str) -> bool {
    LIVE_KEYS.iter().any(|pattern| {
        let (pattern, key): (Vec<&str>, Vec<&str>) = (pattern.split('.').collect(), key.split('.').collect());
        key.len() >= pattern.len() && pattern.iter().zip(&key).all(|(p, k)| *p == "*" || p == k)
    })
}

/// What a reload would do with a freshly loaded file.
pub struct Reloaded {
    /// The running configuration with the file's live keys.
    pub config: Config,
    /// Live keys whose value changes.
    pub applied: Vec<String>,
    /// Keys whose new value waits for a restart.
    pub restart_only: Vec<String>,
}

/// `running`, with the live keys of `loaded`; names the restart-only keys that differ.
pub fn merge(running: &Config, loaded: &Config) -> Result<Reloaded, (String, String)> {
    let (old, new) = (flatten(running), flatten(loaded));
    let mut changed: Vec<&String> = new.keys().filter(|k| old.get(*k) != new.get(*k)).collect();
    changed.extend(old.keys().filter(|k| !new.contains_key(*k)));
    changed.sort();
    changed.dedup();
    let (applied, restart_only): (Vec<String>, Vec<String>) =
        changed.into_iter().cloned().partition(|key| is_live(key));
    let mut merged = toml::Value::try_from(running).map_err(|e| ("".into(), e.to_string()))?;
    for key in &applied {
        set(&mut merged, key, new.get(key).cloned());
    }
    let config: Config = merged
        .try_into()
        .map_err(|e: toml::de::Error| ("".to_string(), e.to_string()))?;
    config.validate()?;
    Ok(Reloaded {
        config,
        applied,
        restart_only,
    })
}

/// SHA-256 of the configuration's canonical TOML, in hex (first 16 digits): tells two
/// configurations apart in `/metrics` and logs.
pub fn fingerprint(config: &Config) -> String {
    let text = toml::to_string(config).unwrap_or_default();
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The configuration in force, as reloads publish it for the shards to apply. The lock is
/// taken by a reload and by a shard only when the generation moved: never per request.
pub struct Published {
    generation: AtomicU64,
    current: Mutex<(Arc<Config>, String)>,
    /// Some key changed that only a restart applies.
    pub restart_pending: AtomicBool,
    pub reloads_applied: AtomicU64,
    pub reloads_refused: AtomicU64,
    /// When the configuration in force was loaded (seconds since the epoch).
    pub loaded_at_s: AtomicU64,
}

impl Published {
    pub fn new(config: &Config) -> Published {
        Published {
            generation: AtomicU64::new(0),
            current: Mutex::new((Arc::new(config.clone()), fingerprint(config))),
            restart_pending: AtomicBool::new(false),
            reloads_applied: AtomicU64::new(0),
            reloads_refused: AtomicU64::new(0),
            loaded_at_s: AtomicU64::new(now_s()),
        }
    }

    /// Bumped by every applied reload; 0 is the start-up configuration.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The configuration in force, its generation and its fingerprint.
    pub fn current(&self) -> (u64, Arc<Config>, String) {
        let current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        (self.generation(), current.0.clone(), current.1.clone())
    }

    /// Puts `config` in force; returns its generation.
    pub fn publish(&self, config: Config) -> u64 {
        let hash = fingerprint(&config);
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        *current = (Arc::new(config), hash);
        self.loaded_at_s.store(now_s(), Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
    }
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Every leaf value by its dotted path (arrays are leaves).
fn flatten(config: &Config) -> BTreeMap<String, toml::Value> {
    fn walk(prefix: &str, value: &toml::Value, out: &mut BTreeMap<String, toml::Value>) {
        match value {
            toml::Value::Table(table) => {
                for (name, value) in table {
                    let path = if prefix.is_empty() {
                        name.clone()
                    } else {
                        format!("{prefix}.{name}")
                    };
                    walk(&path, value, out);
                }
            }
            leaf => {
                out.insert(prefix.to_string(), leaf.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    if let Ok(value) = toml::Value::try_from(config) {
        walk("", &value, &mut out);
    }
    out
}

/// Sets (or removes, for `None`) the value at `path`, making tables on the way.
fn set(root: &mut toml::Value, path: &str, value: Option<toml::Value>) {
    let mut parts: Vec<&str> = path.split('.').collect();
    let Some(last) = parts.pop() else { return };
    let mut node = root;
    for part in parts {
        let toml::Value::Table(table) = node else { return };
        node = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
    }
    if let toml::Value::Table(table) = node {
        match value {
            Some(value) => {
                table.insert(last.to_string(), value);
            }
            None => {
                table.remove(last);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        Config::parse(text).expect("a valid test configuration")
    }

    #[test]
    fn live_keys_are_applied_and_restart_only_keys_are_named_and_kept() {
        let running = parse("[server]\nshards = 2\n[rate_limit.read]\nrate = 100.0\nburst = 10\n");
        let loaded = parse(
            "[server]\nshards = 4\n[rate_limit.read]\nrate = 5.0\nburst = 10\n\
             [http]\nidle_timeout_ms = 1234\n[log]\nlevel = \"debug\"\n",
        );
        let reloaded = merge(&running, &loaded).unwrap();
        assert_eq!(reloaded.config.rate_limit.read.rate, 5.0);
        assert_eq!(reloaded.config.http.idle_timeout_ms, 1234);
        assert_eq!(reloaded.config.log.level, "debug");
        assert_eq!(reloaded.config.server.shards, 2, "restart-only: kept");
        assert_eq!(reloaded.restart_only, vec!["server.shards".to_string()]);
        assert_eq!(
            reloaded.applied,
            ["http.idle_timeout_ms", "log.level", "rate_limit.read.rate"].map(String::from)
        );
    }

    #[test]
    fn a_queue_pattern_matches_any_queue_name_and_nothing_else() {
        assert!(is_live("jobs.queues.email.max_depth"));
        assert!(is_live("rate_limit.auth.burst"));
        assert!(!is_live("jobs.queues.email.threads"));
        assert!(!is_live("rate_limit.mode"));
        assert!(!is_live("server.listen"));
    }

    #[test]
    fn the_fingerprint_changes_with_the_configuration() {
        let a = parse("");
        let b = parse("[http]\nidle_timeout_ms = 1234\n");
        assert_eq!(fingerprint(&a), fingerprint(&parse("")));
        assert_ne!(fingerprint(&a), fingerprint(&b));
        assert_eq!(fingerprint(&a).len(), 16);
    }

    #[test]
    fn tuning_toml_marks_exactly_the_live_keys() {
        let text = include_str!("../../../tuning.toml");
        let mut section = String::new();
        let mut marked = 0;
        for line in text.lines() {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.to_string();
                continue;
            }
            let Some((key, _)) = line.split_once(" = ").filter(|_| !line.starts_with('#')) else {
                continue;
            };
            let path = format!("{section}.{}", key.trim());
            let says_live = line.ends_with("# live");
            assert_eq!(
                says_live,
                is_live(&path),
                "tuning.toml: {path} is marked live: {says_live}"
            );
            marked += usize::from(says_live);
        }
        assert!(marked >= 25, "{marked} live keys marked");
    }
}
