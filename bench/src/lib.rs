//! percore-bench: where every claim about percore's speed is produced, repeatably. The
//! library holds the driver (so tests can run it in-process); `main.rs` is its command line.
//!
//! Its one job is to drive a running percore with a load generator and record what the
//! generator measured, with the exact command, the machine and the commit, as JSON. It
//! never judges a result: comparisons are ratios made from files it wrote in the same run.

pub mod audit;
pub mod compare;
pub mod jobs;
pub mod openloop;
pub mod paced;
pub mod pgstat;
pub mod report;
pub mod run;
pub mod sample;
pub mod scrape;
pub mod seed;
pub mod soak;
pub mod wrk;
