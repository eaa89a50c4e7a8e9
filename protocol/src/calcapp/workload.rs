//! What a CalcApp pool user asks for: job sizes and the times between jobs, and the request
//! interval that gives a target utilisation (the seed paper's formula).

use std::str::FromStr;

use rand::{Rng, RngExt};

/// How a quantity (job size, time between jobs) is drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Distribution {
    /// Always the mean.
    Fixed(f64),
    /// Negative-exponential with this mean (rsplib's and the paper's choice).
    Exponential(f64),
}

impl Distribution {
    pub fn mean(&self) -> f64 {
        match *self {
            Distribution::Fixed(mean) | Distribution::Exponential(mean) => mean,
        }
    }

    /// One draw, never negative.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> f64 {
        match *self {
            Distribution::Fixed(mean) => mean,
            Distribution::Exponential(mean) => {
                // 1 - u is in (0, 1]: its logarithm is finite.
                let uniform: f64 = rng.random();
                -mean * (1.0 - uniform).ln()
            }
        }
    }
}

impl FromStr for Distribution {
    type Err = String;

    /// `exp:MEAN`, `fixed:MEAN`, or a bare mean (exponential).
    fn from_str(text: &str) -> Result<Self, String> {
        let (kind, mean) = match text.split_once(':') {
            Some((kind, mean)) => (kind, mean),
            None => ("exp", text),
        };
        let mean: f64 = mean
            .trim()
            .parse()
            .map_err(|_| format!("`{mean}` is not a number"))?;
        if !(mean.is_finite() && mean >= 0.0) {
            return Err(format!("`{mean}` must be a finite number, at least 0"));
        }
        match kind.trim() {
            "exp" | "exponential" => Ok(Distribution::Exponential(mean)),
            "fixed" | "const" => Ok(Distribution::Fixed(mean)),
            other => Err(format!("unknown distribution `{other}` (exp or fixed)")),
        }
    }
}

/// The mean time between one pool user's jobs, in seconds, that loads the pool to
/// `utilization`: all pool users together offer `utilization` of the pool's capacity,
/// `pool_users × job_size / interval = utilization × total_capacity`. With the paper's 100
/// PUs, 10 PEs of 10^6 calculations/s, jobs of 10^7 and 60 %: 166.7 s.
pub fn request_interval(
    pool_users: usize,
    mean_job_size: f64,
    utilization: f64,
    total_capacity: f64,
) -> Option<f64> {
    let interval = pool_users as f64 * mean_job_size / (utilization * total_capacity);
    (interval.is_finite() && interval > 0.0).then_some(interval)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn the_papers_interval() {
        let interval = request_interval(100, 1e7, 0.6, 10.0 * 1e6).unwrap();
        assert!((interval - 166.666_666).abs() < 1e-3, "{interval}");
        assert_eq!(request_interval(100, 1e7, 0.0, 1e7), None);
    }

    #[test]
    fn exponential_draws_have_their_mean() {
        let mut rng = StdRng::seed_from_u64(7);
        let distribution: Distribution = "exp:10".parse().unwrap();
        let n = 200_000;
        let mean = (0..n).map(|_| distribution.sample(&mut rng)).sum::<f64>() / n as f64;
        // Standard error 10/sqrt(n) = 0.022: 5 of them.
        assert!((mean - 10.0).abs() < 0.12, "{mean}");
        assert_eq!("fixed:3".parse(), Ok(Distribution::Fixed(3.0)));
        assert_eq!("4".parse(), Ok(Distribution::Exponential(4.0)));
        assert!("gauss:3".parse::<Distribution>().is_err());
        assert!("exp:-1".parse::<Distribution>().is_err());
    }
}
