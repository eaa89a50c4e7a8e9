//! One tile = one RSerPool session at a time: FGP over a [`Session`], with checks of what the PE
//! sends. A tile is a work unit, or the tail of one (see `schedule`): pixel indices of the
//! session are the unit's ("unit pixels"), those reported to the picture the tile's.
//!
//! Against hostile PEs: only Data that brings new pixels (or continues the PE's own run through
//! pixels it was asked to redo) is progress, which alone keeps a PE past the session timeout; a
//! cookie must not claim pixels this PU does not hold; and the session's fallback cookie is
//! where the pixels held end, so forgetting the PEs' cookies loses nothing.

use std::sync::Arc;
use std::time::Duration;

use fractal_protocol::cookie::{Cookie, CookieError};
use fractal_protocol::message::{
    DataView, DecodeError, MAX_POINTS_PER_DATA, PARAMETER_LEN, PPID_FGP, Parameter, TYPE_PARAMETER,
};
use rserpool::pu::{FailureKind, PeCandidate, PoolUser, Session, SessionEvent};
use rserpool::transport::Frame;
use rserpool::wire::{PeId, PoolHandle};
use tokio::sync::mpsc::UnboundedSender;

use super::coverage::Coverage;
use super::events::{ClientEvent, Failover, FailureReason, PeInfo};
use super::schedule::{TileBounds, TileJob};

pub(crate) fn pe_info(pe: &PeCandidate) -> PeInfo {
    PeInfo {
        id: pe.id,
        address: pe.address,
    }
}

fn reason(kind: FailureKind) -> FailureReason {
    match kind {
        FailureKind::ConnectionLost(detail) => FailureReason::ConnectionLost(detail),
        FailureKind::HeartbeatTimeout => FailureReason::HeartbeatTimeout,
        FailureKind::DataSilence => FailureReason::DataSilence,
        FailureKind::ProtocolError(detail) => FailureReason::ProtocolError(detail),
    }
}

/// Most points one [`TileReport::Data`] carries: a burst of Data messages already received goes
/// on as one report (one hop and one event instead of one per message).
const MAX_BATCH_POINTS: u64 = 32 * MAX_POINTS_PER_DATA as u64;

/// What a tile's task reports to its picture.
pub(crate) enum TileReport {
    /// An event for the picture and the front end.
    Event(ClientEvent),
    /// Checked FGP Data messages of one PE whose first `count` points follow each other from
    /// pixel `first` of the tile (points after those lie beyond a cut): the picture decodes
    /// them in place.
    Data {
        tile: usize,
        pe_id: PeId,
        first: u64,
        count: u64,
        frames: Vec<Frame>,
    },
}

/// What a burst of frames brought that is not passed on yet: consecutive Data messages from
/// one PE, and the latest cookie (a PE sends one every few Data messages; only the latest
/// matters).
struct Pending {
    pe_id: PeId,
    first: u64,
    count: u64,
    frames: Vec<Frame>,
    cookie_position: Option<u64>,
}

impl Pending {
    /// Whether `count` points of `pe_id` starting at `first` continue the gathered ones.
    fn continues(&self, pe_id: PeId, first: u64, count: usize) -> bool {
        self.pe_id == pe_id
            && self.first + self.count == first
            && self.count + count as u64 <= MAX_BATCH_POINTS
    }

    /// Adds a checked Data message with `count` points from pixel `first`.
    fn push(&mut self, pe_id: PeId, first: u64, count: usize, frame: Frame) {
        if self.frames.is_empty() {
            self.pe_id = pe_id;
            self.first = first;
            self.count = 0;
        }
        self.count += count as u64;
        self.frames.push(frame);
    }

    /// Sends the gathered points, then the cookie (which covers only points sent before it).
    /// Fails when the receiver is gone.
    fn flush(
        &mut self,
        image: u64,
        tile: usize,
        reports: &UnboundedSender<TileReport>,
    ) -> Result<(), ()> {
        if !self.frames.is_empty() {
            let data = TileReport::Data {
                tile,
                pe_id: self.pe_id,
                first: self.first,
                count: self.count,
                frames: std::mem::take(&mut self.frames),
            };
            reports.send(data).map_err(drop)?;
        }
        if let Some(position) = self.cookie_position.take() {
            let cookie = ClientEvent::CookieStored {
                image,
                tile,
                position,
            };
            reports.send(TileReport::Event(cookie)).map_err(drop)?;
        }
        Ok(())
    }
}

