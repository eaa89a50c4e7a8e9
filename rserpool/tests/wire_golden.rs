//! Hand-written byte vectors (from the RFC 5352-5354 figures and rsplib's layouts, not from
//! our encoder), unknown-type handling, and decoding of rsplib-style lengths.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rserpool::wire::asap::AsapMessage;
use rserpool::wire::enrp::{EnrpBody, EnrpMessage, UpdateAction};
use rserpool::wire::{
    CauseCode, ErrorCause, MAX_POOL_HANDLE_LEN, OperationError, Parameter, PeId, Policy,
    PoolElement, PoolHandle, ServerInformation, TransportAddress, TransportUse,
    UnknownMessageAction, UnknownParameterAction, WireError, message_frame_len,
};

fn fgp() -> PoolHandle {
    "FGP".parse().unwrap()
}

fn ip4(d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, d))
}

/// Encodes `msg`, compares with `bytes`, decodes `bytes` and compares with `msg`.
fn check_asap(msg: &AsapMessage, bytes: &[u8]) {
    assert_eq!(msg.to_bytes().unwrap(), bytes, "encoding of {}", msg.name());
    let decoded = AsapMessage::decode(bytes).unwrap();
    assert_eq!(&decoded.message, msg);
    assert!(decoded.unrecognized.is_empty());
}

fn check_enrp(msg: &EnrpMessage, bytes: &[u8]) {
    assert_eq!(msg.to_bytes().unwrap(), bytes, "encoding of {}", msg.name());
    let decoded = EnrpMessage::decode(bytes).unwrap();
    assert_eq!(&decoded.message, msg);
    assert!(decoded.unrecognized.is_empty());
}

#[rustfmt::skip]
const REGISTRATION: [u8; 52] = [
    0x01, 0x00, 0x00, 0x34,             // ASAP_REGISTRATION, flags 0, length 52
    0x00, 0x09, 0x00, 0x07,             // Pool Handle, length 7
    b'F', b'G', b'P', 0x00,             //   "FGP" + 1 padding byte (not in the length)
    0x00, 0x0a, 0x00, 0x28,             // Pool Element, length 40
    0x11, 0x22, 0x33, 0x44,             //   PE identifier
    0x00, 0x00, 0x00, 0x00,             //   home ENRP server: unknown
    0x00, 0x01, 0x5f, 0x90,             //   registration life 90000 ms
    0x00, 0x05, 0x00, 0x10,             //   TCP Transport, length 16
    0x1f, 0x90, 0x00, 0x00,             //     port 8080, reserved
    0x00, 0x01, 0x00, 0x08,             //     IPv4 Address, length 8
    0x0a, 0x00, 0x00, 0x05,             //       10.0.0.5
    0x00, 0x08, 0x00, 0x08,             //   Policy, length 8
    0x00, 0x00, 0x00, 0x01,             //     Round Robin
];

#[test]
fn golden_registration() {
    let msg = AsapMessage::Registration {
        pool_handle: fgp(),
        pool_element: PoolElement {
            id: PeId(0x1122_3344),
            home_registrar: 0,
            registration_life_ms: 90_000,
            user_transport: TransportAddress::Tcp {
                port: 8080,
                address: ip4(5),
            },
            policy: Policy::RoundRobin,
            asap_transport: None,
        },
    };
    check_asap(&msg, &REGISTRATION);
}

#[test]
fn golden_handle_resolution_with_items_option() {
    #[rustfmt::skip]
    let bytes = [
        0x05, 0x01, 0x00, 0x14,         // ASAP_HANDLE_RESOLUTION, S flag, length 20
        0x00, 0x09, 0x00, 0x07,         // Pool Handle, length 7
        b'F', b'G', b'P', 0x00,         //   "FGP" + padding
        0x80, 0x3f, 0x00, 0x08,         // Handle Resolution option (0x803f), length 8
        0x00, 0x00, 0x00, 0x03,         //   items 3
    ];
    let msg = AsapMessage::HandleResolution {
        subscribe: true,
        pool_handle: fgp(),
        items: Some(3),
    };
    check_asap(&msg, &bytes);
}

