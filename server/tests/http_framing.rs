//! RFC 9112 framing and limits over raw TCP: each case gets its stated status, a JSON
//! error body, and the stated connection behaviour (closed, or still usable).

mod common;
use common::{ResponseReader, Server, Services, request_on};
use std::io::Write;

#[derive(Clone, Copy, PartialEq, Debug)]
enum After {
    Close,
    KeepOpen,
}

struct Case {
    name: &'static str,
    raw: Vec<u8>,
    status: u16,
    after: After,
}

fn case(name: &'static str, raw: impl AsRef<[u8]>, status: u16, after: After) -> Case {
    Case {
        name,
        raw: raw.as_ref().to_vec(),
        status,
        after,
    }
}

fn cases() -> Vec<Case> {
    use After::*;
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(9000));
    let big_head = format!(
        "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "b".repeat(17000)
    );
    let many_headers = format!("GET /healthz HTTP/1.1\r\nHost: t\r\n{}\r\n", "X-H: 1\r\n".repeat(101));
    let mut nul_value = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-A: a".to_vec();
    nul_value.extend_from_slice(b"\0b\r\n\r\n");
    vec![
        case("plain GET", "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n", 200, KeepOpen),
        case("HEAD", "HEAD /healthz HTTP/1.1\r\nHost: t\r\n\r\n", 200, KeepOpen),
        case(
            "absolute-form",
            "GET http://t/healthz HTTP/1.1\r\nHost: t\r\n\r\n",
            200,
            KeepOpen,
        ),
        case(
            "HTTP/1.0 closes by default",
            "GET /healthz HTTP/1.0\r\n\r\n",
            200,
            Close,
        ),
        case(
            "HTTP/1.0 keep-alive",
            "GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            200,
            KeepOpen,
        ),
        case(
            "Connection: close",
            "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            200,
            Close,
        ),
        case("unknown route", "GET /nope HTTP/1.1\r\nHost: t\r\n\r\n", 404, KeepOpen),
        case(
            "wrong method",
            "DELETE /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
            405,
            KeepOpen,
        ),
        case(
            "identical Content-Lengths",
            "POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
            405,
            KeepOpen,
        ),
        case(
            "chunked body then a route",
            "POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            405,
            KeepOpen,
        ),
        case(
            "CL then TE",
            "POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
            Close,
        ),
        case(
            "TE then CL",
            "POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
            400,
            Close,
        ),
        case(
            "different Content-Lengths",
            "POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            400,
            Close,
        ),
        case(
            "Content-Length +3",
            "POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: +3\r\n\r\nabc",
            400,
            Close,
        ),
        case(
            "Content-Length hex",
            "POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 0x3\r\n\r\nabc",
            400,
            Close,
        ),
        case(
            "Content-Length empty",
            "POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: \r\n\r\n",
            400,
            Close,
        ),
        case(
            "Content-Length overflow",
            "POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            400,
            Close,
        ),
        case(
            "Content-Length list that disagrees",
            "POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 3, 4\r\n\r\nabcd",
            400,
            Close,
        ),
        case(
            "TE not ending in chunked",
            "POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n",
            400,
            Close,
        ),
        case(
            "TE chunked then gzip",
            "POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            400,
            Close,
        ),
        case(
            "TE chunked twice",
            "POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
            Close,
        ),
        case(
            "TE obfuscated",
            "POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: xchunked\r\n\r\n",
            400,
            Close,
        ),
        case(
            "TE gzip, chunked",
            "POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            501,
            Close,
        ),
        case(
            "TE on HTTP/1.0",
            "POST /healthz HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
            Close,
        ),
        case(
            "bad chunk size",
            "POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
            400,
            Close,
        ),
        case(
            "chunk size overflow",
            "POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\n",
            400,
            Close,
        ),
        case(
            "missing CRLF after chunk",
            "POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
            400,
            Close,
        ),
        case(
            "bare LF after chunk size",
            "POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
            400,
            Close,
        ),
        case("missing Host", "GET /healthz HTTP/1.1\r\n\r\n", 400, Close),
        case(
            "duplicate Host",
            "GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            400,
            Close,
        ),
        case(
            "space before colon",
            "GET /healthz HTTP/1.1\r\nHost : t\r\n\r\n",
            400,
            Close,
        ),
        case(
            "obs-fold",
            "GET /healthz HTTP/1.1\r\nHost: t\r\nX-A: a\r\n b\r\n\r\n",
            400,
            Close,
        ),
        case("NUL in a value", nul_value, 400, Close),
        case(
            "CR in a value",
            "GET /healthz HTTP/1.1\r\nHost: t\r\nX-A: a\rb\r\n\r\n",
            400,
            Close,
        ),
        case("HTTP/1.2", "GET /healthz HTTP/1.2\r\nHost: t\r\n\r\n", 505, Close),
        case("HTTP/2.0", "GET /healthz HTTP/2.0\r\nHost: t\r\n\r\n", 505, Close),
        case("garbage request line", "HELLO THERE\r\n\r\n", 400, Close),
        case(
            "control byte in the method",
            "G\x01T /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
            400,
            Close,
        ),
        case("asterisk-form for GET", "GET * HTTP/1.1\r\nHost: t\r\n\r\n", 400, Close),
        case("request line over 8 KiB", long_target, 414, Close),
        case("head over 16 KiB", big_head, 431, Close),
        case("over 100 headers", many_headers, 431, Close),
        case(
            "declared body over 1 MiB",
            "POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 2000000\r\n\r\n",
            413,
            Close,
        ),
        case(
            "chunk over 1 MiB",
            "POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n100001\r\n",
            413,
            Close,
        ),
        case(
            "chunk extension over 1 KiB",
            format!(
                "POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5;{}\r\nhello\r\n0\r\n\r\n",
                "e".repeat(2000)
            ),
            400,
            Close,
        ),
        case(
            "chunk size then bare whitespace",
            "POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n",
            400,
            Close,
        ),
        case(
            "chunk size with 0x",
            "POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
            400,
            Close,
        ),
        case(
            "chunk extension then a route",
            "POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5 ; a=b\r\nhello\r\n0\r\n\r\n",
            405,
            KeepOpen,
        ),
        case(
            "TE with a vertical tab",
            "POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n",
            400,
            Close,
        ),
        case(
            "TE chunked with a parameter",
            "POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked;q=1\r\n\r\n0\r\n\r\n",
            400,
            Close,
        ),
        case(
            "TE in upper case",
            "POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: CHUNKED\r\n\r\n0\r\n\r\n",
            405,
            KeepOpen,
        ),
        case(
            "Content-Length negative",
            "POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n",
            400,
            Close,
        ),
        case(
            "non-token byte in a name",
            "GET /healthz HTTP/1.1\r\nHost: t\r\nX@A: 1\r\n\r\n",
            400,
            Close,
        ),
        case(
            "space inside a name",
            "GET /healthz HTTP/1.1\r\nHost: t\r\nX A: 1\r\n\r\n",
            400,
            Close,
        ),
        case(
            "NUL in a name",
            "GET /healthz HTTP/1.1\r\nHost: t\r\nX\0A: 1\r\n\r\n",
            400,
            Close,
        ),
        case(
            "empty name",
            "GET /healthz HTTP/1.1\r\nHost: t\r\n: 1\r\n\r\n",
            400,
            Close,
        ),
        case(
            "LF in a value",
            "GET /healthz HTTP/1.1\r\nHost: t\r\nX-A: a\nb\r\n\r\n",
            400,
            Close,
        ),
        case(
            "DEL in a value",
            "GET /healthz HTTP/1.1\r\nHost: t\r\nX-A: a\x7fb\r\n\r\n",
            400,
            Close,
        ),
        case(
            "Host with a space",
            "GET /healthz HTTP/1.1\r\nHost: a b\r\n\r\n",
            400,
            Close,
        ),
        case(
            "Host empty (allowed)",
            "GET /healthz HTTP/1.1\r\nHost:\r\n\r\n",
            200,
            KeepOpen,
        ),
        case(
            "bare LF line ends (allowed, RFC 9112 §2.2)",
            "GET /healthz HTTP/1.1\nHost: t\n\n",
            200,
            KeepOpen,
        ),
        case(
            "empty lines before the request line",
            "\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
            200,
            KeepOpen,
        ),
        case(
            "HTTP/2 preface on the HTTP/1 port",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            505,
            Close,
        ),
        case("HTTP/0.9 request", "GET /healthz\r\n\r\n", 400, Close),
        case(
            "version in lower case",
            "GET /healthz http/1.1\r\nHost: t\r\n\r\n",
            400,
            Close,
        ),
        case(
            "space in the target",
            "GET /heal thz HTTP/1.1\r\nHost: t\r\n\r\n",
            400,
            Close,
        ),
        case(
            "two spaces after the method",
            "GET  /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
            400,
            Close,
        ),
        case(
            "fragment in the target",
            "GET /healthz#x HTTP/1.1\r\nHost: t\r\n\r\n",
            400,
            Close,
        ),
        case(
            "method in lower case (another method)",
            "get /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
            405,
            KeepOpen,
        ),
        case(
            "unknown method",
            "BREW /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
            405,
            KeepOpen,
        ),
        case(
            "CONNECT authority-form",
            "CONNECT t:443 HTTP/1.1\r\nHost: t:443\r\n\r\n",
            400,
            Close,
        ),
        case("TRACE", "TRACE /healthz HTTP/1.1\r\nHost: t\r\n\r\n", 405, KeepOpen),
        case(
            "Expect other than 100-continue",
            "GET /healthz HTTP/1.1\r\nHost: t\r\nExpect: tea\r\n\r\n",
            417,
            Close,
        ),
    ]
}

