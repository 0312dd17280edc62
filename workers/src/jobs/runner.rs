//! The job threads of one process: per queue `threads` workers, one heartbeat thread that
//! extends the leases of the jobs in hand, and one maintenance thread that, every
//! `poll_interval_ms`, returns expired leases to their queues, samples queue depth and age
//! (for `/metrics` and `max_depth`) and wakes idle workers of queues with runnable jobs
//! (committed by other processes, or retries come due). Idle workers make no queries of
//! their own: one sampling statement per process per interval, however many threads.

use super::store::{self, Claimed};
use super::{Handle, QueueHandle, QueueStats, Settings, backoff};
use crate::kinds::{self, Context, DbPool, JobError};
use crossbeam_channel::{Receiver, Sender, bounded, select};
use r2d2_postgres::PostgresConnectionManager;
use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// An idle worker with no wake-up looks for work this often anyway, so a lost wake-up can
/// never strand a job for long.
const IDLE_CHECK: Duration = Duration::from_secs(60);

/// Jobs this process holds leases on: job id → lease holder.
type InHand = Arc<Mutex<HashMap<i64, String>>>;

pub struct Runtime {
    handle: Handle,
    workers: Vec<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
    /// Dropping a sender wakes every thread waiting on its receiver: the stop signal. The
    /// workers' sender lives in the handle (`Handle::stop_claiming`).
    stop_background: Option<Sender<()>>,
    in_hand: InHand,
    db: DbPool,
}

