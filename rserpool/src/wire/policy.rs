//! Pool member selection policies (RFC 5356 and rsplib's private ones) as carried on the wire.
//!
//! Loads, degradations and DPF factors are fractions of `u32::MAX` (0 = 0 %, `u32::MAX` = 100 %),
//! as in RFC 5356 §3.1. Which PE a policy picks is decided in `crate::handlespace`, not here.
//!
//! Wire layout (RFC 5356 §4-5, rsplib `rserpoolmessagecreator.c`, Wireshark `POLICY_*_OFFSET`):
//! the Policy Type u32 is followed by the per-PE u32 fields in the order of the variant's
//! fields below. Two deviations from rsplib, both compatible with its lenient parser (it reads
//! the fields it knows and skips the rest): rsplib sends Priority Least Used (0x40000003) and
//! Randomized Priority Least Used (0xb0001001) with the load only; we send the load degradation
//! too, as RFC 5356 §5.3.4 defines for PLU, and accept both forms (a missing degradation reads
//! as 0). rsplib's 0xb0002004 (PLU-DPF) and 0xb0002005 (PLUD-DPF) have no wire format (its
//! creator aborts on them) and are rejected as unsupported.
//!
//! [`Policy`]'s `FromStr`/`Display` use rsplib's `-policy=` grammar, e.g. `RoundRobin`,
//! `WeightedRoundRobin:3`, `Priority:5`, `LeastUsedDegradation:0.05`,
//! `WeightedRandomDPF:10:0.25`; degradations and DPF factors are fractions in [0, 1]. Loads and
//! distances are run-time values set by the PE and the registrar: they parse as 0 and are not
//! shown.

use std::fmt;
use std::str::FromStr;

use super::buf::{Reader, Writer};
use super::error::{EncodeError, WireError};
use super::param::{Tlv, param_type};

/// Policy type codes (RFC 5356 §7.1: bit 31 = private, bit 30 = adaptive).
pub mod policy_type {
    pub const ROUND_ROBIN: u32 = 0x0000_0001;
    pub const WEIGHTED_ROUND_ROBIN: u32 = 0x0000_0002;
    pub const RANDOM: u32 = 0x0000_0003;
    pub const WEIGHTED_RANDOM: u32 = 0x0000_0004;
    pub const PRIORITY: u32 = 0x0000_0005;
    pub const LEAST_USED: u32 = 0x4000_0001;
    pub const LEAST_USED_DEGRADATION: u32 = 0x4000_0002;
    pub const PRIORITY_LEAST_USED: u32 = 0x4000_0003;
    pub const RANDOMIZED_LEAST_USED: u32 = 0x4000_0004;
    pub const RANDOMIZED_PRIORITY_LEAST_USED: u32 = 0xb000_1001;
    pub const RANDOMIZED_LEAST_USED_DEGRADATION: u32 = 0xb000_1002;
    pub const PRIORITY_LEAST_USED_DEGRADATION: u32 = 0xb000_1003;
    pub const RANDOMIZED_PRIORITY_LEAST_USED_DEGRADATION: u32 = 0xb000_1004;
    pub const WEIGHTED_RANDOM_DPF: u32 = 0xb000_2001;
    pub const LEAST_USED_DPF: u32 = 0xb000_2002;
    pub const LEAST_USED_DEGRADATION_DPF: u32 = 0xb000_2003;
    /// rsplib selection code only; not encodable.
    pub const PRIORITY_LEAST_USED_DPF: u32 = 0xb000_2004;
    /// rsplib selection code only; not encodable.
    pub const PRIORITY_LEAST_USED_DEGRADATION_DPF: u32 = 0xb000_2005;
    /// Bit 30: the policy uses load information (RFC 5356 §7.1).
    pub const ADAPTIVE_BIT: u32 = 0x4000_0000;
}

/// A pool member selection policy with its per-PE values (the value of a Policy parameter, 0x8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Policy {
    /// 0x00000001, RFC 5356 §4.1; the RFC's default policy.
    #[default]
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
    WeightedRandomDpf {
        weight: u32,
        weight_dpf: u32,
        distance: u32,
    },
    /// 0xb0002002, rsplib.
    LeastUsedDpf {
        load: u32,
        load_dpf: u32,
        distance: u32,
    },
    /// 0xb0002003, rsplib.
    LeastUsedDegradationDpf {
        load: u32,
        degradation: u32,
        load_dpf: u32,
        distance: u32,
    },
}

