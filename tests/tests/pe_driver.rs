//! The PE registration driver (`rserpool::pe::driver`) over real framed-TCP associations with
//! fake registrars ([`e2e::fake_registrar`]).

use std::net::Ipv4Addr;
use std::time::Duration;

use e2e::fake_registrar::FakeRegistrar;
use rserpool::pe::driver::{Registrars, spawn};
use rserpool::pe::{Event, LossReason, RegistrationConfig};
use rserpool::transport::AssociationConfig;
use rserpool::wire::{AsapMessage, PeId, Policy, PoolHandle, TransportAddress};
use tokio::sync::mpsc;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(20);

fn config() -> RegistrationConfig {
    RegistrationConfig::new(
        PoolHandle::new("DriverPool").expect("valid"),
        PeId(0x42),
        Policy::LeastUsed { load: 0 },
        TransportAddress::Tcp {
            port: 4242,
            address: Ipv4Addr::LOCALHOST.into(),
        },
        Duration::from_secs(60),
    )
}

async fn next_event(events: &mut mpsc::UnboundedReceiver<Event>) -> Event {
    timeout(WAIT, events.recv())
        .await
        .expect("event in time")
        .expect("driver running")
}

#[tokio::test]
async fn registers_updates_load_fails_over_and_deregisters() {
    let mut first = FakeRegistrar::start().await;
    let mut second = FakeRegistrar::start().await;
    let (first_addr, second_addr) = (first.address(), second.address());
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let handle = spawn(
        config(),
        Registrars::fixed([first_addr, second_addr]),
        AssociationConfig::default(),
        events_tx,
    );

    // The fake registrars grant every registration.
    let registration = first.next().await;
    assert!(
        matches!(registration, AsapMessage::Registration { .. }),
        "expected a registration, got {registration:?}"
    );
    assert_eq!(
        next_event(&mut events).await,
        Event::Registered {
            registrar: first_addr,
            home: 0,
            first: true
        }
    );

    // Load change under LeastUsed: immediate re-registration carrying it.
    handle.set_load(0.5);
    let update = first.next().await;
    let AsapMessage::Registration { pool_element, .. } = &update else {
        panic!("{update:?}");
    };
    assert_eq!(
        pool_element.policy.load(),
        rserpool::wire::policy::fraction_to_wire(0.5)
    );
    next_event(&mut events).await;

    // The first registrar dies: the second one gets the registration.
    first.stop().await;
    assert_eq!(
        next_event(&mut events).await,
        Event::RegistrarLost {
            registrar: first_addr,
            reason: LossReason::AssociationClosed
        }
    );
    let registration = second.next().await;
    assert!(
        matches!(registration, AsapMessage::Registration { .. }),
        "expected a registration, got {registration:?}"
    );
    assert_eq!(
        next_event(&mut events).await,
        Event::Registered {
            registrar: second_addr,
            home: 0,
            first: true
        }
    );

    // Shutdown: deregistration, answered.
    let shutdown = tokio::spawn(handle.shutdown(WAIT));
    let AsapMessage::Deregistration { pe_id, .. } = second.next().await else {
        panic!("expected a deregistration");
    };
    assert_eq!(pe_id, PeId(0x42));
    assert_eq!(
        next_event(&mut events).await,
        Event::Deregistered { confirmed: true }
    );
    shutdown.await.expect("shut down");
}