#[test]
fn golden_handle_resolution_response() {
    #[rustfmt::skip]
    let bytes = [
        0x06, 0x01, 0x00, 0x58,         // ASAP_HANDLE_RESOLUTION_RESPONSE, A flag, length 88
        0x00, 0x09, 0x00, 0x07,         // Pool Handle, length 7
        b'F', b'G', b'P', 0x00,         //   "FGP" + padding
        0x00, 0x08, 0x00, 0x0c,         // overall Policy, length 12
        0x40, 0x00, 0x00, 0x01,         //   Least Used
        0x00, 0x00, 0x00, 0x00,         //   load 0
        0x00, 0x0a, 0x00, 0x40,         // Pool Element, length 64
        0x0a, 0x0b, 0x0c, 0x0d,         //   PE identifier
        0x5e, 0x2d, 0x00, 0x01,         //   home ENRP server
        0x00, 0x01, 0x5f, 0x90,         //   registration life 90000 ms
        0x00, 0x04, 0x00, 0x24,         //   SCTP Transport, length 36
        0x9c, 0x7b, 0x00, 0x01,         //     port 40059, DATA plus CONTROL
        0x00, 0x01, 0x00, 0x08,         //     IPv4 Address
        0x0a, 0x00, 0x00, 0x05,         //       10.0.0.5
        0x00, 0x02, 0x00, 0x14,         //     IPv6 Address
        0x20, 0x01, 0x0d, 0xb8,         //       2001:db8::5
        0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x05,
        0x00, 0x08, 0x00, 0x0c,         //   Policy, length 12
        0x40, 0x00, 0x00, 0x01,         //     Least Used
        0x20, 0x00, 0x00, 0x00,         //     load 0x20000000 (12.5 %)
    ];
    let msg = AsapMessage::HandleResolutionResponse {
        accepted: true,
        pool_handle: fgp(),
        policy: Some(Policy::LeastUsed { load: 0 }),
        pool_elements: vec![PoolElement {
            id: PeId(0x0a0b_0c0d),
            home_registrar: 0x5e2d_0001,
            registration_life_ms: 90_000,
            user_transport: TransportAddress::Sctp {
                port: 40059,
                transport_use: TransportUse::DataPlusControl,
                addresses: vec![
                    ip4(5),
                    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 5)),
                ],
            },
            policy: Policy::LeastUsed { load: 0x2000_0000 },
            asap_transport: None,
        }],
        error: None,
    };
    check_asap(&msg, &bytes);
}

#[rustfmt::skip]
const KEEP_ALIVE: [u8; 24] = [
    0x07, 0x01, 0x00, 0x18,             // ASAP_ENDPOINT_KEEP_ALIVE, H flag, length 24
    0x5e, 0x2d, 0x00, 0x01,             // server identifier
    0x00, 0x09, 0x00, 0x07,             // Pool Handle, length 7
    b'F', b'G', b'P', 0x00,             //   "FGP" + padding
    0x00, 0x0e, 0x00, 0x08,             // PE Identifier (rsplib extension), length 8
    0x0a, 0x0b, 0x0c, 0x0d,
];

#[test]
fn golden_endpoint_keep_alive() {
    let msg = AsapMessage::EndpointKeepAlive {
        home: true,
        server_id: 0x5e2d_0001,
        pool_handle: fgp(),
        pe_id: Some(PeId(0x0a0b_0c0d)),
    };
    check_asap(&msg, &KEEP_ALIVE);
}

