//! The fractal client: work units computed by concurrent RSerPool sessions, tail takeovers,
//! failover with cookies, image assembly.
//!
//! [`FractalClient`] is what a front end drives: [`FractalClient::start_image`] (or
//! [`FractalClient::compute_image`] to await the result), [`FractalClient::cancel`], and the
//! [`events::ClientEvent`]s arriving on the receiver returned by [`FractalClient::start`].
//! [`FractalClient::start_pool_monitor`] adds a `PoolSnapshot` about once a second.
//!
//! A picture is split into work units with [`fractal_protocol::tiling::split`]; `sessions` of
//! them are computed at once, each by its own session (see `rserpool::pu`), and a session that
//! finishes takes the next unit or the tail of a slow tile (see `schedule`). A session resumes
//! from the last `<FG-TD1>` cookie after a failover. Pixels that arrive twice (a PE resuming
//! from a cookie older than the data already received) are counted as recomputed work.

pub mod assembly;
mod coverage;
pub mod events;
mod schedule;
mod tile;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use fractal_protocol::message::{DataView, Parameter};
use fractal_protocol::tiling;
use rserpool::pu::{PoolUser, PoolUserConfig};
use rserpool::transport::Frame;
use rserpool::wire::policy::fraction_from_wire;
use rserpool::wire::{PeId, PoolHandle};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use assembly::{ImageAssembly, SpareBuffers};
use events::{
    ClientEvent, Failover, FailoverRecord, ImageStart, ImageStats, PeStats, PoolEntry, TileRect,
};
use schedule::{Assignment, Schedule, TileJob};
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

/// Work units per session by default (see [`default_units`]).
pub const UNITS_PER_SESSION: usize = 4;
/// A picture the pool computed faster than this is not worth more units than sessions: their
/// set-ups (a resolution, a connect and a close each) cost more than the balance gains.
pub const SHORT_PICTURE: Duration = Duration::from_millis(250);

/// The work units a picture is cut into for `sessions` sessions at once when not told, given
/// how long the client's previous picture took: [`UNITS_PER_SESSION`] per session, so that a
/// session that finishes early takes another unit (with a fresh choice of PE), unless the
/// previous picture was short ([`SHORT_PICTURE`]), then one per session (tail takeovers still
/// balance). One session computes the picture as one unit.
pub fn default_units(sessions: usize, previous: Option<Duration>) -> usize {
    match sessions.max(1) {
        1 => 1,
        sessions if previous.is_some_and(|took| took < SHORT_PICTURE) => sessions,
        sessions => sessions * UNITS_PER_SESSION,
    }
}

/// One picture to compute.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageRequest {
    /// The whole view (its width and height are the picture's).
    pub view: Parameter,
    /// Sessions at once (rsplib's meaning); at least 1.
    pub sessions: usize,
    /// Work units the picture is cut into, at least 1 (`None`: [`default_units`]).
    pub units: Option<usize>,
    /// Whether a free session takes over the tail of the tile expected to finish last once no
    /// unit is left (see `schedule`).
    pub tail_takeover: bool,
    /// Preset name, for the events.
    pub preset: String,
}

impl ImageRequest {
    /// `view` computed by `sessions` sessions at once, with the default units and tail
    /// takeovers.
    pub fn new(view: Parameter, sessions: usize, preset: impl Into<String>) -> ImageRequest {
        ImageRequest {
            view,
            sessions,
            units: None,
            tail_takeover: true,
            preset: preset.into(),
        }
    }

