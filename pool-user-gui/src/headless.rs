//! `pool-user --headless`: computes pictures through the pool without a window, for scripts,
//! tests and benchmarks.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fractal_protocol::palette::{Marks, Palette};
use fractal_protocol::preset::Preset;
use indicatif::{ProgressBar, ProgressStyle};
use rserpool::pu::PoolUserConfig;

use crate::client::assembly::ImageAssembly;
use crate::client::events::{ClientEvent, ImageStats};
use crate::client::{ClientConfig, DEFAULT_POOL, FractalClient, ImageRequest, ImageResult};

/// Options of `pool-user --headless`.
#[derive(clap::Args, Clone, Debug)]
pub struct HeadlessArgs {
    /// Registrar ASAP address IP:PORT (repeatable); without any, registrars are learnt from
    /// announces on --announce-listen.
    #[arg(long = "registrar", value_name = "ADDR:PORT")]
    pub registrars: Vec<SocketAddr>,
    /// Where to listen for registrar announces when no --registrar is given.
    #[arg(long, value_name = "ADDR:PORT", default_value = "239.0.0.50:3863")]
    pub announce_listen: SocketAddr,
    /// Pool handle of the fractal pool elements.
    #[arg(long, default_value = DEFAULT_POOL)]
    pub pool: String,
    /// Picture width in pixels.
    #[arg(long, default_value_t = 400)]
    pub width: u32,
    /// Picture height in pixels.
    #[arg(long, default_value_t = 250)]
    pub height: u32,
    /// Sessions at once, each with its own pool element, 1 to 400 (default: 1 with
    /// --headless, 16 in the window).
    #[arg(long, default_value_t = 1, hide_default_value = true)]
    pub sessions: usize,
    /// Work units the picture is cut into; a session that finishes one takes the next
    /// (default: 4 per session, or 1 per session after a picture that took under 0.25 s; 1 for
    /// a single session).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub units: Option<u32>,
    /// Once no unit is left, free sessions do not take over the tails of slow tiles.
    #[arg(long)]
    pub no_tail_takeover: bool,
    /// rsplib's way: one unit per session and no tail takeovers (overrides --units).
    #[arg(long)]
    pub static_split: bool,
    /// Built-in preset name or an rsplib .fsf file (default: a random built-in preset per image).
    #[arg(long, value_name = "NAME|FILE.fsf")]
    pub preset: Option<String>,
    /// Override the preset's maximum iterations.
    #[arg(long, value_name = "N")]
    pub max_iterations: Option<u32>,
    /// Number of pictures to compute, one after the other.
    #[arg(long, default_value_t = 1)]
    pub images: u64,
    /// Write the (last) picture as a coloured PNG here.
    #[arg(long, value_name = "FILE.png")]
    pub out: Option<PathBuf>,
    /// Write the (last) picture's raw iteration counts here: little-endian u32, row-major,
    /// width x height values, nothing else.
    #[arg(long, value_name = "FILE")]
    pub iterations_out: Option<PathBuf>,
    /// Write the statistics of every picture here as a JSON array of objects.
    #[arg(long, value_name = "FILE")]
    pub stats_json: Option<PathBuf>,
    /// A pool element silent for this long (milliseconds) is failed over.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    pub session_timeout: u64,
    /// A handle-resolution answer is reused for this long (milliseconds; 0 = always ask).
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub stale_cache: u64,
    /// Colours of --out: "rsplib HSV" (with rsplib's colour marks), "Smooth gradient",
    /// "Greyscale".
    #[arg(long, default_value = "rsplib HSV")]
    pub palette: String,
    /// No progress bar even on a terminal.
    #[arg(long)]
    pub no_progress: bool,
    /// TLS with the registrars (RFC 5355); sessions with pool elements stay plain.
    #[command(flatten)]
    pub tls: program_setup::tls::TlsClientArgs,
}