/// Registration Response, R flag, Operation Error with an odd-length cause: the message
/// length (35) excludes the final padding byte, which is sent.
#[rustfmt::skip]
const REGISTRATION_REJECTED: [u8; 36] = [
    0x03, 0x01, 0x00, 0x23,             // ASAP_REGISTRATION_RESPONSE, R flag, length 35
    0x00, 0x09, 0x00, 0x07,             // Pool Handle, length 7
    b'F', b'G', b'P', 0x00,             //   "FGP" + padding
    0x00, 0x0e, 0x00, 0x08,             // PE Identifier
    0x11, 0x22, 0x33, 0x44,
    0x00, 0x0c, 0x00, 0x0f,             // Operation Error, length 15
    0x00, 0x03, 0x00, 0x0b,             //   cause Invalid Values, length 11
    0x00, 0x09, 0x00, 0x07,             //     offending TLV: Pool Handle "FGP"
    b'F', b'G', b'P',
    0x00,                               // final padding (not in any length)
];

fn registration_rejected() -> AsapMessage {
    AsapMessage::RegistrationResponse {
        rejected: true,
        pool_handle: fgp(),
        pe_id: PeId(0x1122_3344),
        error: Some(OperationError::single(ErrorCause::invalid_values(vec![
            0x00, 0x09, 0x00, 0x07, b'F', b'G', b'P',
        ]))),
    }
}

#[test]
fn golden_registration_response_rejected() {
    check_asap(&registration_rejected(), &REGISTRATION_REJECTED);
}

#[test]
fn golden_enrp_presence() {
    #[rustfmt::skip]
    let bytes = [
        0x01, 0x01, 0x00, 0x2c,         // ENRP_PRESENCE, R flag, length 44
        0x5e, 0x2d, 0x00, 0x01,         // sending server
        0x00, 0x00, 0x00, 0x00,         // receiving server: group-cast
        0x00, 0x0f, 0x00, 0x06,         // PE Checksum, length 6
        0x1b, 0xce, 0x00, 0x00,         //   checksum + 2 padding bytes
        0x00, 0x0b, 0x00, 0x18,         // Server Information, length 24
        0x5e, 0x2d, 0x00, 0x01,         //   server id
        0x00, 0x04, 0x00, 0x10,         //   SCTP Transport, length 16
        0x26, 0xad, 0x00, 0x00,         //     port 9901, DATA ONLY
        0x00, 0x01, 0x00, 0x08,         //     IPv4 Address
        0x0a, 0x00, 0x00, 0x01,         //       10.0.0.1
    ];
    let msg = EnrpMessage {
        sender_id: 0x5e2d_0001,
        receiver_id: 0,
        body: EnrpBody::Presence {
            reply_required: true,
            checksum: 0x1bce,
            server_info: Some(ServerInformation {
                server_id: 0x5e2d_0001,
                transport: TransportAddress::Sctp {
                    port: 9901,
                    transport_use: TransportUse::DataOnly,
                    addresses: vec![ip4(1)],
                },
            }),
        },
    };
    check_enrp(&msg, &bytes);
}

#[test]
fn golden_enrp_handle_update() {
    #[rustfmt::skip]
    let bytes = [
        0x04, 0x01, 0x00, 0x50,         // ENRP_HANDLE_UPDATE, T flag, length 80
        0x5e, 0x2d, 0x00, 0x01,         // sending server
        0x5e, 0x2d, 0x00, 0x02,         // receiving server
        0x00, 0x01, 0x00, 0x00,         // update action DEL_PE, reserved
        0x00, 0x09, 0x00, 0x07,         // Pool Handle, length 7
        b'F', b'G', b'P', 0x00,         //   "FGP" + padding
        0x00, 0x0a, 0x00, 0x38,         // Pool Element, length 56
        0x0a, 0x0b, 0x0c, 0x0d,         //   PE identifier
        0x5e, 0x2d, 0x00, 0x01,         //   home ENRP server
        0x00, 0x01, 0x5f, 0x90,         //   registration life 90000 ms
        0x00, 0x05, 0x00, 0x10,         //   user transport: TCP, length 16
        0x1f, 0x90, 0x00, 0x00,         //     port 8080, reserved
        0x00, 0x01, 0x00, 0x08,         //     IPv4 Address
        0x0a, 0x00, 0x00, 0x05,         //       10.0.0.5
        0x00, 0x08, 0x00, 0x08,         //   Policy, length 8
        0x00, 0x00, 0x00, 0x01,         //     Round Robin
        0x00, 0x05, 0x00, 0x10,         //   ASAP transport: TCP, length 16
        0xc7, 0x38, 0x00, 0x00,         //     port 51000, reserved
        0x00, 0x01, 0x00, 0x08,         //     IPv4 Address
        0x0a, 0x00, 0x00, 0x05,         //       10.0.0.5
    ];
    let msg = EnrpMessage {
        sender_id: 0x5e2d_0001,
        receiver_id: 0x5e2d_0002,
        body: EnrpBody::HandleUpdate {
            takeover_suggested: true,
            action: UpdateAction::DelPe,
            pool_handle: fgp(),
            pool_element: PoolElement {
                id: PeId(0x0a0b_0c0d),
                home_registrar: 0x5e2d_0001,
                registration_life_ms: 90_000,
                user_transport: TransportAddress::Tcp {
                    port: 8080,
                    address: ip4(5),
                },
                policy: Policy::RoundRobin,
                asap_transport: Some(TransportAddress::Tcp {
                    port: 51000,
                    address: ip4(5),
                }),
            },
        },
    };
    check_enrp(&msg, &bytes);
}

