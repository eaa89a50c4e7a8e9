//! Property tests of the wire codecs: round trips of generated messages and parameters,
//! and decoding of arbitrary or mutated bytes (never a panic, always `Ok` or a typed error).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::collection::vec;
use proptest::prelude::*;
use rserpool::wire::asap::AsapMessage;
use rserpool::wire::enrp::{EnrpBody, EnrpMessage, PoolEntry, UpdateAction};
use rserpool::wire::examples::{all_policies, all_transports, asap_examples, enrp_examples};
use rserpool::wire::policy::fraction_from_wire;
use rserpool::wire::{
    CauseCode, Decoded, ErrorCause, OperationError, Parameter, PeId, Policy, PoolElement,
    PoolHandle, ServerInformation, TransportAddress, TransportUse, WireError, roundup4,
};

// ----------------------------------------------------------------------------------------------
// Strategies
// ----------------------------------------------------------------------------------------------

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o))),
        any::<[u8; 16]>().prop_map(|o| IpAddr::V6(Ipv6Addr::from(o))),
    ]
}

fn transport() -> impl Strategy<Value = TransportAddress> {
    prop_oneof![
        (any::<u16>(), any::<u32>(), ip()).prop_map(|(port, service_code, address)| {
            TransportAddress::Dccp {
                port,
                service_code,
                address,
            }
        }),
        (any::<u16>(), any::<bool>(), vec(ip(), 1..6)).prop_map(|(port, control, addresses)| {
            TransportAddress::Sctp {
                port,
                transport_use: if control {
                    TransportUse::DataPlusControl
                } else {
                    TransportUse::DataOnly
                },
                addresses,
            }
        }),
        (any::<u16>(), ip()).prop_map(|(port, address)| TransportAddress::Tcp { port, address }),
        (any::<u16>(), ip()).prop_map(|(port, address)| TransportAddress::Udp { port, address }),
        (any::<u16>(), ip())
            .prop_map(|(port, address)| TransportAddress::UdpLite { port, address }),
        vec(any::<u8>(), 0..24).prop_map(TransportAddress::Opaque),
    ]
}

fn policy() -> impl Strategy<Value = Policy> {
    let u = any::<u32>;
    prop_oneof![
        Just(Policy::RoundRobin),
        u().prop_map(|weight| Policy::WeightedRoundRobin { weight }),
        Just(Policy::Random),
        u().prop_map(|weight| Policy::WeightedRandom { weight }),
        u().prop_map(|priority| Policy::Priority { priority }),
        u().prop_map(|load| Policy::LeastUsed { load }),
        (u(), u())
            .prop_map(|(load, degradation)| Policy::LeastUsedDegradation { load, degradation }),
        (u(), u()).prop_map(|(load, degradation)| Policy::PriorityLeastUsed { load, degradation }),
        u().prop_map(|load| Policy::RandomizedLeastUsed { load }),
        (u(), u()).prop_map(|(load, degradation)| Policy::RandomizedPriorityLeastUsed {
            load,
            degradation
        }),
        (u(), u()).prop_map(
            |(load, degradation)| Policy::RandomizedLeastUsedDegradation { load, degradation }
        ),
        (u(), u()).prop_map(|(load, degradation)| Policy::PriorityLeastUsedDegradation {
            load,
            degradation
        }),
        (u(), u()).prop_map(|(load, degradation)| {
            Policy::RandomizedPriorityLeastUsedDegradation { load, degradation }
        }),
        (u(), u(), u()).prop_map(|(weight, weight_dpf, distance)| Policy::WeightedRandomDpf {
            weight,
            weight_dpf,
            distance
        }),
        (u(), u(), u()).prop_map(|(load, load_dpf, distance)| Policy::LeastUsedDpf {
            load,
            load_dpf,
            distance
        }),
        (u(), u(), u(), u()).prop_map(|(load, degradation, load_dpf, distance)| {
            Policy::LeastUsedDegradationDpf {
                load,
                degradation,
                load_dpf,
                distance,
            }
        }),
    ]
}

fn pool_handle() -> impl Strategy<Value = PoolHandle> {
    vec(any::<u8>(), 1..=32).prop_map(|b| PoolHandle::new(b).unwrap())
}

fn pool_element() -> impl Strategy<Value = PoolElement> {
    (
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        transport(),
        policy(),
        proptest::option::of(transport()),
    )
        .prop_map(
            |(id, home_registrar, registration_life_ms, user_transport, policy, asap_transport)| {
                PoolElement {
                    id: PeId(id),
                    home_registrar,
                    registration_life_ms,
                    user_transport,
                    policy,
                    asap_transport,
                }
            },
        )
}

