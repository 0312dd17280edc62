//! Test support: the real `percore` binary against real Postgres and Redis, and raw TCP.
#![allow(dead_code)]

pub mod jobs;
pub mod receivers;

use percore_testkit::{Postgres, Redis};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Services {
    pub postgres: Postgres,
    pub redis: Redis,
}

impl Services {
    pub fn start() -> Services {
        Services {
            postgres: Postgres::throwaway(),
            redis: Redis::throwaway(),
        }
    }
}

pub struct Server {
    pub child: Child,
    pub port: u16,
    pub dir: PathBuf,
    /// Removed on drop unless a test keeps it for a second run.
    pub keep_dir: bool,
}

/// A tuning.toml for tests: bench routes on, the given services, and these sections'
/// keys. Override fields with struct-update syntax: `Tuning { server: "shards = 1",
/// ..Tuning::new(port, &services) }`.
pub struct Tuning<'a> {
    pub port: u16,
    pub database_url: &'a str,
    pub redis_url: &'a str,
    pub server: &'a str,
    pub http: &'a str,
    pub workers: &'a str,
    /// More `[database]` keys, e.g. "replicas = [\"postgres://…\"]".
    pub database: &'a str,
    /// More `[redis]` keys.
    pub redis: &'a str,
    /// Whole extra sections, e.g. "[identity]\nlogin_burst = 3".
    pub extra: &'a str,
}

impl<'a> Tuning<'a> {
    pub fn new(port: u16, services: &'a Services) -> Tuning<'a> {
        Tuning {
            port,
            database_url: &services.postgres.url,
            redis_url: &services.redis.url,
            server: "shards = 2\nshutdown_timeout_ms = 5000",
            http: "",
            // Cheap Argon2 so tests that hash stay fast.
            workers: "threads = 2\nargon2_memory_kib = 4096\nargon2_iterations = 1",
            database: "",
            redis: "",
            extra: "",
        }
    }

    pub fn render(&self) -> String {
        let Tuning {
            port,
            database_url,
            redis_url,
            server,
            http,
            workers,
            database,
            redis,
            extra,
        } = self;
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n{server}\n[http]\n{http}\n\
             [database]\nurl = \"{database_url}\"\npool_wait_ms = 300\nauto_migrate = true\n{database}\n\
             [redis]\nurl = \"{redis_url}\"\n{redis}\n[workers]\n{workers}\n[bench]\nroutes = true\n[log]\nlevel = \"warn\"\n{extra}\n"
        )
    }

    /// Starts `percore` with this tuning on its port and waits for /healthz.
    pub fn start(&self) -> Server {
        Server::start_with_config(self.port, &self.render(), &[])
    }
}

impl Server {
    /// Starts `percore` with `config_text` and waits for /healthz.
    pub fn start_with_config(port: u16, config_text: &str, envs: &[(&str, &str)]) -> Server {
        Server::start_limited(port, config_text, envs, None)
    }

    /// As `start_with_config`, with the process's open-file limit set to `nofile`.
    pub fn start_limited(port: u16, config_text: &str, envs: &[(&str, &str)], nofile: Option<u64>) -> Server {
        Server::spawn(port, config_text, envs, nofile, None)
    }

    /// As `start_with_config`, serving on `listening` (a socket this test holds) the way
    /// systemd passes one: as descriptor 3, with LISTEN_FDS=1 and LISTEN_PID its pid.
    pub fn start_activated(port: u16, config_text: &str, listening: &std::net::TcpListener) -> Server {
        use std::os::fd::AsRawFd;
        Server::spawn(port, config_text, &[], None, Some(listening.as_raw_fd()))
    }

