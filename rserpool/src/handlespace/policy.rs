//! How each pool policy ranks or weighs a pool element (RFC 5356 and rsplib's private policies).
//!
//! Two families, as in rsplib:
//! * **ordered** policies (RR, WRR, Priority, the LU family without randomness) keep the PEs sorted
//!   by `(primary key, sequence number)`; a selection takes the first `n` and re-inserts the first
//!   MaxIncrement of them with fresh sequence numbers, which gives round robin among equal keys;
//! * **weighted random** policies (RAND, WRAND, RLU, rsplib's randomized variants, WRAND-DPF) draw
//!   `n` distinct PEs with probability proportional to a per-PE weight.
//!
//! Loads, degradations and DPF factors are fractions of `u32::MAX`; sums saturate at `u32::MAX`
//! and random weights derived from "unload" are clamped to at least 1 so that every PE stays
//! selectable (rsplib's `getSum` / `getValueFraction`).

use std::cmp::Ordering;

use crate::wire::policy::Policy;

/// The policy type of a pool, without per-PE values. A pool's kind is fixed by its first PE.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyKind {
    RoundRobin,
    WeightedRoundRobin,
    Random,
    WeightedRandom,
    Priority,
    LeastUsed,
    LeastUsedDegradation,
    PriorityLeastUsed,
    RandomizedLeastUsed,
    RandomizedPriorityLeastUsed,
    RandomizedLeastUsedDegradation,
    PriorityLeastUsedDegradation,
    RandomizedPriorityLeastUsedDegradation,
    WeightedRandomDpf,
    LeastUsedDpf,
    LeastUsedDegradationDpf,
}

/// Every policy kind, for tests and iteration.
pub const ALL_POLICY_KINDS: [PolicyKind; 16] = [
    PolicyKind::RoundRobin,
    PolicyKind::WeightedRoundRobin,
    PolicyKind::Random,
    PolicyKind::WeightedRandom,
    PolicyKind::Priority,
    PolicyKind::LeastUsed,
    PolicyKind::LeastUsedDegradation,
    PolicyKind::PriorityLeastUsed,
    PolicyKind::RandomizedLeastUsed,
    PolicyKind::RandomizedPriorityLeastUsed,
    PolicyKind::RandomizedLeastUsedDegradation,
    PolicyKind::PriorityLeastUsedDegradation,
    PolicyKind::RandomizedPriorityLeastUsedDegradation,
    PolicyKind::WeightedRandomDpf,
    PolicyKind::LeastUsedDpf,
    PolicyKind::LeastUsedDegradationDpf,
];

/// How a policy picks PEs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SelectionMethod {
    /// Round robin: a queue in selection order.
    RoundRobin,
    /// Sorted by [`order_key`], first `n` taken.
    Ordered,
    /// Sorted by [`WrrKey`], first `n` taken.
    WeightedRoundRobin,
    /// `n` distinct draws proportional to a weight.
    WeightedRandom,
}

impl PolicyKind {
    /// The kind of a policy value.
    pub fn of(policy: &Policy) -> Self {
        match policy {
            Policy::RoundRobin => PolicyKind::RoundRobin,
            Policy::WeightedRoundRobin { .. } => PolicyKind::WeightedRoundRobin,
            Policy::Random => PolicyKind::Random,
            Policy::WeightedRandom { .. } => PolicyKind::WeightedRandom,
            Policy::Priority { .. } => PolicyKind::Priority,
            Policy::LeastUsed { .. } => PolicyKind::LeastUsed,
            Policy::LeastUsedDegradation { .. } => PolicyKind::LeastUsedDegradation,
            Policy::PriorityLeastUsed { .. } => PolicyKind::PriorityLeastUsed,
            Policy::RandomizedLeastUsed { .. } => PolicyKind::RandomizedLeastUsed,
            Policy::RandomizedPriorityLeastUsed { .. } => PolicyKind::RandomizedPriorityLeastUsed,
            Policy::RandomizedLeastUsedDegradation { .. } => {
                PolicyKind::RandomizedLeastUsedDegradation
            }
            Policy::PriorityLeastUsedDegradation { .. } => PolicyKind::PriorityLeastUsedDegradation,
            Policy::RandomizedPriorityLeastUsedDegradation { .. } => {
                PolicyKind::RandomizedPriorityLeastUsedDegradation
            }
            Policy::WeightedRandomDpf { .. } => PolicyKind::WeightedRandomDpf,
            Policy::LeastUsedDpf { .. } => PolicyKind::LeastUsedDpf,
            Policy::LeastUsedDegradationDpf { .. } => PolicyKind::LeastUsedDegradationDpf,
        }
    }

