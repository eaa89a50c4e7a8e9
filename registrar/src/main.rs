//! The `registrar` program; see the library for options and behaviour.

use clap::Parser;
use registrar::{Cli, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    rserpool::logging::init();
    run(Cli::parse()).await
}
