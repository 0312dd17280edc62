//! Postgres on a shard: `connections_per_shard` percore-pg connections for reads (and
//! `write_connections_per_shard` more for writes) over glommio sockets, each kept alive by
//! a supervisor task that reconnects with backoff and replaces a connection whose server
//! has gone silent past the statement deadline.
//!
//! Runs on a shard: never blocks. Server addresses are resolved once at start-up, before
//! any shard exists, because name resolution is a blocking call.

use crate::metrics::ShardMetrics;
use crate::runtime::{self, TcpStream};
use crate::store::room::{Permit, Room};
use crate::store::settings::Database;
use crate::store::{Kind, Stmt};
use crate::units::ms;
use percore_pg::{Client, Statement};
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

/// How often a request waiting for a connection looks again, while none is up.
const POOL_POLL_MS: u64 = 5;

/// One open connection; its prepared statements (`sql::Stmt`) are indexed by `Stmt as usize`.
pub struct Conn {
    pub client: Client,
}

impl Conn {
    pub fn statement(&self, stmt: Stmt) -> &Statement {
        self.client.statement(stmt as usize)
    }
}

/// Everything a shard needs to open its connections; built once in `main`.
#[derive(Clone)]
pub struct Target {
    pub config: percore_pg::Config,
    /// One address per host of the URL, in its order: a multi-host URL is tried in turn.
    pub addrs: Vec<SocketAddr>,
}

impl Target {
    /// The primary's target. Blocking: call only before shards start.
    pub fn resolve(settings: &Database) -> Result<Target, String> {
        Target::resolve_url(&settings.url, "database.url", settings)
    }

    /// Each replica's target, in `database.replicas` order. Blocking, as `resolve`.
    pub fn resolve_replicas(settings: &Database) -> Result<Vec<Target>, String> {
        (settings.replicas.iter().enumerate())
            .map(|(i, url)| Target::resolve_url(url, &format!("database.replicas[{i}]"), settings))
            .collect()
    }

    /// Parses `url` (the setting `key`) and resolves its hosts.
    fn resolve_url(url: &str, key: &str, settings: &Database) -> Result<Target, String> {
        let mut config = percore_pg::Config::parse(url).map_err(|e| format!("{key}: {e}"))?;
        use std::net::ToSocketAddrs;
        let addrs = (config.hosts.iter())
            .map(|host| {
                (host.name.as_str(), host.port) // blocking-ok: start-up, before any shard exists
                    .to_socket_addrs()
                    .map_err(|e| format!("{key}: cannot resolve {}: {e}", host.name))?
                    .next()
                    .ok_or_else(|| format!("{key}: {} has no address", host.name))
            })
            .collect::<Result<Vec<_>, String>>()?;
        config.set_param("statement_timeout", &settings.statement_timeout_ms.to_string());
        config.set_param(
            "client_connection_check_interval",
            &settings.client_check_interval_ms.to_string(),
        );
        Ok(Target { config, addrs })
    }
}

/// The shard's connections. Clients pipeline concurrent queries on one socket, so a few
/// connections serve many concurrent requests. Slots `0..readers` serve reads; the rest,
/// if any, serve writes, so that no read waits in a pipeline behind a commit's WAL flush.
/// Either kind falls back to the other group's connections while its own are all down.
///
/// Admission: each group has room for `pipeline_depth_max` statements per connection. A
/// statement takes a unit of room for as long as it runs, waits up to `pool_wait_ms` for
/// one, and is refused at once when `queued_max` statements already wait: an overloaded
/// shard answers 503 fast instead of growing a queue no one will wait out.
pub struct Pool {
    slots: Vec<RefCell<Option<Rc<Conn>>>>,
    reads: Group,
    /// Empty when `write_connections_per_shard` is 0: writes then fall back to `reads`.
    writes: Group,
    pool_wait: Cell<Duration>,
    /// For connections opened from now on (a reload may change it).
    statement_timeout_ms: Cell<u64>,
    queued_max: usize,
}

