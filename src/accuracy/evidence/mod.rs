//! How many of a window's labels are wrong, and how sure the gate can be of it.
//!
//! One estimator alone is not trusted: the score mixture that used to decide alone splits inside
//! the clean mode on some windows (0.60–0.97 wrong on deliveries that were 3–18 % wrong). So up to
//! four estimators that fail in different ways are read, each with a bootstrap interval:
//!
//! - `score_mixture`: the share of the window's records above the two-Gaussian split of the
//!   log-shifted O2U scores ([`crate::o2u::noise_rate`]).
//! - `pool_control`: the reference pool as a built-in control. Its samples were accepted earlier
//!   and are mostly right, and they are trained and scored beside the window's records, so they
//!   show how a right label's score is distributed in *this* window. Per class (by given label),
//!   the share of the window's records scoring below the pool's median, divided by the pool's
//!   share below it, estimates the share of right labels (Storey's π₀ with the pool as the null).
//! - `confident_learning`: out-of-fold class probabilities (two folds, no network predicts a
//!   label it saw) and per-class thresholds, counting labels the network confidently puts in
//!   another class (Northcutt et al., 2021), calibrated to the label counts. Where the pool is
//!   large enough, the share of the pool's right labels it puts elsewhere (the network's own error
//!   on overlapping classes) is removed as a false-positive rate.
//! - `agreement`: where vendors labelled the same sample_ids (in this window or earlier ones),
//!   the joint Dawid–Skene + score model of [`super::agreement`].
//!
//! How they combine. Agreement, when there is enough overlap, decides (it does not depend on
//! the features); its interval widens as 1/√coverage. Where fewer than
//! [`AGREEMENT_CARRIES_COVERAGE`] of the labels share their item with another vendor, most of them
//! are judged by their scores, so agreement decides only if the network also passes the two
//! checks below (learned, enough rows); else the evidence is `insufficient`. Otherwise (no
//! agreement) the network must first show that
//! it learned something: its out-of-fold accuracy on the window's records must beat always
//! answering the most frequent label by `min_model_lift` of the possible gain; if not, no
//! estimator can tell how many labels are wrong and the evidence is `insufficient` (interval
//! [0, 1]). Then the readings are compared with their median (two readings with each other). If
//! every reading lies within `max_estimator_gap` the evidence is `consistent`: the estimate is the
//! median and the interval the hull of their intervals. If all but one do, the one is an
//! `outlier`, named and left out: the estimate is the mean of the others and the interval their
//! hull. Otherwise they `disagree`: the median, with the hull of all of them. A network trained on
//! fewer than `min_evidence_rows` rows is `insufficient` whatever its readings (marked
//! `readings_agree` when they agreed, so that such windows may still seed the pool). Only
//! `consistent`, `outlier` and `fixed` (the buyer set the rate) evidence may accept or reject a
//! delivery; the others send it to review with the reason.
//!
//! | agreement reading | network learned¹ | rows ≥ `min_evidence_rows` | readings | status | estimate, interval |
//! |---|---|---|---|---|---|
//! | coverage ≥ [`AGREEMENT_CARRIES_COVERAGE`] | any | any | any | `consistent` | agreement's |
//! | lower coverage | yes | yes | any | `consistent` | agreement's |
//! | none, or lower coverage | no | any | any | `insufficient` | median, [0, 1] |
//! | none | yes | no | any | `insufficient` | median, [0, 1]; `readings_agree` unless they disagree |
//! | none | yes | yes | one only | `uncorroborated` | it, its interval reaching down to 0 |
//! | none | yes | yes | all within `max_estimator_gap` of the median (two: of each other) | `consistent` | median, hull |
//! | none | yes | yes | all but one, at least two agreeing | `outlier` | mean of the others, their hull |
//! | none | yes | yes | otherwise | `disagree` | median, hull of all |
//!
//! ¹ out-of-fold lift ≥ `min_model_lift`. A window drawn away from the pool (shift above
//! `gate.max_feature_shift`) is `shifted` afterwards unless agreement decided at high coverage.

use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

