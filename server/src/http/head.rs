//! Parsing one request head (request line + header fields) with httparse, and the RFC 9112
//! framing checks httparse leaves to us. Limits are enforced here, where the bytes are parsed.

use super::error::HttpError;
use super::request::{Framing, HeaderSpan, Method, Version};

/// The limits a head must fit in; copied from `[http]` in tuning.toml.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    pub request_line_bytes_max: usize,
    pub head_bytes_max: usize,
    pub body_bytes_max: usize,
}

/// A parsed head. Every span is an offset into the bytes `parse` was given.
#[derive(Debug)]
pub struct Head {
    pub method: Method,
    pub version: Version,
    pub target: (usize, usize),
    pub framing: Framing,
    pub keep_alive: bool,
    pub expect_continue: bool,
    /// Length of the head in bytes, final blank line included.
    pub len: usize,
}

pub enum Parsed {
    Complete(Head),
    /// More bytes are needed; none of the limits is broken yet.
    Partial,
}

/// Headers a request may carry at most, whatever tuning.toml says: the stack scratch size.
pub const HEADERS_COUNT_LIMIT: usize = 256;

/// Parses the head at the start of `buf`, storing header spans in `spans` (cleared first).
// Longer than most: it reads straight through the request line's checks in the order
// RFC 9112 states them; the header fields and framing are `read_headers` and `framing`.
pub fn parse(
    buf: &[u8],
    limits: &HeadLimits,
    headers_count_max: usize,
    spans: &mut Vec<HeaderSpan>,
) -> Result<Parsed, HttpError> {
    debug_assert!(headers_count_max <= HEADERS_COUNT_LIMIT);
    // Uninitialised scratch on the stack: no allocation and no memset per request.
    let mut slots = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; HEADERS_COUNT_LIMIT];
    let mut request = httparse::Request::new(&mut []);
    let status = request
        .parse_with_uninit_headers(buf, &mut slots[..headers_count_max])
        .map_err(|e| match e {
            httparse::Error::TooManyHeaders => HttpError::HeadTooLarge,
            httparse::Error::Version => version_error(buf),
            _ => HttpError::BadRequest(parse_error_message(e)),
        });
    // An over-long request line is 414 whatever else is wrong with it. A complete head
    // tells the line's length from its spans; only an incomplete or bad one is scanned.
    if !matches!(status, Ok(httparse::Status::Complete(_))) {
        check_request_line_len(buf, limits.request_line_bytes_max)?;
    }
    let len = match status? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => {
            if buf.len() >= limits.head_bytes_max {
                return Err(HttpError::HeadTooLarge);
            }
            return Ok(Parsed::Partial);
        }
    };
    if len > limits.head_bytes_max {
        return Err(HttpError::HeadTooLarge);
    }
    let base = buf.as_ptr() as usize;
    let span_of = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        (start, start + s.len())
    };
    let method = Method::from_token(request.method.unwrap_or_default());
    let version = if request.version == Some(0) {
        Version::Http10
    } else {
        Version::Http11
    };
    let path = request.path.unwrap_or_default();
    let target = span_of(path.as_bytes());
    // The line runs from the method (after any empty lines) to " HTTP/1.x", then CR LF or LF.
    let line_start = span_of(request.method.unwrap_or_default().as_bytes()).0;
    let mut line_end = target.1 + " HTTP/1.1".len();
    if buf.get(line_end) == Some(&b'\r') {
        line_end += 1;
    }
    if line_end - line_start > limits.request_line_bytes_max {
        return Err(HttpError::UriTooLong);
    }
    check_target(method, path)?;

    let facts = read_headers(request.headers, base, spans)?;
    match (version, facts.host_count) {
        (Version::Http11, 1) | (Version::Http10, 0 | 1) => {}
        (_, 0) => return Err(HttpError::BadRequest("missing Host header")),
        _ => return Err(HttpError::BadRequest("more than one Host header")),
    }
    let framing = framing(version, &facts, limits.body_bytes_max)?;
    let keep_alive = match version {
        Version::Http11 => !facts.connection_close,
        Version::Http10 => facts.connection_keep_alive && !facts.connection_close,
    };
    let expect_continue = facts.expect_continue;
    Ok(Parsed::Complete(Head {
        method,
        version,
        target,
        framing,
        keep_alive,
        expect_continue,
        len,
    }))
}