#[test]
fn rsplib_style_lengths_including_padding_decode() {
    // rsplib: message length includes the final padding (36 instead of 35).
    let mut rsplib = REGISTRATION_REJECTED;
    rsplib[3] = 0x24;
    assert_eq!(
        AsapMessage::decode(&rsplib).unwrap().message,
        registration_rejected()
    );

    // Keep-alive without the PE identifier, length including the pool handle's padding (16).
    #[rustfmt::skip]
    let keep_alive = [
        0x07, 0x00, 0x00, 0x10,         // ASAP_ENDPOINT_KEEP_ALIVE, length 16 (rsplib style)
        0x5e, 0x2d, 0x00, 0x02,         // server identifier
        0x00, 0x09, 0x00, 0x07,         // Pool Handle, length 7
        b'F', b'G', b'P', 0x00,
    ];
    let expected = AsapMessage::EndpointKeepAlive {
        home: false,
        server_id: 0x5e2d_0002,
        pool_handle: fgp(),
        pe_id: None,
    };
    assert_eq!(AsapMessage::decode(&keep_alive).unwrap().message, expected);
    // The same in RFC style (length 15) decodes to the same message.
    let mut rfc = keep_alive;
    rfc[3] = 0x0f;
    assert_eq!(AsapMessage::decode(&rfc).unwrap().message, expected);

    // Nested: a Pool Element whose last parameter (an odd-length opaque transport... here the
    // policy follows, so an opaque *ASAP* transport) is padded, with the PE length covering
    // that padding (rsplib style: 4 + 12 + 8 + 8 + 8 = 40 instead of 37).
    #[rustfmt::skip]
    let registration = [
        0x01, 0x00, 0x00, 0x34,         // ASAP_REGISTRATION, length 52
        0x00, 0x09, 0x00, 0x07,         // Pool Handle "FGP"
        b'F', b'G', b'P', 0x00,
        0x00, 0x0a, 0x00, 0x28,         // Pool Element, length 40 (includes 3 padding bytes)
        0x11, 0x22, 0x33, 0x44,
        0x00, 0x00, 0x00, 0x00,
        0x00, 0x01, 0x5f, 0x90,
        0x00, 0x10, 0x00, 0x08,         //   Opaque Transport "abcd" as user transport
        b'a', b'b', b'c', b'd',
        0x00, 0x08, 0x00, 0x08,         //   Policy Round Robin
        0x00, 0x00, 0x00, 0x01,
        0x00, 0x10, 0x00, 0x05,         //   Opaque Transport "z" as ASAP transport
        b'z', 0x00, 0x00, 0x00,         //     + padding inside the PE's length
    ];
    let decoded = AsapMessage::decode(&registration).unwrap().message;
    let AsapMessage::Registration { pool_element, .. } = decoded else {
        panic!("not a registration: {decoded:?}");
    };
    assert_eq!(
        pool_element.user_transport,
        TransportAddress::Opaque(b"abcd".to_vec())
    );
    assert_eq!(
        pool_element.asap_transport,
        Some(TransportAddress::Opaque(b"z".to_vec()))
    );
    // Our encoder writes the RFC style: PE length 37, message length 49, 3 padding bytes.
    let ours = AsapMessage::Registration {
        pool_handle: fgp(),
        pool_element,
    }
    .to_bytes()
    .unwrap();
    assert_eq!((ours[3], ours[15], ours.len()), (49, 37, 52));
}

