//! The executor: the per-request handle that runs catalogue statements and counts them
//! against the query budget: at most 2 statements per request, at most 1 a read. Some
//! reads may run on a read replica (`query_replica`, `query_session_replica`; the rules
//! are in `replicas.rs`).
//!
//! Runs on a shard: never blocks.

use super::Store;
use super::StoreError;
use super::pg::Unavailable;
use crate::metrics::OnPrimary;
use crate::metrics::ShardMetrics;
use crate::store::cache::{FillFreshness, Key};
use percore_pg::Rows;
use percore_pg::types::ToSql;
use std::cell::Cell;
use std::time::Instant;

pub use super::catalogue::{Kind, Stmt};

/// The most statements one request may run, and the most of them that may read.
pub const STATEMENTS_PER_REQUEST_MAX: u32 = 2;
pub const READS_PER_REQUEST_MAX: u32 = 1;

/// One request's access to the shard's database: runs prepared statements and counts them.
pub struct Sql<'a> {
    store: &'a Store,
    reads: Cell<u32>,
    writes: Cell<u32>,
    /// The TechEmpower routes run one statement per row by the benchmark's rules.
    budgeted: bool,
    /// Who is asking (`replicas::client_id`): its writes are recorded so that its reads
    /// on any shard see them.
    client: u64,
}

