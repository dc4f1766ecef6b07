//! Says a repeated complaint once a while: an outage makes clients report the same failure many
//! times a second, and a log that repeats it buries everything else.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// How often the same complaint is said again.
pub const REPEAT_EVERY: Duration = Duration::from_secs(60);

/// Remembers when each complaint was last said.
#[derive(Default)]
pub struct Throttle {
    last_said: Mutex<HashMap<String, Instant>>,
}

impl Throttle {
    /// Whether `what` should be said now. The key drops digits (ports, counts, times), so one
    /// complaint stays one complaint.
    pub fn first_in_a_while(&self, what: &str) -> bool {
        let key: String = what.chars().filter(|c| !c.is_ascii_digit()).take(160).collect();
        let mut said = self.last_said.lock().unwrap();
        let now = Instant::now();
        match said.get(&key) {
            Some(t) if now.duration_since(*t) < REPEAT_EVERY => false,
            _ => {
                said.insert(key, now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_complaint_differing_only_in_numbers_is_said_once() {
        let t = Throttle::default();
        assert!(t.first_in_a_while("connect to 127.0.0.1:19092 failed after 3ms"));
        assert!(!t.first_in_a_while("connect to 127.0.0.1:19092 failed after 12ms"));
        assert!(t.first_in_a_while("another complaint"));
    }
}
