//! A PE's capacity and how it reaches the pool: the load, load degradation and weight it
//! registers are derived from its iterations per second, so that the pool's policies prefer
//! faster PEs.
//!
//! * **Load** (Least-Used family) = sessions × `d`, where `d` = [`REFERENCE_CAPACITY`] ÷
//!   capacity is the load one session adds: a session on a PE twice as fast counts half. (rsplib
//!   reports sessions ÷ MaxThreads, blind to speed.)
//! * **Load degradation** (LUD, PLU and their variants) = `d`, unless `--policy` gives one
//!   (`PriorityLeastUsed:0.05`): what one more session will add, which is what PLU adds to the
//!   load to rank PEs and what LUD adds per selection.
//! * **Weight** (WRR, WRAND) = capacity in thousands of iterations per second, unless `--policy`
//!   gives one (`WeightedRoundRobin:3`).
//!
//! A PE without `--capacity` measures its own at start ([`measure`]): the fast kernel on one of
//! its threads, times its threads.

use std::time::{Duration, Instant};

use fractal_protocol::kernel::{KernelChoice, View};
use fractal_protocol::preset::Preset;
use rserpool::wire::Policy;
use rserpool::wire::policy::fraction_to_wire;

/// The capacity (iterations per second) at which one session is a full load.
pub const REFERENCE_CAPACITY: f64 = 1e6;
/// Iterations per second per unit of weight.
pub const WEIGHT_UNIT: f64 = 1e3;

/// `--policy`: a policy, and whether its weight or load degradation is to come from the
/// capacity because the text left it out (`WeightedRoundRobin`, `PriorityLeastUsed`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicySpec {
    pub policy: Policy,
    pub from_capacity: bool,
}

impl std::str::FromStr for PolicySpec {
    type Err = String;

    /// rsplib's grammar (`LeastUsed`, `WeightedRoundRobin:3`, `Priority:5`), where a weight or
    /// load degradation may be left out to be derived from the capacity.
    fn from_str(text: &str) -> Result<PolicySpec, String> {
        match text.parse::<Policy>() {
            Ok(policy) => Ok(PolicySpec {
                policy,
                from_capacity: false,
            }),
            Err(error) => {
                // The same name with a placeholder value: a weight or degradation left out.
                let derived = (!text.contains(':'))
                    .then(|| format!("{}:1", text.trim()).parse::<Policy>().ok())
                    .flatten()
                    .filter(|policy| policy.weight().is_some() || policy.degradation().is_some());
                derived
                    .map(|policy| PolicySpec {
                        policy,
                        from_capacity: true,
                    })
                    .ok_or_else(|| error.to_string())
            }
        }
    }
}

/// The load one session adds on a PE of `capacity` iterations per second, in [0, 1].
pub fn session_load(capacity: u64) -> f64 {
    (REFERENCE_CAPACITY / capacity.max(1) as f64).min(1.0)
}

/// The load of `sessions` sessions, in [0, 1].
pub fn load(sessions: usize, capacity: u64) -> f64 {
    (sessions as f64 * session_load(capacity)).min(1.0)
}

/// The weight of a PE of `capacity` iterations per second (at least 1).
pub fn weight(capacity: u64) -> u32 {
    (capacity as f64 / WEIGHT_UNIT)
        .round()
        .clamp(1.0, f64::from(u32::MAX)) as u32
}

/// The policy to register: `spec`'s, with the weight or load degradation it left out derived
/// from `capacity`.
pub fn registered_policy(spec: PolicySpec, capacity: u64) -> Policy {
    let mut policy = spec.policy;
    if !spec.from_capacity {
        return policy;
    }
    let degradation = fraction_to_wire(session_load(capacity)).unwrap_or(u32::MAX);
    match &mut policy {
        Policy::WeightedRoundRobin { weight: w }
        | Policy::WeightedRandom { weight: w }
        | Policy::WeightedRandomDpf { weight: w, .. } => *w = weight(capacity),
        Policy::LeastUsedDegradation { degradation: d, .. }
        | Policy::PriorityLeastUsed { degradation: d, .. }
        | Policy::RandomizedPriorityLeastUsed { degradation: d, .. }
        | Policy::RandomizedLeastUsedDegradation { degradation: d, .. }
        | Policy::PriorityLeastUsedDegradation { degradation: d, .. }
        | Policy::RandomizedPriorityLeastUsedDegradation { degradation: d, .. }
        | Policy::LeastUsedDegradationDpf { degradation: d, .. } => *d = degradation,
        _ => {}
    }
    policy
}

