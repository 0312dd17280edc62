//! percore's SQL schema: numbered, forward-only migrations under `schema/migrations/`,
//! embedded in the binary, and the runner that applies them (`percore migrate`, or at
//! start-up with `[database] auto_migrate`).
//!
//! Rule: a migration, once released, is never edited; a change is a new, higher number. The
//! runner records each applied migration with the SHA-256 of its SQL, and refuses to start
//! when a recorded checksum differs from the embedded one: the database would not be the
//! schema this binary was built for. Runs at start-up only, before any shard: it blocks.

use sha2::{Digest, Sha256};

/// One migration: its number, its name and its SQL.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

impl Migration {
    /// Hex SHA-256 of the SQL text.
    pub fn checksum(&self) -> String {
        let digest = Sha256::digest(self.sql.as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Every migration, in the order it must be applied.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "identity_users_events",
        sql: include_str!("../migrations/0001_identity_users_events.sql"),
    },
    Migration {
        version: 2,
        name: "techempower",
        sql: include_str!("../migrations/0002_techempower.sql"),
    },
    Migration {
        version: 3,
        name: "jobs_webhooks",
        sql: include_str!("../migrations/0003_jobs_webhooks.sql"),
    },
];

/// Serialises concurrent runners (several processes starting at once) on one database.
const ADVISORY_LOCK_KEY: i64 = 0x7065_7263_6f72_6531; // "percore1"

/// What a run did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub applied: Vec<i32>,
    pub already: usize,
}

/// Applies every migration not yet recorded, each in its own transaction with its record.
/// Fails, applying nothing more, on a checksum mismatch or a recorded version this binary
/// does not know.
pub fn migrate(client: &mut postgres::Client) -> Result<Outcome, String> {
    debug_assert!(MIGRATIONS.windows(2).all(|w| w[0].version < w[1].version));
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version    integer PRIMARY KEY,
                name       text NOT NULL,
                checksum   text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .map_err(|e| format!("creating schema_migrations: {e}"))?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&ADVISORY_LOCK_KEY])
        .map_err(|e| format!("taking the migration lock: {e}"))?;
    let outcome = apply_pending(client);
    let unlocked = client.execute("SELECT pg_advisory_unlock($1)", &[&ADVISORY_LOCK_KEY]);
    let outcome = outcome?;
    unlocked.map_err(|e| format!("releasing the migration lock: {e}"))?;
    Ok(outcome)
}

/// Fails unless the database has every migration this binary knows, unedited: for start-up
/// without `auto_migrate`, where the prepared statements need the whole schema.
pub fn verify(client: &mut postgres::Client) -> Result<(), String> {
    let exists: bool = client
        .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
        .map_err(|e| format!("reading schema_migrations: {e}"))?
        .get(0);
    let applied = if exists { check_recorded(client)? } else { Vec::new() };
    let pending: Vec<String> = MIGRATIONS
        .iter()
        .filter(|m| !applied.contains(&m.version))
        .map(|m| format!("{:04}_{}", m.version, m.name))
        .collect();
    if !pending.is_empty() {
        return Err(format!(
            "the database lacks migrations {pending:?}: run `percore migrate` (or set [database] auto_migrate = true)"
        ));
    }
    Ok(())
}

/// The recorded versions, each checked against the embedded migration.
fn check_recorded(client: &mut postgres::Client) -> Result<Vec<i32>, String> {
    let recorded = client
        .query(
            "SELECT version, name, checksum FROM schema_migrations ORDER BY version",
            &[],
        )
        .map_err(|e| format!("reading schema_migrations: {e}"))?;
    let mut versions = Vec::with_capacity(recorded.len());
    for row in &recorded {
        let (version, name, checksum): (i32, String, String) = (row.get(0), row.get(1), row.get(2));
        let Some(known) = MIGRATIONS.iter().find(|m| m.version == version) else {
            return Err(format!(
                "the database has migration {version:04}_{name}, which this binary does not know: \
                 it was migrated by a newer percore; run that version"
            ));
        };
        if known.checksum() != checksum {
            return Err(format!(
                "migration {version:04}_{name}: checksum mismatch: the database recorded {checksum}, \
                 this binary has {}; a released migration was edited. Restore it and add a new migration instead",
                known.checksum()
            ));
        }
        versions.push(version);
    }
    Ok(versions)
}

fn apply_pending(client: &mut postgres::Client) -> Result<Outcome, String> {
    let recorded = check_recorded(client)?;
    let mut outcome = Outcome {
        already: recorded.len(),
        ..Outcome::default()
    };
    for migration in MIGRATIONS.iter().filter(|m| !recorded.contains(&m.version)) {
        let label = format!("{:04}_{}", migration.version, migration.name);
        let mut tx = client.transaction().map_err(|e| format!("{label}: {e}"))?;
        tx.batch_execute(migration.sql).map_err(|e| format!("{label}: {e}"))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&migration.version, &migration.name, &migration.checksum()],
        )
        .map_err(|e| format!("{label}: recording: {e}"))?;
        tx.commit().map_err(|e| format!("{label}: commit: {e}"))?;
        log::info!("applied migration {label}");
        outcome.applied.push(migration.version);
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_ascend_and_names_match_files() {
        assert!(MIGRATIONS.windows(2).all(|w| w[0].version < w[1].version));
        for m in MIGRATIONS {
            assert!(!m.sql.trim().is_empty(), "{} is empty", m.name);
            assert_eq!(m.checksum().len(), 64);
        }
        let files: Vec<String> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(files.len(), MIGRATIONS.len(), "every migration file is embedded");
        for m in MIGRATIONS {
            let file = format!("{:04}_{}.sql", m.version, m.name);
            assert!(files.contains(&file), "{file} is embedded under another name");
        }
    }
}
