//! Finishing a window: each record routed by its flag (suspect or accepted), each delivery's
//! accuracy estimated and judged, later-window revisions and the pool's new samples recorded,
//! all into one [`Commit`].

use std::collections::{BTreeMap, HashMap};

use super::{
    verdict,
    window::{PriorLabel, WindowScores},
    window_state::{DeliveryRevision, SuspectRecord},
    Commit, Delivery, Gate, Output, PendingRecord, SourcePos, WindowJob,
};
use crate::{
    accuracy::{self, evidence::EvidenceStatus, AccuracyEstimate, Calibration, DeliveryRecord, GoldCalibration, ReviewStats},
    wire::{self, Annotation, RereviewMessage, VerdictMessage},
};

/// A delivery's counts as its records are routed.
#[derive(Default)]
struct DeliveryTally {
    flagged: usize,
    /// Records flagged at the low and high ends of the window's wrong-share interval.
    flagged_range: (usize, usize),
    gold_items: usize,
    gold_correct: usize,
}

impl Gate {
    /// Routes a scored window: each record to accepted or re-review, one verdict per delivery,
    /// plus any dead letters waiting. `reviews` holds the review counts of the window's vendors;
    /// `now_ms` is the gating time recorded in their history. Returns what one transaction must
    /// carry (and what the state store must hold once it is made).
    pub fn finish_window(&mut self, job: WindowJob, scores: &WindowScores, reviews: &HashMap<String, ReviewStats>, now_ms: u64) -> Commit {
        let mut commit = Commit::default();
        commit.state.window_id = job.id.clone();
        commit.state.pool_capacity_per_class = self.pool.capacity_per_class();
        let mut done = Vec::new();
        let gold_calibration = gold_calibration(&job, scores);
        let mut i = 0;
        for mut d in job.deliveries {
            let first = i;
            let mut tally = DeliveryTally::default();
            for r in std::mem::take(&mut d.records) {
                done.push(r.pos);
                self.route_record(r, i, &job.id, scores, &mut tally, &mut commit);
                i += 1;
            }
            let review_stats = reviews.get(&d.vendor_id).copied().unwrap_or_default();
            let calibration = Calibration::choose(gold_calibration, review_stats, self.config.min_reviews, scores.pool_control);
            let (estimate, calibration_name) = self.delivery_estimate(scores, first..i, tally.flagged, tally.flagged_range, calibration);
            scale_label_p_wrong(&mut commit, i - first, estimate);
            self.judge_delivery(d, &job.id, scores, &tally, i - first, estimate, calibration_name, now_ms, &mut commit, &mut done);
        }
        record_revisions(scores, &mut commit);
        keep_newest_pool_samples(&mut commit, self.config.classes.len());
        self.drain_dead_letters(&mut commit, &mut done);
        commit.progress = self.mark_done(&done);
        commit
    }

    /// One record: a suspect to re-review, or accepted (and maybe pooled); its label kept.
    fn route_record(&mut self, r: PendingRecord, i: usize, window_id: &str, scores: &WindowScores, tally: &mut DeliveryTally, commit: &mut Commit) {
        let a = &r.annotation;
        if let Some(g) = a.gold_label {
            tally.gold_items += 1;
            tally.gold_correct += (g == a.label) as usize;
        }
        let (flags_low, flags_high) = scores.flag_bounds();
        tally.flagged_range.0 += (scores.rank[i] < flags_low) as usize;
        tally.flagged_range.1 += (scores.rank[i] < flags_high) as usize;
        let label = self.config.classes[a.label as usize].clone();
        if scores.flagged[i] {
            tally.flagged += 1;
            commit.state.suspects.push(SuspectRecord {
                sample_id: a.sample_id.clone(),
                vendor_id: a.vendor_id.clone(),
                batch_id: a.batch_id.clone(),
                label: label.clone(),
                window_id: window_id.into(),
            });
            let predicted = self.config.classes[scores.predicted[i] as usize].clone();
            commit.outputs.push(Output::Rereview(self.rereview(a, label, predicted, (scores.scores[i], scores.percentile[i]), window_id, "o2u_high_loss")));
        } else {
            // The pool is the next windows' control for right labels: a window that could not
            // tell how many of its labels are wrong would bias it, so it adds nothing.
            // The pool holds what windows train on: an encoder's features where one embedded the
            // record, else its own. (A text whose embedding failed has none to pool.)
            let features = r.embedded.as_ref().unwrap_or(&a.features);
            if scores.evidence.may_feed_pool() && !features.is_empty() {
                self.pool.add(a.label, features);
                commit.state.pool_added.push((a.label, features.clone()));
            }
        }
        let p_wrong = scores.p_wrong.as_ref().map_or(scores.flagged[i] as u8 as f32, |p| p[i] as f32);
        commit.state.labels.push(PriorLabel {
            sample_id: a.sample_id.clone(),
            vendor_id: a.vendor_id.clone(),
            label: a.label,
            score: scores.scores[i],
            batch_id: a.batch_id.clone(),
            p_wrong,
            gated_p_wrong: None,
            rejudged_flag: None,
        });
        if !scores.flagged[i] {
            commit.outputs.push(Output::Accepted {
                key: r.keyed.then(|| r.annotation.batch_id.clone().into_bytes()),
                payload: r.payload.bytes(),
                score: scores.scores[i],
                window_id: window_id.into(),
                vendor_id: r.annotation.vendor_id,
            });
        }
        commit.routed += 1;
    }

