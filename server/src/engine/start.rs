//! Starting the whole server from a validated config (both service URLs set: it never
//! provisions a service): CPU placement, the worker pool, the shards, and waiting for them to stop.

use crate::config::Config;

use crate::api::state::Shared;
use crate::engine::lifecycle;
use crate::engine::shard::{self, Stopping};
use crate::metrics::ShardMetrics;
use crate::runtime;
use crate::store::redis::RedisTarget;
use percore_workers::{Pool, PoolConfig};
use postgres::Client as BlockingClient; // blocking-ok: migrations at start-up and `percore migrate` only
use std::sync::atomic::{AtomicBool, AtomicU64};

/// Where shards and workers run.
#[derive(Debug, PartialEq, Eq)]
pub struct Placement {
    pub shard_cpus: Vec<usize>,
    /// Empty: the worker threads run unpinned.
    pub worker_cpus: Vec<usize>,
}

/// Chooses CPUs: shards get `server.cpus` (or the first usable CPUs), one each, capped by
/// what exists; workers get `workers.cpus`, else the usable CPUs no shard uses, else none.
pub fn place(config: &Config, usable: &[usize]) -> Placement {
    assert!(!usable.is_empty(), "a running process has at least one usable CPU");
    let wanted = config.server.shards;
    let candidates: Vec<usize> = if config.server.cpus.is_empty() {
        usable.to_vec()
    } else {
        config
            .server
            .cpus
            .iter()
            .copied()
            .filter(|cpu| usable.contains(cpu))
            .collect()
    };
    let mut shard_cpus: Vec<usize> = candidates.into_iter().take(wanted).collect();
    if shard_cpus.is_empty() {
        shard_cpus.push(usable[0]);
    }
    if shard_cpus.len() < wanted {
        log::warn!(
            "server.shards = {wanted} but only {} usable CPUs fit: running {} shards on CPUs {shard_cpus:?}",
            shard_cpus.len(),
            shard_cpus.len()
        );
    }
    let worker_cpus = if config.workers.cpus.is_empty() {
        usable.iter().copied().filter(|cpu| !shard_cpus.contains(cpu)).collect()
    } else {
        config.workers.cpus.clone()
    };
    Placement {
        shard_cpus,
        worker_cpus,
    }
}

pub fn usable_cpus() -> Vec<usize> {
    let mut cpus: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    cpus.sort_unstable();
    if cpus.is_empty() {
        cpus.push(0);
    }
    cpus
}

/// A blocking client for migrations. Start-up and `percore migrate` only.
fn schema_client(settings: &crate::config::Database) -> Result<BlockingClient, String> {
    let mut config: postgres::Config = settings.url.parse().map_err(|e| format!("database.url: {e}"))?;
    config.connect_timeout(crate::units::ms(settings.connect_timeout_ms));
    config.application_name("percore-migrate");
    // blocking-ok: start-up, before any shard exists.
    config
        .connect(postgres::NoTls)
        .map_err(|e| format!("cannot connect to the database: {e}"))
}

/// `percore migrate`: applies pending schema migrations.
pub fn migrate(settings: &crate::config::Database) -> Result<percore_schema::Outcome, String> {
    let mut client = schema_client(settings).map_err(|e| format!("migrations: {e}"))?;
    percore_schema::migrate(&mut client).map_err(|e| format!("migrations: {e}"))
}

/// `percore jobs retry ID`: puts a dead or failed job back in its queue with fresh
/// attempts. Returns what was done, for the operator.
pub fn retry_job(settings: &crate::config::Database, id: i64) -> Result<String, String> {
    let mut client = schema_client(settings)?;
    match percore_workers::jobs::store::retry(&mut client, id).map_err(|e| format!("retrying job {id}: {e}"))? {
        None => Err(format!("no job {id}")),
        Some((status, queue)) if status == "dead" || status == "failed" => Ok(format!(
            "job {id} was {status}; queued again on {queue} with fresh attempts"
        )),
        Some((status, _)) => Err(format!("job {id} is {status}; only dead or failed jobs are retried")),
    }
}

