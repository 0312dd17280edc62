//! The shard runtime behind one thin seam: executors pinned to a CPU, TCP sockets, timers
//! and local task spawning. Nothing else in the crate names glommio, so the runtime could
//! be swapped by rewriting this file alone.

use std::future::Future;
use std::time::Duration;

pub use glommio::net::{TcpListener, TcpStream};
pub use glommio::sync::Semaphore;

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

/// Lets other tasks on this shard run before continuing.
pub async fn yield_now() {
    glommio::yield_if_needed().await;
}