pub use super::shift::ShiftCheck;
use crate::{
    o2u::noise_rate,
    stats::{median, percentile_interval, wilson},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Estimator {
    ScoreMixture,
    PoolControl,
    ConfidentLearning,
    Agreement,
    /// The configured `gate.noise_rate`.
    Fixed,
}

impl Estimator {
    /// The name in verdicts and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Estimator::ScoreMixture => "score_mixture",
            Estimator::PoolControl => "pool_control",
            Estimator::ConfidentLearning => "confident_learning",
            Estimator::Agreement => "agreement",
            Estimator::Fixed => "fixed",
        }
    }
}

/// One estimator's wrong-label share for the window's records, with its interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    pub estimator: Estimator,
    pub wrong_share: f64,
    pub ci_low: f64,
    pub ci_high: f64,
}

/// How well the network learned the window's features, on labels it did not train on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ModelFit {
    /// Out-of-fold accuracy against the given labels (pool rows included).
    pub heldout_accuracy: f64,
    /// The accuracy of always answering the most frequent given label.
    pub chance_accuracy: f64,
    /// (heldout − chance) / (1 − chance): 0 = learned nothing, 1 = predicts every label.
    pub lift: f64,
    /// Mean training loss of the scoring network's last epoch.
    pub final_loss: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvidenceStatus {
    /// Every reading within the gap of the median.
    Consistent,
    /// All readings but one agree; that one is named and left out.
    Outlier,
    /// The readings spread beyond the gap: the share is not pinned down.
    Disagree,
    /// The network learned, but only one estimator could be read (the score mixture found no
    /// separate mode of wrong labels, and no pool serves as a control): its share says how many
    /// to flag, and its interval reaches down to 0, since nothing checks its own errors.
    Uncorroborated,
    /// The window's records were drawn away from the reference pool
    /// ([`crate::accuracy::shift`]): the readings that lean on the pool as a control do not hold,
    /// so the share is not trusted to decide.
    Shifted,
    /// The network did not learn the features and no agreement covers the window.
    Insufficient,
    /// The buyer configured the wrong-label share.
    Fixed,
}

impl EvidenceStatus {
    /// Whether a verdict may accept or reject on this evidence.
    pub fn supports_a_decision(self) -> bool {
        matches!(self, EvidenceStatus::Consistent | EvidenceStatus::Outlier | EvidenceStatus::Fixed)
    }

    pub fn name(self) -> &'static str {
        match self {
            EvidenceStatus::Consistent => "consistent",
            EvidenceStatus::Outlier => "outlier",
            EvidenceStatus::Disagree => "disagree",
            EvidenceStatus::Uncorroborated => "uncorroborated",
            EvidenceStatus::Shifted => "shifted",
            EvidenceStatus::Insufficient => "insufficient",
            EvidenceStatus::Fixed => "fixed",
        }
    }

    /// Whether the share may say how many records to flag when nothing bounds it otherwise
    /// (`score` and `eval` flag on these; the gate's undecided windows keep to a review budget).
    pub fn sets_the_flag_count(self) -> bool {
        self.supports_a_decision() || self == EvidenceStatus::Uncorroborated
    }

    /// The review reason a verdict carries when this evidence cannot decide.
    pub fn review_reason(self) -> Option<&'static str> {
        match self {
            EvidenceStatus::Disagree => Some("estimators_disagree"),
            EvidenceStatus::Uncorroborated => Some("uncorroborated_estimate"),
            EvidenceStatus::Shifted => Some("distribution_shift"),
            EvidenceStatus::Insufficient => Some("insufficient_evidence"),
            _ => None,
        }
    }
}