/// At start-up: migrates (`apply`) or checks that nothing is pending. Every statement is
/// prepared when a connection opens, so a shard cannot serve a database without the whole
/// schema. An unreachable database is not fatal: shards keep reconnecting and /readyz
/// answers 503 until they can, as after any outage.
fn ensure_schema(settings: &crate::config::Database, apply: bool) -> Result<(), String> {
    let mut client = match schema_client(settings) {
        Ok(client) => client,
        Err(e) => {
            log::warn!("schema not checked: {e}; starting anyway, /readyz is 503 until shards connect");
            return Ok(());
        }
    };
    if apply {
        let outcome = percore_schema::migrate(&mut client).map_err(|e| format!("migrations: {e}"))?;
        log::info!(
            "schema: {} migrations applied now, {} already",
            outcome.applied.len(),
            outcome.already
        );
        Ok(())
    } else {
        percore_schema::verify(&mut client).map_err(|e| format!("schema: {e}"))
    }
}

/// Refuses to start when `[cluster] expected_instances` like this one would exhaust the
/// database's connections. An unreachable database is not checked (start-up goes on, as
/// for the schema).
fn check_connection_budget(config: &Config, shards: usize) -> Result<(), String> {
    use crate::engine::budget::{PerInstance, check_server};
    let instances = config.cluster.expected_instances;
    match schema_client(&config.database) {
        Ok(mut client) => check_server(&mut client, "the primary", PerInstance::of(config, shards), instances)?,
        Err(e) => log::warn!("connection budget not checked: {e}"),
    }
    for (i, url) in config.database.replicas.iter().enumerate() {
        let server = format!("database.replicas[{i}]");
        let replica = crate::config::Database {
            url: url.clone(),
            ..config.database.clone()
        };
        // A replica that is down now is skipped at run time; it does not stop start-up.
        match schema_client(&replica) {
            Ok(mut client) => check_server(&mut client, &server, PerInstance::of_replica(config, shards), instances)?,
            Err(e) => log::warn!("connection budget of {server} not checked: {e}"),
        }
    }
    Ok(())
}

/// Shards bind with SO_REUSEPORT, which would let a second percore (or anything else with
/// SO_REUSEPORT, same user) share the port and silently take half the connections. So
/// start-up refuses an address some socket already listens on, as the kernel lists them
/// in /proc/net/tcp{,6}. (A probe bind would not do: the server side of closed
/// connections lingers in TIME_WAIT and fails it for a minute after a restart.)
fn refuse_a_taken_port(listen: std::net::SocketAddr) -> Result<(), String> {
    if listen.port() == 0 {
        return Ok(());
    }
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let read = std::fs::read_to_string(table); // blocking-ok: start-up, before any shard
        let Ok(text) = read else {
            continue;
        };
        if let Some(holder) = listeners(&text).find(|held| conflicts(*held, listen)) {
            return Err(format!(
                "{listen} is already in use ({holder} is listening; another percore?): refusing to share it"
            ));
        }
    }
    Ok(())
}

/// LISTEN sockets (state 0A) of one /proc/net/tcp{,6} table.
fn listeners(table: &str) -> impl Iterator<Item = std::net::SocketAddr> + '_ {
    table.lines().skip(1).filter_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(3) != Some(&"0A") {
            return None;
        }
        let (address, port) = fields.get(1)?.split_once(':')?;
        let port = u16::from_str_radix(port, 16).ok()?;
        // The kernel prints each 32-bit word of the address in host (little-endian) order.
        let mut bytes = Vec::with_capacity(16);
        for word in address.as_bytes().chunks(8) {
            let word = u32::from_str_radix(std::str::from_utf8(word).ok()?, 16).ok()?;
            bytes.extend_from_slice(&word.to_le_bytes());
        }
        let ip: std::net::IpAddr = match bytes.len() {
            4 => <[u8; 4]>::try_from(bytes).ok()?.into(),
            16 => <[u8; 16]>::try_from(bytes).ok()?.into(),
            _ => return None,
        };
        Some(std::net::SocketAddr::new(ip, port))
    })
}

fn conflicts(held: std::net::SocketAddr, wanted: std::net::SocketAddr) -> bool {
    let canonical = |ip: std::net::IpAddr| ip.to_canonical();
    held.port() == wanted.port()
        && (held.ip().is_unspecified()
            || wanted.ip().is_unspecified()
            || canonical(held.ip()) == canonical(wanted.ip()))
}

