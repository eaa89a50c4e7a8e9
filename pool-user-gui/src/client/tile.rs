//! One tile = one RSerPool session: FGP over a [`Session`], with checks of what the PE sends.

use std::time::Duration;

use fractal_protocol::cookie::Cookie;
use fractal_protocol::message::{DataView, MAX_POINTS_PER_DATA, PPID_FGP, TYPE_PARAMETER};
use fractal_protocol::tiling::Tile;
use rserpool::pu::{FailureKind, PeCandidate, PoolUser, SessionEvent};
use rserpool::transport::Frame;
use rserpool::wire::PoolHandle;
use tokio::sync::mpsc::UnboundedSender;

use super::coverage::Coverage;
use super::events::{ClientEvent, FailureReason, PeInfo};

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
    /// Checked FGP Data messages of one PE whose `count` points follow each other from pixel
    /// `first` of the tile: the picture decodes them in place.
    Data {
        session: usize,
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
        session: usize,
        reports: &UnboundedSender<TileReport>,
    ) -> Result<(), ()> {
        if !self.frames.is_empty() {
            let data = TileReport::Data {
                session,
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
                session,
                position,
            };
            reports.send(TileReport::Event(cookie)).map_err(drop)?;
        }
        Ok(())
    }
}

/// What a tile's session knows about its progress.
struct Progress {
    /// Pixels of the tile received at least once.
    received: Coverage,
    /// One past the highest pixel index received so far.
    received_end: u64,
    /// Position of the latest cookie.
    cookie_position: Option<u64>,
}

