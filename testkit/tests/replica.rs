//! The harness's streaming replica is a real one: rows written on the primary appear on
//! it, it refuses writes, and it stops and restarts on its own data.

use percore_testkit::Postgres;
use std::time::{Duration, Instant};

fn connect(server: &Postgres) -> postgres::Client {
    postgres::Client::connect(&server.url, postgres::NoTls).unwrap()
}

fn wait_for_rows(replica: &mut postgres::Client, table: &str, rows: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen: i64 = replica
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .map(|row| row.get(0))
            .unwrap_or(-1);
        if seen == rows {
            return;
        }
        assert!(Instant::now() < deadline, "the replica shows {seen} rows of {rows}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_replica_streams_the_primarys_writes_and_refuses_its_own() {
    // Our own even when TEST_DATABASE_URL names a server: a replica needs its primary's
    // data directory, so this test never skips.
    let primary = Postgres::own();
    let mut writer = connect(&primary);
    writer
        .batch_execute("CREATE TABLE t (n int); INSERT INTO t VALUES (1), (2)")
        .unwrap();
    let mut replica = primary.replica();
    assert_ne!(replica.port, primary.port);
    let mut reader = connect(&replica);
    let recovering: bool = reader.query_one("SELECT pg_is_in_recovery()", &[]).unwrap().get(0);
    assert!(recovering, "a standby");
    wait_for_rows(&mut reader, "t", 2);
    writer.execute("INSERT INTO t VALUES (3)", &[]).unwrap();
    wait_for_rows(&mut reader, "t", 3);
    let refused = reader.execute("INSERT INTO t VALUES (4)", &[]).unwrap_err();
    assert_eq!(
        refused.code(),
        Some(&postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION),
        "{refused:?}"
    );
    // Down and back on its own data: it catches up with what it missed.
    replica.kill();
    writer.execute("INSERT INTO t VALUES (5)", &[]).unwrap();
    replica.restart();
    wait_for_rows(&mut connect(&replica), "t", 4);
}
