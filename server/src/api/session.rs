//! The session-aware read the `/v1/me…` and user reads share, in one place:
//!
//! 1. the shard's cache knows the caller's session: serve the cached value, loading it by
//!    user id (no session check in SQL) on a miss;
//! 2. else one statement checks the session in SQL and reads the rows;
//! 3. no row: the token is not live, 401;
//! 4. else the session is remembered, so the caller's next request takes step 1.
//!
//! Every statement read in step 2 ends with the session's user and expiry (the catalogue
//! checks it), which `SessionColumns` reads.
//!
//! Runs on a shard: never blocks.

use super::Ctx;
use super::auth::{self, Principal};
use crate::http::ApiError;
use crate::store::cache::{Cached, Epoch, Key};
use crate::store::{Stmt, StoreError};
use percore_pg::types::ToSql;
use percore_pg::{Row, Rows};
use std::future::Future;
use std::time::SystemTime;

/// The last two columns of a session-checking read: the session's user and expiry.
pub struct SessionColumns {
    pub user_id: i64,
    pub expires_at: SystemTime,
}

impl SessionColumns {
    pub fn of(row: Row<'_>) -> SessionColumns {
        let columns = row.len();
        debug_assert!(columns >= 2, "a session-checking read ends with two session columns");
        SessionColumns {
            user_id: row.get(columns - 2),
            expires_at: row.get(columns - 1),
        }
    }
}

/// A read that checks the caller's session in SQL (step 2).
pub struct Checked<'q> {
    pub stmt: Stmt,
    pub params: &'q [&'q (dyn ToSql + Sync)],
    /// Cache keys the rows will fill: a replica must have replayed past their last
    /// invalidation (`Sql::query_session_replica`).
    pub fills: &'q [Key],
    /// The keys the rows turned out to show.
    pub shown: fn(&Rows) -> Vec<Key>,
}

/// A checked read's rows, at least one, and the cache epoch it began at: what the rows
/// show may be cached with `insert_unless_invalidated(epoch, …)`.
pub struct CheckedRows {
    pub rows: Rows,
    pub epoch: Epoch,
}

/// Steps 2 to 4.
pub async fn checked_read(ctx: &Ctx<'_>, who: &Principal, read: Checked<'_>) -> Result<CheckedRows, ApiError> {
    let epoch = ctx.shard.store.cache.epoch();
    let rows = (ctx.sql)
        .query_session_replica(&who.token_hash, read.fills, read.stmt, read.params, read.shown)
        .await?;
    let first = rows.first().ok_or_else(auth::invalid_token)?;
    let session = SessionColumns::of(first);
    auth::remember_session(ctx, who, epoch, session.user_id, session.expires_at);
    Ok(CheckedRows { rows, epoch })
}

/// Either answer of `cached_or_checked`.
pub enum SessionRead {
    /// Step 1: the value under the key, `None` when the load found nothing.
    Cached(Option<Cached>),
    Checked(CheckedRows),
}

/// All four steps. `key` names the cached value for the caller's user id, and `load`
/// reads it on a miss.
pub async fn cached_or_checked<Load, Loading>(
    ctx: &Ctx<'_>,
    who: &Principal,
    key: impl FnOnce(i64) -> Key,
    load: Load,
    checked: Checked<'_>,
) -> Result<SessionRead, ApiError>
where
    Load: FnOnce(i64) -> Loading,
    Loading: Future<Output = Result<Option<Cached>, StoreError>>,
{
    if let Some(user_id) = auth::cached_user(ctx, who) {
        let cached = ctx
            .shard
            .store
            .cache
            .get_or_load(key(user_id), || load(user_id))
            .await?;
        return Ok(SessionRead::Cached(cached));
    }
    checked_read(ctx, who, checked).await.map(SessionRead::Checked)
}
