//! The pool user's handle-resolution cache and its choice of a pool element (sans-I/O).
//!
//! A [`PeSelector`] keeps the latest Handle Resolution answer for one pool (fresh for the
//! configured stale-cache time), chooses a PE from it according to the pool's policy, and
//! remembers PEs that just failed so that they are not chosen again for a while even if the
//! registrar still lists them (rsplib forgets timeout failures and hands out the dead PE again).
//!
//! Local choice per policy (the registrar already ordered its answer by policy; the local
//! choice spreads successive sessions over the cached PEs instead of piling them on the first):
//! * load-based policies with a load degradation (LUD, PLU and their variants): lowest load
//!   after one more session, `max(listed load, own sessions × degradation) + degradation`. A
//!   PE's degradation is the load one session adds, so a PE twice as fast takes about twice
//!   the sessions (see the pool element's capacity);
//! * other load-based policies (LU, RLU, LU-DPF): fewest own sessions, then lowest load;
//! * Priority: highest priority first;
//! * weighted round robin: fewest own sessions per unit of weight (weight 0 = never);
//! * weighted random (WRAND, WRAND-DPF): random in proportion to the weight (weight 0 = never);
//! * Random: uniformly at random;
//! * round robin and anything else: fewest own sessions, in the registrar's order.
//!
//! Within equal keys, the PE this selector handed out least often wins, then answer order. For
//! every policy but Priority, PEs without a session of this pool user come first: a session on
//! a busy PE while another PE idles wastes the idle one, whatever the policy ranks higher.
//!
//! A PE that refused a session (at its session limit) while this pool user had sessions on it
//! is taken to be full at that many of ours: it is not chosen while we have as many there
//! (for [`FULL_MEMORY`]), rather than being tried and refused again and again. A policy that
//! favours a fast PE would otherwise keep choosing it past its limit.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::{Rng, RngExt};

use crate::wire::{PeId, Policy, PoolElement, TransportAddress};

/// A pool element a session can connect to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeCandidate {
    /// Pool element identifier.
    pub id: PeId,
    /// Its data address (the TCP transport it registered).
    pub address: SocketAddr,
    /// Its policy with the registrar's policy information (load, weight, ...).
    pub policy: Policy,
}

impl PeCandidate {
    /// The candidate for a Pool Element parameter; `None` without a usable TCP address.
    pub fn from_pool_element(element: &PoolElement) -> Option<PeCandidate> {
        let address = match &element.user_transport {
            TransportAddress::Tcp { port, address } if *port != 0 && !address.is_unspecified() => {
                SocketAddr::new(*address, *port)
            }
            _ => return None,
        };
        Some(PeCandidate {
            id: element.id,
            address,
            policy: element.policy,
        })
    }
}

/// Default time a cached Handle Resolution answer is used without asking again.
pub const DEFAULT_STALE_CACHE: Duration = Duration::from_millis(1000);
/// Default time a PE that failed is not chosen again.
pub const DEFAULT_AVOID_FOR: Duration = Duration::from_secs(5);
/// How long a PE's refusal tells how many of our sessions it takes.
pub const FULL_MEMORY: Duration = Duration::from_secs(2);

#[derive(Clone, Debug)]
struct Cached {
    elements: Vec<PeCandidate>,
    fetched_at: Instant,
}

/// Handle-resolution cache, failure memory and local PE choice for one pool.
#[derive(Clone, Debug)]
pub struct PeSelector {
    stale_cache: Duration,
    cache: Option<Cached>,
    /// PE id -> not to be chosen before this instant.
    avoid_until: HashMap<PeId, Instant>,
    /// PE id -> how often this selector handed it out.
    uses: HashMap<PeId, u64>,
    /// Sessions of this pool user on each PE now: chosen and not yet released.
    open: HashMap<PeId, u64>,
    /// PE id -> (how many of our sessions it takes, until when we believe so): learnt from a
    /// refusal.
    full_at: HashMap<PeId, (u64, Instant)>,
}

