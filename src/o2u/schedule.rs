//! Learning-rate schedules of the three O2U-Net stages.

use serde::{Deserialize, Serialize};

/// The stage-2 cyclical learning rate: within each cycle of `cycle_len` epochs the rate falls
/// linearly from `lr_max` (r1) towards `lr_min` (r2), then jumps back up, so the network swings
/// between under- and over-fitting and noisy labels cannot be memorised for good.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CyclicalSchedule {
    pub lr_max: f64,
    pub lr_min: f64,
    pub cycle_len: usize,
}

impl CyclicalSchedule {
    /// `t = (epoch % c + 1) / c; lr = (1 - t) * r1 + t * r2`, with `epoch` counted from the
    /// start of stage 2.
    pub fn lr(&self, epoch: usize) -> f64 {
        let c = self.cycle_len.max(1);
        let t = ((epoch % c) + 1) as f64 / c as f64;
        (1.0 - t) * self.lr_max + t * self.lr_min
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paper() -> CyclicalSchedule {
        CyclicalSchedule { lr_max: 0.01, lr_min: 0.001, cycle_len: 10 }
    }

    #[test]
    fn first_epoch_of_a_cycle_is_just_below_r1() {
        // t = 1/10 -> 0.9 * 0.01 + 0.1 * 0.001
        assert!((paper().lr(0) - 0.0091).abs() < 1e-12);
    }

    #[test]
    fn last_epoch_of_a_cycle_reaches_r2() {
        assert!((paper().lr(9) - 0.001).abs() < 1e-12);
        assert!((paper().lr(19) - 0.001).abs() < 1e-12);
    }

    #[test]
    fn rate_falls_within_a_cycle_and_restarts() {
        let s = paper();
        for e in 0..9 {
            assert!(s.lr(e) > s.lr(e + 1), "epoch {e}");
        }
        assert!(s.lr(10) > s.lr(9));
        assert_eq!(s.lr(3), s.lr(13));
    }

    #[test]
    fn cycle_of_one_epoch_stays_at_r2() {
        let s = CyclicalSchedule { cycle_len: 1, ..paper() };
        assert_eq!(s.lr(0), 0.001);
        assert_eq!(s.lr(5), 0.001);
    }
}