/// What a tile's session knows about its progress, in unit pixels.
struct Progress {
    /// Pixels of the tile received at least once.
    received: Coverage,
    /// One past the highest pixel received so far (the tile's first pixel before any).
    received_end: u64,
    /// Position of the cookie the session holds (the latest a PE sent, or the fallback).
    cookie_position: Option<u64>,
    /// Whether any pixel arrived yet.
    got_data: bool,
    /// One past the last pixel of the current PE's latest Data: its next Data continues here.
    stream_end: Option<u64>,
    /// New pixels arrived since the session's fallback cookie was set.
    fallback_stale: bool,
    /// Position of the session's fallback cookie (None: the tile's start).
    fallback_position: Option<u64>,
}

/// A checked FGP message from a PE.
enum Checked<'a> {
    /// Points from unit pixel `first` on.
    Points { first: u64, data: DataView<'a> },
    /// The finalizer (the PE computed the unit to its end).
    Finalizer,
}

/// Why a PE's FGP message is refused (the session then fails over with this as the protocol
/// error's text).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DataError {
    #[error("pool element sent a Parameter")]
    Parameter,
    #[error("malformed FGP message: {0}")]
    Malformed(#[source] DecodeError),
    #[error("data start ({x}, {y}) outside the {width}x{height} tile")]
    StartOutside {
        x: u32,
        y: u32,
        width: u32,
        height: u32,
    },
    #[error("{points} points from ({x}, {y}) run past the tile's end")]
    PastEnd { points: usize, x: u32, y: u32 },
    #[error("data from ({x}, {y}) before the tile's first row {first_row}")]
    BeforeTile { x: u32, y: u32, first_row: u64 },
    /// The finalizer came before every pixel of the tile did.
    #[error("finalizer with {missing} of {pixels} pixels missing")]
    EarlyFinalizer { missing: u64, pixels: u64 },
}

/// Runs the session of `job`'s tile until the tile is complete; reports through `events`.
/// Returns when the tile is complete or the receiver is gone.
pub(crate) async fn run_tile(
    pool_user: PoolUser,
    pool: PoolHandle,
    image: u64,
    job: TileJob,
    events: UnboundedSender<TileReport>,
) {
    TileRun::start(&pool_user, pool, image, job, events)
        .run()
        .await;
}

/// The session loop ends: the tile is complete, the session finished, or the picture's
/// receiver is gone.
struct Stop;

/// One tile's session and what it has received so far.
struct TileRun {
    session: Session,
    image: u64,
    tile: usize,
    /// The unit's request (a tail shares its unit's).
    parameter: Parameter,
    /// `parameter` encoded: a cookie is for this tile if it carries this very request (bit for
    /// bit).
    request: [u8; PARAMETER_LEN],
    /// The tile's first unit pixel (0 for a whole unit).
    offset: u64,
    bounds: Arc<TileBounds>,
    reports: UnboundedSender<TileReport>,
    progress: Progress,
    pending: Pending,
    /// A pool-empty wait was logged and no data came since (one warning per wait, not one per
    /// retry).
    pool_empty_logged: bool,
}

impl TileRun {
    /// Opens the tile's session: a whole unit from its start, a tail from its cut.
    fn start(
        pool_user: &PoolUser,
        pool: PoolHandle,
        image: u64,
        job: TileJob,
        reports: UnboundedSender<TileReport>,
    ) -> TileRun {
        let TileJob {
            tile,
            parameter,
            offset,
            bounds,
        } = job;
        let request = parameter.encode();
        let first = Frame::new(PPID_FGP, request.to_vec());
        let session = if offset == 0 {
            pool_user.session(pool, first)
        } else {
            // A tail: the PE resumes the unit's own Parameter at the cut (see `schedule`).
            let start = Cookie {
                parameter,
                current_x: 0,
                current_y: (offset / u64::from(parameter.width.max(1))) as u32,
            };
            pool_user.session_resuming(pool, first, start.encode().to_vec())
        };
        TileRun {
            session,
            image,
            tile,
            parameter,
            request,
            offset,
            bounds,
            reports,
            progress: Progress {
                received: Coverage::default(),
                received_end: offset,
                cookie_position: None,
                got_data: false,
                stream_end: None,
                fallback_stale: false,
                fallback_position: None,
            },
            pending: Pending {
                pe_id: PeId(0),
                first: 0,
                count: 0,
                frames: Vec::new(),
                cookie_position: None,
            },
            pool_empty_logged: false,
        }
    }

