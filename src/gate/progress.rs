//! Which input offsets may be committed: per partition, the records in flight, the offsets done
//! above the commit point (written to the progress topic), and dead letters' own commits.

use std::collections::BTreeSet;

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
}