    /// The Policy Type value on the wire (RFC 5356 §7.1; 0xb000xxxx are rsplib's).
    pub fn policy_type(self) -> u32 {
        match self {
            PolicyKind::RoundRobin => 0x0000_0001,
            PolicyKind::WeightedRoundRobin => 0x0000_0002,
            PolicyKind::Random => 0x0000_0003,
            PolicyKind::WeightedRandom => 0x0000_0004,
            PolicyKind::Priority => 0x0000_0005,
            PolicyKind::LeastUsed => 0x4000_0001,
            PolicyKind::LeastUsedDegradation => 0x4000_0002,
            PolicyKind::PriorityLeastUsed => 0x4000_0003,
            PolicyKind::RandomizedLeastUsed => 0x4000_0004,
            PolicyKind::RandomizedPriorityLeastUsed => 0xb000_1001,
            PolicyKind::RandomizedLeastUsedDegradation => 0xb000_1002,
            PolicyKind::PriorityLeastUsedDegradation => 0xb000_1003,
            PolicyKind::RandomizedPriorityLeastUsedDegradation => 0xb000_1004,
            PolicyKind::WeightedRandomDpf => 0xb000_2001,
            PolicyKind::LeastUsedDpf => 0xb000_2002,
            PolicyKind::LeastUsedDegradationDpf => 0xb000_2003,
        }
    }

    /// rsplib's default MaxIncrement: how many of the selected PEs get their state advanced
    /// (sequence number, degradation, WRR counters) per selection. 0 for the stateless policies.
    pub fn default_max_increment(self) -> usize {
        match self {
            PolicyKind::Random | PolicyKind::WeightedRandom | PolicyKind::WeightedRandomDpf => 0,
            _ => 1,
        }
    }

    pub(crate) fn selection_method(self) -> SelectionMethod {
        match self {
            PolicyKind::Random
            | PolicyKind::WeightedRandom
            | PolicyKind::RandomizedLeastUsed
            | PolicyKind::RandomizedPriorityLeastUsed
            | PolicyKind::RandomizedLeastUsedDegradation
            | PolicyKind::RandomizedPriorityLeastUsedDegradation
            | PolicyKind::WeightedRandomDpf => SelectionMethod::WeightedRandom,
            PolicyKind::RoundRobin => SelectionMethod::RoundRobin,
            PolicyKind::WeightedRoundRobin => SelectionMethod::WeightedRoundRobin,
            _ => SelectionMethod::Ordered,
        }
    }
}

/// The per-PE selection state that policies read and selections update.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SelectionState {
    /// Round-robin tie-breaker: position in the pool's selection history (rsplib's SeqNumber).
    pub seq: u64,
    /// Accumulated degradation (RFC 5356 §5.2: counter × load degradation), saturating.
    pub degradation: u32,
    /// WRR: the round this PE is in.
    pub wrr_round: u64,
    /// WRR: picks already handed out in `wrr_round` (always < weight).
    pub wrr_picks: u32,
}

/// Sort key of a PE in a WRR pool: its next pick is at virtual time `round + num/den` (see
/// [`wrr_position`]); `seq` breaks ties. Compared exactly (cross products), so weights up to
/// `u32::MAX` interleave as specified.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WrrKey {
    pub round: u64,
    pub num: u64,
    pub den: u64,
    pub seq: u64,
}

