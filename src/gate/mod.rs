//! The gate's state machine, free of I/O: it takes input messages with their source position,
//! groups them into deliveries, decides when a window is due, turns window scores into routed
//! outputs and verdicts, and knows, per input partition, which offsets may be committed and which
//! above that are already done. The Kafka edge (`crate::service`) feeds it and writes what it
//! returns in one transaction.

pub mod pool;
pub mod verdict;
pub mod window;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::{
    accuracy::{self, evidence::EvidenceStatus, Calibration, DeliveryRecord, GoldCalibration, ReviewStats},
    config::GateConfig,
    state::{DeliveryRevision, SuspectRecord, WindowState},
    wire::{self, Annotation, DlqReason, Inbound, RereviewMessage, Schema, VerdictMessage},
};
use pool::ReferencePool;
use window::{PriorLabel, WindowData, WindowScores};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourcePos {
    pub partition: i32,
    pub offset: i64,
}

/// One consumed input record.
#[derive(Debug, Clone)]
pub struct InputMessage {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub pos: SourcePos,
}

/// What the gate asks the edge to write.
#[derive(Debug, Clone)]
pub enum Output {
    /// The original record, unchanged, with its score in a header.
    Accepted { key: Option<Vec<u8>>, payload: Vec<u8>, score: f32, window_id: String, vendor_id: String },
    Rereview(RereviewMessage),
    Verdict(VerdictMessage),
    /// The original bytes, unchanged, with the reason in headers.
    DeadLetter { key: Option<Vec<u8>>, payload: Vec<u8>, reason: DlqReason, message: String, pos: SourcePos },
}

/// Per input partition: commit `commit_offset`; offsets in `done` (half-open ranges above it)
/// are already routed and must be skipped when re-read. Written to the progress topic in the
/// same transaction as the outputs and the offsets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionProgress {
    pub partition: i32,
    pub commit_offset: i64,
    pub done: Vec<(i64, i64)>,
}

/// Everything one transaction must carry.
#[derive(Debug, Clone, Default)]
pub struct Commit {
    pub outputs: Vec<Output>,
    pub progress: Vec<PartitionProgress>,
    pub routed: usize,
    /// What the state store must hold once this commit is made (empty for dead letters alone).
    pub state: WindowState,
}

struct PendingRecord {
    annotation: Annotation,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    pos: SourcePos,
}

struct Delivery {
    batch_id: String,
    vendor_id: String,
    partition: i32,
    records: Vec<PendingRecord>,
    sample_ids: HashSet<String>,
    end: Option<(usize, SourcePos)>,
    last_seen: Instant,
    closed: Option<(Instant, &'static str)>,
}

#[derive(Default)]
struct PartitionTrack {
    next_offset: i64,
    in_flight: BTreeSet<i64>,
    /// Ranges already done before a restart, from the progress topic.
    skip: Vec<(i64, i64)>,
}

/// Deliveries taken out for scoring.
pub struct WindowJob {
    pub id: String,
    deliveries: Vec<Delivery>,
    pub data: WindowData,
    /// When its earliest delivery closed: the window's waiting time starts there.
    pub first_closed: Instant,
}

impl WindowJob {
    pub fn records(&self) -> usize {
        self.data.pending
    }

    pub fn deliveries(&self) -> usize {
        self.deliveries.len()
    }

    pub fn batch_ids(&self) -> Vec<String> {
        self.deliveries.iter().map(|d| d.batch_id.clone()).collect()
    }

    /// Moves the training data out (to the window thread), leaving the counts.
    pub fn take_data(&mut self) -> WindowData {
        let empty = WindowData {
            features: vec![],
            labels: vec![],
            pending: self.data.pending,
            dim: self.data.dim,
            classes: self.data.classes,
            sample_ids: vec![],
            vendors: vec![],
            prior_labels: vec![],
        };
        std::mem::replace(&mut self.data, empty)
    }

    pub fn vendors(&self) -> Vec<String> {
        let mut v: Vec<String> = self.deliveries.iter().map(|d| d.vendor_id.clone()).collect();
        v.sort();
        v.dedup();
        v
    }
}

/// What happened to an ingested message (for metrics and logs).
#[derive(Debug, Clone, PartialEq)]
pub enum Ingested {
    Buffered,
    DeliveryClosed,
    Rejected(DlqReason),
    /// Already routed before a restart.
    Skipped,
}

pub struct Gate {
    config: GateConfig,
    schema: Schema,
    z: f64,
    model_version: String,
    instance: String,
    deliveries: HashMap<(i32, String), Delivery>,
    /// Gated deliveries, to send late records and repeated batch_ends to the DLQ. Bounded.
    gated: HashSet<String>,
    gated_order: VecDeque<String>,
    dead_letters: Vec<Output>,
    partitions: BTreeMap<i32, PartitionTrack>,
    pool: ReferencePool,
    buffered: usize,
    window_seq: u64,
    /// Wall-clock start of this gate (ms since the epoch): window ids stay unique across restarts.
    started_ms: u64,
}

const GATED_MEMORY: usize = 100_000;

impl Gate {
    pub fn new(config: GateConfig, max_message_bytes: usize, model_version: String, instance: String) -> Self {
        let schema = Schema::new(&config.classes, config.feature_dim, max_message_bytes);
        let z = verdict::z_for(config.confidence);
        let pool = ReferencePool::new(config.classes.len(), config.reference_pool_size);
        Self {
            config,
            schema,
            z,
            model_version,
            instance,
            deliveries: HashMap::new(),
            gated: HashSet::new(),
            gated_order: VecDeque::new(),
            dead_letters: Vec::new(),
            partitions: BTreeMap::new(),
            pool,
            buffered: 0,
            window_seq: 0,
            started_ms: crate::clock::unix_millis(),
        }
    }