/// Runs the session of `tile` until the tile is complete; reports through `events`. Returns
/// when the tile is complete or the receiver is gone.
pub(crate) async fn run_tile(
    pool_user: PoolUser,
    pool: PoolHandle,
    image: u64,
    tile: Tile,
    events: UnboundedSender<TileReport>,
) {
    let session_index = tile.session;
    // A cookie is for this tile if it carries this very request (bit for bit).
    let request = tile.parameter.encode();
    let first = Frame::new(PPID_FGP, request.to_vec());
    let mut session = pool_user.session(pool, first);
    let mut progress = Progress {
        received: Coverage::default(),
        received_end: 0,
        cookie_position: None,
    };
    let mut pool_empty_since: Option<Duration> = None;
    let mut pending = Pending {
        pe_id: 0,
        first: 0,
        count: 0,
        frames: Vec::new(),
        cookie_position: None,
    };
    loop {
        let next = match session.ready_event() {
            Some(event) => event,
            None => {
                // Nothing more without waiting: what was gathered goes on now.
                if pending.flush(image, session_index, &events).is_err() {
                    return;
                }
                session.next_event().await
            }
        };
        if !matches!(
            next,
            SessionEvent::Data { .. } | SessionEvent::CookieStored { .. }
        ) && pending.flush(image, session_index, &events).is_err()
        {
            return;
        }
        let event = match next {
            SessionEvent::Finished => return,
            SessionEvent::Connected { pe, resumed } => ClientEvent::SessionConnected {
                image,
                session: session_index,
                pe: pe_info(&pe),
                resumed_at: resumed.then(|| progress.cookie_position.unwrap_or(0)),
            },
            SessionEvent::ConnectFailed { pe, detail } => {
                tracing::info!(session = session_index, pe = format_args!("{:#010x}", pe.id), %detail, "could not connect to pool element");
                continue;
            }
            SessionEvent::Refused { pe } => {
                tracing::debug!(
                    session = session_index,
                    pe = format_args!("{:#010x}", pe.id),
                    "pool element refused the session"
                );
                continue;
            }
            SessionEvent::FailoverStarted {
                pe,
                reason: kind,
                silent_for,
                ..
            } => ClientEvent::FailoverStarted {
                image,
                session: session_index,
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
                let resumed_at = if resumed {
                    progress.cookie_position.unwrap_or(0)
                } else {
                    0
                };
                ClientEvent::FailoverCompleted {
                    image,
                    session: session_index,
                    old_pe: old_pe.id,
                    new_pe: pe_info(&new_pe),
                    resumed_at,
                    recomputed_pixels: progress.received_end.saturating_sub(resumed_at),
                    took,
                }
            }
            SessionEvent::UnreachableReported { pe_id } => {
                ClientEvent::UnreachableReported { pe_id }
            }
            SessionEvent::PoolEmpty { retry_in, detail } => {
                if pool_empty_since.is_none() {
                    tracing::warn!(
                        session = session_index,
                        retry_ms = retry_in.as_millis() as u64,
                        detail = detail.as_deref().unwrap_or("no pool element registered"),
                        "pool empty, retrying"
                    );
                }
                pool_empty_since = Some(retry_in);
                ClientEvent::PoolEmpty {
                    image,
                    session: session_index,
                    retry_in,
                }
            }
            SessionEvent::CookieStored { pe, cookie } => match Cookie::decode(&cookie) {
                Ok(cookie) if cookie.parameter.encode() == request => {
                    let position = cookie.pixels_done();
                    progress.cookie_position = Some(position);
                    pending.cookie_position = Some(position);
                    continue;
                }
                other => {
                    let detail = match other {
                        Ok(_) => "cookie for another request".to_string(),
                        Err(error) => error.to_string(),
                    };
                    if pending.flush(image, session_index, &events).is_err() {
                        return;
                    }
                    tracing::warn!(session = session_index, pe = format_args!("{:#010x}", pe.id), %detail, "unusable cookie; restarting the tile");
                    progress.cookie_position = None;
                    session.forget_cookie();
                    session.fail(FailureKind::ProtocolError(detail));
                    continue;
                }
            },
            SessionEvent::Data { pe, frame } => {
                pool_empty_since = None;
                match accept_data(&tile, &frame.payload, &mut progress) {
                    Ok(Some((first, points))) => {
                        let count = points.len();
                        if !pending.frames.is_empty()
                            && !pending.continues(pe.id, first, count)
                            && pending.flush(image, session_index, &events).is_err()
                        {
                            return;
                        }
                        pending.push(pe.id, first, count, frame);
                        continue;
                    }
                    Ok(None) => {
                        // Finalizer with every pixel present.
                        let _ = pending.flush(image, session_index, &events);
                        session.finish();
                        let _ = events.send(TileReport::Event(ClientEvent::TileCompleted {
                            image,
                            session: session_index,
                        }));
                        return;
                    }
                    Err(detail) => {
                        if pending.flush(image, session_index, &events).is_err() {
                            return;
                        }
                        tracing::warn!(session = session_index, pe = format_args!("{:#010x}", pe.id), %detail, "bad data from pool element");
                        if detail.starts_with("finalizer") {
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

/// Checks an FGP message from the PE: `Some((first, points))` for pixel data, `None` for a
/// finalizer that completes the tile, or why the PE's message is unacceptable.
fn accept_data<'a>(
    tile: &Tile,
    payload: &'a [u8],
    progress: &mut Progress,
) -> Result<Option<(u64, DataView<'a>)>, String> {
    let data = match DataView::decode(payload) {
        Ok(data) => data,
        Err(_) if payload.first() == Some(&TYPE_PARAMETER) => {
            return Err("pool element sent a Parameter".into());
        }
        Err(error) => return Err(format!("malformed FGP message: {error}")),
    };
    if data.is_finalizer() {
        let missing = tile.pixel_count() - progress.received.covered();
        if missing == 0 {
            return Ok(None);
        }
        return Err(format!(
            "finalizer with {missing} of {} pixels missing",
            tile.pixel_count()
        ));
    }
    if data.start_x >= tile.width || data.start_y >= tile.height {
        return Err(format!(
            "data start ({}, {}) outside the {}x{} tile",
            data.start_x, data.start_y, tile.width, tile.height
        ));
    }
    let first = u64::from(data.start_y) * u64::from(tile.width) + u64::from(data.start_x);
    let end = first + data.len() as u64;
    if end > tile.pixel_count() {
        return Err(format!(
            "{} points from ({}, {}) run past the tile's end",
            data.len(),
            data.start_x,
            data.start_y
        ));
    }
    progress.received.insert(first..end);
    progress.received_end = progress.received_end.max(end);
    Ok(Some((first, data)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fractal_protocol::message::{AlgorithmId, Data, Parameter};

    fn tile() -> Tile {
        let parameter = Parameter {
            width: 4,
            height: 2,
            max_iterations: 10,
            algorithm: AlgorithmId::MANDELBROT,
            c1_real: -2.0,
            c1_imag: 1.0,
            c2_real: 1.0,
            c2_imag: -1.0,
            n: 2.0,
        };
        fractal_protocol::tiling::split(&parameter, 1)[0]
    }

    fn bytes(data: Data) -> Vec<u8> {
        data.encode().expect("encodable")
    }

    /// What `accept_data` makes of `data`: the first pixel and the points, or the finalizer.
    fn accept(
        tile: &Tile,
        data: &[u8],
        progress: &mut Progress,
    ) -> Result<Option<(u64, Vec<u32>)>, String> {
        accept_data(tile, data, progress)
            .map(|got| got.map(|(first, view)| (first, view.points().collect())))
    }

    #[test]
    fn data_is_checked_and_the_finalizer_needs_every_pixel() {
        let tile = tile();
        let mut progress = Progress {
            received: Coverage::default(),
            received_end: 0,
            cookie_position: None,
        };
        let got = accept(&tile, &bytes(Data::new(1, 0, vec![1, 2, 3])), &mut progress);
        assert_eq!(got, Ok(Some((1, vec![1, 2, 3]))));
        assert_eq!(progress.received_end, 4);
        assert!(accept(&tile, &bytes(Data::finalizer()), &mut progress).is_err());
        assert!(accept(&tile, &bytes(Data::new(4, 0, vec![1])), &mut progress).is_err());
        assert!(accept(&tile, &bytes(Data::new(3, 1, vec![1, 2])), &mut progress).is_err());
        assert!(accept(&tile, &[2, 0], &mut progress).is_err());
        assert_eq!(
            accept(&tile, &tile.parameter.encode(), &mut progress),
            Err("pool element sent a Parameter".to_string())
        );
        // Overlap (a resume from an older cookie) is fine.
        let got = accept(&tile, &bytes(Data::new(0, 0, vec![0; 8])), &mut progress);
        assert_eq!(got.map(|d| d.map(|(first, _)| first)), Ok(Some(0)));
        assert_eq!(progress.received.covered(), 8);
        assert_eq!(
            accept(&tile, &bytes(Data::finalizer()), &mut progress),
            Ok(None)
        );
    }
}
