//! The statement catalogue: every SQL statement percore runs, one entry each, with its
//! kind (read or write) and where it may run. Data only: this module imports nothing.
//!
//! None is ever built from strings at run time: every value is a bound parameter, and
//! each is prepared once per connection (`pg`), so a request never pays for parsing or
//! planning.
//!
//! Authentication rides in the statement. The auth middleware (`api::auth`) checks the
//! bearer token's shape and hashes it; each authenticated statement joins `sessions` on
//! that hash with the condition below, so validating the session and doing the work cost
//! one statement. Once a shard's cache knows a session (learned from such a statement, and
//! evicted everywhere by logout before its 204), reads use the `…ById` variants instead;
//! writes always check the session in SQL, on the primary.

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

/// Where a statement may run (the rules are in `replicas.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunsOn {
    Primary,
    /// A read that checks no session and whose rows decide no write: a replica that has
    /// replayed past what it must see may run it (`Sql::query_replica`). A session check on
    /// a lagging replica would accept a token revoked a moment ago.
    Replica,
    /// A read that checks the session in SQL and answers no row when it is not live, and
    /// whose rows decide no write: a replica may run it under `Sql::query_session_replica`'s
    /// rules. (The jobs and webhooks reads stay on the primary: a job answered 202 on one
    /// instance must be found on the next request to any other.)
    SessionCheckedReplica,
}

/// One statement's entry.
pub struct Entry {
    pub kind: Kind,
    pub runs_on: RunsOn,
    pub sql: &'static str,
}

