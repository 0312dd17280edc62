//! One client connection: read, parse, dispatch, encode, write, until close.
//!
//! Pipelined requests already in the read buffer are all answered before one write, in
//! order. Every wait has a deadline: the idle keep-alive timeout between requests, the
//! header timeout from a request's first byte to its complete head (so a client trickling
//! one byte a second is still cut off), the body timeout, and the write timeout.
//!
//! It knows nothing above HTTP: the application comes in through `service::Service`, the
//! socket through `service::Transport`.
//!
//! Runs on a shard: never blocks.

use super::body::ChunkedDecoder;
use super::error::{ApiError, HttpError, error_reply};
use super::head::{self, Parsed};
use super::request::{Framing, HeaderSpan, Method, Request, Version};
use super::response::{Encoder, Persistence, Reply};
use super::service::{ConnLimits, Routed, Service, Transport};
use futures::FutureExt;
use std::io;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

const SERVER: &[u8] = b"percore";
/// The read buffer starts here and grows, up to the head plus body limits, only for
/// requests that need it.
const READ_BUFFER_BYTES_INITIAL: usize = 8 * 1024;
/// Room kept for chunk-size lines and trailers while a chunked body is decoded.
const CHUNKED_READ_SLACK_BYTES: usize = 16 * 1024;

/// Serves one connection until the peer closes it, an error ends it, or the service
/// drains. The caller owns the socket and closes it after.
pub async fn serve<S: Service, T: Transport>(service: &S, transport: &mut T) -> io::Result<()> {
    service.connection_opened();
    let mut conn = Conn {
        service,
        limits: service.limits(),
        limits_generation: service.limits_generation(),
        peer: transport.peer_ip(),
        transport,
        read: vec![0; READ_BUFFER_BYTES_INITIAL],
        start: 0,
        end: 0,
        write: Vec::with_capacity(READ_BUFFER_BYTES_INITIAL),
        body_out: Vec::new(),
        chunked: Vec::new(),
        spans: Vec::new(),
        ready_at: Instant::now(),
        encoded: Vec::with_capacity(32),
        encoder: Encoder::new(SERVER, service.date()),
        wrote_since_read: false,
        unanswered: 0,
    };
    conn.run().await
}

struct Conn<'c, S: Service, T> {
    service: &'c S,
    limits: ConnLimits,
    /// The service's `limits_generation` when `limits` were taken.
    limits_generation: u64,
    peer: std::net::IpAddr,
    transport: &'c mut T,
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
    /// When the bytes of the request at `start` were last read. Latency runs from here to
    /// the flush that hands its response to the kernel.
    ready_at: Instant,
    /// A flush happened since the last read: the peer is still reading our answer.
    wrote_since_read: bool,
    /// Responses encoded but not yet flushed, for metrics: (label, status, ready_at,
    /// how many in a row share all three).
    encoded: Vec<(S::Label, u16, Instant, u64)>,
    encoder: Encoder,
    /// Requests read whose responses are not flushed yet (counted by the service as in
    /// flight).
    unanswered: usize,
}

impl<S: Service, T> Drop for Conn<'_, S, T> {
    fn drop(&mut self) {
        self.service.in_flight_changed(-(self.unanswered as isize));
        self.service.connection_closed();
    }
}

/// Why the loop stopped reading for more bytes.
enum Wait {
    Idle,
    Head { deadline: Instant },
}

