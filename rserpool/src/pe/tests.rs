//! The registration state machine under simulated time.

use std::net::{Ipv4Addr, SocketAddr};

use super::*;
use crate::discovery::RegistrarTable;
use crate::wire::{ErrorCause, OperationError};

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

fn config(policy: Policy) -> RegistrationConfig {
    RegistrationConfig::new(
        PoolHandle::new("FractalGeneratorPool").expect("valid handle"),
        PeId(0x1234),
        policy,
        TransportAddress::Tcp {
            port: 7000,
            address: Ipv4Addr::LOCALHOST.into(),
        },
        Duration::from_secs(5),
    )
}

struct Harness {
    core: Registration,
    now: Instant,
}

impl Harness {
    fn new(policy: Policy, registrars: &[SocketAddr]) -> Self {
        let now = Instant::now();
        let table = RegistrarTable::new(registrars.iter().copied());
        Harness {
            core: Registration::new(config(policy), table, now),
            now,
        }
    }

    fn actions(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.core.poll_action()).collect()
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.core.poll_event()).collect()
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.core.handle_timeout(self.now);
    }

    fn grant(&mut self) {
        let response = AsapMessage::RegistrationResponse {
            rejected: false,
            pool_handle: self.core.config().pool_handle.clone(),
            pe_id: self.core.config().pe_id,
            error: None,
        };
        self.core.handle_message(response, self.now);
    }

    /// Connects to the first candidate and gets registered; returns the registrar.
    fn register(&mut self) -> SocketAddr {
        self.core.handle_timeout(self.now);
        let actions = self.actions();
        let [Action::Connect(registrar)] = actions.as_slice() else {
            panic!("expected one connect, got {actions:?}");
        };
        let registrar = *registrar;
        self.core.handle_connected(self.now);
        let sent = self.actions();
        assert!(
            matches!(
                sent.as_slice(),
                [Action::Send(AsapMessage::Registration { .. })]
            ),
            "{sent:?}"
        );
        self.grant();
        registrar
    }
}

fn registration_count(actions: &[Action]) -> usize {
    actions
        .iter()
        .filter(|a| matches!(a, Action::Send(AsapMessage::Registration { .. })))
        .count()
}

#[test]
fn registers_with_life_three_times_the_interval() {
    let mut h = Harness::new(Policy::RoundRobin, &[addr(1)]);
    h.core.handle_timeout(h.now);
    assert_eq!(h.actions(), vec![Action::Connect(addr(1))]);
    h.core.handle_connected(h.now);
    let actions = h.actions();
    let [
        Action::Send(AsapMessage::Registration {
            pool_handle,
            pool_element,
        }),
    ] = actions.as_slice()
    else {
        panic!("expected a registration, got {actions:?}");
    };
    assert_eq!(pool_handle.as_bytes(), b"FractalGeneratorPool");
    assert_eq!(pool_element.id, PeId(0x1234));
    assert_eq!(pool_element.registration_life_ms, 15_000);
    assert_eq!(pool_element.policy, Policy::RoundRobin);
    assert!(h.core.registered_with().is_none());
    h.grant();
    assert_eq!(h.core.registered_with(), Some(addr(1)));
    assert_eq!(
        h.events(),
        vec![Event::Registered {
            registrar: addr(1),
            home: 0,
            first: true
        }]
    );
}

#[test]
fn reregisters_every_interval() {
    let mut h = Harness::new(Policy::RoundRobin, &[addr(1)]);
    h.register();
    h.events();
    h.advance(Duration::from_millis(4_999));
    assert_eq!(registration_count(&h.actions()), 0);
    h.advance(Duration::from_millis(1));
    assert_eq!(registration_count(&h.actions()), 1);
    h.grant();
    assert_eq!(
        h.events(),
        vec![Event::Registered {
            registrar: addr(1),
            home: 0,
            first: false
        }]
    );
    h.advance(Duration::from_secs(5));
    assert_eq!(registration_count(&h.actions()), 1);
}