#[test]
fn framing_tolerates_missing_final_padding_but_not_extra_bytes() {
    let without_padding = &REGISTRATION_REJECTED[..35];
    assert_eq!(
        AsapMessage::decode(without_padding).unwrap().message,
        registration_rejected()
    );
    let mut extra = REGISTRATION_REJECTED.to_vec();
    extra.extend_from_slice(&[0, 0, 0, 0]);
    assert_eq!(
        AsapMessage::decode(&extra),
        Err(WireError::TrailingBytes { extra: 4 })
    );
    assert_eq!(
        AsapMessage::decode(&REGISTRATION_REJECTED[..30]),
        Err(WireError::Truncated {
            needed: 35,
            available: 30
        })
    );
    assert_eq!(message_frame_len(&REGISTRATION_REJECTED), Some(36));
    assert_eq!(message_frame_len(&[0x03, 0x01]), None);
    // Registration Life: the wire value is milliseconds.
    let AsapMessage::Registration { pool_element, .. } =
        AsapMessage::decode(&REGISTRATION).unwrap().message
    else {
        panic!("not a registration")
    };
    assert_eq!(pool_element.registration_life_ms, 90_000);
}

// ----------------------------------------------------------------------------------------------
// Unknown parameters and messages
// ----------------------------------------------------------------------------------------------

/// ASAP_DEREGISTRATION for "FGP" / PE 0x11223344 followed by one extra TLV.
fn deregistration_with(extra: &[u8]) -> Vec<u8> {
    #[rustfmt::skip]
    let mut m = vec![
        0x02, 0x00, 0x00, 0x00,         // ASAP_DEREGISTRATION, length patched below
        0x00, 0x09, 0x00, 0x07,         // Pool Handle "FGP"
        b'F', b'G', b'P', 0x00,
        0x00, 0x0e, 0x00, 0x08,         // PE Identifier
        0x11, 0x22, 0x33, 0x44,
    ];
    m.extend_from_slice(extra);
    let len = m.len() as u16;
    m[2..4].copy_from_slice(&len.to_be_bytes());
    m
}

fn deregistration() -> AsapMessage {
    AsapMessage::Deregistration {
        pool_handle: fgp(),
        pe_id: PeId(0x1122_3344),
    }
}

fn unknown_tlv(param_type: u16) -> Vec<u8> {
    let mut tlv = param_type.to_be_bytes().to_vec();
    tlv.extend_from_slice(&[0x00, 0x08, 0xca, 0xfe, 0xba, 0xbe]);
    tlv
}

#[test]
fn unknown_parameter_00_stops_silently() {
    let tlv = unknown_tlv(0x0042);
    let err = AsapMessage::decode(&deregistration_with(&tlv)).unwrap_err();
    assert_eq!(
        err,
        WireError::UnrecognizedParameter {
            param_type: 0x0042,
            action: UnknownParameterAction::Stop,
            tlv: tlv.clone(),
        }
    );
    assert!(!err.should_report());
    assert_eq!(err.operation_error(), None);
    assert_eq!(AsapMessage::error_reply(&err), None);
}

