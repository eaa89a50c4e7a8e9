//! The pool user's registrar client against a scripted registrar on loopback.

use std::net::SocketAddr;
use std::time::Duration;

use rserpool::pu::{ALL_ITEMS, PoolUser, PoolUserConfig};
use rserpool::transport::{AssociationConfig, Listener, PPID_ASAP, TcpFramed, Transport};
use rserpool::wire::{AsapMessage, PoolHandle};
use tokio::sync::{mpsc, oneshot};

/// Upper bound of every wait in these tests.
const BOUND: Duration = Duration::from_secs(10);

/// A registrar that answers every Handle Resolution with an empty pool once `release` fires,
/// and reports each request it receives on the returned channel.
async fn scripted_registrar(
    release: oneshot::Receiver<()>,
) -> (SocketAddr, mpsc::UnboundedReceiver<AsapMessage>) {
    let listener = TcpFramed::new(AssociationConfig::default())
        .bind("127.0.0.1:0".parse().expect("address"))
        .await
        .expect("binds");
    let address = listener.local_addr().expect("address");
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
            AsapMessage::HandleResolution { pool_handle, .. } => {
                Some(String::from_utf8_lossy(pool_handle.as_bytes()).into_owned())
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        asked,
        ["SharedPool", "OtherPool", "SharedPool"],
        "8 resolutions, 3 round trips"
    );
}
