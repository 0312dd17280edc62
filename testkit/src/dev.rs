//! The dev default: a Postgres and a Redis under `./var/`, created on first use, kept and
//! left running between runs of `percore`, so data survives restarts and start-up is fast.
//! Their ports are chosen once and remembered in `var/ports`.

use crate::postgres::init_cluster;
use crate::process::{self, configure_on};
use crate::redis::ping;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

pub struct DevServices {
    pub database_url: String,
    pub redis_url: String,
}

/// Starts (or reuses) the dev services; when `cpus` is not empty, new server processes are
/// confined to those CPUs so that they stay off the shards' cores.
pub fn ensure(var: &Path, cpus: &[usize]) -> Result<DevServices, String> {
    std::fs::create_dir_all(var).map_err(|e| format!("creating {}: {e}", var.display()))?;
    let var = var.canonicalize().map_err(|e| e.to_string())?;
    let (pg_port, redis_port) = ports(&var)?;
    ensure_postgres(&var, pg_port, cpus)?;
    ensure_redis(&var, redis_port, cpus)?;
    Ok(DevServices {
        database_url: format!("postgres://postgres@127.0.0.1:{pg_port}/postgres"),
        redis_url: format!("redis://127.0.0.1:{redis_port}/0"),
    })
}

fn ports(var: &Path) -> Result<(u16, u16), String> {
    let file = var.join("ports");
    if let Ok(text) = std::fs::read_to_string(&file) {
        let mut numbers = text.split_whitespace().filter_map(|n| n.parse::<u16>().ok());
        if let (Some(pg), Some(redis)) = (numbers.next(), numbers.next()) {
            return Ok((pg, redis));
        }
    }
    let chosen = (process::free_port(), process::free_port());
    std::fs::write(&file, format!("{} {}\n", chosen.0, chosen.1)).map_err(|e| e.to_string())?;
    Ok(chosen)
}

fn ensure_postgres(var: &Path, port: u16, cpus: &[usize]) -> Result<(), String> {
    if process::port_open(port) {
        return Ok(());
    }
    let user = process::unprivileged_user();
    let data = var.join("pg");
    if !data.join("PG_VERSION").exists() {
        let _ = std::fs::remove_dir_all(&data);
        std::fs::create_dir_all(&data).map_err(|e| e.to_string())?;
        process::chown_recursive(&data, user)?;
        init_cluster(&data, user)?;
    }
    let log = var.join("pg.log");
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| e.to_string())?;
    process::chown_recursive(&log, user)?;
    let mut command = Command::new(process::postgres_binary("pg_ctl")?);
    command
        .arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(&log)
        .arg("-o")
        .arg(format!(
            // pg_stat_statements: the benchmark driver counts statements with it.
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' \
             -c shared_preload_libraries=pg_stat_statements"
        ))
        .args(["-w", "-t", "60", "start"])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    // Kept running after percore exits: no parent-death signal here.
    configure_on(&mut command, user, false, cpus);
    let output = command.output().map_err(|e| format!("pg_ctl: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "pg_ctl start failed (see {}): {}",
            log.display(),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(())
}

fn ensure_redis(var: &Path, port: u16, cpus: &[usize]) -> Result<(), String> {
    if ping(port) {
        return Ok(());
    }
    let dir = var.join("redis");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let binary = process::on_path("redis-server").ok_or("redis-server not found: apt-get install redis-server")?;
    let mut command = Command::new(binary);
    configure_on(&mut command, None, false, cpus);
    let status = command
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--daemonize",
            "yes",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(&dir)
        .arg("--pidfile")
        .arg(dir.join("redis.pid"))
        .arg("--logfile")
        .arg(dir.join("redis.log"))
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("redis-server: {e}"))?;
    if !status.success() || !process::wait_until(Duration::from_secs(10), || ping(port)) {
        return Err(format!(
            "redis-server did not start; see {}",
            dir.join("redis.log").display()
        ));
    }
    Ok(())
}

/// Stops the dev services under `var` (they are otherwise left running between runs).
pub fn stop(var: &Path) -> Result<(), String> {
    let data = var.join("pg");
    if data.join("postmaster.pid").exists() {
        let mut command = Command::new(process::postgres_binary("pg_ctl")?);
        command
            .arg("-D")
            .arg(&data)
            .args(["-m", "fast", "-w", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        configure_on(&mut command, process::unprivileged_user(), false, &[]);
        let output = command.output().map_err(|e| format!("pg_ctl stop: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "pg_ctl stop failed: {}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
    }
    let pid_file = var.join("redis").join("redis.pid");
    if let Ok(pid) = std::fs::read_to_string(&pid_file)
        && let Ok(pid) = pid.trim().parse::<i32>()
    {
        // SAFETY: sending SIGTERM to the pid redis-server wrote for itself.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        process::wait_until(Duration::from_secs(10), || !pid_file.exists());
    }
    Ok(())
}
