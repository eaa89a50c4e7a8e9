//! Transport heartbeats (PPID 0): liveness of a peer that TCP alone would call alive, and RTT.
//!
//! Wire format of a heartbeat frame's payload (12 bytes, big-endian):
//!
//! ```text
//! kind u8 (1 = request, 2 = ack) | reserved [u8; 3] (sent as zero, ignored) | nonce u64
//! ```
//!
//! An ack echoes the nonce of the request it answers. Any other length or kind is a protocol
//! violation. Heartbeat frames are consumed by the transport and never delivered.
//!
//! [`HeartbeatTimer`] is the sans-I/O timing logic: the driver reports what it sent and received
//! and polls it with the current time; it answers "send a request now", "the peer is dead", and
//! when to poll next.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use thiserror::Error;

/// Encoded size of a heartbeat payload.
pub const HEARTBEAT_LEN: usize = 12;

const KIND_REQUEST: u8 = 1;
const KIND_ACK: u8 = 2;

/// While busy sending data, still probe once per this many intervals to keep the RTT fresh.
pub const RTT_PROBE_INTERVALS: u32 = 5;

/// Requests remembered for RTT matching: an ack arriving after a few newer requests still counts.
const OUTSTANDING_REQUESTS: usize = 8;

/// One heartbeat message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeartbeatMessage {
    Request { nonce: u64 },
    Ack { nonce: u64 },
}

/// A malformed heartbeat frame.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum HeartbeatError {
    #[error("heartbeat payload of {0} bytes (expected {HEARTBEAT_LEN})")]
    BadLength(usize),
    #[error("unknown heartbeat kind {0}")]
    UnknownKind(u8),
}

impl HeartbeatMessage {
    /// The 12-byte payload.
    pub fn encode(self) -> [u8; HEARTBEAT_LEN] {
        let (kind, nonce) = match self {
            HeartbeatMessage::Request { nonce } => (KIND_REQUEST, nonce),
            HeartbeatMessage::Ack { nonce } => (KIND_ACK, nonce),
        };
        let mut out = [0u8; HEARTBEAT_LEN];
        out[0] = kind;
        out[4..].copy_from_slice(&nonce.to_be_bytes());
        out
    }

    /// Parses a heartbeat payload.
    pub fn decode(payload: &[u8]) -> Result<Self, HeartbeatError> {
        let bytes: &[u8; HEARTBEAT_LEN] = payload
            .try_into()
            .map_err(|_| HeartbeatError::BadLength(payload.len()))?;
        let [kind, _, _, _, n @ ..] = *bytes;
        let nonce = u64::from_be_bytes(n);
        match kind {
            KIND_REQUEST => Ok(HeartbeatMessage::Request { nonce }),
            KIND_ACK => Ok(HeartbeatMessage::Ack { nonce }),
            other => Err(HeartbeatError::UnknownKind(other)),
        }
    }
}

/// Heartbeat timing of one association.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeartbeatConfig {
    /// Send a request after this long without sending anything.
    pub interval: Duration,
    /// Declare the peer dead after this long without receiving anything.
    pub timeout: Duration,
}

impl Default for HeartbeatConfig {
    /// 1 s interval, 3 s timeout.
    fn default() -> Self {
        HeartbeatConfig {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(3),
        }
    }
}

/// What the driver must do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeartbeatEvent {
    /// Nothing to do before [`HeartbeatTimer::poll_timeout`].
    Idle,
    /// Send this request now (already recorded as sent).
    SendRequest(HeartbeatMessage),
    /// Nothing was received for `silent_for` (>= the timeout): the association is dead.
    PeerDead { silent_for: Duration },
}

/// Sans-I/O heartbeat state machine; all time is passed in.
#[derive(Debug)]
pub struct HeartbeatTimer {
    config: HeartbeatConfig,
    last_sent: Instant,
    last_received: Instant,
    last_request: Instant,
    /// (nonce, sent at) of recent requests, oldest first.
    outstanding: VecDeque<(u64, Instant)>,
    next_nonce: u64,
    srtt: Option<Duration>,
    receive_blocked: bool,
}