/// What the header fields say about framing and the connection.
#[derive(Default)]
struct HeaderFacts {
    host_count: usize,
    content_length: Option<u64>,
    transfer_encoding: TransferEncoding,
    connection_close: bool,
    connection_keep_alive: bool,
    expect_continue: bool,
}

/// Notes each field's span (offsets from `base`, the start of the buffer) and checks the
/// fields that decide framing, Host and Expect.
#[inline]
fn read_headers(
    headers: &[httparse::Header<'_>],
    base: usize,
    spans: &mut Vec<HeaderSpan>,
) -> Result<HeaderFacts, HttpError> {
    let span_of = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        (start, start + s.len())
    };
    spans.clear();
    let mut facts = HeaderFacts::default();
    for header in headers {
        let name = header.name.as_bytes();
        let value = trim_ows(header.value);
        spans.push(HeaderSpan {
            name: span_of(name),
            value: span_of(value),
        });
        if name.eq_ignore_ascii_case(b"host") {
            facts.host_count += 1;
            check_host(value)?;
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let parsed = parse_content_length(value)?;
            if facts.content_length.is_some_and(|seen| seen != parsed) {
                return Err(HttpError::BadRequest("conflicting Content-Length headers"));
            }
            facts.content_length = Some(parsed);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            facts.transfer_encoding.add(value)?;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|b| *b == b',').map(trim_ows) {
                facts.connection_close |= token.eq_ignore_ascii_case(b"close");
                facts.connection_keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case(b"expect") {
            if !value.eq_ignore_ascii_case(b"100-continue") {
                return Err(HttpError::ExpectationFailed);
            }
            facts.expect_continue = true;
        }
    }
    Ok(facts)
}

/// How the body is delimited (RFC 9112 §6.3), refusing what would let two parsers disagree.
#[inline]
fn framing(version: Version, facts: &HeaderFacts, body_bytes_max: usize) -> Result<Framing, HttpError> {
    match (facts.transfer_encoding.seen, facts.content_length) {
        (true, Some(_)) => Err(HttpError::BadRequest("both Content-Length and Transfer-Encoding")),
        (true, None) if version == Version::Http10 => {
            Err(HttpError::BadRequest("Transfer-Encoding in an HTTP/1.0 request"))
        }
        (true, None) => facts.transfer_encoding.framing(),
        (false, Some(length)) if length > body_bytes_max as u64 => Err(HttpError::BodyTooLarge),
        (false, Some(length)) => Ok(Framing::Length(length as usize)),
        (false, None) => Ok(Framing::Length(0)),
    }
}

/// A request line longer than the limit is answered 414, before httparse spends time on it.
fn check_request_line_len(buf: &[u8], max: usize) -> Result<(), HttpError> {
    // RFC 9112 §2.2: leading empty lines before the request line are ignored.
    let start = buf.iter().position(|b| *b != b'\r' && *b != b'\n').unwrap_or(buf.len());
    let window = &buf[start..buf.len().min(start + max + 1)];
    match window.iter().position(|b| *b == b'\n') {
        Some(_) => Ok(()),
        None if window.len() > max => Err(HttpError::UriTooLong),
        None => Ok(()),
    }
}

fn check_target(method: Method, target: &str) -> Result<(), HttpError> {
    // A fragment is the client's own business (RFC 9110 §4.2.4); it is never sent.
    if target.contains('#') {
        return Err(HttpError::BadRequest("request target must not contain a fragment"));
    }
    if target.starts_with('/') {
        return Ok(());
    }
    if target == "*" && method == Method::Options {
        return Ok(());
    }
    // absolute-form (RFC 9112 §3.2.2) must be accepted by servers; the router uses its path.
    let lower = target.get(..8).unwrap_or(target).to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return Ok(());
    }
    Err(HttpError::BadRequest(
        "request target must be origin-form or absolute-form",
    ))
}

