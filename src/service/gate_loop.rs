//! The gate loop: one struct that owns the gate, its clients and its window in flight, and steps
//! through poll → ingest → rebalances → reviews → windows → dead letters → backpressure, in the
//! order of the README's architecture picture.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{atomic::AtomicBool, atomic::Ordering, Arc},
    thread,
    time::{Duration, Instant},
};

use anyhow::Result;
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    producer::Producer,
};

use super::{
    clients::{self, GateContext, OutputProducer, RebalanceEvent, ReviewsConsumer},
    images, input,
    input::HoldInput,
    startup, store_retry,
    topics::{self, progress_key},
    transaction,
    window_thread::WindowThread,
    Hooks, RunSummary,
};
use crate::{
    accuracy::ReviewStats,
    config::Config,
    gate::{Commit, Gate, InputMessage},
    image_fetch::ImageFetcher,
    o2u::WindowError,
    state::{StateError, StateStore},
    telemetry::{events, health::HealthLimits, Telemetry, WindowTiming},
    wire::Inbound,
};

/// How often every known vendor's gauges are refreshed from the store.
const VENDOR_REFRESH: Duration = Duration::from_secs(60);
/// How often quiet partitions are checked against the broker's high watermark.
const END_CHECK: Duration = Duration::from_secs(1);
/// How long one high-watermark query may take (a stalled broker answers none: not at end).
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(1);
/// How often dead letters of records outside any window are flushed.
const DEAD_LETTER_FLUSH: Duration = Duration::from_millis(500);
/// How often the loop publishes its partitions and positions for the Kafka monitor.
const POSITIONS_EVERY: Duration = Duration::from_secs(1);

/// The bounds of readiness and liveness (see [`crate::telemetry::health`]); the stall bound is
/// `runtime.stall_timeout_secs`.
fn health_limits(config: &Config) -> HealthLimits {
    let stall = Duration::from_secs(config.runtime.stall_timeout_secs);
    HealthLimits {
        // The monitor asks every second with a 2 s timeout: two missed answers in a row.
        broker_silence: Duration::from_secs(5),
        // A commit takes well under a second; ten seconds blocked is a broker that hangs.
        loop_stall_ready: Duration::from_secs(10),
        // Twice the stall bound: a step may wait out several transaction calls (10 s each).
        loop_stall: stall * 2,
        no_progress: stall,
        // Past a session timeout, so a rebalance that waits out a dead member fits in it.
        unassigned: stall.max(clients::session_timeout(config) + Duration::from_secs(10)),
        // An epoch of a large window on a CPU takes minutes, not tens of minutes.
        window_stall: stall * 10,
    }
}

/// Where the loop is between start and exit (typed as Vector types its Kafka source).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Polling input and reviews, starting windows.
    Consuming,
    /// Shutdown requested: no more input; the window in flight is finished and committed.
    Draining,
    /// Nothing in flight: flush the last dead letters and exit.
    Complete,
}

/// The window on the window thread, if any.
pub enum WindowInFlight {
    Idle,
    Training {
        started: Instant,
        /// Partitions revoked while it trained: its records may belong to another replica now.
        revoked: Vec<i32>,
    },
}

/// Whether the input partitions are being fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InputFlow {
    Flowing,
    Paused,
}

