//! One client connection: read, parse, dispatch, encode, write, until close.
//!
//! Pipelined requests already in the read buffer are all answered before one write, in
//! order. Every wait has a deadline: the idle keep-alive timeout between requests, the
//! header timeout from a request's first byte to its complete head (so a client trickling
//! one byte a second is still cut off), the body timeout, and the write timeout.
//!
//! Runs on a shard: never blocks.

use super::body::ChunkedDecoder;
use super::error::{ApiError, HttpError, error_reply};
use super::head::{self, HeadLimits, Parsed};
use super::request::{Framing, HeaderSpan, Method, Request, Version};
use super::response::{Encoder, Persistence};
use crate::config::ms;
use crate::deadlines::ReadDeadline;
use crate::metrics::ShardMetrics;
use crate::router::Endpoint;
use crate::runtime::{self, TcpStream};
use crate::shard::Shard;
use futures::{AsyncWriteExt, FutureExt};
use std::io;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::time::{Duration, Instant};

const SERVER: &[u8] = b"percore";
/// The read buffer starts here and grows, up to the head plus body limits, only for
/// requests that need it.
const READ_BUFFER_BYTES_INITIAL: usize = 8 * 1024;
/// Room kept for chunk-size lines and trailers while a chunked body is decoded.
const CHUNKED_READ_SLACK_BYTES: usize = 16 * 1024;

pub async fn serve(shard: Rc<Shard>, stream: TcpStream) {
    let _ = stream.set_nodelay(shard.config().http.tcp_nodelay);
    let _ = stream.set_write_timeout(Some(ms(shard.config().http.write_timeout_ms)));
    ShardMetrics::add(&shard.metrics.connections_open, 1);
    let deadline = shard.deadlines.register(std::os::fd::AsRawFd::as_raw_fd(&stream));
    let peer = stream
        .peer_addr()
        .map_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |a| a.ip());
    let mut conn = Conn {
        shard: shard.clone(),
        peer,
        stream,
        read: vec![0; READ_BUFFER_BYTES_INITIAL],
        start: 0,
        end: 0,
        write: Vec::with_capacity(READ_BUFFER_BYTES_INITIAL),
        body_out: Vec::new(),
        chunked: Vec::new(),
        spans: Vec::new(),
        deadline,
        ready_at: Instant::now(),
        encoded: Vec::with_capacity(32),
        encoder: Encoder::new(SERVER, &shard.date),
        wrote_since_read: false,
        unanswered: 0,
    };
    if let Err(e) = conn.run().await {
        log::debug!("shard {}: connection closed: {e}", shard.id);
    }
    let _ = conn.stream.close().await;
}

struct Conn {
    shard: Rc<Shard>,
    peer: std::net::IpAddr,
    stream: TcpStream,
    /// Bytes read; `start..end` is what is not yet consumed. The request being handled
    /// always begins at `start`.
    read: Vec<u8>,
    start: usize,
    end: usize,
    /// Encoded responses waiting for one flush.
    write: Vec<u8>,
    /// Where a handler writes its response body; reused for every request.
    body_out: Vec<u8>,
    /// A decoded chunked request body; reused.
    chunked: Vec<u8>,
    spans: Vec<HeaderSpan>,
    /// This connection's read deadline, enforced by the shard's sweeper.
    deadline: Rc<ReadDeadline>,
    /// When the bytes of the request at `start` were last read. Latency runs from here to
    /// the flush that hands its response to the kernel.
    ready_at: Instant,
    /// A flush happened since the last read: the peer is still reading our answer.
    wrote_since_read: bool,
    /// Responses encoded but not yet flushed, for metrics: (endpoint, status, ready_at,
    /// how many in a row share all three).
    encoded: Vec<(Endpoint, u16, Instant, u64)>,
    encoder: Encoder,
    /// Requests read whose responses are not flushed yet (counted in `Shard::in_flight`).
    unanswered: usize,
}

impl Drop for Conn {
    fn drop(&mut self) {
        let shard = &self.shard;
        shard.in_flight.set(shard.in_flight.get() - self.unanswered);
        ShardMetrics::sub(&shard.metrics.connections_open, 1);
    }
}

/// Why the loop stopped reading for more bytes.
enum Wait {
    Idle,
    Head { deadline: Instant },
}