/// RFC 9112 §3.2: a Host field with an invalid value is 400. The value is `uri-host [":"
/// port]` (empty is allowed, for targets without an authority): registered-name characters,
/// percent-encoding, an IPv6 literal in brackets, and a colon before the port.
/// The bytes a Host value may hold (RFC 3986 reg-name, IP literals and a port), as a
/// table: a search of the punctuation list per byte cost a memchr call per '.' and ':'.
const HOST_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let punctuation = b"-._~%!$&'()*+,;=:[]";
    let mut i = 0;
    while i < punctuation.len() {
        table[punctuation[i] as usize] = true;
        i += 1;
    }
    table
};

fn check_host(value: &[u8]) -> Result<(), HttpError> {
    if value.iter().all(|b| HOST_BYTES[*b as usize]) {
        Ok(())
    } else {
        Err(HttpError::BadRequest("invalid Host header"))
    }
}

/// httparse reports any unreadable version as a version error: 505 is for a well-formed
/// `HTTP/x.y` that is not served (RFC 9110 §15.6.6), anything else is a bad request line.
fn version_error(buf: &[u8]) -> HttpError {
    let line = buf
        .split(|b| *b == b'\n')
        .find(|line| !line.is_empty() && *line != b"\r")
        .unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let parts: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
    match parts.as_slice() {
        [_, _, version]
            if version.len() == 8
                && version.starts_with(b"HTTP/")
                && version[5].is_ascii_digit()
                && version[6] == b'.'
                && version[7].is_ascii_digit() =>
        {
            HttpError::VersionNotSupported
        }
        _ => HttpError::BadRequest("invalid request line"),
    }
}

/// Content-Length = 1*DIGIT, possibly repeated as an identical comma-separated list.
fn parse_content_length(value: &[u8]) -> Result<u64, HttpError> {
    let mut result: Option<u64> = None;
    for item in value.split(|b| *b == b',').map(trim_ows) {
        if item.is_empty() || !item.iter().all(u8::is_ascii_digit) {
            return Err(HttpError::BadRequest("malformed Content-Length"));
        }
        let mut n: u64 = 0;
        for digit in item {
            n = n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(digit - b'0')))
                .ok_or(HttpError::BadRequest("Content-Length overflows"))?;
        }
        if result.is_some_and(|seen| seen != n) {
            return Err(HttpError::BadRequest("conflicting Content-Length values"));
        }
        result = Some(n);
    }
    result.ok_or(HttpError::BadRequest("malformed Content-Length"))
}

/// The codings of every Transfer-Encoding field, in order.
#[derive(Default)]
struct TransferEncoding {
    seen: bool,
    codings: usize,
    last_is_chunked: bool,
    chunked_count: usize,
}

impl TransferEncoding {
    fn add(&mut self, value: &[u8]) -> Result<(), HttpError> {
        self.seen = true;
        for coding in value.split(|b| *b == b',').map(trim_ows) {
            if coding.is_empty() {
                return Err(HttpError::BadRequest("empty transfer coding"));
            }
            self.codings += 1;
            self.last_is_chunked = coding.eq_ignore_ascii_case(b"chunked");
            self.chunked_count += usize::from(self.last_is_chunked);
        }
        Ok(())
    }

    fn framing(&self) -> Result<Framing, HttpError> {
        if !self.last_is_chunked || self.chunked_count > 1 {
            // RFC 9112 §6.3: a request whose final coding is not chunked cannot be delimited.
            return Err(HttpError::BadRequest(
                "Transfer-Encoding must end with a single chunked",
            ));
        }
        if self.codings > 1 {
            return Err(HttpError::NotImplemented(
                "only the chunked transfer coding is supported",
            ));
        }
        Ok(Framing::Chunked)
    }
}

pub fn trim_ows(value: &[u8]) -> &[u8] {
    let start = value
        .iter()
        .position(|b| *b != b' ' && *b != b'\t')
        .unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| *b != b' ' && *b != b'\t')
        .map_or(start, |i| i + 1);
    &value[start..end.max(start)]
}

fn parse_error_message(error: httparse::Error) -> &'static str {
    match error {
        httparse::Error::HeaderName => "invalid byte in a header name",
        httparse::Error::HeaderValue => "invalid byte in a header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Token => "invalid request line",
        _ => "malformed request head",
    }
}
