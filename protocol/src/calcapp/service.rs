//! The CalcApp service of a pool element (sans-I/O): rsplib's `CalcAppServer` model.
//!
//! A PE has a capacity (calculations per second) shared equally by its running jobs
//! (processor sharing); a job is accepted at once or rejected when `max_jobs` run. While a
//! job runs, the PE sends it a cookie (its restart point) every `cookie_max_calculations`
//! calculations or `cookie_max_time`, whichever comes first, and checks that its pool user is
//! alive with CalcApp KeepAlives. Calculations are emulated by time: nothing is computed.
//!
//! Events go in with the current time (`handle_*`), [`ServiceOutput`]s come out of
//! [`CalcAppService::poll_output`], [`CalcAppService::poll_timeout`] says when to call
//! [`CalcAppService::handle_timeout`]. Sessions (one association each) are the driver's
//! numbers; each holds at most one job.
//!
//! Differences from rsplib, on purpose:
//! * A closed session's job is removed at once (rsplib keeps computing it until its keep-alive
//!   times out, wasting capacity on a pool user that is gone).
//! * A job restored from a cookie counts its restored calculations as already covered by a
//!   cookie (rsplib sends the same cookie straight back).
//! * A second Request in a session, or a malformed Cookie Echo, aborts that session.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::message::{JobCookie, Message, MessageType};

/// Sessions are numbered by the driver.
pub type SessionId = u64;

/// The service's settings (rsplib `rspserver -calcapp` defaults).
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceConfig {
    /// Calculations per second, shared by all running jobs.
    pub capacity: f64,
    /// Most jobs at once; more are rejected.
    pub max_jobs: usize,
    /// A KeepAlive to each job's pool user this long after its Accept or last KeepAliveAck.
    pub keep_alive_interval: Duration,
    /// A KeepAlive unanswered for this long drops the job.
    pub keep_alive_timeout: Duration,
    /// A cookie at least every this many calculations ...
    pub cookie_max_calculations: u64,
    /// ... and at least this often.
    pub cookie_max_time: Duration,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            capacity: 1e6,
            max_jobs: 10,
            keep_alive_interval: Duration::from_millis(2500),
            keep_alive_timeout: Duration::from_millis(2500),
            cookie_max_calculations: 5_000_000,
            cookie_max_time: Duration::from_secs(5),
        }
    }
}

/// Why the service ends a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbortReason {
    /// The pool user did not answer a KeepAlive in time.
    KeepAliveTimeout,
    /// A second Request in one session.
    SecondRequest,
    /// A Cookie Echo that is not a CalcApp cookie.
    BadCookie,
}

impl AbortReason {
    pub fn as_str(self) -> &'static str {
        match self {
            AbortReason::KeepAliveTimeout => "keep-alive-timeout",
            AbortReason::SecondRequest => "second-request",
            AbortReason::BadCookie => "bad-cookie",
        }
    }
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq)]
pub enum ServiceOutput {
    /// Send this CalcApp message on the session.
    Send {
        session: SessionId,
        message: Message,
    },
    /// Send this cookie in an ASAP Cookie on the session.
    Cookie {
        session: SessionId,
        cookie: JobCookie,
    },
    /// The session is done (its Complete or Reject was queued before this): close it
    /// gracefully.
    Finished { session: SessionId },
    /// Reset the session; its job, if any, is gone.
    Abort {
        session: SessionId,
        reason: AbortReason,
    },
    /// The load (running jobs ÷ `max_jobs`) changed: report it for the Least-Used policies.
    Load(f64),
}

/// How a job that did not complete here ended, for the lost-work accounting.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct JobLeft {
    pub job_id: u32,
    pub job_size: u64,
    /// Calculations done when it left.
    pub completed: f64,
    /// Calculations in the last cookie sent (or restored from): what the next PE resumes from.
    pub cookie_completed: f64,
    /// How long the next cookie had been due without going out (the driver ran late), zero
    /// if it was not due: only then can [`JobLeft::lost`] exceed a cookie interval.
    pub cookie_overdue: Duration,
}

