//! What the server did while the load ran, sampled beside wrk: requests answered per
//! second (from `/metrics`), and CPU time per shard thread (from /proc, by thread name).

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// CPU ticks (user + system) of every `percore-shard-N` thread on this machine.
pub fn shard_ticks() -> BTreeMap<String, u64> {
    let mut ticks = BTreeMap::new();
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return ticks;
    };
    for process in processes.flatten() {
        let Ok(tasks) = std::fs::read_dir(process.path().join("task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Ok(comm) = std::fs::read_to_string(task.path().join("comm")) else {
                continue;
            };
            let name = comm.trim();
            if !name.starts_with("percore-shard-") {
                continue;
            }
            if let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) {
                // Fields after the ")" that closes the name: utime is the 12th, stime the 13th.
                let fields: Vec<&str> = stat
                    .rsplit_once(')')
                    .map_or("", |(_, r)| r)
                    .split_whitespace()
                    .collect();
                let used: u64 = [11, 12]
                    .iter()
                    .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
                    .sum();
                *ticks.entry(name.to_string()).or_default() += used;
            }
        }
    }
    ticks
}

/// Clock ticks per second of /proc's CPU times.
fn ticks_per_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// A sampler running beside the load generator.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(f64, f64)>>,
    ticks: BTreeMap<String, u64>,
    started: Instant,
}

impl Sampler {
    /// Samples `base`'s answered requests every `every`.
    pub fn start(base: &str, every: Duration) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let (base, flag) = (base.to_string(), stop.clone());
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut last = crate::scrape::requests_total(&base).ok();
            let mut last_at = Instant::now();
            let mut timeline = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(every);
                let now = crate::scrape::requests_total(&base).ok();
                let elapsed = last_at.elapsed().as_secs_f64();
                last_at = Instant::now();
                if let (Some(before), Some(after)) = (last, now) {
                    timeline.push((started.elapsed().as_secs_f64(), (after - before) / elapsed));
                }
                last = now;
            }
            timeline
        });
        Sampler {
            stop,
            thread,
            ticks: shard_ticks(),
            started: Instant::now(),
        }
    }

    /// `timeline`: [seconds since start, requests per second]; `cpu_per_shard`: the share of
    /// one core each shard thread used over the run.
    pub fn finish(self) -> Value {
        let seconds = self.started.elapsed().as_secs_f64();
        self.stop.store(true, Ordering::Relaxed);
        let mut timeline = self.thread.join().unwrap_or_default();
        // The last sample straddles the end of the load: it would show a drop that is not one.
        timeline.pop();
        let after = shard_ticks();
        let cpu: BTreeMap<&String, f64> = after
            .iter()
            .map(|(name, used)| {
                let before = self.ticks.get(name).copied().unwrap_or(0);
                (name, used.saturating_sub(before) as f64 / ticks_per_s() / seconds)
            })
            .collect();
        json!({
            "timeline": timeline.iter().map(|(t, rate)| json!({"t_s": t, "requests_per_s": rate})).collect::<Vec<_>>(),
            "cpu_per_shard": cpu,
        })
    }
}
