//! Realistic instances of every ASAP and ENRP message, as **test and demo data**.
//!
//! Together they use every message type, every flag, every parameter of RFC 5354 (plus the
//! Handle Resolution option), every error cause code and every encodable policy; all are valid
//! per the RFCs and dissect cleanly in Wireshark (cause-specific information is a well-formed TLV
//! or message where Wireshark dissects one). Values look like a small Fractal Generator
//! deployment: registrars `0x5e2d0001`/`0x5e2d0002`, PEs on 10.0.0.0/24 and 2001:db8::/32.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::asap::AsapMessage;
use super::checksum::HandlespaceChecksum;
use super::enrp::{EnrpBody, EnrpMessage, PoolEntry, UpdateAction};
use super::param::{
    CauseCode, ErrorCause, HANDLE_RESOLUTION_ALL, OperationError, Parameter, PeId, PoolElement,
    PoolHandle, ServerInformation, TransportAddress, TransportUse,
};
use super::policy::{Policy, fraction_to_wire};

/// Registrar (ENRP server) identifiers used in the examples.
pub const REGISTRAR_A: u32 = 0x5e2d_0001;
/// The second registrar.
pub const REGISTRAR_B: u32 = 0x5e2d_0002;

/// Pool handles of the examples are literals of at most 32 bytes, never peer input.
fn pool(name: &str) -> PoolHandle {
    PoolHandle::new(name.as_bytes()).expect("example pool handles are 1-32 bytes")
}

/// `FractalGeneratorPool`, rsplib's default pool handle for the fractal service.
pub fn fractal_pool() -> PoolHandle {
    pool("FractalGeneratorPool")
}

fn v4(d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, d))
}

fn v6(d: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, d))
}

fn pct(p: f64) -> u32 {
    fraction_to_wire(p / 100.0).unwrap_or(0)
}

/// One example of every encodable policy, with run-time values filled in.
pub fn all_policies() -> Vec<Policy> {
    Policy::ENCODABLE_TYPES
        .iter()
        .filter_map(|code| Policy::from_type(*code))
        .enumerate()
        .map(|(i, p)| {
            let i = i as u32;
            match p {
                Policy::WeightedRoundRobin { .. } => Policy::WeightedRoundRobin { weight: 3 },
                Policy::WeightedRandom { .. } => Policy::WeightedRandom { weight: 250 },
                Policy::Priority { .. } => Policy::Priority { priority: 5 },
                Policy::WeightedRandomDpf { .. } => Policy::WeightedRandomDpf {
                    weight: 100,
                    weight_dpf: pct(25.0),
                    distance: 150,
                },
                Policy::LeastUsedDpf { .. } => Policy::LeastUsedDpf {
                    load: pct(50.0),
                    load_dpf: pct(10.0),
                    distance: 50,
                },
                Policy::LeastUsedDegradationDpf { .. } => Policy::LeastUsedDegradationDpf {
                    load: pct(75.0),
                    degradation: pct(5.0),
                    load_dpf: pct(1.0),
                    distance: 100,
                },
                mut p => {
                    // Loads of 10 %, 20 %, ... and a 5 % degradation where there is one.
                    p.set_load(pct(f64::from(i % 9 + 1) * 10.0));
                    match &mut p {
                        Policy::LeastUsedDegradation { degradation, .. }
                        | Policy::PriorityLeastUsed { degradation, .. }
                        | Policy::RandomizedPriorityLeastUsed { degradation, .. }
                        | Policy::RandomizedLeastUsedDegradation { degradation, .. }
                        | Policy::PriorityLeastUsedDegradation { degradation, .. }
                        | Policy::RandomizedPriorityLeastUsedDegradation { degradation, .. } => {
                            *degradation = pct(5.0)
                        }
                        _ => {}
                    }
                    p
                }
            }
        })
        .collect()
}

/// One example of every transport parameter type.
pub fn all_transports() -> Vec<TransportAddress> {
    vec![
        TransportAddress::Sctp {
            port: 40_123,
            transport_use: TransportUse::DataPlusControl,
            addresses: vec![v4(11), v6(0x11)],
        },
        TransportAddress::Tcp {
            port: 40_124,
            address: v4(12),
        },
        TransportAddress::Udp {
            port: 40_125,
            address: v4(13),
        },
        TransportAddress::UdpLite {
            port: 40_126,
            address: v6(0x14),
        },
        TransportAddress::Dccp {
            port: 40_127,
            service_code: 0x4647_5031, // "FGP1"
            address: v4(15),
        },
        TransportAddress::Opaque(b"fgp://10.0.0.16:40128".to_vec()),
        TransportAddress::Sctp {
            port: 40_129,
            transport_use: TransportUse::DataOnly,
            addresses: vec![v4(17)],
        },
        TransportAddress::Tcp {
            port: 40_130,
            address: v6(0x18),
        },
    ]
}

