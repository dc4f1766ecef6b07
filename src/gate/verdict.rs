//! A delivery's verdict: estimated label accuracy with a confidence interval, accuracy on gold
//! items, and accept / reject / review against the vendor's SLA.

use crate::{
    accuracy::{evidence::EvidenceStatus, AccuracyEstimate},
    stats::wilson,
    wire::{DecidedBy, Decision},
};

#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    /// `None` when the delivery has no valid records.
    pub estimate: Option<AccuracyEstimate>,
    pub gold_items: usize,
    pub gold_accuracy: Option<f64>,
    pub decision: Decision,
    /// `gold` when enough gold items decided, else `estimate`.
    pub decided_by: DecidedBy,
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
    let (interval, decided_by) =
        if gold_items >= min_gold && gold_items > 0 { (wilson(gold_correct, gold_items, z), DecidedBy::Gold) } else { (estimate.map_or((0.0, 1.0), |e| e.ci), DecidedBy::Estimate) };
    let (decision, review_reason) = if decided_by == DecidedBy::Estimate && records == 0 {
        review("no_valid_records")
    } else if let (Some(reason), DecidedBy::Estimate) = (evidence.review_reason(), decided_by) {
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
        assert_eq!((a.decision, a.decided_by, a.gold_accuracy), (Decision::Reject, DecidedBy::Gold, Some(0.5)));
        assert_eq!(assess(est(1000, 20), 1000, ok, 5, 0, 0.9, 10, z).decided_by, DecidedBy::Estimate);
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
        assert_eq!((gold.decision, gold.decided_by), (Decision::Reject, DecidedBy::Gold));
    }
}
