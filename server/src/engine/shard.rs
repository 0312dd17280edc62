//! One shard: a pinned thread with its own listener (SO_REUSEPORT on the shared port), its
//! own Postgres and Redis connections and its own state. Nothing here is shared with other
//! shards except the read-mostly `Shared` and per-shard atomics others only read.
//!
//! Runs on a shard: never blocks.

use crate::config::{Config, ms};

use crate::http::date::DateCache;
use crate::http::service::ConnLimits;
use crate::limits::throttle::Throttle;
use crate::metrics::ShardMetrics;
use crate::runtime::deadlines::Sweeper;
use crate::runtime::{self, Semaphore, TcpListener};
use crate::store::Store;
use crate::store::redis::{RedisClient, RedisTarget};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Process-wide state, created once in `main` and never freed.
pub struct Shared {
    pub config: Config,
    pub metrics: Vec<ShardMetrics>,
    pub workers: percore_workers::Handle,
    /// The durable job queues: shards admit jobs against their depth and wake them.
    pub jobs: percore_workers::jobs::Handle,
    pub db_target: crate::store::pg::Target,
    /// `database.replicas`, resolved, in order.
    pub replica_targets: Vec<crate::store::pg::Target>,
    /// Clients' last writes, for read-your-writes across shards.
    pub recent_writers: crate::store::replicas::RecentWriters,
    pub redis_target: RedisTarget,
    /// An Argon2 hash of nothing anyone knows, made at start-up with the configured cost: a
    /// login for an unknown email verifies against it, so it costs what a real one does.
    pub dummy_password_hash: String,
    /// Set by the signal thread, which then fires every shard's `stop` sender.
    pub shutdown: AtomicBool,
    /// Set by the memory guard thread while resident memory is over `rss_bytes_max`.
    pub memory_pressure: AtomicBool,
    /// When the signal came (ms since the epoch): the shutdown timeout counts from here.
    pub shutdown_started_ms: std::sync::atomic::AtomicU64,
    /// One per shard, registered at start-up; fired once on SIGTERM/SIGINT. The lock is
    /// taken only then, never on a request path.
    pub stop_senders: Mutex<Vec<futures::channel::oneshot::Sender<()>>>,
}

/// A shard's own state, owned by its thread.
pub struct Shard {
    pub id: usize,
    pub shared: &'static Shared,
    pub metrics: &'static ShardMetrics,
    pub date: DateCache,
    /// `[http]` as each connection's loop obeys it.
    pub conn_limits: ConnLimits,
    /// Its connections and its cache: the data layer.
    pub store: Rc<Store>,
    /// Shutting down: finish what was read, answer with `Connection: close`.
    pub draining: Cell<bool>,
    /// Requests read but not yet answered on this shard.
    pub in_flight: Cell<usize>,
    /// Sequence for the tokens `/readyz` echoes through Redis.
    pub probe_seq: Cell<u64>,
    /// Read deadlines of this shard's connections.
    pub deadlines: Sweeper,
    pub login_throttle: RefCell<Throttle>,
    /// Per-client rate limits by route class.
    pub limiter: crate::limits::rate_limit::Limiter,
    /// xorshift64* state for the benchmark routes' random row ids (not for secrets).
    pub random: Cell<u64>,
}

impl Shard {
    /// A pseudo-random number in `1..=max`.
    pub fn random_up_to(&self, max: u64) -> u64 {
        let mut x = self.random.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.random.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D) % max + 1
    }
}

