//! `percore-dev env` provisions a Postgres and a Redis under the given directory, prints
//! their URLs for a shell, and reuses them (same ports, same data) on the next call;
//! `percore-dev stop` stops both.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Runs `percore-dev COMMAND --var VAR` with `envs` as the only service variables set.
fn percore_dev(var: &Path, command: &str, envs: &[(&str, &str)]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_percore-dev"))
        .arg(command)
        .arg("--var")
        .arg(var)
        .env_remove("PERCORE_DATABASE_URL")
        .env_remove("PERCORE_REDIS_URL")
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "percore-dev {command}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The value of `export NAME='value'` in `percore-dev env`'s output.
fn exported(output: &str, name: &str) -> String {
    let prefix = format!("export {name}='");
    let line = output
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("{name} not exported: {output}"));
    line[prefix.len()..line.len() - 1].to_string()
}

fn redis_ping(url: &str) -> bool {
    let address = url.trim_start_matches("redis://").trim_end_matches("/0");
    let Ok(mut stream) = std::net::TcpStream::connect(address) else {
        return false;
    };
    stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok() && stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

#[test]
fn env_provisions_then_reuses_the_services_and_stop_stops_them() {
    let var = percore_testkit::temp_dir("percore-dev").join("var");
    let first = percore_dev(&var, "env", &[]);
    let database_url = exported(&first, "PERCORE_DATABASE_URL");
    let redis_url = exported(&first, "PERCORE_REDIS_URL");
    assert!(redis_ping(&redis_url), "{redis_url}");
    let mut client = postgres::Client::connect(&database_url, postgres::NoTls).unwrap();
    client
        .batch_execute("CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)")
        .unwrap();
    drop(client);

    let second = percore_dev(&var, "env", &[]);
    assert_eq!(second, first, "same services, same ports");
    // A service the environment names already is left as it is.
    let named = percore_dev(&var, "env", &[("PERCORE_DATABASE_URL", "postgres://elsewhere/db")]);
    assert!(!named.contains("PERCORE_DATABASE_URL"), "{named}");
    assert_eq!(exported(&named, "PERCORE_REDIS_URL"), redis_url);
    let mut client = postgres::Client::connect(&database_url, postgres::NoTls).unwrap();
    let kept: i32 = client.query_one("SELECT n FROM kept", &[]).unwrap().get(0);
    assert_eq!(kept, 7, "the data survives");
    drop(client);

    percore_dev(&var, "stop", &[]);
    assert!(
        !var.join("pg").join("postmaster.pid").exists(),
        "postgres still running"
    );
    assert!(!var.join("redis").join("redis.pid").exists(), "redis still running");
    assert!(!redis_ping(&redis_url));
    let _ = std::fs::remove_dir_all(var.parent().unwrap());
}
