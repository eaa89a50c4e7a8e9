//! One logging set-up for every program: `tracing` to stderr, filtered by `RUST_LOG` (default
//! `info`), without ANSI colours when stderr is not a terminal or `NO_COLOR` is set, so that
//! tests and log files read plain `message key=value` lines.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; later calls are ignored (tests may call it repeatedly).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .try_init();
}
