//! The `registrar` program; see the library for options and behaviour.

use clap::Parser;
use registrar::{Cli, run};

// One thread: the handlespace lives in a single task anyway, and on small machines this avoids
// a cross-thread wake-up per message (registrar-bench showed no loss of throughput).
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    program_setup::init();
    run(Cli::parse()).await
}
