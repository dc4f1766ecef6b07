//! Reading the input topic: polling messages in batches that stop at a rebalance, holding the
//! input while a dependency is away, and parsing a batch on the parser pool before the gate
//! ingests it in order (after the edge has fetched the images it names, `super::images`).

use std::time::{Duration, Instant};

use anyhow::Result;
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
    message::Headers,
    Message,
};

use super::{clients::GateContext, store_retry::WhileRetrying, RunSummary};
use crate::{
    gate::{Gate, Ingested, InputMessage, SourcePos},
    telemetry::{events, Telemetry},
    wire::{Inbound, Rejection},
};

/// Up to this many messages are taken per poll round and parsed in parallel.
const POLL_BATCH: usize = 512;

/// Holds the input while the state store or an image host is unreachable (the gate's
/// [`WhileRetrying`]): pauses it, polls only to stay in the group
/// (what arrives waits in the stash), and gives up on a rebalance.
pub(super) struct HoldInput<'l> {
    pub(super) consumer: &'l BaseConsumer<GateContext>,
    pub(super) stash: &'l mut Vec<InputMessage>,
    pub(super) telemetry: &'l Telemetry,
}

impl WhileRetrying for HoldInput<'_> {
    fn outage_started(&mut self) -> Result<()> {
        self.consumer.pause(&self.consumer.assignment()?)?;
        Ok(())
    }

    fn wait(&mut self, wait: Duration) -> Result<()> {
        let until = Instant::now() + wait;
        while Instant::now() < until {
            // The loop is alive, waiting out the outage; a consumer that failed fatally ends it.
            self.telemetry.health().beat(Instant::now());
            super::clients::stop_if_fatal("input consumer", self.consumer.client(), self.telemetry)?;
            let (before, after) = poll_batch(self.consumer, Duration::from_millis(100), &mut |e| self.telemetry.emit(events::ConsumerError { error: &e }));
            self.stash.extend(before);
            self.stash.extend(after);
            // Stashed records must not be ingested ahead of an assignment's progress record, and
            // a revocation invalidates the pending commit: either way, restart.
            if self.consumer.context().has_rebalance() {
                anyhow::bail!("a rebalance arrived while the state store or an image host was unreachable; a restart resumes from the last committed transaction");
            }
        }
        Ok(())
    }
}

/// Polls up to [`POLL_BATCH`] messages (waiting up to `wait` for the first). A rebalance ends
/// the batch: the messages polled before it are returned first, and a message that came with the
/// rebalance (it belongs to the new assignment) second, to be ingested after the rebalance is
/// handled. Consumer errors go to `on_error` and are skipped (librdkafka recovers by itself).
pub fn poll_batch(consumer: &BaseConsumer<GateContext>, wait: Duration, on_error: &mut dyn FnMut(KafkaError)) -> (Vec<InputMessage>, Vec<InputMessage>) {
    let mut batch = Vec::new();
    let mut timeout = wait;
    while batch.len() < POLL_BATCH {
        let polled = match consumer.poll(timeout) {
            Some(Ok(m)) => Some(InputMessage {
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                headers: m.headers().map_or_else(Vec::new, |h| h.iter().map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec).unwrap_or_default())).collect()),
                pos: SourcePos { partition: m.partition(), offset: m.offset() },
            }),
            Some(Err(e)) => {
                on_error(e);
                None
            }
            None => break,
        };
        if consumer.context().has_rebalance() {
            return (batch, polled.into_iter().collect());
        }
        batch.extend(polled);
        timeout = Duration::ZERO;
    }
    (batch, Vec::new())
}

/// Parses a batch on the parser pool (JSON number parsing is most of the ingest cost).
pub fn parse_batch(gate: &Gate, parsers: &rayon::ThreadPool, batch: &[InputMessage]) -> Vec<Result<Inbound, Rejection>> {
    use rayon::prelude::*;
    parsers.install(|| batch.par_iter().map(|m| gate.schema().parse(&m.payload)).collect())
}

/// Ingests a parsed batch in order.
pub fn ingest_parsed(gate: &mut Gate, batch: Vec<InputMessage>, parsed: Vec<Result<Inbound, Rejection>>, summary: &mut RunSummary) {
    let now = Instant::now();
    for (msg, parsed) in batch.into_iter().zip(parsed) {
        summary.consumed += 1;
        if gate.ingest_parsed(msg, parsed, now) == Ingested::Skipped {
            summary.skipped += 1;
        }
    }
}

/// The pool that parses input batches: up to 4 threads, no more than the machine has.
pub fn parser_pool() -> Result<rayon::ThreadPool> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).min(4);
    Ok(rayon::ThreadPoolBuilder::new().num_threads(threads).thread_name(|i| format!("labelgate-parse-{i}")).build()?)
}
