//! Readiness and liveness, judged when asked from time-stamped traces that the gate loop and its
//! Kafka monitor leave, so a loop that is blocked cannot hold `/readyz` or `/healthz` at 200:
//! neither answer is written by the loop.
//!
//! | check | fails when | answer |
//! | --- | --- | --- |
//! | the loop's own word | starting, draining, a state-store or image-host outage, every broker down | not ready |
//! | broker answers | the monitor's metadata request got no answer for [`HealthLimits::broker_silence`] | not ready |
//! | loop steps | no step for [`HealthLimits::loop_stall_ready`] | not ready |
//! | partitions | none assigned | not ready |
//! | loop blocked | no step for [`HealthLimits::loop_stall`] while a broker answers | unhealthy |
//! | unassigned | no partition for [`HealthLimits::unassigned`] while a broker answers and the group has fewer members than partitions | unhealthy |
//! | no progress | records behind, no window training (with an epoch within [`HealthLimits::window_stall`]), no state-store or image-host outage, nothing consumed or committed for [`HealthLimits::no_progress`] since they fell behind, while a broker answers | unhealthy |
//!
//! A dependency that is down makes the gate not ready, never unhealthy: a restart cannot bring a
//! broker back. Liveness fails only where the dependencies answer and the gate still does nothing.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, AtomicUsize, Ordering},
        Mutex, OnceLock,
    },
    time::{Duration, Instant},
};

/// The bounds of the checks; set once, when the gate loop starts watching itself.
#[derive(Debug, Clone, Copy)]
pub struct HealthLimits {
    /// Kafka counts as up only if a broker answered the monitor within this.
    pub broker_silence: Duration,
    /// Ready only while the loop stepped within this (a commit blocked on a hung broker).
    pub loop_stall_ready: Duration,
    /// Unhealthy when the loop has not stepped for this long while a broker answers.
    pub loop_stall: Duration,
    /// Unhealthy when records wait and nothing was consumed or committed for this long.
    pub no_progress: Duration,
    /// Unhealthy when no input partition was assigned for this long while a broker answers
    /// (longer than a session timeout, so a rebalance after a broker restart fits in it).
    pub unassigned: Duration,
    /// A window in flight excuses a lack of progress only while its epochs end within this.
    pub window_stall: Duration,
}

/// A lag reading older than this says nothing about now.
const LAG_FRESH: Duration = Duration::from_secs(10);

/// Where the loop is, as far as health is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum LoopPhase {
    Starting = 0,
    Consuming = 1,
    Draining = 2,
}

/// The traces and the two judgements. Times are milliseconds since `origin`, plus one (0 = never).
pub struct Health {
    origin: Instant,
    limits: OnceLock<HealthLimits>,
    phase: AtomicU8,
    loop_beat: AtomicU64,
    progress: AtomicU64,
    broker_answered: AtomicU64,
    /// When a broker answered after a silence (or for the first time): time spent waiting for a
    /// broker is no stall of the gate's.
    broker_back: AtomicU64,
    assigned: AtomicUsize,
    unassigned_since: AtomicU64,
    lag: AtomicI64,
    behind: AtomicBool,
    lag_at: AtomicU64,
    /// When the input last fell behind (or partitions came): records wait since then at most.
    behind_since: AtomicU64,
    /// Members of the consumer group and partitions of the input topic (-1: not known).
    group_members: AtomicI64,
    input_partitions: AtomicI64,
    window_in_flight: AtomicBool,
    /// When the window in flight started or last finished an epoch.
    window_progress: AtomicU64,
    outage: AtomicBool,
    /// The assigned input partitions and the loop's position in each (-1: none yet).
    positions: Mutex<Vec<(i32, i64)>>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new(Instant::now())
    }
}

