//! The shard runtime behind one thin seam: executors pinned to a CPU, TCP sockets, timers
//! and local task spawning, and the read deadlines of client sockets (`deadlines`).
//! Nothing else in the crate names glommio, so the runtime could be swapped by rewriting
//! this folder alone. It imports nothing of the server.

pub mod deadlines;

use deadlines::ReadDeadline;
use std::future::Future;
use std::time::{Duration, Instant};

pub use glommio::net::{TcpListener, TcpStream};
pub use glommio::sync::{Semaphore, StaticPermit};

/// A running shard thread.
pub type ShardHandle = glommio::ExecutorJoinHandle<()>;

/// Starts an executor on its own OS thread, pinned to `cpu`, and runs `main` on it.
/// `detect_stalls` turns on glommio's stall detector, which logs any task that holds the
/// thread for longer than its run-time budget: exactly what a shard must never do. Off by
/// default: it symbolizes each stall's backtrace on the shard thread (see tuning.toml).
pub fn spawn_pinned<G, F>(name: &str, cpu: usize, detect_stalls: bool, main: G) -> std::io::Result<ShardHandle>
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = ()> + 'static,
{
    let mut builder = glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(cpu))
        .name(name)
        // Small io_uring buffers: the shard moves socket bytes through its own buffers, and
        // locked memory is scarce under systemd's default LimitMEMLOCK.
        .io_memory(1 << 20)
        .ring_depth(256)
        // Yield to I/O often: latency for many small requests beats batch throughput.
        .preempt_timer(Duration::from_millis(10));
    if detect_stalls {
        builder = builder.detect_stalls(Some(Box::new(glommio::DefaultStallDetectionHandler {})));
    }
    builder.spawn(main).map_err(|e| std::io::Error::other(e.to_string()))
}

/// Runs `future` as its own task on the current shard, detached.
pub fn spawn<F: Future<Output = ()> + 'static>(future: F) {
    glommio::spawn_local(future).detach();
}

/// Lets the shard's other ready tasks run before this one goes on.
pub async fn yield_now() {
    glommio::executor().yield_task_queue_now().await;
}

/// Runs `main` on a fresh executor of its own and waits for it: unit tests of shard code.
#[cfg(test)]
pub fn run_for_test<G, F>(main: G)
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = ()> + 'static,
{
    let executor = glommio::LocalExecutorBuilder::default()
        .spawn(main)
        .expect("a test executor");
    executor.join().expect("the test's executor ran to the end");
}

pub async fn sleep(duration: Duration) {
    glommio::timer::sleep(duration).await;
}

/// `Some(output)` if `future` finishes within `duration`, else `None` (the future is dropped).
pub async fn timeout<F: Future>(duration: Duration, future: F) -> Option<F::Output> {
    use futures::future::{Either, select};
    let timer = glommio::timer::Timer::new(duration);
    match select(std::pin::pin!(future), timer).await {
        Either::Left((output, _)) => Some(output),
        Either::Right(_) => None,
    }
}

/// Reads what the socket has, waiting until `deadline` for the first byte.
///
/// The socket is read directly (non-blocking). When it is empty, the shard's other tasks
/// run first and the read is retried up to `retries` times: under load the bytes usually
/// arrive meanwhile, and each io_uring wait avoided saves its completion work. Only then
/// does it wait, with a one-byte MSG_PEEK through io_uring (unlike glommio's own read, it
/// leaves no poll armed behind it). The wait's deadline is enforced by the shard's
/// sweeper (`deadlines`), not by a timer per wait.
///
/// `between_requests`: the wait is for a next request (a drain may cut it short).
/// `peer_is_answering`: we have just written to this peer, so its next bytes cannot be
/// here yet; other tasks run before the first look, which saves a read that would find
/// nothing.
pub async fn read(
    stream: &TcpStream,
    buf: &mut [u8],
    deadline: (&ReadDeadline, Duration),
    retries: usize,
    between_requests: bool,
    peer_is_answering: bool,
) -> std::io::Result<usize> {
    debug_assert!(!buf.is_empty());
    let (watch, timeout) = deadline;
    let mut attempt = 0;
    if peer_is_answering && retries > 0 {
        attempt += 1;
        glommio::executor().yield_task_queue_now().await;
    }
    loop {
        if watch.expired() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        if let Some(n) = try_recv(stream, buf)? {
            return Ok(n);
        }
        if attempt < retries {
            attempt += 1;
            glommio::executor().yield_task_queue_now().await;
            continue;
        }
        watch.arm(Instant::now() + timeout, between_requests);
        let mut probe = [0u8; 1];
        let waited = stream.peek(&mut probe).await;
        watch.disarm();
        if watch.expired() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        // Readable, or at end of stream: the next recv tells which.
        waited?;
    }
}

