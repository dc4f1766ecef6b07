//! One O2U-Net window: train on the pending records, the reference pool and the earlier labels of
//! the same samples, score everything, and flag pending records (and judge the earlier labels
//! again). Pure computation; runs on its own thread.

use candle_core::Device;

use crate::{
    accuracy::{
        agreement,
        evidence::{self, Estimator, EvidencePolicy, EvidenceStatus, Reading, WindowEvidence, WindowSignals},
        offline, shift, GoldCalibration,
    },
    config::GateConfig,
    data::Standardizer,
    o2u::{self, suspects, InputShape, O2uConfig, Samples, TrainingObserver},
    wire::NoiseRateFrom,
};

/// The training set of one window: the first `pending` rows are the records being gated, the
/// rest come from the reference pool (less the window's own items, see
/// [`super::pool::ReferencePool::samples_except`]).
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
    /// Pending rows that came as text, with their text: their features are zeros until the
    /// window thread embeds them ([`WindowData::set_embedded`]).
    pub texts: Vec<(usize, crate::encoder::TextInput)>,
    /// Pending rows whose pixels an image encoder embeds (`[encoder.image]`), with their
    /// `[height, width, channels]`: zeros until the window thread embeds them
    /// ([`WindowData::set_embedded_images`]); the pixels stay with the records.
    pub images: Vec<(usize, [usize; 3])>,
}

/// A label given to a sample in an earlier window, from the state store: agreement sees it
/// whichever window it arrived in.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PriorLabel {
    pub sample_id: String,
    pub vendor_id: String,
    pub label: u32,
    /// Its O2U score in its own window (loss minus that epoch's mean). Kept for the record: a
    /// later window scores the label again with its own network.
    pub score: f32,
    /// The delivery it came in.
    #[serde(default)]
    pub batch_id: String,
    /// How much it counts as wrong in its delivery's estimate: the agreement model's posterior,
    /// else 1 when it was flagged and 0 when not, scaled so that a delivery's labels sum to its
    /// estimated wrong count. A later window that judges it again sets a new value and revises
    /// its delivery by the difference.
    #[serde(default)]
    pub p_wrong: f32,
    /// Its `p_wrong` when its own delivery was gated: a revision starts from it, so a window
    /// replayed after a crash lands on the value its first run wrote (none in labels stored
    /// before this field: their `p_wrong` stands in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gated_p_wrong: Option<f32>,
    /// The latest later window's flag for it (1 flagged, 0 not), once one judged it again: its
    /// delivery counts each re-judged label once, at this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejudged_flag: Option<f32>,
}

/// An earlier label judged again by this window.
#[derive(Debug, Clone, PartialEq)]
pub struct Revision {
    /// As it came from the store.
    pub label: PriorLabel,
    /// Its new `p_wrong`.
    pub p_wrong: f32,
    /// This window's flag for it.
    pub flag: f32,
}

impl WindowData {
    /// Writes the embedded texts' features (`dim` each, in the order of `texts`) into their rows.
    pub fn set_embedded(&mut self, features: &[f32]) {
        let rows: Vec<usize> = self.texts.iter().map(|(row, _)| *row).collect();
        self.set_rows(&rows, features);
    }

    /// Writes the embedded images' features (`dim` each, in the order of `images`) into their rows.
    pub fn set_embedded_images(&mut self, features: &[f32]) {
        let rows: Vec<usize> = self.images.iter().map(|(row, _)| *row).collect();
        self.set_rows(&rows, features);
    }