#[test]
fn response_timeout_moves_to_another_registrar() {
    let mut h = Harness::new(Policy::RoundRobin, &[addr(1), addr(2)]);
    h.core.handle_timeout(h.now);
    assert_eq!(h.actions(), vec![Action::Connect(addr(1))]);
    h.core.handle_connected(h.now);
    h.actions();
    h.advance(DEFAULT_RESPONSE_TIMEOUT);
    assert_eq!(h.actions(), vec![Action::Disconnect]);
    assert_eq!(
        h.events(),
        vec![Event::RegistrarLost {
            registrar: addr(1),
            reason: LossReason::ResponseTimeout
        }]
    );
    h.core.handle_timeout(h.now);
    assert_eq!(h.actions(), vec![Action::Connect(addr(2))]);
}

#[test]
fn load_change_of_one_percent_reregisters_under_adaptive_policies() {
    let mut h = Harness::new(Policy::LeastUsed { load: 0 }, &[addr(1)]);
    h.register();
    h.core.set_load(0.005, h.now);
    assert_eq!(registration_count(&h.actions()), 0, "below 1 %");
    h.core.set_load(0.25, h.now);
    let actions = h.actions();
    let [Action::Send(AsapMessage::Registration { pool_element, .. })] = actions.as_slice() else {
        panic!("expected an immediate re-registration, got {actions:?}");
    };
    assert_eq!(pool_element.policy.load(), fraction_to_wire(0.25));
    // A change while the response is outstanding is sent after it.
    h.core.set_load(0.5, h.now);
    assert_eq!(registration_count(&h.actions()), 0);
    h.grant();
    assert_eq!(registration_count(&h.actions()), 1);
}

#[test]
fn load_is_not_reported_under_non_adaptive_policies() {
    let mut h = Harness::new(Policy::WeightedRoundRobin { weight: 3 }, &[addr(1)]);
    h.register();
    h.core.set_load(1.0, h.now);
    assert!(h.actions().is_empty());
}

#[test]
fn keep_alive_is_acked_and_names_home() {
    let mut h = Harness::new(Policy::RoundRobin, &[addr(1)]);
    h.register();
    h.events();
    let keep_alive = |home, server_id| AsapMessage::EndpointKeepAlive {
        home,
        server_id,
        pool_handle: PoolHandle::new("FractalGeneratorPool").expect("valid"),
        pe_id: Some(PeId(0x1234)),
    };
    h.core.handle_message(keep_alive(false, 0xabc), h.now);
    assert_eq!(
        h.actions(),
        vec![Action::Send(AsapMessage::EndpointKeepAliveAck {
            pool_handle: PoolHandle::new("FractalGeneratorPool").expect("valid"),
            pe_id: PeId(0x1234),
        })]
    );
    assert_eq!(h.events(), vec![Event::HomeChanged { home: 0xabc }]);
    assert_eq!(h.core.home(), 0xabc);
    // H flag from a new server: adopted; next registration carries it.
    h.core.handle_message(keep_alive(true, 0xdef), h.now);
    assert_eq!(h.events(), vec![Event::HomeChanged { home: 0xdef }]);
    h.actions();
    h.advance(Duration::from_secs(5));
    let actions = h.actions();
    let [Action::Send(AsapMessage::Registration { pool_element, .. })] = actions.as_slice() else {
        panic!("{actions:?}");
    };
    assert_eq!(pool_element.home_registrar, 0xdef);
}

