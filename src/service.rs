//! The Kafka edge of the gate: consumes the input topic, feeds the gate, trains windows on their
//! own thread, and writes each window's outputs, its progress record and the input offsets in
//! one Kafka transaction, so every input record lands in exactly one of accepted / re-review /
//! dead-letter, once, across crashes and rebalances (see docs/delivery-guarantee.md).

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    config::ClientConfig,
    consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance},
    error::KafkaError,
    message::{Header, OwnedHeaders},
    producer::{BaseProducer, BaseRecord, Producer},
    types::RDKafkaErrorCode,
    ClientContext, Message, Offset, TopicPartitionList,
};
use serde::Serialize;

use crate::{
    accuracy::{self, ReviewStats},
    config::Config,
    device::{self, DeviceChoice},
    gate::{
        window::{self, WindowScores},
        Commit, Gate, Ingested, InputMessage, Output, PartitionProgress, SourcePos, WindowJob,
    },
    o2u::{EpochReport, TrainingObserver},
    state::{redis::RedisState, MemoryState, Review, StateError, StateStore},
    telemetry::{http, Telemetry},
    wire::{headers, VerdictMessage},
};

const TXN_TIMEOUT: Duration = Duration::from_secs(30);

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

/// Runs the gate until `shutdown` resolves, then finishes the window in flight, commits and
/// returns. Serves `/metrics`, `/healthz` and `/readyz` on `metrics.listen` meanwhile.
pub async fn run(config: Config, hooks: Hooks, shutdown: impl Future<Output = ()>) -> Result<RunSummary> {
    let telemetry = Arc::new(Telemetry::new(config.metrics.max_vendor_series, &model_name(&config), &config.runtime.device));
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = if config.metrics.listen.is_empty() {
        None
    } else {
        Some(http::serve(&config.metrics.listen, telemetry.clone(), async move {
            let _ = http_stopped.await;
        })
        .await?)
    };
    let stop = Arc::new(AtomicBool::new(false));
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
            tracing::info!("shutdown requested: finishing the window in flight");
            telemetry.set_ready(false, "draining");
            stop.store(true, Ordering::SeqCst);
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

/// The configured state store; Redis is retried with back-off until it answers or `stop` is set.
pub fn open_state(config: &Config, runtime: tokio::runtime::Handle, telemetry: &Telemetry, stop: &AtomicBool) -> Result<Arc<dyn StateStore>> {
    if config.state.backend == "memory" {
        return Ok(Arc::new(MemoryState::default()));
    }
    let mut backoff = Backoff::new();
    loop {
        match RedisState::connect(&config.state.redis, runtime.clone()) {
            Ok(s) => return Ok(Arc::new(s)),
            Err(e @ StateError::Config(_)) => return Err(e.into()),
            Err(e) => {
                if stop.load(Ordering::SeqCst) {
                    bail!("stopping before the state store answered: {e}");
                }
                let wait = backoff.next();
                telemetry.state_error("connect", &e, wait);
                thread::sleep(wait);
            }
        }
    }
}

/// Exponential back-off from 250 ms to 10 s.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Self(Duration::from_millis(250))
    }

    fn next(&mut self) -> Duration {
        let now = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(10));
        now
    }
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

/// Properties shared by every client.
pub fn client_config(config: &Config) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.kafka.bootstrap_servers);
    for (k, v) in &config.kafka.client {
        c.set(k, v);
    }
    if let Some(p) = &config.kafka.sasl_password {
        c.set("sasl.password", p.expose());
    }
    c
}

/// This replica's stable name: transactions of a crashed replica are aborted as soon as it
/// restarts under the same name.
pub fn instance_id(config: &Config) -> String {
    if !config.kafka.instance_id.is_empty() {
        return config.kafka.instance_id.clone();
    }
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_string()))
        .unwrap_or_else(|| "labelgate".into())
}

enum RebalanceEvent {
    Assigned(Vec<i32>),
    Revoked(Vec<i32>),
}

struct GateContext {
    topic: String,
    events: Mutex<Vec<RebalanceEvent>>,
    /// Records behind the high watermark over the assigned input partitions (librdkafka stats).
    lag: std::sync::atomic::AtomicI64,
}