    fn set_rows(&mut self, rows: &[usize], features: &[f32]) {
        for (row, f) in rows.iter().zip(features.chunks_exact(self.dim)) {
            self.features[row * self.dim..(row + 1) * self.dim].copy_from_slice(f);
        }
    }

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
    /// The same with each label's own vote counted (the agreement model's full posterior): the
    /// delivery's interval spans both.
    pub p_wrong_with_own: Option<Vec<f64>>,
    /// Agreement judged the labels without the network (it earned no weight): the records are
    /// ranked, and deliveries estimated, by `p_wrong`; otherwise by the scores and the flags.
    pub ranked_by_votes: bool,
    /// Earlier windows' labels that this window judged again (when agreement set its share),
    /// with their new `p_wrong` from this window's flag for them (their old one is what they
    /// came with).
    pub revised: Vec<Revision>,
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
#[derive(Debug, Clone)]
pub struct WindowPolicy {
    pub noise_rate: suspects::NoiseRate,
    pub min_overlap_share: f64,
    pub evidence: EvidencePolicy,
    /// Mini-batches each cross-fitting network trains for at least.
    pub crossfit_min_steps: usize,
    /// Mini-batches stage 1 runs for at least in a window whose labels overlap.
    pub agreement_min_stage1_steps: usize,
    /// Above this feature shift from the pool the window does not decide.
    pub max_feature_shift: f64,
    /// What re-review gets from a window that cannot decide.
    pub review_budget: ReviewBudget,
}

/// A window whose share is not trusted to decide sends each vendor's SLA error budget at most:
/// `floor((1 − SLA) · n)` of the vendor's `n` records in the window, its most suspect ones (fewer
/// where the share itself asks for fewer). A vendor at its SLA has about that many wrong labels,
/// so the reviewers see the likeliest of them, and never most of a window the gate cannot judge.
#[derive(Debug, Clone, PartialEq)]
pub struct ReviewBudget {
    pub default_sla: f64,
    pub vendor_sla: std::collections::BTreeMap<String, f64>,
}

impl ReviewBudget {
    fn share(&self, vendor: &str) -> f64 {
        1.0 - self.vendor_sla.get(vendor).copied().unwrap_or(self.default_sla)
    }

    /// Unflags, vendor by vendor, the flagged records beyond the budget (`order`: most suspect
    /// first).
    fn limit(&self, flagged: &mut [bool], order: &[usize], vendors: &[String]) {
        let mut records: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for v in vendors {
            *records.entry(v.as_str()).or_default() += 1;
        }
        let mut sent: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for &i in order {
            if !flagged[i] {
                continue;
            }
            let v = vendors[i].as_str();
            // Plus a hair, so that 2 % of 50 is 1 and not 0 by rounding.
            let allowed = (self.share(v).clamp(0.0, 1.0) * records[v] as f64 + 1e-9).floor() as usize;
            let so_far = sent.entry(v).or_default();
            if *so_far < allowed {
                *so_far += 1;
            } else {
                flagged[i] = false;
            }
        }
    }
}

impl WindowPolicy {
    /// The policy the gate's configuration asks for.
    pub fn from_config(g: &GateConfig) -> Self {
        WindowPolicy {
            noise_rate: g.noise_rate,
            min_overlap_share: g.min_overlap_share,
            evidence: g.evidence_policy(),
            crossfit_min_steps: g.crossfit_min_steps,
            agreement_min_stage1_steps: g.agreement_min_stage1_steps,
            max_feature_shift: g.max_feature_shift,
            review_budget: ReviewBudget { default_sla: g.default_sla_accuracy, vendor_sla: g.vendor_sla.clone() },
        }
    }

    /// Whether agreement sets the share of a window whose labels overlap by `coverage`.
    pub fn agreement_applies(&self, coverage: f64) -> bool {
        matches!(self.noise_rate, suspects::NoiseRate::Auto) && coverage >= self.min_overlap_share.max(f64::MIN_POSITIVE)
    }

