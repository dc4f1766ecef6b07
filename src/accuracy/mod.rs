//! A delivery's and a vendor's label accuracy: the share of labels the gate did not flag,
//! corrected by what is known about the flags themselves — gold items (how often a wrong gold
//! label is flagged, and a right one is) or human reviews of the suspects (how many flagged labels
//! were really wrong) — with a confidence interval.

pub mod agreement;
pub mod evidence;
pub mod offline;
pub mod shift;

use serde::{Deserialize, Serialize};

use crate::stats::wilson;

/// Gold items (or labels below) needed on each side before gold calibrates the estimate.
pub const MIN_GOLD_PER_SIDE: usize = 5;
/// A flag that barely separates wrong from right labels cannot be inverted reliably.
const MIN_SEPARATION: f64 = 0.2;

/// How the gate's flags behave on gold items of one window: the share of wrong gold labels it
/// flagged (`tpr`) and of right gold labels it flagged (`fpr`).
/// What a delivery's accuracy interval decides against its SLA (the verdict's `decision`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Accept,
    Reject,
    Review,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Accept => "accept",
            Decision::Reject => "reject",
            Decision::Review => "review",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GoldCalibration {
    pub tpr: f64,
    pub fpr: f64,
    pub wrong: usize,
    pub right: usize,
    pub wrong_flagged: usize,
    pub right_flagged: usize,
}

impl GoldCalibration {
    /// From counts of gold labels; `None` when there are too few on either side or the flags
    /// do not separate them.
    pub fn from_counts(wrong_flagged: usize, wrong: usize, right_flagged: usize, right: usize) -> Option<Self> {
        if wrong < MIN_GOLD_PER_SIDE || right < MIN_GOLD_PER_SIDE {
            return None;
        }
        let tpr = wrong_flagged as f64 / wrong as f64;
        let fpr = right_flagged as f64 / right as f64;
        (tpr - fpr >= MIN_SEPARATION).then_some(Self { tpr, fpr, wrong, right, wrong_flagged, right_flagged })
    }

    /// Rogan–Gladen: the share of wrong labels that explains a flagged share `f`.
    pub fn wrong_share(&self, flagged_share: f64) -> f64 {
        invert(flagged_share, self.tpr, self.fpr)
    }

    /// The widest wrong share over the flagged share's interval and the gold rates' own Wilson
    /// intervals: few gold items make a wide interval, not a confident one.
    fn wrong_share_bounds(&self, flagged: (f64, f64), z: f64) -> (f64, f64) {
        let (tpr_lo, tpr_hi) = wilson(self.wrong_flagged, self.wrong, z);
        let (fpr_lo, fpr_hi) = wilson(self.right_flagged, self.right, z);
        // Larger with more flags, fewer true hits and fewer false alarms.
        let high = if tpr_lo > fpr_lo { invert(flagged.1, tpr_lo, fpr_lo) } else { 1.0 };
        let low = if tpr_hi > fpr_hi { invert(flagged.0, tpr_hi, fpr_hi) } else { 0.0 };
        (low.min(high), high)
    }
}

fn invert(flagged_share: f64, tpr: f64, fpr: f64) -> f64 {
    ((flagged_share - fpr) / (tpr - fpr)).clamp(0.0, 1.0)
}

/// Reviews of a vendor's suspects: how many were looked at, how many were really wrong.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewStats {
    pub reviewed: u64,
    pub confirmed_wrong: u64,
}

impl ReviewStats {
    /// The realised precision of the gate's suspects for this vendor.
    pub fn precision(&self) -> Option<f64> {
        (self.reviewed > 0).then(|| self.confirmed_wrong as f64 / self.reviewed as f64)
    }
}

/// What corrected the raw flagged share.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Calibration {
    None,
    Gold(GoldCalibration),
    /// Realised suspect precision from at least `min_reviews` reviews.
    Reviews(ReviewStats),
    /// The window's own flag error rates: false flags measured on the reference pool (right
    /// labels scored beside the window), missed wrong labels implied by the window's share.
    PoolControl(GoldCalibration),
}

