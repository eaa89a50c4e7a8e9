//! Fractal Generator pool element.

use clap::Parser;

// Sessions compute on the computing threads (worker.rs); the runtime only moves messages, and
// one thread does that without cross-thread wake-ups.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    program_setup::init();
    pool_element::run(pool_element::Cli::parse()).await
}