#[test]
fn unknown_parameter_01_stops_and_reports() {
    let tlv = unknown_tlv(0x4042);
    let err = AsapMessage::decode(&deregistration_with(&tlv)).unwrap_err();
    assert!(err.should_report());
    assert_eq!(err.cause_code(), CauseCode::UNRECOGNIZED_PARAMETER);
    assert_eq!(err.cause_info(), &tlv[..]);
    let reply = AsapMessage::error_reply(&err).unwrap();
    assert_eq!(
        reply,
        AsapMessage::Error {
            error: OperationError::single(ErrorCause::unrecognized_parameter(tlv))
        }
    );
    // The reply is sendable and decodes back.
    let bytes = reply.to_bytes().unwrap();
    assert_eq!(AsapMessage::decode(&bytes).unwrap().message, reply);
}

#[test]
fn unknown_parameter_10_is_skipped() {
    let decoded = AsapMessage::decode(&deregistration_with(&unknown_tlv(0x8042))).unwrap();
    assert_eq!(decoded.message, deregistration());
    assert!(decoded.unrecognized.is_empty());
    assert_eq!(AsapMessage::unrecognized_reply(&decoded), None);
}

#[test]
fn unknown_parameter_11_is_skipped_and_reported() {
    let tlv = unknown_tlv(0xc042);
    let decoded = AsapMessage::decode(&deregistration_with(&tlv)).unwrap();
    assert_eq!(decoded.message, deregistration());
    assert_eq!(decoded.unrecognized, vec![tlv.clone()]);
    assert_eq!(
        AsapMessage::unrecognized_reply(&decoded),
        Some(AsapMessage::Error {
            error: OperationError::single(ErrorCause::unrecognized_parameter(tlv.clone()))
        })
    );
    assert_eq!(
        EnrpMessage::unrecognized_reply(&decoded, 1, 2).map(|m| m.body),
        Some(EnrpBody::Error {
            error: OperationError::single(ErrorCause::unrecognized_parameter(tlv))
        })
    );
}

#[test]
fn unknown_parameters_inside_nested_parameters_follow_the_same_rules() {
    // A registration whose PE carries an odd-length 0xc0ff TLV after its policy and a 0x8001
    // TLV inside its TCP transport (before the address).
    let reported = [0xc0, 0xff, 0x00, 0x05, 0x99];
    #[rustfmt::skip]
    let bytes = [
        0x01, 0x00, 0x00, 0x41,         // ASAP_REGISTRATION, length 65
        0x00, 0x09, 0x00, 0x07,         // Pool Handle "FGP"
        b'F', b'G', b'P', 0x00,
        0x00, 0x0a, 0x00, 0x35,         // Pool Element, length 53
        0x11, 0x22, 0x33, 0x44,
        0x00, 0x00, 0x00, 0x00,
        0x00, 0x01, 0x5f, 0x90,
        0x00, 0x05, 0x00, 0x18,         //   TCP Transport, length 24
        0x1f, 0x90, 0x00, 0x00,
        0x80, 0x01, 0x00, 0x08,         //     unknown 0x8001: skip
        0x01, 0x02, 0x03, 0x04,
        0x00, 0x01, 0x00, 0x08,         //     IPv4 10.0.0.5
        0x0a, 0x00, 0x00, 0x05,
        0x00, 0x08, 0x00, 0x08,         //   Policy Round Robin
        0x00, 0x00, 0x00, 0x01,
        0xc0, 0xff, 0x00, 0x05,         //   unknown 0xc0ff: skip and report
        0x99, 0x00, 0x00, 0x00,         //     + final padding (outside all lengths)
    ];
    let decoded = AsapMessage::decode(&bytes).unwrap();
    assert_eq!(
        decoded.message,
        AsapMessage::decode(&REGISTRATION).unwrap().message
    );
    assert_eq!(decoded.unrecognized, vec![reported.to_vec()]);

    // A 0x4001 inside the transport stops everything.
    let mut stop = bytes;
    stop[36] = 0x40;
    let err = AsapMessage::decode(&stop).unwrap_err();
    assert!(matches!(
        err,
        WireError::UnrecognizedParameter {
            param_type: 0x4001,
            action: UnknownParameterAction::StopAndReport,
            ..
        }
    ));
}

