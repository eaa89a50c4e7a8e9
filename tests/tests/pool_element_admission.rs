//! The real `pool-element` binary against hostile peers, on loopback with a fake registrar
//! ([`e2e::fake_registrar`]): connections that never send a request hold no session place and
//! are closed after the first-message timeout, absurd requests are refused, and connections
//! beyond the per-source cap are closed at once. Other source addresses are 127.0.0.2+.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use e2e::fake_registrar::FakeRegistrar;
use e2e::{Proc, READY_TIMEOUT, field, mandelbrot, start_pool_element};
use fractal_protocol::message::Data;
use rserpool::transport::{self, Association, AssociationConfig, PPID_ASAP, PPID_FGP};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;

/// Bound on "at once" on a loaded 2-core machine; far below the timeouts it is told from.
const AT_ONCE: Duration = Duration::from_secs(5);

async fn start_pe(extra: &[&str]) -> (Proc, SocketAddr, FakeRegistrar) {
    let mut registrar = FakeRegistrar::start().await;
    let (pe, data) = start_pool_element(registrar.address(), "0x00ad0001", extra)
        .expect("the pool element starts");
    registrar.expect_registration().await;
    (pe, data, registrar)
}

/// A connection whose only traffic is its transport's heartbeats (every 200 ms), as from the
/// probe that found the problem.
async fn heartbeats_only(pe: SocketAddr) -> Association {
    let config = AssociationConfig {
        heartbeat: Some(transport::HeartbeatConfig {
            interval: Duration::from_millis(200),
            timeout: Duration::from_secs(60),
        }),
        ..AssociationConfig::default()
    };
    transport::connect(pe, config).await.expect("connect")
}

/// Opens a connection that the PE is to close at once (it may be reset before `connect` is
/// through), without any frame; the connection if `connect` was through.
async fn closed_at_once(pe: SocketAddr) -> Option<Association> {
    let config = AssociationConfig {
        heartbeat: None,
        ..AssociationConfig::default()
    };
    let mut association = transport::connect(pe, config).await.ok()?;
    let outcome = timeout(AT_ONCE, association.recv())
        .await
        .expect("closed at once");
    assert!(outcome.is_err(), "closed without any frame: {outcome:?}");
    Some(association)
}

/// A plain TCP connection from `source` (any 127.x.y.z), speaking frames by hand; an error
/// when the PE resets it before `connect` is through.
async fn try_raw_from(source: Ipv4Addr, pe: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from((source, 0)))
        .expect("bind the source address");
    socket.connect(pe).await
}

async fn raw_from(source: Ipv4Addr, pe: SocketAddr) -> TcpStream {
    try_raw_from(source, pe).await.expect("connect")
}

async fn send_frame(stream: &mut TcpStream, ppid: u32, payload: &[u8]) {
    let mut frame = Vec::with_capacity(8 + payload.len());
    frame.extend_from_slice(&ppid.to_be_bytes());
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    stream.write_all(&frame).await.expect("send");
}

/// The PPID of the next non-heartbeat frame; `None` once the PE closed the connection.
async fn next_ppid(stream: &mut TcpStream) -> Option<u32> {
    loop {
        let mut header = [0u8; 8];
        stream.read_exact(&mut header).await.ok()?;
        let ppid = u32::from_be_bytes(header[..4].try_into().expect("4 bytes"));
        let len = u32::from_be_bytes(header[4..].try_into().expect("4 bytes"));
        let mut payload = vec![0; len as usize];
        stream.read_exact(&mut payload).await.ok()?;
        if ppid != transport::PPID_HEARTBEAT {
            return Some(ppid);
        }
    }
}

/// Until the PE closes `stream`, bounded; how long that took.
async fn raw_closed_within(stream: &mut TcpStream, bound: Duration) -> Duration {
    let start = Instant::now();
    let closed = timeout(bound, async {
        let mut buffer = [0u8; 256];
        // Heartbeat requests from the PE may come first.
        while matches!(stream.read(&mut buffer).await, Ok(n) if n > 0) {}
    })
    .await;
    assert!(closed.is_ok(), "still open after {bound:?}");
    start.elapsed()
}

