//! The request head parser and the chunked body decoder on arbitrary bytes: no panic, the
//! body limit holds, and the decoder never claims more bytes than it was given. The first
//! byte picks where the input is split, so partial reads are fuzzed as well.
#![no_main]

use libfuzzer_sys::fuzz_target;
use percore::http::body::ChunkedDecoder;
use percore::http::head::{self, HeadLimits};

const LIMITS: HeadLimits = HeadLimits {
    request_line_bytes_max: 8 * 1024,
    head_bytes_max: 16 * 1024,
    body_bytes_max: 64 * 1024,
};

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else {
        return;
    };
    let mut spans = Vec::new();
    let _ = head::parse(input, &LIMITS, 100, &mut spans);

    let body_bytes_max = 4096;
    let mut decoder = ChunkedDecoder::new(body_bytes_max);
    let mut out = Vec::new();
    let cut = usize::from(split).min(input.len());
    let mut buffered = input[..cut].to_vec();
    for piece in [&input[cut..], &[][..]] {
        match decoder.decode(&buffered, &mut out) {
            Ok(used) => {
                assert!(used <= buffered.len());
                buffered.drain(..used);
            }
            Err(_) => break,
        }
        buffered.extend_from_slice(piece);
    }
    assert!(out.len() <= body_bytes_max);
});