impl JobLeft {
    /// Work done here that no cookie saved: lost if the job continues elsewhere.
    pub fn lost(&self) -> f64 {
        (self.completed - self.cookie_completed).max(0.0)
    }
}

/// Totals since the service started.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceStats {
    pub accepted: u64,
    pub rejected: u64,
    pub completed: u64,
    pub cookies: u64,
    /// Calculations credited to jobs (the capacity used).
    pub used_calculations: f64,
    /// Jobs that ended here without completing (pool user gone, keep-alive timeout, shutdown).
    pub jobs_left: Vec<JobLeft>,
}

#[derive(Debug)]
struct Job {
    job_id: u32,
    size: u64,
    done: f64,
    completes_at: Instant,
    cookie_done: f64,
    cookie_time: Instant,
    next_cookie: Instant,
    /// When to send the next KeepAlive ...
    next_keep_alive: Instant,
    /// ... or, while one is unanswered, when the job is dropped.
    keep_alive_deadline: Option<Instant>,
}

impl Job {
    fn next_deadline(&self) -> Instant {
        self.completes_at
            .min(self.next_cookie)
            .min(self.keep_alive_deadline.unwrap_or(self.next_keep_alive))
    }

    fn left(&self, now: Instant) -> JobLeft {
        JobLeft {
            job_id: self.job_id,
            job_size: self.size,
            completed: self.done,
            cookie_completed: self.cookie_done,
            cookie_overdue: now.saturating_duration_since(self.next_cookie),
        }
    }

    fn cookie(&self) -> JobCookie {
        JobCookie {
            job_id: self.job_id,
            job_size: self.size,
            completed: (self.done.round() as u64).min(self.size),
        }
    }
}

/// The service (see the module docs).
#[derive(Debug)]
pub struct CalcAppService {
    config: ServiceConfig,
    jobs: BTreeMap<SessionId, Job>,
    /// When the jobs were last credited with their share of the capacity.
    credited_at: Instant,
    outputs: VecDeque<ServiceOutput>,
    reported_load: f64,
    stats: ServiceStats,
}

impl CalcAppService {
    pub fn new(config: ServiceConfig, now: Instant) -> Self {
        let mut config = config;
        config.capacity = config.capacity.max(1.0);
        config.max_jobs = config.max_jobs.max(1);
        CalcAppService {
            config,
            jobs: BTreeMap::new(),
            credited_at: now,
            outputs: VecDeque::new(),
            reported_load: 0.0,
            stats: ServiceStats::default(),
        }
    }

    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    pub fn stats(&self) -> &ServiceStats {
        &self.stats
    }

    /// Running jobs.
    pub fn jobs(&self) -> usize {
        self.jobs.len()
    }

    /// Whether `session` has a running job.
    pub fn has_job(&self, session: SessionId) -> bool {
        self.jobs.contains_key(&session)
    }

    /// Running jobs ÷ `max_jobs`.
    pub fn load(&self) -> f64 {
        self.jobs.len() as f64 / self.config.max_jobs as f64
    }

    /// Calculations done so far by the job of `session` (for tests and statistics).
    pub fn job_progress(&self, session: SessionId, now: Instant) -> Option<f64> {
        let job = self.jobs.get(&session)?;
        let elapsed = now
            .saturating_duration_since(self.credited_at)
            .as_secs_f64();
        Some((job.done + elapsed * self.rate()).min(job.size as f64))
    }

    pub fn poll_output(&mut self) -> Option<ServiceOutput> {
        self.outputs.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.jobs.values().map(Job::next_deadline).min()
    }

