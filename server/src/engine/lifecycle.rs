//! Start-up and shutdown around the shards: signals, the systemd notify protocol and the
//! watchdog. These run on plain threads of their own, never on a shard.

use crate::api::state::Shared;
use crate::engine::shard::{Stopping, now_ms};
use sd_notify::NotifyState;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// SIGHUP: reload `config_path` (`reload`). SIGTERM or SIGINT: tell systemd we are
/// stopping and ask every shard to drain.
pub fn watch_signals(
    shared: &'static Shared,
    stopping: &'static Stopping,
    config_path: std::path::PathBuf,
) -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    std::thread::Builder::new()
        .name("percore-signals".into())
        .spawn(move || {
            let stop = signals.forever().find(|signal| {
                if *signal == SIGHUP {
                    super::reload::reload(shared, &config_path);
                }
                *signal != SIGHUP
            });
            if let Some(signal) = stop {
                log::info!(
                    "signal {signal}: draining (at most {} ms)",
                    shared.config.server.shutdown_timeout_ms
                );
                notify(&[NotifyState::Stopping]);
                stopping.started_ms.store(now_ms(), Ordering::SeqCst);
                stopping.shutdown.store(true, Ordering::SeqCst);
                shared.jobs.stop_claiming();
                for stop in stopping.stop_senders.lock().expect("stop list lock").drain(..) {
                    let _ = stop.send(());
                }
            }
            // A second stopping signal while draining: stop at once.
            if signals.forever().any(|signal| signal != SIGHUP) {
                log::warn!("second signal: exiting without waiting");
                std::process::exit(1);
            }
        })?;
    Ok(())
}

pub fn notify_ready() {
    notify(&[NotifyState::Ready, NotifyState::Status("serving")]);
}

pub(super) fn notify(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, state) {
        log::warn!("sd_notify failed: {e}");
    }
}

/// When systemd asked for a watchdog (WATCHDOG_USEC), pings it at half the interval, but
/// only while every shard's loop has ticked within the interval: one stalled shard stops
/// the pings and systemd restarts us.
pub fn start_watchdog(shared: &'static Shared) -> std::io::Result<()> {
    let Some(interval) = watchdog_interval(|name| std::env::var(name).ok(), std::process::id()) else {
        return Ok(());
    };
    log::info!("systemd watchdog every {interval:?}");
    std::thread::Builder::new()
        .name("percore-watchdog".into())
        .spawn(move || {
            loop {
                std::thread::sleep(interval / 2); // blocking-ok: the watchdog thread, not a shard
                let now = now_ms();
                let stalled: Vec<usize> = shared
                    .metrics
                    .iter()
                    .enumerate()
                    .filter(|(_, m)| {
                        now.saturating_sub(m.heartbeat_ms.load(Ordering::Relaxed)) > interval.as_millis() as u64
                    })
                    .map(|(id, _)| id)
                    .collect();
                if stalled.is_empty() {
                    notify(&[NotifyState::Watchdog]);
                } else {
                    log::error!("shards {stalled:?} stalled: withholding the watchdog ping");
                }
            }
        })?;
    Ok(())
}

/// How often the memory guard reads the resident set size.
const RSS_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// Samples the process's resident memory and raises `memory_pressure` over
/// `rss_bytes_max`, lowering it again under 90% of it (a margin, so it does not flap).
pub fn start_memory_guard(shared: &'static Shared) -> std::io::Result<()> {
    let max = shared.config.server.rss_bytes_max;
    let page_bytes = page_bytes();
    std::thread::Builder::new()
        .name("percore-memory".into())
        .spawn(move || {
            loop {
                std::thread::sleep(RSS_CHECK_INTERVAL); // blocking-ok: its own thread, not a shard
                let Some(rss) = resident_bytes(page_bytes) else {
                    continue;
                };
                shared.resident_bytes.store(rss, Ordering::Relaxed);
                let was = shared.memory_pressure.load(Ordering::Relaxed);
                let now = under_pressure(was, rss, max);
                if now != was {
                    shared.memory_pressure.store(now, Ordering::Relaxed);
                    if now {
                        log::error!(
                            "resident memory {rss} B is over server.rss_bytes_max ({max} B): refusing API requests"
                        );
                    } else {
                        log::warn!("resident memory {rss} B is back under 90% of server.rss_bytes_max: serving again");
                    }
                }
            }
        })?;
    Ok(())
}

/// Pressure starts over `max` and ends only under 90% of it, so it does not flap.
fn under_pressure(was: bool, rss_bytes: u64, max_bytes: u64) -> bool {
    if was {
        rss_bytes > max_bytes / 10 * 9
    } else {
        rss_bytes > max_bytes
    }
}

fn page_bytes() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 { size as u64 } else { 4096 }
}

/// The second field of /proc/self/statm (resident pages), in bytes.
fn resident_bytes(page_bytes: u64) -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?; // blocking-ok: the memory guard thread
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_bytes)
}

/// WATCHDOG_USEC, when set and meant for us. Like libsystemd's sd_watchdog_enabled,
/// WATCHDOG_PID is checked only when present (sd-notify's own helper demands it).
fn watchdog_interval(get: impl Fn(&str) -> Option<String>, pid: u32) -> Option<Duration> {
    let usec: u64 = get("WATCHDOG_USEC")?.parse().ok().filter(|usec| *usec > 0)?;
    match get("WATCHDOG_PID").map(|p| p.parse::<u32>()) {
        None => Some(Duration::from_micros(usec)),
        Some(Ok(owner)) if owner == pid => Some(Duration::from_micros(usec)),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_pressure_starts_over_the_bound_and_ends_under_90_percent_of_it() {
        let max = 1_000_000;
        assert!(!under_pressure(false, max, max), "at the bound: not yet");
        assert!(under_pressure(false, max + 1, max));
        assert!(under_pressure(true, 950_000, max), "between 90% and the bound: still");
        assert!(under_pressure(true, 900_001, max));
        assert!(!under_pressure(true, 900_000, max), "at 90%: over");
        assert!(
            !under_pressure(false, 950_000, max),
            "no pressure starts under the bound"
        );
    }

    #[test]
    fn watchdog_interval_honours_pid_only_when_given() {
        let env = |usec: &'static str, pid: Option<&'static str>| {
            move |name: &str| match name {
                "WATCHDOG_USEC" => Some(usec.to_string()),
                "WATCHDOG_PID" => pid.map(str::to_string),
                _ => None,
            }
        };
        assert_eq!(
            watchdog_interval(env("500000", None), 7),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            watchdog_interval(env("500000", Some("7")), 7),
            Some(Duration::from_millis(500))
        );
        assert_eq!(watchdog_interval(env("500000", Some("8")), 7), None);
        assert_eq!(watchdog_interval(env("0", None), 7), None);
    }
}