/// A non-blocking read straight from the socket: `Ok(None)` when nothing is there yet.
fn try_recv(stream: &TcpStream, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
    use std::os::fd::AsRawFd;
    // SAFETY: `buf` is valid for `buf.len()` writable bytes; the fd is owned by `stream`.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n >= 0 {
        return Ok(Some(n as usize));
    }
    let error = std::io::Error::last_os_error();
    match error.kind() {
        std::io::ErrorKind::WouldBlock => Ok(None),
        std::io::ErrorKind::Interrupted => Ok(None),
        _ => Err(error),
    }
}

/// A shard's listening socket: SO_REUSEPORT on the shared port, so each shard listens on
/// its own and the kernel spreads connections across them.
///
/// Why not glommio's `TcpListener::bind` alone: stopping must not cancel an accept the
/// kernel may already have completed (the connection would be dropped unanswered), and
/// must not drop the connections queued in the backlog. So the socket's fd is kept:
/// `stop` takes what is queued, then wakes the pending accept by shutting the socket down.
pub struct Listener {
    inner: TcpListener,
    fd: std::os::fd::RawFd,
}

impl Listener {
    pub fn bind(address: std::net::SocketAddr, backlog: i32) -> std::io::Result<Self> {
        use socket2::{Domain, Protocol, Socket, Type};
        use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
        let socket = Socket::new(Domain::for_address(address), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_port(true)?;
        socket.set_reuse_address(true)?;
        socket.bind(&address.into())?;
        socket.listen(backlog)?;
        let fd = socket.as_raw_fd();
        // SAFETY: the fd is a listening TCP socket we own; the glommio listener takes it over
        // and closes it when dropped. We keep the number only while `inner` lives.
        let inner = unsafe { TcpListener::from_raw_fd(socket.into_raw_fd()) };
        Ok(Self { inner, fd })
    }

    /// The next connection. After `stop`, fails at once.
    pub async fn accept(&self) -> std::io::Result<TcpStream> {
        self.inner.accept().await.map_err(std::io::Error::from)
    }

    /// Stops listening: returns the connections the kernel had queued (to be served), then
    /// shuts the socket so a pending `accept` returns. Only connections that arrive in the
    /// microseconds between the two are reset.
    pub fn stop(&self) -> Vec<TcpStream> {
        use std::os::fd::FromRawFd;
        let mut queued = Vec::new();
        // Non-blocking from here on, so an empty queue ends the loop instead of blocking.
        // SAFETY: fcntl on our own listening socket, alive while `self` is.
        unsafe {
            let flags = libc::fcntl(self.fd, libc::F_GETFL);
            libc::fcntl(self.fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        loop {
            // SAFETY: `fd` is our listening socket; null address pointers are allowed. The
            // new socket is blocking, like those glommio accepts (its io_uring operations
            // expect that).
            let fd = unsafe { libc::accept4(self.fd, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC) };
            if fd < 0 {
                let error = std::io::Error::last_os_error();
                if error.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                // Empty (EAGAIN), or a connection reset while queued (ECONNABORTED): nothing
                // more to take without waiting.
                if error.raw_os_error() == Some(libc::ECONNABORTED) {
                    continue;
                }
                break;
            }
            // SAFETY: a connected socket accept4 just gave us; the stream owns it now.
            queued.push(unsafe { TcpStream::from_raw_fd(fd) });
        }
        // SAFETY: shutdown on our own listening socket: it stops listening and wakes the
        // accept pending on it; the fd stays open until the listener is dropped.
        unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
        queued
    }
}