pub struct GateLoop<'a> {
    pub(super) config: &'a Config,
    stop: &'a AtomicBool,
    pub(super) hooks: Hooks,
    pub(super) telemetry: &'a Telemetry,
    pub(super) state: Arc<dyn StateStore>,
    gate: Gate,
    pub(super) summary: RunSummary,
    /// Input polled while the store was unreachable, ingested first when the loop goes on.
    stash: Vec<InputMessage>,
    producer: OutputProducer,
    pub(super) consumer: BaseConsumer<GateContext>,
    pub(super) reviews: ReviewsConsumer,
    window_thread: WindowThread,
    parsers: rayon::ThreadPool,
    /// Fetches the images records name by URI (at a gate that converts images).
    images: Option<ImageFetcher>,
    window: WindowInFlight,
    input: InputFlow,
    /// A store call or an image host's outage held the input this step: backpressure must pause it.
    held_by_outage: bool,
    /// The buffer is full of open deliveries and the input reads on past its bound.
    reading_over_bound: bool,
    /// The group has given this replica its partitions at least once (ready only from then on).
    assigned_once: bool,
    last_flush: Instant,
    last_end_check: Instant,
    last_vendor_refresh: Instant,
    last_positions: Instant,
    /// Vendors this replica has seen, refreshed now and then (their gauges age out and other
    /// replicas gate the same vendors).
    pub(super) known_vendors: BTreeSet<String>,
}

/// The gate loop on the calling thread until `stop` is set.
pub fn run_blocking(config: &Config, stop: &AtomicBool, hooks: Hooks, telemetry: &Telemetry, state: Arc<dyn StateStore>) -> Result<RunSummary> {
    let mut gate_loop = GateLoop::start(config, stop, hooks, telemetry, state)?;
    loop {
        match gate_loop.phase() {
            Phase::Complete => return gate_loop.finish(),
            phase => gate_loop.step(phase)?,
        }
    }
}

impl<'a> GateLoop<'a> {
    /// Remembers gated deliveries, loads the pool, creates the clients and the window thread.
    fn start(config: &'a Config, stop: &'a AtomicBool, hooks: Hooks, telemetry: &'a Telemetry, state: Arc<dyn StateStore>) -> Result<Self> {
        let k = &config.kafka;
        let instance = clients::instance_id(config);
        let model_version = format!("labelgate-{}/o2u-{}", env!("CARGO_PKG_VERSION"), super::model_name(config));
        let embedder = super::window_thread::load_embedder(config)?;
        let mut gate_config = config.gate.clone();
        if let Some(e) = &embedder {
            gate_config.feature_dim = e.feature_dim();
        }
        let embeds_images = embedder.as_ref().is_some_and(|e| e.embeds_images());
        let mut gate = Gate::new(gate_config, k.max_message_bytes, model_version, instance.clone()).embedding_images(embeds_images);
        startup::wait_for_kafka(config, stop)?;
        // Deliveries gated before: late records and repeated batch_ends go to the DLQ.
        startup::retry_while_settling("reading the verdicts topic", config, || topics::read_topic(config, &k.verdicts_topic, |key, _| gate.remember_gated(String::from_utf8_lossy(key).into_owned())))?;
        let (pool, _) = store_retry::call("load_pool", telemetry, stop, &mut store_retry::Sleep, || state.load_pool(config.gate.classes.len()))?;
        telemetry.emit(events::PoolRestored { samples: gate.restore_pool(pool) });
        let producer = startup::retry_while_settling("initialising transactions", config, || clients::transactional_producer(config, &instance))?;
        let consumer = clients::input_consumer(config)?;
        let reviews = clients::reviews_consumer(config)?;
        let window_thread = WindowThread::start(config, &hooks, embedder);
        let parsers = input::parser_pool()?;
        let images = config.gate.image_shape.map(|_| ImageFetcher::new(&config.image_fetch)).transpose()?;
        Ok(Self {
            config,
            stop,
            hooks,
            telemetry,
            state,
            gate,
            summary: RunSummary::default(),
            stash: Vec::new(),
            producer,
            consumer,
            reviews,
            window_thread,
            parsers,
            images,
            window: WindowInFlight::Idle,
            input: InputFlow::Flowing,
            held_by_outage: false,
            reading_over_bound: false,
            assigned_once: false,
            last_flush: Instant::now(),
            last_end_check: Instant::now(),
            last_vendor_refresh: Instant::now(),
            last_positions: Instant::now(),
            known_vendors: BTreeSet::new(),
        })
        .inspect(|_| telemetry.health().watch(health_limits(config), Instant::now()))
    }

