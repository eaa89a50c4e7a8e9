//! The registrar driver over real loopback sockets: registration, resolution, association
//! close, and hostile input (frame-level garbage, malformed and random ASAP messages) that must
//! leave the handlespace unchanged while other clients keep being served.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rserpool::registrar::RegistrarConfig;
use rserpool::registrar::driver::{self, DriverConfig, RunningRegistrar};
use rserpool::registrar::keepalive::KeepAliveConfig;
use rserpool::transport::{self, Association, AssociationConfig, PPID_ASAP};
use rserpool::wire::param::HANDLE_RESOLUTION_ALL;
use rserpool::wire::{AsapMessage, PeId, Policy, PoolElement, PoolHandle, TransportAddress};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const T: Duration = Duration::from_secs(20);

async fn start() -> RunningRegistrar {
    driver::start(DriverConfig {
        asap: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        announce: None,
        registrar: RegistrarConfig {
            id: 0x0102_0304,
            // Long enough that no keep-alive interferes with this test.
            keepalive: KeepAliveConfig {
                interval: Duration::from_secs(600),
                timeout: Duration::from_secs(600),
            },
            ..RegistrarConfig::default()
        },
        association: AssociationConfig::default(),
        max_associations: driver::DEFAULT_MAX_ASSOCIATIONS,
        enrp: None,
    })
    .await
    .expect("registrar starts")
}

fn handle(name: &str) -> PoolHandle {
    PoolHandle::new(name.as_bytes().to_vec()).expect("valid handle")
}

fn pe(id: u32) -> PoolElement {
    PoolElement {
        id: PeId(id),
        home_registrar: 0,
        registration_life_ms: 30_000,
        user_transport: TransportAddress::Tcp {
            port: 9000 + id as u16,
            address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        },
        policy: Policy::RoundRobin,
        asap_transport: None,
    }
}

async fn request(assoc: &mut Association, message: &AsapMessage) -> AsapMessage {
    assoc
        .send(PPID_ASAP, message.to_bytes().expect("encodable"))
        .await
        .expect("sent");
    let frame = timeout(T, assoc.recv())
        .await
        .expect("answer in time")
        .expect("answer");
    assert_eq!(frame.ppid, PPID_ASAP);
    AsapMessage::decode(&frame.payload)
        .expect("decodable answer")
        .message
}

async fn register(assoc: &mut Association, pool: &str, id: u32) {
    let answer = request(
        assoc,
        &AsapMessage::Registration {
            pool_handle: handle(pool),
            pool_element: pe(id),
        },
    )
    .await;
    assert!(
        matches!(
            answer,
            AsapMessage::RegistrationResponse {
                rejected: false,
                ..
            }
        ),
        "{answer:?}"
    );
}

/// Every PE of a pool, sorted by id, via a Handle Resolution asking for all.
async fn resolve_all(assoc: &mut Association, pool: &str) -> Vec<PoolElement> {
    let answer = request(
        assoc,
        &AsapMessage::HandleResolution {
            subscribe: false,
            pool_handle: handle(pool),
            items: Some(HANDLE_RESOLUTION_ALL),
        },
    )
    .await;
    match answer {
        AsapMessage::HandleResolutionResponse {
            mut pool_elements,
            error: None,
            ..
        } => {
            pool_elements.sort_by_key(|e| e.id.0);
            pool_elements
        }
        other => panic!("expected a positive resolution, got {other:?}"),
    }
}

async fn connect(addr: SocketAddr) -> Association {
    transport::connect(addr, AssociationConfig::default())
        .await
        .expect("connects")
}

#[tokio::test]
async fn registration_resolution_and_association_close() {
    let registrar = start().await;
    let addr = registrar.local_addr();
    let mut pe_assoc = connect(addr).await;
    for id in 1..=5 {
        register(&mut pe_assoc, "pool", id).await;
    }
    let mut pu = connect(addr).await;
    let all = resolve_all(&mut pu, "pool").await;
    assert_eq!(all.len(), 5);
    // The unspecified address became the PE's source address, loopback.
    assert!(all.iter().all(|e| matches!(
        e.user_transport,
        TransportAddress::Tcp { address, .. } if address == IpAddr::V4(Ipv4Addr::LOCALHOST)
    )));
    let inspection = registrar.inspect().await.expect("running");
    assert_eq!(inspection.pool_element_count, 5);

    // Closing the PE's association removes its PEs at once.
    pe_assoc.close().await.expect("closes");
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let inspection = registrar.inspect().await.expect("running");
        if inspection.pool_element_count == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "PEs not removed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let answer = request(
        &mut pu,
        &AsapMessage::HandleResolution {
            subscribe: false,
            pool_handle: handle("pool"),
            items: None,
        },
    )
    .await;
    assert!(matches!(
        answer,
        AsapMessage::HandleResolutionResponse { error: Some(_), .. }
    ));
    registrar.shutdown().await;
}