    async fn run(mut self) {
        while self.step().await.is_ok() {}
    }

    /// Handles the session's next event.
    async fn step(&mut self) -> Result<(), Stop> {
        let next = self.next_event().await?;
        // Data and cookies are gathered; anything else goes on after what was gathered.
        if !matches!(
            next,
            SessionEvent::Data { .. } | SessionEvent::CookieStored { .. }
        ) {
            self.flush()?;
        }
        if let Some(event) = self.handle(next)? {
            self.report(event)?;
        }
        Ok(())
    }

    async fn next_event(&mut self) -> Result<SessionEvent, Stop> {
        if let Some(event) = self.session.ready_event() {
            return Ok(event);
        }
        // Nothing more without waiting: what was gathered goes on now.
        self.flush()?;
        Ok(self.session.next_event().await)
    }

    /// Passes on the gathered points and cookie, and brings the session's fallback up to date
    /// (before the session may wait and fail over).
    fn flush(&mut self) -> Result<(), Stop> {
        if std::mem::take(&mut self.progress.fallback_stale) {
            let (position, cookie) = self.own_cookie();
            self.progress.fallback_position = Some(position);
            self.session.set_fallback_cookie(cookie);
        }
        self.pending
            .flush(self.image, self.tile, &self.reports)
            .map_err(|()| Stop)
    }

    fn report(&self, event: ClientEvent) -> Result<(), Stop> {
        self.reports
            .send(TileReport::Event(event))
            .map_err(|_| Stop)
    }

    /// Where the next PE resumes, in the tile's pixels.
    fn resume_point(&self) -> u64 {
        self.progress.cookie_position.unwrap_or(self.offset) - self.offset
    }

    /// What a session event means for the picture (None: nothing to tell).
    fn handle(&mut self, event: SessionEvent) -> Result<Option<ClientEvent>, Stop> {
        let (image, tile) = (self.image, self.tile);
        let event = match event {
            SessionEvent::Finished => return Err(Stop),
            SessionEvent::Connected { pe, resumed } => {
                self.progress.stream_end = None;
                self.connected(&pe, resumed)
            }
            SessionEvent::ConnectFailed { pe, detail } => {
                tracing::info!(tile, pe = %pe.id, %detail, "could not connect to pool element");
                return Ok(None);
            }
            SessionEvent::Refused { pe } => {
                tracing::debug!(
                    tile,
                    pe = %pe.id,
                    "pool element refused the session"
                );
                ClientEvent::SessionRefused {
                    image,
                    tile,
                    pe_id: pe.id,
                }
            }
            SessionEvent::FailoverStarted {
                pe,
                reason: kind,
                silent_for,
                cookies_dropped,
                ..
            } => {
                if cookies_dropped {
                    tracing::warn!(
                        tile,
                        "failovers without progress; resuming where the pixels received end"
                    );
                    self.progress.cookie_position = self.progress.fallback_position;
                }
                ClientEvent::FailoverStarted {
                    image,
                    tile,
                    pe: pe_info(&pe),
                    reason: reason(kind),
                    silent_for,
                }
            }
            SessionEvent::FailoverCompleted {
                old_pe,
                new_pe,
                took,
                resumed,
            } => self.failover_completed(&old_pe, &new_pe, took, resumed),
            SessionEvent::UnreachableReported { pe_id } => {
                ClientEvent::UnreachableReported { pe_id }
            }
            SessionEvent::PoolEmpty { retry_in, detail } => self.pool_empty(retry_in, detail),
            SessionEvent::CookieStored { pe, cookie } => {
                self.on_cookie(&pe, &cookie)?;
                return Ok(None);
            }
            SessionEvent::Data { pe, frame } => {
                self.on_data(&pe, frame)?;
                return Ok(None);
            }
        };
        Ok(Some(event))
    }

