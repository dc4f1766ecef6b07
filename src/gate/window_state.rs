//! What a committed window changes in the state store, as the gate writes it: deliveries,
//! suspects, pooled samples, gated labels and revisions of earlier deliveries.

use serde::{Deserialize, Serialize};

use super::window::PriorLabel;
use crate::accuracy::DeliveryRecord;

/// A suspect routed to re-review, kept until its review arrives (or it expires).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuspectRecord {
    pub sample_id: String,
    pub vendor_id: String,
    pub batch_id: String,
    /// The vendor's label (class name).
    pub label: String,
    pub window_id: String,
}

/// Everything a committed window changes.
#[derive(Debug, Clone, Default)]
pub struct WindowState {
    pub window_id: String,
    /// Accepted samples added to the reference pool: (class, features).
    pub pool_added: Vec<(u32, Vec<f32>)>,
    pub pool_capacity_per_class: usize,
    pub deliveries: Vec<DeliveryRecord>,
    pub suspects: Vec<SuspectRecord>,
    /// Every gated label (sample, vendor, class, score), kept for the retention period so that
    /// agreement sees a sample's labels whichever window they arrive in.
    pub labels: Vec<PriorLabel>,
    /// Earlier deliveries re-judged by this window's agreement model.
    pub revisions: Vec<DeliveryRevision>,
}

/// A later window's agreement changed how many labels of an earlier delivery look wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryRevision {
    pub batch_id: String,
    pub vendor_id: String,
    /// Added to the delivery's expected count of wrong labels.
    pub wrong_delta: f64,
    /// Labels of the delivery judged again for the first time.
    pub rejudged_labels: u32,
    /// Added to the count of its re-judged labels that were flagged (each at its latest flag).
    pub rejudged_wrong_delta: f64,
}

impl WindowState {
    /// Vendors whose figures this window changed: its own and those of revised deliveries.
    pub fn vendors(&self) -> Vec<String> {
        let mut v: Vec<String> = self.deliveries.iter().map(|d| d.vendor_id.clone()).chain(self.revisions.iter().map(|r| r.vendor_id.clone())).collect();
        v.sort();
        v.dedup();
        v
    }
}
