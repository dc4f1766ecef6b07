//! The Kafka clients' log and error callback: each repeated librdkafka complaint is said once a
//! minute instead of hundreds of times, and a failure that waiting cannot fix (refused
//! credentials, a failed TLS handshake) is remembered with the setting to look at.

use std::{sync::Mutex, time::Instant};

use rdkafka::{config::RDKafkaLogLevel, consumer::ConsumerContext, error::KafkaError, producer::ProducerContext, types::RDKafkaErrorCode, ClientContext};

use crate::telemetry::throttle::Throttle;

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
