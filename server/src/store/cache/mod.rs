//! The shard's cache: an in-memory L1 owned by the shard (quick_cache's unsync cache: no
//! lock, no hop), single-flight loads, and invalidation on every shard of every percore
//! process through Redis pub/sub (`bus`).
//!
//! Correctness rules:
//! - L1 is trusted only while this shard's subscription is up: an invalidation it cannot
//!   hear could leave a stale entry. Losing the subscription clears L1 and bypasses it until
//!   the subscription is back (and clears it again then).
//! - A write evicts locally at once, then publishes and waits for every subscribed shard to
//!   confirm (`invalidation_ack_timeout_ms`) before it answers.
//! - A load racing an invalidation of its key does not insert what it read (the flight is
//!   poisoned by the invalidation); every entry also expires after `l1_ttl_ms`.
//!
//! Runs on a shard: never blocks.

pub mod bus;
pub mod l2;
pub mod recent;

use crate::metrics::ShardMetrics;
use crate::store::StoreError;
use crate::store::settings as config;
use crate::units;
use futures::channel::oneshot;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

/// What is cached, by key. The wire form names it in Redis messages and keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// A session by its token hash → the user and when it expires.
    Session([u8; 32]),
    /// `GET /v1/me`'s body for a user.
    Me(i64),
    /// A user's public view.
    User(i64),
    /// A TechEmpower `world` row, as its JSON.
    World(i32),
    /// A user's newest events: the first page at the largest page size.
    Events(i64),
}

/// The invalidation epochs of each kind of key at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Epoch([u64; KINDS]);

const KINDS: usize = 5;

impl Key {
    fn kind(&self) -> usize {
        match self {
            Key::Session(_) => 0,
            Key::Me(_) => 1,
            Key::User(_) => 2,
            Key::World(_) => 3,
            Key::Events(_) => 4,
        }
    }

    pub fn wire(&self) -> String {
        match self {
            Key::Session(hash) => {
                let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
                format!("s:{hex}")
            }
            Key::Me(id) => format!("m:{id}"),
            Key::User(id) => format!("u:{id}"),
            Key::World(id) => format!("w:{id}"),
            Key::Events(id) => format!("e:{id}"),
        }
    }

