//! Read replicas: which replica, if any, may serve a read.
//!
//! What may leave the primary (`sql.rs`): reads whose rows decide no write, namely the
//! `…ById` reads of a caller already authenticated and the benchmark reads
//! (`Sql::query_replica`), and the session-checking reads of `GET /v1/me`, the users'
//! public views and the events pages (`Sql::query_session_replica`). Writes, transactions
//! and the jobs and webhooks reads stay on the primary.
//!
//! "Has replayed past" without a round trip per request: every
//! `replica_check_interval_ms` each shard asks the primary for its WAL flush position and
//! then each replica for its replay position. A primary sample taken at time t is at or
//! past every commit that returned before t (see `Stmt::WalFlushLsn`); a replica that has
//! replayed past it holds everything committed before t. So each replica carries
//! `caught_up_through`, the start of the newest primary sample it has replayed past, and a
//! read that must see everything up to time `since` may use a replica whose
//! `caught_up_through` is at or after `since`. `since` is the latest of:
//! - the client's last write (`RecentWriters`, for `sticky_primary_ms` at most);
//! - the last invalidation this shard heard of each cache key the read fills or shows,
//!   and, for a session check, of the session itself: a logout is heard by every shard of
//!   every instance before it answers, so no replica that predates it is asked.
//!
//! A session check that finds no live session on a replica is not believed (the session
//! may be newer than the replica) and the primary decides; rows that turn out to show a
//! key invalidated after what the replica held are read again on the primary.
//!
//! A replica is usable while it has a live connection and `caught_up_through` is within
//! `max_replica_lag_ms` of now: a replica that is down, lagging, or not a standby at all
//! is skipped, and its reads go to the primary.
//!
//! Runs on a shard: never blocks. `RecentWriters` is shared by every shard, lock-free.

use crate::metrics::{OnPrimary, REPLICAS_MAX, ShardMetrics};
use crate::runtime;
use crate::store::pg::{Pool, Role, Target};
use crate::store::settings::Database;
use crate::store::{Kind, Stmt};
use crate::units::ms;
use percore_pg::types::PgLsn;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Primary samples kept: enough to span `max_replica_lag_ms` at any sane check interval;
/// older ones only matter to a replica too far behind to use.
const PRIMARY_SAMPLES_MAX: usize = 1024;

/// Process-wide: when each client last wrote, so its next reads on any shard see it.
/// A fixed table of atomics indexed by a hash of the client; clients that share a slot
/// share the later time, which only keeps more reads on the primary.
pub struct RecentWriters {
    base: Instant,
    /// Milliseconds since `base`, plus one (0: no write recorded).
    slots: Box<[AtomicU64]>,
}

