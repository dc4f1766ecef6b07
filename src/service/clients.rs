//! The Kafka clients the gate uses and the settings they share: the input consumer (with its
//! rebalance and lag context), the reviews consumer and the transactional producer.

use std::{sync::Mutex, time::Duration};

use anyhow::{Context as _, Result};
use rdkafka::{
    client::Client,
    config::ClientConfig,
    consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance},
    error::KafkaError,
    producer::{BaseProducer, BaseRecord, Producer, ProducerContext},
    types::RDKafkaErrorCode,
    ClientContext,
};

use super::client_logs::{QuietClient, QuietLogs};
use crate::{
    config::Config,
    telemetry::{events, health::Health, Telemetry},
};

/// The transactional producer of every output.
pub type OutputProducer = BaseProducer<QuietClient>;
/// The consumer of the reviews topic.
pub type ReviewsConsumer = BaseConsumer<QuietClient>;

/// How long the producer waits for the transaction coordinator on each call but the commit. A
/// call that started while a broker hung may get no answer even after the broker is back (seen: a
/// 30 s wait past its SIGCONT); giving up sooner stops the gate, and its restart is ready within
/// seconds.
pub(super) const TXN_TIMEOUT: Duration = Duration::from_secs(10);
/// The commit flushes the whole window's output first: more time, while a hung broker still
/// fails it within the producer's `socket.timeout.ms`.
pub(super) const TXN_COMMIT_TIMEOUT: Duration = Duration::from_secs(30);

/// The input consumer's session timeout: the operator's `kafka.client` setting, or ours.
pub(super) fn session_timeout(config: &Config) -> Duration {
    let ms = config.kafka.client.get("session.timeout.ms").and_then(|v| v.parse().ok()).unwrap_or(SESSION_TIMEOUT_MS);
    Duration::from_millis(ms)
}

/// Our default for `session.timeout.ms`.
const SESSION_TIMEOUT_MS: u64 = 20_000;

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
    std::env::var("HOSTNAME").ok().or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_string())).unwrap_or_else(|| "labelgate".into())
}

/// A change of the input partitions this replica owns, queued by the consumer's callbacks and
/// applied by the loop between batches.
pub enum RebalanceEvent {
    Assigned(Vec<i32>),
    Revoked(Vec<i32>),
}

/// The input consumer's context: rebalance events for the loop, and whether every broker is down.
pub struct GateContext {
    topic: String,
    /// librdkafka's logs and errors, said once a minute; whether every broker is down.
    pub quiet: QuietLogs,
    events: Mutex<Vec<RebalanceEvent>>,
}

impl GateContext {
    pub fn has_rebalance(&self) -> bool {
        !self.events.lock().unwrap().is_empty()
    }

    pub fn take_rebalances(&self) -> Vec<RebalanceEvent> {
        std::mem::take(&mut *self.events.lock().unwrap())
    }

    /// Whether the brokers answer: not since librdkafka said every broker is down, until its
    /// statistics show one up or the monitor's own request got an answer after that (librdkafka's
    /// statistics were seen to miss a broker restarted on its port for minutes).
    pub fn kafka_up(&self, health: &Health) -> bool {
        self.quiet.all_brokers_down_since.lock().unwrap().is_none_or(|down| health.broker_answered_after(down))
    }
}

impl ClientContext for GateContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.quiet.log(level, fac, message)
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.quiet.error(error, reason)
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        if statistics.brokers.values().any(|b| b.nodeid >= 0 && b.state == "UP") {
            *self.quiet.all_brokers_down_since.lock().unwrap() = None;
        }
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

/// librdkafka's prefetch queue of the input consumer, in KiB: a few poll rounds of records ahead
/// of the parser (a round is at most 512 records; 6 KB each for 784 features as JSON).
const PREFETCH_QUEUE_KB: usize = 32 * 1024;

