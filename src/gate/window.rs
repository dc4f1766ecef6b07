//! One O2U-Net window: train on the pending records plus the reference pool, score everything,
//! and flag pending records. Pure computation; runs on its own thread.

use candle_core::Device;

use crate::{
    accuracy::{
        agreement, GoldCalibration,
        evidence::{self, EvidencePolicy, EvidenceStatus, Estimator, Reading, WindowEvidence, WindowSignals},
    },
    config::GateConfig,
    data::Standardizer,
    wire::NoiseRateFrom,
    o2u::{self, suspects, InputShape, O2uConfig, Samples, TrainingObserver},
};

/// The training set of one window: the first `pending` rows are the records being gated, the
/// rest come from the reference pool.
#[derive(Clone)]
pub struct WindowData {
    pub features: Vec<f32>,
    pub labels: Vec<u32>,
    pub pending: usize,
    pub dim: usize,
    pub classes: usize,
    /// Per pending row: its sample id and vendor, so labels of one sample by several vendors
    /// count as agreement.
    pub sample_ids: Vec<String>,
    pub vendors: Vec<String>,
    /// Earlier windows' labels of the same sample_ids (filled in by the edge from the store).
    pub prior_labels: Vec<PriorLabel>,
}

/// A label given to a sample in an earlier window, from the state store: agreement sees it
/// whichever window it arrived in.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PriorLabel {
    pub sample_id: String,
    pub vendor_id: String,
    pub label: u32,
    /// Its O2U score in its own window (loss minus that epoch's mean, so windows compare).
    pub score: f32,
    /// The delivery it came in.
    #[serde(default)]
    pub batch_id: String,
    /// How much it counts as wrong in its delivery's estimate: the agreement model's posterior,
    /// else 1 when it was flagged and 0 when not. A later window that judges it again revises
    /// its delivery by the difference.
    #[serde(default)]
    pub p_wrong: f32,
}

impl WindowData {
    /// Adds earlier windows' labels of this window's samples, except a vendor's own label of a
    /// sample it labels here (a replayed window finds its own labels in the store).
    pub fn attach_prior_labels(&mut self, labels: Vec<PriorLabel>) {
        let own: std::collections::HashSet<(&str, &str)> = self.sample_ids.iter().map(String::as_str).zip(self.vendors.iter().map(String::as_str)).collect();
        let mut seen = std::collections::HashSet::new();
        let others: Vec<PriorLabel> = labels
            .into_iter()
            .filter(|l| (l.label as usize) < self.classes && !own.contains(&(l.sample_id.as_str(), l.vendor_id.as_str())))
            // One label per (sample, vendor), however often the lookup returned it.
            .filter(|l| seen.insert((l.sample_id.clone(), l.vendor_id.clone())))
            .collect();
        self.prior_labels = others;
    }

    /// The window's sample_ids, each once: what to look up in the store.
    pub fn distinct_sample_ids(&self) -> Vec<String> {
        let mut ids = self.sample_ids.clone();
        ids.sort();
        ids.dedup();
        ids
    }
}

#[derive(Debug, Clone)]
pub struct WindowScores {
    /// For the pending rows only.
    pub scores: Vec<f32>,
    pub predicted: Vec<u32>,
    pub flagged: Vec<bool>,
    /// Per pending row: its place among the pending rows by score, 0 = most suspect. A delivery's
    /// flag count at another window share is the count of its rows ranked below that many.
    pub rank: Vec<usize>,
    /// Share of all scored rows with a lower score.
    pub percentile: Vec<f64>,
    /// What the window's wrong-label share rests on.
    pub evidence: WindowEvidence,
    /// `estimators`, `agreement` (joint model over overlapping labels) or `fixed`.
    pub noise_rate_from: NoiseRateFrom,
    /// The flags' error rates measured by the reference pool, for the per-delivery correction.
    pub pool_control: Option<GoldCalibration>,
    /// Per pending row, when agreement set the share: the joint model's probability that the
    /// label is wrong. A delivery's estimate is then their sum, not its flag count.
    pub p_wrong: Option<Vec<f64>>,
    /// Earlier windows' labels that this window's agreement model judged again, with their new
    /// `p_wrong` (their old one is what they came with).
    pub revised: Vec<(PriorLabel, f32)>,
    pub final_loss: f64,
    pub training_seconds: f64,
}