impl Shard {
    pub fn config(&self) -> &'static Config {
        &self.shared.config
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The shard's main task: bind, accept until shutdown, then drain.
pub async fn run(id: usize, shared: &'static Shared, bound: std::sync::mpsc::SyncSender<Result<(), String>>) {
    let config = &shared.config;
    let metrics = &shared.metrics[id];
    let listener = match TcpListener::bind(config.server.listen) {
        Ok(listener) => listener,
        Err(e) => {
            let _ = bound.send(Err(format!(
                "shard {id}: cannot listen on {}: {e}",
                config.server.listen
            )));
            return;
        }
    };
    let redis = RedisClient::start(shared.redis_target.clone(), &config.redis, metrics);
    let db = crate::store::pg::Pool::start(
        shared.db_target.clone(),
        &config.database,
        crate::store::pg::Role::Primary,
        id,
        metrics,
    );
    let replicas =
        crate::store::replicas::Replicas::start(&shared.replica_targets, &config.database, db.clone(), id, metrics);
    let shard = Rc::new(Shard {
        id,
        shared,
        metrics,
        date: DateCache::default(),
        conn_limits: conn_limits(&config.http),
        store: Rc::new(Store {
            shard_id: id,
            db,
            replicas,
            redis: redis.clone(),
            cache: crate::store::cache::Cache::new(&config.cache, &config.database, id, redis.clone(), metrics),
            recent_writers: &shared.recent_writers,
            metrics,
            redis_settings: &config.redis,
            cache_settings: &config.cache,
        }),
        draining: Cell::new(false),
        in_flight: Cell::new(0),
        probe_seq: Cell::new(0),
        deadlines: Sweeper::default(),
        random: Cell::new(seed_random()),
        login_throttle: RefCell::new(Throttle::new(
            f64::from(config.identity.login_rate_per_minute) / 60.0,
            config.identity.login_burst,
            config.identity.login_tracked_max,
        )),
        limiter: crate::limits::rate_limit::Limiter::new(
            &config.rate_limit,
            config.server.trusted_proxy_nets().expect("validated at start-up"),
        ),
    });
    metrics.heartbeat_ms.store(now_ms(), Ordering::Relaxed);
    let _ = bound.send(Ok(()));

    let (stop, stop_signal) = futures::channel::oneshot::channel::<()>();
    shared.stop_senders.lock().expect("stop list lock").push(stop);
    runtime::spawn(tick(shard.clone()));
    runtime::spawn(sweep(shard.clone()));
    if config.cache.enabled {
        runtime::spawn(crate::store::cache::bus::subscribe(
            shard.store.clone(),
            shared.redis_target.clone(),
        ));
    }
    // A signal that came before the sender was registered is seen through the flag.
    if !shared.shutdown.load(Ordering::SeqCst) {
        accept_until(&shard, listener, stop_signal).await;
    }
    shard.draining.set(true);
    drain(&shard).await;
    log::info!("shard {id} stopped");
}

fn conn_limits(http: &crate::config::Http) -> ConnLimits {
    ConnLimits {
        request_line_bytes_max: http.request_line_bytes_max,
        head_bytes_max: http.head_bytes_max,
        headers_count_max: http.headers_count_max,
        body_bytes_max: http.body_bytes_max,
        idle_timeout: ms(http.idle_timeout_ms),
        header_read_timeout: ms(http.header_read_timeout_ms),
        body_read_timeout: ms(http.body_read_timeout_ms),
        write_buffer_bytes_max: http.write_buffer_bytes_max,
    }
}

fn seed_random() -> u64 {
    let mut seed = [0u8; 8];
    let _ = getrandom::fill(&mut seed);
    // xorshift must not start at zero.
    u64::from_le_bytes(seed) | 1
}

/// Heartbeat and Date refresh, every `heartbeat_interval_ms`. Because this task only runs
/// when the shard's loop does, its heartbeat proves the shard is not stalled.
async fn tick(shard: Rc<Shard>) {
    let interval = ms(shard.config().server.heartbeat_interval_ms);
    loop {
        shard.metrics.heartbeat_ms.store(now_ms(), Ordering::Relaxed);
        shard.date.refresh(SystemTime::now());
        runtime::sleep(interval).await;
    }
}

/// Expires connection read deadlines every `deadline_sweep_ms`.
async fn sweep(shard: Rc<Shard>) {
    let interval = ms(shard.config().http.deadline_sweep_ms);
    loop {
        runtime::sleep(interval).await;
        shard.deadlines.sweep(Instant::now());
    }
}

async fn accept_until(shard: &Rc<Shard>, listener: TcpListener, mut stop: futures::channel::oneshot::Receiver<()>) {
    let server = &shard.config().server;
    // At the cap the shard stops accepting until a connection closes; the kernel's backlog
    // holds the rest, so the fd limit is never reached through us.
    let slots = Rc::new(Semaphore::new(server.connections_per_shard_max as u64));
    loop {
        let permit = {
            let acquire = std::pin::pin!(slots.acquire_static_permit(1));
            match futures::future::select(acquire, &mut stop).await {
                futures::future::Either::Left((Ok(permit), _)) => permit,
                _ => return,
            }
        };
        let accepted = {
            let accept = std::pin::pin!(listener.accept());
            match futures::future::select(accept, &mut stop).await {
                futures::future::Either::Left((accepted, _)) => accepted,
                futures::future::Either::Right(_) => return,
            }
        };
        match accepted {
            Ok(stream) => {
                ShardMetrics::add(&shard.metrics.connections_accepted, 1);
                let shard = shard.clone();
                runtime::spawn(async move {
                    super::connection::serve(shard, stream).await;
                    drop(permit);
                });
            }
            Err(e) => {
                // EMFILE/ENFILE at the fd limit, or a connection reset before accept: wait a
                // little and go on; never crash.
                ShardMetrics::add(&shard.metrics.accept_errors, 1);
                log::warn!("shard {}: accept failed: {e}", shard.id);
                drop(permit);
                runtime::sleep(ms(server.accept_error_backoff_ms)).await;
            }
        }
    }
}

/// Waits until every request already read is answered, at most `shutdown_timeout_ms`.
async fn drain(shard: &Shard) {
    let deadline = Instant::now() + ms(shard.config().server.shutdown_timeout_ms);
    while shard.in_flight.get() > 0 && Instant::now() < deadline {
        runtime::sleep(Duration::from_millis(5)).await;
    }
    if shard.in_flight.get() > 0 {
        log::warn!(
            "shard {}: {} requests still in flight at the shutdown timeout",
            shard.id,
            shard.in_flight.get()
        );
    }
}
