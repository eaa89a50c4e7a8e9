//! Opens the window on its own (without `main.rs`'s subcommands), e.g. with the simulated pool:
//! `cargo run -p pool-user-gui --example gui_window -- --demo-synthetic`.

use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    gui: pool_user_gui::gui::GuiOptions,
}

fn main() -> anyhow::Result<()> {
    program_setup::logging::init();
    pool_user_gui::gui::run(Cli::parse().gui)
}
