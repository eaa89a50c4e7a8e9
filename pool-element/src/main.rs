//! Fractal Generator pool element.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    rserpool::logging::init();
    pool_element::run(pool_element::Cli::parse()).await
}