impl WindowScores {
    /// Flags at the window share's interval ends: (at the low share, at the high share).
    pub fn flag_bounds(&self) -> (usize, usize) {
        let n = self.scores.len() as f64;
        let at = |share: f64| ((share * n).round() as usize).min(self.scores.len());
        (at(self.evidence.wrong_share_ci_low), at(self.evidence.wrong_share_ci_high))
    }
}

/// How a window turns scores into a wrong-label share.
#[derive(Debug, Clone, Copy)]
pub struct WindowPolicy {
    pub noise_rate: suspects::NoiseRate,
    pub min_overlap_share: f64,
    pub evidence: EvidencePolicy,
    /// Mini-batches each cross-fitting network trains for at least.
    pub crossfit_min_steps: usize,
}

impl WindowPolicy {
    /// The policy the gate's configuration asks for.
    pub fn from_config(g: &GateConfig) -> Self {
        WindowPolicy {
            noise_rate: g.noise_rate,
            min_overlap_share: g.min_overlap_share,
            evidence: EvidencePolicy {
                max_estimator_gap: g.max_estimator_gap,
                min_evidence_rows: g.min_evidence_rows,
                min_model_lift: g.min_model_lift,
                min_pool_control_rows: g.min_pool_control_rows,
                z: crate::stats::z_for(g.confidence),
            },
            crossfit_min_steps: g.crossfit_min_steps,
        }
    }
}

const CROSSFIT_FOLDS: usize = 2;

pub fn score_window(
    mut data: WindowData,
    config: &O2uConfig,
    policy: &WindowPolicy,
    device: &Device,
    observer: &mut dyn TrainingObserver,
) -> Result<WindowScores, o2u::WindowError> {
    let shape = InputShape::Vector { dim: data.dim };
    Standardizer::standardize_in_place(&mut data.features, shape);
    let samples = Samples { features: &data.features, labels: &data.labels, shape, classes: data.classes };
    let outcome = o2u::score(samples, None, config, device, observer)?;
    let pending = data.pending;
    let pool_rows = data.labels.len() - pending;
    let pending_scores = &outcome.scores[..pending];
    let mut p_wrong = None;
    let mut revised = Vec::new();
    let evidence = match policy.noise_rate {
        suspects::NoiseRate::Fixed(rate) => evidence::fixed(rate, pending, pool_rows, policy.evidence.z),
        suspects::NoiseRate::Auto => {
            let (agreement, coverage, posterior) = agreement_reading(&data, pending_scores, policy);
            if let Some(all) = posterior {
                revised = data.prior_labels.iter().cloned().zip(all[pending..].iter().map(|&p| p as f32)).collect();
                p_wrong = Some(all[..pending].to_vec());
            }
            // A window too small to split still gets the other readings; the missing fit makes
            // the evidence insufficient rather than failing the window.
            let heldout = o2u::heldout_probabilities(samples, config, CROSSFIT_FOLDS, policy.crossfit_min_steps, device).ok();
            let signals = WindowSignals {
                scores: &outcome.scores,
                labels: &data.labels,
                pending,
                classes: data.classes,
                heldout: heldout.as_deref(),
                final_loss: outcome.final_loss,
                seed: config.seed,
            };
            evidence::gather(&signals, agreement, coverage, &policy.evidence)
        }
    };
    let noise_rate_from = match (evidence.status, evidence.readings.iter().any(|r| r.estimator == Estimator::Agreement)) {
        (EvidenceStatus::Fixed, _) => NoiseRateFrom::Fixed,
        (_, true) => NoiseRateFrom::Agreement,
        _ => NoiseRateFrom::Estimators,
    };
    // The scores pick which records; the evidence says how many.
    let order = suspects::rank_descending(pending_scores);
    let mut rank = vec![0usize; pending];
    for (r, &i) in order.iter().enumerate() {
        rank[i] = r;
    }
    let k = ((evidence.wrong_share * pending as f64).round() as usize).min(pending);
    let flagged: Vec<bool> = rank.iter().map(|&r| r < k).collect();
    let pool_control = flag_error_rates(&outcome.scores, pending, &order[..k], &evidence, policy);
    let all_order = suspects::rank_descending(&outcome.scores);
    let total = outcome.scores.len();
    let mut percentile = vec![0.0; pending];
    for (r, &i) in all_order.iter().enumerate() {
        if i < pending {
            percentile[i] = (total - r - 1) as f64 / (total.max(2) - 1) as f64;
        }
    }
    Ok(WindowScores {
        scores: pending_scores.to_vec(),
        predicted: outcome.predicted[..pending].to_vec(),
        flagged,
        rank,
        percentile,
        evidence,
        noise_rate_from,
        pool_control,
        p_wrong,
        revised,
        final_loss: outcome.final_loss,
        training_seconds: outcome.training_seconds,
    })
}

