//! The `review-bridge` process: serves `/metrics`, `/healthz`, `/readyz` and the webhook route;
//! finds or makes the project (and its webhook); consumes the re-review topic in batches, imports
//! each batch and commits its offsets only once Label Studio has the tasks; polls answered tasks.
//! Whatever fails (Label Studio, Redis, Kafka) is retried with back-off while `/readyz` says 503,
//! and nothing is committed that is not done.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use rdkafka::{
    consumer::{CommitMode, Consumer, StreamConsumer},
    message::{Message, OwnedMessage},
    producer::FutureProducer,
    Offset, TopicPartitionList,
};

use super::{
    answers::{self, Forwarder, WebhookState},
    client::{LabelStudio, LsError},
    import::{self, Importer},
    metrics::BridgeMetrics,
    task,
    task_map::TaskMap,
};
use crate::{
    config::{Config, ConfigErrors},
    retry::{Backoff, Recovery},
    state::{redis::RedisState, StateError},
    telemetry::{http, Telemetry},
    wire::RereviewMessage,
};

/// The bridge's back-off: from 500 ms to 30 s (Label Studio restarts take tens of seconds).
fn backoff() -> Backoff {
    Backoff::new(Duration::from_millis(500), Duration::from_secs(30))
}

/// Readiness from the two loops: ready while both last succeeded.
struct Health {
    telemetry: Arc<Telemetry>,
    metrics: Arc<BridgeMetrics>,
    import_ok: AtomicBool,
    poll_ok: AtomicBool,
}

impl Health {
    fn set(&self, which: &AtomicBool, ok: bool, why: &str) {
        which.store(ok, Ordering::SeqCst);
        let ready = self.import_ok.load(Ordering::SeqCst) && self.poll_ok.load(Ordering::SeqCst);
        if ready != self.telemetry.is_ready() {
            self.telemetry.set_ready(ready, why);
        }
    }

    fn failed(&self, which: &AtomicBool, kind: &str, error: &dyn std::fmt::Display, retry_in: Duration) {
        self.metrics.errors.with_label_values(&[kind]).inc();
        if kind.starts_with("label_studio_") {
            self.metrics.label_studio_up.set(0);
        }
        tracing::warn!(error = %error, kind, retry_in = ?retry_in, "review bridge: retrying");
        self.set(which, false, kind);
    }

    /// A failure no retry fixes: counted, and not ready with it as the reason, until the bridge exits.
    fn stopped(&self, which: &AtomicBool, kind: &str) {
        self.metrics.errors.with_label_values(&[kind]).inc();
        self.set(which, false, kind);
    }

    fn ok(&self, which: &AtomicBool) {
        self.metrics.label_studio_up.set(1);
        self.set(which, true, "label studio answers");
    }
}

/// Runs until `shutdown` resolves: finishes the batch in flight, commits it and returns.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
    let bc = config.review_bridge.clone();
    let problems = bc.validate();
    if !problems.is_empty() {
        return Err(ConfigErrors(problems).into());
    }
    let telemetry = Arc::new(Telemetry::new(config.metrics.max_vendor_series, "review-bridge", "none"));
    let metrics = Arc::new(BridgeMetrics::new(telemetry.registry()));
    let health = Arc::new(Health { telemetry: telemetry.clone(), metrics: metrics.clone(), import_ok: AtomicBool::new(false), poll_ok: AtomicBool::new(false) });
    let webhook_state = Arc::new(WebhookState { secret: (!bc.webhook_url.is_empty()).then(|| bc.webhook_secret.clone()).flatten(), forwarder: Default::default() });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let (_, server) = http::serve_with(&bc.listen, "review_bridge.listen", telemetry.clone(), answers::webhook_router(webhook_state.clone()), stopped).await?;
    let stop_tx = Arc::new(stop_tx);
    let on_shutdown = stop_tx.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutdown requested: finishing the batch in flight");
        let _ = on_shutdown.send(true);
    });
    let result = bridge(&config, health, metrics, webhook_state, stop_rx.clone()).await;
    // Ended by itself (a failure waiting cannot fix): the HTTP server stops too.
    let _ = stop_tx.send(true);
    telemetry.set_ready(false, "stopped");
    let _ = server.await;
    result
}

/// Sleeps `d`, or less if asked to stop; true when stopping.
async fn pause(d: Duration, stop: &mut tokio::sync::watch::Receiver<bool>) -> bool {
    let slept = tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = stop.wait_for(|s| *s) => false,
    };
    !slept || *stop.borrow()
}

