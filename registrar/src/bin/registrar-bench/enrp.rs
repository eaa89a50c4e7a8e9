//! `registrar-bench --enrp-registrars N`: N registrars in this process keeping one handlespace
//! with ENRP on loopback (static peers, no multicast). `--pes` PEs register at the first one;
//! printed: the time until every other registrar lists them all, ENRP bytes per second at rest,
//! the time until a registrar started afterwards (empty) holds them all, and the time from the
//! first registrar's abrupt end (its tasks aborted, no goodbye) until a survivor is the home of
//! every one of its PEs.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use rserpool::registrar::driver::{self, DriverConfig, EnrpDriverConfig, RunningRegistrar};
use rserpool::registrar::{EnrpConfig, RegistrarConfig};
use rserpool::transport::AssociationConfig;
use rserpool::wire::Policy;

use super::{Args, register_pes};

/// How long the quiet phase measures ENRP traffic.
const AT_REST: Duration = Duration::from_secs(10);

async fn start(id: u32, peers: &[SocketAddr], per_association: u32) -> Result<RunningRegistrar> {
    let mut registrar = RegistrarConfig {
        id,
        seed: u64::from(id),
        ..RegistrarConfig::default()
    };
    registrar.handlespace.max_pool_elements_per_association = per_association as usize;
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    Ok(driver::start(DriverConfig {
        asap: listen,
        announce: None,
        registrar,
        association: AssociationConfig::default(),
        max_associations: driver::DEFAULT_MAX_ASSOCIATIONS,
        enrp: Some(EnrpDriverConfig {
            listen,
            group: None,
            protocol: EnrpConfig {
                static_peers: peers.to_vec(),
                ..EnrpConfig::new(listen)
            },
            peer_tls: None,
        }),
    })
    .await?)
}

/// PEs `registrar` lists, and how many of them have home `home`.
async fn count(registrar: &RunningRegistrar, home: Option<u32>) -> usize {
    let Some(inspection) = registrar.inspect().await else {
        return 0;
    };
    match home {
        None => inspection.pool_element_count,
        Some(home) => inspection
            .snapshot
            .pools
            .values()
            .flat_map(|pool| pool.elements.values())
            .filter(|pe| pe.home_registrar == home)
            .count(),
    }
}

/// Polls until `done` or `limit`; returns the time it took.
async fn time_until(
    what: &str,
    limit: Duration,
    mut done: impl AsyncFnMut() -> bool,
) -> Result<Duration> {
    let started = Instant::now();
    while !done().await {
        if started.elapsed() > limit {
            bail!("{what}: not within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(started.elapsed())
}

async fn enrp_bytes(registrars: &[RunningRegistrar]) -> u64 {
    let mut total = 0;
    for registrar in registrars {
        if let Some(inspection) = registrar.inspect().await {
            total += inspection.stats.enrp_bytes_sent;
        }
    }
    total
}

pub(super) async fn run(args: &Args, policy: Policy, count_of_registrars: u32) -> Result<()> {
    if count_of_registrars < 2 {
        bail!("--enrp-registrars needs at least 2");
    }
    let pes = args.pes as usize;
    let per_association = args.pes.div_ceil(args.registration_connections).max(1024);
    let mut registrars: Vec<RunningRegistrar> = Vec::new();
    let mut enrp_addresses = Vec::new();
    for id in 1..=count_of_registrars {
        let registrar = start(id, &enrp_addresses, per_association).await?;
        enrp_addresses.extend(registrar.enrp_address());
        registrars.push(registrar);
    }
    println!(
        "registrar-bench: {count_of_registrars} registrars in this process, ENRP on loopback \
         (rsplib's timers: heartbeat 2.444 s, a peer dead after 5 s + 5 s of silence)"
    );
    let first = registrars[0].local_addr();
    let (granted, registration_time, _keepalives) = register_pes(first, args, policy).await?;
    if granted != args.pes {
        bail!("only {granted} of {} registrations granted", args.pes);
    }
    let replicated = time_until("replication", Duration::from_secs(60), async || {
        for registrar in &registrars[1..] {
            if count(registrar, None).await < pes {
                return false;
            }
        }
        true
    })
    .await?;
    println!(
        "{pes} PEs registered at registrar 1 in {:.3} s; listed by every other registrar {:.3} s later",
        registration_time.as_secs_f64(),
        replicated.as_secs_f64()
    );

    let before = enrp_bytes(&registrars).await;
    tokio::time::sleep(AT_REST).await;
    let rest = enrp_bytes(&registrars).await - before;
    println!(
        "at rest with {pes} PEs: {:.0} ENRP bytes/s sent by all {count_of_registrars} registrars together",
        rest as f64 / AT_REST.as_secs_f64()
    );

    let started = Instant::now();
    let newcomer = start(
        count_of_registrars + 1,
        &enrp_addresses[..1],
        per_association,
    )
    .await?;
    time_until("catching up", Duration::from_secs(60), async || {
        count(&newcomer, None).await >= pes
    })
    .await?;
    println!(
        "a registrar started empty holds all {pes} PEs after {:.3} s",
        started.elapsed().as_secs_f64()
    );
    registrars.push(newcomer);

    let first = registrars.remove(0);
    first.abort().await;
    let survivors = &registrars;
    let rehomed = time_until("takeover", Duration::from_secs(60), async || {
        for registrar in survivors {
            if count(registrar, Some(1)).await > 0 || count(registrar, None).await < pes {
                return false;
            }
        }
        true
    })
    .await?;
    println!(
        "registrar 1 ended abruptly: every one of its {pes} PEs has a new home at every survivor after {:.3} s",
        rehomed.as_secs_f64()
    );
    for registrar in registrars {
        registrar.shutdown().await;
    }
    Ok(())
}