impl PeSelector {
    /// A selector whose cached answers are fresh for `stale_cache` (zero: always ask).
    pub fn new(stale_cache: Duration) -> Self {
        PeSelector {
            stale_cache,
            cache: None,
            avoid_until: HashMap::new(),
            uses: HashMap::new(),
            open: HashMap::new(),
            full_at: HashMap::new(),
        }
    }

    /// Whether a fresh cached answer exists at `now`.
    pub fn is_fresh(&self, now: Instant) -> bool {
        self.cache
            .as_ref()
            .is_some_and(|c| now.saturating_duration_since(c.fetched_at) < self.stale_cache)
    }

    /// Stores a Handle Resolution answer received at `now` (PEs without a usable TCP data
    /// address are left out).
    pub fn store(&mut self, elements: &[PoolElement], now: Instant) {
        let elements = elements
            .iter()
            .filter_map(PeCandidate::from_pool_element)
            .collect();
        self.cache = Some(Cached {
            elements,
            fetched_at: now,
        });
    }

    /// PEs in the cached answer (usable or not).
    pub fn cached_len(&self) -> usize {
        self.cache.as_ref().map_or(0, |c| c.elements.len())
    }

    /// Forgets the cached answer (the next resolution asks the registrar).
    pub fn invalidate(&mut self) {
        self.cache = None;
    }

    /// Records that `pe_id` failed at `now`: it is not chosen for `avoid_for`, whatever the
    /// registrar says.
    pub fn avoid(&mut self, pe_id: PeId, now: Instant, avoid_for: Duration) {
        let until = now + avoid_for;
        let entry = self.avoid_until.entry(pe_id).or_insert(until);
        *entry = (*entry).max(until);
    }

    /// Whether `pe_id` is being avoided at `now`.
    pub fn is_avoided(&self, pe_id: PeId, now: Instant) -> bool {
        self.avoid_until
            .get(&pe_id)
            .is_some_and(|&until| now < until)
    }

    /// `pe_id` refused a session at `now` that [`PeSelector::choose`] gave it (and that is
    /// not released yet): it is full at the other sessions we have there, if any.
    pub fn refused(&mut self, pe_id: PeId, now: Instant) {
        let others = self.open_sessions(pe_id).saturating_sub(1);
        if others > 0 {
            self.full_at.insert(pe_id, (others, now + FULL_MEMORY));
        }
    }

    /// Whether `pe_id` is believed full with the sessions we have there.
    fn is_full(&self, pe_id: PeId, now: Instant) -> bool {
        self.full_at
            .get(&pe_id)
            .is_some_and(|&(limit, until)| now < until && self.open_sessions(pe_id) >= limit)
    }

    /// Sessions of ours on `pe_id` now.
    fn open_sessions(&self, pe_id: PeId) -> u64 {
        self.open.get(&pe_id).copied().unwrap_or(0)
    }

    /// Cached PEs not being avoided at `now` (fresh or not), nor believed full, in answer
    /// order.
    pub fn usable(&self, now: Instant) -> Vec<PeCandidate> {
        self.cache
            .iter()
            .flat_map(|c| c.elements.iter())
            .filter(|pe| !self.is_avoided(pe.id, now) && !self.is_full(pe.id, now))
            .cloned()
            .collect()
    }

    /// Chooses a PE from the cached answer (see the module docs), or `None` when no cached PE
    /// is usable. Stale answers are used too: the caller decides when to refresh.
    pub fn choose<R: Rng + ?Sized>(&mut self, now: Instant, rng: &mut R) -> Option<PeCandidate> {
        self.avoid_until.retain(|_, until| now < *until);
        self.full_at.retain(|_, (_, until)| now < *until);
        let mut usable = self.usable(now);
        // PEs without a session of ours first (but for Priority, which means the best PE
        // whatever it does): a session of ours on a busy PE while another idles wastes the
        // idle one, whatever the policy thinks of the two.
        // (A weight of 0 means "cannot serve".)
        let idle = |pe: &PeCandidate| {
            !self.open.contains_key(&pe.id) && pe.policy.weight().is_none_or(|weight| weight > 0)
        };
        if usable
            .first()
            .is_some_and(|pe| !matches!(pe.policy, Policy::Priority { .. }))
            && usable.iter().any(idle)
        {
            usable.retain(idle);
        }
        let chosen = choose_by_policy(&usable, &self.uses, &self.open, rng)?.clone();
        *self.uses.entry(chosen.id).or_insert(0) += 1;
        *self.open.entry(chosen.id).or_insert(0) += 1;
        Some(chosen)
    }

