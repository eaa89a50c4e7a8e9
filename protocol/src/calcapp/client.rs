//! One CalcApp job on the pool user's side (sans-I/O): rsplib's `calcappclient` process.
//!
//! The session layer (`rserpool::pu`) chooses PEs, connects, sends the Request (or, after a
//! failover with a cookie, the Cookie Echo) and stores cookies. This machine is what CalcApp
//! adds: waiting for Accept, the session keep-alives (a KeepAlive every
//! `keep_alive_interval` after the last Accept or KeepAliveAck; no answer within
//! `keep_alive_timeout` means the PE failed), Reject, Complete, and the job's timings.
//!
//! Feed it [`JobClient::handle_connected`], [`JobClient::handle_message`],
//! [`JobClient::handle_cookie`], [`JobClient::handle_disconnected`] and
//! [`JobClient::handle_timeout`]; take [`ClientAction`]s from [`JobClient::poll_action`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::message::{Message, MessageType};

/// Session keep-alive timing (rsplib `calcappclient`: 5 s and 5 s).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    pub keep_alive_interval: Duration,
    pub keep_alive_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            keep_alive_interval: Duration::from_secs(5),
            keep_alive_timeout: Duration::from_secs(5),
        }
    }
}

/// Why the client gave up its PE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientFailure {
    /// No Accept or Reject within the keep-alive timeout of the Request (or Cookie Echo).
    NoAnswer,
    /// A KeepAlive went unanswered.
    KeepAliveTimeout,
    /// The PE spoke of another job, or completed a different size.
    WrongJob,
}

impl ClientFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientFailure::NoAnswer => "no-answer",
            ClientFailure::KeepAliveTimeout => "keep-alive-timeout",
            ClientFailure::WrongJob => "wrong-job",
        }
    }
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientAction {
    /// Send this message on the current association.
    Send(Message),
    /// The PE works for us (Accept, KeepAliveAck, a cookie): keep it.
    Progress,
    /// The PE failed: report it, fail over (resuming from the last cookie, if any).
    FailOver(ClientFailure),
    /// The PE rejected the job (full): try another PE, without reporting this one.
    Rejected,
    /// The job is complete: close the association.
    Completed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// No PE yet (or failing over).
    Unconnected,
    /// Request or Cookie Echo sent; Accept or Reject due by `deadline`.
    AwaitingAnswer {
        deadline: Instant,
    },
    /// Accepted; the next KeepAlive at `next_keep_alive`, or its Ack due by a deadline.
    Processing {
        next_keep_alive: Instant,
        ack_deadline: Option<Instant>,
    },
    Completed,
}

/// A job's timestamps (rsplib's split, with the Accept of the first PE: rsplib takes every
/// Accept, so time before a failover lands in the startup delay).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobTimes {
    /// The job was created (entered the pool user's queue).
    pub queued: Instant,
    /// The pool user started it (left the queue).
    pub started: Option<Instant>,
    /// The first Accept.
    pub accepted: Option<Instant>,
    /// The Complete.
    pub completed: Option<Instant>,
}

impl JobTimes {
    pub fn queuing_delay(&self) -> Option<Duration> {
        Some(self.started?.saturating_duration_since(self.queued))
    }

    pub fn startup_delay(&self) -> Option<Duration> {
        Some(self.accepted?.saturating_duration_since(self.started?))
    }

    pub fn processing_time(&self) -> Option<Duration> {
        Some(self.completed?.saturating_duration_since(self.accepted?))
    }

    /// Queuing + startup + processing.
    pub fn handling_time(&self) -> Option<Duration> {
        Some(self.completed?.saturating_duration_since(self.queued))
    }
}

/// One job (see the module docs).
#[derive(Debug)]
pub struct JobClient {
    config: ClientConfig,
    job_id: u32,
    size: u64,
    phase: Phase,
    times: JobTimes,
    accepts: u32,
    rejects: u32,
    failovers: u32,
    actions: VecDeque<ClientAction>,
}

impl JobClient {
    /// A job of `size` calculations, queued at `queued`.
    pub fn new(config: ClientConfig, job_id: u32, size: u64, queued: Instant) -> Self {
        JobClient {
            config,
            job_id,
            size,
            phase: Phase::Unconnected,
            times: JobTimes {
                queued,
                started: None,
                accepted: None,
                completed: None,
            },
            accepts: 0,
            rejects: 0,
            failovers: 0,
            actions: VecDeque::new(),
        }
    }

