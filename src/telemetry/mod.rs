//! The process's metrics registry and readiness. What happens is reported as named events
//! ([`events`]): the service calls `telemetry.emit(events::X { .. })`, and the event's one
//! `emit` updates its metrics and writes its log line, so every metric and log line of one event
//! lives in one struct. Metric names follow Prometheus
//! conventions (`labelgate_` prefix, base units, `_total` counters, `_ratio` for 0–1 values);
//! vendor is the only unbounded label and is capped. The one-page spec is docs/metrics.md.

pub mod events;
pub mod health;
pub mod http;
pub mod throttle;

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    },
    time::Instant,
};

use prometheus::{Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use serde::Serialize;

/// The label value for vendors beyond `max_vendor_series`.
pub const OTHER_VENDOR: &str = "_other";

pub struct Telemetry {
    registry: Registry,
    /// The loop's own word on readiness, and why.
    ready: AtomicBool,
    ready_why: Mutex<String>,
    /// The checks judged outside the loop (readiness and liveness).
    health: health::Health,
    ready_gauge: IntGauge,
    healthy_gauge: IntGauge,
    /// Repeated complaints of events that an outage makes frequent.
    pub(crate) throttle: throttle::Throttle,
    vendors: Mutex<HashSet<String>>,
    max_vendors: usize,
    vendor_overflow: IntCounter,
    records: IntCounterVec,
    dead_letters: IntCounterVec,
    deliveries: IntCounterVec,
    delivery_suspects: HistogramVec,
    vendor_accuracy: GaugeVec,
    vendor_accuracy_sla: GaugeVec,
    vendor_gold_accuracy: GaugeVec,
    vendor_suspect_precision: GaugeVec,
    reviews: IntCounterVec,
    windows: IntCounter,
    windows_started: IntCounter,
    windows_failed: IntCounterVec,
    window_duration: Histogram,
    window_phase: HistogramVec,
    window_records: Histogram,
    window_last_completed: Gauge,
    training_loss: Gauge,
    window_noise_share: Gauge,
    window_evidence: IntCounterVec,
    window_estimator_share: GaugeVec,
    window_feature_shift: Gauge,
    text_embeddings: IntCounterVec,
    texts_truncated: IntCounter,
    image_fetches: IntCounterVec,
    consumer_lag: IntGauge,
    buffered: IntGauge,
    buffered_bytes: IntGauge,
    buffer_over_bound: IntGauge,
    state_errors: IntCounterVec,
    consumer_errors: IntCounter,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    registry.register(Box::new(metric.clone())).expect("metric names are unique");
    metric
}

impl Telemetry {
    pub fn new(max_vendors: usize, model: &str, device: &str) -> Self {
        let r = Registry::new();
        let buckets_seconds = vec![0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0];
        let info = register(&r, IntGaugeVec::new(Opts::new("labelgate_build_info", "Build and model of this process (always 1)."), &["version", "model", "device"]).unwrap());
        info.with_label_values(&[env!("CARGO_PKG_VERSION"), model, device]).set(1);
        let t = Self {
            ready: AtomicBool::new(false),
            ready_why: Mutex::new("starting".into()),
            health: health::Health::default(),
            throttle: throttle::Throttle::default(),
            ready_gauge: register(&r, IntGauge::new("labelgate_ready", "1 when consuming and committing (what /readyz answers); 0 while starting, draining, with no partitions, a stalled loop, or Redis or Kafka unreachable.").unwrap()),
            healthy_gauge: register(&r, IntGauge::new("labelgate_healthy", "1 while the gate makes progress where its dependencies let it (what /healthz answers).").unwrap()),
            vendors: Mutex::new(HashSet::new()),
            max_vendors,
            vendor_overflow: register(&r, IntCounter::new("labelgate_vendor_series_overflow_total", "Events of vendors beyond metrics.max_vendor_series, reported as vendor=\"_other\".").unwrap()),
            records: register(&r, IntCounterVec::new(Opts::new("labelgate_records_total", "Input records by where they ended (accepted, rereview, dead_letter)."), &["vendor", "outcome"]).unwrap()),
            dead_letters: register(&r, IntCounterVec::new(Opts::new("labelgate_dead_letters_total", "Records sent to the dead-letter topic, by reason."), &["reason"]).unwrap()),
            deliveries: register(&r, IntCounterVec::new(Opts::new("labelgate_deliveries_total", "Gated deliveries by verdict."), &["vendor", "decision"]).unwrap()),
            delivery_suspects: register(
                &r,
                HistogramVec::new(HistogramOpts::new("labelgate_delivery_suspect_ratio", "Share of a delivery's records sent to re-review.").buckets(vec![0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0]), &["vendor"]).unwrap(),
            ),
            vendor_accuracy: register(&r, GaugeVec::new(Opts::new("labelgate_vendor_label_accuracy_ratio", "Estimated label accuracy of the vendor's recent deliveries (records-weighted)."), &["vendor"]).unwrap()),
            vendor_accuracy_sla: register(&r, GaugeVec::new(Opts::new("labelgate_vendor_label_accuracy_sla_ratio", "The vendor's label-accuracy SLA."), &["vendor"]).unwrap()),
            vendor_gold_accuracy: register(&r, GaugeVec::new(Opts::new("labelgate_vendor_gold_accuracy_ratio", "The vendor's accuracy on gold items of its recent deliveries."), &["vendor"]).unwrap()),
            vendor_suspect_precision: register(
                &r,
                GaugeVec::new(Opts::new("labelgate_vendor_suspect_precision_ratio", "Realised precision of the gate's suspects for the vendor: reviewed suspects whose label was really wrong."), &["vendor"]).unwrap(),
            ),
            reviews: register(&r, IntCounterVec::new(Opts::new("labelgate_reviews_total", "Reviews of suspects by result (confirmed_wrong, label_correct)."), &["vendor", "result"]).unwrap()),
            windows: register(&r, IntCounter::new("labelgate_windows_total", "Committed O2U windows.").unwrap()),
            windows_failed: register(&r, IntCounterVec::new(Opts::new("labelgate_windows_failed_total", "Windows that could not be trained (kind=data: their records went to re-review as window_failed)."), &["kind"]).unwrap()),
            windows_started: register(&r, IntCounter::new("labelgate_windows_started_total", "O2U windows handed to the window thread (started − committed = in flight or abandoned by a rebalance).").unwrap()),
            window_duration: register(&r, Histogram::with_opts(HistogramOpts::new("labelgate_window_duration_seconds", "From a window's first closed delivery to its committed verdicts.").buckets(buckets_seconds.clone())).unwrap()),
            window_phase: register(
                &r,
                HistogramVec::new(HistogramOpts::new("labelgate_window_phase_duration_seconds", "Window time by phase (waiting, embedding, training, producing; embedding is part of training).").buckets(buckets_seconds), &["phase"]).unwrap(),
            ),
            window_records: register(
                &r,
                Histogram::with_opts(HistogramOpts::new("labelgate_window_records", "Records gated per window.").buckets(vec![10.0, 100.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 20000.0, 50000.0])).unwrap(),
            ),
            window_last_completed: register(&r, Gauge::new("labelgate_window_last_completed_timestamp_seconds", "When the last window committed (process start until then).").unwrap()),
            text_embeddings: register(
                &r,
                IntCounterVec::new(Opts::new("labelgate_text_embeddings_total", "Text lookups of the sentence encoder by whether the embedding cache had them (cache=hit, miss); a pair is two."), &["cache"]).unwrap(),
            ),
            texts_truncated: register(&r, IntCounter::new("labelgate_texts_truncated_total", "Texts cut at the sentence encoder's token limit before embedding.").unwrap()),
            image_fetches: register(
                &r,
                IntCounterVec::new(
                    Opts::new("labelgate_image_fetches_total", "Tries to fetch an image.uri by outcome (fetched, unavailable: retried, or the DLQ reason of a refusal)."),
                    &["outcome"],
                )
                .unwrap(),
            ),
            training_loss: register(&r, Gauge::new("labelgate_training_loss", "Mean training loss of the last window's final epoch.").unwrap()),
            window_noise_share: register(&r, Gauge::new("labelgate_window_noise_share_ratio", "Estimated share of wrong labels in the last window.").unwrap()),
            window_evidence: register(
                &r,
                IntCounterVec::new(
                    Opts::new("labelgate_window_evidence_total", "Committed windows by what their wrong-label share rests on: consistent, outlier (one estimator off), disagree (beyond gate.max_estimator_gap), uncorroborated (one estimator could be read), shifted (records drawn away from the reference pool), insufficient (the network did not learn the features), fixed."),
                    &["status"],
                )
                .unwrap(),
            ),
            window_estimator_share: register(
                &r,
                GaugeVec::new(Opts::new("labelgate_window_estimator_noise_share_ratio", "Each estimator's wrong-label share in the last window."), &["estimator"]).unwrap(),
            ),
            window_feature_shift: register(
                &r,
                Gauge::new("labelgate_window_feature_shift", "How far the last window's features lay from the reference pool's (root mean square standardised mean difference; above gate.max_feature_shift the window is shifted). NaN after a window without a pool to compare with, 0 before the first window.").unwrap(),
            ),
            consumer_lag: register(&r, IntGauge::new("labelgate_consumer_lag_records", "Input records not yet consumed, over this replica's partitions.").unwrap()),
            buffered: register(&r, IntGauge::new("labelgate_buffered_records", "Input records held in memory awaiting a window.").unwrap()),
            buffered_bytes: register(
                &r,
                IntGauge::new("labelgate_buffered_bytes", "Bytes the buffered records hold: features as f32, embeddings, and their original bytes compressed until routed.").unwrap(),
            ),
            buffer_over_bound: register(&r, IntGauge::new("labelgate_buffer_over_bound", "1 while the buffer holds more than gate.max_buffered_records because every delivery in it is still open.").unwrap()),
            state_errors: register(&r, IntCounterVec::new(Opts::new("labelgate_state_errors_total", "Failed state-store (Redis) calls, by operation."), &["operation"]).unwrap()),
            consumer_errors: register(&r, IntCounter::new("labelgate_consumer_errors_total", "Errors the Kafka consumers reported (librdkafka retries them; a steady rate means the broker is unreachable or refusing).").unwrap()),
            registry: r,
        };
        t.window_last_completed.set(unix_seconds());
        t
    }

    /// The vendor label for `vendor`: itself while under the cap, else `_other` (counted).
    fn vendor_label(&self, vendor: &str) -> String {
        // A label value reaches terminals and scrapers: no raw control bytes.
        let vendor = &*Escaped::text(vendor);
        let mut seen = self.vendors.lock().unwrap();
        if seen.contains(vendor) {
            return vendor.to_string();
        }
        if seen.len() < self.max_vendors {
            seen.insert(vendor.to_string());
            return vendor.to_string();
        }
        self.vendor_overflow.inc();
        OTHER_VENDOR.to_string()
    }

    /// Where components with metrics of their own (the review bridge) register them.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn render(&self) -> String {
        // The gauges say what the endpoints would say now.
        let now = Instant::now();
        self.ready_gauge.set(self.readiness(now).is_ok() as i64);
        self.healthy_gauge.set(self.liveness(now).is_ok() as i64);
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding");
        String::from_utf8(buf).expect("utf-8")
    }

    /// What `/readyz` answers: the loop's own word, then the checks judged outside it.
    pub fn readiness(&self, now: Instant) -> Result<(), String> {
        if !self.loop_says_ready() {
            return Err(self.ready_why.lock().unwrap().clone());
        }
        self.health.readiness(now)
    }

    pub fn is_ready(&self) -> bool {
        self.readiness(Instant::now()).is_ok()
    }

    /// What `/healthz` answers.
    pub fn liveness(&self, now: Instant) -> Result<(), String> {
        self.health.liveness(now)
    }

    pub fn health(&self) -> &health::Health {
        &self.health
    }

    /// The loop's own word, without the outside checks.
    pub fn loop_says_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// The loop's own word on readiness. Where the outside checks watch (the gate), the Kafka
    /// monitor logs the combined changes; elsewhere (the review bridge) this does.
    pub fn set_ready(&self, ready: bool, why: &str) {
        *self.ready_why.lock().unwrap() = why.to_string();
        if self.ready.swap(ready, Ordering::SeqCst) != ready && !self.health.is_watched() {
            if ready {
                tracing::info!(why, "ready");
            } else {
                tracing::warn!(why, "not ready");
            }
        }
        self.ready_gauge.set(ready as i64);
    }

    /// Reports one event: its metrics and its log line.
    pub fn emit(&self, event: impl events::Event) {
        event.emit(self)
    }

    pub fn set_buffered(&self, records: usize) {
        self.buffered.set(records as i64);
    }

    pub fn set_buffered_bytes(&self, bytes: usize) {
        self.buffered_bytes.set(bytes as i64);
    }

    pub fn set_consumer_lag(&self, records: i64) {
        self.consumer_lag.set(records.max(0));
    }
}