    /// Records held in memory (buffered deliveries and dead letters awaiting commit).
    pub fn buffered(&self) -> usize {
        self.buffered + self.dead_letters.len()
    }

    pub fn is_full(&self) -> bool {
        self.buffered() >= self.config.max_buffered_records
    }

    pub fn open_deliveries(&self) -> usize {
        self.deliveries.len()
    }

    /// Puts back the reference pool a previous process left in the state store.
    pub fn restore_pool(&mut self, samples: impl IntoIterator<Item = (u32, Vec<f32>)>) -> usize {
        let mut n = 0;
        for (label, f) in samples {
            if (label as usize) < self.config.classes.len() && f.len() == self.config.feature_dim {
                self.pool.add(label, &f);
                n += 1;
            }
        }
        n
    }

    /// Remembers deliveries that were gated before (from the verdict topic after a restart).
    pub fn remember_gated(&mut self, batch_id: String) {
        if self.gated.insert(batch_id.clone()) {
            self.gated_order.push_back(batch_id);
            if self.gated_order.len() > GATED_MEMORY {
                if let Some(old) = self.gated_order.pop_front() {
                    self.gated.remove(&old);
                }
            }
        }
    }

    /// A partition was assigned: `progress` is its last committed progress record, if any.
    pub fn assign(&mut self, partition: i32, progress: Option<PartitionProgress>) {
        let track = self.partitions.entry(partition).or_default();
        if let Some(p) = progress {
            track.skip = p.done;
            track.next_offset = track.next_offset.max(p.commit_offset);
        }
    }

    /// A partition was revoked: forget its buffered records; the next owner re-reads them from
    /// the committed offset.
    pub fn revoke(&mut self, partition: i32) {
        self.deliveries.retain(|(p, _), d| {
            if *p == partition {
                self.buffered -= d.records.len();
            }
            *p != partition
        });
        self.dead_letters.retain(|o| !matches!(o, Output::DeadLetter { pos, .. } if pos.partition == partition));
        self.partitions.remove(&partition);
    }

    pub fn ingest(&mut self, msg: InputMessage, now: Instant) -> Ingested {
        let parsed = self.schema.parse(&msg.payload);
        self.ingest_parsed(msg, parsed, now)
    }

    /// The parser, for callers that parse batches in parallel before [`Gate::ingest_parsed`].
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Ingests a message whose payload `schema().parse` already parsed.
    pub fn ingest_parsed(&mut self, msg: InputMessage, parsed: Result<Inbound, wire::Rejection>, now: Instant) -> Ingested {
        let track = self.partitions.entry(msg.pos.partition).or_default();
        track.next_offset = track.next_offset.max(msg.pos.offset + 1);
        if track.skip.iter().any(|&(a, b)| (a..b).contains(&msg.pos.offset)) {
            return Ingested::Skipped;
        }
        track.in_flight.insert(msg.pos.offset);
        let outcome = match parsed {
            Err(rejection) => Err((rejection.reason, rejection.message)),
            Ok(Inbound::Annotation(a)) => self.add_annotation(a, &msg, now),
            Ok(Inbound::BatchEnd(end)) => self.add_batch_end(end, msg.pos, now),
        };
        match outcome {
            Ok(closed) => {
                if closed { Ingested::DeliveryClosed } else { Ingested::Buffered }
            }
            Err((reason, message)) => {
                self.dead_letters.push(Output::DeadLetter { key: msg.key, payload: msg.payload, reason, message, pos: msg.pos });
                Ingested::Rejected(reason)
            }
        }
    }

    /// The delivery `batch_id` on `partition`, opened by its first record or marker.
    fn delivery(&mut self, partition: i32, batch_id: &str, vendor_id: &str, now: Instant) -> &mut Delivery {
        self.deliveries.entry((partition, batch_id.to_string())).or_insert_with(|| Delivery {
            batch_id: batch_id.to_string(),
            vendor_id: vendor_id.to_string(),
            partition,
            records: Vec::new(),
            sample_ids: HashSet::new(),
            end: None,
            last_seen: now,
            closed: None,
        })
    }

