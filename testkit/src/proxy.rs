//! A TCP proxy between percore and a service that fails the way networks do:
//! - `blackhole`: it accepts and reads but passes nothing on, as a dead network or a hung
//!   server does (the peer sees no error, only silence), on open connections and new ones;
//!   `heal` forwards again on new connections (old ones stay silent, as behind a real
//!   partition whose state was lost);
//! - `cut_half_open`: the open connections' far ends are closed while their near ends stay
//!   open and silent (a peer that vanished without a FIN reaching us); new ones forward;
//! - `reset`: the open connections are reset (RST) on both sides;
//! - `delay`: every chunk waits this long before it is passed on, both ways.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

pub struct FaultProxy {
    pub port: u16,
    state: Arc<State>,
}

struct State {
    /// New connections are swallowed while set.
    blackhole: AtomicBool,
    /// Bumped by each fault: a connection forwards only while the epoch it started in holds.
    epoch: AtomicU64,
    delay_ms: AtomicU64,
    /// Open forwarding connections: (id, client side, upstream side).
    open: Mutex<Vec<(u64, TcpStream, TcpStream)>>,
    next_id: AtomicU64,
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
            delay_ms: AtomicU64::new(0),
            open: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
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

    /// Every open connection goes half-open: the service sees it closed, the client sees
    /// nothing at all (no FIN, no RST, no answer). New connections forward.
    pub fn cut_half_open(&self) {
        self.state.epoch.fetch_add(1, Ordering::SeqCst);
        for (_, _, upstream) in self.take_open() {
            let _ = upstream.shutdown(Shutdown::Both);
        }
    }

    /// Every open connection is reset, both sides. New connections forward.
    pub fn reset(&self) {
        self.state.epoch.fetch_add(1, Ordering::SeqCst);
        for (_, client, upstream) in self.take_open() {
            for side in [&client, &upstream] {
                linger_zero(side);
                // Wakes the pumps; when they drop the socket, the zero linger sends RST.
                let _ = side.shutdown(Shutdown::Read);
            }
        }
    }

    /// Every chunk, either way, waits `delay` before it is passed on (zero: none).
    pub fn delay(&self, delay: Duration) {
        self.state.delay_ms.store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Forwarding connections open now.
    pub fn open_connections(&self) -> usize {
        self.state.open.lock().expect("proxy lock").len()
    }

    fn take_open(&self) -> Vec<(u64, TcpStream, TcpStream)> {
        std::mem::take(&mut *self.state.open.lock().expect("proxy lock"))
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn linger_zero(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we hold, with a correctly sized value.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
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
    let clone = |s: &TcpStream| s.try_clone().expect("clone");
    let id = state.next_id.fetch_add(1, Ordering::SeqCst);
    let registered = (id, clone(&client), clone(&upstream));
    state.open.lock().expect("proxy lock").push(registered);
    let (client_read, upstream_read) = (clone(&client), clone(&upstream));
    let there = {
        let state = state.clone();
        thread::spawn(move || pump(client_read, upstream, epoch, state))
    };
    pump(upstream_read, client, epoch, state.clone());
    let _ = there.join();
    state
        .open
        .lock()
        .expect("proxy lock")
        .retain(|(open, _, _)| *open != id);
}

/// Copies `from` to `to` while the connection's epoch holds; after a fault, reads and
/// drops. Ends when `from` ends.
fn pump(mut from: TcpStream, mut to: TcpStream, epoch: u64, state: Arc<State>) {
    let mut buf = [0u8; 16 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let delay_ms = state.delay_ms.load(Ordering::SeqCst);
        if delay_ms > 0 {
            thread::sleep(Duration::from_millis(delay_ms));
        }
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