/// Converts a fraction in [0, 1] to its wire value (`round(f * u32::MAX)`).
pub fn fraction_to_wire(f: f64) -> Option<u32> {
    if !(0.0..=1.0).contains(&f) {
        return None;
    }
    // In range by the check above; `as` saturates anyway.
    Some((f * f64::from(u32::MAX)).round() as u32)
}

/// Converts a wire fraction to [0, 1].
pub fn fraction_from_wire(v: u32) -> f64 {
    f64::from(v) / f64::from(u32::MAX)
}

impl Policy {
    /// Every policy type code that has a wire format, in code order.
    pub const ENCODABLE_TYPES: [u32; 16] = [
        policy_type::ROUND_ROBIN,
        policy_type::WEIGHTED_ROUND_ROBIN,
        policy_type::RANDOM,
        policy_type::WEIGHTED_RANDOM,
        policy_type::PRIORITY,
        policy_type::LEAST_USED,
        policy_type::LEAST_USED_DEGRADATION,
        policy_type::PRIORITY_LEAST_USED,
        policy_type::RANDOMIZED_LEAST_USED,
        policy_type::RANDOMIZED_PRIORITY_LEAST_USED,
        policy_type::RANDOMIZED_LEAST_USED_DEGRADATION,
        policy_type::PRIORITY_LEAST_USED_DEGRADATION,
        policy_type::RANDOMIZED_PRIORITY_LEAST_USED_DEGRADATION,
        policy_type::WEIGHTED_RANDOM_DPF,
        policy_type::LEAST_USED_DPF,
        policy_type::LEAST_USED_DEGRADATION_DPF,
    ];

    /// The policy type code sent on the wire.
    pub fn policy_type(&self) -> u32 {
        use policy_type as t;
        match self {
            Policy::RoundRobin => t::ROUND_ROBIN,
            Policy::WeightedRoundRobin { .. } => t::WEIGHTED_ROUND_ROBIN,
            Policy::Random => t::RANDOM,
            Policy::WeightedRandom { .. } => t::WEIGHTED_RANDOM,
            Policy::Priority { .. } => t::PRIORITY,
            Policy::LeastUsed { .. } => t::LEAST_USED,
            Policy::LeastUsedDegradation { .. } => t::LEAST_USED_DEGRADATION,
            Policy::PriorityLeastUsed { .. } => t::PRIORITY_LEAST_USED,
            Policy::RandomizedLeastUsed { .. } => t::RANDOMIZED_LEAST_USED,
            Policy::RandomizedPriorityLeastUsed { .. } => t::RANDOMIZED_PRIORITY_LEAST_USED,
            Policy::RandomizedLeastUsedDegradation { .. } => t::RANDOMIZED_LEAST_USED_DEGRADATION,
            Policy::PriorityLeastUsedDegradation { .. } => t::PRIORITY_LEAST_USED_DEGRADATION,
            Policy::RandomizedPriorityLeastUsedDegradation { .. } => {
                t::RANDOMIZED_PRIORITY_LEAST_USED_DEGRADATION
            }
            Policy::WeightedRandomDpf { .. } => t::WEIGHTED_RANDOM_DPF,
            Policy::LeastUsedDpf { .. } => t::LEAST_USED_DPF,
            Policy::LeastUsedDegradationDpf { .. } => t::LEAST_USED_DEGRADATION_DPF,
        }
    }

    /// The policy with the given type code and all values 0, `None` for codes without a wire
    /// format.
    pub fn from_type(code: u32) -> Option<Policy> {
        Policy::from_fields(code, &[])
    }

    /// Whether the policy uses load information (the A bit of its type, RFC 5356 §7.1). All
    /// of them carry a load on the wire except Weighted Random DPF, which is not adaptive.
    pub fn is_adaptive(&self) -> bool {
        self.policy_type() & policy_type::ADAPTIVE_BIT != 0
    }