    fn add_annotation(&mut self, a: Annotation, msg: &InputMessage, now: Instant) -> Result<bool, (DlqReason, String)> {
        if self.gated.contains(&a.batch_id) {
            return Err((DlqReason::LateRecord, format!("delivery `{}` was already gated", a.batch_id)));
        }
        let d = self.delivery(msg.pos.partition, &a.batch_id, &a.vendor_id, now);
        if d.closed.is_some() {
            return Err((DlqReason::LateRecord, format!("delivery `{}` is closed and awaiting its window", a.batch_id)));
        }
        if d.vendor_id != a.vendor_id {
            return Err((DlqReason::VendorMismatch, format!("delivery `{}` belongs to vendor `{}`, record says `{}`", a.batch_id, d.vendor_id, a.vendor_id)));
        }
        if !d.sample_ids.insert(a.sample_id.clone()) {
            return Err((DlqReason::DuplicateSampleId, format!("sample `{}` appears twice in delivery `{}`", a.sample_id, a.batch_id)));
        }
        d.last_seen = now;
        d.records.push(PendingRecord { annotation: a, key: msg.key.clone(), payload: msg.payload.clone(), pos: msg.pos });
        let closed = matches!(d.end, Some((count, _)) if d.records.len() >= count);
        if closed {
            d.closed = Some((now, "batch_end"));
        }
        self.buffered += 1;
        Ok(closed)
    }

    fn add_batch_end(&mut self, end: wire::BatchEnd, pos: SourcePos, now: Instant) -> Result<bool, (DlqReason, String)> {
        if self.gated.contains(&end.batch_id) {
            return Err((DlqReason::DuplicateBatchEnd, format!("delivery `{}` was already gated", end.batch_id)));
        }
        let d = self.delivery(pos.partition, &end.batch_id, &end.vendor_id, now);
        if d.end.is_some() {
            return Err((DlqReason::DuplicateBatchEnd, format!("delivery `{}` already has a batch_end", end.batch_id)));
        }
        if d.vendor_id != end.vendor_id {
            return Err((DlqReason::VendorMismatch, format!("delivery `{}` belongs to vendor `{}`, batch_end says `{}`", end.batch_id, d.vendor_id, end.vendor_id)));
        }
        d.end = Some((end.count, pos));
        d.last_seen = now;
        let closed = d.records.len() >= end.count;
        if closed {
            d.closed = Some((now, "batch_end"));
        }
        Ok(closed)
    }

    /// Closes deliveries that have been quiet for the delivery timeout.
    pub fn close_idle(&mut self, now: Instant) -> usize {
        let timeout = Duration::from_secs(self.config.delivery_timeout_secs);
        let mut closed = 0;
        for d in self.deliveries.values_mut().filter(|d| d.closed.is_none()) {
            if now.duration_since(d.last_seen) >= timeout {
                let why = if d.end.is_some() { "timeout_after_short_batch_end" } else { "timeout" };
                d.closed = Some((now, why));
                closed += 1;
            }
        }
        closed
    }

    fn closed_records(&self) -> (usize, Option<Instant>) {
        self.deliveries.values().filter_map(|d| d.closed.map(|(t, _)| (d.records.len(), t))).fold((0, None), |(n, oldest), (len, t)| {
            (n + len, Some(oldest.map_or(t, |o: Instant| o.min(t))))
        })
    }

    /// A window is due when enough closed records wait, or the oldest closed delivery has
    /// waited long enough, or buffering is at its bound.
    pub fn window_due(&self, now: Instant) -> bool {
        let (records, oldest) = self.closed_records();
        let Some(oldest) = oldest else { return false };
        records >= self.config.min_window_records
            || self.is_full()
            || now.duration_since(oldest) >= Duration::from_secs(self.config.max_window_wait_secs)
    }

