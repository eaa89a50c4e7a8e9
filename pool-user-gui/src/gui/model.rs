//! What the window shows, as plain data: the picture being computed, the pool, the failover
//! story and the figures over time. [`GuiState::apply`] folds [`ClientEvent`]s into it; drawing
//! (in `app`) only reads it, so tests feed synthetic events and inspect the result.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fractal_protocol::palette::{self, Marks, Palette};

use crate::client::events::{
    ClientEvent, Failover, FailureReason, ImageStart, ImageStats, PeInfo, PoolEntry, RegistrarView,
    TileRect,
};
use rserpool::wire::PeId;

/// Most entries kept in the failover story.
const TIMELINE_LIMIT: usize = 500;
/// Most samples kept per plotted series (one per second: 10 minutes).
const HISTORY_LIMIT: usize = 600;
/// Pixel value of a pixel no data arrived for yet.
const NOT_YET: u32 = u32::MAX;
/// `pixel_pe` of a pixel without data.
const NO_PE: u16 = 0;

/// How the picture is coloured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ColourOptions {
    pub palette: Palette,
    /// rsplib's colour marks: the palette shifts per image, session and failover.
    pub failover_marks: bool,
    /// Tint each pixel with the colour of the PE that computed it.
    pub pe_marks: bool,
}

impl Default for ColourOptions {
    fn default() -> Self {
        ColourOptions {
            palette: Palette::RsplibHsv,
            failover_marks: true,
            pe_marks: false,
        }
    }
}

/// Progress of one tile.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TileProgress {
    /// Pixels received (counting each pixel once).
    pub received: u64,
    pub completed: bool,
    /// The PE currently computing it.
    pub pe: Option<PeId>,
    /// Failovers of this tile's session so far.
    pub failovers: u32,
    /// A failover is in progress.
    pub failing_over: bool,
    /// Waiting for a PE (pool empty).
    pub waiting: bool,
    /// A session has taken the tile (else the unit waits for a free session).
    pub started: bool,
    /// The tile is the tail of this tile, taken over from its slow PE.
    pub tail_of: Option<usize>,
}

/// The picture of the current image: iteration counts plus who computed each pixel.
#[derive(Clone, Debug)]
pub struct Picture {
    pub image: u64,
    pub width: u32,
    pub height: u32,
    pub max_iterations: u32,
    pub preset: String,
    /// Sessions at once.
    pub sessions: usize,
    /// Work units the picture was cut into (the first tiles).
    pub units: usize,
    pub tiles: Vec<TileRect>,
    pub progress: Vec<TileProgress>,
    /// Per PE, iterations behind the pixels it delivered for this picture (recomputed ones
    /// included): its share of the work.
    pub pe_work: BTreeMap<PeId, u64>,
    /// Tails taken over so far.
    pub tail_takeovers: u32,
    values: Vec<u32>,
    /// Per pixel: index + 1 into `pe_order` of the PE that delivered it (0 = none yet).
    pixel_pe: Vec<u16>,
    /// Per pixel: failovers of its session when it arrived.
    pixel_generation: Vec<u8>,
    /// PE identifiers in order of first appearance (their mark colour index).
    pe_order: Vec<PeId>,
    received: u64,
    /// Rows changed since the texture was last updated (inclusive start, exclusive end).
    dirty_rows: Option<(u32, u32)>,
    pub started: Instant,
    pub completed_after: Option<Duration>,
}

impl Picture {
    /// The empty picture `start` announces, begun at `started`.
    fn new(start: ImageStart, started: Instant) -> Picture {
        let pixels = start.width as usize * start.height as usize;
        Picture {
            image: start.image,
            width: start.width,
            height: start.height,
            max_iterations: start.max_iterations,
            preset: start.preset,
            sessions: start.sessions,
            units: start.tiles.len(),
            progress: vec![TileProgress::default(); start.tiles.len()],
            tiles: start.tiles,
            pe_work: BTreeMap::new(),
            tail_takeovers: 0,
            values: vec![NOT_YET; pixels],
            pixel_pe: vec![NO_PE; pixels],
            pixel_generation: vec![0; pixels],
            pe_order: Vec::new(),
            received: 0,
            dirty_rows: Some((0, start.height)),
            started,
            completed_after: None,
        }
    }

