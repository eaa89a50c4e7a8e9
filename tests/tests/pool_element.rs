//! The real `pool-element` binary on loopback with a fake registrar
//! ([`e2e::fake_registrar`]): registration, a whole session over TCP, SIGTERM with a final
//! cookie and deregistration, `--crash-after`.

use std::net::SocketAddr;

use e2e::fake_registrar::FakeRegistrar;
use e2e::{Proc, READY_TIMEOUT, bin, field, mandelbrot, start_pool_element};
use fractal_protocol::cookie::Cookie;
use fractal_protocol::kernel::{KernelChoice, View};
use fractal_protocol::message::Data;
use rserpool::transport::{self, AssociationConfig, PPID_ASAP, PPID_FGP};
use rserpool::wire::{AsapMessage, TransportAddress};
use tokio::time::timeout;

fn start_pe(registrar: SocketAddr, extra: &[&str]) -> (Proc, SocketAddr) {
    start_pool_element(registrar, "0x00c0ffee", extra).expect("the pool element starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_element_registers_and_serves_a_session() {
    let mut registrar = FakeRegistrar::start().await;
    let (mut pe, data) = start_pe(registrar.address(), &[]);
    let (_, pool_element) = registrar.expect_registration().await;
    assert_eq!(pool_element.id.0, 0x00c0_ffee);
    assert_eq!(
        pool_element.user_transport,
        TransportAddress::Tcp {
            port: data.port(),
            address: data.ip()
        }
    );
    let line = pe
        .log
        .wait_for_text("pool element registered", READY_TIMEOUT)
        .expect("registered line");
    assert_eq!(field(&line, "pe").as_deref(), Some("0x00c0ffee"));
    assert_eq!(
        field(&line, "registrar"),
        Some(registrar.address().to_string())
    );

    // One whole session over TCP, compared with the reference kernel.
    let p = mandelbrot(160, 100, 500);
    let mut session = transport::connect(data, AssociationConfig::default())
        .await
        .expect("connect");
    session
        .send(PPID_FGP, p.encode().to_vec())
        .await
        .expect("send");
    let mut image = vec![u32::MAX; 160 * 100];
    let mut emitted = 0usize;
    let mut finalized = false;
    loop {
        let frame = match timeout(READY_TIMEOUT, session.recv())
            .await
            .expect("progress")
        {
            Ok(frame) => frame,
            Err(_) => break,
        };
        match frame.ppid {
            PPID_FGP => {
                let d = Data::decode(&frame.payload).expect("valid Data");
                if d.is_finalizer() {
                    finalized = true;
                    continue;
                }
                let start = (d.start_y * p.width + d.start_x) as usize;
                assert_eq!(start, emitted, "contiguous Data");
                image[start..start + d.points.len()].copy_from_slice(&d.points);
                emitted += d.points.len();
            }
            PPID_ASAP => {
                let AsapMessage::Cookie { cookie } =
                    AsapMessage::decode(&frame.payload).expect("ASAP").message
                else {
                    panic!("only cookies expected");
                };
                let cookie = Cookie::decode(&cookie).expect("valid cookie");
                assert!(
                    cookie.pixels_done() as usize <= emitted,
                    "cookie ahead of data"
                );
            }
            other => panic!("unexpected PPID {other}"),
        }
    }
    assert!(finalized);
    let mut expected = vec![0; 160 * 100];
    View::new(&p, KernelChoice::Scalar)
        .compute((0, 0), &mut expected)
        .expect("whole view");
    assert_eq!(image, expected);
    pe.log
        .wait_for_text("session finished", READY_TIMEOUT)
        .expect("finished line");

    // SIGTERM: deregistration and exit 0.
    pe.signal(nix::sys::signal::Signal::SIGTERM)
        .expect("signal");
    registrar
        .expect("deregistration", |m| {
            matches!(m, AsapMessage::Deregistration { .. })
        })
        .await;
    let status = pe.wait_exit(READY_TIMEOUT).expect("exits");
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_gives_running_sessions_a_final_cookie() {
    let mut registrar = FakeRegistrar::start().await;
    let (mut pe, data) = start_pe(registrar.address(), &["--capacity", "100000"]);
    registrar.expect_registration().await;
    let p = mandelbrot(500, 500, 1000);
    let mut session = transport::connect(data, AssociationConfig::default())
        .await
        .expect("connect");
    session
        .send(PPID_FGP, p.encode().to_vec())
        .await
        .expect("send");
    let mut emitted = 0usize;
    let mut last_cookie = None;
    let mut signalled = false;
    loop {
        let frame = match timeout(READY_TIMEOUT, session.recv())
            .await
            .expect("progress")
        {
            Ok(frame) => frame,
            Err(_) => break,
        };
        if frame.ppid == PPID_FGP {
            let d = Data::decode(&frame.payload).expect("Data");
            assert!(
                !d.is_finalizer(),
                "a 250,000-pixel view at 100,000 it/s cannot finish"
            );
            emitted += d.points.len();
            if !signalled {
                pe.signal(nix::sys::signal::Signal::SIGTERM)
                    .expect("signal");
                signalled = true;
            }
            last_cookie = None;
        } else if let AsapMessage::Cookie { cookie } =
            AsapMessage::decode(&frame.payload).expect("ASAP").message
        {
            last_cookie = Some(Cookie::decode(&cookie).expect("cookie"));
        }
    }
    let cookie = last_cookie.expect("the last frame is a cookie");
    assert_eq!(
        cookie.pixels_done() as usize,
        emitted,
        "final cookie covers all Data"
    );
    registrar
        .expect("deregistration", |m| {
            matches!(m, AsapMessage::Deregistration { .. })
        })
        .await;
    assert!(pe.wait_exit(READY_TIMEOUT).expect("exits").success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_aborts_the_process_without_a_final_cookie() {
    let registrar = FakeRegistrar::start().await;
    let (mut pe, data) = start_pe(
        registrar.address(),
        &["--crash-after", "3", "--cookie-max-packets", "100"],
    );
    let p = mandelbrot(324, 50, 50);
    let mut session = transport::connect(data, AssociationConfig::default())
        .await
        .expect("connect");
    session
        .send(PPID_FGP, p.encode().to_vec())
        .await
        .expect("send");
    let mut data_messages = 0;
    let mut cookies = 0;
    let mut cookies_after_data = 0;
    while let Ok(frame) = timeout(READY_TIMEOUT, session.recv())
        .await
        .expect("progress")
    {
        match frame.ppid {
            PPID_FGP => data_messages += 1,
            _ if data_messages > 0 => cookies_after_data += 1,
            _ => cookies += 1,
        }
    }
    // At most 3 Data reach us and at most the start cookie: the abort drops whatever the
    // process had not written yet, which may include all of it.
    assert!(data_messages <= 3, "{data_messages}");
    assert!(cookies <= 1, "{cookies}");
    assert_eq!(cookies_after_data, 0, "no cookie after the Data");
    pe.log
        .wait_for_text("crash-after reached", READY_TIMEOUT)
        .expect("crash line");
    let status = pe.wait_exit(READY_TIMEOUT).expect("exits");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(nix::sys::signal::Signal::SIGABRT as i32)
    );
}

/// Starts the real registrar on `asap` (port 0: ephemeral) without announces; returns it and
/// its bound ASAP address.
fn start_registrar(asap: &str) -> (Proc, SocketAddr) {
    let args: Vec<String> = [
        "--asap",
        asap,
        "--announce",
        "off",
        "--keepalive-interval",
        "500",
        "--keepalive-timeout",
        "500",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let registrar = Proc::spawn("registrar", bin("registrar"), &args).expect("starts");
    let line = registrar
        .log
        .wait_for_text("registrar ready", READY_TIMEOUT)
        .expect("ready line");
    let address = field(&line, "asap")
        .expect("asap field")
        .parse()
        .expect("an address");
    (registrar, address)
}

#[test]
fn pool_element_registers_with_the_real_registrar_and_again_after_its_restart() {
    let (registrar, asap) = start_registrar("127.0.0.1:0");
    let pe = Proc::spawn(
        "pool-element",
        bin("pool-element"),
        &[
            "--registrar".to_string(),
            asap.to_string(),
            "--id".into(),
            "0x0000abcd".into(),
            "--rereg-interval".into(),
            "1000".into(),
        ],
    )
    .expect("starts");
    let line = pe
        .log
        .wait_for_text("pool element listening", READY_TIMEOUT)
        .expect("listening");
    let data = field(&line, "data").expect("data field");
    let seen = registrar
        .log
        .wait_for(READY_TIMEOUT, |l| {
            l.contains("pe registered") && l.contains("pe=0x0000abcd")
        })
        .expect("registrar saw the registration");
    assert_eq!(field(&seen, "addr").as_deref(), Some(data.as_str()));
    pe.log
        .wait_for_text("pool element registered", READY_TIMEOUT)
        .expect("PE registered line");
    // Keep-alives (every 500 ms, 500 ms to answer) name the home registrar and are acked:
    // the PE is never removed; periodic re-registrations reach the registrar.
    let ready = registrar
        .log
        .lines()
        .into_iter()
        .find(|l| l.contains("registrar ready"))
        .expect("ready line");
    let home = pe
        .log
        .wait_for_text("home registrar changed", READY_TIMEOUT)
        .expect("a keep-alive reached the PE");
    assert_eq!(field(&home, "home"), field(&ready, "id"));
    for _ in 0..2 {
        registrar
            .log
            .wait_for(READY_TIMEOUT, |l| {
                l.contains("pe reregistered") && l.contains("pe=0x0000abcd")
            })
            .expect("re-registration");
    }
    assert_eq!(
        registrar.log.count("pe removed"),
        0,
        "{:?}",
        registrar.log.lines()
    );

    // Registrar restart on the same port: the PE notices and registers again.
    registrar
        .signal(nix::sys::signal::Signal::SIGKILL)
        .expect("kill");
    drop(registrar);
    pe.log
        .wait_for_text("registrar lost", READY_TIMEOUT)
        .expect("PE noticed the loss");
    let (restarted, again) = start_registrar(&asap.to_string());
    assert_eq!(again, asap);
    restarted
        .log
        .wait_for(READY_TIMEOUT, |l| {
            l.contains("pe registered") && l.contains("pe=0x0000abcd")
        })
        .expect("registered again after the restart");
    pe.log
        .wait_for_text("pool element registered", READY_TIMEOUT)
        .expect("PE registered again");
}
