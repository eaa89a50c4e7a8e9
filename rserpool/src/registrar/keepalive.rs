//! Endpoint Keep-Alive supervision of the PEs a registrar owns (RFC 5352 §3.5, rsplib's
//! KEEPALIVE_TRANSMISSION / KEEPALIVE_TIMEOUT timers).
//!
//! Per PE: `interval` (±12.5 %, so that 10,000 PEs registered in one burst do not all get
//! their keep-alive in the same millisecond) after the last sign of life a Keep-Alive is due;
//! once sent, the PE has `timeout` to acknowledge it, else it is removed. An Ack or a
//! re-registration restarts the cycle. Sans-I/O: the caller passes `now` and a random source,
//! and calls [`KeepAliveSupervisor::handle_timeout`] at [`KeepAliveSupervisor::poll_timeout`].

use std::time::{Duration, Instant};

use rand::{Rng, RngExt};

use crate::timer::Deadlines;
use crate::wire::{PeId, PoolHandle};

/// Keep-alive timing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeepAliveConfig {
    /// Time between the last sign of life and the next Keep-Alive (rsplib 5 s), spread ±12.5 %.
    pub interval: Duration,
    /// Time a PE has to acknowledge a Keep-Alive (rsplib 5 s).
    pub timeout: Duration,
}

impl Default for KeepAliveConfig {
    fn default() -> Self {
        KeepAliveConfig {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
        }
    }
}

/// A PE under supervision.
pub type PeKey = (PoolHandle, PeId);

/// What the caller must do for a PE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeepAliveAction {
    /// Send an Endpoint Keep-Alive to the PE; the timeout runs from now.
    Send(PeKey),
    /// The PE did not acknowledge in time: remove it.
    TimedOut(PeKey),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// A Keep-Alive is due at the deadline.
    Idle,
    /// A Keep-Alive was sent; the PE is removed at the deadline.
    AwaitingAck,
}

/// Keep-alive timers of every supervised PE.
#[derive(Clone, Debug, Default)]
pub struct KeepAliveSupervisor {
    config: KeepAliveConfig,
    states: Deadlines<PeKey, Phase>,
}

impl KeepAliveSupervisor {
    /// An empty supervisor.
    pub fn new(config: KeepAliveConfig) -> Self {
        KeepAliveSupervisor {
            config,
            ..Default::default()
        }
    }

    /// The timing in use.
    pub fn config(&self) -> KeepAliveConfig {
        self.config
    }

    /// Number of supervised PEs.
    pub fn len(&self) -> usize {
        self.states.len()
    }

    /// Whether no PE is supervised.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// Starts or restarts the cycle of a PE after a (re-)registration: the next Keep-Alive is
    /// due one spread interval from now.
    pub fn alive<R: Rng + ?Sized>(&mut self, key: PeKey, now: Instant, rng: &mut R) {
        let due = now + spread(self.config.interval, rng);
        self.set(key, Phase::Idle, due);
    }

    /// An Endpoint Keep-Alive Ack arrived. Returns `false` (and changes nothing) for a PE that
    /// is not supervised.
    pub fn acknowledged<R: Rng + ?Sized>(
        &mut self,
        key: &PeKey,
        now: Instant,
        rng: &mut R,
    ) -> bool {
        if !self.states.contains_key(key) {
            return false;
        }
        self.alive(key.clone(), now, rng);
        true
    }

    /// Stops supervising a PE (deregistered or removed).
    pub fn remove(&mut self, key: &PeKey) {
        self.states.remove(key);
    }

    /// Whether a Keep-Alive to this PE is waiting for its Ack.
    pub fn awaiting_ack(&self, key: &PeKey) -> bool {
        matches!(self.states.get(key), Some((Phase::AwaitingAck, _)))
    }

    /// The earliest deadline, to arm the caller's timer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.states.poll_timeout()
    }

    /// Everything due at or before `now`: Keep-Alives to send (their timeouts start now) and
    /// PEs that timed out (no longer supervised; the caller removes them).
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<KeepAliveAction> {
        let mut actions = Vec::new();
        while let Some((key, phase)) = self.states.pop_due(now) {
            match phase {
                Phase::Idle => {
                    self.set(key.clone(), Phase::AwaitingAck, now + self.config.timeout);
                    actions.push(KeepAliveAction::Send(key));
                }
                Phase::AwaitingAck => actions.push(KeepAliveAction::TimedOut(key)),
            }
        }
        actions
    }

    fn set(&mut self, key: PeKey, phase: Phase, at: Instant) {
        self.states.insert(key, phase, at);
    }
}

