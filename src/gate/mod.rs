//! The gate's state machine, free of I/O: it takes input messages with their source position,
//! groups them into deliveries, decides when a window is due, turns window scores into routed
//! outputs and verdicts, and knows, per input partition, which offsets may be committed and which
//! above that are already done. The Kafka edge (`crate::service`) feeds it and writes what it
//! returns in one transaction.

mod finish;
pub mod pool;
mod progress;
mod stored_payload;
pub mod verdict;
pub mod window;
pub mod window_state;

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    time::{Duration, Instant},
};

use crate::{
    config::GateConfig,
    wire::{self, Annotation, DlqReason, Inbound, RereviewMessage, Schema, VerdictMessage},
};
use pool::ReferencePool;
pub use progress::PartitionProgress;
use progress::PartitionTrack;
use stored_payload::StoredPayload;
use window::WindowData;
use window_state::WindowState;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourcePos {
    pub partition: i32,
    pub offset: i64,
}

/// What a dead letter says about the payload it does not carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedPayload {
    pub bytes: usize,
    /// SHA-256 of the payload, hex.
    pub sha256: String,
}

impl DroppedPayload {
    pub fn of(payload: &[u8]) -> Self {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(payload);
        Self { bytes: payload.len(), sha256: digest.iter().map(|b| format!("{b:02x}")).collect() }
    }
}

/// Keys longer than this are cut in dead letters (the key is the vendor's batch id; a huge one
/// is as unwritable as a huge payload).
const MAX_DEAD_LETTER_KEY: usize = 1024;

/// One consumed input record.
#[derive(Debug, Clone)]
pub struct InputMessage {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// The record's headers, kept for its dead letter.
    pub headers: Vec<(String, Vec<u8>)>,
    pub pos: SourcePos,
}

/// What the gate asks the edge to write.
#[derive(Debug, Clone)]
pub enum Output {
    /// The original record, unchanged, with its score in a header.
    Accepted {
        key: Option<Vec<u8>>,
        payload: Vec<u8>,
        score: f32,
        window_id: String,
        vendor_id: String,
    },
    Rereview(RereviewMessage),
    Verdict(VerdictMessage),
    /// The original bytes, unchanged, with the reason in headers.
    /// An oversized record's payload is dropped (`dropped` says its size and hash): a copy
    /// could not be produced, and a record that cannot be written must not stop the gate.
    DeadLetter {
        key: Option<Vec<u8>>,
        payload: Vec<u8>,
        headers: Vec<(String, Vec<u8>)>,
        dropped: Option<DroppedPayload>,
        reason: DlqReason,
        message: String,
        pos: SourcePos,
    },
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

/// A buffered record. While it waits in its delivery, its annotation's `batch_id` and
/// `vendor_id` are left empty (the delivery holds them once, not each of its records) and its key,
/// which can only be the batch_id, is a flag; [`Delivery::take`] puts them back.
struct PendingRecord {
    annotation: Annotation,
    /// Whether the message was keyed (by its batch_id: other keys are dead-lettered).
    keyed: bool,
    payload: StoredPayload,
    pos: SourcePos,
    /// Its features from an encoder (a text's, or an image's at a gate that embeds images),
    /// set by the window thread: what the pool keeps. The annotation keeps what came (the pixels
    /// re-review shows).
    embedded: Option<Vec<f32>>,
}

impl PendingRecord {
    fn held_bytes(&self) -> usize {
        let floats = self.annotation.features.capacity() + self.embedded.as_ref().map_or(0, Vec::capacity);
        floats * std::mem::size_of::<f32>() + self.payload.held_bytes()
    }
}

struct Delivery {
    batch_id: String,
    vendor_id: String,
    partition: i32,
    records: Vec<PendingRecord>,
    /// Hashes of the records' sample_ids: a repeated hash is confirmed against the records.
    sample_id_hashes: HashSet<u64>,
    end: Option<(usize, SourcePos)>,
    last_seen: Instant,
    closed: Option<(Instant, &'static str)>,
}

impl Delivery {
    /// The delivery leaving the buffer, its records whole again.
    fn take(mut self) -> Self {
        for r in &mut self.records {
            r.annotation.batch_id.clone_from(&self.batch_id);
            r.annotation.vendor_id.clone_from(&self.vendor_id);
        }
        self
    }
}

/// Deliveries taken out for scoring.
pub struct WindowJob {
    pub id: String,
    deliveries: Vec<Delivery>,
    pub data: WindowData,
    /// When its earliest delivery closed: the window's waiting time starts there.
    pub first_closed: Instant,
    /// What embedding its texts did (set by the window thread; `None` without texts).
    pub embedding: Option<crate::encoder::EmbeddingReport>,
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
            texts: vec![],
            images: vec![],
        };
        std::mem::replace(&mut self.data, empty)
    }

