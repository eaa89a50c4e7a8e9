//! Handlespace throughput: registration, handle resolution (3 items) per policy, re-registration
//! and association removal, with 10,000 PEs in 100 pools and in one pool.
//!
//! `cargo bench -p rserpool --bench handlespace` (optionally `-- <seconds per measurement>`).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::SmallRng;
use rserpool::handlespace::{
    ALL_POLICY_KINDS, Handlespace, HandlespaceConfig, PolicyKind, RegistrationContext,
};
use rserpool::wire::param::{PeId, PoolElement, PoolHandle, TransportAddress};
use rserpool::wire::policy::Policy;

const PES: u32 = 10_000;

/// glibc's `struct mallinfo2`.
#[repr(C)]
struct MallInfo2 {
    arena: usize,
    ordblks: usize,
    smblks: usize,
    hblks: usize,
    hblkhd: usize,
    usmblks: usize,
    fsmblks: usize,
    uordblks: usize,
    fordblks: usize,
    keepcost: usize,
}

unsafe extern "C" {
    fn mallinfo2() -> MallInfo2;
}

/// Bytes malloc has handed out (chunk headers included), as the rsplib harness counts them.
fn heap_in_use() -> isize {
    // SAFETY: mallinfo2 only reads glibc's allocator statistics.
    let info = unsafe { mallinfo2() };
    (info.uordblks + info.hblkhd) as isize
}

/// Heap bytes per PE of a handlespace of `PES` PEs of `kind` in `pools` pools (malloc's in-use
/// bytes, as the rsplib harness measures its own).
fn memory_per_pe(kind: PolicyKind, pools: u32) -> f64 {
    let handles = handles(pools);
    let before = heap_in_use();
    let (hs, _) = populate(kind, &handles, Instant::now());
    let bytes = heap_in_use() - before;
    drop(hs);
    bytes as f64 / f64::from(PES)
}

fn policy(kind: PolicyKind, i: u32) -> Policy {
    let load = i.wrapping_mul(2_654_435_761) % (u32::MAX / 2);
    let degradation = u32::MAX / 100;
    let weight = i % 10 + 1;
    match kind {
        PolicyKind::RoundRobin => Policy::RoundRobin,
        PolicyKind::WeightedRoundRobin => Policy::WeightedRoundRobin { weight },
        PolicyKind::Random => Policy::Random,
        PolicyKind::WeightedRandom => Policy::WeightedRandom { weight },
        PolicyKind::Priority => Policy::Priority { priority: weight },
        PolicyKind::LeastUsed => Policy::LeastUsed { load },
        PolicyKind::LeastUsedDegradation => Policy::LeastUsedDegradation { load, degradation },
        PolicyKind::PriorityLeastUsed => Policy::PriorityLeastUsed { load, degradation },
        PolicyKind::RandomizedLeastUsed => Policy::RandomizedLeastUsed { load },
        PolicyKind::RandomizedPriorityLeastUsed => {
            Policy::RandomizedPriorityLeastUsed { load, degradation }
        }
        PolicyKind::RandomizedLeastUsedDegradation => {
            Policy::RandomizedLeastUsedDegradation { load, degradation }
        }
        PolicyKind::PriorityLeastUsedDegradation => {
            Policy::PriorityLeastUsedDegradation { load, degradation }
        }
        PolicyKind::RandomizedPriorityLeastUsedDegradation => {
            Policy::RandomizedPriorityLeastUsedDegradation { load, degradation }
        }
        PolicyKind::WeightedRandomDpf => Policy::WeightedRandomDpf {
            weight: weight * 100,
            weight_dpf: u32::MAX / 1000,
            distance: i % 50,
        },
        PolicyKind::LeastUsedDpf => Policy::LeastUsedDpf {
            load,
            load_dpf: u32::MAX / 1000,
            distance: i % 50,
        },
        PolicyKind::LeastUsedDegradationDpf => Policy::LeastUsedDegradationDpf {
            load,
            degradation,
            load_dpf: u32::MAX / 1000,
            distance: i % 50,
        },
    }
}

