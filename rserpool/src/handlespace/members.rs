//! The PEs of one pool: entries in a slab (a vector with a free list), found by identifier
//! through a hash map of positions.
//!
//! A PE keeps its position while it is registered, so the pool's selection structure can name it
//! by position: a handle resolution reaches the chosen entries without a lookup by identifier,
//! and a removal moves no other entry. A B-tree holding the entries themselves keeps its nodes
//! about half full when identifiers arrive in order, which doubled the memory per PE.

use std::collections::HashMap;

use super::{PoolElementEntry, SeededHasher};
use crate::wire::param::PeId;

/// A PE's place in its pool's slab, stable while it is registered.
pub(super) type Position = u32;

#[derive(Clone, Debug, Default)]
pub(super) struct Members {
    positions: HashMap<PeId, Position, SeededHasher>,
    slab: Vec<Option<PoolElementEntry>>,
    /// Vacant positions of `slab`, reused first.
    free: Vec<Position>,
}

impl Members {
    pub(super) fn len(&self) -> usize {
        self.positions.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// Positions in use lie below this.
    pub(super) fn capacity(&self) -> usize {
        self.slab.len()
    }

    pub(super) fn position(&self, id: &PeId) -> Option<Position> {
        self.positions.get(id).copied()
    }

    pub(super) fn get(&self, id: &PeId) -> Option<&PoolElementEntry> {
        self.at(self.position(id)?)
    }

    pub(super) fn get_mut(&mut self, id: &PeId) -> Option<&mut PoolElementEntry> {
        let at = self.position(id)?;
        self.at_mut(at)
    }

    pub(super) fn at(&self, at: Position) -> Option<&PoolElementEntry> {
        self.slab.get(at as usize)?.as_ref()
    }

    pub(super) fn at_mut(&mut self, at: Position) -> Option<&mut PoolElementEntry> {
        self.slab.get_mut(at as usize)?.as_mut()
    }

    /// Adds the entry of a PE that is not a member; returns its position.
    pub(super) fn insert(&mut self, entry: PoolElementEntry) -> Position {
        let id = entry.element.id;
        debug_assert!(
            !self.positions.contains_key(&id),
            "PE {id:?} inserted twice"
        );
        let at = match self.free.pop() {
            Some(at) => {
                self.slab[at as usize] = Some(entry);
                at
            }
            None => {
                self.slab.push(Some(entry));
                // A pool holds at most `max_pool_elements_per_pool` PEs, far below u32::MAX.
                (self.slab.len() - 1) as Position
            }
        };
        self.positions.insert(id, at);
        at
    }

    /// Removes the entry of `id`; returns where it was and the entry.
    #[inline]
    pub(super) fn remove(&mut self, id: &PeId) -> Option<(Position, PoolElementEntry)> {
        let at = self.positions.remove(id)?;
        let entry = self.slab.get_mut(at as usize)?.take()?;
        if at as usize + 1 == self.slab.len() {
            self.slab.pop();
        } else {
            self.free.push(at);
        }
        Some((at, entry))
    }

    /// Whether so much of the slab is vacant that [`Members::compact`] should run: the pool
    /// shrank to under a quarter of its peak.
    pub(super) fn is_sparse(&self) -> bool {
        self.slab.len() > 32 && self.len() * 4 < self.slab.len()
    }

    /// Moves the entries at the end into the vacant positions at the front and gives back the
    /// rest of the slab; returns each move as `(from, to)`, for the caller to update whatever
    /// names entries by position.
    pub(super) fn compact(&mut self) -> Vec<(Position, Position)> {
        let len = self.len();
        // As many holes lie below `len` as entries lie at or above it.
        let mut holes: Vec<Position> = self
            .free
            .iter()
            .copied()
            .filter(|&at| (at as usize) < len)
            .collect();
        let mut moves = Vec::with_capacity(holes.len());
        for from in len..self.slab.len() {
            let Some(entry) = self.slab[from].take() else {
                continue;
            };
            let Some(to) = holes.pop() else {
                debug_assert!(false, "slab bookkeeping broken");
                break;
            };
            self.positions.insert(entry.element.id, to);
            self.slab[to as usize] = Some(entry);
            moves.push((from as Position, to));
        }
        self.slab.truncate(len);
        self.slab.shrink_to_fit();
        self.free = Vec::new();
        moves
    }

    /// The entries with their positions, in slab order.
    pub(super) fn entries(&self) -> impl Iterator<Item = (Position, &PoolElementEntry)> {
        self.slab
            .iter()
            .enumerate()
            .filter_map(|(at, entry)| Some((at as Position, entry.as_ref()?)))
    }

    pub(super) fn entries_mut(
        &mut self,
    ) -> impl Iterator<Item = (Position, &mut PoolElementEntry)> {
        self.slab
            .iter_mut()
            .enumerate()
            .filter_map(|(at, entry)| Some((at as Position, entry.as_mut()?)))
    }

    /// The entries in identifier order (sorted on each call: for listings, not hot paths).
    pub(super) fn iter(&self) -> impl Iterator<Item = (&PeId, &PoolElementEntry)> {
        let mut sorted: Vec<(&PeId, &PoolElementEntry)> = self
            .entries()
            .map(|(_, entry)| (&entry.element.id, entry))
            .collect();
        sorted.sort_unstable_by_key(|(id, _)| **id);
        sorted.into_iter()
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &PoolElementEntry> {
        self.iter().map(|(_, entry)| entry)
    }

    /// Whether every entry sits where its position says, no position dangles and every vacant
    /// position is on the free list once.
    pub(super) fn is_consistent(&self) -> bool {
        let occupied = self.slab.iter().filter(|entry| entry.is_some()).count();
        let mut free = self.free.clone();
        free.sort_unstable();
        free.dedup();
        occupied == self.positions.len()
            && free.len() == self.free.len()
            && occupied + free.len() == self.slab.len()
            && free.iter().all(|&at| self.at(at).is_none())
            && self
                .positions
                .iter()
                .all(|(id, &at)| self.at(at).is_some_and(|entry| entry.element.id == *id))
    }
}
