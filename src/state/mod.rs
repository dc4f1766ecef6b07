//! What must outlive a process: the reference pool, each vendor's delivery history with its
//! accuracy, delivery states and verdicts, the suspects routed to re-review, and the reviews of
//! them. [`redis::RedisState`] in production, [`MemoryState`] for the embedded demo and unit
//! tests. Every write is idempotent, so replaying a window after a crash leaves the same state.
//! Key layout: docs/state.md.

pub mod redis;

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::Mutex,
};

use serde::{Deserialize, Serialize};

pub use crate::gate::window_state::{DeliveryRevision, SuspectRecord, WindowState};
use crate::{
    accuracy::{DeliveryRecord, Rejudged, ReviewStats},
    gate::window::PriorLabel,
};

/// Why a state-store call failed, with its source error kept. [`StateError::recovery`] answers
/// the one question callers have: retry, or stop.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Redis refused or failed the call; the redis crate classifies whether a retry can help.
    #[error("state store unreachable or failing: {source}")]
    Redis { source: ::redis::RedisError },
    /// Redis refused the credentials (`WRONGPASS`, `NOAUTH`): waiting cannot fix them.
    #[error("state.redis.username / state.redis.password: Redis refused the credentials; check the user and the password (LABELGATE__STATE__REDIS__USERNAME, LABELGATE__STATE__REDIS__PASSWORD)")]
    Refused { source: ::redis::RedisError },
    /// Nothing answered within the timeout (an unreachable host, a stalled server).
    #[error("state store: no answer from {target} within {after:?}")]
    NoAnswer { target: String, after: std::time::Duration },
    /// A stored value that does not parse: no retry can fix data.
    #[error("corrupt state at `{key}`: {source}")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    /// A setting that no retry can fix (bad URL, unreadable CA file); names the key.
    #[error("{key}: {message}")]
    Config { key: &'static str, message: String },
}

pub use crate::retry::Recovery;

impl StateError {
    /// A Redis error, told apart: refused credentials are [`StateError::Refused`].
    pub fn from_redis(source: ::redis::RedisError) -> Self {
        let refused = source.kind() == ::redis::ErrorKind::AuthenticationFailed || matches!(source.code(), Some("WRONGPASS" | "NOAUTH"));
        if refused {
            StateError::Refused { source }
        } else {
            StateError::Redis { source }
        }
    }

    pub fn recovery(&self) -> Recovery {
        match self {
            // NoRetry covers permanent refusals (an ACL without the command, a script error, a
            // bad reply type); connection and server-busy errors are retried.
            StateError::Redis { source } => match source.retry_method() {
                ::redis::RetryMethod::NoRetry => Recovery::Stop,
                _ => Recovery::Retry,
            },
            StateError::NoAnswer { .. } => Recovery::Retry,
            StateError::Corrupt { .. } | StateError::Config { .. } | StateError::Refused { .. } => Recovery::Stop,
        }
    }
}

/// Whether a delivery is being scored or was gated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Taken into a window that has not committed yet.
    Scoring,
    /// Its verdict was committed.
    Gated,
}

/// A human's final answer on a re-reviewed sample (`annotations.reviews`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Review {
    pub sample_id: String,
    pub final_label: String,
    pub reviewer: String,
    #[serde(default)]
    pub ts: Option<serde_json::Value>,
}

/// What one review changed: for each vendor whose suspect it settled, whether the vendor's
/// label was really wrong. Empty when the sample was not a suspect or was reviewed before.
pub type ReviewOutcome = Vec<(String, bool)>;