    /// Takes closed deliveries, oldest first and whole, until the window holds at least
    /// `max_window_records` (a single larger delivery is taken alone).
    pub fn take_window(&mut self) -> Option<WindowJob> {
        let mut closed: Vec<((i32, String), Instant)> =
            self.deliveries.iter().filter_map(|(k, d)| d.closed.map(|(t, _)| (k.clone(), t))).collect();
        if closed.is_empty() {
            return None;
        }
        closed.sort_by_key(|(k, t)| (*t, k.clone()));
        let first_closed = closed[0].1;
        let mut deliveries = Vec::new();
        let mut records = 0;
        for (key, _) in closed {
            if records >= self.config.max_window_records {
                break;
            }
            let d = self.deliveries.remove(&key).expect("listed");
            records += d.records.len();
            deliveries.push(d);
        }
        self.buffered -= records;
        self.window_seq += 1;
        let id = format!("{}-{}-{}", self.instance, self.started_ms, self.window_seq);
        let dim = self.config.feature_dim;
        let mut features = Vec::with_capacity((records + self.pool.len()) * dim);
        let mut labels = Vec::with_capacity(records + self.pool.len());
        let (mut sample_ids, mut vendors) = (Vec::with_capacity(records), Vec::with_capacity(records));
        for r in deliveries.iter().flat_map(|d| &d.records) {
            features.extend_from_slice(&r.annotation.features);
            labels.push(r.annotation.label);
            sample_ids.push(r.annotation.sample_id.clone());
            vendors.push(r.annotation.vendor_id.clone());
        }
        for (label, f) in self.pool.samples() {
            features.extend_from_slice(f);
            labels.push(label);
        }
        let data = WindowData { features, labels, pending: records, dim, classes: self.config.classes.len(), sample_ids, vendors, prior_labels: Vec::new() };
        Some(WindowJob { id, deliveries, data, first_closed })
    }