    fn phase(&self) -> Phase {
        match (self.stop.load(Ordering::SeqCst), &self.window) {
            (false, _) => Phase::Consuming,
            (true, WindowInFlight::Training { .. }) => Phase::Draining,
            (true, WindowInFlight::Idle) => Phase::Complete,
        }
    }

    /// One round of the loop.
    fn step(&mut self, phase: Phase) -> Result<()> {
        self.held_by_outage = false;
        self.telemetry.health().beat(Instant::now());
        self.stop_if_a_client_failed()?;
        let (consumed, transactions) = (self.summary.consumed, self.summary.transactions);
        let (before, after) = self.poll_input(phase);
        self.ingest(before)?;
        self.apply_rebalances()?;
        self.ingest(after)?;
        self.check_partition_ends()?;
        self.gate.close_idle(Instant::now());
        if phase == Phase::Consuming {
            self.process_reviews()?;
            self.start_window_if_due()?;
        }
        self.finish_window_if_trained()?;
        self.flush_dead_letters(phase)?;
        self.apply_backpressure()?;
        if (self.summary.consumed, self.summary.transactions) != (consumed, transactions) {
            self.telemetry.health().progressed(Instant::now());
        }
        self.report();
        Ok(())
    }

    /// A client that raised a fatal error cannot go on: the gate exits (see
    /// [`clients::stop_if_fatal`]).
    fn stop_if_a_client_failed(&self) -> Result<()> {
        // Credentials refused after start-up (a rotated password): no retry fixes them.
        if let Some(why) = [self.consumer.context().quiet.fatal(), self.reviews.context().0.fatal(), self.producer.context().0.fatal()].into_iter().flatten().next() {
            anyhow::bail!(why);
        }
        clients::stop_if_fatal("input consumer", self.consumer.client(), self.telemetry)?;
        clients::stop_if_fatal("reviews consumer", self.reviews.client(), self.telemetry)?;
        clients::stop_if_fatal("transactional producer", self.producer.client(), self.telemetry)
    }

    /// The next input batch, after anything stashed during a store outage. Draining polls
    /// nothing and waits for the window in flight without spinning.
    fn poll_input(&mut self, phase: Phase) -> (Vec<InputMessage>, Vec<InputMessage>) {
        let (mut before, after) = if phase == Phase::Consuming {
            let telemetry = self.telemetry;
            input::poll_batch(&self.consumer, Duration::from_millis(50), &mut |e| telemetry.emit(events::ConsumerError { error: &e }))
        } else {
            thread::sleep(Duration::from_millis(20));
            Default::default()
        };
        if !self.stash.is_empty() {
            before.splice(0..0, self.stash.drain(..));
        }
        (before, after)
    }

    /// Parses a batch, fetches the images it names (holding the input while a host is away),
    /// and ingests it in order.
    fn ingest(&mut self, batch: Vec<InputMessage>) -> Result<()> {
        let mut parsed = input::parse_batch(&self.gate, &self.parsers, &batch);
        if let Some(fetcher) = &self.images {
            let wanted: Vec<bool> = batch.iter().zip(&parsed).map(|(m, p)| matches!(p, Ok(Inbound::Annotation(a)) if a.awaits_image() && self.gate.worth_fetching(m, a))).collect();
            let mut hold = HoldInput { consumer: &self.consumer, stash: &mut self.stash, telemetry: self.telemetry };
            self.held_by_outage |= images::fetch_awaited(&mut parsed, |i| wanted[i], fetcher, self.gate.schema(), self.telemetry, self.stop, &mut hold)?;
        }
        input::ingest_parsed(&mut self.gate, batch, parsed, &mut self.summary);
        Ok(())
    }

