//! A delivery's verdict: estimated label accuracy with a confidence interval, accuracy on gold
//! items, and accept / reject / review against the vendor's SLA.

use crate::{
    accuracy::{evidence::EvidenceStatus, AccuracyEstimate},
    wire::Decision,
};

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

/// Standard normal distribution function.
pub fn normal_cdf(x: f64) -> f64 {
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
    /// `None` when the delivery has no valid records.
    pub estimate: Option<AccuracyEstimate>,
    pub gold_items: usize,
    pub gold_accuracy: Option<f64>,
    pub decision: Decision,
    /// `gold` when enough gold items decided, else `estimate`.
    pub decided_by: &'static str,
    /// Why a `review` could not be decided either way.
    pub review_reason: Option<&'static str>,
}

/// Decides on the delivery's own gold answers when it has at least `min_gold` of them, else on
/// the (calibrated) estimate: accept only when the whole interval clears the SLA, reject only
/// when the whole interval lies below it, review otherwise, and review whenever the window's
/// evidence cannot support a decision or there is nothing valid to judge.
// Each argument is a distinct fact about the delivery; a struct for one call site adds nothing.
#[allow(clippy::too_many_arguments)]
pub fn assess(estimate: AccuracyEstimate, records: usize, evidence: EvidenceStatus, gold_items: usize, gold_correct: usize, sla: f64, min_gold: usize, z: f64) -> Assessment {
    let gold_accuracy = (gold_items > 0).then(|| gold_correct as f64 / gold_items as f64);
    let estimate = (records > 0).then_some(estimate);
    let review = |reason| (Decision::Review, Some(reason));
    let (interval, decided_by) = if gold_items >= min_gold && gold_items > 0 { (wilson(gold_correct, gold_items, z), "gold") } else { (estimate.map_or((0.0, 1.0), |e| e.ci), "estimate") };
    let (decision, review_reason) = if decided_by == "estimate" && records == 0 {
        review("no_valid_records")
    } else if let (Some(reason), "estimate") = (evidence.review_reason(), decided_by) {
        review(reason)
    } else if interval.0 >= sla {
        (Decision::Accept, None)
    } else if interval.1 < sla {
        (Decision::Reject, None)
    } else {
        review("interval_spans_sla")
    };
    Assessment { estimate, gold_items, gold_accuracy, decision, decided_by, review_reason }
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
        let ok = EvidenceStatus::Consistent;
        let est = |n, flagged| accuracy::estimate(n, flagged, (flagged, flagged), Calibration::None, z);
        assert_eq!(assess(est(1000, 20), 1000, ok, 0, 0, 0.9, 10, z).decision, Decision::Accept);
        assert_eq!(assess(est(1000, 300), 1000, ok, 0, 0, 0.9, 10, z).decision, Decision::Reject);
        let small = assess(est(50, 5), 50, ok, 0, 0, 0.9, 10, z);
        assert_eq!((small.decision, small.review_reason), (Decision::Review, Some("interval_spans_sla")));
        // Gold overrides the estimate once there are enough gold items.
        let a = assess(est(1000, 20), 1000, ok, 40, 20, 0.9, 10, z);
        assert_eq!((a.decision, a.decided_by, a.gold_accuracy), (Decision::Reject, "gold", Some(0.5)));
        assert_eq!(assess(est(1000, 20), 1000, ok, 5, 0, 0.9, 10, z).decided_by, "estimate");
        // Review precision lifts a delivery whose suspects were half false alarms.
        let reviewed = accuracy::estimate(1000, 150, (150, 150), Calibration::Reviews(accuracy::ReviewStats { reviewed: 400, confirmed_wrong: 200 }), z);
        assert_eq!(assess(reviewed, 1000, ok, 0, 0, 0.9, 10, z).decision, Decision::Accept);
    }

    #[test]
    fn weak_evidence_and_empty_deliveries_go_to_review_with_the_reason() {
        let z = 1.96;
        let confident_reject = accuracy::estimate(1000, 500, (500, 500), Calibration::None, z);
        for (status, reason) in [(EvidenceStatus::Insufficient, "insufficient_evidence"), (EvidenceStatus::Disagree, "estimators_disagree")] {
            let a = assess(confident_reject, 1000, status, 0, 0, 0.9, 10, z);
            assert_eq!((a.decision, a.review_reason), (Decision::Review, Some(reason)));
        }
        let empty = assess(accuracy::estimate(0, 0, (0, 0), Calibration::None, z), 0, EvidenceStatus::Consistent, 0, 0, 0.9, 10, z);
        assert_eq!((empty.decision, empty.review_reason, empty.estimate), (Decision::Review, Some("no_valid_records"), None));
        // Enough gold decides even on weak evidence: the gold answers do not depend on it.
        let gold = assess(confident_reject, 1000, EvidenceStatus::Insufficient, 40, 20, 0.9, 10, z);
        assert_eq!((gold.decision, gold.decided_by), (Decision::Reject, "gold"));
    }
}
