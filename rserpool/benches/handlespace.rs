//! Handlespace throughput: registration, handle resolution (3 items) per policy, re-registration
//! and association removal, with 10,000 PEs in 100 pools and in one pool.
//!
//! `cargo bench -p rserpool --bench handlespace [-- SECONDS] [--policies] [--compare] [--growth]`:
//! every policy; beside rsplib's own handlespace (built from the shared anchors when its mirror
//! is here, else skipped with a note), in alternating rounds, on the core and on the registrar
//! path (registrator transport, clock, keep-alive timers); the growth to 100,000 PEs.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::SmallRng;
use rserpool::handlespace::{
    ALL_POLICY_KINDS, Handlespace, HandlespaceConfig, PolicyKind, RegistrationContext,
};
use rserpool::registrar::keepalive::{KeepAliveConfig, KeepAliveSupervisor};
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

/// Heap bytes per PE of the registrar path: the handlespace and the keep-alive timers.
fn registrar_path_memory_per_pe(kind: PolicyKind, pools: u32, pes: u32) -> f64 {
    let before = heap_in_use();
    let (_, hs, keepalive) = measure_registrar_path(kind, pools, pes, Duration::ZERO);
    let bytes = heap_in_use() - before;
    drop((hs, keepalive));
    bytes as f64 / f64::from(pes)
}

