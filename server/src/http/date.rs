//! The `Date` header value, rendered at most once a second per shard and copied into
//! every response from there.

use std::cell::Cell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// IMF-fixdate is always 29 bytes: `Sun, 06 Nov 1994 08:49:37 GMT`.
pub const DATE_LEN: usize = 29;

pub struct DateCache {
    value: Cell<[u8; DATE_LEN]>,
    rendered_at_s: Cell<u64>,
}

impl Default for DateCache {
    fn default() -> Self {
        let cache = DateCache {
            value: Cell::new([b' '; DATE_LEN]),
            rendered_at_s: Cell::new(u64::MAX),
        };
        cache.refresh(SystemTime::now());
        cache
    }
}

impl DateCache {
    /// Re-renders the value if the second changed; called by the shard's ticker.
    pub fn refresh(&self, now: SystemTime) {
        let seconds = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs();
        if seconds == self.rendered_at_s.get() {
            return;
        }
        let text = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(seconds));
        let bytes = text.as_bytes();
        assert_eq!(bytes.len(), DATE_LEN, "IMF-fixdate has a fixed width");
        let mut value = [0u8; DATE_LEN];
        value.copy_from_slice(bytes);
        self.value.set(value);
        self.rendered_at_s.set(seconds);
    }

    pub fn get(&self) -> [u8; DATE_LEN] {
        self.value.get()
    }

    /// The second (since the epoch) the value shows: it changes when the value does.
    pub fn second(&self) -> u64 {
        self.rendered_at_s.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_imf_fixdate_once_per_second() {
        let cache = DateCache::default();
        cache.refresh(UNIX_EPOCH + Duration::from_secs(784_111_777));
        assert_eq!(&cache.get(), b"Sun, 06 Nov 1994 08:49:37 GMT");
        cache.refresh(UNIX_EPOCH + Duration::from_millis(784_111_777_900));
        assert_eq!(&cache.get(), b"Sun, 06 Nov 1994 08:49:37 GMT");
        cache.refresh(UNIX_EPOCH + Duration::from_secs(784_111_778));
        assert_eq!(&cache.get(), b"Sun, 06 Nov 1994 08:49:38 GMT");
    }
}