    /// Total pixels of the picture.
    pub fn pixel_count(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }

    /// Pixels received so far (each once).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Work units no session has taken yet.
    pub fn units_waiting(&self) -> usize {
        self.progress
            .iter()
            .filter(|progress| !progress.started && !progress.completed)
            .count()
    }

    /// Tile `tile` keeps `kept_rows` rows; `tail` (the next tile) takes the rest.
    fn split(&mut self, tile: usize, kept_rows: u32, tail: TileRect) {
        let Some(rect) = self.tiles.get_mut(tile) else {
            return;
        };
        if tail.index != self.progress.len()
            || kept_rows >= rect.height
            || tail.width != rect.width
            || tail.x != rect.x
        {
            return;
        }
        rect.height = kept_rows;
        // Pixels already counted for the tile stay with it: they all lie above the cut.
        self.tiles.push(tail);
        self.progress.push(TileProgress {
            tail_of: Some(tile),
            ..TileProgress::default()
        });
        self.tail_takeovers += 1;
    }

    /// Fraction done, 0 to 1.
    pub fn fraction(&self) -> f64 {
        if self.pixel_count() == 0 {
            return 1.0;
        }
        self.received as f64 / self.pixel_count() as f64
    }

    /// Iteration count of pixel (x, y), if it has arrived.
    pub fn value(&self, x: u32, y: u32) -> Option<u32> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let value = *self.values.get(self.index(x, y))?;
        (value != NOT_YET).then_some(value)
    }

    /// The PE that delivered pixel (x, y).
    pub fn pixel_pe(&self, x: u32, y: u32) -> Option<PeId> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let slot = *self.pixel_pe.get(self.index(x, y))?;
        slot.checked_sub(1)
            .and_then(|index| self.pe_order.get(usize::from(index)).copied())
    }

    /// Number of the tile whose rectangle holds pixel (x, y).
    pub fn tile_at(&self, x: u32, y: u32) -> Option<usize> {
        self.tiles.iter().position(|tile| {
            x >= tile.x && y >= tile.y && x - tile.x < tile.width && y - tile.y < tile.height
        })
    }

    /// Colour index of a PE for the per-PE marks (stable within an image).
    pub fn pe_mark_index(&self, pe: PeId) -> Option<usize> {
        self.pe_order.iter().position(|&known| known == pe)
    }

    fn index(&self, x: u32, y: u32) -> usize {
        y as usize * self.width as usize + x as usize
    }

    /// Rows changed since the last call (and forgets them).
    pub fn take_dirty_rows(&mut self) -> Option<(u32, u32)> {
        self.dirty_rows.take()
    }

    /// Marks every row as changed (e.g. after a palette change).
    pub fn invalidate(&mut self) {
        self.dirty_rows = Some((0, self.height));
    }

    fn mark_dirty(&mut self, from: u32, to: u32) {
        self.dirty_rows = Some(match self.dirty_rows {
            Some((start, end)) => (start.min(from), end.max(to)),
            None => (from, to),
        });
    }

    fn pe_slot(&mut self, pe: PeId) -> u16 {
        if let Some(index) = self.pe_order.iter().position(|&known| known == pe) {
            return u16::try_from(index + 1).unwrap_or(u16::MAX);
        }
        self.pe_order.push(pe);
        u16::try_from(self.pe_order.len()).unwrap_or(u16::MAX)
    }

    /// Stores `iterations` for pixels `first..` of tile `index`; returns the pixels that were
    /// new (not received before).
    fn store(&mut self, index: usize, pe: PeId, first: u64, iterations: &[u32]) -> u64 {
        let Some(rect) = self.tiles.get(index).cloned() else {
            return 0;
        };
        let tile_pixels = u64::from(rect.width) * u64::from(rect.height);
        if rect.width == 0 || first >= tile_pixels {
            return 0;
        }
        let generation = self
            .progress
            .get(index)
            .map_or(0, |progress| progress.failovers.min(255) as u8);
        let slot = self.pe_slot(pe);
        let usable = (tile_pixels - first).min(iterations.len() as u64) as usize;
        let mut fresh = 0;
        let mut work = 0;
        for (offset, &value) in iterations.iter().take(usable).enumerate() {
            let pixel = first + offset as u64;
            let x = rect.x + (pixel % u64::from(rect.width)) as u32;
            let y = rect.y + (pixel / u64::from(rect.width)) as u32;
            if x >= self.width || y >= self.height {
                continue;
            }
            let i = self.index(x, y);
            if self.values[i] == NOT_YET {
                fresh += 1;
            }
            work += fractal_protocol::kernel::iterations_for(value, self.max_iterations);
            self.values[i] = value.min(NOT_YET - 1);
            self.pixel_pe[i] = slot;
            self.pixel_generation[i] = generation;
        }
        if usable > 0 {
            let first_row = rect.y + (first / u64::from(rect.width)) as u32;
            let last_pixel = first + usable as u64 - 1;
            let last_row = rect.y + (last_pixel / u64::from(rect.width)) as u32;
            self.mark_dirty(first_row, (last_row + 1).min(self.height));
        }
        self.received += fresh;
        *self.pe_work.entry(pe).or_default() += work;
        if let Some(progress) = self.progress.get_mut(index) {
            progress.received += fresh;
        }
        fresh
    }

    /// RGBA pixels of rows `from..to`, coloured per `options`.
    pub fn render_rows(&self, from: u32, to: u32, options: ColourOptions) -> Vec<[u8; 4]> {
        let to = to.min(self.height);
        let mut out = Vec::with_capacity(self.width as usize * to.saturating_sub(from) as usize);
        let many_sessions = self.tiles.len() > 1;
        // The tile of each column of the current row band, cached per row.
        for y in from..to {
            let mut session_of_x = vec![0usize; self.width as usize];
            for tile in &self.tiles {
                if y >= tile.y && y - tile.y < tile.height {
                    let end = (tile.x + tile.width).min(self.width);
                    for slot in &mut session_of_x[tile.x as usize..end as usize] {
                        *slot = tile.index;
                    }
                }
            }
            for x in 0..self.width {
                let index = self.index(x, y);
                let session = session_of_x[x as usize];
                let value = self.values[index];
                let rgb = if value == NOT_YET {
                    if many_sessions && options.failover_marks {
                        palette::tile_placeholder(session as u32)
                    } else {
                        [200, 200, 200]
                    }
                } else {
                    let marks = if options.failover_marks {
                        Marks::new(
                            self.image as u32,
                            u32::from(self.pixel_generation[index]),
                            if many_sessions { session as u32 } else { 0 },
                        )
                    } else {
                        Marks::NONE
                    };
                    let base = options.palette.colour(value, self.max_iterations, marks);
                    let slot = self.pixel_pe[index];
                    if options.pe_marks && slot != NO_PE {
                        palette::blend(base, palette::mark_tint(u32::from(slot - 1)), 110)
                    } else {
                        base
                    }
                };
                out.push([rgb[0], rgb[1], rgb[2], 255]);
            }
        }
        out
    }
}