/// Top-k flags are not perfect: some right labels score above the k-th record and as many wrong
/// ones below it. The pool measures the first directly: the share of its (right) rows scoring at
/// or above the flag threshold. At the window's share π the two errors balance, so the share of
/// wrong labels flagged is 1 − fpr·(1 − π)/π. Per delivery, flagged share f inverts to
/// (f − fpr)/(tpr − fpr) (Rogan–Gladen). `flagged` are the flagged pending rows, most suspect
/// first. `None` without a pool control or a usable share.
fn flag_error_rates(scores: &[f32], pending: usize, flagged: &[usize], evidence: &WindowEvidence, policy: &WindowPolicy) -> Option<GoldCalibration> {
    let pool_rows = scores.len() - pending;
    let k = flagged.len();
    if pool_rows < policy.evidence.min_pool_control_rows || k == 0 || !evidence.status.supports_a_decision() || evidence.status == EvidenceStatus::Fixed {
        return None;
    }
    let threshold = scores[flagged[k - 1]];
    let pool_flagged = scores[pending..].iter().filter(|&&x| x >= threshold).count();
    let share = k as f64 / pending as f64;
    let fpr = pool_flagged as f64 / pool_rows as f64;
    let wrong = k;
    let wrong_flagged = ((1.0 - fpr * (1.0 - share) / share).clamp(0.0, 1.0) * wrong as f64).round() as usize;
    GoldCalibration::from_counts(wrong_flagged, wrong, pool_flagged, pool_rows)
}

/// The joint agreement model over this window's labels and the earlier labels of the same
/// sample_ids, when enough of the window's labels share a sample_id with another vendor's.
/// Returns the reading (wrong share of this window's labels), the coverage, and every label's
/// probability of being wrong (this window's first, then the earlier ones).
fn agreement_reading(data: &WindowData, pending_scores: &[f32], policy: &WindowPolicy) -> (Option<Reading>, f64, Option<Vec<f64>>) {
    let pending = data.pending;
    let ids = data.sample_ids.iter().map(String::as_str).chain(data.prior_labels.iter().map(|p| p.sample_id.as_str()));
    let vendors = data.vendors.iter().map(String::as_str).chain(data.prior_labels.iter().map(|p| p.vendor_id.as_str()));
    let (item, items) = agreement::index_of(ids);
    let (vendor, vendor_count) = agreement::index_of(vendors);
    let coverage = agreement::overlap_shares(&item, &vendor, items, pending);
    if coverage < policy.min_overlap_share.max(f64::MIN_POSITIVE) {
        return (None, coverage, None);
    }
    let labels: Vec<u32> = data.labels[..pending].iter().copied().chain(data.prior_labels.iter().map(|p| p.label)).collect();
    let scores: Vec<f32> = pending_scores.iter().copied().chain(data.prior_labels.iter().map(|p| p.score)).collect();
    let obs = agreement::Observations { item: &item, annotator: &vendor, label: &labels, score: &scores, items, annotators: vendor_count, classes: data.classes };
    let Some(fit) = agreement::fit(&obs) else { return (None, coverage, None) };
    let p = &fit.p_correct[..pending];
    let n = pending.max(1) as f64;
    let share = 1.0 - p.iter().sum::<f64>() / n;
    let sd = p.iter().map(|q| q * (1.0 - q)).sum::<f64>().sqrt() / n;
    // The posterior's own spread understates the model's error; never claim better than ±0.02,
    // and where few labels are shared, most posteriors rest on the scores alone: wider still.
    let half = (policy.evidence.z * sd).max(0.02) / coverage.sqrt();
    let reading = Reading { estimator: Estimator::Agreement, wrong_share: share, ci_low: (share - half).max(0.0), ci_high: (share + half).min(1.0) };
    (Some(reading), coverage, Some(fit.p_correct.iter().map(|q| 1.0 - q).collect()))
}