    /// The engine settings for a window: where agreement sets the share, stage 1 trains longer
    /// (the labels of one item cannot all be memorised, so the longer fit learns how far they
    /// agree rather than their noise).
    pub fn engine_for(&self, config: &O2uConfig, agreeing: bool) -> O2uConfig {
        let min_stage1_steps = if agreeing { config.min_stage1_steps.max(self.agreement_min_stage1_steps) } else { config.min_stage1_steps };
        O2uConfig { min_stage1_steps, ..config.clone() }
    }
}

/// Bounds a window's training rows at five times its records (plus the pool). A song of the
/// music-genre crowd has about four labels; a bound of one extra row per record left a third of a
/// late window's earlier labels out and ranked the vendors worse (docs/benchmarks.md §6).
const MAX_EARLIER_ROWS_PER_RECORD: usize = 4;

/// The narrowest half-width an agreement reading may claim: the posterior's own spread
/// understates the crowd model's error (it takes the one-coin model as true).
const MIN_AGREEMENT_HALF_WIDTH: f64 = 0.02;

/// Scores a window in four steps: train on its labels (and earlier labels of its sample_ids),
/// [`weigh_evidence`] for how many are wrong, [`pick_suspects`] for which, and rank every pending
/// row among all scored rows.
pub fn score_window(mut data: WindowData, config: &O2uConfig, policy: &WindowPolicy, device: &Device, observer: &mut dyn TrainingObserver) -> Result<WindowScores, o2u::WindowError> {
    let shape = InputShape::Vector { dim: data.dim };
    Standardizer::standardize_in_place(&mut data.features, shape);
    let samples = Samples { features: &data.features, labels: &data.labels, shape, classes: data.classes };
    let rows = data.labels.len();
    let (training, earlier) = with_earlier_labels(&data);
    let index = LabelIndex::new(&data, earlier.iter().copied());
    let engine = policy.engine_for(config, policy.agreement_applies(index.coverage));
    let training = training.as_ref().map_or(samples, |rows| Samples { features: &rows.features, labels: &rows.labels, ..samples });
    let mut outcome = o2u::score(training, None, &engine, device, observer)?;
    // Earlier labels are scored by this window's network, on the same scale as its own labels.
    let earlier_scores = outcome.scores.split_off(rows);
    outcome.predicted.truncate(rows);
    let trained = Trained { data: &data, index: &index, earlier: &earlier, training, outcome: &outcome };
    let weighed = weigh_evidence(&trained, config, policy, device);
    let picked = pick_suspects(&trained, earlier_scores, &weighed, policy);
    let pending = data.pending;
    Ok(WindowScores {
        scores: outcome.scores[..pending].to_vec(),
        predicted: outcome.predicted[..pending].to_vec(),
        flagged: picked.flagged,
        rank: picked.rank,
        percentile: percentiles(&outcome.scores, pending),
        noise_rate_from: noise_rate_from(&weighed.evidence),
        pool_control: picked.pool_control,
        p_wrong: weighed.judged.as_ref().map(|j| j.p_wrong[..pending].to_vec()),
        p_wrong_with_own: weighed.judged.as_ref().map(|j| j.p_wrong_with_own[..pending].to_vec()),
        ranked_by_votes: picked.ranked_by_votes,
        revised: picked.revised,
        evidence: weighed.evidence,
        final_loss: outcome.final_loss,
        training_seconds: outcome.training_seconds,
    })
}

/// A trained window: its data, which labels share items, the earlier labels it trained with, and
/// the network's scores (the window's rows, then the pool's).
struct Trained<'a> {
    data: &'a WindowData,
    index: &'a LabelIndex,
    earlier: &'a [usize],
    training: Samples<'a>,
    outcome: &'a o2u::O2uOutcome,
}

/// How many of the window's labels are wrong, and the agreement model's judgement of each label
/// where it applied.
struct Weighed {
    evidence: WindowEvidence,
    judged: Option<AgreementJudgement>,
}