/// `interval` varied uniformly by ±12.5 % (rsplib's spread for its periodic timers).
pub fn spread<R: Rng + ?Sized>(interval: Duration, rng: &mut R) -> Duration {
    let factor: f64 = rng.random_range(0.875..=1.125);
    interval.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn key(id: u32) -> PeKey {
        (
            PoolHandle::new(b"pool".to_vec()).expect("valid handle"),
            PeId(id),
        )
    }

    fn config() -> KeepAliveConfig {
        KeepAliveConfig {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
        }
    }

    #[test]
    fn keepalive_is_sent_within_the_spread_and_times_out_without_ack() {
        let mut rng = StdRng::seed_from_u64(1);
        let t0 = Instant::now();
        let mut ka = KeepAliveSupervisor::new(config());
        ka.alive(key(1), t0, &mut rng);
        let due = ka.poll_timeout().expect("armed");
        assert!(due >= t0 + Duration::from_millis(4375) && due <= t0 + Duration::from_millis(5625));
        assert!(ka.handle_timeout(due - Duration::from_millis(1)).is_empty());
        assert_eq!(ka.handle_timeout(due), vec![KeepAliveAction::Send(key(1))]);
        assert!(ka.awaiting_ack(&key(1)));
        assert_eq!(ka.poll_timeout(), Some(due + Duration::from_secs(2)));
        assert!(
            ka.handle_timeout(due + Duration::from_millis(1999))
                .is_empty()
        );
        assert_eq!(
            ka.handle_timeout(due + Duration::from_secs(2)),
            vec![KeepAliveAction::TimedOut(key(1))]
        );
        assert!(ka.is_empty());
        assert_eq!(ka.poll_timeout(), None);
    }

    #[test]
    fn ack_restarts_the_cycle_and_unknown_acks_are_ignored() {
        let mut rng = StdRng::seed_from_u64(2);
        let t0 = Instant::now();
        let mut ka = KeepAliveSupervisor::new(config());
        ka.alive(key(1), t0, &mut rng);
        let due = ka.poll_timeout().expect("armed");
        assert_eq!(ka.handle_timeout(due).len(), 1);
        let ack_at = due + Duration::from_secs(1);
        assert!(ka.acknowledged(&key(1), ack_at, &mut rng));
        assert!(!ka.awaiting_ack(&key(1)));
        assert!(!ka.acknowledged(&key(2), ack_at, &mut rng));
        // Past the old timeout nothing happens; the next Keep-Alive is an interval after the Ack.
        assert!(ka.handle_timeout(due + Duration::from_secs(3)).is_empty());
        let next = ka.poll_timeout().expect("armed");
        assert!(next >= ack_at + Duration::from_millis(4375));
        assert_eq!(ka.handle_timeout(next), vec![KeepAliveAction::Send(key(1))]);
    }

    #[test]
    fn removed_pes_produce_nothing() {
        let mut rng = StdRng::seed_from_u64(3);
        let t0 = Instant::now();
        let mut ka = KeepAliveSupervisor::new(config());
        ka.alive(key(1), t0, &mut rng);
        ka.alive(key(2), t0, &mut rng);
        ka.remove(&key(1));
        let actions = ka.handle_timeout(t0 + Duration::from_secs(6));
        assert_eq!(actions, vec![KeepAliveAction::Send(key(2))]);
    }

    #[test]
    fn spread_stays_within_twelve_and_a_half_percent_and_varies() {
        let mut rng = StdRng::seed_from_u64(4);
        let samples: Vec<Duration> = (0..1000)
            .map(|_| spread(Duration::from_secs(8), &mut rng))
            .collect();
        assert!(
            samples
                .iter()
                .all(|d| *d >= Duration::from_secs(7) && *d <= Duration::from_secs(9))
        );
        let min = samples.iter().min().expect("samples");
        let max = samples.iter().max().expect("samples");
        assert!(
            *max - *min > Duration::from_millis(1500),
            "spread too narrow"
        );
    }
}
