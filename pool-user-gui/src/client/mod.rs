//! The fractal client: one RSerPool session per tile, failover with cookies, image assembly.
//!
//! [`FractalClient`] is what a front end drives: [`FractalClient::start_image`] (or
//! [`FractalClient::compute_image`] to await the result), [`FractalClient::cancel`], and the
//! [`events::ClientEvent`]s arriving on the receiver returned by [`FractalClient::start`].
//! [`FractalClient::start_pool_monitor`] adds a `PoolSnapshot` about once a second.
//!
//! A picture is split with [`fractal_protocol::tiling::split`]; each tile is computed by its
//! own session (see `rserpool::pu`), which resumes from the last `<FG-TD1>` cookie after a
//! failover. Pixels that arrive twice (a PE resuming from a cookie older than the data already
//! received) are counted as recomputed work.

pub mod assembly;
mod coverage;
pub mod events;
mod tile;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use fractal_protocol::message::{DataView, Parameter};
use fractal_protocol::tiling;
use rserpool::pu::{PoolUser, PoolUserConfig};
use rserpool::transport::Frame;
use rserpool::wire::PoolHandle;
use rserpool::wire::policy::fraction_from_wire;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use assembly::{ImageAssembly, SpareBuffers};
use events::{ClientEvent, ImageStats, PoolEntry, TileRect};
use tile::TileReport;

/// The pool the Fractal Generator's PEs register in (rsplib's default).
pub const DEFAULT_POOL: &str = "FractalGeneratorPool";

/// Settings of a [`FractalClient`].
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Pool handle.
    pub pool: String,
    /// Registrars, timeouts, cache.
    pub pool_user: PoolUserConfig,
    /// Whether the front end gets the pixels as they arrive ([`ClientEvent::TileData`]), or
    /// only how many ([`ClientEvent::TileProgress`]): a front end that does not draw them is
    /// spared a copy of the picture.
    pub pixel_events: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            pool: DEFAULT_POOL.into(),
            pool_user: PoolUserConfig::default(),
            pixel_events: true,
        }
    }
}

/// One picture to compute.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageRequest {
    /// The whole view (its width and height are the picture's).
    pub view: Parameter,
    /// Sessions (tiles); at least 1.
    pub sessions: usize,
    /// Preset name, for the events.
    pub preset: String,
}

/// A finished picture.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageResult {
    /// The assembled picture (iterations, marks, which PE computed what).
    pub assembly: ImageAssembly,
    pub stats: ImageStats,
}

/// The fractal client (see the module docs). Must be created inside a tokio runtime.
pub struct FractalClient {
    pool_user: PoolUser,
    pool: PoolHandle,
    pixel_events: bool,
    events: mpsc::UnboundedSender<ClientEvent>,
    next_image: AtomicU64,
    current: Mutex<Option<JoinHandle<()>>>,
    monitor: Mutex<Option<JoinHandle<()>>>,
    /// Buffers of a finished picture for the next one (see [`FractalClient::recycle`]).
    spare: Arc<Mutex<SpareBuffers>>,
}

impl FractalClient {
    /// Starts the pool user; events of every image arrive on the returned receiver.
    pub fn start(
        config: ClientConfig,
    ) -> anyhow::Result<(FractalClient, mpsc::UnboundedReceiver<ClientEvent>)> {
        let pool = PoolHandle::new(config.pool.as_bytes().to_vec())
            .map_err(|error| anyhow!("pool handle {:?}: {error}", config.pool))?;
        let (events, receiver) = mpsc::unbounded_channel();
        let client = FractalClient {
            pool_user: PoolUser::start(config.pool_user),
            pool,
            pixel_events: config.pixel_events,
            events,
            next_image: AtomicU64::new(1),
            current: Mutex::new(None),
            monitor: Mutex::new(None),
            spare: Arc::default(),
        };
        Ok((client, receiver))
    }

    /// The pool user underneath (registrar access).
    pub fn pool_user(&self) -> &PoolUser {
        &self.pool_user
    }

    /// Starts computing `request` in the background, cancelling any image still running.
    /// Returns the image number its events carry.
    pub fn start_image(&self, request: ImageRequest) -> u64 {
        self.cancel();
        let image = self.next_image.fetch_add(1, Ordering::Relaxed);
        let task = tokio::spawn(run_image(
            self.image_context(),
            image,
            request,
            self.events.clone(),
            self.spare.clone(),
        ));
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        image
    }

    /// Computes `request` and returns the picture (events are sent as well). Cancelling the
    /// returned future cancels the image.
    pub async fn compute_image(&self, request: ImageRequest) -> anyhow::Result<ImageResult> {
        let image = self.next_image.fetch_add(1, Ordering::Relaxed);
        run_image_result(
            self.image_context(),
            image,
            request,
            self.events.clone(),
            take_spare(&self.spare),
        )
        .await
    }

    fn image_context(&self) -> ImageContext {
        ImageContext {
            pool_user: self.pool_user.clone(),
            pool: self.pool.clone(),
            pixel_events: self.pixel_events,
        }
    }