fn server_info() -> impl Strategy<Value = ServerInformation> {
    (any::<u32>(), transport()).prop_map(|(server_id, transport)| ServerInformation {
        server_id,
        transport,
    })
}

fn operation_error() -> impl Strategy<Value = OperationError> {
    vec(
        (any::<u16>(), vec(any::<u8>(), 0..16)).prop_map(|(code, info)| ErrorCause {
            code: CauseCode(code),
            info,
        }),
        1..4,
    )
    .prop_map(|causes| OperationError { causes })
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..40)
}

fn asap_message() -> impl Strategy<Value = AsapMessage> {
    let ph = pool_handle;
    let id = || any::<u32>().prop_map(PeId);
    let err = || proptest::option::of(operation_error());
    prop_oneof![
        (ph(), pool_element()).prop_map(|(pool_handle, pool_element)| {
            AsapMessage::Registration {
                pool_handle,
                pool_element,
            }
        }),
        (ph(), id())
            .prop_map(|(pool_handle, pe_id)| AsapMessage::Deregistration { pool_handle, pe_id }),
        (any::<bool>(), ph(), id(), err()).prop_map(|(rejected, pool_handle, pe_id, error)| {
            AsapMessage::RegistrationResponse {
                rejected,
                pool_handle,
                pe_id,
                error,
            }
        }),
        (ph(), id(), err()).prop_map(|(pool_handle, pe_id, error)| {
            AsapMessage::DeregistrationResponse {
                pool_handle,
                pe_id,
                error,
            }
        }),
        (any::<bool>(), ph(), proptest::option::of(any::<u32>())).prop_map(
            |(subscribe, pool_handle, items)| AsapMessage::HandleResolution {
                subscribe,
                pool_handle,
                items,
            }
        ),
        (
            any::<bool>(),
            ph(),
            proptest::option::of(policy()),
            vec(pool_element(), 0..4),
            err()
        )
            .prop_map(|(accepted, pool_handle, policy, pool_elements, error)| {
                AsapMessage::HandleResolutionResponse {
                    accepted,
                    pool_handle,
                    policy,
                    pool_elements,
                    error,
                }
            }),
        (
            any::<bool>(),
            any::<u32>(),
            ph(),
            proptest::option::of(id())
        )
            .prop_map(|(home, server_id, pool_handle, pe_id)| {
                AsapMessage::EndpointKeepAlive {
                    home,
                    server_id,
                    pool_handle,
                    pe_id,
                }
            }),
        (ph(), id()).prop_map(|(pool_handle, pe_id)| AsapMessage::EndpointKeepAliveAck {
            pool_handle,
            pe_id
        }),
        (ph(), id()).prop_map(|(pool_handle, pe_id)| AsapMessage::EndpointUnreachable {
            pool_handle,
            pe_id
        }),
        (any::<u32>(), vec(transport(), 0..3)).prop_map(|(server_id, transports)| {
            AsapMessage::ServerAnnounce {
                server_id,
                transports,
            }
        }),
        bytes().prop_map(|cookie| AsapMessage::Cookie { cookie }),
        bytes().prop_map(|cookie| AsapMessage::CookieEcho { cookie }),
        (
            ph(),
            proptest::option::of(policy()),
            vec(pool_element(), 0..3)
        )
            .prop_map(
                |(pool_handle, policy, pool_elements)| AsapMessage::BusinessCard {
                    pool_handle,
                    policy,
                    pool_elements,
                }
            ),
        operation_error().prop_map(|error| AsapMessage::Error { error }),
    ]
}