/// Valid messages a hostile PU may mutate without being able to change the handlespace
/// (registrations are left out: a mutated one can be a valid registration of a new PE).
fn mutation_seeds() -> Vec<Vec<u8>> {
    let h = handle("pool");
    [
        AsapMessage::HandleResolution {
            subscribe: false,
            pool_handle: h.clone(),
            items: Some(3),
        },
        AsapMessage::Deregistration {
            pool_handle: h.clone(),
            pe_id: PeId(1),
        },
        AsapMessage::EndpointUnreachable {
            pool_handle: h.clone(),
            pe_id: PeId(2),
        },
        AsapMessage::EndpointKeepAliveAck {
            pool_handle: h,
            pe_id: PeId(3),
        },
    ]
    .iter()
    .map(|m| m.to_bytes().expect("encodable"))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_leaves_the_handlespace_unchanged_and_others_served() {
    let registrar = start().await;
    let addr = registrar.local_addr();
    let mut pe_assoc = connect(addr).await;
    for id in 1..=10 {
        register(&mut pe_assoc, "pool", id).await;
    }
    let mut pu = connect(addr).await;
    let before_resolution = resolve_all(&mut pu, "pool").await;
    let before = registrar.inspect().await.expect("running");
    assert_eq!(before.pool_element_count, 10);

    // 1. Frame-level garbage on raw TCP: a length beyond the maximum, and a truncated frame.
    for garbage in [
        vec![0, 0, 0, 11, 0xff, 0xff, 0xff, 0xff, 1, 2, 3],
        vec![0, 0, 0, 11, 0, 0, 0, 100, 1, 2, 3],
        vec![0, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3],
    ] {
        let mut raw = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connects");
        raw.write_all(&garbage).await.expect("written");
        raw.shutdown().await.expect("FIN sent");
        let mut sink = Vec::new();
        // The registrar ends the connection (FIN or RST) instead of waiting forever.
        let ended = timeout(T, raw.read_to_end(&mut sink)).await;
        assert!(ended.is_ok(), "registrar kept a garbage connection open");
        assert!(sink.is_empty(), "no frame answers unframeable garbage");
    }

    // 2. Malformed ASAP messages and 10,000 random or mutated ones on one association, while
    //    a well-behaved PU keeps resolving on another.
    let hostile = connect(addr).await;
    let (hostile_tx, mut hostile_rx) = hostile.split();
    let reader = tokio::spawn(async move {
        let mut errors = 0usize;
        let mut others = 0usize;
        while let Ok(Ok(frame)) = timeout(Duration::from_secs(2), hostile_rx.recv()).await {
            match AsapMessage::decode(&frame.payload).map(|d| d.message) {
                Ok(AsapMessage::Error { .. }) => errors += 1,
                Ok(_) => others += 1,
                Err(e) => panic!("registrar sent an undecodable message: {e}"),
            }
        }
        (errors, others)
    });
    let good = tokio::spawn(async move {
        let mut served = 0;
        for _ in 0..200 {
            let answer = resolve_all(&mut pu, "pool").await;
            assert_eq!(answer.len(), 10);
            served += 1;
            tokio::task::yield_now().await;
        }
        (pu, served)
    });

    let mut rng = StdRng::seed_from_u64(0xbad_c0de);
    let seeds = mutation_seeds();
    let fixed: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x05],
        vec![0x05, 0x00, 0x00],
        vec![0x05, 0x00, 0x00, 0x02],
        vec![0x05, 0x00, 0xff, 0xff, 0x00, 0x09],
        vec![0x41, 0x00, 0x00, 0x04],
        vec![0xff, 0x00, 0x00, 0x04],
        {
            // Valid header, truncated in the middle of the pool handle TLV.
            let mut m = seeds[0].clone();
            m.truncate(m.len() - 3);
            m
        },
    ];
    let mut sent = 0usize;
    for message in &fixed {
        if hostile_tx.send(PPID_ASAP, message.clone()).await.is_err() {
            break;
        }
        sent += 1;
    }
    for _ in 0..10_000 {
        let message = if rng.random_bool(0.5) {
            let len = rng.random_range(0..120usize);
            let mut m: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            // Half of them with a plausible header, so the decoder gets past the length check.
            if len >= 4 && rng.random_bool(0.5) {
                m[0] = rng.random_range(1..=0x0e);
                m[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            }
            m
        } else {
            let mut m = seeds[rng.random_range(0..seeds.len())].clone();
            for _ in 0..rng.random_range(1..4) {
                let i = rng.random_range(0..m.len());
                m[i] ^= rng.random_range(1..=255u8);
            }
            m
        };
        if hostile_tx.send(PPID_ASAP, message).await.is_err() {
            break;
        }
        sent += 1;
    }
    let (mut pu, served) = timeout(Duration::from_secs(120), good)
        .await
        .expect("good PU finishes")
        .expect("good PU task");
    assert_eq!(served, 200);
    let (errors, others) = reader.await.expect("reader task");
    // Either the hostile association was answered with errors or it was closed.
    assert!(
        errors > 0 || hostile_tx.is_finished(),
        "sent {sent}, got {errors} errors and {others} other answers"
    );
    eprintln!("hostile: sent {sent}, {errors} ASAP Errors, {others} other answers");

    let after_resolution = resolve_all(&mut pu, "pool").await;
    assert_eq!(after_resolution, before_resolution);
    let after = registrar.inspect().await.expect("running");
    assert_eq!(after.snapshot, before.snapshot);
    assert_eq!(after.checksum, before.checksum);
    assert!(after.stats.bad_messages > 0);

    // The PE's own association still works: it can deregister.
    let answer = request(
        &mut pe_assoc,
        &AsapMessage::Deregistration {
            pool_handle: handle("pool"),
            pe_id: PeId(1),
        },
    )
    .await;
    assert!(matches!(
        answer,
        AsapMessage::DeregistrationResponse { error: None, .. }
    ));
    assert_eq!(
        registrar
            .inspect()
            .await
            .expect("running")
            .pool_element_count,
        9
    );
    registrar.shutdown().await;
}

