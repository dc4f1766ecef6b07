//! A delivery's verdict: estimated label accuracy with a confidence interval, accuracy on gold
//! items, and accept / reject / review against the vendor's SLA.

use crate::{accuracy::AccuracyEstimate, wire::Decision};

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

/// Normal quantile for a two-sided confidence level (0.5 < level < 1), by bisection on erf.
pub fn z_for(level: f64) -> f64 {
    let target = 1.0 - (1.0 - level) / 2.0;
    let (mut lo, mut hi) = (0.0f64, 10.0f64);
    for _ in 0..100 {
        let mid = (lo + hi) / 2.0;
        if normal_cdf(mid) < target { lo = mid } else { hi = mid }
    }
    (lo + hi) / 2.0
}

fn normal_cdf(x: f64) -> f64 {
    0.5 * (1.0 + erf(x / std::f64::consts::SQRT_2))
}

/// Abramowitz–Stegun 7.1.26 (error < 1.5e-7), enough for interval quantiles.
fn erf(x: f64) -> f64 {
    let sign = x.signum();
    let x = x.abs();
    let t = 1.0 / (1.0 + 0.3275911 * x);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    sign * (1.0 - poly * (-x * x).exp())
}

#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    pub estimate: AccuracyEstimate,
    pub gold_items: usize,
    pub gold_accuracy: Option<f64>,
    pub decision: Decision,
    /// `gold` when enough gold items decided, else `estimate`.
    pub decided_by: &'static str,
}

/// Decides on the (calibrated) estimate, or on the delivery's own gold answers when it has at
/// least `min_gold` of them: accept when the interval clears the SLA, reject when it lies below.
pub fn assess(estimate: AccuracyEstimate, gold_items: usize, gold_correct: usize, sla: f64, min_gold: usize, z: f64) -> Assessment {
    let gold_accuracy = (gold_items > 0).then(|| gold_correct as f64 / gold_items as f64);
    let (interval, decided_by) = if gold_items >= min_gold && gold_items > 0 { (wilson(gold_correct, gold_items, z), "gold") } else { (estimate.ci, "estimate") };
    let decision = if interval.0 >= sla {
        Decision::Accept
    } else if interval.1 < sla {
        Decision::Reject
    } else {
        Decision::Review
    };
    Assessment { estimate, gold_items, gold_accuracy, decision, decided_by }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accuracy::{self, Calibration};

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
    fn decisions_follow_the_interval() {
        let z = 1.96;
        let est = |n, flagged| accuracy::estimate(n, flagged, Calibration::None, z);
        assert_eq!(assess(est(1000, 20), 0, 0, 0.9, 10, z).decision, Decision::Accept);
        assert_eq!(assess(est(1000, 300), 0, 0, 0.9, 10, z).decision, Decision::Reject);
        assert_eq!(assess(est(50, 5), 0, 0, 0.9, 10, z).decision, Decision::Review);
        // Gold overrides the estimate once there are enough gold items.
        let a = assess(est(1000, 20), 40, 20, 0.9, 10, z);
        assert_eq!((a.decision, a.decided_by, a.gold_accuracy), (Decision::Reject, "gold", Some(0.5)));
        assert_eq!(assess(est(1000, 20), 5, 0, 0.9, 10, z).decided_by, "estimate");
        // Review precision lifts a delivery whose suspects were half false alarms.
        let reviewed = accuracy::estimate(1000, 150, Calibration::Reviews(accuracy::ReviewStats { reviewed: 400, confirmed_wrong: 200 }), z);
        assert_eq!(assess(reviewed, 0, 0, 0.9, 10, z).decision, Decision::Accept);
    }
}