/// Runs until every shard has drained after SIGTERM/SIGINT. Errors are start-up failures.
pub fn run(config: Config, config_path: std::path::PathBuf) -> Result<(), String> {
    // First, while this is the only thread: it edits the environment.
    let inherited = super::activation::inherited()?;
    let placement = place(&config, &usable_cpus());
    ensure_schema(&config.database, config.database.auto_migrate)?;
    check_connection_budget(&config, placement.shard_cpus.len())?;
    let targets = Targets {
        db: crate::store::pg::Target::resolve(&config.database)?,
        replicas: crate::store::pg::Target::resolve_replicas(&config.database)?,
        redis: RedisTarget::resolve(&config.redis.url)?,
    };
    let pool = start_worker_pool(&config, &placement)?;
    let dummy_password_hash = dummy_password_hash(&config)?;
    // A passed socket is ours to share with systemd; only our own listeners are checked.
    if inherited.is_none() {
        refuse_a_taken_port(config.server.listen)?;
    }
    let job_settings = percore_workers::jobs::Settings {
        jobs: config.jobs.clone(),
        email: config.email.clone(),
        webhooks: config.webhooks.clone(),
    };
    let jobs = percore_workers::jobs::Runtime::start(job_settings, &config.database.url, config.workers.nice)
        .map_err(|e| format!("starting the job workers: {e}"))?;
    let shard_count = placement.shard_cpus.len();
    let shared: &'static Shared = Box::leak(Box::new(Shared {
        metrics: (0..shard_count)
            .map(|_| ShardMetrics::new(&crate::api::routes::Label::NAMES))
            .collect(),
        workers: pool.handle(),
        jobs: jobs.handle(),
        db_target: targets.db,
        replica_targets: targets.replicas,
        recent_writers: crate::store::replicas::RecentWriters::new(config.database.recent_writers_slots),
        redis_target: targets.redis,
        dummy_password_hash,
        memory_pressure: AtomicBool::new(false),
        resident_bytes: AtomicU64::new(0),
        live: crate::config::live::Published::new(&config),
        config,
    }));
    let stopping: &'static Stopping = Box::leak(Box::default());
    lifecycle::watch_signals(shared, stopping, config_path).map_err(|e| format!("installing signal handlers: {e}"))?;
    lifecycle::start_memory_guard(shared).map_err(|e| format!("starting the memory guard: {e}"))?;
    let handles = start_shards(shared, stopping, &placement.shard_cpus, inherited)?;
    let listening = match inherited {
        Some(_) => "the socket systemd passed (server.listen is not used)".to_string(),
        None => shared.config.server.listen.to_string(),
    };
    log::info!(
        "percore listening on {listening} with {shard_count} shards on CPUs {:?}, {} worker threads",
        placement.shard_cpus,
        shared.config.workers.threads
    );
    lifecycle::notify_ready();
    lifecycle::start_watchdog(shared).map_err(|e| format!("starting the watchdog: {e}"))?;
    for handle in handles {
        handle.join().map_err(|e| format!("a shard failed: {e}"))?;
    }
    // The jobs in hand get what is left of the shutdown timeout, counted from the signal.
    let started_ms = stopping.started_ms.load(std::sync::atomic::Ordering::SeqCst);
    let deadline_ms = started_ms.max(1) + shared.config.server.shutdown_timeout_ms;
    jobs.shutdown(std::time::Duration::from_millis(
        deadline_ms.saturating_sub(crate::engine::shard::now_ms()),
    ));
    log::info!("all shards stopped; exiting");
    Ok(())
}

fn start_worker_pool(config: &Config, placement: &Placement) -> Result<Pool, String> {
    if placement.worker_cpus.is_empty() {
        log::info!(
            "every CPU runs a shard: worker threads run unpinned at nice {}",
            config.workers.nice
        );
    }
    Pool::start(&PoolConfig {
        threads: config.workers.threads,
        cpus: placement.worker_cpus.clone(),
        queue_depth_max: config.workers.queue_depth_max,
        nice: config.workers.nice,
        wait_ms_max: config.workers.wait_ms_max,
    })
    .map_err(|e| format!("starting the worker pool: {e}"))
}

/// Where the shards connect, resolved once at start-up.
struct Targets {
    db: crate::store::pg::Target,
    replicas: Vec<crate::store::pg::Target>,
    redis: RedisTarget,
}

