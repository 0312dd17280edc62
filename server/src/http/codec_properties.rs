//! Properties of the request codec (`head` and `body`), run in the normal test suite:
//! arbitrary bytes never panic it, and a request split at any point parses the same as
//! the whole. The `fuzz/` targets push the same entry points much further, off CI.

use super::body::ChunkedDecoder;
use super::error::HttpError;
use super::head::{self, HeadLimits, Parsed};
use super::request::HeaderSpan;
use proptest::prelude::*;

const LIMITS: HeadLimits = HeadLimits {
    request_line_bytes_max: 8 * 1024,
    head_bytes_max: 16 * 1024,
    body_bytes_max: 64 * 1024,
};
const HEADERS_MAX: usize = 100;

/// The parse outcome as comparable text (`Head` holds spans, so equal text is equal heads).
fn parse(buf: &[u8]) -> Result<String, HttpError> {
    let mut spans: Vec<HeaderSpan> = Vec::new();
    head::parse(buf, &LIMITS, HEADERS_MAX, &mut spans).map(|parsed| match parsed {
        Parsed::Complete(head) => format!("{head:?} {spans:?}"),
        Parsed::Partial => "partial".to_string(),
    })
}

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z][A-Za-z0-9-]{0,15}"
}

/// A valid request head, with its body framing: (head bytes, chunked?).
fn valid_head() -> impl Strategy<Value = Vec<u8>> {
    let method = prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]);
    let path = "/[a-z0-9/._~-]{0,40}(\\?[a-z0-9=&%]{0,20})?";
    let fields = prop::collection::vec((token(), "[ -~]{0,40}"), 0..12);
    let framing = prop_oneof![Just(None), (0u32..5000).prop_map(Some)];
    (method, path, fields, framing, any::<bool>()).prop_map(|(method, path, fields, length, chunked)| {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: example.test\r\n");
        for (name, value) in fields {
            // Framing, Host, Expect and Connection are chosen below, not at random.
            let lower = name.to_ascii_lowercase();
            if ["host", "content-length", "transfer-encoding", "expect", "connection"].contains(&lower.as_str()) {
                continue;
            }
            head.push_str(&format!("{name}: {}\r\n", value.trim()));
        }
        match (length, chunked) {
            (Some(length), _) => head.push_str(&format!("Content-Length: {length}\r\n")),
            (None, true) => head.push_str("Transfer-Encoding: chunked\r\n"),
            (None, false) => {}
        }
        head.push_str("\r\n");
        head.into_bytes()
    })
}

/// `body` chunked with the given chunk lengths (cycled), extensions on some, then a trailer.
fn chunked(body: &[u8], lengths: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = body;
    let mut i = 0;
    while !rest.is_empty() {
        let n = lengths[i % lengths.len()].clamp(1, rest.len());
        let extension = if i % 3 == 1 { ";name=value" } else { "" };
        out.extend_from_slice(format!("{n:x}{extension}\r\n").as_bytes());
        out.extend_from_slice(&rest[..n]);
        out.extend_from_slice(b"\r\n");
        rest = &rest[n..];
        i += 1;
    }
    out.extend_from_slice(b"0\r\nX-Trailer: done\r\n\r\n");
    out
}

