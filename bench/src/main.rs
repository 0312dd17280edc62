//! `percore-bench`: where every claim about percore's speed is produced, repeatably.
//!
//! Its one job is to drive a running percore with a load generator and record what the
//! generator measured, with the exact command, the machine and the commit, as JSON. It
//! never judges a result: comparisons are ratios made from files it wrote in the same run.
//!
//!   percore-bench run plaintext|json|db|queries|fortunes|updates|cached-queries|seed-mix|jobs [--url BASE] [--connections N]
//!                 [--duration 10s] [--depth 16] [--tokens FILE] [--wrk-cpu 0] [--out FILE]
//!                 [--rate 200] [--database-url URL]   (jobs only)
//!                 [--rows 20]   (queries, updates, cached-queries)  [--tuning FILE]   (recorded)
//!   percore-bench seed --database-url URL [--users 100000] [--events 1000000]
//!                 [--sessions 10000] [--tokens FILE]
//!   percore-bench audit [--url BASE] --database-url URL [--clients 16] [--duration 5m]
//!                 [--fault-every 30s] [--fault NAME=COMMAND]… [--jobs-wait 2m] [--out FILE]
//!   percore-bench soak --server-pid PID [--url BASE] [--duration 30m] [--share 0.7]
//!                 [--window 10s] [--fault-every 5m] [--fault NAME=COMMAND]… [--out FILE]
//!
//! wrk runs pinned to `--wrk-cpu` (default 0) so that it stays off the shard cores.

use percore_bench::run::{RunOptions, WORKLOADS};
use percore_bench::seed;
use std::process::ExitCode;

const USAGE: &str = "usage: percore-bench run plaintext|json|db|queries|fortunes|updates|cached-queries|seed-mix|jobs [--url BASE] [--connections N] [--duration 10s] \
                     [--depth 16] [--tokens FILE] [--wrk-cpu 0] [--out FILE] [--rate 200] [--database-url URL] [--rows 20] [--tuning FILE] [--paced 15s] [--paced-connections 16] [--open-loop 10s|off]\n       \
                     percore-bench seed --database-url URL [--users N] [--events N] [--sessions N] [--tokens FILE]\n       \
                     percore-bench audit [--url BASE] --database-url URL [--clients 16] [--duration 5m] [--fault-every 30s] [--fault NAME=COMMAND]… [--jobs-wait 2m] [--out FILE]\n       \
                     percore-bench soak --server-pid PID [--url BASE] [--duration 30m] [--share 0.7] [--window 10s] [--fault-every 5m] [--fault NAME=COMMAND]… [--tokens FILE] [--out FILE]\n       \
                     percore-bench compare A.json B.json …\n       \
                     percore-bench report RESULT.json … -o report.html";