    /// The name used in rsplib's `-policy=` grammar.
    pub fn name(&self) -> &'static str {
        match self {
            Policy::RoundRobin => "RoundRobin",
            Policy::WeightedRoundRobin { .. } => "WeightedRoundRobin",
            Policy::Random => "Random",
            Policy::WeightedRandom { .. } => "WeightedRandom",
            Policy::Priority { .. } => "Priority",
            Policy::LeastUsed { .. } => "LeastUsed",
            Policy::LeastUsedDegradation { .. } => "LeastUsedDegradation",
            Policy::PriorityLeastUsed { .. } => "PriorityLeastUsed",
            Policy::RandomizedLeastUsed { .. } => "RandomizedLeastUsed",
            Policy::RandomizedPriorityLeastUsed { .. } => "RandomizedPriorityLeastUsed",
            Policy::RandomizedLeastUsedDegradation { .. } => "RandomizedLeastUsedDegradation",
            Policy::PriorityLeastUsedDegradation { .. } => "PriorityLeastUsedDegradation",
            Policy::RandomizedPriorityLeastUsedDegradation { .. } => {
                "RandomizedPriorityLeastUsedDegradation"
            }
            Policy::WeightedRandomDpf { .. } => "WeightedRandomDPF",
            Policy::LeastUsedDpf { .. } => "LeastUsedDPF",
            Policy::LeastUsedDegradationDpf { .. } => "LeastUsedDegradationDPF",
        }
    }

    /// The load (fraction of `u32::MAX`), for policies that carry one.
    pub fn load(&self) -> Option<u32> {
        match *self {
            Policy::LeastUsed { load }
            | Policy::RandomizedLeastUsed { load }
            | Policy::LeastUsedDegradation { load, .. }
            | Policy::PriorityLeastUsed { load, .. }
            | Policy::RandomizedPriorityLeastUsed { load, .. }
            | Policy::RandomizedLeastUsedDegradation { load, .. }
            | Policy::PriorityLeastUsedDegradation { load, .. }
            | Policy::RandomizedPriorityLeastUsedDegradation { load, .. }
            | Policy::LeastUsedDpf { load, .. }
            | Policy::LeastUsedDegradationDpf { load, .. } => Some(load),
            _ => None,
        }
    }

    /// The load degradation (fraction of `u32::MAX`), for policies that carry one.
    pub fn degradation(&self) -> Option<u32> {
        match *self {
            Policy::LeastUsedDegradation { degradation, .. }
            | Policy::PriorityLeastUsed { degradation, .. }
            | Policy::RandomizedPriorityLeastUsed { degradation, .. }
            | Policy::RandomizedLeastUsedDegradation { degradation, .. }
            | Policy::PriorityLeastUsedDegradation { degradation, .. }
            | Policy::RandomizedPriorityLeastUsedDegradation { degradation, .. }
            | Policy::LeastUsedDegradationDpf { degradation, .. } => Some(degradation),
            _ => None,
        }
    }

    /// The weight, for the weighted policies.
    pub fn weight(&self) -> Option<u32> {
        match *self {
            Policy::WeightedRoundRobin { weight }
            | Policy::WeightedRandom { weight }
            | Policy::WeightedRandomDpf { weight, .. } => Some(weight),
            _ => None,
        }
    }

    /// The priority (bigger is better), for [`Policy::Priority`].
    pub fn priority(&self) -> Option<u32> {
        match *self {
            Policy::Priority { priority } => Some(priority),
            _ => None,
        }
    }

    /// The load DPF factor (fraction of `u32::MAX`), for the LU-DPF policies.
    pub fn load_dpf(&self) -> Option<u32> {
        match *self {
            Policy::LeastUsedDpf { load_dpf, .. }
            | Policy::LeastUsedDegradationDpf { load_dpf, .. } => Some(load_dpf),
            _ => None,
        }
    }

    /// The weight DPF factor (fraction of `u32::MAX`), for Weighted Random DPF.
    pub fn weight_dpf(&self) -> Option<u32> {
        match *self {
            Policy::WeightedRandomDpf { weight_dpf, .. } => Some(weight_dpf),
            _ => None,
        }
    }

    /// The distance in milliseconds (filled in by registrars), for the DPF policies.
    pub fn distance(&self) -> Option<u32> {
        match *self {
            Policy::WeightedRandomDpf { distance, .. }
            | Policy::LeastUsedDpf { distance, .. }
            | Policy::LeastUsedDegradationDpf { distance, .. } => Some(distance),
            _ => None,
        }
    }

    /// Sets the load; returns `false` (and changes nothing) for policies without one.
    pub fn set_load(&mut self, new_load: u32) -> bool {
        match self {
            Policy::LeastUsed { load }
            | Policy::RandomizedLeastUsed { load }
            | Policy::LeastUsedDegradation { load, .. }
            | Policy::PriorityLeastUsed { load, .. }
            | Policy::RandomizedPriorityLeastUsed { load, .. }
            | Policy::RandomizedLeastUsedDegradation { load, .. }
            | Policy::PriorityLeastUsedDegradation { load, .. }
            | Policy::RandomizedPriorityLeastUsedDegradation { load, .. }
            | Policy::LeastUsedDpf { load, .. }
            | Policy::LeastUsedDegradationDpf { load, .. } => {
                *load = new_load;
                true
            }
            _ => false,
        }
    }

    /// The same policy with another load (unchanged for policies without one).
    pub fn with_load(mut self, load: u32) -> Policy {
        self.set_load(load);
        self
    }

    /// Sets the distance; returns `false` (and changes nothing) for non-DPF policies.
    pub fn set_distance(&mut self, new_distance: u32) -> bool {
        match self {
            Policy::WeightedRandomDpf { distance, .. }
            | Policy::LeastUsedDpf { distance, .. }
            | Policy::LeastUsedDegradationDpf { distance, .. } => {
                *distance = new_distance;
                true
            }
            _ => false,
        }
    }

    /// The u32 fields after the policy type, in wire order.
    fn wire_fields(&self) -> ([u32; 4], usize) {
        match *self {
            Policy::RoundRobin | Policy::Random => ([0; 4], 0),
            Policy::WeightedRoundRobin { weight } | Policy::WeightedRandom { weight } => {
                ([weight, 0, 0, 0], 1)
            }
            Policy::Priority { priority } => ([priority, 0, 0, 0], 1),
            Policy::LeastUsed { load } | Policy::RandomizedLeastUsed { load } => {
                ([load, 0, 0, 0], 1)
            }
            Policy::LeastUsedDegradation { load, degradation }
            | Policy::PriorityLeastUsed { load, degradation }
            | Policy::RandomizedPriorityLeastUsed { load, degradation }
            | Policy::RandomizedLeastUsedDegradation { load, degradation }
            | Policy::PriorityLeastUsedDegradation { load, degradation }
            | Policy::RandomizedPriorityLeastUsedDegradation { load, degradation } => {
                ([load, degradation, 0, 0], 2)
            }
            Policy::WeightedRandomDpf {
                weight,
                weight_dpf,
                distance,
            } => ([weight, weight_dpf, distance, 0], 3),
            Policy::LeastUsedDpf {
                load,
                load_dpf,
                distance,
            } => ([load, load_dpf, distance, 0], 3),
            Policy::LeastUsedDegradationDpf {
                load,
                degradation,
                load_dpf,
                distance,
            } => ([load, degradation, load_dpf, distance], 4),
        }
    }

    /// Builds a policy from its code and fields; missing fields read as 0. `None` for codes
    /// without a wire format.
    fn from_fields(code: u32, f: &[u32]) -> Option<Policy> {
        use policy_type as t;
        let at = |i: usize| f.get(i).copied().unwrap_or(0);
        Some(match code {
            t::ROUND_ROBIN => Policy::RoundRobin,
            t::WEIGHTED_ROUND_ROBIN => Policy::WeightedRoundRobin { weight: at(0) },
            t::RANDOM => Policy::Random,
            t::WEIGHTED_RANDOM => Policy::WeightedRandom { weight: at(0) },
            t::PRIORITY => Policy::Priority { priority: at(0) },
            t::LEAST_USED => Policy::LeastUsed { load: at(0) },
            t::LEAST_USED_DEGRADATION => Policy::LeastUsedDegradation {
                load: at(0),
                degradation: at(1),
            },
            t::PRIORITY_LEAST_USED => Policy::PriorityLeastUsed {
                load: at(0),
                degradation: at(1),
            },
            t::RANDOMIZED_LEAST_USED => Policy::RandomizedLeastUsed { load: at(0) },
            t::RANDOMIZED_PRIORITY_LEAST_USED => Policy::RandomizedPriorityLeastUsed {
                load: at(0),
                degradation: at(1),
            },
            t::RANDOMIZED_LEAST_USED_DEGRADATION => Policy::RandomizedLeastUsedDegradation {
                load: at(0),
                degradation: at(1),
            },
            t::PRIORITY_LEAST_USED_DEGRADATION => Policy::PriorityLeastUsedDegradation {
                load: at(0),
                degradation: at(1),
            },
            t::RANDOMIZED_PRIORITY_LEAST_USED_DEGRADATION => {
                Policy::RandomizedPriorityLeastUsedDegradation {
                    load: at(0),
                    degradation: at(1),
                }
            }
            t::WEIGHTED_RANDOM_DPF => Policy::WeightedRandomDpf {
                weight: at(0),
                weight_dpf: at(1),
                distance: at(2),
            },
            t::LEAST_USED_DPF => Policy::LeastUsedDpf {
                load: at(0),
                load_dpf: at(1),
                distance: at(2),
            },
            t::LEAST_USED_DEGRADATION_DPF => Policy::LeastUsedDegradationDpf {
                load: at(0),
                degradation: at(1),
                load_dpf: at(2),
                distance: at(3),
            },
            _ => return None,
        })
    }

    /// Fields a received policy must carry: as many as we send, except PLU and RPLU, which
    /// rsplib sends with the load only.
    fn min_wire_fields(code: u32) -> usize {
        match code {
            policy_type::PRIORITY_LEAST_USED | policy_type::RANDOMIZED_PRIORITY_LEAST_USED => 1,
            _ => Policy::from_type(code).map_or(0, |p| p.wire_fields().1),
        }
    }

    pub(crate) fn write(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        let t = w.begin_tlv(param_type::POOL_MEMBER_SELECTION_POLICY);
        w.u32(self.policy_type());
        let (fields, n) = self.wire_fields();
        for v in fields.iter().take(n) {
            w.u32(*v);
        }
        w.end_tlv(t)
    }

    /// Reads a policy TLV. Bytes after the fields we know are ignored, as rsplib does.
    pub(crate) fn read(tlv: &Tlv<'_>) -> Result<Policy, WireError> {
        let mut r = Reader::new(tlv.value);
        let Some(code) = r.u32() else {
            return Err(tlv.invalid("policy parameter without policy type"));
        };
        let mut fields = [0u32; 4];
        let mut n = 0;
        for slot in fields.iter_mut() {
            match r.u32() {
                Some(v) => {
                    *slot = v;
                    n += 1;
                }
                None => break,
            }
        }
        let Some(policy) = Policy::from_fields(code, &fields[..n]) else {
            return Err(WireError::UnsupportedPolicy {
                policy_type: code,
                tlv: tlv.whole.to_vec(),
            });
        };
        if n < Policy::min_wire_fields(code) {
            return Err(tlv.invalid("policy parameter too short for its policy type"));
        }
        Ok(policy)
    }
}