/// An Argon2 hash of nothing anyone knows, with the configured cost: a login for an
/// unknown email verifies against it, so it costs what a real one does.
fn dummy_password_hash(config: &Config) -> Result<String, String> {
    let w = &config.workers;
    let params = percore_workers::password::Argon2Params {
        memory_kib: w.argon2_memory_kib,
        iterations: w.argon2_iterations,
        parallelism: w.argon2_parallelism,
    };
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| format!("getrandom: {e}"))?;
    // blocking-ok: start-up, before any shard; one hash, tens of milliseconds.
    Ok(percore_workers::password::hash(params, &secret))
}

/// One pinned thread per CPU in `cpus`, each running a shard; returns once every shard
/// has bound its listener (or the first error).
fn start_shards(
    shared: &'static Shared,
    stopping: &'static Stopping,
    cpus: &[usize],
    inherited: Option<std::os::fd::RawFd>,
) -> Result<Vec<runtime::ShardHandle>, String> {
    let detect_stalls = shared.config.server.detect_stalls;
    let (bound, bound_rx) = std::sync::mpsc::sync_channel(cpus.len());
    let mut handles = Vec::with_capacity(cpus.len());
    let mut senders = Vec::new();
    for (id, cpu) in cpus.iter().copied().enumerate() {
        let bound = bound.clone();
        let source = match inherited {
            Some(_) => {
                let (sender, receiver) = futures::channel::mpsc::unbounded();
                senders.push(sender);
                shard::Source::Handed(receiver)
            }
            None => shard::Source::Listen,
        };
        let handle = runtime::spawn_pinned(&format!("percore-shard-{id}"), cpu, detect_stalls, move || {
            shard::run(id, shared, stopping, source, bound)
        })
        .map_err(|e| format!("starting shard {id} on CPU {cpu}: {e}"))?;
        handles.push(handle);
    }
    for _ in 0..cpus.len() {
        let bound = bound_rx.recv(); // blocking-ok: the main thread waits for shards to bind
        match bound {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("a shard exited during start-up".into()),
        }
    }
    if let Some(fd) = inherited {
        super::activation::start_acceptor(fd, shared, &stopping.shutdown, senders)
            .map_err(|e| format!("starting the acceptor: {e}"))?;
    }
    Ok(handles)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(shards: usize, cpus: Vec<usize>) -> Config {
        let mut config = Config::default();
        config.server.shards = shards;
        config.server.cpus = cpus;
        config
    }

    #[test]
    fn fewer_cpus_than_shards_uses_what_exists_and_leaves_workers_unpinned() {
        let placement = place(&config(4, vec![]), &[0, 1]);
        assert_eq!(
            placement,
            Placement {
                shard_cpus: vec![0, 1],
                worker_cpus: vec![]
            }
        );
    }

    #[test]
    fn workers_get_the_cpus_no_shard_uses() {
        let placement = place(&config(1, vec![1]), &[0, 1, 2]);
        assert_eq!(
            placement,
            Placement {
                shard_cpus: vec![1],
                worker_cpus: vec![0, 2]
            }
        );
    }

    #[test]
    fn proc_net_tcp_listeners_are_read_and_matched() {
        let table = "  sl  local_address rem_address   st\n\
                     0: 0100007F:1F90 00000000:0000 0A 0\n\
                     1: 0100007F:1F90 0100007F:C350 01 0\n\
                     2: 00000000:0050 00000000:0000 0A 0\n";
        let found: Vec<_> = listeners(table).collect();
        assert_eq!(
            found,
            vec!["127.0.0.1:8080".parse().unwrap(), "0.0.0.0:80".parse().unwrap()]
        );
        let v6 = "h\n 0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A\n";
        assert_eq!(listeners(v6).collect::<Vec<_>>(), vec!["[::1]:8080".parse().unwrap()]);
        assert!(conflicts(found[0], "127.0.0.1:8080".parse().unwrap()));
        assert!(conflicts(found[0], "0.0.0.0:8080".parse().unwrap()));
        assert!(!conflicts(found[0], "127.0.0.2:8080".parse().unwrap()));
        assert!(!conflicts(found[0], "127.0.0.1:8081".parse().unwrap()));
        assert!(conflicts(found[1], "10.0.0.1:80".parse().unwrap()));
    }

    #[test]
    fn unusable_configured_cpus_are_dropped() {
        let placement = place(&config(2, vec![7, 1]), &[0, 1]);
        assert_eq!(placement.shard_cpus, vec![1]);
    }
}
