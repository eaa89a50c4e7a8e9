//! ENRP (RFC 5353) in simulated time: registrars that find each other, keep one handlespace,
//! repair it when an update is lost, and take over the PEs of a registrar that died. Each test
//! reads as a story, like `sim.rs`.

use std::cell::Cell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use rserpool::handlespace::AssociationKey;
use rserpool::pe::Event as PeEvent;
use rserpool::registrar::{Registrar, RegistrarConfig, RegistrarEvent, RemovalReason};
use rserpool::sim::{Node, PeSpec, Record, Sim, SimConfig, Verdict};
use rserpool::wire::enrp::{EnrpBody, UpdateAction};
use rserpool::wire::{AsapMessage, PeId, Policy, PoolElement, PoolHandle, TransportAddress};

const POOL: &str = "EnrpPool";

fn config(id: u32) -> RegistrarConfig {
    RegistrarConfig {
        id,
        seed: u64::from(id),
        ..RegistrarConfig::default()
    }
}

/// `n` registrars with identifiers 1..=n, each configured with all the others as peers.
fn mesh(n: usize) -> Sim {
    let mut sim = Sim::new(SimConfig::default());
    for index in 0..n {
        sim.add_registrar(config(index as u32 + 1));
    }
    for index in 0..n {
        let peers: Vec<usize> = (0..n).filter(|&p| p != index).collect();
        let enrp = sim.enrp_config(index, &peers);
        sim.with_registrar(index, |core, now| core.start_enrp(enrp, now));
    }
    sim.run_until_or_panic(
        Duration::from_secs(10),
        "registrars know each other",
        |sim| (0..n).all(|r| sim.registrar(r).enrp_peers().len() == n - 1),
    );
    sim
}

fn pe_spec(registrars: Vec<usize>) -> PeSpec {
    PeSpec {
        registrars,
        ..PeSpec::new(POOL)
    }
}

fn owner(sim: &Sim, registrar: usize, pe: usize) -> Option<u32> {
    let handle = PoolHandle::new(POOL.as_bytes()).unwrap();
    sim.registrar(registrar)
        .handlespace()
        .get(&handle, sim.pe_id(pe))
        .map(|entry| entry.owner())
}

fn events(sim: &Sim, registrar: usize) -> Vec<RegistrarEvent> {
    sim.registrar_events(registrar)
        .into_iter()
        .map(|(_, event)| event)
        .collect()
}

/// Registrar `registrar`'s core registers `count` PEs of `pool` over associations that exist
/// only inside it (1,000 per association), as if that many PE processes had.
fn register_directly(sim: &mut Sim, registrar: usize, pool: &str, count: u32) {
    let handle = PoolHandle::new(pool.as_bytes()).unwrap();
    sim.with_registrar(registrar, |core: &mut Registrar, now| {
        for id in 1..=count {
            let association: AssociationKey = 1_000_000 + u64::from(id / 1000);
            let peer = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 9, 0, 1)), 40000);
            core.handle_association_opened(association, peer);
            let registration = AsapMessage::Registration {
                pool_handle: handle.clone(),
                pool_element: PoolElement {
                    id: PeId(id),
                    home_registrar: 0,
                    registration_life_ms: 3_600_000,
                    user_transport: TransportAddress::Tcp {
                        port: 10_000 + (id % 50_000) as u16,
                        address: peer.ip(),
                    },
                    policy: Policy::RoundRobin,
                    asap_transport: None,
                },
            };
            core.handle_message(association, &registration.to_bytes().unwrap(), now);
        }
    });
}

