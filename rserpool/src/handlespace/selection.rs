//! A pool's selection structure: which PEs a handle resolution hands out, in what order, and how
//! a selection moves them on. PEs are named by their [`Position`] in the pool's slab.
//!
//! * **Round robin**: a queue in selection order; a selection hands out the front and re-queues
//!   it at the back, O(1). Removals leave their item behind, stale (see [`RoundRobinQueue`]).
//! * **Other ordered policies** (LU, Priority, the degradation and DPF variants): a B-tree over
//!   one `u128` per PE, [`policy::order_key`]; removals leave their key behind, stale, as in the
//!   queue (see [`OrderedTree`]).
//! * **WRR**: a B-tree over the exact [`WrrKey`].
//! * **Weighted random policies**: a Fenwick tree with one slot per position.
//!
//! Every ordered structure gives the same order as sorting by (policy value, sequence number):
//! a PE re-queued by a selection gets the pool's next sequence number, a newcomer too.

use std::cell::Cell;
use std::cmp::Ordering;
use std::collections::{BTreeMap, VecDeque};

use rand::{Rng, RngExt};

use super::PoolElementEntry;
use super::fenwick::Fenwick;
use super::members::{Members, Position};
use super::policy::{self, PolicyKind, SelectionMethod, WrrKey};
use crate::wire::param::PoolElement;
use crate::wire::policy::Policy;

/// The key of an ordered (non-WRR) selection: [`policy::order_key`], one `u128` comparison.
///
/// A selection gives the first PE a larger key; when that still sorts before the second PE (a
/// least-used PE stays the least used), the key is raised in place instead of taking the PE out
/// and in again, which the B-tree allows because no key's rank changes.
#[derive(Clone, Debug)]
pub(super) struct RankKey(Cell<u128>);

impl RankKey {
    fn new(key: u128) -> Self {
        RankKey(Cell::new(key))
    }

    /// The key of a PE from its current values and state.
    fn of(entry: &PoolElementEntry) -> Self {
        RankKey::new(policy::order_key(&entry.element.policy, &entry.state))
    }
}

impl Ord for RankKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.get().cmp(&other.0.get())
    }
}

impl PartialOrd for RankKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for RankKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

impl Eq for RankKey {}

/// A key an ordered selection sorts by.
trait SelectionOrder: Ord + Clone {
    /// Sets the key to `to` in place, where the caller has made sure that keeps its rank;
    /// false if this kind of key cannot change in place.
    fn raise_to(&self, to: &Self) -> bool;
}

impl SelectionOrder for RankKey {
    fn raise_to(&self, to: &Self) -> bool {
        self.0.set(to.0.get());
        true
    }
}

impl SelectionOrder for WrrKey {
    fn raise_to(&self, _: &Self) -> bool {
        false
    }
}

/// Stale keys (or queue items) kept per live one at most before they are collected: each
/// collection checks every key against its PE, so collecting rarely keeps that cost per removal
/// low; the price is a few bytes per removed PE until the next collection.
const STALE_PER_LIVE: usize = 3;

/// How many keys, stale ones included, a structure with `live` live keys may hold.
fn too_many_keys(live: usize) -> usize {
    (STALE_PER_LIVE + 1) * live + 32
}

/// Round robin's selection order: `(sequence number, position)` items in ascending sequence
/// numbers, since every PE queued at the back gets the pool's next one.
///
/// An item is live while the PE at its position still has its sequence number. A removal, or a
/// selection that re-queues a PE under a new number, leaves the old item behind, stale: it is
/// skipped, dropped when it reaches the front, and all stale items go once they outnumber the
/// live ones three to one ([`STALE_PER_LIVE`]). So a resolution, a registration and a removal
/// each cost O(1), amortized.
#[derive(Clone, Debug, Default)]
pub(super) struct RoundRobinQueue {
    items: VecDeque<(u64, Position)>,
    live: usize,
}