impl ClientContext for GateContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let lag: i64 = statistics
            .topics
            .get(&self.topic)
            .map(|t| t.partitions.values().filter(|p| p.partition >= 0 && p.consumer_lag >= 0).map(|p| p.consumer_lag).sum())
            .unwrap_or(0);
        self.lag.store(lag, Ordering::Relaxed);
    }
}

impl ConsumerContext for GateContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let parts = tpl.elements_for_topic(&self.topic).iter().map(|e| e.partition()).collect();
            self.events.lock().unwrap().push(RebalanceEvent::Revoked(parts));
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let parts = tpl.elements_for_topic(&self.topic).iter().map(|e| e.partition()).collect();
            self.events.lock().unwrap().push(RebalanceEvent::Assigned(parts));
        }
    }
}

/// Creates the output and progress topics if they are missing (the progress topic compacted).
pub async fn ensure_topics(config: &Config, partitions: i32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(config).create().context("admin client")?;
    let k = &config.kafka;
    let plain = [&k.input_topic, &k.accepted_topic, &k.rereview_topic, &k.verdicts_topic, &k.dlq_topic, &k.reviews_topic];
    let mut topics: Vec<NewTopic> = plain.iter().map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1))).collect();
    topics.push(NewTopic::new(&k.progress_topic, 1, TopicReplication::Fixed(1)).set("cleanup.policy", "compact"));
    let results = admin.create_topics(&topics, &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)))).await?;
    for r in results {
        if let Err((topic, code)) = r {
            if code != RDKafkaErrorCode::TopicAlreadyExists {
                bail!("cannot create topic {topic}: {code}");
            }
        }
    }
    Ok(())
}

/// Reads a topic from the beginning to its current end (committed data only). Meant for the
/// topics the gate writes: they are written in transactions, so each partition's last offset is
/// a commit marker, which is why a consumer position one short of the end counts as done.
pub fn read_topic(config: &Config, topic: &str, mut each: impl FnMut(&[u8], &[u8])) -> Result<()> {
    read_topic_messages(config, topic, |m| each(m.key().unwrap_or_default(), m.payload().unwrap_or_default()))
}