/// What a window's wrong-label share rests on; carried by every verdict of the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowEvidence {
    pub status: EvidenceStatus,
    /// The share used to flag the window's records (the median reading, or agreement's).
    pub wrong_share: f64,
    pub wrong_share_ci_low: f64,
    pub wrong_share_ci_high: f64,
    pub readings: Vec<Reading>,
    /// Readings left out of the interval as outliers.
    #[serde(default)]
    pub outliers: Vec<Estimator>,
    pub model_fit: Option<ModelFit>,
    /// Reference-pool rows trained beside the window's records.
    pub pool_rows: usize,
    /// Share of the window's labels on sample_ids that another vendor labelled too.
    pub agreement_coverage: f64,
    /// The readings agreed (and the network learned) although the window had too few rows to
    /// decide: its accepted records may still seed the reference pool, so a stream of small
    /// windows is not stuck in review for lack of a pool.
    #[serde(default)]
    pub readings_agree: bool,
    /// Ashman's D between the score mixture's two components; below [`MIN_MODE_SEPARATION`]
    /// the mixture is not read. `None` when one component fits (or for a fixed share).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mixture_separation: Option<f64>,
    /// How far the window's features lie from the reference pool's; `None` without a pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distribution_shift: Option<ShiftCheck>,
    /// The weight the agreement model gave the network's out-of-fold probabilities (0: the votes
    /// alone); `None` where agreement did not apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_weight: Option<f64>,
}

impl WindowEvidence {
    /// Records the shift check. A shifted window cannot decide unless agreement carried its
    /// share (agreement does not lean on the pool); its interval spans every reading. Its records
    /// may still seed the pool where the readings agreed, so that a stream that moved for good
    /// is judged against its own samples in time.
    pub fn with_shift(mut self, shift: Option<ShiftCheck>) -> Self {
        self.distribution_shift = shift;
        let agreement_decides = self.readings.iter().any(|r| r.estimator == Estimator::Agreement) && self.status == EvidenceStatus::Consistent;
        if !shift.is_some_and(|c| c.shifted) || agreement_decides || matches!(self.status, EvidenceStatus::Fixed | EvidenceStatus::Insufficient) {
            return self;
        }
        self.readings_agree = self.status.sets_the_flag_count();
        self.status = EvidenceStatus::Shifted;
        self.outliers.clear();
        for r in &self.readings {
            self.wrong_share_ci_low = self.wrong_share_ci_low.min(r.ci_low);
            self.wrong_share_ci_high = self.wrong_share_ci_high.max(r.ci_high);
        }
        self
    }

    /// Whether the window's accepted records may join the reference pool.
    pub fn may_feed_pool(&self) -> bool {
        self.status.sets_the_flag_count() || self.readings_agree
    }
}

/// The bounds that decide how far the readings may be trusted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvidencePolicy {
    pub max_estimator_gap: f64,
    /// Fewer training rows (records + pool) than this make the evidence insufficient.
    pub min_evidence_rows: usize,
    pub min_model_lift: f64,
    pub min_pool_control_rows: usize,
    pub z: f64,
}

const BOOTSTRAP_ROUNDS: usize = 200;

/// Everything the estimators read. Rows `0..pending` are the window's records; the rest are
/// reference-pool rows.
pub struct WindowSignals<'a> {
    pub scores: &'a [f32],
    pub labels: &'a [u32],
    pub pending: usize,
    pub classes: usize,
    /// Out-of-fold probabilities, `classes` per row; `None` when cross-fitting failed.
    pub heldout: Option<&'a [f32]>,
    pub final_loss: f64,
    pub seed: u64,
}

/// Reads every estimator that applies. `agreement` is the joint model's reading, when the
/// window's labels overlap enough.
pub fn gather(s: &WindowSignals<'_>, agreement: Option<Reading>, agreement_coverage: f64, policy: &EvidencePolicy) -> WindowEvidence {
    let (mixture, separation) = score_mixture(s, policy.z);
    let mut readings: Vec<Reading> = mixture.into_iter().collect();
    if s.scores.len() - s.pending >= policy.min_pool_control_rows {
        readings.extend(pool_control(s, policy.z));
    }
    let fit = s.heldout.map(|p| model_fit(p, s));
    if let Some(p) = s.heldout {
        readings.extend(confident_learning(p, s, policy.z, policy.min_pool_control_rows));
    }
    readings.extend(agreement);
    let mut evidence = combine(Gathered { readings, model_fit: fit, rows: s.scores.len(), pool_rows: s.scores.len() - s.pending, agreement_coverage }, policy);
    evidence.mixture_separation = separation;
    evidence
}

