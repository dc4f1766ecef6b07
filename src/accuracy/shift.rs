//! Whether a window's records were drawn like the reference pool it is judged against.
//!
//! The pool serves as the window's control (its right labels' scores, the network's false flags)
//! only where its samples look like the window's. The check compares the features: per feature,
//! the standardised mean difference between the window's records and the pool, the pool
//! reweighted to the window's mix of given labels (a vendor that delivers only some classes has
//! not drifted). The statistic is the root mean square over features, less what sampling alone
//! gives (`1/n_window + 1/n_pool` per feature, the pool's size taken after reweighting).
//! Label noise moves labels, not features, so it leaves the statistic alone.

use serde::{Deserialize, Serialize};

/// The check's figures, carried in the window's evidence.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ShiftCheck {
    /// Root mean square standardised mean difference over the features, sampling noise removed.
    pub statistic: f64,
    /// `gate.max_feature_shift`: above it the window counts as shifted.
    pub threshold: f64,
    pub shifted: bool,
}

/// Features whose variance is below this in both groups are constant: they carry no shift.
const MIN_VARIANCE: f64 = 1e-8;
/// Fewer records or pool rows than this give no check.
const MIN_ROWS: usize = 30;

/// Compares rows `0..pending` (the window's records) with the rest (the pool), `dim` features
/// each, `labels` per row. `None` when either side has too few rows.
pub fn check(features: &[f32], labels: &[u32], pending: usize, dim: usize, classes: usize, threshold: f64) -> Option<ShiftCheck> {
    let rows = labels.len();
    if dim == 0 || pending < MIN_ROWS || rows - pending < MIN_ROWS {
        return None;
    }
    let weights = pool_weights(labels, pending, classes);
    let window_rows = (0..pending).filter(|&i| weights.window_counted[labels[i] as usize]);
    let window_n = window_rows.clone().count();
    let pool_sum: f64 = (pending..rows).map(|i| weights.of_class[labels[i] as usize]).sum();
    let pool_sq: f64 = (pending..rows).map(|i| weights.of_class[labels[i] as usize].powi(2)).sum();
    if window_n < MIN_ROWS || pool_sum <= 0.0 {
        return None;
    }
    let pool_effective = pool_sum * pool_sum / pool_sq;
    let (mut total, mut counted) = (0.0f64, 0usize);
    for j in 0..dim {
        let (m_w, v_w) = moments(window_rows.clone().map(|i| (features[i * dim + j] as f64, 1.0)));
        let (m_p, v_p) = moments((pending..rows).map(|i| (features[i * dim + j] as f64, weights.of_class[labels[i] as usize])));
        let pooled = (v_w + v_p) / 2.0;
        if pooled < MIN_VARIANCE {
            continue;
        }
        total += (m_w - m_p).powi(2) / pooled;
        counted += 1;
    }
    if counted == 0 {
        return None;
    }
    let noise = 1.0 / window_n as f64 + 1.0 / pool_effective;
    let statistic = (total / counted as f64 - noise).max(0.0).sqrt();
    Some(ShiftCheck { statistic, threshold, shifted: statistic > threshold })
}

struct PoolWeights {
    /// Per class: the weight of a pool row of that class (0 where the window has none).
    of_class: Vec<f64>,
    /// Per class: whether the window's rows of that class are compared (the pool has some).
    window_counted: Vec<bool>,
}

/// Weights that give the pool the window's mix of given labels.
fn pool_weights(labels: &[u32], pending: usize, classes: usize) -> PoolWeights {
    let (mut window, mut pool) = (vec![0usize; classes], vec![0usize; classes]);
    for (i, &l) in labels.iter().enumerate() {
        if i < pending {
            window[l as usize] += 1
        } else {
            pool[l as usize] += 1
        }
    }
    let of_class = window.iter().zip(&pool).map(|(&w, &p)| if p == 0 { 0.0 } else { w as f64 / p as f64 }).collect();
    PoolWeights { of_class, window_counted: pool.iter().map(|&p| p > 0).collect() }
}

/// Weighted mean and variance of (value, weight) pairs.
fn moments(values: impl Iterator<Item = (f64, f64)> + Clone) -> (f64, f64) {
    let (mut w_sum, mut sum) = (0.0, 0.0);
    for (x, w) in values.clone() {
        w_sum += w;
        sum += w * x;
    }
    if w_sum <= 0.0 {
        return (0.0, 0.0);
    }
    let mean = sum / w_sum;
    let var = values.map(|(x, w)| w * (x - mean).powi(2)).sum::<f64>() / w_sum;
    (mean, var)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_distr::{Distribution, Normal};

    /// `n` window rows then `m` pool rows, `dim` features: class c has mean c on every feature;
    /// the window's features are moved by `offset`; the window holds classes `window_classes`.
    fn rows(n: usize, m: usize, dim: usize, offset: f32, window_classes: &[u32], seed: u64) -> (Vec<f32>, Vec<u32>) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let normal = Normal::new(0.0f32, 1.0).unwrap();
        let (mut features, mut labels) = (Vec::new(), Vec::new());
        for i in 0..n + m {
            let class = if i < n { window_classes[i % window_classes.len()] } else { (i % 4) as u32 };
            for _ in 0..dim {
                features.push(class as f32 + normal.sample(&mut rng) + if i < n { offset } else { 0.0 });
            }
            labels.push(class);
        }
        (features, labels)
    }

    #[test]
    fn the_same_distribution_is_not_shifted_whatever_the_class_mix() {
        let (f, l) = rows(500, 1000, 16, 0.0, &[0, 1, 2, 3], 1);
        let c = check(&f, &l, 500, 16, 4, 0.25).unwrap();
        assert!(!c.shifted && c.statistic < 0.1, "{c:?}");
        // A vendor that delivers only two of the four classes.
        let (f, l) = rows(500, 1000, 16, 0.0, &[0, 3], 2);
        let c = check(&f, &l, 500, 16, 4, 0.25).unwrap();
        assert!(!c.shifted && c.statistic < 0.1, "{c:?}");
    }

    #[test]
    fn moved_features_are_shifted() {
        let (f, l) = rows(500, 1000, 16, 0.6, &[0, 1, 2, 3], 3);
        let c = check(&f, &l, 500, 16, 4, 0.25).unwrap();
        assert!(c.shifted && c.statistic > 0.4, "{c:?}");
    }

    #[test]
    fn wrong_labels_are_not_a_shift() {
        // The window's labels are rotated for a third of its rows: features unchanged.
        let (f, mut l) = rows(600, 1000, 16, 0.0, &[0, 1, 2, 3], 4);
        for i in (0..600).step_by(3) {
            l[i] = (l[i] + 1) % 4;
        }
        let c = check(&f, &l, 600, 16, 4, 0.25).unwrap();
        assert!(!c.shifted, "{c:?}");
    }

    #[test]
    fn too_few_rows_give_no_check() {
        let (f, l) = rows(10, 1000, 4, 0.0, &[0], 5);
        assert!(check(&f, &l, 10, 4, 4, 0.25).is_none());
    }
}
