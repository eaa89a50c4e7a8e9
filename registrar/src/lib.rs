//! The RSerPool registrar program: command line and run loop over
//! [`rserpool::registrar::driver`]. `main.rs` only sets up logging and a runtime, so the same
//! [`Cli`] and [`run`] serve as a subcommand of other programs.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use rserpool::handlespace::{ForeignReregistration, HandlespaceConfig};
use rserpool::registrar::EnrpConfig;
use rserpool::registrar::driver::{self, AnnounceConfig, DriverConfig, EnrpDriverConfig};
use rserpool::registrar::keepalive::KeepAliveConfig;
use rserpool::registrar::reports::ReportConfig;
use rserpool::registrar::{RegistrarConfig, RegistrarStats};
use rserpool::transport::AssociationConfig;
use rserpool::transport::announce::ASAP_ANNOUNCE_ADDR;
use rserpool::transport::frame::MIN_MAX_FRAME_LEN;
use tracing::info;

/// RSerPool registrar (PR): keeps the handlespace, serves ASAP over framed TCP, announces itself.
#[derive(Clone, Debug, Parser)]
#[command(name = "registrar", version)]
pub struct Cli {
    /// Address to accept ASAP associations on (port 0 = ephemeral)
    #[arg(long, default_value = "0.0.0.0:3863")]
    pub asap: SocketAddr,
    /// Where to send Server Announces: multicast group, unicast or broadcast ADDR:PORT, or `off`
    #[arg(long, default_value = "239.0.0.50:3863", value_parser = parse_announce)]
    pub announce: Announce,
    /// Time between Server Announces in ms (spread ±12.5 %)
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub announce_interval: u64,
    /// Time from a PE's last sign of life to its next Endpoint Keep-Alive in ms (spread ±12.5 %)
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    pub keepalive_interval: u64,
    /// Time a PE has to acknowledge a Keep-Alive before it is removed, in ms
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    pub keepalive_timeout: u64,
    /// Distinct Endpoint Unreachable reporters that have a PE probed with a Keep-Alive, and
    /// removed if it does not answer (MAX-BAD-PE-REPORT)
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_bad_pe_reports: u64,
    /// Time a reported PE has to answer the probe (milliseconds)
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub probe_timeout: u64,
    /// Endpoint Unreachable reports per second and pool user that count
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub max_report_rate: u32,
    /// Let a registration from another association take over a live PE identifier, as rsplib
    /// does (by default it is refused: the identifier belongs to its association)
    #[arg(long)]
    pub allow_pe_id_takeover: bool,
    /// Most associations (PEs and pool users) open at once; more are reset at accept
    #[arg(long, value_name = "N", default_value_t = driver::DEFAULT_MAX_ASSOCIATIONS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_associations: usize,
    /// Most PEs registered over one association (a PE process registers one)
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_pes_per_association: u32,
    /// Most PEs in the handlespace (about 0.75 KiB of memory each)
    #[arg(long, value_name = "N", default_value_t = 262_144, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_pes: u32,
    /// Most PEs in one pool
    #[arg(long, value_name = "N", default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_pes_per_pool: u32,
    /// Most PEs in one Handle Resolution Response, whatever the request asks [default: no limit]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_hr_items: Option<u32>,
    /// Registrar identifier, hexadecimal (0x...) or decimal, non-zero [default: random]
    #[arg(long, value_parser = parse_id)]
    pub id: Option<u32>,
    /// ENRP (RFC 5353): accept peer registrars here and keep one handlespace with them; a
    /// specific address, since peers are told it [default: off, a registrar alone]
    #[arg(long, value_name = "ADDR:PORT")]
    pub enrp: Option<SocketAddr>,
    /// A peer registrar's ENRP address (repeatable); others are learnt from the group
    #[arg(long = "peer", value_name = "ADDR:PORT", requires = "enrp")]
    pub peers: Vec<SocketAddr>,
    /// Where ENRP PRESENCEs are multicast and heard: GROUP:PORT or `off` (static peers only)
    #[arg(long, default_value = "239.0.0.51:9901", value_parser = parse_announce)]
    pub enrp_announce: Announce,
    /// Time between our PRESENCEs to peers in ms, spread ±12.5 % (PEER-HEARTBEAT-CYCLE)
    #[arg(long, value_name = "MS", default_value_t = 2444, value_parser = clap::value_parser!(u64).range(1..))]
    pub peer_heartbeat_cycle: u64,
    /// A peer silent this long (ms) is asked for a PRESENCE (MAX-TIME-LAST-HEARD)
    #[arg(long, value_name = "MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    pub peer_max_time_last_heard: u64,
    /// ... and declared dead if it stays silent this much longer, in ms (MAX-TIME-NO-RESPONSE)
    #[arg(long, value_name = "MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    pub peer_max_time_no_response: u64,
    /// Start-up ends after this many ms without a mentor's complete handlespace
    #[arg(long, value_name = "MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    pub mentor_discovery_timeout: u64,
    /// A takeover completes after this many ms even without every peer's acknowledgement
    #[arg(long, value_name = "MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    pub takeover_expiry: u64,
    /// PEs per Handle Table Response page
    #[arg(long, value_name = "N", default_value_t = 128, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub max_elements_per_ht_request: usize,
    /// TLS for every association (RFC 5355): a peer without a certificate from the pool CA is
    /// refused.
    #[command(flatten)]
    pub tls: program_setup::tls::TlsArgs,
    /// Delay every received ASAP message by this many milliseconds (emulated network delay
    /// for experiments) [default: 0, off].
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub network_delay: u64,
    /// At exit, write the registrar's counters (messages in and out, registrations, ...) and
    /// its uptime to this file as JSON.
    #[arg(long, value_name = "FILE")]
    pub stats: Option<std::path::PathBuf>,
}