    fn apply_rebalances(&mut self) -> Result<()> {
        let rebalances = self.consumer.context().take_rebalances();
        if !rebalances.is_empty() {
            // Readiness follows the new assignment at once.
            self.last_positions = Instant::now();
            self.publish_positions();
        }
        for rebalance in rebalances {
            match rebalance {
                RebalanceEvent::Revoked(parts) => {
                    self.telemetry.emit(events::PartitionsRevoked { partitions: &parts });
                    for p in parts {
                        self.gate.revoke(p);
                        if let WindowInFlight::Training { revoked, .. } = &mut self.window {
                            revoked.push(p);
                        }
                    }
                }
                RebalanceEvent::Assigned(parts) => {
                    self.assigned_once = true;
                    // Right after a broker comes back its metadata may still be settling
                    // (`UnknownPartition` was seen once after a 30 s stall): wait for it.
                    let (config, health) = (self.config, self.telemetry.health());
                    let mut progress = startup::retry_while_settling("reading the progress topic", config, || {
                        health.beat(Instant::now());
                        topics::read_progress(config)
                    })?;
                    self.telemetry.emit(events::PartitionsAssigned { partitions: &parts });
                    for p in parts {
                        self.gate.assign(p, progress.remove(&progress_key(self.config, p)));
                    }
                }
            }
        }
        Ok(())
    }

    /// Tells the gate which partitions with quiet deliveries are read to their end: the
    /// consumer's position is at the broker's high watermark (or one short of it, where the last
    /// offset is a transaction marker, which is never delivered). A paused input, a stalled
    /// broker (no answer) or a position behind counts as not at the end, so no delivery closes.
    fn check_partition_ends(&mut self) -> Result<()> {
        let now = Instant::now();
        if now.duration_since(self.last_end_check) < END_CHECK {
            return Ok(());
        }
        self.last_end_check = now;
        let quiet = self.gate.quiet_partitions(now);
        if quiet.is_empty() {
            return Ok(());
        }
        let positions = self.consumer.position()?;
        let topic = &self.config.kafka.input_topic;
        for p in quiet {
            let flowing = self.input == InputFlow::Flowing && !self.held_by_outage;
            let position = positions.find_partition(topic, p).and_then(|e| e.offset().to_raw());
            let at_end = flowing
                && match (position, self.consumer.fetch_watermarks(topic, p, WATERMARK_TIMEOUT)) {
                    (Some(pos), Ok((_, high))) => pos >= high - 1,
                    _ => false,
                };
            self.gate.partition_at_end(p, at_end, now);
        }
        Ok(())
    }

    /// Calls the state store through [`store_retry::call`], holding the input while it fails.
    pub(super) fn with_state<T>(&mut self, op: &str, mut call: impl FnMut(&dyn StateStore) -> Result<T, StateError>) -> Result<T> {
        let state = self.state.clone();
        let mut hold = HoldInput { consumer: &self.consumer, stash: &mut self.stash, telemetry: self.telemetry };
        let (value, held) = store_retry::call(op, self.telemetry, self.stop, &mut hold, || call(state.as_ref()))?;
        self.held_by_outage |= held;
        Ok(value)
    }

    fn start_window_if_due(&mut self) -> Result<()> {
        if !matches!(self.window, WindowInFlight::Idle) || !self.gate.window_due(Instant::now()) {
            return Ok(());
        }
        let Some(mut job) = self.gate.take_window() else { return Ok(()) };
        self.telemetry.emit(events::WindowStarted { window_id: &job.id, records: job.records(), deliveries: job.deliveries() });
        if let Err(e) = self.state.mark_scoring(&job.id, &job.batch_ids()) {
            self.telemetry.emit(events::DeliveryStatesNotMarked { window_id: &job.id, error: &e });
        }
        if let Some(f) = &self.hooks.on_window_start {
            f(&job.id, job.records(), job.deliveries());
        }
        // Earlier windows' labels of the same samples, so agreement spans windows.
        let sample_ids = job.data.distinct_sample_ids();
        let prior = self.with_state("sample_labels", |s| s.sample_labels(&sample_ids))?;
        job.data.attach_prior_labels(prior);
        self.window = WindowInFlight::Training { started: Instant::now(), revoked: Vec::new() };
        self.telemetry.health().set_window_in_flight(true, Instant::now());
        self.window_thread.submit(job)
    }

