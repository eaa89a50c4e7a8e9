//! What the fractal client tells its front ends (GUI, headless). This is the contract between
//! `client` (which produces these) and `gui`/`headless` (which consume them): changes here
//! touch both sides.

use rserpool::wire::PeId;
use std::net::SocketAddr;
use std::time::Duration;

/// A pool element as the client knows it.
#[derive(Clone, Debug, PartialEq)]
pub struct PeInfo {
    /// Pool element identifier.
    pub id: PeId,
    /// Its FGP/ASAP data address (what we connect to).
    pub address: SocketAddr,
}

/// A tile of the picture: a sub-rectangle that one session at a time computes. The picture
/// starts with one tile per work unit; a tail takeover cuts a tile's lower rows off into a new
/// tile ([`ClientEvent::TileSplit`]).
#[derive(Clone, Debug, PartialEq)]
pub struct TileRect {
    /// Tile number, from 0: the work units row-major, then tails in the order they were cut.
    pub index: usize,
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// A pool element as the registrar reports it (handle resolution for all items).
#[derive(Clone, Debug, PartialEq)]
pub struct PoolEntry {
    pub id: PeId,
    pub address: SocketAddr,
    /// Policy in rsplib's text form, e.g. `LeastUsed` or `WeightedRoundRobin:3`.
    pub policy: String,
    /// Load in [0, 1] for load-based policies.
    pub load: Option<f64>,
    /// Iterations per second its policy advertises (a capacity-aware PE's weight or load
    /// degradation, see `pool_element::capacity`).
    pub capacity: Option<f64>,
    /// Identifier of its home registrar (the one it registered with, or took it over).
    pub home_registrar: u32,
}

/// Why a session gave up its pool element.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailureReason {
    /// The association was closed or reset by the peer (e.g. the process died).
    ConnectionLost(String),
    /// Transport heartbeats went unanswered.
    HeartbeatTimeout,
    /// No new pixels for longer than the session timeout (e.g. the process hangs, or sends
    /// only repeats, empty Data or cookies).
    DataSilence,
    /// Could not connect, or the PE refused the session (e.g. full).
    ConnectFailed(String),
    /// The PE sent something we could not accept.
    ProtocolError(String),
}

/// What one pool element did for one image.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct PeStats {
    /// Pool element identifier (a number in the JSON statistics: `PeId(pe_id)` prints it).
    pub pe_id: u32,
    /// Tiles (work units or tails) it completed.
    pub units: u64,
    /// Pixels it delivered, recomputed ones included.
    pub pixels: u64,
    /// Iterations behind those pixels.
    pub iterations: u64,
    /// Time it had at least one of this image's sessions, in seconds.
    pub busy_s: f64,
}

/// One failover of one image's session.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct FailoverRecord {
    /// The tile whose session failed over.
    pub tile: usize,
    /// The PE that failed, and the one that took over.
    pub old_pe: u32,
    pub new_pe: u32,
    /// Why (as the failover story says it).
    pub reason: String,
    /// Detection: time from the failed PE's last message to the failover's start, in seconds.
    pub detection_s: f64,
    /// From detecting the failure to the new PE's first message, in seconds.
    pub failover_s: f64,
    /// Pixel of the tile the new PE resumed at.
    pub resumed_at: u64,
    /// Pixels received before that will arrive again, and their iterations.
    pub recomputed_pixels: u64,
    pub recomputed_iterations: u64,
}

/// Counters of one image (also written as `--stats-json`).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct ImageStats {
    /// Preset name.
    pub preset: String,
    pub width: u32,
    pub height: u32,
    /// Sessions at once.
    pub sessions: usize,
    /// Work units the picture was cut into.
    pub units: usize,
    /// Tails taken over (each made a tile more).
    pub tail_takeovers: u64,
    /// Pixels a PE computed beyond a cut, dropped.
    pub tail_overrun_pixels: u64,
    pub wall_time_s: f64,
    pub pixels: u64,
    pub iterations: u64,
    pub pixels_per_s: f64,
    pub iterations_per_s: f64,
    /// Distinct PEs that delivered data.
    pub pes_used: usize,
    pub failovers: u64,
    /// Pixels received more than once because a session resumed from an older cookie.
    pub recomputed_pixels: u64,
    /// Iterations those recomputed pixels cost.
    pub recomputed_iterations: u64,
    /// Sessions that had to restart from scratch (no cookie yet when their PE failed).
    pub restarts_from_scratch: u64,
    /// Per pool element that delivered data, by identifier.
    pub pes: Vec<PeStats>,
    /// Every failover, in order.
    pub failover_records: Vec<FailoverRecord>,
}

