//! The gate's events, one struct each with named fields; `emit` writes the event's metrics and
//! its log line. Fields carry their own types, so the JSON log has numbers as numbers, strings
//! quoted once and an absent value left out. Untrusted strings (vendor and batch ids) are logged
//! as [`Escaped`], so that a newline, a NUL or an escape sequence in them is written escaped
//! (`a\nb`) and cannot forge a line; they are never spliced into the message.

use std::{fmt, time::Duration};

use super::{unix_seconds, Escaped, Telemetry, WindowTiming};
use crate::{
    accuracy::evidence::WindowEvidence,
    wire::{DlqReason, VerdictMessage},
};

/// One thing that happened, reported through [`Telemetry::emit`].
pub trait Event {
    fn emit(self, t: &Telemetry);
}

/// An input record's final place: `accepted`, `rereview` or `dead_letter`.
pub struct RecordRouted<'a> {
    pub vendor: Option<&'a str>,
    pub outcome: &'static str,
}

impl Event for RecordRouted<'_> {
    fn emit(self, t: &Telemetry) {
        let v = self.vendor.map_or_else(|| "unknown".to_string(), |v| t.vendor_label(v));
        t.records.with_label_values(&[v.as_str(), self.outcome]).inc();
    }
}

/// A record committed to the dead-letter topic.
pub struct DeadLettered {
    pub reason: DlqReason,
}

impl Event for DeadLettered {
    fn emit(self, t: &Telemetry) {
        t.dead_letters.with_label_values(&[self.reason.as_str()]).inc();
        RecordRouted { vendor: None, outcome: "dead_letter" }.emit(t);
    }
}

/// A delivery's verdict committed.
pub struct DeliveryGated<'a> {
    pub verdict: &'a VerdictMessage,
}

impl Event for DeliveryGated<'_> {
    fn emit(self, t: &Telemetry) {
        let v = self.verdict;
        let vendor = t.vendor_label(&v.vendor_id);
        let decision = v.decision.as_str();
        t.deliveries.with_label_values(&[vendor.as_str(), decision]).inc();
        t.delivery_suspects.with_label_values(&[vendor.as_str()]).observe(v.rereview as f64 / v.records.max(1) as f64);
        tracing::info!(
            batch_id = %Escaped(&v.batch_id), vendor = %Escaped(&v.vendor_id), records = v.records, rereview = v.rereview,
            estimated_accuracy = v.estimated_accuracy, decision, decided_by = v.decided_by.as_str(), review_reason = v.review_reason.as_deref(),
            "delivery gated"
        );
    }
}

/// The vendor's rolling figures after a window or a review.
pub struct VendorUpdated<'a> {
    pub vendor: &'a str,
    pub accuracy: Option<f64>,
    pub sla: f64,
    pub gold_accuracy: Option<f64>,
    pub suspect_precision: Option<f64>,
}

impl Event for VendorUpdated<'_> {
    fn emit(self, t: &Telemetry) {
        let v = t.vendor_label(self.vendor);
        if let Some(a) = self.accuracy {
            t.vendor_accuracy.with_label_values(&[v.as_str()]).set(a);
        }
        t.vendor_accuracy_sla.with_label_values(&[v.as_str()]).set(self.sla);
        if let Some(g) = self.gold_accuracy {
            t.vendor_gold_accuracy.with_label_values(&[v.as_str()]).set(g);
        }
        if let Some(p) = self.suspect_precision {
            t.vendor_suspect_precision.with_label_values(&[v.as_str()]).set(p);
        }
    }
}

/// A vendor with no deliveries in the accuracy window: its figures are withdrawn, so an alert
/// neither stays on a vendor that stopped delivering nor hides another replica's fresher value.
pub struct VendorIdle<'a> {
    pub vendor: &'a str,
}

impl Event for VendorIdle<'_> {
    fn emit(self, t: &Telemetry) {
        let v = t.vendor_label(self.vendor);
        for g in [&t.vendor_accuracy, &t.vendor_gold_accuracy] {
            let _ = g.remove_label_values(&[v.as_str()]);
        }
    }
}

/// The store could not give a vendor's history; its gauges stay as they were.
pub struct VendorNotRefreshed<'a> {
    pub vendor: &'a str,
    pub error: &'a dyn fmt::Display,
}