    fn finish_window_if_trained(&mut self) -> Result<()> {
        let Some((job, result)) = self.window_thread.try_finished()? else { return Ok(()) };
        let WindowInFlight::Training { started, revoked } = std::mem::replace(&mut self.window, WindowInFlight::Idle) else {
            anyhow::bail!("a window finished while none was in flight");
        };
        self.telemetry.health().set_window_in_flight(false, Instant::now());
        let trained = Instant::now();
        if !revoked.is_empty() {
            // Its records may now belong to another replica: put back what is still ours.
            self.gate.requeue(job, &revoked);
            return Ok(());
        }
        let scores = match result {
            Ok(scores) => scores,
            // The same data would fail again after a restart: route it to people instead.
            Err(WindowError::Data(why)) => return self.fail_window(job, &why),
            Err(e) => return Err(anyhow::Error::new(e).context(format!("window {} failed", job.id))),
        };
        let (window_id, first_closed, records, deliveries) = (job.id.clone(), job.first_closed, job.records(), job.deliveries());
        if let Some(report) = &job.embedding {
            self.telemetry.emit(events::TextsEmbedded { window_id: &window_id, report });
        }
        let mut review_stats: HashMap<String, ReviewStats> = HashMap::new();
        for v in job.vendors() {
            let stats = self.with_state("review_stats", |s| s.review_stats(&v))?;
            review_stats.insert(v, stats);
        }
        let commit = self.gate.finish_window(job, &scores, &review_stats, crate::clock::unix_millis());
        // Vendors of earlier deliveries that this window's agreement revised, too.
        let vendors = commit.state.vendors();
        // State first, then the transaction: a crash between them replays the window, and every
        // state write is idempotent.
        self.with_state("save_window", |s| s.save_window(&commit.state))?;
        // The gauges follow the stored state before the verdicts are counted, so a scrape that
        // sees a verdict sees the gauge that includes it.
        self.refresh_vendor_gauges(&vendors);
        self.summary.windows += 1;
        self.commit(&commit)?;
        let timing = WindowTiming {
            records,
            deliveries,
            waiting_seconds: started.duration_since(first_closed).as_secs_f64(),
            training_seconds: trained.duration_since(started).as_secs_f64(),
            producing_seconds: trained.elapsed().as_secs_f64(),
        };
        self.telemetry.emit(events::WindowCommitted { window_id: &window_id, timing: &timing, final_loss: scores.final_loss, evidence: &scores.evidence });
        self.summary.window_timings.push(timing);
        Ok(())
    }

    /// Every record of a window that could not be trained on goes to re-review, each delivery
    /// gets a `review` verdict (`window_failed`), and the gate goes on.
    fn fail_window(&mut self, job: crate::gate::WindowJob, why: &str) -> Result<()> {
        let (window_id, records) = (job.id.clone(), job.records());
        let commit = self.gate.fail_window(job, crate::clock::unix_millis());
        self.with_state("save_window", |s| s.save_window(&commit.state))?;
        self.commit(&commit)?;
        self.telemetry.emit(events::WindowFailed { window_id: &window_id, records, kind: "data", why });
        Ok(())
    }

    fn commit(&mut self, commit: &Commit) -> Result<()> {
        transaction::commit(self.config, &self.producer, &self.consumer, commit, &mut self.summary, &self.hooks, self.telemetry)?;
        self.known_vendors.extend(commit.state.vendors());
        Ok(())
    }

    /// Dead letters of records outside any window, twice a second and before exit; never while a
    /// window trains (its commit carries the offsets).
    fn flush_dead_letters(&mut self, phase: Phase) -> Result<()> {
        let due = self.last_flush.elapsed() >= DEAD_LETTER_FLUSH || phase != Phase::Consuming;
        if !matches!(self.window, WindowInFlight::Idle) || !due {
            return Ok(());
        }
        self.last_flush = Instant::now();
        match self.gate.flush_dead_letters() {
            Some(commit) => self.commit(&commit),
            None => Ok(()),
        }
    }