impl HeartbeatTimer {
    /// A timer for an association established at `now`.
    pub fn new(config: HeartbeatConfig, now: Instant) -> Self {
        HeartbeatTimer {
            config,
            last_sent: now,
            last_received: now,
            last_request: now,
            outstanding: VecDeque::with_capacity(OUTSTANDING_REQUESTS),
            next_nonce: 1,
            srtt: None,
            receive_blocked: false,
        }
    }

    /// The configuration.
    pub fn config(&self) -> HeartbeatConfig {
        self.config
    }

    /// Bytes were written to the peer at `now`.
    pub fn handle_sent(&mut self, now: Instant) {
        self.last_sent = self.last_sent.max(now);
    }

    /// Bytes were read from the peer at `now`.
    pub fn handle_received(&mut self, now: Instant) {
        self.last_received = self.last_received.max(now);
    }

    /// While the application does not take delivered frames, the driver stops reading and
    /// cannot see the peer's traffic; liveness is not judged then, and a fresh timeout window
    /// starts when reading resumes.
    pub fn set_receive_blocked(&mut self, blocked: bool, now: Instant) {
        if self.receive_blocked && !blocked {
            self.handle_received(now);
        }
        self.receive_blocked = blocked;
    }

    /// Handles a received heartbeat; returns the ack to send for a request. Acks of one of the
    /// recent requests update the smoothed RTT.
    pub fn handle_heartbeat(
        &mut self,
        message: HeartbeatMessage,
        now: Instant,
    ) -> Option<HeartbeatMessage> {
        match message {
            HeartbeatMessage::Request { nonce } => Some(HeartbeatMessage::Ack { nonce }),
            HeartbeatMessage::Ack { nonce } => {
                if let Some(index) = self.outstanding.iter().position(|&(n, _)| n == nonce) {
                    let sent_at = self.outstanding[index].1;
                    // Older requests will not be acked any more (the peer answers in order).
                    self.outstanding.drain(..=index);
                    self.add_rtt_sample(now.saturating_duration_since(sent_at));
                }
                None
            }
        }
    }

    /// Smoothed round-trip time (RFC 6298 weights), once an ack has been seen.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// Advances the timer to `now`.
    pub fn handle_timeout(&mut self, now: Instant) -> HeartbeatEvent {
        if !self.receive_blocked {
            let silent_for = now.saturating_duration_since(self.last_received);
            if silent_for >= self.config.timeout {
                return HeartbeatEvent::PeerDead { silent_for };
            }
        }
        if now >= self.request_due() {
            let nonce = self.next_nonce;
            self.next_nonce = self.next_nonce.wrapping_add(1);
            if self.outstanding.len() == OUTSTANDING_REQUESTS {
                self.outstanding.pop_front();
            }
            self.outstanding.push_back((nonce, now));
            self.last_request = now;
            self.handle_sent(now);
            return HeartbeatEvent::SendRequest(HeartbeatMessage::Request { nonce });
        }
        HeartbeatEvent::Idle
    }

    /// When [`handle_timeout`](Self::handle_timeout) has something to do next.
    pub fn poll_timeout(&self) -> Instant {
        let request = self.request_due();
        if self.receive_blocked {
            request
        } else {
            request.min(self.last_received + self.config.timeout)
        }
    }

    fn request_due(&self) -> Instant {
        let idle_due = self.last_sent + self.config.interval;
        let probe_due = self.last_request + self.config.interval * RTT_PROBE_INTERVALS;
        idle_due.min(probe_due)
    }