impl Event for VendorNotRefreshed<'_> {
    fn emit(self, _: &Telemetry) {
        tracing::warn!(vendor = %Escaped(self.vendor), error = %self.error, "vendor gauges not refreshed");
    }
}

/// A review of a suspect stored.
pub struct ReviewRecorded<'a> {
    pub vendor: &'a str,
    pub confirmed_wrong: bool,
}

impl Event for ReviewRecorded<'_> {
    fn emit(self, t: &Telemetry) {
        let v = t.vendor_label(self.vendor);
        t.reviews.with_label_values(&[v.as_str(), if self.confirmed_wrong { "confirmed_wrong" } else { "label_correct" }]).inc();
    }
}

/// A message on the reviews topic that is not a review.
pub struct ReviewInvalid<'a> {
    pub partition: i32,
    pub offset: i64,
    pub error: &'a dyn fmt::Display,
}

impl Event for ReviewInvalid<'_> {
    fn emit(self, t: &Telemetry) {
        t.reviews.with_label_values(&["unknown", "invalid"]).inc();
        tracing::warn!(partition = self.partition, offset = self.offset, error = %self.error, "review ignored: expected sample_id, final_label and reviewer");
    }
}

/// A window handed to the window thread.
pub struct WindowStarted<'a> {
    pub window_id: &'a str,
    pub records: usize,
    pub deliveries: usize,
}

impl Event for WindowStarted<'_> {
    fn emit(self, t: &Telemetry) {
        t.windows_started.inc();
        tracing::info!(window = self.window_id, records = self.records, deliveries = self.deliveries, "window started");
    }
}

/// The deliveries' `scoring` states were not written (informational only; the window goes on).
pub struct DeliveryStatesNotMarked<'a> {
    pub window_id: &'a str,
    pub error: &'a dyn fmt::Display,
}

impl Event for DeliveryStatesNotMarked<'_> {
    fn emit(self, _: &Telemetry) {
        tracing::warn!(window = self.window_id, error = %self.error, "delivery states not marked `scoring`");
    }
}

/// The window thread embedded a window's new texts.
pub struct TextsEmbedded<'a> {
    pub window_id: &'a str,
    pub report: &'a crate::encoder::EmbeddingReport,
}

impl Event for TextsEmbedded<'_> {
    fn emit(self, t: &Telemetry) {
        let r = self.report;
        t.text_embeddings.with_label_values(&["hit"]).inc_by(r.cache.hits);
        t.text_embeddings.with_label_values(&["miss"]).inc_by(r.cache.misses);
        t.texts_truncated.inc_by(r.truncated as u64);
        t.window_phase.with_label_values(&["embedding"]).observe(r.seconds);
        let window = self.window_id;
        tracing::info!(window, records = r.records, cache_hits = r.cache.hits, cache_misses = r.cache.misses, truncated = r.truncated, seconds = r.seconds, "texts embedded");
        if r.truncated > 0 {
            tracing::warn!(window, truncated = r.truncated, "texts longer than the encoder's token limit were truncated: their end does not count in their features");
        }
    }
}

/// One round of fetching the images of an input batch: how many came, were refused, or wait
/// for their host.
pub struct ImagesFetched {
    pub fetched: u64,
    /// (DLQ reason, records) of the refusals.
    pub refused: Vec<(crate::wire::DlqReason, u64)>,
    pub unavailable: u64,
}

impl Event for ImagesFetched {
    fn emit(self, t: &Telemetry) {
        t.image_fetches.with_label_values(&["fetched"]).inc_by(self.fetched);
        t.image_fetches.with_label_values(&["unavailable"]).inc_by(self.unavailable);
        for (reason, n) in &self.refused {
            t.image_fetches.with_label_values(&[reason.as_str()]).inc_by(*n);
        }
    }
}

/// Images of the input wait for a host that is away; the input is held and they are retried.
pub struct ImageHostUnavailable<'a> {
    /// One of the URIs that could not be fetched, and why.
    pub uri: &'a str,
    pub error: &'a dyn fmt::Display,
    pub waiting: usize,
    pub retry_in: Duration,
}

