//! Every SQL statement percore runs, and the per-request handle that runs them and counts
//! them against the query budget: at most 2 statements per request, at most 1 a read.
//!
//! Statements are prepared once per connection (`db.rs`), so a request never pays for
//! parsing or planning, and none is ever built from strings at run time: every value is a
//! bound parameter.
//!
//! Authentication rides in the statement. The auth middleware (`api::auth`) checks the
//! bearer token's shape and hashes it; each authenticated statement joins `sessions` on
//! that hash with the condition below, so validating the session and doing the work cost
//! one statement. Once a shard's cache knows a session (learned from such a statement, and
//! evicted everywhere by logout before its 204), reads use the `…ById` variants instead;
//! writes always check the session in SQL, on the primary. Some reads may run on a read
//! replica (`query_replica`, `query_session_replica`; the rules are in `replicas.rs`).
//!
//! Runs on a shard: never blocks.

use crate::cache::{FillFreshness, Key};
use crate::db::Unavailable;
use crate::engine::shard::Shard;
use crate::http::ApiError;
use crate::metrics::ShardMetrics;
use crate::replicas::OnPrimary;
use percore_pg::Rows;
use percore_pg::types::ToSql;
use std::cell::Cell;
use std::time::Instant;

/// The live-session condition on `sessions s`, for the token hash in `$1`.
macro_rules! live_session {
    () => {
        "s.token_hash = $1 AND s.revoked_at IS NULL AND s.expires_at > now()"
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Read,
    Write,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stmt {
    /// Readiness probe.
    Ping,
    /// $1 email, $2 password hash, $3 name, then the welcome e-mail job: $4 queue, $5 params
    /// JSON text, $6 max attempts. Creates the user with empty profile and prefs and the job,
    /// in one transaction; no row when the email is taken.
    Register,
    /// $1 email → id, password hash.
    LoginLookup,
    /// $1 token hash, $2 user id, $3 lifetime in seconds → expires_at.
    SessionInsert,
    /// $1 token hash. Revokes the session; no row affected when it was not live.
    Logout,
    /// $1 token hash → user, profile and prefs in one row, then the session's expiry.
    Me,
    /// $1 user id → the same row as `Me`, for a caller whose session the cache knows.
    MeById,
    /// $1 token hash; per field a "present" flag and a value: $2/$3 display_name, $4/$5 bio,
    /// $6/$7 avatar_url → the profile, then the user id.
    ProfileUpdate,
    /// $1 token hash, $2 locale, $3 timezone, $4 theme, $5 email_opt_in → the prefs, then
    /// the user id.
    PrefsUpdate,
    /// $1 token hash, $2 user id → one row (NULL id: no such user), then the session's user
    /// and expiry; no row: bad session.
    UserPublic,
    /// $1 user id → the public row, if any.
    UserPublicById,
    /// $1 token hash, $2 user ids → public rows, any order, each with the session's user and
    /// expiry; one row with a NULL id when none exist.
    UsersPublic,
    /// $1 user ids → the public rows that exist, any order.
    UsersPublicByIds,
    /// $1 token hash, $2 kind, $3 payload JSON text, then for the webhook deliveries it fans
    /// out to the caller's matching subscriptions (same transaction): $4 queue, $5 max
    /// attempts → id, created_at, user id, deliveries enqueued.
    EventInsert,
    /// $1 token hash, $2/$3 cursor (created_at, id), $4 limit → the page, in index order
    /// (newest first) as the one-row outer side of the nested loop yields it; the handler
    /// sorts anyway, as SQL promises no order without ORDER BY, and an ORDER BY here would
    /// add a Sort node over the join. Each row ends with the session's user and expiry; the
    /// event columns are NULL in the one row of an empty page.
    EventsPage,
    /// $1 world id → id, randomnumber (TechEmpower; bench routes only).
    WorldById,
    /// Every fortune: id, message (TechEmpower; bench routes only).
    FortunesAll,
    /// $1 world ids (sorted, distinct), $2 their new random numbers (TechEmpower updates).
    WorldUpdate,
    /// $1 user id, $2 limit → the user's newest events, for a caller whose session the
    /// cache knows.
    EventsNewestById,
    /// $1 token hash, $2 kind, $3 queue, $4 params JSON text, $5 max attempts, $6 idempotency
    /// key or NULL, $7 request hash or NULL → the session's user, then the new job's id and
    /// status, or (on a key already used) the existing job's id, status and request hash.
    /// No row: bad session.
    JobInsert,
    /// $1 user id, $2 idempotency key → id, status, request hash: the job a concurrent
    /// request with the same key committed (invisible to `JobInsert`'s snapshot).
    JobByKey,
    /// $1 token hash, $2 job id → the session's user, then the job's columns (NULL when it
    /// is not the caller's or does not exist).
    JobGet,
    /// $1 token hash, $2 status or NULL, $3 limit → the session's user, then per row the
    /// job's columns (NULL in the one row of an empty list), newest first by index.
    JobsList,
    /// $1 token hash, $2 url, $3 event kinds, $4 secret, $5 most subscriptions per user →
    /// the session's user, then the new id and created_at (NULL: over the limit).
    WebhookInsert,
    /// $1 token hash → the session's user, then each subscription's id, url, events,
    /// created_at (NULL id when there are none).
    WebhooksList,
    /// $1 token hash, $2 webhook id → the session's user, then the deleted id (NULL: none).
    WebhookDelete,
    /// $1 token hash, $2 webhook id, $3 limit → the session's user, the webhook id (NULL:
    /// not the caller's), then each attempt newest first (NULL columns when none).
    WebhookDeliveries,
    /// $1 token hash → the session's user; no row: not a live session. Run only to decide
    /// between 401 and a handler's input error (`api::handle`).
    SessionLive,
    /// The primary's WAL flush position: with `synchronous_commit` on (the default; percore
    /// never turns it off), every commit that has returned ends at or before it, and no
    /// standby has more (`replicas.rs`). Not the insert position: after a record that
    /// fills its page exactly, that one points past the next page's header, where no
    /// replay position ever lands, and an idle primary would leave every replica behind.
    WalFlushLsn,
    /// A standby's replay position (NULL on a server that is not one).
    WalReplayLsn,
}

impl Stmt {
    pub const ALL: [Stmt; 30] = [
        Stmt::Ping,
        Stmt::Register,
        Stmt::LoginLookup,
        Stmt::SessionInsert,
        Stmt::Logout,
        Stmt::Me,
        Stmt::MeById,
        Stmt::ProfileUpdate,
        Stmt::PrefsUpdate,
        Stmt::UserPublic,
        Stmt::UserPublicById,
        Stmt::UsersPublic,
        Stmt::UsersPublicByIds,
        Stmt::EventInsert,
        Stmt::EventsPage,
        Stmt::WorldById,
        Stmt::FortunesAll,
        Stmt::WorldUpdate,
        Stmt::EventsNewestById,
        Stmt::JobInsert,
        Stmt::JobByKey,
        Stmt::JobGet,
        Stmt::JobsList,
        Stmt::WebhookInsert,
        Stmt::WebhooksList,
        Stmt::WebhookDelete,
        Stmt::WebhookDeliveries,
        Stmt::SessionLive,
        Stmt::WalFlushLsn,
        Stmt::WalReplayLsn,
    ];

    pub fn kind(self) -> Kind {
        match self {
            Stmt::Ping
            | Stmt::LoginLookup
            | Stmt::Me
            | Stmt::MeById
            | Stmt::UserPublic
            | Stmt::UserPublicById
            | Stmt::UsersPublic
            | Stmt::UsersPublicByIds
            | Stmt::EventsPage
            | Stmt::WorldById
            | Stmt::FortunesAll
            | Stmt::EventsNewestById
            | Stmt::JobByKey
            | Stmt::JobGet
            | Stmt::JobsList
            | Stmt::WebhooksList
            | Stmt::WebhookDeliveries
            | Stmt::SessionLive
            | Stmt::WalFlushLsn
            | Stmt::WalReplayLsn => Kind::Read,
            Stmt::Register
            | Stmt::SessionInsert
            | Stmt::Logout
            | Stmt::ProfileUpdate
            | Stmt::PrefsUpdate
            | Stmt::EventInsert
            | Stmt::WorldUpdate
            | Stmt::JobInsert
            | Stmt::WebhookInsert
            | Stmt::WebhookDelete => Kind::Write,
        }
    }

    /// Reads that check no session and whose rows decide no write: the only statements a
    /// replica may run (`Sql::query_replica`). A session check on a lagging replica would
    /// accept a token revoked a moment ago.
    pub fn may_run_on_replica(self) -> bool {
        matches!(
            self,
            Stmt::MeById
                | Stmt::UserPublicById
                | Stmt::UsersPublicByIds
                | Stmt::EventsNewestById
                | Stmt::WorldById
                | Stmt::FortunesAll
        )
    }

    /// Reads that check the session in SQL and answer no row when it is not live, and
    /// whose rows decide no write: a replica may run them under `Sql::query_session_replica`'s
    /// rules. (The jobs and webhooks reads stay on the primary: a job answered 202 on one
    /// instance must be found on the next request to any other.)
    pub fn checks_session_on_replica(self) -> bool {
        matches!(self, Stmt::Me | Stmt::UserPublic | Stmt::UsersPublic | Stmt::EventsPage)
    }

    pub fn sql(self) -> &'static str {
        match self {
            Stmt::Ping => "SELECT 1::int4",
            Stmt::Register => {
                "WITH u AS (
                    INSERT INTO users (email, password_hash, name) VALUES ($1, $2, $3)
                    ON CONFLICT (email) DO NOTHING
                    RETURNING id, email, name, created_at, updated_at),
                 p AS (INSERT INTO profiles (user_id) SELECT id FROM u),
                 q AS (INSERT INTO prefs (user_id) SELECT id FROM u),
                 j AS (INSERT INTO jobs (user_id, kind, queue, params, max_attempts)
                       SELECT id, 'email', $4, $5::text::jsonb, $6 FROM u)
                 SELECT id, email::text, name, created_at, updated_at FROM u"
            }
            Stmt::LoginLookup => "SELECT id, password_hash FROM users WHERE email = $1::citext",
            Stmt::SessionInsert => {
                "INSERT INTO sessions (token_hash, user_id, expires_at)
                 VALUES ($1, $2, now() + make_interval(secs => $3::float8))
                 RETURNING expires_at"
            }
            Stmt::Logout => concat!("UPDATE sessions s SET revoked_at = now() WHERE ", live_session!()),
            Stmt::Me => concat!(
                "SELECT u.id, u.email::text, u.name, u.created_at, u.updated_at,
                        p.display_name, p.bio, p.avatar_url, p.updated_at,
                        q.locale, q.timezone, q.theme, q.email_opt_in, q.updated_at, s.expires_at
                 FROM sessions s
                 JOIN users u ON u.id = s.user_id
                 JOIN profiles p ON p.user_id = s.user_id
                 JOIN prefs q ON q.user_id = s.user_id
                 WHERE ",
                live_session!()
            ),
            Stmt::MeById => {
                "SELECT u.id, u.email::text, u.name, u.created_at, u.updated_at,
                        p.display_name, p.bio, p.avatar_url, p.updated_at,
                        q.locale, q.timezone, q.theme, q.email_opt_in, q.updated_at
                 FROM users u
                 JOIN profiles p ON p.user_id = u.id
                 JOIN prefs q ON q.user_id = u.id
                 WHERE u.id = $1"
            }
            Stmt::ProfileUpdate => concat!(
                "UPDATE profiles p SET
                    display_name = CASE WHEN $2::bool THEN $3::text ELSE p.display_name END,
                    bio = CASE WHEN $4::bool THEN $5::text ELSE p.bio END,
                    avatar_url = CASE WHEN $6::bool THEN $7::text ELSE p.avatar_url END,
                    updated_at = now()
                 FROM sessions s
                 WHERE p.user_id = s.user_id AND ",
                live_session!(),
                " RETURNING p.display_name, p.bio, p.avatar_url, p.updated_at, p.user_id"
            ),
            Stmt::PrefsUpdate => concat!(
                "UPDATE prefs q SET locale = $2, timezone = $3, theme = $4, email_opt_in = $5, updated_at = now()
                 FROM sessions s
                 WHERE q.user_id = s.user_id AND ",
                live_session!(),
                " RETURNING q.locale, q.timezone, q.theme, q.email_opt_in, q.updated_at, q.user_id"
            ),
            Stmt::UserPublic => concat!(
                "SELECT u.id, u.name, p.display_name, p.avatar_url, s.user_id, s.expires_at
                 FROM sessions s
                 LEFT JOIN users u ON u.id = $2::int8
                 LEFT JOIN profiles p ON p.user_id = u.id
                 WHERE ",
                live_session!()
            ),
            Stmt::UserPublicById => {
                "SELECT u.id, u.name, p.display_name, p.avatar_url
                 FROM users u LEFT JOIN profiles p ON p.user_id = u.id
                 WHERE u.id = $1"
            }
            Stmt::UsersPublicByIds => {
                "SELECT u.id, u.name, p.display_name, p.avatar_url
                 FROM users u LEFT JOIN profiles p ON p.user_id = u.id
                 WHERE u.id = ANY($1::int8[])"
            }
            Stmt::UsersPublic => concat!(
                "SELECT u.id, u.name, p.display_name, p.avatar_url, s.user_id, s.expires_at
                 FROM sessions s
                 LEFT JOIN (users u LEFT JOIN profiles p ON p.user_id = u.id) ON u.id = ANY($2::int8[])
                 WHERE ",
                live_session!()
            ),
            Stmt::EventInsert => concat!(
                "WITH e AS (
                    INSERT INTO events (user_id, kind, payload)
                    SELECT s.user_id, $2, $3::text::jsonb FROM sessions s WHERE ",
                live_session!(),
                " RETURNING id, created_at, user_id, kind, payload),
                 d AS (
                    INSERT INTO jobs (user_id, kind, queue, params, max_attempts)
                    SELECT e.user_id, 'webhook', $4, jsonb_build_object('webhook_id', w.id, 'event',
                           jsonb_build_object('id', e.id, 'kind', e.kind, 'payload', e.payload,
                                              'created_at', e.created_at)), $5
                    FROM e JOIN webhooks w ON w.user_id = e.user_id
                     AND (e.kind = ANY (w.events) OR '*' = ANY (w.events))
                    RETURNING 1)
                 SELECT e.id, e.created_at, e.user_id, (SELECT count(*) FROM d) FROM e"
            ),
            Stmt::JobInsert => concat!(
                "WITH who AS (SELECT s.user_id FROM sessions s WHERE ",
                live_session!(),
                "), ins AS (
                    INSERT INTO jobs (user_id, kind, queue, params, max_attempts, idempotency_key, request_hash)
                    SELECT user_id, $2, $3, $4::text::jsonb, $5, $6, $7 FROM who
                    ON CONFLICT (user_id, idempotency_key) DO NOTHING
                    RETURNING id, status)
                 SELECT who.user_id, ins.id, ins.status, old.id, old.status, old.request_hash
                 FROM who LEFT JOIN ins ON true
                 LEFT JOIN jobs old ON ins.id IS NULL AND old.user_id = who.user_id AND old.idempotency_key = $6"
            ),
            Stmt::JobByKey => "SELECT id, status, request_hash FROM jobs WHERE user_id = $1 AND idempotency_key = $2",
            Stmt::JobGet => concat!(
                "SELECT s.user_id, j.id, j.kind, j.queue, j.status, j.attempts, j.max_attempts, j.error,
                        j.result::text, j.run_after, j.created_at, j.updated_at
                 FROM sessions s LEFT JOIN jobs j ON j.id = $2 AND j.user_id = s.user_id
                 WHERE ",
                live_session!()
            ),
            Stmt::JobsList => concat!(
                "SELECT s.user_id, j.id, j.kind, j.queue, j.status, j.attempts, j.max_attempts, j.error,
                        j.result::text, j.run_after, j.created_at, j.updated_at
                 FROM sessions s
                 LEFT JOIN LATERAL (
                     SELECT * FROM jobs WHERE user_id = s.user_id AND ($2::text IS NULL OR status = $2::text)
                     ORDER BY created_at DESC, id DESC LIMIT $3::int8) j ON true
                 WHERE ",
                live_session!()
            ),
            Stmt::WebhookInsert => concat!(
                "WITH who AS (SELECT s.user_id FROM sessions s WHERE ",
                live_session!(),
                "), ins AS (
                    INSERT INTO webhooks (user_id, url, events, secret)
                    SELECT user_id, $2, $3, $4 FROM who
                    WHERE (SELECT count(*) FROM webhooks w WHERE w.user_id = who.user_id) < $5::int8
                    RETURNING id, created_at)
                 SELECT who.user_id, ins.id, ins.created_at FROM who LEFT JOIN ins ON true"
            ),
            Stmt::WebhooksList => concat!(
                "SELECT s.user_id, w.id, w.url, w.events, w.created_at
                 FROM sessions s LEFT JOIN webhooks w ON w.user_id = s.user_id
                 WHERE ",
                live_session!()
            ),
            Stmt::WebhookDelete => concat!(
                "WITH who AS (SELECT s.user_id FROM sessions s WHERE ",
                live_session!(),
                "), del AS (
                    DELETE FROM webhooks w USING who WHERE w.id = $2 AND w.user_id = who.user_id
                    RETURNING w.id)
                 SELECT who.user_id, del.id FROM who LEFT JOIN del ON true"
            ),
            Stmt::WebhookDeliveries => concat!(
                "SELECT s.user_id, w.id, d.id, d.job_id, d.attempt, d.status_code, d.error, d.duration_ms,
                        d.attempted_at
                 FROM sessions s
                 LEFT JOIN webhooks w ON w.id = $2 AND w.user_id = s.user_id
                 LEFT JOIN LATERAL (
                     SELECT * FROM webhook_deliveries WHERE webhook_id = w.id
                     ORDER BY id DESC LIMIT $3::int8) d ON true
                 WHERE ",
                live_session!()
            ),
            Stmt::SessionLive => concat!("SELECT s.user_id FROM sessions s WHERE ", live_session!()),
            Stmt::WalFlushLsn => "SELECT pg_current_wal_flush_lsn()",
            Stmt::WalReplayLsn => "SELECT pg_last_wal_replay_lsn()",
            Stmt::WorldById => "SELECT id, randomnumber FROM world WHERE id = $1",
            Stmt::FortunesAll => "SELECT id, message FROM fortune",
            Stmt::WorldUpdate => {
                "UPDATE world SET randomnumber = v.number
                 FROM unnest($1::int4[], $2::int4[]) AS v(id, number)
                 WHERE world.id = v.id"
            }
            Stmt::EventsNewestById => {
                "SELECT id, kind, payload::text, created_at FROM events
                 WHERE user_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2"
            }
            Stmt::EventsPage => concat!(
                "SELECT e.id, e.kind, e.payload::text, e.created_at, s.user_id, s.expires_at
                 FROM sessions s
                 LEFT JOIN LATERAL (
                     SELECT id, kind, payload, created_at FROM events
                     WHERE user_id = s.user_id AND (created_at, id) < ($2::timestamptz, $3::int8)
                     ORDER BY created_at DESC, id DESC
                     LIMIT $4::int8) e ON true
                 WHERE ",
                live_session!()
            ),
        }
    }
}