#[test]
fn registrars_find_each_other_and_every_one_lists_every_pe() {
    let mut sim = mesh(3);
    for registrar in 0..3 {
        sim.add_pe(pe_spec(vec![registrar]));
    }
    sim.run_until_or_panic(
        Duration::from_secs(5),
        "every PE listed everywhere",
        |sim| (0..3).all(|r| (0..3).all(|pe| sim.lists(r, pe))),
    );
    // Each PE is owned by the registrar it registered with, in every view.
    for registrar in 0..3 {
        for pe in 0..3 {
            assert_eq!(owner(&sim, registrar, pe), Some(pe as u32 + 1));
        }
    }
    // The views agree, checksums included, and stay so while heartbeats and re-registrations
    // run (no audit finds anything to repair).
    sim.run_for(Duration::from_secs(30));
    let checksums: Vec<u16> = (0..3)
        .map(|r| sim.registrar(r).handlespace().checksum())
        .collect();
    assert!(checksums.windows(2).all(|w| w[0] == w[1]), "{checksums:?}");
    for registrar in 0..3 {
        assert!(
            !events(&sim, registrar)
                .iter()
                .any(|e| matches!(e, RegistrarEvent::AuditMismatch { .. })),
            "registrar{registrar} found a mismatch\n{}",
            sim.dump()
        );
    }
}

#[test]
fn a_new_registrar_downloads_10000_pes_from_its_mentor_page_by_page() {
    let mut sim = Sim::new(SimConfig::default());
    let old = sim.add_enrp_registrar(config(1), &[]);
    register_directly(&mut sim, old, "BigPool", 10_000);
    assert_eq!(
        sim.registrar(old).handlespace().pool_element_count(),
        10_000
    );
    let pages = Rc::new(Cell::new(0usize));
    let counted = pages.clone();
    sim.set_enrp_filter(move |from, _, message| {
        if let EnrpBody::HandleTableResponse { .. } = message.body
            && from == old
        {
            counted.set(counted.get() + 1);
        }
        Verdict::Deliver
    });
    let new = sim.add_enrp_registrar(config(2), &[old]);
    sim.run_until_or_panic(Duration::from_secs(3), "the whole handlespace", |sim| {
        sim.registrar(new).handlespace().pool_element_count() == 10_000
    });
    // 128 PEs a page (rsplib's default): 79 pages.
    assert_eq!(pages.get(), 10_000usize.div_ceil(128));
    assert!(sim.registrar(new).enrp_started());
    assert!(events(&sim, new).contains(&RegistrarEvent::EnrpStartupOver { mentor: Some(1) }));
    assert_eq!(
        sim.registrar(new).handlespace().checksum(),
        sim.registrar(old).handlespace().checksum()
    );
    assert_eq!(sim.registrar(new).handlespace().owned_by(1).count(), 10_000);
}

#[test]
fn a_lost_update_is_repaired_by_the_checksum_audit() {
    let mut sim = mesh(2);
    // The ADD of the first PE never reaches registrar 1, nor later its DEL.
    let dropped = Rc::new(Cell::new(0));
    let count = dropped.clone();
    sim.set_enrp_filter(move |from, to, message| match message.body {
        EnrpBody::HandleUpdate { .. } if (from, to) == (0, 1) && count.get() < 1 => {
            count.set(count.get() + 1);
            Verdict::Drop
        }
        _ => Verdict::Deliver,
    });
    let pe = sim.add_pe(pe_spec(vec![0]));
    sim.run_until_or_panic(Duration::from_secs(1), "registered", |sim| sim.lists(0, pe));
    assert_eq!(dropped.get(), 1);
    assert!(!sim.lists(1, pe));
    // The next PRESENCE carries a checksum that registrar 1 cannot match: it asks again.
    sim.run_until_or_panic(Duration::from_secs(4), "repaired by the audit", |sim| {
        sim.lists(1, pe)
    });
    assert!(
        events(&sim, 1)
            .iter()
            .any(|e| matches!(e, RegistrarEvent::AuditMismatch { peer: 1, .. }))
    );

    // A lost DEL: registrar 1 keeps a PE registrar 0 removed, until the audit.
    sim.set_enrp_filter(|from, to, message| match message.body {
        EnrpBody::HandleUpdate {
            action: UpdateAction::DelPe,
            ..
        } if (from, to) == (0, 1) => Verdict::Drop,
        _ => Verdict::Deliver,
    });
    sim.shutdown_pe(pe);
    sim.run_until_or_panic(Duration::from_secs(1), "deregistered", |sim| {
        !sim.lists(0, pe)
    });
    assert!(sim.lists(1, pe));
    sim.run_until_or_panic(Duration::from_secs(4), "removed by the audit", |sim| {
        !sim.lists(1, pe)
    });
    assert!(events(&sim, 1).iter().any(|e| matches!(
        e,
        RegistrarEvent::Removed {
            reason: RemovalReason::Resynchronised,
            ..
        }
    )));
}