#[test]
fn unknown_message_types_follow_their_top_bits() {
    for (msg_type, action, report) in [
        (0x0fu8, UnknownMessageAction::Discard, false),
        (0x00, UnknownMessageAction::Discard, false),
        (0x4f, UnknownMessageAction::DiscardAndReport, true),
        (0x8f, UnknownMessageAction::Reserved, false),
        (0xcf, UnknownMessageAction::Reserved, false),
    ] {
        let message = [msg_type, 0x00, 0x00, 0x07, 0xaa, 0xbb, 0xcc, 0x00];
        for err in [
            AsapMessage::decode(&message).unwrap_err(),
            EnrpMessage::decode(&message).unwrap_err(),
        ] {
            assert_eq!(
                err,
                WireError::UnrecognizedMessage {
                    msg_type,
                    action,
                    message: message[..7].to_vec(),
                }
            );
            assert_eq!(err.should_report(), report);
            assert_eq!(err.cause_code(), CauseCode::UNRECOGNIZED_MESSAGE);
        }
        let reply = EnrpMessage::error_reply(&EnrpMessage::decode(&message).unwrap_err(), 7, 9);
        assert_eq!(reply.is_some(), report);
        if let Some(reply) = reply {
            assert_eq!((reply.sender_id, reply.receiver_id), (7, 9));
            let back = EnrpMessage::decode(&reply.to_bytes().unwrap())
                .unwrap()
                .message;
            assert_eq!(
                back.body,
                EnrpBody::Error {
                    error: OperationError::single(ErrorCause::unrecognized_message(
                        message[..7].to_vec()
                    ))
                }
            );
        }
    }
    // ENRP type 0x0b is unassigned; ASAP type 0x0b (Cookie) is known.
    assert!(matches!(
        EnrpMessage::decode(&[0x0b, 0, 0, 4]),
        Err(WireError::UnrecognizedMessage { msg_type: 0x0b, .. })
    ));
    assert!(!matches!(
        AsapMessage::decode(&[0x0b, 0, 0, 4]),
        Err(WireError::UnrecognizedMessage { .. })
    ));
}

// ----------------------------------------------------------------------------------------------
// Invalid values
// ----------------------------------------------------------------------------------------------

#[test]
fn too_long_pool_handle_is_a_typed_error() {
    assert!(PoolHandle::new(vec![b'x'; MAX_POOL_HANDLE_LEN]).is_ok());
    assert!(PoolHandle::new(vec![b'x'; MAX_POOL_HANDLE_LEN + 1]).is_err());
    assert!(PoolHandle::new(Vec::new()).is_err());
    let mut m = vec![0x05, 0x00, 0x00, 0x29, 0x00, 0x09, 0x00, 0x25];
    m.extend_from_slice(&[b'x'; 33]);
    let err = AsapMessage::decode(&m).unwrap_err();
    assert!(matches!(
        err,
        WireError::PoolHandleTooLong {
            length: 33,
            max: 32,
            ..
        }
    ));
    assert_eq!(err.cause_code(), CauseCode::INVALID_VALUES);
    assert_eq!(err.cause_info(), &m[4..]);
}

#[test]
fn policies_rsplib_sends_short_and_ones_it_cannot_encode() {
    // rsplib sends Priority Least Used with the load only.
    let plu = [
        0x00, 0x08, 0x00, 0x0c, 0x40, 0x00, 0x00, 0x03, 0x12, 0x34, 0x56, 0x78,
    ];
    assert_eq!(
        Parameter::decode(&plu).unwrap().message,
        Parameter::Policy(Policy::PriorityLeastUsed {
            load: 0x1234_5678,
            degradation: 0
        })
    );
    // We send it with the degradation (RFC 5356 §5.3.4), length 16.
    assert_eq!(
        Parameter::Policy(Policy::PriorityLeastUsed {
            load: 1,
            degradation: 2
        })
        .to_bytes()
        .unwrap(),
        vec![0, 8, 0, 16, 0x40, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 2]
    );
    // PLU-DPF has no wire format.
    let plu_dpf = [0x00, 0x08, 0x00, 0x0c, 0xb0, 0x00, 0x20, 0x04, 0, 0, 0, 0];
    let err = Parameter::decode(&plu_dpf).unwrap_err();
    assert!(matches!(
        err,
        WireError::UnsupportedPolicy {
            policy_type: 0xb000_2004,
            ..
        }
    ));
    assert_eq!(err.cause_code(), CauseCode::INVALID_VALUES);
    // Least Used without its load is too short.
    let short = [0x00, 0x08, 0x00, 0x08, 0x40, 0x00, 0x00, 0x01];
    assert!(matches!(
        Parameter::decode(&short),
        Err(WireError::InvalidParameter {
            param_type: 0x0008,
            ..
        })
    ));
}

