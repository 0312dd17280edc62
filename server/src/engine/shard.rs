//! One shard: a pinned thread with its own listener (SO_REUSEPORT on the shared port), its
//! own Postgres and Redis connections and its own state. Nothing here is shared with other
//! shards except the read-mostly `Shared` and per-shard atomics others only read.
//!
//! Runs on a shard: never blocks.

use crate::config::Config;
use crate::units::ms;

use crate::api::state::{Shard, Shared};
use crate::http::date::DateCache;
use crate::http::service::ConnLimits;
use crate::limits::throttle::Throttle;
use crate::metrics::ShardMetrics;
use crate::runtime::deadlines::Sweeper;
use crate::runtime::{self, Listener, Semaphore, StaticPermit, TcpStream};
use crate::store::Store;
use crate::store::redis::RedisClient;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What stopping the process needs, beside the API's `Shared`.
#[derive(Default)]
pub struct Stopping {
    /// Set by the signal thread, which then fires every shard's `stop` sender.
    pub shutdown: AtomicBool,
    /// When the signal came (ms since the epoch): the shutdown timeout counts from here.
    pub started_ms: std::sync::atomic::AtomicU64,
    /// One per shard, registered at start-up; fired once on SIGTERM/SIGINT. The lock is
    /// taken only then, never on a request path.
    pub stop_senders: Mutex<Vec<futures::channel::oneshot::Sender<()>>>,
}

/// A shard as its connections see it: the API's per-shard state, and what serving HTTP
/// needs beside it. It is the `http::service::Service` of its connections (`connection`).
pub struct ShardService {
    pub app: Rc<Shard>,
    pub date: DateCache,
    /// `[http]` as each connection's loop obeys it, taken again before a connection's
    /// next request once `applied_generation` moves.
    pub conn_limits: Cell<ConnLimits>,
    pub write_timeout: Cell<Duration>,
    /// The configuration generation this shard has applied (`engine::reload`).
    pub applied_generation: Cell<u64>,
    /// Shutting down: finish what was read, answer with `Connection: close`.
    pub draining: Cell<bool>,
    /// Requests read but not yet answered on this shard.
    pub in_flight: Cell<usize>,
    /// Read deadlines of this shard's connections.
    pub deadlines: Sweeper,
}

impl ShardService {
    pub fn id(&self) -> usize {
        self.app.id
    }

