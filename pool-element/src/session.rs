//! One FGP session as a sans-I/O state machine: the first message in, Data and Cookies out,
//! time passed in.
//!
//! Positions are row-major `(x, y)`; `(0, height)` is the end of the picture. The session keeps
//! four of them: the next pixel handed out for computation, the next pixel whose value goes into
//! a Data message, the start of the points buffered for that message, and the end of the Data
//! already emitted. Cookies always carry the last one, so a cookie never claims pixels the PU has
//! not been handed (rsplib's can run up to 323 pixels ahead).
//!
//! Computation is split into [`Piece`]s ([`Session::claim`]) that several threads may compute at
//! once; [`Session::complete`] puts their values back in picture order, so the Data messages are
//! the same as from one thread.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fractal_protocol::cookie::{Cookie, CookieError};
use fractal_protocol::kernel::{KernelChoice, View};
use fractal_protocol::message::{
    Data, DecodeError, MAX_ITERATIONS_LIMIT, MAX_POINTS_PER_DATA, Parameter, ParameterError,
};
use rserpool::transport::{PPID_ASAP, PPID_FGP};
use rserpool::wire::{AsapMessage, WireError};

/// Timing and failure-injection settings of a session.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// A cookie after this many Data messages (at least 1).
    pub cookie_max_packets: u32,
    /// A cookie at least this often while computing.
    pub cookie_max_time: Duration,
    /// A (possibly partial) Data message at least this often while computing.
    pub data_max_time: Duration,
    /// After this many Data messages: a cookie, then close (rsplib's `-fgpfailureafter`).
    pub fail_after: Option<u32>,
    /// `Fast` normally, `TestMode` for `--test-mode`.
    pub kernel: KernelChoice,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            cookie_max_packets: 10,
            cookie_max_time: Duration::from_millis(1000),
            data_max_time: Duration::from_millis(250),
            fail_after: None,
            kernel: KernelChoice::Fast,
        }
    }
}

/// What the first message asks for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Start {
    /// An FGP Parameter: compute the whole picture.
    Compute(Parameter),
    /// An ASAP Cookie Echo: resume at the cookie's position.
    Resume(Cookie),
}