impl Event for ImageHostUnavailable<'_> {
    fn emit(self, t: &Telemetry) {
        let error = self.error.to_string();
        if t.throttle.first_in_a_while("image host unavailable") {
            tracing::warn!(uri = %Escaped(self.uri), error = %Escaped(&error), waiting = self.waiting, retry_in_ms = self.retry_in.as_millis() as u64, "an image host is away; the input is held and its images retried (said once a minute; labelgate_image_fetches_total{{outcome=\"unavailable\"}} counts each try)");
        }
    }
}

/// A window's verdicts committed.
pub struct WindowCommitted<'a> {
    pub window_id: &'a str,
    pub timing: &'a WindowTiming,
    pub final_loss: f64,
    pub evidence: &'a WindowEvidence,
}

impl Event for WindowCommitted<'_> {
    fn emit(self, t: &Telemetry) {
        let (timing, evidence) = (self.timing, self.evidence);
        let noise_share = evidence.wrong_share;
        t.windows.inc();
        t.window_duration.observe(timing.waiting_seconds + timing.training_seconds + timing.producing_seconds);
        t.window_phase.with_label_values(&["waiting"]).observe(timing.waiting_seconds);
        t.window_phase.with_label_values(&["training"]).observe(timing.training_seconds);
        t.window_phase.with_label_values(&["producing"]).observe(timing.producing_seconds);
        t.window_records.observe(timing.records as f64);
        t.window_last_completed.set(unix_seconds());
        t.training_loss.set(self.final_loss);
        t.window_noise_share.set(noise_share);
        t.window_evidence.with_label_values(&[evidence.status.name()]).inc();
        t.window_feature_shift.set(evidence.distribution_shift.map_or(f64::NAN, |c| c.statistic));
        t.window_estimator_share.reset();
        for r in &evidence.readings {
            t.window_estimator_share.with_label_values(&[r.estimator.name()]).set(r.wrong_share);
        }
        let readings = evidence.readings.iter().map(|r| format!("{}={:.3}", r.estimator.name(), r.wrong_share)).collect::<Vec<_>>().join(" ");
        let lift = evidence.model_fit.map(|f| f.lift);
        let window = self.window_id;
        tracing::info!(
            window, records = timing.records, deliveries = timing.deliveries, waiting_seconds = timing.waiting_seconds, training_seconds = timing.training_seconds,
            producing_seconds = timing.producing_seconds, final_loss = self.final_loss, noise_share, evidence = evidence.status.name(), %readings, lift,
            "window committed"
        );
        if let Some(shift) = evidence.distribution_shift.filter(|c| c.shifted) {
            tracing::warn!(
                window,
                statistic = shift.statistic,
                threshold = shift.threshold,
                "the window's records were drawn away from the reference pool (distribution_shift): its deliveries go to review and re-review gets each vendor's SLA error budget at most"
            );
        } else if !evidence.status.supports_a_decision() {
            tracing::warn!(
                window, evidence = evidence.status.name(), %readings, lift,
                "the window's wrong-label share is not identifiable from this evidence; its deliveries go to review"
            );
        }
    }
}

/// A window could not be trained; its records went to re-review (`window_failed`).
pub struct WindowFailed<'a> {
    pub window_id: &'a str,
    pub records: usize,
    /// `data` (the window's data cannot be trained on).
    pub kind: &'static str,
    pub why: &'a str,
}

impl Event for WindowFailed<'_> {
    fn emit(self, t: &Telemetry) {
        t.windows_failed.with_label_values(&[self.kind]).inc();
        tracing::error!(window = self.window_id, records = self.records, kind = self.kind, why = %Escaped(self.why), "window failed; its records went to re-review (window_failed)");
    }
}

/// A state-store call failed and will be retried.
pub struct StateCallFailed<'a> {
    pub operation: &'a str,
    pub error: &'a dyn fmt::Display,
    pub retry_in: Duration,
}

impl Event for StateCallFailed<'_> {
    fn emit(self, t: &Telemetry) {
        t.state_errors.with_label_values(&[self.operation]).inc();
        let error = self.error.to_string();
        if t.throttle.first_in_a_while(&format!("state: {} {error}", self.operation)) {
            tracing::warn!(
                operation = self.operation,
                error,
                retry_in_ms = self.retry_in.as_millis() as u64,
                "state store call failed; retrying (said once a minute; labelgate_state_errors_total counts each)"
            );
        }
    }
}