    pub fn config(&self) -> &'static Config {
        self.app.config()
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Where a shard's connections come from: its own SO_REUSEPORT listener, or the acceptor
/// of a socket passed by systemd (`activation`).
pub enum Source {
    Listen,
    Handed(futures::channel::mpsc::UnboundedReceiver<std::os::fd::RawFd>),
}

/// The shard's main task: bind, accept until shutdown, then drain.
pub async fn run(
    id: usize,
    shared: &'static Shared,
    stopping: &'static Stopping,
    source: Source,
    bound: std::sync::mpsc::SyncSender<Result<(), String>>,
) {
    let config = &shared.config;
    let metrics = &shared.metrics[id];
    let listener = match source {
        Source::Handed(handed) => Err(handed),
        Source::Listen => match Listener::bind(config.server.listen, config.server.listen_backlog) {
            Ok(listener) => Ok(listener),
            Err(e) => {
                let _ = bound.send(Err(format!(
                    "shard {id}: cannot listen on {}: {e}",
                    config.server.listen
                )));
                return;
            }
        },
    };
    let app = application(id, shared);
    let shard = Rc::new(ShardService {
        app,
        date: DateCache::default(),
        conn_limits: Cell::new(conn_limits(&config.http)),
        write_timeout: Cell::new(ms(config.http.write_timeout_ms)),
        applied_generation: Cell::new(0),
        draining: Cell::new(false),
        in_flight: Cell::new(0),
        deadlines: Sweeper::default(),
    });
    metrics.heartbeat_ms.store(now_ms(), Ordering::Relaxed);
    let _ = bound.send(Ok(()));

    let (stop, stop_signal) = futures::channel::oneshot::channel::<()>();
    stopping.stop_senders.lock().expect("stop list lock").push(stop);
    runtime::spawn(tick(shard.clone()));
    runtime::spawn(sweep(shard.clone()));
    if config.cache.enabled {
        runtime::spawn(crate::store::cache::bus::subscribe(
            shard.app.store.clone(),
            shared.redis_target.clone(),
        ));
    }
    // A signal that came before the sender was registered is seen through the flag.
    let stopped_already = stopping.shutdown.load(Ordering::SeqCst);
    match listener {
        Ok(listener) => accept_until(&shard, listener, stop_signal, stopped_already).await,
        Err(handed) => serve_handed(&shard, handed, stop_signal).await,
    }
    shard
        .deadlines
        .cap_idle(Instant::now() + ms(config.server.drain_idle_ms));
    drain(&shard).await;
    log::info!("shard {id} stopped");
}

/// The API's state for shard `id`: its connections (they connect in the background), its
/// cache, its limits.
fn application(id: usize, shared: &'static Shared) -> Rc<Shard> {
    let config = &shared.config;
    let metrics = &shared.metrics[id];
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
    Rc::new(Shard {
        id,
        shared,
        metrics,
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
        probe_seq: Cell::new(0),
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
    })
}

pub fn conn_limits(http: &crate::config::Http) -> ConnLimits {
    ConnLimits {
        head: crate::http::head::HeadLimits {
            request_line_bytes_max: http.request_line_bytes_max,
            head_bytes_max: http.head_bytes_max,
            body_bytes_max: http.body_bytes_max,
        },
        headers_count_max: http.headers_count_max,
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
async fn tick(shard: Rc<ShardService>) {
    let interval = ms(shard.config().server.heartbeat_interval_ms);
    loop {
        shard.app.metrics.heartbeat_ms.store(now_ms(), Ordering::Relaxed);
        shard.date.refresh(SystemTime::now());
        super::reload::apply_if_new(&shard);
        shard.app.store.sample_occupancy();
        runtime::sleep(interval).await;
    }
}

/// Expires connection read deadlines every `deadline_sweep_ms`.
async fn sweep(shard: Rc<ShardService>) {
    let interval = ms(shard.config().http.deadline_sweep_ms);
    loop {
        runtime::sleep(interval).await;
        shard.deadlines.sweep(Instant::now());
    }
}

/// Accepts until `stop`, then stops listening without dropping anything the kernel
/// already queued or an accept it already completed: those connections are served too,
/// their requests answered with `Connection: close`.
async fn accept_until(
    shard: &Rc<ShardService>,
    listener: Listener,
    mut stop: futures::channel::oneshot::Receiver<()>,
    stopped_already: bool,
) {
    use futures::future::{Either, select};
    let server = &shard.config().server;
    // At the cap the shard stops accepting until a connection closes; the kernel's backlog
    // holds the rest, so the fd limit is never reached through us.
    let slots = Rc::new(Semaphore::new(server.connections_per_shard_max as u64));
    // Stopped before it began: straight to taking what the kernel queued.
    let mut accepting = !stopped_already;
    while accepting {
        let permit = {
            let acquire = std::pin::pin!(slots.acquire_static_permit(1));
            match select(acquire, &mut stop).await {
                Either::Left((Ok(permit), _)) => permit,
                _ => {
                    accepting = false;
                    continue;
                }
            }
        };
        // The accept is never dropped while pending: io_uring may have completed it, and
        // the connection would be lost. A stop shuts the listener, which ends it.
        let mut accept = std::pin::pin!(listener.accept());
        let accepted = match select(accept.as_mut(), &mut stop).await {
            Either::Left((accepted, _)) => accepted,
            Either::Right(_) => {
                shard.draining.set(true);
                let queued = listener.stop();
                if let Ok(stream) = accept.await {
                    serve(shard, stream, Some(permit));
                }
                serve_queued(shard, &slots, queued);
                return;
            }
        };
        match accepted {
            Ok(stream) => {
                ShardMetrics::add(&shard.app.metrics.connections_accepted, 1);
                serve(shard, stream, Some(permit));
            }
            Err(e) => {
                // EMFILE/ENFILE at the fd limit, or a connection reset before accept: wait a
                // little and go on; never crash.
                ShardMetrics::add(&shard.app.metrics.accept_errors, 1);
                log::warn!("shard {}: accept failed: {e}", shard.id());
                drop(permit);
                runtime::sleep(ms(server.accept_error_backoff_ms)).await;
            }
        }
    }
    shard.draining.set(true);
    serve_queued(shard, &slots, listener.stop());
}

/// Serves the connections the acceptor hands over (socket activation) until it stops
/// handing: on shutdown it stops first, so every connection it took is served here.
async fn serve_handed(
    shard: &Rc<ShardService>,
    mut handed: futures::channel::mpsc::UnboundedReceiver<std::os::fd::RawFd>,
    mut stop: futures::channel::oneshot::Receiver<()>,
) {
    use futures::StreamExt;
    use futures::future::{Either, select};
    use std::os::fd::FromRawFd;
    let mut stopping = false;
    loop {
        let next = if stopping {
            handed.next().await
        } else {
            match select(handed.next(), &mut stop).await {
                Either::Left((next, _)) => next,
                Either::Right(_) => {
                    stopping = true;
                    shard.draining.set(true);
                    continue;
                }
            }
        };
        let Some(fd) = next else { break };
        ShardMetrics::add(&shard.app.metrics.connections_accepted, 1);
        // SAFETY: a connected socket the acceptor accepted and handed to us alone.
        serve(shard, unsafe { TcpStream::from_raw_fd(fd) }, None);
    }
    shard.draining.set(true);
}

/// Serves what the listener had queued when it stopped. Past the connection cap too: each
/// is answered once and closed, which beats resetting it.
fn serve_queued(shard: &Rc<ShardService>, slots: &Rc<Semaphore>, queued: Vec<TcpStream>) {
    for stream in queued {
        ShardMetrics::add(&shard.app.metrics.connections_accepted, 1);
        serve(shard, stream, slots.try_acquire_static_permit(1).ok());
    }
}

fn serve(shard: &Rc<ShardService>, stream: TcpStream, permit: Option<StaticPermit>) {
    let shard = shard.clone();
    runtime::spawn(async move {
        super::connection::serve(shard, stream).await;
        drop(permit);
    });
}

/// Waits until every connection has closed, at most `shutdown_timeout_ms` from the signal:
/// each request read is answered with `Connection: close`, and a connection idle between
/// requests closes after `drain_idle_ms` unless a request comes on it first.
async fn drain(shard: &ShardService) {
    let deadline = Instant::now() + ms(shard.config().server.shutdown_timeout_ms);
    let open = || shard.app.metrics.connections_open.load(Ordering::Relaxed);
    while (shard.in_flight.get() > 0 || open() > 0) && Instant::now() < deadline {
        runtime::sleep(Duration::from_millis(5)).await;
    }
    if shard.in_flight.get() > 0 || open() > 0 {
        log::warn!(
            "shard {}: {} requests in flight and {} connections open at the shutdown timeout",
            shard.id(),
            shard.in_flight.get(),
            open()
        );
    }
}