/// Slots that serve one kind of statement, taken round robin, and their pipelines' room.
struct Group {
    slots: std::ops::Range<usize>,
    next: Cell<usize>,
    room: Rc<Room>,
}

impl Group {
    fn new(slots: std::ops::Range<usize>, pipeline_depth_max: usize, pool_wait: Duration) -> Group {
        Group {
            room: Room::new(slots.len() * pipeline_depth_max, pool_wait),
            slots,
            next: Cell::new(0),
        }
    }
}

/// Why a statement got no connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Unavailable {
    /// No connection became usable within `pool_wait_ms`.
    Down,
    /// The pipelines had no room within `pool_wait_ms`, or `queued_max` statements waited.
    Busy,
}

/// A connection and a unit of its group's pipeline room, held while a statement runs.
pub struct Lease {
    conn: Rc<Conn>,
    _room: Permit,
}

impl std::ops::Deref for Lease {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        &self.conn
    }
}

/// Which server a pool talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    /// `database.replicas[i]`: reads only, so no write connections.
    Replica(usize),
}

impl Pool {
    /// Creates the pool and spawns one supervisor per connection on the current shard.
    pub fn start(
        target: Target,
        settings: &Database,
        role: Role,
        shard_id: usize,
        metrics: &'static ShardMetrics,
    ) -> Rc<Pool> {
        let readers = settings.connections_per_shard;
        let writers = match role {
            Role::Primary => settings.write_connections_per_shard,
            Role::Replica(_) => 0,
        };
        let total = readers + writers;
        let (depth, pool_wait) = (settings.pipeline_depth_max, ms(settings.pool_wait_ms));
        let pool = Rc::new(Pool {
            slots: (0..total).map(|_| RefCell::new(None)).collect(),
            reads: Group::new(0..readers, depth, pool_wait),
            writes: Group::new(readers..total, depth, pool_wait),
            pool_wait: Cell::new(pool_wait),
            statement_timeout_ms: Cell::new(settings.statement_timeout_ms),
            queued_max: settings.queued_max,
        });
        for slot in 0..total {
            let (up, failures) = match role {
                Role::Primary => (&metrics.db_connections_up, &metrics.db_connect_failures),
                Role::Replica(i) => (
                    &metrics.replicas[i].connections_up,
                    &metrics.replicas[i].connect_failures,
                ),
            };
            let supervisor = Supervisor {
                pool: pool.clone(),
                slot,
                target: target.clone(),
                settings: settings.clone(),
                up,
                failures,
                // Operators (and tests) tell the groups apart in pg_stat_activity.
                application_name: match role {
                    Role::Replica(i) => format!("percore-shard-{shard_id}-replica-{i}"),
                    Role::Primary if slot < readers => format!("percore-shard-{shard_id}"),
                    Role::Primary => format!("percore-shard-{shard_id}-writes"),
                },
            };
            runtime::spawn(supervisor.run());
        }
        pool
    }

    /// A usable client for a statement of `kind` with room in its group's pipelines,
    /// waiting up to `pool_wait_ms` in all. `admitted`: the request already has a
    /// statement in, so this one is not refused for a full queue (admission is per
    /// request: refusing a request's tenth statement would waste the nine before it).
    pub async fn conn(&self, kind: Kind, admitted: bool, metrics: &ShardMetrics) -> Result<Lease, Unavailable> {
        let deadline = Instant::now() + self.pool_wait.get();
        let (own, other) = match kind {
            Kind::Read => (&self.reads, &self.writes),
            Kind::Write => (&self.writes, &self.reads),
        };
        let admitting = if own.slots.is_empty() { other } else { own };
        let room = self.room_in(admitting, admitted, metrics).await?;
        loop {
            if let Some(conn) = self.pick(own).or_else(|| self.pick(other)) {
                return Ok(Lease { conn, _room: room });
            }
            if Instant::now() >= deadline {
                ShardMetrics::add(&metrics.db_pool_wait_timeouts, 1);
                return Err(Unavailable::Down);
            }
            runtime::sleep(Duration::from_millis(POOL_POLL_MS)).await;
        }
    }

