//! Estimates the noise rate from O2U scores alone, so the gate can flag suspects without being
//! told how noisy a delivery is.
//!
//! Method: a two-component Gaussian mixture fitted by EM to the log-shifted scores
//! `ln(s − min s + ε·range)`. A sample's score is its mean stage-2 loss up to a constant, and
//! per-sample cross-entropy is close to log-normal: clean samples pile up near zero loss with a
//! long right tail that a Gaussian on raw scores mistakes for noise (on MNIST with 20% symmetric
//! noise the raw fit estimates 0.27, the log fit 0.199 against a true 0.199; ε between 1e-6 and
//! 1e-3 of the range changes the estimate by under 0.001). The noise rate is the weight of the
//! higher-mean component and a sample is flagged when its posterior of belonging to that
//! component exceeds one half. A single Gaussian is preferred (rate 0, nothing flagged) when the
//! Bayesian information criterion says the second component does not pay for its parameters,
//! which is what a clean delivery looks like.

use serde::Serialize;

use crate::stats::Gaussian;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NoiseEstimate {
    /// Estimated share of mislabelled samples, 0..=1.
    pub rate: f64,
    /// The lowest score that is flagged (`f32::INFINITY` when nothing is).
    pub threshold: f32,
    /// Whether the two-component model won the BIC comparison.
    pub two_components: bool,
    /// Ashman's D of the two components, |μ₁ − μ₂| / √((σ₁² + σ₂²) / 2): above 2 they form
    /// separate modes; below, the split runs through one skewed mode. 0 with one component.
    pub separation: f64,
}

/// One mixture component: its weight and its Gaussian.
#[derive(Debug, Clone, Copy)]
struct Component {
    weight: f64,
    mean: f64,
    var: f64,
}

impl Component {
    fn log_pdf(&self, x: f64) -> f64 {
        Gaussian { mean: self.mean, var: self.var }.log_pdf(x)
    }
}

const MIN_VAR_FRACTION: f64 = 1e-6;
/// ε: how far below the lowest score the log's origin sits, as a share of the score range.
const LOG_OFFSET: f64 = 1e-4;

/// Fits the mixture and returns the estimate. Scores must be finite.
pub fn estimate(scores: &[f32]) -> NoiseEstimate {
    let nothing = NoiseEstimate { rate: 0.0, threshold: f32::INFINITY, two_components: false, separation: 0.0 };
    let n = scores.len();
    if n < 10 {
        return nothing;
    }
    let (lo, hi) = scores.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &s| (lo.min(s as f64), hi.max(s as f64)));
    let shift = lo - LOG_OFFSET * (hi - lo).max(f64::MIN_POSITIVE);
    let xs: Vec<f64> = scores.iter().map(|&s| (s as f64 - shift).ln()).collect();
    let mean = xs.iter().sum::<f64>() / n as f64;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
    if var <= 0.0 {
        return nothing;
    }
    let floor = var * MIN_VAR_FRACTION;
    let single = Component { weight: 1.0, mean, var };
    let single_ll: f64 = xs.iter().map(|&x| single.log_pdf(x)).sum();

    let (low, high, mixture_ll) = fit_two(&xs, floor);
    let nf = n as f64;
    let bic_single = 2.0 * nf.ln() - 2.0 * single_ll;
    let bic_mixture = 5.0 * nf.ln() - 2.0 * mixture_ll;
    if bic_mixture >= bic_single {
        return nothing;
    }
    // Flagged = posterior(high) > 0.5; find the lowest such score (the mixture's decision
    // boundary is where the weighted densities cross, above the low component's mean).
    let mut flagged = 0usize;
    let mut threshold = f32::INFINITY;
    for (&x, &score) in xs.iter().zip(scores) {
        if posterior_high(&low, &high, x) > 0.5 && x > low.mean {
            flagged += 1;
            threshold = threshold.min(score);
        }
    }
    if flagged == 0 {
        return nothing;
    }
    let separation = (high.mean - low.mean).abs() / ((high.var + low.var) / 2.0).sqrt();
    NoiseEstimate { rate: high.weight, threshold, two_components: true, separation }
}

fn posterior_high(low: &Component, high: &Component, x: f64) -> f64 {
    let a = low.weight.ln() + low.log_pdf(x);
    let b = high.weight.ln() + high.log_pdf(x);
    let m = a.max(b);
    let (ea, eb) = ((a - m).exp(), (b - m).exp());
    eb / (ea + eb)
}

