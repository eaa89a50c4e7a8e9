//! The PEs of one pool: entries packed in a vector, found by identifier through a hash map of
//! positions. A B-tree holding the entries themselves keeps its nodes about half full when
//! identifiers arrive in order, which doubled the memory per PE; a B-tree of positions costs a
//! walk through several nodes per lookup in a large pool.

use std::collections::HashMap;

use super::{PoolElementEntry, SeededHasher};
use crate::wire::param::PeId;

#[derive(Clone, Debug, Default)]
pub(super) struct Members {
    /// Position of each PE's entry in `entries`.
    positions: HashMap<PeId, u32, SeededHasher>,
    entries: Vec<PoolElementEntry>,
}

impl Members {
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(super) fn get(&self, id: &PeId) -> Option<&PoolElementEntry> {
        self.entries.get(*self.positions.get(id)? as usize)
    }

    pub(super) fn get_mut(&mut self, id: &PeId) -> Option<&mut PoolElementEntry> {
        self.entries.get_mut(*self.positions.get(id)? as usize)
    }

    /// Adds or replaces the entry of `id`.
    pub(super) fn insert(&mut self, id: PeId, entry: PoolElementEntry) {
        match self.positions.get(&id) {
            Some(&at) => self.entries[at as usize] = entry,
            None => {
                // A pool holds at most `max_pool_elements_per_pool` PEs, far below u32::MAX.
                self.positions.insert(id, self.entries.len() as u32);
                self.entries.push(entry);
            }
        }
    }

    /// Removes the entry of `id`; the last entry moves into its place.
    pub(super) fn remove(&mut self, id: &PeId) -> Option<PoolElementEntry> {
        let at = self.positions.remove(id)? as usize;
        let entry = self.entries.swap_remove(at);
        if let Some(moved) = self.entries.get(at)
            && let Some(position) = self.positions.get_mut(&moved.element.id)
        {
            *position = at as u32;
        }
        if self.entries.capacity() > 2 * self.entries.len() + 8 {
            // Give back what a shrunken pool no longer needs.
            self.entries.shrink_to(self.entries.len() * 3 / 2);
        }
        Some(entry)
    }

    /// The entries in identifier order (sorted on each call: for listings, not hot paths).
    pub(super) fn iter(&self) -> impl Iterator<Item = (&PeId, &PoolElementEntry)> {
        let mut sorted: Vec<(&PeId, &PoolElementEntry)> = self
            .entries
            .iter()
            .map(|entry| (&entry.element.id, entry))
            .collect();
        sorted.sort_unstable_by_key(|(id, _)| **id);
        sorted.into_iter()
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &PoolElementEntry> {
        self.iter().map(|(_, entry)| entry)
    }

    /// Whether every entry sits where its position says, and no position is left dangling.
    pub(super) fn is_consistent(&self) -> bool {
        self.positions.len() == self.entries.len()
            && self.positions.iter().all(|(id, at)| {
                self.entries
                    .get(*at as usize)
                    .is_some_and(|entry| entry.element.id == *id)
            })
    }
}
