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

/// What ingesting cost.
pub struct IngestMeasurement {
    /// From the first record to the last.
    pub seconds: f64,
    /// The process's resident memory once every record is buffered (consumer queue included).
    pub rss_bytes: Option<u64>,
    /// The same with the consumer made and nothing consumed yet: what the process costs anyway.
    pub rss_before_bytes: Option<u64>,
    /// What the gate says its buffer holds (`labelgate_buffered_bytes`).
    pub buffered_bytes: usize,
    /// The buffered records' features as f32, the floor any buffer has to hold.
    pub feature_bytes: usize,
}

/// Consumes `records` input records through the gate's own consumer settings, parser and
/// buffer, with no window running, and measures the time and the memory it took.
pub fn measure_ingest(config: &Config, records: u64) -> Result<IngestMeasurement> {
    let consumer = service::input_consumer(config)?;
    let parsers = service::parser_pool()?;
    let rss_before_bytes = resident_bytes();
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
    let seconds = started.map_or(0.0, |s| s.elapsed().as_secs_f64());
    let feature_bytes = gate.buffered() * config.gate.feature_dim * std::mem::size_of::<f32>();
    let rss_bytes = resident_bytes();
    Ok(IngestMeasurement { seconds, rss_bytes, rss_before_bytes, buffered_bytes: gate.buffered_bytes(), feature_bytes })
}

/// `VmRSS` of this process (Linux).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}
