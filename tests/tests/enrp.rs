//! Three `registrar` processes keeping one handlespace with ENRP (RFC 5353) on loopback, each
//! on its own address (127.0.N.1-3), with static peers and no multicast (tests run side by
//! side). PEs homed at different registrars are listed by every one; a registrar's SIGKILL
//! loses no PE and no pixel of a picture being computed; a restarted registrar catches up.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use e2e::{Proc, READY_TIMEOUT, bin, start_pool_element};
use nix::sys::signal::Signal;

const POOL: &str = "FractalGeneratorPool";

struct Registrar {
    proc: Proc,
}

fn asap_address(net: u8, index: usize) -> SocketAddr {
    e2e::enrp_registrar_asap(net, index as u8 + 1)
}

/// Registrar `index` (identifier index + 1) of a mesh of `count` on 127.0.`net`.0/24.
fn start_registrar(net: u8, index: usize, count: usize) -> Result<Registrar> {
    let peers: Vec<u8> = (1..=count as u8)
        .filter(|&p| p != index as u8 + 1)
        .collect();
    let proc = e2e::start_enrp_registrar(net, index as u8 + 1, &peers, &[])?;
    Ok(Registrar { proc })
}

/// Waits until every registrar in `asaps` lists exactly `ids`.
fn wait_listed(asaps: &[SocketAddr], ids: &[u32], within: Duration) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let deadline = Instant::now() + within;
    loop {
        let views: Vec<Vec<u32>> = asaps
            .iter()
            .map(|&asap| {
                runtime
                    .block_on(e2e::listed_pes(asap, POOL))
                    .unwrap_or_default()
            })
            .collect();
        if views.iter().all(|view| view == ids) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("views {views:?}, wanted {ids:?} at every registrar");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn registrar_args(net: u8, order: &[usize]) -> Vec<String> {
    order
        .iter()
        .flat_map(|&r| ["--registrar".to_string(), asap_address(net, r).to_string()])
        .collect()
}

#[test]
fn pes_homed_at_different_registrars_are_listed_by_every_one() -> Result<()> {
    const NET: u8 = 31;
    let _registrars: Vec<Registrar> = (0..3)
        .map(|r| start_registrar(NET, r, 3))
        .collect::<Result<_>>()?;
    let asaps: Vec<SocketAddr> = (0..3).map(|r| asap_address(NET, r)).collect();
    let mut pes = Vec::new();
    for (home, id) in [(0usize, 0xe1u32), (1, 0xe2), (2, 0xe3)] {
        // Each PE knows one registrar only: every other view comes from ENRP.
        let registrar = asap_address(NET, home);
        pes.push(start_pool_element(registrar, &format!("{id:#x}"), &[])?);
    }
    wait_listed(&asaps, &[0xe1, 0xe2, 0xe3], Duration::from_secs(10))?;
    Ok(())
}

#[test]
fn a_registrar_killed_mid_picture_loses_no_pe_and_no_pixel_and_catches_up_when_restarted()
-> Result<()> {
    const NET: u8 = 32;
    let mut registrars: Vec<Registrar> = (0..3)
        .map(|r| start_registrar(NET, r, 3))
        .collect::<Result<_>>()?;
    let asaps: Vec<SocketAddr> = (0..3).map(|r| asap_address(NET, r)).collect();
    // Slow PEs, so that the picture takes seconds; each knows every registrar, its home first.
    let mut pes = Vec::new();
    for (order, id) in [([0usize, 1, 2], 0xf1u32), ([1, 2, 0], 0xf2)] {
        let mut args = registrar_args(NET, &order[1..]);
        args.extend(["--capacity".into(), "2000000".into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        pes.push(start_pool_element(
            asap_address(NET, order[0]),
            &format!("{id:#x}"),
            &args,
        )?);
    }
    wait_listed(&asaps, &[0xf1, 0xf2], Duration::from_secs(10))?;

    // The pool user asks registrar 1 first, the one that dies.
    let dir = tempfile::tempdir()?;
    let mut pu_args = registrar_args(NET, &[0, 1, 2]);
    pu_args.extend(
        [
            "--headless",
            "--width",
            "240",
            "--height",
            "160",
            "--sessions",
            "4",
            "--units",
            "16",
            "--preset",
            "full-set",
            "--max-iterations",
            "1000",
            "--no-progress",
            "--stale-cache",
            "0",
            "--iterations-out",
        ]
        .map(String::from),
    );
    pu_args.push(dir.path().join("iterations.bin").display().to_string());
    let mut pu = Proc::spawn("pool-user", bin("pool-user"), &pu_args)?;
    pu.log.wait_for_text("image started", READY_TIMEOUT)?;
    registrars[0].proc.signal(Signal::SIGKILL)?;
    let killed = Instant::now();

    // Both PEs are listed by the survivors, and stay listed past their registration life
    // (3 x 5 s): the orphaned one registered with another registrar.
    wait_listed(&asaps[1..], &[0xf1, 0xf2], Duration::from_secs(10))?;
    let status = pu.wait_exit(Duration::from_secs(120))?;
    anyhow::ensure!(status.success(), "pool-user failed: {status}");
    let got = std::fs::read(dir.path().join("iterations.bin"))?;
    let mut view = fractal_protocol::preset::Preset::by_name("full-set")
        .context("preset")?
        .parameter(240, 160);
    view.max_iterations = 1000;
    let expected: Vec<u8> = e2e::expected_picture(&view, 16)
        .into_iter()
        .flat_map(u32::to_le_bytes)
        .collect();
    anyhow::ensure!(got == expected, "the picture differs from the reference");
    let lifetime = Duration::from_secs(16);
    if let Some(left) = lifetime.checked_sub(killed.elapsed()) {
        std::thread::sleep(left);
    }
    wait_listed(&asaps[1..], &[0xf1, 0xf2], Duration::from_secs(5))?;

    // Registrar 1 comes back, empty, and learns everything from its peers.
    registrars[0] = start_registrar(NET, 0, 3)?;
    wait_listed(&asaps, &[0xf1, 0xf2], Duration::from_secs(15))?;
    drop(pes);
    Ok(())
}

#[test]
fn registrars_with_tls_replicate_and_refuse_a_peer_without() -> Result<()> {
    use rserpool::transport::pki::PoolCa;
    use rserpool::transport::{AssociationConfig, TlsConfig};
    const NET: u8 = 35;
    let dir = tempfile::tempdir()?;
    let ca = PoolCa::new("pool CA")?;
    let credentials = |name: &str, sans: &[&str]| -> Result<Vec<String>> {
        e2e::tls_args(&ca.issue(name, sans)?, dir.path(), name)
    };
    let start = |index: usize, tls: &[String]| -> Result<Proc> {
        e2e::start_enrp_registrar(NET, index as u8 + 1, &[1, 2], tls)
    };
    let first = start(0, &credentials("registrar1", &["127.0.35.1"])?)?;
    let _second = start(1, &credentials("registrar2", &["127.0.35.2"])?)?;
    let plain = start(2, &[])?;
    let pe_tls = credentials("pe", &[])?;
    let pe_args: Vec<&str> = pe_tls.iter().map(String::as_str).collect();
    let _pe = start_pool_element(asap_address(NET, 0), "0xc7", &pe_args)?;

    // The two TLS registrars keep one handlespace: the second lists the PE of the first.
    let client = TlsConfig::client_from_pem(&ca.issue("pu", &[])?)?;
    let config = AssociationConfig {
        tls: Some(client),
        ..AssociationConfig::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while runtime
        .block_on(e2e::listed_pes_with(
            asap_address(NET, 1),
            POOL,
            config.clone(),
        ))
        .unwrap_or_default()
        != [0xc7]
    {
        anyhow::ensure!(Instant::now() < deadline, "not replicated over TLS");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The plain registrar's PRESENCEs are refused at the handshake; it learns no peer.
    first
        .log
        .wait_for_text("TLS handshake refused", READY_TIMEOUT)?;
    anyhow::ensure!(
        plain.log.count("PeerUp") == 0,
        "a plain registrar became a peer"
    );
    anyhow::ensure!(
        runtime
            .block_on(e2e::listed_pes(asap_address(NET, 2), POOL))
            .unwrap_or_default()
            .is_empty(),
        "the plain registrar learnt the pool"
    );
    Ok(())
}

#[test]
fn a_pe_that_knows_only_the_dead_registrar_is_taken_over_and_stays() -> Result<()> {
    const NET: u8 = 36;
    let fast = [
        "--peer-heartbeat-cycle",
        "300",
        "--peer-max-time-last-heard",
        "500",
        "--peer-max-time-no-response",
        "500",
    ];
    let start = |index: usize| -> Result<Proc> {
        let peer = 2 - index as u8;
        e2e::start_enrp_registrar(NET, index as u8 + 1, &[peer], &fast.map(String::from))
    };
    let first = start(0)?;
    let second = start(1)?;
    // Registration life 3 x 1 s.
    let (pe, _) = start_pool_element(asap_address(NET, 0), "0xb1", &["--rereg-interval", "1000"])?;
    wait_listed(&[asap_address(NET, 1)], &[0xb1], Duration::from_secs(10))?;
    first.signal(Signal::SIGKILL)?;
    second
        .log
        .wait_for_text("TakeoverWon", READY_TIMEOUT)
        .context("registrar 2 takes over")?;
    pe.log
        .wait_for_text("home=0x00000002", READY_TIMEOUT)
        .context("the PE adopts registrar 2")?;
    // Registered over the takeover association, it re-registers there: still listed well past
    // its registration life.
    std::thread::sleep(Duration::from_secs(5));
    wait_listed(&[asap_address(NET, 1)], &[0xb1], Duration::from_secs(1))?;
    anyhow::ensure!(
        second.log.count("pe removed") == 0,
        "registrar 2 removed the PE"
    );
    Ok(())
}
