//! The eframe window of the pool user (feature `gui`).
//!
//! * [`model`]: what is shown, as data; [`model::GuiState::apply`] folds client events in.
//! * [`app`]: the window's state, frame loop and wiring ([`app::PoolUserApp`]).
//! * `panels`: drawing, one file per panel (controls, picture, pool, story, plots, status).
//! * [`control`]: the interfaces to the client ([`control::ClientControl`]) and to the bundled
//!   processes ([`control::PoolControl`]).
//! * [`synthetic`]: a stand-in client for `--demo-synthetic`.
//! * [`link`]: connects the window to the real fractal client.
//! * [`test_hooks`]: what only automated tests of the window use (hidden options).

pub mod app;
pub mod control;
pub mod link;
pub mod model;
mod panels;
pub mod synthetic;
pub mod test_hooks;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use fractal_protocol::palette::Palette;
use fractal_protocol::preset::Preset;

use crate::bundle::{Bundle, BundleConfig};
use app::{PoolUserApp, PresetChoice, Settings};
use control::{ClientConfig, ClientControl, ClientFactory, EventSink, PoolControl};
use test_hooks::{TestHookOptions, TestHooks};

/// Options of the window (`pool-user` without `--headless`).
#[derive(clap::Args, Clone, Debug)]
pub struct GuiOptions {
    /// Registrar to use, ADDR:PORT (repeatable). Without any, a bundled registrar and pool
    /// elements are started on loopback (the one-command demo).
    #[arg(long = "registrar", value_name = "ADDR:PORT")]
    pub registrars: Vec<SocketAddr>,
    /// Pool handle of the fractal generator pool.
    #[arg(long, default_value = "FractalGeneratorPool")]
    pub pool: String,
    /// Sessions at once, 1 to 400 (default 16); the picture is cut into 4 work units per
    /// session.
    #[arg(long, default_value_t = 16, value_parser = parse_sessions)]
    pub sessions: usize,
    /// View: a built-in preset name, a path to an `.fsf` file, or `random` (default: random).
    #[arg(long, default_value = "random")]
    pub preset: String,
    /// Palette: `rsplib HSV`, `Smooth gradient` or `Greyscale` (default: rsplib HSV).
    #[arg(long, default_value = "rsplib HSV")]
    pub palette: String,
    /// The window's own options (no name shared with `--headless`).
    #[command(flatten)]
    pub window: WindowOptions,
    /// TLS with the registrars given (`main.rs` builds it from the shared `--tls-*` options).
    #[arg(skip)]
    pub registrar_tls: Option<rserpool::transport::TlsConfig>,
}

/// Options only the window has; `main.rs` may flatten these next to the headless options and
/// build [`GuiOptions`] from the shared ones (`--registrar`, `--pool`, `--sessions`, `--preset`,
/// `--palette`).
#[derive(clap::Args, Clone, Debug)]
pub struct WindowOptions {
    /// Pause between images with auto-continue, in milliseconds (default 5000).
    #[arg(long, default_value_t = 5000)]
    pub pause: u64,
    /// Do not start the next image by itself.
    #[arg(long)]
    pub no_auto_continue: bool,
    /// Bundled pool elements to start (default 4), when no --registrar is given.
    #[arg(long, default_value_t = 4)]
    pub bundled_pes: usize,
    /// Bundled registrars (default 2, keeping one handlespace with ENRP), when no --registrar
    /// is given.
    #[arg(long, default_value_t = 2, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=8))]
    pub bundled_registrars: usize,
    /// Capacities of the bundled pool elements in iterations per second, comma-separated,
    /// `unlimited` allowed (replaces --bundled-pes; default: 6e7,3e7,1.5e7,8e6 repeating).
    #[arg(long, value_delimiter = ',', value_parser = parse_capacity)]
    pub bundled_capacities: Option<Vec<Capacity>>,
    /// Policy of the bundled pool elements (rsplib text form, default LeastUsed).
    #[arg(long, default_value = "LeastUsed")]
    pub bundled_policy: String,
    /// Directory Save PNG writes to (default: current directory).
    #[arg(long, default_value = ".")]
    pub save_dir: PathBuf,
    /// Initial window size in points, WIDTHxHEIGHT (default 1400x860).
    #[arg(long, default_value = "1400x860", value_parser = parse_size)]
    pub window_size: (u32, u32),
    /// Test/demo: compute the picture in-process with a scripted failover instead of a pool.
    #[arg(long, hide = true)]
    pub demo_synthetic: bool,
    /// Hooks for automated tests (hidden).
    #[command(flatten)]
    pub test_hooks: TestHookOptions,
}