/// Retries `f` with back-off (not ready meanwhile) until it succeeds; `None` when stopping. A
/// failure that `recovery` says waiting cannot fix (a refused token, a bad setting) ends the
/// bridge with it, at once, instead of retrying it forever.
async fn retry<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    health: &Health,
    which: &AtomicBool,
    kind: impl Fn(&E) -> String,
    recovery: impl Fn(&E) -> Recovery,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    mut f: impl FnMut() -> F,
) -> Result<Option<T>> {
    let mut backoff = backoff();
    loop {
        if *stop.borrow() {
            return Ok(None);
        }
        match f().await {
            Ok(v) => return Ok(Some(v)),
            Err(e) if recovery(&e) == Recovery::Stop => {
                health.stopped(which, &kind(&e));
                anyhow::bail!("review bridge: {} ({e}); waiting cannot fix this", kind(&e));
            }
            Err(e) => {
                let wait = backoff.next_wait();
                health.failed(which, &kind(&e), &e, wait);
                if pause(wait, stop).await {
                    return Ok(None);
                }
            }
        }
    }
}

fn ls_kind(e: &LsError) -> String {
    format!("label_studio_{}", e.kind())
}

async fn open_map(config: &Config) -> Result<TaskMap, StateError> {
    if config.state.backend == crate::config::StateBackend::Memory {
        return Ok(TaskMap::memory());
    }
    let (redis, prefix) = (config.state.redis.clone(), config.state.redis.key_prefix.clone());
    let runtime = tokio::runtime::Handle::current();
    let state = tokio::task::spawn_blocking(move || RedisState::connect(&redis, runtime)).await.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
    Ok(TaskMap::Redis { connection: state.connection(), prefix })
}

async fn bridge(config: &Config, health: Arc<Health>, metrics: Arc<BridgeMetrics>, webhook_state: Arc<WebhookState>, mut stop: tokio::sync::watch::Receiver<bool>) -> Result<()> {
    let bc = &config.review_bridge;
    let timeout = Duration::from_secs(bc.request_timeout_secs);
    let client = Arc::new(LabelStudio::new(&bc.label_studio_url, bc.token.clone().expect("validated"), timeout)?);
    let import_ok = &health.import_ok;
    let state_kind = |e: &StateError| if matches!(e, StateError::Config { .. }) { "config".into() } else { "state".into() };
    let Some(map) = retry(&health, import_ok, state_kind, StateError::recovery, &mut stop, || open_map(config)).await? else {
        return Ok(());
    };
    let map = Arc::new(map);
    let label_config = task::label_config(&config.gate.classes);
    let Some(project) = retry(&health, import_ok, ls_kind, LsError::recovery, &mut stop, || import::ensure_project(&client, &bc.project_title, &label_config)).await? else {
        return Ok(());
    };
    tracing::info!(project, url = client.base_url(), "review bridge: Label Studio project ready");
    if let Some(secret) = &webhook_state.secret {
        let url = bc.webhook_url.clone();
        if retry(&health, import_ok, ls_kind, LsError::recovery, &mut stop, || answers::ensure_webhook(&client, project, &url, secret)).await?.is_none() {
            return Ok(());
        }
    }
    let producer: FutureProducer = crate::service::client_config(config).set("enable.idempotence", "true").set("message.timeout.ms", "10000").create().context("reviews producer")?;
    let forwarder = Arc::new(Forwarder::new(producer, config.kafka.reviews_topic.clone(), map.clone(), client.clone(), metrics.clone(), project, config.gate.classes.clone()));
    let _ = webhook_state.forwarder.set(forwarder.clone());
    let poller = tokio::spawn(poll_loop(forwarder.clone(), health.clone(), Duration::from_secs(bc.poll_interval_secs), stop.clone()));
    let importer = Importer { client, map, metrics: metrics.clone(), project, request_timeout: timeout };
    let result = import_loop(config, &importer, &health, &metrics, &mut stop).await;
    let _ = poller.await;
    result
}