/// Why a policy specification does not parse.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum PolicyParseError {
    #[error("empty policy specification")]
    Empty,
    #[error(
        "unknown policy \"{0}\"; expected one of: {syntax}",
        syntax = POLICY_SYNTAX.iter().map(|(_, s)| *s).collect::<Vec<_>>().join(", ")
    )]
    UnknownPolicy(String),
    #[error("policy {0} has no wire format (rsplib cannot send it either)")]
    NotEncodable(String),
    #[error("policy {policy} takes {expected}; got {given} parameter(s) (syntax: {syntax})")]
    WrongArity {
        policy: &'static str,
        syntax: &'static str,
        expected: &'static str,
        given: usize,
    },
    #[error("policy {policy}: \"{value}\" is not a valid {what} (syntax: {syntax})")]
    BadNumber {
        policy: &'static str,
        syntax: &'static str,
        what: &'static str,
        value: String,
    },
    #[error("policy {policy}: {what} {value} is outside [0, 1]")]
    FractionOutOfRange {
        policy: &'static str,
        what: &'static str,
        value: f64,
    },
}

/// Canonical names and syntax of every parseable policy.
const POLICY_SYNTAX: [(&str, &str); 16] = [
    ("RoundRobin", "RoundRobin"),
    ("WeightedRoundRobin", "WeightedRoundRobin:<weight>"),
    ("Random", "Random"),
    ("WeightedRandom", "WeightedRandom:<weight>"),
    ("Priority", "Priority:<priority>"),
    ("LeastUsed", "LeastUsed"),
    (
        "LeastUsedDegradation",
        "LeastUsedDegradation:<degradation 0..1>",
    ),
    ("PriorityLeastUsed", "PriorityLeastUsed:<degradation 0..1>"),
    ("RandomizedLeastUsed", "RandomizedLeastUsed"),
    (
        "RandomizedPriorityLeastUsed",
        "RandomizedPriorityLeastUsed[:<degradation 0..1>]",
    ),
    (
        "RandomizedLeastUsedDegradation",
        "RandomizedLeastUsedDegradation:<degradation 0..1>",
    ),
    (
        "PriorityLeastUsedDegradation",
        "PriorityLeastUsedDegradation:<degradation 0..1>",
    ),
    (
        "RandomizedPriorityLeastUsedDegradation",
        "RandomizedPriorityLeastUsedDegradation:<degradation 0..1>",
    ),
    (
        "WeightedRandomDPF",
        "WeightedRandomDPF:<weight>:<weight DPF 0..1>",
    ),
    ("LeastUsedDPF", "LeastUsedDPF:<load DPF 0..1>"),
    (
        "LeastUsedDegradationDPF",
        "LeastUsedDegradationDPF:<degradation 0..1>:<load DPF 0..1>",
    ),
];