    /// A unit of `group`'s pipeline room: at once if free, else after waiting in line.
    async fn room_in(&self, group: &Group, admitted: bool, metrics: &ShardMetrics) -> Result<Permit, Unavailable> {
        if let Some(room) = group.room.try_take() {
            return Ok(room);
        }
        if !admitted && group.room.waiting() >= self.queued_max {
            ShardMetrics::add(&metrics.db_queue_full, 1);
            return Err(Unavailable::Busy);
        }
        ShardMetrics::add(&metrics.db_pool_waits, 1);
        match group.room.take().await {
            Some(room) => Ok(room),
            None => {
                ShardMetrics::add(&metrics.db_pool_wait_timeouts, 1);
                Err(Unavailable::Busy)
            }
        }
    }

    /// A reload: `pool_wait_ms` for waits that begin after it, `statement_timeout_ms` for
    /// connections opened after it (and for the silence deadline of all).
    pub fn reconfigure(&self, settings: &Database) {
        let wait = ms(settings.pool_wait_ms);
        self.pool_wait.set(wait);
        self.reads.room.set_wait(wait);
        self.writes.room.set_wait(wait);
        self.statement_timeout_ms.set(settings.statement_timeout_ms);
    }

    /// Statements holding pipeline room and statements waiting for it, in both groups: what
    /// the heartbeat samples into the metrics (sampled, not counted per statement, to keep
    /// the hot path free of it).
    pub fn occupancy(&self) -> (usize, usize) {
        let (reads, writes) = (&self.reads.room, &self.writes.room);
        (reads.in_use() + writes.in_use(), reads.waiting() + writes.waiting())
    }

    /// Whether any connection is usable now: a replica without one is skipped at once
    /// rather than waited for.
    pub fn is_up(&self) -> bool {
        self.slots
            .iter()
            .any(|slot| slot.borrow().as_ref().is_some_and(|c| !c.client.is_closed()))
    }

    /// The group's next live connection, round robin.
    fn pick(&self, group: &Group) -> Option<Rc<Conn>> {
        let (start, n) = (group.slots.start, group.slots.len());
        for i in 0..n {
            let offset = (group.next.get() + i) % n;
            let slot = self.slots[start + offset].borrow();
            if let Some(conn) = slot.as_ref().filter(|c| !c.client.is_closed()) {
                group.next.set((offset + 1) % n);
                return Some(conn.clone());
            }
        }
        None
    }
}

struct Supervisor {
    pool: Rc<Pool>,
    slot: usize,
    target: Target,
    settings: Database,
    /// This pool's gauge of usable connections and counter of failed attempts.
    up: &'static AtomicU64,
    failures: &'static AtomicU64,
    application_name: String,
}

impl Supervisor {
    async fn run(self) {
        let min = ms(self.settings.reconnect_backoff_ms_min);
        let max = ms(self.settings.reconnect_backoff_ms_max);
        let mut backoff = min;
        let mut failures_logged = 0u32;
        loop {
            match self.connect().await {
                Ok((client, connection)) => {
                    backoff = min;
                    failures_logged = 0;
                    *self.pool.slots[self.slot].borrow_mut() = Some(Rc::new(Conn { client: client.clone() }));
                    ShardMetrics::add(self.up, 1);
                    let ended = self.serve(&client, connection).await;
                    if let Err(e) = ended {
                        log::warn!("{}: postgres connection {} lost: {e}", self.application_name, self.slot);
                    }
                    self.pool.slots[self.slot].borrow_mut().take();
                    ShardMetrics::sub(self.up, 1);
                }
                Err(e) => {
                    ShardMetrics::add(self.failures, 1);
                    // One line per outage per connection, not one per retry.
                    if failures_logged == 0 {
                        log::warn!(
                            "{}: cannot connect to postgres at {:?}: {e}; retrying",
                            self.application_name,
                            self.target.addrs
                        );
                    }
                    failures_logged += 1;
                }
            }
            runtime::sleep(backoff).await;
            backoff = (backoff * 2).min(max);
        }
    }

