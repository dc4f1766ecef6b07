//! Per input partition: which offsets may be committed (the records in flight, the offsets done
//! above the commit point, written to the progress topic), dead letters' own commits, and whether
//! the partition is read to its end, which alone lets a quiet delivery close by timeout.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::{Commit, Gate, Output, SourcePos};

/// Per input partition: commit `commit_offset`; offsets in `done` (half-open ranges above it)
/// are already routed and must be skipped when re-read. Written to the progress topic in the
/// same transaction as the outputs and the offsets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionProgress {
    pub partition: i32,
    pub commit_offset: i64,
    pub done: Vec<(i64, i64)>,
}

#[derive(Default)]
pub(super) struct PartitionTrack {
    pub(super) next_offset: i64,
    pub(super) in_flight: BTreeSet<i64>,
    /// Ranges already done before a restart, from the progress topic.
    pub(super) skip: Vec<(i64, i64)>,
    /// Since when the edge has seen this partition read to its end (None: not, or unknown).
    pub(super) at_end_since: Option<std::time::Instant>,
}

impl Gate {
    /// A partition was assigned: `progress` is its last committed progress record, if any.
    pub fn assign(&mut self, partition: i32, progress: Option<PartitionProgress>) {
        let track = self.partitions.entry(partition).or_default();
        if let Some(p) = progress {
            track.skip = p.done;
            track.next_offset = track.next_offset.max(p.commit_offset);
        }
    }

    /// A partition was revoked: forget its buffered records; the next owner re-reads them from
    /// the committed offset.
    pub fn revoke(&mut self, partition: i32) {
        self.deliveries.retain(|(p, _), d| {
            if *p == partition {
                self.buffered -= d.records.len();
            }
            *p != partition
        });
        self.dead_letters.retain(|o| !matches!(o, Output::DeadLetter { pos, .. } if pos.partition == partition));
        self.in_window.retain(|_, p| *p != partition);
        self.partitions.remove(&partition);
    }

    /// Dead letters waiting with no window due: a commit of their own.
    pub fn flush_dead_letters(&mut self) -> Option<Commit> {
        if self.dead_letters.is_empty() {
            return None;
        }
        let mut commit = Commit::default();
        let mut done = Vec::new();
        self.drain_dead_letters(&mut commit, &mut done);
        commit.progress = self.mark_done(&done);
        Some(commit)
    }

    pub(super) fn drain_dead_letters(&mut self, commit: &mut Commit, done: &mut Vec<SourcePos>) {
        for o in self.dead_letters.drain(..) {
            if let Output::DeadLetter { pos, .. } = &o {
                done.push(*pos);
            }
            commit.routed += 1;
            commit.outputs.push(o);
        }
    }

    /// Marks positions done and returns the progress of every partition they touch.
    pub(super) fn mark_done(&mut self, done: &[SourcePos]) -> Vec<PartitionProgress> {
        let mut touched = BTreeSet::new();
        for pos in done {
            if let Some(t) = self.partitions.get_mut(&pos.partition) {
                t.in_flight.remove(&pos.offset);
                touched.insert(pos.partition);
            }
        }
        touched.into_iter().map(|p| self.progress_of(p)).collect()
    }

    /// Commit offset = lowest offset still in flight (or the next to read); done = the gaps
    /// between in-flight offsets below the next offset to read.
    pub fn progress_of(&self, partition: i32) -> PartitionProgress {
        let t = &self.partitions[&partition];
        let commit_offset = t.in_flight.first().copied().unwrap_or(t.next_offset);
        let mut done = Vec::new();
        let mut start = commit_offset;
        for &o in t.in_flight.iter() {
            if o > start {
                done.push((start, o));
            }
            start = o + 1;
        }
        if start < t.next_offset && commit_offset < t.next_offset {
            done.push((start, t.next_offset));
        }
        PartitionProgress { partition, commit_offset, done }
    }

    /// Partitions with an open delivery that has been quiet for half the delivery timeout: the
    /// edge says of each whether it is read to its end ([`Gate::partition_at_end`]) before any of
    /// its deliveries may close by timeout.
    pub fn quiet_partitions(&self, now: Instant) -> BTreeSet<i32> {
        let half = Duration::from_secs(self.config.delivery_timeout_secs) / 2;
        self.deliveries.values().filter(|d| d.closed.is_none() && now.duration_since(d.last_seen) >= half).map(|d| d.partition).collect()
    }

    /// Whether `partition` is read to its end (`false` also when that is unknown: the broker
    /// did not answer, or the input is paused).
    pub fn partition_at_end(&mut self, partition: i32, at_end: bool, now: Instant) {
        if let Some(t) = self.partitions.get_mut(&partition) {
            t.at_end_since = if at_end { Some(t.at_end_since.unwrap_or(now)) } else { None };
        }
    }

    /// Closes the deliveries that timed out: a delivery closes only once its partition has been
    /// read to its end and nothing of it arrived for `gate.delivery_timeout_secs`, counted from
    /// its last record or from reaching the end, whichever is later. So a broker stall, a pause
    /// or a consumer lagging behind never closes a delivery on part of its records.
    pub fn close_idle(&mut self, now: Instant) -> usize {
        let timeout = Duration::from_secs(self.config.delivery_timeout_secs);
        let mut closed = 0;
        for d in self.deliveries.values_mut().filter(|d| d.closed.is_none()) {
            let Some(at_end) = self.partitions.get(&d.partition).and_then(|t| t.at_end_since) else { continue };
            if now.duration_since(d.last_seen.max(at_end)) >= timeout {
                let why = if d.end.is_some() { "timeout_after_short_batch_end" } else { "timeout" };
                d.closed = Some((now, why));
                closed += 1;
            }
        }
        closed
    }
}