pub trait StateStore: Send + Sync {
    fn ping(&self) -> Result<(), StateError>;
    /// The pooled samples, per class, oldest first.
    fn load_pool(&self, classes: usize) -> Result<Vec<(u32, Vec<f32>)>, StateError>;
    /// Deliveries taken into a window: state `scoring`.
    fn mark_scoring(&self, window_id: &str, batch_ids: &[String]) -> Result<(), StateError>;
    /// Everything a window changed, written atomically.
    fn save_window(&self, window: &WindowState) -> Result<(), StateError>;
    /// The vendor's gated deliveries since `since_ms` (unix milliseconds), oldest first.
    fn vendor_history(&self, vendor: &str, since_ms: u64) -> Result<Vec<DeliveryRecord>, StateError>;
    /// State of one delivery: `scoring` or `gated`, with its record once gated.
    fn delivery(&self, batch_id: &str) -> Result<Option<(DeliveryState, Option<DeliveryRecord>)>, StateError>;
    /// Settles the suspects of `review.sample_id` once per (sample, vendor); replays change nothing.
    fn record_review(&self, review: &Review) -> Result<ReviewOutcome, StateError>;
    fn review_stats(&self, vendor: &str) -> Result<ReviewStats, StateError>;
    /// Labels earlier windows gated for these sample_ids, one per (sample, vendor): the latest.
    fn sample_labels(&self, sample_ids: &[String]) -> Result<Vec<PriorLabel>, StateError>;
}

/// In-process state: the same contract, lost when the process ends.
#[derive(Default)]
pub struct MemoryState {
    inner: Mutex<Memory>,
}

#[derive(Default)]
struct Memory {
    pool: BTreeMap<u32, VecDeque<Vec<f32>>>,
    deliveries: HashMap<String, (DeliveryState, Option<DeliveryRecord>)>,
    by_vendor: HashMap<String, BTreeMap<String, u64>>,
    suspects: HashMap<String, BTreeMap<String, SuspectRecord>>,
    reviewed: HashMap<(String, String), String>,
    reviews: HashMap<String, ReviewStats>,
    labels: HashMap<String, BTreeMap<String, PriorLabel>>,
    revised: HashMap<String, f64>,
    rejudged: HashMap<String, Rejudged>,
}

impl StateStore for MemoryState {
    fn ping(&self) -> Result<(), StateError> {
        Ok(())
    }

    fn load_pool(&self, _classes: usize) -> Result<Vec<(u32, Vec<f32>)>, StateError> {
        let m = self.inner.lock().unwrap();
        Ok(m.pool.iter().flat_map(|(c, q)| q.iter().map(move |f| (*c, f.clone()))).collect())
    }

    fn mark_scoring(&self, _window_id: &str, batch_ids: &[String]) -> Result<(), StateError> {
        let mut m = self.inner.lock().unwrap();
        for b in batch_ids {
            m.deliveries.entry(b.clone()).or_insert_with(|| (DeliveryState::Scoring, None));
        }
        Ok(())
    }

    fn save_window(&self, w: &WindowState) -> Result<(), StateError> {
        let mut m = self.inner.lock().unwrap();
        for (c, f) in &w.pool_added {
            let q = m.pool.entry(*c).or_default();
            q.push_back(f.clone());
            while q.len() > w.pool_capacity_per_class {
                q.pop_front();
            }
        }
        for d in &w.deliveries {
            // Gated (again): its labels carry fresh values, so earlier revisions no longer apply.
            m.revised.remove(&d.batch_id);
            m.rejudged.remove(&d.batch_id);
            m.deliveries.insert(d.batch_id.clone(), (DeliveryState::Gated, Some(d.clone())));
            m.by_vendor.entry(d.vendor_id.clone()).or_default().insert(d.batch_id.clone(), d.gated_at_ms);
        }
        for s in &w.suspects {
            m.suspects.entry(s.sample_id.clone()).or_default().insert(s.vendor_id.clone(), s.clone());
        }
        for l in &w.labels {
            m.labels.entry(l.sample_id.clone()).or_default().insert(l.vendor_id.clone(), l.clone());
        }
        for r in &w.revisions {
            *m.revised.entry(r.batch_id.clone()).or_default() += r.wrong_delta;
            let rejudged = m.rejudged.entry(r.batch_id.clone()).or_default();
            rejudged.labels += r.rejudged_labels;
            rejudged.wrong += r.rejudged_wrong_delta;
        }
        Ok(())
    }

    fn sample_labels(&self, sample_ids: &[String]) -> Result<Vec<PriorLabel>, StateError> {
        let m = self.inner.lock().unwrap();
        Ok(sample_ids.iter().filter_map(|id| m.labels.get(id)).flat_map(|by_vendor| by_vendor.values().cloned()).collect())
    }

