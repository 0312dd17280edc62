//! No acknowledged write is lost: clients register, post events, put prefs and enqueue
//! jobs while Postgres is stopped in immediate mode and restarted (fsync on), percore is
//! killed with SIGKILL and restarted, Redis is frozen past its timeouts, and a shard's
//! Postgres connections are cut. Then the audit (`percore_bench::audit`, the same code as
//! `percore-bench audit`) reads Postgres: every write answered 2xx is there as
//! acknowledged, prefs are the last acknowledged PUT's, every 202 job runs to `done`.

mod common;
use common::{Server, Services, Tuning};
use percore_bench::audit::{AuditOptions, Fault, audit};
use percore_testkit::{Postgres, Redis};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[test]
fn no_acknowledged_write_is_lost_through_crashes_a_frozen_redis_and_cut_connections() {
    // Servers of our own: the faults stop, freeze and kill them.
    let services = Services {
        postgres: Postgres::durable(),
        redis: Redis::own(),
    };
    let port = common::free_port();
    let extra = format!(
        "[jobs]\n{}\n{}[identity]\nlogin_burst = 1000\n{}",
        common::jobs::FAST,
        common::jobs::queues(2, 100_000),
        common::jobs::UNLIMITED
    );
    let config = Tuning {
        server: "shards = 2\nshutdown_timeout_ms = 2000",
        database: "reconnect_backoff_ms_max = 200",
        extra: &extra,
        ..Tuning::new(port, &services)
    }
    .render();
    let Services { postgres, redis } = services;
    let database_url = postgres.url.clone();
    let redis_pid = redis.pid().expect("a Redis of our own") as i32;
    let postgres = Arc::new(Mutex::new(postgres));
    let server = Arc::new(Mutex::new(Some(Server::start_with_config(port, &config, &[]))));

    let faults = vec![
        Fault {
            name: "postgres stopped in immediate mode, restarted after 1 s".into(),
            inject: Box::new({
                let postgres = postgres.clone();
                move || {
                    let mut postgres = postgres.lock().unwrap();
                    postgres.kill();
                    std::thread::sleep(Duration::from_secs(1));
                    postgres.restart();
                    Ok(())
                }
            }),
        },
        Fault {
            name: "percore killed with SIGKILL and restarted".into(),
            inject: Box::new({
                let (server, config) = (server.clone(), config.clone());
                move || {
                    let mut server = server.lock().unwrap();
                    let mut killed = server.take().expect("a running percore");
                    killed.signal(libc::SIGKILL);
                    killed
                        .wait_exit(Duration::from_secs(5))
                        .ok_or("percore outlived SIGKILL")?;
                    drop(killed);
                    *server = Some(Server::start_with_config(port, &config, &[]));
                    Ok(())
                }
            }),
        },
        Fault {
            name: "redis frozen (SIGSTOP) for 2 s".into(),
            inject: Box::new(move || {
                // SAFETY: signalling our own child process by pid.
                unsafe { libc::kill(redis_pid, libc::SIGSTOP) };
                std::thread::sleep(Duration::from_secs(2));
                // SAFETY: as above.
                unsafe { libc::kill(redis_pid, libc::SIGCONT) };
                Ok(())
            }),
        },
        Fault {
            name: "shard 0's postgres connections cut".into(),
            inject: Box::new({
                let url = database_url.clone();
                move || {
                    let mut db = postgres::Client::connect(&url, postgres::NoTls).map_err(|e| e.to_string())?;
                    let cut: i64 = db
                        .query_one(
                            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                             WHERE application_name LIKE 'percore-shard-0%'",
                            &[],
                        )
                        .map_err(|e| e.to_string())?
                        .get(0);
                    (cut > 0)
                        .then_some(())
                        .ok_or_else(|| "no connection of shard 0 to cut".to_string())
                }
            }),
        },
    ];
    let result = audit(
        &AuditOptions {
            addr: format!("127.0.0.1:{port}"),
            database_url,
            clients: 8,
            duration: Duration::from_secs(18),
            fault_every: Duration::from_secs(4),
            jobs_wait: Duration::from_secs(60),
            answer_timeout: Duration::from_secs(10),
        },
        faults,
    )
    .expect("the audit ran");
    let audit = &result["audit"];
    eprintln!("{}", serde_json::to_string_pretty(audit).unwrap());
    assert_eq!(audit["lost_total"], 0, "acknowledged writes lost: {}", audit["lost"]);
    for kind in ["register", "login", "event", "prefs", "job"] {
        assert!(
            audit["acknowledged"][kind].as_u64().unwrap() >= 8,
            "{kind}: {}",
            audit["acknowledged"]
        );
    }
    let faults = audit["faults"].as_array().unwrap();
    assert_eq!(faults.len(), 4, "{faults:?}");
    for fault in faults {
        assert_eq!(fault["ok"], true, "{fault}");
        let recovery = fault["recovery_s"].as_f64();
        assert!(
            recovery.is_some_and(|s| s < 4.0),
            "writes recovered within 4 s: {fault}"
        );
    }
}