impl HeadlessArgs {
    /// The client configuration these options describe.
    pub fn client_config(&self) -> anyhow::Result<ClientConfig> {
        let mut pool_user = PoolUserConfig {
            registrars: self.registrars.clone(),
            announce: Some(self.announce_listen),
            stale_cache: Duration::from_millis(self.stale_cache),
            ..PoolUserConfig::default()
        }
        .with_session_timeout(Duration::from_millis(self.session_timeout));
        pool_user.registrar_association.tls = self.tls.client()?;
        Ok(ClientConfig {
            pool: self.pool.clone(),
            pool_user,
            // Pixels are written only once the picture is complete.
            pixel_events: false,
        })
    }
}

impl HeadlessArgs {
    /// The request for one picture of `view` these options describe.
    pub fn image_request(
        &self,
        view: fractal_protocol::message::Parameter,
        preset: &str,
    ) -> ImageRequest {
        let mut request = ImageRequest::new(view, self.sessions, preset);
        if let Some(units) = self.units {
            request.units = Some(units as usize);
        }
        request.tail_takeover = !self.no_tail_takeover;
        if self.static_split {
            request = request.static_split();
        }
        request
    }
}

/// Finds a preset: an existing file (or a name ending in `.fsf`) is read as rsplib's format,
/// anything else is a built-in preset's name.
pub fn load_preset(spec: &str) -> anyhow::Result<Preset> {
    if spec.ends_with(".fsf") || Path::new(spec).is_file() {
        return Preset::from_fsf_file(spec).with_context(|| format!("reading preset {spec}"));
    }
    Preset::by_name(spec).with_context(|| {
        let names: Vec<String> = Preset::builtin().into_iter().map(|p| p.name).collect();
        format!(
            "no built-in preset {spec:?}; built-in: {}",
            names.join(", ")
        )
    })
}

/// Runs `pool-user --headless`; returns after the last picture, or early on SIGINT/SIGTERM.
pub async fn run(args: HeadlessArgs) -> anyhow::Result<()> {
    if args.width == 0 || args.height == 0 {
        bail!("--width and --height must be at least 1");
    }
    let palette = Palette::from_name(&args.palette).with_context(|| {
        format!(
            "unknown palette {:?}; one of: {}",
            args.palette,
            Palette::ALL.map(Palette::name).join(", ")
        )
    })?;
    let fixed_preset = args.preset.as_deref().map(load_preset).transpose()?;
    let (client, mut events) = FractalClient::start(args.client_config()?)?;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let show_progress = !args.no_progress && std::io::stderr().is_terminal();

    let mut all_stats = Vec::new();
    let started = Instant::now();
    for run in 1..=args.images {
        let preset = match &fixed_preset {
            Some(preset) => preset.clone(),
            None => Preset::random(&mut rand::rng()),
        };
        let mut view = preset.parameter(args.width, args.height);
        if let Some(max_iterations) = args.max_iterations {
            view.max_iterations = max_iterations;
        }
        let request = args.image_request(view, &preset.name);
        let progress = progress_bar(
            show_progress,
            u64::from(args.width) * u64::from(args.height),
        );
        progress.set_message(format!("image {run}/{} {}", args.images, preset.name));
        let image = client.compute_image(request);
        tokio::pin!(image);
        let result = loop {
            tokio::select! {
                result = &mut image => break result?,
                Some(event) = events.recv() => track(&progress, &event),
                _ = interrupt.recv() => return stopped(&progress, "SIGINT"),
                _ = terminate.recv() => return stopped(&progress, "SIGTERM"),
            }
        };
        while let Ok(event) = events.try_recv() {
            track(&progress, &event);
        }
        progress.finish_and_clear();
        print_summary(run, &preset.name, &result.stats);
        if run == args.images {
            write_outputs(&args, &result, palette, run)?;
        }
        all_stats.push(result.stats);
        client.recycle(result.assembly);
    }
    if let Some(path) = &args.stats_json {
        let json = serde_json::to_string_pretty(&all_stats)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    if args.images > 1 {
        print_total(&all_stats, started.elapsed());
    }
    Ok(())
}

fn stopped(progress: &ProgressBar, signal: &str) -> anyhow::Result<()> {
    progress.abandon();
    tracing::info!(signal, "stopped");
    Ok(())
}

fn progress_bar(show: bool, pixels: u64) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(pixels);
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {percent:>3}% {msg}")
    {
        bar.set_style(style);
    }
    bar
}