/// Like [`read_topic`], with the whole message (headers, partition, offset).
pub fn read_topic_messages(config: &Config, topic: &str, mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>)) -> Result<()> {
    let consumer: BaseConsumer = client_config(config)
        .set("group.id", format!("{}-reader", config.kafka.group_id))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let Some(t) = metadata.topics().first() else { return Ok(()) };
    let mut ends = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in t.partitions() {
        let (low, high) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
        if high > low {
            ends.insert(p.id(), high);
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
        }
    }
    if ends.is_empty() {
        return Ok(());
    }
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ends.is_empty() && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                each(&m);
                // Transaction markers take offsets too: done once the next offset reaches the end.
                if m.offset() + 1 >= ends[&m.partition()] {
                    ends.remove(&m.partition());
                }
            }
            Some(Err(e)) => return Err(e.into()),
            None => {
                // The last records may be transaction markers with no message to deliver.
                let position = consumer.position()?;
                for e in position.elements() {
                    if let Offset::Offset(o) = e.offset() {
                        if ends.get(&e.partition()).is_some_and(|&end| o >= end - 1) {
                            ends.remove(&e.partition());
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

fn progress_key(config: &Config, partition: i32) -> String {
    format!("{}/{partition}", config.kafka.input_topic)
}

struct Trainer {
    jobs: mpsc::Sender<WindowJob>,
    results: mpsc::Receiver<(WindowJob, candle_core::Result<WindowScores>)>,
}

fn start_trainer(config: &Config, hooks: &Hooks) -> Trainer {
    let (job_tx, job_rx) = mpsc::channel::<WindowJob>();
    let (res_tx, res_rx) = mpsc::channel();
    let engine = config.engine.clone();
    let policy = config.gate.window_policy();
    let choice = if config.runtime.device == "cuda" { DeviceChoice::Cuda } else { DeviceChoice::Cpu };
    let on_epoch = hooks.on_epoch.clone();
    thread::Builder::new()
        .name("labelgate-window".into())
        .spawn(move || {
            // Kernel threads are set once at start-up (`device::set_cpu_threads` writes the
            // environment, which must not happen while other threads run).
            let dev = device::select(choice);
            struct Hook(Option<EpochHook>);
            impl TrainingObserver for Hook {
                fn on_epoch(&mut self, r: &EpochReport) {
                    if let Some(f) = &self.0 {
                        f(r)
                    }
                }
            }
            while let Ok(mut job) = job_rx.recv() {
                let data = job.take_data();
                let result = window::score_window(data, &engine, &policy, &dev, &mut Hook(on_epoch.clone()));
                if res_tx.send((job, result)).is_err() {
                    break;
                }
            }
        })
        .expect("window thread");
    Trainer { jobs: job_tx, results: res_rx }
}

/// Up to this many messages are taken per poll round and parsed in parallel.
const POLL_BATCH: usize = 512;

/// Polls up to [`POLL_BATCH`] messages (waiting up to `wait` for the first). A rebalance ends
/// the batch: the messages polled before it are returned first, and a message that came with the
/// rebalance (it belongs to the new assignment) second, to be ingested after the rebalance is
/// handled. Consumer errors are logged and skipped.
fn poll_batch(consumer: &BaseConsumer<GateContext>, wait: Duration) -> (Vec<InputMessage>, Vec<InputMessage>) {
    let mut batch = Vec::new();
    let mut timeout = wait;
    while batch.len() < POLL_BATCH {
        let polled = match consumer.poll(timeout) {
            Some(Ok(m)) => Some(InputMessage {
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                pos: SourcePos { partition: m.partition(), offset: m.offset() },
            }),
            Some(Err(e)) => {
                tracing::warn!("consumer: {e}");
                None
            }
            None => break,
        };
        if !consumer.context().events.lock().unwrap().is_empty() {
            return (batch, polled.into_iter().collect());
        }
        batch.extend(polled);
        timeout = Duration::ZERO;
    }
    (batch, Vec::new())
}

/// Parses a batch on the parser pool (JSON number parsing is most of the ingest cost), then
/// ingests it in order.
fn ingest_batch(gate: &mut Gate, parsers: &rayon::ThreadPool, batch: Vec<InputMessage>, summary: &mut RunSummary) {
    use rayon::prelude::*;
    let now = Instant::now();
    let parsed: Vec<_> = parsers.install(|| batch.par_iter().map(|m| gate.schema().parse(&m.payload)).collect());
    for (msg, parsed) in batch.into_iter().zip(parsed) {
        summary.consumed += 1;
        if gate.ingest_parsed(msg, parsed, now) == Ingested::Skipped {
            summary.skipped += 1;
        }
    }
}

fn parser_pool() -> Result<rayon::ThreadPool> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).min(4);
    Ok(rayon::ThreadPoolBuilder::new().num_threads(threads).thread_name(|i| format!("labelgate-parse-{i}")).build()?)
}

fn input_consumer(config: &Config) -> Result<BaseConsumer<GateContext>> {
    let k = &config.kafka;
    let context = GateContext { topic: k.input_topic.clone(), events: Mutex::new(Vec::new()), lag: Default::default() };
    let mut consumer_config = client_config(config);
    consumer_config
        .set("group.id", &k.group_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        // Larger per-partition fetches, a larger prefetch queue, and a short back-off when it is
        // full: librdkafka's default 1 s back-off left the gate idle a third of the time while
        // it parsed (ingest went from 0.51× to about 0.85× of kcat's raw read).
        .set("fetch.message.max.bytes", (k.max_message_bytes + 65_536).max(8 << 20).to_string())
        .set("fetch.queue.backoff.ms", "5")
        .set("queued.max.messages.kbytes", "262144")
        // Consumer lag for the metrics comes from librdkafka's statistics.
        .set("statistics.interval.ms", "5000");
    // The operator's kafka.client settings win over these defaults.
    for (key, value) in &k.client {
        consumer_config.set(key, value);
    }
    let consumer: BaseConsumer<GateContext> = consumer_config.create_with_context(context).context("consumer")?;
    consumer.subscribe(&[&k.input_topic]).context("subscribe")?;
    Ok(consumer)
}

/// Consumes `records` input records through the gate's own consumer settings, parser and
/// buffer, with no window running; returns the seconds from the first record to the last.
pub fn measure_ingest(config: &Config, records: u64) -> Result<f64> {
    let consumer = input_consumer(config)?;
    let parsers = parser_pool()?;
    let mut gate = Gate::new(config.gate.clone(), config.kafka.max_message_bytes, "bench".into(), "bench".into());
    let mut summary = RunSummary::default();
    let mut started = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    while summary.consumed < records && Instant::now() < deadline {
        consumer.context().events.lock().unwrap().clear();
        let (mut batch, after) = poll_batch(&consumer, Duration::from_millis(100));
        batch.extend(after);
        if !batch.is_empty() {
            started.get_or_insert_with(Instant::now);
            ingest_batch(&mut gate, &parsers, batch, &mut summary);
        }
    }
    if summary.consumed < records {
        bail!("consumed {} of {records} records in 600 s", summary.consumed);
    }
    Ok(started.map_or(0.0, |s| s.elapsed().as_secs_f64()))
}

/// The reviews consumer: its own group, offsets committed after each review is stored (the store
/// counts a replayed review once, so at-least-once delivery here is enough).
fn reviews_consumer(config: &Config) -> Result<BaseConsumer> {
    let consumer: BaseConsumer = client_config(config)
        .set("group.id", format!("{}-reviews", config.kafka.group_id))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .context("reviews consumer")?;
    consumer.subscribe(&[&config.kafka.reviews_topic]).context("subscribe to the reviews topic")?;
    Ok(consumer)
}

const VENDOR_REFRESH: Duration = Duration::from_secs(60);

/// Calls the state store until it answers. While it does not: not ready, input paused (polled
/// only to stay in the group; anything that still arrives waits in `stash`), retried with
/// back-off. A revocation meanwhile stops the gate: nothing of the pending work was committed,
/// so a restart resumes from the last transaction. Returns the value and whether the input was
/// paused here (the caller restores its own pause state).
fn with_state<T>(
    op: &str,
    telemetry: &Telemetry,
    stop: &AtomicBool,
    consumer: Option<&BaseConsumer<GateContext>>,
    stash: &mut Vec<InputMessage>,
    mut call: impl FnMut() -> Result<T, StateError>,
) -> Result<(T, bool)> {
    let mut backoff = Backoff::new();
    let mut failed_since: Option<Instant> = None;
    // Readiness is given back only if this outage took it (not during start-up).
    let was_ready = telemetry.is_ready();
    loop {
        match call() {
            Ok(v) => {
                if failed_since.is_some() && was_ready {
                    telemetry.set_ready(!stop.load(Ordering::SeqCst), "state store answers again");
                }
                return Ok((v, failed_since.is_some()));
            }
            // Retrying cannot fix data; stop with the key instead of stalling not-ready forever.
            Err(e @ StateError::Corrupt { .. }) => return Err(anyhow::Error::new(e).context(format!("state store: {op}"))),
            Err(e) => {
                let wait = backoff.next();
                telemetry.state_error(op, &e, wait);
                if failed_since.is_none() {
                    failed_since = Some(Instant::now());
                    telemetry.set_ready(false, "state store unreachable");
                    if let Some(c) = consumer {
                        c.pause(&c.assignment()?)?;
                    }
                }
                if stop.load(Ordering::SeqCst) && failed_since.is_some_and(|t| t.elapsed() > Duration::from_secs(20)) {
                    bail!("stopping while the state store is unreachable ({e}); nothing pending was committed and a restart resumes from the last transaction");
                }
                let until = Instant::now() + wait;
                while Instant::now() < until {
                    let Some(c) = consumer else {
                        thread::sleep(Duration::from_millis(50));
                        continue;
                    };
                    let (before, after) = poll_batch(c, Duration::from_millis(100));
                    stash.extend(before);
                    stash.extend(after);
                    // Stashed records must not be ingested ahead of an assignment's progress record,
                    // and a revocation invalidates the pending commit: either way, restart.
                    if !c.context().events.lock().unwrap().is_empty() {
                        bail!("a rebalance arrived while the state store was unreachable; a restart resumes from the last committed transaction");
                    }
                }
            }
        }
    }
}

/// Refreshes each vendor's gauges from its history in the state store. A failure leaves the
/// gauges as they were (the next window retries).
fn refresh_vendor_gauges(config: &Config, state: &dyn StateStore, telemetry: &Telemetry, vendors: &[String]) {
    let since = crate::clock::unix_millis().saturating_sub(config.gate.vendor_accuracy_window_secs * 1000);
    for v in vendors {
        let figures = state.vendor_history(v, since).and_then(|h| Ok((h, state.review_stats(v)?)));
        match figures {
            Ok((history, _)) if history.is_empty() => telemetry.vendor_idle(v),
            Ok((history, reviews)) => telemetry.vendor_updated(
                v,
                accuracy::rolling_accuracy(&history, reviews, config.gate.min_reviews),
                config.gate.sla(v),
                accuracy::rolling_gold_accuracy(&history),
                reviews.precision(),
            ),
            Err(e) => tracing::warn!(vendor = %v, error = %e, "vendor gauges not refreshed"),
        }
    }
}

/// Stores the reviews that arrived; commits their offsets once stored.
fn process_reviews(
    config: &Config,
    reviews: &BaseConsumer,
    state: &dyn StateStore,
    telemetry: &Telemetry,
    stop: &AtomicBool,
    input: &BaseConsumer<GateContext>,
    stash: &mut Vec<InputMessage>,
) -> Result<bool> {
    let mut paused_here = false;
    for _ in 0..256 {
        let m = match reviews.poll(Duration::ZERO) {
            None => break,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "reviews consumer");
                break;
            }
            Some(Ok(m)) => m,
        };
        match serde_json::from_slice::<Review>(m.payload().unwrap_or_default()) {
            Err(e) => telemetry.review_invalid(m.partition(), m.offset(), &e),
            Ok(review) => {
                let (outcome, paused) = with_state("record_review", telemetry, stop, Some(input), stash, || state.record_review(&review))?;
                paused_here |= paused;
                let mut vendors: Vec<String> = Vec::new();
                for (vendor, wrong) in outcome {
                    telemetry.review_recorded(&vendor, wrong);
                    vendors.push(vendor);
                }
                refresh_vendor_gauges(config, state, telemetry, &vendors);
            }
        }
        reviews.commit_message(&m, rdkafka::consumer::CommitMode::Async)?;
    }
    Ok(paused_here)
}

/// The gate loop on the calling thread until `stop` is set.
pub fn run_blocking(config: &Config, stop: &AtomicBool, hooks: Hooks, telemetry: &Telemetry, state: Arc<dyn StateStore>) -> Result<RunSummary> {
    let k = &config.kafka;
    let instance = instance_id(config);
    let model_version = format!("labelgate-{}/o2u-{}", env!("CARGO_PKG_VERSION"), model_name(config));
    let mut gate = Gate::new(config.gate.clone(), k.max_message_bytes, model_version, instance.clone());
    let mut summary = RunSummary::default();
    let mut stash: Vec<InputMessage> = Vec::new();

    // Deliveries gated before: late records and repeated batch_ends go to the DLQ.
    read_topic(config, &k.verdicts_topic, |key, _| gate.remember_gated(String::from_utf8_lossy(key).into_owned()))?;
    let (pool, _) = with_state("load_pool", telemetry, stop, None, &mut stash, || state.load_pool(config.gate.classes.len()))?;
    let restored = gate.restore_pool(pool);
    tracing::info!(restored, "reference pool loaded from the state store");

    let producer: BaseProducer = client_config(config)
        .set("transactional.id", format!("{}-{}", k.transactional_id_prefix, instance))
        .set("transaction.timeout.ms", "60000")
        .set("enable.idempotence", "true")
        .set("message.max.bytes", (k.max_message_bytes + 65_536).to_string())
        .create()
        .context("transactional producer")?;
    producer.init_transactions(TXN_TIMEOUT).context("init_transactions: is the broker reachable and does it support transactions?")?;

    let consumer = input_consumer(config)?;
    let reviews = reviews_consumer(config)?;

    let trainer = start_trainer(config, &hooks);
    let parsers = parser_pool()?;
    // When the window now training started; everything else about it travels with the job.
    let mut in_flight: Option<Instant> = None;
    let mut revoked_during_window: Vec<i32> = Vec::new();
    let mut paused = false;
    let mut last_flush = Instant::now();
    // Vendor gauges age out of the accuracy window and other replicas gate the same vendors:
    // refresh every known vendor from the store now and then, not only after own windows.
    let mut last_vendor_refresh = Instant::now();
    telemetry.set_ready(true, "consuming");

    loop {
        let stopping = stop.load(Ordering::SeqCst);
        if stopping && in_flight.is_none() {
            break;
        }
        let (mut before, after) = if stopping {
            // Not consuming any more: wait for the window in flight without spinning.
            thread::sleep(Duration::from_millis(20));
            Default::default()
        } else {
            poll_batch(&consumer, Duration::from_millis(50))
        };
        if !stash.is_empty() {
            before.splice(0..0, stash.drain(..));
        }
        ingest_batch(&mut gate, &parsers, before, &mut summary);
        for event in consumer.context().events.lock().unwrap().drain(..) {
            match event {
                RebalanceEvent::Revoked(parts) => {
                    for p in parts {
                        tracing::info!(partition = p, "partition revoked");
                        gate.revoke(p);
                        if in_flight.is_some() {
                            revoked_during_window.push(p);
                        }
                    }
                }
                RebalanceEvent::Assigned(parts) => {
                    let mut progress: HashMap<String, PartitionProgress> = HashMap::new();
                    read_topic(config, &k.progress_topic, |key, value| {
                        if let Ok(p) = serde_json::from_slice::<PartitionProgress>(value) {
                            progress.insert(String::from_utf8_lossy(key).into_owned(), p);
                        }
                    })?;
                    for p in parts {
                        tracing::info!(partition = p, "partition assigned");
                        gate.assign(p, progress.remove(&progress_key(config, p)));
                    }
                }
            }
        }
        ingest_batch(&mut gate, &parsers, after, &mut summary);
        let now = Instant::now();
        gate.close_idle(now);
        let mut state_paused = false;
        if !stopping {
            state_paused |= process_reviews(config, &reviews, state.as_ref(), telemetry, stop, &consumer, &mut stash)?;
        }

        if in_flight.is_none() && !stopping && gate.window_due(now) {
            if let Some(mut job) = gate.take_window() {
                tracing::info!(window = %job.id, records = job.records(), deliveries = job.deliveries(), "window started");
                if let Some(e) = state.mark_scoring(&job.id, &job.batch_ids()).err() {
                    tracing::warn!(window = %job.id, error = %e, "delivery states not marked `scoring`");
                }
                if let Some(f) = &hooks.on_window_start {
                    f(&job.id, job.records(), job.deliveries());
                }
                // Earlier windows' labels of the same samples, so agreement spans windows.
                let (prior, p) = with_state("sample_labels", telemetry, stop, Some(&consumer), &mut stash, || state.sample_labels(&job.data.distinct_sample_ids()))?;
                state_paused |= p;
                job.data.attach_prior_labels(prior);
                in_flight = Some(Instant::now());
                trainer.jobs.send(job).context("window thread gone")?;
            }
        }
        match trainer.results.try_recv() {
            Ok((job, result)) => {
                let started = in_flight.take().expect("a window was in flight");
                let trained = Instant::now();
                let (window_id, first_closed, records, deliveries) = (job.id.clone(), job.first_closed, job.records(), job.deliveries());
                let scores = result.with_context(|| format!("window {} failed", job.id))?;
                if !revoked_during_window.is_empty() {
                    // Its records may now belong to another replica: put back what is still ours.
                    gate.requeue(job, &revoked_during_window);
                    revoked_during_window.clear();
                    continue;
                }
                let vendors = job.vendors();
                let mut review_stats: HashMap<String, ReviewStats> = HashMap::new();
                for v in &vendors {
                    let (stats, p) = with_state("review_stats", telemetry, stop, Some(&consumer), &mut stash, || state.review_stats(v))?;
                    state_paused |= p;
                    review_stats.insert(v.clone(), stats);
                }
                let commit = gate.finish_window(job, &scores, &review_stats, crate::clock::unix_millis());
                // Vendors of earlier deliveries that this window's agreement revised, too.
                let vendors = commit.state.vendors();
                // State first, then the transaction: a crash between them replays the window,
                // and every state write is idempotent.
                let ((), p) = with_state("save_window", telemetry, stop, Some(&consumer), &mut stash, || state.save_window(&commit.state))?;
                state_paused |= p;
                summary.windows += 1;
                commit_transaction(config, &producer, &consumer, &commit, &mut summary, &hooks, telemetry)?;
                let timing = WindowTiming {
                    records,
                    deliveries,
                    waiting_seconds: started.duration_since(first_closed).as_secs_f64(),
                    training_seconds: trained.duration_since(started).as_secs_f64(),
                    producing_seconds: trained.elapsed().as_secs_f64(),
                };
                telemetry.window_committed(&window_id, &timing, scores.final_loss, &scores.evidence);
                refresh_vendor_gauges(config, state.as_ref(), telemetry, &vendors);
                summary.window_timings.push(timing);
            }
            Err(mpsc::TryRecvError::Empty) => {}
            Err(mpsc::TryRecvError::Disconnected) => bail!("window thread stopped"),
        }
        if in_flight.is_none() && (last_flush.elapsed() >= Duration::from_millis(500) || stopping) {
            last_flush = Instant::now();
            if let Some(commit) = gate.flush_dead_letters() {
                commit_transaction(config, &producer, &consumer, &commit, &mut summary, &hooks, telemetry)?;
            }
        }

        // Backpressure: stop fetching while the buffer is at its bound. A state-store outage
        // paused everything; from here the buffer alone decides again.
        if state_paused {
            paused = true;
        }
        if gate.is_full() != paused {
            let assignment = consumer.assignment()?;
            if gate.is_full() { consumer.pause(&assignment)? } else { consumer.resume(&assignment)? }
            paused = !paused;
            summary.pauses += paused as u64;
            tracing::info!(paused, buffered = gate.buffered(), "backpressure");
        }
        telemetry.set_buffered(gate.buffered());
        telemetry.set_consumer_lag(consumer.context().lag.load(Ordering::Relaxed));
        if last_vendor_refresh.elapsed() >= VENDOR_REFRESH {
            last_vendor_refresh = Instant::now();
            refresh_vendor_gauges(config, state.as_ref(), telemetry, &telemetry.known_vendors());
        }
    }
    if let Some(commit) = gate.flush_dead_letters() {
        commit_transaction(config, &producer, &consumer, &commit, &mut summary, &hooks, telemetry)?;
    }
    consumer.unsubscribe();
    tracing::info!(?summary, "gate stopped");
    Ok(summary)
}

fn model_name(config: &Config) -> String {
    match &config.engine.model {
        crate::o2u::ModelConfig::Mlp { hidden } => format!("mlp-{}", hidden.iter().map(usize::to_string).collect::<Vec<_>>().join("x")),
        crate::o2u::ModelConfig::Cnn9 { .. } => "cnn9".into(),
    }
}

fn send(producer: &BaseProducer, mut record: BaseRecord<'_, [u8], [u8]>) -> Result<()> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                producer.poll(Duration::from_millis(10));
                record = r;
            }
            Err((e, _)) => return Err(e.into()),
        }
    }
}