/// What kind of story entry it is (decides its colour and icon).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoryKind {
    Image,
    Failure,
    Report,
    Recovery,
    Pool,
    Control,
}

/// One line of the failover story.
#[derive(Clone, Debug, PartialEq)]
pub struct StoryEntry {
    /// Seconds since the window opened.
    pub at_s: f64,
    pub kind: StoryKind,
    pub text: String,
}

/// Figures over time for the plots.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// (seconds, pixels per second).
    pub speed: VecDeque<[f64; 2]>,
    /// Per PE: (seconds, load 0..1 as the registrar reports it).
    pub load: BTreeMap<PeId, VecDeque<[f64; 2]>>,
    /// Per PE: (seconds, sessions it serves for us).
    pub sessions: BTreeMap<PeId, VecDeque<[f64; 2]>>,
    /// Failover times (seconds), drawn as vertical marks.
    pub failovers: Vec<f64>,
}

fn push_limited(series: &mut VecDeque<[f64; 2]>, point: [f64; 2]) {
    series.push_back(point);
    while series.len() > HISTORY_LIMIT {
        series.pop_front();
    }
}

/// Where the window's time comes from. The model and the window's timers (restart delay,
/// auto-continue, speed plot, story times) all read [`GuiState::now`], so that a test can move
/// time on by hand ([`GuiState::advance_clock`]) instead of sleeping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    /// The system's monotonic clock.
    System,
    /// Stands at this instant until advanced.
    Manual(Instant),
}

