//! percore's server: N shards, one per core, each serving HTTP/1.1 on its own listener of
//! the shared port, with its own Postgres and Redis connections and its own state.
//!
//! The rule of this crate: code here runs on a shard, and a shard never blocks. No
//! blocking socket, database, Redis, file or DNS call and no CPU-heavy work happens on a
//! shard thread; heavy work goes to the worker pool (`percore-workers`). The exceptions run
//! before the shards start (configuration, name resolution, migrations) and say so
//! with a `blocking-ok` comment.

pub mod api;
pub mod cache;
pub mod config;
pub mod db;
pub mod engine;
pub mod http;
pub mod metrics;
pub mod rate_limit;
pub mod redis;
pub mod replicas;
pub mod room;
pub mod runtime;
pub mod sql;
pub mod throttle;
