//! SQL statements as Postgres counted them (`pg_stat_statements`), around a run: the
//! server's own per-route counters say what percore meant to run; this says what reached
//! the database, from every client (shards, job workers) alike.

use serde_json::{Value, json};

/// Statements executed so far, or why they cannot be counted (the extension needs
/// `shared_preload_libraries = pg_stat_statements`; the dev Postgres under ./var/ has it).
pub fn calls(database_url: &str) -> Result<f64, String> {
    let mut db = postgres::Client::connect(database_url, postgres::NoTls).map_err(|e| e.to_string())?;
    db.batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .map_err(|e| e.to_string())?;
    let row = db
        .query_one(
            "SELECT coalesce(sum(calls), 0)::float8 FROM pg_stat_statements
             WHERE query NOT ILIKE '%pg_stat_statements%'",
            &[],
        )
        .map_err(|e| format!("pg_stat_statements: {e}"))?;
    Ok(row.get(0))
}

/// The delta as a result field: statements per request answered.
pub fn delta(before: &Result<f64, String>, after: &Result<f64, String>, requests: f64) -> Value {
    match (before, after) {
        (Ok(b), Ok(a)) => json!({
            "statements": a - b,
            "statements_per_request": if requests > 0.0 { (a - b) / requests } else { 0.0 },
        }),
        (Err(e), _) | (_, Err(e)) => json!({ "unavailable": e }),
    }
}