    /// One record for re-review: the vendor's label, the gate's guess, (score, rank percentile),
    /// why, and the item and pixels a reviewer looks at.
    fn rereview(&self, a: &Annotation, label: String, predicted_label: String, (score, rank_percentile): (f32, f64), window_id: &str, reason: &str) -> RereviewMessage {
        RereviewMessage {
            schema_version: wire::SCHEMA_VERSION,
            sample_id: a.sample_id.clone(),
            batch_id: a.batch_id.clone(),
            vendor_id: a.vendor_id.clone(),
            annotator_id: a.annotator_id.clone(),
            label,
            predicted_label,
            score,
            rank_percentile,
            window_id: window_id.into(),
            model_version: self.model_version.clone(),
            reason: reason.into(),
            item: a.item.clone(),
            // The pixels that were scored, also for an image named by URI: what its host serves
            // at review time may differ.
            image: a.image_shape.map(|shape| wire::ImagePixels::from_features(shape, &a.features)),
            image_uri: a.image_uri.clone(),
            text: a.text.as_ref().map(|t| t.text.clone()),
            text_pair: a.text.as_ref().and_then(|t| t.pair.clone()),
        }
    }

    /// The delivery's accuracy from its flags (rows `rows` of the window) and the calibration,
    /// and the calibration's name for the verdict.
    fn delivery_estimate(&self, scores: &WindowScores, rows: std::ops::Range<usize>, flagged: usize, mut flagged_range: (usize, usize), calibration: Calibration) -> (AccuracyEstimate, &'static str) {
        let records = rows.len();
        if !scores.evidence.status.supports_a_decision() {
            // The share is not pinned down: any record of the delivery may be right.
            flagged_range.0 = 0;
        }
        if calibration == Calibration::None && scores.p_wrong.is_none() && flagged as f64 <= scores.evidence.wrong_share * records as f64 {
            // Nothing measured how many flags are false (no gold, reviews, pool or agreement),
            // and this delivery is flagged no more than the window as a whole: its flags may all
            // be the window's false ones, so its interval reaches up to no wrong label at all. A
            // delivery flagged above the window keeps its lower bound.
            flagged_range.0 = 0;
        }
        match &scores.p_wrong {
            // Agreement judged each label by the item's other labels and the network: the
            // delivery's accuracy is the mean of its labels' chances of being right. Judged by the
            // others alone a careful vendor among careless ones reads low, so the interval spans
            // that, the same with each label's own vote counted, and the delivery's flags.
            // Where the network earned weight in the agreement model its scores ranked the labels
            // and the flags are the estimate (that ranks vendors best where the features carry
            // the classes; docs/benchmarks.md §10).
            Some(p_wrong) if records > 0 => {
                let flags = accuracy::estimate(records, flagged, flagged_range, Calibration::None, self.z);
                let by_others = accuracy::from_posteriors(&p_wrong[rows.clone()], self.z);
                let with_own = scores.p_wrong_with_own.as_ref().map_or(by_others, |p| accuracy::from_posteriors(&p[rows], self.z));
                let ci = (flags.ci.0.min(by_others.ci.0).min(with_own.ci.0), flags.ci.1.max(by_others.ci.1).max(with_own.ci.1));
                let point = if scores.ranked_by_votes { by_others } else { flags };
                (AccuracyEstimate { ci, ..point }, "agreement")
            }
            _ => (accuracy::estimate(records, flagged, flagged_range, calibration, self.z), calibration.name()),
        }
    }

