//! Socket activation: percore serves on a listening socket someone else holds (systemd's
//! `percore.socket`; here the test itself, passing it as descriptor 3 with LISTEN_FDS and
//! LISTEN_PID). While percore restarts, the kernel queues new connections on that socket
//! and the next process answers them: under load, ten SIGTERM-then-start cycles refuse or
//! reset no connection and leave no request unanswered.

mod common;
use common::{Server, Services, Tuning};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

#[derive(Default)]
struct Tally {
    answered_200: AtomicU64,
    other_status: AtomicU64,
    /// connect() failed: refused, or reset before it completed.
    refused: AtomicU64,
    /// Written (or half written) and never answered: a reset or a close.
    unanswered: AtomicU64,
}

/// Clients sending GET /json back to back on keep-alive connections, reconnecting after a
/// `Connection: close`, until `stop`.
fn load(port: u16, clients: usize, tally: &Arc<Tally>, stop: &Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<()>> {
    (0..clients)
        .map(|_| {
            let (tally, stop) = (tally.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut open: Option<std::net::TcpStream> = None;
                while !stop.load(Ordering::Relaxed) {
                    let stream = match open.take() {
                        Some(stream) => stream,
                        None => match std::net::TcpStream::connect(("127.0.0.1", port)) {
                            Ok(stream) => {
                                // Longer than a restart: a queued connection waits for the next process.
                                stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                                stream
                            }
                            Err(_) => {
                                tally.refused.fetch_add(1, Ordering::Relaxed);
                                std::thread::sleep(Duration::from_millis(10));
                                continue;
                            }
                        },
                    };
                    let answer = std::io::Write::write_all(&mut &stream, b"GET /json HTTP/1.1\r\nHost: t\r\n\r\n")
                        .ok()
                        .and_then(|()| common::ResponseReader::new(&stream).next(false));
                    let Some(response) = answer else {
                        tally.unanswered.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let counter = if response.status == 200 {
                        &tally.answered_200
                    } else {
                        &tally.other_status
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    if response.header("Connection") != Some("close") {
                        open = Some(stream);
                    }
                }
            })
        })
        .collect()
}

#[test]
fn ten_restarts_on_a_held_socket_refuse_no_one_and_answer_every_request() {
    let services = Services::start();
    let listening = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    // As percore.socket's Backlog=: room for the connections that arrive during a restart.
    // SAFETY: listen on a socket this test owns.
    assert_eq!(unsafe { libc::listen(listening.as_raw_fd(), 4096) }, 0);
    let port = listening.local_addr().unwrap().port();
    let text = Tuning {
        server: "shards = 2\nshutdown_timeout_ms = 5000",
        ..Tuning::new(port, &services)
    }
    .render();
    let mut server = Server::start_activated(port, &text, &listening);
    let (tally, stop) = (Arc::new(Tally::default()), Arc::new(AtomicBool::new(false)));
    let clients = load(port, 6, &tally, &stop);
    for cycle in 0..10 {
        std::thread::sleep(Duration::from_millis(300));
        server.signal(libc::SIGTERM);
        let status = server.wait_exit(Duration::from_secs(10)).expect("exits after SIGTERM");
        assert_eq!(status.code(), Some(0), "cycle {cycle}: {}", server.stderr());
        drop(server);
        server = Server::start_activated(port, &text, &listening);
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
    eprintln!(
        "ten restarts: {} answered 200, {} other, {} refused, {} unanswered",
        count(&tally.answered_200),
        count(&tally.other_status),
        count(&tally.refused),
        count(&tally.unanswered)
    );
    assert_eq!(count(&tally.refused), 0, "connections refused or reset");
    assert_eq!(count(&tally.unanswered), 0, "requests left unanswered");
    assert_eq!(count(&tally.other_status), 0, "answers other than 200");
    assert!(count(&tally.answered_200) > 1_000, "the load ran");
}
