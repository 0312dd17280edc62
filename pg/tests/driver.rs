//! percore-pg against a real Postgres: values, pipelines, errors, logins, a dead
//! backend and a silent network.

use futures::future::join_all;
use percore_pg::types::ToSql;
use percore_pg::{Client, Config, Error};
use percore_testkit::Postgres;
use percore_testkit::proxy::FaultProxy;
use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

/// Runs `test` on a glommio executor of its own, as a shard would.
fn on_shard<F: Future<Output = ()> + 'static>(test: impl FnOnce() -> F + Send + 'static) {
    glommio::LocalExecutorBuilder::default()
        .spawn(test)
        .expect("executor")
        .join()
        .expect("test panicked on the executor");
}

/// Connects to `url` and spawns its driver; the driver's outcome goes to the log.
async fn connect(url: &str, statements: &[&str]) -> Result<Client, Error> {
    let config = Config::parse(url).expect("url");
    let host = &config.hosts[0];
    let stream = glommio::net::TcpStream::connect((host.name.as_str(), host.port))
        .await
        .map_err(|e| Error::Closed(e.to_string()))?;
    let (client, connection) = percore_pg::connect(stream, &config, statements).await?;
    glommio::spawn_local(async move {
        let _ = connection.await;
    })
    .detach();
    Ok(client)
}

#[test]
fn every_type_percore_uses_round_trips() {
    let postgres = Postgres::throwaway();
    let url = postgres.url.clone();
    on_shard(move || async move {
        let sql = "SELECT $1::int4, $2::int8, $3::text, $4::bool, $5::timestamptz, $6::jsonb, $7::bytea, \
                   $8::int8[], $9::text[], $10::int4, $11::text";
        let client = connect(&url, &[sql]).await.unwrap();
        let at = SystemTime::UNIX_EPOCH + Duration::from_micros(1_764_000_000_123_456);
        let json = serde_json::json!({"a": [1, 2, {"b": null}], "é": "ü"});
        let bytes: Vec<u8> = (0..=255).collect();
        let ids: Vec<i64> = vec![1, -2, i64::MAX];
        let words: Vec<String> = vec!["x".into(), "".into(), "with space".into()];
        let (none_int, none_text) = (None::<i32>, None::<String>);
        let params: [&(dyn ToSql + Sync); 11] = [
            &-7i32,
            &(1i64 << 40),
            &"héllo",
            &true,
            &at,
            &json,
            &bytes,
            &ids,
            &words,
            &none_int,
            &none_text,
        ];
        let rows = client.query(client.statement(0), &params).await.unwrap();
        assert_eq!(rows.len(), 1);
        let row = rows.first().unwrap();
        assert_eq!(row.get::<i32>(0), -7);
        assert_eq!(row.get::<i64>(1), 1 << 40);
        assert_eq!(row.get::<&str>(2), "héllo");
        assert!(row.get::<bool>(3));
        assert_eq!(row.get::<SystemTime>(4), at);
        assert_eq!(row.get::<serde_json::Value>(5), json);
        assert_eq!(row.get::<Vec<u8>>(6), bytes);
        assert_eq!(row.get::<Vec<i64>>(7), ids);
        assert_eq!(row.get::<Vec<String>>(8), words);
        assert_eq!(row.get::<Option<i32>>(9), None);
        assert_eq!(row.get::<Option<String>>(10), None);
        // A type that does not convert is an error, not a wrong value.
        assert!(matches!(row.try_get::<i64>(0), Err(Error::Decode(_))));
        // And a parameter of the wrong type is refused before anything is sent.
        let wrong: [&(dyn ToSql + Sync); 11] = [
            &"not an int",
            &1i64,
            &"",
            &true,
            &at,
            &json,
            &bytes,
            &ids,
            &words,
            &none_int,
            &none_text,
        ];
        assert!(matches!(
            client.query(client.statement(0), &wrong).await,
            Err(Error::Encode(_))
        ));
        // The connection is still fine after both.
        assert_eq!(client.query(client.statement(0), &params).await.unwrap().len(), 1);
    });
}

