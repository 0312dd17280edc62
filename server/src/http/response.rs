//! Encoding a response head and body into the connection's write buffer.

use super::date::{DATE_LEN, DateCache};
use super::error::reason;

pub const JSON: &str = "application/json";
pub const TEXT: &str = "text/plain";
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a handler answers, apart from the body, which it writes into the connection's
/// body buffer so that no response allocates.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    /// Extra header fields; empty (and so allocation-free) on the common path.
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    pub fn new(status: u16, content_type: &'static str) -> Reply {
        Reply {
            status,
            content_type,
            headers: Vec::new(),
        }
    }

    pub fn json(status: u16) -> Reply {
        Reply::new(status, JSON)
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }
}

/// How the `Connection` header must read, if it is sent at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// HTTP/1.1 keep-alive: no header needed.
    Default,
    /// HTTP/1.0 keep-alive must be announced.
    KeepAlive,
    Close,
}

/// Room for everything in a response head but the content type and extra headers: status
/// line, Server, Date, Content-Length, Connection and the line ends.
const RESPONSE_HEAD_BYTES_FIXED: usize = 192;

/// Encodes responses for one connection. The head of the commonest answer (200, JSON or
/// text, nothing extra) is kept whole up to the Content-Length value and rebuilt only when
/// the Date changes: such a response is then four copies, not a dozen field by field.
pub struct Encoder {
    server: &'static [u8],
    date: [u8; DATE_LEN],
    date_second: u64,
    ok_json: Vec<u8>,
    ok_text: Vec<u8>,
}

impl Encoder {
    pub fn new(server: &'static [u8], date: &DateCache) -> Encoder {
        let mut encoder = Encoder {
            server,
            date: date.get(),
            date_second: date.second(),
            ok_json: Vec::new(),
            ok_text: Vec::new(),
        };
        encoder.build_prefixes();
        encoder
    }

    /// Takes the shard's Date if it moved on since this encoder last looked.
    pub fn follow(&mut self, date: &DateCache) {
        if date.second() != self.date_second {
            self.date = date.get();
            self.date_second = date.second();
            self.build_prefixes();
        }
    }

    fn build_prefixes(&mut self) {
        for (prefix, content_type) in [(&mut self.ok_json, JSON), (&mut self.ok_text, TEXT)] {
            prefix.clear();
            for part in [
                &b"HTTP/1.1 200 OK\r\nServer: "[..],
                self.server,
                b"\r\nDate: ",
                &self.date,
                b"\r\nContent-Type: ",
                content_type.as_bytes(),
                b"\r\nContent-Length: ",
            ] {
                prefix.extend_from_slice(part);
            }
        }
    }

