//! `--capacity`: a token bucket of iterations shared by all sessions of the PE.
//!
//! Work is charged after it was done (the cost of a pixel is known only then); a negative
//! balance is paid back by waiting. Pieces are kept small (see `Session::pixels_for`) so the
//! rate stays smooth rather than bursty.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Seconds of capacity the bucket holds when idle: a short burst, no long catch-up.
const BURST_SECONDS: f64 = 0.05;

/// Limits the iterations per second of everyone who charges it.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    /// (tokens, time of the last update)
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    /// A limiter of `iterations_per_second` (at least 1), full at `now`.
    pub fn new(iterations_per_second: u64, now: Instant) -> Self {
        let rate = (iterations_per_second.max(1)) as f64;
        let burst = (rate * BURST_SECONDS).max(1.0);
        RateLimiter {
            rate,
            burst,
            state: Mutex::new((burst, now)),
        }
    }

    /// Iterations per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Charges `iterations` done at `now`; returns how long the caller must wait before more
    /// work (zero while the balance is positive).
    pub fn charge(&self, iterations: u64, now: Instant) -> Duration {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, last) = &mut *state;
        let elapsed = now.saturating_duration_since(*last).as_secs_f64();
        *tokens = (*tokens + elapsed * self.rate).min(self.burst);
        *last = now.max(*last);
        *tokens -= iterations as f64;
        if *tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-*tokens / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debt_is_paid_back_at_the_rate() {
        let t0 = Instant::now();
        let limiter = RateLimiter::new(1000, t0);
        // Burst of 50 iterations is free.
        assert_eq!(limiter.charge(50, t0), Duration::ZERO);
        // 500 more: half a second of debt.
        let wait = limiter.charge(500, t0);
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-9, "{wait:?}");
        // After waiting it off, the balance is zero: the next iteration costs 1 ms.
        let later = t0 + wait;
        let wait = limiter.charge(1, later);
        assert!((wait.as_secs_f64() - 0.001).abs() < 1e-6, "{wait:?}");
    }

    #[test]
    fn long_run_rate_matches_capacity() {
        // Simulated worker: charge 100 iterations, wait as told; 10 s of simulated time.
        let t0 = Instant::now();
        let limiter = RateLimiter::new(10_000, t0);
        let mut now = t0;
        let mut done = 0u64;
        while now < t0 + Duration::from_secs(10) {
            done += 100;
            now += limiter.charge(100, now);
        }
        let rate = done as f64 / 10.0;
        assert!((rate - 10_000.0).abs() / 10_000.0 < 0.01, "rate {rate}");
    }

    #[test]
    fn idle_time_does_not_accumulate_beyond_the_burst() {
        let t0 = Instant::now();
        let limiter = RateLimiter::new(1000, t0);
        let later = t0 + Duration::from_secs(100);
        // Only 50 iterations of burst, not 100,000.
        assert!(limiter.charge(1050, later) > Duration::from_millis(999));
    }
}