#[test]
fn an_error_in_a_pipeline_fails_only_its_own_statement() {
    let postgres = Postgres::throwaway();
    let url = postgres.url.clone();
    on_shard(move || async move {
        let client = connect(&url, &["SELECT 100 / $1::int4", "SELECT generate_series(1, $1::int4)"])
            .await
            .unwrap();
        // All encoded before the driver runs: one send, one pipeline.
        let divisors = [1i32, 0, 5, 0, 10];
        let answers = join_all(divisors.iter().map(|d| {
            let client = client.clone();
            async move { client.query(client.statement(0), &[d]).await }
        }))
        .await;
        for (divisor, answer) in divisors.iter().zip(answers) {
            match (divisor, answer) {
                (0, Err(Error::Db(db))) => assert_eq!(db.code, "22012", "division_by_zero"),
                (d, Ok(rows)) => assert_eq!(rows.first().unwrap().get::<i32>(0), 100 / d),
                (d, other) => panic!("divisor {d}: {other:?}"),
            }
        }
        // Many rows, many statements, interleaved in one pipeline.
        let counts: Vec<i32> = (0..200).map(|i| i % 37).collect();
        let answers = join_all(counts.iter().map(|n| {
            let client = client.clone();
            async move { client.query(client.statement(1), &[n]).await.unwrap() }
        }))
        .await;
        for (n, rows) in counts.iter().zip(&answers) {
            assert_eq!(rows.len(), *n as usize);
            let sum: i32 = rows.iter().map(|row| row.get::<i32>(0)).sum();
            assert_eq!(sum, n * (n + 1) / 2);
        }
        assert_eq!(client.pending(), 0);
    });
}

#[test]
fn a_statement_that_does_not_prepare_is_named_by_its_position() {
    let postgres = Postgres::throwaway();
    let url = postgres.url.clone();
    on_shard(move || async move {
        let statements = ["SELECT 1", "SELECT 2", "SELECT * FROM no_such_table", "SELECT 4"];
        match connect(&url, &statements).await {
            Err(Error::Prepare { index, error }) => {
                assert_eq!(index, 2);
                assert_eq!(error.code, "42P01", "undefined_table");
                assert!(error.message.contains("no_such_table"), "{}", error.message);
            }
            Err(other) => panic!("not a prepare error: {other}"),
            Ok(_) => panic!("a statement on a missing table prepared"),
        }
        // The server skipped to Sync after the failure: a new connection prepares fine.
        let client = connect(&url, &statements[..2]).await.unwrap();
        let rows = client.query(client.statement(1), &[]).await.unwrap();
        assert_eq!(rows.first().unwrap().get::<i32>(0), 2);
    });
}

#[test]
fn a_terminated_backend_fails_what_is_pending_and_a_new_connection_serves() {
    let postgres = Postgres::throwaway();
    let url = postgres.url.clone();
    on_shard(move || async move {
        let statements = [
            "SELECT pg_backend_pid()",
            "SELECT pg_sleep($1::float8)",
            "SELECT pg_terminate_backend($1::int4)",
        ];
        let victim = connect(&url, &statements).await.unwrap();
        let killer = connect(&url, &statements).await.unwrap();
        let pid: i32 = victim
            .query(victim.statement(0), &[])
            .await
            .unwrap()
            .first()
            .unwrap()
            .get(0);
        let pending = join_all((0..5).map(|_| {
            let victim = victim.clone();
            async move { victim.query(victim.statement(1), &[&2.0f64]).await }
        }));
        let kill = async {
            glommio::timer::sleep(Duration::from_millis(300)).await;
            killer.query(killer.statement(2), &[&pid]).await.unwrap()
        };
        let started = Instant::now();
        let (answers, _) = futures::join!(pending, kill);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "failed at once, not after the sleeps"
        );
        for answer in answers {
            assert!(matches!(answer, Err(Error::Closed(_))), "{answer:?}");
        }
        assert!(victim.is_closed());
        assert!(matches!(
            victim.query(victim.statement(0), &[]).await,
            Err(Error::Closed(_))
        ));
        let again = connect(&url, &statements).await.unwrap();
        assert_eq!(again.query(again.statement(1), &[&0.0f64]).await.unwrap().len(), 1);
    });
}

