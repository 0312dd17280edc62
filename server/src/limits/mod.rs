//! Limits on what clients may ask: per-key token buckets (`throttle`), the per-client rate
//! limit by route class (`rate_limit`), and admission, the check each limited request
//! passes before its handler runs (`admission`). Login throttling uses `throttle` too.
//!
//! It may import `http` (requests, the 429), `store` (Redis, for global limits), `config`
//! and `runtime`; nothing from the API above it.

pub mod admission;
pub mod rate_limit;
pub mod throttle;
