//! Invalidation across shards and processes over Redis pub/sub.
//!
//! Every shard keeps one subscribed connection: to the invalidation channel that all
//! shards of all percore processes share, and to an acknowledgement channel of its own. A
//! write publishes `<ack channel> <id> <key> <key>…`; PUBLISH answers how many subscribers
//! got it; each evicts the keys, then publishes `<id>` to the writer's ack channel; the
//! writer answers its client once all have, or after `invalidation_ack_timeout_ms`.
//!
//! Runs on a store: never blocks.

use super::Key;
use crate::metrics::ShardMetrics;
use crate::runtime;
use crate::store::Store;
use crate::store::redis::{RedisTarget, connect};
use crate::store::settings as config;
use crate::units::ms;
use combine::parser::combinator::AnySendSyncPartialState;
use combine::stream::{Decoder, PointerOffset};
use futures::AsyncWriteExt;
use futures::channel::oneshot;
use redis::Value;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;
use tokio_util::compat::FuturesAsyncReadCompatExt;

pub struct Bus {
    subscribed: Cell<bool>,
    invalidations: String,
    acks: String,
    next_id: Cell<u64>,
    pending: RefCell<HashMap<u64, Pending>>,
    ack_timeout: Duration,
}

#[derive(Default)]
struct Pending {
    received: usize,
    /// Known once PUBLISH answers.
    expected: Option<usize>,
    done: Option<oneshot::Sender<()>>,
}

impl Pending {
    fn complete(&mut self) -> bool {
        self.expected.is_some_and(|expected| self.received >= expected)
    }
}

impl Bus {
    pub fn new(settings: &config::Cache, shard_id: usize) -> Bus {
        let mut nonce = [0u8; 8];
        let _ = getrandom::fill(&mut nonce);
        let nonce = u64::from_le_bytes(nonce);
        Bus {
            subscribed: Cell::new(false),
            invalidations: format!("{}:invalidate", settings.key_prefix),
            acks: format!(
                "{}:ack:{}:{shard_id}:{nonce:016x}",
                settings.key_prefix,
                std::process::id()
            ),
            next_id: Cell::new(0),
            pending: RefCell::new(HashMap::new()),
            ack_timeout: ms(settings.invalidation_ack_timeout_ms),
        }
    }

    pub fn subscribed(&self) -> bool {
        self.subscribed.get()
    }

    fn acked(&self, id: u64) {
        let mut pending = self.pending.borrow_mut();
        if let Some(wait) = pending.get_mut(&id) {
            wait.received += 1;
            if wait.complete()
                && let Some(done) = wait.done.take()
            {
                let _ = done.send(());
            }
        }
    }
}

/// Evicts `keys` on this shard at once, then on every subscribed shard of every process,
/// waiting (at most `invalidation_ack_timeout_ms`) until each has confirmed.
pub async fn invalidate(store: &Store, keys: &[Key]) {
    let cache = &store.cache;
    cache.evict(keys);
    let bus = &cache.bus;
    let id = bus.next_id.get();
    bus.next_id.set(id + 1);
    let mut message = format!("{} {id}", bus.acks);
    for key in keys {
        message.push(' ');
        message.push_str(&key.wire());
    }
    let (done, finished) = oneshot::channel();
    bus.pending.borrow_mut().insert(
        id,
        Pending {
            done: Some(done),
            ..Pending::default()
        },
    );
    let published = cache.l2.invalidate(keys, &bus.invalidations, &message).await;
    let confirmed = match published {
        Some(receivers) => {
            {
                let mut pending = bus.pending.borrow_mut();
                let wait = pending.get_mut(&id).expect("registered above");
                wait.expected = Some(receivers);
                if wait.complete()
                    && let Some(done) = wait.done.take()
                {
                    let _ = done.send(());
                }
            }
            runtime::timeout(bus.ack_timeout, finished).await.is_some()
        }
        None => false,
    };
    bus.pending.borrow_mut().remove(&id);
    if !confirmed {
        // Shards that did not confirm either lost their subscription (and so bypass and
        // clear L1) or are slow; l1_ttl_ms bounds what they may still serve.
        ShardMetrics::add(&store.metrics.cache_invalidations_unconfirmed, 1);
        log::warn!(
            "shard {}: invalidation {id} not confirmed by every shard",
            store.shard_id
        );
    }
    ShardMetrics::add(&store.metrics.cache_invalidations_sent, 1);
}