/// The window's evidence: out-of-fold probabilities on every training row, an item's labels in
/// one fold (no network judges a label it saw, nor an item whose other labels it saw), agreement
/// where labels share items, the estimators, and the shift from the pool. A window too small to
/// split still gets the other readings; the missing fit makes the evidence insufficient rather
/// than failing the window.
fn weigh_evidence(t: &Trained, config: &O2uConfig, policy: &WindowPolicy, device: &Device) -> Weighed {
    let (data, rows, pending) = (t.data, t.data.labels.len(), t.data.pending);
    if let suspects::NoiseRate::Fixed(rate) = policy.noise_rate {
        return Weighed { evidence: evidence::fixed(rate, pending, rows - pending, policy.evidence.z), judged: None };
    }
    let groups = t.index.training_groups(rows, t.training.len());
    let heldout_all = o2u::heldout_probabilities(t.training, config, offline::CROSSFIT_FOLDS, policy.crossfit_min_steps, Some(&groups), device).ok();
    let (agreement, coverage, judged) = agreement_reading(data, t.index, heldout_all.as_deref(), rows, t.earlier, policy);
    let heldout = heldout_all.as_ref().map(|p| &p[..rows * data.classes]);
    let signals = WindowSignals { scores: &t.outcome.scores, labels: &data.labels, pending, classes: data.classes, heldout, final_loss: t.outcome.final_loss, seed: config.seed };
    let shift = (rows > pending).then(|| shift::check(&data.features, &data.labels, pending, data.dim, data.classes, policy.max_feature_shift)).flatten();
    let mut evidence = evidence::gather(&signals, agreement, coverage, &policy.evidence).with_shift(shift);
    evidence.network_weight = judged.as_ref().map(|j| j.network_weight);
    Weighed { evidence, judged }
}

fn noise_rate_from(evidence: &WindowEvidence) -> NoiseRateFrom {
    match (evidence.status, evidence.readings.iter().any(|r| r.estimator == Estimator::Agreement)) {
        (EvidenceStatus::Fixed, _) => NoiseRateFrom::Fixed,
        (_, true) => NoiseRateFrom::Agreement,
        _ => NoiseRateFrom::Estimators,
    }
}

/// Which records are suspects, and what that says of earlier labels.
struct Picked {
    flagged: Vec<bool>,
    rank: Vec<usize>,
    ranked_by_votes: bool,
    revised: Vec<Revision>,
    pool_control: Option<GoldCalibration>,
}

/// The evidence says how many; which records: by the scores, except where agreement judged the
/// labels and the network did not learn or earned no more than its own probabilities
/// ([`agreement::VoteFit::network_knows_more_than_it_says`]): then by agreement's probability
/// that each is wrong, judged by the item's other labels. Scores from a network that learned
/// nothing ranked the music-genre workers at ρ 0.64–0.67 against 0.71–0.80 by the votes
/// (docs/benchmarks.md §10). A window that cannot decide sends each vendor at most its review
/// budget, and judges no earlier label.
fn pick_suspects(t: &Trained, earlier_scores: Vec<f32>, weighed: &Weighed, policy: &WindowPolicy) -> Picked {
    let (data, pending, evidence) = (t.data, t.data.pending, &weighed.evidence);
    let learned = evidence.model_fit.is_some_and(|f| f.lift >= policy.evidence.min_model_lift);
    let ranked_by_votes = weighed.judged.as_ref().is_some_and(|j| !(learned && j.network_knows_more));
    let (suspicion, earlier_suspicion): (Vec<f32>, Vec<f32>) = match &weighed.judged {
        Some(j) if ranked_by_votes => (j.p_wrong[..pending].iter().map(|&x| x as f32).collect(), j.p_wrong[pending..].iter().map(|&p| p as f32).collect()),
        _ => (t.outcome.scores[..pending].to_vec(), earlier_scores),
    };
    let mut earlier_judged: Vec<(PriorLabel, f32)> = match &weighed.judged {
        Some(_) => t.earlier.iter().map(|&i| data.prior_labels[i].clone()).zip(earlier_suspicion).collect(),
        None => Vec::new(),
    };
    let order = suspects::rank_descending(&suspicion);
    let mut rank = vec![0usize; pending];
    for (r, &i) in order.iter().enumerate() {
        rank[i] = r;
    }
    let k = ((evidence.wrong_share * pending as f64).round() as usize).min(pending);
    let mut flagged: Vec<bool> = rank.iter().map(|&r| r < k).collect();
    if !evidence.status.supports_a_decision() {
        policy.review_budget.limit(&mut flagged, &order, &data.vendors);
        earlier_judged.clear();
    }
    let revised = revise_earlier_labels(earlier_judged, k.checked_sub(1).map(|last| suspicion[order[last]]));
    let pool_control = flag_error_rates(&t.outcome.scores, pending, &order[..k], evidence, policy);
    Picked { flagged, rank, ranked_by_votes, revised, pool_control }
}

