//! HTTP/1.1 for a shard, one small module per job: `head` parses a request head and
//! enforces its limits, `body` decodes chunked bodies, `response` encodes, `date` caches the
//! Date header, `error` maps every error to its status in one table, `conn` runs a
//! connection, and `service` is the seam it runs it through.
//!
//! It imports nothing of the server: the application above comes in through
//! `service::Service` (routing, handlers, counters, draining) and the socket through
//! `service::Transport`, as hyper's `proto/h1` sits under its service.

pub mod body;
pub mod conn;
pub mod date;
pub mod error;
pub mod head;
pub mod request;
pub mod response;
pub mod service;

#[cfg(test)]
mod codec_properties;

pub use error::ApiError;
pub use request::{Method, Request};
pub use response::Reply;