impl RoundRobinQueue {
    fn is_live(elements: &Members, (seq, at): (u64, Position)) -> bool {
        elements.at(at).is_some_and(|entry| entry.state.seq == seq)
    }

    /// Where the item of sequence number `seq` is (items are sorted by it, stale ones too).
    fn find(&self, seq: u64) -> Option<usize> {
        self.items.binary_search_by_key(&seq, |&(s, _)| s).ok()
    }

    /// Queues a PE at the back; `seq` must be the highest yet.
    fn push(&mut self, seq: u64, at: Position) {
        debug_assert!(self.items.back().is_none_or(|&(last, _)| last < seq));
        self.items.push_back((seq, at));
        self.live += 1;
    }

    /// Drops the stale items at the front, and every stale item once there are too many.
    fn collect_garbage(&mut self, elements: &Members) {
        while let Some(&front) = self.items.front() {
            if Self::is_live(elements, front) {
                break;
            }
            self.items.pop_front();
        }
        if self.live == 0 {
            self.items.clear();
        } else if self.items.len() > too_many_keys(self.live) {
            self.items.retain(|&item| Self::is_live(elements, item));
            self.items.shrink_to(self.items.len() * 3 / 2);
        }
    }
}

/// The B-tree of the ordered policies but RR and WRR. A key is live while the PE at its position
/// still has that key (keys hold the unique sequence number, so no other PE can). A removal only
/// leaves the PE's key behind: a selection skips stale keys and drops those at the front, and
/// all go once they outnumber the live ones three to one ([`STALE_PER_LIVE`]).
#[derive(Clone, Debug, Default)]
pub(super) struct OrderedTree {
    map: BTreeMap<RankKey, Position>,
    live: usize,
}

impl OrderedTree {
    fn is_live(elements: &Members, key: &RankKey, at: Position) -> bool {
        elements
            .at(at)
            .is_some_and(|entry| RankKey::of(entry) == *key)
    }

    fn collect_garbage(&mut self, elements: &Members) {
        if self.live == 0 {
            self.map.clear();
        } else if self.map.len() > too_many_keys(self.live) {
            // Rebuilt from the slab (one sorted bulk load), which costs far less than taking
            // the stale keys out of the tree one by one.
            self.map = elements
                .entries()
                .map(|(at, entry)| (RankKey::of(entry), at))
                .collect();
        }
    }
}

/// Where a PE sits in its pool's selection structure, computed from its current values and
/// state (not stored: whoever changes those takes the PE out under its old key first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SelectionKey {
    RoundRobin(u64),
    Ordered(u128),
    WeightedRoundRobin(WrrKey),
    /// A weighted random pool's PE (its slot is its position), or a WRR PE of weight 0.
    Unsorted,
}

impl SelectionKey {
    pub(super) fn of(entry: &PoolElementEntry) -> Self {
        match entry.element.policy {
            Policy::RoundRobin => SelectionKey::RoundRobin(entry.state.seq),
            Policy::WeightedRoundRobin { weight } => policy::wrr_key(weight, &entry.state)
                .map_or(SelectionKey::Unsorted, SelectionKey::WeightedRoundRobin),
            ref policy => match PolicyKind::of(policy).selection_method() {
                SelectionMethod::WeightedRandom => SelectionKey::Unsorted,
                _ => SelectionKey::Ordered(policy::order_key(policy, &entry.state)),
            },
        }
    }
}

/// A pool's selection structure.
#[derive(Clone, Debug)]
pub(super) enum Selection {
    RoundRobin(RoundRobinQueue),
    /// Ordered policies but RR and WRR.
    Ordered(OrderedTree),
    /// WRR; PEs of weight 0 are left out.
    WeightedRoundRobin(BTreeMap<WrrKey, Position>),
    /// Weighted random policies: one Fenwick slot per position.
    Weighted(Fenwick),
}

