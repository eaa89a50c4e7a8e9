//! Property tests: random operation sequences against a simple model; every index, selection
//! structure and checksum is re-verified from scratch after each step.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::tests::{handle, pe};
use super::*;

const POOLS: [&str; 4] = ["a", "bb", "ccc", "dddd"];

#[derive(Clone, Debug)]
enum Op {
    Register {
        pool: usize,
        id: u32,
        /// 0..=2: the pool's designated policy kind; 3: some other kind.
        kind_choice: u8,
        /// 0..=4: TCP; 5: UDP (inconsistent in TCP pools).
        transport: u8,
        values: [u32; 4],
        association: u64,
        owner: u32,
        life: u32,
    },
    Deregister {
        pool: usize,
        id: u32,
    },
    Resolve {
        pool: usize,
        items: usize,
        seed: u64,
    },
    RemoveAssociation(u64),
    ReportUnreachable {
        pool: usize,
        id: u32,
        reporter: u64,
        threshold: usize,
    },
    TransferOwnership {
        from: u32,
        to: u32,
    },
    RemoveOwnedBy(u32),
    Expire {
        after_ms: u64,
    },
}

fn value() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0u32), Just(u32::MAX), 0u32..10, any::<u32>()]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (
            0..POOLS.len(),
            0u32..12,
            0u8..4,
            0u8..6,
            [value(), value(), value(), value()],
            0u64..4,
            1u32..4,
            prop_oneof![Just(u32::MAX), 1_000u32..10_000],
        )
            .prop_map(|(pool, id, kind_choice, transport, values, association, owner, life)| {
                Op::Register { pool, id, kind_choice, transport, values, association, owner, life }
            }),
        2 => (0..POOLS.len(), 0u32..12).prop_map(|(pool, id)| Op::Deregister { pool, id }),
        4 => (0..POOLS.len(), 0usize..14, any::<u64>())
            .prop_map(|(pool, items, seed)| Op::Resolve { pool, items, seed }),
        1 => (0u64..4).prop_map(Op::RemoveAssociation),
        2 => (0..POOLS.len(), 0u32..12, 0u64..4, 0usize..4)
            .prop_map(|(pool, id, reporter, threshold)| Op::ReportUnreachable { pool, id, reporter, threshold }),
        1 => (1u32..4, 1u32..4).prop_map(|(from, to)| Op::TransferOwnership { from, to }),
        1 => (1u32..4).prop_map(Op::RemoveOwnedBy),
        1 => (0u64..12_000).prop_map(|after_ms| Op::Expire { after_ms }),
    ]
}

fn make_policy(kind: PolicyKind, v: [u32; 4]) -> Policy {
    match kind {
        PolicyKind::RoundRobin => Policy::RoundRobin,
        PolicyKind::WeightedRoundRobin => Policy::WeightedRoundRobin { weight: v[0] },
        PolicyKind::Random => Policy::Random,
        PolicyKind::WeightedRandom => Policy::WeightedRandom { weight: v[0] },
        PolicyKind::Priority => Policy::Priority { priority: v[0] },
        PolicyKind::LeastUsed => Policy::LeastUsed { load: v[0] },
        PolicyKind::LeastUsedDegradation => Policy::LeastUsedDegradation {
            load: v[0],
            degradation: v[1],
        },
        PolicyKind::PriorityLeastUsed => Policy::PriorityLeastUsed {
            load: v[0],
            degradation: v[1],
        },
        PolicyKind::RandomizedLeastUsed => Policy::RandomizedLeastUsed { load: v[0] },
        PolicyKind::RandomizedPriorityLeastUsed => Policy::RandomizedPriorityLeastUsed {
            load: v[0],
            degradation: v[1],
        },
        PolicyKind::RandomizedLeastUsedDegradation => Policy::RandomizedLeastUsedDegradation {
            load: v[0],
            degradation: v[1],
        },
        PolicyKind::PriorityLeastUsedDegradation => Policy::PriorityLeastUsedDegradation {
            load: v[0],
            degradation: v[1],
        },
        PolicyKind::RandomizedPriorityLeastUsedDegradation => {
            Policy::RandomizedPriorityLeastUsedDegradation {
                load: v[0],
                degradation: v[1],
            }
        }
        PolicyKind::WeightedRandomDpf => Policy::WeightedRandomDpf {
            weight: v[0],
            weight_dpf: v[1],
            distance: v[2],
        },
        PolicyKind::LeastUsedDpf => Policy::LeastUsedDpf {
            load: v[0],
            load_dpf: v[1],
            distance: v[2],
        },
        PolicyKind::LeastUsedDegradationDpf => Policy::LeastUsedDegradationDpf {
            load: v[0],
            degradation: v[1],
            load_dpf: v[2],
            distance: v[3],
        },
    }
}

