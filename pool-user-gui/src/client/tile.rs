//! One tile = one RSerPool session at a time: FGP over a [`Session`], with checks of what the PE
//! sends. A tile is a work unit, or the tail of one (see `schedule`): pixel indices of the
//! session are the unit's ("unit pixels"), those reported to the picture the tile's.

use std::time::Duration;

use fractal_protocol::cookie::Cookie;
use fractal_protocol::message::{
    DataView, DecodeError, MAX_POINTS_PER_DATA, PPID_FGP, Parameter, TYPE_PARAMETER,
};
use rserpool::pu::{FailureKind, PeCandidate, PoolUser, SessionEvent};
use rserpool::transport::Frame;
use rserpool::wire::PoolHandle;
use tokio::sync::mpsc::UnboundedSender;

use super::coverage::Coverage;
use super::events::{ClientEvent, FailureReason, PeInfo};
use super::schedule::TileJob;

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
        pe_id: u32,
        first: u64,
        count: u64,
        frames: Vec<Frame>,
    },
}

/// What a burst of frames brought that is not passed on yet: consecutive Data messages from
/// one PE, and the latest cookie (a PE sends one every few Data messages; only the latest
/// matters).
struct Pending {
    pe_id: u32,
    first: u64,
    count: u64,
    frames: Vec<Frame>,
    cookie_position: Option<u64>,
}

impl Pending {
    /// Whether `count` points of `pe_id` starting at `first` continue the gathered ones.
    fn continues(&self, pe_id: u32, first: u64, count: usize) -> bool {
        self.pe_id == pe_id
            && self.first + self.count == first
            && self.count + count as u64 <= MAX_BATCH_POINTS
    }

