//! Means and 95 % confidence intervals over repetitions (Student's t).

/// A mean with the half-width of its 95 % confidence interval.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    pub mean: f64,
    /// Half-width of the 95 % confidence interval; 0 for a single sample (unknown, not zero:
    /// see `samples`).
    pub half_width: f64,
    pub samples: usize,
}

/// Two-sided 95 % quantiles of Student's t for 1 to 30 degrees of freedom.
const T_95: [f64; 30] = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
    2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
    2.052, 2.048, 2.045, 2.042,
];

/// The t quantile for `degrees` degrees of freedom (1.96 beyond the table).
pub fn t_quantile(degrees: usize) -> f64 {
    match degrees {
        0 => f64::NAN,
        d if d <= T_95.len() => T_95[d - 1],
        _ => 1.960,
    }
}

/// Mean and 95 % confidence interval of `samples` (NaNs are left out).
pub fn estimate(samples: &[f64]) -> Estimate {
    let values: Vec<f64> = samples.iter().copied().filter(|v| !v.is_nan()).collect();
    let n = values.len();
    if n == 0 {
        return Estimate {
            mean: f64::NAN,
            half_width: f64::NAN,
            samples: 0,
        };
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    if n == 1 {
        return Estimate {
            mean,
            half_width: 0.0,
            samples: 1,
        };
    }
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    Estimate {
        mean,
        half_width: t_quantile(n - 1) * (variance / n as f64).sqrt(),
        samples: n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_textbook_interval() {
        // 10, 12, 14: mean 12, s = 2, t(2) = 4.303: 12 ± 4.303 * 2 / sqrt(3).
        let e = estimate(&[10.0, 12.0, 14.0]);
        assert_eq!(e.mean, 12.0);
        assert!((e.half_width - 4.303 * 2.0 / 3f64.sqrt()).abs() < 1e-9);
        assert_eq!(e.samples, 3);
    }

    #[test]
    fn degenerate_inputs() {
        assert!(estimate(&[]).mean.is_nan());
        assert_eq!(estimate(&[5.0]).half_width, 0.0);
        assert_eq!(estimate(&[5.0, f64::NAN, 5.0]).half_width, 0.0);
        assert_eq!(estimate(&[5.0, f64::NAN, 5.0]).samples, 2);
        assert_eq!(t_quantile(1), 12.706);
        assert_eq!(t_quantile(100), 1.96);
    }
}
