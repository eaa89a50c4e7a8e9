//! Runs one [`Session`] on its own thread and streams its outputs to the async side through a
//! bounded channel (a slow PU slows the worker down instead of piling up memory).
//!
//! Outputs travel in batches of a few milliseconds of computation: one hand-over (a thread
//! wake-up on each side) per batch instead of one per 324-pixel Data message, which on a
//! 2-core machine otherwise costs as much CPU as a third of the computation itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::limiter::RateLimiter;
use crate::session::{Output, Session};

/// Iterations of one batch without `--capacity`: a few milliseconds of work, so that timers
/// (Data every 250 ms, cookies) and shutdown requests are noticed promptly.
const CHUNK_ITERATIONS: u64 = 16_000_000;
/// Longest computation of one batch (cheap pixels make many Data messages per iteration).
const BATCH_TIME: Duration = Duration::from_millis(10);
/// Iterations of one chunk under `--capacity`, in seconds of capacity: keeps the rate smooth.
const CAPACITY_CHUNK_SECONDS: f64 = 0.02;
/// Nice value of the computing threads: above the protocol threads' 0, so that the runtime
/// (session starts, Data forwarding, keep-alives) and a pool user on the same machine get a core
/// as soon as they have work instead of waiting behind a crowd of computing threads.
const WORKER_NICE: libc::c_int = 5;
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
    outputs: mpsc::Sender<Vec<Output>>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("fgp-session".into())
        .spawn(move || {
            lower_priority();
            run(session, &control, limiter.as_deref(), &outputs)
        })
}

/// Gives the calling thread [`WORKER_NICE`] (best effort: a failure only loses the priority).
fn lower_priority() {
    // SAFETY: setpriority only reads its integer arguments. On Linux the nice value is a
    // per-thread attribute and `who = 0` names the calling thread.
    let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, WORKER_NICE) };
    if result != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower the worker's priority");
    }
}

fn run(
    mut session: Session,
    control: &WorkerControl,
    limiter: Option<&RateLimiter>,
    outputs: &mpsc::Sender<Vec<Output>>,
) {
    let chunk_iterations = match limiter {
        Some(limiter) => (limiter.rate() * CAPACITY_CHUNK_SECONDS) as u64,
        None => CHUNK_ITERATIONS,
    };
    let chunk = session.chunk_for(chunk_iterations);
    let mut resume_at = Instant::now();
    loop {
        if control.cancel.load(Ordering::Acquire) {
            return;
        }
        let mut out = Vec::new();
        let now = Instant::now();
        if control.stop.load(Ordering::Acquire) {
            session.shutdown(now, &mut out);
        } else {
            session.on_timer(now, &mut out);
            if now >= resume_at && !session.is_done() {
                match limiter {
                    Some(limiter) => {
                        let iterations = session.compute(chunk, now, &mut out);
                        resume_at = now + limiter.charge(iterations, now);
                    }
                    None => compute_batch(&mut session, chunk, now, &mut out),
                }
            }
        }
        if !out.is_empty() && outputs.blocking_send(out).is_err() {
            return;
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

/// Computes `chunk`-pixel pieces from `started` until about [`CHUNK_ITERATIONS`] iterations or
/// [`BATCH_TIME`] are spent or the session is done, with the session's timers kept.
fn compute_batch(session: &mut Session, chunk: usize, started: Instant, out: &mut Vec<Output>) {
    let mut iterations = 0;
    let mut now = started;
    loop {
        iterations += session.compute(chunk, now, out);
        if session.is_done() || iterations >= CHUNK_ITERATIONS {
            return;
        }
        now = Instant::now();
        if now.saturating_duration_since(started) >= BATCH_TIME {
            return;
        }
        session.on_timer(now, out);
    }
}