    /// rsplib's way: one unit per session, no tail takeovers.
    pub fn static_split(mut self) -> ImageRequest {
        self.units = Some(self.sessions.max(1));
        self.tail_takeover = false;
        self
    }
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
    /// The task asking every registrar for its view of the pool.
    views: Mutex<Option<JoinHandle<()>>>,
    /// Buffers of a finished picture for the next one (see [`FractalClient::recycle`]).
    spare: Arc<Mutex<SpareBuffers>>,
    /// How long the latest finished picture took (for [`default_units`]).
    last_wall: Arc<Mutex<Option<Duration>>>,
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
            views: Mutex::new(None),
            spare: Arc::default(),
            last_wall: Arc::default(),
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
            last_wall: self.last_wall.clone(),
        }
    }

    /// Gives a finished picture's buffers back for the next picture (a picture from
    /// [`FractalClient::compute_image`] that is no longer needed).
    pub fn recycle(&self, assembly: ImageAssembly) {
        keep_spare(&self.spare, assembly);
    }

    /// Stops the image started by [`FractalClient::start_image`], if any (its sessions close).
    pub fn cancel(&self) {
        abort_task(&self.current);
    }

    /// Sends a `RegistrarViews` event every `interval` until the client is dropped: what each
    /// of `registrars` lists of the pool (a Handle Resolution for all PEs, on a short
    /// association of its own with `association`'s settings).
    pub fn start_registrar_views(
        &self,
        registrars: Vec<std::net::SocketAddr>,
        association: rserpool::transport::AssociationConfig,
        interval: Duration,
    ) {
        let pool = self.pool.clone();
        let events = self.events.clone();
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let mut views = Vec::new();
                for &address in &registrars {
                    // The connect is bounded by the association's own timeout.
                    let listed: Option<Vec<PeId>> =
                        rserpool::pu::list_pool_at(address, &pool, association.clone(), interval)
                            .await
                            .ok()
                            .map(|resolution| resolution.elements.iter().map(|e| e.id).collect());
                    let mut checksum = rserpool::wire::HandlespaceChecksum::new();
                    for id in listed.iter().flatten() {
                        checksum.add(&pool, *id);
                    }
                    views.push(events::RegistrarView {
                        address,
                        pes: listed.as_ref().map(Vec::len),
                        checksum: checksum.value(),
                    });
                }
                if events.send(ClientEvent::RegistrarViews(views)).is_err() {
                    return;
                }
            }
        });
        replace_task(&self.views, task);
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
                                    capacity: pool_element::capacity::advertised_capacity(
                                        &pe.policy,
                                    ),
                                    home_registrar: element.home_registrar,
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
        replace_task(&self.monitor, task);
    }
}

impl Drop for FractalClient {
    fn drop(&mut self) {
        self.cancel();
        abort_task(&self.monitor);
        abort_task(&self.views);
    }
}

/// Puts `task` in `slot`, aborting the one it replaces.
fn replace_task(slot: &Mutex<Option<JoinHandle<()>>>, task: JoinHandle<()>) {
    if let Some(old) = slot.lock().unwrap_or_else(|e| e.into_inner()).replace(task) {
        old.abort();
    }
}

/// Aborts the task in `slot`, if any (a poisoned lock still holds the handle).
fn abort_task(slot: &Mutex<Option<JoinHandle<()>>>) {
    if let Some(task) = slot.lock().unwrap_or_else(|e| e.into_inner()).take() {
        task.abort();
    }
}

/// What a picture's computation needs from its client.
struct ImageContext {
    pool_user: PoolUser,
    pool: PoolHandle,
    pixel_events: bool,
    last_wall: Arc<Mutex<Option<Duration>>>,
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

/// What a pool element did for the image so far.
#[derive(Default)]
struct PeTally {
    units: u64,
    pixels: u64,
    iterations: u64,
    /// Sessions of this image on it now, and since when it had any.
    sessions: u32,
    busy_since: Option<Instant>,
    busy: Duration,
}

/// Per-image bookkeeping for the statistics.
#[derive(Default)]
struct Tally {
    pes: BTreeMap<PeId, PeTally>,
    /// The PE each tile's session is on.
    tile_pe: HashMap<usize, PeId>,
    /// The PE that delivered each tile's latest data (the one that completes it).
    last_delivery: HashMap<usize, PeId>,
    failovers: u64,
    recomputed_pixels: u64,
    recomputed_iterations: u64,
    restarts_from_scratch: u64,
    /// Tiles a PE sent a cookie for.
    have_cookie: HashSet<usize>,
    /// Failovers in progress: tile -> (reason, detection time).
    failing: HashMap<usize, (String, Duration)>,
    failover_records: Vec<FailoverRecord>,
    tail_takeovers: u64,
}

impl Tally {
    /// Tile `tile`'s session is now on `pe` (`None`: on none).
    fn move_tile(&mut self, tile: usize, pe: Option<PeId>, now: Instant) {
        if let Some(old) = self.tile_pe.remove(&tile)
            && let Some(entry) = self.pes.get_mut(&old)
        {
            entry.sessions = entry.sessions.saturating_sub(1);
            if entry.sessions == 0
                && let Some(since) = entry.busy_since.take()
            {
                entry.busy += now.saturating_duration_since(since);
            }
        }
        if let Some(pe) = pe {
            self.tile_pe.insert(tile, pe);
            let entry = self.pes.entry(pe).or_default();
            entry.sessions += 1;
            entry.busy_since.get_or_insert(now);
        }
    }