    fn spawn(port: u16, config_text: &str, envs: &[(&str, &str)], nofile: Option<u64>, passed: Option<i32>) -> Server {
        use std::os::unix::process::CommandExt;
        let dir = std::env::temp_dir().join(format!("percore-test-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config_path = dir.join("tuning.toml");
        std::fs::write(&config_path, config_text).unwrap();
        let mut command = match passed {
            // `exec` keeps the shell's pid, which is what LISTEN_PID must name.
            Some(_) => {
                let mut command = Command::new("sh");
                command
                    .args(["-c", "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\""])
                    .arg(env!("CARGO_BIN_EXE_percore"));
                command
            }
            None => Command::new(env!("CARGO_BIN_EXE_percore")),
        };
        if let Some(fd) = passed {
            // SAFETY: dup2 is async-signal-safe; the new descriptor 3 is not close-on-exec.
            unsafe {
                command.pre_exec(move || {
                    // dup2 onto itself keeps close-on-exec: clear it either way.
                    if libc::dup2(fd, 3) < 0 || libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        command
            .arg("--config")
            .arg(&config_path)
            .current_dir(&dir)
            .env_remove("PERCORE_DATABASE_URL")
            .env_remove("PERCORE_REDIS_URL")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("stdout.log")).unwrap())
            .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap());
        for (key, value) in envs {
            command.env(key, value);
        }
        if let Some(nofile) = nofile {
            let limit = libc::rlimit {
                rlim_cur: nofile,
                rlim_max: nofile,
            };
            // SAFETY: setrlimit is async-signal-safe and `limit` is captured by value.
            unsafe {
                command.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = command.spawn().expect("spawning percore");
        let mut server = Server {
            child,
            port,
            dir,
            keep_dir: false,
        };
        server.wait_healthy(Duration::from_secs(30));
        server
    }

    /// Two shards on the given services, plus `http_extra` keys in `[http]`.
    pub fn start(services: &Services, http_extra: &str) -> Server {
        let port = free_port();
        let text = Tuning {
            http: http_extra,
            ..Tuning::new(port, services)
        }
        .render();
        Server::start_with_config(port, &text, &[])
    }

    fn wait_healthy(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("percore exited early ({status}): {}", self.stderr());
            }
            if let Ok(stream) = TcpStream::connect(("127.0.0.1", self.port)) {
                // A socket the test holds (socket activation) accepts before percore is up:
                // the request waits in its queue for percore to start and answer it.
                stream.set_read_timeout(Some(limit)).unwrap();
                let response = request_on(&stream, "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
                if response.status == 200 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("percore did not become healthy: {}", self.stderr());
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    pub fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
    }

    /// One request on a fresh connection.
    pub fn get(&self, path: &str) -> Response {
        request_on(&self.connect(), &format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's resident memory (VmRSS), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Waits for exit; None if it did not exit within `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Sums the samples of a metric family across shards: lines starting with `prefix` and
/// containing `label_filter`.
/// `promtool check metrics` on a `/metrics` answer: Err with what it said unless it
/// passed in silence.
pub fn promtool_check_metrics(exposition: &[u8]) -> Result<(), String> {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install prometheus)");
    promtool.stdin.take().unwrap().write_all(exposition).unwrap();
    let output = promtool.wait_with_output().unwrap();
    let complaints = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() && complaints.trim().is_empty() {
        Ok(())
    } else {
        Err(complaints)
    }
}

pub fn metric_sum(text: &str, prefix: &str, label_filter: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(prefix) && l.contains(label_filter))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    /// The `error.code` of a JSON error body.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error.code in {}", self.text()))
            .to_string()
    }
}

/// Sends `raw` on `stream` and reads one response.
pub fn request_on(stream: &TcpStream, raw: &str) -> Response {
    let mut writer = stream;
    writer.write_all(raw.as_bytes()).unwrap();
    let mut reader = ResponseReader::new(stream);
    reader
        .next(false)
        .unwrap_or_else(|| panic!("no response to {:?}", raw.lines().next().unwrap_or_default()))
}

/// Reads responses one by one from a stream, keeping leftover bytes between them.
pub struct ResponseReader<'a> {
    stream: &'a TcpStream,
    buffer: Vec<u8>,
}

impl<'a> ResponseReader<'a> {
    pub fn new(stream: &'a TcpStream) -> Self {
        ResponseReader {
            stream,
            buffer: Vec::new(),
        }
    }

    /// The next response, or None at end of stream. `head_request`: no body follows.
    pub fn next(&mut self, head_request: bool) -> Option<Response> {
        let head_end = loop {
            if let Some(i) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if !self.fill() {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buffer[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.to_string(), v.trim().to_string())
            })
            .collect();
        self.buffer.drain(..head_end);
        let length: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse().unwrap())
            .unwrap_or(0);
        let length = if head_request || status == 100 { 0 } else { length };
        while self.buffer.len() < length {
            if !self.fill() {
                panic!("stream ended inside a body");
            }
        }
        let body = self.buffer.drain(..length).collect();
        Some(Response { status, headers, body })
    }

    /// True if the peer closes (EOF or reset) with no further bytes; false if it sends
    /// more or stays open past the stream's read timeout.
    pub fn closed(&mut self) -> bool {
        if !self.buffer.is_empty() {
            return false;
        }
        let mut chunk = [0u8; 1024];
        match (&*self.stream).read(&mut chunk) {
            Ok(0) => true,
            Ok(n) => {
                self.buffer.extend_from_slice(&chunk[..n]);
                false
            }
            Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
        }
    }

    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match (&*self.stream).read(&mut chunk) {
            Ok(0) => false,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                panic!(
                    "timed out waiting for a response; got so far: {:?}",
                    String::from_utf8_lossy(&self.buffer)
                )
            }
            Err(_) => false,
            Ok(n) => {
                self.buffer.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }
}

/// A raw HTTP/1.1 request with an optional bearer token and JSON body.
pub fn api_request(method: &str, path: &str, token: Option<&str>, json: Option<&serde_json::Value>) -> String {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: t\r\n");
    if let Some(token) = token {
        raw.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    match json {
        Some(value) => {
            let body = value.to_string();
            raw.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ));
        }
        None => raw.push_str("Content-Length: 0\r\n\r\n"),
    }
    raw
}

/// One API call on a fresh connection to `port`, for threads that do not hold the `Server`.
pub fn call_on_port(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    json: Option<&serde_json::Value>,
) -> Response {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    request_on(&stream, &api_request(method, path, token, json))
}

impl Server {
    /// One API call on a fresh connection.
    pub fn call(&self, method: &str, path: &str, token: Option<&str>, json: Option<&serde_json::Value>) -> Response {
        request_on(&self.connect(), &api_request(method, path, token, json))
    }

    /// Registers a user with a unique email and logs in; returns (user id, token).
    pub fn sign_up(&self, name: &str) -> (i64, String) {
        let email = unique_email(name);
        let password = "correct horse battery";
        let created = self.call(
            "POST",
            "/v1/auth/register",
            None,
            Some(&serde_json::json!({"email": email, "password": password, "name": name})),
        );
        assert_eq!(created.status, 201, "register: {}", created.text());
        let id = created.json()["id"].as_i64().unwrap();
        let login = self.call(
            "POST",
            "/v1/auth/login",
            None,
            Some(&serde_json::json!({"email": email, "password": password})),
        );
        assert_eq!(login.status, 200, "login: {}", login.text());
        (id, login.json()["token"].as_str().unwrap().to_string())
    }
}

/// An email no other test (or earlier run on a shared database) uses.
pub fn unique_email(name: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!(
        "{}.{}.{nanos}.{seq}@example.com",
        name.to_lowercase(),
        std::process::id()
    )
}
