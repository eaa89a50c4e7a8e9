//! What the fractal client tells its front ends (GUI, headless). This is the contract between
//! `client` (which produces these) and `gui`/`headless` (which consume them): changes here
//! touch both sides.

use std::net::SocketAddr;
use std::time::Duration;

/// A pool element as the client knows it.
#[derive(Clone, Debug, PartialEq)]
pub struct PeInfo {
    /// Pool element identifier (print as `0x%08x`).
    pub id: u32,
    /// Its FGP/ASAP data address (what we connect to).
    pub address: SocketAddr,
}

/// A tile of the picture (a sub-rectangle, one session computes it).
#[derive(Clone, Debug, PartialEq)]
pub struct TileRect {
    /// Session number, from 0, row-major.
    pub session: usize,
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// A pool element as the registrar reports it (handle resolution for all items).
#[derive(Clone, Debug, PartialEq)]
pub struct PoolEntry {
    pub id: u32,
    pub address: SocketAddr,
    /// Policy in rsplib's text form, e.g. `LeastUsed` or `WeightedRoundRobin:3`.
    pub policy: String,
    /// Load in [0, 1] for load-based policies.
    pub load: Option<f64>,
}

/// Why a session gave up its pool element.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailureReason {
    /// The association was closed or reset by the peer (e.g. the process died).
    ConnectionLost(String),
    /// Transport heartbeats went unanswered.
    HeartbeatTimeout,
    /// No Data for longer than the session timeout (e.g. the process hangs).
    DataSilence,
    /// Could not connect, or the PE refused the session (e.g. full).
    ConnectFailed(String),
    /// The PE sent something we could not accept.
    ProtocolError(String),
}

/// Counters of one image (also written as `--stats-json`).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct ImageStats {
    pub width: u32,
    pub height: u32,
    pub sessions: usize,
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
}

/// Everything the client reports, in order, per image.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientEvent {
    /// A new image began; all earlier tile data is obsolete.
    ImageStarted {
        image: u64,
        width: u32,
        height: u32,
        max_iterations: u32,
        preset: String,
        tiles: Vec<TileRect>,
    },
    /// A session has a pool element and sent it the Parameter (or a Cookie Echo).
    SessionConnected {
        image: u64,
        session: usize,
        pe: PeInfo,
        /// Row-major pixel index within the tile the PE resumes at (None: from the start).
        resumed_at: Option<u64>,
    },
    /// Iteration counts of consecutive pixels of one tile, row-major within the tile,
    /// starting at pixel index `first` of that tile.
    TileData {
        image: u64,
        session: usize,
        pe_id: u32,
        first: u64,
        iterations: Vec<u32>,
    },
    /// Like [`ClientEvent::TileData`] without the values, for a front end that does not show
    /// them (see `ClientConfig::pixel_events`): `count` pixels from pixel index `first`.
    TileProgress {
        image: u64,
        session: usize,
        pe_id: u32,
        first: u64,
        count: u64,
    },
    /// The session stored a new cookie: the PE has handed over everything before `position`.
    CookieStored {
        image: u64,
        session: usize,
        position: u64,
    },
    /// The tile is complete.
    TileCompleted { image: u64, session: usize },
    /// A session lost its PE and started failing over.
    FailoverStarted {
        image: u64,
        session: usize,
        pe: PeInfo,
        reason: FailureReason,
        /// Time since the last data from that PE, i.e. how long detection took.
        silent_for: Duration,
    },
    /// We sent Endpoint Unreachable for this PE to the registrar.
    UnreachableReported { pe_id: u32 },
    /// A failover finished: a new PE took over.
    FailoverCompleted {
        image: u64,
        session: usize,
        old_pe: u32,
        new_pe: PeInfo,
        /// Pixel index within the tile the new PE resumed from.
        resumed_at: u64,
        /// Pixels that will be computed twice (received before, beyond the cookie).
        recomputed_pixels: u64,
        /// From detecting the failure to the new session being set up.
        took: Duration,
    },
    /// No pool element could be found; the session retries after `retry_in`.
    PoolEmpty {
        image: u64,
        session: usize,
        retry_in: Duration,
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
}
