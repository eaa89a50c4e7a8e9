//! The computing threads of a pool element: one per core, shared by all sessions.
//!
//! Each thread takes the next session with work (round robin), claims a [`Piece`](crate::session::Piece) of it,
//! computes the piece outside any lock and hands the values back; the session puts pieces back
//! in picture order ([`Session::complete`]). So one session can use every core, and a session
//! that ends early leaves no core idle while another still has work: with a thread per session,
//! the operating system's uneven sharing of cores between them left a core idle for a third of
//! a picture's end.
//!
//! Outputs go to each session's async side through a bounded channel, gathered to about 256 KiB
//! of Data per hand-over (or 25 ms; the first Data at once), which its protocol thread sends as
//! one write. No thread blocks on a channel: outputs without room wait, in order, in the
//! session's backlog, and the session claims no new piece meanwhile, so a slow pool user slows
//! only its own session. Near a session's end its rest is claimed in shrinking pieces.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fractal_protocol::message::{MAX_DATA_LEN, MAX_POINTS_PER_DATA};
use rserpool::transport::frame::HEADER_LEN;
use tokio::sync::mpsc;

use crate::handover::Handover;
use crate::limiter::RateLimiter;
use crate::session::{Output, Session};

/// Iterations of one piece without `--capacity`: a few milliseconds of work, so that timers
/// (Data every 250 ms, cookies) and stop requests are noticed promptly.
const PIECE_ITERATIONS: u64 = 4_000_000;
/// Most pixels of one piece (12 Data messages): cheap pixels still hand over regularly.
const PIECE_MAX_PIXELS: usize = 12 * MAX_POINTS_PER_DATA;
/// Iterations of one piece under `--capacity`, in seconds of capacity: keeps the rate smooth.
const CAPACITY_PIECE_SECONDS: f64 = 0.02;
/// Longest single sleep or wait, so that stop requests and timers are noticed.
const MAX_SLEEP: Duration = Duration::from_millis(20);
/// Data messages a session's outputs are gathered to before they go to its async side (about
/// 256 KiB). Each hand-over wakes the protocol thread, which sends them in one write and so
/// wakes the pool user: fewer, larger hand-overs mean fewer wake-ups and context switches for
/// the computing threads. A cookie follows every few Data messages within a hand-over, so a
/// crash loses no more work than with smaller ones. To retune, compare the CPU split that
/// `pool-bench --kills 0` prints (PE protocol threads, pool user) at other values.
const FORWARD_DATA_MESSAGES: usize = 192;
/// Room for the frames of one hand-over: its Data messages and their cookies.
const HANDOVER_BYTES: usize = (FORWARD_DATA_MESSAGES + 8) * (HEADER_LEN + MAX_DATA_LEN);
/// Longest time outputs are gathered, so that slow sessions still stream smoothly.
const FORWARD_MAX_DELAY: Duration = Duration::from_millis(25);
/// Smallest piece a session's last pixels are split into (one Data message).
const MIN_TAIL_PIECE_PIXELS: usize = MAX_POINTS_PER_DATA;
/// Nice value of the computing threads: above the protocol threads' 0, so that the runtime
/// (session starts, Data forwarding, keep-alives) and a pool user on the same machine get a core
/// as soon as they have work instead of waiting behind the computation.
const WORKER_NICE: libc::c_int = 5;

/// Requests from the async side to a session's computation.
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

/// One session in the pool.
struct Job {
    state: Mutex<JobState>,
    control: Arc<WorkerControl>,
    outputs: mpsc::Sender<Handover>,
    /// Pixels per piece.
    piece_pixels: usize,
    /// Computing threads of the pool.
    threads: usize,
    /// Nothing more to do (done and sent, cancelled, or its receiver gone).
    finished: AtomicBool,
    /// Pixels remain to be claimed (kept under the lock).
    unclaimed: AtomicBool,
    /// Outputs wait for room in the channel (kept under the lock).
    backlogged: AtomicBool,
}

/// A session, the outputs gathered for the next hand-over, and those its channel had no room
/// for yet.
struct JobState {
    session: Session,
    /// Outputs not handed over yet, encoded in order.
    gathered: Handover,
    /// When the first of them was gathered.
    gathered_since: Option<Instant>,
    /// Whether any Data was handed over yet: the first goes at once (a resumed session's first
    /// Data ends the pool user's failover, a new one's shows the picture starting).
    data_handed_over: bool,
    /// Batches in order, sent before anything newer. Bounded: while it is not empty, no new
    /// piece is claimed, so it holds at most one batch per computing thread.
    backlog: VecDeque<Handover>,
}