    /// Gives a finished picture's buffers back for the next picture (a picture from
    /// [`FractalClient::compute_image`] that is no longer needed).
    pub fn recycle(&self, assembly: ImageAssembly) {
        keep_spare(&self.spare, assembly);
    }

    /// Stops the image started by [`FractalClient::start_image`], if any (its sessions close).
    pub fn cancel(&self) {
        if let Some(task) = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            task.abort();
        }
    }

    /// Sends `PoolSnapshot` (or `RegistrarUnavailable`) events every `interval` until the
    /// client is dropped.
    pub fn start_pool_monitor(&self, interval: Duration) {
        let pool_user = self.pool_user.clone();
        let pool = self.pool.clone();
        let events = self.events.clone();
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let event = match pool_user.list_pool(&pool).await {
                    Ok(resolution) => ClientEvent::PoolSnapshot {
                        registrar: Some(resolution.registrar),
                        entries: resolution
                            .elements
                            .iter()
                            .filter_map(|element| {
                                let pe = rserpool::pu::PeCandidate::from_pool_element(element)?;
                                Some(PoolEntry {
                                    id: pe.id,
                                    address: pe.address,
                                    policy: pe.policy.to_string(),
                                    load: pe.policy.load().map(fraction_from_wire),
                                })
                            })
                            .collect(),
                    },
                    Err(error) => ClientEvent::RegistrarUnavailable {
                        detail: error.to_string(),
                    },
                };
                if events.send(event).is_err() {
                    return;
                }
            }
        });
        if let Some(old) = self
            .monitor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(task)
        {
            old.abort();
        }
    }
}

