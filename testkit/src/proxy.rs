//! A TCP proxy that can go silent: it forwards both ways until told to blackhole, then
//! accepts and reads but passes nothing on, as a dead network or a hung server does (the
//! peer sees no error, only silence). Healing forwards again on new connections; old ones
//! stay silent, as they would behind a real partition whose state was lost.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;

pub struct FaultProxy {
    pub port: u16,
    state: Arc<State>,
}

struct State {
    /// Silent since this epoch; connections accepted before keep their own verdict.
    blackhole: AtomicBool,
    /// Bumped by `blackhole`: a connection forwards only while the epoch it started in holds.
    epoch: AtomicU64,
    stop: AtomicBool,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `127.0.0.1:target_port`.
    pub fn start(target_port: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let state = Arc::new(State {
            blackhole: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let shared = state.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                if shared.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let shared = shared.clone();
                thread::spawn(move || serve(client, target_port, shared));
            }
        });
        FaultProxy { port, state }
    }

    /// From now on nothing passes, on open connections and new ones alike.
    pub fn blackhole(&self) {
        self.state.epoch.fetch_add(1, Ordering::SeqCst);
        self.state.blackhole.store(true, Ordering::SeqCst);
    }

    /// New connections forward again.
    pub fn heal(&self) {
        self.state.blackhole.store(false, Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(client: TcpStream, target_port: u16, state: Arc<State>) {
    let epoch = state.epoch.load(Ordering::SeqCst);
    let forwarding = !state.blackhole.load(Ordering::SeqCst);
    let upstream = if forwarding {
        TcpStream::connect(("127.0.0.1", target_port)).ok()
    } else {
        None
    };
    let Some(upstream) = upstream else {
        // Silent: swallow what the client sends until it gives up.
        swallow(client);
        return;
    };
    let (client_read, upstream_read) = (client.try_clone().expect("clone"), upstream.try_clone().expect("clone"));
    let there = {
        let state = state.clone();
        thread::spawn(move || pump(client_read, upstream, epoch, state))
    };
    pump(upstream_read, client, epoch, state);
    let _ = there.join();
}

/// Copies `from` to `to` while the connection's epoch holds; after a blackhole, reads and
/// drops. Ends when `from` ends.
fn pump(mut from: TcpStream, mut to: TcpStream, epoch: u64, state: Arc<State>) {
    let mut buf = [0u8; 16 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if state.epoch.load(Ordering::SeqCst) != epoch {
            continue;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    if state.epoch.load(Ordering::SeqCst) == epoch {
        let _ = to.shutdown(Shutdown::Write);
    }
}

fn swallow(mut stream: TcpStream) {
    let mut buf = [0u8; 16 << 10];
    while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
}