fn element(id: u32, policy: Policy) -> PoolElement {
    PoolElement {
        id: PeId(id),
        home_registrar: 0,
        registration_life_ms: 30_000,
        user_transport: TransportAddress::Tcp {
            port: (id % 60_000) as u16 + 1,
            address: IpAddr::V4(Ipv4Addr::new(
                10,
                (id >> 16) as u8,
                (id >> 8) as u8,
                id as u8,
            )),
        },
        policy,
        asap_transport: None,
    }
}

fn handles(pools: u32) -> Vec<PoolHandle> {
    (0..pools)
        .map(|p| PoolHandle::new(format!("pool-{p:04}").into_bytes()).expect("short handle"))
        .collect()
}

/// Registers `PES` PEs spread over `handles`; returns the handlespace and the time taken.
fn populate(kind: PolicyKind, handles: &[PoolHandle], now: Instant) -> (Handlespace, Duration) {
    let mut hs = Handlespace::new(HandlespaceConfig::default());
    let start = Instant::now();
    for i in 1..=PES {
        let handle = &handles[i as usize % handles.len()];
        let ctx = RegistrationContext {
            owner: 1,
            association: Some(u64::from(i)),
            registrator: None,
            now,
        };
        hs.register(handle, element(i, policy(kind, i)), ctx)
            .expect("registers");
    }
    (hs, start.elapsed())
}

/// Runs `op` in batches until `budget` has passed; returns operations per second.
fn rate(budget: Duration, mut op: impl FnMut(u64)) -> f64 {
    let start = Instant::now();
    let mut done = 0u64;
    while start.elapsed() < budget {
        for _ in 0..1_000 {
            op(done);
            done += 1;
        }
    }
    done as f64 / start.elapsed().as_secs_f64()
}

fn fmt_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2} M/s", r / 1e6)
    } else {
        format!("{:.0} k/s", r / 1e3)
    }
}

fn main() {
    let budget = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<f64>().ok())
        .map_or(Duration::from_millis(500), Duration::from_secs_f64);
    let now = Instant::now();
    println!(
        "{PES} PEs; resolve = handle resolution of 3 items; {:.1} s per measurement",
        budget.as_secs_f64()
    );
    println!(
        "{:<52} {:>6} {:>13} {:>13} {:>13} {:>13}",
        "policy", "pools", "register", "resolve(3)", "re-register", "remove assoc"
    );
    for (kind, pools) in [
        (PolicyKind::RoundRobin, 100),
        (PolicyKind::LeastUsed, 100),
        (PolicyKind::RoundRobin, 1),
    ] {
        println!(
            "memory: {kind:?}, {PES} PEs in {pools} pools: {:.0} B/PE on the heap",
            memory_per_pe(kind, pools)
        );
    }
    for pools in [100, 1] {
        let handles = handles(pools);
        for kind in ALL_POLICY_KINDS {
            let (mut hs, took) = populate(kind, &handles, now);
            let register = f64::from(PES) / took.as_secs_f64();

            let mut rng = SmallRng::seed_from_u64(1);
            let resolve = rate(budget, |n| {
                let handle = &handles[n as usize % handles.len()];
                let r = hs.resolve(handle, 3, &mut rng).expect("pool exists");
                black_box(r);
            });

            // Load updates: re-registration of existing PEs with new values.
            let reregister = rate(budget, |n| {
                let i = (n % u64::from(PES)) as u32 + 1;
                let handle = &handles[i as usize % handles.len()];
                let ctx = RegistrationContext {
                    owner: 1,
                    association: Some(u64::from(i)),
                    registrator: None,
                    now,
                };
                let r = hs.register(handle, element(i, policy(kind, i ^ n as u32)), ctx);
                black_box(r.is_ok());
            });

            // Association closes (one PE each), then the handlespace is empty.
            let start = Instant::now();
            for i in 1..=PES {
                black_box(hs.remove_association(u64::from(i)));
            }
            let remove = f64::from(PES) / start.elapsed().as_secs_f64();
            assert!(hs.is_empty());

            println!(
                "{:<52} {:>6} {:>13} {:>13} {:>13} {:>13}",
                format!("{kind:?} ({:#010x})", kind.policy_type()),
                pools,
                fmt_rate(register),
                fmt_rate(resolve),
                fmt_rate(reregister),
                fmt_rate(remove),
            );
        }
    }
}
