//! The engine: what turns a validated configuration into running shards and stops them.
//! `start` places shards and workers on CPUs and starts them; `shard` is one shard's state
//! and its accept loop; `connection` hands each accepted socket to `http::conn` with this
//! shard's application as its service; `lifecycle` is signals, the watchdog and the memory
//! guard; `budget` refuses a start that would exhaust the database's connections.
//!
//! It may import every layer below it (`http`, `api`, the data layer, `limits`, `runtime`,
//! `config`, `metrics`); nothing below imports it, except through the `Shard` handle that
//! handlers still take (see README, "How a request flows").

pub mod budget;
pub mod connection;
pub mod lifecycle;
pub mod shard;
pub mod start;