/// A PE that knows only registrar 0, which is then killed.
fn orphan(registrars: usize) -> (Sim, usize) {
    let mut sim = mesh(registrars);
    let pe = sim.add_pe(pe_spec(vec![0]));
    sim.run_until_or_panic(Duration::from_secs(1), "listed everywhere", |sim| {
        (0..registrars).all(|r| sim.lists(r, pe))
    });
    sim.kill(Node::Registrar(0));
    (sim, pe)
}

fn took_over(sim: &Sim, registrar: usize) -> Option<(u32, usize)> {
    events(sim, registrar).into_iter().find_map(|e| match e {
        RegistrarEvent::TakeoverWon { target, pes } => Some((target, pes)),
        _ => None,
    })
}

#[test]
fn with_two_registrars_the_survivor_takes_over_at_once() {
    let (mut sim, pe) = orphan(2);
    let killed = sim.now();
    sim.run_until_or_panic(Duration::from_secs(15), "taken over", |sim| {
        took_over(sim, 1).is_some()
    });
    assert_eq!(took_over(&sim, 1), Some((1, 1)));
    // Silent for MAX-TIME-LAST-HEARD, then unanswered for MAX-TIME-NO-RESPONSE (5 s + 5 s
    // after the last PRESENCE, which came up to one heartbeat cycle before the kill).
    let after = sim.now() - killed;
    assert!(
        after > Duration::from_secs(7) && after <= Duration::from_secs(11),
        "{after:?}"
    );
    assert_eq!(owner(&sim, 1, pe), Some(2));
    // The PE was told at its data address, took registrar 2 as its home and registers over
    // the association the Keep-Alive came on (it knew no other registrar), so it stays in the
    // pool past its registration life (3 x 5 s).
    sim.run_for(Duration::from_millis(10));
    let told = sim
        .records()
        .iter()
        .any(|(_, record)| matches!(record, Record::Pe(0, PeEvent::HomeChanged { home: 2 })));
    assert!(told, "{}", sim.dump());
    assert_eq!(sim.registered_with(pe), Some(1), "{}", sim.dump());
    sim.run_for(Duration::from_secs(40));
    assert_eq!(owner(&sim, 1, pe), Some(2));
    assert_eq!(sim.registered_with(pe), Some(1));
    assert!(
        !events(&sim, 1)
            .iter()
            .any(|e| matches!(e, RegistrarEvent::Removed { .. })),
        "{}",
        sim.dump()
    );
}

#[test]
fn with_three_registrars_the_highest_identifier_takes_over_and_the_other_agrees() {
    let (mut sim, pe) = orphan(3);
    sim.run_until_or_panic(Duration::from_secs(15), "taken over", |sim| {
        took_over(sim, 1).is_some() || took_over(sim, 2).is_some()
    });
    sim.run_for(Duration::from_millis(50));
    // Both noticed the death at about the same time; identifier 3 wins (RFC 5353 §3.5.1).
    assert_eq!(took_over(&sim, 2), Some((1, 1)), "{}", sim.dump());
    assert_eq!(took_over(&sim, 1), None, "{}", sim.dump());
    assert!(events(&sim, 1).iter().any(|e| matches!(
        e,
        RegistrarEvent::TakenOver {
            target: 1,
            by: 3,
            pes: 1
        }
    )));
    assert_eq!(owner(&sim, 1, pe), Some(3));
    assert_eq!(owner(&sim, 2, pe), Some(3));
}

