//! Start-up against Kafka: the broker is awaited with back-off for the whole of
//! `runtime.startup_timeout_secs` (as Redis is), what cannot be fixed by waiting (a refused
//! password, a TLS failure) stops at once, and every error names the setting to look at.
//! Also the clients' log callback, which says each repeated librdkafka complaint once a minute
//! instead of hundreds of times.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use rdkafka::{
    config::RDKafkaLogLevel,
    consumer::{BaseConsumer, Consumer, ConsumerContext},
    error::KafkaError,
    producer::ProducerContext,
    types::RDKafkaErrorCode,
    ClientContext,
};

use super::{
    clients::client_config,
    store_retry::{self, left_of},
};
use crate::{config::Config, telemetry::throttle::Throttle};

/// One throttle for the librdkafka logs of every client in the process: an outage makes each of
/// them (input, reviews, producer, monitor) say the same things.
static LIBRDKAFKA_SAID: std::sync::LazyLock<Throttle> = std::sync::LazyLock::new(Throttle::default);

/// What makes two librdkafka log lines the same complaint: the facility and the last clause of the
/// message, without the thread, the broker, counts or parenthesised details ("Connect to
/// ipv4#127.0.0.1:19092 failed: Connection refused (after 0ms in state CONNECT)" from any thread
/// is one `FAIL: Connection refused`).
fn complaint(fac: &str, message: &str) -> String {
    let mut text = String::with_capacity(message.len());
    let mut depth = 0usize;
    for c in message.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            c if depth == 0 => text.push(c),
            _ => {}
        }
    }
    let last = text.trim().rsplit(": ").next().unwrap_or("").trim().to_string();
    format!("{fac}: {last}")
}

/// librdkafka's logs and errors, each said once a minute at most; remembers the last failure
/// that waiting cannot fix.
#[derive(Default)]
pub struct QuietLogs {
    fatal: Mutex<Option<String>>,
    /// When librdkafka last reported every broker down; cleared when its statistics show one up.
    pub all_brokers_down_since: Mutex<Option<Instant>>,
}

impl QuietLogs {
    pub fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        if !LIBRDKAFKA_SAID.first_in_a_while(&complaint(fac, message)) {
            return;
        }
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", fac, message),
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, message),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => tracing::info!(target: "librdkafka", fac, message),
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", fac, message),
        }
    }

    pub fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        if code == Some(RDKafkaErrorCode::AllBrokersDown) {
            *self.all_brokers_down_since.lock().unwrap() = Some(Instant::now());
        }
        if matches!(code, Some(RDKafkaErrorCode::Authentication) | Some(RDKafkaErrorCode::SaslAuthenticationFailed)) {
            *self.fatal.lock().unwrap() =
                Some(format!("kafka.sasl_password / kafka.client.\"sasl.username\": the broker refused the credentials ({reason}); check the user and the password (LABELGATE__KAFKA__SASL_PASSWORD)"));
        } else if code == Some(RDKafkaErrorCode::SSL) {
            *self.fatal.lock().unwrap() = Some(format!(
                "kafka.client.\"ssl.ca.location\" / \"security.protocol\": the TLS handshake failed ({reason}); check the CA file and that the broker speaks TLS on kafka.bootstrap_servers"
            ));
        }
        if LIBRDKAFKA_SAID.first_in_a_while(&format!("error: {error}")) {
            if code == Some(RDKafkaErrorCode::Fatal) {
                tracing::error!(target: "librdkafka", error = %error, reason, "fatal Kafka client error: the gate stops");
            } else {
                tracing::warn!(target: "librdkafka", error = %error, reason, "Kafka client error");
            }
        }
    }

    /// A failure no retry can fix, as an error that names the setting.
    pub fn fatal(&self) -> Option<String> {
        self.fatal.lock().unwrap().clone()
    }
}

/// The context of every client but the input consumer (which has rebalances of its own): logs
/// quietly, remembers failures that waiting cannot fix.
#[derive(Default)]
pub struct QuietClient(pub QuietLogs);

impl ClientContext for QuietClient {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.0.log(level, fac, message)
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.0.error(error, reason)
    }
}

impl ConsumerContext for QuietClient {}

impl ProducerContext for QuietClient {
    type DeliveryOpaque = ();