    /// Routes a scored window: each record to accepted or re-review, one verdict per delivery,
    /// plus any dead letters waiting. `reviews` holds the review counts of the window's vendors;
    /// `now_ms` is the gating time recorded in their history. Returns what the transaction
    /// must carry and what the state store must hold.
    pub fn finish_window(&mut self, job: WindowJob, scores: &WindowScores, reviews: &HashMap<String, ReviewStats>, now_ms: u64) -> Commit {
        let mut commit = Commit::default();
        commit.state.window_id = job.id.clone();
        commit.state.pool_capacity_per_class = self.pool.capacity_per_class();
        let mut done = Vec::new();
        // How the flags behave on the window's gold items calibrates every delivery's estimate.
        let (mut gold_wrong, mut gold_wrong_flagged, mut gold_right, mut gold_right_flagged) = (0, 0, 0, 0);
        for (r, &f) in job.deliveries.iter().flat_map(|d| &d.records).zip(&scores.flagged) {
            match r.annotation.gold_label {
                Some(g) if g != r.annotation.label => (gold_wrong, gold_wrong_flagged) = (gold_wrong + 1, gold_wrong_flagged + f as usize),
                Some(_) => (gold_right, gold_right_flagged) = (gold_right + 1, gold_right_flagged + f as usize),
                None => {}
            }
        }
        let gold_calibration = GoldCalibration::from_counts(gold_wrong_flagged, gold_wrong, gold_right_flagged, gold_right);
        let (flags_low, flags_high) = scores.flag_bounds();
        let evidence = scores.evidence.status;
        let mut i = 0;
        for d in job.deliveries {
            let (mut flagged, mut flagged_range, mut gold_items, mut gold_correct) = (0, (0, 0), 0, 0);
            let sla = self.config.sla(&d.vendor_id);
            let records = d.records.len();
            for r in d.records {
                let a = &r.annotation;
                if let Some(g) = a.gold_label {
                    gold_items += 1;
                    gold_correct += (g == a.label) as usize;
                }
                flagged_range.0 += (scores.rank[i] < flags_low) as usize;
                flagged_range.1 += (scores.rank[i] < flags_high) as usize;
                if scores.flagged[i] {
                    flagged += 1;
                    commit.state.suspects.push(SuspectRecord {
                        sample_id: a.sample_id.clone(),
                        vendor_id: a.vendor_id.clone(),
                        batch_id: a.batch_id.clone(),
                        label: self.config.classes[a.label as usize].clone(),
                        window_id: job.id.clone(),
                    });
                    commit.outputs.push(Output::Rereview(RereviewMessage {
                        schema_version: wire::SCHEMA_VERSION,
                        sample_id: a.sample_id.clone(),
                        batch_id: a.batch_id.clone(),
                        vendor_id: a.vendor_id.clone(),
                        annotator_id: a.annotator_id.clone(),
                        label: self.config.classes[a.label as usize].clone(),
                        predicted_label: self.config.classes[scores.predicted[i] as usize].clone(),
                        score: scores.scores[i],
                        rank_percentile: scores.percentile[i],
                        window_id: job.id.clone(),
                        model_version: self.model_version.clone(),
                        reason: "o2u_high_loss".into(),
                        item: a.item.clone(),
                        image: a.image_shape.map(|shape| wire::ImagePixels::from_features(shape, &a.features)),
                    }));
                } else {
                    // The pool is the next windows' control for right labels: a window that could
                    // not tell how many of its labels are wrong would bias it, so it adds nothing.
                    if scores.evidence.may_feed_pool() {
                        self.pool.add(a.label, &a.features);
                        commit.state.pool_added.push((a.label, a.features.clone()));
                    }
                    commit.outputs.push(Output::Accepted { key: r.key, payload: r.payload, score: scores.scores[i], window_id: job.id.clone(), vendor_id: a.vendor_id.clone() });
                }
                let p_wrong = scores.p_wrong.as_ref().map_or(scores.flagged[i] as u8 as f32, |p| p[i] as f32);
                commit.state.labels.push(PriorLabel {
                    sample_id: a.sample_id.clone(),
                    vendor_id: a.vendor_id.clone(),
                    label: a.label,
                    score: scores.scores[i],
                    batch_id: a.batch_id.clone(),
                    p_wrong,
                });
                done.push(r.pos);
                commit.routed += 1;
                i += 1;
            }
            if !evidence.supports_a_decision() {
                // The share is not pinned down: any record of the delivery may be right.
                flagged_range.0 = 0;
            }
            let calibration = Calibration::choose(gold_calibration, reviews.get(&d.vendor_id).copied().unwrap_or_default(), self.config.min_reviews, scores.pool_control);
            if calibration == Calibration::None && scores.p_wrong.is_none() && flagged as f64 <= scores.evidence.wrong_share * records as f64 {
                // Nothing measured how many flags are false (no gold, reviews, pool or
                // agreement), and this delivery is flagged no more than the window as a whole:
                // its flags may all be the window's false ones, so its interval reaches up to no
                // wrong label at all. A delivery flagged above the window keeps its lower bound.
                flagged_range.0 = 0;
            }
            let (estimate, calibration_name) = match &scores.p_wrong {
                // Agreement set the share and the scores picked the labels (that ranks vendors
                // best); each label's own chance of being wrong under agreement gives a second
                // interval, and the verdict's spans both.
                Some(p_wrong) if records > 0 => {
                    let flags = accuracy::estimate(records, flagged, flagged_range, Calibration::None, self.z);
                    let posterior = accuracy::from_posteriors(&p_wrong[i - records..i], self.z);
                    (accuracy::AccuracyEstimate { ci: (flags.ci.0.min(posterior.ci.0), flags.ci.1.max(posterior.ci.1)), ..flags }, "agreement")
                }
                _ => (accuracy::estimate(records, flagged, flagged_range, calibration, self.z), calibration.name()),
            };
            let a = verdict::assess(estimate, records, evidence, gold_items, gold_correct, sla, self.config.min_gold_items, self.z);
            // Each label's `p_wrong` is scaled so that the delivery's labels sum to its estimated
            // wrong count: a later revision of a label then moves the gauge from the same figure
            // the delivery was gated with (the gauge is 1 − the mean of its labels' current values).
            let own = commit.state.labels.len() - records..commit.state.labels.len();
            let weights: f64 = commit.state.labels[own.clone()].iter().map(|l| l.p_wrong as f64).sum();
            let wrong = (1.0 - estimate.accuracy) * records as f64;
            for l in &mut commit.state.labels[own] {
                l.p_wrong = if weights > 0.0 { (l.p_wrong as f64 * wrong / weights) as f32 } else { (wrong / records as f64) as f32 };
            }
            commit.state.deliveries.push(DeliveryRecord {
                batch_id: d.batch_id.clone(),
                vendor_id: d.vendor_id.clone(),
                records,
                flagged,
                estimated_accuracy: estimate.accuracy,
                gold_items,
                gold_correct,
                gated_at_ms: now_ms,
                decision: a.decision,
                window_id: job.id.clone(),
                calibration: calibration_name.into(),
                evidence: Some(evidence),
                revised_wrong: 0.0,
            });
            let (_, closed_by) = d.closed.expect("windows take closed deliveries");
            commit.outputs.push(Output::Verdict(VerdictMessage {
                schema_version: wire::SCHEMA_VERSION,
                batch_id: d.batch_id.clone(),
                vendor_id: d.vendor_id.clone(),
                records,
                announced_count: d.end.map(|(c, _)| c),
                closed_by: closed_by.into(),
                accepted: records - flagged,
                rereview: flagged,
                // No figure where the evidence cannot pin the share down: any would be a guess
                // (the interval still says how far apart the readings are).
                estimated_accuracy: a.estimate.filter(|_| evidence.supports_a_decision()).map(|e| e.accuracy),
                accuracy_ci_low: a.estimate.map(|e| if evidence == EvidenceStatus::Insufficient { 0.0 } else { e.ci.0 }),
                accuracy_ci_high: a.estimate.map(|e| if evidence == EvidenceStatus::Insufficient { 1.0 } else { e.ci.1 }),
                calibration: calibration_name.into(),
                noise_rate_from: scores.noise_rate_from.into(),
                gold_items: a.gold_items,
                gold_accuracy: a.gold_accuracy,
                sla_accuracy: sla,
                decision: a.decision,
                decided_by: a.decided_by.into(),
                review_reason: a.review_reason.map(Into::into),
                evidence: Some(Box::new(scores.evidence.clone())),
                window_id: job.id.clone(),
                model_version: self.model_version.clone(),
            }));
            if let Some((_, pos)) = d.end {
                done.push(pos);
            }
            self.remember_gated(d.batch_id);
        }
        // Earlier deliveries whose labels this window judged again: their wrong count moves by the
        // difference, and the label keeps its new value, in the same atomic write, so a replayed
        // window adds nothing twice (the revisions telescope to latest − original).
        let mut revisions: BTreeMap<(String, String), f64> = BTreeMap::new();
        for (label, new) in &scores.revised {
            *revisions.entry((label.batch_id.clone(), label.vendor_id.clone())).or_default() += (*new - label.p_wrong) as f64;
            commit.state.labels.push(PriorLabel { p_wrong: *new, ..label.clone() });
        }
        commit.state.revisions = revisions.into_iter().map(|((batch_id, vendor_id), wrong_delta)| DeliveryRevision { batch_id, vendor_id, wrong_delta }).collect();
        // Only what the bounded pool keeps goes to the store: the newest `capacity` per class.
        let cap = commit.state.pool_capacity_per_class;
        let mut kept = vec![0usize; self.config.classes.len()];
        let mut newest_first: Vec<(u32, Vec<f32>)> = Vec::new();
        for (label, f) in std::mem::take(&mut commit.state.pool_added).into_iter().rev() {
            if kept[label as usize] < cap {
                kept[label as usize] += 1;
                newest_first.push((label, f));
            }
        }
        newest_first.reverse();
        commit.state.pool_added = newest_first;
        self.drain_dead_letters(&mut commit, &mut done);
        commit.progress = self.mark_done(&done);
        commit
    }