#[test]
fn a_pe_whose_home_dies_registers_with_another_and_every_view_follows() {
    let mut sim = mesh(3);
    let pe = sim.add_pe(pe_spec(vec![0, 1]));
    sim.run_until_or_panic(Duration::from_secs(1), "listed everywhere", |sim| {
        (0..3).all(|r| sim.lists(r, pe))
    });
    sim.kill(Node::Registrar(0));
    sim.run_until_or_panic(Duration::from_secs(2), "moved to registrar 2", |sim| {
        owner(sim, 1, pe) == Some(2) && owner(sim, 2, pe) == Some(2)
    });
    // Registrar 1 left nothing to take over, and the PE stays listed past its registration
    // life (3 x 5 s) because it re-registers.
    sim.run_for(Duration::from_secs(40));
    assert!(sim.lists(1, pe) && sim.lists(2, pe));
    assert_eq!(took_over(&sim, 1), None);
    assert_eq!(took_over(&sim, 2), None);
}

#[test]
fn a_restarted_registrar_catches_up_with_every_peer() {
    let mut sim = mesh(3);
    let at_0 = sim.add_pe(pe_spec(vec![0]));
    let at_1 = sim.add_pe(pe_spec(vec![1]));
    sim.run_until_or_panic(Duration::from_secs(1), "listed", |sim| {
        sim.lists(2, at_0) && sim.lists(2, at_1)
    });
    sim.kill(Node::Registrar(2));
    sim.run_for(Duration::from_secs(20));
    // It owned no PEs: nobody takes anything over; the others forgot it.
    assert_eq!(took_over(&sim, 0), None);
    assert_eq!(sim.registrar(0).enrp_peers().len(), 1);
    sim.restart_registrar(2, config(3), &[0, 1]);
    sim.run_until_or_panic(Duration::from_secs(6), "caught up", |sim| {
        sim.lists(2, at_0) && sim.lists(2, at_1) && sim.registrar(0).enrp_peers().len() == 2
    });
    assert_eq!(owner(&sim, 2, at_0), Some(1));
    assert_eq!(owner(&sim, 2, at_1), Some(2));
    assert_eq!(
        sim.registrar(2).handlespace().checksum(),
        sim.registrar(0).handlespace().checksum()
    );
}

#[test]
fn a_late_delete_from_a_former_home_does_not_remove_a_pe_that_moved() {
    let mut sim = mesh(3);
    let handle = PoolHandle::new(POOL.as_bytes()).unwrap();
    let element = PoolElement {
        id: PeId(0x77),
        home_registrar: 0,
        registration_life_ms: 60_000,
        user_transport: TransportAddress::Tcp {
            port: 9000,
            address: IpAddr::V4(Ipv4Addr::new(10, 9, 0, 7)),
        },
        policy: Policy::RoundRobin,
        asap_transport: None,
    };
    let register = |sim: &mut Sim, registrar: usize, association: AssociationKey| {
        let bytes = AsapMessage::Registration {
            pool_handle: handle.clone(),
            pool_element: element.clone(),
        }
        .to_bytes()
        .unwrap();
        sim.with_registrar(registrar, |core, now| {
            core.handle_association_opened(
                association,
                SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 9, 0, 7)), 40000),
            );
            core.handle_message(association, &bytes, now);
        });
    };
    let listed_by = |sim: &Sim, registrar: usize| {
        sim.registrar(registrar)
            .handlespace()
            .get(&handle, PeId(0x77))
            .map(|e| e.owner())
    };
    register(&mut sim, 0, 900);
    sim.run_for(Duration::from_millis(20));
    assert_eq!(listed_by(&sim, 2), Some(1));
    // The PE moves to registrar 1; registrar 0 notices only later that its association is
    // gone, and its DEL reaches registrar 2 after registrar 1's ADD.
    sim.set_enrp_filter(|from, to, message| match message.body {
        EnrpBody::HandleUpdate {
            action: UpdateAction::DelPe,
            ..
        } if (from, to) == (0, 2) => Verdict::Delay(Duration::from_millis(30)),
        EnrpBody::HandleUpdate { .. } if (from, to) == (1, 0) => {
            Verdict::Delay(Duration::from_millis(100))
        }
        _ => Verdict::Deliver,
    });
    register(&mut sim, 1, 901);
    sim.with_registrar(0, |core, _| core.handle_association_closed(900));
    sim.run_for(Duration::from_millis(200));
    assert_eq!(listed_by(&sim, 2), Some(2), "{}", sim.dump());
    assert_eq!(listed_by(&sim, 1), Some(2));
    assert_eq!(listed_by(&sim, 0), Some(2));
}

