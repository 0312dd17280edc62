//! Decoding a chunked request body (RFC 9112 §7.1), enforcing the body limit while the
//! chunks arrive. Content-Length bodies need no decoder: the connection waits for the bytes.

use super::error::HttpError;

/// A chunk-size line (size plus extensions) longer than this is refused: extensions are
/// ignored, so there is no reason to buffer many of their bytes.
const CHUNK_LINE_BYTES_MAX: usize = 1024;
/// The trailer section after the last chunk is parsed and dropped; this bounds it.
const TRAILER_BYTES_MAX: usize = 8 * 1024;
const TRAILER_FIELDS_MAX: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Data { remaining: usize },
    DataEnd,
    Trailers,
    Done,
}

#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
    body_bytes_max: usize,
}

impl ChunkedDecoder {
    pub fn new(body_bytes_max: usize) -> Self {
        ChunkedDecoder {
            state: State::Size,
            body_bytes_max,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes as much of `input` as it can, appending payload bytes to `out`.
    /// Returns how many input bytes were consumed; call again with more input until done.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, HttpError> {
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            let step = match self.state {
                State::Done => return Ok(pos),
                State::Size => self.size_line(rest, out.len())?,
                State::Data { remaining } => self.data(rest, remaining, out),
                State::DataEnd => self.data_end(rest)?,
                State::Trailers => self.trailers(rest)?,
            };
            match step {
                Step::Went(used) => pos += used,
                Step::Wait(used) => return Ok(pos + used),
            }
        }
    }

    /// A chunk-size line; `decoded` bytes of payload came before it.
    fn size_line(&mut self, rest: &[u8], decoded: usize) -> Result<Step, HttpError> {
        let Some(line_end) = rest.iter().take(CHUNK_LINE_BYTES_MAX).position(|b| *b == b'\n') else {
            if rest.len() >= CHUNK_LINE_BYTES_MAX {
                return Err(HttpError::BadRequest("chunk-size line too long"));
            }
            return Ok(Step::Wait(0));
        };
        if line_end == 0 || rest[line_end - 1] != b'\r' {
            return Err(HttpError::BadRequest("chunk-size line must end with CRLF"));
        }
        if !rest[0].is_ascii_hexdigit() {
            return Err(HttpError::BadRequest("invalid chunk size"));
        }
        // RFC 9112 §7.1: after the size comes CRLF or an extension (";", maybe after
        // whitespace); httparse would also take bare trailing whitespace, which a proxy in
        // front might read differently.
        let after_size = &rest[rest.iter().position(|b| !b.is_ascii_hexdigit()).unwrap_or(0)..line_end];
        if after_size != b"\r" && after_size.trim_ascii_start().first() != Some(&b';') {
            return Err(HttpError::BadRequest("invalid chunk size"));
        }
        let (used, size) = match httparse::parse_chunk_size(&rest[..=line_end]) {
            Ok(httparse::Status::Complete(done)) => done,
            _ => return Err(HttpError::BadRequest("invalid chunk size")),
        };
        debug_assert_eq!(used, line_end + 1);
        if size == 0 {
            self.state = State::Trailers;
            return Ok(Step::Went(used));
        }
        let room = (self.body_bytes_max - decoded) as u64;
        if size > room {
            return Err(HttpError::BodyTooLarge);
        }
        self.state = State::Data {
            remaining: size as usize,
        };
        Ok(Step::Went(used))
    }

    fn data(&mut self, rest: &[u8], remaining: usize, out: &mut Vec<u8>) -> Step {
        let take = remaining.min(rest.len());
        out.extend_from_slice(&rest[..take]);
        if take < remaining {
            self.state = State::Data {
                remaining: remaining - take,
            };
            return Step::Wait(take);
        }
        self.state = State::DataEnd;
        Step::Went(take)
    }

    fn data_end(&mut self, rest: &[u8]) -> Result<Step, HttpError> {
        if rest.len() < 2 {
            if rest.first().is_some_and(|b| *b != b'\r') {
                return Err(HttpError::BadRequest("chunk data must end with CRLF"));
            }
            return Ok(Step::Wait(0));
        }
        if &rest[..2] != b"\r\n" {
            return Err(HttpError::BadRequest("chunk data must end with CRLF"));
        }
        self.state = State::Size;
        Ok(Step::Went(2))
    }

    /// The trailer section: parsed, bounded, dropped.
    fn trailers(&mut self, rest: &[u8]) -> Result<Step, HttpError> {
        let mut fields = [httparse::EMPTY_HEADER; TRAILER_FIELDS_MAX];
        match httparse::parse_headers(rest, &mut fields) {
            Ok(httparse::Status::Complete((used, _))) => {
                self.state = State::Done;
                Ok(Step::Went(used))
            }
            Ok(httparse::Status::Partial) if rest.len() < TRAILER_BYTES_MAX => Ok(Step::Wait(0)),
            Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => Err(HttpError::HeadTooLarge),
            Err(_) => Err(HttpError::BadRequest("malformed trailer section")),
        }
    }
}

/// What one state consumed, and whether to go on or wait for more input.
enum Step {
    Went(usize),
    Wait(usize),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], max: usize) -> Result<(Vec<u8>, usize, bool), HttpError> {
        let mut decoder = ChunkedDecoder::new(max);
        let mut out = Vec::new();
        let used = decoder.decode(input, &mut out)?;
        Ok((out, used, decoder.is_done()))
    }

    #[test]
    fn decodes_chunks_and_trailers() {
        let input = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        let (body, used, done) = decode_all(input, 100).unwrap();
        assert_eq!(body, b"hello world");
        assert!(done);
        assert_eq!(&input[used..], b"NEXT");
    }

    #[test]
    fn byte_at_a_time_gives_the_same_body() {
        let input = b"3\r\nabc\r\nA\r\n0123456789\r\n0\r\n\r\n";
        let mut decoder = ChunkedDecoder::new(100);
        let mut out = Vec::new();
        let mut buffered = Vec::new();
        for byte in input {
            buffered.push(*byte);
            let used = decoder.decode(&buffered, &mut out).unwrap();
            buffered.drain(..used);
        }
        assert!(decoder.is_done());
        assert_eq!(out, b"abc0123456789");
    }

    #[test]
    fn refuses_bad_framing() {
        for bad in [
            &b"zz\r\n"[..],
            b"\r\n",
            b"5\nhello\r\n",
            b"5\r\nhelloXX",
            b"-1\r\n",
            b"fffffffffffffffff\r\n",
        ] {
            assert!(
                matches!(decode_all(bad, 1 << 20), Err(HttpError::BadRequest(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_body_growing_past_the_limit_is_413() {
        assert_eq!(
            decode_all(b"4\r\nabcd\r\n4\r\nefgh\r\n", 6).unwrap_err(),
            HttpError::BodyTooLarge
        );
    }

    #[test]
    fn a_long_extension_is_refused() {
        let mut input = b"1;".to_vec();
        input.extend(std::iter::repeat_n(b'x', 2000));
        assert!(matches!(decode_all(&input, 100), Err(HttpError::BadRequest(_))));
    }
}