impl Selection {
    pub(super) fn new(kind: PolicyKind) -> Self {
        match kind.selection_method() {
            SelectionMethod::RoundRobin => Selection::RoundRobin(RoundRobinQueue::default()),
            SelectionMethod::Ordered => Selection::Ordered(OrderedTree::default()),
            SelectionMethod::WeightedRoundRobin => Selection::WeightedRoundRobin(BTreeMap::new()),
            SelectionMethod::WeightedRandom => Selection::Weighted(Fenwick::default()),
        }
    }

    /// Puts the PE at `at` in under `key` (its current [`SelectionKey`]). A round-robin PE
    /// must carry the pool's newest sequence number.
    pub(super) fn insert(&mut self, key: SelectionKey, at: Position, entry: &PoolElementEntry) {
        match (self, key) {
            (Selection::RoundRobin(queue), SelectionKey::RoundRobin(seq)) => queue.push(seq, at),
            (Selection::Ordered(tree), SelectionKey::Ordered(key)) => {
                tree.map.insert(RankKey::new(key), at);
                tree.live += 1;
            }
            (Selection::WeightedRoundRobin(map), SelectionKey::WeightedRoundRobin(key)) => {
                map.insert(key, at);
            }
            (Selection::Weighted(fenwick), _) => {
                let slot = at as usize;
                if slot >= fenwick.capacity() {
                    fenwick.grow((slot + 1).max(fenwick.capacity() * 2).max(4));
                }
                fenwick.set(
                    slot,
                    policy::random_weight(&entry.element.policy, &entry.state),
                );
            }
            // A WRR PE of weight 0 is not selectable.
            _ => {}
        }
    }

    /// Takes the PE at `at` out, found under `key` (the [`SelectionKey`] it was put in under).
    /// `elements` no longer holds it there, or holds it with its new state.
    pub(super) fn remove(&mut self, key: SelectionKey, at: Position, elements: &Members) {
        match (self, key) {
            (Selection::RoundRobin(queue), SelectionKey::RoundRobin(_)) => {
                queue.live -= 1;
                queue.collect_garbage(elements);
            }
            (Selection::Ordered(tree), SelectionKey::Ordered(_)) => {
                tree.live -= 1;
                tree.collect_garbage(elements);
            }
            (Selection::WeightedRoundRobin(map), SelectionKey::WeightedRoundRobin(key)) => {
                map.remove(&key);
            }
            (Selection::Weighted(fenwick), _) => fenwick.set(at as usize, 0),
            _ => {}
        }
    }

    /// Moves the PE at `at` from `old` to `new` after its values changed (a re-registration).
    /// The old key is taken out at once: only removals leave stale keys behind, so the
    /// collections a pool's removals pay for stay rare.
    pub(super) fn rekey(
        &mut self,
        old: SelectionKey,
        new: SelectionKey,
        at: Position,
        entry: &PoolElementEntry,
    ) {
        match (&mut *self, old) {
            (Selection::Ordered(tree), SelectionKey::Ordered(old)) => {
                tree.map.remove(&RankKey::new(old));
                tree.live -= 1;
            }
            (Selection::WeightedRoundRobin(map), SelectionKey::WeightedRoundRobin(old)) => {
                map.remove(&old);
            }
            (Selection::Weighted(fenwick), _) => fenwick.set(at as usize, 0),
            (Selection::RoundRobin(_), _) => {
                debug_assert!(false, "a round-robin key changes only by selection");
                return;
            }
            _ => {}
        }
        self.insert(new, at, entry);
    }