    /// Per-PE figures at `now`, busy time so far included.
    fn pe_stats(&self, now: Instant) -> Vec<PeStats> {
        self.pes
            .iter()
            .filter(|(_, tally)| tally.pixels > 0)
            .map(|(&pe_id, tally)| PeStats {
                pe_id: pe_id.0,
                units: tally.units,
                pixels: tally.pixels,
                iterations: tally.iterations,
                busy_s: (tally.busy
                    + tally
                        .busy_since
                        .map_or(Duration::ZERO, |since| now.saturating_duration_since(since)))
                .as_secs_f64(),
            })
            .collect()
    }
}

/// How often a free session looks for a tail to take over while none is worth it yet.
const TAIL_RETRY: Duration = Duration::from_millis(20);

/// Starts a tile's session.
fn spawn_tile(
    sessions: &mut JoinSet<()>,
    context: &ImageContext,
    image: u64,
    job: TileJob,
    reports: &mpsc::UnboundedSender<TileReport>,
) {
    sessions.spawn(tile::run_tile(
        context.pool_user.clone(),
        context.pool.clone(),
        image,
        job,
        reports.clone(),
    ));
}

fn tile_rect(tile: &tiling::Tile) -> TileRect {
    TileRect {
        index: tile.session,
        x: tile.x,
        y: tile.y,
        width: tile.width,
        height: tile.height,
    }
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
    let sessions = request.sessions.max(1);
    let previous = *context.last_wall.lock().unwrap_or_else(|e| e.into_inner());
    let units = request
        .units
        .unwrap_or_else(|| default_units(sessions, previous));
    let units = tiling::split(&view, units.max(1));
    let pixels = u64::from(view.width) * u64::from(view.height);
    usize::try_from(pixels)
        .ok()
        .filter(|&p| p <= 1 << 28)
        .with_context(|| format!("{}x{} picture too large", view.width, view.height))?;
    let started = ClientEvent::ImageStarted(ImageStart {
        image,
        width: view.width,
        height: view.height,
        max_iterations: view.max_iterations,
        preset: request.preset.clone(),
        sessions,
        tiles: units.iter().map(tile_rect).collect(),
    });
    let unit_count = units.len();
    let mut schedule = Schedule::new(units, sessions, request.tail_takeover);
    let (reports, mut from_tiles) = mpsc::unbounded_channel();
    // Dropping the set (cancellation) aborts every tile's session.
    let mut running = JoinSet::new();
    let mut tally = Tally::default();
    // The first units' sessions resolve and connect while the picture's buffers are set up
    // (their events wait in the channel, and go out after `ImageStarted`).
    while let Some(job) = schedule.next_unit(started_at) {
        spawn_tile(&mut running, &context, image, job, &reports);
    }
    tokio::task::yield_now().await;
    let mut assembly = ImageAssembly::from_started_reusing(&started, spare)
        .context("ImageStarted makes an assembly")?;
    let _ = events.send(started);
    tracing::info!(
        image,
        width = view.width,
        height = view.height,
        sessions,
        units = unit_count,
        preset = %request.preset,
        "image started"
    );

    // When a free session last looked for a tail to take over.
    let mut tail_looked_at = started_at;
    while !assembly.is_complete() {
        // A free session looks for a tail again now and then: rates take a while to measure.
        // (`None`: the wait for a report ended first.)
        let report = if schedule.wants_tail() {
            tokio::time::timeout(TAIL_RETRY, from_tiles.recv())
                .await
                .ok()
        } else {
            Some(from_tiles.recv().await)
        };
        if matches!(report, Some(None)) {
            anyhow::bail!("sessions ended before the image was complete");
        }
        let now = Instant::now();
        let mut session_freed = false;
        let event = match report.flatten() {
            None => None,
            Some(TileReport::Event(event)) => {
                account(&event, &assembly, &mut tally, now);
                match &event {
                    ClientEvent::SessionConnected { tile, .. }
                    | ClientEvent::FailoverStarted { tile, .. }
                    | ClientEvent::SessionRefused { tile, .. } => {
                        schedule.measure_afresh(*tile, now)
                    }
                    ClientEvent::TileCompleted { tile, .. } => {
                        schedule.completed(*tile);
                        session_freed = true;
                    }
                    _ => {}
                }
                assembly.apply(&event);
                Some(event)
            }
            Some(TileReport::Data {
                tile,
                pe_id,
                first,
                count,
                frames,
            }) => {
                let stored = store_frames(&mut assembly, tile, first, count, &frames);
                schedule.received(tile, stored.pixels);
                let pe = tally.pes.entry(pe_id).or_default();
                pe.pixels += stored.pixels;
                pe.iterations += stored.iterations;
                tally.last_delivery.insert(tile, pe_id);
                Some(if context.pixel_events {
                    ClientEvent::TileData {
                        image,
                        tile,
                        pe_id,
                        first,
                        iterations: assembly.tile_values(tile, first..first + stored.pixels),
                    }
                } else {
                    ClientEvent::TileProgress {
                        image,
                        tile,
                        pe_id,
                        first,
                        count: stored.pixels,
                    }
                })
            }
        };
        if let Some(event) = event {
            let _ = events.send(event);
        }
        let look_for_tail =
            schedule.wants_tail() && now.saturating_duration_since(tail_looked_at) >= TAIL_RETRY;
        if session_freed || look_for_tail {
            tail_looked_at = now;
            while let Some(assignment) = schedule.next(now) {
                let job = match assignment {
                    Assignment::Unit(job) => job,
                    Assignment::Tail {
                        from,
                        kept_rows,
                        rect,
                        job,
                    } => {
                        tally.tail_takeovers += 1;
                        tracing::info!(
                            image,
                            tile = from,
                            kept_rows,
                            tail = rect.index,
                            rows = rect.height,
                            "tail taken over"
                        );
                        let split = ClientEvent::TileSplit {
                            image,
                            tile: from,
                            kept_rows,
                            tail: rect,
                        };
                        assembly.apply(&split);
                        let _ = events.send(split);
                        job
                    }
                };
                spawn_tile(&mut running, &context, image, job, &reports);
            }
        }
    }
    let finished_at = Instant::now();
    let wall = finished_at.duration_since(started_at);
    *context.last_wall.lock().unwrap_or_else(|e| e.into_inner()) = Some(wall);
    let wall_time_s = wall.as_secs_f64();
    let iterations = assembly.total_iterations();
    let per_second = |count: u64| {
        if wall_time_s > 0.0 {
            count as f64 / wall_time_s
        } else {
            0.0
        }
    };
    let pes = tally.pe_stats(finished_at);
    let stats = ImageStats {
        preset: request.preset.clone(),
        width: view.width,
        height: view.height,
        sessions,
        units: unit_count,
        tail_takeovers: tally.tail_takeovers,
        tail_overrun_pixels: schedule.overrun(),
        wall_time_s,
        pixels,
        iterations,
        pixels_per_s: per_second(pixels),
        iterations_per_s: per_second(iterations),
        pes_used: pes.len(),
        failovers: tally.failovers,
        recomputed_pixels: tally.recomputed_pixels,
        recomputed_iterations: tally.recomputed_iterations,
        restarts_from_scratch: tally.restarts_from_scratch,
        pes,
        failover_records: std::mem::take(&mut tally.failover_records),
    };
    tracing::info!(
        image,
        wall_ms = wall.as_millis() as u64,
        pixels,
        iterations,
        pes_used = stats.pes_used,
        tail_takeovers = stats.tail_takeovers,
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

/// Decodes the first `count` points of checked Data messages (see [`TileReport::Data`]) into
/// the picture.
fn store_frames(
    assembly: &mut ImageAssembly,
    tile: usize,
    first: u64,
    count: u64,
    frames: &[Frame],
) -> assembly::Stored {
    let mut stored = assembly::Stored::default();
    for frame in frames {
        let left = count - stored.pixels;
        if left == 0 {
            break;
        }
        // Checked by the tile's task: a frame that does not decode is skipped, not trusted.
        if let Ok(data) = DataView::decode(&frame.payload) {
            let take = (data.len() as u64).min(left) as usize;
            let part = assembly.store_data(tile, first + stored.pixels, &data, take);
            stored.pixels += part.pixels;
            stored.iterations += part.iterations;
            if part.pixels < take as u64 {
                break;
            }
        }
    }
    stored
}

/// Updates the statistics (and logs failovers) before `event` is applied to the picture.
fn account(event: &ClientEvent, assembly: &ImageAssembly, tally: &mut Tally, now: Instant) {
    match event {
        ClientEvent::CookieStored { tile, .. } => {
            tally.have_cookie.insert(*tile);
        }
        ClientEvent::TileCompleted { tile, .. } => {
            tracing::debug!(tile, "tile completed");
            if let Some(pe) = tally.last_delivery.get(tile).copied() {
                tally.pes.entry(pe).or_default().units += 1;
            }
            tally.move_tile(*tile, None, now);
        }
        ClientEvent::FailoverStarted {
            tile,
            pe,
            reason,
            silent_for,
            ..
        } => {
            tally.failovers += 1;
            tally.move_tile(*tile, None, now);
            tally
                .failing
                .entry(*tile)
                .or_insert_with(|| (format!("{reason:?}"), *silent_for));
            tracing::info!(
                tile,
                pe = %pe.id,
                reason = ?reason,
                silent_ms = silent_for.as_millis() as u64,
                "failover started"
            );
        }
        ClientEvent::FailoverCompleted(Failover {
            tile,
            old_pe,
            new_pe,
            resumed_at,
            recomputed_pixels,
            took,
            ..
        }) => {
            let from_scratch = !tally.have_cookie.contains(tile);
            if from_scratch {
                tally.restarts_from_scratch += 1;
            }
            let recomputed_iterations =
                assembly.iterations_in(*tile, *resumed_at, *recomputed_pixels);
            tally.recomputed_pixels += recomputed_pixels;
            tally.recomputed_iterations += recomputed_iterations;
            let (reason, detection) = tally.failing.remove(tile).unwrap_or_default();
            tally.failover_records.push(FailoverRecord {
                tile: *tile,
                old_pe: old_pe.0,
                new_pe: new_pe.id.0,
                reason,
                detection_s: detection.as_secs_f64(),
                failover_s: took.as_secs_f64(),
                resumed_at: *resumed_at,
                recomputed_pixels: *recomputed_pixels,
                recomputed_iterations,
            });
            tracing::info!(
                tile,
                old_pe = %old_pe,
                pe = %new_pe.id,
                resumed_at,
                recomputed_pixels,
                recomputed_iterations,
                from_scratch,
                took_us = took.as_micros() as u64,
                "failover completed"
            );
        }
        ClientEvent::SessionConnected {
            tile,
            pe,
            resumed_at,
            ..
        } => {
            tally.move_tile(*tile, Some(pe.id), now);
            tracing::info!(
                tile,
                pe = %pe.id,
                address = %pe.address,
                resumed_at = resumed_at.unwrap_or(0),
                resumed = resumed_at.is_some(),
                "session connected"
            );
        }
        ClientEvent::SessionRefused { tile, .. } => {
            tally.move_tile(*tile, None, now);
        }
        ClientEvent::UnreachableReported { pe_id } => {
            tracing::info!(
                pe = %pe_id,
                "endpoint unreachable reported"
            );
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_follow_sessions_and_the_previous_picture() {
        assert_eq!(default_units(1, None), 1);
        assert_eq!(default_units(0, None), 1);
        assert_eq!(default_units(16, None), 16 * UNITS_PER_SESSION);
        assert_eq!(default_units(16, Some(Duration::from_secs(2))), 64);
        assert_eq!(default_units(16, Some(Duration::from_millis(60))), 16);
    }
}
