//! The failover state machine of one pool-user session (sans-I/O).
//!
//! Events go in (`handle_*` methods, each with the current time), [`Action`]s come out of
//! [`SessionState::poll_action`], and [`SessionState::poll_timeout`] says when to call
//! [`SessionState::handle_timeout`] next. No sockets, no clocks: tests drive it with simulated time.
//!
//! Life of a session:
//! 1. [`SessionState::start`]: ask for a PE ([`Action::Resolve`]). A session made with
//!    [`SessionState::resuming`] holds a cookie from the start: its first PE gets a Cookie Echo,
//!    as after a failover (how a pool user hands a PE the rest of another session's work).
//! 2. A PE ([`SessionState::handle_resolved`]) is connected to ([`Action::Connect`]); none means an
//!    empty pool: wait with capped exponential backoff ([`SessionEvent::PoolEmpty`]) and ask
//!    again, for ever (until the application drops the session). A pool whose PEs are all
//!    full or just failed ([`SessionState::handle_busy`]) is asked again after a short, fixed
//!    wait, from the cached answer.
//! 3. Connected: send the Cookie Echo with the last cookie, or the application's first message
//!    if no cookie came yet. Frames from the PE are handed up; ASAP Cookies are stored.
//! 4. Failure of the PE (association reset, heartbeat loss, no progress for the session timeout,
//!    or the application says so): report it once with Endpoint Unreachable, avoid it for a while,
//!    resolve again (bypassing the cache) and go to 2. A graceful close after data (a PE that
//!    gives up the session with a cookie, or shuts down) is failed over the same way but not
//!    reported, and the PE is avoided only briefly: it is alive. (A killed process's socket
//!    is closed by its kernel and may look graceful too; if it is chosen again, the refused
//!    connect reports it.)
//! 5. Refusal (the association closes before the PE sent any frame: a PE at its session
//!    limit): try another PE without reporting this one, which is avoided only briefly.
//! 6. [`SessionState::finish`]: the application got everything; close gracefully.
//!
//! Liveness is progress: only [`SessionState::handle_progress`] (the application saw new work
//! done) keeps a PE, not any frame. A hostile PE that repeats data, sends empty data, cookies or
//! ASAP errors would otherwise hold the session for ever. After
//! [`SessionConfig::max_stalled_failovers`] failovers in a row without progress the PEs' cookies
//! are dropped for the application's own restart point ([`SessionState::set_fallback_cookie`]):
//! a cookie that sends every PE into a dead end cannot make the session bounce for ever.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::transport::{AssociationError, Frame, PPID_ASAP};
use crate::wire::{AsapMessage, PeId};

use super::selector::PeCandidate;

/// Timing of a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// No progress from the PE for this long means it failed (rsplib: 5 s receive timeout, but
    /// there any frame counts).
    pub session_timeout: Duration,
    /// A PE that failed is not chosen again for this long, even if the registrar lists it.
    pub avoid_failed_for: Duration,
    /// A PE that refused the session (full), or closed it gracefully after sending data (e.g.
    /// `--fail-after`, or shutting down), is not chosen again for this long. Short: a full PE
    /// has room again as soon as any of its sessions ends (often one of ours, whose close
    /// raced with this connect).
    pub avoid_refused_for: Duration,
    /// First wait after finding the pool empty; doubled on each retry ...
    pub backoff_initial: Duration,
    /// ... up to this.
    pub backoff_max: Duration,
    /// After this many failovers in a row without progress the PEs' cookies are dropped for
    /// the fallback cookie.
    pub max_stalled_failovers: u32,
}

impl Default for SessionConfig {
    /// 2 s session timeout, failed PEs avoided 10 s, refusing ones 25 ms, backoff 10 ms..1 s.
    fn default() -> Self {
        SessionConfig {
            session_timeout: Duration::from_secs(2),
            avoid_failed_for: Duration::from_secs(10),
            avoid_refused_for: Duration::from_millis(25),
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_secs(1),
            // One stalled failover is routine (a PE died before the next delivered), two can
            // be an honest cascade (the next one died too, e.g. a host going down); a third in
            // a row without a single new result points at the cookie being echoed. Dropping
            // it earlier would change what honest failovers resume from.
            max_stalled_failovers: 3,
        }
    }
}