/// EM for two 1-D Gaussians, initialised by splitting at the 80th percentile (labels bought
/// from vendors are mostly right). Returns (low, high, log-likelihood).
fn fit_two(xs: &[f64], floor: f64) -> (Component, Component, f64) {
    let mut sorted = xs.to_vec();
    sorted.sort_by(f64::total_cmp);
    let split = sorted[(sorted.len() * 4) / 5];
    let init = |pred: &dyn Fn(f64) -> bool| {
        let part: Vec<f64> = xs.iter().copied().filter(|&x| pred(x)).collect();
        let m = part.iter().sum::<f64>() / part.len().max(1) as f64;
        let v = part.iter().map(|x| (x - m).powi(2)).sum::<f64>() / part.len().max(1) as f64;
        Component { weight: part.len().max(1) as f64 / xs.len() as f64, mean: m, var: v.max(floor) }
    };
    let mut low = init(&|x| x < split);
    let mut high = init(&|x| x >= split);
    let mut ll = f64::NEG_INFINITY;
    let mut resp = vec![0.0f64; xs.len()];
    for _ in 0..500 {
        // E step
        let mut new_ll = 0.0;
        for (r, &x) in resp.iter_mut().zip(xs) {
            let a = low.weight.ln() + low.log_pdf(x);
            let b = high.weight.ln() + high.log_pdf(x);
            let m = a.max(b);
            let total = m + ((a - m).exp() + (b - m).exp()).ln();
            *r = (b - total).exp();
            new_ll += total;
        }
        // M step
        let (mut w_h, mut s_h, mut s_l) = (0.0, 0.0, 0.0);
        for (&r, &x) in resp.iter().zip(xs) {
            w_h += r;
            s_h += r * x;
            s_l += (1.0 - r) * x;
        }
        let w_l = xs.len() as f64 - w_h;
        if w_h < 1.0 || w_l < 1.0 {
            break; // one component emptied: the single Gaussian will win the BIC test
        }
        let (m_h, m_l) = (s_h / w_h, s_l / w_l);
        let (mut v_h, mut v_l) = (0.0, 0.0);
        for (&r, &x) in resp.iter().zip(xs) {
            v_h += r * (x - m_h).powi(2);
            v_l += (1.0 - r) * (x - m_l).powi(2);
        }
        high = Component { weight: w_h / xs.len() as f64, mean: m_h, var: (v_h / w_h).max(floor) };
        low = Component { weight: w_l / xs.len() as f64, mean: m_l, var: (v_l / w_l).max(floor) };
        let converged = (new_ll - ll).abs() < 1e-9 * new_ll.abs().max(1.0);
        ll = new_ll;
        if converged {
            break;
        }
    }
    if low.mean > high.mean {
        std::mem::swap(&mut low, &mut high);
    }
    (low, high, ll)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};
    use rand_distr::{Distribution, Normal};

    /// Loss-like scores: log-normal mean losses (clean near zero, noisy around e^0.8), minus
    /// their mean, as O2U produces them.
    fn mixture(n: usize, rate: f64, seed: u64) -> (Vec<f32>, Vec<bool>) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let clean = Normal::new(-4.0, 1.0).unwrap();
        let noisy = Normal::new(0.8, 0.3).unwrap();
        let (losses, noisy_flags): (Vec<f64>, Vec<bool>) = (0..n)
            .map(|_| {
                let is_noisy = rng.random::<f64>() < rate;
                let log_loss: f64 = if is_noisy { noisy.sample(&mut rng) } else { clean.sample(&mut rng) };
                (log_loss.exp(), is_noisy)
            })
            .unzip();
        let mean = losses.iter().sum::<f64>() / n as f64;
        (losses.iter().map(|l| (l - mean) as f32).collect(), noisy_flags)
    }

    #[test]
    fn recovers_the_rate_of_a_clear_mixture() {
        for rate in [0.05, 0.2, 0.45] {
            let (scores, _) = mixture(20_000, rate, 7);
            let est = estimate(&scores);
            assert!(est.two_components);
            assert!((est.rate - rate).abs() < 0.01, "rate {rate}: estimated {}", est.rate);
        }
    }

    #[test]
    fn threshold_separates_the_components() {
        let (scores, noisy) = mixture(10_000, 0.2, 3);
        let est = estimate(&scores);
        let errors = scores.iter().zip(&noisy).filter(|(&s, &n)| (s >= est.threshold) != n).count();
        assert!(errors < 30, "{errors} misclassified");
    }

    #[test]
    fn a_single_log_normal_means_no_noise() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let normal = Normal::<f64>::new(-3.0, 1.0).unwrap();
        let scores: Vec<f32> = (0..5_000).map(|_| normal.sample(&mut rng).exp() as f32 - 0.1).collect();
        let est = estimate(&scores);
        assert_eq!(est.rate, 0.0);
        assert!(est.threshold.is_infinite());
    }

    #[test]
    fn degenerate_inputs_flag_nothing() {
        assert_eq!(estimate(&[]).rate, 0.0);
        assert_eq!(estimate(&[1.0; 100]).rate, 0.0);
    }
}
