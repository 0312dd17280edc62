//! A throwaway PostgreSQL server.

use crate::process::{self, configure};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

const START_ATTEMPTS: usize = 5;
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Postgres {
    pub url: String,
    pub port: u16,
    /// None when `TEST_DATABASE_URL` supplied the server.
    child: Option<Child>,
    dir: Option<PathBuf>,
    /// fsync and full-page writes on, as in production (see `durable`).
    durable: bool,
}

impl Postgres {
    /// `TEST_DATABASE_URL` if set, else a fresh server of our own.
    pub fn throwaway() -> Postgres {
        if let Ok(url) = std::env::var("TEST_DATABASE_URL") {
            let port = process::port_of_url(&url, 5432);
            return Postgres {
                url,
                port,
                child: None,
                dir: None,
                durable: false,
            };
        }
        Postgres::start(false).unwrap_or_else(|e| panic!("starting a throwaway PostgreSQL: {e}"))
    }

    /// Always a server of our own, even when `TEST_DATABASE_URL` is set: for tests that
    /// change the server itself (its pg_hba.conf, promotion, a kill).
    pub fn own() -> Postgres {
        Postgres::start(false).unwrap_or_else(|e| panic!("starting a throwaway PostgreSQL: {e}"))
    }

    /// A server of our own with fsync and full-page writes on, as in production: for
    /// tests of what survives a crash, where the disk's answer must be the real one.
    pub fn durable() -> Postgres {
        Postgres::start(true).unwrap_or_else(|e| panic!("starting a durable PostgreSQL: {e}"))
    }

    /// Puts `lines` before the server's pg_hba.conf entries (the first match wins) and
    /// reloads it. Only for a server of our own.
    pub fn prepend_hba(&self, lines: &str) {
        let dir = self.dir.as_ref().expect("pg_hba.conf of a server of our own");
        let hba = dir.join("data").join("pg_hba.conf");
        let old = std::fs::read_to_string(&hba).expect("reading pg_hba.conf");
        std::fs::write(&hba, format!("{lines}\n{old}")).expect("writing pg_hba.conf");
        let child = self.child.as_ref().expect("a running server");
        // SAFETY: signalling our own child by pid; SIGHUP makes postgres reload its files.
        unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    }

