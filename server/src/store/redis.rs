//! Redis on a shard: one connection speaking RESP through the redis crate's command
//! encoder and reply parser, commands pipelined in order, a reconnecting supervisor.
//!
//! Runs on a shard: never blocks. Each command waits at most `command_timeout_ms`.

use crate::metrics::ShardMetrics;
use crate::runtime::{self, TcpStream};
use crate::store::settings::Redis as Settings;
use crate::units::ms;
use combine::parser::combinator::AnySendSyncPartialState;
use combine::stream::{Decoder, PointerOffset};
use futures::AsyncWriteExt;
use futures::channel::{mpsc, oneshot};
use futures::io::{ReadHalf, WriteHalf};
use futures::{AsyncReadExt, StreamExt};
use redis::{IntoConnectionInfo, Value};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use tokio_util::compat::FuturesAsyncReadCompatExt;

/// Where and how to connect; parsed and resolved once at start-up.
#[derive(Clone, Debug)]
pub struct RedisTarget {
    host: String,
    port: u16,
    db: i64,
    username: Option<String>,
    password: Option<String>,
    addr: SocketAddr,
}

/// The parts of a `redis://[user:pass@]host:port[/db]` URL, before name resolution.
type UrlParts = (String, u16, i64, Option<String>, Option<String>);

fn url_parts(url: &str) -> Option<UrlParts> {
    let info = url.into_connection_info().ok()?;
    let redis::ConnectionAddr::Tcp(host, port) = info.addr().clone() else {
        return None;
    };
    let settings = info.redis_settings();
    let username = settings.username().map(str::to_string);
    Some((
        host,
        port,
        settings.db(),
        username,
        settings.password().map(str::to_string),
    ))
}

impl RedisTarget {
    /// True for a TCP `redis://` URL; checked when tuning.toml loads.
    pub fn is_valid_url(url: &str) -> bool {
        url_parts(url).is_some()
    }

