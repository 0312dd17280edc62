//! RFC 9112 framing and limits over raw TCP: each case gets its stated status, a JSON
//! error body, and the stated connection behaviour (closed, or still usable).

mod common;
use common::{ResponseReader, Server, Services};
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