/// A PE with the `n`-th example transport and the given policy.
fn pe(n: usize, policy: Policy, home: u32, with_asap_transport: bool) -> PoolElement {
    let transports = all_transports();
    let user_transport = transports
        .get(n % transports.len())
        .cloned()
        .unwrap_or(TransportAddress::Opaque(Vec::new()));
    PoolElement {
        id: PeId(0x3a7c_1f00 + n as u32 * 0x0101),
        home_registrar: home,
        registration_life_ms: 90_000,
        user_transport,
        policy,
        // RFC 5354 §3.10: the ASAP transport is an SCTP transport.
        asap_transport: with_asap_transport.then(|| TransportAddress::Sctp {
            port: 51_000 + n as u16,
            transport_use: TransportUse::DataOnly,
            addresses: vec![v4(100 + n as u8)],
        }),
    }
}

fn tlv(p: Parameter) -> Vec<u8> {
    p.to_bytes().unwrap_or_default()
}

/// An Operation Error using every cause code of RFC 5354 with fitting information.
fn every_cause() -> OperationError {
    let unknown_param = vec![0xc0, 0x42, 0x00, 0x08, 0xde, 0xad, 0xbe, 0xef];
    // Type 0x4f (unknown, "discard and report") carrying a PE Identifier parameter.
    let unknown_message = vec![
        0x4f, 0x00, 0x00, 0x0c, 0x00, 0x0e, 0x00, 0x08, 0x00, 0x00, 0x00, 0x2a,
    ];
    let mut causes = vec![
        ErrorCause::new(CauseCode::UNSPECIFIED),
        ErrorCause::unrecognized_parameter(unknown_param),
        ErrorCause::unrecognized_message(unknown_message),
        ErrorCause::invalid_values(tlv(Parameter::PeIdentifier(PeId(0)))),
        ErrorCause::new(CauseCode::NON_UNIQUE_PE_IDENTIFIER),
        ErrorCause::new(CauseCode::LACK_OF_RESOURCES),
        ErrorCause::new(CauseCode::INCONSISTENT_DATA_CONTROL_CONFIGURATION),
        ErrorCause::new(CauseCode::UNKNOWN_POOL_HANDLE),
        ErrorCause::new(CauseCode::REJECTED_SECURITY),
    ];
    if let Ok(c) = ErrorCause::inconsistent_pooling_policy(&Policy::RoundRobin) {
        causes.push(c);
    }
    if let Ok(c) = ErrorCause::inconsistent_transport_type(&TransportAddress::Tcp {
        port: 40_124,
        address: v4(12),
    }) {
        causes.push(c);
    }
    OperationError { causes }
}

