//! Unit tests of the registrar core with simulated time: no sockets, no sleeps.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::handlespace::HandlespaceConfig;
use crate::wire::param::HANDLE_RESOLUTION_ALL;
use crate::wire::{Policy, TransportUse};

const ID: u32 = 0x00c0_ffee;

fn peer(association: u64) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, association as u8)),
        5000 + association as u16,
    )
}

fn ip(association: u64) -> IpAddr {
    peer(association).ip()
}

fn config() -> RegistrarConfig {
    RegistrarConfig {
        id: ID,
        keepalive: KeepAliveConfig {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
        },
        ..RegistrarConfig::default()
    }
}

/// A registrar with associations 1..=4 open.
fn registrar(config: RegistrarConfig) -> Registrar {
    let mut r = Registrar::new(config);
    for a in 1..=4 {
        r.handle_association_opened(a, peer(a));
    }
    r
}

fn handle(name: &str) -> PoolHandle {
    PoolHandle::new(name.as_bytes().to_vec()).expect("valid handle")
}

fn pe(id: u32, address: IpAddr, policy: Policy) -> PoolElement {
    PoolElement {
        id: PeId(id),
        home_registrar: 0,
        registration_life_ms: 15_000,
        user_transport: TransportAddress::Tcp {
            port: 7000 + (id % 1000) as u16,
            address,
        },
        policy,
        asap_transport: None,
    }
}

fn bytes(message: &AsapMessage) -> Vec<u8> {
    message.to_bytes().expect("encodable")
}

fn registration(pool: &str, element: PoolElement) -> Vec<u8> {
    bytes(&AsapMessage::Registration {
        pool_handle: handle(pool),
        pool_element: element,
    })
}

/// Every message sent since the last call, decoded, with its association.
fn sent(r: &mut Registrar) -> Vec<(u64, AsapMessage)> {
    let mut out = Vec::new();
    while let Some(t) = r.poll_transmit() {
        match t {
            Transmit::Send {
                association,
                payload,
            } => out.push((
                association,
                AsapMessage::decode(&payload)
                    .expect("the registrar sends decodable messages")
                    .message,
            )),
            Transmit::Close { association } => panic!("unexpected close of {association}"),
            other => panic!("ENRP was not started: {other:?}"),
        }
    }
    out
}

fn events(r: &mut Registrar) -> Vec<RegistrarEvent> {
    std::iter::from_fn(|| r.poll_event()).collect()
}

fn removals(r: &mut Registrar) -> Vec<(PeId, RemovalReason)> {
    events(r)
        .into_iter()
        .filter_map(|e| match e {
            RegistrarEvent::Removed { pe, reason, .. } => Some((pe, reason)),
            _ => None,
        })
        .collect()
}

/// Registers and asserts the registration was granted.
fn register_ok(
    r: &mut Registrar,
    association: u64,
    pool: &str,
    element: PoolElement,
    now: Instant,
) {
    let id = element.id;
    r.handle_message(association, &registration(pool, element), now);
    let answers = sent(r);
    assert_eq!(
        answers,
        vec![(
            association,
            AsapMessage::RegistrationResponse {
                rejected: false,
                pool_handle: handle(pool),
                pe_id: id,
                error: None,
            }
        )]
    );
}

