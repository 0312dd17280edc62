//! Heavy work runs on the worker pool, never on a shard: while Argon2 hashes run
//! continuously, a cheap route on the same shard stays fast; a full queue answers 503.

mod common;
use common::{ResponseReader, Services};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// These tests measure CPU-bound behaviour: run them one at a time, not beside each other.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn pin_to(cpu: usize) {
    assert!(
        core_affinity::set_for_current(core_affinity::CoreId { id: cpu }),
        "pinning a test thread"
    );
}

#[test]
fn argon2_on_the_pool_leaves_a_cheap_route_on_the_same_shard_fast() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let services = Services::start();
    // One shard alone on CPU 1; the worker, the hash load and the clients share CPU 0.
    let server = common::Tuning {
        server: "shards = 1\ncpus = [1]",
        // No shedding: four hashers keep the one worker busy on purpose.
        workers: "threads = 1\ncpus = [0]\nwait_ms_max = 0\nargon2_memory_kib = 65536\nargon2_iterations = 3",
        ..common::Tuning::new(common::free_port(), &services)
    }
    .start();

    // What one hash costs on this machine today, with nothing else running: were hashing
    // done on the shard, a cheap request arriving behind one would wait about this long.
    // The bar below is a fraction of it, measured in the same run, so a slow or noisy
    // machine moves both sides together.
    let hash_time = {
        let stream = server.connect();
        let mut reader = ResponseReader::new(&stream);
        (0..3)
            .map(|_| {
                let at = Instant::now();
                (&stream)
                    .write_all(b"POST /bench/hash HTTP/1.1\r\nHost: t\r\nContent-Length: 8\r\n\r\npassword")
                    .unwrap();
                assert_eq!(reader.next(false).unwrap().status, 200);
                at.elapsed()
            })
            .min()
            .unwrap()
    };

    let stop = Arc::new(AtomicBool::new(false));
    let hashes = Arc::new(AtomicU64::new(0));
    let hashers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, hashes, stream) = (stop.clone(), hashes.clone(), server.connect());
            std::thread::spawn(move || {
                pin_to(0);
                let mut reader = ResponseReader::new(&stream);
                while !stop.load(Ordering::Relaxed) {
                    (&stream)
                        .write_all(b"POST /bench/hash HTTP/1.1\r\nHost: t\r\nContent-Length: 8\r\n\r\npassword")
                        .unwrap();
                    assert_eq!(reader.next(false).unwrap().status, 200);
                    hashes.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));

    let hashes_before = hashes.load(Ordering::Relaxed);
    // 100 connections, driven by 10 threads of 10 so that client scheduling stays small
    // beside what is measured: each round sends one request on every connection, then
    // reads the ten answers; a request's latency runs from its own write to its answer.
    let clients: Vec<_> = (0..10u64)
        .map(|index| {
            let streams: Vec<_> = (0..10).map(|_| server.connect()).collect();
            std::thread::spawn(move || {
                pin_to(0);
                // Staggered starts, so the ten threads do not all wake at once.
                std::thread::sleep(Duration::from_micros(500 * index));
                let mut latencies = Vec::with_capacity(400);
                for _ in 0..40 {
                    let sent: Vec<Instant> = streams
                        .iter()
                        .map(|stream| {
                            let at = Instant::now();
                            (&*stream)
                                .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
                                .unwrap();
                            at
                        })
                        .collect();
                    for (stream, at) in streams.iter().zip(sent) {
                        assert_eq!(ResponseReader::new(stream).next(false).unwrap().status, 200);
                        latencies.push(at.elapsed());
                    }
                    // Paced, so the measurement spans several hashes.
                    std::thread::sleep(Duration::from_millis(10));
                }
                latencies
            })
        })
        .collect();
    let mut latencies: Vec<Duration> = clients.into_iter().flat_map(|c| c.join().unwrap()).collect();
    let hashes_during = hashes.load(Ordering::Relaxed) - hashes_before;
    stop.store(true, Ordering::Relaxed);
    for hasher in hashers {
        hasher.join().unwrap();
    }

    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    assert_eq!(latencies.len(), 4000);
    // Four hash requests are outstanding at every moment (each hasher waits for its answer
    // and sends the next), so the pool is never idle; this checks it made progress.
    assert!(
        hashes_during >= 1,
        "the pool made no progress while the cheap route was measured"
    );
    eprintln!("cheap route p99 {p99:?}, one hash {hash_time:?}, {hashes_during} hashes completed meanwhile");
    assert!(
        p99 < hash_time / 4,
        "cheap route p99 {p99:?} is not far below one hash ({hash_time:?}) with {hashes_during} hashes running"
    );
}

