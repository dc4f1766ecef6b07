//! Measurements the benchmarks drive (`benches/ingest.sh` through `labelgate bench-ingest`): the
//! gate's own consumer, parser and buffer, timed without windows.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use rdkafka::consumer::Consumer;

use crate::{
    config::Config,
    gate::Gate,
    service::{self, RunSummary},
};

/// Consumes `records` input records through the gate's own consumer settings, parser and
/// buffer, with no window running; returns the seconds from the first record to the last.
pub fn measure_ingest(config: &Config, records: u64) -> Result<f64> {
    let consumer = service::input_consumer(config)?;
    let parsers = service::parser_pool()?;
    let mut gate = Gate::new(config.gate.clone(), config.kafka.max_message_bytes, "bench".into(), "bench".into());
    let mut summary = RunSummary::default();
    let mut started = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    while summary.consumed < records && Instant::now() < deadline {
        consumer.context().take_rebalances();
        let (mut batch, after) = service::poll_batch(&consumer, Duration::from_millis(100), &mut |e| tracing::warn!(error = %e, "consumer error"));
        batch.extend(after);
        if !batch.is_empty() {
            started.get_or_insert_with(Instant::now);
            let parsed = service::parse_batch(&gate, &parsers, &batch);
            service::ingest_parsed(&mut gate, batch, parsed, &mut summary);
        }
    }
    if summary.consumed < records {
        bail!("consumed {} of {records} records in 600 s", summary.consumed);
    }
    Ok(started.map_or(0.0, |s| s.elapsed().as_secs_f64()))
}