    fn connected(&self, pe: &PeCandidate, resumed: bool) -> ClientEvent {
        ClientEvent::SessionConnected {
            image: self.image,
            tile: self.tile,
            pe: pe_info(pe),
            // A tail's first PE starts the tile afresh, though from a cookie.
            resumed_at: (resumed
                && (self.progress.got_data || self.progress.cookie_position.is_some()))
            .then(|| self.resume_point()),
        }
    }

    fn failover_completed(
        &self,
        old_pe: &PeCandidate,
        new_pe: &PeCandidate,
        took: Duration,
        resumed: bool,
    ) -> ClientEvent {
        let resumed_at = if resumed { self.resume_point() } else { 0 };
        ClientEvent::FailoverCompleted(Failover {
            image: self.image,
            tile: self.tile,
            old_pe: old_pe.id,
            new_pe: pe_info(new_pe),
            resumed_at,
            recomputed_pixels: (self.progress.received_end - self.offset)
                .saturating_sub(resumed_at),
            took,
        })
    }

    fn pool_empty(&mut self, retry_in: Duration, detail: Option<String>) -> ClientEvent {
        let tile = self.tile;
        if !self.pool_empty_logged {
            tracing::warn!(
                tile,
                retry_ms = retry_in.as_millis() as u64,
                detail = detail.as_deref().unwrap_or("no pool element registered"),
                "pool empty, retrying"
            );
        }
        self.pool_empty_logged = true;
        ClientEvent::PoolEmpty {
            image: self.image,
            tile,
            retry_in,
            detail,
        }
    }

    /// Keeps a usable cookie for the next PE; an unusable one fails the PE over, and the tile
    /// restarts.
    fn on_cookie(&mut self, pe: &PeCandidate, cookie: &[u8]) -> Result<(), Stop> {
        let tile = self.tile;
        match self.check_cookie(cookie) {
            Ok(position) => {
                self.progress.cookie_position = Some(position);
                self.pending.cookie_position = Some(position - self.offset);
            }
            Err(error) => {
                self.flush()?;
                let detail = error.to_string();
                tracing::warn!(
                    tile,
                    pe = %pe.id,
                    %detail,
                    "unusable cookie; resuming where the pixels received end"
                );
                self.forget_cookies();
                self.session.fail(FailureKind::ProtocolError(detail));
            }
        }
        Ok(())
    }

    /// The unit pixel a cookie resumes at, if it is for this tile.
    fn check_cookie(&self, cookie: &[u8]) -> Result<u64, UnusableCookie> {
        let cookie = Cookie::decode(cookie)?;
        if cookie.parameter.encode() != self.request {
            return Err(UnusableCookie::OtherRequest);
        }
        let position = cookie.pixels_done();
        if !(self.offset..=self.bounds.end()).contains(&position) {
            return Err(UnusableCookie::OutsideTile);
        }
        // A PE's cookie follows the Data it covers: one beyond the pixels held lies (e.g.
        // "finished", which would have the next PE send only a finalizer).
        let held = self.progress.received.run_end(self.offset);
        if position > held {
            return Err(UnusableCookie::AheadOfData {
                position: position - self.offset,
                held: held - self.offset,
            });
        }
        Ok(position)
    }

    /// A cookie of this PU's own: the first pixel of the tile it does not hold.
    fn own_cookie(&self) -> (u64, Vec<u8>) {
        let position = self.progress.received.run_end(self.offset);
        let width = u64::from(self.parameter.width.max(1));
        let cookie = Cookie {
            parameter: self.parameter,
            current_x: (position % width) as u32,
            current_y: (position / width) as u32,
        };
        (position, cookie.encode().to_vec())
    }

    /// The PE's cookies cannot be trusted: the next PE resumes where the pixels held end.
    fn forget_cookies(&mut self) {
        self.progress.cookie_position = self.progress.fallback_position;
        self.session.forget_cookie();
    }