/// `Name: Kind, RunsOn, "SQL";` per statement, with its doc comment: declares `Stmt`, its
/// `ALL` list (prepared in this order, found by `stmt as usize`) and its entries.
macro_rules! catalogue {
    ($($(#[doc = $doc:literal])* $name:ident: $kind:ident, $runs_on:ident, $sql:expr;)*) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Stmt {
            $($(#[doc = $doc])* $name,)*
        }

        impl Stmt {
            pub const ALL: &[Stmt] = &[$(Stmt::$name),*];
            const ENTRIES: &[Entry] = &[$(Entry { kind: Kind::$kind, runs_on: RunsOn::$runs_on, sql: $sql }),*];
        }
    };
}

impl Stmt {
    pub fn entry(self) -> &'static Entry {
        &Stmt::ENTRIES[self as usize]
    }

    pub fn kind(self) -> Kind {
        self.entry().kind
    }

    pub fn sql(self) -> &'static str {
        self.entry().sql
    }

    pub fn may_run_on_replica(self) -> bool {
        self.entry().runs_on == RunsOn::Replica
    }

    pub fn checks_session_on_replica(self) -> bool {
        self.entry().runs_on == RunsOn::SessionCheckedReplica
    }
}

catalogue! {
    /// Readiness probe.
    Ping: Read, Primary,
        "SELECT 1::int4";
    /// $1 email, $2 password hash, $3 name, then the welcome e-mail job: $4 queue, $5 params
    /// JSON text, $6 max attempts. Creates the user with empty profile and prefs and the job,
    /// in one transaction; no row when the email is taken.
    Register: Write, Primary,
        "WITH u AS (
                INSERT INTO users (email, password_hash, name) VALUES ($1, $2, $3)
                ON CONFLICT (email) DO NOTHING
                RETURNING id, email, name, created_at, updated_at),
             p AS (INSERT INTO profiles (user_id) SELECT id FROM u),
             q AS (INSERT INTO prefs (user_id) SELECT id FROM u),
             j AS (INSERT INTO jobs (user_id, kind, queue, params, max_attempts)
                   SELECT id, 'email', $4, $5::text::jsonb, $6 FROM u)
             SELECT id, email::text, name, created_at, updated_at FROM u";
    /// $1 email → id, password hash.
    LoginLookup: Read, Primary,
        "SELECT id, password_hash FROM users WHERE email = $1::citext";
    /// $1 token hash, $2 user id, $3 lifetime in seconds → expires_at.
    SessionInsert: Write, Primary,
        "INSERT INTO sessions (token_hash, user_id, expires_at)
             VALUES ($1, $2, now() + make_interval(secs => $3::float8))
             RETURNING expires_at";
    /// $1 token hash. Revokes the session; no row affected when it was not live.
    Logout: Write, Primary,
        concat!("UPDATE sessions s SET revoked_at = now() WHERE ", live_session!());
    /// $1 token hash → user, profile and prefs in one row, then the session's user and expiry.
    Me: Read, SessionCheckedReplica,
        concat!(
            "SELECT u.id, u.email::text, u.name, u.created_at, u.updated_at,
                    p.display_name, p.bio, p.avatar_url, p.updated_at,
                    q.locale, q.timezone, q.theme, q.email_opt_in, q.updated_at, s.user_id, s.expires_at
             FROM sessions s
             JOIN users u ON u.id = s.user_id
             JOIN profiles p ON p.user_id = s.user_id
             JOIN prefs q ON q.user_id = s.user_id
             WHERE ",
            live_session!()
        );
    /// $1 user id → the same row as `Me`, for a caller whose session the cache knows.
    MeById: Read, Replica,
        "SELECT u.id, u.email::text, u.name, u.created_at, u.updated_at,
                    p.display_name, p.bio, p.avatar_url, p.updated_at,
                    q.locale, q.timezone, q.theme, q.email_opt_in, q.updated_at
             FROM users u
             JOIN profiles p ON p.user_id = u.id
             JOIN prefs q ON q.user_id = u.id
             WHERE u.id = $1";
    /// $1 token hash; per field a "present" flag and a value: $2/$3 display_name, $4/$5 bio,
    /// $6/$7 avatar_url → the profile, then the user id.
    ProfileUpdate: Write, Primary,
        concat!(
            "UPDATE profiles p SET
                display_name = CASE WHEN $2::bool THEN $3::text ELSE p.display_name END,
                bio = CASE WHEN $4::bool THEN $5::text ELSE p.bio END,
                avatar_url = CASE WHEN $6::bool THEN $7::text ELSE p.avatar_url END,
                updated_at = now()
             FROM sessions s
             WHERE p.user_id = s.user_id AND ",
            live_session!(),
            " RETURNING p.display_name, p.bio, p.avatar_url, p.updated_at, p.user_id"
        );
    /// $1 token hash, $2 locale, $3 timezone, $4 theme, $5 email_opt_in → the prefs, then
    /// the user id.
    PrefsUpdate: Write, Primary,
        concat!(
            "UPDATE prefs q SET locale = $2, timezone = $3, theme = $4, email_opt_in = $5, updated_at = now()
             FROM sessions s
             WHERE q.user_id = s.user_id AND ",
            live_session!(),
            " RETURNING q.locale, q.timezone, q.theme, q.email_opt_in, q.updated_at, q.user_id"
        );
    /// $1 token hash, $2 user id → one row (NULL id: no such user), then the session's user
    /// and expiry; no row: bad session.
    UserPublic: Read, SessionCheckedReplica,
        concat!(
            "SELECT u.id, u.name, p.display_name, p.avatar_url, s.user_id, s.expires_at
             FROM sessions s
             LEFT JOIN users u ON u.id = $2::int8
             LEFT JOIN profiles p ON p.user_id = u.id
             WHERE ",
            live_session!()
        );
    /// $1 user id → the public row, if any.
    UserPublicById: Read, Replica,
        "SELECT u.id, u.name, p.display_name, p.avatar_url
             FROM users u LEFT JOIN profiles p ON p.user_id = u.id
             WHERE u.id = $1";
    /// $1 token hash, $2 user ids → public rows, any order, each with the session's user and
    /// expiry; one row with a NULL id when none exist.
    UsersPublic: Read, SessionCheckedReplica,
        concat!(
            "SELECT u.id, u.name, p.display_name, p.avatar_url, s.user_id, s.expires_at
             FROM sessions s
             LEFT JOIN (users u LEFT JOIN profiles p ON p.user_id = u.id) ON u.id = ANY($2::int8[])
             WHERE ",
            live_session!()
        );
    /// $1 user ids → the public rows that exist, any order.
    UsersPublicByIds: Read, Replica,
        "SELECT u.id, u.name, p.display_name, p.avatar_url
             FROM users u LEFT JOIN profiles p ON p.user_id = u.id
             WHERE u.id = ANY($1::int8[])";
    /// $1 token hash, $2 kind, $3 payload JSON text, then for the webhook deliveries it fans
    /// out to the caller's matching subscriptions (same transaction): $4 queue, $5 max
    /// attempts → id, created_at, user id, deliveries enqueued.
    EventInsert: Write, Primary,
        concat!(
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
        );
    /// $1 token hash, $2/$3 cursor (created_at, id), $4 limit → the page, in index order
    /// (newest first) as the one-row outer side of the nested loop yields it; the handler
    /// sorts anyway, as SQL promises no order without ORDER BY, and an ORDER BY here would
    /// add a Sort node over the join. Each row ends with the session's user and expiry; the
    /// event columns are NULL in the one row of an empty page.
    EventsPage: Read, SessionCheckedReplica,
        concat!(
            "SELECT e.id, e.kind, e.payload::text, e.created_at, s.user_id, s.expires_at
             FROM sessions s
             LEFT JOIN LATERAL (
                 SELECT id, kind, payload, created_at FROM events
                 WHERE user_id = s.user_id AND (created_at, id) < ($2::timestamptz, $3::int8)
                 ORDER BY created_at DESC, id DESC
                 LIMIT $4::int8) e ON true
             WHERE ",
            live_session!()
        );
    /// $1 world id → id, randomnumber (TechEmpower; bench routes only).
    WorldById: Read, Replica,
        "SELECT id, randomnumber FROM world WHERE id = $1";
    /// Every fortune: id, message (TechEmpower; bench routes only).
    FortunesAll: Read, Replica,
        "SELECT id, message FROM fortune";
    /// $1 world ids (sorted, distinct), $2 their new random numbers (TechEmpower updates).
    WorldUpdate: Write, Primary,
        "UPDATE world SET randomnumber = v.number
             FROM unnest($1::int4[], $2::int4[]) AS v(id, number)
             WHERE world.id = v.id";
    /// $1 user id, $2 limit → the user's newest events, for a caller whose session the
    /// cache knows.
    EventsNewestById: Read, Replica,
        "SELECT id, kind, payload::text, created_at FROM events
             WHERE user_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2";
    /// $1 token hash, $2 kind, $3 queue, $4 params JSON text, $5 max attempts, $6 idempotency
    /// key or NULL, $7 request hash or NULL → the session's user, then the new job's id and
    /// status, or (on a key already used) the existing job's id, status and request hash.
    /// No row: bad session.
    JobInsert: Write, Primary,
        concat!(
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
        );
    /// $1 user id, $2 idempotency key → id, status, request hash: the job a concurrent
    /// request with the same key committed (invisible to `JobInsert`'s snapshot).
    JobByKey: Read, Primary,
        "SELECT id, status, request_hash FROM jobs WHERE user_id = $1 AND idempotency_key = $2";
    /// $1 token hash, $2 job id → the session's user, then the job's columns (NULL when it
    /// is not the caller's or does not exist).
    JobGet: Read, Primary,
        concat!(
            "SELECT s.user_id, j.id, j.kind, j.queue, j.status, j.attempts, j.max_attempts, j.error,
                    j.result::text, j.run_after, j.created_at, j.updated_at
             FROM sessions s LEFT JOIN jobs j ON j.id = $2 AND j.user_id = s.user_id
             WHERE ",
            live_session!()
        );
    /// $1 token hash, $2 status or NULL, $3 limit → the session's user, then per row the
    /// job's columns (NULL in the one row of an empty list), newest first by index.
    JobsList: Read, Primary,
        concat!(
            "SELECT s.user_id, j.id, j.kind, j.queue, j.status, j.attempts, j.max_attempts, j.error,
                    j.result::text, j.run_after, j.created_at, j.updated_at
             FROM sessions s
             LEFT JOIN LATERAL (
                 SELECT * FROM jobs WHERE user_id = s.user_id AND ($2::text IS NULL OR status = $2::text)
                 ORDER BY created_at DESC, id DESC LIMIT $3::int8) j ON true
             WHERE ",
            live_session!()
        );
    /// $1 token hash, $2 url, $3 event kinds, $4 secret, $5 most subscriptions per user →
    /// the session's user, then the new id and created_at (NULL: over the limit).
    WebhookInsert: Write, Primary,
        concat!(
            "WITH who AS (SELECT s.user_id FROM sessions s WHERE ",
            live_session!(),
            "), ins AS (
                INSERT INTO webhooks (user_id, url, events, secret)
                SELECT user_id, $2, $3, $4 FROM who
                WHERE (SELECT count(*) FROM webhooks w WHERE w.user_id = who.user_id) < $5::int8
                RETURNING id, created_at)
             SELECT who.user_id, ins.id, ins.created_at FROM who LEFT JOIN ins ON true"
        );
    /// $1 token hash → the session's user, then each subscription's id, url, events,
    /// created_at (NULL id when there are none).
    WebhooksList: Read, Primary,
        concat!(
            "SELECT s.user_id, w.id, w.url, w.events, w.created_at
             FROM sessions s LEFT JOIN webhooks w ON w.user_id = s.user_id
             WHERE ",
            live_session!()
        );
    /// $1 token hash, $2 webhook id → the session's user, then the deleted id (NULL: none).
    WebhookDelete: Write, Primary,
        concat!(
            "WITH who AS (SELECT s.user_id FROM sessions s WHERE ",
            live_session!(),
            "), del AS (
                DELETE FROM webhooks w USING who WHERE w.id = $2 AND w.user_id = who.user_id
                RETURNING w.id)
             SELECT who.user_id, del.id FROM who LEFT JOIN del ON true"
        );
    /// $1 token hash, $2 webhook id, $3 limit → the session's user, the webhook id (NULL:
    /// not the caller's), then each attempt newest first (NULL columns when none).
    WebhookDeliveries: Read, Primary,
        concat!(
            "SELECT s.user_id, w.id, d.id, d.job_id, d.attempt, d.status_code, d.error, d.duration_ms,
                    d.attempted_at
             FROM sessions s
             LEFT JOIN webhooks w ON w.id = $2 AND w.user_id = s.user_id
             LEFT JOIN LATERAL (
                 SELECT * FROM webhook_deliveries WHERE webhook_id = w.id
                 ORDER BY id DESC LIMIT $3::int8) d ON true
             WHERE ",
            live_session!()
        );
    /// $1 token hash → the session's user; no row: not a live session. Run only to decide
    /// between 401 and a handler's input error (`api::handle`).
    SessionLive: Read, Primary,
        concat!("SELECT s.user_id FROM sessions s WHERE ", live_session!());
    /// The primary's WAL flush position: with `synchronous_commit` on (the default; percore
    /// never turns it off), every commit that has returned ends at or before it, and no
    /// standby has more (`replicas.rs`). Not the insert position: after a record that
    /// fills its page exactly, that one points past the next page's header, where no
    /// replay position ever lands, and an idle primary would leave every replica behind.
    WalFlushLsn: Read, Primary,
        "SELECT pg_current_wal_flush_lsn()";
    /// A standby's replay position (NULL on a server that is not one).
    WalReplayLsn: Read, Primary,
        "SELECT pg_last_wal_replay_lsn()";
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
    fn session_checked_replica_reads_end_with_the_sessions_user_and_expiry() {
        // `api::session::SessionColumns` reads the last two columns of these.
        for stmt in Stmt::ALL.iter().filter(|stmt| stmt.checks_session_on_replica()) {
            let select = stmt.sql().split("FROM sessions s").next().unwrap_or_default();
            assert!(select.trim_end().ends_with("s.user_id, s.expires_at"), "{stmt:?}");
        }
    }

    #[test]
    fn all_lists_every_statement_in_declaration_order() {
        // Prepared statements are found by `stmt as usize`: the order is load-bearing.
        for (index, stmt) in Stmt::ALL.iter().enumerate() {
            assert_eq!(*stmt as usize, index, "{stmt:?}");
        }
        assert_eq!(Stmt::ALL.len(), Stmt::ENTRIES.len());
    }
}