    /// Follows the slab's compaction: the PE now at `to` (under `key`) was at `from`.
    pub(super) fn relocate(&mut self, key: SelectionKey, from: Position, to: Position) {
        let position = match (self, key) {
            (Selection::RoundRobin(queue), SelectionKey::RoundRobin(seq)) => queue
                .find(seq)
                .and_then(|index| queue.items.get_mut(index))
                .map(|(_, at)| at),
            (Selection::Ordered(tree), SelectionKey::Ordered(key)) => {
                tree.map.get_mut(&RankKey::new(key))
            }
            (Selection::WeightedRoundRobin(map), SelectionKey::WeightedRoundRobin(key)) => {
                map.get_mut(&key)
            }
            (Selection::Weighted(fenwick), _) => {
                let weight = fenwick.weight(from as usize);
                fenwick.set(from as usize, 0);
                fenwick.set(to as usize, weight);
                None
            }
            _ => None,
        };
        if let Some(position) = position {
            *position = to;
        }
    }

    /// After a compaction: gives back what the structure no longer needs.
    pub(super) fn shrink(&mut self, capacity: usize) {
        if let Selection::Weighted(fenwick) = self {
            fenwick.truncate(capacity);
        }
    }

    /// The WRR virtual time of the selection's head, `(0, 0/1)` when empty or not WRR.
    pub(super) fn wrr_head_time(&self) -> (u64, u64, u64) {
        if let Selection::WeightedRoundRobin(map) = self
            && let Some((key, _)) = map.first_key_value()
        {
            return (key.round, key.num, key.den);
        }
        (0, 0, 1)
    }

    /// Hands out up to `handout.items` PEs (appended to its answer) and advances the first
    /// MaxIncrement of them. `picked` is scratch space.
    pub(super) fn select<R: Rng + ?Sized>(
        &mut self,
        handout: Handout,
        picked: &mut Vec<Position>,
        rng: &mut R,
    ) {
        handout
            .chosen
            .reserve(handout.items.min(handout.elements.len()));
        picked.clear();
        match self {
            Selection::RoundRobin(queue) => select_round_robin(queue, handout, picked),
            Selection::Ordered(tree) => select_ordered(&mut tree.map, handout, picked, |entry| {
                Some(RankKey::of(entry))
            }),
            Selection::WeightedRoundRobin(map) => {
                select_ordered(map, handout, picked, |entry| match entry.element.policy {
                    Policy::WeightedRoundRobin { weight } => policy::wrr_key(weight, &entry.state),
                    _ => None,
                })
            }
            Selection::Weighted(fenwick) => select_weighted(fenwick, handout, picked, rng),
        }
    }