/// A Kafka consumer reported an error (librdkafka recovers by itself; the counter shows a storm).
pub struct ConsumerError<'a> {
    pub error: &'a dyn fmt::Display,
}

impl Event for ConsumerError<'_> {
    fn emit(self, t: &Telemetry) {
        t.consumer_errors.inc();
        let error = self.error.to_string();
        if t.throttle.first_in_a_while(&format!("consumer error: {error}")) {
            tracing::warn!(error, "consumer error (said once a minute; labelgate_consumer_errors_total counts each)");
        }
    }
}

pub struct PartitionsAssigned<'a> {
    pub partitions: &'a [i32],
}

impl Event for PartitionsAssigned<'_> {
    fn emit(self, _: &Telemetry) {
        for p in self.partitions {
            tracing::info!(partition = p, "partition assigned");
        }
    }
}

pub struct PartitionsRevoked<'a> {
    pub partitions: &'a [i32],
}

impl Event for PartitionsRevoked<'_> {
    fn emit(self, _: &Telemetry) {
        for p in self.partitions {
            tracing::info!(partition = p, "partition revoked");
        }
    }
}

/// Consumption paused (the buffer reached `gate.max_buffered_records`) or resumed.
pub struct Backpressure {
    pub paused: bool,
    pub buffered: usize,
}

impl Event for Backpressure {
    fn emit(self, _: &Telemetry) {
        tracing::info!(paused = self.paused, buffered = self.buffered, "backpressure");
    }
}

/// The buffer reached `gate.max_buffered_records` with every delivery in it still open: the
/// input reads on past the bound (pausing would wait forever) until one closes.
pub struct BufferOverBound {
    pub over: bool,
    pub buffered: usize,
}

impl Event for BufferOverBound {
    fn emit(self, t: &Telemetry) {
        t.buffer_over_bound.set(self.over as i64);
        if self.over {
            tracing::warn!(buffered = self.buffered, "buffer full of open deliveries: reading on past gate.max_buffered_records until one closes");
        }
    }
}

/// The reference pool loaded at start-up.
pub struct PoolRestored {
    pub samples: usize,
}

impl Event for PoolRestored {
    fn emit(self, _: &Telemetry) {
        tracing::info!(restored = self.samples, "reference pool loaded from the state store");
    }
}

/// The loop ended cleanly, with the run's counts.
pub struct GateStopped {
    pub consumed: u64,
    pub accepted: u64,
    pub rereview: u64,
    pub dead_letters: u64,
    pub verdicts: u64,
    pub windows: u64,
    pub transactions: u64,
    pub pauses: u64,
}

impl Event for GateStopped {
    fn emit(self, _: &Telemetry) {
        let GateStopped { consumed, accepted, rereview, dead_letters, verdicts, windows, transactions, pauses } = self;
        tracing::info!(consumed, accepted, rereview, dead_letters, verdicts, windows, transactions, pauses, "gate stopped");
    }
}

/// Readiness changed, as judged outside the loop (the loop's word and the monitor's checks).
pub struct ReadinessChanged<'a> {
    pub ready: &'a Result<(), String>,
}

impl Event for ReadinessChanged<'_> {
    fn emit(self, _: &Telemetry) {
        match self.ready {
            Ok(()) => tracing::info!("ready"),
            Err(why) => tracing::warn!(why = why.as_str(), "not ready"),
        }
    }
}

/// Liveness changed: the gate stopped making progress where it could, or makes it again.
pub struct LivenessChanged<'a> {
    pub live: &'a Result<(), String>,
}

impl Event for LivenessChanged<'_> {
    fn emit(self, _: &Telemetry) {
        match self.live {
            Ok(()) => tracing::info!("healthy"),
            Err(why) => tracing::error!(why = why.as_str(), "unhealthy: /healthz answers 503 until the gate makes progress again"),
        }
    }
}

/// A Kafka client reported an error it cannot recover from: the gate exits.
pub struct KafkaClientFatal<'a> {
    pub client: &'static str,
    pub code: &'a str,
    pub reason: &'a str,
}