    /// A failed delivery fails the transaction's commit, which stops the gate; nothing to do here.
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

/// Waits until a broker answers a metadata request, retrying with back-off up to
/// `runtime.startup_timeout_secs` (or until `stop`). Fails at once on refused credentials or a
/// failed TLS handshake.
pub fn wait_for_kafka(config: &Config, stop: &AtomicBool) -> Result<()> {
    let probe: BaseConsumer<QuietClient> = client_config(config).create_with_context(QuietClient::default())?;
    let limit = Duration::from_secs(config.runtime.startup_timeout_secs);
    let started = Instant::now();
    let mut backoff = store_retry::backoff();
    loop {
        let error = match probe.fetch_metadata(None, Duration::from_secs(5)) {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        // Error events reach the context only when the client is polled.
        let _ = probe.poll(Duration::from_millis(100));
        if let Some(fatal) = probe.context().0.fatal() {
            bail!(fatal);
        }
        let Some(left) = left_of(limit, started).filter(|_| !stop.load(Ordering::SeqCst)) else {
            bail!(
                "kafka.bootstrap_servers = {:?}: no broker answered within runtime.startup_timeout_secs = {} s (last error: {error}); check the address and that the broker is up",
                config.kafka.bootstrap_servers,
                limit.as_secs()
            );
        };
        let wait = backoff.next_wait().min(left);
        tracing::warn!(bootstrap_servers = ?config.kafka.bootstrap_servers, error = %error, retry_in_ms = wait.as_millis() as u64, "Kafka not answering yet; retrying");
        std::thread::sleep(wait);
    }
}

/// Calls `f` until it succeeds, while its error is one a freshly created topic or a moving
/// partition leader gives for a while (`NotLeaderForPartition`, `LeaderNotAvailable`, unknown
/// topic, timeouts), up to `runtime.startup_timeout_secs`.
pub fn retry_while_settling<T>(what: &str, config: &Config, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let limit = Duration::from_secs(config.runtime.startup_timeout_secs);
    let started = Instant::now();
    let mut backoff = store_retry::backoff();
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) => {
                let code = e.chain().find_map(|c| c.downcast_ref::<KafkaError>()).and_then(KafkaError::rdkafka_error_code);
                let settling = matches!(
                    code,
                    Some(
                        RDKafkaErrorCode::NotLeaderForPartition
                            | RDKafkaErrorCode::LeaderNotAvailable
                            | RDKafkaErrorCode::UnknownTopicOrPartition
                            | RDKafkaErrorCode::UnknownPartition
                            | RDKafkaErrorCode::OperationTimedOut
                            | RDKafkaErrorCode::RequestTimedOut
                            | RDKafkaErrorCode::CoordinatorLoadInProgress
                            | RDKafkaErrorCode::CoordinatorNotAvailable
                            | RDKafkaErrorCode::NotCoordinator
                            | RDKafkaErrorCode::AllBrokersDown
                            | RDKafkaErrorCode::BrokerTransportFailure
                    )
                );
                let left = left_of(limit, started);
                let (true, Some(left)) = (settling, left) else {
                    let waited = if settling { format!(" (still failing after runtime.startup_timeout_secs = {} s)", limit.as_secs()) } else { String::new() };
                    bail!("{what}: {e:#}{waited} (kafka.bootstrap_servers = {:?})", config.kafka.bootstrap_servers);
                };
                let wait = backoff.next_wait().min(left);
                tracing::warn!(what, error = format!("{e:#}"), retry_in_ms = wait.as_millis() as u64, "Kafka not ready yet; retrying");
                std::thread::sleep(wait);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_outage_complaint_from_every_thread_and_broker_is_one_key() {
        let a = complaint("FAIL", "[thrd:127.0.0.1:19092/1]: 127.0.0.1:19092/1: Connect to ipv4#127.0.0.1:19092 failed: Connection refused (after 0ms in state CONNECT)");
        let b = complaint(
            "FAIL",
            "[thrd:GroupCoordinator]: GroupCoordinator: 127.0.0.1:19092: Connect to ipv4#127.0.0.1:19092 failed: Connection refused (after 0ms in state CONNECT, 1 identical error(s) suppressed)",
        );
        assert_eq!(a, b);
        assert_eq!(a, "FAIL: Connection refused");
        assert_ne!(a, complaint("FAIL", "127.0.0.1:19092/1: Disconnected: connection reset by peer (after 1ms in state UP)"));
    }
}