    fn vendor_history(&self, vendor: &str, since_ms: u64) -> Result<Vec<DeliveryRecord>, StateError> {
        let m = self.inner.lock().unwrap();
        let Some(batches) = m.by_vendor.get(vendor) else { return Ok(Vec::new()) };
        let mut out: Vec<DeliveryRecord> = batches
            .iter()
            .filter(|(_, &t)| t >= since_ms)
            .filter_map(|(b, _)| m.deliveries.get(b).and_then(|(_, d)| d.clone()))
            .map(|d| DeliveryRecord { revised_wrong: m.revised.get(&d.batch_id).copied().unwrap_or(0.0), rejudged: m.rejudged.get(&d.batch_id).copied().unwrap_or_default(), ..d })
            .collect();
        out.sort_by_key(|d| d.gated_at_ms);
        Ok(out)
    }

    fn delivery(&self, batch_id: &str) -> Result<Option<(DeliveryState, Option<DeliveryRecord>)>, StateError> {
        Ok(self.inner.lock().unwrap().deliveries.get(batch_id).cloned())
    }

    fn record_review(&self, review: &Review) -> Result<ReviewOutcome, StateError> {
        let mut m = self.inner.lock().unwrap();
        let suspects: Vec<SuspectRecord> = m.suspects.get(&review.sample_id).map(|s| s.values().cloned().collect()).unwrap_or_default();
        let mut outcome = Vec::new();
        for s in suspects {
            let key = (review.sample_id.clone(), s.vendor_id.clone());
            if m.reviewed.contains_key(&key) {
                continue;
            }
            m.reviewed.insert(key, review.final_label.clone());
            let wrong = s.label != review.final_label;
            let stats = m.reviews.entry(s.vendor_id.clone()).or_default();
            stats.reviewed += 1;
            stats.confirmed_wrong += wrong as u64;
            outcome.push((s.vendor_id, wrong));
        }
        Ok(outcome)
    }

    fn review_stats(&self, vendor: &str) -> Result<ReviewStats, StateError> {
        Ok(self.inner.lock().unwrap().reviews.get(vendor).copied().unwrap_or_default())
    }
}