    /// A window whose partitions were partly revoked while it trained: deliveries still owned
    /// go back to wait for the next window; the others are forgotten (their new owner re-reads
    /// them).
    pub fn requeue(&mut self, job: WindowJob, revoked: &[i32]) {
        for d in job.deliveries {
            if revoked.contains(&d.partition) || !self.partitions.contains_key(&d.partition) {
                continue;
            }
            self.buffered += d.records.len();
            self.deliveries.insert((d.partition, d.batch_id.clone()), d);
        }
    }

    /// Dead letters waiting with no window due: a commit of their own.
    pub fn flush_dead_letters(&mut self) -> Option<Commit> {
        if self.dead_letters.is_empty() {
            return None;
        }
        let mut commit = Commit::default();
        let mut done = Vec::new();
        self.drain_dead_letters(&mut commit, &mut done);
        commit.progress = self.mark_done(&done);
        Some(commit)
    }

    fn drain_dead_letters(&mut self, commit: &mut Commit, done: &mut Vec<SourcePos>) {
        for o in self.dead_letters.drain(..) {
            if let Output::DeadLetter { pos, .. } = &o {
                done.push(*pos);
            }
            commit.routed += 1;
            commit.outputs.push(o);
        }
    }

    /// Marks positions done and returns the progress of every partition they touch.
    fn mark_done(&mut self, done: &[SourcePos]) -> Vec<PartitionProgress> {
        let mut touched = BTreeSet::new();
        for pos in done {
            if let Some(t) = self.partitions.get_mut(&pos.partition) {
                t.in_flight.remove(&pos.offset);
                touched.insert(pos.partition);
            }
        }
        touched.into_iter().map(|p| self.progress_of(p)).collect()
    }

