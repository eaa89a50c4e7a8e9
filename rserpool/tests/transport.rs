//! Framed-TCP associations over loopback.

use std::collections::HashMap;
use std::future::Future;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use rserpool::transport::frame::{
    DEFAULT_MAX_FRAME_LEN, FrameDecoder, FrameError, MIN_MAX_FRAME_LEN,
};
use rserpool::transport::heartbeat::HeartbeatMessage;
use rserpool::transport::{
    Association, AssociationConfig, AssociationError, Frame, FrameBatch, HeartbeatConfig, Listener,
    PPID_ASAP, PPID_ENRP, PPID_FGP, PPID_HEARTBEAT, ProtocolError, SendError, TcpFramed, Transport,
    TrySendError,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upper bound of every wait in these tests.
const BOUND: Duration = Duration::from_secs(10);

async fn bounded<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {BOUND:?}"))
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn quiet_config() -> AssociationConfig {
    AssociationConfig {
        heartbeat: None,
        ..AssociationConfig::default()
    }
}

fn fast_heartbeats() -> AssociationConfig {
    AssociationConfig {
        heartbeat: Some(HeartbeatConfig {
            interval: Duration::from_millis(50),
            timeout: Duration::from_millis(300),
        }),
        ..AssociationConfig::default()
    }
}

/// A connected pair: (client, server).
async fn pair(client: AssociationConfig, server: AssociationConfig) -> (Association, Association) {
    let listener = TcpFramed::new(server).bind(loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let transport = TcpFramed::new(client);
    let (client, server) = bounded("connect", async {
        tokio::join!(transport.connect(addr), listener.accept())
    })
    .await;
    (client.unwrap(), server.unwrap())
}

/// A framed association on one side, a raw TCP socket on the other.
async fn association_and_raw(config: AssociationConfig) -> (Association, TcpStream) {
    let listener = TcpFramed::new(config).bind(loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (raw, association) = bounded("connect", async {
        tokio::join!(TcpStream::connect(addr), listener.accept())
    })
    .await;
    (association.unwrap(), raw.unwrap())
}

#[tokio::test]
async fn frames_of_every_ppid_round_trip_both_ways() {
    let (mut client, mut server) = pair(quiet_config(), quiet_config()).await;
    assert_eq!(client.peer_addr(), server.local_addr());
    assert_eq!(client.local_addr(), server.peer_addr());
    let frames: Vec<(u32, Vec<u8>)> = vec![
        (PPID_ASAP, vec![0x08, 0x00, 0x00, 0x04]),
        (PPID_ENRP, (0..=255).collect()),
        (PPID_FGP, vec![]),
        (PPID_FGP, vec![0xab; DEFAULT_MAX_FRAME_LEN]),
        (1, b"one".to_vec()),
        (33, b"pingpong".to_vec()),
        (u32::MAX, b"top".to_vec()),
    ];
    for (ppid, payload) in &frames {
        client.send(*ppid, payload.clone()).await.unwrap();
        server.send(*ppid, payload.clone()).await.unwrap();
    }
    for (ppid, payload) in &frames {
        for side in [&mut server, &mut client] {
            let frame = bounded("frame", side.recv()).await.unwrap();
            assert_eq!((frame.ppid, frame.payload.len()), (*ppid, payload.len()));
            assert_eq!(&frame.payload, payload);
        }
    }
}

#[tokio::test]
async fn a_batch_arrives_in_order_between_single_sends_and_a_bad_frame_refuses_all_of_it() {
    let (client, mut server) = pair(quiet_config(), quiet_config()).await;
    let max = client.sender().max_frame_len();
    let batch_of = |frames: &[Frame]| {
        let mut batch = FrameBatch::default();
        for frame in frames {
            batch.push(frame.ppid, &frame.payload);
        }
        batch
    };
    let refused = client
        .sender()
        .send_batch(batch_of(&[
            Frame::new(PPID_FGP, vec![1]),
            Frame::new(PPID_FGP, vec![0; max + 1]),
        ]))
        .await;
    assert_eq!(refused, Err(SendError::TooLarge { len: max + 1, max }));
    assert_eq!(
        client
            .sender()
            .send_batch(batch_of(&[Frame::new(PPID_HEARTBEAT, vec![1])]))
            .await,
        Err(SendError::ReservedPpid)
    );
    client.send(PPID_ASAP, vec![0]).await.unwrap();
    let batch: Vec<Frame> = (1..=200u8)
        .map(|i| Frame::new(PPID_FGP, vec![i; usize::from(i) * 7]))
        .collect();
    client.sender().send_batch(batch_of(&batch)).await.unwrap();
    client
        .sender()
        .send_batch(FrameBatch::default())
        .await
        .unwrap();
    client.send(PPID_ASAP, vec![201]).await.unwrap();
    let expected: Vec<Frame> = std::iter::once(Frame::new(PPID_ASAP, vec![0]))
        .chain(batch)
        .chain(std::iter::once(Frame::new(PPID_ASAP, vec![201])))
        .collect();
    for want in expected {
        assert_eq!(bounded("frame", server.recv()).await.unwrap(), want);
    }
}

#[tokio::test]
async fn sender_refuses_reserved_ppid_and_oversized_payload() {
    let (client, _server) = pair(quiet_config(), quiet_config()).await;
    assert_eq!(
        client.send(PPID_HEARTBEAT, vec![1]).await,
        Err(SendError::ReservedPpid)
    );
    let max = client.sender().max_frame_len();
    assert_eq!(max, DEFAULT_MAX_FRAME_LEN);
    assert_eq!(
        client.send(PPID_FGP, vec![0; max + 1]).await,
        Err(SendError::TooLarge { len: max + 1, max })
    );
    assert_eq!(
        client.try_send(PPID_FGP, vec![0; max + 1]),
        Err(TrySendError::Rejected(SendError::TooLarge {
            len: max + 1,
            max
        }))
    );
}

#[tokio::test]
async fn oversized_frame_from_peer_is_a_typed_error_and_resets_the_connection() {
    // The sender allows 128 KiB, the receiver only 64 KiB.
    let big = AssociationConfig {
        max_frame_len: 128 * 1024,
        ..quiet_config()
    };
    let small = AssociationConfig {
        max_frame_len: MIN_MAX_FRAME_LEN,
        ..quiet_config()
    };
    let (mut client, mut server) = pair(big, small).await;
    client.send(PPID_ASAP, b"fits".to_vec()).await.unwrap();
    client
        .send(PPID_FGP, vec![7; MIN_MAX_FRAME_LEN + 1])
        .await
        .unwrap();
    assert_eq!(
        bounded("first frame", server.recv()).await.unwrap().payload,
        &b"fits"[..]
    );
    let error = bounded("error", server.recv()).await.unwrap_err();
    assert!(
        matches!(
            error,
            AssociationError::Protocol(ProtocolError::Frame(FrameError::TooLarge { len, max }))
                if len == MIN_MAX_FRAME_LEN as u64 + 1 && max == MIN_MAX_FRAME_LEN
        ),
        "{error:?}"
    );
    // The error repeats, and the violator sees the connection reset.
    assert!(matches!(
        server.recv().await,
        Err(AssociationError::Protocol(_))
    ));
    let error = bounded("reset seen by client", client.recv())
        .await
        .unwrap_err();
    assert!(matches!(error, AssociationError::Reset), "{error:?}");
}

#[tokio::test]
async fn oversized_header_from_raw_peer_closes_with_rst() {
    let (mut association, mut raw) = association_and_raw(quiet_config()).await;
    let mut header = Vec::new();
    header.extend_from_slice(&PPID_FGP.to_be_bytes());
    header.extend_from_slice(&u32::MAX.to_be_bytes());
    raw.write_all(&header).await.unwrap();
    let error = bounded("error", association.recv()).await.unwrap_err();
    assert!(
        matches!(
            error,
            AssociationError::Protocol(ProtocolError::Frame(FrameError::TooLarge { .. }))
        ),
        "{error:?}"
    );
    let mut buf = [0u8; 16];
    let read = bounded("raw peer sees the close", raw.read(&mut buf)).await;
    assert_eq!(read.map_err(|e| e.kind()), Err(ErrorKind::ConnectionReset));
}

#[tokio::test]
async fn malformed_heartbeat_is_a_protocol_error() {
    let (mut association, mut raw) = association_and_raw(quiet_config()).await;
    let mut frame = Vec::new();
    frame.extend_from_slice(&PPID_HEARTBEAT.to_be_bytes());
    frame.extend_from_slice(&3u32.to_be_bytes());
    frame.extend_from_slice(&[1, 0, 0]);
    raw.write_all(&frame).await.unwrap();
    let error = bounded("error", association.recv()).await.unwrap_err();
    assert!(
        matches!(
            error,
            AssociationError::Protocol(ProtocolError::Heartbeat(_))
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn truncated_frame_at_eof_is_a_protocol_error() {
    let (mut association, mut raw) = association_and_raw(quiet_config()).await;
    let mut frame = Vec::new();
    frame.extend_from_slice(&PPID_ASAP.to_be_bytes());
    frame.extend_from_slice(&10u32.to_be_bytes());
    frame.extend_from_slice(b"short");
    raw.write_all(&frame).await.unwrap();
    raw.shutdown().await.unwrap();
    let error = bounded("error", association.recv()).await.unwrap_err();
    assert!(
        matches!(
            error,
            AssociationError::Protocol(ProtocolError::Frame(FrameError::Truncated {
                buffered: 13
            }))
        ),
        "{error:?}"
    );
}

// Real time: the heartbeat deadlines are std::time::Instant, which tokio's paused clock does
// not move, and the peer is a real socket.
#[tokio::test]
async fn silent_peer_is_declared_dead_after_heartbeat_timeout() {
    let (mut association, mut raw) = association_and_raw(fast_heartbeats()).await;
    let started = std::time::Instant::now();
    // The raw peer reads (its kernel ACKs, as for a SIGSTOPped process) but never sends.
    let reader = tokio::spawn(async move {
        let mut decoder = FrameDecoder::default();
        let mut input = bytes::BytesMut::new();
        let mut requests = Vec::new();
        let mut buf = [0u8; 1024];
        let end = loop {
            match raw.read(&mut buf).await {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    input.extend_from_slice(&buf[..n]);
                    while let Some(frame) = decoder.decode_buf(&mut input).unwrap() {
                        assert_eq!(frame.ppid, PPID_HEARTBEAT);
                        requests.push(HeartbeatMessage::decode(&frame.payload).unwrap());
                    }
                }
                Err(error) => break Err(error.kind()),
            }
        };
        (requests, end)
    });
    let error = bounded("heartbeat timeout", association.recv())
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    match error {
        AssociationError::HeartbeatTimeout { silent_for } => {
            assert!(silent_for >= Duration::from_millis(300))
        }
        other => panic!("expected a heartbeat timeout, got {other:?}"),
    }
    assert!(
        elapsed >= Duration::from_millis(300),
        "declared dead after {elapsed:?}"
    );
    let (requests, end) = bounded("raw reader", reader).await.unwrap();
    assert_eq!(
        end,
        Err(ErrorKind::ConnectionReset),
        "a dead association is reset"
    );
    assert!(
        requests.len() >= 3,
        "requests sent while waiting: {requests:?}"
    );
    assert!(
        requests
            .iter()
            .all(|m| matches!(m, HeartbeatMessage::Request { .. }))
    );
}

#[tokio::test]
async fn heartbeat_requests_are_acked_with_their_nonce() {
    let (_association, mut raw) = association_and_raw(quiet_config()).await;
    let request = HeartbeatMessage::Request {
        nonce: 0xdead_beef_0bad_f00d,
    };
    let mut frame = Vec::new();
    rserpool::transport::frame::encode_frame(PPID_HEARTBEAT, &request.encode(), &mut frame)
        .unwrap();
    raw.write_all(&frame).await.unwrap();
    let mut reply = [0u8; 20];
    bounded("ack", raw.read_exact(&mut reply)).await.unwrap();
    let mut decoder = FrameDecoder::default();
    let ack = decoder
        .decode_buf(&mut bytes::BytesMut::from(&reply[..]))
        .unwrap()
        .unwrap();
    assert_eq!(ack.ppid, PPID_HEARTBEAT);
    assert_eq!(
        HeartbeatMessage::decode(&ack.payload),
        Ok(HeartbeatMessage::Ack {
            nonce: 0xdead_beef_0bad_f00d
        })
    );
}

// Real time: heartbeats (std::time::Instant deadlines) and the SRTT they measure run over a
// real socket.
#[tokio::test]
async fn heartbeats_measure_srtt_and_are_never_delivered() {
    let (client, mut server) = pair(fast_heartbeats(), fast_heartbeats()).await;
    bounded("srtt measured", async {
        while client.srtt().is_none() || server.srtt().is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let srtt = client.srtt().unwrap();
    assert!(
        srtt > Duration::ZERO && srtt < Duration::from_secs(1),
        "loopback srtt {srtt:?}"
    );
    assert!(
        server.try_recv().unwrap().is_none(),
        "heartbeats must not reach the application"
    );
    client.send(PPID_ASAP, b"after".to_vec()).await.unwrap();
    assert_eq!(
        bounded("frame", server.recv()).await.unwrap().payload,
        &b"after"[..]
    );
}

#[tokio::test]
async fn graceful_close_is_distinguished_from_abort() {
    // Graceful: queued frames arrive, then ClosedByPeer; the closer's close() reports success.
    let (closer, mut peer) = pair(quiet_config(), quiet_config()).await;
    for i in 0..100u32 {
        closer
            .send(PPID_FGP, i.to_be_bytes().to_vec())
            .await
            .unwrap();
    }
    let (close_result, received) = bounded("graceful close", async {
        tokio::join!(closer.close(), async {
            let mut received = Vec::new();
            let end = loop {
                match peer.recv().await {
                    Ok(frame) => received.push(frame.payload),
                    Err(error) => break error,
                }
            };
            (received, end)
        })
    })
    .await;
    let (received, end) = received;
    close_result.unwrap();
    assert_eq!(
        received.len(),
        100,
        "every frame queued before close arrives"
    );
    assert!(
        received
            .iter()
            .enumerate()
            .all(|(i, p)| p[..] == (i as u32).to_be_bytes())
    );
    assert!(matches!(end, AssociationError::ClosedByPeer), "{end:?}");
    assert_eq!(peer.send(PPID_FGP, vec![1]).await, Err(SendError::Closed));
    assert!(
        bounded("peer finished", peer.sender().finished())
            .await
            .is_ok()
    );

    // Abort: the peer sees a reset.
    let (aborter, mut peer) = pair(quiet_config(), quiet_config()).await;
    aborter
        .send(PPID_ASAP, b"before abort".to_vec())
        .await
        .unwrap();
    assert_eq!(
        bounded("frame", peer.recv()).await.unwrap().payload,
        &b"before abort"[..]
    );
    aborter.abort();
    let end = bounded("reset", peer.recv()).await.unwrap_err();
    assert!(matches!(end, AssociationError::Reset), "{end:?}");
    let own = bounded("aborter's own end", aborter.sender().finished())
        .await
        .unwrap_err();
    assert!(matches!(own, AssociationError::Closed), "{own:?}");
}

#[tokio::test]
async fn closer_still_receives_what_the_peer_sent_before_its_fin() {
    let (mut closer, peer) = pair(quiet_config(), quiet_config()).await;
    let (peer_sender, mut peer_receiver) = peer.split();
    // In flight towards the closer when it closes, and not yet read by it.
    for i in 0..50u32 {
        peer_sender
            .try_send(PPID_ASAP, i.to_be_bytes().to_vec())
            .unwrap();
    }
    let closing = tokio::spawn({
        let sender = closer.sender().clone();
        async move { sender.close().await }
    });
    let end = bounded("peer sees FIN", peer_receiver.recv())
        .await
        .unwrap_err();
    assert!(matches!(end, AssociationError::ClosedByPeer), "{end:?}");
    let late = peer_sender.send(PPID_ASAP, b"late".to_vec()).await;
    assert_eq!(
        late,
        Err(SendError::Closed),
        "no new frames after the peer's FIN"
    );
    bounded("close", closing).await.unwrap().unwrap();
    for i in 0..50u32 {
        let frame = bounded("frame", closer.recv()).await.unwrap();
        assert_eq!(frame.payload[..], i.to_be_bytes());
    }
    let end = bounded("closer's receiver ends", closer.recv())
        .await
        .unwrap_err();
    assert!(matches!(end, AssociationError::Closed), "{end:?}");
}

#[tokio::test]
async fn dropping_every_handle_closes_gracefully() {
    let (client, mut server) = pair(quiet_config(), quiet_config()).await;
    client
        .send(PPID_ENRP, b"last words".to_vec())
        .await
        .unwrap();
    drop(client);
    assert_eq!(
        bounded("frame", server.recv()).await.unwrap().payload,
        &b"last words"[..]
    );
    let end = bounded("close", server.recv()).await.unwrap_err();
    assert!(matches!(end, AssociationError::ClosedByPeer), "{end:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_keep_frames_intact() {
    const SENDERS: u32 = 8;
    const FRAMES: u32 = 300;
    let (client, mut server) = pair(quiet_config(), quiet_config()).await;
    let mut tasks = Vec::new();
    for sender_id in 0..SENDERS {
        let sender = client.sender().clone();
        tasks.push(tokio::spawn(async move {
            for seq in 0..FRAMES {
                // Sizes vary so frames straddle write batches and segments.
                let len = 8 + ((sender_id * 7919 + seq * 104_729) % 5000) as usize;
                let mut payload = vec![sender_id as u8; len];
                payload[..4].copy_from_slice(&sender_id.to_be_bytes());
                payload[4..8].copy_from_slice(&seq.to_be_bytes());
                sender.send(100 + sender_id, payload).await.unwrap();
            }
        }));
    }
    let mut next_seq: HashMap<u32, u32> = HashMap::new();
    for _ in 0..SENDERS * FRAMES {
        let frame = bounded("frame", server.recv()).await.unwrap();
        let sender_id = u32::from_be_bytes(frame.payload[..4].try_into().unwrap());
        let seq = u32::from_be_bytes(frame.payload[4..8].try_into().unwrap());
        assert_eq!(frame.ppid, 100 + sender_id);
        let expected_len = 8 + ((sender_id * 7919 + seq * 104_729) % 5000) as usize;
        assert_eq!(frame.payload.len(), expected_len);
        assert!(
            frame.payload[8..].iter().all(|&b| b == sender_id as u8),
            "payload corrupted"
        );
        let next = next_seq.entry(sender_id).or_default();
        assert_eq!(seq, *next, "per-sender order kept");
        *next += 1;
    }
    for task in tasks {
        bounded("sender", task).await.unwrap();
    }
    assert!(next_seq.values().all(|&n| n == FRAMES));
}

// Real time: the stall must let real socket buffers fill while heartbeats (std::time::Instant
// deadlines) run.
#[tokio::test]
async fn slow_reader_is_not_declared_dead_while_its_queue_is_full() {
    let config = AssociationConfig {
        receive_queue: 2,
        ..fast_heartbeats()
    };
    let (client, mut server) = pair(config.clone(), config).await;
    let sender = client.sender().clone();
    let producer = tokio::spawn(async move {
        for i in 0..2000u32 {
            sender
                .send(PPID_FGP, vec![(i % 251) as u8; 16 * 1024])
                .await
                .unwrap();
        }
    });
    // The application stalls for twice the heartbeat timeout: the connection stops reading and
    // the socket buffers fill, yet neither side may give up.
    tokio::time::sleep(Duration::from_millis(600)).await;
    for i in 0..2000u32 {
        let frame = bounded("frame", server.recv()).await.unwrap();
        assert_eq!(frame.payload, vec![(i % 251) as u8; 16 * 1024]);
    }
    bounded("producer", producer).await.unwrap();
}

#[tokio::test]
async fn connect_to_closed_port_fails() {
    let listener = tokio::net::TcpListener::bind(loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let result = bounded(
        "connect",
        rserpool::transport::connect(addr, quiet_config()),
    )
    .await;
    assert_eq!(
        result.map(|_| ()).map_err(|e| e.kind()),
        Err(ErrorKind::ConnectionRefused)
    );
}

// Real time: the connection's frame deadline runs on std::time::Instant.
#[tokio::test]
async fn a_frame_fed_a_byte_at_a_time_is_cut_off_at_the_assembly_deadline() {
    let config = AssociationConfig {
        frame_assembly_timeout: Duration::from_millis(300),
        ..quiet_config()
    };
    let (mut association, mut raw) = association_and_raw(config).await;
    // A header announcing 1000 bytes, then a byte every 50 ms: the connection stays busy
    // (heartbeats would be satisfied) but the frame never completes in time.
    let mut header = Vec::new();
    header.extend_from_slice(&11u32.to_be_bytes());
    header.extend_from_slice(&1000u32.to_be_bytes());
    raw.write_all(&header).await.unwrap();
    let started = std::time::Instant::now();
    let feeder = tokio::spawn(async move {
        for _ in 0..100 {
            if raw.write_all(&[0]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let error = bounded("the slow frame is refused", association.recv())
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            AssociationError::Protocol(ProtocolError::SlowFrame(waited))
                if waited >= Duration::from_millis(300)
        ),
        "{error:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    feeder.abort();
}

#[tokio::test]
async fn a_receive_delay_holds_every_frame_back_in_order_and_then_reports_the_close() {
    let delay = Duration::from_millis(150);
    let delayed = AssociationConfig {
        receive_delay: delay,
        ..quiet_config()
    };
    let (client, mut server) = pair(quiet_config(), delayed).await;
    let sent_at = std::time::Instant::now();
    for n in 0..20u8 {
        client.send(PPID_FGP, vec![n]).await.unwrap();
    }
    bounded("close", client.close()).await.unwrap();
    for n in 0..20u8 {
        let frame = bounded("frame", server.recv()).await.unwrap();
        assert_eq!(&frame.payload[..], &[n]);
        assert!(
            sent_at.elapsed() >= delay,
            "frame {n} came after {:?}, before the delay",
            sent_at.elapsed()
        );
    }
    let end = bounded("end", server.recv()).await;
    assert!(end.is_err(), "the close comes after the frames: {end:?}");
}
