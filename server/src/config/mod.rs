//! `tuning.toml`: every runtime knob, with its default, parsed once at start-up.
//!
//! Unknown keys and bad values are refused with one message naming the file, the key and
//! the reason; `main` turns that into exit code 2. Durations are integers with their unit
//! last in the name (`idle_timeout_ms`), sizes likewise (`body_bytes_max`).

//!
//! Each section is a struct with its own `validate`, beside the code it configures or in
//! this folder; `Config::validate` runs them all. It imports the layers whose sections it
//! holds (`store`, `limits`, `http` for a limit), never `api` or `engine`.

mod api;
mod http;
pub mod live;
mod server;
mod workers;

pub use crate::store::settings::{Cache, Database, Redis};
pub use api::{Api, Identity};
pub use http::Http;
pub use server::{Bench, Cluster, Log, Server};
pub use workers::Workers;

use serde::{Deserialize, Serialize};
use std::path::Path;

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

    /// Range checks serde cannot express, section by section, then those that span two
    /// sections. Each names its key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        self.server.validate()?;
        self.cluster.validate()?;
        self.http.validate()?;
        self.workers.validate()?;
        self.database.validate()?;
        self.redis.validate()?;
        self.identity.validate()?;
        self.api.validate(self.http.body_bytes_max)?;
        self.cache.validate()?;
        self.rate_limit.validate()?;
        self.jobs.validate()?;
        if self.jobs.params_bytes_max > self.http.body_bytes_max {
            let reason = format!("must not exceed http.body_bytes_max ({})", self.http.body_bytes_max);
            return Err(("jobs.params_bytes_max".into(), reason));
        }
        self.email.validate()?;
        self.webhooks.validate()?;
        self.log.validate()
    }
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
        let text = include_str!("../../../tuning.toml");
        let config = Config::parse(text).expect("tuning.toml parses");
        config.validate().expect("tuning.toml validates");
        assert_eq!(config.http.head_bytes_max, Http::default().head_bytes_max);
        assert_eq!(config.server.shards, Server::default().shards);
    }
}
