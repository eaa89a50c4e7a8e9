//! The pool user's registrar client and sessions against a scripted registrar and PE on
//! loopback.

use std::net::SocketAddr;
use std::time::Duration;

use rserpool::pu::{ALL_ITEMS, PoolUser, PoolUserConfig, SessionEvent};
use rserpool::transport::{
    AssociationConfig, Frame, FrameBatch, Listener, PPID_ASAP, TcpFramed, TcpFramedListener,
    Transport,
};
use rserpool::wire::{AsapMessage, PeId, Policy, PoolElement, PoolHandle, TransportAddress};
use tokio::sync::{mpsc, oneshot};

/// Upper bound of every wait in these tests.
const BOUND: Duration = Duration::from_secs(10);

/// A listener on a free loopback port, and its address.
async fn listen_on_loopback() -> (TcpFramedListener, SocketAddr) {
    let listener = TcpFramed::new(AssociationConfig::default())
        .bind("127.0.0.1:0".parse().expect("address"))
        .await
        .expect("binds");
    let address = listener.local_addr().expect("address");
    (listener, address)
}

/// A registrar that answers every Handle Resolution with an empty pool once `release` fires,
/// and reports each request it receives on the returned channel.
async fn scripted_registrar(
    release: oneshot::Receiver<()>,
) -> (SocketAddr, mpsc::UnboundedReceiver<AsapMessage>) {
    let (listener, address) = listen_on_loopback().await;
    let (seen, requests) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let Ok(mut association) = listener.accept().await else {
            return;
        };
        let mut release = Some(release);
        while let Ok(frame) = association.recv().await {
            let Ok(decoded) = AsapMessage::decode(&frame.payload) else {
                return;
            };
            let message = decoded.message;
            let _ = seen.send(message.clone());
            if let Some(release) = release.take() {
                let _ = release.await;
            }
            if let AsapMessage::HandleResolution { pool_handle, .. } = message {
                let answer = AsapMessage::HandleResolutionResponse {
                    accepted: false,
                    pool_handle,
                    policy: None,
                    pool_elements: Vec::new(),
                    error: None,
                };
                let Ok(bytes) = answer.to_bytes() else { return };
                if association.send(PPID_ASAP, bytes).await.is_err() {
                    return;
                }
            }
        }
    });
    (address, requests)
}

