//! `--demo-synthetic`: a stand-in client that computes the picture in this process and plays a
//! scripted failover, so the window can be looked at (and tested under Xvfb) without a pool.
//! Four simulated PEs of different speeds; the second one "dies" once the first picture is a
//! third done, and its sessions resume on others from their last cookie.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use fractal_protocol::kernel::{KernelChoice, View};
use fractal_protocol::tiling;
use rserpool::wire::PeId;

use super::control::{ClientControl, EventSink, ImageRequest};
use crate::client::events::{
    ClientEvent, Failover, FailureReason, ImageStart, ImageStats, PeInfo, PoolEntry, TileRect,
};

/// Points per Data message, as FGP.
const POINTS_PER_MESSAGE: usize = 324;
/// A cookie every this many Data messages (rsplib's default).
const MESSAGES_PER_COOKIE: u64 = 10;
/// Simulation step.
const TICK: Duration = Duration::from_millis(20);
/// Simulated PEs: identifier and iterations per second.
const PES: [(PeId, u64); 4] = [
    (PeId(0x1a2b_3c4d), 40_000_000),
    (PeId(0x5e6f_7081), 20_000_000),
    (PeId(0x9203_a4b5), 10_000_000),
    (PeId(0xc6d7_e8f9), 5_000_000),
];
/// The PE that fails in the first picture, and when (fraction of the picture done).
const VICTIM: usize = 1;
const FAIL_AT: f64 = 0.35;

/// The synthetic client.
pub struct SyntheticClient {
    sink: EventSink,
    generation: Arc<AtomicU64>,
    images: u64,
}

impl SyntheticClient {
    pub fn new(sink: EventSink) -> SyntheticClient {
        SyntheticClient {
            sink,
            generation: Arc::new(AtomicU64::new(0)),
            images: 0,
        }
    }
}

impl ClientControl for SyntheticClient {
    fn start_image(&mut self, request: ImageRequest) {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.images += 1;
        let image = self.images;
        let sink = self.sink.clone();
        let current = Arc::clone(&self.generation);
        thread::spawn(move || {
            simulate(image, &request, &sink, || {
                current.load(Ordering::SeqCst) == generation
            })
        });
    }

    fn cancel(&mut self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

fn pe_info(index: usize) -> PeInfo {
    PeInfo {
        id: PES[index].0,
        address: SocketAddr::from((Ipv4Addr::LOCALHOST, 40_000 + index as u16)),
    }
}

struct Session {
    tile: TileRect,
    view: View,
    pe: usize,
    /// Next pixel to compute.
    position: u64,
    /// Last cookie position.
    cookie: u64,
    messages: u64,
    failovers: u64,
    done: bool,
}

fn snapshot(alive: &[bool], serving: &[usize]) -> ClientEvent {
    let entries = PES
        .iter()
        .enumerate()
        .filter(|(index, _)| alive[*index])
        .map(|(index, _)| PoolEntry {
            id: PES[index].0,
            address: pe_info(index).address,
            policy: "LeastUsed".to_owned(),
            load: Some((serving[index] as f64 / 4.0).min(1.0)),
            capacity: Some(PES[index].1 as f64),
            home_registrar: 1,
        })
        .collect();
    ClientEvent::PoolSnapshot {
        registrar: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 3863))),
        entries,
    }
}