fn enrp_body() -> impl Strategy<Value = EnrpBody> {
    let target = || any::<u32>();
    prop_oneof![
        (
            any::<bool>(),
            any::<u16>(),
            proptest::option::of(server_info())
        )
            .prop_map(
                |(reply_required, checksum, server_info)| EnrpBody::Presence {
                    reply_required,
                    checksum,
                    server_info,
                }
            ),
        any::<bool>()
            .prop_map(|own_children_only| EnrpBody::HandleTableRequest { own_children_only }),
        (
            any::<bool>(),
            any::<bool>(),
            vec(
                (pool_handle(), vec(pool_element(), 1..3)).prop_map(
                    |(pool_handle, pool_elements)| PoolEntry {
                        pool_handle,
                        pool_elements
                    }
                ),
                0..3
            )
        )
            .prop_map(
                |(reject, more_to_send, pools)| EnrpBody::HandleTableResponse {
                    reject,
                    more_to_send,
                    pools,
                }
            ),
        (any::<bool>(), any::<bool>(), pool_handle(), pool_element()).prop_map(
            |(takeover_suggested, del, pool_handle, pool_element)| EnrpBody::HandleUpdate {
                takeover_suggested,
                action: if del {
                    UpdateAction::DelPe
                } else {
                    UpdateAction::AddPe
                },
                pool_handle,
                pool_element,
            }
        ),
        Just(EnrpBody::ListRequest),
        (any::<bool>(), vec(server_info(), 0..4))
            .prop_map(|(reject, servers)| EnrpBody::ListResponse { reject, servers }),
        target().prop_map(|target_id| EnrpBody::InitTakeover { target_id }),
        target().prop_map(|target_id| EnrpBody::InitTakeoverAck { target_id }),
        target().prop_map(|target_id| EnrpBody::TakeoverServer { target_id }),
        operation_error().prop_map(|error| EnrpBody::Error { error }),
    ]
}

fn enrp_message() -> impl Strategy<Value = EnrpMessage> {
    (any::<u32>(), any::<u32>(), enrp_body()).prop_map(|(sender_id, receiver_id, body)| {
        EnrpMessage {
            sender_id,
            receiver_id,
            body,
        }
    })
}

fn parameter() -> impl Strategy<Value = Parameter> {
    prop_oneof![
        ip().prop_map(Parameter::Address),
        transport().prop_map(Parameter::Transport),
        policy().prop_map(Parameter::Policy),
        pool_handle().prop_map(Parameter::PoolHandle),
        pool_element().prop_map(Parameter::PoolElement),
        server_info().prop_map(Parameter::ServerInformation),
        operation_error().prop_map(Parameter::OperationError),
        bytes().prop_map(Parameter::Cookie),
        any::<u32>().prop_map(|v| Parameter::PeIdentifier(PeId(v))),
        any::<u16>().prop_map(Parameter::PeChecksum),
        any::<u32>().prop_map(|items| Parameter::HandleResolution { items }),
    ]
}

// ----------------------------------------------------------------------------------------------
// Helpers
// ----------------------------------------------------------------------------------------------

/// Checks what every decode result must satisfy: an error can be answered with a sendable
/// Error message (or none, when the RFC says to stay silent), and a success re-encodes.
fn check_outcome<M>(
    result: Result<Decoded<M>, WireError>,
    reencode: impl Fn(&M) -> Result<Vec<u8>, rserpool::wire::EncodeError>,
) {
    match result {
        Ok(decoded) => {
            // Anything we accept must be sendable again, and unrecognized reports too.
            reencode(&decoded.message).expect("decoded message re-encodes");
            if let Some(reply) = AsapMessage::unrecognized_reply(&decoded) {
                reply
                    .to_bytes()
                    .expect("unrecognized-parameter report encodes");
            }
        }
        Err(err) => {
            assert!(!err.to_string().is_empty());
            match AsapMessage::error_reply(&err) {
                Some(reply) => {
                    assert!(err.should_report());
                    let bytes = reply.to_bytes().expect("error reply encodes");
                    let back = AsapMessage::decode(&bytes).expect("error reply decodes");
                    let AsapMessage::Error { error } = back.message else {
                        panic!("error reply is not an ASAP_ERROR")
                    };
                    assert_eq!(error.first_code(), Some(err.cause_code()));
                }
                None => assert!(!err.should_report()),
            }
        }
    }
}

fn check_asap_bytes(bytes: &[u8]) {
    check_outcome(AsapMessage::decode(bytes), |m| m.to_bytes());
}

fn check_enrp_bytes(bytes: &[u8]) {
    check_outcome(EnrpMessage::decode(bytes), |m| m.to_bytes());
}

#[derive(Clone, Debug)]
enum Mutation {
    Truncate(usize),
    SetU16 { at: usize, value: u16 },
    Flip { at: usize, mask: u8 },
    Append(Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::Truncate),
        // Even offsets hit type and length fields of the 4-byte aligned headers.
        (any::<usize>(), any::<u16>()).prop_map(|(at, value)| Mutation::SetU16 { at, value }),
        (any::<usize>(), 1..=255u8).prop_map(|(at, mask)| Mutation::Flip { at, mask }),
        vec(any::<u8>(), 1..8).prop_map(Mutation::Append),
    ]
}

