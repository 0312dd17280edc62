//! Everything that may block, on threads of its own: the worker pool for request-path
//! work (password hashing), fed by one bounded crossbeam channel, and the durable job
//! queues (`jobs`: e-mail, PDFs, exports, webhooks; `kinds`: what each job does).
//!
//! Rule: a shard only ever calls [`Handle::submit`], which uses `try_send` and returns a
//! future; it never waits on this crate. When the queue is full the caller gets
//! [`QueueFull`] at once and answers 503 with `Retry-After` instead of stalling.

pub mod jobs;
pub mod kinds;
pub mod password;

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;

type Task = Box<dyn FnOnce() + Send + 'static>;

#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub threads: usize,
    /// CPUs the threads are pinned to, round-robin; empty leaves them unpinned.
    pub cpus: Vec<usize>,
    pub queue_depth_max: usize,
    /// Scheduling niceness for the threads (0-19): where workers share cores with shards,
    /// a positive value lets the shards win the CPU whenever they have work.
    pub nice: i32,
    /// A task that waited longer than this in the queue is not run: its caller gets
    /// `TaskFailed::Shed` at once (and answers 503 with Retry-After), so a backlog costs
    /// callers a bounded wait instead of growing without limit. 0: never shed.
    pub wait_ms_max: u64,
}

#[derive(Default, Debug)]
pub struct Stats {
    pub busy: AtomicU64,
    pub rejected: AtomicU64,
    pub panicked: AtomicU64,
    pub completed: AtomicU64,
    /// Tasks dropped unrun because they waited past `wait_ms_max`.
    pub shed: AtomicU64,
}

/// Owns the threads. Dropping every [`Handle`] and then calling [`Pool::join`] stops them
/// after the queue drains.
pub struct Pool {
    handle: Handle,
    threads: Vec<JoinHandle<()>>,
}

/// What shards hold: cheap to clone, `Send`, never blocks.
#[derive(Clone)]
pub struct Handle {
    sender: Sender<Task>,
    stats: Arc<Stats>,
    capacity: usize,
    wait_max: Option<std::time::Duration>,
}

/// The queue is at `queue_depth_max`; retry later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

/// Why a queued task gave no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskFailed {
    /// The task panicked (its worker thread lives on) or the pool is shutting down.
    Lost,
    /// It waited in the queue past `wait_ms_max` and was not run: retry later.
    Shed,
}

impl Pool {
    pub fn start(config: &PoolConfig) -> std::io::Result<Pool> {
        assert!(config.threads > 0, "a pool needs at least one thread");
        assert!(config.queue_depth_max > 0, "a queue needs room for one task");
        let (sender, receiver) = bounded::<Task>(config.queue_depth_max);
        let stats = Arc::new(Stats::default());
        let mut threads = Vec::with_capacity(config.threads);
        for index in 0..config.threads {
            let receiver = receiver.clone();
            let stats = stats.clone();
            let cpu = (!config.cpus.is_empty()).then(|| config.cpus[index % config.cpus.len()]);
            let nice = config.nice;
            let thread = std::thread::Builder::new()
                .name(format!("percore-worker-{index}"))
                .spawn(move || run_worker(receiver, stats, cpu, nice))?;
            threads.push(thread);
        }
        Ok(Pool {
            handle: Handle {
                sender,
                stats,
                capacity: config.queue_depth_max,
                wait_max: (config.wait_ms_max > 0).then(|| std::time::Duration::from_millis(config.wait_ms_max)),
            },
            threads,
        })
    }

    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Closes the pool's own sender and waits for the threads; they exit once every other
    /// handle is gone and the queue is empty.
    pub fn join(self) {
        drop(self.handle);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

fn run_worker(receiver: Receiver<Task>, stats: Arc<Stats>, cpu: Option<usize>, nice: i32) {
    if let Some(cpu) = cpu
        && !core_affinity::set_for_current(core_affinity::CoreId { id: cpu })
    {
        log::warn!("worker thread could not be pinned to CPU {cpu}; it runs unpinned");
    }
    set_nice(nice);
    // Blocking here is the point of this thread.
    while let Ok(task) = receiver.recv() {
        stats.busy.fetch_add(1, Relaxed);
        // A panicking task loses its answer (the caller sees TaskFailed::Lost), not the thread.
        if catch_unwind(AssertUnwindSafe(task)).is_err() {
            stats.panicked.fetch_add(1, Relaxed);
        }
        stats.busy.fetch_sub(1, Relaxed);
    }
}

/// Lowers the calling thread's scheduling priority to `nice` (0 leaves it alone).
pub(crate) fn set_nice(nice: i32) {
    if nice == 0 {
        return;
    }
    // On Linux a thread's niceness is per thread: PRIO_PROCESS with its own tid.
    // SAFETY: gettid and setpriority have no memory-safety preconditions.
    let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) };
    if result != 0 {
        log::warn!("thread could not set nice {nice}: {}", std::io::Error::last_os_error());
    }
}