    fn add_rtt_sample(&mut self, sample: Duration) {
        self.srtt = Some(match self.srtt {
            None => sample,
            Some(srtt) => (srtt * 7 + sample) / 8,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    fn config() -> HeartbeatConfig {
        HeartbeatConfig {
            interval: 100 * MS,
            timeout: 300 * MS,
        }
    }

    #[test]
    fn codec_layout_is_kind_reserved_nonce() {
        let bytes = HeartbeatMessage::Request {
            nonce: 0x0102_0304_0506_0708,
        }
        .encode();
        assert_eq!(bytes, [1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            HeartbeatMessage::decode(&bytes),
            Ok(HeartbeatMessage::Request {
                nonce: 0x0102_0304_0506_0708
            })
        );
        let ack = HeartbeatMessage::Ack { nonce: 9 }.encode();
        assert_eq!(ack[0], 2);
        assert_eq!(
            HeartbeatMessage::decode(&ack),
            Ok(HeartbeatMessage::Ack { nonce: 9 })
        );
    }

    #[test]
    fn codec_rejects_bad_length_and_kind_and_ignores_reserved() {
        assert_eq!(
            HeartbeatMessage::decode(&[1; 11]),
            Err(HeartbeatError::BadLength(11))
        );
        assert_eq!(
            HeartbeatMessage::decode(&[1; 13]),
            Err(HeartbeatError::BadLength(13))
        );
        let mut bytes = HeartbeatMessage::Ack { nonce: 5 }.encode();
        bytes[0] = 3;
        assert_eq!(
            HeartbeatMessage::decode(&bytes),
            Err(HeartbeatError::UnknownKind(3))
        );
        bytes[0] = 2;
        bytes[1..4].copy_from_slice(&[0xff; 3]);
        assert_eq!(
            HeartbeatMessage::decode(&bytes),
            Ok(HeartbeatMessage::Ack { nonce: 5 })
        );
    }

    proptest! {
        #[test]
        fn codec_never_panics_and_round_trips(bytes in prop::collection::vec(any::<u8>(), 0..32), nonce in any::<u64>(), ack in any::<bool>()) {
            let _ = HeartbeatMessage::decode(&bytes);
            let message = if ack { HeartbeatMessage::Ack { nonce } } else { HeartbeatMessage::Request { nonce } };
            prop_assert_eq!(HeartbeatMessage::decode(&message.encode()), Ok(message));
        }
    }

    #[test]
    fn idle_sender_requests_every_interval() {
        let t0 = Instant::now();
        let mut timer = HeartbeatTimer::new(config(), t0);
        assert_eq!(timer.poll_timeout(), t0 + 100 * MS);
        assert_eq!(timer.handle_timeout(t0 + 99 * MS), HeartbeatEvent::Idle);
        assert_eq!(
            timer.handle_timeout(t0 + 100 * MS),
            HeartbeatEvent::SendRequest(HeartbeatMessage::Request { nonce: 1 })
        );
        assert_eq!(
            timer.handle_timeout(t0 + 100 * MS),
            HeartbeatEvent::Idle,
            "one request per interval"
        );
        timer.handle_received(t0 + 150 * MS);
        assert_eq!(timer.poll_timeout(), t0 + 200 * MS);
        assert_eq!(
            timer.handle_timeout(t0 + 200 * MS),
            HeartbeatEvent::SendRequest(HeartbeatMessage::Request { nonce: 2 })
        );
    }

    #[test]
    fn sending_data_postpones_requests_but_probes_rtt_periodically() {
        let t0 = Instant::now();
        let mut timer = HeartbeatTimer::new(config(), t0);
        let mut requests = 0;
        // Data written and received every 50 ms for 1 s: no idle request, but RTT probes
        // every RTT_PROBE_INTERVALS intervals.
        for step in 1..=20 {
            let now = t0 + 50 * MS * step;
            timer.handle_sent(now);
            timer.handle_received(now);
            if let HeartbeatEvent::SendRequest(_) = timer.handle_timeout(now) {
                requests += 1;
            }
        }
        assert_eq!(requests, 2, "one probe per 500 ms over 1 s");
    }

    #[test]
    fn silent_peer_is_dead_after_timeout_even_while_we_send() {
        let t0 = Instant::now();
        let mut timer = HeartbeatTimer::new(config(), t0);
        let mut requests = 0;
        let died_at = loop {
            let now = timer.poll_timeout();
            match timer.handle_timeout(now) {
                HeartbeatEvent::PeerDead { silent_for } => {
                    assert_eq!(silent_for, 300 * MS);
                    break now;
                }
                HeartbeatEvent::SendRequest(_) => requests += 1,
                HeartbeatEvent::Idle => panic!("woken at {:?} for nothing", now - t0),
            }
            assert!(now < t0 + 300 * MS);
        };
        assert_eq!(died_at, t0 + 300 * MS);
        assert_eq!(requests, 2, "requests at 100 and 200 ms");
    }

    #[test]
    fn receiving_anything_keeps_the_peer_alive() {
        let t0 = Instant::now();
        let mut timer = HeartbeatTimer::new(config(), t0);
        for step in 1..=10 {
            let now = t0 + 250 * MS * step;
            assert!(!matches!(
                timer.handle_timeout(now),
                HeartbeatEvent::PeerDead { .. }
            ));
            timer.handle_received(now);
        }
    }

    #[test]
    fn blocked_receiving_suspends_the_verdict_and_restarts_the_window() {
        let t0 = Instant::now();
        let mut timer = HeartbeatTimer::new(config(), t0);
        timer.set_receive_blocked(true, t0 + 10 * MS);
        for step in 1..=10 {
            timer.handle_sent(t0 + 100 * MS * step);
            assert!(!matches!(
                timer.handle_timeout(t0 + 100 * MS * step),
                HeartbeatEvent::PeerDead { .. }
            ));
        }
        timer.set_receive_blocked(false, t0 + 1000 * MS);
        assert!(!matches!(
            timer.handle_timeout(t0 + 1299 * MS),
            HeartbeatEvent::PeerDead { .. }
        ));
        assert_eq!(
            timer.handle_timeout(t0 + 1300 * MS),
            HeartbeatEvent::PeerDead {
                silent_for: 300 * MS
            }
        );
    }

    #[test]
    fn requests_are_acked_and_acks_measure_smoothed_rtt() {
        let t0 = Instant::now();
        let mut timer = HeartbeatTimer::new(config(), t0);
        assert_eq!(
            timer.handle_heartbeat(HeartbeatMessage::Request { nonce: 77 }, t0),
            Some(HeartbeatMessage::Ack { nonce: 77 })
        );
        assert_eq!(timer.srtt(), None);
        let HeartbeatEvent::SendRequest(HeartbeatMessage::Request { nonce }) =
            timer.handle_timeout(t0 + 100 * MS)
        else {
            panic!("expected a request");
        };
        assert_eq!(
            timer.handle_heartbeat(HeartbeatMessage::Ack { nonce }, t0 + 180 * MS),
            None
        );
        assert_eq!(timer.srtt(), Some(80 * MS));
        // A duplicate or unknown ack does not change the estimate.
        timer.handle_heartbeat(HeartbeatMessage::Ack { nonce }, t0 + 900 * MS);
        timer.handle_heartbeat(HeartbeatMessage::Ack { nonce: 12345 }, t0 + 900 * MS);
        assert_eq!(timer.srtt(), Some(80 * MS));
        timer.handle_received(t0 + 180 * MS);
        let HeartbeatEvent::SendRequest(HeartbeatMessage::Request { nonce }) =
            timer.handle_timeout(t0 + 280 * MS)
        else {
            panic!("expected a request");
        };
        timer.handle_heartbeat(HeartbeatMessage::Ack { nonce }, t0 + 296 * MS);
        // 7/8 * 80 + 1/8 * 16 = 72 ms.
        assert_eq!(timer.srtt(), Some(72 * MS));
    }

    #[test]
    fn late_ack_of_an_older_request_still_counts() {
        let t0 = Instant::now();
        let mut timer = HeartbeatTimer::new(config(), t0);
        let HeartbeatEvent::SendRequest(HeartbeatMessage::Request { nonce: first }) =
            timer.handle_timeout(t0 + 100 * MS)
        else {
            panic!("expected a request");
        };
        let HeartbeatEvent::SendRequest(_) = timer.handle_timeout(t0 + 200 * MS) else {
            panic!("expected a second request");
        };
        timer.handle_heartbeat(HeartbeatMessage::Ack { nonce: first }, t0 + 250 * MS);
        assert_eq!(timer.srtt(), Some(150 * MS));
    }
}
