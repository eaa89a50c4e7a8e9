//! The PE registration driver over real framed-TCP associations with fake registrars.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use rserpool::pe::driver::{Registrars, spawn};
use rserpool::pe::{Event, LossReason, RegistrationConfig};
use rserpool::transport::{self, AssociationConfig, Listener, PPID_ASAP, TcpFramedListener};
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

async fn listener() -> (TcpFramedListener, SocketAddr) {
    let listener = transport::bind(
        "127.0.0.1:0".parse().expect("address"),
        AssociationConfig::default(),
    )
    .await
    .expect("bind");
    let address = listener.local_addr().expect("bound");
    (listener, address)
}

async fn next_event(events: &mut mpsc::UnboundedReceiver<Event>) -> Event {
    timeout(WAIT, events.recv())
        .await
        .expect("event in time")
        .expect("driver running")
}

async fn recv_asap(association: &mut transport::Association) -> AsapMessage {
    let frame = timeout(WAIT, association.recv())
        .await
        .expect("in time")
        .expect("frame");
    assert_eq!(frame.ppid, PPID_ASAP);
    AsapMessage::decode(&frame.payload).expect("valid").message
}

fn grant(message: &AsapMessage) -> Vec<u8> {
    let AsapMessage::Registration {
        pool_handle,
        pool_element,
    } = message
    else {
        panic!("expected a registration, got {message:?}");
    };
    AsapMessage::RegistrationResponse {
        rejected: false,
        pool_handle: pool_handle.clone(),
        pe_id: pool_element.id,
        error: None,
    }
    .to_bytes()
    .expect("encodable")
}

#[tokio::test]
async fn registers_updates_load_fails_over_and_deregisters() {
    let (first, first_addr) = listener().await;
    let (second, second_addr) = listener().await;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let handle = spawn(
        config(),
        Registrars::fixed([first_addr, second_addr]),
        AssociationConfig::default(),
        events_tx,
    );

    let mut a = timeout(WAIT, first.accept())
        .await
        .expect("in time")
        .expect("accept");
    let registration = recv_asap(&mut a).await;
    a.send(PPID_ASAP, grant(&registration)).await.expect("send");
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
    let update = recv_asap(&mut a).await;
    let AsapMessage::Registration { pool_element, .. } = &update else {
        panic!("{update:?}");
    };
    assert_eq!(
        pool_element.policy.load(),
        rserpool::wire::policy::fraction_to_wire(0.5)
    );
    a.send(PPID_ASAP, grant(&update)).await.expect("send");
    next_event(&mut events).await;

    // The first registrar dies: the second one gets the registration.
    a.abort();
    drop(a);
    drop(first);
    assert_eq!(
        next_event(&mut events).await,
        Event::RegistrarLost {
            registrar: first_addr,
            reason: LossReason::AssociationClosed
        }
    );
    let mut b = timeout(WAIT, second.accept())
        .await
        .expect("in time")
        .expect("accept");
    let registration = recv_asap(&mut b).await;
    b.send(PPID_ASAP, grant(&registration)).await.expect("send");
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
    let AsapMessage::Deregistration { pool_handle, pe_id } = recv_asap(&mut b).await else {
        panic!("expected a deregistration");
    };
    assert_eq!(pe_id, PeId(0x42));
    let answer = AsapMessage::DeregistrationResponse {
        pool_handle,
        pe_id,
        error: None,
    };
    b.send(PPID_ASAP, answer.to_bytes().expect("encodable"))
        .await
        .expect("send");
    assert_eq!(
        next_event(&mut events).await,
        Event::Deregistered { confirmed: true }
    );
    shutdown.await.expect("shut down");
}