/// Heap bytes per PE of a handlespace of `pes` PEs of `kind` in `pools` pools (malloc's in-use
/// bytes, as the rsplib harness measures its own).
fn memory_per_pe(kind: PolicyKind, pools: u32, pes: u32) -> f64 {
    let handles = handles(pools);
    let before = heap_in_use();
    let (hs, _) = populate(kind, &handles, pes, Instant::now());
    let bytes = heap_in_use() - before;
    drop(hs);
    bytes as f64 / f64::from(pes)
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

/// How PE `i` registers: owned by registrar 1, over an association of its own.
fn context(i: u32, now: Instant) -> RegistrationContext {
    RegistrationContext {
        owner: 1,
        association: Some(u64::from(i)),
        registrator: None,
        now,
    }
}

/// Registers `pes` PEs spread over `handles`; returns the handlespace and the time taken.
fn populate(
    kind: PolicyKind,
    handles: &[PoolHandle],
    pes: u32,
    now: Instant,
) -> (Handlespace, Duration) {
    // The default limits stop a pool at 65,536 PEs; the growth runs go past that.
    let mut hs = Handlespace::new(HandlespaceConfig {
        max_pool_elements_per_pool: 1 << 20,
        max_pool_elements: 1 << 20,
        ..HandlespaceConfig::default()
    });
    let start = Instant::now();
    for i in 1..=pes {
        let handle = &handles[i as usize % handles.len()];
        hs.register(handle, element(i, policy(kind, i)), context(i, now))
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

/// One measurement of every operation.
#[derive(Clone, Copy, Debug)]
struct Rates {
    register: f64,
    resolve: f64,
    reregister: f64,
    remove: f64,
}

/// Registers `pes` PEs of `kind` in `pools` pools, then measures resolutions (3 items, pool by
/// pool), re-registrations with new values, and the removal of every PE by association (one PE
/// each), as the rsplib harness does.
fn measure(kind: PolicyKind, pools: u32, pes: u32, budget: Duration) -> Rates {
    let handles = handles(pools);
    let now = Instant::now();
    let (mut hs, took) = populate(kind, &handles, pes, now);
    let register = f64::from(pes) / took.as_secs_f64();

    // Into one reused buffer, as rsplib's harness resolves into its array of three pointers;
    // every answer's PEs are copies all the same.
    let mut rng = SmallRng::seed_from_u64(1);
    let mut answer = Vec::with_capacity(3);
    let resolve = rate(budget, |n| {
        let handle = &handles[n as usize % handles.len()];
        answer.clear();
        let policy = hs
            .resolve_into(handle, 3, &mut rng, &mut answer)
            .expect("pool exists");
        black_box((policy, &answer));
    });

    // Load updates: re-registration of existing PEs with new values.
    let reregister = rate(budget, |n| {
        let i = (n % u64::from(pes)) as u32 + 1;
        let handle = &handles[i as usize % handles.len()];
        let r = hs.register(
            handle,
            element(i, policy(kind, i ^ n as u32)),
            context(i, now),
        );
        black_box(r.is_ok());
    });

    let start = Instant::now();
    for i in 1..=pes {
        black_box(hs.remove_association(u64::from(i)));
    }
    let remove = f64::from(pes) / start.elapsed().as_secs_f64();
    assert!(hs.is_empty());
    Rates {
        register,
        resolve,
        reregister,
        remove,
    }
}

/// The registrar path's rates (see [`measure_registrar_path`]).
#[derive(Clone, Copy, Debug)]
struct RegistrarPathRates {
    register: f64,
    reregister: f64,
    remove: f64,
}

/// What the registrar does around the handlespace, as rsplib's harness "registrar path" does
/// around its own: a registration carries the registrator's transport and reads the clock, then
/// the PE's keep-alive timer is (re)started and the next deadline asked for; a removal by
/// association also stops the removed PEs' timers. No messages, logging or ENRP on either side.
fn measure_registrar_path(
    kind: PolicyKind,
    pools: u32,
    pes: u32,
    budget: Duration,
) -> (RegistrarPathRates, Handlespace, KeepAliveSupervisor) {
    let handles = handles(pools);
    let (mut hs, _) = populate(kind, &handles, 0, Instant::now());
    let mut keepalive = KeepAliveSupervisor::new(KeepAliveConfig::default());
    let mut rng = SmallRng::seed_from_u64(2);
    let mut register = |hs: &mut Handlespace, i: u32, load_seed: u32| {
        let now = Instant::now();
        let handle = &handles[i as usize % handles.len()];
        let ctx = RegistrationContext {
            registrator: Some(TransportAddress::Tcp {
                port: 3863,
                address: IpAddr::V4(Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8)),
            }),
            ..context(i, now)
        };
        let r = hs.register(handle, element(i, policy(kind, load_seed)), ctx);
        black_box(r.is_ok());
        keepalive.alive((handle.clone(), PeId(i)), now, &mut rng);
        black_box(keepalive.poll_timeout());
    };
    let start = Instant::now();
    for i in 1..=pes {
        register(&mut hs, i, i);
    }
    let registered = f64::from(pes) / start.elapsed().as_secs_f64();
    let reregister = rate(budget, |n| {
        let i = (n % u64::from(pes)) as u32 + 1;
        register(&mut hs, i, i ^ n as u32);
    });
    let rates = RegistrarPathRates {
        register: registered,
        reregister,
        remove: 0.0,
    };
    (rates, hs, keepalive)
}

/// Removes every PE of a registrar path's handlespace by association, stopping their timers;
/// removals per second.
fn remove_registrar_path(
    pes: u32,
    hs: &mut Handlespace,
    keepalive: &mut KeepAliveSupervisor,
) -> f64 {
    let start = Instant::now();
    for i in 1..=pes {
        for (handle, element) in hs.remove_association(u64::from(i)) {
            keepalive.remove(&(handle, element.id));
        }
    }
    let rate = f64::from(pes) / start.elapsed().as_secs_f64();
    assert!(hs.is_empty() && keepalive.is_empty());
    rate
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// rsplib's in-process handlespace harness (`build-rsplib-handlespace.sh` of the shared
/// anchors): `RSPLIB_HS_BENCH` names a built binary; otherwise the anchors' script builds one
/// into `target/rsplib-hsbench` when it and the rsplib mirror are here.
fn rsplib_harness() -> Result<std::path::PathBuf, String> {
    if let Ok(path) = std::env::var("RSPLIB_HS_BENCH") {
        return Ok(path.into());
    }
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("no workspace directory")?
        .to_path_buf();
    let script = std::env::var("RSPLIB_ANCHORS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| workspace.join("../shared/anchors"))
        .join("build-rsplib-handlespace.sh");
    if !script.exists() {
        return Err(format!("{} not found", script.display()));
    }
    let out = workspace.join("target/rsplib-hsbench");
    let binary = out.join("rsplib_handlespace_bench");
    if binary.exists() {
        return Ok(binary);
    }
    let status = std::process::Command::new(&script)
        .arg("--build-only")
        .env("OUT", &out)
        .status()
        .map_err(|e| format!("{}: {e}", script.display()))?;
    if status.success() && binary.exists() {
        Ok(binary)
    } else {
        Err(format!(
            "{} failed ({status}); is the rsplib mirror here? (search tool: fetch github:dreibh/rsplib)",
            script.display()
        ))
    }
}

/// One figure of rsplib's harness: policy, pools, metric, operations per second.
type RsplibRate = (String, u32, String, f64);

/// One run of rsplib's harness: its rates, and its heap bytes per PE on the core and on the
/// registrar path.
struct RsplibRun {
    rates: Vec<RsplibRate>,
    memory: Option<f64>,
    registrar_memory: Option<f64>,
}

/// rsplib's figures of one run of its harness (`-r 1`).
fn run_rsplib(binary: &std::path::Path, budget: Duration) -> Result<RsplibRun, String> {
    let output = std::process::Command::new(binary)
        .args([
            "-t",
            &budget.as_secs_f64().to_string(),
            "-r",
            "1",
            "-P",
            "100,1",
        ])
        .output()
        .map_err(|e| format!("{}: {e}", binary.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let memory = text.lines().find_map(|line| {
        let after = line.split("heap (malloc in use) ").nth(1)?;
        after.split_whitespace().next()?.parse::<f64>().ok()
    });
    let registrar_memory = text.lines().find_map(|line| {
        let after = line.split("registrar path heap ").nth(1)?;
        after.split_whitespace().next()?.parse::<f64>().ok()
    });
    let mut rates = Vec::new();
    let summary = text
        .split("=== summary")
        .nth(1)
        .ok_or("no summary in rsplib's output")?;
    for line in summary.lines().skip(2) {
        let tokens: Vec<&str> = line.split_whitespace().collect();
        if tokens.len() < 9 {
            continue;
        }
        // policy pools metric... min unit median unit max unit
        let (median, unit) = (tokens[tokens.len() - 4], tokens[tokens.len() - 3]);
        let scale = match unit {
            "M/s" => 1e6,
            "k/s" => 1e3,
            _ => 1.0,
        };
        let (Ok(pools), Ok(median)) = (tokens[1].parse::<u32>(), median.parse::<f64>()) else {
            continue;
        };
        let metric = tokens[2..tokens.len() - 6].join(" ");
        rates.push((tokens[0].to_string(), pools, metric, median * scale));
    }
    Ok(RsplibRun {
        rates,
        memory,
        registrar_memory,
    })
}

/// rsplib and ours on the same work, in alternating rounds; medians side by side.
fn compare_with_rsplib(budget: Duration, rounds: usize) {
    println!("\n== beside rsplib (librsphsmgt, -O2): {rounds} alternating rounds, medians ==");
    let binary = match rsplib_harness() {
        Ok(binary) => binary,
        Err(why) => {
            println!("rsplib's harness skipped: {why}");
            return;
        }
    };
    let cases = [
        (PolicyKind::RoundRobin, "RoundRobin", 100),
        (PolicyKind::LeastUsed, "LeastUsed", 100),
        (PolicyKind::Random, "Random", 100),
        (PolicyKind::RoundRobin, "RoundRobin", 1),
        (PolicyKind::LeastUsed, "LeastUsed", 1),
        (PolicyKind::Random, "Random", 1),
    ];
    let metrics = [
        "register (core)",
        "resolve(3) pool n%pools",
        "re-register (core)",
        "remove assoc (core)",
        "register (registrar path)",
        "re-register (registrar path)",
        "remove assoc (registrar path)",
    ];
    let mut theirs: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); metrics.len()]; cases.len()];
    let mut ours = theirs.clone();
    let (mut their_memory, mut our_memory) = (Vec::new(), Vec::new());
    let (mut their_registrar_memory, mut our_registrar_memory) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let RsplibRun {
            rates,
            memory,
            registrar_memory,
        } = match run_rsplib(&binary, budget) {
            Ok(result) => result,
            Err(why) => {
                println!("rsplib's harness failed: {why}");
                return;
            }
        };
        their_memory.extend(memory);
        their_registrar_memory.extend(registrar_memory);
        for (c, (_, name, pools)) in cases.iter().enumerate() {
            for (m, metric) in metrics.iter().enumerate() {
                if let Some((.., rate)) = rates
                    .iter()
                    .find(|(p, n, x, _)| p == name && n == pools && x == metric)
                {
                    theirs[c][m].push(*rate);
                }
            }
        }
        our_memory.push(memory_per_pe(PolicyKind::RoundRobin, 100, PES));
        our_registrar_memory.push(registrar_path_memory_per_pe(
            PolicyKind::RoundRobin,
            100,
            PES,
        ));
        for (c, (kind, _, pools)) in cases.iter().enumerate() {
            let r = measure(*kind, *pools, PES, budget);
            let (mut p, mut hs, mut keepalive) = measure_registrar_path(*kind, *pools, PES, budget);
            p.remove = remove_registrar_path(PES, &mut hs, &mut keepalive);
            let values = [
                r.register,
                r.resolve,
                r.reregister,
                r.remove,
                p.register,
                p.reregister,
                p.remove,
            ];
            for (m, value) in values.into_iter().enumerate() {
                ours[c][m].push(value);
            }
        }
    }
    println!(
        "{:<12} {:>5}  {:<24} {:>11} {:>11} {:>14}",
        "policy", "pools", "operation", "rsplib", "ours", "ours / rsplib"
    );
    for (c, (_, name, pools)) in cases.iter().enumerate() {
        for (m, metric) in metrics.iter().enumerate() {
            if theirs[c][m].is_empty() {
                continue;
            }
            let (t, o) = (median(&mut theirs[c][m]), median(&mut ours[c][m]));
            println!(
                "{name:<12} {pools:>5}  {metric:<24} {:>11} {:>11} {:>13.2}x",
                fmt_rate(t),
                fmt_rate(o),
                o / t
            );
        }
    }
    if !their_memory.is_empty() {
        let (t, o) = (median(&mut their_memory), median(&mut our_memory));
        println!(
            "memory per PE, 10k RoundRobin PEs in 100 pools: rsplib {t:.0} B, ours {o:.0} B ({:.2}x)",
            o / t
        );
    }
    if !their_registrar_memory.is_empty() {
        let (t, o) = (
            median(&mut their_registrar_memory),
            median(&mut our_registrar_memory),
        );
        println!(
            "memory per PE, the same on the registrar path (with keep-alive timers): rsplib {t:.0} B, ours {o:.0} B ({:.2}x)",
            o / t
        );
    }
}

/// How the costs grow: the same operations with 10 times the PEs, in 10 times the pools (same
/// pool size) and in one pool.
fn growth(budget: Duration) {
    println!("\n== growth: RoundRobin and LeastUsed, pool sizes 100 to 100,000 ==");
    println!(
        "{:<12} {:>8} {:>6} {:>11} {:>11} {:>11} {:>11} {:>9}",
        "policy", "PEs", "pools", "register", "resolve(3)", "re-register", "remove", "B/PE"
    );
    for kind in [PolicyKind::RoundRobin, PolicyKind::LeastUsed] {
        for (pes, pools) in [(10_000, 100), (100_000, 1_000), (10_000, 1), (100_000, 1)] {
            let r = measure(kind, pools, pes, budget);
            println!(
                "{:<12} {pes:>8} {pools:>6} {:>11} {:>11} {:>11} {:>11} {:>9.0}",
                format!("{kind:?}"),
                fmt_rate(r.register),
                fmt_rate(r.resolve),
                fmt_rate(r.reregister),
                fmt_rate(r.remove),
                memory_per_pe(kind, pools, pes),
            );
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let budget = args
        .iter()
        .find_map(|a| a.parse::<f64>().ok())
        .map_or(Duration::from_millis(500), Duration::from_secs_f64);
    let only = |name: &str| args.iter().any(|a| a == name);
    let all = !only("--compare") && !only("--growth") && !only("--policies");
    println!(
        "{PES} PEs; resolve = handle resolution of 3 items (copies, into a reused buffer); {:.1} s per measurement",
        budget.as_secs_f64()
    );
    if all || only("--policies") {
        println!(
            "{:<52} {:>6} {:>13} {:>13} {:>13} {:>13}",
            "policy", "pools", "register", "resolve(3)", "re-register", "remove assoc"
        );
        for pools in [100, 1] {
            for kind in ALL_POLICY_KINDS {
                let r = measure(kind, pools, PES, budget);
                println!(
                    "{:<52} {:>6} {:>13} {:>13} {:>13} {:>13}",
                    format!("{kind:?} ({:#010x})", kind.policy_type()),
                    pools,
                    fmt_rate(r.register),
                    fmt_rate(r.resolve),
                    fmt_rate(r.reregister),
                    fmt_rate(r.remove),
                );
            }
        }
    }
    if all || only("--compare") {
        compare_with_rsplib(budget, 3);
    }
    if all || only("--growth") {
        growth(budget);
    }
}