/// At least one ASAP message of every type; all flags set and clear; every transport and
/// every policy in the registrations.
pub fn asap_examples() -> Vec<AsapMessage> {
    let fractal = fractal_pool();
    let policies = all_policies();
    let mut out: Vec<AsapMessage> = policies
        .iter()
        .enumerate()
        .map(|(n, p)| AsapMessage::Registration {
            pool_handle: fractal.clone(),
            pool_element: pe(n, *p, 0, false),
        })
        .collect();
    let lu_pes: Vec<PoolElement> = (0..3)
        .map(|n| {
            pe(
                n,
                Policy::LeastUsed {
                    load: pct(12.5 * n as f64),
                },
                REGISTRAR_A,
                false,
            )
        })
        .collect();
    let id = lu_pes.first().map_or(PeId(1), |p| p.id);
    out.extend([
        AsapMessage::Deregistration {
            pool_handle: fractal.clone(),
            pe_id: id,
        },
        AsapMessage::RegistrationResponse {
            rejected: false,
            pool_handle: fractal.clone(),
            pe_id: id,
            error: None,
        },
        AsapMessage::RegistrationResponse {
            rejected: true,
            pool_handle: fractal.clone(),
            pe_id: id,
            error: ErrorCause::inconsistent_pooling_policy(&Policy::LeastUsed { load: 0 })
                .ok()
                .map(OperationError::single),
        },
        AsapMessage::DeregistrationResponse {
            pool_handle: fractal.clone(),
            pe_id: id,
            error: None,
        },
        AsapMessage::DeregistrationResponse {
            pool_handle: pool("EchoPool"),
            pe_id: PeId(0x0bad_cafe),
            error: Some(OperationError::single(ErrorCause::new(
                CauseCode::UNKNOWN_POOL_HANDLE,
            ))),
        },
        AsapMessage::HandleResolution {
            subscribe: false,
            pool_handle: fractal.clone(),
            items: Some(3),
        },
        AsapMessage::HandleResolution {
            subscribe: true,
            pool_handle: fractal.clone(),
            items: Some(HANDLE_RESOLUTION_ALL),
        },
        AsapMessage::HandleResolution {
            subscribe: false,
            pool_handle: pool("EchoPool"),
            items: None,
        },
        AsapMessage::HandleResolutionResponse {
            accepted: true,
            pool_handle: fractal.clone(),
            policy: Some(Policy::LeastUsed { load: 0 }),
            pool_elements: lu_pes.clone(),
            error: None,
        },
        AsapMessage::HandleResolutionResponse {
            accepted: false,
            pool_handle: pool("EchoPool"),
            policy: None,
            pool_elements: Vec::new(),
            error: Some(OperationError::single(ErrorCause::new(
                CauseCode::UNKNOWN_POOL_HANDLE,
            ))),
        },
        AsapMessage::EndpointKeepAlive {
            home: true,
            server_id: REGISTRAR_B,
            pool_handle: fractal.clone(),
            pe_id: Some(id),
        },
        AsapMessage::EndpointKeepAlive {
            home: false,
            server_id: REGISTRAR_A,
            pool_handle: fractal.clone(),
            pe_id: None,
        },
        AsapMessage::EndpointKeepAliveAck {
            pool_handle: fractal.clone(),
            pe_id: id,
        },
        AsapMessage::EndpointUnreachable {
            pool_handle: fractal.clone(),
            pe_id: PeId(0x3a7c_2001),
        },
        AsapMessage::ServerAnnounce {
            server_id: REGISTRAR_A,
            transports: vec![
                TransportAddress::Sctp {
                    port: 3863,
                    transport_use: TransportUse::DataPlusControl,
                    addresses: vec![v4(1), v6(1)],
                },
                TransportAddress::Tcp {
                    port: 3863,
                    address: v4(1),
                },
            ],
        },
        AsapMessage::ServerAnnounce {
            server_id: REGISTRAR_B,
            transports: Vec::new(),
        },
        AsapMessage::Cookie {
            cookie: fgp_cookie(64, 17),
        },
        AsapMessage::CookieEcho {
            cookie: fgp_cookie(64, 17),
        },
        AsapMessage::BusinessCard {
            pool_handle: fractal.clone(),
            policy: Some(Policy::LeastUsed { load: 0 }),
            pool_elements: lu_pes,
        },
        AsapMessage::Error {
            error: every_cause(),
        },
    ]);
    out
}

/// A cookie shaped like rsplib's 76-byte `<FG-TD1>` fractal cookie (contents illustrative).
fn fgp_cookie(current_x: u32, current_y: u32) -> Vec<u8> {
    let mut c = b"<FG-TD1>".to_vec();
    // FGP Parameter message: type 1, flags 0, length quirk 4, 400 x 250, 1024 iterations,
    // algorithm 1, then C1 = (-1.5, 1.5), C2 = (1.5, -1.5), N = 2.
    c.extend_from_slice(&[0x01, 0x00, 0x00, 0x04]);
    for v in [400u32, 250, 1024, 1] {
        c.extend_from_slice(&v.to_be_bytes());
    }
    for v in [-1.5f64, 1.5, 1.5, -1.5, 2.0] {
        c.extend_from_slice(&v.to_be_bytes());
    }
    c.extend_from_slice(&current_x.to_be_bytes());
    c.extend_from_slice(&current_y.to_be_bytes());
    c
}

