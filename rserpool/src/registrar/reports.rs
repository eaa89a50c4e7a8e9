//! Endpoint Unreachable reports, trusted only as far as they can be (RFC 5352 §3.5, RFC 5355
//! §2.6).
//!
//! rsplib removes a PE as soon as MAX-BAD-PE-REPORT distinct associations report it, so three
//! connections that say so evict a healthy PE, and can keep it out of the pool by saying it
//! again. Here:
//! * a report counts only from an association that was handed that PE in a handle resolution
//!   (a pool user that could have tried it), at most [`ReportConfig::max_reports_per_second`]
//!   per association, and is forgotten when that association ends;
//! * reaching the threshold does not remove the PE but **probes** it: an immediate Endpoint
//!   Keep-Alive with [`ReportConfig::probe_timeout`]. While the probe runs the PE is left out of
//!   resolutions; an answer (an Ack, or a re-registration) clears its reports and restores it,
//!   silence removes it;
//! * reporters whose reports a probe disproved are not believed about that PE for
//!   [`ReportConfig::disbelief`], so liars cannot keep a live PE under probe.
//!
//! [`ReportBook`] is the bookkeeping; the registrar asks it and acts.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use crate::handlespace::AssociationKey;
use crate::timer::Deadlines;
use crate::wire::{PeId, PoolHandle};

/// A PE of a pool.
pub type PeRef = (PoolHandle, PeId);

/// Limits of the report bookkeeping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReportConfig {
    /// PEs remembered per association as handed out (the oldest are forgotten first).
    pub remembered_per_association: usize,
    /// Reports per association and second that count; more are ignored.
    pub max_reports_per_second: u32,
    /// Time a PE has to answer the probe.
    pub probe_timeout: Duration,
    /// How long reporters disproved by a probe are not believed about that PE.
    pub disbelief: Duration,
}

impl Default for ReportConfig {
    /// 4096 PEs per association, 10 reports/s, 1 s to answer, 30 s of disbelief: a pool user
    /// that fails over tens of sessions at once is never held back, a live PE answers within
    /// the timeout even on a loaded host, and a disproved reporter is heard again after a few
    /// keep-alive intervals (by then the registrar's own keep-alives have spoken too).
    fn default() -> Self {
        ReportConfig {
            remembered_per_association: 4096,
            max_reports_per_second: 10,
            probe_timeout: Duration::from_secs(1),
            disbelief: Duration::from_secs(30),
        }
    }
}

/// Why a report did not count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ignored {
    /// The reporter was never handed this PE.
    NotHandedOut,
    /// The reporter exceeded its report rate.
    RateLimited,
    /// A probe disproved the reporter's last reports of this PE a short while ago.
    Disproved,
}

/// A handed-out PE as remembered: the pool handle's hash and the PE id. Every resolution
/// records its PEs, so this must cost next to nothing: no handle is cloned (a collision of
/// two pools' 64-bit hashes would only let a report count that should not).
type HandedOut = (u64, PeId);

#[derive(Debug, Default)]
struct Reporter {
    handed_out: HashSet<HandedOut>,
    order: VecDeque<HandedOut>,
    /// PEs this association's reports counted against.
    reported: HashSet<PeRef>,
    /// PEs a probe proved alive against this association's reports, until when.
    disbelieved: HashMap<PeRef, Instant>,
    window_start: Option<Instant>,
    in_window: u32,
}

/// What the registrar knows about reports and probes.
#[derive(Debug, Default)]
pub struct ReportBook {
    config: ReportConfig,
    pool_hasher: RandomState,
    reporters: HashMap<AssociationKey, Reporter>,
    probes: Deadlines<PeRef>,
}

impl ReportBook {
    /// An empty book.
    pub fn new(config: ReportConfig) -> Self {
        ReportBook {
            config,
            ..ReportBook::default()
        }
    }

    /// `association` was handed these PEs of `pool` in a resolution.
    pub fn handed_out(
        &mut self,
        association: AssociationKey,
        pool: &PoolHandle,
        ids: impl IntoIterator<Item = PeId>,
    ) {
        let cap = self.config.remembered_per_association.max(1);
        let pool = self.pool_hasher.hash_one(pool);
        let reporter = self.reporters.entry(association).or_default();
        for id in ids {
            let pe = (pool, id);
            if reporter.handed_out.insert(pe) {
                reporter.order.push_back(pe);
                if reporter.order.len() > cap
                    && let Some(oldest) = reporter.order.pop_front()
                {
                    reporter.handed_out.remove(&oldest);
                }
            }
        }
    }

    /// Whether a report of `pe` from `association` at `now` counts; if so it is remembered
    /// against the association.
    pub fn admit(
        &mut self,
        association: AssociationKey,
        pe: &PeRef,
        now: Instant,
    ) -> Result<(), Ignored> {
        let limit = self.config.max_reports_per_second;
        let handed_out = (self.pool_hasher.hash_one(&pe.0), pe.1);
        let Some(reporter) = self.reporters.get_mut(&association) else {
            return Err(Ignored::NotHandedOut);
        };
        if !reporter.handed_out.contains(&handed_out) {
            return Err(Ignored::NotHandedOut);
        }
        if reporter
            .disbelieved
            .get(pe)
            .is_some_and(|&until| now < until)
        {
            return Err(Ignored::Disproved);
        }
        match reporter.window_start {
            Some(start) if now.saturating_duration_since(start) < Duration::from_secs(1) => {
                if reporter.in_window >= limit {
                    return Err(Ignored::RateLimited);
                }
                reporter.in_window += 1;
            }
            _ => {
                reporter.window_start = Some(now);
                reporter.in_window = 1;
            }
        }
        reporter.reported.insert(pe.clone());
        Ok(())
    }

