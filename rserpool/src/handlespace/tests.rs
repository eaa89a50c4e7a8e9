//! Unit tests: registration rules, indexes, checksums, and every policy against RFC 5356.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::*;
use crate::wire::param::{PeId, PoolElement, PoolHandle, TransportAddress, TransportUse};
use crate::wire::policy::Policy;

pub(super) fn handle(name: &str) -> PoolHandle {
    PoolHandle::new(name.as_bytes().to_vec()).expect("valid test handle")
}

pub(super) fn tcp(port: u16) -> TransportAddress {
    TransportAddress::Tcp {
        port,
        address: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
    }
}

pub(super) fn pe(id: u32, policy: Policy) -> PoolElement {
    PoolElement {
        id: PeId(id),
        home_registrar: 0,
        registration_life_ms: u32::MAX,
        user_transport: tcp((id % 60_000) as u16 + 1),
        policy,
        asap_transport: None,
    }
}

pub(super) fn ctx(owner: u32, association: u64, now: Instant) -> RegistrationContext {
    RegistrationContext {
        owner,
        association: Some(association),
        registrator: None,
        now,
    }
}

fn rng() -> StdRng {
    StdRng::seed_from_u64(0x5eed_1234)
}

fn ids(resolution: &Resolution) -> Vec<u32> {
    resolution.elements.iter().map(|e| e.id.0).collect()
}

/// Percent of full load as a wire value.
fn pct(p: u64) -> u32 {
    (u64::from(u32::MAX) * p / 100) as u32
}

/// A handlespace with one pool "p" holding the given PEs.
fn pool_with(policies: &[(u32, Policy)], config: HandlespaceConfig) -> (Handlespace, PoolHandle) {
    let mut hs = Handlespace::new(config);
    let h = handle("p");
    let now = Instant::now();
    for (id, policy) in policies {
        hs.register(&h, pe(*id, *policy), ctx(1, u64::from(*id), now))
            .expect("registers");
    }
    hs.check_invariants().expect("consistent");
    (hs, h)
}

fn assert_distinct(answer: &[u32]) {
    let set: BTreeSet<_> = answer.iter().collect();
    assert_eq!(set.len(), answer.len(), "duplicates in {answer:?}");
}

/// Pearson's chi-square statistic of observed counts against expected shares.
fn chi_square(observed: &[u64], shares: &[f64]) -> f64 {
    let n: u64 = observed.iter().sum();
    let total_share: f64 = shares.iter().sum();
    observed
        .iter()
        .zip(shares)
        .map(|(&o, &s)| {
            let e = n as f64 * s / total_share;
            (o as f64 - e).powi(2) / e
        })
        .sum()
}

/// Draws single items `rounds` times and counts first picks per PE id (in `ids` order).
fn first_pick_counts(hs: &mut Handlespace, h: &PoolHandle, ids: &[u32], rounds: usize) -> Vec<u64> {
    let mut rng = rng();
    let mut counts: BTreeMap<u32, u64> = BTreeMap::new();
    for _ in 0..rounds {
        let r = hs.resolve(h, 1, &mut rng).expect("pool exists");
        assert_eq!(r.elements.len(), 1);
        *counts.entry(r.elements[0].id.0).or_default() += 1;
    }
    ids.iter()
        .map(|id| counts.get(id).copied().unwrap_or(0))
        .collect()
}

// 99.9 % quantiles of the chi-square distribution.
const CHI2_999_DF2: f64 = 13.82;
const CHI2_999_DF3: f64 = 16.27;

// ---------------------------------------------------------------------------------------------
// Registration rules
// ---------------------------------------------------------------------------------------------

#[test]
fn registration_creates_pool_and_records_owner_and_registrator() {
    let mut hs = Handlespace::new(HandlespaceConfig::default());
    let h = handle("fractal");
    let now = Instant::now();
    let registrator = tcp(4000);
    let ctx = RegistrationContext {
        owner: 0xabcd,
        association: Some(7),
        registrator: Some(registrator.clone()),
        now,
    };
    let mut element = pe(42, Policy::RoundRobin);
    element.home_registrar = 99;
    assert_eq!(hs.register(&h, element, ctx), Ok(RegistrationOutcome::New));
    let entry = hs.get(&h, PeId(42)).expect("registered");
    assert_eq!(entry.owner(), 0xabcd);
    assert_eq!(entry.element().home_registrar, 0xabcd);
    assert_eq!(entry.registrator(), Some(&registrator));
    assert_eq!(entry.association(), Some(7));
    assert_eq!(entry.expires_at(), None);
    assert_eq!(hs.pool_count(), 1);
    assert_eq!(hs.pool_element_count(), 1);
    assert_eq!(
        hs.pool(&h).map(|p| p.policy_kind()),
        Some(PolicyKind::RoundRobin)
    );
    assert_eq!(hs.association_elements(7).count(), 1);
    assert_eq!(hs.owned_by(0xabcd).count(), 1);
    hs.check_invariants().unwrap();
}

#[test]
fn pe_id_zero_is_invalid() {
    let mut hs = Handlespace::new(HandlespaceConfig::default());
    let err = hs.register(
        &handle("p"),
        pe(0, Policy::RoundRobin),
        ctx(1, 1, Instant::now()),
    );
    assert_eq!(err, Err(RegistrationError::InvalidPeId));
    assert_eq!(RegistrationError::InvalidPeId.cause_code(), CauseCode(0x3));
    assert!(hs.is_empty());
    assert_eq!(hs.pool_count(), 0);
}

#[test]
fn other_policy_type_is_rejected_with_the_pools_policy() {
    let (mut hs, h) = pool_with(
        &[(1, Policy::LeastUsed { load: 5 })],
        HandlespaceConfig::default(),
    );
    let err = hs
        .register(&h, pe(2, Policy::RoundRobin), ctx(1, 2, Instant::now()))
        .expect_err("policy differs");
    assert_eq!(
        err,
        RegistrationError::InconsistentPolicy {
            pool_policy: Policy::LeastUsed { load: 5 }
        }
    );
    assert_eq!(err.cause_code(), CauseCode(0x5));
    // Same policy type with other values is fine.
    assert!(
        hs.register(
            &h,
            pe(2, Policy::LeastUsed { load: 9 }),
            ctx(1, 2, Instant::now())
        )
        .is_ok()
    );
    // A re-registration must pass the same test (RFC 5352 §3.1 rule 3).
    let err = hs.register(&h, pe(1, Policy::Random), ctx(1, 1, Instant::now()));
    assert!(matches!(
        err,
        Err(RegistrationError::InconsistentPolicy { .. })
    ));
    assert_eq!(
        hs.get(&h, PeId(1)).map(|e| e.element().policy),
        Some(Policy::LeastUsed { load: 5 })
    );
    hs.check_invariants().unwrap();
}

