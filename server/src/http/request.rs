//! A parsed request as handlers see it: borrowed views into the connection's buffers.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Options,
    Other,
}

impl Method {
    pub fn from_token(token: &str) -> Method {
        match token {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            _ => Method::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Other => "OTHER",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// How the body is delimited (RFC 9112 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(usize),
    Chunked,
}

/// Byte offsets of one header field's name and value within the head.
#[derive(Debug, Clone, Copy)]
pub struct HeaderSpan {
    pub name: (usize, usize),
    pub value: (usize, usize),
}

pub struct Request<'a> {
    /// The client's address (the TCP peer; percore trusts no forwarding header).
    pub peer: std::net::IpAddr,
    pub method: Method,
    pub version: Version,
    /// The path of the target, without the query; for absolute-form, the path part.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub body: &'a [u8],
    head: &'a [u8],
    headers: &'a [HeaderSpan],
}

impl<'a> Request<'a> {
    pub fn new(
        peer: std::net::IpAddr,
        method: Method,
        version: Version,
        target: &'a str,
        head: &'a [u8],
        headers: &'a [HeaderSpan],
        body: &'a [u8],
    ) -> Request<'a> {
        let target = if target.starts_with('/') {
            target
        } else {
            strip_scheme_and_authority(target)
        };
        let (path, query) = match target.bytes().position(|b| b == b'?') {
            Some(i) => (&target[..i], Some(&target[i + 1..])),
            None => (target, None),
        };
        Request {
            peer,
            method,
            version,
            path,
            query,
            body,
            head,
            headers,
        }
    }

    /// The first header named `name` (ASCII case-insensitive), whitespace-trimmed.
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers.iter().find_map(|span| {
            let field = &self.head[span.name.0..span.name.1];
            field
                .eq_ignore_ascii_case(name.as_bytes())
                .then(|| &self.head[span.value.0..span.value.1])
        })
    }

    /// The first value of `key` in the query string, percent-decoded (`+` is a space);
    /// borrowed unless decoding changed it. Invalid UTF-8 becomes U+FFFD.
    pub fn query_param(&self, key: &str) -> Option<std::borrow::Cow<'a, str>> {
        form_urlencoded::parse(self.query?.as_bytes()).find_map(|(k, v)| (k == key).then_some(v))
    }
}

fn strip_scheme_and_authority(target: &str) -> &str {
    for scheme in ["http://", "https://"] {
        if target.len() >= scheme.len() && target[..scheme.len()].eq_ignore_ascii_case(scheme) {
            let rest = &target[scheme.len()..];
            return match rest.find('/') {
                Some(i) => &rest[i..],
                None => "/",
            };
        }
    }
    target
}
