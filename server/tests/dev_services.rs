//! The shipped binary never provisions a service: with no database or Redis URL it exits
//! with status 2 naming the key and its environment variable, and leaves nothing behind
//! (no `var/`, no process). Local dev services come only from `percore-dev`, when
//! `./dev run` asks (tested in testkit/tests/percore_dev.rs).

mod common;
use std::path::Path;
use std::process::{Command, Output};

fn percore_in(dir: &Path, config: &str, args: &[&str], envs: &[(&str, &str)]) -> Output {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("tuning.toml");
    std::fs::write(&path, config).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_percore"));
    command
        .arg("--config")
        .arg(&path)
        .args(args)
        .current_dir(dir)
        .env_remove("PERCORE_DATABASE_URL")
        .env_remove("PERCORE_REDIS_URL");
    for (key, value) in envs {
        command.env(key, value);
    }
    command.output().unwrap()
}

fn fresh_dir(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("percore-{name}-{}-{}", std::process::id(), common::free_port()))
}

#[test]
fn no_database_url_exits_2_naming_the_key_and_provisions_nothing() {
    let port = common::free_port();
    let config = format!("[server]\nlisten = \"127.0.0.1:{port}\"\nshards = 1\n");
    for args in [&["serve"][..], &["migrate"][..], &["jobs", "retry", "1"][..]] {
        let dir = fresh_dir("no-db");
        let output = percore_in(&dir, &config, args, &[]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("database.url") && stderr.contains("PERCORE_DATABASE_URL"),
            "{args:?}: {stderr}"
        );
        assert!(!dir.join("var").exists(), "{args:?} provisioned something under var/");
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "nothing listens"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_database_url_without_redis_exits_2_naming_redis_url() {
    // The URL is never dialled: the check comes before anything connects.
    let database = "postgres://percore@127.0.0.1:1/percore";
    let from_file = format!("[database]\nurl = \"{database}\"\n");
    let dir = fresh_dir("no-redis");
    for (config, envs) in [
        (from_file.as_str(), &[][..]),
        ("", &[("PERCORE_DATABASE_URL", database)][..]),
    ] {
        let output = percore_in(&dir, config, &["migrate"], envs);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("redis.url") && stderr.contains("PERCORE_REDIS_URL"),
            "{stderr}"
        );
        assert!(!dir.join("var").exists());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_config_needs_no_service_urls() {
    let dir = fresh_dir("check-config");
    let output = percore_in(&dir, "[server]\nshards = 1\n", &["check-config"], &[]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}