/// The shard's subscriber: keeps its subscription up, applies invalidations, counts acks.
pub async fn subscribe(store: Rc<Store>, target: RedisTarget) {
    let settings = &store.redis_settings;
    let (min, max) = (
        ms(settings.reconnect_backoff_ms_min),
        ms(settings.reconnect_backoff_ms_max),
    );
    let mut backoff = min;
    loop {
        match runtime::timeout(ms(settings.connect_timeout_ms), connect(&target)).await {
            Some(Ok(stream)) => {
                backoff = min;
                let why = listen(&store, stream).await;
                log::warn!(
                    "shard {}: cache subscription lost: {why}; L1 off until it is back",
                    store.shard_id
                );
            }
            Some(Err(e)) => log::debug!("shard {}: cache subscription: {e}", store.shard_id),
            None => log::debug!("shard {}: cache subscription: connect timed out", store.shard_id),
        }
        if store.cache.bus.subscribed.replace(false) {
            ShardMetrics::sub(&store.metrics.cache_subscribed, 1);
        }
        store.cache.clear();
        runtime::sleep(backoff).await;
        backoff = (backoff * 2).min(max);
    }
}

/// Subscribes, then reads frames until the connection fails or goes quiet: a PING every
/// `subscription_ping_ms` must be answered before the next, or the subscription counts as
/// lost (a frozen Redis keeps the socket open but would deliver no invalidation).
async fn listen(store: &Rc<Store>, stream: runtime::TcpStream) -> String {
    let bus = &store.cache.bus;
    let (reader, mut writer) = futures::AsyncReadExt::split(stream);
    let mut subscribe = Vec::new();
    redis::cmd("SUBSCRIBE")
        .arg(&bus.invalidations)
        .arg(&bus.acks)
        .write_packed_command(&mut subscribe);
    if let Err(e) = writer.write_all(&subscribe).await {
        return format!("write failed: {e}");
    }
    let pongs = Cell::new(0u64);
    let ping_interval = ms(store.cache_settings.subscription_ping_ms);
    let keepalive = async {
        let ping = redis::cmd("PING").get_packed_command();
        let mut sent = 0u64;
        loop {
            runtime::sleep(ping_interval).await;
            if pongs.get() < sent {
                return format!("no answer to PING within {ping_interval:?}");
            }
            if let Err(e) = writer.write_all(&ping).await {
                return format!("write failed: {e}");
            }
            sent += 1;
        }
    };
    let read = read_frames(store, reader, &pongs);
    match futures::future::select(std::pin::pin!(keepalive), std::pin::pin!(read)).await {
        futures::future::Either::Left((why, _)) | futures::future::Either::Right((why, _)) => why,
    }
}

async fn read_frames(
    store: &Rc<Store>,
    reader: futures::io::ReadHalf<runtime::TcpStream>,
    pongs: &Cell<u64>,
) -> String {
    let bus = &store.cache.bus;
    let mut decoder = Decoder::<AnySendSyncPartialState, PointerOffset<[u8]>>::new();
    let mut reader = reader.compat();
    let mut confirmed = 0;
    loop {
        let value = match redis::parse_redis_value_async(&mut decoder, &mut reader).await {
            Ok(value) => value,
            Err(e) => return format!("read failed: {e}"),
        };
        let Value::Array(parts) = value else {
            return format!("unexpected reply {value:?}");
        };
        let text = |i: usize| match parts.get(i) {
            Some(Value::BulkString(bytes)) => std::str::from_utf8(bytes).ok(),
            _ => None,
        };
        match (text(0), text(1), text(2)) {
            (Some("pong"), _, _) => pongs.set(pongs.get() + 1),
            (Some("subscribe"), _, _) => {
                confirmed += 1;
                if confirmed == 2 {
                    // Anything cached before this moment may have missed an invalidation.
                    store.cache.clear();
                    bus.subscribed.set(true);
                    ShardMetrics::add(&store.metrics.cache_subscribed, 1);
                }
            }
            (Some("message"), Some(channel), Some(payload)) if channel == bus.invalidations => {
                apply(store, payload);
            }
            (Some("message"), Some(channel), Some(payload)) if channel == bus.acks => {
                if let Ok(id) = payload.parse() {
                    bus.acked(id);
                }
            }
            _ => log::debug!("shard {}: ignored pub/sub frame {parts:?}", store.shard_id),
        }
    }
}

/// One invalidation from any shard of any process: evict, then confirm to its writer.
fn apply(store: &Rc<Store>, payload: &str) {
    let mut words = payload.split(' ');
    let (Some(ack_channel), Some(id)) = (words.next(), words.next()) else {
        log::warn!("shard {}: malformed invalidation {payload:?}", store.shard_id);
        return;
    };
    let keys: Vec<Key> = words.filter_map(Key::parse).collect();
    store.cache.evict(&keys);
    ShardMetrics::add(&store.metrics.cache_invalidations_received, 1);
    // The writer's own shard confirms without a round trip through Redis.
    if ack_channel == store.cache.bus.acks {
        if let Ok(id) = id.parse() {
            store.cache.bus.acked(id);
        }
        return;
    }
    let (store, ack_channel, id) = (store.clone(), ack_channel.to_string(), id.to_string());
    runtime::spawn(async move {
        let _ = store.redis.query(redis::cmd("PUBLISH").arg(ack_channel).arg(id)).await;
    });
}
