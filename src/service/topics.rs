//! Topic administration and reading a topic to its end: creating the gate's topics, and the
//! read-committed reader the loop uses for progress and verdicts (and tests for outputs).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer},
    types::RDKafkaErrorCode,
    Message, Offset, TopicPartitionList,
};

use super::clients::client_config;
use crate::{config::Config, gate::PartitionProgress};

/// Creates the input, reviews, output and progress topics if they are missing (the progress
/// topic compacted).
pub async fn ensure_topics(config: &Config, partitions: i32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(config).create().context("admin client")?;
    let k = &config.kafka;
    let plain = [&k.input_topic, &k.accepted_topic, &k.rereview_topic, &k.verdicts_topic, &k.dlq_topic, &k.reviews_topic];
    let mut topics: Vec<NewTopic> = plain.iter().map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1))).collect();
    topics.push(NewTopic::new(&k.progress_topic, 1, TopicReplication::Fixed(1)).set("cleanup.policy", "compact"));
    let results = admin.create_topics(&topics, &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)))).await?;
    for r in results {
        if let Err((topic, code)) = r {
            if code != RDKafkaErrorCode::TopicAlreadyExists {
                bail!("cannot create topic {topic}: {code}");
            }
        }
    }
    Ok(())
}

/// Reads a topic from the beginning to its current end (committed data only). Meant for the
/// topics the gate writes: they are written in transactions, so each partition's last offset is
/// a commit marker, which is why a consumer position one short of the end counts as done.
pub fn read_topic(config: &Config, topic: &str, mut each: impl FnMut(&[u8], &[u8])) -> Result<()> {
    read_topic_messages(config, topic, |m| each(m.key().unwrap_or_default(), m.payload().unwrap_or_default()))
}

/// Like [`read_topic`], with the whole message (headers, partition, offset).
pub fn read_topic_messages(config: &Config, topic: &str, mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>)) -> Result<()> {
    let consumer: BaseConsumer =
        client_config(config).set("group.id", format!("{}-reader", config.kafka.group_id)).set("enable.auto.commit", "false").set("isolation.level", "read_committed").create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let Some(t) = metadata.topics().first() else { return Ok(()) };
    let mut ends = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in t.partitions() {
        let (low, high) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
        if high > low {
            ends.insert(p.id(), high);
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
        }
    }
    if ends.is_empty() {
        return Ok(());
    }
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ends.is_empty() && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                // A record written after this read took its ends (a replica still writing) is not
                // this read's, and may come after its partition is done.
                let Some(&end) = ends.get(&m.partition()) else { continue };
                if m.offset() < end {
                    each(&m);
                }
                // Transaction markers take offsets too: done once the next offset reaches the end.
                if m.offset() + 1 >= end {
                    ends.remove(&m.partition());
                }
            }
            Some(Err(e)) => return Err(e.into()),
            None => {
                // The last records may be transaction markers with no message to deliver.
                let position = consumer.position()?;
                for e in position.elements() {
                    if let Offset::Offset(o) = e.offset() {
                        if ends.get(&e.partition()).is_some_and(|&end| o >= end - 1) {
                            ends.remove(&e.partition());
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// The progress topic's key for an input partition.
pub(super) fn progress_key(config: &Config, partition: i32) -> String {
    format!("{}/{partition}", config.kafka.input_topic)
}

/// Every input partition's last committed progress record, by progress key.
pub(super) fn read_progress(config: &Config) -> Result<HashMap<String, PartitionProgress>> {
    let mut progress = HashMap::new();
    read_topic(config, &config.kafka.progress_topic, |key, value| {
        if let Ok(p) = serde_json::from_slice::<PartitionProgress>(value) {
            progress.insert(String::from_utf8_lossy(key).into_owned(), p);
        }
    })?;
    Ok(progress)
}