impl Clock {
    /// A manual clock standing at the present moment.
    pub fn manual() -> Clock {
        Clock::Manual(Instant::now())
    }

    pub fn now(&self) -> Instant {
        match *self {
            Clock::System => Instant::now(),
            Clock::Manual(at) => at,
        }
    }
}

/// Registrar status as far as the window knows it.
#[derive(Clone, Debug, PartialEq)]
pub enum RegistrarStatus {
    /// Nothing heard yet.
    Unknown,
    Up(Option<SocketAddr>),
    Unavailable(String),
}

/// Everything the window shows besides widgets' own state.
#[derive(Debug)]
pub struct GuiState {
    pub picture: Option<Picture>,
    /// Images completed since the window opened.
    pub images_completed: u64,
    pub last_stats: Option<ImageStats>,
    /// Failovers since the window opened.
    pub failovers: u64,
    pub pool: Vec<PoolEntry>,
    pub registrar: RegistrarStatus,
    /// What each registrar lists (when the client knows several), by ASAP address.
    pub registrar_views: BTreeMap<std::net::SocketAddr, RegistrarView>,
    /// Tiles of the current image each PE serves right now.
    pub serving: BTreeMap<PeId, BTreeSet<usize>>,
    /// Tiles each PE completed since the window opened.
    pub tiles_completed_by: HashMap<PeId, u64>,
    pub story: VecDeque<StoryEntry>,
    pub history: History,
    /// Sessions waiting for a PE (the pool is empty for them).
    pub waiting_for_pe: BTreeSet<usize>,
    /// Pixel throughput over the last second.
    pub pixels_per_s: f64,
    clock: Clock,
    opened: Instant,
    speed_window_start: Instant,
    speed_window_pixels: u64,
    last_logged_decile: Option<u64>,
}

impl Default for GuiState {
    fn default() -> Self {
        GuiState::new()
    }
}

impl GuiState {
    /// A state on the system clock.
    pub fn new() -> GuiState {
        GuiState::with_clock(Clock::System)
    }

    pub fn with_clock(clock: Clock) -> GuiState {
        let now = clock.now();
        GuiState {
            picture: None,
            images_completed: 0,
            last_stats: None,
            failovers: 0,
            pool: Vec::new(),
            registrar: RegistrarStatus::Unknown,
            registrar_views: BTreeMap::new(),
            serving: BTreeMap::new(),
            tiles_completed_by: HashMap::new(),
            story: VecDeque::new(),
            history: History::default(),
            waiting_for_pe: BTreeSet::new(),
            pixels_per_s: 0.0,
            clock,
            opened: now,
            speed_window_start: now,
            speed_window_pixels: 0,
            last_logged_decile: None,
        }
    }