/// Outputs, progress and input offsets in one transaction; any failure aborts it and stops the
/// gate (a restart resumes from the last committed transaction).
fn commit_transaction(
    config: &Config,
    producer: &BaseProducer,
    consumer: &BaseConsumer<GateContext>,
    commit: &Commit,
    summary: &mut RunSummary,
    hooks: &Hooks,
    telemetry: &Telemetry,
) -> Result<()> {
    let k = &config.kafka;
    let result = (|| -> Result<()> {
        producer.begin_transaction()?;
        // (topic, key, value, headers) of every output, built before anything is sent.
        type Outgoing = (String, Option<Vec<u8>>, Vec<u8>, OwnedHeaders);
        let mut payloads: Vec<Outgoing> = Vec::with_capacity(commit.outputs.len());
        for o in &commit.outputs {
            payloads.push(match o {
                Output::Accepted { key, payload, score, window_id, .. } => (
                    k.accepted_topic.clone(),
                    key.clone(),
                    payload.clone(),
                    OwnedHeaders::new()
                        .insert(Header { key: headers::SCORE, value: Some(&score.to_string()) })
                        .insert(Header { key: headers::WINDOW, value: Some(window_id.as_str()) }),
                ),
                Output::Rereview(r) => (k.rereview_topic.clone(), Some(r.batch_id.clone().into_bytes()), serde_json::to_vec(r)?, OwnedHeaders::new()),
                Output::Verdict(v) => (k.verdicts_topic.clone(), Some(v.batch_id.clone().into_bytes()), serde_json::to_vec(v)?, OwnedHeaders::new()),
                Output::DeadLetter { key, payload, reason, message, pos } => (
                    k.dlq_topic.clone(),
                    key.clone(),
                    payload.clone(),
                    OwnedHeaders::new()
                        .insert(Header { key: headers::ERROR_CLASS, value: Some(reason.as_str()) })
                        .insert(Header { key: headers::ERROR_MESSAGE, value: Some(message.as_str()) })
                        .insert(Header { key: headers::SOURCE_TOPIC, value: Some(k.input_topic.as_str()) })
                        .insert(Header { key: headers::SOURCE_PARTITION, value: Some(&pos.partition.to_string()) })
                        .insert(Header { key: headers::SOURCE_OFFSET, value: Some(&pos.offset.to_string()) }),
                ),
            });
        }
        for (topic, key, payload, hdrs) in &payloads {
            let mut rec = BaseRecord::<[u8], [u8]>::to(topic).payload(payload.as_slice()).headers(hdrs.clone());
            if let Some(key) = key {
                rec = rec.key(key.as_slice());
            }
            send(producer, rec)?;
        }
        let mut offsets = TopicPartitionList::new();
        for p in &commit.progress {
            let key = progress_key(config, p.partition);
            let value = serde_json::to_vec(p)?;
            send(producer, BaseRecord::<[u8], [u8]>::to(&k.progress_topic).key(key.as_bytes()).payload(&value))?;
            offsets.add_partition_offset(&k.input_topic, p.partition, Offset::Offset(p.commit_offset))?;
        }
        if offsets.count() > 0 {
            let group = consumer.group_metadata().context("no consumer group metadata")?;
            producer.send_offsets_to_transaction(&offsets, &group, TXN_TIMEOUT)?;
        }
        producer.commit_transaction(TXN_TIMEOUT)?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = producer.abort_transaction(TXN_TIMEOUT);
        return Err(e.context("transaction failed; the gate stops and a restart resumes from the last committed transaction"));
    }
    summary.transactions += 1;
    for o in &commit.outputs {
        match o {
            Output::Accepted { vendor_id, .. } => {
                summary.accepted += 1;
                telemetry.record_routed(Some(vendor_id), "accepted");
            }
            Output::Rereview(r) => {
                summary.rereview += 1;
                telemetry.record_routed(Some(&r.vendor_id), "rereview");
            }
            Output::Verdict(v) => {
                summary.verdicts += 1;
                telemetry.delivery_gated(v);
                if let Some(f) = &hooks.on_verdict {
                    f(v);
                }
            }
            Output::DeadLetter { reason, .. } => {
                *summary.dead_letters.entry(reason.as_str().to_string()).or_default() += 1;
                telemetry.dead_letter(None, reason.as_str());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// librdkafka is built with TLS, SASL/SCRAM and the compression codecs producers use: a
    /// build without them refuses these settings when the client is created.
    #[test]
    fn clients_speak_tls_scram_and_every_compression_codec() {
        for codec in ["gzip", "snappy", "lz4", "zstd"] {
            let made: Result<BaseProducer, _> = ClientConfig::new()
                .set("bootstrap.servers", "127.0.0.1:1")
                .set("security.protocol", "SASL_SSL")
                .set("sasl.mechanisms", "SCRAM-SHA-512")
                .set("sasl.username", "u")
                .set("sasl.password", "p")
                .set("compression.type", codec)
                .create();
            assert!(made.is_ok(), "{codec}: {:?}", made.err());
        }
    }
}