    /// Parses the URL and resolves its host. Blocking: call only before shards start.
    pub fn resolve(url: &str) -> Result<RedisTarget, String> {
        let (host, port, db, username, password) =
            url_parts(url).ok_or("redis.url: not a redis://host:port[/db] URL")?;
        use std::net::ToSocketAddrs;
        let addr = (host.as_str(), port) // blocking-ok: start-up only
            .to_socket_addrs()
            .map_err(|e| format!("redis.url: cannot resolve {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("redis.url: {host} has no address"))?;
        Ok(RedisTarget {
            host,
            port,
            db,
            username,
            password,
            addr,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum RedisError {
    /// Not connected right now; the supervisor is reconnecting.
    Down,
    Timeout,
    /// Too many commands already wait for replies on this shard.
    Busy,
    Server(String),
}

type Reply = Result<Value, RedisError>;

struct Live {
    commands: mpsc::UnboundedSender<Vec<u8>>,
    /// Reply slots in the order their commands were queued: RESP answers in order.
    waiting: VecDeque<oneshot::Sender<Reply>>,
}

pub struct RedisClient {
    live: RefCell<Option<Live>>,
    settings: Settings,
    metrics: &'static ShardMetrics,
}

impl RedisClient {
    pub fn start(target: RedisTarget, settings: &Settings, metrics: &'static ShardMetrics) -> Rc<RedisClient> {
        let client = Rc::new(RedisClient {
            live: RefCell::new(None),
            settings: settings.clone(),
            metrics,
        });
        runtime::spawn(supervise(client.clone(), target));
        client
    }

    /// Sends one command and waits for its reply, at most `command_timeout_ms`.
    pub async fn query(&self, cmd: &redis::Cmd) -> Reply {
        self.query_within(cmd, ms(self.settings.command_timeout_ms)).await
    }

    /// As `query`, waiting at most `timeout` (the cache's own, shorter bound).
    pub async fn query_within(&self, cmd: &redis::Cmd, timeout: std::time::Duration) -> Reply {
        let answer = {
            let mut live = self.live.borrow_mut();
            let Some(live) = live.as_mut() else {
                return Err(RedisError::Down);
            };
            if live.waiting.len() >= self.settings.in_flight_max {
                return Err(RedisError::Busy);
            }
            let (reply, answer) = oneshot::channel();
            if live.commands.unbounded_send(cmd.get_packed_command()).is_err() {
                return Err(RedisError::Down);
            }
            live.waiting.push_back(reply);
            answer
        };
        ShardMetrics::add(&self.metrics.redis_commands, 1);
        let result = match runtime::timeout(timeout, answer).await {
            Some(Ok(reply)) => reply,
            Some(Err(_)) => Err(RedisError::Down),
            None => Err(RedisError::Timeout),
        };
        if matches!(result, Err(RedisError::Timeout | RedisError::Down)) {
            ShardMetrics::add(&self.metrics.redis_errors, 1);
        }
        result
    }
}

async fn supervise(client: Rc<RedisClient>, target: RedisTarget) {
    let min = ms(client.settings.reconnect_backoff_ms_min);
    let max = ms(client.settings.reconnect_backoff_ms_max);
    let mut backoff = min;
    let mut failures = 0u32;
    loop {
        let connected = runtime::timeout(ms(client.settings.connect_timeout_ms), connect(&target)).await;
        match connected {
            Some(Ok(stream)) => {
                backoff = min;
                failures = 0;
                let (reader, writer) = stream.split();
                let (commands, queued) = mpsc::unbounded();
                *client.live.borrow_mut() = Some(Live {
                    commands,
                    waiting: VecDeque::new(),
                });
                ShardMetrics::add(&client.metrics.redis_up, 1);
                let error = run_connection(&client, reader, writer, queued).await;
                log::warn!("redis connection lost: {error}; reconnecting");
                ShardMetrics::add(&client.metrics.redis_errors, 1);
                ShardMetrics::sub(&client.metrics.redis_up, 1);
                // Fail every command still waiting: its reply will never come.
                if let Some(live) = client.live.borrow_mut().take() {
                    for waiting in live.waiting {
                        let _ = waiting.send(Err(RedisError::Down));
                    }
                }
            }
            other => {
                ShardMetrics::add(&client.metrics.redis_errors, 1);
                if failures == 0 {
                    let why = match other {
                        Some(Err(e)) => e,
                        _ => "connect timed out".into(),
                    };
                    log::warn!(
                        "cannot connect to redis at {}:{}: {why}; retrying",
                        target.host,
                        target.port
                    );
                }
                failures += 1;
            }
        }
        runtime::sleep(backoff).await;
        backoff = (backoff * 2).min(max);
    }
}

pub(crate) async fn connect(target: &RedisTarget) -> Result<TcpStream, String> {
    let mut stream = TcpStream::connect(target.addr).await.map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    // The handshake runs before the connection is shared, so it reads replies directly.
    let mut handshake = Vec::new();
    let mut expected = 0;
    if let Some(password) = &target.password {
        let mut auth = redis::cmd("AUTH");
        if let Some(user) = &target.username {
            auth.arg(user);
        }
        auth.arg(password).write_packed_command(&mut handshake);
        expected += 1;
    }
    if target.db != 0 {
        redis::cmd("SELECT").arg(target.db).write_packed_command(&mut handshake);
        expected += 1;
    }
    if expected > 0 {
        stream.write_all(&handshake).await.map_err(|e| e.to_string())?;
        let mut decoder = Decoder::<AnySendSyncPartialState, PointerOffset<[u8]>>::new();
        let mut reader = (&mut stream).compat();
        for _ in 0..expected {
            let value = redis::parse_redis_value_async(&mut decoder, &mut reader)
                .await
                .map_err(|e| e.to_string())?;
            if let Value::ServerError(e) = value {
                return Err(format!("handshake refused: {e:?}"));
            }
        }
    }
    Ok(stream)
}

/// Runs the writer and the reader of one connection until either fails.
async fn run_connection(
    client: &RedisClient,
    reader: ReadHalf<TcpStream>,
    mut writer: WriteHalf<TcpStream>,
    mut queued: mpsc::UnboundedReceiver<Vec<u8>>,
) -> String {
    let write = async {
        let mut batch = Vec::new();
        while let Some(first) = queued.next().await {
            batch.clear();
            batch.extend_from_slice(&first);
            // Everything queued meanwhile goes out in the same write.
            while let Ok(more) = queued.try_recv() {
                batch.extend_from_slice(&more);
            }
            if let Err(e) = writer.write_all(&batch).await {
                return format!("write failed: {e}");
            }
        }
        "client dropped".to_string()
    };
    let read = async {
        let mut decoder = Decoder::<AnySendSyncPartialState, PointerOffset<[u8]>>::new();
        let mut reader = reader.compat();
        loop {
            let value = match redis::parse_redis_value_async(&mut decoder, &mut reader).await {
                Ok(value) => value,
                Err(e) => return format!("read failed: {e}"),
            };
            let reply = match value {
                Value::ServerError(e) => Err(RedisError::Server(format!("{e:?}"))),
                value => Ok(value),
            };
            let slot = client
                .live
                .borrow_mut()
                .as_mut()
                .and_then(|live| live.waiting.pop_front());
            match slot {
                // A caller that timed out dropped its receiver; the reply is discarded.
                Some(slot) => drop(slot.send(reply)),
                None => return "reply without a command".to_string(),
            }
        }
    };
    match futures::future::select(std::pin::pin!(write), std::pin::pin!(read)).await {
        futures::future::Either::Left((why, _)) | futures::future::Either::Right((why, _)) => why,
    }
}
