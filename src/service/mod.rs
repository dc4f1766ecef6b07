//! The Kafka edge of the gate: consumes the input topic, feeds the gate, trains windows on their
//! own thread, and writes each window's outputs, its progress record and the input offsets in
//! one Kafka transaction, so every input record lands in exactly one of accepted / re-review /
//! dead-letter, once, across crashes and rebalances (see docs/delivery-guarantee.md).
//!
//! One job per file:
//! - [`clients`]: the Kafka clients (consumers, the transactional producer) and their settings;
//! - [`topics`]: topic creation and reading a topic to its end (progress, verdicts, tests);
//! - [`input`]: polling the input topic in batches and parsing them on the parser pool;
//! - [`window_thread`]: the thread that trains and scores windows;
//! - [`transaction`]: one commit's outputs, progress and offsets in one Kafka transaction;
//! - [`store_retry`]: state-store calls retried with back-off while the input is held;
//! - [`startup`]: waiting for Kafka at start-up, errors that name the setting, quiet client logs;
//! - [`reviews`]: reviews from the reviews topic into the store, and the vendor gauges;
//! - [`monitor`]: a thread of its own that asks the brokers whether they answer and how far the
//!   input is ahead of the loop, for readiness, liveness and the lag gauge;
//! - [`gate_loop`]: the loop that ties them together, one named step at a time.

mod client_logs;
mod clients;
mod gate_loop;
mod images;
mod input;
mod monitor;
mod reviews;
mod startup;
mod store_retry;
mod topics;
mod transaction;
mod window_thread;

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use anyhow::{Context as _, Result};
use serde::Serialize;

pub use clients::{client_config, input_consumer, instance_id, send_retrying_when_full, GateContext};
pub use gate_loop::run_blocking;
pub use input::{ingest_parsed, parse_batch, parser_pool, poll_batch};
pub use store_retry::open_state;
pub use topics::{ensure_topics, read_topic, read_topic_messages};

use crate::{
    config::Config,
    o2u::EpochReport,
    telemetry::{http, Telemetry, WindowTiming},
    wire::VerdictMessage,
};

/// Counts of one run, for the demo, tests and logs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunSummary {
    pub consumed: u64,
    pub skipped: u64,
    pub accepted: u64,
    pub rereview: u64,
    pub dead_letters: BTreeMap<String, u64>,
    pub verdicts: u64,
    pub windows: u64,
    pub transactions: u64,
    /// Times consumption was paused because the buffer was full.
    pub pauses: u64,
    /// Where each window's latency went.
    pub window_timings: Vec<WindowTiming>,
}

/// Called with (window id, records, deliveries) when a window starts training.
pub type WindowStartHook = Arc<dyn Fn(&str, usize, usize) + Send + Sync>;
/// Called after every training epoch of a window.
pub type EpochHook = Arc<dyn Fn(&EpochReport) + Send + Sync>;
/// Called for every committed verdict.
pub type VerdictHook = Arc<dyn Fn(&VerdictMessage) + Send + Sync>;

/// Callbacks for progress display (the demo) and tests — all optional.
#[derive(Default, Clone)]
pub struct Hooks {
    pub on_window_start: Option<WindowStartHook>,
    pub on_epoch: Option<EpochHook>,
    pub on_verdict: Option<VerdictHook>,
}

/// Resolves once the hooks it came with saw a number of committed verdicts (clone it for every
/// gate that shares the hooks).
#[derive(Clone)]
pub struct VerdictsReached {
    target: u64,
    seen: tokio::sync::watch::Receiver<u64>,
}

impl VerdictsReached {
    pub async fn wait(mut self) {
        let target = self.target;
        let _ = self.seen.wait_for(|&n| n >= target).await;
    }
}

impl Hooks {
    /// Hooks whose verdict hook counts verdicts, and what resolves once `expected` of them were
    /// committed: the one "wait for N verdicts" of the demo and the tests.
    pub fn until_verdicts(expected: u64) -> (Self, VerdictsReached) {
        let (tx, rx) = tokio::sync::watch::channel(0u64);
        let hooks = Hooks {
            on_verdict: Some(Arc::new(move |_| {
                tx.send_modify(|n| *n += 1);
            })),
            ..Default::default()
        };
        (hooks, VerdictsReached { target: expected, seen: rx })
    }