    fn start(durable: bool) -> Result<Postgres, String> {
        let template = template()?;
        let user = process::unprivileged_user();
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            let dir = process::temp_dir("percore-pg");
            copy_dir(template, &dir.join("data"))?;
            process::chown_recursive(&dir, user)?;
            let port = process::free_port();
            match spawn_server(&dir, port, durable) {
                Ok(child) => {
                    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
                    return Ok(Postgres {
                        url,
                        port,
                        child: Some(child),
                        dir: Some(dir),
                        durable,
                    });
                }
                Err(e) => last_error = e,
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
        Err(format!(
            "postgres did not start after {START_ATTEMPTS} attempts; last log:\n{last_error}"
        ))
    }

    /// A streaming replica of this server: `pg_basebackup -R` into a directory of its own,
    /// started on a second port (hot standby, read-only). Only for a server of our own.
    pub fn replica(&self) -> Postgres {
        self.start_replica()
            .unwrap_or_else(|e| panic!("starting a streaming replica: {e}"))
    }

    fn start_replica(&self) -> Result<Postgres, String> {
        if self.dir.is_none() {
            return Err("TEST_DATABASE_URL servers get no replica: it needs a server of our own".into());
        }
        let user = process::unprivileged_user();
        let dir = process::temp_dir("percore-pg-replica");
        process::chown_recursive(&dir, user)?;
        let mut command = Command::new(process::postgres_binary("pg_basebackup")?);
        command
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-D"])
            .arg(dir.join("data"))
            // -R writes standby.signal and primary_conninfo: it starts as a streaming replica.
            .args(["-R", "-X", "stream", "--no-sync", "-c", "fast"])
            .stdin(Stdio::null());
        configure(&mut command, user, true);
        let output = command.output().map_err(|e| format!("running pg_basebackup: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "pg_basebackup failed: {}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let port = process::free_port();
        let child = spawn_server(&dir, port, false)?;
        Ok(Postgres {
            durable: false,
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            port,
            child: Some(child),
            dir: Some(dir),
        })
    }

    /// Starts the server again on the same port and data after `kill`.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart after kill");
        let dir = self.dir.clone().expect("restart needs a server of our own");
        self.child =
            Some(spawn_server(&dir, self.port, self.durable).unwrap_or_else(|e| panic!("restarting postgres: {e}")));
    }

    /// Stops the server abruptly (like `pg_ctl stop -m immediate`), keeping its data dir.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGQUIT) };
            let _ = child.wait();
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.kill();
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Runs `postgres` on `dir/data` and waits until it accepts connections.
fn spawn_server(dir: &Path, port: u16, durable: bool) -> Result<Child, String> {
    let log = dir.join("postgres.log");
    let _ = std::fs::remove_file(&log);
    let mut command = Command::new(process::postgres_binary("postgres")?);
    command
        .arg("-D")
        .arg(dir.join("data"))
        .args(["-p", &port.to_string()])
        .args(["-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="])
        // fsync off unless durable: nothing waits for the disk. synchronous_commit stays on,
        // so a commit's WAL reaches the OS before it returns and survives `kill` (an
        // immediate shutdown) as it would a crash; only losing the machine could lose it.
        .args(match durable {
            true => ["-c", "fsync=on", "-c", "full_page_writes=on"],
            false => ["-c", "fsync=off", "-c", "full_page_writes=off"],
        })
        .args(["-c", "max_connections=200", "-c", "shared_buffers=32MB"])
        // The benchmark driver's test counts statements with pg_stat_statements.
        .args(["-c", "shared_preload_libraries=pg_stat_statements"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).map_err(|e| e.to_string())?);
    configure(&mut command, process::unprivileged_user(), true);
    let mut child = command.spawn().map_err(|e| format!("spawning postgres: {e}"))?;
    let ready = process::wait_until(START_TIMEOUT, || {
        log_says_ready(&log) || child.try_wait().ok().flatten().is_some()
    });
    if ready && child.try_wait().ok().flatten().is_none() && process::port_open(port) {
        return Ok(child);
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(std::fs::read_to_string(&log).unwrap_or_default())
}

fn log_says_ready(log: &Path) -> bool {
    // A primary says "ready to accept connections", a standby "… read-only connections".
    std::fs::read_to_string(log).is_ok_and(|text| text.contains("ready to accept"))
}

/// One initdb per machine and PostgreSQL version, reused by copying: initdb costs seconds,
/// a copy milliseconds. Built in a unique directory and renamed into place, so concurrent
/// test processes never see a half-made template.
fn template() -> Result<&'static Path, String> {
    static TEMPLATE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    TEMPLATE
        .get_or_init(|| {
            let initdb = process::postgres_binary("initdb")?;
            let version = Command::new(&initdb)
                .arg("--version")
                .output()
                .map(|o| {
                    let text = String::from_utf8_lossy(&o.stdout).into_owned();
                    let version = text
                        .split_whitespace()
                        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))
                        .unwrap_or("x");
                    version
                        .chars()
                        .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
                        .collect::<String>()
                })
                .map_err(|e| format!("initdb --version: {e}"))?;
            // SAFETY: geteuid has no preconditions.
            let uid = unsafe { libc::geteuid() };
            let path = std::env::temp_dir().join(format!("percore-pg-template-{version}-{uid}"));
            if path.join("PG_VERSION").exists() {
                return Ok(path);
            }
            let building = process::temp_dir("percore-pg-template-build");
            let user = process::unprivileged_user();
            process::chown_recursive(&building, user)?;
            init_cluster(&building.join("data"), user)?;
            if std::fs::rename(building.join("data"), &path).is_err() && !path.join("PG_VERSION").exists() {
                return Err(format!("could not move the template into {}", path.display()));
            }
            let _ = std::fs::remove_dir_all(&building);
            Ok(path)
        })
        .as_ref()
        .map(PathBuf::as_path)
        .map_err(Clone::clone)
}

/// `initdb` with trust auth for a superuser named `postgres`.
pub(crate) fn init_cluster(data: &Path, user: Option<(u32, u32)>) -> Result<(), String> {
    let mut command = Command::new(process::postgres_binary("initdb")?);
    command
        .arg("-D")
        .arg(data)
        .args([
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ])
        .stdin(Stdio::null());
    configure(&mut command, user, true);
    let output = command.output().map_err(|e| format!("running initdb: {e}"))?;
    if !output.status.success() {
        return Err(format!("initdb failed: {}", String::from_utf8_lossy(&output.stderr)));
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), String> {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .map_err(|e| format!("cp: {e}"))?;
    status
        .success()
        .then_some(())
        .ok_or_else(|| format!("copying {} failed", from.display()))
}
