//! `calcapp-user`: many CalcApp pool users in one process (see the library docs).

use clap::Parser;

fn main() -> anyhow::Result<()> {
    program_setup::init();
    let cli = calcapp_user::Cli::parse();
    // One thread: the pool users wait on timers and sockets, they compute nothing.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(calcapp_user::run(cli))
}