/// Parses the arguments of one policy specification.
struct Args<'a> {
    policy: &'static str,
    syntax: &'static str,
    args: Vec<&'a str>,
}

impl Args<'_> {
    fn arity(&self, expected: &'static str, allowed: &[usize]) -> Result<(), PolicyParseError> {
        if allowed.contains(&self.args.len()) {
            Ok(())
        } else {
            Err(PolicyParseError::WrongArity {
                policy: self.policy,
                syntax: self.syntax,
                expected,
                given: self.args.len(),
            })
        }
    }

    fn integer(&self, i: usize, what: &'static str) -> Result<u32, PolicyParseError> {
        let raw = self.args.get(i).copied().unwrap_or("");
        raw.trim()
            .parse::<u32>()
            .map_err(|_| PolicyParseError::BadNumber {
                policy: self.policy,
                syntax: self.syntax,
                what,
                value: raw.to_string(),
            })
    }

    fn fraction(&self, i: usize, what: &'static str) -> Result<u32, PolicyParseError> {
        let raw = self.args.get(i).copied().unwrap_or("");
        let value = raw
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| PolicyParseError::BadNumber {
                policy: self.policy,
                syntax: self.syntax,
                what,
                value: raw.to_string(),
            })?;
        fraction_to_wire(value).ok_or(PolicyParseError::FractionOutOfRange {
            policy: self.policy,
            what,
            value,
        })
    }
}