fn simulate(image: u64, request: &ImageRequest, sink: &EventSink, current: impl Fn() -> bool) {
    let view = request
        .preset
        .parameter_keep_aspect(request.width, request.height);
    let tiles = tiling::split(&view, request.sessions);
    let started = Instant::now();
    sink.send(ClientEvent::ImageStarted(ImageStart {
        image,
        width: request.width,
        height: request.height,
        max_iterations: view.max_iterations,
        preset: request.preset.name.clone(),
        sessions: request.sessions,
        tiles: tiles
            .iter()
            .map(|tile| TileRect {
                index: tile.session,
                x: tile.x,
                y: tile.y,
                width: tile.width,
                height: tile.height,
            })
            .collect(),
    }));
    let mut alive = [true; PES.len()];
    // The scripted failure happens in the first image only.
    let mut victim_pending = image == 1;
    let mut sessions: Vec<Session> = tiles
        .iter()
        .map(|tile| Session {
            tile: TileRect {
                index: tile.session,
                x: tile.x,
                y: tile.y,
                width: tile.width,
                height: tile.height,
            },
            view: View::new(&tile.parameter, KernelChoice::Fast),
            pe: tile.session % PES.len(),
            position: 0,
            cookie: 0,
            messages: 0,
            failovers: 0,
            done: false,
        })
        .collect();
    for session in &sessions {
        sink.send(ClientEvent::SessionConnected {
            image,
            tile: session.tile.index,
            pe: pe_info(session.pe),
            resumed_at: None,
        });
    }
    let total: u64 = tiles.iter().map(|tile| tile.pixel_count()).sum();
    let mut stats = ImageStats {
        width: request.width,
        height: request.height,
        sessions: tiles.len(),
        ..ImageStats::default()
    };
    let mut last_snapshot = Instant::now() - Duration::from_secs(1);
    let mut buffer = vec![0u32; POINTS_PER_MESSAGE];
    while current() {
        let tick_start = Instant::now();
        let mut serving = [0usize; PES.len()];
        for session in sessions.iter().filter(|session| !session.done) {
            serving[session.pe] += 1;
        }
        if last_snapshot.elapsed() >= Duration::from_secs(1) {
            last_snapshot = Instant::now();
            sink.send(snapshot(&alive, &serving));
        }
        let done_pixels: u64 = sessions.iter().map(|session| session.position).sum();
        if victim_pending && done_pixels as f64 >= total as f64 * FAIL_AT {
            victim_pending = false;
            alive[VICTIM] = false;
            fail_over(image, &mut sessions, &alive, sink, &mut stats);
        }
        for (index, &(_, rate)) in PES.iter().enumerate() {
            if !alive[index] || serving[index] == 0 {
                continue;
            }
            let share = (rate as f64 * TICK.as_secs_f64()) as u64 / serving[index] as u64;
            for session in sessions
                .iter_mut()
                .filter(|session| session.pe == index && !session.done)
            {
                let mut budget = share;
                while budget > 0 && !session.done {
                    let tile_pixels =
                        u64::from(session.tile.width) * u64::from(session.tile.height);
                    let count = (tile_pixels - session.position).min(POINTS_PER_MESSAGE as u64);
                    let width = u64::from(session.tile.width);
                    let start = (
                        (session.position % width) as u32,
                        (session.position / width) as u32,
                    );
                    let out = &mut buffer[..count as usize];
                    let iterations = session.view.compute(start, out).unwrap_or(0);
                    budget = budget.saturating_sub(iterations.max(count));
                    stats.iterations += iterations;
                    sink.send(ClientEvent::TileData {
                        image,
                        tile: session.tile.index,
                        pe_id: PES[index].0,
                        first: session.position,
                        iterations: out.to_vec(),
                    });
                    session.position += count;
                    session.messages += 1;
                    if session.messages.is_multiple_of(MESSAGES_PER_COOKIE) {
                        session.cookie = session.position;
                        sink.send(ClientEvent::CookieStored {
                            image,
                            tile: session.tile.index,
                            position: session.position,
                        });
                    }
                    if session.position >= tile_pixels {
                        session.done = true;
                        sink.send(ClientEvent::TileCompleted {
                            image,
                            tile: session.tile.index,
                        });
                    }
                }
            }
        }
        if sessions.iter().all(|session| session.done) {
            let wall = started.elapsed().as_secs_f64();
            stats.wall_time_s = wall;
            stats.pixels = total;
            stats.pixels_per_s = total as f64 / wall.max(1e-9);
            stats.iterations_per_s = stats.iterations as f64 / wall.max(1e-9);
            stats.pes_used = alive.len();
            sink.send(ClientEvent::ImageCompleted { image, stats });
            return;
        }
        thread::sleep(TICK.saturating_sub(tick_start.elapsed()));
    }
}

/// The victim died: its sessions detect it, report it and resume elsewhere from their cookie.
fn fail_over(
    image: u64,
    sessions: &mut [Session],
    alive: &[bool],
    sink: &EventSink,
    stats: &mut ImageStats,
) {
    let survivors: Vec<usize> = (0..PES.len()).filter(|&index| alive[index]).collect();
    let mut reported = false;
    for (next, session) in sessions
        .iter_mut()
        .filter(|session| !alive[session.pe] && !session.done)
        .enumerate()
    {
        let old = session.pe;
        sink.send(ClientEvent::FailoverStarted {
            image,
            tile: session.tile.index,
            pe: pe_info(old),
            reason: FailureReason::ConnectionLost("connection reset by peer".to_owned()),
            silent_for: Duration::from_millis(40),
        });
        if !reported {
            reported = true;
            sink.send(ClientEvent::UnreachableReported { pe_id: PES[old].0 });
        }
        let Some(&new) = survivors.get(next % survivors.len().max(1)) else {
            return;
        };
        let recomputed = session.position - session.cookie;
        session.position = session.cookie;
        session.pe = new;
        session.failovers += 1;
        stats.failovers += 1;
        stats.recomputed_pixels += recomputed;
        sink.send(ClientEvent::FailoverCompleted(Failover {
            image,
            tile: session.tile.index,
            old_pe: PES[old].0,
            new_pe: pe_info(new),
            resumed_at: session.cookie,
            recomputed_pixels: recomputed,
            took: Duration::from_millis(3),
        }));
    }
}