#[test]
fn a_full_worker_queue_answers_503_with_retry_after() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let services = Services::start();
    let server = common::Tuning {
        server: "shards = 1",
        // No shedding: refusals here are the full queue's alone.
        workers: "threads = 1\nqueue_depth_max = 1\nwait_ms_max = 0\nretry_after_s = 3\nargon2_memory_kib = 65536\nargon2_iterations = 6",
        ..common::Tuning::new(common::free_port(), &services)
    }
    .start();
    // Ten hashes at once on one thread with a queue of one: most must be refused at once.
    let streams: Vec<_> = (0..10)
        .map(|_| {
            let stream = server.connect();
            (&stream)
                .write_all(b"POST /bench/hash HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nx")
                .unwrap();
            stream
        })
        .collect();
    let mut refused = 0;
    let mut hashed = 0;
    for stream in &streams {
        let response = ResponseReader::new(stream).next(false).unwrap();
        match response.status {
            200 => hashed += 1,
            503 => {
                assert_eq!(response.error_code(), "workers_busy");
                assert_eq!(response.header("Retry-After"), Some("3"));
                refused += 1;
            }
            other => panic!("unexpected {other}: {}", response.text()),
        }
    }
    assert!(hashed >= 1 && refused >= 5, "hashed {hashed}, refused {refused}");
    let metrics = server.get("/metrics").text();
    assert!(
        metrics.contains(&format!("percore_worker_rejected_total {refused}")),
        "{metrics}"
    );
}

#[test]
fn a_hash_that_waited_past_wait_ms_max_is_shed_with_a_fast_503() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let services = Services::start();
    let server = common::Tuning {
        server: "shards = 1",
        workers: "threads = 1\nqueue_depth_max = 64\nwait_ms_max = 150\nretry_after_s = 2\nargon2_memory_kib = 65536\nargon2_iterations = 3",
        ..common::Tuning::new(common::free_port(), &services)
    }
    .start();
    let one = Instant::now();
    assert_eq!(server.call("POST", "/bench/hash", None, None).status, 200);
    let hash_time = one.elapsed();
    // Twelve at once on one thread: the queue has room for all, but the ones that wait
    // past 150 ms are not hashed; they are answered 503 when a worker reaches them.
    let started = Instant::now();
    let streams: Vec<_> = (0..12)
        .map(|_| {
            let stream = server.connect();
            (&stream)
                .write_all(b"POST /bench/hash HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nx")
                .unwrap();
            stream
        })
        .collect();
    let (mut hashed, mut shed) = (0, 0);
    for stream in &streams {
        let response = ResponseReader::new(stream).next(false).unwrap();
        match response.status {
            200 => hashed += 1,
            503 => {
                assert_eq!(response.error_code(), "workers_busy");
                assert_eq!(response.header("Retry-After"), Some("2"));
                shed += 1;
            }
            other => panic!("unexpected {other}: {}", response.text()),
        }
    }
    let all = started.elapsed();
    // Without the bound all twelve hash one after another (12 × hash_time); with it, the
    // last answer comes within the bound plus the few hashes it lets through.
    assert!(
        hashed >= 1 && shed >= 6,
        "hashed {hashed}, shed {shed} (one hash {hash_time:?})"
    );
    assert!(
        all < Duration::from_millis(150) + hash_time * (hashed + 2),
        "{all:?} for {hashed} hashes of {hash_time:?}"
    );
    let metrics = server.get("/metrics").text();
    assert!(
        metrics.contains(&format!("percore_worker_shed_total {shed}")),
        "{metrics}"
    );
    assert!(
        metrics.contains("percore_worker_rejected_total 0"),
        "none refused for a full queue"
    );
}