#[test]
fn other_transport_type_and_transport_use_are_rejected() {
    let mut hs = Handlespace::new(HandlespaceConfig::default());
    let now = Instant::now();
    let h = handle("p");
    hs.register(&h, pe(1, Policy::RoundRobin), ctx(1, 1, now))
        .unwrap();
    let mut udp = pe(2, Policy::RoundRobin);
    udp.user_transport = TransportAddress::Udp {
        port: 9,
        address: IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    let err = hs
        .register(&h, udp, ctx(1, 2, now))
        .expect_err("UDP into a TCP pool");
    assert_eq!(err.cause_code(), CauseCode(0x7));
    assert_eq!(
        err,
        RegistrationError::InconsistentTransport {
            pool_transport: pe(1, Policy::RoundRobin).user_transport
        }
    );

    let sctp = |id: u32, transport_use| {
        let mut e = pe(id, Policy::RoundRobin);
        e.user_transport = TransportAddress::Sctp {
            port: 5,
            transport_use,
            addresses: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        };
        e
    };
    let s = handle("sctp");
    hs.register(&s, sctp(1, TransportUse::DataOnly), ctx(1, 1, now))
        .unwrap();
    let err = hs
        .register(&s, sctp(2, TransportUse::DataPlusControl), ctx(1, 2, now))
        .expect_err("mixed use");
    assert_eq!(
        err,
        RegistrationError::InconsistentDataControl {
            pool_transport_use: TransportUse::DataOnly
        }
    );
    assert_eq!(err.cause_code(), CauseCode(0x8));
    assert!(
        hs.register(&s, sctp(2, TransportUse::DataOnly), ctx(1, 2, now))
            .is_ok()
    );
    hs.check_invariants().unwrap();
}

#[test]
fn capacity_limits_give_lack_of_resources() {
    let config = HandlespaceConfig {
        max_pools: 2,
        max_pool_elements_per_pool: 2,
        max_pool_elements: 3,
        ..HandlespaceConfig::default()
    };
    let mut hs = Handlespace::new(config);
    let now = Instant::now();
    let (a, b, c) = (handle("a"), handle("b"), handle("c"));
    hs.register(&a, pe(1, Policy::RoundRobin), ctx(1, 1, now))
        .unwrap();
    hs.register(&a, pe(2, Policy::RoundRobin), ctx(1, 1, now))
        .unwrap();
    let err = hs
        .register(&a, pe(3, Policy::RoundRobin), ctx(1, 1, now))
        .unwrap_err();
    assert_eq!(
        err,
        RegistrationError::LackOfResources(ResourceLimit::PoolElementsPerPool)
    );
    assert_eq!(err.cause_code(), CauseCode(0x6));
    hs.register(&b, pe(3, Policy::RoundRobin), ctx(1, 1, now))
        .unwrap();
    assert_eq!(
        hs.register(&b, pe(4, Policy::RoundRobin), ctx(1, 1, now)),
        Err(RegistrationError::LackOfResources(
            ResourceLimit::PoolElements
        ))
    );
    assert_eq!(
        hs.register(&c, pe(5, Policy::RoundRobin), ctx(1, 1, now)),
        Err(RegistrationError::LackOfResources(ResourceLimit::Pools))
    );
    // Re-registrations of known PEs are not new resources.
    assert!(matches!(
        hs.register(&a, pe(2, Policy::RoundRobin), ctx(1, 1, now)),
        Ok(RegistrationOutcome::Updated { .. })
    ));
    assert_eq!(hs.pool_element_count(), 3);
    hs.check_invariants().unwrap();
}

#[test]
fn one_association_registers_at_most_its_share() {
    let mut hs = Handlespace::new(HandlespaceConfig {
        max_pool_elements_per_association: 2,
        ..HandlespaceConfig::default()
    });
    let now = Instant::now();
    let h = handle("p");
    for id in [1, 2] {
        hs.register(&h, pe(id, Policy::RoundRobin), ctx(1, 7, now))
            .unwrap();
    }
    assert_eq!(
        hs.register(&h, pe(3, Policy::RoundRobin), ctx(1, 7, now)),
        Err(RegistrationError::LackOfResources(
            ResourceLimit::PoolElementsPerAssociation
        ))
    );
    // Others are not held back, and re-registrations are no new resource.
    hs.register(&h, pe(3, Policy::RoundRobin), ctx(1, 8, now))
        .unwrap();
    assert!(matches!(
        hs.register(&h, pe(2, Policy::RoundRobin), ctx(1, 7, now)),
        Ok(RegistrationOutcome::Updated { .. })
    ));
    hs.check_invariants().unwrap();
}

#[test]
fn reregistration_updates_values_and_moves_association_and_owner() {
    // rsplib's way; the default refuses another association (see below).
    let mut hs = Handlespace::new(HandlespaceConfig {
        foreign_reregistration: ForeignReregistration::Update,
        ..HandlespaceConfig::default()
    });
    let h = handle("p");
    let t0 = Instant::now();
    hs.register(&h, pe(1, Policy::LeastUsed { load: 10 }), ctx(5, 100, t0))
        .unwrap();
    let mut update = pe(1, Policy::LeastUsed { load: 20 });
    update.registration_life_ms = 30_000;
    let t1 = t0 + Duration::from_secs(1);
    let outcome = hs.register(&h, update, ctx(6, 200, t1)).unwrap();
    assert_eq!(
        outcome,
        RegistrationOutcome::Updated {
            previous_owner: 5,
            previous_association: Some(100)
        }
    );
    let entry = hs.get(&h, PeId(1)).unwrap();
    assert_eq!(entry.element().policy, Policy::LeastUsed { load: 20 });
    assert_eq!(entry.owner(), 6);
    assert_eq!(entry.registered_at(), t1);
    assert_eq!(entry.expires_at(), Some(t1 + Duration::from_secs(30)));
    assert_eq!(hs.owned_by(5).count(), 0);
    assert_eq!(hs.owned_by(6).count(), 1);
    hs.check_invariants().unwrap();
    // The old association closing no longer removes the PE; the new one does.
    assert!(hs.remove_association(100).is_empty());
    assert_eq!(hs.remove_association(200).len(), 1);
    assert!(hs.is_empty());
    hs.check_invariants().unwrap();
}

#[test]
fn foreign_reregistration_can_be_rejected() {
    let config = HandlespaceConfig {
        foreign_reregistration: ForeignReregistration::Reject,
        ..HandlespaceConfig::default()
    };
    let mut hs = Handlespace::new(config);
    let h = handle("p");
    let now = Instant::now();
    hs.register(&h, pe(1, Policy::RoundRobin), ctx(1, 100, now))
        .unwrap();
    let err = hs
        .register(&h, pe(1, Policy::RoundRobin), ctx(1, 200, now))
        .unwrap_err();
    assert_eq!(err, RegistrationError::NonUniquePeId);
    assert_eq!(err.cause_code(), CauseCode(0x4));
    // The same association may re-register.
    assert!(
        hs.register(&h, pe(1, Policy::RoundRobin), ctx(1, 100, now))
            .is_ok()
    );
    assert_eq!(hs.get(&h, PeId(1)).unwrap().association(), Some(100));
}

#[test]
fn deregistration_removes_pe_and_empty_pool() {
    let (mut hs, h) = pool_with(
        &[(1, Policy::RoundRobin), (2, Policy::RoundRobin)],
        HandlespaceConfig::default(),
    );
    assert_eq!(hs.deregister(&h, PeId(1)).map(|e| e.id), Some(PeId(1)));
    assert_eq!(hs.deregister(&h, PeId(1)), None);
    assert_eq!(hs.pool_count(), 1);
    assert!(hs.deregister(&h, PeId(2)).is_some());
    assert_eq!(hs.pool_count(), 0);
    assert!(hs.pool(&h).is_none());
    assert_eq!(hs.resolve(&h, 1, &mut rng()), Err(UnknownPool));
    assert_eq!(UnknownPool.cause_code(), CauseCode(0x9));
    assert_eq!(hs.checksum(), 0xffff);
    hs.check_invariants().unwrap();
}

#[test]
fn closing_an_association_removes_all_its_pes_in_all_pools() {
    let mut hs = Handlespace::new(HandlespaceConfig::default());
    let now = Instant::now();
    let (a, b) = (handle("a"), handle("b"));
    hs.register(&a, pe(1, Policy::RoundRobin), ctx(1, 10, now))
        .unwrap();
    hs.register(&b, pe(2, Policy::Random), ctx(1, 10, now))
        .unwrap();
    hs.register(&b, pe(3, Policy::Random), ctx(1, 11, now))
        .unwrap();
    let mut removed = Vec::from(hs.remove_association(10));
    removed.sort_by_key(|(_, e)| e.id);
    assert_eq!(
        removed
            .iter()
            .map(|(h, e)| (h.clone(), e.id.0))
            .collect::<Vec<_>>(),
        vec![(a.clone(), 1), (b.clone(), 2)]
    );
    assert!(hs.pool(&a).is_none());
    assert_eq!(hs.pool(&b).map(|p| p.len()), Some(1));
    assert_eq!(hs.association_elements(10).count(), 0);
    hs.check_invariants().unwrap();
}

#[test]
fn unreachable_reports_count_distinct_reporters() {
    let (mut hs, h) = pool_with(
        &[(1, Policy::RoundRobin), (2, Policy::RoundRobin)],
        HandlespaceConfig::default(),
    );
    // One PU reporting over and over cannot impeach the PE.
    for _ in 0..10 {
        assert_eq!(
            hs.report_unreachable(&h, PeId(1), 77, 3),
            UnreachableOutcome::Counted(1)
        );
    }
    assert_eq!(
        hs.report_unreachable(&h, PeId(1), 78, 3),
        UnreachableOutcome::Counted(2)
    );
    assert_eq!(hs.get(&h, PeId(1)).unwrap().unreachable_reports(), 2);
    match hs.report_unreachable(&h, PeId(1), 79, 3) {
        UnreachableOutcome::Removed(e) => assert_eq!(e.id, PeId(1)),
        other => panic!("expected removal, got {other:?}"),
    }
    assert_eq!(
        hs.report_unreachable(&h, PeId(1), 80, 3),
        UnreachableOutcome::UnknownPe
    );
    // Threshold 1 (and 0, treated as 1): one report suffices.
    assert!(matches!(
        hs.report_unreachable(&h, PeId(2), 1, 0),
        UnreachableOutcome::Removed(_)
    ));
    assert!(hs.is_empty());
    hs.check_invariants().unwrap();
}

#[test]
fn unreachable_reporters_are_bounded_and_can_be_cleared() {
    let config = HandlespaceConfig {
        max_unreachable_reporters: 4,
        ..HandlespaceConfig::default()
    };
    let (mut hs, h) = pool_with(&[(1, Policy::RoundRobin)], config);
    for reporter in 0..100 {
        assert!(matches!(
            hs.report_unreachable(&h, PeId(1), reporter, 1000),
            UnreachableOutcome::Counted(_)
        ));
    }
    assert_eq!(hs.get(&h, PeId(1)).unwrap().unreachable_reports(), 4);
    assert!(hs.clear_unreachable_reports(&h, PeId(1)));
    assert_eq!(
        hs.report_unreachable(&h, PeId(1), 5, 1000),
        UnreachableOutcome::Counted(1)
    );
    assert!(!hs.clear_unreachable_reports(&h, PeId(9)));
    hs.check_invariants().unwrap();
}

#[test]
fn registration_life_expires() {
    let mut hs = Handlespace::new(HandlespaceConfig::default());
    let h = handle("p");
    let t0 = Instant::now();
    let mut short = pe(1, Policy::RoundRobin);
    short.registration_life_ms = 1_000;
    let mut long = pe(2, Policy::RoundRobin);
    long.registration_life_ms = 5_000;
    let forever = pe(3, Policy::RoundRobin);
    hs.register(&h, short, ctx(1, 1, t0)).unwrap();
    hs.register(&h, long.clone(), ctx(1, 1, t0)).unwrap();
    hs.register(&h, forever, ctx(1, 1, t0)).unwrap();
    assert_eq!(hs.next_expiry(), Some(t0 + Duration::from_secs(1)));
    assert!(
        hs.remove_expired(t0 + Duration::from_millis(999))
            .is_empty()
    );
    let removed = hs.remove_expired(t0 + Duration::from_secs(1));
    assert_eq!(
        removed.iter().map(|(_, e)| e.id.0).collect::<Vec<_>>(),
        vec![1]
    );
    // Re-registration pushes the expiry out.
    hs.register(&h, long, ctx(1, 1, t0 + Duration::from_secs(4)))
        .unwrap();
    assert_eq!(hs.next_expiry(), Some(t0 + Duration::from_secs(9)));
    assert!(hs.remove_expired(t0 + Duration::from_secs(6)).is_empty());
    assert_eq!(hs.remove_expired(t0 + Duration::from_secs(100)).len(), 1);
    assert_eq!(hs.next_expiry(), None);
    assert_eq!(hs.pool_element_count(), 1);
    hs.check_invariants().unwrap();
}

#[test]
fn checksum_matches_a_hand_computed_value() {
    // Handle "abc" (0x61 0x62 0x63, padded 0x00) and PE id 0x01020304:
    // words 0x6162 + 0x6300 + 0x0102 + 0x0304 = 0xC868, checksum = !0xC868 = 0x3797.
    let mut hs = Handlespace::new(HandlespaceConfig::default());
    assert_eq!(hs.checksum(), 0xffff);
    assert_eq!(hs.owner_checksum(1), 0xffff);
    hs.register(
        &handle("abc"),
        pe(0x0102_0304, Policy::RoundRobin),
        ctx(1, 1, Instant::now()),
    )
    .unwrap();
    assert_eq!(hs.checksum(), 0x3797);
    assert_eq!(hs.owner_checksum(1), 0x3797);
    assert_eq!(hs.owner_checksum(2), 0xffff);
    // Carries fold: two PEs whose sum overflows 16 bits.
    hs.register(
        &handle("abc"),
        pe(0xffff_ffff, Policy::RoundRobin),
        ctx(2, 1, Instant::now()),
    )
    .unwrap();
    // 0xC868 + 0x6162 + 0x6300 + 0xffff + 0xffff = 0x3_8CC8 -> 0x8CCB -> !0x8CCB = 0x7334
    assert_eq!(hs.checksum(), 0x7334);
    assert_eq!(hs.owner_checksum(1), 0x3797);
    hs.check_invariants().unwrap();
}

#[test]
fn ownership_transfer_moves_checksums_and_owner_ids() {
    let mut hs = Handlespace::new(HandlespaceConfig::default());
    let now = Instant::now();
    let h = handle("p");
    hs.register(&h, pe(1, Policy::RoundRobin), ctx(10, 1, now))
        .unwrap();
    hs.register(&h, pe(2, Policy::RoundRobin), ctx(10, 1, now))
        .unwrap();
    hs.register(&h, pe(3, Policy::RoundRobin), ctx(20, 1, now))
        .unwrap();
    let before_all = hs.checksum();
    let before_10 = hs.owner_checksum(10);
    let moved = hs.transfer_ownership(10, 20);
    assert_eq!(
        moved.iter().map(|(_, id)| id.0).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(hs.owner_checksum(10), 0xffff);
    assert_ne!(hs.owner_checksum(20), before_10);
    assert_eq!(hs.checksum(), before_all);
    assert_eq!(hs.get(&h, PeId(1)).unwrap().owner(), 20);
    assert_eq!(hs.owned_by(20).count(), 3);
    hs.check_invariants().unwrap();
    assert_eq!(hs.remove_owned_by(20).len(), 3);
    assert!(hs.is_empty());
    hs.check_invariants().unwrap();
}

#[test]
fn snapshots_compare_contents() {
    let (mut a, h) = pool_with(
        &[(1, Policy::RoundRobin), (2, Policy::RoundRobin)],
        HandlespaceConfig::default(),
    );
    let (b, _) = pool_with(
        &[(2, Policy::RoundRobin), (1, Policy::RoundRobin)],
        HandlespaceConfig::default(),
    );
    assert_eq!(a.snapshot(), b.snapshot());
    a.resolve(&h, 2, &mut rng()).unwrap();
    assert_eq!(a.snapshot(), b.snapshot(), "selection state is not content");
    a.deregister(&h, PeId(1));
    assert_ne!(a.snapshot(), b.snapshot());
    let snap = b.snapshot();
    assert_eq!(snap.pools[&h].policy, PolicyKind::RoundRobin);
    assert_eq!(snap.pools[&h].elements.len(), 2);
}

// ---------------------------------------------------------------------------------------------
// Policies: generic rules
// ---------------------------------------------------------------------------------------------

/// A policy value of each kind, varied by `i` so pools are not uniform.
fn sample_policy(kind: PolicyKind, i: u32) -> Policy {
    let load = pct(u64::from(i * 7 % 90));
    let small = i % 5 + 1;
    match kind {
        PolicyKind::RoundRobin => Policy::RoundRobin,
        PolicyKind::WeightedRoundRobin => Policy::WeightedRoundRobin { weight: small },
        PolicyKind::Random => Policy::Random,
        PolicyKind::WeightedRandom => Policy::WeightedRandom { weight: small },
        PolicyKind::Priority => Policy::Priority { priority: small },
        PolicyKind::LeastUsed => Policy::LeastUsed { load },
        PolicyKind::LeastUsedDegradation => Policy::LeastUsedDegradation {
            load,
            degradation: pct(5),
        },
        PolicyKind::PriorityLeastUsed => Policy::PriorityLeastUsed {
            load,
            degradation: pct(5),
        },
        PolicyKind::RandomizedLeastUsed => Policy::RandomizedLeastUsed { load },
        PolicyKind::RandomizedPriorityLeastUsed => Policy::RandomizedPriorityLeastUsed {
            load,
            degradation: pct(5),
        },
        PolicyKind::RandomizedLeastUsedDegradation => Policy::RandomizedLeastUsedDegradation {
            load,
            degradation: pct(5),
        },
        PolicyKind::PriorityLeastUsedDegradation => Policy::PriorityLeastUsedDegradation {
            load,
            degradation: pct(5),
        },
        PolicyKind::RandomizedPriorityLeastUsedDegradation => {
            Policy::RandomizedPriorityLeastUsedDegradation {
                load,
                degradation: pct(5),
            }
        }
        PolicyKind::WeightedRandomDpf => Policy::WeightedRandomDpf {
            weight: small * 100,
            weight_dpf: pct(1),
            distance: i % 10,
        },
        PolicyKind::LeastUsedDpf => Policy::LeastUsedDpf {
            load,
            load_dpf: pct(1),
            distance: i % 10,
        },
        PolicyKind::LeastUsedDegradationDpf => Policy::LeastUsedDegradationDpf {
            load,
            degradation: pct(5),
            load_dpf: pct(1),
            distance: i % 10,
        },
    }
}

#[test]
fn every_policy_with_zero_and_one_pe() {
    for kind in ALL_POLICY_KINDS {
        let mut hs = Handlespace::new(HandlespaceConfig::default());
        let h = handle("p");
        assert_eq!(
            hs.resolve(&h, 3, &mut rng()),
            Err(UnknownPool),
            "{kind:?} empty"
        );
        hs.register(&h, pe(9, sample_policy(kind, 1)), ctx(1, 1, Instant::now()))
            .unwrap();
        for items in [1, 3, 128] {
            let r = hs.resolve(&h, items, &mut rng()).unwrap();
            assert_eq!(ids(&r), vec![9], "{kind:?} items {items}");
            assert_eq!(PolicyKind::of(&r.policy), kind);
        }
        assert!(hs.resolve(&h, 0, &mut rng()).unwrap().elements.is_empty());
        hs.deregister(&h, PeId(9));
        assert_eq!(
            hs.resolve(&h, 1, &mut rng()),
            Err(UnknownPool),
            "{kind:?} emptied"
        );
        hs.check_invariants().unwrap();
    }
}

#[test]
fn every_policy_answers_distinct_pes_and_the_whole_pool_when_asked_for_more() {
    for kind in ALL_POLICY_KINDS {
        let members: Vec<(u32, Policy)> = (1..=12).map(|i| (i, sample_policy(kind, i))).collect();
        let (mut hs, h) = pool_with(&members, HandlespaceConfig::default());
        let mut rng = rng();
        for round in 0..200 {
            let items = round % 7 + 1;
            let answer = ids(&hs.resolve(&h, items, &mut rng).unwrap());
            assert_eq!(answer.len(), items, "{kind:?}");
            assert_distinct(&answer);
        }
        let all = ids(&hs.resolve(&h, 50, &mut rng).unwrap());
        assert_eq!(
            all.iter().copied().collect::<BTreeSet<_>>(),
            (1..=12).collect(),
            "{kind:?}"
        );
        hs.check_invariants()
            .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        let handed_out: u64 = hs
            .pool(&h)
            .unwrap()
            .elements()
            .map(|e| e.selection_count())
            .sum();
        let expected: u64 = (0..200).map(|r| (r % 7 + 1) as u64).sum::<u64>() + 12;
        assert_eq!(handed_out, expected, "{kind:?} selection counters");
    }
}

// ---------------------------------------------------------------------------------------------
// Round robin and weighted round robin
// ---------------------------------------------------------------------------------------------

#[test]
fn round_robin_cycles_in_order_and_head_advances_by_one() {
    let members: Vec<_> = (1..=5).map(|i| (i, Policy::RoundRobin)).collect();
    let (mut hs, h) = pool_with(&members, HandlespaceConfig::default());
    let mut rng = rng();
    let firsts: Vec<u32> = (0..10)
        .map(|_| ids(&hs.resolve(&h, 1, &mut rng).unwrap())[0])
        .collect();
    assert_eq!(firsts, vec![1, 2, 3, 4, 5, 1, 2, 3, 4, 5]);
    // Three items: the list starts at the head, then the head moves by one (MaxIncrement 1).
    let answers: Vec<Vec<u32>> = (0..3)
        .map(|_| ids(&hs.resolve(&h, 3, &mut rng).unwrap()))
        .collect();
    assert_eq!(answers, vec![vec![1, 2, 3], vec![2, 3, 4], vec![3, 4, 5]]);
}

#[test]
fn round_robin_head_advances_by_max_increment() {
    let members: Vec<_> = (1..=5).map(|i| (i, Policy::RoundRobin)).collect();
    let config = HandlespaceConfig {
        max_increment: Some(3),
        ..HandlespaceConfig::default()
    };
    let (mut hs, h) = pool_with(&members, config);
    let mut rng = rng();
    let answers: Vec<Vec<u32>> = (0..3)
        .map(|_| ids(&hs.resolve(&h, 3, &mut rng).unwrap()))
        .collect();
    assert_eq!(answers, vec![vec![1, 2, 3], vec![4, 5, 1], vec![2, 3, 4]]);
    // MaxIncrement 0: the head never moves.
    let config = HandlespaceConfig {
        max_increment: Some(0),
        ..HandlespaceConfig::default()
    };
    let (mut hs, h) = pool_with(&members, config);
    for _ in 0..3 {
        assert_eq!(ids(&hs.resolve(&h, 2, &mut rng).unwrap()), vec![1, 2]);
    }
}

#[test]
fn round_robin_newcomer_joins_at_the_end_of_the_cycle() {
    let members: Vec<_> = (1..=3).map(|i| (i, Policy::RoundRobin)).collect();
    let (mut hs, h) = pool_with(&members, HandlespaceConfig::default());
    let mut rng = rng();
    assert_eq!(ids(&hs.resolve(&h, 1, &mut rng).unwrap()), vec![1]);
    hs.register(&h, pe(4, Policy::RoundRobin), ctx(1, 4, Instant::now()))
        .unwrap();
    let firsts: Vec<u32> = (0..4)
        .map(|_| ids(&hs.resolve(&h, 1, &mut rng).unwrap())[0])
        .collect();
    assert_eq!(firsts, vec![2, 3, 1, 4]);
}

#[test]
fn weighted_round_robin_gives_exact_shares_per_round_and_spreads_them() {
    let weights = [(1u32, 3u32), (2, 2), (3, 1)];
    let members: Vec<_> = weights
        .iter()
        .map(|&(id, weight)| (id, Policy::WeightedRoundRobin { weight }))
        .collect();
    let (mut hs, h) = pool_with(&members, HandlespaceConfig::default());
    let mut rng = rng();
    let round_len: u32 = weights.iter().map(|w| w.1).sum();
    for round in 0..20 {
        let seq: Vec<u32> = (0..round_len)
            .map(|_| ids(&hs.resolve(&h, 1, &mut rng).unwrap())[0])
            .collect();
        for &(id, weight) in &weights {
            assert_eq!(
                seq.iter().filter(|&&x| x == id).count() as u32,
                weight,
                "round {round}: {seq:?}"
            );
        }
        // Spread (RFC 5356 §4.2.2): no PE twice in a row inside a round with these weights.
        assert!(
            seq.windows(2).all(|w| w[0] != w[1]),
            "round {round} clustered: {seq:?}"
        );
    }
    hs.check_invariants().unwrap();
}

#[test]
fn weighted_round_robin_with_items_and_zero_weight() {
    let members = [
        (1, Policy::WeightedRoundRobin { weight: 4 }),
        (2, Policy::WeightedRoundRobin { weight: 1 }),
        (3, Policy::WeightedRoundRobin { weight: 0 }),
    ];
    let (mut hs, h) = pool_with(&members, HandlespaceConfig::default());
    let mut rng = rng();
    let mut counts = [0u32; 4];
    for _ in 0..50 {
        let answer = ids(&hs.resolve(&h, 3, &mut rng).unwrap());
        // Weight 0 "cannot serve" (RFC 5356 §3.2): never listed.
        assert_eq!(answer.len(), 2);
        assert_distinct(&answer);
        counts[answer[0] as usize] += 1;
    }
    assert_eq!(counts, [0, 40, 10, 0]);
    // Raising the weight by re-registration makes it selectable.
    hs.register(
        &h,
        pe(3, Policy::WeightedRoundRobin { weight: 5 }),
        ctx(1, 3, Instant::now()),
    )
    .unwrap();
    hs.check_invariants().unwrap();
    let mut counts = [0u32; 4];
    for _ in 0..100 {
        counts[ids(&hs.resolve(&h, 1, &mut rng).unwrap())[0] as usize] += 1;
    }
    assert_eq!(counts, [0, 40, 10, 50]);
}

#[test]
fn weighted_round_robin_newcomer_joins_at_the_current_virtual_time() {
    let members = [
        (1, Policy::WeightedRoundRobin { weight: 1 }),
        (2, Policy::WeightedRoundRobin { weight: 1 }),
    ];
    let (mut hs, h) = pool_with(&members, HandlespaceConfig::default());
    let mut rng = rng();
    // Half a round done, then a heavy PE joins.
    assert_eq!(ids(&hs.resolve(&h, 1, &mut rng).unwrap()), vec![1]);
    hs.register(
        &h,
        pe(3, Policy::WeightedRoundRobin { weight: 4 }),
        ctx(1, 3, Instant::now()),
    )
    .unwrap();
    hs.check_invariants().unwrap();
    // The rest of the round: PE 2 is not overtaken, and the newcomer gets the half of its four
    // picks that lie in the remaining half round, not all four.
    let rest: Vec<u32> = (0..3)
        .map(|_| ids(&hs.resolve(&h, 1, &mut rng).unwrap())[0])
        .collect();
    assert_eq!(rest, vec![2, 3, 3]);
    // Then full rounds with shares 1:1:4, spread by Sainte-Laguë midpoints.
    for _ in 0..3 {
        let seq: Vec<u32> = (0..6)
            .map(|_| ids(&hs.resolve(&h, 1, &mut rng).unwrap())[0])
            .collect();
        let count = |id| seq.iter().filter(|&&x| x == id).count();
        assert_eq!((count(1), count(2), count(3)), (1, 1, 4), "{seq:?}");
        assert_eq!(
            seq.chunk_by(|a, b| a == b).map(|run| run.len()).max(),
            Some(2),
            "{seq:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Priority and the least-used family
// ---------------------------------------------------------------------------------------------

#[test]
fn priority_returns_highest_priorities_in_decreasing_order() {
    let members = [
        (1, Policy::Priority { priority: 10 }),
        (2, Policy::Priority { priority: 50 }),
        (3, Policy::Priority { priority: 30 }),
        (4, Policy::Priority { priority: 50 }),
        (5, Policy::Priority { priority: 0 }),
    ];
    let (mut hs, h) = pool_with(&members, HandlespaceConfig::default());
    let prio = |id: u32| members.iter().find(|m| m.0 == id).map(|m| m.1).unwrap();
    let mut rng = rng();
    let mut firsts = Vec::new();
    for _ in 0..6 {
        let answer = ids(&hs.resolve(&h, 4, &mut rng).unwrap());
        let priorities: Vec<u32> = answer
            .iter()
            .map(|&id| match prio(id) {
                Policy::Priority { priority } => priority,
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(priorities, vec![50, 50, 30, 10]);
        firsts.push(answer[0]);
    }
    // Round robin among the equal top priorities.
    assert_eq!(firsts, vec![2, 4, 2, 4, 2, 4]);
}

#[test]
fn least_used_never_prefers_a_more_loaded_pe_and_rotates_equal_loads() {
    let members = [
        (1, Policy::LeastUsed { load: pct(10) }),
        (2, Policy::LeastUsed { load: pct(50) }),
        (3, Policy::LeastUsed { load: pct(10) }),
        (4, Policy::LeastUsed { load: pct(30) }),
        (5, Policy::LeastUsed { load: pct(10) }),
    ];
    let (mut hs, h) = pool_with(&members, HandlespaceConfig::default());
    let load = |id: u32| match members.iter().find(|m| m.0 == id).unwrap().1 {
        Policy::LeastUsed { load } => load,
        _ => unreachable!(),
    };
    let mut rng = rng();
    let mut firsts = Vec::new();
    for _ in 0..6 {
        let answer = ids(&hs.resolve(&h, 5, &mut rng).unwrap());
        let loads: Vec<u32> = answer.iter().map(|&id| load(id)).collect();
        assert!(
            loads.windows(2).all(|w| w[0] <= w[1]),
            "not ascending: {answer:?}"
        );
        firsts.push(answer[0]);
    }
    assert_eq!(firsts, vec![1, 3, 5, 1, 3, 5]);
    // A load update by re-registration re-sorts.
    hs.register(
        &h,
        pe(2, Policy::LeastUsed { load: 0 }),
        ctx(1, 2, Instant::now()),
    )
    .unwrap();
    assert_eq!(ids(&hs.resolve(&h, 1, &mut rng).unwrap()), vec![2]);
    assert_eq!(
        ids(&hs.resolve(&h, 1, &mut rng).unwrap()),
        vec![2],
        "the only least-loaded PE stays first"
    );
}

#[test]
fn least_used_degradation_raises_the_key_per_hand_out_and_resets_on_reregistration() {
    let a = Policy::LeastUsedDegradation {
        load: 0,
        degradation: pct(10),
    };
    let b = Policy::LeastUsedDegradation {
        load: pct(25),
        degradation: 0,
    };
    let (mut hs, h) = pool_with(&[(1, a), (2, b)], HandlespaceConfig::default());
    let mut rng = rng();
    let firsts: Vec<u32> = (0..5)
        .map(|_| ids(&hs.resolve(&h, 1, &mut rng).unwrap())[0])
        .collect();
    // A: keys 0 %, 10 %, 20 % (< 25 %), then 30 % > 25 %: B, whose key never grows.
    assert_eq!(firsts, vec![1, 1, 1, 2, 2]);
    assert_eq!(hs.get(&h, PeId(1)).unwrap().degradation(), 3 * pct(10));
    assert_eq!(hs.get(&h, PeId(2)).unwrap().degradation(), 0);
    // Re-registration resets the counter (RFC 5356 §5.2.2).
    hs.register(&h, pe(1, a), ctx(1, 1, Instant::now()))
        .unwrap();
    assert_eq!(hs.get(&h, PeId(1)).unwrap().degradation(), 0);
    assert_eq!(ids(&hs.resolve(&h, 1, &mut rng).unwrap()), vec![1]);
    hs.check_invariants().unwrap();
}

#[test]
fn least_used_degradation_degrades_only_max_increment_pes_per_answer() {
    let p = Policy::LeastUsedDegradation {
        load: 0,
        degradation: pct(10),
    };
    let (mut hs, h) = pool_with(&[(1, p), (2, p), (3, p)], HandlespaceConfig::default());
    hs.resolve(&h, 3, &mut rng()).unwrap();
    let degr: Vec<u32> = (1..=3)
        .map(|i| hs.get(&h, PeId(i)).unwrap().degradation())
        .collect();
    assert_eq!(degr, vec![pct(10), 0, 0]);
    let config = HandlespaceConfig {
        max_increment: Some(3),
        ..HandlespaceConfig::default()
    };
    let (mut hs, h) = pool_with(&[(1, p), (2, p), (3, p)], config);
    hs.resolve(&h, 3, &mut rng()).unwrap();
    let degr: Vec<u32> = (1..=3)
        .map(|i| hs.get(&h, PeId(i)).unwrap().degradation())
        .collect();
    assert_eq!(degr, vec![pct(10); 3]);
}

#[test]
fn priority_least_used_orders_by_load_plus_degradation_without_growing() {
    // RFC 5356 §5.3.1's example: A 50 %+10 % beats B 50 %+50 %; C 55 %+0 % beats A.
    let members = [
        (
            1,
            Policy::PriorityLeastUsed {
                load: pct(50),
                degradation: pct(10),
            },
        ),
        (
            2,
            Policy::PriorityLeastUsed {
                load: pct(50),
                degradation: pct(50),
            },
        ),
        (
            3,
            Policy::PriorityLeastUsed {
                load: pct(55),
                degradation: 0,
            },
        ),
    ];
    let (mut hs, h) = pool_with(&members, HandlespaceConfig::default());
    let mut rng = rng();
    for _ in 0..5 {
        assert_eq!(ids(&hs.resolve(&h, 3, &mut rng).unwrap()), vec![3, 1, 2]);
    }
    assert!((1..=3).all(|i| hs.get(&h, PeId(i)).unwrap().degradation() == 0));
}

#[test]
fn priority_least_used_degradation_adds_the_counter() {
    // rsplib's PLUD: key = load + load degradation + accumulated degradation.
    let members = [
        (
            1,
            Policy::PriorityLeastUsedDegradation {
                load: pct(10),
                degradation: pct(10),
            },
        ),
        (
            2,
            Policy::PriorityLeastUsedDegradation {
                load: pct(35),
                degradation: pct(1),
            },
        ),
    ];
    let (mut hs, h) = pool_with(&members, HandlespaceConfig::default());
    let mut rng = rng();
    let firsts: Vec<u32> = (0..4)
        .map(|_| ids(&hs.resolve(&h, 1, &mut rng).unwrap())[0])
        .collect();
    // A: 20 %, 30 %, 40 % ; B: 36 %, 37 %: A A B B(37<40)
    assert_eq!(firsts, vec![1, 1, 2, 2]);
}

#[test]
fn least_used_dpf_penalises_distance() {
    let members = [
        (
            1,
            Policy::LeastUsedDpf {
                load: pct(10),
                load_dpf: pct(1),
                distance: 50,
            },
        ), // 10 % + 50 % -> 60 %
        (
            2,
            Policy::LeastUsedDpf {
                load: pct(40),
                load_dpf: pct(1),
                distance: 0,
            },
        ), // 40 %
        (
            3,
            Policy::LeastUsedDpf {
                load: pct(20),
                load_dpf: pct(1),
                distance: 10,
            },
        ), // 30 %
    ];
    let (mut hs, h) = pool_with(&members, HandlespaceConfig::default());
    assert_eq!(ids(&hs.resolve(&h, 3, &mut rng()).unwrap()), vec![3, 2, 1]);
}

#[test]
fn least_used_degradation_dpf_adds_degradation_and_distance() {
    let members = [
        (
            1,
            Policy::LeastUsedDegradationDpf {
                load: 0,
                degradation: pct(20),
                load_dpf: pct(1),
                distance: 5,
            },
        ),
        (
            2,
            Policy::LeastUsedDegradationDpf {
                load: pct(12),
                degradation: 0,
                load_dpf: pct(1),
                distance: 0,
            },
        ),
    ];
    let (mut hs, h) = pool_with(&members, HandlespaceConfig::default());
    let mut rng = rng();
    // A: 5 % then 25 %; B stays at 12 %.
    let firsts: Vec<u32> = (0..3)
        .map(|_| ids(&hs.resolve(&h, 1, &mut rng).unwrap())[0])
        .collect();
    assert_eq!(firsts, vec![1, 2, 2]);
}

// ---------------------------------------------------------------------------------------------
// Random policies (fixed seeds, chi-square at 99.9 %)
// ---------------------------------------------------------------------------------------------

#[test]
fn random_is_uniform() {
    let members: Vec<_> = (1..=4).map(|i| (i, Policy::Random)).collect();
    let (mut hs, h) = pool_with(&members, HandlespaceConfig::default());
    let counts = first_pick_counts(&mut hs, &h, &[1, 2, 3, 4], 20_000);
    assert!(chi_square(&counts, &[1.0; 4]) < CHI2_999_DF3, "{counts:?}");
}

#[test]
fn weighted_random_follows_weights() {
    let weights = [1u32, 2, 3, 4];
    let members: Vec<_> = weights
        .iter()
        .enumerate()
        .map(|(i, &weight)| (i as u32 + 1, Policy::WeightedRandom { weight }))
        .collect();
    let (mut hs, h) = pool_with(&members, HandlespaceConfig::default());
    let counts = first_pick_counts(&mut hs, &h, &[1, 2, 3, 4], 20_000);
    let shares: Vec<f64> = weights.iter().map(|&w| f64::from(w)).collect();
    assert!(chi_square(&counts, &shares) < CHI2_999_DF3, "{counts:?}");
    // The same counts are far from uniform: the test would catch ignored weights.
    assert!(
        chi_square(&counts, &[1.0; 4]) > 100.0 * CHI2_999_DF3,
        "{counts:?}"
    );
}

#[test]
fn weighted_random_never_draws_weight_zero() {
    let members = [
        (1, Policy::WeightedRandom { weight: 0 }),
        (2, Policy::WeightedRandom { weight: 5 }),
        (3, Policy::WeightedRandom { weight: 0 }),
    ];
    let (mut hs, h) = pool_with(&members, HandlespaceConfig::default());
    let mut rng = rng();
    for _ in 0..100 {
        assert_eq!(ids(&hs.resolve(&h, 3, &mut rng).unwrap()), vec![2]);
    }
}

#[test]
fn weighted_random_multi_item_answers_cover_the_light_pes_too() {
    // Drawing without replacement: with 2 of 3 items, the lightest PE must appear often.
    let members = [
        (1, Policy::WeightedRandom { weight: 100 }),
        (2, Policy::WeightedRandom { weight: 100 }),
        (3, Policy::WeightedRandom { weight: 1 }),
    ];
    let (mut hs, h) = pool_with(&members, HandlespaceConfig::default());
    let mut rng = rng();
    let mut with_light = 0;
    for _ in 0..10_000 {
        let answer = ids(&hs.resolve(&h, 2, &mut rng).unwrap());
        assert_distinct(&answer);
        if answer.contains(&3) {
            with_light += 1;
        }
    }
    // P(3 among two draws) = 2 × (1/201) × ... ≈ 1.5 %; allow a wide band.
    assert!((50..=300).contains(&with_light), "{with_light}");
}

#[test]
fn randomized_least_used_weighs_by_unload() {
    // Unload 100 %, 50 %, 25 % -> shares 4:2:1 (RFC 5356 §5.4.1).
    let members = [
        (1, Policy::RandomizedLeastUsed { load: 0 }),
        (2, Policy::RandomizedLeastUsed { load: pct(50) }),
        (3, Policy::RandomizedLeastUsed { load: pct(75) }),
    ];
    let (mut hs, h) = pool_with(&members, HandlespaceConfig::default());
    let counts = first_pick_counts(&mut hs, &h, &[1, 2, 3], 20_000);
    assert!(
        chi_square(&counts, &[4.0, 2.0, 1.0]) < CHI2_999_DF2,
        "{counts:?}"
    );
    assert!(
        chi_square(&counts, &[1.0; 3]) > 100.0 * CHI2_999_DF2,
        "{counts:?}"
    );
    // RLU keeps no degradation.
    assert!((1..=3).all(|i| hs.get(&h, PeId(i)).unwrap().degradation() == 0));
}

#[test]
fn randomized_priority_least_used_subtracts_load_degradation() {
    // Unload minus degradation: 100-0-50 = 50 %, 100-50-0 = 50 %, 100-0-0 = 100 % -> 1:1:2.
    let members = [
        (
            1,
            Policy::RandomizedPriorityLeastUsed {
                load: 0,
                degradation: pct(50),
            },
        ),
        (
            2,
            Policy::RandomizedPriorityLeastUsed {
                load: pct(50),
                degradation: 0,
            },
        ),
        (
            3,
            Policy::RandomizedPriorityLeastUsed {
                load: 0,
                degradation: 0,
            },
        ),
    ];
    let (mut hs, h) = pool_with(&members, HandlespaceConfig::default());
    let counts = first_pick_counts(&mut hs, &h, &[1, 2, 3], 20_000);
    assert!(
        chi_square(&counts, &[1.0, 1.0, 2.0]) < CHI2_999_DF2,
        "{counts:?}"
    );
    assert!(
        chi_square(&counts, &[1.0; 3]) > 10.0 * CHI2_999_DF2,
        "{counts:?}"
    );
}

#[test]
fn randomized_degradation_variants_degrade_the_drawn_pe() {
    for (kind, make) in [
        (
            PolicyKind::RandomizedLeastUsedDegradation,
            (|d| Policy::RandomizedLeastUsedDegradation {
                load: 0,
                degradation: d,
            }) as fn(u32) -> Policy,
        ),
        (PolicyKind::RandomizedPriorityLeastUsedDegradation, |d| {
            Policy::RandomizedPriorityLeastUsedDegradation {
                load: 0,
                degradation: d,
            }
        }),
    ] {
        let (mut hs, h) = pool_with(
            &[(1, make(pct(30))), (2, make(pct(30)))],
            HandlespaceConfig::default(),
        );
        let mut rng = rng();
        let first = ids(&hs.resolve(&h, 1, &mut rng).unwrap())[0];
        let other = 3 - first;
        assert_eq!(
            hs.get(&h, PeId(first)).unwrap().degradation(),
            pct(30),
            "{kind:?}"
        );
        assert_eq!(
            hs.get(&h, PeId(other)).unwrap().degradation(),
            0,
            "{kind:?}"
        );
        hs.check_invariants().unwrap();
        // Re-registration resets it.
        hs.register(&h, pe(first, make(pct(30))), ctx(1, 1, Instant::now()))
            .unwrap();
        assert_eq!(
            hs.get(&h, PeId(first)).unwrap().degradation(),
            0,
            "{kind:?}"
        );
        hs.check_invariants().unwrap();
    }
}

#[test]
fn randomized_least_used_degradation_accumulates_per_draw() {
    // Each single draw degrades the drawn PE by its load degradation (MaxIncrement 1), so after
    // many draws every PE's degradation is 5 % × its draws, and the weights follow (checked by
    // `check_invariants`, which recomputes every Fenwick weight from load and degradation).
    let step = pct(5);
    let p = Policy::RandomizedLeastUsedDegradation {
        load: 0,
        degradation: step,
    };
    let (mut hs, h) = pool_with(&[(1, p), (2, p), (3, p)], HandlespaceConfig::default());
    let counts = first_pick_counts(&mut hs, &h, &[1, 2, 3], 12);
    for (id, count) in (1..=3).zip(counts) {
        let expected = (u64::from(step) * count).min(u64::from(u32::MAX)) as u32;
        assert_eq!(hs.get(&h, PeId(id)).unwrap().degradation(), expected);
    }
    hs.check_invariants().unwrap();
}

#[test]
fn weighted_random_dpf_penalises_distance() {
    // 1000 × (1 − 0 × ...), 1000 × (1 − 50 × 1 %) = 500, 1000 × (1 − 75 × 1 %) = 250 -> 4:2:1.
    let members = [
        (
            1,
            Policy::WeightedRandomDpf {
                weight: 1000,
                weight_dpf: pct(1),
                distance: 0,
            },
        ),
        (
            2,
            Policy::WeightedRandomDpf {
                weight: 1000,
                weight_dpf: pct(1),
                distance: 50,
            },
        ),
        (
            3,
            Policy::WeightedRandomDpf {
                weight: 1000,
                weight_dpf: pct(1),
                distance: 75,
            },
        ),
    ];
    let (mut hs, h) = pool_with(&members, HandlespaceConfig::default());
    let counts = first_pick_counts(&mut hs, &h, &[1, 2, 3], 20_000);
    assert!(
        chi_square(&counts, &[4.0, 2.0, 1.0]) < CHI2_999_DF2,
        "{counts:?}"
    );
    assert!(
        chi_square(&counts, &[1.0; 3]) > 100.0 * CHI2_999_DF2,
        "{counts:?}"
    );
}

#[test]
fn policy_default_max_increments_match_rsplib() {
    use PolicyKind::*;
    for kind in ALL_POLICY_KINDS {
        let expected = if matches!(kind, Random | WeightedRandom | WeightedRandomDpf) {
            0
        } else {
            1
        };
        assert_eq!(kind.default_max_increment(), expected, "{kind:?}");
    }
}

#[test]
fn randomized_degradation_respects_max_increment() {
    let p = Policy::RandomizedLeastUsedDegradation {
        load: 0,
        degradation: pct(10),
    };
    let members: Vec<_> = (1..=4).map(|i| (i, p)).collect();
    for (max_increment, degraded) in [(None, 1), (Some(2), 2), (Some(0), 0), (Some(9), 3)] {
        let config = HandlespaceConfig {
            max_increment,
            ..HandlespaceConfig::default()
        };
        let (mut hs, h) = pool_with(&members, config);
        let answer = ids(&hs.resolve(&h, 3, &mut rng()).unwrap());
        assert_eq!(answer.len(), 3);
        let degraded_ids: Vec<u32> = (1..=4)
            .filter(|&i| hs.get(&h, PeId(i)).unwrap().degradation() > 0)
            .collect();
        assert_eq!(
            degraded_ids.len(),
            degraded,
            "max_increment {max_increment:?}"
        );
        // The degraded ones are the first drawn.
        assert!(
            degraded_ids
                .iter()
                .all(|id| answer[..degraded].contains(id))
        );
        hs.check_invariants().unwrap();
    }
}

/// The order a pool of an ordered policy (RR, LU, Priority) must hand its PEs out in: by
/// (policy value, sequence number), where newcomers and the first PE of each answer take the
/// next sequence number and a re-registration keeps its own.
#[derive(Default)]
struct OrderModel {
    /// id -> (value, seq)
    pes: BTreeMap<u32, (u64, u64)>,
    next_seq: u64,
}

impl OrderModel {
    fn register(&mut self, id: u32, value: u64) {
        match self.pes.get_mut(&id) {
            Some(pe) => pe.0 = value,
            None => {
                self.pes.insert(id, (value, self.next_seq));
                self.next_seq += 1;
            }
        }
    }

    fn resolve(&mut self, items: usize) -> Vec<u32> {
        let mut order: Vec<(u64, u64, u32)> =
            self.pes.iter().map(|(id, (v, s))| (*v, *s, *id)).collect();
        order.sort_unstable();
        let answer: Vec<u32> = order.iter().take(items).map(|(.., id)| *id).collect();
        if let Some(first) = answer.first()
            && let Some(pe) = self.pes.get_mut(first)
        {
            pe.1 = self.next_seq;
            self.next_seq += 1;
        }
        answer
    }
}

/// Drives one pool through growth to `peak` PEs and shrinkage well below a quarter of it, twice,
/// with resolutions and re-registrations in between; every answer must match `OrderModel`, every
/// index must stay consistent.
fn large_pool_keeps_model_order(policy_of: impl Fn(u32) -> (Policy, u64), seed: u64) {
    const PEAK: usize = 300;
    let mut hs = Handlespace::new(HandlespaceConfig {
        max_pool_elements_per_pool: 1024,
        ..HandlespaceConfig::default()
    });
    let h = handle("large");
    let mut model = OrderModel::default();
    let mut random = StdRng::seed_from_u64(seed);
    let now = Instant::now();
    for phase in 0..4 {
        let growing = phase % 2 == 0;
        for _ in 0..1_500 {
            let roll = random.random_range(0..100u32);
            let id = random.random_range(1..=PEAK as u32 * 2);
            if roll < 45 {
                // Register (new or re-registration), more often while growing.
                if !growing && !model.pes.contains_key(&id) {
                    continue;
                }
                let (policy, value) = policy_of(random.random_range(0..1_000));
                hs.register(&h, pe(id, policy), ctx(1, u64::from(id), now))
                    .unwrap();
                model.register(id, value);
            } else if roll < 75 {
                let removing = if growing { roll < 50 } else { true };
                if removing
                    && let Some(&victim) =
                        model.pes.keys().nth(id as usize % model.pes.len().max(1))
                {
                    assert!(hs.deregister(&h, PeId(victim)).is_some());
                    model.pes.remove(&victim);
                }
            } else {
                let items = random.random_range(1..5);
                let answer = match hs.resolve(&h, items, &mut rng()) {
                    Ok(resolution) => ids(&resolution),
                    Err(UnknownPool) => Vec::new(),
                };
                assert_eq!(answer, model.resolve(items), "phase {phase}");
            }
            hs.check_invariants().unwrap();
        }
    }
}

#[test]
fn large_round_robin_pools_keep_their_order_through_removals_and_compaction() {
    large_pool_keeps_model_order(|_| (Policy::RoundRobin, 0), 1);
    large_pool_keeps_model_order(|_| (Policy::RoundRobin, 0), 2);
}

#[test]
fn large_least_used_pools_keep_their_order_through_removals_and_compaction() {
    // Few distinct loads: ties are broken round robin.
    large_pool_keeps_model_order(
        |r| {
            let load = r % 7;
            (Policy::LeastUsed { load }, u64::from(load))
        },
        3,
    );
    large_pool_keeps_model_order(
        |r| {
            let priority = r % 4;
            (
                Policy::Priority { priority },
                u64::from(u32::MAX) - u64::from(priority),
            )
        },
        4,
    );
}

#[test]
fn large_weighted_pools_stay_consistent_through_compaction() {
    for policy in [
        Policy::Random,
        Policy::WeightedRandom { weight: 3 },
        Policy::WeightedRoundRobin { weight: 2 },
    ] {
        let mut hs = Handlespace::new(HandlespaceConfig {
            max_pool_elements_per_pool: 1024,
            ..HandlespaceConfig::default()
        });
        let h = handle("weighted");
        let now = Instant::now();
        for id in 1..=400 {
            hs.register(&h, pe(id, policy), ctx(1, u64::from(id), now))
                .unwrap();
        }
        // Keep every 16th: the slab compacts at a quarter and again at a sixteenth.
        for id in 1..=400 {
            if id % 16 != 0 {
                hs.deregister(&h, PeId(id)).unwrap();
                if id % 50 == 0 {
                    hs.check_invariants().unwrap();
                }
            }
        }
        hs.check_invariants().unwrap();
        let mut seen = BTreeSet::new();
        let mut draws = rng();
        for _ in 0..200 {
            let answer = ids(&hs.resolve(&h, 3, &mut draws).unwrap());
            assert_eq!(answer.len(), 3);
            assert!(answer.iter().all(|id| id % 16 == 0), "{answer:?}");
            seen.extend(answer);
        }
        assert_eq!(seen.len(), 25, "{policy:?}: every survivor is handed out");
        hs.check_invariants().unwrap();
    }
}

#[test]
fn expiry_stays_exact_through_stale_items() {
    let mut hs = Handlespace::new(HandlespaceConfig::default());
    let h = handle("life");
    let t0 = Instant::now();
    let life = |id: u32| 1_000 + id * 10;
    let register = |hs: &mut Handlespace, id: u32, at: Instant| {
        let mut element = pe(id, Policy::RoundRobin);
        element.registration_life_ms = life(id);
        hs.register(&h, element, ctx(1, u64::from(id), at)).unwrap();
    };
    for id in 1..=100 {
        register(&mut hs, id, t0);
    }
    // Re-registrations leave stale items behind, more than the PEs: the index is rebuilt.
    for round in 1..=5u64 {
        for id in 1..=100 {
            register(&mut hs, id, t0 + Duration::from_millis(round));
        }
        hs.check_invariants().unwrap();
    }
    // Removing the PEs that would expire first leaves their items stale at the head.
    for id in 1..=30 {
        hs.deregister(&h, PeId(id)).unwrap();
    }
    hs.check_invariants().unwrap();
    let expected = t0 + Duration::from_millis(5 + u64::from(life(31)));
    assert_eq!(hs.next_expiry(), Some(expected));
    assert!(
        hs.remove_expired(expected - Duration::from_millis(1))
            .is_empty()
    );
    let removed: Vec<u32> = hs
        .remove_expired(expected + Duration::from_millis(10))
        .iter()
        .map(|(_, e)| e.id.0)
        .collect();
    assert_eq!(removed, vec![31, 32]);
    hs.check_invariants().unwrap();
    for id in 33..=100 {
        hs.deregister(&h, PeId(id)).unwrap();
    }
    assert_eq!(hs.next_expiry(), None);
    hs.check_invariants().unwrap();
}

#[test]
fn round_robin_collects_stale_queue_items_and_keeps_its_cycle() {
    let (mut hs, h) = pool_with(
        &(1..=200)
            .map(|id| (id, Policy::RoundRobin))
            .collect::<Vec<_>>(),
        HandlespaceConfig::default(),
    );
    // Every even PE but the last goes, then most odd ones: far more stale queue items than
    // live ones, scattered behind the front.
    for id in (2..200).step_by(2).chain((3..=191).step_by(2)) {
        hs.deregister(&h, PeId(id)).unwrap();
        hs.check_invariants().unwrap();
    }
    let cycle: Vec<u32> = (0..12)
        .map(|_| ids(&hs.resolve(&h, 1, &mut rng()).unwrap())[0])
        .collect();
    assert_eq!(
        cycle,
        [1, 193, 195, 197, 199, 200, 1, 193, 195, 197, 199, 200]
    );
    hs.check_invariants().unwrap();
}