    /// Takes in a Data message; the tile's last pixels complete it, and bad data fails the PE
    /// over.
    fn on_data(&mut self, pe: &PeCandidate, frame: Frame) -> Result<(), Stop> {
        self.pool_empty_logged = false;
        let complete = match check_data(&self.parameter, self.offset, &frame.payload) {
            Ok(Checked::Points { first, data }) => {
                let points = data.len() as u64;
                self.accept_points(pe, first, points, frame)?
            }
            Ok(Checked::Finalizer) => {
                match self.bounds.finish(&self.progress.received, self.offset) {
                    Ok(()) => true,
                    Err(missing) => {
                        let pixels = self.bounds.end() - self.offset;
                        return self.refuse_data(pe, DataError::EarlyFinalizer { missing, pixels });
                    }
                }
            }
            Err(error) => return self.refuse_data(pe, error),
        };
        if complete {
            self.complete();
            return Err(Stop);
        }
        Ok(())
    }

    /// Gathers `points` points from unit pixel `first` (those beyond a cut are dropped);
    /// whether they complete a cut tile.
    fn accept_points(
        &mut self,
        pe: &PeCandidate,
        first: u64,
        points: u64,
        frame: Frame,
    ) -> Result<bool, Stop> {
        let tile = self.tile;
        let receipt = self.bounds.receive(
            first..first + points,
            &mut self.progress.received,
            self.offset,
        );
        // Progress: new pixels, or the PE going on through pixels it redoes after resuming
        // from a cookie behind what arrived (honest, and it ends in new pixels). Repeated and
        // empty Data are not.
        let continues = points > 0 && self.progress.stream_end == Some(first);
        if points > 0 {
            self.progress.stream_end = Some(first + points);
        }
        if receipt.newly > 0 || continues {
            self.session.progress();
        }
        self.progress.fallback_stale |= receipt.newly > 0;
        let kept = receipt.kept.end - receipt.kept.start;
        if kept < points {
            let dropped = points - kept;
            tracing::trace!(tile, first, dropped, "points beyond the cut");
        }
        if kept > 0 {
            self.progress.got_data = true;
            self.progress.received_end = self.progress.received_end.max(receipt.kept.end);
            let first = first - self.offset;
            if !self.pending.frames.is_empty()
                && !self.pending.continues(pe.id, first, kept as usize)
            {
                self.flush()?;
            }
            self.pending.push(pe.id, first, kept as usize, frame);
        }
        Ok(receipt.complete)
    }

    /// Fails the PE over for sending `error`.
    fn refuse_data(&mut self, pe: &PeCandidate, error: DataError) -> Result<(), Stop> {
        let tile = self.tile;
        self.flush()?;
        let detail = error.to_string();
        tracing::warn!(tile, pe = %pe.id, %detail, "bad data from pool element");
        if let DataError::EarlyFinalizer { .. } = error {
            // The PE skipped pixels: its cookies cannot be trusted either.
            self.forget_cookies();
        }
        self.session.fail(FailureKind::ProtocolError(detail));
        Ok(())
    }

    /// Every pixel arrived: the rest goes on, the session ends, the picture hears of it.
    fn complete(&mut self) {
        // The picture may be gone; the session ends all the same.
        let _ = self.pending.flush(self.image, self.tile, &self.reports);
        self.session.finish();
        let _ = self.report(ClientEvent::TileCompleted {
            image: self.image,
            tile: self.tile,
        });
    }
}

