//! With no database configured, `percore` provisions a Postgres and a Redis under
//! `./var/`, says so, and reuses them (and their data) on the next run.

mod common;
use common::Server;
use std::time::Duration;

#[test]
fn no_database_configured_starts_and_then_reuses_dev_services_under_var() {
    let port = common::free_port();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nshards = 1\n[bench]\nroutes = true\n[log]\nlevel = \"info\"\n"
    );
    let mut first = Server::start_with_config(port, &text, &[]);
    let var = first.dir.join("var");
    let ready = first.get("/readyz");
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(ready.json()["redis"], true);
    assert!(
        first.stderr().contains("local dev services under ./var/"),
        "{}",
        first.stderr()
    );
    let ports = std::fs::read_to_string(var.join("ports")).expect("var/ports remembers the ports");
    assert!(var.join("pg").join("PG_VERSION").exists());

    first.signal(libc::SIGTERM);
    assert_eq!(first.wait_exit(Duration::from_secs(10)).and_then(|s| s.code()), Some(0));
    // The second run starts in the same directory, so the first must not remove it.
    let dir = first.dir.clone();
    first.keep_dir = true;
    drop(first);

    let mut second = Server::start_with_config(port, &text, &[]);
    assert_eq!(second.dir, dir);
    assert_eq!(second.get("/readyz").status, 200);
    assert_eq!(
        std::fs::read_to_string(var.join("ports")).unwrap(),
        ports,
        "same services, same ports"
    );
    second.keep_dir = true;
    drop(second);
    percore_testkit::dev::stop(&var).expect("stopping the dev services");
    assert!(!var.join("redis").join("redis.pid").exists(), "redis still running");
    assert!(
        !var.join("pg").join("postmaster.pid").exists(),
        "postgres still running"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