/// The contract every implementation must meet: run against both (the Redis one in
/// tests/state_redis.rs). Keys are made unique with `prefix_free_id`.
#[doc(hidden)]
pub fn check_contract(store: &dyn StateStore, prefix_free_id: &str) {
    use crate::wire::Decision;
    let id = |s: &str| format!("{prefix_free_id}-{s}");
    let record = |batch: &str, vendor: &str, t: u64, acc: f64| DeliveryRecord {
        batch_id: batch.into(),
        vendor_id: vendor.into(),
        records: 100,
        flagged: ((1.0 - acc) * 100.0) as usize,
        estimated_accuracy: acc,
        gold_items: 4,
        gold_correct: 3,
        gated_at_ms: t,
        decision: Decision::Accept,
        window_id: "w1".into(),
        calibration: "none".into(),
        evidence: Some(crate::accuracy::evidence::EvidenceStatus::Consistent),
        revised_wrong: 0.0,
        rejudged: Rejudged::default(),
    };
    let (b1, b2, v) = (id("b1"), id("b2"), id("vendor"));
    // Recent times: history older than the retention is trimmed on write.
    let base = crate::clock::unix_millis() - 10_000;
    store.ping().unwrap();
    store.mark_scoring("w1", std::slice::from_ref(&b1)).unwrap();
    assert_eq!(store.delivery(&b1).unwrap().unwrap().0, DeliveryState::Scoring);
    let window = WindowState {
        window_id: "w1".into(),
        pool_added: vec![(0, vec![1.0, 2.0]), (0, vec![3.0, 4.0]), (0, vec![5.0, 6.0]), (1, vec![7.0, 8.0])],
        pool_capacity_per_class: 2,
        deliveries: vec![record(&b1, &v, base, 0.9), record(&b2, &v, base + 1_000, 0.7)],
        suspects: vec![SuspectRecord { sample_id: id("s1"), vendor_id: v.clone(), batch_id: b1.clone(), label: "cat".into(), window_id: "w1".into() }],
        labels: vec![
            PriorLabel { sample_id: id("s1"), vendor_id: v.clone(), label: 0, score: 1.5, batch_id: b1.clone(), p_wrong: 1.0, gated_p_wrong: Some(1.0), rejudged_flag: None },
            PriorLabel { sample_id: id("s1"), vendor_id: id("other"), label: 1, score: -0.5, batch_id: id("b9"), p_wrong: 0.25, gated_p_wrong: None, rejudged_flag: None },
            PriorLabel { sample_id: id("s2"), vendor_id: v.clone(), label: 1, score: 0.0, batch_id: b1.clone(), p_wrong: 0.0, gated_p_wrong: Some(0.0), rejudged_flag: None },
        ],
        revisions: vec![],
    };
    // Twice: a replayed window must leave the same state.
    store.save_window(&window).unwrap();
    store.save_window(&WindowState { pool_added: vec![], ..window.clone() }).unwrap();
    let (state, rec) = store.delivery(&b1).unwrap().unwrap();
    assert_eq!((state, rec.unwrap().estimated_accuracy), (DeliveryState::Gated, 0.9));
    let mut labels = store.sample_labels(&[id("s1"), id("s2"), id("unseen")]).unwrap();
    labels.sort_by(|a, b| (&a.sample_id, &a.vendor_id).cmp(&(&b.sample_id, &b.vendor_id)));
    let mut want = window.labels.clone();
    want.sort_by(|a, b| (&a.sample_id, &a.vendor_id).cmp(&(&b.sample_id, &b.vendor_id)));
    assert_eq!(labels, want, "one label per (sample, vendor), from any earlier window, replays included");
    let history = store.vendor_history(&v, 0).unwrap();
    assert_eq!(history.iter().map(|d| d.batch_id.clone()).collect::<Vec<_>>(), vec![b1.clone(), b2.clone()]);
    assert_eq!(store.vendor_history(&v, base + 500).unwrap().len(), 1);
    assert!(history.iter().all(|d| d.revised_wrong == 0.0));
    // A later window re-judges b1's labels: its expected wrong count moves, each write adding.
    let later = WindowState {
        window_id: "w2".into(),
        revisions: vec![DeliveryRevision { batch_id: b1.clone(), vendor_id: v.clone(), wrong_delta: -2.5, rejudged_labels: 30, rejudged_wrong_delta: 4.0 }],
        ..Default::default()
    };
    store.save_window(&later).unwrap();
    store.save_window(&WindowState { revisions: vec![DeliveryRevision { wrong_delta: 0.5, rejudged_labels: 5, rejudged_wrong_delta: -1.0, ..later.revisions[0].clone() }], ..later.clone() }).unwrap();
    let history = store.vendor_history(&v, 0).unwrap();
    assert_eq!(history.iter().map(|d| d.revised_wrong).collect::<Vec<_>>(), vec![-2.0, 0.0]);
    assert_eq!(history.iter().map(|d| d.rejudged).collect::<Vec<_>>(), vec![Rejudged { labels: 35, wrong: 3.0 }, Rejudged::default()], "re-judged labels add up per delivery");
    let pool = store.load_pool(2).unwrap();
    let zeros: Vec<&Vec<f32>> = pool.iter().filter(|(c, _)| *c == 0).map(|(_, f)| f).collect();
    assert_eq!(zeros, vec![&vec![3.0, 4.0], &vec![5.0, 6.0]], "capped per class, newest kept, oldest first");
    let review = Review { sample_id: id("s1"), final_label: "dog".into(), reviewer: "r".into(), ts: None };
    assert_eq!(store.record_review(&review).unwrap(), vec![(v.clone(), true)]);
    assert_eq!(store.record_review(&review).unwrap(), vec![], "a replayed review counts once");
    let unknown = Review { sample_id: id("never-flagged"), ..review };
    assert_eq!(store.record_review(&unknown).unwrap(), vec![]);
    assert_eq!(store.review_stats(&v).unwrap(), ReviewStats { reviewed: 1, confirmed_wrong: 1 });
}

#[cfg(test)]
mod tests {
    #[test]
    fn memory_state_meets_the_contract() {
        super::check_contract(&super::MemoryState::default(), "t");
    }
}
