//! Admission of pool users' connections, sans-I/O: which accepted connections may stay, and
//! what they count against.
//!
//! A connection is *pending* from accept until its first message, then either a *session* (a
//! valid Parameter or Cookie Echo; its computing place is `--max-sessions`, counted elsewhere)
//! or a *keep-alive* association (a takeover registrar's Endpoint Keep-Alives). Pending
//! connections are capped per source address and in total, so that peers which never send a
//! request (or only transport heartbeats) cannot crowd out pool users; keep-alive associations
//! have their own small cap, so that they cannot crowd out pending ones; and all connections
//! together are capped so that file descriptors cannot run out.
//!
//! Time is passed in: [`WarnLimiter`] rate-limits the warnings of a flood.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Takeover registrars' keep-alive associations at once: registrars are few.
pub const MAX_KEEP_ALIVE_ASSOCIATIONS: usize = 8;

/// At most one warning line per this interval for each kind of flood.
pub const WARN_INTERVAL: Duration = Duration::from_secs(1);

/// The limits (`--max-pending-per-source`, `--max-pending`, `--max-connections`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_pending_per_source: usize,
    pub max_pending: usize,
    pub max_connections: usize,
}

/// Where an admitted connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Accepted; no valid first message yet.
    Pending,
    /// Serving (or closing) a session.
    Session,
    /// Serving a registrar's keep-alives.
    KeepAlive,
}

/// Why a connection is closed at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Its source address already has `max_pending_per_source` pending connections.
    PendingPerSource,
    /// `max_pending` connections are pending.
    Pending,
    /// `max_connections` connections are open.
    Connections,
    /// [`MAX_KEEP_ALIVE_ASSOCIATIONS`] keep-alive associations are open.
    KeepAlives,
}

impl Refusal {
    /// For logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::PendingPerSource => "max-pending-per-source",
            Refusal::Pending => "max-pending",
            Refusal::Connections => "max-connections",
            Refusal::KeepAlives => "max-keep-alive-associations",
        }
    }
}

/// Counts of admitted connections against [`Limits`].
#[derive(Debug)]
pub struct Admission {
    limits: Limits,
    pending_by_source: HashMap<IpAddr, usize>,
    pending: usize,
    sessions: usize,
    keep_alives: usize,
}

impl Admission {
    pub fn new(limits: Limits) -> Self {
        Admission {
            limits,
            pending_by_source: HashMap::new(),
            pending: 0,
            sessions: 0,
            keep_alives: 0,
        }
    }

    /// Admits a new connection from `source` as [`Stage::Pending`], or says why not.
    pub fn admit(&mut self, source: IpAddr) -> Result<(), Refusal> {
        if self.connections() >= self.limits.max_connections {
            return Err(Refusal::Connections);
        }
        if self.pending >= self.limits.max_pending {
            return Err(Refusal::Pending);
        }
        let of_source = self.pending_by_source.entry(source).or_insert(0);
        if *of_source >= self.limits.max_pending_per_source {
            return Err(Refusal::PendingPerSource);
        }
        *of_source += 1;
        self.pending += 1;
        Ok(())
    }

    /// Moves a pending connection from `source` on to `to` (a session or a keep-alive
    /// association); on refusal it stays pending (and is to be closed).
    pub fn advance(&mut self, source: IpAddr, to: Stage) -> Result<(), Refusal> {
        match to {
            Stage::Pending => return Ok(()),
            Stage::KeepAlive if self.keep_alives >= MAX_KEEP_ALIVE_ASSOCIATIONS => {
                return Err(Refusal::KeepAlives);
            }
            Stage::KeepAlive => self.keep_alives += 1,
            Stage::Session => self.sessions += 1,
        }
        self.release(source, Stage::Pending);
        Ok(())
    }

    /// A connection from `source` at `stage` is gone.
    pub fn release(&mut self, source: IpAddr, stage: Stage) {
        match stage {
            Stage::Pending => {
                self.pending = self.pending.saturating_sub(1);
                if let Some(of_source) = self.pending_by_source.get_mut(&source) {
                    *of_source -= 1;
                    if *of_source == 0 {
                        // Bounded by `max_pending` entries: sources with none are forgotten.
                        self.pending_by_source.remove(&source);
                    }
                }
            }
            Stage::Session => self.sessions = self.sessions.saturating_sub(1),
            Stage::KeepAlive => self.keep_alives = self.keep_alives.saturating_sub(1),
        }
    }