impl FromStr for Policy {
    type Err = PolicyParseError;

    /// Parses rsplib's `-policy=` grammar (names compared case-insensitively). Loads and
    /// distances are run-time values and start at 0.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(PolicyParseError::Empty);
        }
        let mut parts = s.split(':');
        let name = parts.next().unwrap_or("").trim();
        let args: Vec<&str> = parts.collect();
        if name.eq_ignore_ascii_case("PriorityLeastUsedDPF")
            || name.eq_ignore_ascii_case("PriorityLeastUsedDegradationDPF")
        {
            return Err(PolicyParseError::NotEncodable(name.to_string()));
        }
        let Some(&(policy, syntax)) = POLICY_SYNTAX
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        else {
            return Err(PolicyParseError::UnknownPolicy(name.to_string()));
        };
        let a = Args {
            policy,
            syntax,
            args,
        };
        const NONE: &str = "no parameters";
        const ONE: &str = "one parameter";
        const TWO: &str = "two parameters";
        const DEG: &str = "degradation";
        let code = Policy::ENCODABLE_TYPES
            .into_iter()
            .find(|c| Policy::from_type(*c).is_some_and(|p| p.name() == policy))
            .unwrap_or(policy_type::ROUND_ROBIN);
        let p = match Policy::from_type(code).unwrap_or_default() {
            p @ (Policy::RoundRobin
            | Policy::Random
            | Policy::LeastUsed { .. }
            | Policy::RandomizedLeastUsed { .. }) => {
                a.arity(NONE, &[0])?;
                p
            }
            Policy::WeightedRoundRobin { .. } => {
                a.arity(ONE, &[1])?;
                Policy::WeightedRoundRobin {
                    weight: a.integer(0, "weight")?,
                }
            }
            Policy::WeightedRandom { .. } => {
                a.arity(ONE, &[1])?;
                Policy::WeightedRandom {
                    weight: a.integer(0, "weight")?,
                }
            }
            Policy::Priority { .. } => {
                a.arity(ONE, &[1])?;
                Policy::Priority {
                    priority: a.integer(0, "priority")?,
                }
            }
            Policy::RandomizedPriorityLeastUsed { .. } => {
                a.arity("zero or one parameter", &[0, 1])?;
                Policy::RandomizedPriorityLeastUsed {
                    load: 0,
                    degradation: if a.args.is_empty() {
                        0
                    } else {
                        a.fraction(0, DEG)?
                    },
                }
            }
            Policy::LeastUsedDegradation { .. } => {
                a.arity(ONE, &[1])?;
                Policy::LeastUsedDegradation {
                    load: 0,
                    degradation: a.fraction(0, DEG)?,
                }
            }
            Policy::PriorityLeastUsed { .. } => {
                a.arity(ONE, &[1])?;
                Policy::PriorityLeastUsed {
                    load: 0,
                    degradation: a.fraction(0, DEG)?,
                }
            }
            Policy::RandomizedLeastUsedDegradation { .. } => {
                a.arity(ONE, &[1])?;
                Policy::RandomizedLeastUsedDegradation {
                    load: 0,
                    degradation: a.fraction(0, DEG)?,
                }
            }
            Policy::PriorityLeastUsedDegradation { .. } => {
                a.arity(ONE, &[1])?;
                Policy::PriorityLeastUsedDegradation {
                    load: 0,
                    degradation: a.fraction(0, DEG)?,
                }
            }
            Policy::RandomizedPriorityLeastUsedDegradation { .. } => {
                a.arity(ONE, &[1])?;
                Policy::RandomizedPriorityLeastUsedDegradation {
                    load: 0,
                    degradation: a.fraction(0, DEG)?,
                }
            }
            Policy::WeightedRandomDpf { .. } => {
                a.arity(TWO, &[2])?;
                Policy::WeightedRandomDpf {
                    weight: a.integer(0, "weight")?,
                    weight_dpf: a.fraction(1, "weight DPF")?,
                    distance: 0,
                }
            }
            Policy::LeastUsedDpf { .. } => {
                a.arity(ONE, &[1])?;
                Policy::LeastUsedDpf {
                    load: 0,
                    load_dpf: a.fraction(0, "load DPF")?,
                    distance: 0,
                }
            }
            Policy::LeastUsedDegradationDpf { .. } => {
                a.arity(TWO, &[2])?;
                Policy::LeastUsedDegradationDpf {
                    load: 0,
                    degradation: a.fraction(0, DEG)?,
                    load_dpf: a.fraction(1, "load DPF")?,
                    distance: 0,
                }
            }
        };
        Ok(p)
    }
}