/// The `--announce` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Announce {
    Off,
    To(SocketAddr),
}

fn parse_announce(text: &str) -> Result<Announce, String> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(Announce::Off);
    }
    text.parse()
        .map(Announce::To)
        .map_err(|e| format!("expected ADDR:PORT or off: {e}"))
}

fn parse_id(text: &str) -> Result<u32, String> {
    let id = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse(),
    }
    .map_err(|e| format!("expected a 32-bit number (hex with 0x, or decimal): {e}"))?;
    if id == 0 {
        return Err("the registrar identifier must not be 0".into());
    }
    Ok(id)
}

impl Cli {
    /// The driver configuration these options describe.
    pub fn driver_config(&self) -> DriverConfig {
        let id = self.id.unwrap_or_else(|| rand::random::<u32>().max(1));
        DriverConfig {
            asap: self.asap,
            announce: match self.announce {
                Announce::Off => None,
                Announce::To(destination) => Some(AnnounceConfig {
                    destination,
                    interval: Duration::from_millis(self.announce_interval),
                }),
            },
            registrar: RegistrarConfig {
                id,
                keepalive: KeepAliveConfig {
                    interval: Duration::from_millis(self.keepalive_interval),
                    timeout: Duration::from_millis(self.keepalive_timeout),
                },
                max_bad_pe_reports: usize::try_from(self.max_bad_pe_reports).unwrap_or(usize::MAX),
                reports: ReportConfig {
                    max_reports_per_second: self.max_report_rate,
                    probe_timeout: Duration::from_millis(self.probe_timeout),
                    ..ReportConfig::default()
                },
                default_hr_items: 3,
                max_hr_items: self.max_hr_items,
                handlespace: HandlespaceConfig {
                    foreign_reregistration: if self.allow_pe_id_takeover {
                        ForeignReregistration::Update
                    } else {
                        ForeignReregistration::Reject
                    },
                    max_pool_elements_per_association: self.max_pes_per_association as usize,
                    max_pool_elements: self.max_pes as usize,
                    max_pool_elements_per_pool: self.max_pes_per_pool as usize,
                    ..HandlespaceConfig::default()
                },
                seed: rand::random(),
            },
            // An ASAP message has a 16-bit length: nothing larger need ever be buffered.
            association: AssociationConfig {
                max_frame_len: MIN_MAX_FRAME_LEN,
                receive_delay: std::time::Duration::from_millis(self.network_delay),
                ..AssociationConfig::default()
            },
            max_associations: self.max_associations,
            enrp: self.enrp.map(|listen| EnrpDriverConfig {
                listen,
                group: match self.enrp_announce {
                    Announce::Off => None,
                    Announce::To(group) => Some(group),
                },
                protocol: EnrpConfig {
                    static_peers: self.peers.clone(),
                    heartbeat_cycle: Duration::from_millis(self.peer_heartbeat_cycle),
                    max_time_last_heard: Duration::from_millis(self.peer_max_time_last_heard),
                    max_time_no_response: Duration::from_millis(self.peer_max_time_no_response),
                    mentor_discovery_timeout: Duration::from_millis(self.mentor_discovery_timeout),
                    takeover_expiry: Duration::from_millis(self.takeover_expiry),
                    max_elements_per_page: self.max_elements_per_ht_request,
                    ..EnrpConfig::new(listen)
                },
                peer_tls: None,
            }),
        }
    }
}

/// The default announce destination (rsplib's ASAP group).
pub const DEFAULT_ANNOUNCE: SocketAddr = ASAP_ANNOUNCE_ADDR;

