//! The one failure policy of the gate and the review bridge: a failure is either one that waiting
//! may fix ([`Recovery::Retry`]: a server away, a timeout) or one it cannot ([`Recovery::Stop`]:
//! a bad setting, refused credentials), and retries wait an exponential back-off jittered by
//! ±20 %, so that replicas that lost a dependency together do not retry in lockstep.

use std::time::{Duration, Instant};

use rand::{RngExt as _, SeedableRng};

/// What a caller does about a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Back off and call again (not ready meanwhile; the gate holds its input).
    Retry,
    /// Stop with the error, which names what to fix: waiting cannot fix it.
    Stop,
}

/// Waits that double from `first` to `cap`, each jittered by ±20 %.
pub struct Backoff {
    first: Duration,
    next: Duration,
    cap: Duration,
    rng: rand_chacha::ChaCha8Rng,
}

impl Backoff {
    pub fn new(first: Duration, cap: Duration) -> Self {
        let seed = crate::clock::unix_millis() ^ u64::from(std::process::id()) << 32;
        Self { first, next: first, cap, rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed) }
    }

    pub fn next_wait(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.cap);
        base.mul_f64(self.rng.random_range(0.8..1.2))
    }

    /// Back to the first wait (after a success).
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// The gate's back-off towards what it depends on (Kafka at start-up, Redis, image hosts), from
/// 250 ms to [`BACKOFF_CAP`].
/// The longest wait between tries: a server that answers again is used within this (a 10 s cap
/// left the gate idle up to 11 s after Redis came back), and one request from each replica every
/// 2 s costs a server nothing.
pub const BACKOFF_CAP: Duration = Duration::from_secs(2);

pub fn dependency_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(250), BACKOFF_CAP)
}

/// What is left of a start-up limit: `None` once it has passed. Each retry sleeps at most this,
/// so the last try comes at the limit, not a back-off step before it.
pub fn left_of(limit: Duration, started: Instant) -> Option<Duration> {
    limit.checked_sub(started.elapsed()).filter(|d| !d.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_to_their_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(250), Duration::from_secs(2));
        let waits: Vec<f64> = (0..10).map(|_| b.next_wait().as_secs_f64()).collect();
        assert!((0.2..=0.3).contains(&waits[0]), "{waits:?}");
        assert!((0.4..=0.6).contains(&waits[1]), "{waits:?}");
        assert!(waits[9] >= 1.6 && waits[9] <= 2.4, "{waits:?}");
        // Two replicas starting together do not wait the same.
        let mut other = Backoff { rng: rand_chacha::ChaCha8Rng::seed_from_u64(7), ..Backoff::new(Duration::from_millis(250), Duration::from_secs(2)) };
        let other: Vec<f64> = (0..10).map(|_| other.next_wait().as_secs_f64()).collect();
        assert!(other.iter().zip(&waits).any(|(a, b)| a != b));
        b.reset();
        assert!((0.2..=0.3).contains(&b.next_wait().as_secs_f64()));
    }
}
