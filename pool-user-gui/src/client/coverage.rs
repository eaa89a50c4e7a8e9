//! Which pixels of a tile arrived, as ranges: a PE sends runs of consecutive pixels, so a few
//! ranges describe a tile where a flag per pixel would be scanned for every message.

use std::ops::Range;

/// A set of `u64` indices kept as sorted, disjoint, non-touching ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Coverage {
    ranges: Vec<Range<u64>>,
    covered: u64,
}

impl Coverage {
    /// Adds `range`; returns how many of its indices were not covered before.
    pub(crate) fn insert(&mut self, range: Range<u64>) -> u64 {
        if range.is_empty() {
            return 0;
        }
        // The common case: data continuing where the latest arrived.
        if let Some(latest) = self.ranges.last_mut()
            && latest.end == range.start
        {
            latest.end = range.end;
            let newly = range.end - range.start;
            self.covered += newly;
            return newly;
        }
        // Ranges `first..last` overlap or touch `range`: they merge into one.
        let first = self.ranges.partition_point(|r| r.end < range.start);
        let last = self.ranges.partition_point(|r| r.start <= range.end);
        let mut merged = range.clone();
        let mut already = 0;
        for r in &self.ranges[first..last] {
            already += r
                .end
                .min(range.end)
                .saturating_sub(r.start.max(range.start));
            merged.start = merged.start.min(r.start);
            merged.end = merged.end.max(r.end);
        }
        self.ranges.splice(first..last, [merged]);
        let newly = range.end - range.start - already;
        self.covered += newly;
        newly
    }

    /// Indices covered.
    pub(crate) fn covered(&self) -> u64 {
        self.covered
    }

    /// One past the last index of the covered run from `start` on (`start` if it is not
    /// covered).
    pub(crate) fn run_end(&self, start: u64) -> u64 {
        let after = self.ranges.partition_point(|r| r.start <= start);
        match after.checked_sub(1).map(|i| &self.ranges[i]) {
            Some(run) if run.end > start => run.end,
            _ => start,
        }
    }

    /// Whether `index` is covered.
    pub(crate) fn contains(&self, index: u64) -> bool {
        let after = self.ranges.partition_point(|r| r.start <= index);
        after > 0 && self.ranges[after - 1].end > index
    }

    /// The covered parts of `range`, in order.
    pub(crate) fn overlaps(&self, range: Range<u64>) -> impl Iterator<Item = Range<u64>> + '_ {
        let first = self.ranges.partition_point(|r| r.end <= range.start);
        self.ranges[first..]
            .iter()
            .take_while(move |r| r.start < range.end)
            .map(move |r| r.start.max(range.start)..r.end.min(range.end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_run_ends_at_the_first_gap() {
        let mut coverage = Coverage::default();
        assert_eq!(coverage.run_end(5), 5);
        coverage.insert(10..20);
        coverage.insert(30..40);
        assert_eq!(coverage.run_end(10), 20);
        assert_eq!(coverage.run_end(15), 20);
        assert_eq!(coverage.run_end(20), 20);
        assert_eq!(coverage.run_end(5), 5);
        coverage.insert(20..30);
        assert_eq!(coverage.run_end(10), 40);
    }

    #[test]
    fn touching_and_overlapping_ranges_merge() {
        let mut coverage = Coverage::default();
        assert_eq!(coverage.insert(10..20), 10);
        assert_eq!(coverage.insert(30..40), 10);
        assert_eq!(coverage.insert(20..30), 10);
        assert_eq!(coverage.ranges, vec![10..40]);
        assert_eq!(coverage.insert(5..45), 10);
        assert_eq!(coverage.insert(12..13), 0);
        assert_eq!(coverage.insert(7..7), 0);
        assert_eq!(coverage.ranges, vec![5..45]);
        assert_eq!(coverage.covered(), 40);
        // Continuing the latest range, and touching it from before a later one.
        assert_eq!(coverage.insert(45..50), 5);
        assert_eq!(coverage.insert(60..70), 10);
        assert_eq!(coverage.insert(70..75), 5);
        assert_eq!(coverage.insert(50..60), 10);
        assert_eq!(coverage.ranges, vec![5..75]);
        assert_eq!(coverage.covered(), 70);
    }

    proptest! {
        /// Against a flag per index: the same newly covered counts, and the ranges stay sorted,
        /// disjoint and apart.
        #[test]
        fn matches_a_flag_per_index(
            inserts in prop::collection::vec((0u64..200, 0u64..60), 0..40),
            probe in (0u64..200, 0u64..60),
        ) {
            let mut coverage = Coverage::default();
            let mut flags = [false; 260];
            for (start, len) in inserts {
                let (probe_start, probe_len) = probe;
                let overlapping: Vec<u64> = coverage
                    .overlaps(probe_start..probe_start + probe_len)
                    .flatten()
                    .collect();
                let flagged: Vec<u64> = (probe_start..probe_start + probe_len)
                    .filter(|&i| flags[i as usize])
                    .collect();
                prop_assert_eq!(overlapping, flagged);
                prop_assert!((0..260).all(|i| coverage.contains(i) == flags[i as usize]));
                let range = start..start + len;
                let expected = flags[start as usize..(start + len) as usize].iter().filter(|&&f| !f).count();
                flags[start as usize..(start + len) as usize].fill(true);
                prop_assert_eq!(coverage.insert(range), expected as u64);
                prop_assert_eq!(coverage.covered(), flags.iter().filter(|&&f| f).count() as u64);
                prop_assert!(coverage.ranges.windows(2).all(|pair| pair[0].end < pair[1].start));
                prop_assert!(coverage.ranges.iter().all(|r| !r.is_empty()));
            }
        }
    }
}