/// Why a session gave up its PE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The association was closed or reset (e.g. the PE process died).
    ConnectionLost(String),
    /// Transport heartbeats went unanswered.
    HeartbeatTimeout,
    /// No progress for longer than the session timeout (e.g. the PE hangs, or sends nothing
    /// new).
    DataSilence,
    /// The application found the PE's messages unacceptable.
    ProtocolError(String),
}

impl FailureKind {
    fn from_association(error: &AssociationError) -> FailureKind {
        match error {
            AssociationError::HeartbeatTimeout { .. } => FailureKind::HeartbeatTimeout,
            other => FailureKind::ConnectionLost(other.to_string()),
        }
    }
}

/// What the application learns from its session.
#[derive(Clone, Debug, PartialEq)]
pub enum SessionEvent {
    /// Connected to `pe`; the first message (Cookie Echo if `resumed`, else the application's
    /// first message) is on its way.
    Connected { pe: PeCandidate, resumed: bool },
    /// Could not connect to `pe` (reported unreachable and avoided); trying another.
    ConnectFailed { pe: PeCandidate, detail: String },
    /// `pe` closed the association before sending anything (full); trying another, no report.
    Refused { pe: PeCandidate },
    /// The session lost `pe` and is failing over.
    FailoverStarted {
        pe: PeCandidate,
        reason: FailureKind,
        /// Time since that PE last made progress (or was connected to).
        silent_for: Duration,
        /// Whether a cookie will be echoed to the next PE (else the session restarts).
        have_cookie: bool,
        /// Too many failovers without progress: the PEs' cookies were dropped, the next PE
        /// resumes from the fallback cookie ([`SessionState::set_fallback_cookie`]).
        cookies_dropped: bool,
    },
    /// A new PE delivered its first frame after a failover.
    FailoverCompleted {
        old_pe: PeCandidate,
        new_pe: PeCandidate,
        /// From detecting the failure to the first frame of the new PE.
        took: Duration,
        /// Whether it resumed from a cookie (else it restarted from scratch).
        resumed: bool,
    },
    /// Endpoint Unreachable was sent (or queued) for this PE.
    UnreachableReported { pe_id: PeId },
    /// No usable PE; asking again after `retry_in`.
    PoolEmpty {
        retry_in: Duration,
        /// Why, when the registrar could not be asked at all.
        detail: Option<String>,
    },
    /// A frame of the application's protocol from the current PE.
    Data { pe: PeCandidate, frame: Frame },
    /// The PE sent a cookie; it is stored and echoed after a failover.
    CookieStored { pe: PeCandidate, cookie: Vec<u8> },
    /// The session ended (after [`SessionState::finish`]).
    Finished,
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Find a PE and call [`SessionState::handle_resolved`]; `fresh` = ask the registrar, not the
    /// cache (after a failure).
    Resolve { fresh: bool },
    /// Open an association to this PE, then call `handle_connected` or `handle_connect_failed`.
    Connect(PeCandidate),
    /// Send this frame on the current association.
    Send(Frame),
    /// Reset the current association (and forget it).
    Abort,
    /// Close the current association gracefully (and forget it).
    Close,
    /// Send Endpoint Unreachable for this PE to the registrar.
    ReportUnreachable { pe_id: PeId },
    /// Do not choose this PE for this long.
    Avoid { pe_id: PeId, duration: Duration },
    /// Hand this to the application.
    Event(SessionEvent),
}

#[derive(Clone, Debug, PartialEq)]
enum Phase {
    Idle,
    Resolving,
    Waiting {
        until: Instant,
        /// Ask the registrar again (an empty pool), or choose from the cached answer (a busy
        /// one).
        fresh: bool,
    },
    Connecting {
        pe: PeCandidate,
    },
    Connected {
        pe: PeCandidate,
        /// The connect, or the latest [`SessionState::handle_progress`]: the silence timer.
        last_progress: Instant,
        got_frame: bool,
    },
    Finished,
}