/// Advances the progress bar (pixels received, recomputed ones included) and notes failovers.
fn track(progress: &ProgressBar, event: &ClientEvent) {
    match event {
        ClientEvent::TileData { iterations, .. } => progress.inc(iterations.len() as u64),
        ClientEvent::TileProgress { count, .. } => progress.inc(*count),
        ClientEvent::FailoverCompleted(failover) => progress.set_position(
            progress
                .position()
                .saturating_sub(failover.recomputed_pixels),
        ),
        ClientEvent::PoolEmpty { .. } => progress.set_message("pool empty, waiting"),
        _ => {}
    }
}

fn print_summary(run: u64, preset: &str, stats: &ImageStats) {
    println!(
        "image {run} ({preset}, {}x{}, {} sessions, {} units, {} tails taken over): {:.3} s, \
         {:.0} pixels/s, {:.0} iterations/s, {} PEs used, {} failovers, {} recomputed \
         iterations ({} pixels), {} restarts from scratch",
        stats.width,
        stats.height,
        stats.sessions,
        stats.units,
        stats.tail_takeovers,
        stats.wall_time_s,
        stats.pixels_per_s,
        stats.iterations_per_s,
        stats.pes_used,
        stats.failovers,
        stats.recomputed_iterations,
        stats.recomputed_pixels,
        stats.restarts_from_scratch,
    );
    let total: u64 = stats.pes.iter().map(|pe| pe.iterations).sum();
    for pe in &stats.pes {
        println!(
            "  PE {}: {:5.1} % of the iterations, {} tiles, {} pixels, busy {:.3} s",
            rserpool::wire::PeId(pe.pe_id),
            100.0 * pe.iterations as f64 / total.max(1) as f64,
            pe.units,
            pe.pixels,
            pe.busy_s,
        );
    }
}

fn print_total(all: &[ImageStats], wall: Duration) {
    let pixels: u64 = all.iter().map(|s| s.pixels).sum();
    let iterations: u64 = all.iter().map(|s| s.iterations).sum();
    let failovers: u64 = all.iter().map(|s| s.failovers).sum();
    let recomputed: u64 = all.iter().map(|s| s.recomputed_iterations).sum();
    let seconds = wall.as_secs_f64().max(f64::MIN_POSITIVE);
    println!(
        "total: {} images in {:.3} s, {:.0} pixels/s, {:.0} iterations/s, {failovers} failovers, \
         {recomputed} recomputed iterations",
        all.len(),
        seconds,
        pixels as f64 / seconds,
        iterations as f64 / seconds,
    );
}

/// Writes --out, --iterations-out.
fn write_outputs(
    args: &HeadlessArgs,
    result: &ImageResult,
    palette: Palette,
    run: u64,
) -> anyhow::Result<()> {
    if let Some(path) = &args.iterations_out {
        let bytes: Vec<u8> = result
            .assembly
            .iterations
            .iter()
            .flat_map(|value| value.to_le_bytes())
            .collect();
        std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.out {
        let rgb = colour(&result.assembly, palette, run);
        let picture = image::RgbImage::from_raw(result.assembly.width, result.assembly.height, rgb)
            .context("picture buffer has the picture's size")?;
        picture
            .save(path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Colours the picture; rsplib's marks (picture number, failovers of the pixel's tile when it
/// arrived, tile index when there are several) show who computed what.
pub fn colour(assembly: &ImageAssembly, palette: Palette, run: u64) -> Vec<u8> {
    let mut session_of = vec![0u32; assembly.iterations.len()];
    if assembly.tiles.len() > 1 {
        for tile in &assembly.tiles {
            for index in 0..u64::from(tile.width) * u64::from(tile.height) {
                if let Some(i) = assembly.pixel_index(tile.index, index)
                    && let Some(slot) = session_of.get_mut(i)
                {
                    *slot = tile.index as u32;
                }
            }
        }
    }
    let image_run = u32::try_from(run).unwrap_or(u32::MAX);
    assembly
        .iterations
        .iter()
        .enumerate()
        .zip(&session_of)
        .flat_map(|((i, &value), &session)| {
            let marks = Marks::new(image_run, assembly.generation(i), session);
            palette.colour(value, assembly.max_iterations, marks)
        })
        .collect()
}
