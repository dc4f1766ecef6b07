//! Accumulates each sample's normalised stage-2 loss: the O2U-Net score is the mean over epochs
//! of (sample loss − that epoch's mean loss); the variance of the same quantity is kept as a
//! second signal (noisy samples swing more as the learning rate cycles).

/// Running per-sample sums over stage-2 epochs (Welford's method, so long runs stay exact).
#[derive(Debug, Clone)]
pub struct LossRecord {
    epochs: usize,
    mean: Vec<f64>,
    m2: Vec<f64>,
}

impl LossRecord {
    pub fn new(samples: usize) -> Self {
        Self { epochs: 0, mean: vec![0.0; samples], m2: vec![0.0; samples] }
    }

    /// Adds one epoch of per-sample losses (indexed by sample). Returns the epoch's mean loss.
    pub fn add_epoch(&mut self, losses: &[f32]) -> f64 {
        assert_eq!(losses.len(), self.mean.len(), "one loss per sample");
        let epoch_mean = losses.iter().map(|&l| l as f64).sum::<f64>() / losses.len().max(1) as f64;
        self.epochs += 1;
        let n = self.epochs as f64;
        for ((mean, m2), &loss) in self.mean.iter_mut().zip(self.m2.iter_mut()).zip(losses) {
            let x = loss as f64 - epoch_mean;
            let delta = x - *mean;
            *mean += delta / n;
            *m2 += delta * (x - *mean);
        }
        epoch_mean
    }

    pub fn epochs(&self) -> usize {
        self.epochs
    }

    /// The O2U-Net score of every sample: higher means more likely mislabelled.
    pub fn scores(&self) -> Vec<f32> {
        self.mean.iter().map(|&m| m as f32).collect()
    }

    /// Population variance of each sample's normalised loss over the recorded epochs.
    pub fn variances(&self) -> Vec<f32> {
        let n = self.epochs.max(1) as f64;
        self.m2.iter().map(|&m2| (m2 / n) as f32).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_is_mean_of_loss_minus_epoch_mean() {
        let mut rec = LossRecord::new(3);
        // epoch means: 2.0 and 4.0
        assert_eq!(rec.add_epoch(&[1.0, 2.0, 3.0]), 2.0);
        assert_eq!(rec.add_epoch(&[6.0, 4.0, 2.0]), 4.0);
        // sample 0: (-1 + 2)/2 = 0.5; sample 1: 0; sample 2: (1 - 2)/2 = -0.5
        let s = rec.scores();
        assert!((s[0] - 0.5).abs() < 1e-6 && s[1].abs() < 1e-6 && (s[2] + 0.5).abs() < 1e-6);
        // variances of (-1, 2), (0, 0), (1, -2): 2.25, 0, 2.25
        let v = rec.variances();
        assert!((v[0] - 2.25).abs() < 1e-6 && v[1].abs() < 1e-6 && (v[2] - 2.25).abs() < 1e-6);
    }

    #[test]
    fn a_global_shift_of_all_losses_does_not_change_scores() {
        let mut a = LossRecord::new(4);
        let mut b = LossRecord::new(4);
        a.add_epoch(&[0.1, 0.2, 0.9, 0.3]);
        b.add_epoch(&[5.1, 5.2, 5.9, 5.3]);
        for (x, y) in a.scores().iter().zip(b.scores()) {
            assert!((x - y).abs() < 1e-5);
        }
        assert_eq!(a.epochs(), 1);
    }

    #[test]
    fn scores_sum_to_zero_each_epoch() {
        let mut rec = LossRecord::new(5);
        rec.add_epoch(&[0.3, 1.7, 0.2, 0.05, 2.5]);
        rec.add_epoch(&[0.1, 2.7, 0.4, 0.15, 0.5]);
        let total: f32 = rec.scores().iter().sum();
        assert!(total.abs() < 1e-5);
    }
}
