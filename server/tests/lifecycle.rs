//! Start-up and shutdown of the real binary: configuration errors, the systemd notify
//! protocol over a real unix datagram socket, and SIGTERM while requests are in flight.

mod common;
use common::{ResponseReader, Server, Services};
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

fn run_with_config(text: &str, args: &[&str]) -> std::process::Output {
    let dir = std::env::temp_dir().join(format!("percore-cfg-{}-{}", std::process::id(), common::free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tuning.toml");
    std::fs::write(&path, text).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_percore"));
    command.args(args).arg(&path).current_dir(&dir);
    let output = command.output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    output
}

#[test]
fn an_unknown_key_exits_2_naming_the_key() {
    let output = run_with_config("[server]\nshardz = 2\n", &["--config"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("server.shardz") && stderr.contains("tuning.toml"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one message: {stderr}");
}

#[test]
fn negative_shards_exits_2_naming_the_key() {
    let output = run_with_config("[server]\nshards = -1\n", &["--config"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("server.shards"), "{stderr}");
}

#[test]
fn a_bad_value_found_by_validation_exits_2_naming_the_key() {
    let output = run_with_config("[database]\npool_wait_ms = 0\n", &["check-config"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("database.pool_wait_ms"));
}

#[test]
fn check_config_prints_the_effective_configuration() {
    let output = run_with_config("[server]\nshards = 3\n", &["check-config"]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("shards = 3"), "{stdout}");
    assert!(
        stdout.contains("body_bytes_max = 1048576"),
        "defaults are shown too: {stdout}"
    );
}

fn receive(socket: &UnixDatagram, wanted: &str, limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buffer) {
            let message = String::from_utf8_lossy(&buffer[..n]).into_owned();
            let found = message.lines().any(|l| l == wanted);
            seen.push(message);
            if found {
                return seen;
            }
        }
    }
    panic!("no {wanted} within {limit:?}; saw {seen:?}");
}

#[test]
fn systemd_notify_ready_watchdog_reloading_and_stopping() {
    let services = Services::start();
    let dir = std::env::temp_dir().join(format!("percore-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket_path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&socket_path);
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();

    let port = common::free_port();
    let text = common::Tuning::new(port, &services).render();
    let mut server = Server::start_with_config(
        port,
        &text,
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    receive(&socket, "READY=1", Duration::from_secs(10));
    // Pinged at half the interval while every shard ticks.
    receive(&socket, "WATCHDOG=1", Duration::from_secs(2));
    receive(&socket, "WATCHDOG=1", Duration::from_secs(2));
    // A reload: RELOADING=1 with the monotonic time systemd requires, then READY=1 once
    // every shard has applied it.
    server.signal(libc::SIGHUP);
    let seen = receive(&socket, "RELOADING=1", Duration::from_secs(5));
    let reloading = seen.last().unwrap();
    assert!(
        reloading
            .lines()
            .any(|l| l.starts_with("MONOTONIC_USEC=") && l[15..].parse::<u64>().is_ok()),
        "{reloading:?}"
    );
    receive(&socket, "READY=1", Duration::from_secs(5));
    server.signal(libc::SIGTERM);
    receive(&socket, "STOPPING=1", Duration::from_secs(5));
    let status = server.wait_exit(Duration::from_secs(10)).expect("exits after SIGTERM");
    assert_eq!(status.code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigterm_answers_every_request_already_read_and_exits_0() {
    let services = Services::start();
    // Costly hashes keep requests in flight on the two workers when the signal lands.
    let port = common::free_port();
    let text = common::Tuning {
        server: "shards = 2\nshutdown_timeout_ms = 8000",
        // No shedding: the queued hashes are the in-flight work this test needs.
        workers: "threads = 2\nwait_ms_max = 0\nargon2_memory_kib = 65536\nargon2_iterations = 4",
        ..common::Tuning::new(port, &services)
    }
    .render();
    let mut server = Server::start_with_config(port, &text, &[]);

    // A load that runs through the signal: pipelined batches of 8 on keep-alive
    // connections. Every response must be whole and 200, and every batch answered: it may
    // only be cut short right after a `Connection: close` answer (HTTP's way of saying
    // the rest was not processed), never by a close with no answer.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let stream = server.connect();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut answered = 0u64;
                let mut reader = ResponseReader::new(&stream);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if (&stream)
                        .write_all("GET /json HTTP/1.1\r\nHost: t\r\n\r\n".repeat(8).as_bytes())
                        .is_err()
                    {
                        panic!("a batch could not be sent after {answered} answers");
                    }
                    for _ in 0..8 {
                        match reader.next(false) {
                            Some(response) => {
                                assert_eq!(response.status, 200, "{}", response.text());
                                answered += 1;
                                if response.header("Connection") == Some("close") {
                                    assert!(reader.closed(), "open after Connection: close");
                                    return answered;
                                }
                            }
                            None => panic!("closed with no answer after {answered} answers"),
                        }
                    }
                }
                answered
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));

    let clients: Vec<_> = (0..8)
        .map(|i| {
            let stream = server.connect();
            (&stream)
                .write_all(
                    format!("POST /bench/hash HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\n\r\nsecre{i}").as_bytes(),
                )
                .unwrap();
            stream
        })
        .collect();
    // A keep-alive connection that is idle when the signal lands is closed after
    // drain_idle_ms, since no request came on it.
    let idle = server.connect();
    (&idle).write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut idle_reader = ResponseReader::new(&idle);
    assert_eq!(idle_reader.next(false).unwrap().status, 200);

    std::thread::sleep(Duration::from_millis(100));
    let signalled = Instant::now();
    server.signal(libc::SIGTERM);

    // Each shard notices the signal within one heartbeat; answers after that say close.
    let mut answered = Vec::new();
    for (i, stream) in clients.iter().enumerate() {
        let response = ResponseReader::new(stream)
            .next(false)
            .unwrap_or_else(|| panic!("request {i} was read but not answered"));
        assert_eq!(response.status, 200, "request {i}: {}", response.text());
        answered.push(response.header("Connection").map(str::to_string));
    }
    assert!(
        answered.iter().filter(|c| c.as_deref() == Some("close")).count() >= 4,
        "{answered:?}"
    );
    assert!(idle_reader.closed(), "idle connection left open while draining");
    let status = server
        .wait_exit(Duration::from_secs(8))
        .expect("exits within shutdown_timeout");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for worker in load {
        assert!(worker.join().expect("no load client saw a bad or torn response") > 0);
    }
    assert_eq!(status.code(), Some(0), "{}", server.stderr());
    assert!(signalled.elapsed() < Duration::from_secs(8));
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "still accepting after exit"
    );
}

#[test]
fn a_second_percore_on_the_same_port_refuses_to_start() {
    let services = Services::start();
    let first = Server::start(&services, "");
    let text = common::Tuning::new(first.port, &services).render();
    let output = run_with_config(&text, &["--config"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("already in use"), "{stderr}");
    assert_eq!(first.get("/healthz").status, 200, "the first keeps serving");
}

#[test]
fn a_deployment_that_would_exhaust_max_connections_refuses_to_start() {
    let services = Services::start();
    // The test Postgres allows 200 connections (3 reserved). Two shards × 6 + 13 job
    // threads + 2 = 27 per instance: 7 instances fit (189), 50 do not (1,350).
    let config = |instances: u64, port: u16| {
        common::Tuning {
            extra: &format!("[cluster]\nexpected_instances = {instances}\n"),
            ..common::Tuning::new(port, &services)
        }
        .render()
    };
    let refused = run_with_config(&config(50, common::free_port()), &["--config"]);
    assert!(!refused.status.success(), "started anyway");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("connection budget") && stderr.contains("expected_instances = 50") && stderr.contains("1350"),
        "{stderr}"
    );
    let port = common::free_port();
    let fits = Server::start_with_config(port, &config(7, port), &[]);
    assert_eq!(fits.get("/healthz").status, 200);
}