/// The buyer fixed the share: flag that many, interval from the binomial alone.
pub fn fixed(rate: f64, pending: usize, pool_rows: usize, z: f64) -> WindowEvidence {
    let flagged = (rate * pending as f64).round() as usize;
    let (lo, hi) = wilson(flagged.min(pending), pending, z);
    WindowEvidence {
        status: EvidenceStatus::Fixed,
        wrong_share: rate,
        wrong_share_ci_low: lo.min(rate),
        wrong_share_ci_high: hi.max(rate),
        readings: vec![Reading { estimator: Estimator::Fixed, wrong_share: rate, ci_low: lo, ci_high: hi }],
        outliers: Vec::new(),
        model_fit: None,
        pool_rows,
        agreement_coverage: 0.0,
        readings_agree: true,
        mixture_separation: None,
        distribution_shift: None,
        network_weight: None,
    }
}

/// Agreement decides a window's share on its own only when at least this share of the window's
/// labels have another vendor's label of their item; below it, most labels are judged by their
/// scores, and a cold-start window (a few hundred noisy rows, no pool) read 0.25 wrong where 0.55
/// were, with a narrow interval, on the music-genre crowd labels (docs/benchmarks.md §6).
pub const AGREEMENT_CARRIES_COVERAGE: f64 = 0.6;

/// What a window's estimators read, for [`combine`] to judge.
pub struct Gathered {
    pub readings: Vec<Reading>,
    /// How well the network's out-of-fold probabilities fit the labels (`None`: no fit).
    pub model_fit: Option<ModelFit>,
    /// Every row the network trained on (the window's records and the pool).
    pub rows: usize,
    pub pool_rows: usize,
    /// The share of the window's labels with another vendor's label of the same sample_id.
    pub agreement_coverage: f64,
}

/// Each bootstrap draws from the window's seed with its own salt, so the estimators' resamples
/// are reproducible and not the same draws.
const POOL_CONTROL_SEED_SALT: u64 = 0x9001;
const CONFIDENT_LEARNING_SEED_SALT: u64 = 0xc1;

/// The most of the pool's right labels confident learning may call wrong before its reading is
/// corrected by that rate: at a rate of one half or more the network is no better than a coin on
/// the pool, and dividing by 1 − rate would blow the reading up rather than correct it.
const MAX_POOL_FALSE_FLAG_RATE: f64 = 0.5;