fn mutate(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    match m {
        Mutation::Truncate(n) => bytes.truncate(n % bytes.len()),
        Mutation::SetU16 { at, value } => {
            let at = (at % bytes.len()) & !1;
            if at + 2 <= bytes.len() {
                bytes[at..at + 2].copy_from_slice(&value.to_be_bytes());
            }
        }
        Mutation::Flip { at, mask } => {
            let at = at % bytes.len();
            bytes[at] ^= mask;
        }
        Mutation::Append(extra) => bytes.extend_from_slice(extra),
    }
}

// ----------------------------------------------------------------------------------------------
// Properties
// ----------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn asap_round_trip(msg in asap_message()) {
        let bytes = msg.to_bytes().unwrap();
        prop_assert_eq!(bytes.len() % 4, 0);
        let length = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
        prop_assert_eq!(roundup4(length), bytes.len());
        let decoded = AsapMessage::decode(&bytes).unwrap();
        prop_assert!(decoded.unrecognized.is_empty());
        prop_assert_eq!(decoded.message, msg);
    }

    #[test]
    fn enrp_round_trip(msg in enrp_message()) {
        let bytes = msg.to_bytes().unwrap();
        prop_assert_eq!(bytes.len() % 4, 0);
        let decoded = EnrpMessage::decode(&bytes).unwrap();
        prop_assert_eq!(decoded.message, msg);
    }

    #[test]
    fn parameter_round_trip(p in parameter()) {
        let bytes = p.to_bytes().unwrap();
        let length = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
        // The length covers everything we wrote; padding is never part of a TLV's length.
        prop_assert_eq!(length, bytes.len());
        prop_assert_eq!(&Parameter::decode(&bytes).unwrap().message, &p);
        // With its padding the TLV still decodes.
        let mut padded = bytes.clone();
        padded.resize(roundup4(bytes.len()), 0);
        prop_assert_eq!(Parameter::decode(&padded).unwrap().message, p);
    }

    #[test]
    fn policy_text_round_trip(p in policy()) {
        // The text form carries everything but the run-time load and distance.
        let mut expected = p.with_load(0);
        expected.set_distance(0);
        let text = expected.to_string();
        prop_assert_eq!(text.parse::<Policy>(), Ok(expected));
    }

    #[test]
    fn fractions_map_back(f in 0.0f64..=1.0) {
        let v = rserpool::wire::policy::fraction_to_wire(f).unwrap();
        prop_assert!((fraction_from_wire(v) - f).abs() < 1e-9);
    }

    #[test]
    fn asap_decode_any_bytes(bytes in vec(any::<u8>(), 0..200)) {
        check_asap_bytes(&bytes);
    }

    #[test]
    fn enrp_decode_any_bytes(bytes in vec(any::<u8>(), 0..200)) {
        check_enrp_bytes(&bytes);
    }

    #[test]
    fn decode_any_bytes_with_a_plausible_header(
        msg_type in 0u8..16, flags in any::<u8>(), body in vec(any::<u8>(), 0..200)
    ) {
        // A consistent header gets the decoder past framing into the parameter parsers.
        let len = (body.len() + 4) as u16;
        let mut bytes = vec![msg_type, flags];
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.extend_from_slice(&body);
        check_asap_bytes(&bytes);
        check_enrp_bytes(&bytes);
    }

    #[test]
    fn parameter_decode_any_bytes(bytes in vec(any::<u8>(), 0..120)) {
        match Parameter::decode(&bytes) {
            Ok(p) => { p.message.to_bytes().unwrap(); }
            Err(e) => { let _ = e.error_cause(); }
        }
    }

    #[test]
    fn mutated_asap_messages(msg in asap_message(), mutations in vec(mutation(), 1..4)) {
        let original = msg.to_bytes().unwrap();
        let mut bytes = original.clone();
        for m in &mutations {
            mutate(&mut bytes, m);
        }
        check_asap_bytes(&bytes);
        // Cutting a message short of its length field is always an error.
        let length = usize::from(u16::from_be_bytes([original[2], original[3]]));
        if let Some(Mutation::Truncate(n)) = mutations.first() {
            let cut = n % original.len();
            if mutations.len() == 1 && cut < length {
                prop_assert!(AsapMessage::decode(&original[..cut]).is_err());
            }
        }
    }

    #[test]
    fn mutated_enrp_messages(msg in enrp_message(), mutations in vec(mutation(), 1..4)) {
        let mut bytes = msg.to_bytes().unwrap();
        for m in &mutations {
            mutate(&mut bytes, m);
        }
        check_enrp_bytes(&bytes);
    }

    #[test]
    fn mutated_examples(index in any::<usize>(), mutations in vec(mutation(), 1..4)) {
        let asap = asap_examples();
        let enrp = enrp_examples();
        let mut a = asap[index % asap.len()].to_bytes().unwrap();
        let mut e = enrp[index % enrp.len()].to_bytes().unwrap();
        for m in &mutations {
            mutate(&mut a, m);
            mutate(&mut e, m);
        }
        check_asap_bytes(&a);
        check_enrp_bytes(&e);
        check_asap_bytes(&e);
        check_enrp_bytes(&a);
    }
}

