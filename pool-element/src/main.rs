//! Fractal Generator pool element.

use clap::Parser;

// Sessions compute on their own threads; the runtime only moves messages, and one thread does
// that without cross-thread wake-ups (a third of the pool's overhead on 2 cores with two).
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    rserpool::logging::init();
    pool_element::run(pool_element::Cli::parse()).await
}