impl Health {
    pub fn new(origin: Instant) -> Self {
        Self {
            origin,
            limits: OnceLock::new(),
            phase: AtomicU8::new(LoopPhase::Starting as u8),
            loop_beat: AtomicU64::new(0),
            progress: AtomicU64::new(0),
            broker_answered: AtomicU64::new(0),
            broker_back: AtomicU64::new(0),
            assigned: AtomicUsize::new(0),
            unassigned_since: AtomicU64::new(0),
            lag: AtomicI64::new(0),
            behind: AtomicBool::new(false),
            lag_at: AtomicU64::new(0),
            behind_since: AtomicU64::new(0),
            group_members: AtomicI64::new(-1),
            input_partitions: AtomicI64::new(-1),
            window_in_flight: AtomicBool::new(false),
            window_progress: AtomicU64::new(0),
            outage: AtomicBool::new(false),
            positions: Mutex::new(Vec::new()),
        }
    }

    fn stamp(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.origin).as_millis() as u64 + 1
    }

    /// How long ago a stamp was (`None`: never).
    fn age(&self, stamp: &AtomicU64, now: Instant) -> Option<Duration> {
        match stamp.load(Ordering::Relaxed) {
            0 => None,
            s => Some(Duration::from_millis(self.stamp(now).saturating_sub(s))),
        }
    }

    /// From now on the checks apply (the gate loop has started; the review bridge never calls it).
    pub fn watch(&self, limits: HealthLimits, now: Instant) {
        let _ = self.limits.set(limits);
        self.unassigned_since.store(self.stamp(now), Ordering::Relaxed);
        self.loop_beat.store(self.stamp(now), Ordering::Relaxed);
        self.progress.store(self.stamp(now), Ordering::Relaxed);
        // A shutdown requested during start-up stays requested.
        let _ = self.phase.compare_exchange(LoopPhase::Starting as u8, LoopPhase::Consuming as u8, Ordering::Relaxed, Ordering::Relaxed);
    }

    pub fn is_watched(&self) -> bool {
        self.limits.get().is_some()
    }

    pub fn set_phase(&self, phase: LoopPhase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    fn phase(&self) -> LoopPhase {
        match self.phase.load(Ordering::Relaxed) {
            1 => LoopPhase::Consuming,
            2 => LoopPhase::Draining,
            _ => LoopPhase::Starting,
        }
    }

    /// The loop stepped (or, waiting out a dependency's outage, is still alive).
    pub fn beat(&self, now: Instant) {
        self.loop_beat.store(self.stamp(now), Ordering::Relaxed);
    }

    /// Records were consumed or a transaction committed.
    pub fn progressed(&self, now: Instant) {
        self.progress.store(self.stamp(now), Ordering::Relaxed);
    }

    /// A broker answered the monitor; `after_silence`: its previous request got no answer (or
    /// this is the first), so the broker is back from an outage.
    pub fn broker_answered(&self, now: Instant, after_silence: bool) {
        if after_silence {
            self.broker_back.store(self.stamp(now), Ordering::Relaxed);
        }
        self.broker_answered.store(self.stamp(now), Ordering::Relaxed);
    }

    /// Members of the input's consumer group and partitions of the input topic, as last read.
    pub fn set_group(&self, members: usize, partitions: usize) {
        self.group_members.store(members as i64, Ordering::Relaxed);
        self.input_partitions.store(partitions as i64, Ordering::Relaxed);
    }

    /// The input partitions assigned now and the loop's position in each.
    pub fn set_positions(&self, positions: Vec<(i32, i64)>, now: Instant) {
        let was = self.assigned.swap(positions.len(), Ordering::Relaxed);
        if positions.is_empty() && was > 0 {
            self.unassigned_since.store(self.stamp(now), Ordering::Relaxed);
        }
        let mut current = self.positions.lock().unwrap();
        let parts = |v: &[(i32, i64)]| v.iter().map(|(p, _)| *p).collect::<Vec<_>>();
        if parts(&current) != parts(&positions) {
            // New partitions may bring a backlog: the gate has had no time for it yet.
            self.behind_since.store(self.stamp(now), Ordering::Relaxed);
        }
        *current = positions;
    }

    pub fn positions(&self) -> Vec<(i32, i64)> {
        self.positions.lock().unwrap().clone()
    }

    /// The monitor's reading: records behind the high watermarks, and whether any partition is
    /// behind by more than the one offset a transaction marker takes.
    pub fn set_lag(&self, records: i64, behind: bool, now: Instant) {
        self.lag.store(records, Ordering::Relaxed);
        if behind && !self.behind.swap(behind, Ordering::Relaxed) {
            self.behind_since.store(self.stamp(now), Ordering::Relaxed);
        }
        self.behind.store(behind, Ordering::Relaxed);
        self.lag_at.store(self.stamp(now), Ordering::Relaxed);
    }

    pub fn lag(&self) -> i64 {
        self.lag.load(Ordering::Relaxed)
    }

    pub fn set_window_in_flight(&self, training: bool, now: Instant) {
        self.window_in_flight.store(training, Ordering::Relaxed);
        self.window_progress.store(self.stamp(now), Ordering::Relaxed);
    }

    /// The window in flight finished an epoch.
    pub fn window_progressed(&self, now: Instant) {
        self.window_progress.store(self.stamp(now), Ordering::Relaxed);
    }

    /// The loop waits out a dependency (the state store, an image host): no progress is due.
    pub fn set_outage(&self, down: bool) {
        self.outage.store(down, Ordering::Relaxed);
    }

    /// Whether a broker answered the monitor after `t`.
    pub fn broker_answered_after(&self, t: Instant) -> bool {
        self.broker_answered.load(Ordering::Relaxed) > self.stamp(t)
    }

    fn broker_up(&self, limits: &HealthLimits, now: Instant) -> bool {
        self.age(&self.broker_answered, now).is_some_and(|a| a <= limits.broker_silence)
    }

    /// The monitor's checks for readiness (the loop's own word is judged by the caller).
    pub fn readiness(&self, now: Instant) -> Result<(), String> {
        let Some(limits) = self.limits.get() else { return Ok(()) };
        if self.phase() != LoopPhase::Consuming {
            return Ok(());
        }
        if !self.broker_up(limits, now) {
            return Err(match self.age(&self.broker_answered, now) {
                Some(a) => format!("Kafka: no broker has answered for {} s", a.as_secs()),
                None => "Kafka: no broker has answered yet".into(),
            });
        }
        let beat = self.age(&self.loop_beat, now).unwrap_or_default();
        if beat > limits.loop_stall_ready {
            return Err(format!("the gate loop has not stepped for {} s", beat.as_secs()));
        }
        if self.assigned.load(Ordering::Relaxed) == 0 {
            return Err("no input partitions assigned".into());
        }
        Ok(())
    }

    /// Whether the gate makes progress where it could: `Err` names what is stuck. Every bound is
    /// counted from the broker's return at the earliest: a call to a hung broker may still be
    /// timing out, and records waited for the broker, not for the gate.
    pub fn liveness(&self, now: Instant) -> Result<(), String> {
        let Some(limits) = self.limits.get() else { return Ok(()) };
        if self.phase() != LoopPhase::Consuming || !self.broker_up(limits, now) {
            return Ok(());
        }
        let back = self.age(&self.broker_back, now).unwrap_or_default();
        let since = |stamp: &AtomicU64| self.age(stamp, now).unwrap_or_default().min(back);
        let beat = since(&self.loop_beat);
        if beat > limits.loop_stall {
            return Err(format!("the gate loop has not stepped for {} s while the broker answers", beat.as_secs()));
        }
        let unassigned = since(&self.unassigned_since);
        // A replica beyond the partition count has none by design: only where the group has
        // fewer members than partitions should this one hold some.
        let (members, partitions) = (self.group_members.load(Ordering::Relaxed), self.input_partitions.load(Ordering::Relaxed));
        let should_hold_some = members >= 0 && partitions > 0 && members < partitions;
        if self.assigned.load(Ordering::Relaxed) == 0 && should_hold_some && unassigned > limits.unassigned {
            return Err(format!("no input partitions assigned for {} s while the broker answers ({members} members for {partitions} partitions)", unassigned.as_secs()));
        }
        let lag_fresh = self.age(&self.lag_at, now).is_some_and(|a| a <= LAG_FRESH);
        let window_working = self.window_in_flight.load(Ordering::Relaxed) && self.age(&self.window_progress, now).is_some_and(|a| a <= limits.window_stall);
        let waiting_on_work = window_working || self.outage.load(Ordering::Relaxed);
        let idle = since(&self.progress).min(since(&self.behind_since));
        if lag_fresh && self.behind.load(Ordering::Relaxed) && !waiting_on_work && idle > limits.no_progress {
            return Err(format!("{} input records behind and nothing consumed or committed for {} s (the loop stepped {:.1} s ago)", self.lag(), idle.as_secs(), beat.as_secs_f64()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HealthLimits = HealthLimits {
        broker_silence: Duration::from_secs(5),
        loop_stall_ready: Duration::from_secs(10),
        loop_stall: Duration::from_secs(60),
        no_progress: Duration::from_secs(30),
        unassigned: Duration::from_secs(30),
        window_stall: Duration::from_secs(300),
    };

    fn at(t0: Instant, secs: u64) -> Instant {
        t0 + Duration::from_secs(secs)
    }

    /// Each second of `seconds` after t0: the broker answers the monitor and the loop steps.
    fn stepping(h: &Health, t0: Instant, seconds: std::ops::RangeInclusive<u64>) {
        for s in seconds {
            h.broker_answered(at(t0, s), false);
            h.beat(at(t0, s));
        }
    }

    /// A watched gate at t0 + 1 s with a broker that answered, one partition, nothing behind.
    fn consuming() -> (Health, Instant) {
        let t0 = Instant::now();
        let h = Health::new(t0);
        h.watch(LIMITS, t0);
        h.broker_answered(at(t0, 1), true);
        h.set_positions(vec![(0, 10)], at(t0, 1));
        h.set_lag(0, false, at(t0, 1));
        h.beat(at(t0, 1));
        (h, t0)
    }

    #[test]
    fn unwatched_health_is_always_live_and_ready() {
        let h = Health::default();
        let later = Instant::now() + Duration::from_secs(3600);
        assert_eq!((h.readiness(later), h.liveness(later)), (Ok(()), Ok(())));
    }

    #[test]
    fn a_silent_broker_takes_readiness_but_not_liveness() {
        let (h, t0) = consuming();
        assert_eq!(h.readiness(at(t0, 5)), Ok(()));
        let err = h.readiness(at(t0, 7)).unwrap_err();
        assert!(err.contains("no broker has answered for 6 s"), "{err}");
        // The loop is blocked in a commit on the hung broker: not ready, still live.
        assert_eq!(h.liveness(at(t0, 200)), Ok(()));
    }

    #[test]
    fn a_blocked_loop_is_unready_then_unhealthy_while_the_broker_answers() {
        let (h, t0) = consuming();
        for s in 2..=70 {
            h.broker_answered(at(t0, s), false);
        }
        assert!(h.readiness(at(t0, 12)).unwrap_err().contains("not stepped for 11 s"));
        assert_eq!(h.liveness(at(t0, 60)), Ok(()));
        assert!(h.liveness(at(t0, 62)).unwrap_err().contains("not stepped for 61 s"));
    }

    #[test]
    fn records_behind_with_nothing_consumed_is_unhealthy_unless_a_window_or_the_store_explains_it() {
        let (h, t0) = consuming();
        stepping(&h, t0, 2..=40);
        h.set_lag(4_645, true, at(t0, 2));
        // Records that have just fallen behind have not waited yet.
        assert_eq!(h.liveness(at(t0, 3)), Ok(()));
        h.set_lag(4_645, true, at(t0, 40));
        let err = h.liveness(at(t0, 40)).unwrap_err();
        // Counted from when they fell behind (t0 + 2 s).
        assert!(err.contains("4645 input records behind") && err.contains("for 38 s"), "{err}");
        h.set_window_in_flight(true, at(t0, 39));
        assert_eq!(h.liveness(at(t0, 40)), Ok(()));
        h.set_window_in_flight(false, at(t0, 40));
        h.set_outage(true);
        assert_eq!(h.liveness(at(t0, 40)), Ok(()));
        h.set_outage(false);
        h.progressed(at(t0, 39));
        assert_eq!(h.liveness(at(t0, 40)), Ok(()));
        // One offset behind (a transaction marker) is not behind.
        h.set_lag(1, false, at(t0, 40));
        assert_eq!(h.liveness(at(t0, 80)), Ok(()), "stale lag and no partition behind");
    }

    /// A stall of the broker is no stall of the gate: after the broker is back, the gate gets the
    /// whole bound again (the probe must not restart it for having waited).
    #[test]
    fn time_without_a_broker_does_not_count_against_liveness() {
        let (h, t0) = consuming();
        h.set_lag(21_044, true, at(t0, 1));
        // The broker hangs from t0 + 1 s to t0 + 40 s; the loop is blocked in a call meanwhile.
        h.broker_answered(at(t0, 40), true);
        h.set_lag(21_044, true, at(t0, 40));
        assert_eq!(h.liveness(at(t0, 41)), Ok(()));
        assert_eq!(h.liveness(at(t0, 69)), Ok(()));
        for s in 41..=75 {
            h.broker_answered(at(t0, s), false);
            h.set_lag(21_044, true, at(t0, s));
        }
        let err = h.liveness(at(t0, 75)).unwrap_err();
        assert!(err.contains("for 35 s"), "{err}");
    }

    #[test]
    fn an_empty_assignment_is_unready_at_once_and_unhealthy_after_its_bound() {
        let (h, t0) = consuming();
        h.set_positions(vec![], at(t0, 2));
        // Four replicas for four partitions: this one should hold some.
        h.set_group(3, 4);
        stepping(&h, t0, 2..=40);
        assert_eq!(h.readiness(at(t0, 3)).unwrap_err(), "no input partitions assigned");
        assert_eq!(h.liveness(at(t0, 31)), Ok(()));
        assert!(h.liveness(at(t0, 33)).unwrap_err().contains("no input partitions assigned for 31 s"));
        h.set_positions(vec![(1, -1)], at(t0, 40));
        assert_eq!((h.readiness(at(t0, 40)), h.liveness(at(t0, 40))), (Ok(()), Ok(())));
    }

    /// A fifth replica for four partitions holds none by design: not ready, but never restarted.
    #[test]
    fn a_replica_beyond_the_partition_count_is_not_ready_but_live() {
        let (h, t0) = consuming();
        h.set_positions(vec![], at(t0, 2));
        h.set_group(4, 4);
        stepping(&h, t0, 2..=100);
        assert_eq!(h.readiness(at(t0, 100)).unwrap_err(), "no input partitions assigned");
        assert_eq!(h.liveness(at(t0, 100)), Ok(()));
    }

    /// A window excuses a lack of progress only while its epochs go on.
    #[test]
    fn a_window_that_stopped_finishing_epochs_excuses_nothing() {
        let (h, t0) = consuming();
        h.set_lag(100, true, at(t0, 1));
        h.set_window_in_flight(true, at(t0, 1));
        for s in 2..=400 {
            h.broker_answered(at(t0, s), false);
            h.beat(at(t0, s));
            h.set_lag(100, true, at(t0, s));
        }
        h.window_progressed(at(t0, 250));
        assert_eq!(h.liveness(at(t0, 400)), Ok(()), "an epoch 150 s ago");
        for s in 401..=560 {
            h.broker_answered(at(t0, s), false);
            h.beat(at(t0, s));
            h.set_lag(100, true, at(t0, s));
        }
        let err = h.liveness(at(t0, 560)).unwrap_err();
        assert!(err.contains("100 input records behind"), "{err}");
    }

    #[test]
    fn draining_is_neither_judged_unready_by_the_monitor_nor_unhealthy() {
        let (h, t0) = consuming();
        h.set_phase(LoopPhase::Draining);
        assert_eq!((h.readiness(at(t0, 500)), h.liveness(at(t0, 500))), (Ok(()), Ok(())));
    }
}
