//! What can go wrong, by who is at fault: the server refused one statement (`Db`), the
//! connection is gone or gave up (`Closed`, `Timeout`), or a value did not convert.

use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::ErrorFields;
use std::fmt;

/// SQLSTATE 57014: a statement cancelled, as `statement_timeout` does.
pub const QUERY_CANCELED: &str = "57014";
/// SQLSTATE 28P01: a wrong password.
pub const INVALID_PASSWORD: &str = "28P01";

/// An ErrorResponse: it fails one statement, and the pipeline goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbError {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
}

impl DbError {
    pub(crate) fn parse(mut fields: ErrorFields<'_>) -> DbError {
        let mut error = DbError {
            severity: String::new(),
            code: String::new(),
            message: String::new(),
            detail: None,
        };
        while let Ok(Some(field)) = fields.next() {
            let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
            match field.type_() {
                // 'V' is the untranslated severity; 'S' may be localized.
                b'V' => error.severity = value,
                b'S' if error.severity.is_empty() => error.severity = value,
                b'C' => error.code = value,
                b'M' => error.message = value,
                b'D' => error.detail = Some(value),
                _ => {}
            }
        }
        error
    }

    /// FATAL and PANIC end the session: the server closes the connection next.
    pub fn ends_session(&self) -> bool {
        self.severity == "FATAL" || self.severity == "PANIC"
    }
}

#[derive(Debug)]
pub enum Error {
    /// The server refused this statement; the connection is fine.
    Db(DbError),
    /// The connection is lost or was never made (socket error, server gone, protocol
    /// violation); every statement pending on it fails with this.
    Closed(String),
    /// No answer within the client-side deadline: the server or the network is silent.
    Timeout,
    /// A parameter could not be encoded for its column type (a programming error).
    Encode(String),
    /// A column could not be decoded into the asked type (a programming error).
    Decode(String),
    /// `target_session_attrs=read-write` and the server is a standby.
    ReadOnly,
    /// Statement `index` (in the order given to `connect`) did not prepare.
    Prepare { index: usize, error: DbError },
}

impl Error {
    pub fn as_db(&self) -> Option<&DbError> {
        match self {
            Error::Db(db) => Some(db),
            _ => None,
        }
    }

    /// The SQLSTATE, for a server's refusal.
    pub fn code(&self) -> Option<&str> {
        self.as_db().map(|db| db.code.as_str())
    }

    /// The connection is unusable: socket lost, closed, or silent past its deadline.
    pub fn is_connection(&self) -> bool {
        matches!(self, Error::Closed(_) | Error::Timeout)
    }

    pub(crate) fn io(error: std::io::Error) -> Error {
        Error::Closed(error.to_string())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Db(db) => write!(f, "{}: {} ({})", db.severity, db.message, db.code),
            Error::Closed(why) => write!(f, "connection closed: {why}"),
            Error::Timeout => f.write_str("the server did not answer within the deadline"),
            Error::Encode(why) => write!(f, "encoding a parameter: {why}"),
            Error::Decode(why) => write!(f, "decoding a column: {why}"),
            Error::ReadOnly => f.write_str("the server is read-only (a standby) and read-write was asked"),
            Error::Prepare { index, error } => write!(
                f,
                "preparing statement {index}: {}: {} ({})",
                error.severity, error.message, error.code
            ),
        }
    }
}

impl std::error::Error for Error {}
