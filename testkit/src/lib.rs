//! Real PostgreSQL and Redis processes, started from the machine's own binaries.
//!
//! - [`Postgres::throwaway`] and [`Redis::throwaway`]: for tests. Random free port, a
//!   fresh temp dir, no durability (fsync off, no persistence). The server process is our
//!   child with a parent-death signal, so it dies with the test process even when that
//!   process is killed; `Drop` stops it and removes its directory. Parallel tests never
//!   share a port or a directory. `TEST_DATABASE_URL` / `TEST_REDIS_URL`, when set, are
//!   used instead.
//! - [`dev::ensure`]: for `percore`'s run command when no database is configured: a
//!   Postgres and a Redis under `./var/`, kept (and left running) between runs.
//!
//! Everything here blocks: call it from tests or at start-up, never from a shard.

pub mod dev;
mod postgres;
mod process;
pub mod proxy;
mod redis;

pub use postgres::Postgres;
pub use redis::Redis;
// For tests that start servers of their own (SMTP, HTTP receivers) beside these.
pub use process::{free_port, on_path, port_open, temp_dir, wait_until};
