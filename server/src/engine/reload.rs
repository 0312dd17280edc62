//! Reloading `tuning.toml` while serving (SIGHUP, `systemctl reload percore`).
//!
//! The signal thread rereads and validates the file exactly as start-up does. A refused
//! file changes nothing and is logged with its key. A valid one is merged into the
//! running configuration through `config::live` (live keys only; restart-only keys that
//! differ are named in one warning and flagged in `/metrics`), the process-wide parts are
//! applied here (log level, job queues), and the result is published. Each shard applies
//! its own parts at its next tick (`apply_if_new`): no connection or request in flight is
//! touched. systemd hears RELOADING=1 first and READY=1 once every shard has applied it.
//!
//! `reload` runs on the signal thread; `apply_if_new` runs on a shard: never blocks (it
//! takes the publication lock only when the generation moved).

use super::lifecycle::notify;
use super::shard::{ShardService, conn_limits};
use crate::api::state::Shared;
use crate::config::Config;
use crate::config::live::{Reloaded, merge};
use crate::units::ms;
use sd_notify::NotifyState;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How long a reload waits for every shard to apply it before telling systemd READY=1
/// anyway (a shard ticks every `heartbeat_interval_ms`).
const APPLY_WAIT: Duration = Duration::from_secs(5);

/// What a reload of `text` would do, without doing it: `percore check-config` shows this.
pub fn check(running: &Config, loaded: &Config) -> Result<Reloaded, String> {
    merge(running, loaded).map_err(|(key, reason)| format!("key `{key}`: {reason}"))
}

/// Rereads `path` and puts its live keys in force on every shard. Runs on the signal thread.
pub fn reload(shared: &'static Shared, path: &std::path::Path) {
    notify(&[NotifyState::Reloading, NotifyState::MonotonicUsec(monotonic_usec())]);
    let (_, running, _) = shared.live.current();
    let loaded = Config::load(path, true).map_err(|e| e.to_string());
    let reloaded = loaded.and_then(|loaded| check(&running, &loaded).map_err(|e| format!("{}: {e}", path.display())));
    let reloaded = match reloaded {
        Ok(reloaded) => reloaded,
        Err(e) => {
            shared.live.reloads_refused.fetch_add(1, Ordering::Relaxed);
            log::error!("reload refused, the running configuration stays in force: {e}");
            notify(&[NotifyState::Ready]);
            return;
        }
    };
    if !reloaded.restart_only.is_empty() {
        shared.live.restart_pending.store(true, Ordering::Relaxed);
        log::warn!(
            "reload: these keys need a restart and keep their running values until then: {}",
            reloaded.restart_only.join(", ")
        );
    }
    let config = reloaded.config;
    apply_process_wide(shared, &config);
    let generation = shared.live.publish(config);
    shared.live.reloads_applied.fetch_add(1, Ordering::Relaxed);
    let waited = Instant::now();
    let applied = |m: &crate::metrics::ShardMetrics| m.config_generation.load(Ordering::Acquire) >= generation;
    while !shared.metrics.iter().all(applied) && waited.elapsed() < APPLY_WAIT {
        std::thread::sleep(Duration::from_millis(10)); // blocking-ok: the signal thread
    }
    let (_, _, fingerprint) = shared.live.current();
    log::info!(
        "reloaded {} (configuration {fingerprint}): {}",
        path.display(),
        if reloaded.applied.is_empty() {
            "no live key changed".to_string()
        } else {
            format!("applied {}", reloaded.applied.join(", "))
        }
    );
    notify(&[NotifyState::Ready]);
}

/// What lives outside the shards: the log level, the job queues, the webhook timeout.
fn apply_process_wide(shared: &Shared, config: &Config) {
    if let Ok(level) = config.log.level.parse::<log::LevelFilter>() {
        log::set_max_level(level);
    }
    shared.jobs.reconfigure(&config.jobs, &config.webhooks);
}

/// On a shard, at each tick: applies the published configuration if it is newer than the
/// one this shard runs. Each connection takes the new HTTP limits before its next request;
/// the rest applies at once.
pub fn apply_if_new(shard: &ShardService) {
    let live = &shard.app.shared.live;
    if live.generation() == shard.applied_generation.get() {
        return;
    }
    let (generation, config, _) = live.current();
    shard.conn_limits.set(conn_limits(&config.http));
    shard.write_timeout.set(ms(config.http.write_timeout_ms));
    let app = &shard.app;
    app.limiter.reconfigure(&config.rate_limit);
    let per_second = f64::from(config.identity.login_rate_per_minute) / 60.0;
    (app.login_throttle.borrow_mut()).reconfigure(per_second, config.identity.login_burst);
    app.store.reconfigure(&config.database, &config.cache);
    shard.applied_generation.set(generation);
    app.metrics.config_generation.store(generation, Ordering::Release);
}

fn monotonic_usec() -> i128 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec we pass; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    i128::from(now.tv_sec) * 1_000_000 + i128::from(now.tv_nsec) / 1_000
}
