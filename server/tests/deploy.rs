//! What `deploy/` ships works: the systemd units pass `systemd-analyze verify`, and the
//! HAProxy example, run for real, spreads clients over two instances and routes around a
//! dead one.

mod common;
use std::process::Command;

/// A shipped unit's text, after checking it has each of `directives`.
fn shipped_unit(file: &str, directives: &[&str]) -> String {
    let unit = std::fs::read_to_string(format!("{}/../deploy/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    for directive in directives {
        assert!(unit.contains(directive), "{file} lacks {directive}");
    }
    unit
}

/// Runs `systemd-analyze verify` on `verified` (a unit, or an instance of a template)
/// with `unit` written as `file`; returns its complaints about our units.
fn systemd_verify(unit: &str, file: &str, verified: &str) -> Vec<String> {
    // verify checks that ExecStart exists: point it at the binary under test.
    let dir = std::env::temp_dir().join(format!("percore-unit-{}-{file}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(file),
        unit.replace("/usr/local/bin/percore", env!("CARGO_BIN_EXE_percore")),
    )
    .unwrap();
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.join(verified))
        .output()
        .expect("systemd-analyze (apt-get install systemd)");
    let _ = std::fs::remove_dir_all(&dir);
    let complaints = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "systemd-analyze verify {verified}: {complaints}"
    );
    complaints
        .lines()
        .filter(|l| l.contains("percore"))
        .map(str::to_string)
        .collect()
}

#[test]
fn systemd_unit_verifies() {
    let unit = shipped_unit(
        "percore.service",
        &[
            "Type=notify",
            "WatchdogSec=",
            "Restart=on-failure",
            "LimitNOFILE=",
            "LimitMEMLOCK=",
            "TimeoutStopSec=",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "PrivateTmp=yes",
            "User=percore",
        ],
    );
    let complaints = systemd_verify(&unit, "percore.service", "percore.service");
    assert!(
        complaints.is_empty(),
        "systemd-analyze complains about the unit: {complaints:?}"
    );
}

#[test]
fn the_socket_unit_and_its_service_verify_together() {
    let socket = shipped_unit("percore.socket", &["ListenStream=", "Backlog=", "ReusePort=no"]);
    let service = shipped_unit(
        "percore.service",
        &["ExecReload=/bin/kill -HUP $MAINPID", "percore.socket"],
    );
    let dir = std::env::temp_dir().join(format!("percore-socket-units-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("percore.socket"), socket).unwrap();
    std::fs::write(
        dir.join("percore.service"),
        service.replace("/usr/local/bin/percore", env!("CARGO_BIN_EXE_percore")),
    )
    .unwrap();
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.join("percore.socket"))
        .output()
        .expect("systemd-analyze (apt-get install systemd)");
    let _ = std::fs::remove_dir_all(&dir);
    let complaints = String::from_utf8_lossy(&output.stderr);
    let ours: Vec<&str> = complaints.lines().filter(|l| l.contains("percore")).collect();
    assert!(
        output.status.success() && ours.is_empty(),
        "systemd-analyze verify percore.socket: {complaints}"
    );
}

#[test]
fn the_template_unit_verifies_for_an_instance() {
    let unit = shipped_unit(
        "percore@.service",
        &[
            "--config /etc/percore/%i.toml",
            "ExecReload=/bin/kill -HUP $MAINPID",
            "StateDirectory=percore/%i",
            "Type=notify",
            "WatchdogSec=",
        ],
    );
    let complaints = systemd_verify(&unit, "percore@.service", "percore@a.service");
    assert!(
        complaints.is_empty(),
        "systemd-analyze complains about the template: {complaints:?}"
    );
}

/// The shipped HAProxy example, pointed at two instances on `ports` and listening on `front`.
fn haproxy_config(front: u16, ports: [u16; 2]) -> String {
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/haproxy.cfg")).unwrap();
    assert!(
        shipped.contains("maxconn 100000")
            && shipped.contains("bind :80")
            && shipped.contains("127.0.0.1:8081")
            && shipped.contains("127.0.0.1:8082")
    );
    shipped
        // The test process's open-file limit, not a production one.
        .replace("maxconn 100000", "maxconn 1000")
        .replace(
            "/run/haproxy/admin.sock",
            &std::env::temp_dir()
                .join(format!("percore-haproxy-{front}.sock"))
                .to_string_lossy(),
        )
        .replace("bind :80", &format!("bind 127.0.0.1:{front}"))
        .replace("127.0.0.1:8081", &format!("127.0.0.1:{}", ports[0]))
        .replace("127.0.0.1:8082", &format!("127.0.0.1:{}", ports[1]))
}

fn served(server: &common::Server) -> u64 {
    common::metric_sum(
        &server.get("/metrics").text(),
        "percore_http_requests_total",
        "route=\"healthz\"",
    )
}

#[test]
fn the_haproxy_example_spreads_clients_over_two_instances_and_routes_around_a_dead_one() {
    let services = common::Services::start();
    let ports = [common::free_port(), common::free_port()];
    let mut instances: Vec<common::Server> = ports
        .iter()
        .map(|&port| {
            let text = common::Tuning {
                server: "shards = 1\ntrusted_proxies = [\"127.0.0.1\"]",
                extra: "[cluster]\nexpected_instances = 2\n",
                ..common::Tuning::new(port, &services)
            }
            .render();
            common::Server::start_with_config(port, &text, &[])
        })
        .collect();
    let front = common::free_port();
    let dir = std::env::temp_dir().join(format!("percore-haproxy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("haproxy.cfg");
    std::fs::write(&config, haproxy_config(front, ports)).unwrap();
    let check = Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(&config)
        .output()
        .expect("haproxy (apt-get install haproxy)");
    assert!(
        check.status.success(),
        "haproxy -c: {}",
        String::from_utf8_lossy(&check.stdout)
    );
    // Killed on drop, so a failing assertion leaves no proxy behind.
    struct Proxy(std::process::Child);
    impl Drop for Proxy {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let proxy = Proxy(
        Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .spawn()
            .unwrap(),
    );
    let through = |path: &str| -> Option<u16> {
        let stream = std::net::TcpStream::connect(("127.0.0.1", front)).ok()?;
        stream.set_read_timeout(Some(std::time::Duration::from_secs(5))).ok()?;
        let raw = format!("GET {path} HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n");
        std::io::Write::write_all(&mut &stream, raw.as_bytes()).ok()?;
        common::ResponseReader::new(&stream).next(false).map(|r| r.status)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while through("/healthz") != Some(200) {
        assert!(std::time::Instant::now() < deadline, "haproxy never served");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let before = [served(&instances[0]), served(&instances[1])];
    for _ in 0..40 {
        assert_eq!(through("/healthz"), Some(200));
    }
    let after = [served(&instances[0]), served(&instances[1])];
    assert!(
        after[0] > before[0] + 5 && after[1] > before[1] + 5,
        "both instances served: {before:?} → {after:?}"
    );
    // One instance gone: its health checks fail and the other serves everything.
    let mut gone = instances.remove(0);
    gone.signal(libc::SIGTERM);
    gone.wait_exit(std::time::Duration::from_secs(10));
    std::thread::sleep(std::time::Duration::from_secs(3));
    let statuses: Vec<Option<u16>> = (0..20).map(|_| through("/healthz")).collect();
    drop(proxy);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(statuses.iter().all(|s| *s == Some(200)), "{statuses:?}");
}