const TOKENS_DEFAULT: &str = "bench/results/seed-tokens.txt";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.first().map(String::as_str) {
        Some("run") => parse_run(&args[1..]).map(|o| run_and_write(&o)),
        Some("seed") => parse_seed(&args[1..]).map(|(url, scale, tokens)| seed::seed(&url, &scale, &tokens)),
        Some("audit") => {
            parse_audit(&args[1..]).map(|(options, faults, out)| audit_and_write(&options, faults, out.as_deref()))
        }
        Some("soak") => parse_soak(&args[1..]).map(|(options, out)| soak_and_write(&options, out.as_deref())),
        Some("compare") if args.len() > 1 => Ok(compare(&args[1..])),
        Some("report") => parse_report(&args[1..]).map(|(files, out)| report(&files, &out)),
        _ => Err("the commands are `run`, `seed`, `audit`, `soak`, `compare` and `report`".into()),
    };
    match outcome {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("percore-bench: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("percore-bench: {e}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// Flag/value pairs after the positional arguments.
fn flags(args: &[String]) -> Result<Vec<(&str, &str)>, String> {
    if !args.len().is_multiple_of(2) {
        return Err(format!("{} needs a value", args[args.len() - 1]));
    }
    Ok(args
        .chunks(2)
        .map(|pair| (pair[0].as_str(), pair[1].as_str()))
        .collect())
}

fn number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, String> {
    value.parse().map_err(|_| format!("{flag}: not a number: {value}"))
}

fn parse_run(args: &[String]) -> Result<RunOptions, String> {
    let workload = args.first().ok_or("which workload?")?;
    if !WORKLOADS.contains(&workload.as_str()) {
        return Err(format!("unknown workload {workload}"));
    }
    let mut options = RunOptions {
        workload: workload.clone(),
        base: "http://127.0.0.1:8080".into(),
        connections: 256,
        duration: "10s".into(),
        depth: 16,
        tokens: TOKENS_DEFAULT.into(),
        wrk_cpu: "0".into(),
        out: None,
        rate: 200,
        database_url: std::env::var("PERCORE_DATABASE_URL").ok(),
        rows: 20,
        tuning: None,
        // k6 on PATH runs the open-loop phases unless `--open-loop off`.
        k6: percore_bench::run::k6_on_path().map(|k6| (k6, "10s".to_string())),
        paced: None,
        paced_connections: 16,
    };
    for (flag, value) in flags(&args[1..])? {
        match flag {
            "--url" => options.base = value.trim_end_matches('/').to_string(),
            "--connections" => options.connections = number(flag, value)?,
            "--duration" => options.duration = value.into(),
            "--depth" => options.depth = number(flag, value)?,
            "--tokens" => options.tokens = value.into(),
            "--wrk-cpu" => options.wrk_cpu = value.into(),
            "--out" => options.out = Some(value.into()),
            "--rate" => options.rate = number(flag, value)?,
            "--rows" => options.rows = number(flag, value)?,
            "--tuning" => options.tuning = Some(value.into()),
            "--paced-connections" => options.paced_connections = number(flag, value)?,
            "--paced" => {
                options.paced = Some(percore_bench::wrk::seconds(value).ok_or("--paced: use e.g. 15s")?);
            }
            "--open-loop" if value == "off" => options.k6 = None,
            "--open-loop" => {
                let k6 = percore_bench::run::k6_on_path().ok_or("--open-loop needs k6 on PATH")?;
                options.k6 = Some((k6, value.into()));
            }
            "--database-url" => options.database_url = Some(value.into()),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(options)
}

fn parse_seed(args: &[String]) -> Result<(String, seed::Scale, String), String> {
    let mut url = std::env::var("PERCORE_DATABASE_URL").ok();
    let mut scale = seed::Scale {
        users: 100_000,
        events: 1_000_000,
        sessions: 10_000,
    };
    let mut tokens = TOKENS_DEFAULT.to_string();
    for (flag, value) in flags(args)? {
        match flag {
            "--database-url" => url = Some(value.into()),
            "--users" => scale.users = number(flag, value)?,
            "--events" => scale.events = number(flag, value)?,
            "--sessions" => scale.sessions = number(flag, value)?,
            "--tokens" => tokens = value.into(),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if scale.users == 0 || scale.sessions == 0 {
        return Err("--users and --sessions must be at least 1".into());
    }
    let url = url.ok_or("--database-url (or PERCORE_DATABASE_URL) is required")?;
    Ok((url, scale, tokens))
}

/// Minutes (`30m`) or seconds (`10s`).
fn duration(flag: &str, value: &str) -> Result<std::time::Duration, String> {
    match value.strip_suffix('m') {
        Some(minutes) => Ok(std::time::Duration::from_secs(number::<u64>(flag, minutes)? * 60)),
        None => percore_bench::wrk::seconds(value).ok_or_else(|| format!("{flag}: use e.g. 30m or 10s")),
    }
}

fn parse_soak(args: &[String]) -> Result<(percore_bench::soak::SoakOptions, Option<String>), String> {
    let mut options = percore_bench::soak::SoakOptions {
        base: "http://127.0.0.1:8080".into(),
        duration: std::time::Duration::from_secs(30 * 60),
        share: 0.7,
        window: std::time::Duration::from_secs(10),
        tokens: TOKENS_DEFAULT.into(),
        server_pid: 0,
        fault_every: std::time::Duration::from_secs(5 * 60),
        faults: Vec::new(),
        connections: 64,
        paced_connections: 16,
        wrk_cpu: "0".into(),
    };
    let mut out = None;
    for (flag, value) in flags(args)? {
        match flag {
            "--url" => options.base = value.trim_end_matches('/').to_string(),
            "--duration" => options.duration = duration(flag, value)?,
            "--share" => options.share = number(flag, value)?,
            "--window" => options.window = duration(flag, value)?,
            "--tokens" => options.tokens = value.into(),
            "--server-pid" => options.server_pid = number(flag, value)?,
            "--fault-every" => options.fault_every = duration(flag, value)?,
            "--fault" => {
                let (name, command) = value.split_once('=').ok_or("--fault: use NAME=COMMAND")?;
                options.faults.push((name.into(), command.into()));
            }
            "--connections" => options.connections = number(flag, value)?,
            "--paced-connections" => options.paced_connections = number(flag, value)?,
            "--wrk-cpu" => options.wrk_cpu = value.into(),
            "--out" => out = Some(value.to_string()),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if options.server_pid == 0 {
        return Err("soak needs --server-pid (its memory and descriptors are sampled)".into());
    }
    if !(options.share > 0.0 && options.share <= 1.0) {
        return Err("--share must be in (0, 1]".into());
    }
    Ok((options, out))
}

type AuditArgs = (
    percore_bench::audit::AuditOptions,
    Vec<percore_bench::audit::Fault>,
    Option<String>,
);

fn parse_audit(args: &[String]) -> Result<AuditArgs, String> {
    let mut options = percore_bench::audit::AuditOptions {
        addr: "127.0.0.1:8080".into(),
        database_url: std::env::var("PERCORE_DATABASE_URL").unwrap_or_default(),
        clients: 16,
        duration: std::time::Duration::from_secs(5 * 60),
        fault_every: std::time::Duration::from_secs(30),
        jobs_wait: std::time::Duration::from_secs(120),
        answer_timeout: std::time::Duration::from_secs(10),
    };
    let (mut faults, mut out) = (Vec::new(), None);
    for (flag, value) in flags(args)? {
        match flag {
            "--url" => options.addr = value.trim_start_matches("http://").trim_end_matches('/').to_string(),
            "--database-url" => options.database_url = value.into(),
            "--clients" => options.clients = number(flag, value)?,
            "--duration" => options.duration = duration(flag, value)?,
            "--fault-every" => options.fault_every = duration(flag, value)?,
            "--jobs-wait" => options.jobs_wait = duration(flag, value)?,
            "--fault" => {
                let (name, command) = value.split_once('=').ok_or("--fault: use NAME=COMMAND")?;
                faults.push(percore_bench::audit::Fault::shell(name, command));
            }
            "--out" => out = Some(value.to_string()),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if options.database_url.is_empty() {
        return Err("audit needs --database-url (or PERCORE_DATABASE_URL): it reads what was stored".into());
    }
    if options.clients == 0 {
        return Err("--clients must be at least 1".into());
    }
    Ok((options, faults, out))
}

/// Runs the audit and writes its JSON; fails when an acknowledged write was lost.
fn audit_and_write(
    options: &percore_bench::audit::AuditOptions,
    faults: Vec<percore_bench::audit::Fault>,
    out: Option<&str>,
) -> Result<(), String> {
    let result = percore_bench::audit::audit(options, faults)?;
    let rendered = serde_json::to_string_pretty(&result).expect("JSON renders");
    match out {
        Some(path) => std::fs::write(path, &rendered).map_err(|e| format!("writing {path}: {e}"))?,
        None => println!("{rendered}"),
    }
    match result["audit"]["lost_total"].as_u64() {
        Some(0) => Ok(()),
        lost => Err(format!("acknowledged writes lost: {lost:?}")),
    }
}

fn soak_and_write(options: &percore_bench::soak::SoakOptions, out: Option<&str>) -> Result<(), String> {
    let result = percore_bench::soak::soak(options)?;
    let rendered = serde_json::to_string_pretty(&result).expect("JSON renders");
    match out {
        Some(path) => std::fs::write(path, rendered).map_err(|e| format!("writing {path}: {e}")),
        None => {
            println!("{rendered}");
            Ok(())
        }
    }
}

fn compare(files: &[String]) -> Result<(), String> {
    let results = percore_bench::compare::load(files)?;
    print!("{}", percore_bench::compare::table(&results));
    Ok(())
}

/// `FILE… -o OUT`.
fn parse_report(args: &[String]) -> Result<(Vec<String>, String), String> {
    let at = args.iter().position(|a| a == "-o").ok_or("report needs -o OUT.html")?;
    let out = args.get(at + 1).ok_or("-o needs a file")?.clone();
    let files: Vec<String> = args[..at].iter().chain(&args[at + 2..]).cloned().collect();
    if files.is_empty() {
        return Err("report needs result files".into());
    }
    Ok((files, out))
}

fn report(files: &[String], out: &str) -> Result<(), String> {
    let results = percore_bench::compare::load(files)?;
    std::fs::write(out, percore_bench::report::render(&results)).map_err(|e| format!("writing {out}: {e}"))
}

fn run_and_write(options: &RunOptions) -> Result<(), String> {
    let result = percore_bench::run::run(options)?;
    let rendered = serde_json::to_string_pretty(&result).expect("JSON renders");
    match &options.out {
        Some(path) => std::fs::write(path, rendered).map_err(|e| format!("writing {path}: {e}")),
        None => {
            println!("{rendered}");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn refuses_unknown_workloads_and_bad_flags() {
        assert!(parse_run(&args("nope")).is_err());
        assert_eq!(parse_run(&args("queries --rows 5")).unwrap().rows, 5);
        assert!(parse_run(&args("json --connections x")).is_err());
        assert!(parse_run(&args("json --connections")).is_err());
        assert_eq!(parse_run(&args("seed-mix --tokens t.txt")).unwrap().tokens, "t.txt");
        assert!(parse_seed(&args("--users 0 --database-url x")).is_err());
        assert!(parse_soak(&args("--duration 1m")).is_err(), "needs --server-pid");
        assert!(parse_audit(&args("--database-url postgres://x --clients 0")).is_err());
        let (audit, faults, _) =
            parse_audit(&args("--database-url postgres://x --fault pg=true --duration 2m")).unwrap();
        assert_eq!((audit.duration.as_secs(), faults.len()), (120, 1));
        let (soak, _) = parse_soak(&args("--server-pid 7 --duration 2m --fault pg=true --fault-every 30s")).unwrap();
        assert_eq!(soak.duration, std::time::Duration::from_secs(120));
        assert_eq!(soak.faults, vec![("pg".to_string(), "true".to_string())]);
        assert!(parse_soak(&args("--server-pid 7 --fault nameless")).is_err());
    }
}