    /// Checks that the PE at `at` is where `key` (its current key) says; whether it counts
    /// as selectable.
    pub(super) fn check_entry(
        &self,
        key: SelectionKey,
        at: Position,
        entry: &PoolElementEntry,
    ) -> Result<bool, &'static str> {
        match (self, key) {
            (Selection::RoundRobin(queue), SelectionKey::RoundRobin(seq)) => {
                match queue.find(seq) {
                    Some(index) if queue.items[index].1 == at => Ok(true),
                    _ => Err("missing from the round-robin queue"),
                }
            }
            (Selection::Ordered(tree), SelectionKey::Ordered(key)) => {
                if tree.map.get(&RankKey::new(key)) == Some(&at) {
                    Ok(true)
                } else {
                    Err("missing from the selection")
                }
            }
            (Selection::WeightedRoundRobin(map), SelectionKey::WeightedRoundRobin(key)) => {
                if map.get(&key) == Some(&at) {
                    Ok(true)
                } else {
                    Err("missing from the selection")
                }
            }
            (Selection::WeightedRoundRobin(_), SelectionKey::Unsorted) => Ok(false),
            (Selection::Weighted(fenwick), SelectionKey::Unsorted) => {
                let expected = policy::random_weight(&entry.element.policy, &entry.state);
                if fenwick.weight(at as usize) == expected {
                    Ok(true)
                } else {
                    Err("stale weight")
                }
            }
            _ => Err("key kind differs from the pool's"),
        }
    }

    /// Checks the structure as a whole, given how many PEs [`Selection::check_entry`] found
    /// selectable: nobody else is in it, its bookkeeping adds up.
    pub(super) fn check_whole(
        &self,
        selectable: usize,
        elements: &Members,
    ) -> Result<(), &'static str> {
        match self {
            Selection::RoundRobin(queue) => {
                let live = queue
                    .items
                    .iter()
                    .filter(|&&item| RoundRobinQueue::is_live(elements, item))
                    .count();
                if live != selectable || queue.live != selectable {
                    return Err("round-robin queue holds strangers or miscounts");
                }
                if queue
                    .items
                    .iter()
                    .zip(queue.items.iter().skip(1))
                    .any(|(a, b)| a.0 >= b.0)
                {
                    return Err("round-robin queue out of order");
                }
                if queue.items.len() > too_many_keys(queue.live) {
                    return Err("round-robin queue keeps too many stale items");
                }
                if queue
                    .items
                    .front()
                    .is_some_and(|&front| !RoundRobinQueue::is_live(elements, front))
                {
                    return Err("round-robin queue starts with a stale item");
                }
            }
            Selection::Ordered(tree) => {
                let live = tree
                    .map
                    .iter()
                    .filter(|&(key, &at)| OrderedTree::is_live(elements, key, at))
                    .count();
                if live != selectable || tree.live != selectable {
                    return Err("selection holds strangers or miscounts");
                }
                if tree.map.len() > too_many_keys(tree.live) {
                    return Err("selection keeps too many stale keys");
                }
            }
            Selection::WeightedRoundRobin(map) if map.len() != selectable => {
                return Err("selection holds strangers");
            }
            Selection::Weighted(fenwick) => {
                // Vacant positions weigh nothing.
                if (0..fenwick.capacity()).any(|slot| {
                    fenwick.weight(slot) != 0 && elements.at(slot as Position).is_none()
                }) {
                    return Err("a vacant slot has weight");
                }
                if !fenwick.is_consistent() {
                    return Err("Fenwick sums broken");
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// One resolution in progress: the pool's entries and sequence counter, how many PEs to hand
/// out and advance (MaxIncrement), and the answer.
pub(super) struct Handout<'a> {
    pub(super) elements: &'a mut Members,
    pub(super) next_seq: &'a mut u64,
    pub(super) chosen: &'a mut Vec<PoolElement>,
    pub(super) items: usize,
    pub(super) max_increment: usize,
}

/// Counts the PE at `at` as selected and copies it into the answer.
fn hand_out<'e>(
    elements: &'e mut Members,
    chosen: &mut Vec<PoolElement>,
    at: Position,
) -> Option<&'e mut PoolElementEntry> {
    let entry = elements.at_mut(at)?;
    entry.selection_count += 1;
    chosen.push(entry.element.clone());
    Some(entry)
}

/// Gives a selected PE the pool's next sequence number (behind every other of equal key) and,
/// if it is within MaxIncrement, advances its policy state.
fn requeue(entry: &mut PoolElementEntry, next_seq: &mut u64, advance: bool) {
    entry.state.seq = *next_seq;
    *next_seq += 1;
    if advance {
        policy::advance_after_selection(&entry.element.policy, &mut entry.state);
    }
}

/// Round robin: hands out the first live PEs of the queue and re-queues the first
/// `max_increment` of them at the back under new sequence numbers (their old items go stale).
fn select_round_robin(
    queue: &mut RoundRobinQueue,
    Handout {
        elements,
        next_seq,
        chosen,
        items,
        max_increment,
    }: Handout,
    picked: &mut Vec<Position>,
) {
    picked.extend(
        queue
            .items
            .iter()
            .filter(|&&item| RoundRobinQueue::is_live(elements, item))
            .take(items)
            .map(|&(_, at)| at),
    );
    for (i, &at) in picked.iter().enumerate() {
        if let Some(entry) = hand_out(elements, chosen, at)
            && i < max_increment
        {
            requeue(entry, next_seq, true);
            queue.items.push_back((entry.state.seq, at));
        }
    }
    queue.collect_garbage(elements);
}