impl RecentWriters {
    pub fn new(slots: usize) -> RecentWriters {
        assert!(slots > 0);
        RecentWriters {
            base: Instant::now(),
            slots: (0..slots).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn slot(&self, client: u64) -> &AtomicU64 {
        &self.slots[(client % self.slots.len() as u64) as usize]
    }

    /// Records a write by `client` that has just completed. Release pairs with `last`'s
    /// Acquire: a shard that serves the client's next request sees it.
    pub fn note(&self, client: u64, now: Instant) {
        // Rounded up, so the recorded time is never before the write completed.
        let since_base_ms = now.duration_since(self.base).as_nanos().div_ceil(1_000_000) as u64;
        self.slot(client).fetch_max(since_base_ms + 1, Ordering::Release);
    }

    /// When `client` last wrote, if it has (or a client sharing its slot has).
    pub fn last(&self, client: u64) -> Option<Instant> {
        match self.slot(client).load(Ordering::Acquire) {
            0 => None,
            stored => Some(self.base + Duration::from_millis(stored - 1)),
        }
    }
}

/// One replica as a shard sees it.
struct Replica {
    pool: Rc<Pool>,
    /// The start of the newest primary sample this replica has replayed past.
    caught_up_through: Cell<Option<Instant>>,
    /// Said once per state change, not once per sample.
    warned_not_standby: Cell<bool>,
}

/// The replica a read goes to.
pub struct Picked {
    /// Its position in `database.replicas`.
    pub index: usize,
    pub pool: Rc<Pool>,
    /// It held everything committed before this when picked (and holds at least as much
    /// when the read runs).
    pub through: Instant,
}

/// A shard's replicas and its recent primary positions.
pub struct Replicas {
    replicas: Vec<Replica>,
    /// (when the sample was sent, the primary's flush position), oldest first.
    primary_samples: RefCell<VecDeque<(Instant, u64)>>,
    next: Cell<usize>,
    max_lag: Duration,
    sticky: Duration,
    check_interval: Duration,
}

impl Replicas {
    /// A reload's `[database]` pool settings, on every replica's pool.
    pub fn reconfigure(&self, settings: &Database) {
        for replica in &self.replicas {
            replica.pool.reconfigure(settings);
        }
    }

    /// Opens `connections_per_shard` to each replica and starts the sampler on this shard.
    pub fn start(
        targets: &[Target],
        settings: &Database,
        primary: Rc<Pool>,
        shard_id: usize,
        metrics: &'static ShardMetrics,
    ) -> Rc<Replicas> {
        assert!(targets.len() <= REPLICAS_MAX);
        for gauges in &metrics.replicas[..targets.len()] {
            gauges.lag_ms.store(u64::MAX, Ordering::Relaxed);
        }
        let replicas = Rc::new(Replicas {
            replicas: (targets.iter().enumerate())
                .map(|(i, target)| Replica {
                    pool: Pool::start(target.clone(), settings, Role::Replica(i), shard_id, metrics),
                    caught_up_through: Cell::new(None),
                    warned_not_standby: Cell::new(false),
                })
                .collect(),
            primary_samples: RefCell::new(VecDeque::new()),
            next: Cell::new(0),
            max_lag: ms(settings.max_replica_lag_ms),
            sticky: ms(settings.sticky_primary_ms),
            check_interval: ms(settings.replica_check_interval_ms),
        });
        if !targets.is_empty() {
            runtime::spawn(replicas.clone().sample_forever(primary, shard_id, metrics));
        }
        replicas
    }

    pub fn is_empty(&self) -> bool {
        self.replicas.is_empty()
    }

    /// A client's write counts for `sticky_primary_ms` at most.
    pub fn sticky_since(&self, last_write: Option<Instant>, now: Instant) -> Option<Instant> {
        last_write.filter(|at| now.saturating_duration_since(*at) < self.sticky)
    }

    /// A replica for a read that must see everything committed before `since`, or why not.
    pub fn pick(&self, since: Option<Instant>, now: Instant) -> Result<Picked, OnPrimary> {
        let oldest_usable = now.checked_sub(self.max_lag);
        let n = self.replicas.len();
        let mut any_usable = false;
        for i in 0..n {
            let index = (self.next.get() + i) % n;
            let replica = &self.replicas[index];
            let Some(through) = replica.caught_up_through.get() else {
                continue;
            };
            if oldest_usable.is_some_and(|oldest| through < oldest) || !replica.pool.is_up() {
                continue;
            }
            any_usable = true;
            if since.is_none_or(|since| through >= since) {
                self.next.set((index + 1) % n);
                return Ok(Picked {
                    index,
                    pool: replica.pool.clone(),
                    through,
                });
            }
        }
        Err(if any_usable {
            OnPrimary::NotCaughtUp
        } else {
            OnPrimary::NoneUsable
        })
    }

    async fn sample_forever(self: Rc<Self>, primary: Rc<Pool>, shard_id: usize, metrics: &'static ShardMetrics) {
        loop {
            runtime::sleep(self.check_interval).await;
            self.sample(&primary, shard_id, metrics).await;
        }
    }

    /// One round: the primary's position, then each replica's against it.
    async fn sample(&self, primary: &Pool, shard_id: usize, metrics: &'static ShardMetrics) {
        let sent = Instant::now();
        if let Some(lsn) = position(primary, Stmt::WalFlushLsn, metrics).await.flatten() {
            let mut samples = self.primary_samples.borrow_mut();
            samples.push_back((sent, lsn));
            while samples.len() > PRIMARY_SAMPLES_MAX {
                samples.pop_front();
            }
        }
        // Concurrently: one slow replica must not hold up the others' samples.
        let replays = self.replicas.iter().map(|replica| async move {
            if !replica.pool.is_up() {
                return None;
            }
            position(&replica.pool, Stmt::WalReplayLsn, metrics).await
        });
        let replays = futures::future::join_all(replays).await;
        let now = Instant::now();
        for (i, (replica, replay)) in self.replicas.iter().zip(replays).enumerate() {
            let through = match replay {
                Some(Some(replayed)) => {
                    replica.warned_not_standby.set(false);
                    let samples = self.primary_samples.borrow();
                    // Newest first: the first sample at or before the replay position.
                    let newest = samples
                        .iter()
                        .rev()
                        .find(|(_, lsn)| *lsn <= replayed)
                        .map(|(at, _)| *at);
                    newest.max(replica.caught_up_through.get())
                }
                Some(None) => {
                    if !replica.warned_not_standby.replace(true) {
                        log::warn!("shard {shard_id}: database.replicas[{i}] is not a standby; not reading from it");
                    }
                    None
                }
                None => None,
            };
            replica.caught_up_through.set(through);
            let gauges = &metrics.replicas[i];
            let lag_ms = through.map(|at| now.saturating_duration_since(at).as_millis() as u64);
            let usable = lag_ms.is_some_and(|lag| lag <= self.max_lag.as_millis() as u64);
            gauges.lag_ms.store(lag_ms.unwrap_or(u64::MAX), Ordering::Relaxed);
            gauges.usable.store(u64::from(usable), Ordering::Relaxed);
        }
    }
}

/// A WAL position from `pool`; `None`: no answer, `Some(None)`: the server says NULL.
async fn position(pool: &Pool, stmt: Stmt, metrics: &ShardMetrics) -> Option<Option<u64>> {
    // Already admitted: a sample is never refused for a full queue, only waits its turn.
    let conn = pool.conn(Kind::Read, true, metrics).await.ok()?;
    let rows = conn.client.query(conn.statement(stmt), &[]).await.ok()?;
    let lsn: Option<PgLsn> = rows.first()?.try_get(0).ok()?;
    Some(lsn.map(u64::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_is_seen_by_every_reader_of_its_slot_and_never_before_it_completed() {
        let writers = RecentWriters::new(4);
        assert_eq!(writers.last(7), None);
        let wrote = Instant::now();
        writers.note(7, wrote);
        let last = writers.last(7).unwrap();
        assert!(last >= wrote, "rounded up, not down");
        assert!(last - wrote < Duration::from_millis(2));
        assert_eq!(writers.last(11), Some(last), "7 and 11 share a slot of 4");
        assert_eq!(writers.last(8), None);
        // An older write never moves the time back.
        writers.note(7, writers.base);
        assert_eq!(writers.last(7), Some(last));
    }
}