/// Per pending row: the share of all scored rows (window and pool) with a lower score.
fn percentiles(scores: &[f32], pending: usize) -> Vec<f64> {
    let total = scores.len();
    let mut percentile = vec![0.0; pending];
    for (r, &i) in suspects::rank_descending(scores).iter().enumerate() {
        if i < pending {
            percentile[i] = (total - r - 1) as f64 / (total.max(2) - 1) as f64;
        }
    }
    percentile
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

/// Dense item and vendor indices of the window's labels, then the earlier labels of its samples
/// (those in `earlier`, indices into `prior_labels`), and the share of the window's own labels
/// whose item another vendor labelled too: how much agreement there is to go on.
struct LabelIndex {
    item: Vec<usize>,
    items: usize,
    vendor: Vec<usize>,
    vendors: usize,
    coverage: f64,
}

impl LabelIndex {
    fn new(data: &WindowData, earlier: impl Iterator<Item = usize> + Clone) -> Self {
        let prior = |i: usize| &data.prior_labels[i];
        let ids = data.sample_ids.iter().map(String::as_str).chain(earlier.clone().map(|i| prior(i).sample_id.as_str()));
        let vendors = data.vendors.iter().map(String::as_str).chain(earlier.map(|i| prior(i).vendor_id.as_str()));
        let (item, items) = agreement::index_of(ids);
        let (vendor, vendor_count) = agreement::index_of(vendors);
        let coverage = agreement::overlap_shares(&item, &vendor, items, data.pending);
        LabelIndex { item, items, vendor, vendors: vendor_count, coverage }
    }

    /// Cross-fitting groups of the training rows: the window's `rows` (records, then pool rows,
    /// each pool row its own group) and then the earlier labels, every label of an item in the
    /// item's group.
    fn training_groups(&self, rows: usize, training_rows: usize) -> Vec<usize> {
        let pending = self.item.len() - (training_rows - rows);
        (0..training_rows)
            .map(|t| match t {
                t if t < pending => self.item[t],
                t if t < rows => self.items + (t - pending),
                t => self.item[pending + (t - rows)],
            })
            .collect()
    }
}

/// Training rows with their labels, `dim` features each.
struct TrainingRows {
    features: Vec<f32>,
    labels: Vec<u32>,
}

/// The rows the network trains on: the window's records and pool, then each earlier label of a
/// sample in the window once more, with that sample's features from this window (a sample_id
/// names one item, so its features do not depend on who labelled it). The labels of one item
/// cannot all be fitted when they disagree, so the network learns which of them the features
/// and the other labels support; and the earlier labels get scores on this window's scale. At
/// most `MAX_EARLIER_ROWS_PER_RECORD` extra rows per record: past that, the earlier labels are left
/// out of this window and keep their values. Returns the rows (`None`: just the window's) and, per
/// extra row, its index in `prior_labels`.
fn with_earlier_labels(data: &WindowData) -> (Option<TrainingRows>, Vec<usize>) {
    let mut first_row = std::collections::HashMap::new();
    for (row, id) in data.sample_ids.iter().enumerate() {
        first_row.entry(id.as_str()).or_insert(row);
    }
    // Per record row, its sample's earlier labels; taken round by round (every sample's first,
    // then every sample's second, ...), so that the bound leaves out the most-labelled items'
    // extra labels, not whole items.
    let mut by_row: std::collections::BTreeMap<usize, Vec<usize>> = std::collections::BTreeMap::new();
    for (i, p) in data.prior_labels.iter().enumerate() {
        if let Some(&row) = first_row.get(p.sample_id.as_str()) {
            by_row.entry(row).or_default().push(i);
        }
    }
    let most = by_row.values().map(Vec::len).max().unwrap_or(0);
    let earlier: Vec<(usize, usize)> =
        (0..most).flat_map(|round| by_row.iter().filter_map(move |(&row, labels)| labels.get(round).map(|&i| (i, row)))).take(MAX_EARLIER_ROWS_PER_RECORD * data.pending).collect();
    if earlier.is_empty() {
        return (None, Vec::new());
    }
    let (mut features, mut labels) = (data.features.clone(), data.labels.clone());
    for &(i, row) in &earlier {
        features.extend_from_slice(&data.features[row * data.dim..(row + 1) * data.dim]);
        labels.push(data.prior_labels[i].label);
    }
    (Some(TrainingRows { features, labels }), earlier.into_iter().map(|(i, _)| i).collect())
}

/// Each earlier label this window judged again is set halfway between its value when its delivery
/// was gated and this window's flag for it (flagged when its probability of being wrong here
/// reaches the lowest flagged one of the window's own labels, `threshold`): the first judgment
/// and the latest, which saw the most labels of its item, count alike, and a replayed window
/// writes the same value again rather than moving it twice.
fn revise_earlier_labels(judged: Vec<(PriorLabel, f32)>, threshold: Option<f32>) -> Vec<Revision> {
    judged
        .into_iter()
        .map(|(label, score)| {
            let flag = threshold.is_some_and(|t| score >= t) as u8 as f32;
            let p_wrong = (label.gated_p_wrong.unwrap_or(label.p_wrong) + flag) / 2.0;
            Revision { label, p_wrong, flag }
        })
        .collect()
}

/// The agreement model ([`agreement::fit_votes`]) over this window's labels and the earlier
/// labels of the same sample_ids (`earlier`, indexed after the window's labels in `index`), with
/// the out-of-fold probabilities of the training rows (`heldout`: the `rows` window and pool rows,
/// then one per earlier label) as what the network knows of each item, when enough of the
/// window's labels share a sample_id with another vendor's. Returns the reading (wrong share of
/// this window's labels), the coverage, and every label's probability of being wrong judged by
/// the others and the network, and with its own vote counted too (this window's first, then the
/// earlier ones).
fn agreement_reading(data: &WindowData, index: &LabelIndex, heldout: Option<&[f32]>, rows: usize, earlier: &[usize], policy: &WindowPolicy) -> (Option<Reading>, f64, Option<AgreementJudgement>) {
    let pending = data.pending;
    let coverage = index.coverage;
    if !policy.agreement_applies(coverage) {
        return (None, coverage, None);
    }
    let labels: Vec<u32> = data.labels[..pending].iter().copied().chain(earlier.iter().map(|&i| data.prior_labels[i].label)).collect();
    let k = data.classes;
    // Label j is training row j (the window's) or rows + (j − pending) (an earlier one).
    let network = heldout.map(|p| agreement::network_by_item(&index.item, index.items, k, p, |j| if j < pending { j } else { rows + j - pending }));
    let votes = agreement::Votes { item: &index.item, annotator: &index.vendor, label: &labels, items: index.items, annotators: index.vendors, classes: k, network: network.as_deref() };
    let Some(fit) = agreement::fit_votes(&votes) else { return (None, coverage, None) };
    let p = &fit.p_correct[..pending];
    let n = pending.max(1) as f64;
    let share = 1.0 - p.iter().sum::<f64>() / n;
    let sd = p.iter().map(|q| q * (1.0 - q)).sum::<f64>().sqrt() / n;
    // Where few labels are shared, most labels are judged by the network alone: wider still.
    let half = (policy.evidence.z * sd).max(MIN_AGREEMENT_HALF_WIDTH) / coverage.sqrt();
    // Judged with their own votes, the labels read the share that the interval must reach too.
    let with_own = 1.0 - fit.p_correct_with_own[..pending].iter().sum::<f64>() / n;
    let (lo, hi) = evidence::no_narrower_than_its_sample(((share.min(with_own) - half).max(0.0), (share.max(with_own) + half).min(1.0)), share, pending, policy.evidence.z);
    let reading = Reading { estimator: Estimator::Agreement, wrong_share: share, ci_low: lo, ci_high: hi };
    let wrong = |p: &[f64]| p.iter().map(|q| 1.0 - q).collect();
    (
        Some(reading),
        coverage,
        Some(AgreementJudgement {
            p_wrong: wrong(&fit.p_correct),
            p_wrong_with_own: wrong(&fit.p_correct_with_own),
            network_weight: fit.network_weight,
            network_knows_more: fit.network_knows_more_than_it_says(),
        }),
    )
}

/// Every label's probability of being wrong under agreement (the window's, then the earlier
/// ones), and the weight the network earned.
struct AgreementJudgement {
    /// Judged by the item's other labels and the network.
    p_wrong: Vec<f64>,
    /// With its own vote counted too.
    p_wrong_with_own: Vec<f64>,
    network_weight: f64,
    network_knows_more: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prior(sample_id: &str, vendor_id: &str, label: u32, p_wrong: f32) -> PriorLabel {
        PriorLabel { sample_id: sample_id.into(), vendor_id: vendor_id.into(), label, score: 0.0, batch_id: "old".into(), p_wrong, gated_p_wrong: None, rejudged_flag: None }
    }

    /// Two records (samples a and b) and one pool row, two features each.
    fn window(prior_labels: Vec<PriorLabel>) -> WindowData {
        WindowData {
            features: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            labels: vec![0, 1, 1],
            pending: 2,
            dim: 2,
            classes: 3,
            sample_ids: vec!["a".into(), "b".into()],
            vendors: vec!["v1".into(), "v1".into()],
            prior_labels,
            texts: vec![],
            images: vec![],
        }
    }

    /// Forty records of two well-separated classes by vendor v1; v2 labelled `shared` of the
    /// same samples in an earlier window (agreeing with v1).
    fn overlapping_window(shared: usize) -> WindowData {
        let (mut features, mut labels) = (Vec::new(), Vec::new());
        for i in 0..40 {
            let class = (i % 2) as u32;
            features.extend([class as f32 * 4.0 + (i % 5) as f32 * 0.1, class as f32 * 4.0 - (i % 3) as f32 * 0.1]);
            labels.push(class);
        }
        let sample_ids: Vec<String> = (0..40).map(|i| format!("s{i}")).collect();
        let prior_labels = (0..shared).map(|i| prior(&sample_ids[i], "v2", labels[i], 0.0)).collect();
        WindowData { features, labels, pending: 40, dim: 2, classes: 2, vendors: vec!["v1".into(); 40], sample_ids, prior_labels, texts: vec![], images: vec![] }
    }

    #[test]
    fn a_window_whose_agreement_rests_on_few_shared_items_and_forty_rows_judges_no_earlier_label() {
        let config = crate::config::Config::defaults();
        let policy = WindowPolicy::from_config(&config.gate);
        let engine = O2uConfig { stage1_epochs: 2, ..config.engine.clone() };
        // 10 of 40 labels shared: agreement applies (≥ min_overlap_share) but does not carry the
        // share alone, and 40 rows are far below min_evidence_rows.
        let few = score_window(overlapping_window(10), &engine, &policy, &Device::Cpu, &mut o2u::Silent).unwrap();
        assert_eq!(few.noise_rate_from, NoiseRateFrom::Agreement);
        assert_eq!(few.evidence.status, EvidenceStatus::Insufficient);
        assert!(few.revised.is_empty(), "an insufficient window revised {} earlier labels", few.revised.len());
        // 30 of 40 shared: agreement carries the share, and the earlier labels are judged again.
        let many = score_window(overlapping_window(30), &engine, &policy, &Device::Cpu, &mut o2u::Silent).unwrap();
        assert_eq!(many.evidence.status, EvidenceStatus::Consistent);
        assert_eq!(many.revised.len(), 30);
    }

    #[test]
    fn earlier_labels_train_with_their_samples_features_from_this_window() {
        let data = window(vec![prior("b", "v2", 2, 0.0), prior("gone", "v2", 0, 0.0), prior("a", "v3", 1, 1.0)]);
        let (rows, earlier) = with_earlier_labels(&data);
        let TrainingRows { features, labels } = rows.expect("two earlier labels of the window's samples");
        assert_eq!(earlier, vec![2, 0], "in the order of the window's rows; a sample not in the window adds none");
        assert_eq!(labels, vec![0, 1, 1, 1, 2]);
        assert_eq!(&features[6..], &[1.0, 2.0, 3.0, 4.0], "a's features, then b's");
        let index = LabelIndex::new(&data, earlier.iter().copied());
        assert_eq!(index.coverage, 1.0, "both of the window's labels share their item with another vendor");
        assert_eq!(LabelIndex::new(&data, std::iter::empty()).coverage, 0.0);
    }

    #[test]
    fn no_earlier_labels_means_no_copy_and_the_extra_rows_are_bounded_fairly() {
        assert!(with_earlier_labels(&window(Vec::new())).0.is_none());
        // Twelve earlier labels of a, one of b: the bound (8 for two records) keeps b's.
        let mut many: Vec<PriorLabel> = (0..12).map(|v| prior("a", &format!("v{}", v + 2), 0, 0.0)).collect();
        many.push(prior("b", "v2", 2, 0.0));
        let (rows, earlier) = with_earlier_labels(&window(many));
        assert_eq!(earlier.len(), 2 * MAX_EARLIER_ROWS_PER_RECORD, "bounded by the window's two records");
        assert!(earlier.contains(&12), "every sample's first earlier label before any sample's second");
        assert_eq!(rows.unwrap().labels.len(), 3 + 2 * MAX_EARLIER_ROWS_PER_RECORD);
    }

    #[test]
    fn a_judged_again_label_goes_halfway_from_its_gated_value_to_this_windows_flag() {
        let judged = vec![(prior("a", "v2", 0, 0.0), 0.9), (prior("b", "v2", 0, 1.0), 0.1), (prior("c", "v2", 0, 0.5), 0.5)];
        let revised: Vec<f32> = revise_earlier_labels(judged.clone(), Some(0.5)).into_iter().map(|r| r.p_wrong).collect();
        assert_eq!(revised, vec![0.5, 0.5, 0.75], "flagged at or above the threshold");
        let unflagged: Vec<f32> = revise_earlier_labels(judged, None).into_iter().map(|r| r.p_wrong).collect();
        assert_eq!(unflagged, vec![0.0, 0.5, 0.25], "a window that flags nothing flags no earlier label either");
        // Revised once already (gated at 0, now 0.5): judged flagged again, or the same window
        // replayed, it stays at 0.5 instead of moving on to 0.75.
        let once = PriorLabel { gated_p_wrong: Some(0.0), ..prior("a", "v2", 0, 0.5) };
        assert_eq!(revise_earlier_labels(vec![(once, 0.9)], Some(0.5))[0].p_wrong, 0.5);
    }
}

#[cfg(test)]
mod budget_tests {
    use super::ReviewBudget;

    #[test]
    fn an_undecided_window_sends_each_vendor_its_sla_error_budget_at_most() {
        let budget = ReviewBudget { default_sla: 0.9, vendor_sla: [("strict".to_string(), 0.98)].into() };
        // 20 records of `a` (SLA 0.9: 2 may go), 50 of `strict` (SLA 0.98: 1 may go) and 9 of
        // `few` (SLA 0.9: none may go), all flagged.
        let vendors: Vec<String> = (0..79)
            .map(|i| {
                if i < 20 {
                    "a"
                } else if i < 70 {
                    "strict"
                } else {
                    "few"
                }
                .to_string()
            })
            .collect();
        let mut flagged = vec![true; 79];
        let order: Vec<usize> = (0..79).rev().collect();
        budget.limit(&mut flagged, &order, &vendors);
        let kept: Vec<usize> = (0..79).filter(|&i| flagged[i]).collect();
        assert_eq!(kept, vec![18, 19, 69], "the most suspect of each vendor");
        // Fewer flags than the budget stay as they are.
        let mut one = vec![false; 79];
        one[5] = true;
        budget.limit(&mut one, &order, &vendors);
        assert_eq!(one.iter().filter(|&&f| f).count(), 1);
    }
}
