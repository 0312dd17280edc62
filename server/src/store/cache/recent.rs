//! When each key was last invalidated, as this shard heard it, for a bounded while: a
//! cache fill may read from a replica only once that replica has replayed past the key's
//! last invalidation (`replicas.rs`), or it would cache the row the write replaced.
//!
//! Bounded by `database.recent_invalidations_max`. What falls out of the table is folded
//! into `floor`, a time every key is treated as invalidated at: forgetting can only make a
//! fill wait for a later replay (or go to the primary), never read too early.
//!
//! Runs on a shard: never blocks.

use super::Key;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

pub struct RecentInvalidations {
    at: HashMap<Key, Instant>,
    /// Each invalidation in the order heard, to drop the oldest first. A key invalidated
    /// twice appears twice; only the entry matching `at` removes it.
    order: VecDeque<(Instant, Key)>,
    floor: Option<Instant>,
    entries_max: usize,
    /// Entries older than this are dropped: a replica this far behind is not used at all,
    /// so remembering them would change no decision.
    horizon: Duration,
}

impl RecentInvalidations {
    pub fn new(entries_max: usize, horizon: Duration) -> RecentInvalidations {
        assert!(entries_max > 0);
        RecentInvalidations {
            at: HashMap::new(),
            order: VecDeque::new(),
            floor: None,
            entries_max,
            horizon,
        }
    }

    pub fn note(&mut self, key: &Key, now: Instant) {
        self.forget_older_than(now.checked_sub(self.horizon));
        while self.order.len() >= self.entries_max {
            self.drop_oldest();
        }
        self.at.insert(key.clone(), now);
        self.order.push_back((now, key.clone()));
        debug_assert!(self.at.len() <= self.order.len());
    }

    /// Every key counts as invalidated `now` (the cache was cleared: what it missed is unknown).
    pub fn note_all(&mut self, now: Instant) {
        self.at.clear();
        self.order.clear();
        self.floor = Some(now);
    }

    /// The latest time `key` may have been invalidated at, if any this table still covers.
    pub fn last(&self, key: &Key) -> Option<Instant> {
        self.at.get(key).copied().max(self.floor)
    }

    fn forget_older_than(&mut self, cutoff: Option<Instant>) {
        let Some(cutoff) = cutoff else { return };
        while self.order.front().is_some_and(|(at, _)| *at < cutoff) {
            self.drop_oldest();
        }
    }

    fn drop_oldest(&mut self) {
        let Some((at, key)) = self.order.pop_front() else {
            return;
        };
        if self.at.get(&key) == Some(&at) {
            self.at.remove(&key);
        }
        self.floor = self.floor.max(Some(at));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_each_key_and_folds_what_it_forgets_into_the_floor() {
        let start = Instant::now();
        let ms = |n: u64| start + Duration::from_millis(n);
        let mut recent = RecentInvalidations::new(2, Duration::from_secs(60));
        assert_eq!(recent.last(&Key::Me(1)), None);
        recent.note(&Key::Me(1), ms(1));
        recent.note(&Key::Me(2), ms(2));
        assert_eq!(recent.last(&Key::Me(1)), Some(ms(1)));
        assert_eq!(recent.last(&Key::User(1)), None, "another kind, same id");
        // A third entry pushes out the oldest: key 1 is then only known to be before ms(1).
        recent.note(&Key::Me(3), ms(3));
        assert_eq!(recent.last(&Key::Me(1)), Some(ms(1)), "folded into the floor");
        assert_eq!(recent.last(&Key::User(9)), Some(ms(1)), "the floor covers every key");
        assert_eq!(recent.last(&Key::Me(3)), Some(ms(3)));
        // Invalidated again: the later time wins, and the stale queue entry does not
        // remove the fresh one when it falls out.
        recent.note(&Key::Me(2), ms(4));
        recent.note(&Key::Me(5), ms(5));
        assert_eq!(recent.last(&Key::Me(2)), Some(ms(4)));
        recent.note_all(ms(6));
        assert_eq!(recent.last(&Key::Me(42)), Some(ms(6)));
    }

    #[test]
    fn forgets_past_the_horizon() {
        let start = Instant::now();
        let mut recent = RecentInvalidations::new(100, Duration::from_millis(10));
        recent.note(&Key::Events(1), start);
        recent.note(&Key::Events(2), start + Duration::from_millis(50));
        assert_eq!(recent.order.len(), 1, "the entry older than the horizon went");
        assert_eq!(recent.last(&Key::Events(1)), Some(start), "into the floor, still safe");
    }
}