/// The state of one session (see the module docs).
#[derive(Debug)]
pub struct SessionState {
    config: SessionConfig,
    phase: Phase,
    /// The application's first message (sent when there is no cookie).
    first_message: Frame,
    cookie: Option<Vec<u8>>,
    /// What forgetting the PEs' cookies goes back to: the cookie the session started with
    /// ([`SessionState::resuming`]), or the application's own restart point
    /// ([`SessionState::set_fallback_cookie`]).
    fallback_cookie: Option<Vec<u8>>,
    /// Failovers since the last progress (or the start).
    stalled_failovers: u32,
    backoff: Duration,
    /// The PE that failed and when the failure was detected, until a new PE delivers.
    failover: Option<(PeCandidate, Instant)>,
    actions: VecDeque<Action>,
}

impl SessionState {
    /// A session that will start with `first_message` (e.g. an FGP Parameter).
    pub fn new(config: SessionConfig, first_message: Frame) -> Self {
        let backoff = config.backoff_initial;
        SessionState {
            config,
            phase: Phase::Idle,
            first_message,
            cookie: None,
            fallback_cookie: None,
            stalled_failovers: 0,
            backoff,
            failover: None,
            actions: VecDeque::new(),
        }
    }

    /// A session whose first PE resumes from `cookie` (sent in a Cookie Echo) instead of
    /// receiving `first_message`; [`SessionState::forget_cookie`] returns to `cookie`.
    pub fn resuming(config: SessionConfig, first_message: Frame, cookie: Vec<u8>) -> Self {
        let mut state = SessionState::new(config, first_message);
        state.cookie = Some(cookie.clone());
        state.fallback_cookie = Some(cookie);
        state
    }

    /// The configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Starts the session: resolve the pool.
    pub fn start(&mut self, _now: Instant) {
        if self.phase == Phase::Idle {
            self.phase = Phase::Resolving;
            self.actions.push_back(Action::Resolve { fresh: false });
        }
    }