    /// A CalcApp message arrived on `session`.
    pub fn handle_message(&mut self, session: SessionId, message: Message, now: Instant) {
        match message.kind {
            MessageType::Request => {
                if self.jobs.contains_key(&session) {
                    self.abort(session, AbortReason::SecondRequest, now);
                } else {
                    self.start_job(session, message.job_id, message.job_size, 0, now);
                }
            }
            MessageType::KeepAlive => {
                if self.owns(session, message.job_id) {
                    self.send(
                        session,
                        Message::for_job(MessageType::KeepAliveAck, message.job_id),
                    );
                }
            }
            MessageType::KeepAliveAck => {
                let interval = self.config.keep_alive_interval;
                if let Some(job) = self.jobs.get_mut(&session)
                    && job.job_id == message.job_id
                    && job.keep_alive_deadline.take().is_some()
                {
                    job.next_keep_alive = now + interval;
                }
            }
            // Only the PE sends these; rsplib ignores them too.
            MessageType::Accept
            | MessageType::Reject
            | MessageType::Abort
            | MessageType::Complete => {}
        }
    }

    /// An ASAP Cookie Echo arrived on `session`: resume the job it describes.
    pub fn handle_cookie_echo(&mut self, session: SessionId, cookie: &[u8], now: Instant) {
        if self.jobs.contains_key(&session) {
            self.abort(session, AbortReason::SecondRequest, now);
            return;
        }
        match JobCookie::decode(cookie) {
            Ok(cookie) => self.start_job(
                session,
                cookie.job_id,
                cookie.job_size,
                cookie.completed,
                now,
            ),
            Err(_) => self.abort(session, AbortReason::BadCookie, now),
        }
    }

    /// The session's association ended: its job, if any, is dropped.
    pub fn handle_closed(&mut self, session: SessionId, now: Instant) {
        if self.jobs.contains_key(&session) {
            self.credit(now);
            if let Some(job) = self.jobs.remove(&session) {
                self.stats.jobs_left.push(job.left(now));
            }
            self.reschedule(now);
        }
    }