/// A bundled PE's capacity on the command line (iterations per second; None = unlimited).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity(pub Option<u64>);

fn parse_capacity(text: &str) -> Result<Capacity, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("unlimited") {
        return Ok(Capacity(None));
    }
    let value: f64 = text
        .parse()
        .map_err(|_| format!("{text:?}: expected iterations per second or `unlimited`"))?;
    if !(1.0..=1e15).contains(&value) {
        return Err(format!("{text:?}: expected 1 to 1e15"));
    }
    Ok(Capacity(Some(value as u64)))
}

fn parse_sessions(text: &str) -> Result<usize, String> {
    text.trim()
        .parse::<usize>()
        .ok()
        .filter(|sessions| (1..=400).contains(sessions))
        .ok_or_else(|| format!("{text:?}: expected 1 to 400 sessions"))
}

fn parse_size(text: &str) -> Result<(u32, u32), String> {
    let (width, height) = text
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("{text:?}: expected WIDTHxHEIGHT"))?;
    let parse = |part: &str| {
        part.trim()
            .parse::<u32>()
            .ok()
            .filter(|&value| (16..=8192).contains(&value))
            .ok_or_else(|| format!("{part:?}: expected 16 to 8192"))
    };
    Ok((parse(width)?, parse(height)?))
}

impl GuiOptions {
    fn settings(&self) -> anyhow::Result<Settings> {
        let preset = match self.preset.as_str() {
            "random" => PresetChoice::Random,
            name => match Preset::by_name(name) {
                Some(preset) => PresetChoice::Fixed(preset),
                None => PresetChoice::Fixed(
                    Preset::from_fsf_file(name)
                        .with_context(|| format!("--preset {name}: not a built-in preset"))?,
                ),
            },
        };
        let palette = Palette::from_name(&self.palette)
            .with_context(|| format!("--palette {}: unknown palette", self.palette))?;
        let mut settings = Settings {
            sessions: self.sessions,
            preset,
            auto_continue: !self.window.no_auto_continue,
            pause_s: self.window.pause as f32 / 1000.0,
            save_dir: self.window.save_dir.clone(),
            ..Settings::default()
        };
        settings.colours.palette = palette;
        Ok(settings)
    }
}

/// Opens the window with the real fractal client; returns when the window is closed.
pub fn run(options: GuiOptions) -> anyhow::Result<()> {
    let factory: ClientFactory = if options.window.demo_synthetic {
        Box::new(|_config, sink| {
            Ok(Box::new(synthetic::SyntheticClient::new(sink)) as Box<dyn ClientControl>)
        })
    } else {
        link::client_factory()
    };
    run_with(options, factory)
}

