//! percore's SQL schema: numbered, forward-only migrations under `schema/migrations/`,
//! embedded in the binary.
//!
//! Rule: a migration, once released, is never edited; a change is a new, higher number.
//! The engine issue ships no tables; the domain issues add them here, and the runner
//! (`percore migrate`, `[database] auto_migrate`) that records what was applied.

/// One migration: its number, its name and its SQL.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in the order it must be applied.
pub const MIGRATIONS: &[Migration] = &[];