/// Whether a PE with this policy may be handed out (weight 0 = cannot serve).
fn selectable(policy: &Policy) -> bool {
    !matches!(
        policy,
        Policy::WeightedRoundRobin { weight: 0 }
            | Policy::WeightedRandom { weight: 0 }
            | Policy::WeightedRandomDpf { weight: 0, .. }
    )
}

#[derive(Clone, Debug)]
struct ModelPe {
    policy: Policy,
    association: u64,
    owner: u32,
    expires: Option<Instant>,
    reporters: BTreeSet<u64>,
}

#[derive(Clone, Debug)]
struct ModelPool {
    kind: PolicyKind,
    udp: bool,
    pes: BTreeMap<u32, ModelPe>,
}

#[derive(Default)]
struct Model {
    pools: BTreeMap<usize, ModelPool>,
}

impl Model {
    fn remove(&mut self, pool: usize, id: u32) -> bool {
        let Some(p) = self.pools.get_mut(&pool) else {
            return false;
        };
        let removed = p.pes.remove(&id).is_some();
        if p.pes.is_empty() {
            self.pools.remove(&pool);
        }
        removed
    }

    fn members(&self) -> Vec<(usize, u32)> {
        self.pools
            .iter()
            .flat_map(|(p, pool)| pool.pes.keys().map(move |id| (*p, *id)))
            .collect()
    }

    fn remove_where(&mut self, pred: impl Fn(&ModelPe) -> bool) -> BTreeSet<(usize, u32)> {
        let doomed: BTreeSet<(usize, u32)> = self
            .pools
            .iter()
            .flat_map(|(p, pool)| {
                pool.pes
                    .iter()
                    .filter(|(_, pe)| pred(pe))
                    .map(move |(id, _)| (*p, *id))
            })
            .collect();
        for (p, id) in &doomed {
            self.remove(*p, *id);
        }
        doomed
    }
}

fn removed_set(
    removed: &[(PoolHandle, PoolElement)],
    handles: &[PoolHandle],
) -> BTreeSet<(usize, u32)> {
    removed
        .iter()
        .map(|(h, e)| {
            (
                handles.iter().position(|x| x == h).expect("known handle"),
                e.id.0,
            )
        })
        .collect()
}

