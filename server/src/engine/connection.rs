//! One accepted socket, served by `http::conn` with its shard's application as the service.
//! Here the HTTP layer's two seams meet the runtime and the API: `ClientSocket` is the
//! transport (a runtime socket and its read deadline), and `Shard` is the service (routing
//! into `api`, counting into the shard's metrics).
//!
//! Runs on a shard: never blocks.

use super::shard::ShardService;
use crate::api::routes::Label;
use crate::api::{self, Dispatch, Routed as Pending};
use crate::http::date::DateCache;
use crate::http::service::{ConnLimits, Routed, Service, Transport};
use crate::http::{ApiError, Method, Reply, Request};
use crate::metrics::ShardMetrics;
use crate::runtime::deadlines::ReadDeadline;
use crate::runtime::{self, TcpStream};
use futures::AsyncWriteExt;
use std::future::Future;
use std::io;
use std::rc::Rc;
use std::time::Duration;

/// Serves `stream` until it closes, then closes it.
pub async fn serve(shard: Rc<ShardService>, stream: TcpStream) {
    let http = &shard.config().http;
    let _ = stream.set_nodelay(http.tcp_nodelay);
    let _ = stream.set_write_timeout(Some(shard.write_timeout.get()));
    let deadline = shard.deadlines.register(std::os::fd::AsRawFd::as_raw_fd(&stream));
    let mut socket = ClientSocket {
        stream,
        deadline,
        read_retries_max: http.read_retries_max,
    };
    if let Err(e) = crate::http::conn::serve(&*shard, &mut socket).await {
        log::debug!("shard {}: connection closed: {e}", shard.id());
    }
    let _ = socket.stream.close().await;
}

/// A client socket with the read deadline the shard's sweeper enforces.
struct ClientSocket {
    stream: TcpStream,
    deadline: Rc<ReadDeadline>,
    read_retries_max: usize,
}

impl Transport for ClientSocket {
    fn peer_ip(&self) -> std::net::IpAddr {
        self.stream
            .peer_addr()
            .map_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |a| a.ip())
    }

    // Not `async fn`s: the runtime's futures are handed over as they are, with no layer
    // around them (one per read and per write, on every request).
    fn read(
        &mut self,
        buf: &mut [u8],
        timeout: Duration,
        between_requests: bool,
        peer_is_answering: bool,
    ) -> impl Future<Output = io::Result<usize>> {
        let deadline = (&*self.deadline, timeout);
        runtime::read(
            &self.stream,
            buf,
            deadline,
            self.read_retries_max,
            between_requests,
            peer_is_answering,
        )
    }

    fn write_all<'a>(&'a mut self, buf: &'a [u8]) -> impl Future<Output = io::Result<()>> + 'a {
        self.stream.write_all(buf)
    }
}

impl Service for ShardService {
    type Label = Label;
    type Pending<'r> = Pending<'r>;

    fn limits(&self) -> ConnLimits {
        self.conn_limits.get()
    }

    fn limits_generation(&self) -> u64 {
        self.applied_generation.get()
    }

    fn date(&self) -> &DateCache {
        &self.date
    }

    fn draining(&self) -> bool {
        self.draining.get()
    }

    fn malformed(&self) -> Label {
        Label::MALFORMED
    }

    fn route<'r>(&self, request: &Request<'r>, body: &mut Vec<u8>) -> Routed<Label, Pending<'r>> {
        match api::dispatch(&self.app, request, body) {
            Dispatch::Answered(endpoint, answer) => Routed::Answered(endpoint, answer),
            Dispatch::Pending(pending) => Routed::Pending(pending),
        }
    }

    // Not an `async fn`: the API's future is handed over as it is, with no layer around it.
    fn respond<'r>(
        &self,
        request: &Request<'r>,
        pending: Pending<'r>,
        body: &mut Vec<u8>,
    ) -> impl Future<Output = (Label, Result<Reply, ApiError>)> {
        api::handle(&self.app, request, pending, body)
    }

    fn connection_opened(&self) {
        ShardMetrics::add(&self.app.metrics.connections_open, 1);
    }

    fn connection_closed(&self) {
        ShardMetrics::sub(&self.app.metrics.connections_open, 1);
    }

    fn in_flight_changed(&self, count: isize) {
        self.in_flight.set(self.in_flight.get().wrapping_add_signed(count));
    }

    fn bytes_received(&self, count: usize) {
        ShardMetrics::add(&self.app.metrics.bytes_received, count as u64);
    }

    fn bytes_sent(&self, count: usize) {
        ShardMetrics::add(&self.app.metrics.bytes_sent, count as u64);
    }

    fn answered(&self, label: Label, status: u16, latency: Duration, count: u64) {
        self.app.metrics.record_many(label.index(), status, latency, count);
    }

    fn handler_panicked(&self, method: Method, path: &str) {
        ShardMetrics::add(&self.app.metrics.handler_panics, 1);
        log::error!("shard {}: handler panicked on {} {path}", self.app.id, method.as_str());
    }
}