    /// Stops fetching while the buffer is at its bound. A store outage paused everything; from
    /// here the buffer alone decides again.
    fn apply_backpressure(&mut self) -> Result<()> {
        if self.held_by_outage {
            self.input = InputFlow::Paused;
        }
        let over_bound = self.gate.full_of_open_deliveries();
        if over_bound != self.reading_over_bound {
            self.reading_over_bound = over_bound;
            self.telemetry.emit(events::BufferOverBound { over: over_bound, buffered: self.gate.buffered() });
        }
        let wanted = if self.gate.is_full() && !over_bound { InputFlow::Paused } else { InputFlow::Flowing };
        if wanted != self.input {
            let assignment = self.consumer.assignment()?;
            match wanted {
                InputFlow::Paused => self.consumer.pause(&assignment)?,
                InputFlow::Flowing => self.consumer.resume(&assignment)?,
            }
            self.input = wanted;
            let paused = wanted == InputFlow::Paused;
            self.summary.pauses += paused as u64;
            self.telemetry.emit(events::Backpressure { paused, buffered: self.gate.buffered() });
        }
        Ok(())
    }

    /// Gauges that follow the loop: readiness, the buffer, the lag, and now and then every
    /// vendor's figures. Ready means: the group assigned this replica its partitions, a broker
    /// answers, and the gate consumes (a store outage takes readiness inside the call).
    fn report(&mut self) {
        let kafka_up = self.consumer.context().kafka_up(self.telemetry.health());
        let ready = self.assigned_once && kafka_up && self.phase() == Phase::Consuming;
        if ready != self.telemetry.loop_says_ready() {
            let why = match (self.assigned_once, kafka_up) {
                (false, _) => "waiting for the group to assign partitions",
                (_, false) => "Kafka unreachable: every broker is down",
                _ if ready => "consuming",
                _ => "draining",
            };
            self.telemetry.set_ready(ready, why);
        }
        self.telemetry.set_buffered(self.gate.buffered());
        if self.last_positions.elapsed() >= POSITIONS_EVERY {
            self.last_positions = Instant::now();
            self.publish_positions();
            self.telemetry.set_buffered_bytes(self.gate.buffered_bytes());
        }
        if self.last_vendor_refresh.elapsed() >= VENDOR_REFRESH {
            self.last_vendor_refresh = Instant::now();
            let vendors: Vec<String> = self.known_vendors.iter().cloned().collect();
            self.refresh_vendor_gauges(&vendors);
        }
    }

    /// The assigned input partitions and this consumer's position in each, for the monitor's lag
    /// and health checks (local calls: no broker request).
    fn publish_positions(&self) {
        let topic = &self.config.kafka.input_topic;
        let (Ok(assignment), Ok(positions)) = (self.consumer.assignment(), self.consumer.position()) else { return };
        let published = assignment
            .elements_for_topic(topic)
            .iter()
            .map(|e| {
                let p = e.partition();
                (p, positions.find_partition(topic, p).and_then(|e| e.offset().to_raw()).filter(|o| *o >= 0).unwrap_or(-1))
            })
            .collect();
        self.telemetry.health().set_positions(published, Instant::now());
    }

    /// The last dead letters, then leave the group.
    fn finish(mut self) -> Result<RunSummary> {
        if let Some(commit) = self.gate.flush_dead_letters() {
            self.commit(&commit)?;
        }
        self.consumer.unsubscribe();
        let s = &self.summary;
        self.telemetry.emit(events::GateStopped {
            consumed: s.consumed,
            accepted: s.accepted,
            rereview: s.rereview,
            dead_letters: s.dead_letters.values().sum(),
            verdicts: s.verdicts,
            windows: s.windows,
            transactions: s.transactions,
            pauses: s.pauses,
        });
        Ok(self.summary)
    }
}