    /// Gives the records that came as text, or as pixels at a gate that embeds images, their
    /// embedded features (`dim` each, in row order), so accepted ones can join the pool.
    pub fn set_embedded(&mut self, rows: &[usize], features: &[f32]) {
        let dim = self.data.dim;
        let mut next = rows.iter().zip(features.chunks_exact(dim)).peekable();
        for (row, r) in self.deliveries.iter_mut().flat_map(|d| &mut d.records).enumerate() {
            if let Some((_, f)) = next.next_if(|(&want, _)| want == row) {
                r.embedded = Some(f.to_vec());
            }
        }
    }

    /// The pixels of the pending records at `rows` (ascending), for the image encoder.
    pub fn pixels(&self, rows: &[usize]) -> Vec<&[f32]> {
        let mut next = rows.iter().peekable();
        let mut out = Vec::with_capacity(rows.len());
        for (row, r) in self.deliveries.iter().flat_map(|d| &d.records).enumerate() {
            if next.next_if(|&&want| want == row).is_some() {
                out.push(r.annotation.features.as_slice());
            }
        }
        out
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
    /// Records' pixels are embedded by an image encoder on the window thread (`[encoder.image]`):
    /// they wait as pixels, and windows train on `config.feature_dim` features of each.
    embed_images: bool,
    /// Gated deliveries, to send late records and repeated batch_ends to the DLQ. Bounded.
    gated: HashSet<String>,
    /// Deliveries in the window now training: a record of one that arrives meanwhile is late,
    /// not the start of a second delivery with the same batch_id (which would get two verdicts).
    /// Keyed by batch_id, valued by partition: a revoked partition's entries go, so records
    /// re-read after it comes back open the delivery again instead of being late.
    in_window: HashMap<String, i32>,
    gated_order: VecDeque<String>,
    dead_letters: Vec<Output>,
    partitions: BTreeMap<i32, PartitionTrack>,
    pool: ReferencePool,
    buffered: usize,
    /// Keys the hashes of sample_ids per delivery (random per process, so no vendor can choose
    /// sample_ids that collide).
    sample_id_hasher: std::hash::RandomState,
    window_seq: u64,
    /// Wall-clock start of this gate (ms since the epoch): window ids stay unique across restarts.
    started_ms: u64,
}

const GATED_MEMORY: usize = 100_000;

impl Gate {
    /// `config.feature_dim` is what windows train on: an encoder's length where one embeds the
    /// records. Records' pixels are `gate.image_shape` long where that is set (which
    /// configuration checks is `gate.feature_dim` as the file gives it).
    pub fn new(config: GateConfig, max_message_bytes: usize, model_version: String, instance: String) -> Self {
        let input_len = config.image_shape.map_or(config.feature_dim, |shape| shape.iter().product());
        let schema = Schema::new(&config.classes, input_len, max_message_bytes)
            .with_field_limits(config.max_id_length, config.max_label_length)
            .with_input(config.input, config.max_text_bytes)
            .with_image_shape(config.image_shape);
        let z = crate::stats::z_for(config.confidence);
        let pool = ReferencePool::new(config.classes.len(), config.reference_pool_size);
        Self {
            config,
            schema,
            z,
            model_version,
            instance,
            embed_images: false,
            deliveries: HashMap::new(),
            gated: HashSet::new(),
            in_window: HashMap::new(),
            gated_order: VecDeque::new(),
            dead_letters: Vec::new(),
            partitions: BTreeMap::new(),
            pool,
            buffered: 0,
            sample_id_hasher: std::hash::RandomState::new(),
            window_seq: 0,
            started_ms: crate::clock::unix_millis(),
        }
    }

    /// At a gate with an image encoder: records' pixels wait as they came and the window thread
    /// embeds them (`config.feature_dim` is the encoder's length). Needs `gate.image_shape`,
    /// the shape of records that came as `features`.
    pub fn embedding_images(mut self, embed: bool) -> Self {
        assert!(!embed || self.config.image_shape.is_some(), "an image encoder needs gate.image_shape (the configuration refuses it without)");
        self.embed_images = embed;
        self
    }

    /// Records held in memory (buffered deliveries and dead letters awaiting commit).
    pub fn buffered(&self) -> usize {
        self.buffered + self.dead_letters.len()
    }

    /// Bytes the buffered records hold: their features, the embeddings made of them, and their
    /// stored original bytes (the gauge `labelgate_buffered_bytes`; O(records), so read it now
    /// and then, not per message).
    pub fn buffered_bytes(&self) -> usize {
        self.deliveries.values().flat_map(|d| &d.records).map(PendingRecord::held_bytes).sum()
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
        self.in_window.remove(&batch_id);
        if self.gated.insert(batch_id.clone()) {
            self.gated_order.push_back(batch_id);
            if self.gated_order.len() > GATED_MEMORY {
                if let Some(old) = self.gated_order.pop_front() {
                    self.gated.remove(&old);
                }
            }
        }
    }