/// Why a first message is refused (the session is aborted).
#[derive(Debug, thiserror::Error)]
pub enum FirstMessageError {
    #[error("malformed FGP Parameter: {0}")]
    MalformedParameter(#[from] DecodeError),
    #[error("invalid FGP Parameter: {0}")]
    InvalidParameter(#[from] ParameterError),
    #[error("malformed ASAP message: {0}")]
    MalformedAsap(#[from] WireError),
    #[error("unexpected first ASAP message {0}")]
    UnexpectedAsap(&'static str),
    #[error("malformed cookie: {0}")]
    MalformedCookie(#[from] CookieError),
    #[error("unexpected PPID {0}")]
    UnexpectedPpid(u32),
}

/// Decodes a session's first frame: an FGP Parameter (PPID 32) or an ASAP Cookie Echo carrying
/// a `<FG-TD1>` cookie (PPID 11). Unknown algorithms are accepted (test pattern); values beyond
/// rsplib's limits are refused.
pub fn decode_first(ppid: u32, payload: &[u8]) -> Result<Start, FirstMessageError> {
    match ppid {
        PPID_FGP => {
            let parameter = Parameter::decode(payload)?;
            parameter.validate_computable()?;
            Ok(Start::Compute(parameter))
        }
        PPID_ASAP => match AsapMessage::decode(payload)?.message {
            AsapMessage::CookieEcho { cookie } => Ok(Start::Resume(Cookie::decode(&cookie)?)),
            other => Err(FirstMessageError::UnexpectedAsap(other.name())),
        },
        other => Err(FirstMessageError::UnexpectedPpid(other)),
    }
}

/// Default `--max-work`: the largest picture a pool user asks for in one session (8192 x 8192,
/// the most our GUI allows; rsplib's pool user stops at 8192 x 4096) at rsplib's MaxIterations
/// limit. Hours of computing, yet 64 times less than the 65536 x 65536 x 10^6 that rsplib's
/// per-field limits let through.
pub const DEFAULT_MAX_WORK: u64 = 8192 * 8192 * MAX_ITERATIONS_LIMIT as u64;

/// A request beyond `--max-work`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{work} iterations at most (width x height x MaxIterations) exceed --max-work {max_work}")]
pub struct TooMuchWork {
    pub work: u64,
    pub max_work: u64,
}

impl Start {
    /// Iterations at most: every pixel still to compute at MaxIterations.
    pub fn work(&self) -> u64 {
        let (parameter, done) = match self {
            Start::Compute(parameter) => (parameter, 0),
            Start::Resume(cookie) => (&cookie.parameter, cookie.pixels_done()),
        };
        parameter
            .pixel_count()
            .saturating_sub(done)
            .saturating_mul(u64::from(parameter.max_iterations))
    }

    /// Refuses a request of more than `max_work` iterations.
    pub fn check_work(&self, max_work: u64) -> Result<(), TooMuchWork> {
        let work = self.work();
        if work > max_work {
            return Err(TooMuchWork { work, max_work });
        }
        Ok(())
    }
}

/// What the session wants sent, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// An FGP Data message (the finalizer included).
    Data(Data),
    /// An ASAP Cookie with this `<FG-TD1>` content.
    Cookie(Cookie),
    /// The picture is complete (the finalizer was the last Data): close gracefully.
    Finished,
    /// `fail_after` was reached (a cookie was the last output): close gracefully.
    FailureInjected,
}

/// A run of consecutive pixels of a session, handed out for computation.
#[derive(Clone, Copy, Debug)]
pub struct Piece {
    /// What to compute with.
    pub view: View,
    /// First pixel.
    pub start: (u32, u32),
    /// Number of pixels (at least 1).
    pub count: usize,
}

impl Piece {
    /// Computes the piece's values; returns them and the iterations performed.
    pub fn compute(&self) -> (Vec<u32>, u64) {
        let mut values = vec![0; self.count];
        // A piece lies inside its view by construction (`Session::claim`).
        let iterations = self.view.compute(self.start, &mut values).unwrap_or(0);
        (values, iterations)
    }
}

/// A session in progress.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    parameter: Parameter,
    view: View,
    /// Next pixel to hand out in a piece.
    claimed: (u32, u32),
    /// Completed pieces that wait for an earlier one, by start index.
    completed: BTreeMap<u64, Vec<u32>>,
    /// Next pixel to put into a Data message.
    next: (u32, u32),
    /// First pixel of `pending`.
    pending_start: (u32, u32),
    pending: Vec<u32>,
    /// End of the Data emitted so far: what a cookie may claim.
    emitted: (u32, u32),
    /// Position in the last cookie.
    cookie_position: (u32, u32),
    data_messages: u32,
    data_since_cookie: u32,
    last_cookie: Instant,
    last_data: Instant,
    done: bool,
}

impl Session {
    /// Starts a session at `now`; the outputs begin with the start cookie (a resumed, already
    /// complete picture gets only the finalizer).
    pub fn new(start: Start, config: SessionConfig, now: Instant) -> (Session, Vec<Output>) {
        let (parameter, position) = match start {
            Start::Compute(parameter) => (parameter, (0, 0)),
            Start::Resume(cookie) => (cookie.parameter, (cookie.current_x, cookie.current_y)),
        };
        let view = View::new(&parameter, config.kernel);
        let mut session = Session {
            config,
            parameter,
            view,
            claimed: position,
            completed: BTreeMap::new(),
            next: position,
            pending_start: position,
            pending: Vec::with_capacity(MAX_POINTS_PER_DATA),
            emitted: position,
            cookie_position: position,
            data_messages: 0,
            data_since_cookie: 0,
            last_cookie: now,
            last_data: now,
            done: false,
        };
        let mut out = Vec::new();
        if session.remaining() == 0 {
            session.finish(now, &mut out);
        } else {
            out.push(Output::Cookie(session.cookie()));
        }
        (session, out)
    }

    /// The request being computed.
    pub fn parameter(&self) -> &Parameter {
        &self.parameter
    }

    /// Pixels not computed yet.
    pub fn remaining(&self) -> u64 {
        self.view.remaining_from(self.next)
    }

    /// Data messages emitted (the finalizer not counted).
    pub fn data_messages(&self) -> u32 {
        self.data_messages
    }

    /// Whether the session has nothing more to send.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// How many pixels to compute at once so that it costs at most about `iterations`
    /// iterations (at least 1 pixel, at most `max_pixels`).
    pub fn pixels_for(&self, iterations: u64, max_pixels: usize) -> usize {
        let per_pixel = u64::from(self.view.max_iterations().max(1));
        usize::try_from(iterations / per_pixel)
            .unwrap_or(usize::MAX)
            .clamp(1, max_pixels.max(1))
    }

    /// Computes up to `max_pixels` pixels (never past the end of the current Data message) and
    /// emits what is due. Returns the iterations performed. (One thread; see [`Session::claim`]
    /// for several.)
    pub fn compute(&mut self, max_pixels: usize, now: Instant, out: &mut Vec<Output>) -> u64 {
        let room = MAX_POINTS_PER_DATA - self.pending.len();
        let Some(piece) = self.claim(max_pixels.max(1).min(room)) else {
            return 0;
        };
        let (values, iterations) = piece.compute();
        self.complete(&piece, values, now, out);
        iterations
    }

    /// Hands out the next `max_pixels` (at least 1) not handed out yet, if any and the session
    /// is not done.
    pub fn claim(&mut self, max_pixels: usize) -> Option<Piece> {
        if self.done {
            return None;
        }
        let remaining =
            usize::try_from(self.view.remaining_from(self.claimed)).unwrap_or(usize::MAX);
        let count = max_pixels.max(1).min(remaining);
        if count == 0 {
            return None;
        }
        let piece = Piece {
            view: self.view,
            start: self.claimed,
            count,
        };
        // `count` never exceeds the remaining pixels, so the advance exists.
        self.claimed = self
            .view
            .advance(self.claimed, count as u64)
            .unwrap_or((0, self.view.height()));
        Some(piece)
    }

    /// Pixels not handed out yet (0 once the session is done).
    pub fn unclaimed_pixels(&self) -> u64 {
        if self.done {
            0
        } else {
            self.view.remaining_from(self.claimed)
        }
    }

    /// Whether pixels remain to be handed out.
    pub fn has_unclaimed(&self) -> bool {
        self.unclaimed_pixels() > 0
    }

    /// Takes the values of a claimed piece and emits, in picture order, what is due. Values of
    /// a piece that waits for an earlier one are kept until that one completes; values for a
    /// session that is done (shut down, failure injected) are dropped.
    pub fn complete(
        &mut self,
        piece: &Piece,
        values: Vec<u32>,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        if self.done || values.len() != piece.count {
            return;
        }
        self.completed.insert(self.index_of(piece.start), values);
        while !self.done {
            let Some(values) = self.completed.remove(&self.index_of(self.next)) else {
                break;
            };
            self.append(&values, now, out);
        }
        if !self.done && self.remaining() == 0 {
            self.finish(now, out);
        }
    }

    /// Row-major index of a position of the view (`pixel_count` for the end).
    fn index_of(&self, position: (u32, u32)) -> u64 {
        self.view.pixel_count() - self.view.remaining_from(position)
    }

    /// Appends the values of the pixels at `next` to the Data being filled, emitting full ones.
    fn append(&mut self, mut values: &[u32], now: Instant, out: &mut Vec<Output>) {
        while !values.is_empty() && !self.done {
            let room = MAX_POINTS_PER_DATA - self.pending.len();
            let (taken, rest) = values.split_at(room.min(values.len()));
            self.pending.extend_from_slice(taken);
            self.next = self
                .view
                .advance(self.next, taken.len() as u64)
                .unwrap_or((0, self.view.height()));
            if self.pending.len() == MAX_POINTS_PER_DATA {
                self.emit_data(now, out);
            }
            values = rest;
        }
    }

    /// Emits what the timers ask for: a partial Data message after `data_max_time` without
    /// one, a cookie after `cookie_max_time` without one.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<Output>) {
        if self.done {
            return;
        }
        if !self.pending.is_empty()
            && now.saturating_duration_since(self.last_data) >= self.config.data_max_time
        {
            self.emit_data(now, out);
        }
        if !self.done
            && now.saturating_duration_since(self.last_cookie) >= self.config.cookie_max_time
        {
            self.last_cookie = now;
            if self.emitted != self.cookie_position {
                self.emit_cookie(now, out);
            }
        }
    }

    /// When [`Session::handle_timeout`] has something to do next.
    pub fn poll_timeout(&self) -> Instant {
        let cookie = self.last_cookie + self.config.cookie_max_time;
        if self.pending.is_empty() {
            cookie
        } else {
            cookie.min(self.last_data + self.config.data_max_time)
        }
    }

    /// The PE shuts down: emit the buffered points and a final cookie.
    pub fn shutdown(&mut self, now: Instant, out: &mut Vec<Output>) {
        if self.done {
            return;
        }
        if !self.pending.is_empty() {
            self.emit_data(now, out);
        }
        if !self.done {
            self.emit_cookie(now, out);
            self.done = true;
        }
    }

    /// A cookie for the Data emitted so far.
    pub fn cookie(&self) -> Cookie {
        Cookie {
            parameter: self.parameter,
            current_x: self.emitted.0,
            current_y: self.emitted.1,
        }
    }

    fn emit_cookie(&mut self, now: Instant, out: &mut Vec<Output>) {
        self.last_cookie = now;
        self.cookie_position = self.emitted;
        self.data_since_cookie = 0;
        out.push(Output::Cookie(self.cookie()));
    }

    fn emit_data(&mut self, now: Instant, out: &mut Vec<Output>) {
        let points = std::mem::replace(&mut self.pending, Vec::with_capacity(MAX_POINTS_PER_DATA));
        out.push(Output::Data(Data::new(
            self.pending_start.0,
            self.pending_start.1,
            points,
        )));
        self.pending_start = self.next;
        self.emitted = self.next;
        self.last_data = now;
        self.data_messages += 1;
        self.data_since_cookie += 1;
        if self.config.fail_after == Some(self.data_messages) {
            self.emit_cookie(now, out);
            out.push(Output::FailureInjected);
            self.done = true;
            return;
        }
        if self.data_since_cookie >= self.config.cookie_max_packets.max(1) && self.remaining() > 0 {
            self.emit_cookie(now, out);
        }
    }

    fn finish(&mut self, now: Instant, out: &mut Vec<Output>) {
        if !self.pending.is_empty() {
            self.emit_data(now, out);
            if self.done {
                return;
            }
        }
        out.push(Output::Data(Data::finalizer()));
        out.push(Output::Finished);
        self.done = true;
    }
}