/// The decision rule described in the module documentation.
pub fn combine(gathered: Gathered, policy: &EvidencePolicy) -> WindowEvidence {
    let Gathered { readings, model_fit: fit, rows, pool_rows, agreement_coverage } = gathered;
    let base = |status, share: f64, lo: f64, hi: f64, outliers| WindowEvidence {
        status,
        wrong_share: share,
        wrong_share_ci_low: lo.min(share),
        wrong_share_ci_high: hi.max(share),
        readings: readings.clone(),
        outliers,
        model_fit: fit,
        pool_rows,
        agreement_coverage,
        readings_agree: false,
        mixture_separation: None,
        distribution_shift: None,
        network_weight: None,
    };
    let learned = fit.is_some_and(|f| f.lift >= policy.min_model_lift);
    if let Some(a) = readings.iter().find(|r| r.estimator == Estimator::Agreement) {
        // Where most labels have no other vendor's label, the joint model judges them by their
        // scores alone: then the network must have learned, on enough rows, as without agreement
        // (below, which a window failing either check reaches only to be found insufficient).
        if agreement_coverage >= AGREEMENT_CARRIES_COVERAGE || (learned && rows >= policy.min_evidence_rows) {
            return base(EvidenceStatus::Consistent, a.wrong_share, a.ci_low, a.ci_high, Vec::new());
        }
    }
    let points: Vec<f64> = readings.iter().map(|r| r.wrong_share).collect();
    let median = median(&points);
    if !learned {
        return base(EvidenceStatus::Insufficient, median, 0.0, 1.0, Vec::new());
    }
    let (near, far): (Vec<&Reading>, Vec<&Reading>) = if readings.len() == 2 {
        // Two readings are both within half their distance of their midpoint: compare them
        // with each other instead.
        if (readings[0].wrong_share - readings[1].wrong_share).abs() <= policy.max_estimator_gap {
            (readings.iter().collect(), Vec::new())
        } else {
            (Vec::new(), readings.iter().collect())
        }
    } else {
        readings.iter().partition(|r| (r.wrong_share - median).abs() <= policy.max_estimator_gap)
    };
    let hull = |rs: &[&Reading]| rs.iter().fold((1.0f64, 0.0f64), |(lo, hi), r| (lo.min(r.ci_low), hi.max(r.ci_high)));
    let status = if readings.len() == 1 {
        EvidenceStatus::Uncorroborated
    } else if far.is_empty() {
        EvidenceStatus::Consistent
    } else if far.len() == 1 && near.len() >= 2 {
        EvidenceStatus::Outlier
    } else {
        EvidenceStatus::Disagree
    };
    // A network trained on a few hundred rows reads too little to be trusted, whatever it says.
    if rows < policy.min_evidence_rows {
        let mut e = base(EvidenceStatus::Insufficient, median, 0.0, 1.0, Vec::new());
        e.readings_agree = status != EvidenceStatus::Disagree;
        return e;
    }
    match status {
        EvidenceStatus::Uncorroborated => base(status, readings[0].wrong_share, 0.0, readings[0].ci_high, Vec::new()),
        EvidenceStatus::Disagree => {
            let all: Vec<&Reading> = readings.iter().collect();
            let (lo, hi) = hull(&all);
            base(status, median, lo, hi, Vec::new())
        }
        _ => {
            // Without the outlier's pull: the mean of the readings that agree.
            let centre = if status == EvidenceStatus::Outlier { near.iter().map(|r| r.wrong_share).sum::<f64>() / near.len() as f64 } else { median };
            let (lo, hi) = hull(&near);
            base(status, centre, lo, hi, far.iter().map(|r| r.estimator).collect())
        }
    }
}

/// Two score components closer than this (Ashman's D) are one skewed mode split in two, not
/// wrong labels beside right ones. On MNIST their share then missed the truth by 0.05–0.6 (3 %
/// symmetric noise read 0.11–0.33, the clean test set 0.66, 30 % pair flips 0.13), while every
/// split at D ≥ 2.8 read within 0.03 (docs/benchmarks.md §9).
pub const MIN_MODE_SEPARATION: f64 = 2.5;

/// A bootstrap interval widened to at least the Wilson interval of the share's count among `n`
/// rows: a bootstrap of a count of 0 (or of n) has nothing to resample and would claim [0, 0].
pub fn no_narrower_than_its_sample((lo, hi): (f64, f64), share: f64, n: usize, z: f64) -> (f64, f64) {
    let count = ((share * n as f64).round() as usize).min(n);
    let (w_lo, w_hi) = wilson(count, n, z);
    (lo.min(w_lo), hi.max(w_hi))
}

/// Share of the window's records above the mixture's split (fitted on every scored row); none
/// when the two components do not separate.
fn score_mixture(s: &WindowSignals<'_>, z: f64) -> (Option<Reading>, Option<f64>) {
    let est = noise_rate::estimate(s.scores);
    let separation = est.two_components.then_some(est.separation);
    if separation.is_some_and(|d| d < MIN_MODE_SEPARATION) {
        return (None, separation);
    }
    let flagged = s.scores[..s.pending].iter().filter(|&&x| x >= est.threshold).count();
    let share = flagged as f64 / s.pending.max(1) as f64;
    let (lo, hi) = wilson(flagged, s.pending, z);
    (Some(Reading { estimator: Estimator::ScoreMixture, wrong_share: share, ci_low: lo, ci_high: hi }), separation)
}

/// Rows by class: `labels[i]` for each index in `rows`.
fn by_class(rows: impl Iterator<Item = usize>, labels: &[u32], classes: usize) -> Vec<Vec<usize>> {
    let mut out = vec![Vec::new(); classes];
    for i in rows {
        out[labels[i] as usize].push(i);
    }
    out
}

/// Classes with fewer pool rows than this borrow the whole pool's scores as their control.
const MIN_POOL_ROWS_PER_CLASS: usize = 20;