impl Drop for FractalClient {
    fn drop(&mut self) {
        self.cancel();
        if let Some(task) = self
            .monitor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

/// What a picture's computation needs from its client.
struct ImageContext {
    pool_user: PoolUser,
    pool: PoolHandle,
    pixel_events: bool,
}

async fn run_image(
    context: ImageContext,
    image: u64,
    request: ImageRequest,
    events: mpsc::UnboundedSender<ClientEvent>,
    spare: Arc<Mutex<SpareBuffers>>,
) {
    let buffers = take_spare(&spare);
    match run_image_result(context, image, request, events, buffers).await {
        Ok(result) => keep_spare(&spare, result.assembly),
        Err(error) => tracing::warn!(image, %error, "image failed"),
    }
}

fn take_spare(spare: &Mutex<SpareBuffers>) -> SpareBuffers {
    std::mem::take(&mut *spare.lock().unwrap_or_else(|e| e.into_inner()))
}

fn keep_spare(spare: &Mutex<SpareBuffers>, assembly: ImageAssembly) {
    *spare.lock().unwrap_or_else(|e| e.into_inner()) = assembly.into_spare();
}

/// Per-image bookkeeping for the statistics.
struct Tally {
    pes_used: HashSet<u32>,
    failovers: u64,
    recomputed_pixels: u64,
    recomputed_iterations: u64,
    restarts_from_scratch: u64,
    have_cookie: Vec<bool>,
}

async fn run_image_result(
    context: ImageContext,
    image: u64,
    request: ImageRequest,
    events: mpsc::UnboundedSender<ClientEvent>,
    spare: SpareBuffers,
) -> anyhow::Result<ImageResult> {
    let started_at = Instant::now();
    let view = request.view;
    let tiles = tiling::split(&view, request.sessions.max(1));
    let pixels = u64::from(view.width) * u64::from(view.height);
    usize::try_from(pixels)
        .ok()
        .filter(|&p| p <= 1 << 28)
        .with_context(|| format!("{}x{} picture too large", view.width, view.height))?;
    let started = ClientEvent::ImageStarted {
        image,
        width: view.width,
        height: view.height,
        max_iterations: view.max_iterations,
        preset: request.preset.clone(),
        tiles: tiles
            .iter()
            .map(|tile| TileRect {
                session: tile.session,
                x: tile.x,
                y: tile.y,
                width: tile.width,
                height: tile.height,
            })
            .collect(),
    };
    let (tile_events, mut from_tiles) = mpsc::unbounded_channel();
    // Dropping the set (cancellation) aborts every tile's session.
    let mut sessions = JoinSet::new();
    for tile in &tiles {
        sessions.spawn(tile::run_tile(
            context.pool_user.clone(),
            context.pool.clone(),
            image,
            *tile,
            tile_events.clone(),
        ));
    }
    drop(tile_events);
    // The sessions resolve and connect while the picture's buffers are set up (their events
    // wait in the channel, and go out after `ImageStarted`).
    tokio::task::yield_now().await;
    let mut assembly = ImageAssembly::from_started_reusing(&started, spare)
        .context("ImageStarted makes an assembly")?;
    let _ = events.send(started);
    tracing::info!(
        image,
        width = view.width,
        height = view.height,
        sessions = tiles.len(),
        preset = %request.preset,
        "image started"
    );

    let mut tally = Tally {
        pes_used: HashSet::new(),
        failovers: 0,
        recomputed_pixels: 0,
        recomputed_iterations: 0,
        restarts_from_scratch: 0,
        have_cookie: vec![false; tiles.len()],
    };
    while !assembly.is_complete() {
        let Some(report) = from_tiles.recv().await else {
            anyhow::bail!("sessions ended before the image was complete");
        };
        let event = match report {
            TileReport::Event(event) => {
                account(&event, &assembly, &mut tally);
                assembly.apply(&event);
                event
            }
            TileReport::Data {
                session,
                pe_id,
                first,
                count,
                frames,
            } => {
                tally.pes_used.insert(pe_id);
                store_frames(&mut assembly, session, first, &frames);
                if context.pixel_events {
                    ClientEvent::TileData {
                        image,
                        session,
                        pe_id,
                        first,
                        iterations: assembly.tile_values(session, first..first + count),
                    }
                } else {
                    ClientEvent::TileProgress {
                        image,
                        session,
                        pe_id,
                        first,
                        count,
                    }
                }
            }
        };
        let _ = events.send(event);
    }
    let wall = started_at.elapsed();
    let wall_time_s = wall.as_secs_f64();
    let iterations = assembly.total_iterations();
    let per_second = |count: u64| {
        if wall_time_s > 0.0 {
            count as f64 / wall_time_s
        } else {
            0.0
        }
    };
    let stats = ImageStats {
        width: view.width,
        height: view.height,
        sessions: tiles.len(),
        wall_time_s,
        pixels,
        iterations,
        pixels_per_s: per_second(pixels),
        iterations_per_s: per_second(iterations),
        pes_used: tally.pes_used.len(),
        failovers: tally.failovers,
        recomputed_pixels: tally.recomputed_pixels,
        recomputed_iterations: tally.recomputed_iterations,
        restarts_from_scratch: tally.restarts_from_scratch,
    };
    tracing::info!(
        image,
        wall_ms = wall.as_millis() as u64,
        pixels,
        iterations,
        pes_used = stats.pes_used,
        failovers = stats.failovers,
        recomputed_pixels = stats.recomputed_pixels,
        recomputed_iterations = stats.recomputed_iterations,
        restarts_from_scratch = stats.restarts_from_scratch,
        "image completed"
    );
    let _ = events.send(ClientEvent::ImageCompleted {
        image,
        stats: stats.clone(),
    });
    Ok(ImageResult { assembly, stats })
}

/// Decodes checked Data messages (see [`TileReport::Data`]) into the picture.
fn store_frames(assembly: &mut ImageAssembly, session: usize, first: u64, frames: &[Frame]) {
    let mut index = first;
    for frame in frames {
        // Checked by the tile's task: a frame that does not decode is skipped, not trusted.
        if let Ok(data) = DataView::decode(&frame.payload) {
            assembly.store_data(session, index, &data);
            index += data.len() as u64;
        }
    }
}

/// Updates the statistics (and logs failovers) before `event` is applied to the picture.
fn account(event: &ClientEvent, assembly: &ImageAssembly, tally: &mut Tally) {
    match event {
        ClientEvent::TileData { pe_id, .. } => {
            tally.pes_used.insert(*pe_id);
        }
        ClientEvent::CookieStored { session, .. } => {
            if let Some(flag) = tally.have_cookie.get_mut(*session) {
                *flag = true;
            }
        }
        ClientEvent::FailoverStarted {
            session,
            pe,
            reason,
            silent_for,
            ..
        } => {
            tally.failovers += 1;
            tracing::info!(
                session,
                pe = format_args!("{:#010x}", pe.id),
                reason = ?reason,
                silent_ms = silent_for.as_millis() as u64,
                "failover started"
            );
        }
        ClientEvent::FailoverCompleted {
            session,
            old_pe,
            new_pe,
            resumed_at,
            recomputed_pixels,
            took,
            ..
        } => {
            let from_scratch = !tally.have_cookie.get(*session).copied().unwrap_or(false);
            if from_scratch {
                tally.restarts_from_scratch += 1;
            }
            let recomputed_iterations =
                assembly.iterations_in(*session, *resumed_at, *recomputed_pixels);
            tally.recomputed_pixels += recomputed_pixels;
            tally.recomputed_iterations += recomputed_iterations;
            tracing::info!(
                session,
                old_pe = format_args!("{old_pe:#010x}"),
                pe = format_args!("{:#010x}", new_pe.id),
                resumed_at,
                recomputed_pixels,
                recomputed_iterations,
                from_scratch,
                took_us = took.as_micros() as u64,
                "failover completed"
            );
        }
        ClientEvent::SessionConnected {
            session,
            pe,
            resumed_at,
            ..
        } => {
            tracing::info!(
                session,
                pe = format_args!("{:#010x}", pe.id),
                address = %pe.address,
                resumed_at = resumed_at.unwrap_or(0),
                resumed = resumed_at.is_some(),
                "session connected"
            );
        }
        ClientEvent::UnreachableReported { pe_id } => {
            tracing::info!(
                pe = format_args!("{pe_id:#010x}"),
                "endpoint unreachable reported"
            );
        }
        _ => {}
    }
}