fn run(
    ops: Vec<Op>,
    pool_kinds: [usize; 4],
    max_increment: Option<usize>,
    foreign_reregistration: ForeignReregistration,
) -> Result<(), TestCaseError> {
    let config = HandlespaceConfig {
        max_pool_elements_per_pool: 8,
        max_unreachable_reporters: 3,
        max_increment,
        foreign_reregistration,
        ..HandlespaceConfig::default()
    };
    let mut hs = Handlespace::new(config);
    let mut model = Model::default();
    let handles: Vec<PoolHandle> = POOLS.iter().map(|n| handle(n)).collect();
    let t0 = Instant::now();
    let mut now = t0;

    for op in ops {
        match op {
            Op::Register {
                pool,
                id,
                kind_choice,
                transport,
                values,
                association,
                owner,
                life,
            } => {
                let designated = ALL_POLICY_KINDS[pool_kinds[pool] % ALL_POLICY_KINDS.len()];
                let kind = if kind_choice < 3 {
                    designated
                } else {
                    ALL_POLICY_KINDS
                        [(pool_kinds[pool] + 1 + values[3] as usize % 15) % ALL_POLICY_KINDS.len()]
                };
                let policy = make_policy(kind, values);
                let mut element = pe(id, policy);
                element.registration_life_ms = life;
                let udp = transport == 5;
                if udp {
                    element.user_transport = TransportAddress::Udp {
                        port: 7,
                        address: IpAddr::V4(Ipv4Addr::LOCALHOST),
                    };
                }
                let ctx = RegistrationContext {
                    owner,
                    association: Some(association),
                    registrator: None,
                    now,
                };
                let result = hs.register(&handles[pool], element, ctx);
                let expected_error = if id == 0 {
                    Some(CauseCode(0x3))
                } else if let Some(p) = model.pools.get(&pool) {
                    if p.kind != kind {
                        Some(CauseCode(0x5))
                    } else if p.udp != udp {
                        Some(CauseCode(0x7))
                    } else if foreign_reregistration == ForeignReregistration::Reject
                        && p.pes
                            .get(&id)
                            .is_some_and(|pe| pe.association != association)
                    {
                        Some(CauseCode(0x4))
                    } else if !p.pes.contains_key(&id) && p.pes.len() >= 8 {
                        Some(CauseCode(0x6))
                    } else {
                        None
                    }
                } else {
                    None
                };
                match (&result, expected_error) {
                    (Err(e), Some(code)) => prop_assert_eq!(e.cause_code(), code),
                    (Ok(outcome), None) => {
                        let p = model.pools.entry(pool).or_insert(ModelPool {
                            kind,
                            udp,
                            pes: BTreeMap::new(),
                        });
                        let expires = (life != u32::MAX)
                            .then(|| now + Duration::from_millis(u64::from(life)));
                        let previous = p.pes.get(&id).cloned();
                        match previous {
                            Some(prev) => {
                                prop_assert_eq!(
                                    outcome,
                                    &RegistrationOutcome::Updated {
                                        previous_owner: prev.owner,
                                        previous_association: Some(prev.association),
                                    }
                                );
                                p.pes.insert(
                                    id,
                                    ModelPe {
                                        policy,
                                        association,
                                        owner,
                                        expires,
                                        reporters: prev.reporters,
                                    },
                                );
                            }
                            None => {
                                prop_assert_eq!(outcome, &RegistrationOutcome::New);
                                p.pes.insert(
                                    id,
                                    ModelPe {
                                        policy,
                                        association,
                                        owner,
                                        expires,
                                        reporters: BTreeSet::new(),
                                    },
                                );
                            }
                        }
                        let entry = hs.get(&handles[pool], PeId(id)).expect("registered");
                        prop_assert_eq!(entry.degradation(), 0);
                        prop_assert_eq!(entry.element().policy, policy);
                    }
                    (result, expected) => {
                        return Err(TestCaseError::fail(format!(
                            "register: got {result:?}, expected {expected:?}"
                        )));
                    }
                }
            }
            Op::Deregister { pool, id } => {
                let removed = hs.deregister(&handles[pool], PeId(id));
                prop_assert_eq!(removed.is_some(), model.remove(pool, id));
            }
            Op::Resolve { pool, items, seed } => {
                let mut rng = StdRng::seed_from_u64(seed);
                match (
                    hs.resolve(&handles[pool], items, &mut rng),
                    model.pools.get(&pool),
                ) {
                    (Err(UnknownPool), None) => {}
                    (Ok(resolution), Some(p)) => {
                        let answer: Vec<u32> = resolution.elements.iter().map(|e| e.id.0).collect();
                        let distinct: BTreeSet<u32> = answer.iter().copied().collect();
                        prop_assert_eq!(distinct.len(), answer.len(), "duplicates: {:?}", answer);
                        let can_serve = p.pes.values().filter(|pe| selectable(&pe.policy)).count();
                        prop_assert_eq!(answer.len(), items.min(can_serve));
                        for id in &answer {
                            let member = p.pes.get(id);
                            prop_assert!(
                                member.is_some_and(|pe| selectable(&pe.policy)),
                                "stranger {}",
                                id
                            );
                        }
                        prop_assert_eq!(PolicyKind::of(&resolution.policy), p.kind);
                    }
                    (got, model_pool) => {
                        return Err(TestCaseError::fail(format!(
                            "resolve: {got:?} vs model {model_pool:?}"
                        )));
                    }
                }
            }
            Op::RemoveAssociation(key) => {
                let removed = removed_set(&Vec::from(hs.remove_association(key)), &handles);
                prop_assert_eq!(removed, model.remove_where(|pe| pe.association == key));
            }
            Op::ReportUnreachable {
                pool,
                id,
                reporter,
                threshold,
            } => {
                let outcome = hs.report_unreachable(&handles[pool], PeId(id), reporter, threshold);
                match model.pools.get_mut(&pool).and_then(|p| p.pes.get_mut(&id)) {
                    None => prop_assert_eq!(outcome, UnreachableOutcome::UnknownPe),
                    Some(m) => {
                        if m.reporters.len() < 3 {
                            m.reporters.insert(reporter);
                        }
                        let n = m.reporters.len();
                        if n >= threshold.max(1) {
                            prop_assert!(
                                matches!(outcome, UnreachableOutcome::Removed(ref e) if e.id.0 == id)
                            );
                            model.remove(pool, id);
                        } else {
                            prop_assert_eq!(outcome, UnreachableOutcome::Counted(n));
                        }
                    }
                }
            }
            Op::TransferOwnership { from, to } => {
                let moved: BTreeSet<(usize, u32)> = hs
                    .transfer_ownership(from, to)
                    .iter()
                    .map(|(h, id)| (handles.iter().position(|x| x == h).expect("known"), id.0))
                    .collect();
                let mut expected = BTreeSet::new();
                for (p, pool) in model.pools.iter_mut() {
                    for (id, pe) in pool.pes.iter_mut() {
                        if pe.owner == from {
                            pe.owner = to;
                            expected.insert((*p, *id));
                        }
                    }
                }
                prop_assert_eq!(moved, expected);
            }
            Op::RemoveOwnedBy(owner) => {
                let removed = removed_set(&hs.remove_owned_by(owner), &handles);
                prop_assert_eq!(removed, model.remove_where(|pe| pe.owner == owner));
            }
            Op::Expire { after_ms } => {
                now += Duration::from_millis(after_ms);
                let removed = removed_set(&hs.remove_expired(now), &handles);
                prop_assert_eq!(
                    removed,
                    model.remove_where(|pe| pe.expires.is_some_and(|at| at <= now))
                );
            }
        }

        // Everything, recomputed from scratch.
        if let Err(violation) = hs.check_invariants() {
            return Err(TestCaseError::fail(violation));
        }
        // Checksums against an independent computation from the model.
        let mut overall = HandlespaceChecksum::new();
        let mut per_owner: BTreeMap<u32, HandlespaceChecksum> = BTreeMap::new();
        for (p, pool) in &model.pools {
            for (id, pe) in &pool.pes {
                overall.add(&handles[*p], PeId(*id));
                per_owner
                    .entry(pe.owner)
                    .or_default()
                    .add(&handles[*p], PeId(*id));
            }
        }
        prop_assert_eq!(hs.checksum(), overall.value());
        for owner in 0..5 {
            prop_assert_eq!(
                hs.owner_checksum(owner),
                per_owner.get(&owner).copied().unwrap_or_default().value()
            );
        }
        prop_assert_eq!(hs.pool_element_count(), model.members().len());
        prop_assert_eq!(hs.pool_count(), model.pools.len());
        for (p, pool) in &model.pools {
            for (id, pe) in &pool.pes {
                let entry = hs
                    .get(&handles[*p], PeId(*id))
                    .expect("model member present");
                prop_assert_eq!(entry.owner(), pe.owner);
                prop_assert_eq!(entry.association(), Some(pe.association));
                prop_assert_eq!(entry.expires_at(), pe.expires);
                prop_assert_eq!(entry.unreachable_reports(), pe.reporters.len());
            }
        }
    }
    Ok(())
}

