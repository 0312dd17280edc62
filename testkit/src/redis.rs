//! A throwaway Redis server.

use crate::process::{self, configure};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const START_ATTEMPTS: usize = 5;
const START_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Redis {
    pub url: String,
    pub port: u16,
    child: Option<Child>,
    dir: Option<PathBuf>,
}

impl Redis {
    /// `TEST_REDIS_URL` if set, else a fresh server of our own.
    pub fn throwaway() -> Redis {
        if let Ok(url) = std::env::var("TEST_REDIS_URL") {
            let port = process::port_of_url(&url, 6379);
            return Redis {
                url,
                port,
                child: None,
                dir: None,
            };
        }
        Redis::start().unwrap_or_else(|e| panic!("starting a throwaway Redis: {e}"))
    }

    /// Always a server of our own, even when `TEST_REDIS_URL` is set: for tests that
    /// pause or kill it.
    pub fn own() -> Redis {
        Redis::start().unwrap_or_else(|e| panic!("starting a Redis of our own: {e}"))
    }

    fn start() -> Result<Redis, String> {
        for _ in 0..START_ATTEMPTS {
            let dir = process::temp_dir("percore-redis");
            let port = process::free_port();
            if let Ok(child) = spawn_server(&dir, port) {
                let url = format!("redis://127.0.0.1:{port}/0");
                return Ok(Redis {
                    url,
                    port,
                    child: Some(child),
                    dir: Some(dir),
                });
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
        Err(format!("redis-server did not start after {START_ATTEMPTS} attempts"))
    }

    /// Kills the server (SIGKILL), keeping its port for `restart`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port after `kill`.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart after kill");
        let dir = self.dir.clone().expect("restart needs a server of our own");
        self.child = Some(spawn_server(&dir, self.port).unwrap_or_else(|e| panic!("restarting redis: {e}")));
    }

    /// The server's pid, for tests that pause (SIGSTOP) or kill it.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

fn spawn_server(dir: &std::path::Path, port: u16) -> Result<Child, String> {
    let binary = process::on_path("redis-server").ok_or("redis-server not found: apt-get install redis-server")?;
    let mut command = Command::new(&binary);
    command
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    configure(&mut command, None, true);
    let mut child = command.spawn().map_err(|e| format!("spawning redis-server: {e}"))?;
    if process::wait_until(START_TIMEOUT, || {
        ping(port) || child.try_wait().ok().flatten().is_some()
    }) && child.try_wait().ok().flatten().is_none()
    {
        return Ok(child);
    }
    let _ = child.kill();
    let _ = child.wait();
    Err("redis-server did not answer PING".into())
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// True when a Redis on `port` answers PING.
pub fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok() && stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}