    pub fn parse(wire: &str) -> Option<Key> {
        let (kind, rest) = wire.split_once(':')?;
        match kind {
            "m" => rest.parse().ok().map(Key::Me),
            "u" => rest.parse().ok().map(Key::User),
            "w" => rest.parse().ok().map(Key::World),
            "e" => rest.parse().ok().map(Key::Events),
            "s" if rest.len() == 64 => {
                let mut hash = [0u8; 32];
                for (i, byte) in hash.iter_mut().enumerate() {
                    *byte = u8::from_str_radix(rest.get(2 * i..2 * i + 2)?, 16).ok()?;
                }
                Some(Key::Session(hash))
            }
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub enum Cached {
    Session {
        user_id: i64,
        expires_at: SystemTime,
    },
    /// A JSON document, serialized once when loaded.
    Json(Rc<[u8]>),
    Events(Rc<EventPage>),
}

/// A user's newest events, each serialized once, with what a cursor needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventPage {
    pub events: Vec<PageEvent>,
    /// Older events exist beyond these.
    pub more: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageEvent {
    pub id: i64,
    pub created_at_micros: i64,
    pub json: Box<[u8]>,
}

struct Entry {
    value: Cached,
    loaded: Instant,
}

/// What a replica must have replayed before it may serve a load that fills the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillFreshness {
    /// Everything committed before this time: the keys' last invalidation (`None`: none
    /// this shard remembers, so any usable replica will do).
    Since(Option<Instant>),
    /// Unknowable: this shard cannot hear invalidations now, yet the fill could reach L2.
    /// The primary only.
    Unknowable,
}

/// One load in progress, shared by every request that misses the same key meanwhile.
#[derive(Default)]
struct Flight {
    waiters: RefCell<Vec<oneshot::Sender<Loaded>>>,
    /// An invalidation of the key arrived while loading: answer, but do not keep.
    poisoned: Cell<bool>,
}

type Loaded = Result<Option<Cached>, StoreError>;

pub struct Cache {
    enabled: bool,
    l1: RefCell<quick_cache::unsync::Cache<Key, Entry>>,
    l1_ttl: Cell<Duration>,
    flights: RefCell<HashMap<Key, Rc<Flight>>>,
    /// Per kind of key, bumped by every invalidation of that kind. Entries cached outside a
    /// flight (sessions read by the statement that checks them, users read in a batch) are
    /// dropped if their kind's epoch moved while the statement ran: a read from before a
    /// write must not re-insert what the write replaced. Such writes (logout, profile
    /// changes) are rare next to reads, so this costs few hits.
    epochs: [Cell<u64>; KINDS],
    /// When keys were invalidated, for deciding whether a replica may fill them.
    recent: RefCell<recent::RecentInvalidations>,
    pub bus: bus::Bus,
    pub l2: Rc<l2::L2>,
    metrics: &'static ShardMetrics,
}

impl Cache {
    /// A reload's lifetimes: `l1_ttl_ms` and `ttl_s`, for entries stored after it.
    pub fn reconfigure(&self, settings: &config::Cache) {
        self.l1_ttl.set(units::ms(settings.l1_ttl_ms));
        self.l2.set_ttl_s(settings.ttl_s);
    }

    pub fn new(
        settings: &config::Cache,
        database: &config::Database,
        shard_id: usize,
        redis: Rc<crate::store::redis::RedisClient>,
        metrics: &'static ShardMetrics,
    ) -> Cache {
        Cache {
            enabled: settings.enabled,
            l1: RefCell::new(quick_cache::unsync::Cache::new(settings.l1_entries)),
            l1_ttl: Cell::new(units::ms(settings.l1_ttl_ms)),
            flights: RefCell::new(HashMap::new()),
            epochs: Default::default(),
            recent: RefCell::new(recent::RecentInvalidations::new(
                database.recent_invalidations_max,
                units::ms(database.max_replica_lag_ms),
            )),
            bus: bus::Bus::new(settings, shard_id),
            l2: Rc::new(l2::L2::new(settings, redis, metrics)),
            metrics,
        }
    }

    fn usable(&self) -> bool {
        self.enabled && self.bus.subscribed()
    }

    /// The L1 entry for `key`, if L1 can be trusted now and the entry is fresh.
    pub fn get(&self, key: &Key) -> Option<Cached> {
        if !self.usable() {
            return None;
        }
        let l1 = self.l1.borrow();
        let found = l1
            .get(key)
            .filter(|e| e.loaded.elapsed() < self.l1_ttl.get())
            .map(|e| e.value.clone());
        let counter = if found.is_some() {
            &self.metrics.cache_l1_hits
        } else {
            &self.metrics.cache_l1_misses
        };
        ShardMetrics::add(counter, 1);
        found
    }

    /// The value of `key`: from L1, else from `load`, which concurrent misses of the same
    /// key on this shard share. `Ok(None)`: `load` found nothing (not cached).
    pub async fn get_or_load<F, Fut>(&self, key: Key, load: F) -> Loaded
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Loaded>,
    {
        if !self.enabled {
            return load().await;
        }
        if let Some(value) = self.get(&key) {
            return Ok(Some(value));
        }
        if !self.usable() {
            return self.through_l2(&key, load).await;
        }
        let existing = self.flights.borrow().get(&key).cloned();
        if let Some(flight) = existing {
            let (sender, receiver) = oneshot::channel();
            flight.waiters.borrow_mut().push(sender);
            ShardMetrics::add(&self.metrics.cache_flight_joins, 1);
            // A loader whose request went away sends nothing: load for ourselves then.
            return match receiver.await {
                Ok(loaded) => loaded,
                Err(_) => load().await,
            };
        }
        let flight = Rc::new(Flight::default());
        self.flights.borrow_mut().insert(key.clone(), flight.clone());
        // The flight is removed however this ends, even if the request is dropped midway.
        let _landing = Landing { cache: self, key: &key };
        let loaded = self.through_l2(&key, load).await;
        if let Ok(Some(value)) = &loaded
            && !flight.poisoned.get()
        {
            self.insert(key.clone(), value.clone());
        }
        for waiter in flight.waiters.borrow_mut().drain(..) {
            let _ = waiter.send(loaded.clone());
        }
        loaded
    }

    /// From Redis, else from `load` (stored in Redis unless a write came meanwhile).
    async fn through_l2<F, Fut>(&self, key: &Key, load: F) -> Loaded
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Loaded>,
    {
        match self.l2.get(key).await {
            l2::Lookup::Hit(value) => Ok(Some(value)),
            l2::Lookup::Miss(generation) => {
                let loaded = load().await;
                if let Ok(Some(value)) = &loaded {
                    l2::L2::put_later(&self.l2, vec![(key.clone(), generation, value.clone())]);
                }
                loaded
            }
            l2::Lookup::Unavailable => load().await,
        }
    }

    /// Keeps `value` in L1 if L1 can be trusted now.
    pub fn insert(&self, key: Key, value: Cached) {
        if self.usable() {
            self.l1.borrow_mut().insert(
                key,
                Entry {
                    value,
                    loaded: Instant::now(),
                },
            );
        }
    }

    /// Taken before a statement whose results will be cached outside a flight.
    pub fn epoch(&self) -> Epoch {
        Epoch(self.epochs.each_ref().map(Cell::get))
    }

    /// Keeps `value`, read by a statement that began at `epoch`, unless a key of its kind
    /// was invalidated meanwhile.
    pub fn insert_unless_invalidated(&self, epoch: Epoch, key: Key, value: Cached) {
        let kind = key.kind();
        if self.epochs[kind].get() == epoch.0[kind] {
            self.insert(key, value);
        }
    }

    /// How fresh a load of `keys` must be: what a replica serving it must have replayed.
    pub fn fill_freshness(&self, keys: &[Key]) -> FillFreshness {
        if keys.is_empty() || !self.enabled {
            return FillFreshness::Since(None);
        }
        self.heard_since(keys)
    }

    /// When `keys` were last invalidated, as far as this shard knows, even with the cache
    /// off: `Unknowable` unless the shard hears every invalidation now. A session check on
    /// a replica relies on this to see a logout (`Sql::query_session_replica`).
    pub fn heard_since(&self, keys: &[Key]) -> FillFreshness {
        if !self.usable() {
            return FillFreshness::Unknowable;
        }
        let recent = self.recent.borrow();
        FillFreshness::Since(keys.iter().filter_map(|key| recent.last(key)).max())
    }

    /// Drops `keys` from L1 and spoils any load of them in progress.
    pub fn evict(&self, keys: &[Key]) {
        let mut l1 = self.l1.borrow_mut();
        let flights = self.flights.borrow();
        let now = Instant::now();
        let mut recent = self.recent.borrow_mut();
        for key in keys {
            recent.note(key, now);
            let epoch = &self.epochs[key.kind()];
            epoch.set(epoch.get() + 1);
            l1.remove(key);
            if let Some(flight) = flights.get(key) {
                flight.poisoned.set(true);
            }
        }
    }

    /// Forgets everything: the subscription went down or came back.
    pub fn clear(&self) {
        self.l1.borrow_mut().clear();
        self.recent.borrow_mut().note_all(Instant::now());
        for epoch in &self.epochs {
            epoch.set(epoch.get() + 1);
        }
        for flight in self.flights.borrow().values() {
            flight.poisoned.set(true);
        }
    }
}

struct Landing<'a> {
    cache: &'a Cache,
    key: &'a Key,
}

impl Drop for Landing<'_> {
    fn drop(&mut self) {
        self.cache.flights.borrow_mut().remove(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_their_wire_form() {
        for key in [
            Key::Session([7; 32]),
            Key::Me(42),
            Key::User(9_000_000_000),
            Key::World(10_000),
            Key::Events(5),
        ] {
            assert_eq!(Key::parse(&key.wire()), Some(key));
        }
        for bad in ["", "x:1", "m:", "m:x", "s:00", "u"] {
            assert_eq!(Key::parse(bad), None, "{bad}");
        }
    }
}