impl Conn {
    async fn run(&mut self) -> io::Result<()> {
        let http = &self.shard.config().http;
        let limits = HeadLimits {
            request_line_bytes_max: http.request_line_bytes_max,
            head_bytes_max: http.head_bytes_max,
            body_bytes_max: http.body_bytes_max,
        };
        let mut wait = Wait::Idle;
        loop {
            let parsed = head::parse(
                &self.read[self.start..self.end],
                &limits,
                http.headers_count_max,
                &mut self.spans,
            );
            let head = match parsed {
                Ok(Parsed::Complete(head)) => head,
                Ok(Parsed::Partial) => {
                    self.flush().await?;
                    let idle = self.start == self.end;
                    if idle && self.shard.draining.get() {
                        return Ok(());
                    }
                    let timeout = match wait {
                        Wait::Idle if idle => ms(http.idle_timeout_ms),
                        Wait::Idle => {
                            // The first bytes of a request are here: its head clock starts.
                            let timeout = ms(http.header_read_timeout_ms);
                            wait = Wait::Head {
                                deadline: Instant::now() + timeout,
                            };
                            timeout
                        }
                        Wait::Head { deadline } => deadline.saturating_duration_since(Instant::now()),
                    };
                    match self.fill(timeout, http.head_bytes_max).await {
                        Ok(0) => return Ok(()),
                        Ok(_) => {
                            if matches!(wait, Wait::Idle) {
                                wait = Wait::Head {
                                    deadline: self.ready_at + ms(http.header_read_timeout_ms),
                                };
                            }
                            continue;
                        }
                        Err(e) if e.kind() == io::ErrorKind::TimedOut && !idle => {
                            return self.fail(HttpError::HeadTimeout).await;
                        }
                        Err(e) => return Err(e),
                    }
                }
                Err(error) => return self.fail(error).await,
            };
            wait = Wait::Idle;
            self.unanswered += 1;
            self.shard.in_flight.set(self.shard.in_flight.get() + 1);

            let head_len = head.len;
            let body_range = match self
                .read_body(&head, http.body_read_timeout_ms, http.body_bytes_max)
                .await
            {
                Ok(Some(range)) => range,
                Ok(None) => return Ok(()),
                Err(BodyError::Http(error)) => return self.fail(error).await,
                Err(BodyError::Io(e)) => return Err(e),
            };
            let request_end = match body_range {
                BodyAt::Read(_, end) | BodyAt::Chunked(end) => end,
            };
            let request_bytes = &self.read[self.start..];
            let target = &request_bytes[head.target.0..head.target.1];
            debug_assert!(std::str::from_utf8(target).is_ok());
            // SAFETY: httparse handed these exact bytes out as the request's `&str` path, and
            // moving the request within the buffer (compaction) keeps its bytes unchanged.
            let target = unsafe { std::str::from_utf8_unchecked(target) };
            let body: &[u8] = match body_range {
                BodyAt::Read(from, to) => &self.read[from..to],
                BodyAt::Chunked(_) => &self.chunked,
            };
            let request = Request::new(
                self.peer,
                head.method,
                head.version,
                target,
                &request_bytes[..head_len],
                &self.spans,
                body,
            );
            self.body_out.clear();
            // Routed, and answered when the handler never waits, without building a future;
            // a panic either way becomes a 500 on this connection alone.
            let routed = std::panic::catch_unwind(AssertUnwindSafe(|| {
                crate::api::dispatch(&self.shard, &request, &mut self.body_out)
            }));
            let dispatched = match routed {
                Ok(crate::api::Dispatch::Answered(endpoint, answer)) => Ok((endpoint, answer)),
                Ok(crate::api::Dispatch::Pending(routed)) => {
                    AssertUnwindSafe(crate::api::handle(&self.shard, &request, routed, &mut self.body_out))
                        .catch_unwind()
                        .await
                }
                Err(panic) => Err(panic),
            };
            let (endpoint, reply) = match dispatched {
                Ok((endpoint, Ok(reply))) => (endpoint, reply),
                Ok((endpoint, Err(error))) => {
                    self.body_out.clear();
                    (endpoint, error_reply(&error, &mut self.body_out))
                }
                Err(_) => {
                    ShardMetrics::add(&self.shard.metrics.handler_panics, 1);
                    log::error!(
                        "shard {}: handler panicked on {} {}",
                        self.shard.id,
                        head.method.as_str(),
                        request.path
                    );
                    self.body_out.clear();
                    (
                        Endpoint::Malformed,
                        error_reply(&ApiError::internal(), &mut self.body_out),
                    )
                }
            };
            // Close after this answer if asked, or if the shard began draining (perhaps
            // while the handler ran) and no further request is already buffered.
            let buffered_more = request_end < self.end;
            let persistence = if !head.keep_alive || (self.shard.draining.get() && !buffered_more) {
                Persistence::Close
            } else if head.version == Version::Http10 {
                Persistence::KeepAlive
            } else {
                Persistence::Default
            };
            self.encoder.follow(&self.shard.date);
            self.encoder.encode(
                &mut self.write,
                &reply,
                &self.body_out,
                head.method == Method::Head,
                persistence,
            );
            self.note_encoded(endpoint, reply.status);

            self.start = request_end;
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
            }
            if persistence == Persistence::Close {
                self.flush().await?;
                return Ok(());
            }
            if self.write.len() >= http.write_buffer_bytes_max {
                self.flush().await?;
            }
        }
    }

    /// Makes the body of the request at `start` available. `Ok(None)`: the peer went away.
    async fn read_body(
        &mut self,
        head: &head::Head,
        timeout_ms: u64,
        body_bytes_max: usize,
    ) -> Result<Option<BodyAt>, BodyError> {
        let body_start = self.start + head.len;
        let deadline = self.ready_at + ms(timeout_ms);
        match head.framing {
            Framing::Length(length) => {
                let needed = head.len + length;
                if self.end - self.start < needed && head.expect_continue {
                    self.send_continue().await?;
                }
                while self.end - self.start < needed {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    match self.fill(remaining, needed).await {
                        Ok(0) => return Ok(None),
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                            return Err(BodyError::Http(HttpError::BodyTimeout));
                        }
                        Err(e) => return Err(BodyError::Io(e)),
                    }
                }
                let body_start = self.start + head.len;
                Ok(Some(BodyAt::Read(body_start, body_start + length)))
            }
            Framing::Chunked => {
                if head.expect_continue && body_start == self.end {
                    self.send_continue().await?;
                }
                let mut decoder = ChunkedDecoder::new(body_bytes_max);
                self.chunked.clear();
                loop {
                    // Decoded bytes are cut out of the read buffer at once, so it holds
                    // only the head and not-yet-decoded input.
                    let cursor = self.start + head.len;
                    let used = decoder
                        .decode(&self.read[cursor..self.end], &mut self.chunked)
                        .map_err(BodyError::Http)?;
                    self.read.copy_within(cursor + used..self.end, cursor);
                    self.end -= used;
                    if decoder.is_done() {
                        return Ok(Some(BodyAt::Chunked(self.start + head.len)));
                    }
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    match self.fill(remaining, head.len + CHUNKED_READ_SLACK_BYTES).await {
                        Ok(0) => return Ok(None),
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                            return Err(BodyError::Http(HttpError::BodyTimeout));
                        }
                        Err(e) => return Err(BodyError::Io(e)),
                    }
                }
            }
        }
    }

    async fn send_continue(&mut self) -> io::Result<()> {
        self.write.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        self.flush().await
    }

    /// Reads more bytes after `end`, growing the buffer so that the request at `start` may
    /// reach `request_bytes_max`. Returns 0 at end of stream.
    async fn fill(&mut self, timeout: Duration, request_bytes_max: usize) -> io::Result<usize> {
        if timeout.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        if self.end == self.read.len() {
            if self.start > 0 {
                self.read.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                // +1: a head exactly at the limit must be able to show it is over it.
                let limit = request_bytes_max + 1;
                let grown = (self.read.len() * 2).min(limit.max(self.read.len()));
                if grown == self.read.len() {
                    // Parsers report limits before this; reaching it means a logic error.
                    return Err(io::Error::other("read buffer at its limit"));
                }
                self.read.resize(grown, 0);
            }
        }
        let retries = self.shard.config().http.read_retries_max;
        let wrote = std::mem::take(&mut self.wrote_since_read);
        let n = runtime::read(
            &self.stream,
            &mut self.read[self.end..],
            (&self.deadline, timeout),
            retries,
            wrote,
        )
        .await?;
        self.ready_at = Instant::now();
        self.end += n;
        ShardMetrics::add(&self.shard.metrics.bytes_received, n as u64);
        Ok(n)
    }

    async fn flush(&mut self) -> io::Result<()> {
        if self.write.is_empty() {
            return Ok(());
        }
        let result = self.stream.write_all(&self.write).await;
        self.wrote_since_read = true;
        // Latency ends when the response is handed to the kernel; one clock read per flush
        // serves every response of a pipelined batch.
        let flushed_at = Instant::now();
        for (endpoint, status, ready_at, count) in self.encoded.drain(..) {
            (self.shard.metrics).record_many(endpoint, status, flushed_at - ready_at, count);
        }
        if result.is_ok() {
            ShardMetrics::add(&self.shard.metrics.bytes_sent, self.write.len() as u64);
            self.shard.in_flight.set(self.shard.in_flight.get() - self.unanswered);
            self.unanswered = 0;
        }
        self.write.clear();
        result
    }

    /// Notes a response for the metrics recorded at the next flush.
    fn note_encoded(&mut self, endpoint: Endpoint, status: u16) {
        match self.encoded.last_mut() {
            Some((e, s, at, count)) if *e == endpoint && *s == status && *at == self.ready_at => *count += 1,
            _ => self.encoded.push((endpoint, status, self.ready_at, 1)),
        }
    }

    /// Answers a request that cannot be read further, then closes.
    async fn fail(&mut self, error: HttpError) -> io::Result<()> {
        let error = ApiError::from(error);
        self.body_out.clear();
        let reply = error_reply(&error, &mut self.body_out);
        self.encoder.follow(&self.shard.date);
        self.encoder
            .encode(&mut self.write, &reply, &self.body_out, false, Persistence::Close);
        self.note_encoded(Endpoint::Malformed, reply.status);
        self.flush().await
    }
}

enum BodyAt {
    /// The body is `read[from..to]`, in place.
    Read(usize, usize),
    /// The body was decoded into `chunked`; the request ended at this offset.
    Chunked(usize),
}

enum BodyError {
    Http(HttpError),
    Io(io::Error),
}

impl From<io::Error> for BodyError {
    fn from(e: io::Error) -> Self {
        BodyError::Io(e)
    }
}