impl<S: Service, T: Transport> Conn<'_, S, T> {
    // Longer than most, on purpose: it is the per-request loop, and every await in it is
    // written here rather than in an async function of its own, because each such layer
    // builds and drops a future per request (measured: 2-4% of a plaintext or json
    // request's instructions). The steps without an await are functions.
    async fn run(&mut self) -> io::Result<()> {
        loop {
            // Parsed here, the one call site, so that a head already in the buffer
            // (pipelining, or one read that brought it whole) costs no future: building
            // and dropping one per request was 4% of a plaintext request's instructions.
            let mut wait = Wait::Idle;
            // The reads are awaited here too, not in a function of their own: a future
            // layer per read cost 2% of a json request.
            let head = loop {
                // A reload since the last look (often while idle between requests): the
                // request whose bytes are here obeys the new limits.
                if self.service.limits_generation() != self.limits_generation {
                    self.limits_generation = self.service.limits_generation();
                    self.limits = self.service.limits();
                }
                match self.parse_head() {
                    Ok(Parsed::Complete(head)) => break head,
                    Ok(Parsed::Partial) => {}
                    Err(error) => return self.fail(error).await,
                }
                self.flush().await?;
                // Idle while draining, the wait goes on: a request may be on its way
                // already, and it is answered (with Connection: close). The service ends
                // such waits soon after the drain begins.
                let idle = self.start == self.end;
                let timeout = self.head_timeout(&mut wait, idle);
                match self.fill(timeout, self.limits.head.head_bytes_max, idle).await {
                    Ok(0) => return Ok(()),
                    Ok(_) => self.head_started(&mut wait),
                    Err(e) if e.kind() == io::ErrorKind::TimedOut && !idle => {
                        return self.fail(HttpError::HeadTimeout).await;
                    }
                    Err(e) => return Err(e),
                }
            };
            self.unanswered += 1;
            self.service.in_flight_changed(1);
            let body_at = match self.read_body(&head).await {
                Ok(Some(at)) => at,
                Ok(None) => return Ok(()),
                Err(BodyError::Http(error)) => return self.fail(error).await,
                Err(BodyError::Io(e)) => return Err(e),
            };
            let request_end = match body_at {
                BodyAt::Read(_, end) | BodyAt::Chunked(end) => end,
            };
            let request = request_at(
                &self.read,
                self.start,
                &self.spans,
                &self.chunked,
                self.peer,
                &head,
                body_at,
            );
            self.body_out.clear();
            // Answered while routing when the handler never waits: no future is built.
            let (label, reply) = match route(self.service, &request, &mut self.body_out) {
                Ok(answered) => answered,
                // Awaited here rather than in a function of its own: one future layer less
                // around every waiting handler.
                Err(pending) => {
                    let responding = self.service.respond(&request, pending, &mut self.body_out);
                    match AssertUnwindSafe(responding).catch_unwind().await {
                        Ok((label, answer)) => reply_of(label, answer, &mut self.body_out),
                        Err(_) => panicked(self.service, &request, &mut self.body_out),
                    }
                }
            };
            // Close after this answer if asked, or if the service began draining (perhaps
            // while the handler ran) and no further request is already buffered.
            let buffered_more = request_end < self.end;
            let persistence = if !head.keep_alive || (self.service.draining() && !buffered_more) {
                Persistence::Close
            } else if head.version == Version::Http10 {
                Persistence::KeepAlive
            } else {
                Persistence::Default
            };
            self.encoder.follow(self.service.date());
            let head_only = head.method == Method::Head;
            (self.encoder).encode(&mut self.write, &reply, &self.body_out, head_only, persistence);
            self.note_encoded(label, reply.status);

            self.start = request_end;
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
            }
            if persistence == Persistence::Close {
                self.flush().await?;
                return Ok(());
            }
            if self.write.len() >= self.limits.write_buffer_bytes_max {
                self.flush().await?;
            }
        }
    }

    /// Parses the head at `start` from what the buffer holds.
    fn parse_head(&mut self) -> Result<Parsed, HttpError> {
        let bytes = &self.read[self.start..self.end];
        head::parse(bytes, &self.limits.head, self.limits.headers_count_max, &mut self.spans)
    }

    /// How long to wait for more of the head at `start`: the idle timeout before its
    /// first byte, then what is left of its header timeout, which starts at that byte.
    fn head_timeout(&self, wait: &mut Wait, idle: bool) -> Duration {
        let limits = &self.limits;
        match *wait {
            Wait::Idle if idle => limits.idle_timeout,
            Wait::Idle => {
                *wait = Wait::Head {
                    deadline: Instant::now() + limits.header_read_timeout,
                };
                limits.header_read_timeout
            }
            Wait::Head { deadline } => deadline.saturating_duration_since(Instant::now()),
        }
    }

    /// Bytes of a head arrived: its header timeout runs from their arrival.
    fn head_started(&self, wait: &mut Wait) {
        if matches!(wait, Wait::Idle) {
            *wait = Wait::Head {
                deadline: self.ready_at + self.limits.header_read_timeout,
            };
        }
    }

    /// Makes the body of the request at `start` available. `Ok(None)`: the peer went away.
    async fn read_body(&mut self, head: &head::Head) -> Result<Option<BodyAt>, BodyError> {
        let body_bytes_max = self.limits.head.body_bytes_max;
        let body_start = self.start + head.len;
        let deadline = self.ready_at + self.limits.body_read_timeout;
        match head.framing {
            Framing::Length(length) => {
                let needed = head.len + length;
                if self.end - self.start < needed && head.expect_continue {
                    self.send_continue().await?;
                }
                while self.end - self.start < needed {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    match self.fill(remaining, needed, false).await {
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
                    match self.fill(remaining, head.len + CHUNKED_READ_SLACK_BYTES, false).await {
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
    async fn fill(&mut self, timeout: Duration, request_bytes_max: usize, between_requests: bool) -> io::Result<usize> {
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
        let wrote = std::mem::take(&mut self.wrote_since_read);
        let n = (self.transport)
            .read(&mut self.read[self.end..], timeout, between_requests, wrote)
            .await?;
        self.ready_at = Instant::now();
        self.end += n;
        self.service.bytes_received(n);
        Ok(n)
    }

    async fn flush(&mut self) -> io::Result<()> {
        if self.write.is_empty() {
            return Ok(());
        }
        let result = self.transport.write_all(&self.write).await;
        self.wrote_since_read = true;
        // Latency ends when the response is handed to the kernel; one clock read per flush
        // serves every response of a pipelined batch.
        let flushed_at = Instant::now();
        for (label, status, ready_at, count) in self.encoded.drain(..) {
            self.service.answered(label, status, flushed_at - ready_at, count);
        }
        if result.is_ok() {
            self.service.bytes_sent(self.write.len());
            self.service.in_flight_changed(-(self.unanswered as isize));
            self.unanswered = 0;
        }
        self.write.clear();
        result
    }

    /// Notes a response for the metrics recorded at the next flush.
    fn note_encoded(&mut self, label: S::Label, status: u16) {
        match self.encoded.last_mut() {
            Some((l, s, at, count)) if *l == label && *s == status && *at == self.ready_at => *count += 1,
            _ => self.encoded.push((label, status, self.ready_at, 1)),
        }
    }

    /// Answers a request that cannot be read further, then closes.
    async fn fail(&mut self, error: HttpError) -> io::Result<()> {
        let error = ApiError::from(error);
        self.body_out.clear();
        let reply = error_reply(&error, &mut self.body_out);
        self.encoder.follow(self.service.date());
        self.encoder
            .encode(&mut self.write, &reply, &self.body_out, false, Persistence::Close);
        self.note_encoded(self.service.malformed(), reply.status);
        self.flush().await
    }
}

/// The request at `read[start..]`, its head parsed into `head` and `spans`.
fn request_at<'a>(
    read: &'a [u8],
    start: usize,
    spans: &'a [HeaderSpan],
    chunked: &'a [u8],
    peer: std::net::IpAddr,
    head: &head::Head,
    body_at: BodyAt,
) -> Request<'a> {
    let request_bytes = &read[start..];
    let target = &request_bytes[head.target.0..head.target.1];
    debug_assert!(std::str::from_utf8(target).is_ok());
    // SAFETY: httparse handed these exact bytes out as the request's `&str` path, and
    // moving the request within the buffer (compaction) keeps its bytes unchanged.
    let target = unsafe { std::str::from_utf8_unchecked(target) };
    let body: &[u8] = match body_at {
        BodyAt::Read(from, to) => &read[from..to],
        BodyAt::Chunked(_) => chunked,
    };
    Request::new(
        peer,
        head.method,
        head.version,
        target,
        &request_bytes[..head.len],
        spans,
        body,
    )
}

/// Routes `request`: `Ok` with the answer when the handler never waits (or routing
/// failed, or panicked: a 500 on this connection alone), `Err` with what `respond` runs.
#[inline]
fn route<'r, S: Service>(
    service: &S,
    request: &Request<'r>,
    body: &mut Vec<u8>,
) -> Result<(S::Label, Reply), S::Pending<'r>> {
    match std::panic::catch_unwind(AssertUnwindSafe(|| service.route(request, body))) {
        Ok(Routed::Answered(label, answer)) => Ok(reply_of(label, answer, body)),
        Ok(Routed::Pending(pending)) => Err(pending),
        Err(_) => Ok(panicked(service, request, body)),
    }
}

/// The reply, with an error's body rendered in place of whatever the handler wrote.
/// Always inlined: a call moved the whole answer by value, 2% of a plaintext request.
#[inline(always)]
fn reply_of<L>(label: L, answer: Result<Reply, ApiError>, body: &mut Vec<u8>) -> (L, Reply) {
    match answer {
        Ok(reply) => (label, reply),
        Err(error) => {
            body.clear();
            (label, error_reply(&error, body))
        }
    }
}

fn panicked<S: Service>(service: &S, request: &Request<'_>, body: &mut Vec<u8>) -> (S::Label, Reply) {
    service.handler_panicked(request.method, request.path);
    body.clear();
    (service.malformed(), error_reply(&ApiError::internal(), body))
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