/// What one worker thread needs.
struct Worker {
    queue: String,
    lease_holder: String,
    stats: Arc<QueueStats>,
    /// When this process's earliest scheduled retry of the queue comes due (ms since epoch).
    next_due_ms: Arc<AtomicU64>,
    wake: Receiver<()>,
    stop: Receiver<()>,
    ctx: Arc<Context>,
    in_hand: InHand,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // Jitter only; a clock-derived value will do if the kernel says no.
    if getrandom::fill(&mut bytes).is_err() {
        return now_ms().wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    u64::from_le_bytes(bytes)
}

impl Runtime {
    /// Starts the threads (workers only when `jobs.run`). Connections are made on first
    /// use, so an unreachable database delays jobs, not start-up.
    pub fn start(settings: Settings, database_url: &str, nice: i32) -> Result<Runtime, String> {
        let settings = Arc::new(settings);
        let jobs = &settings.jobs;
        let config: postgres::Config = database_url.parse().map_err(|e| format!("database url: {e}"))?;
        let worker_threads: usize = if jobs.run {
            jobs.queues.values().map(|q| q.threads).sum()
        } else {
            0
        };
        let db = r2d2::Pool::builder()
            .max_size((worker_threads + 2) as u32)
            .min_idle(Some(0))
            .connection_timeout(Duration::from_secs(5))
            // Failures surface (rate-limited) where a connection was wanted; r2d2's own
            // handler would log every background attempt at ERROR.
            .error_handler(Box::new(r2d2::NopErrorHandler))
            .build_unchecked(PostgresConnectionManager::new(config, postgres::NoTls));
        let ctx = Arc::new(Context::new(db.clone(), settings.clone()));
        let process = format!(
            "{}:{}:{:04x}",
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "host".into()),
            std::process::id(),
            random_u64() & 0xffff
        );
        let (stop_workers, stop_workers_rx) = bounded::<()>(0);
        let (stop_background, stop_background_rx) = bounded::<()>(0);
        let in_hand: InHand = Arc::default();
        let mut queues = Vec::new();
        let mut workers = Vec::new();
        for (name, queue) in &jobs.queues {
            let stats = Arc::new(QueueStats::default());
            let (wake, wake_rx) = bounded::<()>(queue.threads);
            let next_due_ms = Arc::new(AtomicU64::new(u64::MAX));
            for index in 0..if jobs.run { queue.threads } else { 0 } {
                let worker = Worker {
                    queue: name.clone(),
                    lease_holder: format!("{process}:{name}:{index}"),
                    stats: stats.clone(),
                    next_due_ms: next_due_ms.clone(),
                    wake: wake_rx.clone(),
                    stop: stop_workers_rx.clone(),
                    ctx: ctx.clone(),
                    in_hand: in_hand.clone(),
                };
                let thread = std::thread::Builder::new()
                    .name(format!("percore-job-{name}-{index}"))
                    .spawn(move || {
                        crate::set_nice(nice);
                        worker.run()
                    })
                    .map_err(|e| format!("starting a job thread: {e}"))?;
                workers.push(thread);
            }
            queues.push(QueueHandle::new(
                name.clone(),
                if jobs.run { queue.threads } else { 0 },
                queue.max_depth,
                jobs.max_attempts_of(queue),
                stats,
                wake,
            ));
        }
        let handle = Handle {
            queues: Arc::new(queues),
            settings: settings.clone(),
            webhook_timeout_ms: ctx.webhook_timeout_ms.clone(),
            stop_workers: Arc::new(std::sync::Mutex::new(Some(stop_workers))),
        };
        let mut background = Vec::new();
        let spawn = |name: &str, body: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(body)
                .map_err(|e| format!("starting {name}: {e}"))
        };
        {
            let (db, stop, in_hand, settings) = (
                db.clone(),
                stop_background_rx.clone(),
                in_hand.clone(),
                settings.clone(),
            );
            background.push(spawn(
                "percore-job-heartbeat",
                Box::new(move || heartbeat(&db, &stop, &in_hand, &settings)),
            )?);
        }
        {
            let (db, stop, handle) = (db.clone(), stop_background_rx, handle.clone());
            background.push(spawn(
                "percore-job-maintenance",
                Box::new(move || maintenance(&db, &stop, &handle)),
            )?);
        }
        Ok(Runtime {
            handle,
            workers,
            background,
            stop_background: Some(stop_background),
            in_hand,
            db,
        })
    }

    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Stops claiming; lets the jobs in hand finish within `timeout` (their leases still
    /// extended), then gives back the leases of any still running, so another worker can
    /// take them at once instead of after the lease.
    pub fn shutdown(mut self, timeout: Duration) {
        self.handle.stop_claiming();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline && !self.workers.iter().all(|t| t.is_finished()) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let held: Vec<(i64, String)> = self
            .in_hand
            .lock()
            .map(|h| h.iter().map(|(id, who)| (*id, who.clone())).collect())
            .unwrap_or_default();
        if !held.is_empty() {
            match self
                .db
                .get()
                .map_err(|e| e.to_string())
                .and_then(|mut db| store::release(&mut *db, &held).map_err(|e| e.to_string()))
            {
                Ok(released) => log::warn!("shutdown: released {released} unfinished job(s) back to their queues"),
                Err(e) => log::error!(
                    "shutdown: releasing {} job lease(s) failed ({e}); they run again after their lease",
                    held.len()
                ),
            }
        }
        drop(self.stop_background.take());
        for thread in self.background.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Worker {
    /// Idle until woken (by a shard's commit, or by the maintenance thread for runnable jobs),
    /// then claims and runs jobs until none is runnable. Starting idle, an idle process
    /// holds no database connection per worker.
    fn run(self) {
        let settings = &self.ctx.settings.jobs;
        let lease = Duration::from_millis(settings.lease_ms);
        let mut failing = false;
        let mut last_error_log: Option<Instant> = None;
        while self.idle(failing) {
            failing = loop {
                // Shutting down: no new claims, however much is queued.
                if self.stop.try_recv() == Err(crossbeam_channel::TryRecvError::Disconnected) {
                    return;
                }
                let claimed = self.ctx.db.get().map_err(|e| e.to_string()).and_then(|mut db| {
                    store::claim(&mut *db, &self.queue, &self.lease_holder, lease).map_err(|e| e.to_string())
                });
                match claimed {
                    Ok(Some(job)) => self.run_one(&job),
                    Ok(None) => break false,
                    Err(error) => {
                        if last_error_log.is_none_or(|at| at.elapsed() > Duration::from_secs(30)) {
                            log::warn!("job queue {}: claiming failed: {error}", self.queue);
                            last_error_log = Some(Instant::now());
                        }
                        break true;
                    }
                }
            };
        }
    }

    /// Waits for a wake-up, a retry of ours coming due, or (after a failed claim) the poll
    /// interval. False: stop.
    fn idle(&self, failing: bool) -> bool {
        let poll = Duration::from_millis(self.ctx.settings.jobs.poll_interval_ms);
        let due_in = Duration::from_millis(self.next_due_ms.load(Relaxed).saturating_sub(now_ms()));
        select! {
            recv(self.wake) -> _ => true,
            recv(self.stop) -> _ => false,
            default(due_in.min(if failing { poll } else { IDLE_CHECK })) => {
                let due = self.next_due_ms.load(Relaxed);
                if due <= now_ms() {
                    let _ = self.next_due_ms.compare_exchange(due, u64::MAX, Relaxed, Relaxed);
                }
                true
            }
        }
    }

    fn run_one(&self, job: &Claimed) {
        if let Ok(mut held) = self.in_hand.lock() {
            held.insert(job.id, self.lease_holder.clone());
        }
        self.stats.running.fetch_add(1, Relaxed);
        let outcome = catch_unwind(AssertUnwindSafe(|| kinds::run(&self.ctx, job)))
            .unwrap_or_else(|_| Err(JobError::Transient("the job panicked".into())));
        self.stats.running.fetch_sub(1, Relaxed);
        let settings = &self.ctx.settings.jobs;
        let last_attempt = job.attempt >= job.max_attempts;
        let recorded = self.ctx.db.get().map_err(|e| e.to_string()).and_then(|mut db| {
            let db = &mut *db;
            match &outcome {
                Ok(result) => store::complete(db, job, &self.lease_holder, result).inspect(|&ok| {
                    if ok {
                        self.stats.done.fetch_add(1, Relaxed);
                    }
                }),
                Err(error @ JobError::Permanent(_)) => {
                    self.stats.dead.fetch_add(1, Relaxed);
                    store::fail(db, job, &self.lease_holder, error.message(), None)
                }
                Err(error) if last_attempt => {
                    self.stats.dead.fetch_add(1, Relaxed);
                    let message = format!("{} (attempt {} of {})", error.message(), job.attempt, job.max_attempts);
                    store::fail(db, job, &self.lease_holder, &message, None)
                }
                Err(error) => {
                    self.stats.retried.fetch_add(1, Relaxed);
                    let delay = backoff(settings, job.attempt.max(1) as u32, random_u64());
                    self.next_due_ms.fetch_min(now_ms() + delay.as_millis() as u64, Relaxed);
                    store::fail(db, job, &self.lease_holder, error.message(), Some(delay))
                }
            }
            .map_err(|e| e.to_string())
        });
        match recorded {
            Ok(true) => {}
            Ok(false) => log::warn!(
                "job {} ({}): its lease was lost before the attempt ended; the next holder decides",
                job.id,
                job.kind
            ),
            Err(e) => log::error!(
                "job {} ({}): recording the attempt failed ({e}); it runs again after its lease",
                job.id,
                job.kind
            ),
        }
        if let Err(error) = &outcome {
            log::info!(
                "job {} ({}) attempt {} failed: {}",
                job.id,
                job.kind,
                job.attempt,
                error.message()
            );
        }
        if let Ok(mut held) = self.in_hand.lock() {
            held.remove(&job.id);
        }
    }
}

fn heartbeat(db: &DbPool, stop: &Receiver<()>, in_hand: &InHand, settings: &Settings) {
    let every = Duration::from_millis(settings.jobs.heartbeat_ms);
    let lease = Duration::from_millis(settings.jobs.lease_ms);
    while let Err(crossbeam_channel::RecvTimeoutError::Timeout) = stop.recv_timeout(every) {
        let held: Vec<(i64, String)> = match in_hand.lock() {
            Ok(held) => held.iter().map(|(id, who)| (*id, who.clone())).collect(),
            Err(_) => return,
        };
        if held.is_empty() {
            continue;
        }
        let result = db
            .get()
            .map_err(|e| e.to_string())
            .and_then(|mut conn| store::heartbeat(&mut *conn, &held, lease).map_err(|e| e.to_string()));
        if let Err(e) = result {
            log::warn!("job heartbeat failed ({e}); leases run out unless the next one succeeds");
        }
    }
}

fn maintenance(db: &DbPool, stop: &Receiver<()>, handle: &Handle) {
    let every = Duration::from_millis(handle.settings.jobs.poll_interval_ms);
    let mut last_error_log: Option<Instant> = None;
    loop {
        let result = db.get().map_err(|e| e.to_string()).and_then(|mut conn| {
            let conn = &mut *conn;
            for queue in store::reap_expired(conn).map_err(|e| e.to_string())? {
                if let Some(q) = handle.queue(&queue) {
                    q.wake();
                }
            }
            // Commits counted before the sample's snapshot are in it; later ones stay counted.
            let committed: Vec<u64> = handle
                .queues()
                .iter()
                .map(|q| q.stats.committed_since_sample.load(Relaxed))
                .collect();
            let sampled = store::sample(conn).map_err(|e| e.to_string())?;
            for (q, seen) in handle.queues().iter().zip(committed) {
                q.stats.committed_since_sample.fetch_sub(seen, Relaxed);
                let sample = sampled.iter().find(|s| s.queue == q.name).cloned().unwrap_or_default();
                q.stats.depth.store(sample.waiting, Relaxed);
                q.stats.oldest_age_ms.store(sample.oldest_age_ms, Relaxed);
                // Runnable jobs nobody here was woken for (another process's, a retry come
                // due): wake that many idle workers (the channel holds at most `threads`).
                for _ in 0..sample.runnable.min(q.threads as u64) {
                    q.wake();
                }
            }
            Ok(())
        });
        if let Err(e) = result
            && last_error_log.is_none_or(|at| at.elapsed() > Duration::from_secs(30))
        {
            log::warn!("job maintenance failed: {e}");
            last_error_log = Some(Instant::now());
        }
        if let Err(crossbeam_channel::RecvTimeoutError::Disconnected) = stop.recv_timeout(every) {
            return;
        }
    }
}
