//! Durable background jobs. A job is a row in `jobs`, committed before its 202; this
//! module runs them on threads of their own, one group per queue (`[jobs.queues.<name>]`),
//! so a slow kind (PDFs) cannot starve another (e-mail).
//!
//! - A shard that commits a job wakes its queue through a bounded crossbeam channel
//!   ([`QueueHandle::wake`], never blocks); every `poll_interval_ms` one maintenance thread
//!   per process samples the queues and wakes idle workers for jobs committed by other
//!   processes and retries that came due.
//! - A claim takes a lease (`locked_until`) that a heartbeat thread extends; the
//!   maintenance thread returns jobs with expired leases (their worker died) to the queue.
//! - A failed attempt is retried with exponential backoff and jitter up to `max_attempts`,
//!   then the job is `dead` (kept; `percore jobs retry ID` revives it).
//! - Shutdown finishes the jobs in hand within the timeout, or gives their leases back.
//!
//! Runs on its own threads: may block. Shards only touch [`Handle`].

pub mod config;
mod runner;
pub mod store;

pub use runner::Runtime;

use crossbeam_channel::Sender;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

/// The configuration the workers need.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub jobs: config::Jobs,
    pub email: config::Email,
    pub webhooks: config::Webhooks,
}

/// One queue's counters: gauges sampled from the database, counters kept here.
#[derive(Debug, Default)]
pub struct QueueStats {
    /// Jobs waiting (queued, or failed and awaiting a retry), as last sampled.
    pub depth: AtomicU64,
    /// How long the oldest runnable job has waited, as last sampled.
    pub oldest_age_ms: AtomicU64,
    /// Jobs this process's shards admitted whose insert has not finished yet…
    pub pending: AtomicU64,
    /// …and jobs they committed that the last sample may not have seen. Depth checks count
    /// both, so a burst between samples cannot overshoot `max_depth`.
    pub committed_since_sample: AtomicU64,
    pub running: AtomicU64,
    pub done: AtomicU64,
    pub retried: AtomicU64,
    pub dead: AtomicU64,
    /// `POST /v1/jobs` refused because the queue was full.
    pub rejected: AtomicU64,
}

/// A queue as shards see it.
pub struct QueueHandle {
    pub name: String,
    /// Worker threads of this queue in this process (0 when `jobs.run` is off).
    pub threads: usize,
    /// Live: a reload changes them (`reconfigure`).
    max_depth: AtomicU64,
    max_attempts: AtomicU32,
    pub stats: Arc<QueueStats>,
    wake: Sender<()>,
}

impl QueueHandle {
    pub fn new(
        name: String,
        threads: usize,
        max_depth: u64,
        max_attempts: u32,
        stats: Arc<QueueStats>,
        wake: Sender<()>,
    ) -> Self {
        QueueHandle {
            name,
            threads,
            max_depth: AtomicU64::new(max_depth),
            max_attempts: AtomicU32::new(max_attempts),
            stats,
            wake,
        }
    }

    pub fn max_depth(&self) -> u64 {
        self.max_depth.load(Relaxed)
    }

    /// Attempts a job enqueued now gets.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts.load(Relaxed)
    }

    /// Counts one more job against `max_depth` while its insert runs; `None` (counted as
    /// rejected) when the queue is full.
    pub fn admit(&self) -> Option<Admission<'_>> {
        let stats = &self.stats;
        let waiting =
            stats.depth.load(Relaxed) + stats.committed_since_sample.load(Relaxed) + stats.pending.load(Relaxed);
        if waiting >= self.max_depth() {
            stats.rejected.fetch_add(1, Relaxed);
            return None;
        }
        stats.pending.fetch_add(1, Relaxed);
        Some(Admission { stats })
    }

    /// Tells one idle worker of this queue that a job was committed. Never blocks: when
    /// every worker already has a wake-up pending, this one is not needed.
    pub fn wake(&self) {
        let _ = self.wake.try_send(());
    }
}

/// A job admitted to a queue whose insert is under way; dropping it ends the reservation.
pub struct Admission<'a> {
    stats: &'a QueueStats,
}

impl Admission<'_> {
    /// The job committed: it counts until a sample taken after now has seen it.
    pub fn committed(self) {
        self.stats.committed_since_sample.fetch_add(1, Relaxed);
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.stats.pending.fetch_sub(1, Relaxed);
    }
}

/// What shards hold: the queues by name. Cheap to clone; never blocks.
#[derive(Clone)]
pub struct Handle {
    queues: Arc<Vec<QueueHandle>>,
    settings: Arc<Settings>,
    /// The workers' `webhooks.timeout_ms`, which a reload changes.
    webhook_timeout_ms: Arc<AtomicU64>,
    /// Dropped to tell the workers to stop claiming (shutdown).
    stop_workers: Arc<std::sync::Mutex<Option<Sender<()>>>>,
}

impl Handle {
    /// Workers take no new jobs from now on; those in hand run on (see `Runtime::shutdown`).
    pub fn stop_claiming(&self) {
        if let Ok(mut stop) = self.stop_workers.lock() {
            stop.take();
        }
    }

    /// The queue `kind` runs on.
    pub fn queue_of_kind(&self, kind: &str) -> Option<&QueueHandle> {
        let (name, _) = self.settings.jobs.queue_of(kind)?;
        self.queue(name)
    }

    pub fn queue(&self, name: &str) -> Option<&QueueHandle> {
        self.queues.iter().find(|q| q.name == name)
    }

    /// A reload: each queue's `max_depth` at once, and its attempts for jobs enqueued
    /// after (queues are restart-only: a name not running here is ignored); the webhook
    /// timeout for deliveries that start after.
    pub fn reconfigure(&self, jobs: &config::Jobs, webhooks: &config::Webhooks) {
        self.webhook_timeout_ms.store(webhooks.timeout_ms, Relaxed);
        for queue in self.queues.iter() {
            if let Some(settings) = jobs.queues.get(&queue.name) {
                queue.max_depth.store(settings.max_depth, Relaxed);
                queue.max_attempts.store(jobs.max_attempts_of(settings), Relaxed);
            }
        }
    }

    pub fn queues(&self) -> &[QueueHandle] {
        &self.queues
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }
}

/// Retry n (1-based) waits a random time in [d/2, d], d = min(max, min × 2^(n-1)): the
/// delays grow, and retries of jobs that failed together spread out.
pub fn backoff(jobs: &config::Jobs, failed_attempt: u32, random: u64) -> std::time::Duration {
    let exponent = failed_attempt.saturating_sub(1).min(40);
    let ceiling = jobs
        .backoff_ms_min
        .saturating_mul(1u64 << exponent)
        .min(jobs.backoff_ms_max);
    let half = ceiling / 2;
    std::time::Duration::from_millis(half + random % (ceiling - half + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_within_its_bounds() {
        let jobs = config::Jobs {
            backoff_ms_min: 100,
            backoff_ms_max: 1_000,
            ..config::Jobs::default()
        };
        for random in [0, 7, u64::MAX / 3, u64::MAX] {
            let ms = |n| backoff(&jobs, n, random).as_millis() as u64;
            assert!((50..=100).contains(&ms(1)), "{}", ms(1));
            assert!((100..=200).contains(&ms(2)));
            assert!((200..=400).contains(&ms(3)));
            assert!((500..=1_000).contains(&ms(30)), "capped at backoff_ms_max");
        }
    }
}