impl Event for KafkaClientFatal<'_> {
    fn emit(self, _: &Telemetry) {
        tracing::error!(client = self.client, code = self.code, reason = %Escaped(self.reason), "fatal Kafka client error: the gate exits for its supervisor to restart it");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::wire::{DecidedBy, Decision, NoiseRateFrom};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn verdict() -> VerdictMessage {
        VerdictMessage {
            schema_version: 1,
            batch_id: "b\n2026-01-01 INFO forged".into(),
            vendor_id: "v\u{0}\u{1b}[31m".into(),
            records: 1,
            announced_count: None,
            closed_by: "batch_end".into(),
            accepted: 1,
            rereview: 0,
            estimated_accuracy: Some(1.0),
            accuracy_ci_low: Some(0.5),
            accuracy_ci_high: Some(1.0),
            calibration: "none".into(),
            noise_rate_from: NoiseRateFrom::Estimators,
            gold_items: 0,
            gold_accuracy: None,
            sla_accuracy: 0.9,
            decision: Decision::Review,
            decided_by: DecidedBy::Estimate,
            review_reason: Some("interval_spans_sla".into()),
            evidence: None,
            window_id: "w".into(),
            model_version: "m".into(),
        }
    }

    /// A vendor id with a newline, a NUL and an escape sequence stays on its one log line.
    #[test]
    fn untrusted_ids_cannot_forge_log_lines() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
        let verdict = verdict();
        tracing::subscriber::with_default(subscriber, || Telemetry::new(10, "m", "cpu").emit(DeliveryGated { verdict: &verdict }));
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text:?}");
        assert!(!text.contains('\u{0}') && !text.contains('\u{1b}'), "{text:?}");
        assert!(text.contains(r"b\n2026-01-01 INFO forged"), "{text:?}");
    }

    /// The JSON log carries each field as its JSON type: numbers as numbers, strings quoted once,
    /// an absent figure left out (never the text "None").
    #[test]
    fn the_delivery_gated_event_logs_json_values() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt().json().with_writer(move || writer.clone()).finish();
        let mut abstained = verdict();
        (abstained.batch_id, abstained.estimated_accuracy, abstained.review_reason) = ("b-2".into(), None, None);
        tracing::subscriber::with_default(subscriber, || {
            let t = Telemetry::new(10, "m", "cpu");
            t.emit(DeliveryGated { verdict: &verdict() });
            t.emit(DeliveryGated { verdict: &abstained });
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let fields = &lines[0]["fields"];
        assert_eq!(fields["batch_id"], serde_json::json!("b\\n2026-01-01 INFO forged"), "{fields}");
        assert_eq!(fields["vendor"], serde_json::json!("v\\0\\u{1b}[31m"), "{fields}");
        assert_eq!(fields["records"], serde_json::json!(1));
        assert_eq!(fields["estimated_accuracy"], serde_json::json!(1.0));
        assert_eq!(fields["review_reason"], serde_json::json!("interval_spans_sla"));
        assert_eq!(fields["decision"], serde_json::json!("review"));
        let fields = &lines[1]["fields"];
        assert_eq!(fields["batch_id"], serde_json::json!("b-2"), "{fields}");
        assert!(fields.get("estimated_accuracy").is_none() && fields.get("review_reason").is_none(), "{fields}");
        assert!(!text.contains("None") && !text.contains("Some("), "{text}");
    }

    /// Vendor ids with terminal escapes, a bell and a NUL reach /metrics escaped: no byte below
    /// 0x20 but the line breaks, and each vendor keeps a series of its own.
    #[test]
    fn metric_label_values_carry_no_control_bytes() {
        let t = Telemetry::new(10, "m", "cpu");
        for vendor in ["evil\u{1b}[2J\u{7}", "nul\u{0}byte", "plain"] {
            t.emit(RecordRouted { vendor: Some(vendor), outcome: "accepted" });
        }
        let text = t.render();
        assert!(!text.bytes().any(|b| b < 0x20 && b != b'\n'), "{text:?}");
        assert!(text.contains(r#"vendor="evil\\u{1b}[2J\\u{7}""#), "{text}");
        assert!(text.contains(r#"vendor="nul\\0byte""#), "{text}");
    }
}