    /// Commit offset = lowest offset still in flight (or the next to read); done = the gaps
    /// between in-flight offsets below the next offset to read.
    pub fn progress_of(&self, partition: i32) -> PartitionProgress {
        let t = &self.partitions[&partition];
        let commit_offset = t.in_flight.first().copied().unwrap_or(t.next_offset);
        let mut done = Vec::new();
        let mut start = commit_offset;
        for &o in t.in_flight.iter() {
            if o > start {
                done.push((start, o));
            }
            start = o + 1;
        }
        if start < t.next_offset && commit_offset < t.next_offset {
            done.push((start, t.next_offset));
        }
        PartitionProgress { partition, commit_offset, done }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Decision;

    fn config() -> GateConfig {
        let mut c = crate::config::Config::from_figment(crate::config::Config::figment(None)).unwrap().gate;
        c.classes = vec!["a".into(), "b".into()];
        c.feature_dim = 2;
        c.min_window_records = 3;
        c.max_window_records = 100;
        c.delivery_timeout_secs = 5;
        c
    }

    fn msg(offset: i64, body: &str) -> InputMessage {
        InputMessage { key: Some(b"k".to_vec()), payload: body.as_bytes().to_vec(), pos: SourcePos { partition: 0, offset } }
    }

    fn rec(id: &str, batch: &str, label: &str) -> String {
        format!(r#"{{"sample_id":"{id}","batch_id":"{batch}","vendor_id":"v","label":"{label}","features":[1,2]}}"#)
    }

    /// Window scores that flag `flag` (ranked first) with consistent evidence at that share.
    fn scores(n: usize, flag: &[usize]) -> WindowScores {
        let mut order: Vec<usize> = flag.to_vec();
        order.extend((0..n).filter(|i| !flag.contains(i)));
        let mut rank = vec![0; n];
        for (r, &i) in order.iter().enumerate() {
            rank[i] = r;
        }
        let share = flag.len() as f64 / n.max(1) as f64;
        let mut evidence = crate::accuracy::evidence::fixed(share, n, 0, 1.96);
        evidence.status = crate::accuracy::evidence::EvidenceStatus::Consistent;
        (evidence.wrong_share_ci_low, evidence.wrong_share_ci_high) = (share, share);
        WindowScores {
            scores: (0..n).map(|i| i as f32).collect(),
            predicted: vec![0; n],
            flagged: (0..n).map(|i| flag.contains(&i)).collect(),
            rank,
            percentile: vec![0.5; n],
            evidence,
            noise_rate_from: "estimators",
            pool_control: None,
            p_wrong: None,
            revised: Vec::new(),
            final_loss: 0.3,
            training_seconds: 0.1,
        }
    }

    #[test]
    fn a_delivery_closes_on_its_batch_end_and_every_record_lands_once() {
        let now = Instant::now();
        let mut g = Gate::new(config(), 10_000, "m".into(), "t".into());
        assert_eq!(g.ingest(msg(0, &rec("s1", "b1", "a")), now), Ingested::Buffered);
        assert_eq!(g.ingest(msg(1, "garbage"), now), Ingested::Rejected(DlqReason::InvalidJson));
        assert_eq!(g.ingest(msg(2, &rec("s2", "b1", "b")), now), Ingested::Buffered);
        assert_eq!(g.ingest(msg(3, &rec("s2", "b1", "b")), now), Ingested::Rejected(DlqReason::DuplicateSampleId));
        assert_eq!(g.ingest(msg(4, &rec("s3", "b1", "a")), now), Ingested::Buffered);
        assert!(!g.window_due(now), "not closed yet");
        assert_eq!(g.ingest(msg(5, r#"{"type":"batch_end","batch_id":"b1","vendor_id":"v","count":3}"#), now), Ingested::DeliveryClosed);
        assert!(g.window_due(now));
        let job = g.take_window().unwrap();
        assert_eq!(job.records(), 3);
        let commit = g.finish_window(job, &scores(3, &[1]), &HashMap::new(), 0);
        let count = |f: fn(&Output) -> bool| commit.outputs.iter().filter(|o| f(o)).count();
        assert_eq!(count(|o| matches!(o, Output::Accepted { .. })), 2);
        assert_eq!(count(|o| matches!(o, Output::Rereview(_))), 1);
        assert_eq!(count(|o| matches!(o, Output::DeadLetter { .. })), 2);
        assert_eq!(count(|o| matches!(o, Output::Verdict(_))), 1);
        assert_eq!(commit.routed, 5, "3 records + 2 dead letters");
        assert_eq!(commit.progress, vec![PartitionProgress { partition: 0, commit_offset: 6, done: vec![] }]);
        // The delivery is gated: a late record and a second batch_end are dead letters.
        assert_eq!(g.ingest(msg(6, &rec("s4", "b1", "a")), now), Ingested::Rejected(DlqReason::LateRecord));
        assert_eq!(g.ingest(msg(7, r#"{"type":"batch_end","batch_id":"b1","vendor_id":"v","count":3}"#), now), Ingested::Rejected(DlqReason::DuplicateBatchEnd));
    }

    #[test]
    fn offsets_commit_below_open_deliveries_and_done_ranges_cover_the_rest() {
        let now = Instant::now();
        let mut g = Gate::new(config(), 10_000, "m".into(), "t".into());
        g.ingest(msg(0, &rec("x1", "open", "a")), now);
        for (i, id) in ["s1", "s2", "s3"].iter().enumerate() {
            g.ingest(msg(1 + i as i64, &rec(id, "b1", "a")), now);
        }
        g.ingest(msg(4, r#"{"type":"batch_end","batch_id":"b1","vendor_id":"v","count":3}"#), now);
        g.ingest(msg(5, &rec("x2", "open", "a")), now);
        let job = g.take_window().unwrap();
        let commit = g.finish_window(job, &scores(3, &[]), &HashMap::new(), 0);
        assert_eq!(commit.progress, vec![PartitionProgress { partition: 0, commit_offset: 0, done: vec![(1, 5)] }]);
        // After a restart the done offsets are skipped, the open delivery is read again.
        let mut restarted = Gate::new(config(), 10_000, "m".into(), "t".into());
        restarted.assign(0, Some(commit.progress[0].clone()));
        assert_eq!(restarted.ingest(msg(0, &rec("x1", "open", "a")), now), Ingested::Buffered);
        assert_eq!(restarted.ingest(msg(2, &rec("s2", "b1", "a")), now), Ingested::Skipped);
        assert_eq!(restarted.ingest(msg(5, &rec("x2", "open", "a")), now), Ingested::Buffered);
    }

    #[test]
    fn quiet_deliveries_close_after_the_timeout_and_dead_letters_flush_alone() {
        let now = Instant::now();
        let mut g = Gate::new(config(), 10_000, "m".into(), "t".into());
        g.ingest(msg(0, &rec("s1", "b1", "a")), now);
        g.ingest(msg(1, "{}"), now);
        assert_eq!(g.close_idle(now + Duration::from_secs(1)), 0);
        assert_eq!(g.close_idle(now + Duration::from_secs(6)), 1);
        assert!(g.window_due(now + Duration::from_secs(60)), "waited past max_window_wait_secs");
        let flushed = g.flush_dead_letters().unwrap();
        assert_eq!(flushed.routed, 1);
        assert_eq!(flushed.progress[0].commit_offset, 0, "record 0 still buffered");
        assert_eq!(flushed.progress[0].done, vec![(1, 2)]);
        assert!(g.flush_dead_letters().is_none());
    }

    fn verdict_of(commit: &Commit) -> &VerdictMessage {
        commit.outputs.iter().find_map(|o| if let Output::Verdict(v) = o { Some(v) } else { None }).expect("a verdict")
    }

    #[test]
    fn an_empty_delivery_has_no_accuracy_and_weak_evidence_no_decision() {
        let now = Instant::now();
        let mut g = Gate::new(config(), 10_000, "m".into(), "t".into());
        assert_eq!(g.ingest(msg(0, r#"{"type":"batch_end","batch_id":"empty","vendor_id":"v","count":0}"#), now), Ingested::DeliveryClosed);
        let job = g.take_window().unwrap();
        let commit = g.finish_window(job, &scores(0, &[]), &HashMap::new(), 0);
        let v = verdict_of(&commit);
        assert_eq!((v.estimated_accuracy, v.decision, v.review_reason.as_deref()), (None, Decision::Review, Some("no_valid_records")));
        assert!(!commit.state.deliveries[0].counts_towards_accuracy());

        // Three records, one flagged, but the network learned nothing: no figure, no decision,
        // and nothing joins the reference pool.
        for (i, id) in ["s1", "s2", "s3"].iter().enumerate() {
            g.ingest(msg(1 + i as i64, &rec(id, "b1", "a")), now);
        }
        g.ingest(msg(4, r#"{"type":"batch_end","batch_id":"b1","vendor_id":"v","count":3}"#), now);
        let job = g.take_window().unwrap();
        let mut weak = scores(3, &[0]);
        weak.evidence.status = EvidenceStatus::Insufficient;
        weak.evidence.readings_agree = false;
        let commit = g.finish_window(job, &weak, &HashMap::new(), 0);
        let v = verdict_of(&commit);
        assert_eq!((v.estimated_accuracy, v.accuracy_ci_low, v.accuracy_ci_high), (None, Some(0.0), Some(1.0)));
        assert_eq!((v.decision, v.review_reason.as_deref()), (Decision::Review, Some("insufficient_evidence")));
        assert!(commit.state.pool_added.is_empty(), "a window that cannot decide does not feed the pool");
        assert_eq!(commit.state.labels.len(), 3, "its labels are kept for agreement across windows");
    }

    #[test]
    fn requeue_puts_back_only_deliveries_of_partitions_still_owned() {
        let now = Instant::now();
        let mut g = Gate::new(config(), 10_000, "m".into(), "t".into());
        for (p, batch) in [(0, "b0"), (1, "b1")] {
            let m = |offset: i64, body: &str| InputMessage { key: None, payload: body.as_bytes().to_vec(), pos: SourcePos { partition: p, offset } };
            g.ingest(m(0, &rec(&format!("{batch}-s"), batch, "a")), now);
            g.ingest(m(1, &format!(r#"{{"type":"batch_end","batch_id":"{batch}","vendor_id":"v","count":1}}"#)), now);
        }
        let job = g.take_window().unwrap();
        assert_eq!((job.deliveries(), g.buffered()), (2, 0));
        g.revoke(1);
        g.requeue(job, &[1]);
        assert_eq!((g.open_deliveries(), g.buffered()), (1, 1), "partition 0's delivery waits for the next window");
        assert_eq!(g.take_window().unwrap().batch_ids(), vec!["b0".to_string()]);
    }

    #[test]
    fn revoking_a_partition_drops_its_buffered_records() {
        let now = Instant::now();
        let mut g = Gate::new(config(), 10_000, "m".into(), "t".into());
        g.ingest(msg(0, &rec("s1", "b1", "a")), now);
        assert_eq!(g.buffered(), 1);
        g.revoke(0);
        assert_eq!((g.buffered(), g.open_deliveries()), (0, 0));
    }
}