    /// The time now, by the state's clock.
    pub fn now(&self) -> Instant {
        self.clock.now()
    }

    /// Moves a manual clock on by `by`; the system clock moves by itself (no effect).
    pub fn advance_clock(&mut self, by: Duration) {
        if let Clock::Manual(at) = &mut self.clock {
            *at += by;
        }
    }

    /// Seconds since the window opened.
    pub fn elapsed_s(&self) -> f64 {
        self.now()
            .saturating_duration_since(self.opened)
            .as_secs_f64()
    }

    /// Adds a line to the failover story (also used for the user's own actions).
    pub fn note(&mut self, kind: StoryKind, text: impl Into<String>) {
        let entry = StoryEntry {
            at_s: self.elapsed_s(),
            kind,
            text: text.into(),
        };
        self.story.push_back(entry);
        while self.story.len() > TIMELINE_LIMIT {
            self.story.pop_front();
        }
    }

    fn is_current(&self, image: u64) -> bool {
        self.picture
            .as_ref()
            .is_some_and(|picture| picture.image == image)
    }

    /// The picture of `image`, if that is the current one (events of older images are stale).
    fn current_picture_mut(&mut self, image: u64) -> Option<&mut Picture> {
        self.picture
            .as_mut()
            .filter(|picture| picture.image == image)
    }

    /// The progress of tile `tile` of `image`, if that is the current picture.
    fn progress_mut(&mut self, image: u64, tile: usize) -> Option<&mut TileProgress> {
        self.current_picture_mut(image)?.progress.get_mut(tile)
    }

    fn stop_serving(&mut self, tile: usize) {
        for tiles in self.serving.values_mut() {
            tiles.remove(&tile);
        }
        self.serving.retain(|_, tiles| !tiles.is_empty());
    }

    /// `pe` serves `tile` now, and no other PE does.
    fn set_serving(&mut self, tile: usize, pe: PeId) {
        self.stop_serving(tile);
        self.serving.entry(pe).or_default().insert(tile);
    }

    /// Folds one client event into the state.
    pub fn apply(&mut self, event: ClientEvent) {
        match event {
            ClientEvent::ImageStarted(start) => {
                let started = self.now();
                self.on_image_started(Picture::new(start, started));
            }
            ClientEvent::SessionConnected {
                image,
                tile,
                pe,
                resumed_at,
            } => self.on_session_connected(image, tile, &pe, resumed_at),
            ClientEvent::SessionRefused { image, tile, .. } => self.on_session_refused(image, tile),
            // The window's client sends the pixels (`pixel_events`), never this.
            ClientEvent::TileProgress { .. } => {}
            ClientEvent::TileData {
                image,
                tile,
                pe_id,
                first,
                iterations,
            } => self.on_tile_data(image, tile, pe_id, first, &iterations),
            ClientEvent::CookieStored { .. } => {}
            ClientEvent::TileSplit {
                image,
                tile,
                kept_rows,
                tail,
            } => self.on_tile_split(image, tile, kept_rows, tail),
            ClientEvent::TileCompleted { image, tile } => self.on_tile_completed(image, tile),
            ClientEvent::FailoverStarted {
                image,
                tile,
                pe,
                reason,
                silent_for,
            } => self.on_failover_started(image, tile, &pe, &reason, silent_for),
            ClientEvent::UnreachableReported { pe_id } => self.on_unreachable_reported(pe_id),
            ClientEvent::FailoverCompleted(failover) => self.on_failover_completed(&failover),
            ClientEvent::PoolEmpty {
                image,
                tile,
                retry_in,
                detail,
            } => self.on_pool_empty(image, tile, retry_in, detail),
            ClientEvent::ImageCompleted { image, stats } => self.on_image_completed(image, stats),
            ClientEvent::PoolSnapshot { registrar, entries } => {
                self.on_pool_snapshot(registrar, entries);
            }
            ClientEvent::RegistrarUnavailable { detail } => self.on_registrar_unavailable(detail),
            ClientEvent::RegistrarViews(views) => {
                self.registrar_views = views.into_iter().map(|v| (v.address, v)).collect();
            }
        }
    }