#[test]
fn h_flag_from_a_known_registrar_elsewhere_moves_there() {
    let now = Instant::now();
    let mut table = RegistrarTable::new([addr(1)]);
    let announce = AsapMessage::ServerAnnounce {
        server_id: 0x77,
        transports: vec![TransportAddress::Tcp {
            port: 2,
            address: Ipv4Addr::LOCALHOST.into(),
        }],
    }
    .to_bytes()
    .expect("encodable");
    table.handle_announce(addr(9), &announce, now);
    let mut h = Harness {
        core: Registration::new(config(Policy::RoundRobin), table, now),
        now,
    };
    // Announced registrars come first.
    assert_eq!(h.register(), addr(2));
    h.events();
    h.now += Duration::from_millis(10);
    // Pretend we ended up at addr(1) by losing addr(2).
    h.core.handle_disconnected(h.now);
    h.core.handle_timeout(h.now);
    assert_eq!(h.actions(), vec![Action::Connect(addr(1))]);
    h.core.handle_connected(h.now);
    h.grant();
    h.actions();
    h.events();
    h.core.handle_message(
        AsapMessage::EndpointKeepAlive {
            home: true,
            server_id: 0x77,
            pool_handle: PoolHandle::new("FractalGeneratorPool").expect("valid"),
            pe_id: None,
        },
        h.now,
    );
    let actions = h.actions();
    assert!(matches!(
        actions.first(),
        Some(Action::Send(AsapMessage::EndpointKeepAliveAck { .. }))
    ));
    assert_eq!(actions.get(1), Some(&Action::Disconnect));
    h.core.handle_timeout(h.now);
    assert_eq!(h.actions(), vec![Action::Connect(addr(2))]);
}

#[test]
fn rejection_is_reported_and_retried_later() {
    let mut h = Harness::new(Policy::RoundRobin, &[addr(1)]);
    h.core.handle_timeout(h.now);
    h.actions();
    h.core.handle_connected(h.now);
    h.actions();
    h.core.handle_message(
        AsapMessage::RegistrationResponse {
            rejected: true,
            pool_handle: PoolHandle::new("FractalGeneratorPool").expect("valid"),
            pe_id: PeId(0x1234),
            error: Some(OperationError::single(ErrorCause::new(
                CauseCode::INCONSISTENT_POOLING_POLICY,
            ))),
        },
        h.now,
    );
    assert_eq!(h.actions(), vec![Action::Disconnect]);
    let events = h.events();
    assert_eq!(
        events.first(),
        Some(&Event::Rejected {
            registrar: addr(1),
            cause: Some(CauseCode::INCONSISTENT_POOLING_POLICY)
        })
    );
    assert!(h.core.registered_with().is_none());
    h.advance(Duration::from_millis(4_999));
    assert!(h.actions().is_empty());
    h.advance(Duration::from_millis(1));
    assert_eq!(h.actions(), vec![Action::Connect(addr(1))]);
}

#[test]
fn responses_for_other_pes_are_ignored() {
    let mut h = Harness::new(Policy::RoundRobin, &[addr(1)]);
    h.core.handle_timeout(h.now);
    h.actions();
    h.core.handle_connected(h.now);
    h.actions();
    h.core.handle_message(
        AsapMessage::RegistrationResponse {
            rejected: false,
            pool_handle: PoolHandle::new("FractalGeneratorPool").expect("valid"),
            pe_id: PeId(0x9999),
            error: None,
        },
        h.now,
    );
    assert!(h.core.registered_with().is_none());
}

#[test]
fn registrar_loss_retries_with_the_same_one_when_alone() {
    let mut h = Harness::new(Policy::RoundRobin, &[addr(1)]);
    h.register();
    h.events();
    h.core.handle_disconnected(h.now);
    assert_eq!(
        h.events(),
        vec![Event::RegistrarLost {
            registrar: addr(1),
            reason: LossReason::AssociationClosed
        }]
    );
    h.core.handle_timeout(h.now);
    assert_eq!(h.actions(), vec![Action::Connect(addr(1))]);
    h.core.handle_connect_failed(h.now);
    h.advance(DEFAULT_RETRY_INTERVAL / 2);
    assert!(h.actions().is_empty(), "waits before retrying");
    h.advance(DEFAULT_RETRY_INTERVAL);
    assert_eq!(h.actions(), vec![Action::Connect(addr(1))]);
    h.core.handle_connected(h.now);
    h.grant();
    assert_eq!(h.core.registered_with(), Some(addr(1)));
}