/// Runs a whole small session; returns whether it finished with the finalizer.
async fn honest_session(pe: SocketAddr) -> bool {
    let mut session = transport::connect(pe, AssociationConfig::default())
        .await
        .expect("connect");
    session
        .send(PPID_FGP, mandelbrot(64, 40, 200).encode().to_vec())
        .await
        .expect("send");
    // Served at once: the start cookie comes first.
    let first = timeout(AT_ONCE, session.recv())
        .await
        .expect("an answer at once")
        .expect("the start cookie, not a refusal");
    assert_eq!(first.ppid, PPID_ASAP);
    let mut finalized = false;
    while let Ok(frame) = timeout(READY_TIMEOUT, session.recv())
        .await
        .expect("progress")
    {
        if frame.ppid == PPID_FGP {
            finalized |= Data::decode(&frame.payload)
                .expect("valid Data")
                .is_finalizer();
        }
    }
    finalized
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_heartbeat_only_connections_hold_no_session_place() {
    // Four places, all taken by idle connections before the fix.
    let (pe, data, _registrar) = start_pe(&["--max-sessions", "4"]).await;
    let opened = Instant::now();
    let mut beating = vec![heartbeats_only(data).await, heartbeats_only(data).await];
    let mut silent = vec![
        raw_from(Ipv4Addr::LOCALHOST, data).await,
        raw_from(Ipv4Addr::LOCALHOST, data).await,
    ];
    // Accepted in order: the idle four are in before the honest session.
    assert!(honest_session(data).await, "the picture completed");
    pe.log
        .wait_for_text("session started", READY_TIMEOUT)
        .expect("a session line");

    // The default first-message timeout (2 s) closes them; heartbeats do not keep them.
    for association in &mut beating {
        let outcome = timeout(READY_TIMEOUT, association.recv())
            .await
            .expect("closed in time");
        assert!(
            outcome.is_err(),
            "no frame for an idle connection: {outcome:?}"
        );
    }
    for stream in &mut silent {
        raw_closed_within(stream, READY_TIMEOUT).await;
    }
    let idle_for = opened.elapsed();
    assert!(
        idle_for >= Duration::from_millis(1900) && idle_for < Duration::from_secs(20),
        "closed after {idle_for:?}, not after about 2 s"
    );
    let line = pe
        .log
        .wait_for_text("session aborted", READY_TIMEOUT)
        .expect("a line for the timeout");
    assert_eq!(field(&line, "reason").as_deref(), Some("no-request"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_request_is_refused_while_an_honest_session_is_served() {
    let (pe, data, _registrar) = start_pe(&[]).await;
    let mut absurd = transport::connect(data, AssociationConfig::default())
        .await
        .expect("connect");
    absurd
        .send(
            PPID_FGP,
            mandelbrot(65_536, 65_536, 1_000_000).encode().to_vec(),
        )
        .await
        .expect("send");
    let honest = tokio::spawn(honest_session(data));
    let outcome = timeout(AT_ONCE, absurd.recv())
        .await
        .expect("closed at once");
    assert!(outcome.is_err(), "refused without any frame: {outcome:?}");
    let line = pe
        .log
        .wait_for_text("session refused: too much work", READY_TIMEOUT)
        .expect("a refusal line");
    assert_eq!(field(&line, "width").as_deref(), Some("65536"));
    assert_eq!(field(&line, "max_iterations").as_deref(), Some("1000000"));
    assert!(line.contains("--max-work"), "{line}");
    assert!(honest.await.expect("honest task"), "the picture completed");
    // The PE's log reaches us through a pipe: wait for the honest session's line before
    // counting, or a loaded machine may count before it arrives.
    pe.log
        .wait_for_text("session started", READY_TIMEOUT)
        .expect("the honest session's line");
    assert_eq!(pe.log.count("session started"), 1, "only the honest one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_per_source_cap_are_closed_at_once() {
    // A long first-message timeout: what closes the fourth connection is the cap.
    let (pe, data, _registrar) = start_pe(&[
        "--max-pending-per-source",
        "3",
        "--first-message-timeout",
        "60000",
    ])
    .await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(heartbeats_only(data).await);
    }
    let started = Instant::now();
    let _fourth = closed_at_once(data).await;
    let line = pe
        .log
        .wait_for_text("connection refused", READY_TIMEOUT)
        .expect("a warning line");
    assert_eq!(
        field(&line, "reason").as_deref(),
        Some("max-pending-per-source")
    );
    assert!(started.elapsed() < AT_ONCE);

    // Another source is still admitted and served, while the three wait.
    let mut other = raw_from(Ipv4Addr::new(127, 0, 0, 2), data).await;
    send_frame(&mut other, PPID_FGP, &mandelbrot(32, 20, 100).encode()).await;
    assert_eq!(
        timeout(AT_ONCE, next_ppid(&mut other))
            .await
            .expect("an answer at once"),
        Some(PPID_ASAP),
        "the start cookie"
    );
    for association in &mut idle {
        assert!(
            matches!(association.try_recv(), Ok(None)),
            "the first three are still open"
        );
    }
    // The refusal is rate-limited: a burst gives one line (plus a count of the rest later).
    let mut burst = Vec::new();
    for _ in 0..5 {
        burst.push(closed_at_once(data).await);
    }
    assert!(
        pe.log.count("connection refused") < 6,
        "one warning per second"
    );
    drop(idle);
}

/// Open descriptors of process `pid`.
fn descriptors(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the PE's descriptors")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_from_many_sources_are_bounded_by_max_connections() {
    const MAX: usize = 20;
    let (pe, data, _registrar) = start_pe(&[
        "--max-connections",
        "20",
        "--max-pending",
        "100",
        "--first-message-timeout",
        "60000",
    ])
    .await;
    let before = descriptors(pe.pid());
    // One connection per source: no per-source cap applies.
    let mut flood = Vec::new();
    for last in 2..2 + 2 * MAX as u8 {
        flood.push(try_raw_from(Ipv4Addr::new(127, 0, 0, last), data).await);
    }
    let line = pe
        .log
        .wait_for_text("connection refused", READY_TIMEOUT)
        .expect("a warning line");
    assert_eq!(field(&line, "reason").as_deref(), Some("max-connections"));
    // Refused ones are reset at once; what stays open is bounded. Checked within 1 s, before
    // the PE's transport heartbeats (3 s) would close the silent connections anyway.
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut open = descriptors(pe.pid());
    while open > before + MAX && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        open = descriptors(pe.pid());
    }
    assert!(
        open <= before + MAX,
        "{open} descriptors, {before} before {} connections",
        flood.len()
    );
}