#[tokio::test(flavor = "current_thread")]
async fn resolutions_queued_behind_one_in_flight_share_its_answer() {
    let (release, released) = oneshot::channel();
    let (registrar, mut requests) = scripted_registrar(released).await;
    let pool_user = PoolUser::start(PoolUserConfig {
        registrars: vec![registrar],
        announce: None,
        ..PoolUserConfig::default()
    });
    let pool = PoolHandle::new(b"SharedPool".to_vec()).expect("handle");
    let other_pool = PoolHandle::new(b"OtherPool".to_vec()).expect("handle");
    let mut resolutions = Vec::new();
    for index in 0..8 {
        let pool_user = pool_user.clone();
        let pool = if index == 5 {
            other_pool.clone()
        } else {
            pool.clone()
        };
        resolutions.push(tokio::spawn(async move {
            pool_user.resolve(&pool, ALL_ITEMS).await
        }));
    }
    // The registrar holds its first answer until every request is queued.
    let first = tokio::time::timeout(BOUND, requests.recv())
        .await
        .expect("a request in time")
        .expect("a request");
    assert!(matches!(first, AsapMessage::HandleResolution { .. }));
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
    release.send(()).expect("registrar waiting");
    for resolution in resolutions {
        let answer = tokio::time::timeout(BOUND, resolution)
            .await
            .expect("answered in time")
            .expect("task")
            .expect("resolved");
        assert!(answer.elements.is_empty());
    }
    // One request for the first pool's queued requests, one for the other pool (queued among
    // them, so it ends the sharing: the first pool's later requests ask again).
    let mut later = Vec::new();
    while let Ok(message) = requests.try_recv() {
        later.push(message);
    }
    let asked: Vec<String> = std::iter::once(first)
        .chain(later)
        .filter_map(|message| match message {
            AsapMessage::HandleResolution { pool_handle, .. } => Some(pool_handle.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(
        asked,
        ["SharedPool", "OtherPool", "SharedPool"],
        "8 resolutions, 3 round trips"
    );
}

/// A registrar that lists one PE at `pe` for every Handle Resolution.
async fn listing_registrar(pe: SocketAddr) -> SocketAddr {
    let (listener, address) = listen_on_loopback().await;
    tokio::spawn(async move {
        let Ok(mut association) = listener.accept().await else {
            return;
        };
        while let Ok(frame) = association.recv().await {
            let Ok(decoded) = AsapMessage::decode(&frame.payload) else {
                return;
            };
            if let AsapMessage::HandleResolution { pool_handle, .. } = decoded.message {
                let element = PoolElement {
                    id: PeId(7),
                    home_registrar: 1,
                    registration_life_ms: 15_000,
                    user_transport: TransportAddress::Tcp {
                        port: pe.port(),
                        address: pe.ip(),
                    },
                    policy: Policy::RoundRobin,
                    asap_transport: None,
                };
                let answer = AsapMessage::HandleResolutionResponse {
                    accepted: true,
                    pool_handle,
                    policy: Some(Policy::RoundRobin),
                    pool_elements: vec![element],
                    error: None,
                };
                let Ok(bytes) = answer.to_bytes() else { return };
                if association.send(PPID_ASAP, bytes).await.is_err() {
                    return;
                }
            }
        }
    });
    address
}

#[tokio::test(flavor = "current_thread")]
async fn a_burst_of_frames_is_ready_without_waiting_and_in_order() {
    const BURST: u8 = 5;
    let (listener, pe) = listen_on_loopback().await;
    // The PE answers the first message with one write of BURST frames, then stays open.
    tokio::spawn(async move {
        let Ok(mut association) = listener.accept().await else {
            return;
        };
        if association.recv().await.is_err() {
            return;
        }
        let mut burst = FrameBatch::default();
        for i in 0..BURST {
            burst.push(32, &[i; 8]);
        }
        if association.sender().send_batch(burst).await.is_err() {
            return;
        }
        std::future::pending::<()>().await;
    });
    let pool_user = PoolUser::start(PoolUserConfig {
        registrars: vec![listing_registrar(pe).await],
        announce: None,
        ..PoolUserConfig::default()
    });
    let pool = PoolHandle::new(b"BurstPool".to_vec()).expect("handle");
    let mut session = pool_user.session(pool, Frame::new(32, vec![0xaa; 4]));
    assert!(session.ready_event().is_none(), "nothing before the start");
    let mut received = Vec::new();
    let mut without_waiting = 0;
    while received.len() < usize::from(BURST) {
        let event = match session.ready_event() {
            Some(event) => {
                without_waiting += 1;
                event
            }
            None => tokio::time::timeout(BOUND, session.next_event())
                .await
                .expect("an event in time"),
        };
        match event {
            SessionEvent::Data { pe, frame } => {
                assert_eq!(pe.id, rserpool::wire::PeId(7));
                received.push(frame.payload[0]);
            }
            SessionEvent::Connected { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(received, (0..BURST).collect::<Vec<_>>(), "in order");
    // One write arrives in one read on loopback: after the first frame woke the session, the
    // others were already queued.
    assert!(without_waiting >= 1, "some frames came without waiting");
    assert!(session.ready_event().is_none(), "nothing more queued");
}

/// With `registrars_choice` (the CalcApp workload: many independent pool users in one
/// process) a PE that one session found dead is still tried by the next: sessions share no
/// memory, as separate pool users would not. By default the memory is shared.
#[tokio::test(flavor = "current_thread")]
async fn independent_sessions_share_no_memory_of_failed_pes() {
    let dead_pe = {
        let (listener, address) = listen_on_loopback().await;
        drop(listener);
        address
    };
    let pool = PoolHandle::new(b"CalcAppPool".to_vec()).expect("handle");
    for registrars_choice in [true, false] {
        let pool_user = PoolUser::start(PoolUserConfig {
            registrars: vec![listing_registrar(dead_pe).await],
            announce: None,
            stale_cache: Duration::ZERO,
            registrars_choice,
            ..PoolUserConfig::default()
        });
        let first_try = |mut session: rserpool::pu::Session| async move {
            loop {
                let event = tokio::time::timeout(BOUND, session.next_event())
                    .await
                    .expect("an event in time");
                match event {
                    SessionEvent::ConnectFailed { pe, .. } => return Some(pe.id),
                    SessionEvent::PoolEmpty { .. } => return None,
                    _ => {}
                }
            }
        };
        let request = Frame::new(34, vec![1]);
        let first = first_try(pool_user.session(pool.clone(), request.clone())).await;
        assert_eq!(
            first,
            Some(PeId(7)),
            "the first session tries the listed PE"
        );
        let second = first_try(pool_user.session(pool.clone(), request)).await;
        if registrars_choice {
            assert_eq!(second, Some(PeId(7)), "an independent session tries it too");
        } else {
            assert_eq!(
                second, None,
                "a shared cache avoids the PE that just failed"
            );
        }
    }
}