#[tokio::test]
async fn multicast_announces_on_loopback_carry_the_asap_address() {
    use rserpool::registrar::driver::AnnounceConfig;
    use rserpool::transport::announce::{AnnounceReceiver, AnnounceReceiverConfig};
    // A port of our own (from the pid) so parallel tests and programs do not hear each other.
    let port = 40_000 + (std::process::id() % 20_000) as u16;
    let group = SocketAddr::from((Ipv4Addr::new(239, 0, 0, 50), port));
    let mut receiver_config = AnnounceReceiverConfig::new(group);
    receiver_config.multicast_interface_v4 = Ipv4Addr::LOCALHOST;
    let receiver = AnnounceReceiver::new(&receiver_config).expect("receiver");
    let registrar = driver::start(DriverConfig {
        asap: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        announce: Some(AnnounceConfig {
            destination: group,
            interval: Duration::from_millis(100),
        }),
        registrar: RegistrarConfig {
            id: 0x0a0b_0c0d,
            ..RegistrarConfig::default()
        },
        association: AssociationConfig::default(),
        max_associations: driver::DEFAULT_MAX_ASSOCIATIONS,
        enrp: None,
    })
    .await
    .expect("registrar starts");
    let asap = registrar.local_addr();
    let (payload, source) = timeout(T, receiver.recv())
        .await
        .expect("announce in time")
        .expect("announce");
    assert!(source.ip().is_loopback());
    let message = AsapMessage::decode(&payload).expect("decodable").message;
    assert_eq!(
        message,
        AsapMessage::ServerAnnounce {
            server_id: 0x0a0b_0c0d,
            transports: vec![TransportAddress::Tcp {
                port: asap.port(),
                address: asap.ip(),
            }],
        }
    );
    registrar.shutdown().await;
}