impl<'a> Sql<'a> {
    pub fn new(store: &'a Store, client: u64) -> Sql<'a> {
        Sql {
            store,
            reads: Cell::new(0),
            writes: Cell::new(0),
            budgeted: true,
            client,
        }
    }

    /// For the benchmark routes, which the query budget does not cover (still counted).
    pub fn unbudgeted(store: &'a Store, client: u64) -> Sql<'a> {
        Sql {
            budgeted: false,
            ..Sql::new(store, client)
        }
    }

    pub fn reads(&self) -> u32 {
        self.reads.get()
    }

    pub fn writes(&self) -> u32 {
        self.writes.get()
    }

    /// Runs `stmt` on the primary and returns its rows.
    pub async fn query(&self, stmt: Stmt, params: &[&(dyn ToSql + Sync)]) -> Result<Rows, StoreError> {
        self.count(stmt);
        let conn = self.lease(&self.store.db, stmt.kind()).await?;
        let rows = conn.client.query(conn.statement(stmt), params).await;
        self.wrote(stmt);
        rows.map_err(|e| database_error(self.store.shard_id, stmt, e))
    }

    /// Runs `stmt` on the primary and returns the rows it affected.
    pub async fn execute(&self, stmt: Stmt, params: &[&(dyn ToSql + Sync)]) -> Result<u64, StoreError> {
        self.count(stmt);
        let conn = self.lease(&self.store.db, stmt.kind()).await?;
        let affected = conn.client.execute(conn.statement(stmt), params).await;
        self.wrote(stmt);
        affected.map_err(|e| database_error(self.store.shard_id, stmt, e))
    }

    /// Runs `stmt`, a read that checks no session, on a replica that has replayed past what
    /// it must see: the client's last write (for `sticky_primary_ms` at most) and the last
    /// invalidation of `fills`, the cache keys its rows will be stored under. Else, or when
    /// the replica fails mid-read, on the primary. See `replicas.rs`.
    pub async fn query_replica(
        &self,
        fills: &[Key],
        stmt: Stmt,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Rows, StoreError> {
        debug_assert!(stmt.may_run_on_replica(), "{stmt:?} may not leave the primary");
        if self.store.replicas.is_empty() {
            return self.query(stmt, params).await;
        }
        let freshness = self.store.cache.fill_freshness(fills);
        self.read_on_replica(freshness, false, stmt, params, |_| Vec::new())
            .await
    }

    /// Runs `stmt`, a read that checks the session of `token_hash` in SQL, on a replica
    /// when that is as safe as the primary:
    /// - the replica has replayed past the session's last invalidation (a logout is heard
    ///   by every shard before it answers), the client's last write, and the last
    ///   invalidation of `fills`, the keys the caller knows the rows will show;
    /// - no rows (no live session there) are not trusted: the session may be newer than the
    ///   replica, so the primary decides;
    /// - `shown` names the keys the rows turned out to show (the session's user's, say); if
    ///   any was invalidated after what the replica held, the read runs again on the primary.
    ///
    /// While the shard cannot hear invalidations, the primary runs it.
    pub async fn query_session_replica(
        &self,
        token_hash: &[u8; 32],
        fills: &[Key],
        stmt: Stmt,
        params: &[&(dyn ToSql + Sync)],
        shown: impl Fn(&Rows) -> Vec<Key>,
    ) -> Result<Rows, StoreError> {
        debug_assert!(stmt.checks_session_on_replica(), "{stmt:?} may not leave the primary");
        if self.store.replicas.is_empty() {
            return self.query(stmt, params).await;
        }
        let mut keys = fills.to_vec();
        keys.push(Key::Session(*token_hash));
        let freshness = self.store.cache.heard_since(&keys);
        self.read_on_replica(freshness, true, stmt, params, shown).await
    }

    async fn read_on_replica(
        &self,
        freshness: FillFreshness,
        checks_session: bool,
        stmt: Stmt,
        params: &[&(dyn ToSql + Sync)],
        shown: impl Fn(&Rows) -> Vec<Key>,
    ) -> Result<Rows, StoreError> {
        let replicas = &self.store.replicas;
        debug_assert!(!replicas.is_empty());
        let now = Instant::now();
        let picked = match freshness {
            FillFreshness::Unknowable => Err(OnPrimary::CacheUnsubscribed),
            FillFreshness::Since(keys_since) => {
                let last_write = self.store.recent_writers.last(self.client);
                let since = replicas.sticky_since(last_write, now).max(keys_since);
                replicas.pick(since, now)
            }
        };
        let picked = match picked {
            Ok(picked) => picked,
            Err(why) => {
                self.on_primary(why);
                return self.query(stmt, params).await;
            }
        };
        self.count(stmt);
        let metrics = self.store.metrics;
        let why = match picked.pool.conn(Kind::Read, self.admitted(), metrics).await {
            Err(_) => OnPrimary::ReplicaFailed,
            Ok(conn) => match conn.client.query(conn.statement(stmt), params).await {
                Ok(rows) if checks_session && rows.is_empty() => OnPrimary::NoSessionOnReplica,
                Ok(rows) => {
                    let shown = shown(&rows);
                    let fresh = shown.is_empty()
                        || matches!(self.store.cache.heard_since(&shown),
                            FillFreshness::Since(changed) if changed.is_none_or(|at| at <= picked.through));
                    if fresh {
                        ShardMetrics::add(&metrics.replicas[picked.index].reads, 1);
                        return Ok(rows);
                    }
                    OnPrimary::ChangedAfterReplay
                }
                // A timeout or a bad value would fail the same way on the primary.
                Err(e) if is_final(&e) => return Err(database_error(self.store.shard_id, stmt, e)),
                // Reads are safe to repeat: down, or cancelled by a recovery conflict.
                Err(e) => {
                    log::debug!(
                        "shard {}: {stmt:?} on replica {}: {e}",
                        self.store.shard_id,
                        picked.index
                    );
                    OnPrimary::ReplicaFailed
                }
            },
        };
        // Counted once above: the budget is about what the request asked for.
        self.on_primary(why);
        let conn = self.lease(&self.store.db, Kind::Read).await?;
        (conn.client.query(conn.statement(stmt), params).await)
            .map_err(|e| database_error(self.store.shard_id, stmt, e))
    }

    fn on_primary(&self, why: OnPrimary) {
        ShardMetrics::add(&self.store.metrics.replica_eligible_on_primary[why as usize], 1);
    }

    /// A connection of `pool` for a statement of `kind`, already counted.
    async fn lease(&self, pool: &crate::store::pg::Pool, kind: Kind) -> Result<crate::store::pg::Lease, StoreError> {
        pool.conn(kind, self.admitted(), self.store.metrics)
            .await
            .map_err(unavailable)
    }

    /// The request's first statement decides its admission; later ones (or concurrent
    /// siblings, which reach here before it finishes) are already in.
    fn admitted(&self) -> bool {
        self.reads.get() + self.writes.get() > 1
    }

    /// After a write statement, done or failed (a lost answer may still have committed):
    /// the client's next reads must see it.
    fn wrote(&self, stmt: Stmt) {
        if stmt.kind() == Kind::Write && !self.store.replicas.is_empty() {
            self.store.recent_writers.note(self.client, Instant::now());
        }
    }

    /// The request's writes so far also count as `client`'s: a client that changes identity
    /// mid-way (a login turns an address into a token) keeps seeing what it wrote.
    pub fn wrote_as(&self, client: u64) {
        if self.writes.get() > 0 && !self.store.replicas.is_empty() {
            self.store.recent_writers.note(client, Instant::now());
        }
    }

    fn count(&self, stmt: Stmt) {
        let counter = match stmt.kind() {
            Kind::Read => &self.reads,
            Kind::Write => &self.writes,
        };
        counter.set(counter.get() + 1);
        // The budget is a design rule, not a runtime condition: break it and tests fail.
        debug_assert!(
            !self.budgeted
                || (self.reads.get() <= READS_PER_REQUEST_MAX
                    && self.reads.get() + self.writes.get() <= STATEMENTS_PER_REQUEST_MAX),
            "query budget exceeded at {stmt:?}"
        );
    }
}

/// An error a replica read would meet on the primary too: not worth a second try.
fn is_final(error: &percore_pg::Error) -> bool {
    matches!(error, percore_pg::Error::Timeout)
        || error
            .code()
            .is_some_and(|code| code == percore_pg::QUERY_CANCELED || code.starts_with("22"))
}

fn unavailable(why: Unavailable) -> StoreError {
    match why {
        Unavailable::Down => StoreError::Down,
        Unavailable::Busy => StoreError::Busy,
    }
}

fn database_error(shard_id: usize, stmt: Stmt, error: percore_pg::Error) -> StoreError {
    match &error {
        // 57014: query_canceled, which is how statement_timeout ends a statement.
        percore_pg::Error::Db(db) if db.code == percore_pg::QUERY_CANCELED => StoreError::Timeout,
        percore_pg::Error::Db(db) if db.code.starts_with("22") => {
            log::warn!("shard {shard_id}: {stmt:?}: unvalidated bad value: {}", db.message);
            StoreError::InvalidValue
        }
        // Silent past the client-side deadline: the connection is being replaced.
        percore_pg::Error::Timeout => {
            log::warn!("shard {shard_id}: {stmt:?}: {error}");
            StoreError::Timeout
        }
        percore_pg::Error::Closed(_) => {
            log::warn!("shard {shard_id}: {stmt:?}: {error}");
            StoreError::Down
        }
        _ => {
            log::error!("shard {shard_id}: {stmt:?} failed: {error}");
            StoreError::Failed
        }
    }
}
