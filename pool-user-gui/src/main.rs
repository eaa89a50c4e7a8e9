//! `pool-user`: the Fractal Generator pool user. `--headless` computes pictures without a
//! window; otherwise (feature `gui`) the demo window opens. The hidden subcommands `registrar`
//! and `pool-element` run those programs from this binary (the GUI's bundled demo starts them
//! as child processes so that they can really be killed).

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use pool_user_gui::headless::{self, HeadlessArgs};

/// Fractal Generator pool user (RSerPool): splits pictures into tiles, computes them on the
/// pool's elements and fails over when one dies.
#[derive(Parser, Debug)]
#[command(name = "pool-user", version, args_conflicts_with_subcommands = true)]
struct Cli {
    /// Compute pictures without a window (see the options below), then exit.
    #[arg(long)]
    headless: bool,
    #[command(flatten)]
    options: HeadlessArgs,
    #[cfg(feature = "gui")]
    #[command(flatten)]
    window: pool_user_gui::gui::WindowOptions,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a registrar (as the `registrar` program).
    #[command(hide = true)]
    Registrar(registrar::Cli),
    /// Run a pool element (as the `pool-element` program).
    #[command(hide = true)]
    PoolElement(pool_element::Cli),
}

fn main() -> anyhow::Result<()> {
    program_setup::init();
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    let sessions_given = matches.value_source("sessions") == Some(ValueSource::CommandLine);
    match cli.command {
        Some(Command::Registrar(args)) => {
            // The registrar program runs single-threaded as well.
            return tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(registrar::run(args));
        }
        Some(Command::PoolElement(args)) => {
            // As the pool-element program: computation runs on its own threads.
            return tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(pool_element::run(args));
        }
        None => {}
    }
    if cli.headless {
        // The PEs compute; the pool user only moves and assembles data, which one thread does
        // without cross-thread wake-ups.
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(headless::run(cli.options));
    }
    run_gui(cli, sessions_given)
}

#[cfg(feature = "gui")]
fn run_gui(cli: Cli, sessions_given: bool) -> anyhow::Result<()> {
    /// The window's default: enough tiles to watch failovers.
    const GUI_DEFAULT_SESSIONS: usize = 16;
    let options = cli.options;
    let sessions = if sessions_given {
        options.sessions
    } else {
        GUI_DEFAULT_SESSIONS
    };
    anyhow::ensure!(
        (1..=400).contains(&sessions),
        "--sessions must be between 1 and 400"
    );
    pool_user_gui::gui::run(pool_user_gui::gui::GuiOptions {
        registrars: options.registrars,
        pool: options.pool,
        sessions,
        preset: options.preset.unwrap_or_else(|| "random".to_owned()),
        palette: options.palette,
        window: cli.window,
    })
}

#[cfg(not(feature = "gui"))]
fn run_gui(_cli: Cli, _sessions_given: bool) -> anyhow::Result<()> {
    anyhow::bail!("GUI not built in (built without the `gui` feature); use --headless")
}
