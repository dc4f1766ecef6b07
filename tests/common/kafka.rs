//! The test broker and Redis as the gate sees them: a config with topics of its own, producing
//! input, running the gate until N verdicts, and the `labelgate run` command on that config.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use labelgate::{
    config::Config,
    service::{self, Hooks, RunSummary},
    wire::RereviewMessage,
};
use rdkafka::{
    config::ClientConfig,
    producer::{BaseProducer, BaseRecord, Producer},
};

use super::env;

pub fn bootstrap() -> String {
    std::env::var("LABELGATE_KAFKA_BOOTSTRAP").expect("LABELGATE_KAFKA_BOOTSTRAP is not set: run scripts/test.sh, or scripts/kafka.sh start and export LABELGATE_KAFKA_BOOTSTRAP=127.0.0.1:19092")
}

/// A config with topics, group and key prefix of its own, so tests do not see each other's
/// records. Read from the embedded defaults only: a `LABELGATE__*` variable in the shell running
/// the tests does not change them.
pub fn test_config(name: &str, dim: usize) -> Config {
    let mut c = Config::defaults();
    let unique = format!("{name}-{}-{}", std::process::id(), Instant::now().elapsed().as_nanos() % 100_000);
    c.kafka.bootstrap_servers = bootstrap();
    c.kafka.group_id = format!("gate-{unique}");
    c.kafka.instance_id = unique.clone();
    c.kafka.input_topic = format!("{unique}.in");
    c.kafka.accepted_topic = format!("{unique}.accepted");
    c.kafka.rereview_topic = format!("{unique}.rereview");
    c.kafka.verdicts_topic = format!("{unique}.verdicts");
    c.kafka.dlq_topic = format!("{unique}.dlq");
    c.kafka.progress_topic = format!("{unique}.progress");
    c.kafka.reviews_topic = format!("{unique}.reviews");
    c.state.backend = labelgate::config::StateBackend::Redis;
    c.state.redis.url = env("LABELGATE_REDIS_URL");
    c.state.redis.username = env("LABELGATE_REDIS_USER");
    c.state.redis.password = Some(serde_json::from_value(serde_json::Value::String(env("LABELGATE_REDIS_PASSWORD"))).unwrap());
    c.state.redis.key_prefix = format!("labelgate:test:{unique}:");
    c.metrics.listen = String::new();
    c.gate.feature_dim = dim;
    c.gate.delivery_timeout_secs = 5;
    c.gate.max_window_wait_secs = 1;
    c.gate.min_window_records = 3000;
    c.gate.max_window_records = 6000;
    c.gate.max_buffered_records = 20_000;
    c
}

/// Produces (key, payload) pairs to `topic`, in order, and waits until the broker has them.
pub fn produce_to(config: &Config, topic: &str, messages: &[(String, String)]) {
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", &config.kafka.bootstrap_servers).create().unwrap();
    for (key, payload) in messages {
        service::send_retrying_when_full(&producer, BaseRecord::to(topic).key(key.as_bytes()).payload(payload.as_bytes())).unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

/// Produces to the config's input topic.
pub fn produce(config: &Config, messages: &[(String, String)]) {
    produce_to(config, &config.kafka.input_topic, messages);
}

/// Runs the gate in this process until `expected` verdicts are committed (or 180 s), then lets
/// the last dead letters flush and stops it.
pub async fn run_until_verdicts(config: Config, expected: usize) -> RunSummary {
    let (hooks, all_verdicts) = Hooks::until_verdicts(expected as u64);
    service::run(config, hooks, async move {
        tokio::select! { _ = all_verdicts.wait() => {}, _ = tokio::time::sleep(Duration::from_secs(180)) => {} }
        tokio::time::sleep(Duration::from_millis(1500)).await;
    })
    .await
    .unwrap()
}

/// `labelgate run` on `config`'s topics and Redis, with windows of 3,000 records and one kernel
/// thread; callers add the metrics address and where stderr goes.
pub fn gate_command(config: &Config) -> Command {
    let (k, r) = (&config.kafka, &config.state.redis);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_labelgate"));
    cmd.arg("run")
        .env("LABELGATE_LOG", "info")
        .env("LABELGATE__KAFKA__BOOTSTRAP_SERVERS", &k.bootstrap_servers)
        .env("LABELGATE__KAFKA__GROUP_ID", &k.group_id)
        .env("LABELGATE__KAFKA__INSTANCE_ID", &k.instance_id)
        .env("LABELGATE__KAFKA__INPUT_TOPIC", &k.input_topic)
        .env("LABELGATE__KAFKA__ACCEPTED_TOPIC", &k.accepted_topic)
        .env("LABELGATE__KAFKA__REREVIEW_TOPIC", &k.rereview_topic)
        .env("LABELGATE__KAFKA__VERDICTS_TOPIC", &k.verdicts_topic)
        .env("LABELGATE__KAFKA__DLQ_TOPIC", &k.dlq_topic)
        .env("LABELGATE__KAFKA__PROGRESS_TOPIC", &k.progress_topic)
        .env("LABELGATE__KAFKA__REVIEWS_TOPIC", &k.reviews_topic)
        .env("LABELGATE__STATE__REDIS__URL", &r.url)
        .env("LABELGATE__STATE__REDIS__USERNAME", &r.username)
        .env("LABELGATE__STATE__REDIS__KEY_PREFIX", &r.key_prefix)
        .env("LABELGATE__GATE__MIN_WINDOW_RECORDS", "3000")
        .env("LABELGATE__GATE__MAX_WINDOW_RECORDS", "3000")
        .env("LABELGATE__GATE__MAX_WINDOW_WAIT_SECS", "1")
        .env("LABELGATE__RUNTIME__THREADS", "1");
    if let Some(p) = &r.password {
        cmd.env("LABELGATE__STATE__REDIS__PASSWORD", p.expose());
    }
    cmd
}

/// Where the gate routed records, read back from its output topics: how often each `sample_id`
/// was routed (accepted or re-review), and the re-review records.
pub fn routed(config: &Config) -> (std::collections::HashMap<String, usize>, Vec<RereviewMessage>) {
    let mut routed = std::collections::HashMap::new();
    service::read_topic(config, &config.kafka.accepted_topic, |_, v| {
        let r: serde_json::Value = serde_json::from_slice(v).unwrap();
        *routed.entry(r["sample_id"].as_str().unwrap().to_string()).or_default() += 1;
    })
    .unwrap();
    let mut suspects: Vec<RereviewMessage> = Vec::new();
    service::read_topic(config, &config.kafka.rereview_topic, |_, v| suspects.push(serde_json::from_slice(v).unwrap())).unwrap();
    for s in &suspects {
        *routed.entry(s.sample_id.clone()).or_default() += 1;
    }
    (routed, suspects)
}
