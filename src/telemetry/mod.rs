//! Every metric and log line for one event in one place: the service calls `telemetry.<event>()`
//! and the event updates its metrics and writes its log line. Metric names follow Prometheus
//! conventions (`labelgate_` prefix, base units, `_total` counters, `_ratio` for 0–1 values);
//! vendor is the only unbounded label and is capped. The one-page spec is docs/metrics.md.

pub mod http;

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    },
};

use prometheus::{Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::{accuracy::evidence::WindowEvidence, service::WindowTiming, wire::VerdictMessage};

/// The label value for vendors beyond `max_vendor_series`.
pub const OTHER_VENDOR: &str = "_other";

pub struct Telemetry {
    registry: Registry,
    ready: AtomicBool,
    ready_gauge: IntGauge,
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
    window_duration: Histogram,
    window_phase: HistogramVec,
    window_records: Histogram,
    window_last_completed: Gauge,
    training_loss: Gauge,
    window_noise_share: Gauge,
    window_evidence: IntCounterVec,
    window_estimator_share: GaugeVec,
    consumer_lag: IntGauge,
    buffered: IntGauge,
    state_errors: IntCounterVec,
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
            ready_gauge: register(&r, IntGauge::new("labelgate_ready", "1 when consuming and committing; 0 while starting, draining or when Redis or Kafka is unreachable.").unwrap()),
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
            window_duration: register(&r, Histogram::with_opts(HistogramOpts::new("labelgate_window_duration_seconds", "From a window's first closed delivery to its committed verdicts.").buckets(buckets_seconds.clone())).unwrap()),
            window_phase: register(
                &r,
                HistogramVec::new(HistogramOpts::new("labelgate_window_phase_duration_seconds", "Window time by phase (waiting, training, producing).").buckets(buckets_seconds), &["phase"]).unwrap(),
            ),
            window_records: register(
                &r,
                Histogram::with_opts(HistogramOpts::new("labelgate_window_records", "Records gated per window.").buckets(vec![10.0, 100.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 20000.0, 50000.0])).unwrap(),
            ),
            window_last_completed: register(&r, Gauge::new("labelgate_window_last_completed_timestamp_seconds", "When the last window committed (process start until then).").unwrap()),
            training_loss: register(&r, Gauge::new("labelgate_training_loss", "Mean training loss of the last window's final epoch.").unwrap()),
            window_noise_share: register(&r, Gauge::new("labelgate_window_noise_share_ratio", "Estimated share of wrong labels in the last window.").unwrap()),
            window_evidence: register(
                &r,
                IntCounterVec::new(
                    Opts::new("labelgate_window_evidence_total", "Committed windows by what their wrong-label share rests on: consistent, outlier (one estimator off), disagree (beyond gate.max_estimator_gap), insufficient (the network did not learn the features), fixed."),
                    &["status"],
                )
                .unwrap(),
            ),
            window_estimator_share: register(
                &r,
                GaugeVec::new(Opts::new("labelgate_window_estimator_noise_share_ratio", "Each estimator's wrong-label share in the last window."), &["estimator"]).unwrap(),
            ),
            consumer_lag: register(&r, IntGauge::new("labelgate_consumer_lag_records", "Input records not yet consumed, over this replica's partitions.").unwrap()),
            buffered: register(&r, IntGauge::new("labelgate_buffered_records", "Input records held in memory awaiting a window.").unwrap()),
            state_errors: register(&r, IntCounterVec::new(Opts::new("labelgate_state_errors_total", "Failed state-store (Redis) calls, by operation."), &["operation"]).unwrap()),
            registry: r,
        };
        t.window_last_completed.set(unix_seconds());
        t
    }

    /// The vendor label for `vendor`: itself while under the cap, else `_other` (counted).
    fn vendor_label(&self, vendor: &str) -> String {
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
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding");
        String::from_utf8(buf).expect("utf-8")
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub fn set_ready(&self, ready: bool, why: &str) {
        if self.ready.swap(ready, Ordering::SeqCst) != ready {
            if ready {
                tracing::info!(why, "ready");
            } else {
                tracing::warn!(why, "not ready");
            }
        }
        self.ready_gauge.set(ready as i64);
    }

    pub fn record_routed(&self, vendor: Option<&str>, outcome: &str) {
        let v = vendor.map_or_else(|| "unknown".to_string(), |v| self.vendor_label(v));
        self.records.with_label_values(&[v.as_str(), outcome]).inc();
    }

    pub fn dead_letter(&self, vendor: Option<&str>, reason: &str) {
        self.dead_letters.with_label_values(&[reason]).inc();
        self.record_routed(vendor, "dead_letter");
    }

    pub fn delivery_gated(&self, v: &VerdictMessage) {
        let vendor = self.vendor_label(&v.vendor_id);
        let decision = serde_json::to_value(v.decision).ok().and_then(|d| d.as_str().map(str::to_string)).unwrap_or_default();
        self.deliveries.with_label_values(&[vendor.as_str(), decision.as_str()]).inc();
        self.delivery_suspects.with_label_values(&[vendor.as_str()]).observe(v.rereview as f64 / v.records.max(1) as f64);
        tracing::info!(
            batch_id = %v.batch_id, vendor = %v.vendor_id, records = v.records, rereview = v.rereview,
            estimated_accuracy = ?v.estimated_accuracy, decision = %decision, decided_by = %v.decided_by, review_reason = ?v.review_reason,
            "delivery gated"
        );
    }

    /// The vendor's rolling figures after a window or a review.
    pub fn vendor_updated(&self, vendor: &str, accuracy: Option<f64>, sla: f64, gold: Option<f64>, suspect_precision: Option<f64>) {
        let v = self.vendor_label(vendor);
        if let Some(a) = accuracy {
            self.vendor_accuracy.with_label_values(&[v.as_str()]).set(a);
        }
        self.vendor_accuracy_sla.with_label_values(&[v.as_str()]).set(sla);
        if let Some(g) = gold {
            self.vendor_gold_accuracy.with_label_values(&[v.as_str()]).set(g);
        }
        if let Some(p) = suspect_precision {
            self.vendor_suspect_precision.with_label_values(&[v.as_str()]).set(p);
        }
    }

    /// A vendor with no deliveries in the accuracy window: its figures are withdrawn, so an alert
    /// neither stays on a vendor that stopped delivering nor hides another replica's fresher value.
    pub fn vendor_idle(&self, vendor: &str) {
        let v = self.vendor_label(vendor);
        for g in [&self.vendor_accuracy, &self.vendor_gold_accuracy] {
            let _ = g.remove_label_values(&[v.as_str()]);
        }
    }

    /// Vendors this process reports on (for the periodic refresh).
    pub fn known_vendors(&self) -> Vec<String> {
        self.vendors.lock().unwrap().iter().cloned().collect()
    }

    pub fn review_recorded(&self, vendor: &str, confirmed_wrong: bool) {
        let v = self.vendor_label(vendor);
        self.reviews.with_label_values(&[v.as_str(), if confirmed_wrong { "confirmed_wrong" } else { "label_correct" }]).inc();
    }

    pub fn review_invalid(&self, partition: i32, offset: i64, error: &dyn std::fmt::Display) {
        self.reviews.with_label_values(&["unknown", "invalid"]).inc();
        tracing::warn!(partition, offset, %error, "review ignored: expected sample_id, final_label and reviewer");
    }

    pub fn window_committed(&self, window_id: &str, timing: &WindowTiming, final_loss: f64, evidence: &WindowEvidence) {
        let noise_share = evidence.wrong_share;
        self.windows.inc();
        let total = timing.waiting_seconds + timing.training_seconds + timing.producing_seconds;
        self.window_duration.observe(total);
        self.window_phase.with_label_values(&["waiting"]).observe(timing.waiting_seconds);
        self.window_phase.with_label_values(&["training"]).observe(timing.training_seconds);
        self.window_phase.with_label_values(&["producing"]).observe(timing.producing_seconds);
        self.window_records.observe(timing.records as f64);
        self.window_last_completed.set(unix_seconds());
        self.training_loss.set(final_loss);
        self.window_noise_share.set(noise_share);
        self.window_evidence.with_label_values(&[evidence.status.name()]).inc();
        self.window_estimator_share.reset();
        for r in &evidence.readings {
            let name = serde_json::to_value(r.estimator).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
            self.window_estimator_share.with_label_values(&[name.as_str()]).set(r.wrong_share);
        }
        let readings = evidence.readings.iter().map(|r| format!("{:?}={:.3}", r.estimator, r.wrong_share)).collect::<Vec<_>>().join(" ");
        let lift = evidence.model_fit.map(|f| f.lift);
        tracing::info!(window = window_id, ?timing, final_loss, noise_share, evidence = evidence.status.name(), %readings, ?lift, "window committed");
        if !evidence.status.supports_a_decision() {
            tracing::warn!(
                window = window_id, evidence = evidence.status.name(), %readings, ?lift,
                "the window's wrong-label share is not identifiable from this evidence; its deliveries go to review"
            );
        }
    }

    pub fn state_error(&self, operation: &str, error: &dyn std::fmt::Display, retry_in: std::time::Duration) {
        self.state_errors.with_label_values(&[operation]).inc();
        tracing::warn!(operation, %error, retry_in_ms = retry_in.as_millis() as u64, "state store call failed; retrying");
    }

    pub fn set_buffered(&self, records: usize) {
        self.buffered.set(records as i64);
    }

    pub fn set_consumer_lag(&self, records: i64) {
        self.consumer_lag.set(records.max(0));
    }
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
            t.record_routed(Some(v), "accepted");
        }
        let text = t.render();
        assert!(text.contains(r#"labelgate_records_total{outcome="accepted",vendor="a"} 2"#), "{text}");
        assert!(text.contains(r#"labelgate_records_total{outcome="accepted",vendor="_other"} 2"#), "{text}");
        assert!(text.contains("labelgate_vendor_series_overflow_total 2"), "{text}");
        assert!(!text.contains(r#"vendor="c""#));
    }
}