    /// A session chosen with [`PeSelector::choose`] no longer uses `pe_id` (it ended or failed
    /// over).
    pub fn release(&mut self, pe_id: PeId) {
        if let Some(count) = self.open.get_mut(&pe_id) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.open.remove(&pe_id);
            }
        }
    }
}

fn choose_by_policy<'a, R: Rng + ?Sized>(
    usable: &'a [PeCandidate],
    uses: &HashMap<PeId, u64>,
    open: &HashMap<PeId, u64>,
    rng: &mut R,
) -> Option<&'a PeCandidate> {
    let first = usable.first()?;
    let used = |pe: &PeCandidate| uses.get(&pe.id).copied().unwrap_or(0);
    // This pool user's own sessions on each PE now, then how often it was chosen so far. For
    // load policies these come before the listed load: the load a registrar lists is up to a
    // cache lifetime old and does not count the sessions this pool user opened since, so a
    // picture's tiles, chosen at once, would all go to the PE that happened to list the lowest
    // load (and be refused there once it is full).
    let open_now = |pe: &PeCandidate| open.get(&pe.id).copied().unwrap_or(0);
    let busy = |pe: &PeCandidate| (open_now(pe), used(pe));
    match first.policy {
        Policy::Random => usable.get(rng.random_range(0..usable.len())),
        Policy::WeightedRandom { .. } | Policy::WeightedRandomDpf { .. } => {
            let weight = |pe: &PeCandidate| u64::from(pe.policy.weight().unwrap_or(0));
            let total: u64 = usable.iter().map(weight).sum();
            if total == 0 {
                return None;
            }
            let mut point = rng.random_range(0..total);
            usable.iter().find(|pe| {
                let w = weight(pe);
                if point < w {
                    true
                } else {
                    point -= w;
                    false
                }
            })
        }
        policy if policy.degradation().is_some() => usable
            .iter()
            .enumerate()
            .min_by_key(|(order, pe)| {
                let load = u64::from(pe.policy.load().unwrap_or(0));
                let degradation = u64::from(pe.policy.degradation().unwrap_or(0));
                let after_one_more = load.max(open_now(pe) * degradation) + degradation;
                (after_one_more, used(pe), *order)
            })
            .map(|(_, pe)| pe),
        policy if policy.load().is_some() => usable
            .iter()
            .enumerate()
            .min_by_key(|(order, pe)| {
                (
                    open_now(pe),
                    pe.policy.load().unwrap_or(u32::MAX),
                    used(pe),
                    *order,
                )
            })
            .map(|(_, pe)| pe),
        Policy::Priority { .. } => usable
            .iter()
            .enumerate()
            .min_by_key(|(order, pe)| {
                (
                    std::cmp::Reverse(pe.policy.priority().unwrap_or(0)),
                    busy(pe),
                    *order,
                )
            })
            .map(|(_, pe)| pe),
        Policy::WeightedRoundRobin { .. } => usable
            .iter()
            .enumerate()
            .filter(|(_, pe)| pe.policy.weight().unwrap_or(0) > 0)
            .min_by(|(a_order, a), (b_order, b)| {
                // (open + 1) / weight, compared without division.
                let share = |pe: &PeCandidate, other: &PeCandidate| {
                    (open_now(pe) + 1) * u64::from(other.policy.weight().unwrap_or(0))
                };
                share(a, b)
                    .cmp(&share(b, a))
                    .then(used(a).cmp(&used(b)))
                    .then(a_order.cmp(b_order))
            })
            .map(|(_, pe)| pe),
        // Round robin over this pool user's open sessions first: a burst of sessions (a
        // picture's tiles) splits evenly even when earlier pictures left the turn elsewhere.
        _ => usable
            .iter()
            .enumerate()
            .min_by_key(|(order, pe)| (busy(pe), *order))
            .map(|(_, pe)| pe),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::PeId;
    use std::net::Ipv4Addr;

    fn element(id: u32, policy: Policy) -> PoolElement {
        PoolElement {
            id: PeId(id),
            home_registrar: 1,
            registration_life_ms: 15_000,
            user_transport: TransportAddress::Tcp {
                port: 10_000 + id as u16,
                address: Ipv4Addr::LOCALHOST.into(),
            },
            policy,
            asap_transport: None,
        }
    }

    /// PEs `ids`, in that order, all with `policy`.
    fn listing(ids: &[u32], policy: Policy) -> Vec<PoolElement> {
        ids.iter().map(|&id| element(id, policy)).collect()
    }

    /// The ids of `count` choices made at `now`, one after the other (sessions kept open).
    fn choices(selector: &mut PeSelector, now: Instant, count: usize) -> Vec<u32> {
        (0..count)
            .filter_map(|_| selector.choose(now, &mut rng()).map(|pe| pe.id.0))
            .collect()
    }

    fn rng() -> rand::rngs::StdRng {
        rand::SeedableRng::seed_from_u64(7)
    }

    #[test]
    fn round_robin_spreads_over_cached_elements() {
        let now = Instant::now();
        let mut selector = PeSelector::new(DEFAULT_STALE_CACHE);
        selector.store(&listing(&[1, 2], Policy::RoundRobin), now);
        assert!(selector.is_fresh(now));
        assert!(!selector.is_fresh(now + DEFAULT_STALE_CACHE));
        let ids = choices(&mut selector, now, 4);
        assert_eq!(ids, vec![1, 2, 1, 2]);
    }

    #[test]
    fn failed_element_is_avoided_even_if_still_listed() {
        let now = Instant::now();
        let mut selector = PeSelector::new(DEFAULT_STALE_CACHE);
        let answer = [
            element(1, Policy::RoundRobin),
            element(2, Policy::RoundRobin),
        ];
        selector.store(&answer, now);
        selector.avoid(PeId(1), now, Duration::from_secs(5));
        // The registrar still lists PE 1.
        selector.store(&answer, now + Duration::from_millis(10));
        for _ in 0..3 {
            let chosen = selector.choose(now + Duration::from_secs(1), &mut rng());
            assert_eq!(chosen.map(|pe| pe.id.0), Some(2));
        }
        selector.avoid(PeId(2), now, Duration::from_secs(5));
        assert_eq!(
            selector.choose(now + Duration::from_secs(1), &mut rng()),
            None
        );
        // After the avoid time PE 1 is usable again.
        let later = now + Duration::from_secs(5);
        assert!(selector.choose(later, &mut rng()).is_some());
    }

    #[test]
    fn least_used_prefers_lowest_load_and_priority_highest() {
        let now = Instant::now();
        let mut selector = PeSelector::new(DEFAULT_STALE_CACHE);
        selector.store(
            &[
                element(1, Policy::LeastUsed { load: 900 }),
                element(2, Policy::LeastUsed { load: 100 }),
            ],
            now,
        );
        assert_eq!(selector.choose(now, &mut rng()).map(|pe| pe.id.0), Some(2));
        // The listed loads do not count the session just opened on PE 2: ours come first.
        assert_eq!(selector.choose(now, &mut rng()).map(|pe| pe.id.0), Some(1));
        assert_eq!(selector.choose(now, &mut rng()).map(|pe| pe.id.0), Some(2));
        selector.store(
            &[
                element(1, Policy::Priority { priority: 1 }),
                element(2, Policy::Priority { priority: 5 }),
            ],
            now,
        );
        assert_eq!(selector.choose(now, &mut rng()).map(|pe| pe.id.0), Some(2));
    }

    #[test]
    fn equally_loaded_pes_share_a_burst_of_sessions_whatever_their_history() {
        let now = Instant::now();
        let mut selector = PeSelector::new(DEFAULT_STALE_CACHE);
        selector.store(&listing(&[1, 2], Policy::LeastUsed { load: 0 }), now);
        // Earlier pictures used PE 1 ten times (PE 2 was avoided), all of those sessions over.
        selector.avoid(PeId(2), now, Duration::from_secs(1));
        for _ in 0..10 {
            let pe = selector.choose(now, &mut rng()).expect("a PE");
            assert_eq!(pe.id, PeId(1));
            selector.release(pe.id);
        }
        let now = now + Duration::from_secs(2);
        // A picture's 16 tiles chosen at once: 8 each, not a run of 10 on PE 2.
        let chosen = choices(&mut selector, now, 16);
        assert_eq!(
            chosen.iter().filter(|&&id| id == 1).count(),
            8,
            "{chosen:?}"
        );
        // Sessions ending on PE 1 make it the choice again.
        selector.release(PeId(1));
        selector.release(PeId(1));
        assert_eq!(selector.choose(now, &mut rng()).map(|pe| pe.id.0), Some(1));
        assert_eq!(selector.choose(now, &mut rng()).map(|pe| pe.id.0), Some(1));
    }

    #[test]
    fn round_robin_splits_a_burst_evenly_after_an_odd_history() {
        let now = Instant::now();
        let mut selector = PeSelector::new(DEFAULT_STALE_CACHE);
        selector.store(&listing(&[1, 2], Policy::RoundRobin), now);
        // One-session pictures, with the registrar listing the PEs in another order meanwhile,
        // left PE 2 one turn ahead of PE 1, which is listed first again.
        let one_session = |selector: &mut PeSelector| {
            let pe = selector.choose(now, &mut rng()).expect("a PE");
            selector.release(pe.id);
            pe.id
        };
        assert_eq!(one_session(&mut selector), PeId(1));
        selector.store(&listing(&[2, 1], Policy::RoundRobin), now);
        assert_eq!(one_session(&mut selector), PeId(2));
        assert_eq!(one_session(&mut selector), PeId(2));
        selector.store(&listing(&[1, 2], Policy::RoundRobin), now);
        let chosen = choices(&mut selector, now, 16);
        assert_eq!(
            chosen.iter().filter(|&&id| id == 1).count(),
            8,
            "{chosen:?}"
        );
    }

    /// How many of `choices` went to each of the PEs `ids`.
    fn counts(choices: &[u32], ids: &[u32]) -> Vec<usize> {
        ids.iter()
            .map(|id| choices.iter().filter(|&&c| c == *id).count())
            .collect()
    }

    #[test]
    fn degradation_policies_share_sessions_by_speed() {
        // PLU with the degradation a PE derives from its capacity (1 / 60, 1 / 30, 1 / 15 and
        // 1 / 8 of the full load per session).
        let now = Instant::now();
        let mut selector = PeSelector::new(Duration::from_secs(60));
        let pe = |id, per_session: f64| {
            element(
                id,
                Policy::PriorityLeastUsed {
                    load: 0,
                    degradation: crate::wire::policy::fraction_to_wire(per_session)
                        .expect("fraction"),
                },
            )
        };
        let listed = [
            pe(1, 1.0 / 8.0),
            pe(2, 1.0 / 60.0),
            pe(3, 1.0 / 15.0),
            pe(4, 1.0 / 30.0),
        ];
        selector.store(&listed, now);
        // The first session goes to the fastest PE; 113 sessions split as the capacities.
        assert_eq!(choices(&mut selector, now, 1), vec![2]);
        let got = choices(&mut selector, now, 112);
        let mut all = vec![2];
        all.extend(got);
        assert_eq!(counts(&all, &[2, 4, 3, 1]), vec![60, 30, 15, 8]);
    }

    #[test]
    fn weighted_round_robin_shares_sessions_by_weight() {
        let now = Instant::now();
        let mut selector = PeSelector::new(Duration::from_secs(60));
        selector.store(
            &[
                element(1, Policy::WeightedRoundRobin { weight: 1 }),
                element(2, Policy::WeightedRoundRobin { weight: 3 }),
                element(3, Policy::WeightedRoundRobin { weight: 0 }),
            ],
            now,
        );
        let got = choices(&mut selector, now, 8);
        assert_eq!(counts(&got, &[1, 2, 3]), vec![2, 6, 0]);
        assert_eq!(got[0], 2, "the heaviest first");
    }

    #[test]
    fn a_pe_that_refused_is_full_at_our_sessions_there() {
        let now = Instant::now();
        let mut selector = PeSelector::new(Duration::from_secs(60));
        selector.store(&listing(&[1, 2], Policy::LeastUsed { load: 0 }), now);
        assert_eq!(choices(&mut selector, now, 4), vec![1, 2, 1, 2]);
        // A fifth session, on PE 1, is refused: PE 1 takes two of ours.
        assert_eq!(choices(&mut selector, now, 1), vec![1]);
        selector.refused(PeId(1), now);
        selector.release(PeId(1));
        assert_eq!(choices(&mut selector, now, 2), vec![2, 2]);
        // One of ours on PE 1 ends: room again.
        selector.release(PeId(1));
        assert_eq!(choices(&mut selector, now, 1), vec![1]);
        assert_eq!(choices(&mut selector, now, 1), vec![2]);
        // After a while PE 1 is tried again.
        assert_eq!(choices(&mut selector, now + FULL_MEMORY, 1), vec![1]);
        // A refusal without sessions of ours there (another pool user filled it) teaches
        // nothing.
        let mut fresh = PeSelector::new(Duration::from_secs(60));
        fresh.store(&listing(&[1], Policy::LeastUsed { load: 0 }), now);
        assert_eq!(choices(&mut fresh, now, 1), vec![1]);
        fresh.refused(PeId(1), now);
        fresh.release(PeId(1));
        assert_eq!(choices(&mut fresh, now, 1), vec![1]);
    }

    #[test]
    fn random_policies_fill_idle_pes_first() {
        let now = Instant::now();
        for policy in [Policy::Random, Policy::WeightedRandom { weight: 5 }] {
            let mut selector = PeSelector::new(Duration::from_secs(60));
            selector.store(&listing(&[1, 2, 3, 4], policy), now);
            // Four sessions, one on each PE (whatever the draws), then anywhere.
            let mut first = choices(&mut selector, now, 4);
            first.sort_unstable();
            assert_eq!(first, vec![1, 2, 3, 4], "{policy:?}");
            // One of ours ends on PE 3: the next session goes there.
            selector.release(PeId(3));
            assert_eq!(choices(&mut selector, now, 1), vec![3], "{policy:?}");
        }
    }

    #[test]
    fn weighted_random_never_picks_weight_zero() {
        let now = Instant::now();
        let mut selector = PeSelector::new(DEFAULT_STALE_CACHE);
        selector.store(
            &[
                element(1, Policy::WeightedRandom { weight: 0 }),
                element(2, Policy::WeightedRandom { weight: 3 }),
            ],
            now,
        );
        let mut rng = rng();
        for _ in 0..50 {
            assert_eq!(selector.choose(now, &mut rng).map(|pe| pe.id.0), Some(2));
        }
    }

    #[test]
    fn elements_without_tcp_address_are_left_out() {
        let now = Instant::now();
        let mut selector = PeSelector::new(DEFAULT_STALE_CACHE);
        let mut unusable = element(3, Policy::RoundRobin);
        unusable.user_transport = TransportAddress::Tcp {
            port: 5,
            address: Ipv4Addr::UNSPECIFIED.into(),
        };
        selector.store(&[unusable], now);
        assert!(selector.usable(now).is_empty());
        assert_eq!(selector.choose(now, &mut rng()), None);
    }
}