/// Hands out the first `items` PEs of an ordered selection and re-inserts the first
/// `max_increment` of them behind everything else of equal key, with their state advanced.
/// Keys a removal left behind (see [`OrderedTree`]) are skipped, and dropped at the front.
fn select_ordered<K: SelectionOrder>(
    map: &mut BTreeMap<K, Position>,
    Handout {
        elements,
        next_seq,
        chosen,
        items,
        max_increment,
    }: Handout,
    picked: &mut Vec<Position>,
    key_of: impl Fn(&PoolElementEntry) -> Option<K>,
) {
    let is_live = |elements: &Members, key: &K, at: Position| {
        elements
            .at(at)
            .and_then(&key_of)
            .is_some_and(|current| current == *key)
    };
    // One walk over the front: the live PEs to hand out, the first live key and the key right
    // after it (stale or not), and how many stale keys precede it.
    let mut first: Option<&K> = None;
    let mut successor: Option<&K> = None;
    let mut stale_front = 0;
    for (key, &at) in map.iter() {
        if first.is_some() && successor.is_none() {
            successor = Some(key);
        }
        if picked.len() >= items && (first.is_none() || successor.is_some()) {
            break;
        }
        if picked.len() < items && is_live(elements, key, at) {
            first.get_or_insert(key);
            picked.push(at);
        } else if first.is_none() {
            stale_front += 1;
        }
    }
    let Some(&first_at) = picked.first() else {
        return;
    };

    // The first PE: its new key is larger; if it still sorts before the next key (a least-used
    // PE stays the least used), it is raised in place.
    let mut requeue_first = None;
    if let Some(entry) = hand_out(elements, chosen, first_at)
        && max_increment > 0
    {
        let old_key = key_of(entry);
        requeue(entry, next_seq, true);
        let new_key = key_of(entry);
        let raised = match (&new_key, first) {
            (Some(new_key), Some(first)) => {
                successor.is_none_or(|next| new_key < next) && first.raise_to(new_key)
            }
            _ => false,
        };
        if !raised {
            requeue_first = Some((old_key, new_key));
        }
    }
    for _ in 0..stale_front {
        map.pop_first();
    }
    if let Some((old_key, new_key)) = requeue_first {
        if let Some(old_key) = old_key {
            map.remove(&old_key);
        }
        if let Some(new_key) = new_key {
            map.insert(new_key, first_at);
        }
    }

    for (i, &at) in picked.iter().enumerate().skip(1) {
        let Some(entry) = hand_out(elements, chosen, at) else {
            continue;
        };
        if i >= max_increment {
            continue;
        }
        let old_key = key_of(entry);
        requeue(entry, next_seq, true);
        if let Some(old_key) = old_key {
            map.remove(&old_key);
        }
        if let Some(new_key) = key_of(entry) {
            map.insert(new_key, at);
        }
    }
}

/// Weighted random: `items` distinct draws proportional to the weights (each drawn slot is
/// zeroed until the answer is complete), then the first `max_increment` get their state
/// advanced and their weight recomputed.
fn select_weighted<R: Rng + ?Sized>(
    fenwick: &mut Fenwick,
    Handout {
        elements,
        next_seq,
        chosen,
        items,
        max_increment,
    }: Handout,
    picked: &mut Vec<Position>,
    rng: &mut R,
) {
    while picked.len() < items {
        let total = fenwick.total();
        if total == 0 {
            break;
        }
        let Some(slot) = fenwick.find(rng.random_range(0..total)) else {
            break;
        };
        // Slots are positions, far below u32::MAX.
        picked.push(slot as Position);
        fenwick.set(slot, 0);
    }
    for (i, &at) in picked.iter().enumerate() {
        let Some(entry) = hand_out(elements, chosen, at) else {
            continue;
        };
        requeue(entry, next_seq, i < max_increment);
        // The weight from the (possibly advanced) state: what it was for the others.
        fenwick.set(
            at as usize,
            policy::random_weight(&entry.element.policy, &entry.state),
        );
    }
}