    /// A probe proved `pe` alive: `reporters` are not believed about it for a while.
    pub fn disproved(
        &mut self,
        pe: &PeRef,
        reporters: impl IntoIterator<Item = AssociationKey>,
        now: Instant,
    ) {
        let until = now + self.config.disbelief;
        for association in reporters {
            if let Some(reporter) = self.reporters.get_mut(&association) {
                // Bounded like `handed_out`: only PEs it was handed can be here.
                reporter.disbelieved.retain(|_, until| now < *until);
                reporter.disbelieved.insert(pe.clone(), until);
            }
        }
    }

    /// `association` ended: the PEs its reports counted against (to withdraw them).
    pub fn forget(&mut self, association: AssociationKey) -> Vec<PeRef> {
        self.reporters
            .remove(&association)
            .map(|reporter| reporter.reported.into_iter().collect())
            .unwrap_or_default()
    }

    /// Starts probing `pe` (no-op if it is probed already); true if it was not.
    pub fn start_probe(&mut self, pe: PeRef, now: Instant) -> bool {
        if self.probes.contains_key(&pe) {
            return false;
        }
        self.probes.insert(pe, (), now + self.config.probe_timeout);
        true
    }

    /// Ends the probe of `pe` (it answered, or left); true if one was running.
    pub fn end_probe(&mut self, pe: &PeRef) -> bool {
        self.probes.remove(pe).is_some()
    }

    /// Whether `pe` is being probed (and so left out of resolutions).
    pub fn is_probed(&self, pe: &PeRef) -> bool {
        self.probes.contains_key(pe)
    }

    /// Probed PEs of `pool`.
    pub fn probed_in(&self, pool: &PoolHandle) -> usize {
        self.probes.keys().filter(|(p, _)| p == pool).count()
    }

    /// When the next probe runs out.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.probes.poll_timeout()
    }

    /// The probes that ran out by `now` (ended; the registrar removes their PEs).
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<PeRef> {
        std::iter::from_fn(|| self.probes.pop_due(now).map(|(pe, ())| pe)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pe(id: u32) -> PeRef {
        (PoolHandle::new(b"p".to_vec()).expect("handle"), PeId(id))
    }

    #[test]
    fn only_what_was_handed_out_counts_and_at_a_bounded_rate() {
        let mut book = ReportBook::new(ReportConfig {
            remembered_per_association: 2,
            max_reports_per_second: 2,
            ..ReportConfig::default()
        });
        let t0 = Instant::now();
        let (pool, _) = pe(0);
        assert_eq!(book.admit(1, &pe(7), t0), Err(Ignored::NotHandedOut));
        book.handed_out(1, &pool, [PeId(7), PeId(8), PeId(9)]);
        // Only the last two are remembered.
        assert_eq!(book.admit(1, &pe(7), t0), Err(Ignored::NotHandedOut));
        assert_eq!(book.admit(1, &pe(8), t0), Ok(()));
        assert_eq!(book.admit(1, &pe(9), t0), Ok(()));
        assert_eq!(book.admit(1, &pe(9), t0), Err(Ignored::RateLimited));
        assert_eq!(book.admit(1, &pe(9), t0 + Duration::from_secs(1)), Ok(()));
        // Another association was handed nothing.
        assert_eq!(book.admit(2, &pe(8), t0), Err(Ignored::NotHandedOut));
        let mut withdrawn = book.forget(1);
        withdrawn.sort();
        assert_eq!(withdrawn, vec![pe(8), pe(9)]);
        assert_eq!(book.admit(1, &pe(8), t0), Err(Ignored::NotHandedOut));
    }

    #[test]
    fn disproved_reporters_are_not_believed_for_a_while() {
        let mut book = ReportBook::new(ReportConfig::default());
        let t0 = Instant::now();
        book.handed_out(1, &pe(0).0, [PeId(7)]);
        assert_eq!(book.admit(1, &pe(7), t0), Ok(()));
        book.disproved(&pe(7), [1, 99], t0);
        let later = t0 + Duration::from_secs(2);
        assert_eq!(book.admit(1, &pe(7), later), Err(Ignored::Disproved));
        let after = t0 + ReportConfig::default().disbelief;
        assert_eq!(book.admit(1, &pe(7), after), Ok(()));
    }

    #[test]
    fn a_probe_ends_by_answer_or_by_timeout() {
        let mut book = ReportBook::new(ReportConfig::default());
        let t0 = Instant::now();
        assert!(book.start_probe(pe(1), t0));
        assert!(!book.start_probe(pe(1), t0));
        assert!(book.start_probe(pe(2), t0));
        assert_eq!(book.probed_in(&pe(0).0), 2);
        assert!(book.end_probe(&pe(1)));
        assert!(!book.is_probed(&pe(1)));
        assert_eq!(book.poll_timeout(), Some(t0 + Duration::from_secs(1)));
        assert!(book.handle_timeout(t0).is_empty());
        assert_eq!(
            book.handle_timeout(t0 + Duration::from_secs(1)),
            vec![pe(2)]
        );
        assert_eq!(book.poll_timeout(), None);
    }
}