/// RFC 1071 over the concatenated RFC 5353 §3.6.2 blocks, computed the plain way.
fn checksum_from_scratch(members: &[(Vec<u8>, u32)]) -> u16 {
    let mut bytes = Vec::new();
    for (handle, id) in members {
        bytes.extend_from_slice(handle);
        bytes.resize(bytes.len().next_multiple_of(4), 0);
        bytes.extend_from_slice(&id.to_be_bytes());
    }
    let mut sum: u32 = 0;
    for word in bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([
            word[0],
            word.get(1).copied().unwrap_or(0),
        ]));
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_operations_keep_every_index_consistent(
        ops in prop::collection::vec(op(), 1..120),
        pool_kinds in [0usize..16, 0usize..16, 0usize..16, 0usize..16],
        max_increment in prop_oneof![Just(None), (0usize..4).prop_map(Some)],
        reject_foreign in any::<bool>(),
    ) {
        let foreign = if reject_foreign {
            ForeignReregistration::Reject
        } else {
            ForeignReregistration::Update
        };
        run(ops, pool_kinds, max_increment, foreign)?;
    }

    #[test]
    fn incremental_checksum_equals_rfc1071_from_scratch(
        members in prop::collection::btree_set((prop::collection::vec(any::<u8>(), 1..=32), any::<u32>()), 0..40),
        removals in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
    ) {
        let mut members: Vec<(Vec<u8>, u32)> = members.into_iter().collect();
        let mut checksum = HandlespaceChecksum::new();
        for (h, id) in &members {
            checksum.add(&PoolHandle::new(h.clone()).expect("1..=32 bytes"), PeId(*id));
        }
        prop_assert_eq!(checksum.value(), checksum_from_scratch(&members));
        for index in removals {
            if members.is_empty() {
                break;
            }
            let (h, id) = members.remove(index.index(members.len()));
            checksum.remove(&PoolHandle::new(h).expect("1..=32 bytes"), PeId(id));
            prop_assert_eq!(checksum.value(), checksum_from_scratch(&members));
        }
    }
}