impl Handle {
    /// Queues `work` without blocking. The returned future resolves to its result, or to
    /// `Shed` at once when a worker reaches it after it waited past `wait_ms_max`.
    pub fn submit<R, F>(&self, work: F) -> Result<impl Future<Output = Result<R, TaskFailed>> + use<R, F>, QueueFull>
    where
        R: Send + 'static,
        F: FnOnce() -> R + Send + 'static,
    {
        let (reply, answer) = futures::channel::oneshot::channel();
        let stats = self.stats.clone();
        let (queued, wait_max) = (std::time::Instant::now(), self.wait_max);
        let task: Task = Box::new(move || {
            if wait_max.is_some_and(|max| queued.elapsed() > max) {
                stats.shed.fetch_add(1, Relaxed);
                let _ = reply.send(Err(TaskFailed::Shed));
                return;
            }
            let result = work();
            // Counted before the answer goes out, so whoever sees the answer sees the count.
            stats.completed.fetch_add(1, Relaxed);
            // The caller may have gone away (its request timed out); that is fine.
            let _ = reply.send(Ok(result));
        });
        match self.sender.try_send(task) {
            Ok(()) => Ok(async move { answer.await.unwrap_or(Err(TaskFailed::Lost)) }),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats.rejected.fetch_add(1, Relaxed);
                Err(QueueFull)
            }
        }
    }

    pub fn queue_depth(&self) -> usize {
        self.sender.len()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pool(threads: usize, depth: usize) -> Pool {
        Pool::start(&PoolConfig {
            threads,
            cpus: vec![],
            queue_depth_max: depth,
            nice: 0,
            wait_ms_max: 0,
        })
        .unwrap()
    }

    #[test]
    fn runs_work_and_returns_the_answer() {
        let pool = pool(2, 8);
        let answer = pool.handle().submit(|| 6 * 7).unwrap();
        assert_eq!(futures::executor::block_on(answer), Ok(42));
        pool.join();
    }

    #[test]
    fn a_full_queue_is_refused_at_once() {
        let pool = pool(1, 1);
        let handle = pool.handle();
        let (release, gate) = crossbeam_channel::bounded::<()>(0);
        let blocker = handle.submit(move || gate.recv().unwrap()).unwrap();
        // Wait until the worker holds the blocker, so the queue itself is empty.
        while handle.stats().busy.load(Relaxed) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let queued = handle.submit(|| ()).unwrap();
        assert_eq!(handle.submit(|| ()).err(), Some(QueueFull));
        assert_eq!(handle.stats().rejected.load(Relaxed), 1);
        release.send(()).unwrap();
        futures::executor::block_on(async {
            blocker.await.unwrap();
            queued.await.unwrap();
        });
        drop(handle);
        pool.join();
    }

    #[test]
    fn a_panicking_task_loses_its_answer_not_the_thread() {
        let pool = pool(1, 4);
        let lost = pool
            .handle()
            .submit(|| -> u32 { panic!("task failure under test") })
            .unwrap();
        assert_eq!(futures::executor::block_on(lost), Err(TaskFailed::Lost));
        let next = pool.handle().submit(|| 1).unwrap();
        assert_eq!(futures::executor::block_on(next), Ok(1));
        pool.join();
    }

    #[test]
    fn a_task_that_waited_past_the_bound_is_shed_unrun() {
        let pool = Pool::start(&PoolConfig {
            threads: 1,
            cpus: vec![],
            queue_depth_max: 8,
            nice: 0,
            wait_ms_max: 50,
        })
        .unwrap();
        let handle = pool.handle();
        let blocker = handle
            .submit(|| std::thread::sleep(Duration::from_millis(200)))
            .unwrap();
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ran.clone();
        let late = handle.submit(move || flag.store(true, Relaxed)).unwrap();
        futures::executor::block_on(async {
            blocker.await.unwrap();
            assert_eq!(late.await, Err(TaskFailed::Shed));
        });
        assert!(!ran.load(Relaxed), "a shed task never runs");
        assert_eq!(handle.stats().shed.load(Relaxed), 1);
        // A task that waits less than the bound runs.
        let prompt = handle.submit(|| 7).unwrap();
        assert_eq!(futures::executor::block_on(prompt), Ok(7));
        drop(handle);
        pool.join();
    }
}
