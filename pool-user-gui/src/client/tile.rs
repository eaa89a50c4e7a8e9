//! One tile = one RSerPool session: FGP over a [`Session`], with checks of what the PE sends.

use std::time::Duration;

use fractal_protocol::cookie::Cookie;
use fractal_protocol::message::{Data, Message, PPID_FGP};
use fractal_protocol::tiling::Tile;
use rserpool::pu::{FailureKind, PeCandidate, PoolUser, SessionEvent};
use rserpool::transport::Frame;
use rserpool::wire::PoolHandle;
use tokio::sync::mpsc::UnboundedSender;

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

/// What a tile's session knows about its progress.
struct Progress {
    /// Pixels of the tile received at least once.
    filled: Vec<bool>,
    missing: u64,
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
    events: UnboundedSender<ClientEvent>,
) {
    let session_index = tile.session;
    let first = Frame::new(PPID_FGP, tile.parameter.encode().to_vec());
    let mut session = pool_user.session(pool, first);
    let pixels = tile.pixel_count();
    let mut progress = Progress {
        filled: vec![false; usize::try_from(pixels).unwrap_or(0)],
        missing: pixels,
        received_end: 0,
        cookie_position: None,
    };
    let mut pool_empty_since: Option<Duration> = None;
    loop {
        let event = match session.next_event().await {
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
                Ok(cookie) if cookie.parameter.bitwise_eq(&tile.parameter) => {
                    let position = cookie.pixels_done();
                    progress.cookie_position = Some(position);
                    ClientEvent::CookieStored {
                        image,
                        session: session_index,
                        position,
                    }
                }
                other => {
                    let detail = match other {
                        Ok(_) => "cookie for another request".to_string(),
                        Err(error) => error.to_string(),
                    };
                    tracing::warn!(session = session_index, pe = format_args!("{:#010x}", pe.id), %detail, "unusable cookie; restarting the tile");
                    progress.cookie_position = None;
                    session.forget_cookie();
                    session.fail(FailureKind::ProtocolError(detail));
                    continue;
                }
            },
            SessionEvent::Data { pe, frame } => {
                pool_empty_since = None;
                match accept_data(&tile, &frame, &mut progress) {
                    Ok(Some((first, iterations))) => ClientEvent::TileData {
                        image,
                        session: session_index,
                        pe_id: pe.id,
                        first,
                        iterations,
                    },
                    Ok(None) => {
                        // Finalizer with every pixel present.
                        session.finish();
                        let _ = events.send(ClientEvent::TileCompleted {
                            image,
                            session: session_index,
                        });
                        return;
                    }
                    Err(detail) => {
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
        if events.send(event).is_err() {
            return;
        }
    }
}

/// Checks a frame from the PE: `Some((first, points))` for pixel data, `None` for a finalizer
/// that completes the tile, or why the PE's message is unacceptable.
fn accept_data(
    tile: &Tile,
    frame: &Frame,
    progress: &mut Progress,
) -> Result<Option<(u64, Vec<u32>)>, String> {
    let data: Data = match Message::decode(&frame.payload) {
        Ok(Message::Data(data)) => data,
        Ok(Message::Parameter(_)) => return Err("pool element sent a Parameter".into()),
        Err(error) => return Err(format!("malformed FGP message: {error}")),
    };
    if data.is_finalizer() {
        if progress.missing == 0 {
            return Ok(None);
        }
        return Err(format!(
            "finalizer with {} of {} pixels missing",
            progress.missing,
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
    let end = first + data.points.len() as u64;
    if end > tile.pixel_count() {
        return Err(format!(
            "{} points from ({}, {}) run past the tile's end",
            data.points.len(),
            data.start_x,
            data.start_y
        ));
    }
    // Within the tile (checked above), and `filled` has one entry per pixel of the tile.
    if let Some(slots) = progress.filled.get_mut(first as usize..end as usize) {
        let newly = slots.iter().filter(|&&filled| !filled).count();
        slots.fill(true);
        progress.missing -= newly as u64;
    }
    progress.received_end = progress.received_end.max(end);
    Ok(Some((first, data.points)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fractal_protocol::message::{AlgorithmId, Parameter};

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

    fn frame(data: Data) -> Frame {
        Frame::new(PPID_FGP, data.encode().expect("encodable"))
    }

    #[test]
    fn data_is_checked_and_the_finalizer_needs_every_pixel() {
        let tile = tile();
        let mut progress = Progress {
            filled: vec![false; 8],
            missing: 8,
            received_end: 0,
            cookie_position: None,
        };
        let got = accept_data(&tile, &frame(Data::new(1, 0, vec![1, 2, 3])), &mut progress);
        assert_eq!(got, Ok(Some((1, vec![1, 2, 3]))));
        assert_eq!(progress.received_end, 4);
        assert!(accept_data(&tile, &frame(Data::finalizer()), &mut progress).is_err());
        assert!(accept_data(&tile, &frame(Data::new(4, 0, vec![1])), &mut progress).is_err());
        assert!(accept_data(&tile, &frame(Data::new(3, 1, vec![1, 2])), &mut progress).is_err());
        assert!(accept_data(&tile, &Frame::new(PPID_FGP, vec![2, 0]), &mut progress).is_err());
        // Overlap (a resume from an older cookie) is fine.
        let got = accept_data(&tile, &frame(Data::new(0, 0, vec![0; 8])), &mut progress);
        assert_eq!(got.map(|d| d.map(|(first, _)| first)), Ok(Some(0)));
        assert_eq!(progress.missing, 0);
        assert_eq!(
            accept_data(&tile, &frame(Data::finalizer()), &mut progress),
            Ok(None)
        );
    }
}