    /// Connections waiting for their first message.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Pending connections from `source`.
    pub fn pending_from(&self, source: IpAddr) -> usize {
        self.pending_by_source.get(&source).copied().unwrap_or(0)
    }

    /// All admitted connections.
    pub fn connections(&self) -> usize {
        self.pending + self.sessions + self.keep_alives
    }
}

/// At most one line per [`WARN_INTERVAL`]; the next line says how many were left out.
#[derive(Debug, Default)]
pub struct WarnLimiter {
    last: Option<Instant>,
    suppressed: u64,
}

impl WarnLimiter {
    /// An event at `now`: `Some(left out since the last line)` when it is to be logged.
    pub fn event(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < WARN_INTERVAL => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_pending_per_source: 2,
        max_pending: 3,
        max_connections: 5,
    };

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn pending_is_capped_per_source_and_in_total() {
        let mut admission = Admission::new(LIMITS);
        assert_eq!(admission.admit(ip(1)), Ok(()));
        assert_eq!(admission.admit(ip(1)), Ok(()));
        assert_eq!(admission.admit(ip(1)), Err(Refusal::PendingPerSource));
        assert_eq!(admission.admit(ip(2)), Ok(()));
        assert_eq!(admission.admit(ip(3)), Err(Refusal::Pending));
        assert_eq!(admission.pending(), 3);
        // A closed pending connection makes room for its source again.
        admission.release(ip(1), Stage::Pending);
        assert_eq!(admission.pending_from(ip(1)), 1);
        assert_eq!(admission.admit(ip(1)), Ok(()));
    }

    #[test]
    fn a_first_message_frees_the_pending_place_but_still_counts_as_a_connection() {
        let mut admission = Admission::new(LIMITS);
        for _ in 0..2 {
            admission.admit(ip(1)).expect("admitted");
            admission.advance(ip(1), Stage::Session).expect("a session");
        }
        assert_eq!(admission.pending_from(ip(1)), 0);
        assert_eq!(admission.pending(), 0);
        assert_eq!(admission.connections(), 2);
        admission.admit(ip(1)).expect("admitted");
        admission.admit(ip(1)).expect("admitted");
        admission.admit(ip(2)).expect("admitted");
        // Five open: nothing more, whatever the source.
        assert_eq!(admission.admit(ip(4)), Err(Refusal::Connections));
        admission.release(ip(1), Stage::Session);
        assert_eq!(admission.connections(), 4);
        assert_eq!(admission.admit(ip(4)), Err(Refusal::Pending));
        admission.release(ip(2), Stage::Pending);
        assert_eq!(admission.admit(ip(4)), Ok(()));
    }

    #[test]
    fn keep_alive_associations_have_their_own_cap() {
        let mut admission = Admission::new(Limits {
            max_pending_per_source: 100,
            max_pending: 100,
            max_connections: 100,
        });
        for _ in 0..MAX_KEEP_ALIVE_ASSOCIATIONS {
            admission.admit(ip(9)).expect("admitted");
            admission
                .advance(ip(9), Stage::KeepAlive)
                .expect("a keep-alive association");
        }
        admission.admit(ip(9)).expect("admitted");
        assert_eq!(
            admission.advance(ip(9), Stage::KeepAlive),
            Err(Refusal::KeepAlives)
        );
        // Refused: still pending until it is closed.
        assert_eq!(admission.pending_from(ip(9)), 1);
        admission.release(ip(9), Stage::Pending);
        admission.release(ip(9), Stage::KeepAlive);
        assert_eq!(admission.connections(), MAX_KEEP_ALIVE_ASSOCIATIONS - 1);
        assert_eq!(admission.pending(), 0);
    }

    #[test]
    fn the_source_table_forgets_sources_without_pending_connections() {
        let mut admission = Admission::new(LIMITS);
        for last in 1..=3 {
            admission.admit(ip(last)).expect("admitted");
        }
        for last in 1..=3 {
            admission.release(ip(last), Stage::Pending);
        }
        assert!(admission.pending_by_source.is_empty());
        assert_eq!(admission.connections(), 0);
    }

    #[test]
    fn warnings_are_rate_limited_and_count_what_they_left_out() {
        let start = Instant::now();
        let mut warn = WarnLimiter::default();
        assert_eq!(warn.event(start), Some(0));
        for ms in [1, 10, 500, 999] {
            assert_eq!(warn.event(start + Duration::from_millis(ms)), None);
        }
        assert_eq!(warn.event(start + WARN_INTERVAL), Some(4));
        assert_eq!(warn.event(start + WARN_INTERVAL * 3), Some(0));
    }
}