/// Decodes `input` fed in the pieces `splits` cut it into, as a connection would receive it.
fn decode_in_pieces(input: &[u8], splits: &[usize], max: usize) -> Result<(Vec<u8>, usize), HttpError> {
    let mut decoder = ChunkedDecoder::new(max);
    let mut out = Vec::new();
    let mut buffered = Vec::new();
    let mut consumed = 0;
    let mut cuts: Vec<usize> = splits.iter().map(|s| s % (input.len() + 1)).collect();
    cuts.push(input.len());
    cuts.sort_unstable();
    let mut fed = 0;
    for cut in cuts {
        buffered.extend_from_slice(&input[fed..cut]);
        fed = cut;
        let used = decoder.decode(&buffered, &mut out)?;
        assert!(used <= buffered.len(), "consumed more than it was given");
        buffered.drain(..used);
        consumed += used;
        if decoder.is_done() {
            break;
        }
    }
    assert!(decoder.is_done(), "whole body fed but the decoder is not done");
    Ok((out, consumed))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_the_head_parser(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = parse(&bytes);
    }

    #[test]
    fn head_like_bytes_never_panic_the_head_parser(
        text in "(GET|POST|OPTIONS|[A-Z]{1,8}) ([!-~]{1,3}|/[!-~]{0,30}|[hH][tT][tT][pP][sS]?://[a-z]{1,8}[!-~]{0,10}) \
                 HTTP/1\\.[01]\r?\n([A-Za-z-]{1,12}: [ -~\t]{0,30}\r?\n|[ -~]{1,12}:[ -~]{0,8}\r\n){0,6}\r?\n"
    ) {
        let _ = parse(text.as_bytes());
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_chunked_decoder(
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
        max in 0usize..4096,
    ) {
        let mut decoder = ChunkedDecoder::new(max);
        let mut out = Vec::new();
        if let Ok(used) = decoder.decode(&bytes, &mut out) {
            prop_assert!(used <= bytes.len());
        }
        prop_assert!(out.len() <= max, "the body limit held: {} > {max}", out.len());
    }

    #[test]
    fn the_request_line_limit_is_the_same_for_a_complete_and_a_partial_head(
        over in -3i64..=3,
        crlf in any::<bool>(),
        leading_empty_lines in 0usize..3,
    ) {
        // A line of exactly `max + over` bytes with its line ending's CR, if any.
        let eol = if crlf { "\r\n" } else { "\n" };
        let fixed = "GET / HTTP/1.1".len() + eol.len() - 1;
        let filler = (LIMITS.request_line_bytes_max as i64 + over) as usize - fixed;
        let line = format!("{}GET /{} HTTP/1.1{eol}", eol.repeat(leading_empty_lines), "a".repeat(filler));
        let head = format!("{line}Host: t{eol}{eol}");
        let too_long = over > 0;
        // Complete: the length comes from httparse's spans.
        prop_assert_eq!(matches!(parse(head.as_bytes()), Err(HttpError::UriTooLong)), too_long);
        // Partial (the head's last line missing): the length comes from the scan.
        prop_assert_eq!(matches!(parse(line.as_bytes()), Err(HttpError::UriTooLong)), too_long);
    }

    #[test]
    fn a_head_split_anywhere_is_partial_until_its_last_byte(head in valid_head(), tail in "[ -~]{0,20}") {
        let whole = parse(&head).expect("a generated head is valid");
        prop_assert!(whole != "partial");
        for cut in 0..head.len() {
            prop_assert_eq!(parse(&head[..cut]), Ok("partial".to_string()), "cut at {}", cut);
        }
        // Bytes after the head (a body, a pipelined request) change nothing about it.
        let mut followed = head.clone();
        followed.extend_from_slice(tail.as_bytes());
        prop_assert_eq!(parse(&followed), Ok(whole));
    }

    #[test]
    fn a_chunked_body_split_anywhere_decodes_the_same(
        body in prop::collection::vec(any::<u8>(), 0..600),
        lengths in prop::collection::vec(1usize..200, 1..5),
        splits in prop::collection::vec(any::<usize>(), 0..6),
        next in "[ -~]{0,20}",
    ) {
        let mut input = chunked(&body, &lengths);
        let encoded_len = input.len();
        input.extend_from_slice(next.as_bytes());
        let (whole, used) = decode_in_pieces(&input, &[], 4096).expect("valid chunked body");
        prop_assert_eq!(&whole, &body);
        prop_assert_eq!(used, encoded_len, "stops at the end of the body, before the next request");
        let (pieces, used) = decode_in_pieces(&input, &splits, 4096).expect("valid chunked body");
        prop_assert_eq!(&pieces, &body);
        prop_assert_eq!(used, encoded_len);
    }

    #[test]
    fn a_chunked_body_over_the_limit_is_refused_however_it_arrives(
        body in prop::collection::vec(any::<u8>(), 2..600),
        lengths in prop::collection::vec(1usize..200, 1..5),
        splits in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        let input = chunked(&body, &lengths);
        let max = body.len() - 1;
        let mut decoder = ChunkedDecoder::new(max);
        let mut out = Vec::new();
        let mut cuts: Vec<usize> = splits.iter().map(|s| s % (input.len() + 1)).collect();
        cuts.push(input.len());
        cuts.sort_unstable();
        let mut buffered = Vec::new();
        let mut fed = 0;
        let mut refused = false;
        for cut in cuts {
            buffered.extend_from_slice(&input[fed..cut]);
            fed = cut;
            match decoder.decode(&buffered, &mut out) {
                Ok(used) => { buffered.drain(..used); }
                Err(error) => {
                    prop_assert_eq!(error, HttpError::BodyTooLarge);
                    refused = true;
                    break;
                }
            }
        }
        prop_assert!(refused, "a body one byte over the limit was accepted");
        prop_assert!(out.len() <= max);
    }
}
