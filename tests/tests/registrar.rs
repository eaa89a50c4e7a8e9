//! End-to-end tests of the real `registrar` program on loopback: registration and resolution,
//! removal on association close, keep-alive timeout and unreachable reports (read from its log
//! lines), hostile input, announces, and a clean SIGTERM shutdown.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use e2e::{Proc, READY_TIMEOUT, bin, field};
use rserpool::transport::{self, Association, AssociationConfig, PPID_ASAP};
use rserpool::wire::param::HANDLE_RESOLUTION_ALL;
use rserpool::wire::{AsapMessage, PeId, Policy, PoolElement, PoolHandle, TransportAddress};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;
use tokio::time::timeout;

const T: Duration = Duration::from_secs(30);

/// Starts `registrar` on an ephemeral loopback port; returns it and its ASAP address.
fn start_registrar(extra: &[&str]) -> Result<(Proc, SocketAddr)> {
    let mut args: Vec<String> = ["--asap", "127.0.0.1:0"]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
    if !extra.contains(&"--announce") {
        args.extend(["--announce".to_string(), "off".to_string()]);
    }
    let proc = Proc::spawn("registrar", bin("registrar"), &args)?;
    let ready = proc.log.wait_for_text("registrar ready", READY_TIMEOUT)?;
    let asap = field(&ready, "asap")
        .context("asap= field")?
        .parse()
        .context("asap address")?;
    Ok((proc, asap))
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
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
            port: 9000 + (id % 1000) as u16,
            address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        },
        policy: Policy::RoundRobin,
        asap_transport: None,
    }
}

async fn connect(addr: SocketAddr) -> Result<Association> {
    Ok(transport::connect(addr, AssociationConfig::default()).await?)
}

async fn request(assoc: &mut Association, message: &AsapMessage) -> Result<AsapMessage> {
    assoc.send(PPID_ASAP, message.to_bytes()?).await?;
    let frame = timeout(T, assoc.recv()).await.context("answer in time")??;
    Ok(AsapMessage::decode(&frame.payload)?.message)
}

async fn register(assoc: &mut Association, pool: &str, id: u32) -> Result<()> {
    let message = AsapMessage::Registration {
        pool_handle: handle(pool),
        pool_element: pe(id),
    };
    match request(assoc, &message).await? {
        AsapMessage::RegistrationResponse {
            rejected: false, ..
        } => Ok(()),
        other => bail!("registration refused: {other:?}"),
    }
}

async fn resolve_all(assoc: &mut Association, pool: &str) -> Result<Vec<PoolElement>> {
    let message = AsapMessage::HandleResolution {
        subscribe: false,
        pool_handle: handle(pool),
        items: Some(HANDLE_RESOLUTION_ALL),
    };
    match request(assoc, &message).await? {
        AsapMessage::HandleResolutionResponse {
            mut pool_elements,
            error: None,
            ..
        } => {
            pool_elements.sort_by_key(|e| e.id.0);
            Ok(pool_elements)
        }
        other => bail!("resolution failed: {other:?}"),
    }
}