async fn poll_loop(forwarder: Arc<Forwarder>, health: Arc<Health>, every: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut backoff = backoff();
    // Polls start every `every` (not `every` after the last one ended), so an answer the webhook
    // missed arrives within one interval plus one export.
    let mut next = Instant::now();
    loop {
        let wait = match forwarder.poll_once().await {
            Ok(n) => {
                if n > 0 {
                    tracing::info!(answers = n, "poll forwarded answers the webhook did not");
                }
                backoff.reset();
                health.ok(&health.poll_ok);
                next += every;
                next.saturating_duration_since(Instant::now())
            }
            Err(e) => {
                let wait = backoff.next_wait().min(every);
                health.failed(&health.poll_ok, &e.kind(), &e, wait);
                next = Instant::now() + wait;
                wait
            }
        };
        if Instant::now() > next {
            // Slower than the interval: start again now, without piling up.
            next = Instant::now();
        }
        if pause(wait, &mut stop).await {
            return;
        }
    }
}

/// The next batch: up to `size` messages, sent when full or `linger` after its first.
async fn next_batch(consumer: &StreamConsumer, size: usize, linger: Duration, stop: &mut tokio::sync::watch::Receiver<bool>) -> Result<Option<Vec<OwnedMessage>>> {
    let first = tokio::select! {
        m = consumer.recv() => m?.detach(),
        _ = stop.wait_for(|s| *s) => return Ok(None),
        // Nothing to read: still report progress (readiness) to the caller.
        _ = tokio::time::sleep(Duration::from_secs(5)) => return Ok(Some(vec![])),
    };
    let mut batch = vec![first];
    let deadline = Instant::now() + linger;
    while batch.len() < size {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, consumer.recv()).await {
            Ok(m) => batch.push(m?.detach()),
            Err(_) => break,
        }
    }
    Ok(Some(batch))
}

async fn import_loop(config: &Config, importer: &Importer, health: &Health, metrics: &BridgeMetrics, stop: &mut tokio::sync::watch::Receiver<bool>) -> Result<()> {
    let bc = &config.review_bridge;
    let consumer: StreamConsumer = crate::service::client_config(config)
        .set("group.id", &bc.group_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .context("re-review consumer")?;
    consumer.subscribe(&[&config.kafka.rereview_topic]).context("subscribe to kafka.rereview_topic")?;
    let import_ok = &health.import_ok;
    // Settle what a crash left before reading anything.
    if retry(health, import_ok, import::ImportError::kind, import::ImportError::recovery, stop, || importer.reconcile()).await?.is_none() {
        return Ok(());
    }
    health.ok(import_ok);
    loop {
        let batch = match next_batch(&consumer, bc.import_batch_size, Duration::from_millis(bc.import_linger_ms), stop).await {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(()),
            Err(e) => {
                health.failed(import_ok, "kafka", &e, Duration::from_secs(1));
                if pause(Duration::from_secs(1), stop).await {
                    return Ok(());
                }
                continue;
            }
        };
        if batch.is_empty() {
            continue;
        }
        let mut suspects = Vec::with_capacity(batch.len());
        let mut written_ms = Vec::with_capacity(batch.len());
        let mut offsets = TopicPartitionList::new();
        for m in &batch {
            match serde_json::from_slice::<RereviewMessage>(m.payload().unwrap_or_default()) {
                Ok(s) => {
                    suspects.push(s);
                    written_ms.push(m.timestamp().to_millis());
                }
                Err(e) => {
                    // Not a suspect record: reported with its position, never retried.
                    metrics.suspects_rejected.with_label_values(&["invalid"]).inc();
                    tracing::error!(partition = m.partition(), offset = m.offset(), error = %e, "unreadable re-review record skipped");
                }
            }
            offsets.add_partition_offset(m.topic(), m.partition(), Offset::Offset(m.offset() + 1))?;
        }
        // Reconcile first on every retry: the failed attempt may have made some tasks.
        let imported = retry(health, import_ok, import::ImportError::kind, import::ImportError::recovery, stop, || async {
            importer.reconcile().await?;
            importer.import(&suspects).await
        })
        .await?;
        let Some(imported) = imported else { return Ok(()) };
        health.ok(import_ok);
        let now = import::now_ms() as i64;
        for t in written_ms.into_iter().flatten() {
            metrics.import_lag.observe((now - t).max(0) as f64 / 1000.0);
        }
        tracing::debug!(?imported, "batch imported");
        // Only now may the batch's offsets be committed; a failed commit replays the batch, and the
        // task map keeps the replay from making tasks twice.
        if let Err(e) = consumer.commit(&offsets, CommitMode::Sync) {
            health.failed(import_ok, "kafka", &e, Duration::ZERO);
        }
    }
}
