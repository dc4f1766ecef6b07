//! Start-up against Kafka: the broker is awaited with back-off for the whole of
//! `runtime.startup_timeout_secs` (as Redis is), what cannot be fixed by waiting (a refused
//! password, a TLS failure) stops at once, and every error names the setting to look at.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
    types::RDKafkaErrorCode,
};

use super::{client_logs::QuietClient, clients::client_config};
use crate::{
    config::Config,
    retry::{self, left_of},
};

/// Waits until a broker answers a metadata request, retrying with back-off up to
/// `runtime.startup_timeout_secs` (or until `stop`). Fails at once on refused credentials or a
/// failed TLS handshake.
pub fn wait_for_kafka(config: &Config, stop: &AtomicBool) -> Result<()> {
    let probe: BaseConsumer<QuietClient> = client_config(config).create_with_context(QuietClient::default())?;
    let limit = Duration::from_secs(config.runtime.startup_timeout_secs);
    let started = Instant::now();
    let mut backoff = retry::dependency_backoff();
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
    let mut backoff = retry::dependency_backoff();
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