impl Calibration {
    pub fn name(&self) -> &'static str {
        match self {
            Calibration::None => "none",
            Calibration::Gold(_) => "gold",
            Calibration::Reviews(_) => "reviews",
            Calibration::PoolControl(_) => "pool_control",
        }
    }

    /// Gold first (it measures both kinds of flag error), then reviews (they measure the false
    /// flags only, by people), then the pool control (measured by the gate itself), else none.
    pub fn choose(gold: Option<GoldCalibration>, reviews: ReviewStats, min_reviews: u64, pool: Option<GoldCalibration>) -> Self {
        match (gold, reviews.precision(), pool) {
            (Some(g), _, _) => Calibration::Gold(g),
            (None, Some(_), _) if reviews.reviewed >= min_reviews => Calibration::Reviews(reviews),
            (None, _, Some(p)) => Calibration::PoolControl(p),
            _ => Calibration::None,
        }
    }

    fn wrong_share(&self, flagged_share: f64) -> f64 {
        match self {
            Calibration::None => flagged_share,
            Calibration::Gold(g) | Calibration::PoolControl(g) => g.wrong_share(flagged_share),
            Calibration::Reviews(r) => flagged_share * r.precision().unwrap_or(1.0),
        }
    }

    /// The wrong share's interval, given the flagged share's: widened by the calibration's own
    /// uncertainty (the Wilson intervals of the gold rates or of the review precision).
    fn wrong_share_bounds(&self, flagged: (f64, f64), z: f64) -> (f64, f64) {
        match self {
            Calibration::None => flagged,
            Calibration::Gold(g) | Calibration::PoolControl(g) => g.wrong_share_bounds(flagged, z),
            Calibration::Reviews(r) => {
                let (p_lo, p_hi) = wilson(r.confirmed_wrong as usize, r.reviewed as usize, z);
                (flagged.0 * p_lo, flagged.1 * p_hi)
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AccuracyEstimate {
    pub accuracy: f64,
    pub ci: (f64, f64),
    pub calibration: Calibration,
}

/// Estimated label accuracy of `records` labels of which `flagged` were flagged. The window's
/// own uncertainty about how many of its labels are wrong puts this delivery's flag count
/// anywhere in `flagged_range`; the interval runs from the Wilson bound of the fewest flags to
/// that of the most, then through the same (monotone) calibration.
pub fn estimate(records: usize, flagged: usize, flagged_range: (usize, usize), calibration: Calibration, z: f64) -> AccuracyEstimate {
    if records == 0 {
        return AccuracyEstimate { accuracy: 1.0, ci: (0.0, 1.0), calibration };
    }
    let share = flagged as f64 / records as f64;
    let flagged_bounds = (wilson(flagged_range.0.min(flagged), records, z).0, wilson(flagged_range.1.max(flagged), records, z).1);
    let (wrong_lo, wrong_hi) = calibration.wrong_share_bounds(flagged_bounds, z);
    let accuracy = 1.0 - calibration.wrong_share(share);
    AccuracyEstimate { accuracy, ci: ((1.0 - wrong_hi).min(accuracy), (1.0 - wrong_lo).max(accuracy)), calibration }
}

/// A delivery's accuracy from each label's probability of being wrong (the agreement model's
/// posterior): the expected share, with the Wilson interval of the expected count widened by the
/// posteriors' own spread (a sum of Bernoulli variables, not a fixed count).
pub fn from_posteriors(p_wrong: &[f64], z: f64) -> AccuracyEstimate {
    let n = p_wrong.len();
    let expected: f64 = p_wrong.iter().sum();
    let sd = p_wrong.iter().map(|p| p * (1.0 - p)).sum::<f64>().sqrt();
    let (lo, hi) = wilson(expected.round() as usize, n, z);
    let spread = z * sd / n.max(1) as f64;
    let share = expected / n.max(1) as f64;
    let (wrong_lo, wrong_hi) = ((lo - spread).max(0.0).min(share), (hi + spread).min(1.0).max(share));
    AccuracyEstimate { accuracy: 1.0 - share, ci: (1.0 - wrong_hi, 1.0 - wrong_lo), calibration: Calibration::None }
}

/// One delivery in a vendor's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    pub batch_id: String,
    pub vendor_id: String,
    pub records: usize,
    pub flagged: usize,
    pub estimated_accuracy: f64,
    pub gold_items: usize,
    pub gold_correct: usize,
    /// Unix milliseconds when it was gated.
    pub gated_at_ms: u64,
    pub decision: Decision,
    pub window_id: String,
    /// What corrected `estimated_accuracy` when it was gated (`none`, `gold`, `reviews`,
    /// `pool_control`, `agreement`).
    #[serde(default = "uncalibrated")]
    pub calibration: String,
    /// What the window's wrong-label share rested on; deliveries whose evidence could not
    /// decide (and those with no valid records) stay out of the vendor's accuracy.
    #[serde(default)]
    pub evidence: Option<evidence::EvidenceStatus>,
    /// How far later windows' agreement moved its expected count of wrong labels (kept apart
    /// in the store, filled in when the history is read; never part of the stored record).
    #[serde(default, skip_serializing)]
    pub revised_wrong: f64,
    /// What later windows found of its labels (kept apart in the store like `revised_wrong`).
    #[serde(default, skip_serializing)]
    pub rejudged: Rejudged,
}

/// A delivery's labels that later windows judged again (by agreement over shared sample_ids),
/// and how many of them they flagged: each label counts once, with its latest flag.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
pub struct Rejudged {
    pub labels: u32,
    pub wrong: f64,
}

/// A delivery whose own window could not decide joins its vendor's gauge once later windows
/// have judged at least this share of its labels again; its accuracy is then theirs.
pub const MIN_REJUDGED_SHARE: f64 = 0.5;

impl DeliveryRecord {
    /// Whether its own window's evidence could decide (or nothing needed deciding).
    fn decided(&self) -> bool {
        self.evidence.is_none_or(|e| e.supports_a_decision())
    }

    /// Whether later windows re-judged enough of an undecided delivery's labels to stand for it.
    fn rejudged_enough(&self) -> bool {
        self.rejudged.labels > 0 && self.rejudged.labels as f64 >= MIN_REJUDGED_SHARE * self.records as f64
    }

    /// Whether it may move the vendor's accuracy gauge: decided, or re-judged enough since.
    pub fn counts_towards_accuracy(&self) -> bool {
        self.records > 0 && (self.decided() || self.rejudged_enough())
    }
}

fn uncalibrated() -> String {
    "none".into()
}

/// A vendor's accuracy over recent deliveries: weighted by records, so a 10-record delivery does
/// not swing it like a 10,000-record one. Deliveries gated before enough reviews arrived (with no
/// correction or the pool control's) are corrected now with the vendor's realised suspect
/// precision. Deliveries whose evidence could not decide are left out. `None` with no history.
pub fn rolling_accuracy(history: &[DeliveryRecord], reviews: ReviewStats, min_reviews: u64) -> Option<f64> {
    let counted: Vec<&DeliveryRecord> = history.iter().filter(|d| d.counts_towards_accuracy()).collect();
    let records: usize = counted.iter().map(|d| d.records).sum();
    let precision = reviews.precision().filter(|_| reviews.reviewed >= min_reviews);
    let accuracy = |d: &DeliveryRecord| match precision {
        // Reviews outrank the gate's own pool control, as in `Calibration::choose`.
        Some(p) if matches!(d.calibration.as_str(), "none" | "pool_control") && d.records > 0 => 1.0 - d.flagged as f64 / d.records as f64 * p,
        _ => d.estimated_accuracy,
    };
    // Later agreement revises the gauge, not the verdicts already sent. An undecided delivery's
    // own figure was a guess: the labels judged since stand for it.
    let revised = |d: &DeliveryRecord| {
        if d.decided() {
            (accuracy(d) - d.revised_wrong / d.records as f64).clamp(0.0, 1.0)
        } else {
            (1.0 - d.rejudged.wrong / d.rejudged.labels as f64).clamp(0.0, 1.0)
        }
    };
    (records > 0).then(|| counted.iter().map(|d| revised(d) * d.records as f64).sum::<f64>() / records as f64)
}

/// Accuracy on gold items over recent deliveries.
pub fn rolling_gold_accuracy(history: &[DeliveryRecord]) -> Option<f64> {
    let items: usize = history.iter().map(|d| d.gold_items).sum();
    (items > 0).then(|| history.iter().map(|d| d.gold_correct).sum::<usize>() as f64 / items as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gold_inverts_the_flag_errors() {
        // The detector flags 80% of wrong labels and 5% of right ones; 20% wrong gives 0.2·0.8 +
        // 0.8·0.05 = 0.2 flagged, which inverts back to 0.2.
        let g = GoldCalibration::from_counts(8, 10, 2, 40).unwrap();
        assert!((g.wrong_share(0.2) - 0.2).abs() < 1e-12);
        assert_eq!(g.wrong_share(0.01), 0.0, "clamped");
        assert!(GoldCalibration::from_counts(2, 3, 1, 40).is_none(), "too few wrong gold labels");
        assert!(GoldCalibration::from_counts(5, 10, 20, 40).is_none(), "flags do not separate");
    }

    #[test]
    fn reviews_scale_the_flagged_share_and_the_interval_follows() {
        let none = estimate(1000, 200, (200, 200), Calibration::None, 1.96);
        assert!((none.accuracy - 0.8).abs() < 1e-12);
        assert!(none.ci.0 < 0.8 && none.ci.1 > 0.8);
        let half = |n| Calibration::Reviews(ReviewStats { reviewed: n, confirmed_wrong: n / 2 });
        let few = estimate(1000, 200, (200, 200), half(20), 1.96);
        let many = estimate(1000, 200, (200, 200), half(20_000), 1.96);
        assert!((few.accuracy - 0.9).abs() < 1e-12 && (many.accuracy - 0.9).abs() < 1e-12);
        assert!(few.ci.0 < 0.9 && few.ci.1 > 0.9);
        assert!(many.ci.1 - many.ci.0 < few.ci.1 - few.ci.0, "20 reviews leave a wider interval than 20,000");
        let stats = ReviewStats { reviewed: 10, confirmed_wrong: 9 };
        assert_eq!(Calibration::choose(None, stats, 20, None), Calibration::None, "too few reviews");
        assert_eq!(Calibration::choose(None, stats, 10, None), Calibration::Reviews(stats));
        let pool = GoldCalibration::from_counts(90, 100, 50, 5000);
        assert_eq!(Calibration::choose(None, stats, 20, pool), Calibration::PoolControl(pool.unwrap()));
        assert_eq!(Calibration::choose(None, stats, 10, pool), Calibration::Reviews(stats), "people's reviews before the gate's own control");
    }

    #[test]
    fn few_gold_items_give_a_wide_interval_not_a_certain_one() {
        // tpr 5/5, fpr 1/5: the point estimate inverts, but the interval must stay open.
        let g = GoldCalibration::from_counts(5, 5, 1, 5).unwrap();
        let e = estimate(1000, 100, (100, 100), Calibration::Gold(g), 1.96);
        assert!(e.ci.0 < 0.9 && e.ci.1 >= e.accuracy, "{e:?}");
        assert!(e.ci.1 - e.ci.0 > 0.1, "five gold items each way cannot pin the accuracy (it collapsed to (1, 1) before): {e:?}");
        let many = GoldCalibration::from_counts(800, 1000, 50, 1000).unwrap();
        let tight = estimate(1000, 100, (100, 100), Calibration::Gold(many), 1.96);
        assert!(tight.ci.1 - tight.ci.0 < e.ci.1 - e.ci.0);
    }

    #[test]
    fn rolling_accuracy_weights_by_records() {
        let d = |records, acc| DeliveryRecord {
            batch_id: "b".into(),
            vendor_id: "v".into(),
            records,
            flagged: 0,
            estimated_accuracy: acc,
            gold_items: 0,
            gold_correct: 0,
            gated_at_ms: 0,
            decision: Decision::Accept,
            window_id: "w".into(),
            calibration: "none".into(),
            evidence: None,
            revised_wrong: 0.0,
            rejudged: Rejudged::default(),
        };
        let none = ReviewStats::default();
        assert_eq!(rolling_accuracy(&[], none, 20), None);
        assert!((rolling_accuracy(&[d(900, 0.9), d(100, 0.5)], none, 20).unwrap() - 0.86).abs() < 1e-12);
        // 20 flagged of 100; reviews say half the suspects were right: 0.9, once there are enough.
        let flagged = DeliveryRecord { flagged: 20, ..d(100, 0.8) };
        let half = ReviewStats { reviewed: 40, confirmed_wrong: 20 };
        assert!((rolling_accuracy(std::slice::from_ref(&flagged), half, 20).unwrap() - 0.9).abs() < 1e-12);
        assert!((rolling_accuracy(std::slice::from_ref(&flagged), half, 50).unwrap() - 0.8).abs() < 1e-12);
        // A delivery whose window could not tell how many labels were wrong does not count.
        let unknown = DeliveryRecord { evidence: Some(evidence::EvidenceStatus::Insufficient), ..d(10_000, 0.1) };
        assert!((rolling_accuracy(&[d(900, 0.9), unknown], none, 20).unwrap() - 0.9).abs() < 1e-12);
        assert_eq!(rolling_accuracy(&[d(0, 1.0)], none, 20), None, "no valid records, no accuracy");
        // A later window's agreement found 5 more of a 100-record delivery's labels wrong.
        let revised = DeliveryRecord { revised_wrong: 5.0, ..d(100, 0.9) };
        assert!((rolling_accuracy(&[revised], none, 20).unwrap() - 0.85).abs() < 1e-12);
        // An undecided 100-record delivery joins once later windows judged half its labels again,
        // at their figure (8 of 50 flagged: 0.84), not at its own guess.
        let undecided = DeliveryRecord { evidence: Some(evidence::EvidenceStatus::Insufficient), ..d(100, 0.5) };
        let few = DeliveryRecord { rejudged: Rejudged { labels: 49, wrong: 8.0 }, ..undecided.clone() };
        assert_eq!(rolling_accuracy(std::slice::from_ref(&few), none, 20), None, "49 of 100 re-judged is not enough");
        let enough = DeliveryRecord { rejudged: Rejudged { labels: 50, wrong: 8.0 }, ..undecided };
        assert!((rolling_accuracy(&[enough, d(100, 0.9)], none, 20).unwrap() - 0.87).abs() < 1e-12);
    }

    #[test]
    fn posteriors_give_the_expected_share_and_uncertain_labels_widen_it() {
        let sure = from_posteriors(&[0.0; 90].iter().chain(&[1.0; 10]).copied().collect::<Vec<_>>(), 1.96);
        let unsure = from_posteriors(&[0.1; 100], 1.96);
        assert!((sure.accuracy - 0.9).abs() < 1e-12 && (unsure.accuracy - 0.9).abs() < 1e-12);
        assert!(unsure.ci.1 - unsure.ci.0 > sure.ci.1 - sure.ci.0, "{sure:?} {unsure:?}");
        assert!(sure.ci.0 < 0.9 && sure.ci.1 > 0.9);
    }

    #[test]
    fn the_window_share_interval_widens_a_delivery_interval() {
        let pinned = estimate(1000, 100, (100, 100), Calibration::None, 1.96);
        let loose = estimate(1000, 100, (40, 300), Calibration::None, 1.96);
        assert_eq!(pinned.accuracy, loose.accuracy);
        assert!(loose.ci.0 < 0.7 && loose.ci.1 > 0.96, "{loose:?}");
        assert!(pinned.ci.0 > 0.87 && pinned.ci.1 < 0.93, "{pinned:?}");
    }
}
