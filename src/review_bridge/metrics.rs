//! The bridge's metrics (`labelgate_review_bridge_…`), registered next to the process's standard
//! ones (`labelgate_ready`, served on `review_bridge.listen`). Spec: docs/metrics.md.

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

pub struct BridgeMetrics {
    pub tasks_created: IntCounter,
    pub tasks_existing: IntCounter,
    pub tasks_reconciled: IntCounter,
    pub suspects_rejected: IntCounterVec,
    pub reviews: IntCounterVec,
    pub answers_ignored: IntCounterVec,
    pub errors: IntCounterVec,
    pub import_lag: Histogram,
    pub review_lag: HistogramVec,
    pub label_studio_up: IntGauge,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    registry.register(Box::new(metric.clone())).expect("metric names are unique");
    metric
}

impl BridgeMetrics {
    pub fn new(r: &Registry) -> Self {
        let lag_buckets = vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0];
        Self {
            tasks_created: register(r, IntCounter::new("labelgate_review_bridge_tasks_created_total", "Suspects imported into Label Studio as new tasks.").unwrap()),
            tasks_existing: register(
                r,
                IntCounter::new("labelgate_review_bridge_tasks_existing_total", "Suspects read again (replays, restarts) whose task already existed: not imported twice.").unwrap(),
            ),
            tasks_reconciled: register(
                r,
                IntCounter::new("labelgate_review_bridge_tasks_reconciled_total", "Tasks found in Label Studio after an import whose answer was lost (crash, timeout).").unwrap(),
            ),
            suspects_rejected: register(
                r,
                IntCounterVec::new(
                    Opts::new("labelgate_review_bridge_suspects_rejected_total", "Suspects that cannot become a task: unreadable record (invalid) or refused by Label Studio (refused)."),
                    &["reason"],
                )
                .unwrap(),
            ),
            reviews: register(
                r,
                IntCounterVec::new(Opts::new("labelgate_review_bridge_reviews_total", "Reviewers' answers written to the reviews topic, by how they arrived (webhook, poll)."), &["path"]).unwrap(),
            ),
            answers_ignored: register(
                r,
                IntCounterVec::new(
                    Opts::new("labelgate_review_bridge_answers_ignored_total", "Annotations not forwarded: skipped tasks (cancelled), no choice, an unknown class, or not a bridge task."),
                    &["reason"],
                )
                .unwrap(),
            ),
            errors: register(
                r,
                IntCounterVec::new(Opts::new("labelgate_review_bridge_errors_total", "Failed calls, by what failed (label_studio_*, kafka, state) ; each is retried."), &["kind"]).unwrap(),
            ),
            import_lag: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new("labelgate_review_bridge_import_lag_seconds", "From a suspect written to the re-review topic to its task in Label Studio.").buckets(lag_buckets.clone()),
                )
                .unwrap(),
            ),
            review_lag: register(
                r,
                HistogramVec::new(
                    HistogramOpts::new("labelgate_review_bridge_review_lag_seconds", "From an answer saved in Label Studio to its review on the reviews topic, by path.").buckets(lag_buckets),
                    &["path"],
                )
                .unwrap(),
            ),
            label_studio_up: register(r, IntGauge::new("labelgate_review_bridge_label_studio_up", "1 when the last call to Label Studio succeeded.").unwrap()),
        }
    }
}