    /// Appends one complete response to `out`. For HEAD, `body` still sets Content-Length
    /// but is not sent (RFC 9110 §9.3.2).
    pub fn encode(&self, out: &mut Vec<u8>, reply: &Reply, body: &[u8], head_only: bool, persistence: Persistence) {
        debug_assert!((100..600).contains(&reply.status));
        let mut number = itoa::Buffer::new();
        if reply.status == 200 && reply.headers.is_empty() && persistence == Persistence::Default {
            let prefix = match reply.content_type {
                JSON => Some(&self.ok_json),
                TEXT => Some(&self.ok_text),
                _ => None,
            };
            if let Some(prefix) = prefix {
                let length = number.format(body.len()).as_bytes();
                out.reserve(prefix.len() + length.len() + 4 + body.len());
                out.extend_from_slice(prefix);
                out.extend_from_slice(length);
                out.extend_from_slice(b"\r\n\r\n");
                if !head_only {
                    out.extend_from_slice(body);
                }
                return;
            }
        }
        // The buffer grows at most once per response, not field by field.
        let extra_headers_bytes: usize = reply.headers.iter().map(|(n, v)| n.len() + v.len() + 4).sum();
        out.reserve(RESPONSE_HEAD_BYTES_FIXED + reply.content_type.len() + extra_headers_bytes + body.len());
        if reply.status == 200 {
            out.extend_from_slice(b"HTTP/1.1 200 OK");
        } else {
            out.extend_from_slice(b"HTTP/1.1 ");
            out.extend_from_slice(number.format(reply.status).as_bytes());
            out.push(b' ');
            out.extend_from_slice(reason(reply.status).as_bytes());
        }
        out.extend_from_slice(b"\r\nServer: ");
        out.extend_from_slice(self.server);
        out.extend_from_slice(b"\r\nDate: ");
        out.extend_from_slice(&self.date);
        // RFC 9110 §8.6, §15.3.5: a 204 or 304 has no content and no Content-Length.
        let has_content = !matches!(reply.status, 204 | 304);
        debug_assert!(has_content || body.is_empty());
        if has_content {
            out.extend_from_slice(b"\r\nContent-Type: ");
            out.extend_from_slice(reply.content_type.as_bytes());
            out.extend_from_slice(b"\r\nContent-Length: ");
            out.extend_from_slice(number.format(body.len()).as_bytes());
        }
        for (name, value) in &reply.headers {
            debug_assert!(
                !value.bytes().any(|b| b == b'\r' || b == b'\n'),
                "header value with CR/LF"
            );
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
        }
        match persistence {
            Persistence::Default => {}
            Persistence::KeepAlive => out.extend_from_slice(b"\r\nConnection: keep-alive"),
            Persistence::Close => out.extend_from_slice(b"\r\nConnection: close"),
        }
        out.extend_from_slice(b"\r\n\r\n");
        if !head_only {
            out.extend_from_slice(body);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoder(server: &'static [u8]) -> Encoder {
        let date = DateCache::default();
        date.refresh(std::time::UNIX_EPOCH + std::time::Duration::from_secs(784_111_777));
        Encoder::new(server, &date)
    }

    #[test]
    fn encodes_head_and_body() {
        let encoder = encoder(b"percore");
        let mut out = Vec::new();
        let reply = Reply::json(503).with_header("Retry-After", "1");
        encoder.encode(&mut out, &reply, b"{}", false, Persistence::Close);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 503 Service Unavailable\r\nServer: percore\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
             Content-Type: application/json\r\nContent-Length: 2\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{}"
        );
    }

    #[test]
    fn head_keeps_length_and_drops_body() {
        let encoder = encoder(b"p");
        let mut out = Vec::new();
        encoder.encode(&mut out, &Reply::new(200, TEXT), b"hello", true, Persistence::Default);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Content-Length: 5\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn the_kept_head_of_a_plain_200_is_what_the_field_by_field_path_writes() {
        let encoder = encoder(b"percore");
        for (content_type, body) in [(JSON, &b"{\"a\":1}"[..]), (TEXT, b"Hello, World!"), (TEXT, b"")] {
            let mut fast = Vec::new();
            encoder.encode(
                &mut fast,
                &Reply::new(200, content_type),
                body,
                false,
                Persistence::Default,
            );
            // An extra header takes the field-by-field path; without it, the text must match.
            let mut slow = Vec::new();
            let reply = Reply::new(200, content_type).with_header("X", "y");
            encoder.encode(&mut slow, &reply, body, false, Persistence::Default);
            let slow = String::from_utf8(slow).unwrap().replace("\r\nX: y", "");
            assert_eq!(String::from_utf8(fast).unwrap(), slow);
        }
        let date = DateCache::default();
        date.refresh(std::time::UNIX_EPOCH + std::time::Duration::from_secs(784_111_778));
        let mut moved = encoder;
        moved.follow(&date);
        let mut out = Vec::new();
        moved.encode(&mut out, &Reply::new(200, TEXT), b"x", false, Persistence::Default);
        assert!(
            String::from_utf8(out)
                .unwrap()
                .contains("Date: Sun, 06 Nov 1994 08:49:38 GMT\r\n")
        );
    }
}
