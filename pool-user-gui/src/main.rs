//! `pool-user`: the Fractal Generator pool user. `--headless` computes pictures without a
//! window; otherwise (feature `gui`) the demo window opens.

use clap::Parser;
use pool_user_gui::headless::{self, HeadlessArgs};

/// Fractal Generator pool user (RSerPool): splits pictures into tiles, computes them on the
/// pool's elements and fails over when one dies.
#[derive(Parser, Debug)]
#[command(name = "pool-user", version)]
struct Cli {
    /// Compute pictures without a window (see the options below), then exit.
    #[arg(long)]
    headless: bool,
    #[command(flatten)]
    options: HeadlessArgs,
    // LEAD: the hidden `registrar` / `pool-element` subcommands of the bundle
    // (`registrar::Cli`, `pool_element::Cli`) go here once those crates export them.
}

fn main() -> anyhow::Result<()> {
    rserpool::logging::init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if cli.headless {
        return runtime.block_on(headless::run(cli.options));
    }
    #[cfg(feature = "gui")]
    {
        // LEAD: call `pool_user_gui::gui::run(...)` here (written by the GUI helper).
        drop(runtime);
        anyhow::bail!("the GUI is not wired up yet; use --headless");
    }
    #[cfg(not(feature = "gui"))]
    {
        drop(runtime);
        anyhow::bail!("GUI not built in (built without the `gui` feature); use --headless")
    }
}