/// How often the registrar looks whether a flood of associations is over.
const FLOOD_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Runs a registrar until SIGINT or SIGTERM, then shuts it down cleanly.
pub async fn run(cli: Cli) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut config = cli.driver_config();
    config.association.tls = cli.tls.server()?;
    if let Some(enrp) = config.enrp.as_mut() {
        enrp.peer_tls = cli.tls.client()?;
    }
    let tls = if config.association.tls.is_some() {
        "required"
    } else {
        "off"
    };
    let registrar = driver::start(config)
        .await
        .with_context(|| format!("starting the registrar on {}", cli.asap))?;
    let announce = registrar
        .announce_destination()
        .map_or_else(|| "off".to_string(), |a| a.to_string());
    info!(
        asap = %registrar.local_addr(),
        id = %format!("0x{:08x}", registrar.id()),
        announce = %announce,
        enrp = %registrar
            .enrp_address()
            .map_or_else(|| "off".to_string(), |a| a.to_string()),
        tls,
        "registrar ready"
    );
    let started = std::time::Instant::now();
    let mut recovery = program_setup::allocator::FloodRecovery::default();
    let mut check = tokio::time::interval(FLOOD_CHECK_INTERVAL);
    let signal_name = loop {
        tokio::select! {
            _ = interrupt.recv() => break "SIGINT",
            _ = terminate.recv() => break "SIGTERM",
            _ = check.tick() => {
                let (open, peak) = registrar.open_associations();
                if recovery.observe(open, peak) {
                    let returned = program_setup::allocator::return_freed_memory();
                    info!(open, returned, "associations closed: freed memory returned");
                }
            }
        }
    };
    info!(signal = %signal_name, "registrar shutting down");
    if let Some(path) = &cli.stats
        && let Some(inspection) = registrar.inspect().await
    {
        let text = stats_json(&inspection.stats, started.elapsed());
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    registrar.shutdown().await;
    info!("registrar stopped");
    Ok(())
}

/// `--stats`: the counters and the uptime, one JSON object.
fn stats_json(stats: &RegistrarStats, uptime: Duration) -> String {
    serde_json::json!({
        "uptime": uptime.as_secs_f64(),
        "asap_messages_received": stats.asap_messages_received,
        "asap_messages_sent": stats.asap_messages_sent,
        "registrations": stats.registrations,
        "reregistrations": stats.reregistrations,
        "rejected_registrations": stats.rejected_registrations,
        "deregistrations": stats.deregistrations,
        "handle_resolutions": stats.handle_resolutions,
        "keepalives_sent": stats.keepalives_sent,
        "unreachable_reports": stats.unreachable_reports,
        "ignored_unreachable_reports": stats.ignored_unreachable_reports,
        "bad_messages": stats.bad_messages,
        "enrp_messages_sent": stats.enrp_messages_sent,
        "enrp_bytes_sent": stats.enrp_bytes_sent,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("registrar").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_follow_rsplib() {
        let config = parse(&[]).expect("defaults parse").driver_config();
        assert_eq!(config.asap, "0.0.0.0:3863".parse().expect("address"));
        let announce = config.announce.expect("announces on by default");
        assert_eq!(announce.destination, DEFAULT_ANNOUNCE);
        assert_eq!(announce.interval, Duration::from_secs(1));
        assert_eq!(config.registrar.keepalive, KeepAliveConfig::default());
        assert_eq!(config.registrar.max_bad_pe_reports, 3);
        assert_eq!(config.registrar.default_hr_items, 3);
        assert_eq!(config.registrar.max_hr_items, None);
        assert_ne!(config.registrar.id, 0);
    }

    #[test]
    fn options_reach_the_configuration() {
        let cli = parse(&[
            "--asap",
            "127.0.0.1:0",
            "--announce",
            "OFF",
            "--keepalive-interval",
            "250",
            "--keepalive-timeout",
            "750",
            "--max-bad-pe-reports",
            "1",
            "--max-hr-items",
            "8",
            "--id",
            "0x00C0FFEE",
            "--max-pes",
            "5000",
            "--max-pes-per-pool",
            "700",
        ])
        .expect("parses");
        let config = cli.driver_config();
        assert_eq!(config.registrar.handlespace.max_pool_elements, 5000);
        assert_eq!(config.registrar.handlespace.max_pool_elements_per_pool, 700);
        assert_eq!(config.announce, None);
        assert_eq!(
            config.registrar.keepalive.interval,
            Duration::from_millis(250)
        );
        assert_eq!(
            config.registrar.keepalive.timeout,
            Duration::from_millis(750)
        );
        assert_eq!(config.registrar.max_bad_pe_reports, 1);
        assert_eq!(config.registrar.max_hr_items, Some(8));
        assert_eq!(config.registrar.id, 0x00c0_ffee);
        assert_eq!(parse(&["--id", "4096"]).expect("decimal").id, Some(4096));
        assert_eq!(
            parse(&["--announce", "10.1.2.3:9000"])
                .expect("unicast")
                .announce,
            Announce::To("10.1.2.3:9000".parse().expect("address"))
        );
    }

    #[test]
    fn invalid_values_are_refused() {
        for args in [
            &["--id", "0"][..],
            &["--id", "0x"],
            &["--id", "0x1ffffffff"],
            &["--announce", "239.0.0.50"],
            &["--max-bad-pe-reports", "0"],
            &["--max-hr-items", "0"],
            &["--keepalive-timeout", "-5"],
        ] {
            assert!(parse(args).is_err(), "{args:?} accepted");
        }
    }
}
