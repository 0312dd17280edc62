//! percore-pg: a Postgres client for shards.
//!
//! One connection is one socket driven by one future (`Connection`), polled on the shard
//! that owns it; `Client` handles send prepared statements on it. Callers encode
//! Bind/Execute/Sync straight into the connection's write buffer and wait on a reusable
//! slot; the driver sends everything encoded since its last send in one write and reads
//! many answers per receive, cutting each statement's at its ReadyForQuery and decoding
//! values only when asked. An ErrorResponse fails its own statement and the pipeline goes
//! on; a socket error fails every pending statement.
//!
//! Its rules: no threads, no `Send`, no runtime of its own (the socket is any
//! `AsyncRead + AsyncWrite`), no lock or atomic on the path of a statement, and no
//! hand-written protocol encoding (postgres-protocol writes and parses the messages,
//! postgres-types converts the values). It never blocks: name resolution, timers and
//! reconnecting belong to the caller, who learns from `Client::waiting_since` when the
//! server has gone silent and `abort`s.

mod config;
mod conn;
mod error;
mod rows;
mod startup;

pub use config::{Config, Host, TargetSessionAttrs};
pub use conn::{Client, Connection, Statement};
pub use error::{DbError, Error, INVALID_PASSWORD, QUERY_CANCELED};
pub use rows::{Row, Rows};
pub use startup::connect;

/// The value conversions: `ToSql` for parameters, `FromSql` for columns.
pub mod types {
    pub use postgres_types::{FromSql, IsNull, Kind, PgLsn, ToSql, Type};
}
