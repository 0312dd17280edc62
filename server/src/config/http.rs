//! `[http]`: the limits and timeouts of every client connection (the engine hands them to
//! `http::conn` as its `ConnLimits`).

use crate::units::at_least;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    pub request_line_bytes_max: usize,
    pub head_bytes_max: usize,
    pub headers_count_max: usize,
    pub body_bytes_max: usize,
    pub header_read_timeout_ms: u64,
    pub body_read_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub write_timeout_ms: u64,
    /// Responses of one pipelined batch are flushed once they reach this many bytes.
    pub write_buffer_bytes_max: usize,
    /// When a read finds nothing, let the shard's other connections run and try again this
    /// many times before arming an io_uring poll. Under load the bytes usually arrive
    /// meanwhile, which saves the poll's completion work; idle, it costs a few syscalls.
    pub read_retries_max: usize,
    /// How often each shard expires read deadlines (header, body, idle timeouts fire up to
    /// this late).
    pub deadline_sweep_ms: u64,
    /// TCP_NODELAY on client sockets: each flush goes out at once instead of waiting for
    /// the peer's ACK of earlier data (Nagle).
    pub tcp_nodelay: bool,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            request_line_bytes_max: 8 * 1024,
            head_bytes_max: 16 * 1024,
            headers_count_max: 100,
            body_bytes_max: 1024 * 1024,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            idle_timeout_ms: 60_000,
            write_timeout_ms: 10_000,
            write_buffer_bytes_max: 64 * 1024,
            read_retries_max: 1,
            tcp_nodelay: true,
            deadline_sweep_ms: 100,
        }
    }
}

impl Http {
    pub fn validate(&self) -> Result<(), (String, String)> {
        at_least("http.request_line_bytes_max", self.request_line_bytes_max as u64, 64)?;
        at_least(
            "http.head_bytes_max",
            self.head_bytes_max as u64,
            self.request_line_bytes_max as u64,
        )?;
        at_least("http.headers_count_max", self.headers_count_max as u64, 4)?;
        let limit = crate::http::head::HEADERS_COUNT_LIMIT;
        if self.headers_count_max > limit {
            let reason = format!("must be at most {limit} (got {})", self.headers_count_max);
            return Err(("http.headers_count_max".into(), reason));
        }
        at_least("http.header_read_timeout_ms", self.header_read_timeout_ms, 1)?;
        at_least("http.body_read_timeout_ms", self.body_read_timeout_ms, 1)?;
        at_least("http.idle_timeout_ms", self.idle_timeout_ms, 1)?;
        at_least("http.write_timeout_ms", self.write_timeout_ms, 1)?;
        at_least("http.write_buffer_bytes_max", self.write_buffer_bytes_max as u64, 1024)?;
        at_least("http.deadline_sweep_ms", self.deadline_sweep_ms, 10)?;
        if self.read_retries_max > 16 {
            let reason = format!("must be at most 16 (got {})", self.read_retries_max);
            return Err(("http.read_retries_max".into(), reason));
        }
        Ok(())
    }
}