    /// The delivery's verdict and its record in the vendor's history, from the window's evidence.
    #[allow(clippy::too_many_arguments)] // the pieces of one delivery's outcome, computed by the caller
    fn judge_delivery(
        &mut self,
        d: Delivery,
        window_id: &str,
        scores: &WindowScores,
        tally: &DeliveryTally,
        records: usize,
        estimate: AccuracyEstimate,
        calibration: &'static str,
        now_ms: u64,
        commit: &mut Commit,
        done: &mut Vec<SourcePos>,
    ) {
        let evidence = scores.evidence.status;
        let sla = self.config.sla(&d.vendor_id);
        let a = verdict::assess(estimate, records, evidence, tally.gold_items, tally.gold_correct, sla, self.config.min_gold_items, self.z);
        let outcome = DeliveryOutcome {
            records,
            flagged: tally.flagged,
            history_accuracy: estimate.accuracy,
            gold: (tally.gold_items, tally.gold_correct),
            // No figure where the evidence cannot pin the share down: any would be a guess (the
            // interval still says how far apart the readings are).
            estimated_accuracy: a.estimate.filter(|_| evidence.supports_a_decision()).map(|e| e.accuracy),
            interval: a.estimate.map(|e| if evidence == EvidenceStatus::Insufficient { (0.0, 1.0) } else { e.ci }),
            calibration,
            noise_rate_from: scores.noise_rate_from,
            gold_accuracy: a.gold_accuracy,
            sla,
            decision: a.decision,
            decided_by: a.decided_by,
            review_reason: a.review_reason,
            evidence_status: evidence,
            evidence: Some(Box::new(scores.evidence.clone())),
        };
        self.close_delivery(d, window_id, outcome, now_ms, commit, done);
    }

    /// A delivery leaves the gate: its verdict, its record in the vendor's history, its end marker
    /// done, and its batch_id remembered as gated. Windows that judged and windows that failed
    /// both end here.
    fn close_delivery(&mut self, d: Delivery, window_id: &str, o: DeliveryOutcome, now_ms: u64, commit: &mut Commit, done: &mut Vec<SourcePos>) {
        commit.state.deliveries.push(DeliveryRecord {
            batch_id: d.batch_id.clone(),
            vendor_id: d.vendor_id.clone(),
            records: o.records,
            flagged: o.flagged,
            estimated_accuracy: o.history_accuracy,
            gold_items: o.gold.0,
            gold_correct: o.gold.1,
            gated_at_ms: now_ms,
            decision: o.decision,
            window_id: window_id.into(),
            calibration: o.calibration.into(),
            evidence: Some(o.evidence_status),
            revised_wrong: 0.0,
            rejudged: Default::default(),
        });
        let (_, closed_by) = d.closed.expect("windows take closed deliveries");
        commit.outputs.push(Output::Verdict(VerdictMessage {
            schema_version: wire::SCHEMA_VERSION,
            batch_id: d.batch_id.clone(),
            vendor_id: d.vendor_id.clone(),
            records: o.records,
            announced_count: d.end.map(|(c, _)| c),
            closed_by: closed_by.into(),
            accepted: o.records - o.flagged,
            rereview: o.flagged,
            estimated_accuracy: o.estimated_accuracy,
            accuracy_ci_low: o.interval.map(|i| i.0),
            accuracy_ci_high: o.interval.map(|i| i.1),
            calibration: o.calibration.into(),
            noise_rate_from: o.noise_rate_from,
            gold_items: o.gold.0,
            gold_accuracy: o.gold_accuracy,
            sla_accuracy: o.sla,
            decision: o.decision,
            decided_by: o.decided_by,
            review_reason: o.review_reason.map(Into::into),
            evidence: o.evidence,
            window_id: window_id.into(),
            model_version: self.model_version.clone(),
        }));
        if let Some((_, pos)) = d.end {
            done.push(pos);
        }
        self.remember_gated(d.batch_id);
    }
}

/// What one delivery's verdict and its history record say.
struct DeliveryOutcome {
    records: usize,
    /// Records sent to re-review.
    flagged: usize,
    /// The estimate the vendor's history keeps (the verdict shows it only where the evidence
    /// supports a decision).
    history_accuracy: f64,
    /// Gold items and how many of them were right.
    gold: (usize, usize),
    estimated_accuracy: Option<f64>,
    interval: Option<(f64, f64)>,
    calibration: &'static str,
    noise_rate_from: wire::NoiseRateFrom,
    gold_accuracy: Option<f64>,
    sla: f64,
    decision: wire::Decision,
    decided_by: wire::DecidedBy,
    review_reason: Option<&'static str>,
    evidence_status: EvidenceStatus,
    evidence: Option<Box<accuracy::evidence::WindowEvidence>>,
}