#[test]
fn a_lost_table_page_does_not_stop_the_audit_for_good() {
    let mut sim = mesh(2);
    // Start-up downloads done.
    sim.run_for(Duration::from_millis(100));
    // The ADD is lost, and so is the first answer to the audit's table request.
    let (updates, pages) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
    let (u, p) = (updates.clone(), pages.clone());
    sim.set_enrp_filter(move |from, to, message| match message.body {
        EnrpBody::HandleUpdate { .. } if (from, to) == (0, 1) && u.get() < 1 => {
            u.set(u.get() + 1);
            Verdict::Drop
        }
        EnrpBody::HandleTableResponse { .. } if (from, to) == (0, 1) && p.get() < 1 => {
            p.set(p.get() + 1);
            Verdict::Drop
        }
        _ => Verdict::Deliver,
    });
    // Re-registrations (each one an ADD) would repair it too: not within this test.
    let pe = sim.add_pe(PeSpec {
        rereg_interval: Duration::from_secs(60),
        ..pe_spec(vec![0])
    });
    sim.run_until_or_panic(Duration::from_secs(20), "repaired all the same", |sim| {
        sim.lists(1, pe)
    });
    assert_eq!((updates.get(), pages.get()), (1, 1));
    let audits = events(&sim, 1)
        .iter()
        .filter(|e| matches!(e, RegistrarEvent::AuditMismatch { .. }))
        .count();
    assert_eq!(audits, 2, "{}", sim.dump());
}

#[test]
fn a_refused_table_request_removes_nothing() {
    let mut sim = mesh(2);
    let pe = sim.add_pe(pe_spec(vec![0]));
    sim.run_until_or_panic(Duration::from_secs(1), "replicated", |sim| sim.lists(1, pe));
    // Registrar 1 is made to audit registrar 0 (a PRESENCE with a checksum that does not
    // match), and registrar 0 refuses the table request.
    sim.set_enrp_filter(|from, to, message| match message.body {
        EnrpBody::HandleTableResponse { .. } if (from, to) == (0, 1) => Verdict::Drop,
        _ => Verdict::Deliver,
    });
    let refusal = rserpool::wire::EnrpMessage {
        sender_id: 1,
        receiver_id: 2,
        body: EnrpBody::HandleTableResponse {
            reject: true,
            more_to_send: false,
            pools: Vec::new(),
        },
    }
    .to_bytes()
    .unwrap();
    let mismatch = rserpool::wire::EnrpMessage {
        sender_id: 1,
        receiver_id: 2,
        body: EnrpBody::Presence {
            reply_required: false,
            checksum: 0x1234,
            server_info: None,
        },
    }
    .to_bytes()
    .unwrap();
    sim.with_registrar(1, |core, now| {
        core.handle_enrp(&mismatch, now);
        core.handle_enrp(&refusal, now);
    });
    sim.run_for(Duration::from_millis(10));
    assert!(
        sim.lists(1, pe),
        "a refusal emptied registrar 1's view\n{}",
        sim.dump()
    );
}