    fn on_image_started(&mut self, picture: Picture) {
        self.serving.clear();
        self.waiting_for_pe.clear();
        self.last_logged_decile = None;
        self.note(
            StoryKind::Image,
            format!(
                "Image {}: {}, {}x{}, {} units for {} sessions",
                picture.image,
                picture.preset,
                picture.width,
                picture.height,
                picture.units,
                picture.sessions
            ),
        );
        self.picture = Some(picture);
    }

    fn on_session_connected(
        &mut self,
        image: u64,
        tile: usize,
        pe: &PeInfo,
        resumed_at: Option<u64>,
    ) {
        if !self.is_current(image) {
            return;
        }
        self.set_serving(tile, pe.id);
        self.waiting_for_pe.remove(&tile);
        if let Some(progress) = self.progress_mut(image, tile) {
            progress.pe = Some(pe.id);
            progress.waiting = false;
            progress.started = true;
        }
        if let Some(position) = resumed_at {
            self.note(
                StoryKind::Recovery,
                format!(
                    "Tile {} resumed on PE {} at pixel {position}",
                    tile + 1,
                    pe.id
                ),
            );
        }
    }

    fn on_session_refused(&mut self, image: u64, tile: usize) {
        if !self.is_current(image) {
            return;
        }
        self.stop_serving(tile);
        if let Some(progress) = self.progress_mut(image, tile) {
            progress.pe = None;
        }
    }

    fn on_tile_data(
        &mut self,
        image: u64,
        tile: usize,
        pe_id: PeId,
        first: u64,
        iterations: &[u32],
    ) {
        let Some(picture) = self.current_picture_mut(image) else {
            return;
        };
        let fresh = picture.store(tile, pe_id, first, iterations);
        self.speed_window_pixels += fresh;
        // The PE delivering data is the tile's PE, whatever we heard before.
        if let Some(progress) = self.progress_mut(image, tile)
            && progress.pe != Some(pe_id)
            && !progress.completed
        {
            progress.pe = Some(pe_id);
            self.set_serving(tile, pe_id);
        }
        self.log_progress();
    }

    fn on_tile_split(&mut self, image: u64, tile: usize, kept_rows: u32, tail: TileRect) {
        let Some(picture) = self.current_picture_mut(image) else {
            return;
        };
        let slow_pe = picture.progress.get(tile).and_then(|progress| progress.pe);
        let (new_tile, rows) = (tail.index, tail.height);
        picture.split(tile, kept_rows, tail);
        // The first of a picture is told; the rest are counted at its end (a picture has
        // dozens).
        if picture.tail_takeovers == 1 {
            let pe = slow_pe.map_or_else(|| "its PE".to_owned(), |pe| format!("PE {pe}"));
            self.note(
                StoryKind::Recovery,
                format!(
                    "No unit left: free sessions take over the tails of the tiles that \
                     would finish last, first tile {}'s last {rows} rows (now tile {}) \
                     from {pe}",
                    tile + 1,
                    new_tile + 1
                ),
            );
        }
    }

    fn on_tile_completed(&mut self, image: u64, tile: usize) {
        if !self.is_current(image) {
            return;
        }
        let mut finished_by = None;
        if let Some(progress) = self.progress_mut(image, tile) {
            progress.completed = true;
            progress.failing_over = false;
            finished_by = progress.pe;
        }
        if let Some(pe) = finished_by {
            *self.tiles_completed_by.entry(pe).or_default() += 1;
        }
        self.stop_serving(tile);
    }