/// An untrusted string for a log field or a label value: control characters (newline, NUL, ESC,
/// DEL …) written as escapes (`\n`, `\u{1b}`), and the backslash doubled so that no two ids read
/// the same; everything else as it is.
pub struct Escaped<'a>(pub &'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        for c in self.0.chars() {
            if c.is_control() || c == '\\' {
                for e in c.escape_debug() {
                    f.write_char(e)?;
                }
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

impl Escaped<'_> {
    /// The escaped text, borrowed where nothing needed escaping.
    pub fn text(s: &str) -> std::borrow::Cow<'_, str> {
        if s.chars().any(|c| c.is_control() || c == '\\') {
            Escaped(s).to_string().into()
        } else {
            s.into()
        }
    }
}

/// From the moment a window's first delivery closed (its last record or batch_end arrived) to
/// its committed verdicts.
#[derive(Debug, Clone, Serialize)]
pub struct WindowTiming {
    pub records: usize,
    pub deliveries: usize,
    /// Closed, waiting for the window to start (min records or max wait).
    pub waiting_seconds: f64,
    /// Training and scoring on the window thread.
    pub training_seconds: f64,
    /// Routing, producing and committing the transaction.
    pub producing_seconds: f64,
}

fn unix_seconds() -> f64 {
    crate::clock::unix_millis() as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendor_series_are_capped_and_overflow_counted() {
        let t = Telemetry::new(2, "mlp", "cpu");
        for v in ["a", "b", "c", "d", "a"] {
            t.emit(events::RecordRouted { vendor: Some(v), outcome: "accepted" });
        }
        let text = t.render();
        assert!(text.contains(r#"labelgate_records_total{outcome="accepted",vendor="a"} 2"#), "{text}");
        assert!(text.contains(r#"labelgate_records_total{outcome="accepted",vendor="_other"} 2"#), "{text}");
        assert!(text.contains("labelgate_vendor_series_overflow_total 2"), "{text}");
        assert!(!text.contains(r#"vendor="c""#));
    }
}