/// At least one ENRP message of every type; all flags set and clear; the handle table carries
/// one pool per encodable policy.
pub fn enrp_examples() -> Vec<EnrpMessage> {
    let fractal = fractal_pool();
    let policies = all_policies();
    let pools: Vec<PoolEntry> = policies
        .iter()
        .enumerate()
        .map(|(n, p)| {
            let name = format!("Pool-{:08x}", p.policy_type());
            PoolEntry {
                pool_handle: pool(&name),
                pool_elements: vec![
                    pe(n, *p, REGISTRAR_A, true),
                    pe(n + 1, p.with_load(pct(33.0)), REGISTRAR_A, true),
                ],
            }
        })
        .collect();
    let mut checksum = HandlespaceChecksum::new();
    for entry in &pools {
        for pe in &entry.pool_elements {
            checksum.add(&entry.pool_handle, pe.id);
        }
    }
    let server = |id: u32, last: u8| ServerInformation {
        server_id: id,
        transport: TransportAddress::Sctp {
            port: 9901,
            transport_use: TransportUse::DataOnly,
            addresses: vec![v4(last), v6(u16::from(last))],
        },
    };
    let msg = |sender_id: u32, receiver_id: u32, body: EnrpBody| EnrpMessage {
        sender_id,
        receiver_id,
        body,
    };
    let lu = pe(2, Policy::LeastUsed { load: pct(40.0) }, REGISTRAR_A, true);
    vec![
        msg(
            REGISTRAR_A,
            0,
            EnrpBody::Presence {
                reply_required: false,
                checksum: checksum.value(),
                server_info: Some(server(REGISTRAR_A, 1)),
            },
        ),
        msg(
            REGISTRAR_B,
            REGISTRAR_A,
            EnrpBody::Presence {
                reply_required: true,
                checksum: HandlespaceChecksum::new().value(),
                server_info: Some(server(REGISTRAR_B, 2)),
            },
        ),
        msg(
            REGISTRAR_B,
            REGISTRAR_A,
            EnrpBody::Presence {
                reply_required: false,
                checksum: 0x1bce,
                server_info: None,
            },
        ),
        msg(
            REGISTRAR_B,
            REGISTRAR_A,
            EnrpBody::HandleTableRequest {
                own_children_only: false,
            },
        ),
        msg(
            REGISTRAR_B,
            REGISTRAR_A,
            EnrpBody::HandleTableRequest {
                own_children_only: true,
            },
        ),
        msg(
            REGISTRAR_A,
            REGISTRAR_B,
            EnrpBody::HandleTableResponse {
                reject: false,
                more_to_send: true,
                pools,
            },
        ),
        msg(
            REGISTRAR_A,
            REGISTRAR_B,
            EnrpBody::HandleTableResponse {
                reject: false,
                more_to_send: false,
                pools: vec![PoolEntry {
                    pool_handle: fractal.clone(),
                    pool_elements: vec![lu.clone()],
                }],
            },
        ),
        msg(
            REGISTRAR_A,
            REGISTRAR_B,
            EnrpBody::HandleTableResponse {
                reject: true,
                more_to_send: false,
                pools: Vec::new(),
            },
        ),
        msg(
            REGISTRAR_A,
            0,
            EnrpBody::HandleUpdate {
                takeover_suggested: false,
                action: UpdateAction::AddPe,
                pool_handle: fractal.clone(),
                pool_element: lu.clone(),
            },
        ),
        msg(
            REGISTRAR_A,
            REGISTRAR_B,
            EnrpBody::HandleUpdate {
                takeover_suggested: true,
                action: UpdateAction::DelPe,
                pool_handle: fractal,
                pool_element: lu,
            },
        ),
        msg(REGISTRAR_B, REGISTRAR_A, EnrpBody::ListRequest),
        msg(
            REGISTRAR_A,
            REGISTRAR_B,
            EnrpBody::ListResponse {
                reject: false,
                servers: vec![server(REGISTRAR_A, 1), server(0x5e2d_0003, 3)],
            },
        ),
        msg(
            REGISTRAR_A,
            REGISTRAR_B,
            EnrpBody::ListResponse {
                reject: true,
                servers: Vec::new(),
            },
        ),
        msg(
            REGISTRAR_A,
            0,
            EnrpBody::InitTakeover {
                target_id: 0x5e2d_0003,
            },
        ),
        msg(
            REGISTRAR_B,
            REGISTRAR_A,
            EnrpBody::InitTakeoverAck {
                target_id: 0x5e2d_0003,
            },
        ),
        msg(
            REGISTRAR_A,
            0,
            EnrpBody::TakeoverServer {
                target_id: 0x5e2d_0003,
            },
        ),
        msg(
            REGISTRAR_B,
            REGISTRAR_A,
            EnrpBody::Error {
                error: every_cause(),
            },
        ),
    ]
}