// ----------------------------------------------------------------------------------------------
// Examples
// ----------------------------------------------------------------------------------------------

#[test]
fn examples_round_trip_and_cover_everything() {
    let asap = asap_examples();
    let enrp = enrp_examples();
    let mut asap_types: Vec<u8> = asap.iter().map(AsapMessage::message_type).collect();
    asap_types.sort_unstable();
    asap_types.dedup();
    assert_eq!(asap_types, (0x01..=0x0e).collect::<Vec<u8>>());
    let mut enrp_types: Vec<u8> = enrp.iter().map(EnrpMessage::message_type).collect();
    enrp_types.sort_unstable();
    enrp_types.dedup();
    assert_eq!(enrp_types, (0x01..=0x0a).collect::<Vec<u8>>());

    let mut flag_bytes = std::collections::BTreeSet::new();
    let mut all_bytes = Vec::new();
    for m in &asap {
        let bytes = m.to_bytes().unwrap();
        assert_eq!(&AsapMessage::decode(&bytes).unwrap().message, m);
        flag_bytes.insert(("asap", bytes[0], bytes[1]));
        all_bytes.push(bytes);
    }
    for m in &enrp {
        let bytes = m.to_bytes().unwrap();
        assert_eq!(&EnrpMessage::decode(&bytes).unwrap().message, m);
        flag_bytes.insert(("enrp", bytes[0], bytes[1]));
        all_bytes.push(bytes);
    }
    // Every flag set and clear at least once.
    for (proto, t, f) in [
        ("asap", 0x03, 0x01),
        ("asap", 0x05, 0x01),
        ("asap", 0x06, 0x01),
        ("asap", 0x07, 0x01),
        ("enrp", 0x01, 0x01),
        ("enrp", 0x02, 0x01),
        ("enrp", 0x03, 0x01),
        ("enrp", 0x03, 0x02),
        ("enrp", 0x04, 0x01),
        ("enrp", 0x06, 0x01),
    ] {
        assert!(
            flag_bytes.contains(&(proto, t, f)),
            "{proto} type {t:#x} flags {f:#x}"
        );
        assert!(
            flag_bytes.contains(&(proto, t, 0)),
            "{proto} type {t:#x} without flags"
        );
    }

    // Every parameter type appears (searching the TLV headers in the encoded messages).
    let has_param = |ty: u16| {
        let needle = ty.to_be_bytes();
        all_bytes
            .iter()
            .any(|b| b.chunks(4).any(|w| w.len() == 4 && w[..2] == needle))
    };
    for ty in (0x0001u16..=0x0010).chain([0x803f]) {
        assert!(
            has_param(ty),
            "parameter type {ty:#06x} missing from the examples"
        );
    }

    // Every encodable policy type, and every RFC cause code.
    let policies: std::collections::BTreeSet<u32> =
        all_policies().iter().map(Policy::policy_type).collect();
    assert_eq!(policies.len(), Policy::ENCODABLE_TYPES.len());
    for code in Policy::ENCODABLE_TYPES {
        assert!(
            asap.iter().any(
                |m| matches!(m, AsapMessage::Registration { pool_element, .. }
                if pool_element.policy.policy_type() == code)
            ),
            "policy {code:#010x} missing from the ASAP examples"
        );
        assert!(
            enrp.iter().any(|m| matches!(&m.body, EnrpBody::HandleTableResponse { pools, .. }
                if pools.iter().any(|p| p.pool_elements.iter().any(|pe| pe.policy.policy_type() == code)))),
            "policy {code:#010x} missing from the ENRP examples"
        );
    }
    let codes: std::collections::BTreeSet<u16> = asap
        .iter()
        .filter_map(|m| match m {
            AsapMessage::Error { error } => Some(error.causes.iter().map(|c| c.code.0)),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(codes, (0x0..=0xa).collect());
    // Every transport kind appears.
    assert_eq!(
        all_transports()
            .iter()
            .map(|t| t.param_type())
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        6
    );
}
