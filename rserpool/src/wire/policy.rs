//! Pool member selection policies (RFC 5356 and rsplib's private ones) as carried on the wire.
//!
//! Loads, degradations and DPF factors are fractions of `u32::MAX` (0 = 0 %, `u32::MAX` = 100 %),
//! as in RFC 5356 §3.1. Which PE a policy picks is decided in `crate::handlespace`, not here.

/// A pool member selection policy with its per-PE values (the value of a Policy parameter, 0x8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Policy {
    /// 0x00000001, RFC 5356 §4.1.
    RoundRobin,
    /// 0x00000002, RFC 5356 §4.2.
    WeightedRoundRobin { weight: u32 },
    /// 0x00000003, RFC 5356 §4.3.
    Random,
    /// 0x00000004, RFC 5356 §4.4.
    WeightedRandom { weight: u32 },
    /// 0x00000005, RFC 5356 §4.5; a bigger priority is better.
    Priority { priority: u32 },
    /// 0x40000001, RFC 5356 §4.6.
    LeastUsed { load: u32 },
    /// 0x40000002, RFC 5356 §4.7.
    LeastUsedDegradation { load: u32, degradation: u32 },
    /// 0x40000003, RFC 5356 §4.8.
    PriorityLeastUsed { load: u32, degradation: u32 },
    /// 0x40000004, RFC 5356 §4.9.
    RandomizedLeastUsed { load: u32 },
    /// 0xb0001001, rsplib.
    RandomizedPriorityLeastUsed { load: u32, degradation: u32 },
    /// 0xb0001002, rsplib.
    RandomizedLeastUsedDegradation { load: u32, degradation: u32 },
    /// 0xb0001003, rsplib.
    PriorityLeastUsedDegradation { load: u32, degradation: u32 },
    /// 0xb0001004, rsplib.
    RandomizedPriorityLeastUsedDegradation { load: u32, degradation: u32 },
    /// 0xb0002001, rsplib (draft-dreibholz-rserpool-delay).
    WeightedRandomDpf { weight: u32, weight_dpf: u32, distance: u32 },
    /// 0xb0002002, rsplib.
    LeastUsedDpf { load: u32, load_dpf: u32, distance: u32 },
    /// 0xb0002003, rsplib.
    LeastUsedDegradationDpf { load: u32, degradation: u32, load_dpf: u32, distance: u32 },
}