#[test]
fn registration_resolution_close_and_sigterm() -> Result<()> {
    let (mut registrar, asap) = start_registrar(&[])?;
    let rt = runtime();
    let pe_assoc = rt.block_on(async {
        let mut pe_assoc = connect(asap).await?;
        for id in 1..=3 {
            register(&mut pe_assoc, "e2e", id).await?;
        }
        // A re-registration updates, it does not add.
        register(&mut pe_assoc, "e2e", 2).await?;
        let mut pu = connect(asap).await?;
        let all = resolve_all(&mut pu, "e2e").await?;
        assert_eq!(
            all.iter().map(|e| e.id.0).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        anyhow::Ok(pe_assoc)
    })?;
    let line = registrar
        .log
        .wait_for_text("pe registered", READY_TIMEOUT)?;
    assert_eq!(field(&line, "pool").as_deref(), Some("e2e"));
    assert_eq!(field(&line, "pe").as_deref(), Some("0x00000001"));
    assert_eq!(field(&line, "addr").as_deref(), Some("127.0.0.1:9001"));
    let line = registrar
        .log
        .wait_for_text("pe reregistered", READY_TIMEOUT)?;
    assert_eq!(field(&line, "pe").as_deref(), Some("0x00000002"));

    rt.block_on(async { pe_assoc.close().await })?;
    for _ in 0..3 {
        let line = registrar.log.wait_for_text("pe removed", READY_TIMEOUT)?;
        assert_eq!(
            field(&line, "reason").as_deref(),
            Some("association-closed")
        );
    }
    drop(pe_assoc);

    registrar.signal(nix::sys::signal::Signal::SIGTERM)?;
    let status = registrar.wait_exit(READY_TIMEOUT)?;
    assert!(status.success(), "{status:?}");
    registrar
        .log
        .wait_for_text("registrar stopped", READY_TIMEOUT)?;
    Ok(())
}

#[test]
fn silent_pe_is_removed_by_keepalive_timeout() -> Result<()> {
    let (registrar, asap) =
        start_registrar(&["--keepalive-interval", "200", "--keepalive-timeout", "300"])?;
    let rt = runtime();
    // This PE never answers Endpoint Keep-Alives but keeps its association open.
    let _silent = rt.block_on(async {
        let mut assoc = connect(asap).await?;
        register(&mut assoc, "ka", 42).await?;
        anyhow::Ok(assoc)
    })?;
    let line = registrar.log.wait_for_text("pe removed", READY_TIMEOUT)?;
    assert_eq!(field(&line, "pe").as_deref(), Some("0x0000002a"));
    assert_eq!(field(&line, "reason").as_deref(), Some("keepalive-timeout"));
    Ok(())
}

/// xorshift64*: deterministic noise without another dependency.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn hostile_input_changes_nothing_and_others_are_served() -> Result<()> {
    let (mut registrar, asap) = start_registrar(&[])?;
    let rt = runtime();
    rt.block_on(async {
        let mut pe_assoc = connect(asap).await?;
        for id in 1..=20 {
            register(&mut pe_assoc, "target", id).await?;
        }
        let mut pu = connect(asap).await?;
        let before = resolve_all(&mut pu, "target").await?;
        assert_eq!(before.len(), 20);

        // Unframeable garbage: the connection is ended, nothing is answered.
        for garbage in [
            vec![0, 0, 0, 11, 0x7f, 0xff, 0xff, 0xff],
            vec![0, 0, 0, 11, 0, 0, 1, 0, 1, 2],
        ] {
            let mut raw = tokio::net::TcpStream::connect(asap).await?;
            raw.write_all(&garbage).await?;
            raw.shutdown().await?;
            let mut sink = Vec::new();
            timeout(T, raw.read_to_end(&mut sink))
                .await
                .context("garbage connection ended")?
                .ok();
            assert!(sink.is_empty());
        }

        // 10,000 random and malformed ASAP messages on one association.
        let hostile = connect(asap).await?;
        let (tx, mut rx) = hostile.split();
        let reader = tokio::spawn(async move {
            let mut errors = 0usize;
            while let Ok(Ok(frame)) = timeout(Duration::from_secs(2), rx.recv()).await {
                if let Ok(decoded) = AsapMessage::decode(&frame.payload)
                    && matches!(decoded.message, AsapMessage::Error { .. })
                {
                    errors += 1;
                }
            }
            errors
        });
        let good = tokio::spawn(async move {
            for _ in 0..100 {
                assert_eq!(resolve_all(&mut pu, "target").await?.len(), 20);
            }
            anyhow::Ok(pu)
        });
        let mut noise = Noise(0x1234_5678_9abc_def1);
        let mut sent = 0;
        for i in 0..10_000u32 {
            let len = (noise.next() % 100) as usize;
            let mut m: Vec<u8> = (0..len).map(|_| noise.next() as u8).collect();
            if len >= 4 && i % 2 == 0 {
                // A plausible header (known type, matching or wrong length).
                m[0] = (noise.next() % 14 + 1) as u8;
                let claimed = if i % 4 == 0 { len } else { len + 8 };
                m[2..4].copy_from_slice(&(claimed as u16).to_be_bytes());
            }
            if tx.send(PPID_ASAP, m).await.is_err() {
                break;
            }
            sent += 1;
        }
        let mut pu = timeout(Duration::from_secs(120), good).await???;
        let errors = reader.await?;
        assert!(
            errors > 0 || tx.is_finished(),
            "sent {sent}, {errors} errors"
        );

        let after = resolve_all(&mut pu, "target").await?;
        assert_eq!(after, before, "handlespace changed by hostile input");
        anyhow::Ok(pe_assoc)
    })?;
    assert!(registrar.is_running());
    Ok(())
}

#[test]
fn announces_carry_the_asap_address() -> Result<()> {
    let rt = runtime();
    let socket = rt.block_on(tokio::net::UdpSocket::bind("127.0.0.1:0"))?;
    let port = socket.local_addr()?.port();
    let destination = format!("127.0.0.1:{port}");
    let (_registrar, asap) = start_registrar(&[
        "--announce",
        &destination,
        "--announce-interval",
        "100",
        "--id",
        "0x00a11ce5",
    ])?;
    let message = rt.block_on(async {
        let mut buf = vec![0u8; 65_536];
        let (len, _) = timeout(T, socket.recv_from(&mut buf)).await??;
        anyhow::Ok(AsapMessage::decode(buf.get(..len).unwrap_or_default())?.message)
    })?;
    assert_eq!(
        message,
        AsapMessage::ServerAnnounce {
            server_id: 0x00a1_1ce5,
            transports: vec![TransportAddress::Tcp {
                port: asap.port(),
                address: asap.ip()
            }],
        }
    );
    Ok(())
}
