//! Socket activation: serving on a listening socket systemd (`deploy/percore.socket`) or
//! another supervisor holds and passes down (`LISTEN_FDS`, `LISTEN_PID`, fd 3), so that
//! while percore restarts the kernel queues new connections and the next process accepts
//! them: none is refused.
//!
//! One socket, shared: one acceptor thread polls it and hands each connection to the shard
//! with the fewest open connections. Why not an accept per shard on the shared socket:
//! stopping would have to cancel accepts that io_uring may already have completed, and
//! the connection would be lost; here, once the acceptor stops (at SIGTERM), nothing is
//! taken from the queue, and what is queued waits for the next process. The socket is
//! never shut down: systemd still holds it. Why not one socket per shard: the unit would
//! have to know `server.shards`. The hand-off is a channel per shard, once per connection,
//! never per request (measured against SO_REUSEPORT listeners in bench/README.md).
//!
//! Runs on its own thread; the shards only receive.

use crate::api::state::Shared;
use futures::channel::mpsc;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The first passed descriptor (sd_listen_fds(3)).
const LISTEN_FDS_START: RawFd = 3;
/// How often the acceptor looks at the stop flag while no connection comes.
const STOP_CHECK: Duration = Duration::from_millis(20);

/// The listening socket passed to this process, if any. The variables are removed, so
/// that nothing this process starts believes the socket is its own.
pub fn inherited() -> Result<Option<RawFd>, String> {
    let (Ok(pid), Ok(count)) = (std::env::var("LISTEN_PID"), std::env::var("LISTEN_FDS")) else {
        return Ok(None);
    };
    // SAFETY: both are only read here, at start-up, before any other thread exists.
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    if pid.parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(None);
    }
    let count: u32 = count
        .parse()
        .map_err(|_| format!("LISTEN_FDS={count} is not a number"))?;
    if count != 1 {
        return Err(format!(
            "LISTEN_FDS={count}: percore serves on one passed socket (one ListenStream= in the socket unit)"
        ));
    }
    let fd = LISTEN_FDS_START;
    let mut listening: libc::c_int = 0;
    let mut size = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt into a correctly sized int on a descriptor we were passed.
    let ok = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&raw mut listening).cast(),
            &mut size,
        )
    };
    if ok != 0 || listening == 0 {
        return Err("the passed descriptor 3 is not a listening socket".into());
    }
    // SAFETY: fcntl on our descriptor: close-on-exec, and non-blocking for the acceptor.
    unsafe {
        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    Ok(Some(fd))
}

/// Accepts on `fd` until `stop` is set, handing each connection to the shard with the
/// fewest open; ends by dropping the senders, which tells each shard that no more come.
pub fn start_acceptor(
    fd: RawFd,
    shared: &'static Shared,
    stop: &'static AtomicBool,
    shards: Vec<mpsc::UnboundedSender<RawFd>>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("percore-acceptor".into())
        .spawn(move || {
            let mut next = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let mut poll = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd. blocking-ok: the acceptor's own thread.
                let ready = unsafe { libc::poll(&mut poll, 1, STOP_CHECK.as_millis() as libc::c_int) };
                if ready <= 0 {
                    continue;
                }
                // Everything queued now; the stop flag is looked at again after.
                loop {
                    // SAFETY: accept4 on the passed listening socket (non-blocking); null
                    // address pointers are allowed. The connection is blocking, as the shards'
                    // own accepts give them.
                    let conn =
                        unsafe { libc::accept4(fd, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC) };
                    if conn < 0 {
                        let error = std::io::Error::last_os_error();
                        match error.raw_os_error() {
                            Some(libc::EINTR | libc::ECONNABORTED) => continue,
                            Some(libc::EAGAIN) => break,
                            _ => {
                                // EMFILE and the like: the connection stays queued; back off.
                                log::warn!("accept on the passed socket failed: {error}");
                                // blocking-ok: the acceptor's own thread, never a shard
                                std::thread::sleep(crate::units::ms(shared.config.server.accept_error_backoff_ms));
                                break;
                            }
                        }
                    }
                    let shard = least_loaded(shared, &mut next);
                    if let Err(refused) = shards[shard].unbounded_send(conn) {
                        // The shard is gone (stopping): close rather than leak.
                        // SAFETY: the descriptor accept4 just gave us, owned by nobody else.
                        unsafe { libc::close(refused.into_inner()) };
                    }
                }
            }
            log::info!("acceptor stopped; the passed socket stays open for the next process");
        })?;
    Ok(())
}

/// The shard with the fewest open connections; ties go round robin from `next`.
fn least_loaded(shared: &Shared, next: &mut usize) -> usize {
    let count = shared.metrics.len();
    let start = *next % count;
    *next = next.wrapping_add(1);
    (0..count)
        .map(|i| (start + i) % count)
        .min_by_key(|&i| shared.metrics[i].connections_open.load(Ordering::Relaxed))
        .unwrap_or(0)
}