    /// The next thing to do, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`SessionState::handle_timeout`] must be called next (`None`: no timer).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Waiting { until, .. } => Some(*until),
            Phase::Connected { last_progress, .. } => {
                Some(*last_progress + self.config.session_timeout)
            }
            _ => None,
        }
    }

    /// The PE currently serving (or being connected to).
    pub fn current_pe(&self) -> Option<&PeCandidate> {
        match &self.phase {
            Phase::Connecting { pe } | Phase::Connected { pe, .. } => Some(pe),
            _ => None,
        }
    }

    /// The latest cookie.
    pub fn cookie(&self) -> Option<&[u8]> {
        self.cookie.as_deref()
    }

    /// Whether the session has finished.
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    /// The answer to [`Action::Resolve`]: the chosen PE, or `None` for an empty pool (or no
    /// registrar; `detail` says why).
    pub fn handle_resolved(
        &mut self,
        now: Instant,
        pe: Option<PeCandidate>,
        detail: Option<String>,
    ) {
        if self.phase != Phase::Resolving {
            return;
        }
        match pe {
            Some(pe) => {
                self.phase = Phase::Connecting { pe: pe.clone() };
                self.actions.push_back(Action::Connect(pe));
            }
            None => {
                let retry_in = self.backoff;
                self.backoff = (self.backoff * 2).min(self.config.backoff_max);
                self.phase = Phase::Waiting {
                    until: now + retry_in,
                    fresh: true,
                };
                self.emit(SessionEvent::PoolEmpty { retry_in, detail });
            }
        }
    }

    /// The answer to [`Action::Resolve`] when the pool lists PEs but every one is full or
    /// being avoided: wait [`SessionConfig::avoid_refused_for`], without backing off (a PE has
    /// room again as soon as any of its sessions ends), and ask again.
    pub fn handle_busy(&mut self, now: Instant, detail: String) {
        if self.phase != Phase::Resolving {
            return;
        }
        let retry_in = self.config.avoid_refused_for;
        self.phase = Phase::Waiting {
            until: now + retry_in,
            fresh: false,
        };
        self.emit(SessionEvent::PoolEmpty {
            retry_in,
            detail: Some(detail),
        });
    }

    /// The association to the PE of [`Action::Connect`] is up.
    pub fn handle_connected(&mut self, now: Instant) {
        let Phase::Connecting { pe } = &self.phase else {
            return;
        };
        let pe = pe.clone();
        let resumed = self.cookie.is_some();
        let first = match &self.cookie {
            Some(cookie) => match (AsapMessage::CookieEcho {
                cookie: cookie.clone(),
            })
            .to_bytes()
            {
                Ok(bytes) => Frame::new(PPID_ASAP, bytes),
                // A cookie too long to echo: start again from scratch.
                Err(_) => self.first_message.clone(),
            },
            None => self.first_message.clone(),
        };
        self.phase = Phase::Connected {
            pe: pe.clone(),
            last_progress: now,
            got_frame: false,
        };
        self.actions.push_back(Action::Send(first));
        self.emit(SessionEvent::Connected { pe, resumed });
    }

    /// Connecting to the PE of [`Action::Connect`] failed: it is reported and avoided.
    pub fn handle_connect_failed(&mut self, _now: Instant, detail: String) {
        let Phase::Connecting { pe } = &self.phase else {
            return;
        };
        let pe = pe.clone();
        self.report_and_avoid(&pe);
        self.emit(SessionEvent::ConnectFailed { pe, detail });
        self.resolve(true);
    }

    /// A frame arrived on the current association. It does not keep the PE: only progress
    /// ([`SessionState::handle_progress`]) does.
    pub fn handle_frame(&mut self, now: Instant, frame: Frame) {
        let Phase::Connected { pe, got_frame, .. } = &mut self.phase else {
            return;
        };
        let pe = pe.clone();
        if !*got_frame {
            *got_frame = true;
            self.backoff = self.config.backoff_initial;
            if let Some((old_pe, since)) = self.failover.take() {
                let resumed = self.cookie.is_some();
                self.emit(SessionEvent::FailoverCompleted {
                    old_pe,
                    new_pe: pe.clone(),
                    took: now.saturating_duration_since(since),
                    resumed,
                });
            }
        }
        if frame.ppid == PPID_ASAP {
            // Cookies are ours; other ASAP messages (Business Card, errors) are ignored.
            if let Ok(decoded) = AsapMessage::decode(&frame.payload)
                && let AsapMessage::Cookie { cookie } = decoded.message
            {
                self.cookie = Some(cookie.clone());
                self.emit(SessionEvent::CookieStored { pe, cookie });
            }
            return;
        }
        self.emit(SessionEvent::Data { pe, frame });
    }

    /// The application saw the current PE do new work (e.g. a Data message brought results it
    /// did not have): the silence timer starts again and the session is no longer stalled.
    /// Anything else the PE sends (repeats, empty data, cookies, errors) is not progress.
    pub fn handle_progress(&mut self, now: Instant) {
        if let Phase::Connected { last_progress, .. } = &mut self.phase {
            *last_progress = now;
            self.stalled_failovers = 0;
        }
    }

    /// The current association ended with `error`.
    pub fn handle_closed(&mut self, now: Instant, error: &AssociationError) {
        let Phase::Connected {
            pe,
            last_progress,
            got_frame,
        } = &self.phase
        else {
            return;
        };
        let (pe, last_progress, got_frame) = (pe.clone(), *last_progress, *got_frame);
        let refusal = !got_frame
            && matches!(
                error,
                AssociationError::ClosedByPeer | AssociationError::Reset
            );
        if refusal {
            self.actions.push_back(Action::Avoid {
                pe_id: pe.id,
                duration: self.config.avoid_refused_for,
            });
            self.emit(SessionEvent::Refused { pe });
            self.resolve(false);
        } else {
            let silent_for = now.saturating_duration_since(last_progress);
            let report = !matches!(error, AssociationError::ClosedByPeer);
            self.fail_over(
                now,
                pe,
                FailureKind::from_association(error),
                silent_for,
                report,
            );
        }
    }

    /// Time passed: detects a PE without progress and ends the empty-pool wait.
    pub fn handle_timeout(&mut self, now: Instant) {
        match &self.phase {
            Phase::Waiting { until, fresh } if now >= *until => self.resolve(*fresh),
            Phase::Connected {
                pe, last_progress, ..
            } if now.saturating_duration_since(*last_progress) >= self.config.session_timeout => {
                let (pe, silent_for) = (pe.clone(), now.saturating_duration_since(*last_progress));
                self.actions.push_back(Action::Abort);
                self.fail_over(now, pe, FailureKind::DataSilence, silent_for, true);
            }
            _ => {}
        }
    }

    /// The application rejects the current PE (e.g. malformed data): abort, report it
    /// unreachable, avoid it and fail over.
    pub fn fail(&mut self, now: Instant, reason: FailureKind) {
        if let Phase::Connected {
            pe, last_progress, ..
        } = &self.phase
        {
            let (pe, silent_for) = (pe.clone(), now.saturating_duration_since(*last_progress));
            self.actions.push_back(Action::Abort);
            self.fail_over(now, pe, reason, silent_for, true);
        }
    }

    /// The current PE declined the session in the application's protocol (e.g. a CalcApp
    /// Reject: it is full). Like a refusal: close, avoid it briefly, no report, choose again.
    pub fn reject(&mut self, _now: Instant) {
        if let Phase::Connected { pe, .. } = &self.phase {
            let pe = pe.clone();
            self.actions.push_back(Action::Close);
            self.actions.push_back(Action::Avoid {
                pe_id: pe.id,
                duration: self.config.avoid_refused_for,
            });
            self.emit(SessionEvent::Refused { pe });
            self.resolve(false);
        }
    }

    /// Drops the cookies the PEs sent: the next PE starts from the fallback cookie
    /// ([`SessionState::set_fallback_cookie`]), else from the cookie a
    /// [`SessionState::resuming`] session started with, else from the first message.
    pub fn forget_cookie(&mut self) {
        self.cookie = self.fallback_cookie.clone();
    }

    /// The application's own restart point (e.g. where the results it holds end), used instead
    /// of the PEs' cookies by [`SessionState::forget_cookie`] and after too many failovers
    /// without progress. Keep it current: a failover does not wait for the application.
    pub fn set_fallback_cookie(&mut self, cookie: Vec<u8>) {
        self.fallback_cookie = Some(cookie);
    }

    /// The application has everything: close the association gracefully.
    pub fn finish(&mut self, _now: Instant) {
        if self.phase == Phase::Finished {
            return;
        }
        if matches!(
            self.phase,
            Phase::Connected { .. } | Phase::Connecting { .. }
        ) {
            self.actions.push_back(Action::Close);
        }
        self.phase = Phase::Finished;
        self.failover = None;
        self.emit(SessionEvent::Finished);
    }

    fn fail_over(
        &mut self,
        now: Instant,
        pe: PeCandidate,
        reason: FailureKind,
        silent: Duration,
        report: bool,
    ) {
        self.stalled_failovers = self.stalled_failovers.saturating_add(1);
        // Cookies that led every PE into a dead end are not echoed again.
        let cookies_dropped = self.stalled_failovers >= self.config.max_stalled_failovers
            && self.cookie != self.fallback_cookie;
        if cookies_dropped {
            self.forget_cookie();
        }
        if report {
            self.report_and_avoid(&pe);
        } else {
            self.actions.push_back(Action::Avoid {
                pe_id: pe.id,
                duration: self.config.avoid_refused_for,
            });
        }
        self.emit(SessionEvent::FailoverStarted {
            pe: pe.clone(),
            reason,
            silent_for: silent,
            have_cookie: self.cookie.is_some(),
            cookies_dropped,
        });
        // A failover that fails again keeps its first start time and original PE.
        if self.failover.is_none() {
            self.failover = Some((pe, now));
        }
        self.resolve(true);
    }

    fn report_and_avoid(&mut self, pe: &PeCandidate) {
        self.actions
            .push_back(Action::ReportUnreachable { pe_id: pe.id });
        self.actions.push_back(Action::Avoid {
            pe_id: pe.id,
            duration: self.config.avoid_failed_for,
        });
    }

    fn resolve(&mut self, fresh: bool) {
        self.phase = Phase::Resolving;
        self.actions.push_back(Action::Resolve { fresh });
    }

    fn emit(&mut self, event: SessionEvent) {
        self.actions.push_back(Action::Event(event));
    }
}
