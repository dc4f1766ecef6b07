//! The review step of the loop: reviews from the reviews topic into the state store (offsets
//! committed once stored), and the vendor gauges refreshed from the store's history.

use std::time::Duration;

use anyhow::Result;
use rdkafka::{
    consumer::{CommitMode, Consumer},
    Message,
};

use super::gate_loop::GateLoop;
use crate::{accuracy, state::Review, telemetry::events};

/// Reviews taken per step, so a backlog of reviews cannot starve the input.
const REVIEWS_PER_STEP: usize = 256;

impl GateLoop<'_> {
    /// Stores the reviews that arrived; commits their offsets once stored.
    pub(super) fn process_reviews(&mut self) -> Result<()> {
        for _ in 0..REVIEWS_PER_STEP {
            let message = match self.reviews.poll(Duration::ZERO) {
                None => break,
                Some(Err(e)) => {
                    self.telemetry.emit(events::ConsumerError { error: &e });
                    break;
                }
                Some(Ok(m)) => m.detach(),
            };
            match serde_json::from_slice::<Review>(message.payload().unwrap_or_default()) {
                Err(e) => self.telemetry.emit(events::ReviewInvalid { partition: message.partition(), offset: message.offset(), error: &e }),
                Ok(review) => {
                    let outcome = self.with_state("record_review", |s| s.record_review(&review))?;
                    let mut vendors = Vec::new();
                    for (vendor, confirmed_wrong) in outcome {
                        self.telemetry.emit(events::ReviewRecorded { vendor: &vendor, confirmed_wrong });
                        vendors.push(vendor);
                    }
                    self.known_vendors.extend(vendors.iter().cloned());
                    self.refresh_vendor_gauges(&vendors);
                }
            }
            let mut offsets = rdkafka::TopicPartitionList::new();
            offsets.add_partition_offset(message.topic(), message.partition(), rdkafka::Offset::Offset(message.offset() + 1))?;
            self.reviews.commit(&offsets, CommitMode::Async)?;
        }
        Ok(())
    }

    /// Refreshes each vendor's gauges from its history in the state store. A failure leaves the
    /// gauges as they were and ends this refresh (the next window or refresh retries): with Redis
    /// hung, each vendor would cost a timeout and the loop would stall behind them.
    pub(super) fn refresh_vendor_gauges(&self, vendors: &[String]) {
        let gate = &self.config.gate;
        let since = crate::clock::unix_millis().saturating_sub(gate.vendor_accuracy_window_secs * 1000);
        for v in vendors {
            self.telemetry.health().beat(std::time::Instant::now());
            let figures = self.state.vendor_history(v, since).and_then(|h| Ok((h, self.state.review_stats(v)?)));
            match figures {
                Ok((history, _)) if history.is_empty() => self.telemetry.emit(events::VendorIdle { vendor: v }),
                Ok((history, reviews)) => self.telemetry.emit(events::VendorUpdated {
                    vendor: v,
                    accuracy: accuracy::rolling_accuracy(&history, reviews, gate.min_reviews),
                    sla: gate.sla(v),
                    gold_accuracy: accuracy::rolling_gold_accuracy(&history),
                    suspect_precision: reviews.precision(),
                }),
                Err(e) => {
                    self.telemetry.emit(events::VendorNotRefreshed { vendor: v, error: &e });
                    return;
                }
            }
        }
    }
}