/// Opens the window with the client `factory` builds.
pub fn run_with(options: GuiOptions, factory: ClientFactory) -> anyhow::Result<()> {
    let settings = options.settings()?;
    let hooks = TestHooks::from(&options.window.test_hooks);
    let bundle = if options.registrars.is_empty() && !options.window.demo_synthetic {
        let config = BundleConfig {
            pool: options.pool.clone(),
            policy: options.window.bundled_policy.clone(),
            capacities: match &options.window.bundled_capacities {
                Some(list) => list.iter().map(|capacity| capacity.0).collect(),
                None => BundleConfig::demo_capacities(options.window.bundled_pes),
            },
            registrars: options.window.bundled_registrars,
            ..BundleConfig::default()
        };
        Some(Bundle::start(config).context("starting the bundled demo pool")?)
    } else {
        None
    };
    let registrars = match &bundle {
        Some(bundle) => bundle.registrar_addresses(),
        None => options.registrars.clone(),
    };
    let kill_switch = bundle.as_ref().map(Bundle::kill_switch);
    if let Some(switch) = kill_switch.clone() {
        crate::bundle::kill_on_signals(switch);
    }
    anyhow::ensure!(
        bundle.is_none() || options.registrar_tls.is_none(),
        "--tls-cert needs --registrar: the bundled demo pool runs without TLS"
    );
    let client_config = ClientConfig {
        registrars,
        pool: options.pool.clone(),
        registrar_tls: options.registrar_tls.clone(),
    };
    let pool_name = options.pool.clone();
    let (width, height) = options.window.window_size;
    let native = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title(format!("Fractal Generator - pool {pool_name}"))
            .with_app_id("rserpool-fractal-generator")
            .with_inner_size([width as f32, height as f32])
            .with_icon(icon()),
        renderer: eframe::Renderer::Glow,
        ..eframe::NativeOptions::default()
    };
    let result = eframe::run_native(
        "Fractal Generator",
        native,
        Box::new(move |creation| {
            let (sink, events) = EventSink::new(Some(creation.egui_ctx.clone()));
            let client = factory(client_config, sink).map_err(|error| format!("{error:#}"));
            let pool = bundle.map(|bundle| Box::new(bundle) as Box<dyn PoolControl>);
            Ok(Box::new(PoolUserApp::new(
                events, client, pool, pool_name, settings, hooks,
            )))
        }),
    );
    // The app (and the bundle in it) is dropped by now; make sure anyway.
    if let Some(switch) = kill_switch {
        switch.kill_all();
    }
    result.map_err(|error| anyhow::anyhow!("window: {error}"))
}

/// The window icon (assets/icon.png).
fn icon() -> egui::IconData {
    let bytes = include_bytes!("../../../assets/icon.png");
    match image::load_from_memory(bytes) {
        Ok(image) => {
            let rgba = image.into_rgba8();
            let (width, height) = rgba.dimensions();
            egui::IconData {
                rgba: rgba.into_raw(),
                width,
                height,
            }
        }
        Err(_) => egui::IconData::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        gui: GuiOptions,
    }

    fn parse(args: &[&str]) -> Result<GuiOptions, clap::Error> {
        Cli::try_parse_from(std::iter::once("pool-user").chain(args.iter().copied()))
            .map(|cli| cli.gui)
    }

    #[test]
    fn options_parse() {
        let options = parse(&[
            "--registrar",
            "127.0.0.1:3863",
            "--registrar",
            "127.0.0.2:3863",
            "--sessions",
            "400",
            "--bundled-capacities",
            "unlimited,2e8",
            "--picture-size",
            "300x200",
            "--preset",
            "deep-minibrot",
        ])
        .expect("valid options");
        assert_eq!(options.registrars.len(), 2);
        assert_eq!(options.sessions, 400);
        assert_eq!(
            options.window.bundled_capacities,
            Some(vec![Capacity(None), Capacity(Some(200_000_000))])
        );
        assert_eq!(options.window.test_hooks.picture_size, Some((300, 200)));
        let settings = options.settings().expect("settings");
        assert!(
            matches!(settings.preset, PresetChoice::Fixed(ref preset) if preset.name == "deep-minibrot")
        );
        let defaults = parse(&[]).expect("defaults");
        assert!(defaults.registrars.is_empty());
        assert_eq!(defaults.sessions, 16);
        assert_eq!(defaults.window.bundled_pes, 4);
        assert_eq!(defaults.window.bundled_registrars, 2);
        assert_eq!(defaults.window.window_size, (1400, 860));
    }

    #[test]
    fn bad_options_are_refused() {
        assert!(parse(&["--sessions", "0"]).is_err());
        assert!(parse(&["--sessions", "401"]).is_err());
        assert!(parse(&["--bundled-capacities", "fast"]).is_err());
        assert!(parse(&["--picture-size", "300"]).is_err());
        let unknown_preset = parse(&["--preset", "/nonexistent.fsf"]).expect("parses");
        assert!(unknown_preset.settings().is_err());
        let unknown_palette = parse(&["--palette", "plaid"]).expect("parses");
        assert!(unknown_palette.settings().is_err());
    }
}