/// rsplib's `-policy=` grammar; loads and distances are not shown (see the module docs).
impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let frac = fraction_from_wire;
        write!(f, "{}", self.name())?;
        match *self {
            Policy::RoundRobin
            | Policy::Random
            | Policy::LeastUsed { .. }
            | Policy::RandomizedLeastUsed { .. } => Ok(()),
            Policy::WeightedRoundRobin { weight } | Policy::WeightedRandom { weight } => {
                write!(f, ":{weight}")
            }
            Policy::Priority { priority } => write!(f, ":{priority}"),
            Policy::RandomizedPriorityLeastUsed { degradation, .. } => {
                if degradation == 0 {
                    Ok(())
                } else {
                    write!(f, ":{}", frac(degradation))
                }
            }
            Policy::LeastUsedDegradation { degradation, .. }
            | Policy::PriorityLeastUsed { degradation, .. }
            | Policy::RandomizedLeastUsedDegradation { degradation, .. }
            | Policy::PriorityLeastUsedDegradation { degradation, .. }
            | Policy::RandomizedPriorityLeastUsedDegradation { degradation, .. } => {
                write!(f, ":{}", frac(degradation))
            }
            Policy::WeightedRandomDpf {
                weight, weight_dpf, ..
            } => write!(f, ":{weight}:{}", frac(weight_dpf)),
            Policy::LeastUsedDpf { load_dpf, .. } => write!(f, ":{}", frac(load_dpf)),
            Policy::LeastUsedDegradationDpf {
                degradation,
                load_dpf,
                ..
            } => write!(f, ":{}:{}", frac(degradation), frac(load_dpf)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rsplib_grammar() {
        let half = fraction_to_wire(0.5).unwrap();
        let cases: [(&str, Policy); 9] = [
            ("RoundRobin", Policy::RoundRobin),
            (
                "WeightedRoundRobin:3",
                Policy::WeightedRoundRobin { weight: 3 },
            ),
            ("Priority:5", Policy::Priority { priority: 5 }),
            ("LeastUsed", Policy::LeastUsed { load: 0 }),
            (
                "LeastUsedDegradation:0.5",
                Policy::LeastUsedDegradation {
                    load: 0,
                    degradation: half,
                },
            ),
            (
                "leastuseddegradationdpf:1:0",
                Policy::LeastUsedDegradationDpf {
                    load: 0,
                    degradation: u32::MAX,
                    load_dpf: 0,
                    distance: 0,
                },
            ),
            (
                "WeightedRandomDPF:10:0.5",
                Policy::WeightedRandomDpf {
                    weight: 10,
                    weight_dpf: half,
                    distance: 0,
                },
            ),
            (
                "RandomizedPriorityLeastUsed",
                Policy::RandomizedPriorityLeastUsed {
                    load: 0,
                    degradation: 0,
                },
            ),
            (" Random ", Policy::Random),
        ];
        for (text, expected) in cases {
            assert_eq!(text.parse::<Policy>(), Ok(expected), "{text}");
        }
        // 0.5 maps to the rounded midpoint of the u32 range.
        assert_eq!(half, 0x8000_0000);
    }

    #[test]
    fn parse_errors_are_specific() {
        assert_eq!("".parse::<Policy>(), Err(PolicyParseError::Empty));
        assert!(matches!(
            "Fastest".parse::<Policy>(),
            Err(PolicyParseError::UnknownPolicy(n)) if n == "Fastest"
        ));
        assert!(matches!(
            "PriorityLeastUsedDegradationDPF:0.1:0.1".parse::<Policy>(),
            Err(PolicyParseError::NotEncodable(_))
        ));
        assert!(matches!(
            "WeightedRoundRobin".parse::<Policy>(),
            Err(PolicyParseError::WrongArity { given: 0, .. })
        ));
        assert!(matches!(
            "RoundRobin:1".parse::<Policy>(),
            Err(PolicyParseError::WrongArity { given: 1, .. })
        ));
        assert!(matches!(
            "Priority:high".parse::<Policy>(),
            Err(PolicyParseError::BadNumber {
                what: "priority",
                ..
            })
        ));
        assert!(matches!(
            "LeastUsedDegradation:1.5".parse::<Policy>(),
            Err(PolicyParseError::FractionOutOfRange { .. })
        ));
        assert!(matches!(
            "LeastUsedDPF:NaN".parse::<Policy>(),
            Err(PolicyParseError::BadNumber { .. })
        ));
        let msg = "Fastest".parse::<Policy>().unwrap_err().to_string();
        assert!(msg.contains("WeightedRoundRobin:<weight>"), "{msg}");
    }

    #[test]
    fn display_uses_the_grammar() {
        assert_eq!(
            Policy::WeightedRandom { weight: 7 }.to_string(),
            "WeightedRandom:7"
        );
        assert_eq!(
            Policy::LeastUsedDegradationDpf {
                load: 99,
                degradation: 0x8000_0000,
                load_dpf: u32::MAX,
                distance: 12,
            }
            .to_string(),
            format!(
                "LeastUsedDegradationDPF:{}:1",
                fraction_from_wire(0x8000_0000)
            )
        );
        assert_eq!(Policy::LeastUsed { load: 5 }.to_string(), "LeastUsed");
    }

    #[test]
    fn type_codes_and_adaptivity() {
        for code in Policy::ENCODABLE_TYPES {
            let p = Policy::from_type(code).unwrap();
            assert_eq!(p.policy_type(), code);
            assert_eq!(p.is_adaptive(), code & 0x4000_0000 != 0);
            // Adaptive policies carry a load.
            if p.is_adaptive() {
                assert_eq!(p.load(), Some(0), "{p:?}");
            }
        }
        assert_eq!(
            Policy::from_type(policy_type::PRIORITY_LEAST_USED_DPF),
            None
        );
        assert!(!Policy::RoundRobin.is_adaptive());
        assert!(Policy::LeastUsed { load: 1 }.is_adaptive());
    }

    #[test]
    fn accessors_and_setters() {
        let mut p = Policy::LeastUsedDpf {
            load: 1,
            load_dpf: 2,
            distance: 3,
        };
        assert_eq!(
            (p.load(), p.load_dpf(), p.distance(), p.weight()),
            (Some(1), Some(2), Some(3), None)
        );
        assert!(p.set_load(10));
        assert!(p.set_distance(50));
        assert_eq!(p.load(), Some(10));
        assert_eq!(p.distance(), Some(50));
        let mut rr = Policy::RoundRobin;
        assert!(!rr.set_load(1));
        assert_eq!(rr, Policy::RoundRobin);
        assert_eq!(Policy::Priority { priority: 9 }.priority(), Some(9));
        assert_eq!(
            Policy::WeightedRandomDpf {
                weight: 4,
                weight_dpf: 5,
                distance: 6
            }
            .weight_dpf(),
            Some(5)
        );
        assert_eq!(Policy::default(), Policy::RoundRobin);
    }
}