/// The capacity a PE advertises through `policy` under these conventions: its weight times
/// [`WEIGHT_UNIT`], or [`REFERENCE_CAPACITY`] over its load degradation (below 100 %). `None`
/// for policies that carry neither. (A PE that gave its weight or degradation by hand, or an
/// rsplib PE, advertises what that implies.)
pub fn advertised_capacity(policy: &Policy) -> Option<f64> {
    if let Some(weight) = policy.weight() {
        return Some(f64::from(weight) * WEIGHT_UNIT);
    }
    let degradation = policy.degradation()?;
    (degradation > 0 && degradation < u32::MAX)
        .then(|| REFERENCE_CAPACITY / rserpool::wire::policy::fraction_from_wire(degradation))
}

/// How long [`measure`] computes.
const MEASURE_FOR: Duration = Duration::from_millis(20);

/// Measures the capacity of `threads` computing threads: the fast kernel on this thread for
/// about 20 ms (the full Mandelbrot set at 1000 iterations), times `threads`. An estimate: other
/// work on the machine makes it low, threads beyond the free cores make it high.
pub fn measure(threads: usize, kernel: KernelChoice) -> u64 {
    let mut view = Preset::default().parameter(96, 64);
    view.max_iterations = 1000;
    let view = View::new(&view, kernel);
    let mut values = vec![0u32; view.pixel_count() as usize];
    let started = Instant::now();
    let mut iterations = 0u64;
    while started.elapsed() < MEASURE_FOR {
        iterations += view.compute((0, 0), &mut values).unwrap_or(0);
    }
    let rate = iterations as f64 / started.elapsed().as_secs_f64();
    (rate * threads.max(1) as f64).round().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use rserpool::wire::policy::fraction_from_wire;

    fn spec(text: &str) -> PolicySpec {
        text.parse().expect("policy")
    }

    #[test]
    fn left_out_weights_and_degradations_come_from_the_capacity() {
        assert_eq!(
            spec("WeightedRoundRobin:3"),
            PolicySpec {
                policy: Policy::WeightedRoundRobin { weight: 3 },
                from_capacity: false
            }
        );
        assert!(spec("WeightedRoundRobin").from_capacity);
        assert!(spec("PriorityLeastUsed").from_capacity);
        assert!(!spec("LeastUsed").from_capacity);
        assert!("Nonsense".parse::<PolicySpec>().is_err());
        assert!(
            "Priority".parse::<PolicySpec>().is_err(),
            "a priority is never derived"
        );

        let fast = registered_policy(spec("WeightedRandom"), 60_000_000);
        assert_eq!(fast, Policy::WeightedRandom { weight: 60_000 });
        let given = registered_policy(spec("WeightedRandom:7"), 60_000_000);
        assert_eq!(given, Policy::WeightedRandom { weight: 7 });
        let plu = registered_policy(spec("PriorityLeastUsed"), 8_000_000);
        let degradation = fraction_from_wire(plu.degradation().expect("degradation"));
        assert!((degradation - 0.125).abs() < 1e-9, "{degradation}");
        // What the pool learns back.
        let advertised = advertised_capacity(&plu).expect("advertised");
        assert!((advertised - 8e6).abs() < 1.0, "{advertised}");
        assert_eq!(advertised_capacity(&fast), Some(60e6));
        assert_eq!(advertised_capacity(&Policy::LeastUsed { load: 0 }), None);
    }

    #[test]
    fn a_faster_pe_counts_each_session_less() {
        assert!((load(4, 8_000_000) - 0.5).abs() < 1e-12);
        assert!((load(4, 60_000_000) - 4.0 / 60.0).abs() < 1e-12);
        assert_eq!(load(3, 1_000), 1.0, "saturates");
        assert_eq!(weight(1), 1);
        assert_eq!(weight(8_000_000), 8_000);
    }

    #[test]
    fn a_measured_capacity_is_plausible() {
        // Any machine this runs on does 10^6 to 10^11 iterations per second per thread, even
        // loaded and unoptimised.
        let one = measure(1, KernelChoice::Fast);
        assert!((1_000_000..100_000_000_000).contains(&one), "{one}");
    }
}