    pub fn ingest(&mut self, msg: InputMessage, now: Instant) -> Ingested {
        let parsed = self.schema.parse(&msg.payload);
        self.ingest_parsed(msg, parsed, now)
    }

    /// The parser, for callers that parse batches in parallel before [`Gate::ingest_parsed`].
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Whether a record that awaits its image would be buffered once fetched: not in a range
    /// already committed, keyed by its `batch_id`, of a delivery not yet gated. The edge fetches
    /// only these; the others go on to be skipped or dead-lettered for their own reason.
    pub fn worth_fetching(&self, msg: &InputMessage, a: &Annotation) -> bool {
        let committed = self.partitions.get(&msg.pos.partition).is_some_and(|t| t.skip.iter().any(|&(from, to)| (from..to).contains(&msg.pos.offset)));
        let keyed = msg.key.as_deref().is_none_or(|k| k == a.batch_id.as_bytes());
        !committed && keyed && !self.gated.contains(&a.batch_id) && !self.in_window.contains_key(&a.batch_id)
    }

    /// Ingests a message whose payload `schema().parse` already parsed.
    pub fn ingest_parsed(&mut self, msg: InputMessage, parsed: Result<Inbound, wire::Rejection>, now: Instant) -> Ingested {
        let track = self.partitions.entry(msg.pos.partition).or_default();
        track.next_offset = track.next_offset.max(msg.pos.offset + 1);
        if track.skip.iter().any(|&(a, b)| (a..b).contains(&msg.pos.offset)) {
            return Ingested::Skipped;
        }
        track.in_flight.insert(msg.pos.offset);
        let mut image_uri = None;
        let outcome = match parsed {
            Err(rejection) => {
                image_uri = rejection.image_uri;
                Err((rejection.reason, rejection.message))
            }
            Ok(inbound) if msg.key.as_deref().is_some_and(|k| k != inbound.batch_id().as_bytes()) => {
                Err((DlqReason::KeyMismatch, format!("message key differs from batch_id `{}`; key records by their batch_id", inbound.batch_id())))
            }
            Ok(Inbound::Annotation(a)) => self.add_annotation(a, &msg, now),
            Ok(Inbound::BatchEnd(end)) => self.add_batch_end(end, msg.pos, now),
        };
        match outcome {
            Ok(closed) => {
                if closed {
                    Ingested::DeliveryClosed
                } else {
                    Ingested::Buffered
                }
            }
            Err((reason, message)) => {
                let (mut key, mut payload, mut headers, mut dropped) = (msg.key, msg.payload, msg.headers, None);
                if let Some(uri) = image_uri {
                    headers.push((wire::headers::IMAGE_URI.to_string(), uri.into_bytes()));
                }
                if reason == DlqReason::Oversized {
                    dropped = Some(DroppedPayload::of(&payload));
                    payload = Vec::new();
                }
                if let Some(k) = key.as_mut().filter(|k| k.len() > MAX_DEAD_LETTER_KEY) {
                    k.truncate(MAX_DEAD_LETTER_KEY);
                }
                self.dead_letters.push(Output::DeadLetter { key, payload, headers, dropped, reason, message, pos: msg.pos });
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
            sample_id_hashes: HashSet::new(),
            end: None,
            last_seen: now,
            closed: None,
        })
    }

    fn add_annotation(&mut self, a: Annotation, msg: &InputMessage, now: Instant) -> Result<bool, (DlqReason, String)> {
        if self.gated.contains(&a.batch_id) || self.in_window.contains_key(&a.batch_id) {
            return Err((DlqReason::LateRecord, format!("delivery `{}` was already gated", a.batch_id)));
        }
        if a.awaits_image() {
            // The edge fetches named images before ingesting; one that reaches the gate unfetched
            // has no pixels to train on.
            return Err((DlqReason::InvalidImage, "the image named by `image.uri` was not fetched".into()));
        }
        let hash = std::hash::BuildHasher::hash_one(&self.sample_id_hasher, &a.sample_id);
        let d = self.delivery(msg.pos.partition, &a.batch_id, &a.vendor_id, now);
        if d.closed.is_some() {
            return Err((DlqReason::LateRecord, format!("delivery `{}` is closed and awaiting its window", a.batch_id)));
        }
        if d.vendor_id != a.vendor_id {
            return Err((DlqReason::VendorMismatch, format!("delivery `{}` belongs to vendor `{}`, record says `{}`", a.batch_id, d.vendor_id, a.vendor_id)));
        }
        if !d.sample_id_hashes.insert(hash) && d.records.iter().any(|r| r.annotation.sample_id == a.sample_id) {
            return Err((DlqReason::DuplicateSampleId, format!("sample `{}` appears twice in delivery `{}`", a.sample_id, a.batch_id)));
        }
        d.last_seen = now;
        let annotation = Annotation { batch_id: String::new(), vendor_id: String::new(), ..a };
        d.records.push(PendingRecord { annotation, keyed: msg.key.is_some(), payload: StoredPayload::keep(&msg.payload), pos: msg.pos, embedded: None });
        let closed = matches!(d.end, Some((count, _)) if d.records.len() >= count);
        if closed {
            d.closed = Some((now, "batch_end"));
        }
        self.buffered += 1;
        Ok(closed)
    }

