//! `hostile-pe`: a pool element that registers at a real registrar like any other, serves a
//! few Data messages of each session correctly, then misbehaves for ever (issue 16, finding 1):
//! it repeats its last Data, sends Data without points, spams cookies and ASAP Errors, or sends
//! a cookie claiming the work is finished. Its keep-alives are answered, so the registrar keeps
//! it listed: the pool user alone must cope.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use e2e::fake_pe::{Behaviour, FakePe, Hostile};
use rserpool::pe::driver::{self, Registrars};
use rserpool::pe::{Event, RegistrationConfig};
use rserpool::transport::AssociationConfig;
use rserpool::wire::{PeId, Policy, PoolHandle, TransportAddress};

#[derive(Parser)]
#[command(name = "hostile-pe")]
struct Cli {
    /// Registrar ASAP address.
    #[arg(long)]
    registrar: SocketAddr,
    /// PE identifier.
    #[arg(long, value_parser = clap_num_hex)]
    id: u32,
    /// How to misbehave.
    #[arg(long, value_enum)]
    mode: Hostile,
    /// Honest Data messages of each session before misbehaving.
    #[arg(long, default_value_t = 2)]
    after: u64,
    #[arg(long, default_value = "FractalGeneratorPool")]
    pool: String,
}

fn clap_num_hex(text: &str) -> Result<u32, String> {
    match text.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse(),
    }
    .map_err(|error| error.to_string())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    program_setup::init();
    let cli = Cli::parse();
    let behaviour = Behaviour {
        cookie_every: 1,
        hostile: Some((cli.mode, cli.after)),
        ..Behaviour::default()
    };
    let pe = FakePe::start(cli.id, behaviour).await;
    let pool = PoolHandle::new(cli.pool.as_bytes())?;
    let config = RegistrationConfig::new(
        pool,
        PeId(cli.id),
        Policy::RoundRobin,
        TransportAddress::Tcp {
            address: pe.address.ip(),
            port: pe.address.port(),
        },
        Duration::from_secs(5),
    );
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let _registration = driver::spawn(
        config,
        Registrars::fixed([cli.registrar]),
        AssociationConfig::default(),
        events_tx,
    );
    while let Some(event) = events.recv().await {
        if let Event::Registered { first: true, .. } = event {
            tracing::info!(pe = %PeId(cli.id), mode = ?cli.mode, data = %pe.address, "hostile pe registered");
        }
    }
    Ok(())
}