impl Gate {
    /// A window whose data could not be trained on: every record goes to
    /// re-review with reason `window_failed`, and each delivery gets a `review` verdict with no
    /// accuracy (`review_reason: "window_failed"`), so that nothing is lost and the gate goes on.
    /// The deliveries stay out of the vendor accuracy gauge, and no pooled sample or suspect is
    /// recorded (a review of these records says nothing about the gate's flags).
    pub fn fail_window(&mut self, job: WindowJob, now_ms: u64) -> Commit {
        let mut commit = Commit::default();
        commit.state.window_id = job.id.clone();
        commit.state.pool_capacity_per_class = self.pool.capacity_per_class();
        let mut done = Vec::new();
        for d in job.deliveries {
            let records = d.records.len();
            let sla = self.config.sla(&d.vendor_id);
            for r in &d.records {
                let a = &r.annotation;
                let label = self.config.classes[a.label as usize].clone();
                commit.outputs.push(Output::Rereview(self.rereview(a, label.clone(), label, (0.0, 0.0), &job.id, "window_failed")));
                done.push(r.pos);
                commit.routed += 1;
            }
            let outcome = DeliveryOutcome {
                records,
                flagged: records,
                history_accuracy: 0.0,
                gold: (0, 0),
                estimated_accuracy: None,
                interval: Some((0.0, 1.0)),
                calibration: "none",
                noise_rate_from: wire::NoiseRateFrom::Estimators,
                gold_accuracy: None,
                sla,
                decision: wire::Decision::Review,
                decided_by: wire::DecidedBy::Estimate,
                review_reason: Some("window_failed"),
                evidence_status: EvidenceStatus::Insufficient,
                evidence: None,
            };
            self.close_delivery(d, &job.id, outcome, now_ms, &mut commit, &mut done);
        }
        self.drain_dead_letters(&mut commit, &mut done);
        commit.progress = self.mark_done(&done);
        commit
    }
}

/// How the flags behave on the window's gold items calibrates every delivery's estimate.
fn gold_calibration(job: &WindowJob, scores: &WindowScores) -> Option<GoldCalibration> {
    let (mut wrong, mut wrong_flagged, mut right, mut right_flagged) = (0, 0, 0, 0);
    for (r, &f) in job.deliveries.iter().flat_map(|d| &d.records).zip(&scores.flagged) {
        match r.annotation.gold_label {
            Some(g) if g != r.annotation.label => (wrong, wrong_flagged) = (wrong + 1, wrong_flagged + f as usize),
            Some(_) => (right, right_flagged) = (right + 1, right_flagged + f as usize),
            None => {}
        }
    }
    GoldCalibration::from_counts(wrong_flagged, wrong, right_flagged, right)
}

/// Each of the delivery's last `records` labels gets its `p_wrong` scaled so that they sum to
/// the delivery's estimated wrong count: a later revision of a label then moves the gauge from
/// the same figure the delivery was gated with (the gauge is 1 − the mean of its labels' values).
fn scale_label_p_wrong(commit: &mut Commit, records: usize, estimate: AccuracyEstimate) {
    let own = commit.state.labels.len() - records..commit.state.labels.len();
    let weights: f64 = commit.state.labels[own.clone()].iter().map(|l| l.p_wrong as f64).sum();
    let wrong = (1.0 - estimate.accuracy) * records as f64;
    for l in &mut commit.state.labels[own] {
        l.p_wrong = if weights > 0.0 { (l.p_wrong as f64 * wrong / weights) as f32 } else { (wrong / records as f64) as f32 };
        l.gated_p_wrong = Some(l.p_wrong);
    }
}

/// Earlier deliveries whose labels this window judged again: their wrong count moves by the
/// difference, and the label keeps its new value, in the same atomic write, so a replayed window
/// adds nothing twice (the revisions telescope to latest − original).
fn record_revisions(scores: &WindowScores, commit: &mut Commit) {
    let mut revisions: BTreeMap<(String, String), DeliveryRevision> = BTreeMap::new();
    for r in &scores.revised {
        let label = &r.label;
        let entry = revisions.entry((label.batch_id.clone(), label.vendor_id.clone())).or_insert_with(|| DeliveryRevision {
            batch_id: label.batch_id.clone(),
            vendor_id: label.vendor_id.clone(),
            wrong_delta: 0.0,
            rejudged_labels: 0,
            rejudged_wrong_delta: 0.0,
        });
        entry.wrong_delta += (r.p_wrong - label.p_wrong) as f64;
        entry.rejudged_labels += label.rejudged_flag.is_none() as u32;
        entry.rejudged_wrong_delta += (r.flag - label.rejudged_flag.unwrap_or(0.0)) as f64;
        commit.state.labels.push(PriorLabel { p_wrong: r.p_wrong, rejudged_flag: Some(r.flag), ..label.clone() });
    }
    commit.state.revisions = revisions.into_values().collect();
}

/// Only what the bounded pool keeps goes to the store: the newest `capacity` per class.
fn keep_newest_pool_samples(commit: &mut Commit, classes: usize) {
    let cap = commit.state.pool_capacity_per_class;
    let mut kept = vec![0usize; classes];
    let mut newest_first: Vec<(u32, Vec<f32>)> = Vec::new();
    for (label, f) in std::mem::take(&mut commit.state.pool_added).into_iter().rev() {
        if kept[label as usize] < cap {
            kept[label as usize] += 1;
            newest_first.push((label, f));
        }
    }
    newest_first.reverse();
    commit.state.pool_added = newest_first;
}