impl Job {
    fn lock(&self) -> MutexGuard<'_, JobState> {
        // A poisoned lock means a computing thread panicked; the session's state is still whole.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a thread has something to do for this job now.
    fn wants_a_thread(&self) -> bool {
        if self.finished.load(Ordering::Acquire) {
            return false;
        }
        let room = self.outputs.capacity() > 0;
        if self.backlogged.load(Ordering::Acquire) {
            return room || self.control.cancel.load(Ordering::Acquire);
        }
        let requested = self.control.stop.load(Ordering::Acquire)
            || self.control.cancel.load(Ordering::Acquire);
        requested || (self.unclaimed.load(Ordering::Acquire) && room)
    }

    /// Gathers `out`; hands the gathered outputs over once there are enough, they are old enough
    /// or the session ends. Sends what waits as far as the channel has room, without blocking
    /// (under the lock, so that batches keep their order), and records the session's state.
    fn publish(&self, state: &mut JobState, out: Vec<Output>, now: Instant) {
        if !out.is_empty() {
            state.gathered_since.get_or_insert(now);
            for output in out {
                state.gathered.push(output);
            }
        }
        let gathered_data = state.gathered.data_frames();
        let due = gathered_data >= FORWARD_DATA_MESSAGES
            || (!state.data_handed_over && gathered_data > 0)
            || state.session.is_done()
            || self.control.stop.load(Ordering::Acquire)
            || state
                .gathered_since
                .is_some_and(|since| now.saturating_duration_since(since) >= FORWARD_MAX_DELAY);
        if due && !state.gathered.is_empty() {
            // Room for the next hand-over, unless the session has nothing more to say.
            let next = if state.session.is_done() {
                Handover::default()
            } else {
                Handover::with_capacity(HANDOVER_BYTES)
            };
            let batch = std::mem::replace(&mut state.gathered, next);
            state.backlog.push_back(batch);
            state.data_handed_over |= gathered_data > 0;
            state.gathered_since = None;
        }
        let mut gone = false;
        while let Some(batch) = state.backlog.pop_front() {
            match self.outputs.try_send(batch) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(batch)) => {
                    state.backlog.push_front(batch);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    state.backlog.clear();
                    gone = true;
                }
            }
        }
        self.backlogged
            .store(!state.backlog.is_empty(), Ordering::Release);
        self.unclaimed
            .store(state.session.has_unclaimed(), Ordering::Release);
        if gone
            || (state.session.is_done() && state.backlog.is_empty() && state.gathered.is_empty())
        {
            self.finished.store(true, Ordering::Release);
        }
    }

    /// One turn: waiting outputs, timers, stop requests, and at most one piece. Returns the
    /// iterations computed.
    fn turn(&self) -> u64 {
        let piece = {
            let mut state = self.lock();
            if self.control.cancel.load(Ordering::Acquire) {
                self.finished.store(true, Ordering::Release);
                return 0;
            }
            let mut out = Vec::new();
            let now = Instant::now();
            if self.control.stop.load(Ordering::Acquire) {
                state.session.shutdown(now, &mut out);
            } else {
                state.session.handle_timeout(now, &mut out);
            }
            self.publish(&mut state, out, now);
            if !state.backlog.is_empty() {
                // The pool user is behind: compute no further ahead of it.
                return 0;
            }
            // Near its end a session's rest is shared out in smaller pieces, so that all threads
            // finish at about the same time instead of one computing a whole last piece alone.
            let unclaimed = usize::try_from(state.session.unclaimed_pixels()).unwrap_or(usize::MAX);
            let tail_share = (unclaimed / (2 * self.threads)).max(MIN_TAIL_PIECE_PIXELS);
            let piece = state.session.claim(self.piece_pixels.min(tail_share));
            self.unclaimed
                .store(state.session.has_unclaimed(), Ordering::Release);
            piece
        };
        let Some(piece) = piece else { return 0 };
        let (values, iterations) = piece.compute();
        let mut state = self.lock();
        if !self.finished.load(Ordering::Acquire) && !self.control.cancel.load(Ordering::Acquire) {
            let mut out = Vec::new();
            let now = Instant::now();
            state.session.complete(&piece, values, now, &mut out);
            state.session.handle_timeout(now, &mut out);
            self.publish(&mut state, out, now);
        }
        iterations
    }
}

