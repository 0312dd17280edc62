//! `percore-bench soak`: a long seed-mix run at a share of saturation with faults injected
//! on a schedule, sampling what slow leaks and bad days show: the server's resident memory
//! and open file descriptors, p99 latency and errors, every window (default 10 s).
//!
//! Saturation comes from a closed-loop wrk run first; the load is the built-in open loop
//! (`paced.rs`), run window after window so each window is one sample. Faults are shell
//! commands (`--fault NAME=COMMAND`, repeatable), run in turn every `--fault-every`;
//! `bench/soak.sh` supplies Postgres restarts and Redis pauses for the dev services.

use crate::paced::{Mix, Plan, Seeded};
use crate::run::{RunOptions, run};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct SoakOptions {
    pub base: String,
    pub duration: Duration,
    /// Share of the saturation rate to run at.
    pub share: f64,
    pub window: Duration,
    pub tokens: String,
    pub server_pid: u32,
    pub fault_every: Duration,
    pub faults: Vec<(String, String)>,
    pub connections: u32,
    pub paced_connections: u32,
    pub wrk_cpu: String,
}

/// The server's resident memory (KiB) and open file descriptors, from /proc.
fn process_figures(pid: u32) -> (u64, u64) {
    let rss_kib = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?.to_string();
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| dir.count() as u64);
    (rss_kib, fds)
}

pub fn soak(options: &SoakOptions) -> Result<Value, String> {
    if !std::path::Path::new(&format!("/proc/{}", options.server_pid)).exists() {
        return Err(format!("--server-pid {}: no such process", options.server_pid));
    }
    let saturation = run(&RunOptions {
        workload: "seed-mix".into(),
        base: options.base.clone(),
        connections: options.connections,
        duration: "10s".into(),
        depth: 16,
        tokens: options.tokens.clone(),
        wrk_cpu: options.wrk_cpu.clone(),
        out: None,
        rate: 0,
        database_url: None,
        rows: 20,
        tuning: None,
        k6: None,
        paced: None,
        paced_connections: options.paced_connections,
    })?;
    let saturation_rps = saturation["wrk"]["requests_per_s"]
        .as_f64()
        .ok_or("the saturation run measured no rate")?;
    let rate = (saturation_rps * options.share).max(1.0);
    let mix = Mix::SeedMix(Seeded::load(&options.tokens)?);
    let addr = options.base.trim_start_matches("http://").to_string();
    let began = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let faults_run: Arc<Mutex<Vec<Value>>> = Arc::default();
    let injector = {
        let (done, faults_run, faults) = (done.clone(), faults_run.clone(), options.faults.clone());
        let every = options.fault_every;
        std::thread::spawn(move || {
            let mut next = began + every;
            let mut turn = 0;
            while !faults.is_empty() && !done.load(Ordering::Relaxed) {
                if Instant::now() < next {
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
                let (name, command) = &faults[turn % faults.len()];
                let at_s = began.elapsed().as_secs_f64();
                let status = std::process::Command::new("sh").args(["-c", command]).status();
                let ok = status.as_ref().is_ok_and(|s| s.success());
                faults_run.lock().unwrap_or_else(|e| e.into_inner()).push(json!({
                    "t_s": at_s, "name": name, "ok": ok, "took_s": began.elapsed().as_secs_f64() - at_s,
                }));
                turn += 1;
                next += every;
            }
        })
    };
    let mut samples = Vec::new();
    while began.elapsed() < options.duration {
        let window = crate::paced::run(&Plan {
            addr: &addr,
            rate,
            duration: options.window,
            connections: options.paced_connections as usize,
            mix: &mix,
            cpu: options.wrk_cpu.parse().ok(),
        });
        let (rss_kib, fds) = process_figures(options.server_pid);
        samples.push(json!({
            "t_s": began.elapsed().as_secs_f64(),
            "rss_mib": rss_kib as f64 / 1024.0,
            "open_fds": fds,
            "p99_ms": window["latency_ms"]["other"]["p99"],
            "login_p99_ms": window["latency_ms"]["login"]["p99"],
            "achieved_per_s": window["achieved_per_s"],
            "errors": window["errors"],
        }));
        if rss_kib == 0 {
            return Err(format!(
                "the server (pid {}) is gone after {:.0} s",
                options.server_pid,
                began.elapsed().as_secs_f64()
            ));
        }
    }
    done.store(true, Ordering::Relaxed);
    let _ = injector.join();
    let faults = faults_run.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(json!({
        "workload": "soak",
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "machine": crate::wrk::machine(),
        "commit": crate::wrk::git(&["rev-parse", "HEAD"]),
        "wrk": saturation["wrk"],
        "soak": {
            "saturation_per_s": saturation_rps,
            "share": options.share,
            "rate_per_s": rate,
            "window_s": options.window.as_secs_f64(),
            "samples": samples,
            "faults": faults,
        },
    }))
}