#[test]
fn structural_errors_map_to_causes() {
    // Deregistration without its PE identifier.
    let mut m = deregistration_with(&[]);
    m.truncate(12);
    m[3] = 12;
    let err = AsapMessage::decode(&m).unwrap_err();
    assert!(matches!(
        err,
        WireError::MissingParameter {
            param: "PE Identifier",
            ..
        }
    ));
    assert_eq!(err.cause_code(), CauseCode::UNSPECIFIED);
    // A cookie where a PE identifier belongs.
    let err = AsapMessage::decode(&deregistration_with(&[0, 0x0d, 0, 5, 1, 0, 0, 0])).unwrap_err();
    assert!(matches!(
        err,
        WireError::UnexpectedParameter {
            param_type: 0x000d,
            ..
        }
    ));
    assert_eq!(err.cause_info(), &[0, 0x0d, 0, 5, 1]);
    // A TLV overrunning the message.
    let err = AsapMessage::decode(&deregistration_with(&[0, 0x0d, 0, 40])).unwrap_err();
    assert!(matches!(err, WireError::InvalidParameter { .. }));
    // ENRP message shorter than its server ids.
    assert!(matches!(
        EnrpMessage::decode(&[0x05, 0, 0, 8, 0, 0, 0, 1]),
        Err(WireError::BadMessageLength {
            length: 8,
            minimum: 12
        })
    ));
    // Unknown update action.
    let err =
        EnrpMessage::decode(&[0x04, 0, 0, 16, 0, 0, 0, 1, 0, 0, 0, 2, 0, 7, 0, 0]).unwrap_err();
    assert_eq!(
        err,
        WireError::InvalidField {
            field: "update action",
            value: 7
        }
    );
    // SCTP transport use 2.
    let sctp = [0, 4, 0, 16, 0x26, 0xad, 0, 2, 0, 1, 0, 8, 10, 0, 0, 1];
    assert!(matches!(
        Parameter::decode(&sctp),
        Err(WireError::InvalidParameter { param_type: 4, .. })
    ));
    // Messages with only a header length below 4.
    assert!(matches!(
        AsapMessage::decode(&[0x01, 0, 0, 3]),
        Err(WireError::BadMessageLength { length: 3, .. })
    ));
}

#[test]
fn encode_errors_leave_the_buffer_alone() {
    let mut out = vec![1, 2, 3];
    let msg = AsapMessage::Cookie {
        cookie: vec![0; 70_000],
    };
    assert!(msg.encode(&mut out).is_err());
    assert_eq!(out, vec![1, 2, 3]);
    let empty_sctp = AsapMessage::ServerAnnounce {
        server_id: 1,
        transports: vec![TransportAddress::Sctp {
            port: 1,
            transport_use: TransportUse::DataOnly,
            addresses: vec![],
        }],
    };
    assert!(empty_sctp.encode(&mut out).is_err());
    let no_causes = AsapMessage::Error {
        error: OperationError { causes: vec![] },
    };
    assert!(no_causes.to_bytes().is_err());
    assert_eq!(out, vec![1, 2, 3]);
    // Encoding appends after existing data, aligned relative to the message start.
    let ka = AsapMessage::decode(&KEEP_ALIVE).unwrap().message;
    ka.encode(&mut out).unwrap();
    assert_eq!(&out[..3], &[1, 2, 3]);
    assert_eq!(&out[3..], &KEEP_ALIVE);
}