    /// Drives the connection until it ends, or until its server has left a statement
    /// unanswered past `statement_timeout_ms` + `deadline_margin_ms`: Postgres enforces
    /// the statement timeout itself, so only a silent server or network gets that far.
    /// Then every pending statement fails with a timeout and the connection is replaced.
    /// Idle for `keepalive_interval_ms`, it pings, so a half-open connection is found
    /// before a request is sent into it.
    async fn serve(
        &self,
        client: &Client,
        connection: percore_pg::Connection<TcpStream>,
    ) -> Result<(), percore_pg::Error> {
        let deadline = || ms(self.pool.statement_timeout_ms.get() + self.settings.deadline_margin_ms);
        let check = ms((self.settings.deadline_margin_ms / 2).max(10));
        let watch = async {
            let mut idle_since = Instant::now();
            loop {
                runtime::sleep(check).await;
                if client.waiting_since().is_some_and(|since| since.elapsed() > deadline()) {
                    client.abort();
                    return;
                }
                if client.pending() > 0 {
                    idle_since = Instant::now();
                } else if self.keepalive_due(idle_since) {
                    if !self.ping(client).await {
                        log::warn!(
                            "{}: postgres connection {} did not answer a keepalive within {} ms",
                            self.application_name,
                            self.slot,
                            self.settings.keepalive_timeout_ms
                        );
                        client.abort();
                        return;
                    }
                    idle_since = Instant::now();
                }
            }
        };
        let mut connection = std::pin::pin!(connection);
        match futures::future::select(connection.as_mut(), std::pin::pin!(watch)).await {
            futures::future::Either::Left((ended, _)) => ended,
            // Aborted: the driver fails what is pending and ends at its next poll.
            futures::future::Either::Right(((), _)) => connection.await,
        }
    }

    fn keepalive_due(&self, idle_since: Instant) -> bool {
        let interval_ms = self.settings.keepalive_interval_ms;
        interval_ms > 0 && idle_since.elapsed() >= ms(interval_ms)
    }

    /// `SELECT 1` answered within `keepalive_timeout_ms` (an error answer counts: the
    /// server is there).
    async fn ping(&self, client: &Client) -> bool {
        let statement = client.statement(Stmt::Ping as usize);
        let answered = runtime::timeout(ms(self.settings.keepalive_timeout_ms), client.query(statement, &[]));
        answered.await.is_some()
    }

    /// Logs in to the first host of the URL that accepts (and, with
    /// `target_session_attrs=read-write`, takes writes), and prepares every statement.
    async fn connect(&self) -> Result<(Client, percore_pg::Connection<TcpStream>), String> {
        let connect_timeout = ms(self.settings.connect_timeout_ms);
        let mut config = self.target.config.clone();
        config.set_param("application_name", &self.application_name);
        config.set_param("statement_timeout", &self.pool.statement_timeout_ms.get().to_string());
        let statements: Vec<&str> = Stmt::ALL.iter().map(|stmt| stmt.sql()).collect();
        let mut errors = Vec::new();
        for addr in &self.target.addrs {
            let attempt = async {
                let stream = TcpStream::connect(*addr).await.map_err(|e| e.to_string())?;
                stream.set_nodelay(true).map_err(|e| e.to_string())?;
                percore_pg::connect(stream, &config, &statements)
                    .await
                    .map_err(|e| match e {
                        // A statement that does not prepare, by its name.
                        percore_pg::Error::Prepare { index, error } => match Stmt::ALL.get(index) {
                            Some(stmt) => format!("preparing {stmt:?}: {}", error.message),
                            None => format!("preparing statement {index}: {}", error.message),
                        },
                        e => e.to_string(),
                    })
            };
            match runtime::timeout(connect_timeout, attempt).await {
                Some(Ok(connected)) => return Ok(connected),
                Some(Err(e)) => errors.push(format!("{addr}: {e}")),
                None => errors.push(format!("{addr}: connect timed out")),
            }
        }
        Err(errors.join("; "))
    }
}