    /// Time passed: completions, cookies, keep-alives.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.poll_timeout().is_none_or(|due| due > now) {
            return;
        }
        self.credit(now);
        let mut changed = false;
        let due: Vec<SessionId> = self
            .jobs
            .iter()
            .filter(|(_, job)| job.next_deadline() <= now)
            .map(|(session, _)| *session)
            .collect();
        for session in due {
            let Some(job) = self.jobs.get_mut(&session) else {
                continue;
            };
            if job.completes_at <= now {
                let job_id = job.job_id;
                let size = job.size;
                self.stats.used_calculations += size as f64 - job.done;
                self.jobs.remove(&session);
                self.stats.completed += 1;
                self.send(session, Message::complete(job_id, size));
                self.outputs.push_back(ServiceOutput::Finished { session });
                changed = true;
                continue;
            }
            if job
                .keep_alive_deadline
                .is_some_and(|deadline| deadline <= now)
            {
                if let Some(job) = self.jobs.remove(&session) {
                    self.stats.jobs_left.push(job.left(now));
                }
                self.outputs.push_back(ServiceOutput::Abort {
                    session,
                    reason: AbortReason::KeepAliveTimeout,
                });
                changed = true;
                continue;
            }
            if job.keep_alive_deadline.is_none() && job.next_keep_alive <= now {
                job.keep_alive_deadline = Some(now + self.config.keep_alive_timeout);
                let job_id = job.job_id;
                self.send(session, Message::for_job(MessageType::KeepAlive, job_id));
            }
            let job = self.jobs.get_mut(&session).expect("still running");
            if job.next_cookie <= now {
                let cookie = job.cookie();
                job.cookie_done = cookie.completed as f64;
                job.cookie_time = now;
                job.next_cookie = now;
                self.stats.cookies += 1;
                self.outputs
                    .push_back(ServiceOutput::Cookie { session, cookie });
                changed = true; // reschedules this job's next cookie
            }
        }
        if changed {
            self.reschedule(now);
        }
    }

    /// Ends the service: with `clean`, every job first gets a cookie of its progress (rsplib's
    /// clean shutdown); all jobs are dropped either way. Returns what each job left behind.
    pub fn shutdown(&mut self, clean: bool, now: Instant) -> Vec<JobLeft> {
        self.credit(now);
        let jobs = std::mem::take(&mut self.jobs);
        let mut left = Vec::with_capacity(jobs.len());
        for (session, mut job) in jobs {
            if clean {
                let cookie = job.cookie();
                job.cookie_done = cookie.completed as f64;
                self.stats.cookies += 1;
                self.outputs
                    .push_back(ServiceOutput::Cookie { session, cookie });
            }
            left.push(job.left(now));
        }
        self.stats.jobs_left.extend_from_slice(&left);
        left
    }

    fn owns(&self, session: SessionId, job_id: u32) -> bool {
        self.jobs
            .get(&session)
            .is_some_and(|job| job.job_id == job_id)
    }

    fn send(&mut self, session: SessionId, message: Message) {
        self.outputs
            .push_back(ServiceOutput::Send { session, message });
    }

    fn abort(&mut self, session: SessionId, reason: AbortReason, now: Instant) {
        self.handle_closed(session, now);
        self.outputs
            .push_back(ServiceOutput::Abort { session, reason });
    }

    fn start_job(&mut self, session: SessionId, job_id: u32, size: u64, done: u64, now: Instant) {
        if self.jobs.len() >= self.config.max_jobs {
            self.stats.rejected += 1;
            self.send(session, Message::for_job(MessageType::Reject, job_id));
            // The pool user goes elsewhere (rsplib: a new association): a rejected session
            // holds no connection here.
            self.outputs.push_back(ServiceOutput::Finished { session });
            return;
        }
        self.credit(now);
        self.stats.accepted += 1;
        self.jobs.insert(
            session,
            Job {
                job_id,
                size,
                done: done as f64,
                completes_at: now,
                cookie_done: done as f64,
                cookie_time: now,
                next_cookie: now,
                next_keep_alive: now + self.config.keep_alive_interval,
                keep_alive_deadline: None,
            },
        );
        self.send(session, Message::for_job(MessageType::Accept, job_id));
        self.reschedule(now);
    }

    /// Each job's share of the capacity, calculations per second.
    fn rate(&self) -> f64 {
        self.config.capacity / self.jobs.len().max(1) as f64
    }

    /// Credits every job with its share of the time since the last credit.
    fn credit(&mut self, now: Instant) {
        let elapsed = now
            .saturating_duration_since(self.credited_at)
            .as_secs_f64();
        self.credited_at = now;
        if elapsed == 0.0 {
            return;
        }
        let share = elapsed * self.rate();
        for job in self.jobs.values_mut() {
            let before = job.done;
            job.done = (job.done + share).min(job.size as f64);
            self.stats.used_calculations += job.done - before;
        }
    }

    /// After a change of the job count (or a cookie): every job's completion and next cookie
    /// at the new share; the load report.
    fn reschedule(&mut self, now: Instant) {
        let rate = self.rate();
        let cookie_calcs = self.config.cookie_max_calculations as f64;
        let cookie_time = self.config.cookie_max_time;
        for job in self.jobs.values_mut() {
            let remaining = (job.size as f64 - job.done).max(0.0);
            job.completes_at = now + seconds(remaining / rate);
            let by_calculations = ((cookie_calcs - (job.done - job.cookie_done)).max(0.0)) / rate;
            let by_time =
                cookie_time.saturating_sub(now.saturating_duration_since(job.cookie_time));
            // A cookie already overdue (the driver ran late) stays due: it goes out next.
            if job.next_cookie >= now {
                job.next_cookie = now + seconds(by_calculations).min(by_time);
            }
        }
        let load = self.load();
        if load != self.reported_load {
            self.reported_load = load;
            self.outputs.push_back(ServiceOutput::Load(load));
        }
    }
}

/// Longest wait the service schedules (about 30 years): a hostile job size cannot overflow
/// the clock.
const MAX_WAIT_SECONDS: f64 = 1e9;

/// `seconds` as a duration, clamped to `[0, MAX_WAIT_SECONDS]`.
fn seconds(seconds: f64) -> Duration {
    if seconds.is_nan() {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(seconds.clamp(0.0, MAX_WAIT_SECONDS))
}