    pub fn job_id(&self) -> u32 {
        self.job_id
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The Request that starts the job at its first PE.
    pub fn request(&self) -> Message {
        Message::request(self.job_id, self.size)
    }

    pub fn times(&self) -> &JobTimes {
        &self.times
    }

    pub fn is_completed(&self) -> bool {
        self.phase == Phase::Completed
    }

    /// Accepts from all PEs.
    pub fn accepts(&self) -> u32 {
        self.accepts
    }

    pub fn rejects(&self) -> u32 {
        self.rejects
    }

    /// Failovers this job went through (PE failures, not rejections).
    pub fn failovers(&self) -> u32 {
        self.failovers
    }

    /// The pool user takes the job out of its queue.
    pub fn start(&mut self, now: Instant) {
        self.times.started.get_or_insert(now);
    }

    pub fn poll_action(&mut self) -> Option<ClientAction> {
        self.actions.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::AwaitingAnswer { deadline } => Some(deadline),
            Phase::Processing {
                next_keep_alive,
                ack_deadline,
            } => Some(ack_deadline.unwrap_or(next_keep_alive)),
            Phase::Unconnected | Phase::Completed => None,
        }
    }

    /// Connected to a PE; the session layer sent the Request (or a Cookie Echo).
    pub fn handle_connected(&mut self, now: Instant) {
        if self.phase != Phase::Completed {
            self.phase = Phase::AwaitingAnswer {
                deadline: now + self.config.keep_alive_timeout,
            };
        }
    }

    /// The session lost its PE (for whatever reason) and is looking for another.
    pub fn handle_disconnected(&mut self, failover: bool) {
        if self.phase != Phase::Completed {
            self.phase = Phase::Unconnected;
            if failover {
                self.failovers += 1;
            }
        }
    }

    /// The PE sent a cookie: it is working on the job.
    pub fn handle_cookie(&mut self, _now: Instant) {
        if matches!(self.phase, Phase::Processing { .. }) {
            self.actions.push_back(ClientAction::Progress);
        }
    }

    /// A CalcApp message from the current PE.
    pub fn handle_message(&mut self, now: Instant, message: Message) {
        if matches!(self.phase, Phase::Unconnected | Phase::Completed) {
            return;
        }
        if message.job_id != self.job_id {
            self.fail(ClientFailure::WrongJob);
            return;
        }
        match message.kind {
            MessageType::Accept => {
                self.accepts += 1;
                self.times.accepted.get_or_insert(now);
                self.phase = Phase::Processing {
                    next_keep_alive: now + self.config.keep_alive_interval,
                    ack_deadline: None,
                };
                self.actions.push_back(ClientAction::Progress);
            }
            MessageType::Reject => {
                if matches!(self.phase, Phase::AwaitingAnswer { .. }) {
                    self.rejects += 1;
                    self.phase = Phase::Unconnected;
                    self.actions.push_back(ClientAction::Rejected);
                }
            }
            MessageType::KeepAlive => self.actions.push_back(ClientAction::Send(Message::for_job(
                MessageType::KeepAliveAck,
                self.job_id,
            ))),
            MessageType::KeepAliveAck => {
                if let Phase::Processing {
                    next_keep_alive,
                    ack_deadline,
                } = &mut self.phase
                    && ack_deadline.take().is_some()
                {
                    *next_keep_alive = now + self.config.keep_alive_interval;
                    self.actions.push_back(ClientAction::Progress);
                }
            }
            MessageType::Complete => {
                if message.job_size != self.size || message.completed != self.size {
                    self.fail(ClientFailure::WrongJob);
                } else {
                    self.times.completed = Some(now);
                    self.times.accepted.get_or_insert(now);
                    self.phase = Phase::Completed;
                    self.actions.push_back(ClientAction::Completed);
                }
            }
            MessageType::Request | MessageType::Abort => {}
        }
    }

    /// Time passed: a missing answer, a KeepAlive due or unanswered.
    pub fn handle_timeout(&mut self, now: Instant) {
        match &mut self.phase {
            Phase::AwaitingAnswer { deadline } if *deadline <= now => {
                self.fail(ClientFailure::NoAnswer)
            }
            Phase::Processing {
                ack_deadline: Some(deadline),
                ..
            } if *deadline <= now => self.fail(ClientFailure::KeepAliveTimeout),
            Phase::Processing {
                next_keep_alive,
                ack_deadline: ack_deadline @ None,
            } if *next_keep_alive <= now => {
                *ack_deadline = Some(now + self.config.keep_alive_timeout);
                self.actions.push_back(ClientAction::Send(Message::for_job(
                    MessageType::KeepAlive,
                    self.job_id,
                )));
            }
            _ => {}
        }
    }

    fn fail(&mut self, failure: ClientFailure) {
        self.phase = Phase::Unconnected;
        self.actions.push_back(ClientAction::FailOver(failure));
    }
}