/// A picture that begins.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageStart {
    pub image: u64,
    pub width: u32,
    pub height: u32,
    pub max_iterations: u32,
    pub preset: String,
    /// Sessions at once.
    pub sessions: usize,
    /// The work units, in the order sessions take them.
    pub tiles: Vec<TileRect>,
}

/// A session that lost its PE has a new one.
#[derive(Clone, Debug, PartialEq)]
pub struct Failover {
    pub image: u64,
    pub tile: usize,
    pub old_pe: PeId,
    pub new_pe: PeInfo,
    /// Pixel index within the tile the new PE resumed from.
    pub resumed_at: u64,
    /// Pixels that will be computed twice (received before, beyond the cookie).
    pub recomputed_pixels: u64,
    /// From detecting the failure to the new session being set up.
    pub took: Duration,
}

/// Everything the client reports, in order, per image.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientEvent {
    /// A new image began; all earlier tile data is obsolete.
    ImageStarted(ImageStart),
    /// A tile's session has a pool element and sent it the Parameter (or a Cookie Echo).
    SessionConnected {
        image: u64,
        tile: usize,
        pe: PeInfo,
        /// Row-major pixel index within the tile the PE resumes at after a failover (None: a
        /// fresh start).
        resumed_at: Option<u64>,
    },
    /// The PE of [`ClientEvent::SessionConnected`] refused the session (full): the tile's
    /// session looks for another.
    SessionRefused {
        image: u64,
        tile: usize,
        pe_id: PeId,
    },
    /// Iteration counts of consecutive pixels of one tile, row-major within the tile,
    /// starting at pixel index `first` of that tile.
    TileData {
        image: u64,
        tile: usize,
        pe_id: PeId,
        first: u64,
        iterations: Vec<u32>,
    },
    /// Like [`ClientEvent::TileData`] without the values, for a front end that does not show
    /// them (see `ClientConfig::pixel_events`): `count` pixels from pixel index `first`.
    TileProgress {
        image: u64,
        tile: usize,
        pe_id: PeId,
        first: u64,
        count: u64,
    },
    /// The session stored a new cookie: the PE has handed over everything before `position`.
    CookieStored {
        image: u64,
        tile: usize,
        position: u64,
    },
    /// Tile `tile`'s tail was taken over: the tile keeps its first `kept_rows` rows; the rows
    /// below are the new tile `tail`, computed by another session.
    TileSplit {
        image: u64,
        tile: usize,
        kept_rows: u32,
        tail: TileRect,
    },
    /// The tile is complete.
    TileCompleted { image: u64, tile: usize },
    /// A session lost its PE and started failing over.
    FailoverStarted {
        image: u64,
        tile: usize,
        pe: PeInfo,
        reason: FailureReason,
        /// Time since that PE last brought new pixels (or was connected to), i.e. how long
        /// detection took.
        silent_for: Duration,
    },
    /// We sent Endpoint Unreachable for this PE to the registrar.
    UnreachableReported { pe_id: PeId },
    /// A failover finished: a new PE took over.
    FailoverCompleted(Failover),
    /// No pool element could be found; the session retries after `retry_in`.
    PoolEmpty {
        image: u64,
        tile: usize,
        retry_in: Duration,
        /// Why, when not simply an empty pool (the registrar unreachable, or every listed PE
        /// full or just failed).
        detail: Option<String>,
    },
    /// All tiles are complete.
    ImageCompleted { image: u64, stats: ImageStats },
    /// The pool as the registrar sees it (refreshed about once a second).
    PoolSnapshot {
        registrar: Option<SocketAddr>,
        entries: Vec<PoolEntry>,
    },
    /// No registrar reachable right now (the client keeps trying).
    RegistrarUnavailable { detail: String },
    /// What each registrar lists of the pool (refreshed about once a second, when the client
    /// knows several registrars): their views converge through ENRP.
    RegistrarViews(Vec<RegistrarView>),
}

/// One registrar's view of the pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistrarView {
    pub address: SocketAddr,
    /// PEs it lists; `None` when it did not answer.
    pub pes: Option<usize>,
    /// RFC 5353 checksum of (pool handle, PE id) over the PEs it lists: equal views, equal
    /// checksums.
    pub checksum: u16,
}
