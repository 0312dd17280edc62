//! The one table from data-layer errors to what a client sees: status, code, message and
//! Retry-After. Handlers use `?` on a `StoreError` and get this.

use crate::http::ApiError;
use crate::store::StoreError;

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        match error {
            StoreError::Down => {
                ApiError::unavailable("database_unavailable", "the database is not reachable; retry later", 1)
            }
            StoreError::Busy => ApiError::unavailable("database_busy", "the database is at capacity; retry later", 1),
            StoreError::Timeout => ApiError::unavailable(
                "database_timeout",
                "the database did not answer in time; retry later",
                1,
            ),
            StoreError::InvalidValue => ApiError::new(422, "invalid_value", "a value cannot be stored"),
            StoreError::Failed => ApiError::internal(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailability_is_503_with_retry_after_and_bad_values_422() {
        for (error, status, code) in [
            (StoreError::Down, 503, "database_unavailable"),
            (StoreError::Busy, 503, "database_busy"),
            (StoreError::Timeout, 503, "database_timeout"),
            (StoreError::InvalidValue, 422, "invalid_value"),
            (StoreError::Failed, 500, "internal_error"),
        ] {
            let api = ApiError::from(error);
            assert_eq!((api.status, api.code), (status, code), "{error:?}");
            assert_eq!(api.retry_after_s.is_some(), status == 503, "{error:?}");
        }
    }
}