/// What the pool's threads share.
struct PoolShared {
    jobs: Mutex<Vec<Arc<Job>>>,
    /// Signalled when a job arrives, when a channel has room again and when the pool closes.
    arrived: Condvar,
    /// Round-robin position among the jobs.
    cursor: Mutex<usize>,
    limiter: Option<Arc<RateLimiter>>,
    closed: AtomicBool,
    /// Number of computing threads.
    threads: usize,
}

impl PoolShared {
    fn jobs(&self) -> MutexGuard<'_, Vec<Arc<Job>>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next job that wants a thread, round robin; waits (bounded) when none does. `None`
    /// once the pool is closed.
    fn next_job(&self) -> Option<Arc<Job>> {
        let mut jobs = self.jobs();
        loop {
            if self.closed.load(Ordering::Acquire) {
                return None;
            }
            jobs.retain(|job| !job.finished.load(Ordering::Acquire));
            if !jobs.is_empty() {
                let mut cursor = self.cursor.lock().unwrap_or_else(|e| e.into_inner());
                for offset in 0..jobs.len() {
                    let index = (*cursor + offset) % jobs.len();
                    if jobs[index].wants_a_thread() {
                        *cursor = index + 1;
                        return Some(jobs[index].clone());
                    }
                }
            }
            // Nothing to claim: wait for a new job, or re-check stop requests and full channels
            // soon.
            jobs = match self.arrived.wait_timeout(jobs, MAX_SLEEP) {
                Ok((jobs, _)) => jobs,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }
}

/// The pool element's computing threads. Dropping it stops them after their current piece.
pub struct ComputePool {
    shared: Arc<PoolShared>,
}

impl ComputePool {
    /// Starts `threads` computing threads (at least 1); `limiter` caps their total rate. With
    /// one thread per core this process may use (the default), each thread stays on its own
    /// core.
    pub fn new(threads: usize, limiter: Option<Arc<RateLimiter>>) -> std::io::Result<ComputePool> {
        let threads = threads.max(1);
        let cores = allowed_cores();
        let home_cores = (cores.len() == threads && threads > 1).then_some(cores);
        let shared = Arc::new(PoolShared {
            jobs: Mutex::new(Vec::new()),
            arrived: Condvar::new(),
            cursor: Mutex::new(0),
            limiter,
            closed: AtomicBool::new(false),
            threads,
        });
        for index in 0..threads {
            let shared = shared.clone();
            let home = home_cores.as_ref().map(|cores| cores[index]);
            std::thread::Builder::new()
                .name(format!("fgp-compute-{index}"))
                .spawn(move || {
                    if let Some(core) = home {
                        stay_on_core(core);
                    }
                    run_thread(&shared)
                })?;
        }
        Ok(ComputePool { shared })
    }

    /// Computes `session` until it is done, stopped or cancelled through `control`, sending its
    /// outputs to `outputs`.
    pub fn submit(
        &self,
        session: Session,
        control: Arc<WorkerControl>,
        outputs: mpsc::Sender<Handover>,
    ) {
        let piece_pixels = match &self.shared.limiter {
            Some(limiter) => session.pixels_for(
                (limiter.rate() * CAPACITY_PIECE_SECONDS) as u64,
                PIECE_MAX_PIXELS,
            ),
            None => session.pixels_for(PIECE_ITERATIONS, PIECE_MAX_PIXELS),
        };
        self.submit_in_pieces(session, control, outputs, piece_pixels);
    }

    /// [`ComputePool::submit`] with pieces of `piece_pixels` pixels.
    fn submit_in_pieces(
        &self,
        session: Session,
        control: Arc<WorkerControl>,
        outputs: mpsc::Sender<Handover>,
        piece_pixels: usize,
    ) {
        let job = Arc::new(Job {
            unclaimed: AtomicBool::new(session.has_unclaimed()),
            finished: AtomicBool::new(session.is_done()),
            backlogged: AtomicBool::new(false),
            state: Mutex::new(JobState {
                session,
                gathered: Handover::with_capacity(HANDOVER_BYTES),
                gathered_since: None,
                data_handed_over: false,
                backlog: VecDeque::new(),
            }),
            control,
            outputs,
            piece_pixels,
            threads: self.shared.threads,
        });
        self.shared.jobs().push(job);
        self.shared.arrived.notify_all();
    }

    /// Tells the threads that a session's channel has room again (its async side took a batch),
    /// so that a thread waiting for room goes on at once.
    pub fn room_made(&self) {
        self.shared.arrived.notify_all();
    }
}

impl Drop for ComputePool {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.arrived.notify_all();
    }
}

fn run_thread(shared: &PoolShared) {
    lower_priority();
    while let Some(job) = shared.next_job() {
        let iterations = job.turn();
        if let Some(limiter) = &shared.limiter {
            let now = Instant::now();
            let resume_at = now + limiter.charge(iterations, now);
            // Sleep in slices so that stop requests are noticed.
            while !job.finished.load(Ordering::Acquire) && !shared.closed.load(Ordering::Acquire) {
                let now = Instant::now();
                if now >= resume_at {
                    break;
                }
                std::thread::sleep(resume_at.saturating_duration_since(now).min(MAX_SLEEP));
                if job.control.stop.load(Ordering::Acquire) {
                    break;
                }
            }
        }
    }
}

/// The cores this process may run on (empty if that cannot be read).
fn allowed_cores() -> Vec<usize> {
    // Thread id 0 is the calling thread, whose set a new thread inherits.
    cores_of_thread(0).unwrap_or_default()
}

/// The cores thread `tid` may run on, `None` if that cannot be read.
fn cores_of_thread(tid: libc::pid_t) -> Option<Vec<usize>> {
    // SAFETY: sched_getaffinity writes only into the set it is given, of the size it is told;
    // CPU_ISSET reads it, for indices below CPU_SETSIZE.
    unsafe {
        let mut set = std::mem::zeroed::<libc::cpu_set_t>();
        if libc::sched_getaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        Some(
            (0..libc::CPU_SETSIZE as usize)
                .filter(|&core| libc::CPU_ISSET(core, &set))
                .collect(),
        )
    }
}

/// Keeps the calling thread on `core` (best effort). The computing threads wake together when
/// a session arrives: on a busy machine Linux may queue them all on the waker's core and leave
/// another core idle until its next balancing tick, a noticeable share of a short picture
/// (`pool-bench --kills 0` shows it as machine idle time), where one thread per core needs no
/// balancing at all.
fn stay_on_core(core: usize) {
    // SAFETY: as in `allowed_cores`; sched_setaffinity only reads the set. Thread id 0 is the
    // calling thread.
    let result = unsafe {
        let mut set = std::mem::zeroed::<libc::cpu_set_t>();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if result != 0 {
        tracing::debug!(core, error = %std::io::Error::last_os_error(), "cannot keep the worker on its core");
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handover::tests::frames_of;
    use crate::session::{SessionConfig, Start};
    use fractal_protocol::kernel::{self, KernelChoice, View};
    use fractal_protocol::message::{AlgorithmId, Data, PPID_FGP, Parameter};

    fn parameter() -> Parameter {
        Parameter {
            width: 97,
            height: 61,
            max_iterations: 200,
            algorithm: AlgorithmId::MANDELBROT,
            c1_real: -2.0,
            c1_imag: 1.2,
            c2_real: 0.8,
            c2_imag: -1.2,
            n: 2.0,
        }
    }

    /// Submits a session computing `parameter()` in pieces of `piece_pixels`; its outputs (the
    /// initial ones first) arrive on the returned receiver, which holds `room` batches.
    fn submit(pool: &ComputePool, piece_pixels: usize, room: usize) -> mpsc::Receiver<Handover> {
        let (session, initial) = Session::new(
            Start::Compute(parameter()),
            SessionConfig::default(),
            Instant::now(),
        );
        let (tx, rx) = mpsc::channel(room);
        tx.try_send(Handover::from(initial)).expect("room");
        pool.submit_in_pieces(
            session,
            Arc::new(WorkerControl::default()),
            tx,
            piece_pixels,
        );
        rx
    }

    /// The FGP Data messages of a hand-over, decoded from its frames.
    fn data_messages(handover: Handover) -> Vec<Data> {
        let (frames, _, _) = handover.into_parts();
        frames_of(&frames)
            .into_iter()
            .filter(|frame| frame.ppid == PPID_FGP)
            .map(|frame| Data::decode(&frame.payload).expect("FGP Data"))
            .collect()
    }

    /// Runs sessions through a pool and reassembles each picture from its Data messages.
    fn run_through_pool(threads: usize, sessions: usize, piece_pixels: usize) -> Vec<Vec<u32>> {
        let pool = ComputePool::new(threads, None).expect("threads");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let receivers: Vec<_> = (0..sessions)
            .map(|_| submit(&pool, piece_pixels, 4))
            .collect();
        receivers
            .into_iter()
            .map(|mut rx| {
                let param = parameter();
                let mut picture = vec![u32::MAX; (param.width * param.height) as usize];
                let mut position = 0usize;
                runtime.block_on(async {
                    while let Some(batch) = rx.recv().await {
                        for data in data_messages(batch) {
                            if !data.is_finalizer() {
                                let start = (data.start_y * param.width + data.start_x) as usize;
                                assert_eq!(start, position, "Data in picture order");
                                picture[start..start + data.points.len()]
                                    .copy_from_slice(&data.points);
                                position += data.points.len();
                            }
                        }
                    }
                });
                picture
            })
            .collect()
    }

    /// The cores each computing thread of this process may run on, by thread name.
    fn computing_threads_cores() -> Vec<(String, Vec<usize>)> {
        let mut threads = Vec::new();
        for task in std::fs::read_dir("/proc/self/task")
            .expect("tasks")
            .flatten()
        {
            let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            let Some(tid) = task
                .file_name()
                .to_str()
                .and_then(|t| t.parse::<i32>().ok())
            else {
                continue;
            };
            if !name.starts_with("fgp-compute-") {
                continue;
            }
            let Some(cores) = cores_of_thread(tid) else {
                continue;
            };
            threads.push((name.trim().to_string(), cores));
        }
        threads
    }

    /// With one thread per core each stays on its own core; with another count none is tied.
    #[test]
    fn one_thread_per_core_each_on_its_own_core() {
        let cores = allowed_cores();
        assert!(!cores.is_empty(), "this process may run somewhere");
        let pinned = ComputePool::new(cores.len(), None).expect("threads");
        let unpinned = ComputePool::new(cores.len() + 1, None).expect("threads");
        let deadline = Instant::now() + Duration::from_secs(10);
        // Threads tie themselves to their core, and name themselves, as they start.
        let extra = format!("fgp-compute-{}", cores.len());
        let threads = loop {
            let threads = computing_threads_cores();
            let settled = (0..cores.len()).all(|index| {
                threads.iter().any(|(name, on)| {
                    name == &format!("fgp-compute-{index}")
                        && (cores.len() == 1 || on == &[cores[index]])
                })
            }) && threads.iter().any(|(name, _)| name == &extra);
            if settled || Instant::now() > deadline {
                break threads;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        for (index, &core) in cores.iter().enumerate() {
            let name = format!("fgp-compute-{index}");
            let expected = if cores.len() > 1 {
                vec![core]
            } else {
                cores.clone()
            };
            assert!(
                threads.iter().any(|(n, on)| n == &name && on == &expected),
                "{name} on {expected:?}: {threads:?}"
            );
        }
        // The extra thread of the second pool is free to run anywhere.
        assert!(
            threads.iter().any(|(n, on)| n == &extra && on == &cores),
            "{extra} on every core: {threads:?}"
        );
        drop((pinned, unpinned));
    }

    #[test]
    fn the_first_data_is_handed_over_at_once_later_ones_gathered() {
        let pool = ComputePool::new(1, None).expect("threads");
        // One Data message per piece.
        let mut rx = submit(&pool, MAX_POINTS_PER_DATA, 64);
        let mut data_per_batch = Vec::new();
        while let Some(batch) = rx.blocking_recv() {
            let data = data_messages(batch)
                .iter()
                .filter(|data| !data.is_finalizer())
                .count();
            if data > 0 {
                data_per_batch.push(data);
            }
        }
        // 97 x 61 pixels: 19 Data messages in all.
        assert_eq!(data_per_batch.iter().sum::<usize>(), 19);
        assert_eq!(data_per_batch.first(), Some(&1), "{data_per_batch:?}");
        assert!(
            data_per_batch.len() < 19,
            "later Data gathered: {data_per_batch:?}"
        );
    }

    #[test]
    fn pooled_sessions_deliver_the_reference_picture_in_order() {
        let param = parameter();
        let view = View::new(&param, KernelChoice::Fast);
        let mut reference = vec![0; (param.width * param.height) as usize];
        view.compute((0, 0), &mut reference).expect("whole view");
        assert_eq!(reference, kernel::compute_image(&param));
        // Small pieces: several threads on one session complete them out of order; large ones:
        // each session's end is split into shrinking pieces.
        for (threads, sessions, piece_pixels) in [
            (1, 1, 5000),
            (3, 1, 7),
            (2, 5, 100),
            (4, 2, 1),
            (2, 2, 5000),
        ] {
            for picture in run_through_pool(threads, sessions, piece_pixels) {
                assert_eq!(
                    picture, reference,
                    "{threads} threads, {sessions} sessions, pieces of {piece_pixels}"
                );
            }
        }
    }
}