#[test]
fn scram_md5_and_cleartext_logins_work_and_a_wrong_password_is_named() {
    let postgres = Postgres::own();
    let setup = postgres.url.clone();
    postgres.prepend_hba(
        "host all scram_user 127.0.0.1/32 scram-sha-256\n\
         host all md5_user 127.0.0.1/32 md5\n\
         host all clear_user 127.0.0.1/32 password",
    );
    let port = postgres.port;
    on_shard(move || async move {
        let admin = connect(
            &setup,
            &[
                "CREATE ROLE scram_user LOGIN PASSWORD 's3cret p@ss'",
                "SET password_encryption = 'md5'",
                "CREATE ROLE md5_user LOGIN PASSWORD 'md5 pass'",
                "CREATE ROLE clear_user LOGIN PASSWORD 'clear pass'",
                "SELECT rolpassword LIKE 'md5%' FROM pg_authid WHERE rolname = 'md5_user'",
            ],
        )
        .await
        .unwrap();
        for i in 0..4 {
            admin.execute(admin.statement(i), &[]).await.unwrap();
        }
        assert!(
            admin
                .query(admin.statement(4), &[])
                .await
                .unwrap()
                .first()
                .unwrap()
                .get::<bool>(0),
            "stored as md5"
        );
        for (user, password) in [
            ("scram_user", "s3cret%20p%40ss"),
            ("md5_user", "md5%20pass"),
            ("clear_user", "clear%20pass"),
        ] {
            let url = format!("postgres://{user}:{password}@127.0.0.1:{port}/postgres");
            let client = connect(&url, &["SELECT current_user::text"])
                .await
                .unwrap_or_else(|e| panic!("{user}: {e}"));
            let rows = client.query(client.statement(0), &[]).await.unwrap();
            assert_eq!(rows.first().unwrap().get::<String>(0), user);
        }
        for user in ["scram_user", "md5_user", "clear_user"] {
            let url = format!("postgres://{user}:wrong@127.0.0.1:{port}/postgres");
            match connect(&url, &[]).await {
                Err(Error::Db(db)) => {
                    assert_eq!(db.code, percore_pg::INVALID_PASSWORD, "{user}");
                    assert!(
                        db.message.contains("password authentication failed"),
                        "{user}: {}",
                        db.message
                    );
                }
                Err(e) => panic!("{user}: {e}"),
                Ok(_) => panic!("{user}: a wrong password logged in"),
            }
        }
        let no_password = format!("postgres://scram_user@127.0.0.1:{port}/postgres");
        let error = connect(&no_password, &[]).await.err().expect("no password given");
        assert!(error.to_string().contains("password"), "{error}");
    });
}

#[test]
fn a_silent_server_is_detected_by_the_caller_and_fails_what_is_pending() {
    let postgres = Postgres::throwaway();
    let proxy = FaultProxy::start(postgres.port);
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", proxy.port);
    let proxy = std::sync::Arc::new(proxy);
    let blackhole = proxy.clone();
    on_shard(move || async move {
        let client = connect(&url, &["SELECT 1::int4"]).await.unwrap();
        assert_eq!(client.query(client.statement(0), &[]).await.unwrap().len(), 1);
        assert_eq!(client.waiting_since(), None);
        blackhole.blackhole();
        let deadline = Duration::from_millis(300);
        // What the server's supervisor does: a statement unanswered past its deadline ends
        // the connection.
        let watch = {
            let client = client.clone();
            async move {
                loop {
                    glommio::timer::sleep(Duration::from_millis(20)).await;
                    if client.waiting_since().is_some_and(|since| since.elapsed() > deadline) {
                        client.abort();
                        return;
                    }
                }
            }
        };
        glommio::spawn_local(watch).detach();
        let started = Instant::now();
        let answers = join_all((0..3).map(|_| {
            let client = client.clone();
            async move { client.query(client.statement(0), &[]).await }
        }))
        .await;
        let waited = started.elapsed();
        for answer in answers {
            assert!(matches!(answer, Err(Error::Timeout)), "{answer:?}");
        }
        assert!(
            waited >= deadline && waited < deadline + Duration::from_millis(500),
            "{waited:?}"
        );
        assert!(client.is_closed());
    });
}

#[test]
fn a_standby_is_refused_when_read_write_is_asked_and_accepted_otherwise() {
    let primary = Postgres::own();
    let standby = primary.replica();
    let (primary_port, standby_port) = (primary.port, standby.port);
    on_shard(move || async move {
        let sql = ["SELECT pg_is_in_recovery()"];
        let read_write =
            format!("postgres://postgres@127.0.0.1:{standby_port}/postgres?target_session_attrs=read-write");
        assert!(matches!(connect(&read_write, &sql).await, Err(Error::ReadOnly)));
        let any = format!("postgres://postgres@127.0.0.1:{standby_port}/postgres");
        let client = connect(&any, &sql).await.unwrap();
        assert!(
            client
                .query(client.statement(0), &[])
                .await
                .unwrap()
                .first()
                .unwrap()
                .get::<bool>(0)
        );
        let primary = format!("postgres://postgres@127.0.0.1:{primary_port}/postgres?target_session_attrs=read-write");
        let client = connect(&primary, &sql).await.unwrap();
        assert!(
            !client
                .query(client.statement(0), &[])
                .await
                .unwrap()
                .first()
                .unwrap()
                .get::<bool>(0)
        );
    });
}
