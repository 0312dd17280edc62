//! Shared helpers: free ports, binaries, running as an unprivileged user, waiting.

use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A port that was free a moment ago. The caller retries on a bind failure, since another
/// process may take it in between.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding an ephemeral port");
    listener.local_addr().expect("local address").port()
}

/// The port of a `scheme://[user@]host:port[/…]` URL, else `default`.
pub fn port_of_url(url: &str, default: u16) -> u16 {
    let authority = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    host_port
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or(default)
}

/// Finds `name` on PATH, else in the newest `/usr/lib/postgresql/*/bin`.
pub fn postgres_binary(name: &str) -> Result<PathBuf, String> {
    if let Some(found) = on_path(name) {
        return Ok(found);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| format!("{name} not found: install PostgreSQL (apt-get install postgresql)"))?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, entry.path().join("bin").join(name)))
        })
        .filter(|(_, path)| path.exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, path)| path)
        .ok_or_else(|| format!("{name} not found: install PostgreSQL (apt-get install postgresql)"))
}

pub fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|candidate| candidate.is_file())
}

/// PostgreSQL refuses to run as root. When we are root, it runs as this (uid, gid).
pub fn unprivileged_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    for name in [c"postgres", c"nobody"] {
        // SAFETY: getpwnam returns a pointer to static storage or null; read at once.
        let entry = unsafe { libc::getpwnam(name.as_ptr()) };
        if !entry.is_null() {
            // SAFETY: checked non-null above.
            let (uid, gid) = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
            return Some((uid, gid));
        }
    }
    None
}

pub fn chown_recursive(path: &Path, user: Option<(u32, u32)>) -> Result<(), String> {
    let Some((uid, gid)) = user else {
        return Ok(());
    };
    let status = Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{gid}"))
        .arg(path)
        .status()
        .map_err(|e| format!("chown: {e}"))?;
    status
        .success()
        .then_some(())
        .ok_or_else(|| format!("chown {} failed", path.display()))
}

/// Runs the command as `user` (when root) and, if `die_with_parent`, has the kernel kill it
/// when this process dies, so a crashed test leaves no server behind.
pub fn configure(command: &mut Command, user: Option<(u32, u32)>, die_with_parent: bool) {
    configure_on(command, user, die_with_parent, &[]);
}

/// As `configure`, and confines the process (and the children it forks) to `cpus` when
/// that is not empty: the dev services stay off the shards' cores.
pub fn configure_on(command: &mut Command, user: Option<(u32, u32)>, die_with_parent: bool, cpus: &[usize]) {
    // SAFETY: cpu_set_t is plain data; zeroed is its empty value.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for cpu in cpus {
        // SAFETY: CPU_SET writes one bit of `set`; cpu indices beyond its size are ignored.
        unsafe { libc::CPU_SET(*cpu, &mut set) };
    }
    let confine = !cpus.is_empty();
    // SAFETY: the closure only calls async-signal-safe functions (prctl, sched_setaffinity,
    // setgid, setuid) on data captured by value.
    unsafe {
        command.pre_exec(move || {
            if die_with_parent && libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Best effort: a CPU list that no longer fits the machine leaves it unconfined.
            if confine {
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            }
            if let Some((uid, gid)) = user
                && (libc::setgid(gid) != 0 || libc::setuid(uid) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Polls `ready` every 20 ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if ready() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    ready()
}

pub fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

/// A new empty directory under the system temp dir, unique to this process and call.
pub fn temp_dir(prefix: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating a temp dir");
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_of_url_reads_the_authority_only() {
        assert_eq!(port_of_url("postgres://u:secret@127.0.0.1:6543/db", 5432), 6543);
        assert_eq!(port_of_url("postgres://u:secret@localhost/db", 5432), 5432);
        assert_eq!(port_of_url("redis://127.0.0.1:7000/0", 6379), 7000);
    }
}