/// The input consumer, subscribed: read-committed, offsets committed only in transactions.
pub fn input_consumer(config: &Config) -> Result<BaseConsumer<GateContext>> {
    let k = &config.kafka;
    let context = GateContext { topic: k.input_topic.clone(), quiet: QuietLogs::default(), events: Mutex::new(Vec::new()) };
    let mut consumer_config = client_config(config);
    consumer_config
        .set("group.id", &k.group_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        // Larger per-partition fetches and a short back-off when the prefetch queue is full:
        // librdkafka's default 1 s back-off left the gate idle a third of the time while it
        // parsed (ingest went from 0.51× to about 0.85× of kcat's raw read). The queue itself is
        // bounded to PREFETCH_QUEUE_KB: records in it are held twice over (there and, once
        // parsed, in the buffer), and a 256 MB queue made RSS 3× the buffered features.
        .set("fetch.message.max.bytes", (k.max_message_bytes + 65_536).max(8 << 20).to_string())
        .set("fetch.queue.backoff.ms", "5")
        .set("queued.max.messages.kbytes", PREFETCH_QUEUE_KB.to_string())
        // librdkafka's statistics say when a broker is up again after all were down (the lag
        // gauge comes from the monitor's watermark queries, which do not depend on this client).
        .set("statistics.interval.ms", "5000")
        // Static membership: a replica that restarts under its name gets its partitions back at
        // once instead of waiting out its dead self's session (40–60 s before); a replica that
        // does not come back gives them up after the session timeout.
        .set("group.instance.id", instance_id(config))
        .set("session.timeout.ms", SESSION_TIMEOUT_MS.to_string());
    // The operator's kafka.client settings win over these defaults.
    for (key, value) in &k.client {
        consumer_config.set(key, value);
    }
    let consumer: BaseConsumer<GateContext> = consumer_config.create_with_context(context).context("consumer")?;
    consumer.subscribe(&[&k.input_topic]).context("subscribe")?;
    Ok(consumer)
}

/// The reviews consumer: its own group, offsets committed after each review is stored (the store
/// counts a replayed review once, so at-least-once delivery here is enough).
pub(super) fn reviews_consumer(config: &Config) -> Result<ReviewsConsumer> {
    let consumer: ReviewsConsumer = client_config(config)
        .set("group.id", format!("{}-reviews", config.kafka.group_id))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create_with_context(QuietClient::default())
        .context("reviews consumer")?;
    consumer.subscribe(&[&config.kafka.reviews_topic]).context("subscribe to the reviews topic")?;
    Ok(consumer)
}

/// The producer of every output, with its transactions initialised under this replica's name.
pub(super) fn transactional_producer(config: &Config, instance: &str) -> Result<OutputProducer> {
    let k = &config.kafka;
    let producer: OutputProducer = client_config(config)
        .set("transactional.id", format!("{}-{}", k.transactional_id_prefix, instance))
        .set("transaction.timeout.ms", "60000")
        // A request in flight to a broker that hangs is given up after this, so a transaction
        // call returns within about its own timeout (librdkafka's 60 s default held one for 40 s
        // past TXN_TIMEOUT during a broker SIGSTOP).
        .set("socket.timeout.ms", "10000")
        .set("enable.idempotence", "true")
        .set("message.max.bytes", (k.max_message_bytes + 65_536).to_string())
        .create_with_context(QuietClient::default())
        .context("transactional producer")?;
    producer.init_transactions(TXN_TIMEOUT).context("init_transactions: is the broker reachable and does it support transactions?")?;
    Ok(producer)
}

/// Sends `record`, serving the producer's queue while it is full; any other error is returned.
pub fn send_retrying_when_full<C: ProducerContext>(producer: &BaseProducer<C>, mut record: BaseRecord<'_, [u8], [u8], C::DeliveryOpaque>) -> Result<(), KafkaError> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                producer.poll(Duration::from_millis(10));
                record = r;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Stops the gate if `client` has raised a fatal error (librdkafka marks them: a consumer fenced
/// by another with its `group.instance.id`, a producer fenced by its `transactional.id`). The
/// client cannot go on, and a new one in this process would have to rebuild the window in flight
/// and the buffer; a restart rebuilds both from the last committed transaction in about a second.
pub(super) fn stop_if_fatal<C: ClientContext>(name: &'static str, client: &Client<C>, telemetry: &Telemetry) -> Result<()> {
    let Some((code, reason)) = client.fatal_error() else { return Ok(()) };
    let code = format!("{code:?}");
    telemetry.emit(events::KafkaClientFatal { client: name, code: &code, reason: &reason });
    anyhow::bail!(
        "the Kafka {name} raised a fatal error ({code}: {reason}) and cannot go on; exiting so that the supervisor restarts the gate, which rejoins under kafka.instance_id and resumes from the last committed transaction"
    )
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

    /// A consumer that librdkafka failed fatally (here by its test hook, as the broker does with
    /// `FencedInstanceId`) stops the gate with the client, the code and what happens next.
    #[test]
    fn a_fatal_client_error_stops_the_gate_naming_the_client_and_code() {
        let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", "127.0.0.1:1").set("group.id", "g").create().unwrap();
        let telemetry = Telemetry::new(10, "m", "cpu");
        assert!(stop_if_fatal("input consumer", consumer.client(), &telemetry).is_ok());
        let reason = std::ffi::CString::new("static consumer fenced (test)").unwrap();
        let code = rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_FENCED_INSTANCE_ID;
        // SAFETY: a live client handle and a NUL-terminated reason that outlives the call.
        unsafe { rdkafka::bindings::rd_kafka_test_fatal_error(consumer.client().native_ptr(), code, reason.as_ptr()) };
        let err = stop_if_fatal("input consumer", consumer.client(), &telemetry).unwrap_err().to_string();
        assert!(err.contains("input consumer") && err.contains("FencedInstanceId") && err.contains("restarts the gate"), "{err}");
        // Closing a failed group consumer with no broker to leave waits forever: the test process
        // ends instead (the gate, exiting, has a broker to close against).
        std::mem::forget(consumer);
    }
}
