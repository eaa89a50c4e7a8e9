//! The pool element (the `pool-element` library's `run_until`) in-process over loopback TCP,
//! with a fake registrar ([`e2e::fake_registrar`]): registration, keep-alives, registrar loss,
//! sessions, refusal, resume, shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use e2e::fake_registrar::FakeRegistrar;
use fractal_protocol::cookie::Cookie;
use fractal_protocol::kernel::{KernelChoice, View};
use fractal_protocol::message::{AlgorithmId, Data, Parameter};
use pool_element::{Cli, run_until};
use rserpool::transport::{self, Association, AssociationConfig, PPID_ASAP, PPID_FGP};
use rserpool::wire::policy::fraction_to_wire;
use rserpool::wire::{AsapMessage, PoolHandle, TransportAddress};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(30);

struct RunningPe {
    data: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl RunningPe {
    async fn start(registrar: SocketAddr, extra: &[&str]) -> RunningPe {
        let registrar = registrar.to_string();
        let mut args = vec!["--registrar", &registrar];
        args.extend_from_slice(extra);
        RunningPe::start_with(&args).await
    }

    async fn start_with(extra: &[&str]) -> RunningPe {
        let mut args = vec!["pool-element", "--id", "0x5eed"];
        args.extend_from_slice(extra);
        let cli = Cli::try_parse_from(args).expect("valid command line");
        let (ready_tx, ready_rx) = oneshot::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(run_until(
            cli,
            async move {
                let _ = stop_rx.await;
            },
            Some(ready_tx),
        ));
        let data = timeout(WAIT, ready_rx)
            .await
            .expect("ready in time")
            .expect("ready");
        RunningPe {
            data,
            stop: Some(stop_tx),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        timeout(WAIT, &mut self.task)
            .await
            .expect("stops in time")
            .expect("task")
            .expect("clean exit");
    }
}

fn parameter(width: u32, height: u32, max_iterations: u32) -> Parameter {
    Parameter {
        width,
        height,
        max_iterations,
        algorithm: AlgorithmId::MANDELBROT,
        c1_real: -1.5,
        c1_imag: -1.2,
        c2_real: 2.0,
        c2_imag: 1.2,
        n: 2.0,
    }
}

fn reference(p: &Parameter) -> Vec<u32> {
    let view = View::new(p, KernelChoice::Scalar);
    let mut image = vec![0; (p.width * p.height) as usize];
    view.compute((0, 0), &mut image).expect("whole view");
    image
}

/// Frames of a session as the PU sees them.
#[derive(Debug)]
enum Received {
    Data(Data),
    Cookie(Cookie),
}

/// Receives until the association ends; returns the frames and whether it ended gracefully.
async fn receive_all(association: &mut Association) -> (Vec<Received>, bool) {
    let mut frames = Vec::new();
    loop {
        match timeout(WAIT, association.recv())
            .await
            .expect("session progresses")
        {
            Ok(frame) if frame.ppid == PPID_FGP => frames.push(Received::Data(
                Data::decode(&frame.payload).expect("valid Data"),
            )),
            Ok(frame) if frame.ppid == PPID_ASAP => {
                match AsapMessage::decode(&frame.payload)
                    .expect("valid ASAP")
                    .message
                {
                    AsapMessage::Cookie { cookie } => frames.push(Received::Cookie(
                        Cookie::decode(&cookie).expect("valid cookie"),
                    )),
                    other => panic!("unexpected {other:?}"),
                }
            }
            Ok(frame) => panic!("unexpected PPID {}", frame.ppid),
            Err(error) => {
                return (
                    frames,
                    matches!(error, transport::AssociationError::ClosedByPeer),
                );
            }
        }
    }
}

/// Paints Data into `image` and checks that cookies never claim more than the Data before them.
fn paint(p: &Parameter, frames: &[Received], image: &mut [u32], writes: &mut [u32]) {
    let mut end = None;
    for frame in frames {
        match frame {
            Received::Data(d) if d.is_finalizer() => {}
            Received::Data(d) => {
                let start = (d.start_y * p.width + d.start_x) as usize;
                for (i, &v) in d.points.iter().enumerate() {
                    image[start + i] = v;
                    writes[start + i] += 1;
                }
                end = Some(start + d.points.len());
            }
            Received::Cookie(c) => {
                let at = (c.current_y * p.width + c.current_x) as usize;
                if let Some(end) = end {
                    assert!(at <= end, "cookie at {at} ahead of data end {end}");
                }
            }
        }
    }
}

async fn connect(address: SocketAddr) -> Association {
    transport::connect(address, AssociationConfig::default())
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_and_computes_a_session_exactly() {
    let mut registrar = FakeRegistrar::start().await;
    let pe = RunningPe::start(registrar.address(), &[]).await;
    let registration = registrar
        .expect("registration", |m| {
            matches!(m, AsapMessage::Registration { .. })
        })
        .await;
    let AsapMessage::Registration {
        pool_handle,
        pool_element,
    } = registration
    else {
        unreachable!()
    };
    assert_eq!(
        pool_handle,
        PoolHandle::new("FractalGeneratorPool").expect("valid")
    );
    assert_eq!(pool_element.id.0, 0x5eed);
    assert_eq!(pool_element.registration_life_ms, 15_000);
    assert_eq!(
        pool_element.user_transport,
        TransportAddress::Tcp {
            port: pe.data.port(),
            address: pe.data.ip()
        }
    );

    let p = parameter(150, 90, 400);
    let mut session = connect(pe.data).await;
    session
        .send(PPID_FGP, p.encode().to_vec())
        .await
        .expect("send");
    let (frames, graceful) = receive_all(&mut session).await;
    assert!(graceful, "closed gracefully after the finalizer");
    assert!(
        matches!(frames.first(), Some(Received::Cookie(c)) if c.current_x == 0 && c.current_y == 0)
    );
    assert!(matches!(frames.last(), Some(Received::Data(d)) if d.is_finalizer()));
    let mut image = vec![u32::MAX; 150 * 90];
    let mut writes = vec![0; 150 * 90];
    paint(&p, &frames, &mut image, &mut writes);
    assert_eq!(image, reference(&p));
    assert!(writes.iter().all(|&w| w == 1));
    pe.stop().await;
    registrar
        .expect("deregistration", |m| {
            matches!(m, AsapMessage::Deregistration { .. })
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifth_session_is_refused_and_load_is_reported() {
    let mut registrar = FakeRegistrar::start().await;
    let pe = RunningPe::start(
        registrar.address(),
        &[
            "--max-sessions",
            "4",
            "--capacity",
            "20000",
            "--policy",
            "LeastUsed",
        ],
    )
    .await;
    registrar
        .expect("registration", |m| {
            matches!(m, AsapMessage::Registration { .. })
        })
        .await;
    let p = parameter(300, 300, 1000);
    let mut busy = Vec::new();
    for _ in 0..4 {
        let mut session = connect(pe.data).await;
        session
            .send(PPID_FGP, p.encode().to_vec())
            .await
            .expect("send");
        // The start cookie proves the session was accepted.
        let first = timeout(WAIT, session.recv())
            .await
            .expect("in time")
            .expect("a frame");
        assert_eq!(first.ppid, PPID_ASAP);
        busy.push(session);
    }
    let full = fraction_to_wire(1.0);
    registrar
        .expect("registration with load 100 %", |m| {
            matches!(m, AsapMessage::Registration { pool_element, .. } if pool_element.policy.load() == full)
        })
        .await;
    let mut fifth = connect(pe.data).await;
    let _ = fifth.send(PPID_FGP, p.encode().to_vec()).await;
    let outcome = timeout(WAIT, fifth.recv()).await.expect("answered in time");
    assert!(
        outcome.is_err(),
        "refused without any frame, got {outcome:?}"
    );
    // The four keep computing: each still streams.
    for session in &mut busy {
        let frame = timeout(WAIT, session.recv()).await.expect("in time");
        assert!(frame.is_ok());
    }
    drop(busy);
    registrar
        .expect("registration with load 0", |m| {
            matches!(m, AsapMessage::Registration { pool_element, .. } if pool_element.policy.load() == Some(0))
        })
        .await;
    pe.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_resume_from_cookie_yields_the_whole_view() {
    let registrar = FakeRegistrar::start().await;
    let failing = RunningPe::start(
        registrar.address(),
        &["--fail-after", "5", "--cookie-max-packets", "2"],
    )
    .await;
    let p = parameter(200, 100, 300);
    let mut session = connect(failing.data).await;
    session
        .send(PPID_FGP, p.encode().to_vec())
        .await
        .expect("send");
    let (first, graceful) = receive_all(&mut session).await;
    assert!(graceful);
    let data = first
        .iter()
        .filter(|f| matches!(f, Received::Data(_)))
        .count();
    assert_eq!(data, 5, "fail-after 5");
    let Some(Received::Cookie(cookie)) = first.last() else {
        panic!("a cookie last: {first:?}")
    };
    assert_eq!(cookie.pixels_done(), 5 * 324);

    let healthy = RunningPe::start(registrar.address(), &[]).await;
    let mut resumed = connect(healthy.data).await;
    let echo = AsapMessage::CookieEcho {
        cookie: cookie.encode().to_vec(),
    };
    resumed
        .send(PPID_ASAP, echo.to_bytes().expect("encodable"))
        .await
        .expect("send");
    let (second, graceful) = receive_all(&mut resumed).await;
    assert!(graceful);
    let mut image = vec![u32::MAX; 200 * 100];
    let mut writes = vec![0; 200 * 100];
    paint(&p, &first, &mut image, &mut writes);
    paint(&p, &second, &mut image, &mut writes);
    assert_eq!(image, reference(&p), "nothing missing");
    assert!(writes.iter().all(|&w| w == 1), "nothing duplicated");
    failing.stop().await;
    healthy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_first_messages_close_the_association() {
    let registrar = FakeRegistrar::start().await;
    let pe = RunningPe::start(registrar.address(), &[]).await;
    let bad: Vec<(u32, Vec<u8>)> = vec![
        (
            PPID_ASAP,
            AsapMessage::CookieEcho {
                cookie: b"<FG-TD1> too short".to_vec(),
            }
            .to_bytes()
            .expect("encodable"),
        ),
        (PPID_FGP, vec![1, 0, 0, 60, 0, 0]),
        (
            PPID_FGP,
            Parameter {
                width: 70_000,
                ..parameter(1, 1, 1)
            }
            .encode()
            .to_vec(),
        ),
        (77, vec![0; 8]),
    ];
    for (ppid, payload) in bad {
        let mut session = connect(pe.data).await;
        session.send(ppid, payload).await.expect("send");
        let outcome = timeout(WAIT, session.recv()).await.expect("closed in time");
        assert!(
            outcome.is_err(),
            "no frame for malformed input, got {outcome:?}"
        );
    }
    // Still serving.
    let p = parameter(20, 20, 50);
    let mut session = connect(pe.data).await;
    session
        .send(PPID_FGP, p.encode().to_vec())
        .await
        .expect("send");
    let (frames, graceful) = receive_all(&mut session).await;
    assert!(graceful && frames.len() >= 3);
    pe.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_final_cookies_then_deregisters() {
    let mut registrar = FakeRegistrar::start().await;
    let pe = RunningPe::start(registrar.address(), &["--capacity", "50000"]).await;
    registrar
        .expect("registration", |m| {
            matches!(m, AsapMessage::Registration { .. })
        })
        .await;
    let p = parameter(400, 400, 1000);
    let mut session = connect(pe.data).await;
    session
        .send(PPID_FGP, p.encode().to_vec())
        .await
        .expect("send");
    // Wait for some Data, then stop the PE.
    loop {
        let frame = timeout(WAIT, session.recv())
            .await
            .expect("in time")
            .expect("frame");
        if frame.ppid == PPID_FGP {
            break;
        }
    }
    let stopping = tokio::spawn(pe.stop());
    let (frames, _) = receive_all(&mut session).await;
    let Some(Received::Cookie(last)) = frames.last() else {
        panic!("final cookie last: {frames:?}")
    };
    assert!(last.pixels_done() > 0 && !last.is_complete());
    stopping.await.expect("stopped");
    registrar
        .expect("deregistration", |m| {
            matches!(m, AsapMessage::Deregistration { .. })
        })
        .await;
}

// Real time: the PE driver's re-registration timer is std::time::Instant-based and the
// registrar is a real socket; tokio's paused clock cannot drive it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alives_reregistration_and_registrar_loss() {
    let mut registrar = FakeRegistrar::start().await;
    let pe = RunningPe::start(
        registrar.address(),
        &["--rereg-interval", "300", "--capacity", "20000"],
    )
    .await;
    registrar
        .expect("registration", |m| {
            matches!(m, AsapMessage::Registration { .. })
        })
        .await;
    // A running session must survive the registrar's loss.
    let p = parameter(300, 300, 1000);
    let mut session = connect(pe.data).await;
    session
        .send(PPID_FGP, p.encode().to_vec())
        .await
        .expect("send");
    timeout(WAIT, session.recv())
        .await
        .expect("in time")
        .expect("start cookie");

    registrar
        .send_to_all(AsapMessage::EndpointKeepAlive {
            home: true,
            server_id: 0xabcd,
            pool_handle: PoolHandle::new("FractalGeneratorPool").expect("valid"),
            pe_id: None,
        })
        .await;
    let ack = registrar
        .expect("keep-alive ack", |m| {
            matches!(m, AsapMessage::EndpointKeepAliveAck { .. })
        })
        .await;
    assert!(matches!(ack, AsapMessage::EndpointKeepAliveAck { pe_id, .. } if pe_id.0 == 0x5eed));
    // Periodic re-registration (300 ms) carries the adopted home registrar.
    registrar
        .expect("re-registration naming the home", |m| {
            matches!(m, AsapMessage::Registration { pool_element, .. } if pool_element.home_registrar == 0xabcd)
        })
        .await;
    // Registrar "restart": the association breaks, the PE registers again.
    registrar.drop_associations();
    registrar.discard_received();
    registrar
        .expect("registration after loss", |m| {
            matches!(m, AsapMessage::Registration { .. })
        })
        .await;
    // The session kept streaming throughout.
    for _ in 0..3 {
        let frame = timeout(WAIT, session.recv()).await.expect("in time");
        assert!(frame.is_ok(), "session survived the registrar loss");
    }
    drop(session);
    pe.stop().await;
}

// Real time: std::time::Instant-based re-registration timer, real sockets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_keep_alive_on_the_data_address_is_acked_and_its_association_adopted() {
    let mut registrar = FakeRegistrar::start().await;
    let pe = RunningPe::start(registrar.address(), &["--rereg-interval", "200"]).await;
    // A re-registration, not the first registration: only once the PE has our answer is it
    // registered (until then any registrar could have it, and on a loaded machine the
    // intruder below could arrive first).
    for _ in 0..2 {
        registrar
            .expect("registration", |m| {
                matches!(m, AsapMessage::Registration { .. })
            })
            .await;
    }
    let keep_alive = AsapMessage::EndpointKeepAlive {
        home: true,
        server_id: 0x7777,
        pool_handle: PoolHandle::new("FractalGeneratorPool").expect("valid"),
        pe_id: None,
    };
    // Another registrar reaches the PE at its registered (data) address. While its home is
    // alive the PE acks and stays: a host that reaches the data port cannot pull it away.
    let mut intruder = connect(pe.data).await;
    intruder
        .send(PPID_ASAP, keep_alive.to_bytes().expect("encodable"))
        .await
        .expect("send");
    let frame = timeout(WAIT, intruder.recv())
        .await
        .expect("in time")
        .expect("ack");
    let ack = AsapMessage::decode(&frame.payload).expect("valid").message;
    assert!(matches!(ack, AsapMessage::EndpointKeepAliveAck { pe_id, .. } if pe_id.0 == 0x5eed));
    registrar.discard_received();
    for _ in 0..2 {
        registrar
            .expect("re-registration at the live home", |m| {
                matches!(m, AsapMessage::Registration { .. })
            })
            .await;
    }
    let stray = intruder.try_recv();
    assert!(
        stray.as_ref().map(|f| f.is_none()).unwrap_or(true),
        "the PE sent over the intruder's association: {:?}",
        stray
            .ok()
            .flatten()
            .map(|f| AsapMessage::decode(&f.payload).map(|d| d.message))
    );
    // Its home dies; a registrar taking over now is adopted: as rsplib's PEs do, the PE keeps
    // that association as its registrar association and registers over it, naming its new
    // home.
    registrar.stop().await;
    let mut takeover = connect(pe.data).await;
    takeover
        .send(PPID_ASAP, keep_alive.to_bytes().expect("encodable"))
        .await
        .expect("send");
    let registration = timeout(WAIT, async {
        loop {
            let frame = takeover
                .recv()
                .await
                .expect("the takeover association stays open");
            match AsapMessage::decode(&frame.payload).expect("valid").message {
                AsapMessage::EndpointKeepAliveAck { .. } => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("a registration over the takeover association");
    assert!(
        matches!(&registration, AsapMessage::Registration { pool_element, .. } if pool_element.home_registrar == 0x7777),
        "{registration:?}"
    );
    drop(takeover);
    pe.stop().await;
}

// Real time: the announces go over a real UDP socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finds_a_registrar_by_server_announce() {
    let mut registrar = FakeRegistrar::start().await;
    // A free UDP port for the announces (unicast: no multicast needed on the test host).
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("bound")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let pe = RunningPe::start_with(&["--announce-listen", &listen]).await;
    let announce = AsapMessage::ServerAnnounce {
        server_id: 0x1111,
        transports: vec![TransportAddress::Tcp {
            port: registrar.address().port(),
            address: registrar.address().ip(),
        }],
    }
    .to_bytes()
    .expect("encodable");
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let registered = async {
        registrar
            .expect("registration", |m| {
                matches!(m, AsapMessage::Registration { .. })
            })
            .await
    };
    let announcing = async {
        loop {
            let _ = socket.send_to(&announce, &listen).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let registration = tokio::select! {
        registration = registered => registration,
        _ = announcing => unreachable!(),
    };
    // The announced identifier is the home registrar the PE registers with.
    assert!(
        matches!(registration, AsapMessage::Registration { pool_element, .. } if pool_element.home_registrar == 0x1111)
    );
    pe.stop().await;
}