    /// These hooks with `other` called after each epoch too.
    pub fn also_on_epoch(mut self, other: EpochHook) -> Self {
        self.on_epoch = Some(chained(self.on_epoch.take(), other));
        self
    }

    /// These hooks with `other` called for each verdict too.
    pub fn also_on_verdict(mut self, other: VerdictHook) -> Self {
        self.on_verdict = Some(chained(self.on_verdict.take(), other));
        self
    }
}

/// A hook's function.
type Callback<T> = Arc<dyn Fn(&T) + Send + Sync>;

/// A hook that calls `first` (if any), then `then`.
fn chained<T: ?Sized + 'static>(first: Option<Callback<T>>, then: Callback<T>) -> Callback<T> {
    Arc::new(move |value| {
        if let Some(f) = &first {
            f(value);
        }
        then(value);
    })
}

/// Runs the gate until `shutdown` resolves, then finishes the window in flight, commits and
/// returns. Serves `/metrics`, `/healthz` and `/readyz` on `metrics.listen` meanwhile.
pub async fn run(config: Config, hooks: Hooks, shutdown: impl Future<Output = ()>) -> Result<RunSummary> {
    let telemetry = Arc::new(Telemetry::new(config.metrics.max_vendor_series, &model_name(&config), config.runtime.device.name()));
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = if config.metrics.listen.is_empty() {
        None
    } else {
        Some(
            http::serve(&config.metrics.listen, telemetry.clone(), async move {
                let _ = http_stopped.await;
            })
            .await?,
        )
    };
    let stop = Arc::new(AtomicBool::new(false));
    // Stops when dropped, as this function returns.
    let _monitor = monitor::start(&config, telemetry.clone())?;
    // A window in flight excuses a pause of the input only while its epochs go on.
    let hooks = {
        let telemetry = telemetry.clone();
        hooks.also_on_epoch(Arc::new(move |_| telemetry.health().window_progressed(std::time::Instant::now())))
    };
    let worker = {
        let (stop, telemetry, runtime) = (stop.clone(), telemetry.clone(), tokio::runtime::Handle::current());
        tokio::task::spawn_blocking(move || {
            let state = open_state(&config, runtime, &telemetry, &stop)?;
            run_blocking(&config, &stop, hooks, &telemetry, state)
        })
    };
    tokio::pin!(worker);
    let result = tokio::select! {
        result = &mut worker => result.context("gate thread panicked")?,
        _ = shutdown => {
            // Stop first: a step between the two would otherwise say ready again.
            stop.store(true, Ordering::SeqCst);
            telemetry.set_ready(false, "draining: shutdown requested, finishing the window in flight");
            telemetry.health().set_phase(crate::telemetry::health::LoopPhase::Draining);
            worker.await.context("gate thread panicked")?
        }
    };
    telemetry.set_ready(false, "stopped");
    let _ = stop_http.send(());
    if let Some((_, task)) = server {
        let _ = task.await;
    }
    result
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// The model's short name, for `labelgate_build_info` and the model version on outputs.
pub fn model_name(config: &Config) -> String {
    let network = match &config.engine.model {
        crate::o2u::ModelConfig::Mlp { hidden } => format!("mlp-{}", hidden.iter().map(usize::to_string).collect::<Vec<_>>().join("x")),
        crate::o2u::ModelConfig::Cnn9 { .. } => "cnn9".into(),
    };
    // The features come from an encoder where one embeds the records: a verdict names it.
    let dir = match &config.encoder.image {
        Some(image) => image.model_dir.clone(),
        None if config.gate.input.is_text() => crate::encoder::model_dir::text_model_dir(config.encoder.text.model_dir.as_deref()),
        None => return network,
    };
    let encoder = dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned());
    format!("{network}+{encoder}")
}
