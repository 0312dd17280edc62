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
/// thread for longer than its run-time budget: exactly what a shard must never do.
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
/// `peer_is_answering`: we have just written to this peer, so its next bytes cannot be
/// here yet; other tasks run before the first look, which saves a read that would find
/// nothing.
pub async fn read(
    stream: &TcpStream,
    buf: &mut [u8],
    deadline: (&ReadDeadline, Duration),
    retries: usize,
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
        watch.arm(Instant::now() + timeout);
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
