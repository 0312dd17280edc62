//! `percore migrate` and `[database] auto_migrate` against a real Postgres: applied once,
//! recorded, a no-op the second time, and a recorded checksum that differs stops start-up.

mod common;

use common::Services;
use std::process::{Command, Output};

fn percore(services: &Services, extra: &str, args: &[&str]) -> Output {
    let dir = std::env::temp_dir().join(format!(
        "percore-migrate-{}-{}",
        std::process::id(),
        common::free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tuning.toml");
    let port = common::free_port();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nshards = 1\n[database]\nurl = \"{}\"\n{extra}\n[redis]\nurl = \"{}\"\n",
        services.postgres.url, services.redis.url
    );
    std::fs::write(&path, text).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_percore"))
        .arg("--config")
        .arg(&path)
        .args(args)
        .current_dir(&dir)
        .env_remove("PERCORE_DATABASE_URL")
        .env_remove("PERCORE_REDIS_URL")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    output
}

#[test]
fn migrate_applies_once_records_and_then_does_nothing() {
    let services = Services::start();
    let first = percore(&services, "", &["migrate"]);
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(
        first.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&first.stderr)
    );
    let count = percore_schema::MIGRATIONS.len();
    assert!(stdout.contains(&format!("{count} applied")), "{stdout}");
    let second = percore(&services, "", &["migrate"]);
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert!(second.status.success());
    assert!(
        stdout.contains(&format!("0 applied ([]), {count} already applied")),
        "{stdout}"
    );

    let mut client = postgres::Client::connect(&services.postgres.url, postgres::NoTls).unwrap();
    let recorded: i64 = client
        .query_one("SELECT count(*) FROM schema_migrations", &[])
        .unwrap()
        .get(0);
    assert_eq!(recorded, count as i64);
    // The tables exist, with the index the events page relies on.
    let index: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE tablename = 'events' AND indexname = 'events_user_created'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(index, 1);
}

#[test]
fn a_checksum_mismatch_stops_start_up_with_a_clear_message() {
    let services = Services::start();
    assert!(percore(&services, "", &["migrate"]).status.success());
    let mut client = postgres::Client::connect(&services.postgres.url, postgres::NoTls).unwrap();
    client
        .execute(
            "UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1",
            &[],
        )
        .unwrap();
    for (extra, args) in [("auto_migrate = true", &["serve"][..]), ("", &["migrate"][..])] {
        let output = percore(&services, extra, args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} must fail: {stderr}");
        assert!(
            stderr.contains("0001_identity_users_events") && stderr.contains("checksum mismatch"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn a_configured_database_is_not_migrated_unless_asked_and_start_up_says_so() {
    let services = Services::start();
    let output = percore(&services, "", &["serve"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("lacks migrations") && stderr.contains("percore migrate"),
        "{stderr}"
    );
    let mut client = postgres::Client::connect(&services.postgres.url, postgres::NoTls).unwrap();
    let tables: i64 = client
        .query_one("SELECT count(*) FROM pg_tables WHERE tablename = 'users'", &[])
        .unwrap()
        .get(0);
    assert_eq!(tables, 0, "auto_migrate is off by default for a configured database");
}
