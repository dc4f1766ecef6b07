//! The Kafka monitor: a thread with a client of its own that asks the brokers every second
//! whether they answer and how far the input's high watermarks are ahead of the gate's
//! positions. Readiness, liveness and the lag gauge therefore follow the broker and the loop's
//! real progress, even while the loop is blocked or its consumer is dead.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    Offset, TopicPartitionList,
};

use super::{client_logs::QuietClient, clients::client_config};
use crate::{
    config::Config,
    telemetry::{events, Telemetry},
};

/// How often the brokers are asked.
const PERIOD: Duration = Duration::from_secs(1);
/// How long the metadata request may take: a hung broker keeps its connections open and answers
/// nothing.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long each lag query may take: a tick stays well under the 5 s a broker may be silent.
const LAG_TIMEOUT: Duration = Duration::from_millis(500);

/// The monitor's thread; stops when dropped.
pub struct Monitor {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the monitor. Its client joins no group: it only reads metadata, watermarks and the
/// group's committed offsets.
pub fn start(config: &Config, telemetry: Arc<Telemetry>) -> Result<Monitor> {
    let probe: BaseConsumer<QuietClient> =
        client_config(config).set("group.id", &config.kafka.group_id).set("enable.auto.commit", "false").create_with_context(QuietClient::default()).context("Kafka monitor client")?;
    let (topic, group) = (config.kafka.input_topic.clone(), config.kafka.group_id.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let stop = stop.clone();
        thread::Builder::new().name("labelgate-monitor".into()).spawn(move || watch(&probe, &topic, &group, &telemetry, &stop))?
    };
    Ok(Monitor { stop, thread: Some(thread) })
}

fn watch(probe: &BaseConsumer<QuietClient>, topic: &str, group: &str, telemetry: &Telemetry, stop: &AtomicBool) {
    let mut said = Said::default();
    let mut answered_last_time = false;
    while !stop.load(Ordering::SeqCst) {
        let started = Instant::now();
        let health = telemetry.health();
        match probe.fetch_metadata(Some(topic), REQUEST_TIMEOUT) {
            Ok(metadata) => {
                health.broker_answered(Instant::now(), !answered_last_time);
                answered_last_time = true;
                let partitions = metadata.topics().first().map_or(0, |t| t.partitions().len());
                if let Ok(groups) = probe.fetch_group_list(Some(group), LAG_TIMEOUT) {
                    health.set_group(groups.groups().first().map_or(0, |g| g.members().len()), partitions);
                }
                if let Some((lag, behind)) = lag(probe, topic, &health.positions()) {
                    health.set_lag(lag, behind, Instant::now());
                    telemetry.set_consumer_lag(lag);
                }
            }
            Err(_) => answered_last_time = false,
        }
        said.changes(telemetry);
        while started.elapsed() < PERIOD && !stop.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Records behind the high watermark over the loop's partitions, and whether any partition is
/// behind by more than one offset (the last offset may be a transaction marker, never delivered).
/// A partition the loop has read nothing from yet counts from the group's committed offset (or
/// the log start, where retention removed what was committed). Partitions whose leader does not
/// answer are left out of the sum; `None` when none answered.
fn lag(probe: &BaseConsumer<QuietClient>, topic: &str, positions: &[(i32, i64)]) -> Option<(i64, bool)> {
    let unread: Vec<i32> = positions.iter().filter(|(_, pos)| *pos < 0).map(|(p, _)| *p).collect();
    let committed = if unread.is_empty() {
        TopicPartitionList::new()
    } else {
        let mut tpl = TopicPartitionList::new();
        for p in &unread {
            tpl.add_partition(topic, *p);
        }
        probe.committed_offsets(tpl, LAG_TIMEOUT).unwrap_or_default()
    };
    let (mut total, mut behind, mut answered) = (0i64, false, positions.is_empty());
    for &(partition, position) in positions {
        let Ok((low, high)) = probe.fetch_watermarks(topic, partition, LAG_TIMEOUT) else { continue };
        let from = if position >= 0 {
            position
        } else {
            match committed.find_partition(topic, partition).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o.max(low),
                _ => low,
            }
        };
        let partition_lag = (high - from).max(0);
        total += partition_lag;
        behind |= partition_lag > 1;
        answered = true;
    }
    answered.then_some((total, behind))
}

/// The last readiness and liveness said in the log, so each change is said once.
#[derive(Default)]
struct Said {
    ready: Option<Result<(), String>>,
    live: Option<Result<(), String>>,
}

impl Said {
    fn changes(&mut self, telemetry: &Telemetry) {
        let now = Instant::now();
        let ready = telemetry.readiness(now);
        // The reason's figures (seconds, records) change every tick: a change of state is news.
        if self.ready.as_ref().is_none_or(|r| r.is_ok() != ready.is_ok()) {
            telemetry.emit(events::ReadinessChanged { ready: &ready });
            self.ready = Some(ready);
        }
        let live = telemetry.liveness(now);
        if self.live.as_ref().is_none_or(|l| l.is_ok() != live.is_ok()) {
            telemetry.emit(events::LivenessChanged { live: &live });
            self.live = Some(live);
        }
    }
}
