//! Timers: the one sleep the tokio drivers share, and [`Deadlines`], the deadline queue of the
//! machines that supervise many peers.
//!
//! Every sans-I/O machine says when it next wants `handle_timeout` with `poll_timeout()`
//! (`None`: no timer armed); the drivers wait on this in their `select!` beside their I/O.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::Hash;
use std::time::Instant;

/// Sleeps until `deadline`, or for ever when there is none (so a `select!` arm never fires).
pub async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// A min-heap whose items can go stale: whoever replaces or removes what an item describes
/// leaves the item behind, and the owner, which alone knows what is live, drops stale items
/// when they reach the head ([`LazyMinHeap::prune`]) or all at once ([`LazyMinHeap::rebuild`]).
/// The deadline orders of [`Deadlines`] and of the handlespace's registration lives.
#[derive(Clone, Debug)]
pub(crate) struct LazyMinHeap<T> {
    heap: BinaryHeap<Reverse<T>>,
}

impl<T> Default for LazyMinHeap<T> {
    fn default() -> Self {
        LazyMinHeap {
            heap: BinaryHeap::new(),
        }
    }
}

impl<T: Ord> LazyMinHeap<T> {
    pub(crate) fn push(&mut self, item: T) {
        self.heap.push(Reverse(item));
    }

    /// The least item, live or not.
    pub(crate) fn first(&self) -> Option<&T> {
        self.heap.peek().map(|Reverse(item)| item)
    }

    pub(crate) fn pop(&mut self) -> Option<T> {
        self.heap.pop().map(|Reverse(item)| item)
    }

    /// Items held, stale ones included.
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.heap.iter().map(|Reverse(item)| item)
    }

    /// Drops the stale items at the head.
    pub(crate) fn prune(&mut self, is_live: impl Fn(&T) -> bool) {
        while self.first().is_some_and(|item| !is_live(item)) {
            self.heap.pop();
        }
    }

    /// Replaces every item by the `live` ones.
    pub(crate) fn rebuild(&mut self, live: impl IntoIterator<Item = T>) {
        self.heap = live.into_iter().map(Reverse).collect();
    }
}

/// Deadlines of many keys, earliest first: what a machine that supervises many peers (keep-
/// alives of every PE, probes of reported PEs) needs to arm one timer and find what is due.
/// Each key has at most one deadline and a value (e.g. which phase it is in).
///
/// The order is a min-heap of `(deadline, key)` items, pruned lazily: replacing or removing a
/// deadline leaves its item behind, stale, to be dropped when it comes up (it is live only
/// while the key still has that very deadline). So re-arming a timer, which a keep-alive
/// supervisor does for every acknowledgement, costs a hash update and a heap push, and a
/// removal only the hash removal. A stale item that reaches the head is dropped at once, so
/// [`Deadlines::poll_timeout`] stays exact; the heap is rebuilt when stale items outnumber
/// the live ones.
#[derive(Clone, Debug)]
pub struct Deadlines<K, V = ()> {
    /// Seeded at random per map: keys hold what peers chose (pool handles, PE identifiers).
    entries: HashMap<K, (V, Instant), foldhash::fast::RandomState>,
    order: LazyMinHeap<(Instant, K)>,
}

impl<K, V> Default for Deadlines<K, V> {
    fn default() -> Self {
        Deadlines {
            entries: HashMap::default(),
            order: LazyMinHeap::default(),
        }
    }
}

impl<K: Clone + Eq + Hash + Ord, V> Deadlines<K, V> {
    /// Sets `key`'s deadline and value, replacing any earlier one (returned).
    pub fn insert(&mut self, key: K, value: V, at: Instant) -> Option<(V, Instant)> {
        let previous = self.entries.insert(key.clone(), (value, at));
        match &previous {
            Some((_, old)) if *old == at => {}
            Some((_, old)) => {
                let old = *old;
                self.order.push((at, key.clone()));
                self.left(old, &key);
            }
            None => self.order.push((at, key)),
        }
        if self.order.len() > 2 * self.entries.len() + 64 {
            self.rebuild();
        }
        previous
    }

    /// Forgets `key` (returning its value and deadline).
    pub fn remove(&mut self, key: &K) -> Option<(V, Instant)> {
        let removed = self.entries.remove(key)?;
        self.left(removed.1, key);
        Some(removed)
    }

