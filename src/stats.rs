//! The few statistical functions the gate shares: Wilson intervals, the normal distribution's
//! function and quantile (from statrs), and the Gaussian density the mixture models use.

use statrs::distribution::{ContinuousCDF, Normal};

fn standard_normal() -> Normal {
    Normal::standard()
}

/// Wilson score interval for `successes` out of `n` at the two-sided level whose normal
/// quantile is `z`. Stays inside [0, 1] and behaves at 0 and n, unlike the normal approximation.
pub fn wilson(successes: usize, n: usize, z: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let n = n as f64;
    let p = successes as f64 / n;
    let z2 = z * z;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = z * ((p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt()) / (1.0 + z2 / n);
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// Normal quantile for a two-sided confidence level (0.5 < level < 1): 1.96 for 0.95.
pub fn z_for(level: f64) -> f64 {
    standard_normal().inverse_cdf(1.0 - (1.0 - level) / 2.0)
}

/// Standard normal distribution function.
pub fn normal_cdf(x: f64) -> f64 {
    standard_normal().cdf(x)
}

pub fn median(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// The 2.5th and 97.5th (at z = 1.96) percentiles of bootstrap replicates.
pub fn percentile_interval(mut replicates: Vec<f64>, z: f64) -> (f64, f64) {
    replicates.sort_by(f64::total_cmp);
    let tail = (1.0 - normal_cdf(z)).clamp(0.0, 0.5);
    let at = |q: f64| replicates[((q * (replicates.len() - 1) as f64).round() as usize).min(replicates.len() - 1)];
    (at(tail), at(1.0 - tail))
}

/// A normal density with mean and variance, as the two-component mixtures fit it.
#[derive(Debug, Clone, Copy)]
pub struct Gaussian {
    pub mean: f64,
    pub var: f64,
}

impl Gaussian {
    /// Log-density at `x` (the variance is floored by the callers, never 0).
    pub fn log_pdf(&self, x: f64) -> f64 {
        -0.5 * ((2.0 * std::f64::consts::PI * self.var).ln() + (x - self.mean).powi(2) / self.var)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn z_of_common_levels() {
        assert!((z_for(0.95) - 1.959964).abs() < 1e-4);
        assert!((z_for(0.99) - 2.575829).abs() < 1e-4);
    }

    #[test]
    fn wilson_matches_a_textbook_value() {
        // 81 of 263 at 95%: (0.2553, 0.3662) (Newcombe 1998's worked example, method 3)
        let (lo, hi) = wilson(81, 263, 1.959964);
        assert!((lo - 0.2553).abs() < 5e-4 && (hi - 0.3662).abs() < 5e-4, "{lo} {hi}");
        assert_eq!(wilson(0, 0, 1.96), (0.0, 1.0));
        let (lo, hi) = wilson(10, 10, 1.96);
        assert!(lo > 0.69 && hi == 1.0);
    }

    #[test]
    fn quantile_and_distribution_function_agree() {
        assert!((z_for(0.95) - 1.959964).abs() < 1e-5);
        assert!((normal_cdf(z_for(0.9)) - 0.95).abs() < 1e-9);
        let g = Gaussian { mean: 1.0, var: 4.0 };
        assert!((g.log_pdf(1.0) - (-0.5 * (8.0 * std::f64::consts::PI).ln())).abs() < 1e-12);
    }
}
