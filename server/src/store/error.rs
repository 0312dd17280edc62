//! What can go wrong in the data layer, in its own terms. The API turns each into a status
//! in one table (`api::errors`); nothing here knows HTTP.

/// A failed read or write. Logged where it happened, with the statement; callers only map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// No usable connection: the database is down or unreachable.
    Down,
    /// Every connection's pipeline and its queue are full, or the wait for room ran out.
    Busy,
    /// The statement did not finish in time: `statement_timeout`, or no answer at all past
    /// the client-side deadline (the connection is then replaced).
    Timeout,
    /// A value Postgres cannot store (SQLSTATE class 22, say a NUL in text) that validation
    /// should have caught: the client's input, not our failure.
    InvalidValue,
    /// Anything else: a bug, or rows not of the shape the statement promises.
    Failed,
}
