//! `pool-user`: the Fractal Generator pool user. `--headless` computes pictures without a
//! window; otherwise (feature `gui`) the demo window opens. The hidden subcommands `registrar`
//! and `pool-element` run those programs from this binary (the GUI's bundled demo starts them
//! as child processes so that they can really be killed).

use anyhow::Context;
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use pool_user_gui::bundle::{Bundle, BundleConfig, kill_on_signals};
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
        return run_headless(cli.options);
    }
    if let Some(missing) = no_display() {
        // A window cannot open; rather than fail with a backend error, show the demo the only
        // way that works here.
        return run_without_window(cli.options, sessions_given, missing);
    }
    run_gui(cli, sessions_given)
}

/// Where the demo without a window writes its picture (unless `--out` says otherwise).
const DEMO_PICTURE: &str = "fractal-demo.png";
/// Sessions of the demo without a window (the window's default too).
const DEMO_SESSIONS: usize = 16;

fn run_headless(options: HeadlessArgs) -> anyhow::Result<()> {
    // The PEs compute; the pool user only moves and assembles data, which one thread does
    // without cross-thread wake-ups.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(headless::run(options))
}

/// Why no window can open, on a Unix desktop without X11 or Wayland (`None`: one may).
fn no_display() -> Option<&'static str> {
    if !cfg!(feature = "gui") || !cfg!(all(unix, not(target_os = "macos"))) {
        return None;
    }
    let set = |name| std::env::var_os(name).is_some_and(|value| !value.is_empty());
    (!set("DISPLAY") && !set("WAYLAND_DISPLAY")).then_some("DISPLAY and WAYLAND_DISPLAY are unset")
}

/// What the window would have shown, without it: one picture through the bundled demo pool (two
/// registrars, four PEs of different speeds) or the registrars given, with the progress bar and
/// the per-PE summary, written to [`DEMO_PICTURE`] unless `--out` says otherwise.
fn run_without_window(
    mut options: HeadlessArgs,
    sessions_given: bool,
    missing: &str,
) -> anyhow::Result<()> {
    if !sessions_given {
        options.sessions = DEMO_SESSIONS;
    }
    let picture = options
        .out
        .get_or_insert_with(|| std::path::PathBuf::from(DEMO_PICTURE))
        .display()
        .to_string();
    let pool = if options.registrars.is_empty() {
        "the bundled demo pool"
    } else {
        "the pool"
    };
    eprintln!(
        "No display ({missing}): computing a picture through {pool} without a window instead; \
         it is written to {picture}. For a window, run where a display is; for the headless \
         client's options: pool-user --headless --help"
    );
    if !options.registrars.is_empty() {
        return run_headless(options);
    }
    anyhow::ensure!(
        options.tls.files.tls_cert.is_none(),
        "--tls-cert needs --registrar: the bundled demo pool runs without TLS"
    );
    let bundle = Bundle::start(BundleConfig {
        pool: options.pool.clone(),
        // The children's logs would scroll the progress bar away.
        forward_logs: false,
        ..BundleConfig::default()
    })
    .context("starting the bundled demo pool")?;
    let switch = bundle.kill_switch();
    kill_on_signals(switch.clone());
    options.registrars = bundle.registrar_addresses();
    let result = run_headless(options);
    switch.kill_all();
    drop(bundle);
    result
}

#[cfg(feature = "gui")]
fn run_gui(cli: Cli, sessions_given: bool) -> anyhow::Result<()> {
    let options = cli.options;
    // The window's default: enough tiles to watch failovers.
    let sessions = if sessions_given {
        options.sessions
    } else {
        DEMO_SESSIONS
    };
    anyhow::ensure!(
        (1..=400).contains(&sessions),
        "--sessions must be between 1 and 400"
    );
    let registrar_tls = options.tls.client()?;
    pool_user_gui::gui::run(pool_user_gui::gui::GuiOptions {
        registrar_tls,
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