/// The most statements one request may run, and the most of them that may read.
pub const STATEMENTS_PER_REQUEST_MAX: u32 = 2;
pub const READS_PER_REQUEST_MAX: u32 = 1;

/// One request's access to the shard's database: runs prepared statements and counts them.
pub struct Sql<'a> {
    shard: &'a Shard,
    reads: Cell<u32>,
    writes: Cell<u32>,
    /// The TechEmpower routes run one statement per row by the benchmark's rules.
    budgeted: bool,
    /// Who is asking (`replicas::client_id`): its writes are recorded so that its reads
    /// on any shard see them.
    client: u64,
}

impl<'a> Sql<'a> {
    pub fn new(shard: &'a Shard, client: u64) -> Sql<'a> {
        Sql {
            shard,
            reads: Cell::new(0),
            writes: Cell::new(0),
            budgeted: true,
            client,
        }
    }

    /// For the benchmark routes, which the query budget does not cover (still counted).
    pub fn unbudgeted(shard: &'a Shard, client: u64) -> Sql<'a> {
        Sql {
            budgeted: false,
            ..Sql::new(shard, client)
        }
    }

    pub fn reads(&self) -> u32 {
        self.reads.get()
    }

    pub fn writes(&self) -> u32 {
        self.writes.get()
    }

    /// Runs `stmt` on the primary and returns its rows.
    pub async fn query(&self, stmt: Stmt, params: &[&(dyn ToSql + Sync)]) -> Result<Rows, ApiError> {
        self.count(stmt);
        let conn = self.lease(&self.shard.db, stmt.kind()).await?;
        let rows = conn.client.query(conn.statement(stmt), params).await;
        self.wrote(stmt);
        rows.map_err(|e| database_error(self.shard, stmt, e))
    }

    /// Runs `stmt` on the primary and returns the rows it affected.
    pub async fn execute(&self, stmt: Stmt, params: &[&(dyn ToSql + Sync)]) -> Result<u64, ApiError> {
        self.count(stmt);
        let conn = self.lease(&self.shard.db, stmt.kind()).await?;
        let affected = conn.client.execute(conn.statement(stmt), params).await;
        self.wrote(stmt);
        affected.map_err(|e| database_error(self.shard, stmt, e))
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
    ) -> Result<Rows, ApiError> {
        debug_assert!(stmt.may_run_on_replica(), "{stmt:?} may not leave the primary");
        if self.shard.replicas.is_empty() {
            return self.query(stmt, params).await;
        }
        let freshness = self.shard.cache.fill_freshness(fills);
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
    ) -> Result<Rows, ApiError> {
        debug_assert!(stmt.checks_session_on_replica(), "{stmt:?} may not leave the primary");
        if self.shard.replicas.is_empty() {
            return self.query(stmt, params).await;
        }
        let mut keys = fills.to_vec();
        keys.push(Key::Session(*token_hash));
        let freshness = self.shard.cache.heard_since(&keys);
        self.read_on_replica(freshness, true, stmt, params, shown).await
    }

    async fn read_on_replica(
        &self,
        freshness: FillFreshness,
        checks_session: bool,
        stmt: Stmt,
        params: &[&(dyn ToSql + Sync)],
        shown: impl Fn(&Rows) -> Vec<Key>,
    ) -> Result<Rows, ApiError> {
        let replicas = &self.shard.replicas;
        debug_assert!(!replicas.is_empty());
        let now = Instant::now();
        let picked = match freshness {
            FillFreshness::Unknowable => Err(OnPrimary::CacheUnsubscribed),
            FillFreshness::Since(keys_since) => {
                let last_write = self.shard.shared.recent_writers.last(self.client);
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
        let metrics = self.shard.metrics;
        let why = match picked.pool.conn(Kind::Read, self.admitted(), metrics).await {
            Err(_) => OnPrimary::ReplicaFailed,
            Ok(conn) => match conn.client.query(conn.statement(stmt), params).await {
                Ok(rows) if checks_session && rows.is_empty() => OnPrimary::NoSessionOnReplica,
                Ok(rows) => {
                    let shown = shown(&rows);
                    let fresh = shown.is_empty()
                        || matches!(self.shard.cache.heard_since(&shown),
                            FillFreshness::Since(changed) if changed.is_none_or(|at| at <= picked.through));
                    if fresh {
                        ShardMetrics::add(&metrics.replicas[picked.index].reads, 1);
                        return Ok(rows);
                    }
                    OnPrimary::ChangedAfterReplay
                }
                // A timeout or a bad value would fail the same way on the primary.
                Err(e) if is_final(&e) => return Err(database_error(self.shard, stmt, e)),
                // Reads are safe to repeat: down, or cancelled by a recovery conflict.
                Err(e) => {
                    log::debug!("shard {}: {stmt:?} on replica {}: {e}", self.shard.id, picked.index);
                    OnPrimary::ReplicaFailed
                }
            },
        };
        // Counted once above: the budget is about what the request asked for.
        self.on_primary(why);
        let conn = self.lease(&self.shard.db, Kind::Read).await?;
        (conn.client.query(conn.statement(stmt), params).await).map_err(|e| database_error(self.shard, stmt, e))
    }

    fn on_primary(&self, why: OnPrimary) {
        ShardMetrics::add(&self.shard.metrics.replica_eligible_on_primary[why as usize], 1);
    }

    /// A connection of `pool` for a statement of `kind`, already counted.
    async fn lease(&self, pool: &crate::db::Pool, kind: Kind) -> Result<crate::db::Lease, ApiError> {
        pool.conn(kind, self.admitted(), self.shard.metrics)
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
        if stmt.kind() == Kind::Write && !self.shard.replicas.is_empty() {
            self.shard.shared.recent_writers.note(self.client, Instant::now());
        }
    }

    /// The request's writes so far also count as `client`'s: a client that changes identity
    /// mid-way (a login turns an address into a token) keeps seeing what it wrote.
    pub fn wrote_as(&self, client: u64) {
        if self.writes.get() > 0 && !self.shard.replicas.is_empty() {
            self.shard.shared.recent_writers.note(client, Instant::now());
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

fn unavailable(why: Unavailable) -> ApiError {
    match why {
        Unavailable::Down => {
            ApiError::unavailable("database_unavailable", "the database is not reachable; retry later", 1)
        }
        Unavailable::Busy => ApiError::unavailable("database_busy", "the database is at capacity; retry later", 1),
    }
}

fn database_error(shard: &Shard, stmt: Stmt, error: percore_pg::Error) -> ApiError {
    let timeout = || {
        ApiError::unavailable(
            "database_timeout",
            "the database did not answer in time; retry later",
            1,
        )
    };
    match &error {
        // 57014: query_canceled, which is how statement_timeout ends a statement.
        percore_pg::Error::Db(db) if db.code == percore_pg::QUERY_CANCELED => timeout(),
        // Class 22, data exception: a value Postgres cannot store (a NUL in text, say) that
        // validation should have caught. The client's input, not our failure.
        percore_pg::Error::Db(db) if db.code.starts_with("22") => {
            log::warn!("shard {}: {stmt:?}: unvalidated bad value: {}", shard.id, db.message);
            ApiError::new(422, "invalid_value", "a value cannot be stored")
        }
        // Silent past the client-side deadline: the connection is being replaced.
        percore_pg::Error::Timeout => {
            log::warn!("shard {}: {stmt:?}: {error}", shard.id);
            timeout()
        }
        percore_pg::Error::Closed(_) => {
            log::warn!("shard {}: {stmt:?}: {error}", shard.id);
            unavailable(Unavailable::Down)
        }
        _ => {
            log::error!("shard {}: {stmt:?} failed: {error}", shard.id);
            ApiError::internal()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_run_only_reads_that_check_no_session() {
        for stmt in Stmt::ALL.iter().filter(|stmt| stmt.may_run_on_replica()) {
            assert_eq!(stmt.kind(), Kind::Read, "{stmt:?}");
            assert!(!stmt.sql().contains("sessions"), "{stmt:?} checks a session");
        }
    }

    #[test]
    fn session_checks_a_replica_may_run_are_reads_that_join_sessions() {
        for stmt in Stmt::ALL.iter().filter(|stmt| stmt.checks_session_on_replica()) {
            assert_eq!(stmt.kind(), Kind::Read, "{stmt:?}");
            assert!(stmt.sql().contains("FROM sessions s"), "{stmt:?}");
            assert!(!stmt.may_run_on_replica(), "{stmt:?} is in both lists");
        }
    }

    #[test]
    fn all_lists_every_statement_in_declaration_order() {
        // Prepared statements are found by `stmt as usize`: the order is load-bearing.
        for (index, stmt) in Stmt::ALL.iter().enumerate() {
            assert_eq!(*stmt as usize, index, "{stmt:?}");
        }
    }
}
