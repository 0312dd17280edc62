//! The engine: what turns a validated configuration into running shards and stops them.
//! `start` places shards and workers on CPUs and starts them; `shard` is one shard's state
//! and its accept loop; `connection` hands each accepted socket to `http::conn` with this
//! shard's application as its service; `lifecycle` is signals, the watchdog and the memory
//! guard; `reload` applies a changed tuning.toml on SIGHUP; `budget` refuses a start that would exhaust the database's connections.
//!
//! It may import every layer below it (`api`, `config`, `limits`, `store`, `http`,
//! `metrics`, `units`, `runtime`); nothing imports it but `main`.

pub mod activation;
pub mod budget;
pub mod connection;
pub mod lifecycle;
pub mod reload;
pub mod shard;
pub mod start;
