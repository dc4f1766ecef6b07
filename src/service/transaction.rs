//! One commit in one Kafka transaction: the outputs turned into records, sent with the progress
//! records and the input offsets, then counted. Any failure aborts the transaction and stops the
//! gate; a restart resumes from the last committed transaction.

use anyhow::{Context as _, Result};
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    message::{Header, OwnedHeaders},
    producer::{BaseRecord, Producer},
    Offset, TopicPartitionList,
};

use super::{
    clients::{send_retrying_when_full, GateContext, OutputProducer, TXN_COMMIT_TIMEOUT, TXN_TIMEOUT},
    topics::progress_key,
    Hooks, RunSummary,
};
use crate::{
    config::Config,
    gate::{Commit, Output},
    telemetry::{events, Escaped, Telemetry},
    wire::headers,
};

/// One record to produce: topic, key, value and headers.
pub struct OutgoingRecord {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: OwnedHeaders,
}

/// The records of a commit's outputs, built before anything is sent.
pub fn records_for_commit(config: &Config, commit: &Commit) -> Result<Vec<OutgoingRecord>> {
    let k = &config.kafka;
    let record = |topic: &str, key: Option<Vec<u8>>, payload: Vec<u8>, headers: OwnedHeaders| OutgoingRecord { topic: topic.to_string(), key, payload, headers };
    let mut records = Vec::with_capacity(commit.outputs.len());
    for o in &commit.outputs {
        records.push(match o {
            Output::Accepted { key, payload, score, window_id, .. } => record(
                &k.accepted_topic,
                key.clone(),
                payload.clone(),
                OwnedHeaders::new().insert(Header { key: headers::SCORE, value: Some(&score.to_string()) }).insert(Header { key: headers::WINDOW, value: Some(window_id.as_str()) }),
            ),
            Output::Rereview(r) => record(&k.rereview_topic, Some(r.batch_id.clone().into_bytes()), serde_json::to_vec(r)?, OwnedHeaders::new()),
            Output::Verdict(v) => record(&k.verdicts_topic, Some(v.batch_id.clone().into_bytes()), serde_json::to_vec(v)?, OwnedHeaders::new()),
            Output::DeadLetter { key, payload, headers: original, dropped, reason, message, pos } => {
                // The record's own headers first, kept as they came (a replay needs them whole),
                // then the gate's, whose message may quote an id: escaped, so no control byte
                // reaches a header reader's terminal.
                let message = Escaped::text(message);
                let mut h = OwnedHeaders::new_with_capacity(original.len() + 7);
                for (name, value) in original {
                    h = h.insert(Header { key: name, value: Some(value.as_slice()) });
                }
                h = h
                    .insert(Header { key: headers::ERROR_CLASS, value: Some(reason.as_str()) })
                    .insert(Header { key: headers::ERROR_MESSAGE, value: Some(&*message) })
                    .insert(Header { key: headers::SOURCE_TOPIC, value: Some(k.input_topic.as_str()) })
                    .insert(Header { key: headers::SOURCE_PARTITION, value: Some(&pos.partition.to_string()) })
                    .insert(Header { key: headers::SOURCE_OFFSET, value: Some(&pos.offset.to_string()) });
                if let Some(d) = dropped {
                    h = h.insert(Header { key: headers::PAYLOAD_BYTES, value: Some(&d.bytes.to_string()) }).insert(Header { key: headers::PAYLOAD_SHA256, value: Some(d.sha256.as_str()) });
                }
                record(&k.dlq_topic, key.clone(), payload.clone(), h)
            }
        });
    }
    Ok(records)
}

/// Sends the records, the commit's progress records and its input offsets in one transaction.
pub fn send_in_transaction(config: &Config, producer: &OutputProducer, consumer: &BaseConsumer<GateContext>, commit: &Commit, records: &[OutgoingRecord]) -> Result<()> {
    let k = &config.kafka;
    let result = (|| -> Result<()> {
        producer.begin_transaction()?;
        for r in records {
            let mut rec = BaseRecord::<[u8], [u8]>::to(&r.topic).payload(r.payload.as_slice()).headers(r.headers.clone());
            if let Some(key) = &r.key {
                rec = rec.key(key.as_slice());
            }
            send_retrying_when_full(producer, rec)?;
        }
        let mut offsets = TopicPartitionList::new();
        for p in &commit.progress {
            let key = progress_key(config, p.partition);
            let value = serde_json::to_vec(p)?;
            send_retrying_when_full(producer, BaseRecord::<[u8], [u8]>::to(&k.progress_topic).key(key.as_bytes()).payload(&value))?;
            offsets.add_partition_offset(&k.input_topic, p.partition, Offset::Offset(p.commit_offset))?;
        }
        if offsets.count() > 0 {
            let group = consumer.group_metadata().context("no consumer group metadata")?;
            producer.send_offsets_to_transaction(&offsets, &group, TXN_TIMEOUT)?;
        }
        producer.commit_transaction(TXN_COMMIT_TIMEOUT)?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = producer.abort_transaction(TXN_TIMEOUT);
        return Err(e.context("transaction failed; the gate stops and a restart resumes from the last committed transaction"));
    }
    Ok(())
}

/// Counts a committed commit's outputs in the summary and the metrics, and calls the verdict hook.
pub fn count_committed(commit: &Commit, summary: &mut RunSummary, hooks: &Hooks, telemetry: &Telemetry) {
    summary.transactions += 1;
    for o in &commit.outputs {
        match o {
            Output::Accepted { vendor_id, .. } => {
                summary.accepted += 1;
                telemetry.emit(events::RecordRouted { vendor: Some(vendor_id), outcome: "accepted" });
            }
            Output::Rereview(r) => {
                summary.rereview += 1;
                telemetry.emit(events::RecordRouted { vendor: Some(&r.vendor_id), outcome: "rereview" });
            }
            Output::Verdict(v) => {
                summary.verdicts += 1;
                telemetry.emit(events::DeliveryGated { verdict: v });
                if let Some(f) = &hooks.on_verdict {
                    f(v);
                }
            }
            Output::DeadLetter { reason, .. } => {
                *summary.dead_letters.entry(reason.as_str().to_string()).or_default() += 1;
                telemetry.emit(events::DeadLettered { reason: *reason });
            }
        }
    }
}

/// A commit, start to end: its records, the transaction, the counts.
pub fn commit(config: &Config, producer: &OutputProducer, consumer: &BaseConsumer<GateContext>, commit: &Commit, summary: &mut RunSummary, hooks: &Hooks, telemetry: &Telemetry) -> Result<()> {
    let records = records_for_commit(config, commit)?;
    send_in_transaction(config, producer, consumer, commit, &records)?;
    count_committed(commit, summary, hooks, telemetry);
    Ok(())
}