fn pool_control(s: &WindowSignals<'_>, z: f64) -> Option<Reading> {
    let pending = by_class(0..s.pending, s.labels, s.classes);
    let pool = by_class(s.pending..s.scores.len(), s.labels, s.classes);
    let all_pool: Vec<usize> = (s.pending..s.scores.len()).collect();
    let point = storey_right_share(s.scores, &pending, &pool, &all_pool)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(s.seed ^ POOL_CONTROL_SEED_SALT);
    let mut resample = |rows: &[usize]| -> Vec<usize> { (0..rows.len()).map(|_| rows[rng.random_range(0..rows.len())]).collect() };
    let mut replicates = Vec::with_capacity(BOOTSTRAP_ROUNDS);
    for _ in 0..BOOTSTRAP_ROUNDS {
        let p: Vec<Vec<usize>> = pending.iter().map(|rows| if rows.is_empty() { Vec::new() } else { resample(rows) }).collect();
        let q: Vec<Vec<usize>> = pool.iter().map(|rows| if rows.is_empty() { Vec::new() } else { resample(rows) }).collect();
        let all = resample(&all_pool);
        if let Some(r) = storey_right_share(s.scores, &p, &q, &all) {
            replicates.push(1.0 - r);
        }
    }
    let (lo, hi) = no_narrower_than_its_sample(percentile_interval(replicates, z), 1.0 - point, s.pending, z);
    Some(Reading { estimator: Estimator::PoolControl, wrong_share: 1.0 - point, ci_low: lo, ci_high: hi })
}

/// Σ_c n_c · min(1, F_window,c(t_c) / F_pool,c(t_c)) / n with t_c the pool's median score of
/// class c: wrong labels score high, so below the clean median nearly all rows are right ones.
fn storey_right_share(scores: &[f32], pending: &[Vec<usize>], pool: &[Vec<usize>], all_pool: &[usize]) -> Option<f64> {
    if all_pool.is_empty() {
        return None;
    }
    let below = |rows: &[usize], t: f32| rows.iter().filter(|&&i| scores[i] <= t).count() as f64 / rows.len() as f64;
    let median_of = |rows: &[usize]| {
        let mut v: Vec<f32> = rows.iter().map(|&i| scores[i]).collect();
        v.sort_by(f32::total_cmp);
        v[v.len() / 2]
    };
    let global_t = median_of(all_pool);
    let global_f = below(all_pool, global_t);
    let (mut right, mut n) = (0.0, 0usize);
    for (rows, control) in pending.iter().zip(pool) {
        if rows.is_empty() {
            continue;
        }
        let (t, f0) = if control.len() >= MIN_POOL_ROWS_PER_CLASS {
            let t = median_of(control);
            (t, below(control, t))
        } else {
            (global_t, global_f)
        };
        right += rows.len() as f64 * (below(rows, t) / f0.max(1e-9)).min(1.0);
        n += rows.len();
    }
    (n > 0).then(|| right / n as f64)
}

/// Per-class thresholds: the mean out-of-fold probability of class j over rows labelled j.
fn class_thresholds(p: &[f32], labels: &[u32], classes: usize) -> Vec<f64> {
    let (mut sum, mut count) = (vec![0.0f64; classes], vec![0usize; classes]);
    for (i, &l) in labels.iter().enumerate() {
        sum[l as usize] += p[i * classes + l as usize] as f64;
        count[l as usize] += 1;
    }
    sum.iter().zip(&count).map(|(s, &c)| if c == 0 { 1.0 } else { s / c as f64 }).collect()
}

/// Per row: `None` when no class clears its threshold, else whether the most probable class
/// that does differs from the given label.
fn confidently_wrong(p: &[f32], labels: &[u32], classes: usize, thresholds: &[f64], rows: std::ops::Range<usize>) -> Vec<Option<bool>> {
    rows.map(|i| {
        let row = &p[i * classes..(i + 1) * classes];
        let best = (0..classes).filter(|&j| row[j] as f64 >= thresholds[j]).max_by(|&a, &b| row[a].total_cmp(&row[b]));
        best.map(|j| j != labels[i] as usize)
    })
    .collect()
}