#[test]
fn an_association_closed_before_the_grant_is_retried_after_the_interval() {
    // A registrar refusing us (TLS, association limits) closes at once, again and again.
    let mut h = Harness::new(Policy::RoundRobin, &[addr(1)]);
    let mut connects = 0;
    let start = h.now;
    while h.now < start + 10 * DEFAULT_RETRY_INTERVAL {
        h.core.handle_timeout(h.now);
        for action in h.actions() {
            if matches!(action, Action::Connect(_)) {
                connects += 1;
                h.core.handle_connected(h.now);
                h.core.handle_disconnected(h.now);
            }
        }
        h.advance(Duration::from_millis(10));
    }
    assert!(
        (10..=11).contains(&connects),
        "{connects} attempts in 10 intervals"
    );
}

#[test]
fn waits_while_no_registrar_is_known() {
    let mut h = Harness::new(Policy::RoundRobin, &[]);
    h.core.handle_timeout(h.now);
    assert!(h.actions().is_empty());
    assert!(h.core.poll_timeout().is_some_and(|t| t > h.now));
}

#[test]
fn shutdown_deregisters_and_stops() {
    let mut h = Harness::new(Policy::RoundRobin, &[addr(1)]);
    h.register();
    h.events();
    h.core.shutdown(h.now);
    assert_eq!(
        h.actions(),
        vec![Action::Send(AsapMessage::Deregistration {
            pool_handle: PoolHandle::new("FractalGeneratorPool").expect("valid"),
            pe_id: PeId(0x1234),
        })]
    );
    assert!(!h.core.is_stopped());
    h.core.handle_message(
        AsapMessage::DeregistrationResponse {
            pool_handle: PoolHandle::new("FractalGeneratorPool").expect("valid"),
            pe_id: PeId(0x1234),
            error: None,
        },
        h.now,
    );
    assert!(h.core.is_stopped());
    assert_eq!(h.actions(), vec![Action::Disconnect]);
    assert_eq!(h.events(), vec![Event::Deregistered { confirmed: true }]);
}

#[test]
fn shutdown_without_answer_stops_after_the_timeout() {
    let mut h = Harness::new(Policy::RoundRobin, &[addr(1)]);
    h.register();
    h.core.shutdown(h.now);
    h.advance(DEFAULT_RESPONSE_TIMEOUT);
    assert!(h.core.is_stopped());
    assert!(
        h.events()
            .contains(&Event::Deregistered { confirmed: false })
    );
}

#[test]
fn h_flagged_keep_alive_from_elsewhere_moves_to_the_announced_home() {
    let now = Instant::now();
    let table = RegistrarTable::new([addr(1)]);
    let announce = AsapMessage::ServerAnnounce {
        server_id: 0x55,
        transports: vec![TransportAddress::Tcp {
            port: 3,
            address: Ipv4Addr::LOCALHOST.into(),
        }],
    }
    .to_bytes()
    .expect("encodable");
    let mut h = Harness {
        core: Registration::new(config(Policy::RoundRobin), table, now),
        now,
    };
    assert_eq!(h.register(), addr(1));
    h.events();
    // Without H, or from an unknown server: home changes at most, no move.
    h.core.handle_foreign_keep_alive(false, 0x55, h.now);
    assert!(h.actions().is_empty() && h.events().is_empty());
    h.core.handle_foreign_keep_alive(true, 0x66, h.now);
    assert!(h.actions().is_empty());
    assert_eq!(h.events(), vec![Event::HomeChanged { home: 0x66 }]);
    // Known by announce: move there.
    h.core.handle_announce(addr(9), &announce, h.now);
    h.core.handle_foreign_keep_alive(true, 0x55, h.now);
    assert_eq!(h.actions(), vec![Action::Disconnect]);
    h.core.handle_timeout(h.now);
    assert_eq!(h.actions(), vec![Action::Connect(addr(3))]);
    assert_eq!(h.core.home(), 0x55);
}