    fn add_batch_end(&mut self, end: wire::BatchEnd, pos: SourcePos, now: Instant) -> Result<bool, (DlqReason, String)> {
        if self.gated.contains(&end.batch_id) || self.in_window.contains_key(&end.batch_id) {
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

    /// The buffer is at its bound and none of it can be gated: every buffered delivery is still
    /// open. Pausing now would wait forever (nothing closes without its remaining records), so
    /// the input reads on past the bound until a delivery closes.
    pub fn full_of_open_deliveries(&self) -> bool {
        self.is_full() && self.closed_records().1.is_none()
    }

    fn closed_records(&self) -> (usize, Option<Instant>) {
        self.deliveries.values().filter_map(|d| d.closed.map(|(t, _)| (d.records.len(), t))).fold((0, None), |(n, oldest), (len, t)| (n + len, Some(oldest.map_or(t, |o: Instant| o.min(t)))))
    }

    /// A window is due when enough closed records wait, or the oldest closed delivery has
    /// waited long enough, or buffering is at its bound.
    pub fn window_due(&self, now: Instant) -> bool {
        let (records, oldest) = self.closed_records();
        let Some(oldest) = oldest else { return false };
        records >= self.config.min_window_records || self.is_full() || now.duration_since(oldest) >= Duration::from_secs(self.config.max_window_wait_secs)
    }

    /// Takes closed deliveries, oldest first and whole, until the window holds at least
    /// `max_window_records` (a single larger delivery is taken alone).
    pub fn take_window(&mut self) -> Option<WindowJob> {
        let mut closed: Vec<((i32, String), Instant)> = self.deliveries.iter().filter_map(|(k, d)| d.closed.map(|(t, _)| (k.clone(), t))).collect();
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
            let d = self.deliveries.remove(&key).expect("listed").take();
            self.in_window.insert(d.batch_id.clone(), d.partition);
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
        let mut own_items = std::collections::HashSet::with_capacity(records);
        let (mut texts, mut images) = (Vec::new(), Vec::new());
        for (row, r) in deliveries.iter().flat_map(|d| &d.records).enumerate() {
            match &r.annotation.text {
                // Embedded on the window thread; until then, zeros.
                Some(text) => {
                    features.resize(features.len() + dim, 0.0);
                    texts.push((row, text.clone()));
                }
                // The same for pixels at a gate that embeds images: those that came as `features`
                // are pixels of gate.image_shape.
                None if self.embed_images => {
                    features.resize(features.len() + dim, 0.0);
                    let shape = r.annotation.image_shape.or(self.config.image_shape).expect("a gate that embeds images has gate.image_shape");
                    images.push((row, shape));
                }
                None => {
                    features.extend_from_slice(&r.annotation.features);
                    own_items.insert(pool::feature_key(&r.annotation.features));
                }
            }
            labels.push(r.annotation.label);
            sample_ids.push(r.annotation.sample_id.clone());
            vendors.push(r.annotation.vendor_id.clone());
        }
        for (label, f) in self.pool.samples_except(&own_items) {
            features.extend_from_slice(f);
            labels.push(label);
        }
        let data = WindowData { features, labels, pending: records, dim, classes: self.config.classes.len(), sample_ids, vendors, prior_labels: Vec::new(), texts, images };
        Some(WindowJob { id, deliveries, data, first_closed, embedding: None })
    }

    /// A window whose partitions were partly revoked while it trained: deliveries still owned
    /// go back to wait for the next window; the others are forgotten (their new owner re-reads
    /// them).
    pub fn requeue(&mut self, job: WindowJob, revoked: &[i32]) {
        for d in job.deliveries {
            self.in_window.remove(&d.batch_id);
            if revoked.contains(&d.partition) || !self.partitions.contains_key(&d.partition) {
                continue;
            }
            self.buffered += d.records.len();
            self.deliveries.insert((d.partition, d.batch_id.clone()), d);
        }
    }
}

#[cfg(test)]
mod tests;
