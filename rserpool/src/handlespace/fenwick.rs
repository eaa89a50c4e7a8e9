//! A Fenwick (binary indexed) tree of `u64` weights over slots, with "find the slot holding the
//! r-th unit of weight": the O(log n) weighted draw that rsplib gets from red-black trees with
//! subtree sums.

/// Weights per slot with prefix sums. Slots are `0..capacity()`.
#[derive(Clone, Debug, Default)]
pub(crate) struct Fenwick {
    /// 1-based implicit tree: `tree[i]` sums the weights of slots `(i - lowbit(i), i]`.
    tree: Vec<u64>,
    weights: Vec<u64>,
    total: u64,
}

impl Fenwick {
    pub(crate) fn capacity(&self) -> usize {
        self.weights.len()
    }

    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    pub(crate) fn weight(&self, slot: usize) -> u64 {
        self.weights.get(slot).copied().unwrap_or(0)
    }

    /// Grows to at least `capacity` slots (new slots weigh 0), rebuilding in O(n).
    pub(crate) fn grow(&mut self, capacity: usize) {
        if capacity <= self.capacity() {
            return;
        }
        self.weights.resize(capacity, 0);
        self.rebuild_sums();
    }

    /// Shrinks to `capacity` slots, whose weights must be 0 beyond it, rebuilding in O(n).
    pub(crate) fn truncate(&mut self, capacity: usize) {
        debug_assert!(self.weights.iter().skip(capacity).all(|&w| w == 0));
        self.weights.truncate(capacity);
        self.weights.shrink_to_fit();
        self.rebuild_sums();
    }

    fn rebuild_sums(&mut self) {
        let capacity = self.capacity();
        self.tree = vec![0; capacity + 1];
        for (slot, &w) in self.weights.iter().enumerate() {
            self.tree[slot + 1] = self.tree[slot + 1].wrapping_add(w);
            let parent = (slot + 1) + lowbit(slot + 1);
            if parent <= capacity {
                let v = self.tree[slot + 1];
                self.tree[parent] = self.tree[parent].wrapping_add(v);
            }
        }
        self.total = self
            .weights
            .iter()
            .fold(0u64, |sum, &w| sum.wrapping_add(w));
    }

    /// Sets the weight of `slot` (which must be below `capacity()`).
    pub(crate) fn set(&mut self, slot: usize, weight: u64) {
        let Some(old) = self.weights.get_mut(slot) else {
            debug_assert!(false, "slot {slot} out of range");
            return;
        };
        let old_weight = std::mem::replace(old, weight);
        if old_weight == weight {
            return;
        }
        // Sums only ever hold weights < 2^32 × (number of slots), far below 2^64; the wrapping
        // delta is exact because the final sums are non-negative.
        let delta = weight.wrapping_sub(old_weight);
        self.total = self.total.wrapping_add(delta);
        let mut i = slot + 1;
        while i < self.tree.len() {
            self.tree[i] = self.tree[i].wrapping_add(delta);
            i += lowbit(i);
        }
    }

    /// The slot holding unit `r` of the cumulative weight, i.e. the smallest slot whose prefix
    /// sum exceeds `r`. `None` when `r >= total()`.
    pub(crate) fn find(&self, mut r: u64) -> Option<usize> {
        if r >= self.total {
            return None;
        }
        let n = self.tree.len() - 1;
        let mut pos = 0;
        let mut step = if n == 0 {
            0
        } else {
            1 << (usize::BITS - 1 - n.leading_zeros())
        };
        while step > 0 {
            let next = pos + step;
            if next <= n && self.tree[next] <= r {
                pos = next;
                r -= self.tree[next];
            }
            step >>= 1;
        }
        // `pos` is the largest index with prefix sum <= r, so slot `pos` (1-based pos + 1) is it.
        (pos < n).then_some(pos)
    }

    /// Recomputes every sum from the weights and reports whether the tree agrees (tests).
    pub(crate) fn is_consistent(&self) -> bool {
        let mut fresh = Fenwick::default();
        fresh.grow(self.capacity());
        for (slot, &w) in self.weights.iter().enumerate() {
            fresh.set(slot, w);
        }
        let expected_total: u64 = self.weights.iter().sum();
        fresh.tree == self.tree && expected_total == self.total
    }
}

fn lowbit(i: usize) -> usize {
    i & i.wrapping_neg()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute_find(weights: &[u64], r: u64) -> Option<usize> {
        let mut acc = 0;
        for (i, &w) in weights.iter().enumerate() {
            acc += w;
            if acc > r {
                return Some(i);
            }
        }
        None
    }

    #[test]
    fn find_matches_a_linear_scan() {
        let weights = [3u64, 0, 5, 1, 0, 0, 7, 2, 9];
        let mut f = Fenwick::default();
        f.grow(weights.len());
        for (i, &w) in weights.iter().enumerate() {
            f.set(i, w);
        }
        assert_eq!(f.total(), weights.iter().sum::<u64>());
        for r in 0..f.total() + 3 {
            assert_eq!(f.find(r), brute_find(&weights, r), "r = {r}");
        }
        assert!(f.is_consistent());
    }

    #[test]
    fn grow_keeps_weights_and_updates_work_afterwards() {
        let mut f = Fenwick::default();
        f.grow(3);
        f.set(0, 4);
        f.set(2, 6);
        f.grow(13);
        assert!(f.is_consistent());
        f.set(12, 10);
        f.set(0, 1);
        let weights: Vec<u64> = (0..13).map(|s| f.weight(s)).collect();
        for r in 0..20 {
            assert_eq!(f.find(r), brute_find(&weights, r));
        }
        assert!(f.is_consistent());
    }

    #[test]
    fn truncate_drops_empty_slots_and_keeps_the_rest() {
        let mut f = Fenwick::default();
        f.grow(16);
        f.set(1, 5);
        f.set(3, 7);
        f.set(12, 9);
        f.set(12, 0);
        f.truncate(4);
        assert_eq!(f.capacity(), 4);
        assert_eq!(f.total(), 12);
        assert_eq!(f.find(5), Some(3));
        assert!(f.is_consistent());
    }

    #[test]
    fn empty_tree_finds_nothing() {
        let f = Fenwick::default();
        assert_eq!(f.find(0), None);
        let mut g = Fenwick::default();
        g.grow(4);
        assert_eq!(g.find(0), None);
    }
}