    fn on_failover_started(
        &mut self,
        image: u64,
        tile: usize,
        pe: &PeInfo,
        reason: &FailureReason,
        silent_for: Duration,
    ) {
        if !self.is_current(image) {
            return;
        }
        self.stop_serving(tile);
        if let Some(progress) = self.progress_mut(image, tile) {
            progress.failing_over = true;
            progress.pe = None;
        }
        self.history.failovers.push(self.elapsed_s());
        self.note(
            StoryKind::Failure,
            format!(
                "Tile {}: PE {} failed ({}), detected after {} ms",
                tile + 1,
                pe.id,
                describe_reason(reason),
                silent_for.as_millis()
            ),
        );
    }

    fn on_unreachable_reported(&mut self, pe_id: PeId) {
        self.note(
            StoryKind::Report,
            format!("Reported PE {pe_id} unreachable to the registrar"),
        );
    }

    fn on_failover_completed(&mut self, failover: &Failover) {
        let Failover {
            image,
            tile,
            old_pe,
            ref new_pe,
            resumed_at,
            recomputed_pixels,
            took,
        } = *failover;
        if !self.is_current(image) {
            return;
        }
        self.failovers += 1;
        self.set_serving(tile, new_pe.id);
        self.waiting_for_pe.remove(&tile);
        if let Some(progress) = self.progress_mut(image, tile) {
            progress.failovers += 1;
            progress.failing_over = false;
            progress.waiting = false;
            progress.pe = Some(new_pe.id);
        }
        self.note(
            StoryKind::Recovery,
            format!(
                "Tile {}: PE {} took over from {old_pe} in {} ms, \
                 resumed from cookie at pixel {resumed_at}, {recomputed_pixels} pixels recomputed",
                tile + 1,
                new_pe.id,
                took.as_millis()
            ),
        );
    }

    fn on_pool_empty(
        &mut self,
        image: u64,
        tile: usize,
        retry_in: Duration,
        detail: Option<String>,
    ) {
        if !self.is_current(image) {
            return;
        }
        // Told once per wait, not once per waiting session.
        if self.waiting_for_pe.insert(tile) && self.waiting_for_pe.len() == 1 {
            let why = detail.map_or(String::new(), |detail| format!(" ({detail})"));
            self.note(
                StoryKind::Pool,
                format!(
                    "No pool element available{why}; retrying every {} ms",
                    retry_in.as_millis()
                ),
            );
        }
        if let Some(progress) = self.progress_mut(image, tile) {
            progress.waiting = true;
        }
    }

    fn on_image_completed(&mut self, image: u64, stats: ImageStats) {
        let now = self.now();
        let mut tails = 0;
        if let Some(picture) = self.current_picture_mut(image) {
            tails = picture.tail_takeovers;
            picture.completed_after = Some(now.saturating_duration_since(picture.started));
            for progress in &mut picture.progress {
                progress.completed = true;
            }
        }
        self.images_completed += 1;
        tracing::info!(
            image,
            wall_time_s = stats.wall_time_s,
            failovers = stats.failovers,
            pes_used = stats.pes_used,
            "picture completed"
        );
        self.note(
            StoryKind::Image,
            format!(
                "Image {image} complete in {:.1} s: {} PEs, {tails} tails taken over, {} \
                 failovers, {} pixels recomputed",
                stats.wall_time_s, stats.pes_used, stats.failovers, stats.recomputed_pixels
            ),
        );
        self.last_stats = Some(stats);
        self.serving.clear();
    }

