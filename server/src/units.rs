//! The units of tuning.toml, shared by every layer's settings: durations are integer
//! milliseconds (`ms`), and each section's `validate` checks its ranges with `at_least`.
//! Imports nothing.

use std::time::Duration;

pub fn ms(value: u64) -> Duration {
    Duration::from_millis(value)
}

/// `Err((key, reason))` when `value` is below `min`.
pub fn at_least(key: &str, value: u64, min: u64) -> Result<(), (String, String)> {
    if value < min {
        return Err((key.into(), format!("must be at least {min} (got {value})")));
    }
    Ok(())
}