    /// `key`'s value and deadline.
    pub fn get(&self, key: &K) -> Option<&(V, Instant)> {
        self.entries.get(key)
    }

    /// Whether `key` has a deadline.
    pub fn contains_key(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }

    /// The keys with a deadline.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.entries.keys()
    }

    /// How many keys have a deadline.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key has a deadline.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The earliest deadline, to arm the caller's timer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.order.first().map(|(at, _)| *at)
    }

    /// Takes out the earliest key due at or before `now`, with its value.
    pub fn pop_due(&mut self, now: Instant) -> Option<(K, V)> {
        let (at, _) = self.order.first()?;
        if *at > now {
            return None;
        }
        let (_, key) = self.order.pop()?;
        let (value, _) = self.entries.remove(&key)?;
        self.prune();
        Some((key, value))
    }

    /// The item `(at, key)` went stale: pruned at once if it heads the heap; the heap is
    /// rebuilt once stale items outnumber the live ones.
    fn left(&mut self, at: Instant, key: &K) {
        if self.order.len() > 2 * self.entries.len() + 64 {
            self.rebuild();
        } else if self
            .order
            .first()
            .is_some_and(|(first, first_key)| *first == at && first_key == key)
        {
            self.prune();
        }
    }

    /// Drops the stale items at the head: live is a key that still has that very deadline.
    fn prune(&mut self) {
        let entries = &self.entries;
        self.order
            .prune(|(at, key)| entries.get(key).is_some_and(|(_, due)| due == at));
    }

    /// Rebuilds the heap from the live deadlines, once stale items outnumber them (amortized
    /// O(1) per change).
    fn rebuild(&mut self) {
        self.order
            .rebuild(self.entries.iter().map(|(key, (_, at))| (*at, key.clone())));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn keys_come_due_in_deadline_order_and_a_new_deadline_replaces_the_old() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut deadlines: Deadlines<u32, &str> = Deadlines::default();
        deadlines.insert(1, "a", t0 + ms(30));
        deadlines.insert(2, "b", t0 + ms(10));
        assert_eq!(
            deadlines.insert(1, "c", t0 + ms(20)),
            Some(("a", t0 + ms(30)))
        );
        assert_eq!(deadlines.poll_timeout(), Some(t0 + ms(10)));
        assert_eq!(deadlines.pop_due(t0 + ms(9)), None);
        assert_eq!(deadlines.pop_due(t0 + ms(25)), Some((2, "b")));
        assert_eq!(deadlines.pop_due(t0 + ms(25)), Some((1, "c")));
        assert_eq!(deadlines.pop_due(t0 + ms(99)), None);
        deadlines.insert(3, "d", t0);
        assert_eq!(deadlines.remove(&3), Some(("d", t0)));
        assert!(deadlines.is_empty() && deadlines.poll_timeout().is_none());
    }

    #[test]
    fn re_armed_and_removed_deadlines_leave_no_trace_in_the_order() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut deadlines: Deadlines<u32> = Deadlines::default();
        for key in 0..100 {
            deadlines.insert(key, (), t0 + ms(u64::from(key)));
        }
        // Re-arm every key many times (later each time), then remove the earliest half.
        for round in 1..=10u64 {
            for key in 0..100 {
                deadlines.insert(key, (), t0 + ms(1_000 * round + u64::from(key)));
                assert!(deadlines.order.len() <= 2 * deadlines.len() + 64);
            }
        }
        for key in 0..50 {
            deadlines.remove(&key);
            assert!(deadlines.order.len() <= 2 * deadlines.len() + 64);
        }
        assert_eq!(deadlines.poll_timeout(), Some(t0 + ms(10_050)));
        let due: Vec<u32> = std::iter::from_fn(|| deadlines.pop_due(t0 + ms(10_060)))
            .map(|(key, ())| key)
            .collect();
        assert_eq!(due, (50..=60).collect::<Vec<_>>());
        assert_eq!(deadlines.len(), 39);
        assert_eq!(deadlines.poll_timeout(), Some(t0 + ms(10_061)));
        // Re-arming to the same deadline keeps one item.
        let before = deadlines.order.len();
        deadlines.insert(61, (), t0 + ms(10_061));
        assert_eq!(deadlines.order.len(), before);
        for key in 61..100 {
            deadlines.remove(&key);
        }
        assert!(deadlines.is_empty() && deadlines.order.len() <= 64);
        assert_eq!(deadlines.poll_timeout(), None);
    }
}