/// Registers and returns the single cause of the rejection.
fn register_rejected(
    r: &mut Registrar,
    association: u64,
    pool: &str,
    element: PoolElement,
) -> ErrorCause {
    let id = element.id;
    r.handle_message(association, &registration(pool, element), Instant::now());
    match sent(r).as_slice() {
        [
            (
                a,
                AsapMessage::RegistrationResponse {
                    rejected: true,
                    pool_handle,
                    pe_id,
                    error: Some(error),
                },
            ),
        ] => {
            assert_eq!((*a, pool_handle, *pe_id), (association, &handle(pool), id));
            assert_eq!(error.causes.len(), 1);
            error.causes[0].clone()
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn resolve(r: &mut Registrar, association: u64, pool: &str, items: Option<u32>) -> AsapMessage {
    let request = bytes(&AsapMessage::HandleResolution {
        subscribe: false,
        pool_handle: handle(pool),
        items,
    });
    r.handle_message(association, &request, Instant::now());
    let mut answers = sent(r);
    assert_eq!(answers.len(), 1);
    let (a, message) = answers.remove(0);
    assert_eq!(a, association);
    message
}

fn resolved_ids(message: &AsapMessage) -> Vec<u32> {
    match message {
        AsapMessage::HandleResolutionResponse {
            pool_elements,
            error: None,
            ..
        } => pool_elements.iter().map(|e| e.id.0).collect(),
        other => panic!("expected a positive answer, got {other:?}"),
    }
}

#[test]
fn registration_records_the_pe_and_reregistration_updates_its_policy_values() {
    let mut r = registrar(config());
    let now = Instant::now();
    register_ok(
        &mut r,
        1,
        "pool",
        pe(7, ip(1), Policy::LeastUsed { load: 10 }),
        now,
    );
    let ev = events(&mut r);
    assert!(matches!(
        ev.as_slice(),
        [RegistrarEvent::Registered {
            reregistration: false,
            pe: PeId(7),
            ..
        }]
    ));
    let entry = r
        .handlespace()
        .get(&handle("pool"), PeId(7))
        .expect("registered");
    assert_eq!(entry.owner(), ID);
    assert_eq!(entry.association(), Some(1));

    register_ok(
        &mut r,
        1,
        "pool",
        pe(7, ip(1), Policy::LeastUsed { load: 99 }),
        now,
    );
    let ev = events(&mut r);
    assert!(matches!(
        ev.as_slice(),
        [RegistrarEvent::Registered {
            reregistration: true,
            ..
        }]
    ));
    let entry = r
        .handlespace()
        .get(&handle("pool"), PeId(7))
        .expect("registered");
    assert_eq!(entry.element().policy, Policy::LeastUsed { load: 99 });
    assert_eq!(r.handlespace().pool_element_count(), 1);
    assert_eq!(r.stats().registrations, 1);
    assert_eq!(r.stats().reregistrations, 1);
}

#[test]
fn unspecified_address_becomes_the_peer_address_and_foreign_addresses_are_rejected() {
    let mut r = registrar(config());
    register_ok(
        &mut r,
        2,
        "pool",
        pe(1, IpAddr::V4(Ipv4Addr::UNSPECIFIED), Policy::RoundRobin),
        Instant::now(),
    );
    let entry = r
        .handlespace()
        .get(&handle("pool"), PeId(1))
        .expect("registered");
    assert_eq!(
        entry.element().user_transport,
        TransportAddress::Tcp {
            port: 7001,
            address: ip(2)
        }
    );
    // Registering association 3's address over association 2 is refused.
    let cause = register_rejected(&mut r, 2, "pool", pe(2, ip(3), Policy::RoundRobin));
    assert_eq!(cause.code, CauseCode::INVALID_VALUES);
    assert!(r.handlespace().get(&handle("pool"), PeId(2)).is_none());
    // An opaque transport cannot be checked.
    let mut opaque = pe(3, ip(2), Policy::RoundRobin);
    opaque.user_transport = TransportAddress::Opaque(b"somewhere".to_vec());
    assert_eq!(
        register_rejected(&mut r, 2, "pool", opaque).code,
        CauseCode::INVALID_VALUES
    );
}

#[test]
fn every_registration_reject_cause() {
    let mut limited = config();
    limited.handlespace = HandlespaceConfig {
        max_pools: 1,
        ..HandlespaceConfig::default()
    };
    let mut r = registrar(limited);
    let now = Instant::now();
    register_ok(&mut r, 1, "pool", pe(1, ip(1), Policy::RoundRobin), now);

    // PE identifier 0: invalid values.
    let cause = register_rejected(&mut r, 1, "pool", pe(0, ip(1), Policy::RoundRobin));
    assert_eq!(cause.code, CauseCode::INVALID_VALUES);

    // Another policy type: inconsistent pooling policy, the info is the pool's policy TLV.
    let cause = register_rejected(&mut r, 1, "pool", pe(2, ip(1), Policy::Random));
    assert_eq!(cause.code, CauseCode::INCONSISTENT_POOLING_POLICY);
    assert_eq!(
        cause.info,
        Parameter::Policy(Policy::RoundRobin)
            .to_bytes()
            .expect("encodable")
    );

    // Another transport type: inconsistent transport type, the info is a member's transport.
    let mut udp = pe(3, ip(1), Policy::RoundRobin);
    udp.user_transport = TransportAddress::Udp {
        port: 9,
        address: ip(1),
    };
    let cause = register_rejected(&mut r, 1, "pool", udp);
    assert_eq!(cause.code, CauseCode::INCONSISTENT_TRANSPORT_TYPE);
    assert!(!cause.info.is_empty());

    // SCTP pool with DATA ONLY, then a DATA plus CONTROL member: inconsistent data/control.
    let sctp = |id: u32, transport_use| {
        let mut e = pe(id, ip(1), Policy::RoundRobin);
        e.user_transport = TransportAddress::Sctp {
            port: 9,
            transport_use,
            addresses: vec![ip(1)],
        };
        e
    };
    let mut r2 = registrar(config());
    register_ok(&mut r2, 1, "sctp", sctp(1, TransportUse::DataOnly), now);
    let cause = register_rejected(&mut r2, 1, "sctp", sctp(2, TransportUse::DataPlusControl));
    assert_eq!(
        cause.code,
        CauseCode::INCONSISTENT_DATA_CONTROL_CONFIGURATION
    );

    // A second pool beyond max_pools = 1: lack of resources.
    let cause = register_rejected(&mut r, 1, "other", pe(4, ip(1), Policy::RoundRobin));
    assert_eq!(cause.code, CauseCode::LACK_OF_RESOURCES);

    // Non-unique PE identifier when foreign re-registration is refused.
    let mut strict = config();
    strict.handlespace.foreign_reregistration = crate::handlespace::ForeignReregistration::Reject;
    let mut r3 = registrar(strict);
    register_ok(
        &mut r3,
        1,
        "pool",
        pe(5, IpAddr::V4(Ipv4Addr::UNSPECIFIED), Policy::RoundRobin),
        now,
    );
    let cause = register_rejected(
        &mut r3,
        2,
        "pool",
        pe(5, IpAddr::V4(Ipv4Addr::UNSPECIFIED), Policy::RoundRobin),
    );
    assert_eq!(cause.code, CauseCode::NON_UNIQUE_PE_IDENTIFIER);

    // A pool handle above 32 bytes cannot be echoed: ASAP Error with Invalid Values.
    let mut long = registration("p", pe(6, ip(1), Policy::RoundRobin));
    let long_handle = [b'x'; 40];
    // Rebuild with a 40-byte handle by hand: header, Pool Handle TLV, then the PE TLV.
    let pe_tlv = long.split_off(4 + 8);
    let mut message = vec![0x01, 0x00, 0, 0];
    message.extend_from_slice(&[0x00, 0x09, 0, 44]);
    message.extend_from_slice(&long_handle);
    message.extend_from_slice(&pe_tlv);
    let len = message.len() as u16;
    message[2..4].copy_from_slice(&len.to_be_bytes());
    r.handle_message(1, &message, now);
    match sent(&mut r).as_slice() {
        [(1, AsapMessage::Error { error })] => {
            assert_eq!(error.causes[0].code, CauseCode::INVALID_VALUES)
        }
        other => panic!("expected an ASAP Error, got {other:?}"),
    }
    assert_eq!(r.handlespace().pool_element_count(), 1);
    assert_eq!(r.stats().rejected_registrations, 4);
}

#[test]
fn deregistration_only_from_the_registering_association() {
    let mut r = registrar(config());
    let now = Instant::now();
    register_ok(&mut r, 1, "pool", pe(1, ip(1), Policy::RoundRobin), now);
    let dereg = bytes(&AsapMessage::Deregistration {
        pool_handle: handle("pool"),
        pe_id: PeId(1),
    });
    r.handle_message(2, &dereg, now);
    match sent(&mut r).as_slice() {
        [(2, AsapMessage::DeregistrationResponse { error: Some(e), .. })] => {
            assert_eq!(e.causes[0].code, CauseCode::REJECTED_SECURITY)
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(r.handlespace().get(&handle("pool"), PeId(1)).is_some());
    events(&mut r);

    r.handle_message(1, &dereg, now);
    assert_eq!(
        sent(&mut r),
        vec![(
            1,
            AsapMessage::DeregistrationResponse {
                pool_handle: handle("pool"),
                pe_id: PeId(1),
                error: None
            }
        )]
    );
    assert_eq!(
        removals(&mut r),
        vec![(PeId(1), RemovalReason::Deregistered)]
    );
    assert!(r.handlespace().is_empty());
    // Keep-alive supervision ended with it.
    assert_eq!(r.poll_timeout(), None);

    // An unknown PE's deregistration is granted (RFC 5352 §3.2).
    r.handle_message(3, &dereg, now);
    assert!(matches!(
        sent(&mut r).as_slice(),
        [(3, AsapMessage::DeregistrationResponse { error: None, .. })]
    ));
}

#[test]
fn handle_resolution_items_default_all_cap_and_unknown_pool() {
    let mut capped = config();
    capped.max_hr_items = Some(4);
    let mut r = registrar(config());
    let mut rc = registrar(capped);
    let now = Instant::now();
    for id in 1..=10 {
        register_ok(&mut r, 1, "pool", pe(id, ip(1), Policy::RoundRobin), now);
        register_ok(&mut rc, 1, "pool", pe(id, ip(1), Policy::RoundRobin), now);
    }
    assert_eq!(resolved_ids(&resolve(&mut r, 2, "pool", None)).len(), 3);
    assert_eq!(resolved_ids(&resolve(&mut r, 2, "pool", Some(5))).len(), 5);
    assert_eq!(resolved_ids(&resolve(&mut r, 2, "pool", Some(0))).len(), 1);
    let mut all = resolved_ids(&resolve(&mut r, 2, "pool", Some(HANDLE_RESOLUTION_ALL)));
    all.sort_unstable();
    assert_eq!(all, (1..=10).collect::<Vec<_>>());
    assert_eq!(
        resolved_ids(&resolve(&mut rc, 2, "pool", Some(HANDLE_RESOLUTION_ALL))).len(),
        4
    );
    assert_eq!(resolved_ids(&resolve(&mut rc, 2, "pool", None)).len(), 3);

    // Answers carry the policy and the PEs as registered (no registrator transport).
    match resolve(&mut r, 2, "pool", None) {
        AsapMessage::HandleResolutionResponse {
            policy,
            pool_elements,
            accepted,
            ..
        } => {
            assert_eq!(policy, Some(Policy::RoundRobin));
            assert!(!accepted);
            for e in pool_elements {
                assert_eq!(e.asap_transport, None);
                assert_eq!(e.home_registrar, ID);
                assert_eq!(e, {
                    let mut x = pe(e.id.0, ip(1), Policy::RoundRobin);
                    x.home_registrar = ID;
                    x
                });
            }
        }
        other => panic!("{other:?}"),
    }

    match resolve(&mut r, 2, "nothing", None) {
        AsapMessage::HandleResolutionResponse {
            pool_elements,
            error: Some(error),
            ..
        } => {
            assert!(pool_elements.is_empty());
            assert_eq!(error.causes[0].code, CauseCode::UNKNOWN_POOL_HANDLE);
        }
        other => panic!("expected an Unknown Pool Handle answer, got {other:?}"),
    }
}

#[test]
fn resolving_all_of_a_huge_pool_answers_as_many_as_fit() {
    let mut big = config();
    // One association registers them all here.
    big.handlespace.max_pool_elements_per_association = 3000;
    let mut r = registrar(big);
    let now = Instant::now();
    for id in 1..=3000 {
        r.handle_message(
            1,
            &registration("big", pe(id, ip(1), Policy::RoundRobin)),
            now,
        );
    }
    assert_eq!(r.handlespace().pool_element_count(), 3000);
    sent(&mut r);
    let answer = resolve(&mut r, 2, "big", Some(HANDLE_RESOLUTION_ALL));
    let n = resolved_ids(&answer).len();
    assert!(n > 1000 && n < 3000, "{n} PEs");
    assert!(bytes(&answer).len() <= usize::from(u16::MAX) + 3);
}

#[test]
fn keepalive_timeout_removes_a_silent_pe_and_acks_keep_it() {
    let mut r = registrar(config());
    let t0 = Instant::now();
    register_ok(&mut r, 1, "pool", pe(1, ip(1), Policy::RoundRobin), t0);
    register_ok(&mut r, 2, "pool", pe(2, ip(2), Policy::RoundRobin), t0);
    events(&mut r);

    let mut now = t0;
    let mut keepalives = [0u32; 3];
    // Ten keep-alive cycles: PE 2 answers each Keep-Alive, PE 1 never does.
    for _ in 0..40 {
        let Some(deadline) = r.poll_timeout() else {
            break;
        };
        assert!(deadline >= now, "deadlines never lie in the past");
        now = deadline;
        r.handle_timeout(now);
        for (association, message) in sent(&mut r) {
            match message {
                AsapMessage::EndpointKeepAlive {
                    home,
                    server_id,
                    pool_handle,
                    pe_id: Some(pe_id),
                } => {
                    assert!(!home);
                    assert_eq!(server_id, ID);
                    assert_eq!(u64::from(pe_id.0), association);
                    keepalives[association as usize] += 1;
                    if association == 2 {
                        let ack = bytes(&AsapMessage::EndpointKeepAliveAck { pool_handle, pe_id });
                        r.handle_message(2, &ack, now + Duration::from_millis(10));
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        if now > t0 + Duration::from_secs(60) {
            break;
        }
    }
    // PE 1 got exactly one Keep-Alive and was removed a timeout later.
    assert_eq!(keepalives[1], 1);
    assert!(keepalives[2] >= 10);
    assert!(r.handlespace().get(&handle("pool"), PeId(1)).is_none());
    assert!(r.handlespace().get(&handle("pool"), PeId(2)).is_some());
    let removed = removals(&mut r);
    assert_eq!(removed, vec![(PeId(1), RemovalReason::KeepAliveTimeout)]);
    // The overhead counters: two registrations and PE 2's acks in; two responses and every
    // keep-alive out.
    let acks = u64::from(keepalives[2]);
    assert_eq!(r.stats().asap_messages_received, 2 + acks);
    assert_eq!(
        r.stats().asap_messages_sent,
        2 + u64::from(keepalives[1]) + acks
    );
}

#[test]
fn keepalive_ack_from_another_association_does_not_count() {
    let mut r = registrar(config());
    let t0 = Instant::now();
    register_ok(&mut r, 1, "pool", pe(1, ip(1), Policy::RoundRobin), t0);
    let due = r.poll_timeout().expect("armed");
    assert!(due >= t0 + Duration::from_millis(4375) && due <= t0 + Duration::from_millis(5625));
    r.handle_timeout(due);
    assert_eq!(sent(&mut r).len(), 1);
    let ack = bytes(&AsapMessage::EndpointKeepAliveAck {
        pool_handle: handle("pool"),
        pe_id: PeId(1),
    });
    r.handle_message(3, &ack, due);
    r.handle_timeout(due + Duration::from_secs(5));
    assert!(r.handlespace().is_empty());
}

#[test]
fn reregistration_restarts_the_keepalive_cycle() {
    let mut r = registrar(config());
    let t0 = Instant::now();
    register_ok(&mut r, 1, "pool", pe(1, ip(1), Policy::RoundRobin), t0);
    let due = r.poll_timeout().expect("armed");
    r.handle_timeout(due);
    assert_eq!(sent(&mut r).len(), 1);
    // No Ack, but a re-registration before the timeout proves the PE alive.
    register_ok(
        &mut r,
        1,
        "pool",
        pe(1, ip(1), Policy::RoundRobin),
        due + Duration::from_secs(4),
    );
    r.handle_timeout(due + Duration::from_secs(5));
    assert!(r.handlespace().get(&handle("pool"), PeId(1)).is_some());
    assert!(r.poll_timeout().expect("armed") > due + Duration::from_secs(8));
}

#[test]
fn association_close_removes_all_its_pes_at_once() {
    let mut r = registrar(config());
    let now = Instant::now();
    register_ok(&mut r, 1, "a", pe(1, ip(1), Policy::RoundRobin), now);
    register_ok(&mut r, 1, "b", pe(2, ip(1), Policy::RoundRobin), now);
    register_ok(&mut r, 2, "a", pe(3, ip(2), Policy::RoundRobin), now);
    events(&mut r);
    r.handle_association_closed(1);
    let mut removed = removals(&mut r);
    removed.sort_by_key(|(pe, _)| pe.0);
    assert_eq!(
        removed,
        vec![
            (PeId(1), RemovalReason::AssociationClosed),
            (PeId(2), RemovalReason::AssociationClosed)
        ]
    );
    assert_eq!(r.handlespace().pool_element_count(), 1);
    assert!(r.handlespace().pool(&handle("b")).is_none());
    assert_eq!(r.association_count(), 3);
    // Only PE 3 is still supervised: one Keep-Alive, to association 2.
    let due = r.poll_timeout().expect("armed");
    r.handle_timeout(due);
    let ka = sent(&mut r);
    assert_eq!(ka.len(), 1);
    assert_eq!(ka[0].0, 2);
}

#[test]
fn unreachable_reports_probe_the_pe_and_remove_it_only_if_it_stays_silent() {
    let mut r = registrar(config());
    let now = Instant::now();
    register_ok(&mut r, 1, "pool", pe(1, ip(1), Policy::RoundRobin), now);
    events(&mut r);
    let report = bytes(&AsapMessage::EndpointUnreachable {
        pool_handle: handle("pool"),
        pe_id: PeId(1),
    });
    let resolve = bytes(&AsapMessage::HandleResolution {
        subscribe: false,
        pool_handle: handle("pool"),
        items: None,
    });
    let counts = |r: &mut Registrar| -> Vec<usize> {
        events(r)
            .into_iter()
            .filter_map(|e| match e {
                RegistrarEvent::UnreachableReport { count, .. } => Some(count),
                _ => None,
            })
            .collect()
    };
    // A reporter that was never handed the PE does not count.
    r.handle_message(9, &report, now);
    assert_eq!(counts(&mut r), Vec::<usize>::new());
    assert_eq!(r.stats().ignored_unreachable_reports, 1);
    for pu in [2, 3, 4] {
        r.handle_message(pu, &resolve, now);
    }
    sent(&mut r);
    // One PU reporting five times counts once (and only ten times a second at all).
    for _ in 0..5 {
        r.handle_message(2, &report, now);
    }
    assert_eq!(counts(&mut r), vec![1; 5]);
    r.handle_message(3, &report, now);
    assert_eq!(counts(&mut r), vec![2]);
    assert!(
        sent(&mut r).is_empty(),
        "Endpoint Unreachable has no answer"
    );
    // The third reporter starts a probe: a Keep-Alive on the PE's association, and the PE is
    // left out of resolutions meanwhile.
    r.handle_message(4, &report, now);
    let ev = events(&mut r);
    assert!(ev.contains(&RegistrarEvent::ProbeStarted {
        pool: handle("pool"),
        pe: PeId(1),
    }));
    assert!(matches!(
        sent(&mut r).as_slice(),
        [(
            1,
            AsapMessage::EndpointKeepAlive {
                pe_id: Some(PeId(1)),
                ..
            }
        )]
    ));
    r.handle_message(2, &resolve, now);
    assert!(matches!(
        sent(&mut r).as_slice(),
        [(2, AsapMessage::HandleResolutionResponse { pool_elements, .. })] if pool_elements.is_empty()
    ));
    assert!(r.handlespace().get(&handle("pool"), PeId(1)).is_some());
    // Silent for the probe timeout: removed.
    let deadline = r.poll_timeout().expect("the probe's deadline");
    assert_eq!(deadline, now + ReportConfig::default().probe_timeout);
    r.handle_timeout(deadline);
    assert_eq!(
        removals(&mut r),
        vec![(PeId(1), RemovalReason::UnreachableReports)]
    );
    assert!(r.handlespace().is_empty());

    // A PE that answers the probe stays, its reports forgotten.
    let mut one = config();
    one.max_bad_pe_reports = 1;
    let mut r = registrar(one);
    register_ok(&mut r, 1, "pool", pe(1, ip(1), Policy::RoundRobin), now);
    r.handle_message(2, &resolve, now);
    sent(&mut r);
    r.handle_message(2, &report, now);
    sent(&mut r);
    let ack = bytes(&AsapMessage::EndpointKeepAliveAck {
        pool_handle: handle("pool"),
        pe_id: PeId(1),
    });
    // Only from the PE's own association.
    r.handle_message(2, &ack, now);
    assert!(!events(&mut r).contains(&RegistrarEvent::ProbeAnswered {
        pool: handle("pool"),
        pe: PeId(1),
    }));
    r.handle_message(1, &ack, now);
    assert!(events(&mut r).contains(&RegistrarEvent::ProbeAnswered {
        pool: handle("pool"),
        pe: PeId(1),
    }));
    let entry = r.handlespace().get(&handle("pool"), PeId(1)).expect("kept");
    assert_eq!(entry.unreachable_reports(), 0);
    r.handle_timeout(now + Duration::from_secs(2));
    assert!(removals(&mut r).is_empty());
}

#[test]
fn malformed_and_unknown_messages_get_errors_and_change_nothing() {
    let mut r = registrar(config());
    let now = Instant::now();
    register_ok(&mut r, 1, "pool", pe(1, ip(1), Policy::RoundRobin), now);
    let before = r.handlespace().snapshot();

    // Truncated header, bad length field, length beyond the bytes: Unspecified Error.
    for bad in [
        vec![0x01, 0x00],
        vec![0x05, 0x00, 0x00, 0x02],
        vec![0x05, 0, 0, 40, 0, 9, 0, 8],
    ] {
        r.handle_message(2, &bad, now);
        match sent(&mut r).as_slice() {
            [(2, AsapMessage::Error { error })] => {
                assert_eq!(error.causes[0].code, CauseCode::UNSPECIFIED)
            }
            other => panic!("expected an ASAP Error for {bad:?}, got {other:?}"),
        }
    }
    // Unknown type with top bits 01: reported as Unrecognized Message.
    r.handle_message(2, &[0x41, 0, 0, 4], now);
    match sent(&mut r).as_slice() {
        [(2, AsapMessage::Error { error })] => {
            assert_eq!(error.causes[0].code, CauseCode::UNRECOGNIZED_MESSAGE);
            assert_eq!(error.causes[0].info, vec![0x41, 0, 0, 4]);
        }
        other => panic!("{other:?}"),
    }
    // Unknown type with top bits 00: discarded silently (RFC 5354 §4).
    r.handle_message(2, &[0x3f, 0, 0, 4], now);
    assert!(sent(&mut r).is_empty());
    // A well-formed message not meant for a registrar is discarded.
    r.handle_message(
        2,
        &bytes(&AsapMessage::Cookie {
            cookie: vec![1, 2, 3],
        }),
        now,
    );
    assert!(sent(&mut r).is_empty());

    assert_eq!(r.handlespace().snapshot(), before);
    assert_eq!(r.stats().bad_messages, 6);
}

/// A valid message of every kind the registrar handles, for mutation.
fn seed_messages() -> Vec<Vec<u8>> {
    let h = handle("pool");
    vec![
        registration("pool", pe(1, ip(1), Policy::RoundRobin)),
        registration(
            "pool",
            pe(2, IpAddr::V4(Ipv4Addr::UNSPECIFIED), Policy::RoundRobin),
        ),
        registration("lu", pe(3, ip(1), Policy::LeastUsed { load: 5 })),
        bytes(&AsapMessage::Deregistration {
            pool_handle: h.clone(),
            pe_id: PeId(1),
        }),
        bytes(&AsapMessage::HandleResolution {
            subscribe: false,
            pool_handle: h.clone(),
            items: Some(2),
        }),
        bytes(&AsapMessage::EndpointUnreachable {
            pool_handle: h.clone(),
            pe_id: PeId(1),
        }),
        bytes(&AsapMessage::EndpointKeepAliveAck {
            pool_handle: h,
            pe_id: PeId(2),
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any byte sequence on any association, interleaved with closes and time passing, never
    /// panics, always answers with decodable messages and keeps the handlespace consistent.
    #[test]
    fn any_input_keeps_the_core_consistent(
        steps in proptest::collection::vec(
            (0u8..6, 1u64..=4, 0usize..7, proptest::collection::vec(any::<u8>(), 0..64), any::<u16>(), any::<u8>()),
            1..40,
        )
    ) {
        let mut r = registrar(config());
        let seeds = seed_messages();
        let mut now = Instant::now();
        for (kind, association, seed, noise, position, value) in steps {
            match kind {
                0 => r.handle_message(association, &noise, now),
                1 | 2 => r.handle_message(association, &seeds[seed], now),
                3 => {
                    // One byte of a valid message changed.
                    let mut m = seeds[seed].clone();
                    let i = usize::from(position) % m.len();
                    m[i] ^= value | 1;
                    r.handle_message(association, &m, now);
                }
                4 => {
                    r.handle_association_closed(association);
                    r.handle_association_opened(association, peer(association));
                }
                _ => {
                    now += Duration::from_millis(u64::from(position));
                    r.handle_timeout(now);
                }
            }
            while let Some(t) = r.poll_transmit() {
                if let Transmit::Send { payload, .. } = t {
                    prop_assert!(AsapMessage::decode(&payload).is_ok());
                }
            }
            while r.poll_event().is_some() {}
            prop_assert_eq!(r.handlespace().check_invariants(), Ok(()));
            // Every supervised PE is in the handlespace, and vice versa.
            prop_assert_eq!(r.keepalive.len(), r.handlespace().pool_element_count());
        }
    }
}
