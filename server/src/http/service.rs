//! The seam between the connection loop and everything above it, as hyper's `proto/h1`
//! sits under its `Service`: the loop knows bytes, limits and time; what a request means,
//! how it is counted and when the server is draining come through these two traits.
//!
//! Both are generic parameters of `conn::serve`, so each call is resolved at compile time:
//! the seam costs no indirection on the hot path.

use super::error::ApiError;
use super::request::{Method, Request};
use super::response::Reply;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::time::Duration;

/// The limits and timeouts one connection obeys (the `[http]` section, as the loop needs it).
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Request line, head and body sizes, as `head::parse` enforces them.
    pub head: super::head::HeadLimits,
    pub headers_count_max: usize,
    /// Waiting for the first byte of a next request.
    pub idle_timeout: Duration,
    /// From a request's first byte to its complete head.
    pub header_read_timeout: Duration,
    /// From a request's head to the end of its body.
    pub body_read_timeout: Duration,
    /// Encoded responses past this are flushed before the next request is read.
    pub write_buffer_bytes_max: usize,
}

/// What routing decided without waiting.
pub enum Routed<L, P> {
    /// Answered already: a routing error, or a handler that never waits.
    Answered(L, Result<Reply, ApiError>),
    /// A handler that must be awaited, with what routing found out.
    Pending(P),
}

/// The application under a connection: routing, handlers and the counters of what was
/// served. Runs on a shard: never blocks.
pub trait Service {
    /// Names a response in the metrics: the route that answered, or a pseudo-route.
    type Label: Copy + PartialEq;
    /// A routed request whose handler is still to run; it may borrow the request's bytes.
    type Pending<'r>;

    /// The limits in force now.
    fn limits(&self) -> ConnLimits;
    /// Changes whenever `limits` may have: a connection takes them again before its next
    /// request, so a reload reaches keep-alive connections too (a balancer's pooled ones
    /// may never close).
    fn limits_generation(&self) -> u64;
    /// The Date header's value, refreshed by the shard once a second.
    fn date(&self) -> &super::date::DateCache;
    /// Shutting down: answer what was read, then close.
    fn draining(&self) -> bool;
    /// The label of a request that could not be read (bad framing, a timeout, a panic).
    fn malformed(&self) -> Self::Label;

    /// Routes a request; answers at once when its handler never waits.
    fn route<'r>(&self, request: &Request<'r>, body: &mut Vec<u8>) -> Routed<Self::Label, Self::Pending<'r>>;
    /// Runs a routed request's handler; the body goes into `body`.
    fn respond<'r>(
        &self,
        request: &Request<'r>,
        pending: Self::Pending<'r>,
        body: &mut Vec<u8>,
    ) -> impl Future<Output = (Self::Label, Result<Reply, ApiError>)>;

    // The counters the loop feeds. Each runs on the shard's thread, for this shard only.
    fn connection_opened(&self);
    fn connection_closed(&self);
    /// `count` requests were read and are not answered yet (negative: answered).
    fn in_flight_changed(&self, count: isize);
    fn bytes_received(&self, count: usize);
    fn bytes_sent(&self, count: usize);
    /// `count` responses of one label and status, each `latency` from its bytes being read
    /// to its flush.
    fn answered(&self, label: Self::Label, status: u16, latency: Duration, count: u64);
    /// A handler panicked; its request is answered 500 and the connection goes on.
    fn handler_panicked(&self, method: Method, path: &str);
}

/// A client connection's byte stream, as the runtime provides it.
pub trait Transport {
    fn peer_ip(&self) -> IpAddr;
    /// Reads what is there into `buf`, waiting at most `timeout` for the first byte
    /// (`ErrorKind::TimedOut` after it). Returns 0 at end of stream.
    /// `between_requests`: nothing of a next request is read yet; a draining server may
    /// end such a wait early.
    /// `peer_is_answering`: a response was just written, so the peer's next bytes cannot
    /// be here yet and a look without waiting is likely wasted.
    fn read(
        &mut self,
        buf: &mut [u8],
        timeout: Duration,
        between_requests: bool,
        peer_is_answering: bool,
    ) -> impl Future<Output = io::Result<usize>>;
    fn write_all<'a>(&'a mut self, buf: &'a [u8]) -> impl Future<Output = io::Result<()>> + 'a;
}