    fn on_pool_snapshot(&mut self, registrar: Option<SocketAddr>, entries: Vec<PoolEntry>) {
        let now = self.elapsed_s();
        let before: BTreeSet<PeId> = self.pool.iter().map(|entry| entry.id).collect();
        let after: BTreeSet<PeId> = entries.iter().map(|entry| entry.id).collect();
        // The first snapshot is the pool as found, not news.
        if self.registrar != RegistrarStatus::Unknown {
            for gone in before.difference(&after) {
                self.note(
                    StoryKind::Pool,
                    format!("Registrar removed PE {gone} from the pool"),
                );
            }
            for new in after.difference(&before) {
                self.note(StoryKind::Pool, format!("PE {new} joined the pool"));
            }
            // ENRP: a PE whose home registrar died registered with another, or was taken over.
            let moves: Vec<String> = entries
                .iter()
                .filter_map(|entry| {
                    let old = self.pool.iter().find(|old| old.id == entry.id)?;
                    (old.home_registrar != entry.home_registrar && entry.home_registrar != 0).then(
                        || {
                            format!(
                                "PE {} has a new home: registrar {} (was {})",
                                entry.id, entry.home_registrar, old.home_registrar
                            )
                        },
                    )
                })
                .collect();
            for line in moves {
                self.note(StoryKind::Pool, line);
            }
        }
        if let RegistrarStatus::Up(Some(old)) = self.registrar
            && registrar.is_some_and(|new| new != old)
        {
            self.note(
                StoryKind::Pool,
                format!(
                    "Asking registrar {} now (was {old})",
                    registrar.map_or("?".to_owned(), |a| a.to_string())
                ),
            );
        }
        if matches!(self.registrar, RegistrarStatus::Unavailable(_)) {
            self.note(StoryKind::Pool, "Registrar reachable again");
        }
        for entry in &entries {
            if let Some(load) = entry.load {
                let series = self.history.load.entry(entry.id).or_default();
                push_limited(series, [now, load]);
            }
        }
        self.registrar = RegistrarStatus::Up(registrar);
        self.pool = entries;
    }

    fn on_registrar_unavailable(&mut self, detail: String) {
        if !matches!(self.registrar, RegistrarStatus::Unavailable(_)) {
            self.note(
                StoryKind::Pool,
                format!("No registrar reachable ({detail}); still trying"),
            );
        }
        self.registrar = RegistrarStatus::Unavailable(detail);
    }

    /// Closes the one-second speed window when due and samples the plots; call once per frame.
    pub fn tick(&mut self) {
        let now = self.now();
        let window = now.saturating_duration_since(self.speed_window_start);
        if window < Duration::from_secs(1) {
            return;
        }
        self.pixels_per_s = self.speed_window_pixels as f64 / window.as_secs_f64();
        self.speed_window_pixels = 0;
        self.speed_window_start = now;
        let now = self.elapsed_s();
        push_limited(&mut self.history.speed, [now, self.pixels_per_s]);
        let known: Vec<PeId> = self
            .pool
            .iter()
            .map(|entry| entry.id)
            .chain(self.serving.keys().copied())
            .collect();
        for pe in known {
            let count = self.serving.get(&pe).map_or(0, BTreeSet::len) as f64;
            push_limited(self.history.sessions.entry(pe).or_default(), [now, count]);
        }
    }

    /// Logs `image progress percent=..` at each new tenth, for tests and scripts.
    fn log_progress(&mut self) {
        let Some(picture) = &self.picture else {
            return;
        };
        let percent = (picture.fraction() * 100.0).floor() as u64;
        let decile = percent / 10;
        if self.last_logged_decile != Some(decile) {
            self.last_logged_decile = Some(decile);
            tracing::info!(image = picture.image, percent, "image progress");
        }
    }
}

/// Short human text for a failure reason.
pub fn describe_reason(reason: &FailureReason) -> String {
    match reason {
        FailureReason::ConnectionLost(detail) => format!("connection lost: {detail}"),
        FailureReason::HeartbeatTimeout => "heartbeats unanswered".to_owned(),
        FailureReason::DataSilence => "no data: hung?".to_owned(),
        FailureReason::ConnectFailed(detail) => format!("connect failed: {detail}"),
        FailureReason::ProtocolError(detail) => format!("protocol error: {detail}"),
    }
}