#[test]
fn every_framing_and_limit_case_gets_its_status_and_close_behaviour() {
    let services = Services::start();
    let server = Server::start(&services, "");
    let mut failures = Vec::new();
    for case in cases() {
        let stream = server.connect();
        (&stream).write_all(&case.raw).unwrap();
        let mut reader = ResponseReader::new(&stream);
        let head_only = case.raw.starts_with(b"HEAD");
        let Some(response) = reader.next(head_only) else {
            failures.push(format!("{}: no response", case.name));
            continue;
        };
        if response.status != case.status {
            failures.push(format!(
                "{}: status {} (expected {}) body {}",
                case.name,
                response.status,
                case.status,
                response.text()
            ));
            continue;
        }
        for header in ["Server", "Date", "Content-Length", "Content-Type"] {
            if response.header(header).is_none() {
                failures.push(format!("{}: no {header} header", case.name));
            }
        }
        if response.status >= 400 && response.error_code().is_empty() {
            failures.push(format!("{}: empty error code", case.name));
        }
        match case.after {
            After::Close => {
                if !reader.closed() {
                    failures.push(format!("{}: connection left open", case.name));
                }
            }
            After::KeepOpen => {
                (&stream)
                    .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
                    .unwrap();
                match reader.next(false) {
                    Some(next) if next.status == 200 => {}
                    other => failures.push(format!("{}: connection not reusable: {other:?}", case.name)),
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The 405 row of RELIABILITY.md: an unknown, lower-case or TRACE method gets 405 with
/// `Allow` listing what the path serves, as a JSON error, and the message never echoes a
/// token the client made up (so a reflected method cannot inject into a log or page).
#[test]
fn a_disallowed_method_gets_405_with_allow_and_no_echo_of_its_token() {
    let services = Services::start();
    let server = Server::start(&services, "");
    let stream = server.connect();
    for method in ["get", "BREW", "TRACE", "X-EVIL-TOKEN"] {
        let got = request_on(&stream, &format!("{method} /healthz HTTP/1.1\r\nHost: t\r\n\r\n"));
        assert_eq!(got.status, 405, "{method}");
        assert_eq!(got.header("Allow"), Some("GET, HEAD"), "{method}");
        assert_eq!(got.error_code(), "method_not_allowed", "{method}");
        let message = got.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(!message.contains(method), "{method} echoed: {message}");
        assert!(!got.text().contains(method), "{method} echoed: {}", got.text());
    }
    // A method the path does serve elsewhere: the Allow header lists exactly those.
    let got = request_on(&stream, "DELETE /v1/users HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(got.status, 405);
    assert_eq!(got.header("Allow"), Some("GET, HEAD"));
}

#[test]
fn head_has_the_get_length_and_no_body_and_errors_are_json() {
    let services = Services::start();
    let server = Server::start(&services, "");
    let stream = server.connect();
    (&stream)
        .write_all(b"HEAD /healthz HTTP/1.1\r\nHost: t\r\n\r\nGET /nope HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut reader = ResponseReader::new(&stream);
    let head = reader.next(true).unwrap();
    assert_eq!(head.header("Content-Length"), Some("15"));
    assert!(head.body.is_empty());
    // The next response starts right after the HEAD response's head: no body was sent.
    let missing = reader.next(false).unwrap();
    assert_eq!(missing.status, 404);
    assert_eq!(missing.header("Content-Type"), Some("application/json"));
    assert_eq!(missing.error_code(), "not_found");
    assert!(missing.json()["error"]["message"].is_string());
}

#[test]
fn expect_continue_gets_100_before_the_body_is_sent() {
    let services = Services::start();
    let server = Server::start(&services, "");
    let stream = server.connect();
    (&stream)
        .write_all(b"POST /bench/hash HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\nExpect: 100-continue\r\n\r\n")
        .unwrap();
    let mut reader = ResponseReader::new(&stream);
    assert_eq!(reader.next(false).unwrap().status, 100);
    (&stream).write_all(b"secret").unwrap();
    let response = reader.next(false).unwrap();
    assert_eq!(response.status, 200);
    assert!(response.json()["hash"].as_str().unwrap().starts_with("$argon2id$"));
}

#[test]
fn a_1_mib_body_at_the_limit_is_read_whole() {
    let services = Services::start();
    let server = Server::start(&services, "");
    let stream = server.connect();
    let body = vec![b'x'; 1024 * 1024];
    let head = format!(
        "POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    (&stream).write_all(head.as_bytes()).unwrap();
    (&stream).write_all(&body).unwrap();
    (&stream)
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut reader = ResponseReader::new(&stream);
    assert_eq!(reader.next(false).unwrap().status, 405);
    assert_eq!(reader.next(false).unwrap().status, 200);
}

#[test]
fn five_hundred_requests_in_one_write_are_answered_in_order() {
    let services = Services::start();
    let server = Server::start(&services, "");
    let stream = server.connect();
    let path = |i: usize| if i.is_multiple_of(3) { "/nope" } else { "/healthz" };
    let batch: String = (0..500)
        .map(|i| format!("GET {} HTTP/1.1\r\nHost: t\r\n\r\n", path(i)))
        .collect();
    (&stream).write_all(batch.as_bytes()).unwrap();
    let mut reader = ResponseReader::new(&stream);
    for i in 0..500 {
        let response = reader.next(false).unwrap_or_else(|| panic!("response {i} missing"));
        let expected = if path(i) == "/nope" { 404 } else { 200 };
        assert_eq!(response.status, expected, "response {i} out of order");
    }
}

/// Each way of hiding a second request in the first one's framing; the hidden request is a
/// registration, so it would leave a user behind if it ever ran.
fn smuggling_attempts(hidden: &dyn Fn(usize) -> String) -> Vec<(&'static str, String)> {
    let mut attempts = Vec::new();
    let mut add = |name: &'static str, make: &dyn Fn(&str) -> String| {
        let request = hidden(attempts.len());
        attempts.push((name, make(&request)));
    };
    add("CL.TE", &|h| {
        format!(
            "POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{h}",
            5 + h.len()
        )
    });
    add("TE.CL", &|h| {
        format!(
            "POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{:x}\r\n{h}\r\n0\r\n\r\n",
            h.len()
        )
    });
    add("CL.CL", &|h| {
        format!(
            "POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nContent-Length: {}\r\n\r\n{h}",
            h.len()
        )
    });
    add("TE obfuscated, CL", &|h| {
        format!(
            "POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: xchunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{h}"
        )
    });
    add("TE behind a space before the colon", &|h| {
        format!(
            "POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{h}"
        )
    });
    add("TE in an obs-fold", &|h| {
        format!(
            "POST /healthz HTTP/1.1\r\nHost: t\r\nX-A: a\r\n Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{h}"
        )
    });
    add("chunk size overflow", &|h| {
        format!(
            "POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n0\r\n\r\n{h}"
        )
    });
    add("bare LF after the chunk size", &|h| {
        format!("POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n{h}")
    });
    add("chunk data longer than its size", &|h| {
        format!("POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n0\r\n\r\n{h}")
    });
    add("body over the limit", &|h| {
        format!("POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 2000000\r\n\r\n{h}")
    });
    add("a GET's body (a body, never a request)", &|h| {
        format!(
            "GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{h}",
            h.len()
        )
    });
    add("a chunked body (a body, never a request)", &|h| {
        format!(
            "POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{h}\r\n0\r\n\r\n",
            h.len()
        )
    });
    attempts
}

#[test]
fn a_smuggled_second_request_never_runs() {
    let services = Services::start();
    let server = Server::start(&services, "");
    let email = |i: usize| format!("smuggled-{i}@example.test");
    let hidden = |i: usize| {
        let body = format!(r#"{{"email":"{}","password":"correct horse","name":"s"}}"#, email(i));
        format!(
            "POST /v1/auth/register HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let attempts = smuggling_attempts(&hidden);
    for (name, raw) in &attempts {
        let stream = server.connect();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        (&stream).write_all(raw.as_bytes()).unwrap();
        let mut reader = ResponseReader::new(&stream);
        let first = reader.next(false).unwrap_or_else(|| panic!("{name}: no response"));
        assert!(first.status != 201, "{name}: the hidden registration answered");
        // Whatever the first answer, nothing else comes back on this connection.
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        if let Some(extra) = reader.next(false) {
            panic!(
                "{name}: a second response ({}) came back: {}",
                extra.status,
                extra.text()
            );
        }
    }
    // The check below could fail: sent on its own, the hidden request does register.
    let control = server.connect();
    (&control).write_all(hidden(999).as_bytes()).unwrap();
    assert_eq!(ResponseReader::new(&control).next(false).unwrap().status, 201);
    let mut db = postgres::Client::connect(&services.postgres.url, postgres::NoTls).unwrap();
    let emails: Vec<String> = (0..attempts.len()).map(email).chain([email(999)]).collect();
    let found: Vec<String> = db
        .query("SELECT email::text FROM users WHERE email::text = ANY($1)", &[&emails])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(found, vec![email(999)], "hidden requests that ran: {found:?}");
}