/// The calibrated confident joint's off-diagonal share: per given label, the wrong share among
/// counted rows, weighted by that label's row count.
fn cl_share(verdicts: &[Option<bool>], rows: &[usize], labels: &[u32], classes: usize) -> f64 {
    let (mut n, mut counted, mut wrong) = (vec![0usize; classes], vec![0usize; classes], vec![0usize; classes]);
    for &i in rows {
        let c = labels[i] as usize;
        n[c] += 1;
        if let Some(w) = verdicts[i] {
            counted[c] += 1;
            wrong[c] += w as usize;
        }
    }
    let total: usize = n.iter().sum();
    let wrong_rows: f64 = (0..classes).filter(|&c| counted[c] > 0).map(|c| n[c] as f64 * wrong[c] as f64 / counted[c] as f64).sum();
    wrong_rows / total.max(1) as f64
}

fn confident_learning(p: &[f32], s: &WindowSignals<'_>, z: f64, min_pool_rows: usize) -> Option<Reading> {
    if s.pending == 0 {
        return None;
    }
    let thresholds = class_thresholds(p, s.labels, s.classes);
    let verdicts = confidently_wrong(p, s.labels, s.classes, &thresholds, 0..s.labels.len());
    let rows: Vec<usize> = (0..s.pending).collect();
    let pool: Vec<usize> = (s.pending..s.labels.len()).collect();
    // The network errs on some right labels too (overlapping classes): the share of the pool's
    // right labels it puts elsewhere is that error, taken out as a false-positive rate.
    let corrected = |rows: &[usize], pool: &[usize]| {
        let raw = cl_share(&verdicts, rows, s.labels, s.classes);
        if pool.len() < min_pool_rows {
            return raw;
        }
        let false_flags = cl_share(&verdicts, pool, s.labels, s.classes).min(MAX_POOL_FALSE_FLAG_RATE);
        ((raw - false_flags) / (1.0 - false_flags)).clamp(0.0, 1.0)
    };
    let point = corrected(&rows, &pool);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(s.seed ^ CONFIDENT_LEARNING_SEED_SALT);
    let replicates = (0..BOOTSTRAP_ROUNDS)
        .map(|_| {
            let sample: Vec<usize> = (0..s.pending).map(|_| rng.random_range(0..s.pending)).collect();
            let pool_sample: Vec<usize> = if pool.is_empty() { Vec::new() } else { (0..pool.len()).map(|_| pool[rng.random_range(0..pool.len())]).collect() };
            corrected(&sample, &pool_sample)
        })
        .collect();
    let (lo, hi) = no_narrower_than_its_sample(percentile_interval(replicates, z), point, s.pending, z);
    Some(Reading { estimator: Estimator::ConfidentLearning, wrong_share: point, ci_low: lo, ci_high: hi })
}

/// On the window's own records: pool rows were selected for low loss and would flatter it.
fn model_fit(p: &[f32], s: &WindowSignals<'_>) -> ModelFit {
    ModelFit::of(p, &s.labels[..s.pending], s.classes, s.final_loss)
}

impl ModelFit {
    /// How well out-of-fold probabilities `p` (`classes` per row) predict `labels`.
    pub fn of(p: &[f32], labels: &[u32], classes: usize, final_loss: f64) -> Self {
        let n = labels.len();
        let mut counts = vec![0usize; classes];
        let mut right = 0usize;
        for (i, &l) in labels.iter().enumerate() {
            counts[l as usize] += 1;
            let row = &p[i * classes..(i + 1) * classes];
            let argmax = (0..classes).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap_or(0);
            right += (argmax == l as usize) as usize;
        }
        let heldout_accuracy = right as f64 / n.max(1) as f64;
        let chance_accuracy = counts.iter().copied().max().unwrap_or(0) as f64 / n.max(1) as f64;
        let lift = if chance_accuracy < 1.0 { (heldout_accuracy - chance_accuracy) / (1.0 - chance_accuracy) } else { 0.0 };
        ModelFit { heldout_accuracy, chance_accuracy, lift, final_loss }
    }
}

#[cfg(test)]
mod tests;
