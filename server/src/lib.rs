//! percore's server: N shards, one per core, each serving HTTP/1.1 on its own listener of
//! the shared port, with its own Postgres and Redis connections and its own state.
//!
//! The rule of this crate: code here runs on a shard, and a shard never blocks. No
//! blocking socket, database, Redis, file or DNS call and no CPU-heavy work happens on a
//! shard thread; heavy work goes to the worker pool (`percore-workers`). The exceptions run
//! before the shards start (configuration, name resolution, migrations) and say so
//! with a `blocking-ok` comment.
//!
//! Layers, each importing only those below it (README.md, "How a request flows"):
//! `engine` > `api` > `config` > `limits` > `store` > `http`, `metrics`, `units`,
//! `runtime`.

pub mod api;
pub mod config;
pub mod engine;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod runtime;
pub mod store;
pub mod units;
