//! Timers: the one sleep the tokio drivers share, and [`Deadlines`], the deadline queue of the
//! machines that supervise many peers.
//!
//! Every sans-I/O machine says when it next wants `handle_timeout` with `poll_timeout()`
//! (`None`: no timer armed); the drivers wait on this in their `select!` beside their I/O.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;
use std::time::Instant;

/// Sleeps until `deadline`, or for ever when there is none (so a `select!` arm never fires).
pub async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// Deadlines of many keys, earliest first: what a machine that supervises many peers (keep-
/// alives of every PE, probes of reported PEs) needs to arm one timer and find what is due.
/// Each key has at most one deadline and a value (e.g. which phase it is in).
#[derive(Clone, Debug)]
pub struct Deadlines<K, V = ()> {
    entries: HashMap<K, (V, Instant)>,
    order: BTreeSet<(Instant, K)>,
}

impl<K, V> Default for Deadlines<K, V> {
    fn default() -> Self {
        Deadlines {
            entries: HashMap::new(),
            order: BTreeSet::new(),
        }
    }
}

impl<K: Clone + Eq + Hash + Ord, V> Deadlines<K, V> {
    /// Sets `key`'s deadline and value, replacing any earlier one (returned).
    pub fn insert(&mut self, key: K, value: V, at: Instant) -> Option<(V, Instant)> {
        let previous = self.entries.insert(key.clone(), (value, at));
        if let Some((_, old)) = &previous {
            self.order.remove(&(*old, key.clone()));
        }
        self.order.insert((at, key));
        previous
    }

    /// Forgets `key` (returning its value and deadline).
    pub fn remove(&mut self, key: &K) -> Option<(V, Instant)> {
        let removed = self.entries.remove(key)?;
        self.order.remove(&(removed.1, key.clone()));
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
        let (at, key) = self.order.first()?.clone();
        if at > now {
            return None;
        }
        self.order.remove(&(at, key.clone()));
        let (value, _) = self.entries.remove(&key)?;
        Some((key, value))
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
}
