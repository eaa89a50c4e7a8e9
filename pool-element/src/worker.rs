//! Runs one [`Session`] on its own thread and streams its outputs to the async side through a
//! bounded channel (a slow PU slows the worker down instead of piling up memory).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::limiter::RateLimiter;
use crate::session::{Output, Session};

/// Iterations of one chunk without `--capacity`: a few milliseconds of work, so that timers
/// (Data every 250 ms, cookies) and shutdown requests are noticed promptly.
const CHUNK_ITERATIONS: u64 = 4_000_000;
/// Iterations of one chunk under `--capacity`, in seconds of capacity: keeps the rate smooth.
const CAPACITY_CHUNK_SECONDS: f64 = 0.02;
/// Longest single sleep, so that stop requests are noticed.
const MAX_SLEEP: Duration = Duration::from_millis(50);

/// Requests from the async side to a worker.
#[derive(Debug, Default)]
pub struct WorkerControl {
    stop: AtomicBool,
    cancel: AtomicBool,
}

impl WorkerControl {
    /// Finish with the buffered Data and a final cookie (PE shutdown).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Stop at once, sending nothing more (the PU went away).
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Release);
    }
}

/// Spawns the worker thread for `session`.
pub fn spawn(
    session: Session,
    control: Arc<WorkerControl>,
    limiter: Option<Arc<RateLimiter>>,
    outputs: mpsc::Sender<Output>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("fgp-session".into())
        .spawn(move || run(session, &control, limiter.as_deref(), &outputs))
}

fn run(
    mut session: Session,
    control: &WorkerControl,
    limiter: Option<&RateLimiter>,
    outputs: &mpsc::Sender<Output>,
) {
    let chunk_iterations = match limiter {
        Some(limiter) => (limiter.rate() * CAPACITY_CHUNK_SECONDS) as u64,
        None => CHUNK_ITERATIONS,
    };
    let chunk = session.chunk_for(chunk_iterations);
    let mut out = Vec::new();
    let mut resume_at = Instant::now();
    loop {
        if control.cancel.load(Ordering::Acquire) {
            return;
        }
        let now = Instant::now();
        if control.stop.load(Ordering::Acquire) {
            session.shutdown(now, &mut out);
        } else {
            session.on_timer(now, &mut out);
            if now >= resume_at && !session.is_done() {
                let iterations = session.compute(chunk, now, &mut out);
                if let Some(limiter) = limiter {
                    resume_at = now + limiter.charge(iterations, now);
                }
            }
        }
        for output in out.drain(..) {
            if outputs.blocking_send(output).is_err() {
                return;
            }
        }
        if session.is_done() {
            return;
        }
        let now = Instant::now();
        if resume_at > now {
            let until = resume_at.min(session.next_deadline()).min(now + MAX_SLEEP);
            std::thread::sleep(until.saturating_duration_since(now));
        }
    }
}