impl Ord for WrrKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.round
            .cmp(&other.round)
            .then_with(|| {
                // n/d < 1 with d < 2^34: cross products fit in u128.
                (u128::from(self.num) * u128::from(other.den))
                    .cmp(&(u128::from(other.num) * u128::from(self.den)))
            })
            .then(self.seq.cmp(&other.seq))
    }
}

impl PartialOrd for WrrKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for WrrKey {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for WrrKey {}

const MAX: u64 = u32::MAX as u64;

/// `a + b + c`, saturating at 100 % load (rsplib `getSum`).
fn load_sum(a: u32, b: u32, c: u32) -> u64 {
    (u64::from(a) + u64::from(b) + u64::from(c)).min(MAX)
}

/// `100 % - a - b - c`, clamped to `[1, u32::MAX]` so a fully loaded PE stays selectable
/// (rsplib `getValueFraction`; RFC 5356 §5.4 weight for RLU).
fn unload_weight(a: u32, b: u32, c: u32) -> u64 {
    MAX.saturating_sub(u64::from(a) + u64::from(b) + u64::from(c))
        .max(1)
}

/// Distance penalty `distance × dpf` where dpf is a fraction of `u32::MAX`, expressed in the same
/// units (rsplib: `Distance × (LoadDPF / MAX) × MAX`), saturating.
fn distance_penalty(distance: u32, dpf: u32) -> u64 {
    (u64::from(distance) * u64::from(dpf)).min(MAX)
}

/// WRR: the virtual time of a PE's `k`-th pick (0-based) within a round, as the fraction
/// `(2k+1) / (2w)`. Spacing the picks of a PE of weight `w` at the midpoints of `w` equal slices
/// of the round interleaves the PEs as evenly as possible (RFC 5356 §4.2.2) and gives exactly `w`
/// picks per round.
pub(crate) fn wrr_position(picks: u32, weight: u32) -> (u64, u64) {
    (2 * u64::from(picks) + 1, 2 * u64::from(weight))
}

/// WRR: where a PE of weight `weight` joins (or re-joins after a weight change) so that it is not
/// scheduled before the virtual time `round + num/den`: the first pick at or after that time.
pub(crate) fn wrr_join(round: u64, num: u64, den: u64, weight: u32) -> (u64, u32) {
    debug_assert!(weight > 0 && den > 0 && num < den);
    // Smallest k with (2k+1)/(2w) >= num/den  <=>  k >= (2w·num - den) / (2·den).
    let two_w_num = 2 * u128::from(weight) * u128::from(num);
    let den = u128::from(den);
    let k = if two_w_num <= den {
        0
    } else {
        (two_w_num - den).div_ceil(2 * den)
    };
    if k >= u128::from(weight) {
        (round.saturating_add(1), 0)
    } else {
        // k < weight <= u32::MAX
        (round, u32::try_from(k).unwrap_or(0))
    }
}

/// The sort key of a PE of a WRR pool, or `None` if it cannot be selected (weight 0: "not
/// capable of providing any service", RFC 5356 §3.2).
pub(crate) fn wrr_key(weight: u32, state: &SelectionState) -> Option<WrrKey> {
    if weight == 0 {
        return None;
    }
    let (num, den) = wrr_position(state.wrr_picks, weight);
    Some(WrrKey {
        round: state.wrr_round,
        num,
        den,
        seq: state.seq,
    })
}

/// The sort key of a PE of an ordered pool of any policy but WRR: the policy's value (lower =
/// preferred, at most `u32::MAX`) in the high half, the sequence number in the low half. One
/// integer comparison orders by value, then round robin among equal values.
pub(crate) fn order_key(policy: &Policy, state: &SelectionState) -> u128 {
    let value = match *policy {
        Policy::RoundRobin => 0,
        Policy::Priority { priority } => MAX - u64::from(priority),
        Policy::LeastUsed { load } => u64::from(load),
        Policy::LeastUsedDegradation { load, .. } => load_sum(load, state.degradation, 0),
        Policy::PriorityLeastUsed { load, degradation } => load_sum(load, degradation, 0),
        Policy::PriorityLeastUsedDegradation { load, degradation } => {
            load_sum(load, degradation, state.degradation)
        }
        Policy::LeastUsedDpf {
            load,
            load_dpf,
            distance,
        } => (u64::from(load) + distance_penalty(distance, load_dpf)).min(MAX),
        Policy::LeastUsedDegradationDpf {
            load,
            load_dpf,
            distance,
            ..
        } => (load_sum(load, state.degradation, 0) + distance_penalty(distance, load_dpf)).min(MAX),
        // WRR has its own key; weighted random policies have no order. Callers never ask.
        Policy::WeightedRoundRobin { .. }
        | Policy::Random
        | Policy::WeightedRandom { .. }
        | Policy::RandomizedLeastUsed { .. }
        | Policy::RandomizedPriorityLeastUsed { .. }
        | Policy::RandomizedLeastUsedDegradation { .. }
        | Policy::RandomizedPriorityLeastUsedDegradation { .. }
        | Policy::WeightedRandomDpf { .. } => 0,
    };
    (u128::from(value) << 64) | u128::from(state.seq)
}

/// The selection weight of a PE in a weighted random pool (0 = never selected).
pub(crate) fn random_weight(policy: &Policy, state: &SelectionState) -> u64 {
    match *policy {
        Policy::Random => 1,
        Policy::WeightedRandom { weight } => u64::from(weight),
        Policy::RandomizedLeastUsed { load } => unload_weight(load, 0, 0),
        Policy::RandomizedPriorityLeastUsed { load, degradation } => {
            unload_weight(load, degradation, 0)
        }
        Policy::RandomizedLeastUsedDegradation { load, .. } => {
            unload_weight(load, state.degradation, 0)
        }
        Policy::RandomizedPriorityLeastUsedDegradation { load, degradation } => {
            unload_weight(load, degradation, state.degradation)
        }
        Policy::WeightedRandomDpf {
            weight,
            weight_dpf,
            distance,
        } => {
            if weight == 0 {
                return 0;
            }
            // weight × (1 − distance × wdpf), rounded, at least 1 (rsplib clamps to 1).
            let w = u128::from(weight);
            let penalty = (w * u128::from(distance) * u128::from(weight_dpf) + u128::from(MAX / 2))
                / u128::from(MAX);
            u64::try_from(w.saturating_sub(penalty))
                .unwrap_or(MAX)
                .max(1)
        }
        // Ordered policies are not drawn at random; callers never ask.
        _ => 1,
    }
}

/// The load degradation a selection adds for the policies that keep a degradation counter.
fn degradation_step(policy: &Policy) -> Option<u32> {
    match *policy {
        Policy::LeastUsedDegradation { degradation, .. }
        | Policy::PriorityLeastUsedDegradation { degradation, .. }
        | Policy::RandomizedLeastUsedDegradation { degradation, .. }
        | Policy::RandomizedPriorityLeastUsedDegradation { degradation, .. }
        | Policy::LeastUsedDegradationDpf { degradation, .. } => Some(degradation),
        _ => None,
    }
}

/// Whether the policy keeps a per-PE degradation counter.
pub fn uses_degradation(policy: &Policy) -> bool {
    degradation_step(policy).is_some()
}

/// Advances the policy-specific state of a PE that was handed out and falls within MaxIncrement:
/// degradation grows by the PE's load degradation (RFC 5356 §5.2.2), WRR moves to the next pick.
/// (rsplib never raises the degradation of its randomized degradation variants and applies the
/// update twice per selection for the ordered ones; both look unintended, we do it once.)
pub(crate) fn advance_after_selection(policy: &Policy, state: &mut SelectionState) {
    if let Some(step) = degradation_step(policy) {
        state.degradation = state.degradation.saturating_add(step);
    }
    if let Policy::WeightedRoundRobin { weight } = *policy {
        state.wrr_picks = state.wrr_picks.saturating_add(1);
        if state.wrr_picks >= weight {
            state.wrr_round = state.wrr_round.saturating_add(1);
            state.wrr_picks = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_back_to_their_wire_values() {
        let mut types: Vec<u32> = ALL_POLICY_KINDS.iter().map(|k| k.policy_type()).collect();
        types.sort_unstable();
        types.dedup();
        assert_eq!(types.len(), ALL_POLICY_KINDS.len());
        assert_eq!(PolicyKind::of(&Policy::RoundRobin).policy_type(), 1);
        assert_eq!(
            PolicyKind::of(&Policy::RandomizedLeastUsed { load: 0 }).policy_type(),
            0x4000_0004
        );
    }

    #[test]
    fn unload_weight_is_never_zero() {
        assert_eq!(unload_weight(u32::MAX, 0, 0), 1);
        assert_eq!(unload_weight(u32::MAX, u32::MAX, u32::MAX), 1);
        assert_eq!(unload_weight(0, 0, 0), MAX);
        assert_eq!(unload_weight(10, 20, 30), MAX - 60);
    }

    #[test]
    fn load_sum_saturates() {
        assert_eq!(load_sum(u32::MAX, 1, 0), MAX);
        assert_eq!(load_sum(1, 2, 3), 6);
    }

    #[test]
    fn wrr_positions_interleave_weights() {
        // weights 2 and 1: A at 1/4 and 3/4, B at 1/2 -> A B A
        let a0 = wrr_position(0, 2);
        let b0 = wrr_position(0, 1);
        let a1 = wrr_position(1, 2);
        let lt = |x: (u64, u64), y: (u64, u64)| {
            u128::from(x.0) * u128::from(y.1) < u128::from(y.0) * u128::from(x.1)
        };
        assert!(lt(a0, b0));
        assert!(lt(b0, a1));
    }

    #[test]
    fn wrr_join_is_the_first_pick_not_before_the_given_time() {
        // At time 1/2, weight 4 (positions 1/8, 3/8, 5/8, 7/8) joins at k=2.
        assert_eq!(wrr_join(7, 1, 2, 4), (7, 2));
        // At time 0 (num 0) anyone starts with k=0.
        assert_eq!(wrr_join(3, 0, 2, 5), (3, 0));
        // Exactly at a position: that position is allowed.
        assert_eq!(wrr_join(0, 3, 8, 4), (0, 1));
        // After the last position of the round: next round.
        assert_eq!(wrr_join(0, 15, 16, 2), (1, 0));
        // Brute force against the definition.
        for weight in 1..12u32 {
            for den in 1..20u64 {
                for num in 0..den {
                    let (round, k) = wrr_join(5, num, den, weight);
                    let at_or_after = |k: u32| {
                        let (n, d) = wrr_position(k, weight);
                        u128::from(n) * u128::from(den) >= u128::from(num) * u128::from(d)
                    };
                    match (0..weight).find(|&k| at_or_after(k)) {
                        Some(expected) => assert_eq!((round, k), (5, expected)),
                        None => assert_eq!((round, k), (6, 0)),
                    }
                }
            }
        }
    }

    #[test]
    fn wrandom_dpf_weight_follows_the_penalty() {
        let half = u32::MAX / 2 + 1;
        let st = SelectionState::default();
        // No distance: full weight.
        assert_eq!(
            random_weight(
                &Policy::WeightedRandomDpf {
                    weight: 1000,
                    weight_dpf: half,
                    distance: 0
                },
                &st
            ),
            1000
        );
        // distance 1 × 50 % -> half the weight.
        assert_eq!(
            random_weight(
                &Policy::WeightedRandomDpf {
                    weight: 1000,
                    weight_dpf: half,
                    distance: 1
                },
                &st
            ),
            500
        );
        // Penalty above 100 % -> clamped to 1.
        assert_eq!(
            random_weight(
                &Policy::WeightedRandomDpf {
                    weight: 1000,
                    weight_dpf: half,
                    distance: 10
                },
                &st
            ),
            1
        );
        // Weight 0 stays unselectable.
        assert_eq!(
            random_weight(
                &Policy::WeightedRandomDpf {
                    weight: 0,
                    weight_dpf: 0,
                    distance: 0
                },
                &st
            ),
            0
        );
    }
}