    /// Adds a checked Data message with `count` points from pixel `first`.
    fn push(&mut self, pe_id: u32, first: u64, count: usize, frame: Frame) {
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
    /// Position of the latest cookie a PE sent.
    cookie_position: Option<u64>,
    /// Whether any pixel arrived yet.
    got_data: bool,
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
    let TileJob {
        tile,
        parameter,
        offset,
        bounds,
    } = job;
    // A cookie is for this tile if it carries this very request (bit for bit).
    let request = parameter.encode();
    let first = Frame::new(PPID_FGP, request.to_vec());
    let mut session = if offset == 0 {
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
    let mut progress = Progress {
        received: Coverage::default(),
        received_end: offset,
        cookie_position: None,
        got_data: false,
    };
    let mut pool_empty_since: Option<Duration> = None;
    let mut pending = Pending {
        pe_id: 0,
        first: 0,
        count: 0,
        frames: Vec::new(),
        cookie_position: None,
    };
    // Where the next PE resumes, in the tile's pixels.
    let resume_point = |progress: &Progress| progress.cookie_position.unwrap_or(offset) - offset;
    loop {
        let next = match session.ready_event() {
            Some(event) => event,
            None => {
                // Nothing more without waiting: what was gathered goes on now.
                if pending.flush(image, tile, &events).is_err() {
                    return;
                }
                session.next_event().await
            }
        };
        if !matches!(
            next,
            SessionEvent::Data { .. } | SessionEvent::CookieStored { .. }
        ) && pending.flush(image, tile, &events).is_err()
        {
            return;
        }
        let event = match next {
            SessionEvent::Finished => return,
            SessionEvent::Connected { pe, resumed } => ClientEvent::SessionConnected {
                image,
                tile,
                pe: pe_info(&pe),
                // A tail's first PE starts the tile afresh, though from a cookie.
                resumed_at: (resumed && (progress.got_data || progress.cookie_position.is_some()))
                    .then(|| resume_point(&progress)),
            },
            SessionEvent::ConnectFailed { pe, detail } => {
                tracing::info!(tile, pe = format_args!("{:#010x}", pe.id), %detail, "could not connect to pool element");
                continue;
            }
            SessionEvent::Refused { pe } => {
                tracing::debug!(
                    tile,
                    pe = format_args!("{:#010x}", pe.id),
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
                ..
            } => ClientEvent::FailoverStarted {
                image,
                tile,
                pe: pe_info(&pe),
                reason: reason(kind),
                silent_for,
            },
            SessionEvent::FailoverCompleted {
                old_pe,
                new_pe,
                took,
                resumed,
            } => {
                let resumed_at = if resumed { resume_point(&progress) } else { 0 };
                ClientEvent::FailoverCompleted {
                    image,
                    tile,
                    old_pe: old_pe.id,
                    new_pe: pe_info(&new_pe),
                    resumed_at,
                    recomputed_pixels: (progress.received_end - offset).saturating_sub(resumed_at),
                    took,
                }
            }
            SessionEvent::UnreachableReported { pe_id } => {
                ClientEvent::UnreachableReported { pe_id }
            }
            SessionEvent::PoolEmpty { retry_in, detail } => {
                if pool_empty_since.is_none() {
                    tracing::warn!(
                        tile,
                        retry_ms = retry_in.as_millis() as u64,
                        detail = detail.as_deref().unwrap_or("no pool element registered"),
                        "pool empty, retrying"
                    );
                }
                pool_empty_since = Some(retry_in);
                ClientEvent::PoolEmpty {
                    image,
                    tile,
                    retry_in,
                    detail,
                }
            }
            SessionEvent::CookieStored { pe, cookie } => match Cookie::decode(&cookie) {
                Ok(cookie)
                    if cookie.parameter.encode() == request
                        && (offset..=bounds.end()).contains(&cookie.pixels_done()) =>
                {
                    let position = cookie.pixels_done();
                    progress.cookie_position = Some(position);
                    pending.cookie_position = Some(position - offset);
                    continue;
                }
                other => {
                    let detail = match other {
                        Ok(cookie) if cookie.parameter.encode() == request => {
                            "cookie outside the tile".to_string()
                        }
                        Ok(_) => "cookie for another request".to_string(),
                        Err(error) => error.to_string(),
                    };
                    if pending.flush(image, tile, &events).is_err() {
                        return;
                    }
                    tracing::warn!(tile, pe = format_args!("{:#010x}", pe.id), %detail, "unusable cookie; restarting the tile");
                    progress.cookie_position = None;
                    session.forget_cookie();
                    session.fail(FailureKind::ProtocolError(detail));
                    continue;
                }
            },
            SessionEvent::Data { pe, frame } => {
                pool_empty_since = None;
                let checked = check_data(&parameter, offset, &frame.payload);
                let outcome =
                    match checked {
                        Ok(Checked::Points { first, data }) => {
                            let receipt = bounds.receive(
                                first..first + data.len() as u64,
                                &mut progress.received,
                                offset,
                            );
                            let kept = receipt.kept.end - receipt.kept.start;
                            if kept < data.len() as u64 {
                                let dropped = data.len() as u64 - kept;
                                tracing::trace!(tile, first, dropped, "points beyond the cut");
                            }
                            if kept > 0 {
                                progress.got_data = true;
                                progress.received_end = progress.received_end.max(receipt.kept.end);
                                let first = first - offset;
                                if !pending.frames.is_empty()
                                    && !pending.continues(pe.id, first, kept as usize)
                                    && pending.flush(image, tile, &events).is_err()
                                {
                                    return;
                                }
                                pending.push(pe.id, first, kept as usize, frame);
                            }
                            if !receipt.complete {
                                continue;
                            }
                            Ok(())
                        }
                        Ok(Checked::Finalizer) => bounds
                            .finish(&progress.received, offset)
                            .map_err(|missing| DataError::EarlyFinalizer {
                                missing,
                                pixels: bounds.end() - offset,
                            }),
                        Err(error) => Err(error),
                    };
                // Ok: the tile is complete.
                match outcome {
                    Ok(()) => {
                        let _ = pending.flush(image, tile, &events);
                        session.finish();
                        let _ = events.send(TileReport::Event(ClientEvent::TileCompleted {
                            image,
                            tile,
                        }));
                        return;
                    }
                    Err(error) => {
                        if pending.flush(image, tile, &events).is_err() {
                            return;
                        }
                        let detail = error.to_string();
                        tracing::warn!(tile, pe = format_args!("{:#010x}", pe.id), %detail, "bad data from pool element");
                        if let DataError::EarlyFinalizer { .. } = error {
                            // The PE skipped pixels: its cookies cannot be trusted either.
                            progress.cookie_position = None;
                            session.forget_cookie();
                        }
                        session.fail(FailureKind::ProtocolError(detail));
                        continue;
                    }
                }
            }
        };
        if events.send(TileReport::Event(event)).is_err() {
            return;
        }
    }
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