/// Why a cookie from the PE is not kept (the text is the protocol error of the failover).
#[derive(Debug, thiserror::Error)]
enum UnusableCookie {
    #[error("cookie outside the tile")]
    OutsideTile,
    /// The cookie claims pixels (tile pixels) that did not arrive.
    #[error("cookie at pixel {position} ahead of the {held} pixels received")]
    AheadOfData { position: u64, held: u64 },
    #[error("cookie for another request")]
    OtherRequest,
    #[error(transparent)]
    Malformed(#[from] CookieError),
}

/// Checks an FGP message from the PE of a tile that starts at unit pixel `offset` of the unit
/// `parameter`: points within the unit, from the tile's first pixel on, or the finalizer; else
/// why the PE's message is unacceptable.
fn check_data<'a>(
    parameter: &Parameter,
    offset: u64,
    payload: &'a [u8],
) -> Result<Checked<'a>, DataError> {
    let data = match DataView::decode(payload) {
        Ok(data) => data,
        Err(_) if payload.first() == Some(&TYPE_PARAMETER) => return Err(DataError::Parameter),
        Err(error) => return Err(DataError::Malformed(error)),
    };
    if data.is_finalizer() {
        return Ok(Checked::Finalizer);
    }
    let (width, height) = (parameter.width, parameter.height);
    if data.start_x >= width || data.start_y >= height {
        return Err(DataError::StartOutside {
            x: data.start_x,
            y: data.start_y,
            width,
            height,
        });
    }
    let first = u64::from(data.start_y) * u64::from(width) + u64::from(data.start_x);
    if first + data.len() as u64 > u64::from(width) * u64::from(height) {
        return Err(DataError::PastEnd {
            points: data.len(),
            x: data.start_x,
            y: data.start_y,
        });
    }
    if first < offset {
        return Err(DataError::BeforeTile {
            x: data.start_x,
            y: data.start_y,
            first_row: offset / u64::from(width),
        });
    }
    Ok(Checked::Points { first, data })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fractal_protocol::message::{AlgorithmId, Data};

    fn parameter() -> Parameter {
        Parameter {
            width: 4,
            height: 2,
            max_iterations: 10,
            algorithm: AlgorithmId::MANDELBROT,
            c1_real: -2.0,
            c1_imag: 1.0,
            c2_real: 1.0,
            c2_imag: -1.0,
            n: 2.0,
        }
    }

    fn bytes(data: Data) -> Vec<u8> {
        data.encode().expect("encodable")
    }

    /// What `check_data` makes of `data`: the first pixel and the points, or `None` for the
    /// finalizer.
    fn check(offset: u64, data: &[u8]) -> Result<Option<(u64, Vec<u32>)>, DataError> {
        check_data(&parameter(), offset, data).map(|checked| match checked {
            Checked::Points { first, data } => Some((first, data.points().collect())),
            Checked::Finalizer => None,
        })
    }

    #[test]
    fn data_is_checked_against_the_unit_and_the_tile_start() {
        assert_eq!(
            check(0, &bytes(Data::new(1, 0, vec![1, 2, 3]))),
            Ok(Some((1, vec![1, 2, 3])))
        );
        assert_eq!(check(0, &bytes(Data::finalizer())), Ok(None));
        assert!(matches!(
            check(0, &bytes(Data::new(4, 0, vec![1]))),
            Err(DataError::StartOutside { x: 4, y: 0, .. })
        ));
        assert!(matches!(
            check(0, &bytes(Data::new(3, 1, vec![1, 2]))),
            Err(DataError::PastEnd { points: 2, .. })
        ));
        assert!(matches!(check(0, &[2, 0]), Err(DataError::Malformed(_))));
        assert_eq!(check(0, &parameter().encode()), Err(DataError::Parameter));
        // A tail from the second row: its PE must not send the first.
        assert_eq!(
            check(4, &bytes(Data::new(3, 0, vec![1, 2]))),
            Err(DataError::BeforeTile {
                x: 3,
                y: 0,
                first_row: 1
            })
        );
        assert_eq!(
            check(4, &bytes(Data::new(0, 1, vec![5]))),
            Ok(Some((4, vec![5])))
        );
    }
    /// The texts are the protocol error a failover reports (the story shows them).
    #[test]
    fn data_errors_read_as_before() {
        let texts = [
            (DataError::Parameter, "pool element sent a Parameter"),
            (
                DataError::StartOutside {
                    x: 4,
                    y: 0,
                    width: 4,
                    height: 2,
                },
                "data start (4, 0) outside the 4x2 tile",
            ),
            (
                DataError::PastEnd {
                    points: 2,
                    x: 3,
                    y: 1,
                },
                "2 points from (3, 1) run past the tile's end",
            ),
            (
                DataError::BeforeTile {
                    x: 3,
                    y: 0,
                    first_row: 1,
                },
                "data from (3, 0) before the tile's first row 1",
            ),
            (
                DataError::EarlyFinalizer {
                    missing: 3,
                    pixels: 8,
                },
                "finalizer with 3 of 8 pixels missing",
            ),
        ];
        for (error, text) in texts {
            assert_eq!(error.to_string(), text);
        }
    }
}
